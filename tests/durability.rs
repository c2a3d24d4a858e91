//! Lose nothing: what a service acknowledged survives its restart, and a batch of sagas survives
//! `kill -9` of every service in turn and of the orchestrator, on SQLite and on PostgreSQL. No
//! saga is left behind: an orchestrator killed for good is made up for by `recover`, also while
//! live sagas run, and `audit` finds the whole store clean after it.
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

/// One SQLite directory per service, named for the test.
fn sqlite_backends(test: &str) -> [Backend; 3] {
    ["order", "payment", "shipping"].map(|s| Backend::Sqlite(temp_dir(&format!("{test}-{s}"))))
}

/// One fresh PostgreSQL database per service, or `None` when no server is configured.
async fn postgres_backends(test: &str) -> Option<[Backend; 3]> {
    let mut urls = Vec::new();
    for service in ["order", "payment", "shipping"] {
        urls.push(Backend::Postgres(
            postgres_database(&format!("{test}_{service}")).await?,
        ));
    }
    urls.try_into().ok()
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
        self.start_one_with(index, &[])
    }

    fn start_one_with(&self, index: usize, extra: &[(&str, &str)]) -> Process {
        let (name, prefix) = SERVICES[index];
        let faults: Vec<(String, String)> = FAULTS
            .iter()
            .map(|(k, v)| (format!("{prefix}_{k}"), (*v).to_owned()))
            .chain(
                extra
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
            )
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

    /// Starts the three services, waiting until they serve.
    async fn start(backends: [Backend; 3]) -> Self {
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
        services
    }

    /// `kill -9` of service `index`, and a restart on its data with `extra` settings.
    async fn restart_with(&mut self, index: usize, extra: &[(&str, &str)]) {
        kill_9(&mut self.procs[index]);
        let restarted = self.start_one_with(index, extra);
        assert!(restarted.wait_serving().await);
        let old = std::mem::replace(&mut self.procs[index], restarted);
        std::mem::forget(old); // its data directory is the restarted one's
    }

    /// Runs the orchestrator to its end: its exit status and what it printed.
    fn cli(&self, args: &[&str], out: &Path) -> (std::process::ExitStatus, String) {
        self.cli_with(args, out, &[])
    }

    fn cli_with(
        &self,
        args: &[&str],
        out: &Path,
        env: &[(&str, &str)],
    ) -> (std::process::ExitStatus, String) {
        let status = self.orchestrator_with(args, out, env).wait().unwrap();
        (status, std::fs::read_to_string(out).unwrap_or_default())
    }

    /// `recover --older-than 0s` then `audit`, both over the whole store: every saga settled,
    /// nothing charged that is not approved, nothing shipping on a cancelled order.
    fn recover_and_audit(&self, dir: &Path, label: &str) -> serde_json::Value {
        let (status, printed) = self.cli(
            &["recover", "--older-than", "0s", "--output", "json"],
            &dir.join("recover.jsonl"),
        );
        let summary = last_json(&printed)["summary"].clone();
        assert!(status.success(), "recover: {status:?}\n{printed}");
        let (status, printed) = self.cli(
            &["audit", "--older-than", "0s", "--output", "json"],
            &dir.join("audit.json"),
        );
        let audit = last_json(&printed)["audit"].clone();
        println!(
            "{label}: recover found {} ({} approved, {} compensated, {} stuck); audit: {} orders, \
             {} approved, {} cancelled, {} pending, {} charged but not approved, \
             {} started shipments on cancelled orders, {} violations",
            summary["found"],
            summary["approved"],
            summary["compensated"],
            summary["stuck"],
            audit["orders"],
            audit["approved"],
            audit["cancelled"],
            audit["pending_stuck"],
            audit["charged_not_approved"],
            audit["shipped_cancelled"],
            audit["violations"].as_array().map_or(0, Vec::len),
        );
        assert!(status.success(), "audit: {status:?}\n{printed}");
        assert_eq!(audit["pending_stuck"], 0, "{audit:#}");
        assert_eq!(audit["pending_live"], 0, "{audit:#}");
        assert_eq!(audit["charged_not_approved"], 0, "{audit:#}");
        assert_eq!(audit["shipped_cancelled"], 0, "{audit:#}");
        audit
    }

    fn orchestrator(&self, args: &[&str], stdout: &Path) -> Child {
        self.orchestrator_with(args, stdout, &[])
    }

    fn orchestrator_with(&self, args: &[&str], stdout: &Path, env: &[(&str, &str)]) -> Child {
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
            .envs(env.iter().copied())
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
    let mut services = Services::start(backends).await;
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

    // Another run, its orchestrator killed for good: a new run id follows, nobody reruns the
    // old one, and `recover` settles what it left.
    let abandoned = format!("{run_id}-abandoned");
    let args = batch_args(&abandoned, "600", "16");
    let done = kill_run_after(&services, &args, &out.join("abandoned.jsonl"), 120);
    let next = format!("{run_id}-next");
    let (status, _) = services.cli(&batch_args(&next, "60", "16"), &out.join("next.jsonl"));
    assert!(status.success());
    services.recover_and_audit(
        &out,
        &format!("chaos on {label}, orchestrator killed for good after {done} sagas"),
    );
    assert_eq!(duplicate_charges(&services.backends[1]).await, 0);
    let _ = std::fs::remove_dir_all(&out);
}

/// The last JSON line of `printed`.
fn last_json(printed: &str) -> serde_json::Value {
    printed
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str(line).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// Kills the orchestrator for good once `after` sagas have ended; returns how many had.
fn kill_run_after(services: &Services, args: &[&str], out: &Path, after: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut orchestrator = services.orchestrator(args, out);
    wait_for_lines(out, after, &mut orchestrator, deadline);
    orchestrator.kill().unwrap(); // SIGKILL
    orchestrator.wait().unwrap();
    lines(out)
}

fn batch_args<'a>(run_id: &'a str, count: &'a str, concurrency: &'a str) -> Vec<&'a str> {
    vec![
        "run",
        "--run-id",
        run_id,
        "--mix",
        "success=80,payment-failure=10,shipping-failure=10",
        "--count",
        count,
        "--concurrency",
        concurrency,
        "--output",
        "json",
        "--print-sagas",
        "all",
        "--verify-sample",
        "0",
    ]
}

/// A batch whose orchestrator is killed with `kill -9` and never rerun: `recover` settles what it
/// left PENDING, from what the participants hold, and `audit` finds the whole store clean.
async fn abandoned_batch_is_recovered(backends: [Backend; 3], label: &str) {
    let services = Services::start(backends).await;
    let out = temp_dir(&format!("abandoned-{label}"));
    let run_id = format!("abandoned-{label}-{}", std::process::id());
    let args = batch_args(&run_id, "3000", "64");
    let done = kill_run_after(&services, &args, &out.join("run.jsonl"), 300);
    assert!(done < 3000, "the run finished before it was killed");
    let audit = services.recover_and_audit(&out, &format!("kill -9 on {label} after {done} sagas"));
    assert!(audit["orders"].as_u64().unwrap() as usize > done);
    assert_eq!(duplicate_charges(&services.backends[1]).await, 0);
    let _ = std::fs::remove_dir_all(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_batch_is_recovered_on_sqlite() {
    let dirs = sqlite_backends("abandoned");
    abandoned_batch_is_recovered(dirs, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_batch_is_recovered_on_postgres() {
    if let Some(backends) = postgres_backends("abandoned").await {
        abandoned_batch_is_recovered(backends, "postgres").await;
    }
}

/// `recover --older-than 0s` over and over while a batch runs: the sweeper settles live sagas
/// under their feet, and still nothing is charged twice, every saga settles once, and the
/// audit is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_is_safe_while_live_sagas_run() {
    let dirs = sqlite_backends("race");
    let services = Services::start(dirs).await;
    let out = temp_dir("race");
    let run_id = format!("race-{}", std::process::id());
    let args = batch_args(&run_id, "600", "16");
    let mut batch = services.orchestrator(&args, &out.join("run.jsonl"));
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut passes = 0;
    let mut settled_live = 0;
    while batch.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the batch did not finish in time"
        );
        let (_, printed) = services.cli(
            &["recover", "--older-than", "0s", "--output", "json"],
            &out.join(format!("recover-{passes}.jsonl")),
        );
        passes += 1;
        settled_live += last_json(&printed)["summary"]["found"]
            .as_u64()
            .unwrap_or(0);
    }
    let status = batch.wait().unwrap();
    let printed = std::fs::read_to_string(out.join("run.jsonl")).unwrap();
    assert!(status.success(), "{}", printed.lines().last().unwrap_or(""));
    assert!(
        passes > 1,
        "the batch ended before a sweeper pass ran beside it"
    );
    println!("{passes} recover passes beside the batch found {settled_live} live orders");
    services.recover_and_audit(&out, "recover beside a live batch");
    assert_eq!(duplicate_charges(&services.backends[1]).await, 0);
    let _ = std::fs::remove_dir_all(&out);
}

/// A refund that keeps failing past its retry budget parks the saga: its order stays PENDING
/// with the reason, `recover --dry-run` lists it, and the first `recover` after the fault
/// clears settles it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_compensation_is_settled_once_the_fault_clears() {
    let dirs = sqlite_backends("park");
    let mut services = Services::start(dirs).await;
    // The payment service refuses every refund for a while.
    let refunds_fail = [("PAYMENT_FAULTS__STEPS", "RefundPayment=unavailable")];
    services.restart_with(1, &refunds_fail).await;

    let out = temp_dir("park");
    let run_id = format!("park-{}", std::process::id());
    let args = [
        "run",
        "--run-id",
        &run_id,
        "--scenario",
        "shipping-failure",
        "--count",
        "2",
        "--output",
        "json",
    ];
    // A short compensation budget, so that it runs out while the fault lasts.
    let budget = [
        ("SAGA_COMPENSATION_RETRY__MAX_ATTEMPTS", "3"),
        ("SAGA_COMPENSATION_RETRY__MAX_BACKOFF_MS", "20"),
    ];
    let (_, printed) = services.cli_with(&args, &out.join("run.jsonl"), &budget);
    let parked = printed
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["outcome"] == "compensation_failed")
        .count();
    assert_eq!(parked, 2, "{printed}");

    let (status, listed) = services.cli(
        &["recover", "--older-than", "0s", "--dry-run"],
        &out.join("dry-run.txt"),
    );
    assert_eq!(status.code(), Some(1), "{listed}");
    let stuck: Vec<&str> = listed.lines().filter(|l| l.starts_with("STUCK")).collect();
    assert_eq!(stuck.len(), 2, "{listed}");
    assert!(
        stuck.iter().all(|l| l.contains("RefundPayment")),
        "{listed}"
    );

    // Still failing: recover cannot settle them, says so, and leaves them PENDING.
    let again = ["recover", "--older-than", "0s"];
    let (status, printed) = services.cli_with(&again, &out.join("r1.txt"), &budget);
    assert_eq!(status.code(), Some(1), "{printed}");

    // The fault clears.
    services.restart_with(1, &[]).await;
    let audit = services.recover_and_audit(&out, "parked compensation");
    assert_eq!(audit["cancelled"], 2, "{audit:#}");
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
    let dirs = sqlite_backends("chaos");
    chaos(dirs, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_on_postgres() {
    if let Some(backends) = postgres_backends("chaos").await {
        chaos(backends, "postgres").await;
    }
}
