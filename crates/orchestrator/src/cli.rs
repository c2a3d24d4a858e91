//! The command line: what `saga-orchestrator` accepts, and the one way an error becomes an exit
//! code. Each subcommand lives in `cmd/`.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use saga_common::config::EXIT_BAD_CONFIG;

use crate::OrchestratorSettings;
use crate::grpc::GrpcParticipants;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Runs the Create Order saga against the order, payment and shipping services"
)]
pub struct Cli {
    /// Settings file (TOML); `SAGA_*` environment variables override it.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run sagas and print one result per saga.
    Run(crate::cmd::run::RunArgs),
    /// Read a run's sagas back from the services and check every invariant; exit 1 on any
    /// violation.
    Verify(crate::cmd::verify::VerifyArgs),
    /// Settle every saga whose order stayed PENDING past a grace period (orchestrator killed,
    /// compensation parked): approve it when every step succeeded, compensate it otherwise.
    /// Exit 1 when something stays stuck. `--dry-run` lists the stuck sagas and their reasons.
    Recover(crate::cmd::recover::RecoverArgs),
    /// Check the saga's invariants over every order in the store; exit 1 on a violation.
    Audit(crate::cmd::audit::AuditArgs),
}

impl Command {
    pub async fn execute(self, settings: OrchestratorSettings) -> Result<(), Exit> {
        match self {
            Command::Run(args) => crate::cmd::run::run(args, settings).await,
            Command::Verify(args) => crate::cmd::verify::verify(args, settings).await,
            Command::Recover(args) => crate::cmd::recover::recover(args, settings).await,
            Command::Audit(args) => crate::cmd::audit::audit(args, settings).await,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    /// One JSON object per line.
    Json,
}

/// Why a command did not succeed, and so the process's exit code.
#[derive(Debug, thiserror::Error)]
pub enum Exit {
    /// Settings or arguments that cannot work: 64 (`EX_USAGE`).
    #[error("{0}")]
    BadConfig(String),
    /// The command ran and found something wrong: 1.
    #[error("{0}")]
    Failed(String),
    /// SIGINT or SIGTERM: 130.
    #[error("{0}")]
    Interrupted(String),
}

impl Exit {
    pub fn code(&self) -> ExitCode {
        match self {
            Exit::BadConfig(_) => ExitCode::from(EXIT_BAD_CONFIG),
            Exit::Failed(_) => ExitCode::FAILURE,
            Exit::Interrupted(_) => ExitCode::from(130),
        }
    }
}

/// The participants of `settings`, asking for `faults` on every call, once every service is
/// serving (unless the wait is off).
pub async fn connect(
    settings: &OrchestratorSettings,
    faults: &[String],
) -> Result<GrpcParticipants, Exit> {
    let participants = GrpcParticipants::new(settings)
        .map_err(|err| Exit::BadConfig(err.to_string()))?
        .with_faults(faults)
        .map_err(|err| Exit::BadConfig(format!("--fault: {err}")))?;
    if settings.wait_ready_secs > 0 {
        participants
            .wait_ready(settings.wait_ready())
            .await
            .map_err(|err| Exit::Failed(err.to_string()))?;
    }
    Ok(participants)
}

/// A listing of orders that failed for good (after its retries).
pub fn listing_failed(status: tonic::Status) -> Exit {
    Exit::Failed(format!(
        "cannot list orders: {:?}: {}",
        status.code(),
        status.message()
    ))
}
