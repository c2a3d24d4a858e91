//! `saga-echo-load`: the floor the benchmark compares sagas with. It sends unary
//! `grpc.health.v1.Health/Check` calls (a tiny request, a tiny answer, served by the same
//! bootstrap as every saga call, and not traced) to one of our services over one HTTP/2
//! connection, as the orchestrator does, with `--concurrency` calls in flight, and prints the
//! rate and latency as one JSON object.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use hdrhistogram::Histogram;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The service to call, e.g. http://127.0.0.1:50051.
    #[arg(long)]
    url: String,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: u64,
    /// Calls in all (after a warm-up of a tenth as many).
    #[arg(long, default_value_t = 100_000)]
    requests: u64,
}

async fn drive(
    client: HealthClient<tonic::transport::Channel>,
    next: Arc<AtomicU64>,
    total: u64,
) -> anyhow::Result<Histogram<u64>> {
    let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut client = client;
    while next.fetch_add(1, Ordering::Relaxed) < total {
        let started = Instant::now();
        client
            .check(HealthCheckRequest::default())
            .await
            .context("health check failed")?;
        latencies.record(
            u64::try_from(started.elapsed().as_micros())
                .unwrap_or(u64::MAX)
                .max(1),
        )?;
    }
    Ok(latencies)
}

async fn round(
    client: &HealthClient<tonic::transport::Channel>,
    concurrency: u64,
    total: u64,
) -> anyhow::Result<(Histogram<u64>, Duration)> {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        tasks.spawn(drive(client.clone(), next.clone(), total));
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    while let Some(joined) = tasks.join_next().await {
        all.add(joined??)?;
    }
    Ok((all, started.elapsed()))
}

// One thread, as the orchestrator: the floor is the gRPC stack's best, and for a client that
// is one thread (on a multi-thread runtime the client spent 50–80% more CPU per call).
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let channel = tonic::transport::Endpoint::from_shared(args.url.clone())?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", args.url))?;
    let client = HealthClient::new(channel);
    round(&client, args.concurrency, (args.requests / 10).max(1)).await?;
    let (latencies, elapsed) = round(&client, args.concurrency, args.requests).await?;
    let ms = |us: u64| us as f64 / 1000.0;
    let report = serde_json::json!({
        "requests": latencies.len(),
        "concurrency": args.concurrency,
        "elapsed_secs": elapsed.as_secs_f64(),
        "rpcs_per_sec": latencies.len() as f64 / elapsed.as_secs_f64(),
        "p50_ms": ms(latencies.value_at_quantile(0.5)),
        "p99_ms": ms(latencies.value_at_quantile(0.99)),
    });
    println!("{report}");
    Ok(())
}
