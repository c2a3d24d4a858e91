//! `saga-orchestrator verify`: reads a run's sagas back and checks every invariant.
use std::path::PathBuf;

use crate::OrchestratorSettings;
use crate::cli::{Exit, Output, connect};
use crate::verify::{Acknowledged, verify_run};

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The run to check.
    #[arg(long)]
    run_id: String,
    /// How many sagas the run had: saga ids `<run-id>-0` to `<run-id>-<count-1>` (for
    /// `run --scenario all --count 3`, that is 9).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    count: u64,
    /// Output of `run --output json`: every order, payment and shipment id it reports was
    /// acknowledged and must still exist. Repeatable.
    #[arg(long, value_name = "FILE")]
    acknowledged: Vec<PathBuf>,
    /// Sagas read at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    concurrency: u32,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// The ids a `run --output json` file reports.
fn acknowledged_ids(files: &[PathBuf]) -> Result<Vec<Acknowledged>, String> {
    let mut ids = Vec::new();
    for file in files {
        let text =
            std::fs::read_to_string(file).map_err(|err| format!("{}: {err}", file.display()))?;
        for line in text.lines().filter(|l| l.trim_start().starts_with('{')) {
            // A run killed mid-write can leave a torn last line: skip what does not parse.
            let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let id = |field: &str| value.get(field).and_then(|v| v.as_str()).map(str::to_owned);
            ids.extend(id("order_id").map(Acknowledged::Order));
            ids.extend(id("payment_id").map(Acknowledged::Payment));
            ids.extend(id("shipping_id").map(Acknowledged::Shipment));
        }
    }
    Ok(ids)
}

pub async fn verify(args: VerifyArgs, settings: OrchestratorSettings) -> Result<(), Exit> {
    let acknowledged = acknowledged_ids(&args.acknowledged)
        .map_err(|err| Exit::BadConfig(format!("cannot read acknowledged writes: {err}")))?;
    let participants = connect(&settings, &[]).await?;
    let concurrency = usize::try_from(args.concurrency).unwrap_or(32);
    let verdict = verify_run(
        &participants,
        &settings.retry,
        &args.run_id,
        args.count,
        concurrency,
        &acknowledged,
    )
    .await;
    match args.output {
        Output::Json => println!("{}", serde_json::json!({ "verify": verdict })),
        Output::Text => {
            for violation in verdict.violations.iter().chain(&verdict.lost) {
                println!("VIOLATION {violation}");
            }
            println!(
                "verify run {}: {} sagas, {} completed, {} compensated, {} pending, {} missing, {} violations, {} unrefunded charges; {} acknowledged writes, {} lost",
                verdict.run_id,
                verdict.sagas,
                verdict.completed,
                verdict.compensated,
                verdict.pending,
                verdict.missing,
                verdict.violations.len(),
                verdict.unrefunded_charges,
                verdict.acknowledged,
                verdict.lost.len()
            );
        }
    }
    if verdict.is_ok() {
        Ok(())
    } else {
        Err(Exit::Failed(format!("run {} has violations", args.run_id)))
    }
}
