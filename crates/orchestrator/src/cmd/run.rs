//! `saga-orchestrator run`: a batch of sagas, one result per saga and a summary.
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Instant;

use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::{Exit, Output, connect};
use crate::runner::{Batch, Scenarios, seed_of, shard};
use crate::stats::Stats;
use crate::{OrchestratorSettings, SagaReport, Scenario};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScenarioArg {
    Success,
    PaymentFailure,
    ShippingFailure,
    /// The three scenarios, in that order.
    All,
}

/// Which per-saga reports to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PrintSagas {
    /// `all` for runs of up to 20 sagas, `problems` beyond.
    Auto,
    All,
    /// Only sagas that failed or are inconsistent.
    Problems,
    None,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Which saga to run. Failures are asked of the services per request, so they must allow
    /// injection (`PAYMENT_FAULTS__ALLOW_INJECTION=true`, `SHIPPING_FAULTS__ALLOW_INJECTION=true`).
    #[arg(long, value_enum, default_value_t = ScenarioArg::All, conflicts_with = "mix")]
    scenario: ScenarioArg,
    /// A weighted random mix instead, e.g. `success=80,payment-failure=10,shipping-failure=10`.
    #[arg(long)]
    mix: Option<String>,
    /// How many sagas with --mix; how many times to run the scenario (or the three, for `all`)
    /// otherwise.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    count: u64,
    /// Sagas in flight at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    concurrency: u32,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[arg(long, value_enum, default_value_t = PrintSagas::Auto)]
    print_sagas: PrintSagas,
    /// Names the run; saga ids are `<run-id>-<index>`. Generated when omitted.
    #[arg(long)]
    run_id: Option<String>,
    /// Fraction of sagas whose participants are read back afterwards. Default: all of them
    /// for runs of up to 20 sagas, 5% beyond.
    #[arg(long, value_parser = parse_fraction)]
    verify_sample: Option<f64>,
    /// Skip the read-back entirely (same as --verify-sample 0).
    #[arg(long, conflicts_with = "verify_sample")]
    no_verify: bool,
    /// This process's shard of the batch (a Kubernetes Indexed Job sets JOB_COMPLETION_INDEX).
    #[arg(long, env = "JOB_COMPLETION_INDEX", default_value_t = 0)]
    shard_index: u64,
    /// Ask for a step fault in every saga, e.g. `--fault RefundPayment=unavailable` (kinds:
    /// business, unavailable, lost-reply, hang, crash; `@RATE` after the kind for a share of
    /// the calls). Repeatable. The services must allow injection.
    #[arg(long = "fault", value_name = "RPC=KIND")]
    faults: Vec<String>,
    /// How many shards split the batch.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    shard_count: u64,
}

fn parse_fraction(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if (0.0..=1.0).contains(&value) => Ok(value),
        _ => Err(format!("'{text}' is not a fraction between 0 and 1")),
    }
}

impl RunArgs {
    /// The batch these arguments ask for, and whether the whole run is small (up to 20 sagas,
    /// every one printed and read back).
    fn batch(&self) -> Result<(Batch, bool), Exit> {
        if self.shard_index >= self.shard_count {
            return Err(Exit::BadConfig(format!(
                "--shard-index {} must be below --shard-count {}",
                self.shard_index, self.shard_count
            )));
        }
        let run_id = self
            .run_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()[..12].to_owned());
        let (scenarios, total) = match (&self.mix, self.scenario) {
            (Some(mix), _) => {
                let scenarios = Scenarios::parse_mix(mix, seed_of(&run_id))
                    .map_err(|err| Exit::BadConfig(format!("--mix: {err}")))?;
                (scenarios, self.count)
            }
            (None, ScenarioArg::All) => (Scenarios::Cycle(Scenario::ALL.to_vec()), 3 * self.count),
            (None, one) => {
                let scenario = match one {
                    ScenarioArg::PaymentFailure => Scenario::PaymentFailure,
                    ScenarioArg::ShippingFailure => Scenario::ShippingFailure,
                    _ => Scenario::Success,
                };
                (Scenarios::Cycle(vec![scenario]), self.count)
            }
        };
        let small = total <= 20;
        let verify_sample = match (self.no_verify, self.verify_sample) {
            (true, _) => 0.0,
            (false, Some(sample)) => sample,
            (false, None) if small => 1.0,
            (false, None) => 0.05,
        };
        let batch = Batch {
            run_id,
            scenarios,
            range: shard(total, self.shard_index, self.shard_count),
            concurrency: usize::try_from(self.concurrency).unwrap_or(1),
            verify_sample,
        };
        Ok((batch, small))
    }
}

pub async fn run(args: RunArgs, settings: OrchestratorSettings) -> Result<(), Exit> {
    let (batch, small) = args.batch()?;
    let participants = Arc::new(connect(&settings, &args.faults).await?);
    let print_sagas = match args.print_sagas {
        PrintSagas::Auto if small => PrintSagas::All,
        PrintSagas::Auto => PrintSagas::Problems,
        other => other,
    };
    tracing::info!(run_id = %batch.run_id, first = batch.range.start, sagas = batch.len(), "run started");

    let output = args.output;
    let trace_ui = settings.jaeger_ui.clone();
    let progress = progress_bar(batch.len());
    let mut stats = Stats::default();
    let mut first_problem: Option<SagaReport> = None;
    let started = Instant::now();
    let sagas = batch.run(participants, Arc::new(settings), |report| {
        stats.record(&report);
        let problem = !report.is_ok();
        if print_sagas == PrintSagas::All || (problem && print_sagas == PrintSagas::Problems) {
            progress.suspend(|| print(output, &report, &trace_ui));
        }
        if problem && first_problem.is_none() {
            first_problem = Some(report);
        }
        progress.inc(1);
    });
    tokio::select! {
        () = sagas => {}
        () = saga_common::shutdown::signal() => {
            progress.abandon();
            // Sagas in flight stop here; rerunning the same --run-id finishes them, since every
            // step is idempotent and a rerun settles what an earlier run left.
            return Err(Exit::Interrupted(format!(
                "interrupted; rerun with --run-id {} to finish", batch.run_id
            )));
        }
    }
    progress.finish_and_clear();
    let summary = stats.summary(&batch.run_id, batch.len(), started.elapsed());
    match output {
        Output::Text if small => println!("{}", summary.headline()),
        Output::Text => print!("{}", summary.to_text()),
        Output::Json => println!("{}", serde_json::json!({ "summary": summary })),
    }
    if summary.is_ok() {
        return Ok(());
    }
    Err(Exit::Failed(match first_problem {
        Some(report) => format!(
            "saga {} ended {:?}: {}",
            report.saga_id,
            report.outcome,
            report
                .reason
                .as_deref()
                .unwrap_or("participants disagree with the outcome")
        ),
        None => format!("{} sagas did not report", summary.missing),
    }))
}

/// A progress bar with the live rate, on stderr when it is a terminal and the batch is large.
fn progress_bar(len: u64) -> ProgressBar {
    if len <= 3 || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40.cyan/blue} {pos}/{len} sagas  {per_sec}  eta {eta}")
    {
        bar.set_style(style);
    }
    bar
}

fn print(output: Output, report: &SagaReport, trace_ui: &str) {
    match output {
        Output::Text => print!("{}", report.to_text(trace_ui)),
        Output::Json => println!("{}", report.to_json()),
    }
}
