//! `saga-orchestrator`: runs Create Order sagas against the three services.
use std::process::ExitCode;

use clap::Parser;
use saga_common::config;
use saga_orchestrator::OrchestratorSettings;
use saga_orchestrator::cli::{Cli, Exit};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

// One thread. The orchestrator only waits on the services: one thread drives more sagas than
// three services on the same cores serve, and a multi-thread runtime spent a third of the
// orchestrator's CPU handing sagas and replies between threads (BENCHMARKS.md). A larger batch
// scales out by shards (`--shard-count`, an Indexed Job), each its own process.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings: Result<OrchestratorSettings, _> = config::load("SAGA", cli.config.as_deref());
    let result = match settings {
        Ok(settings) => {
            let telemetry = saga_common::telemetry::init("saga-orchestrator");
            let result = cli.command.execute(settings).await;
            // The last saga's spans leave before the process does, also after SIGTERM.
            telemetry.shutdown().await;
            result
        }
        Err(err) => Err(Exit::BadConfig(err.to_string())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(exit) => {
            eprintln!("saga-orchestrator: {exit}");
            exit.code()
        }
    }
}
