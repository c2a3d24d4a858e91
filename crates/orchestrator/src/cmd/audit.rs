//! `saga-orchestrator audit`: the saga's invariants over the whole store.
use std::time::Duration;

use crate::OrchestratorSettings;
use crate::cli::{Exit, Output, connect, listing_failed};
use crate::cmd::recover::parse_duration;

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// An order PENDING for longer than this is stuck: a violation.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub older_than: Duration,
    /// Orders read at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

pub async fn audit(args: AuditArgs, settings: OrchestratorSettings) -> Result<(), Exit> {
    let participants = connect(&settings, &[]).await?;
    let concurrency = usize::try_from(args.concurrency).unwrap_or(32);
    let report =
        crate::recover::audit(&participants, &settings.retry, args.older_than, concurrency)
            .await
            .map_err(listing_failed)?;
    crate::metrics::stuck("audit", report.pending_stuck);
    match args.output {
        Output::Text => {
            for violation in &report.violations {
                println!("VIOLATION {violation}");
            }
            println!("{}", report.to_text());
        }
        Output::Json => println!("{}", serde_json::json!({ "audit": report })),
    }
    if report.is_ok() {
        Ok(())
    } else {
        Err(Exit::Failed(format!(
            "{} violations (see the lines above)",
            report.violations.len()
        )))
    }
}
