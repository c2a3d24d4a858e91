//! Shared test harness: the three services in-process on ephemeral ports, and the paths of the
//! real binaries and tools.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use order_service::OrderApi;
use order_service::orders::Orders;
use payment_service::PaymentApi;
use payment_service::payments::Payments;
use saga_common::faults::{BusinessFaults, InjectedFaults, TransientFaults};
use saga_common::settings::ShutdownSettings;
use saga_orchestrator::OrchestratorSettings;
use saga_orchestrator::grpc::GrpcParticipants;
use saga_orchestrator::retry::RetryPolicy;
use saga_proto::order::v1::order_service_server::OrderServiceServer;
use saga_proto::payment::v1::payment_service_server::PaymentServiceServer;
use saga_proto::shipping::v1::shipping_service_server::ShippingServiceServer;
use saga_store::Repository as _;
use shipping_service::ShippingApi;
use shipping_service::shipments::Shipments;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A server running in this process until stopped or dropped.
pub struct Server {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Server {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Begins the graceful shutdown and returns at once.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Shuts down and waits for the server to finish.
    pub async fn stop(mut self) {
        self.begin_shutdown();
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Serves `service` on 127.0.0.1:0 with the shared bootstrap (health, reflection, shutdown).
pub async fn serve<S>(service: S, shutdown: ShutdownSettings) -> Server
where
    S: saga_common::server::GrpcService,
{
    serve_limited(service, shutdown, saga_common::settings::Limits::default()).await
}

/// As [`serve`], with the given overload limits.
pub async fn serve_limited<S>(
    service: S,
    shutdown: ShutdownSettings,
    limits: saga_common::settings::Limits,
) -> Server
where
    S: saga_common::server::GrpcService,
{
    serve_with(service, shutdown, limits, InjectedFaults::default()).await
}

/// As [`serve`], with overload limits and injected faults.
pub async fn serve_with<S>(
    service: S,
    shutdown: ShutdownSettings,
    limits: saga_common::settings::Limits,
    faults: InjectedFaults,
) -> Server
where
    S: saga_common::server::GrpcService,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let signal = async move {
            let _ = stopped.await;
        };
        let options = saga_common::server::ServeOptions {
            shutdown,
            limits,
            faults,
            ..Default::default()
        };
        saga_common::server::serve(service, listener, options, signal)
            .await
            .unwrap();
    });
    Server {
        addr,
        stop: Some(stop),
        task: Some(task),
    }
}

/// Faults of the three services.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub order: TransientFaults,
    pub payment: BusinessFaults,
    pub shipping: BusinessFaults,
}

impl Faults {
    /// Failure injection allowed, nothing else.
    pub fn injectable() -> Self {
        let allow = BusinessFaults {
            allow_injection: true,
            ..BusinessFaults::default()
        };
        Self {
            order: TransientFaults::default(),
            payment: allow.clone(),
            shipping: allow,
        }
    }
}

/// The three services with their stores kept at hand for assertions.
pub struct Cluster {
    pub order: Server,
    pub payment: Server,
    pub shipping: Server,
    pub orders: Arc<Orders>,
    pub payments: Arc<Payments>,
    pub shipments: Arc<Shipments>,
}

pub fn quick_shutdown() -> ShutdownSettings {
    ShutdownSettings {
        drain_delay_ms: 0,
        grace_period_secs: 5,
    }
}

impl Cluster {
    pub async fn start(faults: Faults) -> Self {
        let orders = Arc::new(Orders::in_memory());
        let payments = Arc::new(Payments::in_memory());
        let shipments = Arc::new(Shipments::in_memory());
        let limits = saga_common::settings::Limits::default;
        let order = serve_with(
            OrderServiceServer::new(OrderApi::new(orders.clone())),
            quick_shutdown(),
            limits(),
            faults.order.injected(),
        )
        .await;
        let payment = serve_with(
            PaymentServiceServer::new(PaymentApi::new(payments.clone(), faults.payment.clone())),
            quick_shutdown(),
            limits(),
            faults.payment.transient().injected(),
        )
        .await;
        let shipping = serve_with(
            ShippingServiceServer::new(ShippingApi::new(
                shipments.clone(),
                faults.shipping.clone(),
            )),
            quick_shutdown(),
            limits(),
            faults.shipping.transient().injected(),
        )
        .await;
        Self {
            order,
            payment,
            shipping,
            orders,
            payments,
            shipments,
        }
    }

    /// Orchestrator settings aimed at this cluster, with quick retries.
    pub fn settings(&self) -> OrchestratorSettings {
        OrchestratorSettings {
            order_url: self.order.url(),
            payment_url: self.payment.url(),
            shipping_url: self.shipping.url(),
            retry: RetryPolicy {
                max_attempts: 30,
                call_timeout_ms: 1_000,
                initial_backoff_ms: 1,
                max_backoff_ms: 20,
            },
            compensation_retry: RetryPolicy {
                max_attempts: 60,
                call_timeout_ms: 1_000,
                initial_backoff_ms: 1,
                max_backoff_ms: 20,
            },
            wait_ready_secs: 5,
            ..OrchestratorSettings::default()
        }
    }

    pub fn participants(&self) -> GrpcParticipants {
        GrpcParticipants::new(&self.settings()).unwrap()
    }
}

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A binary of the workspace, built by `cargo build --workspace` (the test command does it).
pub fn binary(name: &str) -> PathBuf {
    // Test executables live in target/<profile>/deps; the binaries one level up.
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace`, which ./scripts/test does)",
        path.display()
    );
    path
}

/// A pinned tool installed by `scripts/install-tools` into `.tools/bin`.
pub fn tool(name: &str) -> PathBuf {
    let path = root().join(".tools/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run ./scripts/install-tools (./scripts/test does it)",
        path.display()
    );
    path
}

/// Polls `check` until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

impl Cluster {
    pub async fn orders_all(&self) -> Vec<order_service::orders::Order> {
        self.orders.repository().all().await.unwrap()
    }
    pub async fn payments_all(&self) -> Vec<payment_service::payments::Payment> {
        self.payments.repository().all().await.unwrap()
    }
    pub async fn shipments_all(&self) -> Vec<shipping_service::shipments::Shipment> {
        self.shipments.repository().all().await.unwrap()
    }
}

/// A connected channel to `url`.
pub async fn channel(url: String) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A real binary running as a child process; killed when dropped.
pub struct Process {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    /// Its SQLite directory, removed when dropped.
    pub data_dir: PathBuf,
}

/// A fresh directory under the system's temp dir, unique to this process and call.
pub fn temp_dir(name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("order-saga-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A loopback port free at the time of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Process {
    /// Starts service `name` (e.g. `payment-service`) with env prefix `prefix` on a free port,
    /// on SQLite in a fresh directory, failure injection allowed, plus `env`.
    pub fn service(name: &str, prefix: &str, env: &[(&str, &str)]) -> Self {
        Self::service_in(name, prefix, env, temp_dir(name))
    }

    /// As [`Process::service`], keeping its SQLite database in `data_dir`.
    pub fn service_in(name: &str, prefix: &str, env: &[(&str, &str)], data_dir: PathBuf) -> Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut command = std::process::Command::new(binary(name));
        command
            .env(format!("{prefix}_LISTEN_ADDR"), addr.to_string())
            .env(format!("{prefix}_STORE__DATA_DIR"), &data_dir)
            .env(format!("{prefix}_SHUTDOWN__DRAIN_DELAY_MS"), "0")
            // Many services run at once: the default metrics ports (9091-9093) would clash.
            .env(format!("{prefix}_METRICS_LISTEN_ADDR"), "127.0.0.1:0")
            .env("LOG_FORMAT", "json")
            .stdout(std::process::Stdio::null())
            // A file, not a pipe nobody reads: a busy service would block on a full pipe.
            .stderr(std::fs::File::create(data_dir.join("stderr.log")).unwrap());
        // The order service is left strict: tests/faults.rs checks that it refuses faults then.
        if prefix != "ORDER" {
            command.env(format!("{prefix}_FAULTS__ALLOW_INJECTION"), "true");
        }
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().unwrap();
        Self {
            child,
            addr,
            data_dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits until the overall health check answers SERVING; on failure, prints the service's
    /// log.
    pub async fn wait_serving(&self) -> bool {
        let serving = self.poll_serving().await;
        if !serving {
            let log = std::fs::read_to_string(self.data_dir.join("stderr.log")).unwrap_or_default();
            eprintln!("{} never served; its log:\n{log}", self.addr);
        }
        serving
    }

    async fn poll_serving(&self) -> bool {
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
        let url = self.url();
        eventually(Duration::from_secs(20), || {
            let url = url.clone();
            async move {
                let Ok(channel) = tonic::transport::Endpoint::from_shared(url)
                    .unwrap()
                    .connect()
                    .await
                else {
                    return false;
                };
                let request = HealthCheckRequest {
                    service: String::new(),
                };
                HealthClient::new(channel)
                    .check(request)
                    .await
                    .is_ok_and(|r| r.get_ref().status == 1)
            }
        })
        .await
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().unwrap()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// The three real service binaries on free ports.
pub struct Services {
    pub order: Process,
    pub payment: Process,
    pub shipping: Process,
}

impl Services {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// The three services with extra environment variables.
    pub fn start_with(env: &[(&str, &str)]) -> Self {
        Self {
            order: Process::service("order-service", "ORDER", env),
            payment: Process::service("payment-service", "PAYMENT", env),
            shipping: Process::service("shipping-service", "SHIPPING", env),
        }
    }

    /// Stops the three with SIGTERM (which flushes their spans) and checks they exit cleanly.
    pub fn terminate(mut self) {
        for process in [&mut self.order, &mut self.payment, &mut self.shipping] {
            let status = process.terminate();
            assert!(status.success(), "{status:?}");
        }
    }

    /// The orchestrator binary, aimed at these services.
    pub fn orchestrator(&self) -> std::process::Command {
        let mut command = std::process::Command::new(binary("saga-orchestrator"));
        command
            .env("SAGA_ORDER_URL", self.order.url())
            .env("SAGA_PAYMENT_URL", self.payment.url())
            .env("SAGA_SHIPPING_URL", self.shipping.url())
            .env("SAGA_WAIT_READY_SECS", "20")
            .env("LOG_FORMAT", "json");
        command
    }
}
pub mod collector;

/// The body of a GET of `url` (curl, bounded to 5 s), or `None` on any failure; `query`
/// pairs are URL-encoded.
pub fn http_get(url: &str, query: &[(&str, &str)]) -> Option<String> {
    let mut command = std::process::Command::new("curl");
    command.args(["-fsS", "--max-time", "5", "-G", url]);
    for (key, value) in query {
        command
            .arg("--data-urlencode")
            .arg(format!("{key}={value}"));
    }
    let output = command.output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A pinned Go-built tool (Prometheus, Jaeger) running as a child process; killed when
/// dropped, with its log kept in its directory.
pub struct Tool {
    pub child: std::process::Child,
    pub dir: PathBuf,
}

impl Tool {
    /// Starts `.tools/bin/<name>` with `args` in a fresh directory (its working directory).
    pub fn start(name: &str, args: &[String], dir: PathBuf) -> Self {
        let child = std::process::Command::new(tool(name))
            .args(args)
            .current_dir(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("log")).unwrap())
            .spawn()
            .unwrap();
        Self { child, dir }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// Waits until `url` answers 2xx; on failure, prints the tool's log.
    pub async fn wait_ready(&self, url: &str) -> bool {
        let ready = eventually(Duration::from_secs(60), || async {
            http_get(url, &[]).is_some()
        })
        .await;
        if !ready {
            eprintln!("{url} never answered; the log:\n{}", self.log());
        }
        ready
    }
}

impl Drop for Tool {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
