//! `saga-orchestrator`: runs Create Order sagas against the three services.
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use saga_common::config::{self, EXIT_BAD_CONFIG};
use saga_orchestrator::grpc::GrpcParticipants;
use saga_orchestrator::runner::Batch;
use saga_orchestrator::{OrchestratorSettings, SagaReport, Scenario};

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

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Which saga to run. Failures are asked of the services per request, so they must allow
    /// injection (`PAYMENT_FAULTS__ALLOW_INJECTION=true`, `SHIPPING_FAULTS__ALLOW_INJECTION=true`).
    #[arg(long, value_enum, default_value_t = ScenarioArg::All)]
    scenario: ScenarioArg,
    /// How many times to run the scenario (or the three, for `all`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    count: u32,
    /// Sagas in flight at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    concurrency: u32,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// Names the run; saga ids are `<run-id>-<index>`. Generated when omitted.
    #[arg(long)]
    run_id: Option<String>,
    /// Skip reading each saga's participants back afterwards.
    #[arg(long)]
    no_verify: bool,
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
    if settings.wait_ready_secs > 0
        && let Err(err) = participants.wait_ready(settings.wait_ready()).await
    {
        eprintln!("saga-orchestrator: {err}");
        return ExitCode::FAILURE;
    }
    let one_round: Vec<Scenario> = match args.scenario {
        ScenarioArg::Success => vec![Scenario::Success],
        ScenarioArg::PaymentFailure => vec![Scenario::PaymentFailure],
        ScenarioArg::ShippingFailure => vec![Scenario::ShippingFailure],
        ScenarioArg::All => Scenario::ALL.to_vec(),
    };
    let count = usize::try_from(args.count).unwrap_or(usize::MAX);
    let batch = Batch {
        run_id: args
            .run_id
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()),
        scenarios: one_round
            .iter()
            .copied()
            .cycle()
            .take(one_round.len() * count)
            .collect(),
        concurrency: usize::try_from(args.concurrency).unwrap_or(1),
        verify: !args.no_verify,
    };
    tracing::info!(run_id = %batch.run_id, sagas = batch.scenarios.len(), "run started");
    let output = args.output;
    let trace_ui = settings.jaeger_ui.clone();
    let sagas = batch.run(participants, Arc::new(settings), |report| {
        print(output, report, &trace_ui);
    });
    let reports = tokio::select! {
        reports = sagas => reports,
        () = saga_common::shutdown::signal() => {
            // Sagas in flight stop here; rerunning the same --run-id finishes them, since every
            // step is idempotent.
            eprintln!("saga-orchestrator: interrupted; rerun with --run-id {} to finish", batch.run_id);
            return ExitCode::from(130);
        }
    };
    summarize(output, &batch, &reports)
}

fn print(output: Output, report: &SagaReport, trace_ui: &str) {
    match output {
        Output::Text => print!("{}", report.to_text(trace_ui)),
        Output::Json => println!("{}", report.to_json()),
    }
}

/// A summary line (on stdout with text output, stderr with JSON so stdout stays JSON lines),
/// and the exit code: 0 only if every saga ended completed or fully compensated and its
/// participants agree.
fn summarize(output: Output, batch: &Batch, reports: &[SagaReport]) -> ExitCode {
    let completed = reports
        .iter()
        .filter(|r| r.outcome == saga_orchestrator::Outcome::Completed)
        .count();
    let compensated = reports
        .iter()
        .filter(|r| r.outcome.is_compensated())
        .count();
    let inconsistent = reports
        .iter()
        .filter(|r| r.consistency.as_ref().is_some_and(|c| !c.consistent))
        .count();
    let unsettled = reports.iter().filter(|r| !r.outcome.is_settled()).count();
    let missing = batch.scenarios.len() - reports.len();
    let summary = format!(
        "run {}: {} sagas, {completed} completed, {compensated} compensated, {unsettled} failed, {inconsistent} inconsistent",
        batch.run_id,
        batch.scenarios.len()
    );
    match output {
        Output::Text => println!("{summary}"),
        Output::Json => eprintln!("{summary}"),
    }
    if unsettled + inconsistent + missing == 0 {
        return ExitCode::SUCCESS;
    }
    if let Some(report) = reports.iter().find(|r| !r.is_ok()) {
        eprintln!(
            "saga-orchestrator: saga {} ended {:?}: {}",
            report.saga_id,
            report.outcome,
            report
                .reason
                .as_deref()
                .unwrap_or("participants disagree with the outcome")
        );
    }
    ExitCode::FAILURE
}
