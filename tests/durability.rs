//! Lose nothing: what a service acknowledged survives its restart, and a batch of sagas survives
//! `kill -9` of every service in turn and of the orchestrator, on SQLite and on PostgreSQL.
//!
//! PostgreSQL comes from `POSTGRES_TEST_URL` (an admin URL; `scripts/postgres` installs
//! and starts one and `scripts/test` sets it). Every test makes its own databases.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use saga_proto::order::v1::{self as order, order_service_client::OrderServiceClient};
use sqlx::{AssertSqlSafe, PgPool};
use support::{Process, binary, free_port, temp_dir};

/// Where a service keeps its records in a test.
#[derive(Debug, Clone)]
enum Backend {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Backend {
    fn env(&self, prefix: &str) -> Vec<(String, String)> {
        match self {
            Backend::Sqlite(_) => vec![],
            Backend::Postgres(url) => vec![
                (format!("{prefix}_STORE__BACKEND"), "postgres".into()),
                (format!("{prefix}_STORE__URL"), url.clone()),
            ],
        }
    }

    fn data_dir(&self, name: &str) -> PathBuf {
        match self {
            Backend::Sqlite(dir) => dir.clone(),
            Backend::Postgres(_) => temp_dir(name),
        }
    }
}

/// A fresh PostgreSQL database, or `None` when no server is configured outside CI.
async fn postgres_database(name: &str) -> Option<String> {
    let Ok(admin) = std::env::var("POSTGRES_TEST_URL") else {
        assert!(
            std::env::var("CI").is_err(),
            "POSTGRES_TEST_URL is not set: run ./scripts/test, which starts PostgreSQL"
        );
        eprintln!("SKIPPED: POSTGRES_TEST_URL is not set (./scripts/test sets it)");
        return None;
    };
    let pool = PgPool::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("POSTGRES_TEST_URL={admin:?} does not connect: {e}"));
    let database = format!("saga_{name}_{}", std::process::id());
    sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {database}")))
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {database}")))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let base = admin
        .rsplit_once('/')
        .map_or(admin.as_str(), |(base, _)| base);
    Some(format!("{base}/{database}"))
}

fn service(
    name: &str,
    prefix: &str,
    port: u16,
    backend: &Backend,
    extra: &[(&str, &str)],
) -> Process {
    let mut env: Vec<(String, String)> = backend.env(prefix);
    env.push((format!("{prefix}_LISTEN_ADDR"), format!("127.0.0.1:{port}")));
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut process = Process::service_in(name, prefix, &env, backend.data_dir(name));
    // service_in picks its own port unless told: the LISTEN_ADDR above wins as the last setting.
    process.addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    process
}

fn kill_9(process: &mut Process) {
    process.child.kill().unwrap(); // SIGKILL
    process.child.wait().unwrap();
}

async fn restart_keeps_orders(backend: Backend) {
    let port = free_port();
    let mut first = service("order-service", "ORDER", port, &backend, &[]);
    assert!(first.wait_serving().await);
    let mut client = OrderServiceClient::new(support::channel(first.url()).await);
    let mut created = Vec::new();
    for i in 0..20 {
        let request = order::CreateOrderRequest {
            idempotency_key: format!("restart-{i}"),
            user_id: "alice".into(),
            currency: "EUR".into(),
            items: vec![order::LineItem {
                sku: "book".into(),
                quantity: 1,
                unit_price_minor: 100 + i,
            }],
        };
        created.push(
            client
                .create_order(request)
                .await
                .unwrap()
                .into_inner()
                .order
                .unwrap(),
        );
    }
    let cancelled = client
        .cancel_order(order::CancelOrderRequest {
            order_id: created[0].order_id.clone(),
            reason: "test".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    created[0] = cancelled;
    kill_9(&mut first);

    let data_dir = first.data_dir.clone();
    std::mem::forget(first); // keep its directory: the restarted service reads it
    let second = service(
        "order-service",
        "ORDER",
        port,
        &backend_with_dir(&backend, data_dir),
        &[],
    );
    assert!(second.wait_serving().await);
    let mut client = OrderServiceClient::new(support::channel(second.url()).await);
    for order in &created {
        let read = client
            .get_order(order::GetOrderRequest {
                target: Some(order::get_order_request::Target::OrderId(
                    order.order_id.clone(),
                )),
            })
            .await
            .unwrap()
            .into_inner()
            .order
            .unwrap();
        assert_eq!(&read, order);
    }
}

fn backend_with_dir(backend: &Backend, dir: PathBuf) -> Backend {
    match backend {
        Backend::Sqlite(_) => Backend::Sqlite(dir),
        other => other.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_what_was_acknowledged_on_sqlite() {
    restart_keeps_orders(Backend::Sqlite(temp_dir("restart-sqlite"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_what_was_acknowledged_on_postgres() {
    if let Some(url) = postgres_database("restart").await {
        restart_keeps_orders(Backend::Postgres(url)).await;
    }
}

/// Lines written so far to `path`.
fn lines(path: &Path) -> usize {
    std::fs::File::open(path)
        .map(|f| std::io::BufReader::new(f).lines().count())
        .unwrap_or(0)
}

fn wait_for_lines(path: &Path, at_least: usize, orchestrator: &mut Child, deadline: Instant) {
    while lines(path) < at_least {
        assert!(Instant::now() < deadline, "the run made no progress");
        if let Ok(Some(status)) = orchestrator.try_wait() {
            panic!("the orchestrator ended early: {status:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sums the retries that saga reports in `path` show.
fn retries(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("steps").and_then(|s| s.as_array()).cloned())
        .flatten()
        .map(|step| step["attempts"].as_u64().unwrap_or(1).saturating_sub(1))
        .sum()
}

struct Services {
    ports: [u16; 3],
    procs: Vec<Process>,
    backends: [Backend; 3],
}

const SERVICES: [(&str, &str); 3] = [
    ("order-service", "ORDER"),
    ("payment-service", "PAYMENT"),
    ("shipping-service", "SHIPPING"),
];

/// Latency stretches the run so the kills land in its middle; transient errors add retries.
const FAULTS: [(&str, &str); 2] = [
    ("FAULTS__LATENCY_MS", "3"),
    ("FAULTS__TRANSIENT_ERROR_RATE", "0.02"),
];

impl Services {
    fn start_one(&self, index: usize) -> Process {
        let (name, prefix) = SERVICES[index];
        let faults: Vec<(String, String)> = FAULTS
            .iter()
            .map(|(k, v)| (format!("{prefix}_{k}"), (*v).to_owned()))
            .collect();
        let faults: Vec<(&str, &str)> = faults
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        service(
            name,
            prefix,
            self.ports[index],
            &self.backends[index],
            &faults,
        )
    }

    fn orchestrator(&self, args: &[&str], stdout: &Path) -> Child {
        Command::new(binary("saga-orchestrator"))
            .env(
                "SAGA_ORDER_URL",
                format!("http://127.0.0.1:{}", self.ports[0]),
            )
            .env(
                "SAGA_PAYMENT_URL",
                format!("http://127.0.0.1:{}", self.ports[1]),
            )
            .env(
                "SAGA_SHIPPING_URL",
                format!("http://127.0.0.1:{}", self.ports[2]),
            )
            .env("SAGA_WAIT_READY_SECS", "30")
            .env("SAGA_RETRY__MAX_ATTEMPTS", "60")
            .env("SAGA_RETRY__MAX_BACKOFF_MS", "250")
            .env("SAGA_COMPENSATION_RETRY__MAX_ATTEMPTS", "200")
            .env("SAGA_COMPENSATION_RETRY__MAX_BACKOFF_MS", "250")
            .env("RUST_LOG", "warn")
            .args(args)
            .stdout(std::fs::File::create(stdout).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }
}

/// 600 sagas at concurrency 16, a random mix; `kill -9` and restart each service in turn, then
/// `kill -9` the orchestrator and run the same run id again; then check every invariant.
async fn chaos(backends: [Backend; 3], label: &str) {
    const SAGAS: u64 = 600;
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut services = Services {
        ports: [free_port(), free_port(), free_port()],
        procs: Vec::new(),
        backends,
    };
    for index in 0..3 {
        let process = services.start_one(index);
        services.procs.push(process);
    }
    for process in &services.procs {
        assert!(process.wait_serving().await);
    }
    let out = temp_dir(&format!("chaos-{label}"));
    let (first_out, second_out) = (out.join("first.jsonl"), out.join("second.jsonl"));
    let run_id = format!("chaos-{label}-{}", std::process::id());
    let count = SAGAS.to_string();
    let run_args = [
        "run",
        "--run-id",
        &run_id,
        "--mix",
        "success=60,payment-failure=20,shipping-failure=20",
        "--count",
        &count,
        "--concurrency",
        "16",
        "--output",
        "json",
        "--print-sagas",
        "all",
        "--verify-sample",
        "0",
    ];
    let mut orchestrator = services.orchestrator(&run_args, &first_out);
    let mut kills = 0;
    for index in 0..3 {
        wait_for_lines(&first_out, 60 * (index + 1), &mut orchestrator, deadline);
        kill_9(&mut services.procs[index]);
        kills += 1;
        std::thread::sleep(Duration::from_millis(200));
        let restarted = services.start_one(index);
        let old = std::mem::replace(&mut services.procs[index], restarted);
        std::mem::forget(old); // its data directory is the restarted one's
    }
    wait_for_lines(&first_out, 240, &mut orchestrator, deadline);
    orchestrator.kill().unwrap();
    orchestrator.wait().unwrap();
    kills += 1;
    let done_before_kill = lines(&first_out);
    assert!(
        (done_before_kill as u64) < SAGAS,
        "the orchestrator finished before it was killed"
    );

    // The same run again drives every saga to its end.
    let mut rerun = services.orchestrator(&run_args, &second_out);
    let status = loop {
        if let Some(status) = rerun.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the rerun did not finish in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let summary = std::fs::read_to_string(&second_out).unwrap();
    assert!(
        status.success(),
        "rerun failed: {}",
        summary.lines().last().unwrap_or("")
    );

    let verify_out = out.join("verify.json");
    let first = first_out.to_string_lossy().into_owned();
    let second = second_out.to_string_lossy().into_owned();
    let mut verify = services.orchestrator(
        &[
            "verify",
            "--run-id",
            &run_id,
            "--count",
            &count,
            "--acknowledged",
            &first,
            "--acknowledged",
            &second,
            "--output",
            "json",
        ],
        &verify_out,
    );
    let verified = verify.wait().unwrap();
    let verdict: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&verify_out).unwrap().trim()).unwrap();
    let verdict = &verdict["verify"];
    let duplicates = duplicate_charges(&services.backends[1]).await;
    println!(
        "chaos on {label}: {} sagas ({} completed, {} compensated), {kills} kills, {} retries, \
         {} acknowledged writes checked, {} lost, inconsistent = {}, duplicate charges = {duplicates}, \
         unrefunded charges = {}",
        verdict["sagas"],
        verdict["completed"],
        verdict["compensated"],
        retries(&first_out) + retries(&second_out),
        verdict["acknowledged"],
        verdict["lost"].as_array().map_or(0, Vec::len),
        verdict["violations"].as_array().map_or(0, Vec::len) as u64
            + verdict["pending"].as_u64().unwrap_or(0),
        verdict["unrefunded_charges"],
    );
    assert!(verified.success(), "{verdict:#}");
    assert_eq!(verdict["missing"], 0);
    assert_eq!(verdict["pending"], 0);
    assert_eq!(verdict["unrefunded_charges"], 0);
    assert_eq!(
        verdict["completed"].as_u64().unwrap() + verdict["compensated"].as_u64().unwrap(),
        SAGAS
    );
    assert!(verdict["acknowledged"].as_u64().unwrap() > SAGAS);
    assert_eq!(duplicates, 0);
    let _ = std::fs::remove_dir_all(&out);
}

/// Orders with more than one payment, counted in the payment service's own database.
async fn duplicate_charges(backend: &Backend) -> i64 {
    // A payment's key is its order id.
    let sql = "SELECT COUNT(*) AS n FROM (SELECT key FROM payments GROUP BY key HAVING COUNT(*) > 1) AS d";
    match backend {
        Backend::Sqlite(dir) => {
            let conn = rusqlite::Connection::open_with_flags(
                dir.join("payment-service.sqlite"),
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .unwrap();
            conn.query_row(sql, [], |row| row.get(0)).unwrap()
        }
        Backend::Postgres(url) => {
            let pool = PgPool::connect(url).await.unwrap();
            let n: i64 = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
            pool.close().await;
            n
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_on_sqlite() {
    let dirs =
        ["order", "payment", "shipping"].map(|s| Backend::Sqlite(temp_dir(&format!("chaos-{s}"))));
    chaos(dirs, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_on_postgres() {
    let mut urls = Vec::new();
    for service in ["order", "payment", "shipping"] {
        match postgres_database(&format!("chaos_{service}")).await {
            Some(url) => urls.push(Backend::Postgres(url)),
            None => return,
        }
    }
    let backends: [Backend; 3] = urls.try_into().unwrap();
    chaos(backends, "postgres").await;
}
