//! `saga-orchestrator`: runs Create Order sagas against the three services.
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use saga_common::config::{self, EXIT_BAD_CONFIG};
use saga_orchestrator::grpc::GrpcParticipants;
use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use saga_orchestrator::runner::{Batch, Scenarios, seed_of, shard};
use saga_orchestrator::stats::Stats;
use saga_orchestrator::verify::{Acknowledged, verify_run};
use saga_orchestrator::{OrchestratorSettings, SagaReport, Scenario};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Runs the Create Order saga against the order, payment and shipping services"
)]
struct Cli {
    /// Settings file (TOML); `SAGA_*` environment variables override it.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run sagas and print one result per saga.
    Run(RunArgs),
    /// Read a run's sagas back from the services and check every invariant; exit 1 on any
    /// violation.
    Verify(VerifyArgs),
}

#[derive(Debug, clap::Args)]
struct VerifyArgs {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ScenarioArg {
    Success,
    PaymentFailure,
    ShippingFailure,
    /// The three scenarios, in that order.
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    /// One JSON object per saga, one per line.
    Json,
}

/// Which per-saga reports to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PrintSagas {
    /// `all` for runs of up to 20 sagas, `problems` beyond.
    Auto,
    All,
    /// Only sagas that failed or are inconsistent.
    Problems,
    None,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
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

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings: OrchestratorSettings = match config::load("SAGA", cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("saga-orchestrator: {err}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let telemetry = saga_common::telemetry::init("saga-orchestrator");
    let code = match cli.command {
        Command::Run(args) => run(args, settings).await,
        Command::Verify(args) => verify(args, settings).await,
    };
    // The last saga's spans leave before the process does, also after SIGTERM.
    telemetry.shutdown().await;
    code
}

async fn run(args: RunArgs, settings: OrchestratorSettings) -> ExitCode {
    let participants = match GrpcParticipants::new(&settings) {
        Ok(participants) => Arc::new(participants),
        Err(err) => {
            eprintln!("saga-orchestrator: {err}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    if args.shard_index >= args.shard_count {
        eprintln!(
            "saga-orchestrator: --shard-index {} must be below --shard-count {}",
            args.shard_index, args.shard_count
        );
        return ExitCode::from(EXIT_BAD_CONFIG);
    }
    let run_id = args
        .run_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()[..12].to_owned());
    let (scenarios, total) = match (&args.mix, args.scenario) {
        (Some(mix), _) => match Scenarios::parse_mix(mix, seed_of(&run_id)) {
            Ok(scenarios) => (scenarios, args.count),
            Err(err) => {
                eprintln!("saga-orchestrator: --mix: {err}");
                return ExitCode::from(EXIT_BAD_CONFIG);
            }
        },
        (None, ScenarioArg::All) => (Scenarios::Cycle(Scenario::ALL.to_vec()), 3 * args.count),
        (None, one) => {
            let scenario = match one {
                ScenarioArg::PaymentFailure => Scenario::PaymentFailure,
                ScenarioArg::ShippingFailure => Scenario::ShippingFailure,
                _ => Scenario::Success,
            };
            (Scenarios::Cycle(vec![scenario]), args.count)
        }
    };
    let small = total <= 20;
    let verify_sample = match (args.no_verify, args.verify_sample) {
        (true, _) => 0.0,
        (false, Some(sample)) => sample,
        (false, None) if small => 1.0,
        (false, None) => 0.05,
    };
    let print_sagas = match args.print_sagas {
        PrintSagas::Auto if small => PrintSagas::All,
        PrintSagas::Auto => PrintSagas::Problems,
        other => other,
    };
    let batch = Batch {
        run_id,
        scenarios,
        range: shard(total, args.shard_index, args.shard_count),
        concurrency: usize::try_from(args.concurrency).unwrap_or(1),
        verify_sample,
    };
    if settings.wait_ready_secs > 0
        && let Err(err) = participants.wait_ready(settings.wait_ready()).await
    {
        eprintln!("saga-orchestrator: {err}");
        return ExitCode::FAILURE;
    }
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
            eprintln!("saga-orchestrator: interrupted; rerun with --run-id {} to finish", batch.run_id);
            return ExitCode::from(130);
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
        return ExitCode::SUCCESS;
    }
    match first_problem {
        Some(report) => eprintln!(
            "saga-orchestrator: saga {} ended {:?}: {}",
            report.saga_id,
            report.outcome,
            report
                .reason
                .as_deref()
                .unwrap_or("participants disagree with the outcome")
        ),
        None => eprintln!(
            "saga-orchestrator: {} sagas did not report",
            summary.missing
        ),
    }
    ExitCode::FAILURE
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

async fn verify(args: VerifyArgs, settings: OrchestratorSettings) -> ExitCode {
    let participants = match GrpcParticipants::new(&settings) {
        Ok(participants) => participants,
        Err(err) => {
            eprintln!("saga-orchestrator: {err}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let acknowledged = match acknowledged_ids(&args.acknowledged) {
        Ok(ids) => ids,
        Err(err) => {
            eprintln!("saga-orchestrator: cannot read acknowledged writes: {err}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    if settings.wait_ready_secs > 0
        && let Err(err) = participants.wait_ready(settings.wait_ready()).await
    {
        eprintln!("saga-orchestrator: {err}");
        return ExitCode::FAILURE;
    }
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
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
