//! The gRPC server bootstrap every service shares: health (overall and per service), reflection
//! v1 and v1alpha, and a graceful shutdown that turns health NOT_SERVING first.
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use serde::Deserialize;
use tokio::net::TcpListener;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::config::{self, EXIT_BAD_CONFIG, Settings};
use crate::store::postgres::PgStore;
use crate::store::sqlite::{SqliteStore, Synchronous};
use crate::store::{Record, Store, StoreError};

/// Process exit code when a dependency (the store) cannot be reached (EX_UNAVAILABLE).
pub const EXIT_UNAVAILABLE: u8 = 69;

/// How a service drains on SIGTERM.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownSettings {
    /// Time between turning health NOT_SERVING and refusing new calls, in milliseconds, so that
    /// load balancers and probes see the change first.
    pub drain_delay_ms: u64,
    /// How long in-flight calls may still run after that, in seconds.
    pub grace_period_secs: u64,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self {
            drain_delay_ms: 500,
            grace_period_secs: 10,
        }
    }
}

/// The settings of a service binary, `F` being its kind of faults.
/// Variables: `<PREFIX>_LISTEN_ADDR`, `<PREFIX>_SHUTDOWN__DRAIN_DELAY_MS`,
/// `<PREFIX>_SHUTDOWN__GRACE_PERIOD_SECS`, `<PREFIX>_FAULTS__<FIELD>`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceSettings<F> {
    /// Address to listen on; `0.0.0.0` and the service's own port when unset.
    pub listen_addr: Option<SocketAddr>,
    /// Drain and grace periods.
    pub shutdown: ShutdownSettings,
    /// Injected latency, transient errors and (payment, shipping) business failures.
    pub faults: F,
    /// Where the service keeps its records.
    pub store: StoreSettings,
    /// Bounds on concurrency and time per request.
    pub limits: Limits,
    /// TLS, and mutual TLS when a client CA is given.
    pub tls: ServerTls,
    /// A second, plaintext listener serving only `grpc.health.v1.Health`: kubelet gRPC probes
    /// cannot speak TLS.
    pub health_listen_addr: Option<SocketAddr>,
}

/// Server TLS (`<PREFIX>_TLS__*`): PEM files; a client CA turns on mutual TLS.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerTls {
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
    /// Clients must present a certificate signed by this CA.
    pub client_ca_file: Option<std::path::PathBuf>,
}

fn read_pem(what: &str, path: &std::path::Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|err| format!("cannot read {what} {}: {err}", path.display()))
}

impl ServerTls {
    /// The tonic TLS configuration, or `None` for plaintext.
    pub fn config(&self) -> Result<Option<tonic::transport::ServerTlsConfig>, String> {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let (cert, key) = match (&self.cert_file, &self.key_file) {
            (None, None) if self.client_ca_file.is_none() => return Ok(None),
            (Some(cert), Some(key)) => (read_pem("tls.cert_file", cert)?, read_pem("tls.key_file", key)?),
            _ => return Err("TLS needs both tls.cert_file and tls.key_file (and tls.client_ca_file for mutual TLS)".into()),
        };
        let mut config = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
        if let Some(ca) = &self.client_ca_file {
            config =
                config.client_ca_root(Certificate::from_pem(read_pem("tls.client_ca_file", ca)?));
        }
        Ok(Some(config))
    }
}

/// What tonic needs of a generated gRPC server (`OrderServiceServer<…>` and the like) to serve it.
pub trait GrpcService:
    tower_service::Service<
        http::Request<Body>,
        Response = http::Response<Body>,
        Error = Infallible,
        Future: Send + 'static,
    > + NamedService
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<T> GrpcService for T where
    T: tower_service::Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error = Infallible,
            Future: Send + 'static,
        > + NamedService
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// How [`serve`] runs a service besides the service itself.
#[derive(Debug, Default)]
pub struct ServeOptions {
    pub shutdown: ShutdownSettings,
    pub limits: Limits,
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    /// Plaintext health for probes when the main port speaks TLS.
    pub health_listener: Option<TcpListener>,
}

/// Overload protection: beyond `max_concurrent_requests` calls in flight on a connection, new
/// calls are refused at once with RESOURCE_EXHAUSTED (callers back off and retry) instead of
/// queueing without bound; a handler running longer than `request_timeout_ms` is cut off.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub max_concurrent_requests: usize,
    pub request_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_concurrent_requests: 1024,
            request_timeout_ms: 10_000,
        }
    }
}

/// Which store a service keeps its records in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// SQLite in `data_dir`: the embedded default, one replica.
    #[default]
    Sqlite,
    /// PostgreSQL at `url` (or `DATABASE_URL`): several replicas can share it.
    Postgres,
    /// Nothing survives a restart: tests and throwaway runs.
    Memory,
}

/// Store settings (`<PREFIX>_STORE__*`). `DATABASE_URL`, when set, selects PostgreSQL.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    pub backend: Backend,
    /// Directory of the SQLite file `<service>.sqlite`.
    pub data_dir: std::path::PathBuf,
    /// `full` survives a power cut; `normal` (WAL) only a crash of the process, and is faster.
    pub sqlite_synchronous: Synchronous,
    /// PostgreSQL URL; `DATABASE_URL` is the usual place for it (a Secret in Kubernetes).
    pub url: Option<String>,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            backend: Backend::Sqlite,
            data_dir: "data".into(),
            sqlite_synchronous: Synchronous::Full,
            url: None,
        }
    }
}

impl StoreSettings {
    /// Opens (and migrates) the store of `R` for service `name`.
    pub async fn open<R: Record>(&self, name: &str) -> Result<Store<R>, StoreError> {
        let database_url = std::env::var("DATABASE_URL")
            .ok()
            .filter(|u| !u.trim().is_empty());
        let url = self.url.clone().or(database_url);
        match (self.backend, url) {
            (Backend::Memory, _) => Ok(Store::default()),
            (_, Some(url))
                if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) =>
            {
                Err(StoreError::Unavailable(format!(
                    "the database URL must start with postgres:// (SQLite is store.backend=sqlite with store.data_dir), got {}",
                    url.split_once("://")
                        .map_or("no scheme", |(scheme, _)| scheme)
                )))
            }
            (_, Some(url)) => {
                let postgres = PgStore::connect(&url).await?;
                postgres.migrate::<R>().await?;
                Ok(Store::Postgres(postgres.repository()))
            }
            (Backend::Postgres, None) => Err(StoreError::Unavailable(
                "store.backend is postgres but neither store.url nor DATABASE_URL is set".into(),
            )),
            (Backend::Sqlite, None) => {
                let sqlite =
                    SqliteStore::open(&self.data_dir, name, self.sqlite_synchronous).await?;
                sqlite.migrate::<R>().await?;
                Ok(Store::Sqlite(sqlite.repository()))
            }
        }
    }
}

impl<F: FaultSettings> Settings for ServiceSettings<F> {
    fn check(&self) -> Result<(), String> {
        self.faults.check()
    }
}

/// Fault settings that can check themselves.
pub trait FaultSettings: serde::de::DeserializeOwned + Default {
    fn check(&self) -> Result<(), String>;
}

impl FaultSettings for crate::faults::TransientFaults {
    fn check(&self) -> Result<(), String> {
        crate::faults::TransientFaults::check(self)
    }
}

impl FaultSettings for crate::faults::BusinessFaults {
    fn check(&self) -> Result<(), String> {
        crate::faults::BusinessFaults::check(self)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Accepted connections with TCP_NODELAY: a reply is written as several small HTTP/2 frames,
/// and without it Nagle holds the last one back until the client's delayed ACK, 40 ms later.
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Serves `service` on `listener` until `shutdown` resolves, then drains and returns.
pub async fn serve<S>(
    service: S,
    listener: TcpListener,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError>
where
    S: GrpcService,
{
    let ServeOptions {
        shutdown: settings,
        limits,
        tls,
        health_listener,
    } = options;
    let (reporter, health) = tonic_health::server::health_reporter();
    // The probe port shares the reporter: it turns NOT_SERVING with the main one, and keeps
    // answering through the drain.
    let probes = health_listener.map(|listener| {
        let health = tonic_health::pb::health_server::HealthServer::new(
            tonic_health::server::HealthService::from_health_reporter(reporter.clone()),
        );
        tokio::spawn(
            Server::builder()
                .add_service(health)
                .serve_with_incoming(incoming(listener)),
        )
    });
    let reflection = crate::server::reflection(S::NAME)?;
    let reflection_alpha = reflection_alpha(S::NAME)?;
    // The listener is bound and the store is ready: only now say so.
    set_status(&reporter, S::NAME, ServingStatus::Serving).await;
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    let drain_delay = Duration::from_millis(settings.drain_delay_ms);
    let signal_reporter = reporter.clone();
    let stop_accepting = async move {
        shutdown.await;
        set_status(&signal_reporter, S::NAME, ServingStatus::NotServing).await;
        tracing::info!(?drain_delay, "health NOT_SERVING; draining");
        tokio::time::sleep(drain_delay).await;
        let _ = drained_tx.send(());
    };
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    let server = builder
        .concurrency_limit_per_connection(limits.max_concurrent_requests.max(1))
        .load_shed(true)
        .timeout(Duration::from_millis(limits.request_timeout_ms.max(1)))
        .layer(GrpcTraceLayer)
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming(listener), stop_accepting);
    let grace = Duration::from_secs(settings.grace_period_secs);
    let grace_over = async move {
        if drained_rx.await.is_ok() {
            tokio::time::sleep(grace).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = server => result?,
        () = grace_over => tracing::warn!(?grace, "grace period over; dropping calls still in flight"),
    }
    if let Some(probes) = probes {
        probes.abort();
    }
    tracing::info!("server stopped");
    Ok(())
}

async fn set_status(reporter: &HealthReporter, service: &str, status: ServingStatus) {
    // The overall entry "" follows the service: tonic-health starts it SERVING on its own.
    reporter.set_service_status("", status).await;
    reporter.set_service_status(service, status).await;
}

fn reflection_builder(service: &str) -> tonic_reflection::server::Builder<'static> {
    // Name the services so reflection lists only what this server serves, not every service
    // in the shared descriptor set.
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(saga_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .include_reflection_service(false)
        .with_service_name(service)
        .with_service_name("grpc.health.v1.Health")
        .with_service_name("grpc.reflection.v1.ServerReflection")
        .with_service_name("grpc.reflection.v1alpha.ServerReflection")
}

fn reflection(
    service: &str,
) -> Result<
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::Error,
> {
    reflection_builder(service).build_v1()
}

fn reflection_alpha(
    service: &str,
) -> Result<
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
    tonic_reflection::server::Error,
> {
    reflection_builder(service).build_v1alpha()
}

/// Command line of a service binary.
#[derive(Debug, clap::Parser)]
#[command(version)]
struct ServiceCli {
    /// Optional settings file (TOML); environment variables override it.
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
}

/// The whole life of a service binary: settings, telemetry, bind, serve, drain, flush.
/// `env_prefix` names its environment variables, `default_port` is used when
/// `listen_addr` is unset; `make` builds the gRPC service from settings.
pub async fn run_service<F, R, S>(
    name: &str,
    env_prefix: &str,
    default_port: u16,
    make: impl FnOnce(&ServiceSettings<F>, Store<R>) -> S,
) -> ExitCode
where
    F: FaultSettings,
    R: Record,
    S: GrpcService,
{
    use clap::Parser;
    let cli = ServiceCli::parse();
    let settings: ServiceSettings<F> = match config::load(env_prefix, cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("{name}: {err}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let telemetry = crate::telemetry::init(name);
    // The store first: a service reports SERVING only once it can keep what it acknowledges.
    let store = match settings.store.open::<R>(name).await {
        Ok(store) => store,
        Err(err) => {
            tracing::error!(%err, "cannot open the store");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    let tls = match settings.tls.config() {
        Ok(tls) => tls,
        Err(err) => {
            eprintln!("{name}: invalid setting: {err}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let addr = settings
        .listen_addr
        .unwrap_or(SocketAddr::from(([0, 0, 0, 0], default_port)));
    let listener = match TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!(%addr, %err, "cannot listen; is another process using the port?");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(%addr, service = S::NAME, tls = tls.is_some(), "listening");
    let health_listener = match settings.health_listen_addr {
        None => None,
        Some(health_addr) => match TcpListener::bind(health_addr).await {
            Ok(listener) => {
                tracing::info!(%health_addr, "plaintext health for probes");
                Some(listener)
            }
            Err(err) => {
                tracing::error!(%health_addr, %err, "cannot listen for health probes");
                return ExitCode::FAILURE;
            }
        },
    };
    let options = ServeOptions {
        shutdown: settings.shutdown.clone(),
        limits: settings.limits,
        tls,
        health_listener,
    };
    let service = make(&settings, store);
    let served = serve(service, listener, options, crate::shutdown::signal()).await;
    // The last spans leave before the process does.
    telemetry.shutdown().await;
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(%err, "server failed");
            ExitCode::FAILURE
        }
    }
}

/// Opens the server span of every call as a child of the caller's span (W3C `traceparent` read
/// from the request headers before the span is entered), named `package.Service/Method`, with
/// the `rpc.*` attributes and the gRPC status code. The handlers open no spans of their own:
/// what the domain logs (a decline, a refund, a cancel) becomes an event of this span, and a
/// trace stays small enough to keep at 100% sampling. Health checks and reflection are not
/// traced: probes would bury the sagas.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcTraceLayer;

impl<S> tower_layer::Layer<S> for GrpcTraceLayer {
    type Service = GrpcTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcTrace { inner }
    }
}

/// The service [`GrpcTraceLayer`] wraps around each gRPC service.
#[derive(Debug, Clone)]
pub struct GrpcTrace<S> {
    inner: S,
}

/// gRPC codes that are the server's fault, the ones that mark a server span as an error
/// (OpenTelemetry semantic conventions for RPC).
fn server_error(code: i32) -> bool {
    use tonic::Code;
    [
        Code::Unknown,
        Code::DeadlineExceeded,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
    ]
    .iter()
    .any(|c| *c as i32 == code)
}

impl<S, B, R> tower_service::Service<http::Request<B>> for GrpcTrace<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        use tracing::Instrument;
        use tracing_opentelemetry::OpenTelemetrySpanExt;

        let path = request.uri().path().trim_start_matches('/').to_owned();
        if path.starts_with("grpc.health.") || path.starts_with("grpc.reflection.") {
            return Box::pin(self.inner.call(request));
        }
        let (service, method) = path.split_once('/').unwrap_or((path.as_str(), ""));
        let span = tracing::info_span!(
            "grpc.server",
            otel.name = %path,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        // Without an OpenTelemetry layer there is nothing to parent; that is fine.
        let _ = span.set_parent(crate::telemetry::extract(request.headers()));
        let future = self.inner.call(request);
        Box::pin(async move {
            let result = future.instrument(span.clone()).await;
            if let Ok(response) = &result {
                // Unary errors come back trailers-only, so the status is in the headers; a
                // response without one succeeded.
                let header =
                    |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok());
                let code = header("grpc-status")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                span.record("rpc.grpc.status_code", code);
                if server_error(code) {
                    let message = header("grpc-message").unwrap_or_default().to_owned();
                    span.set_status(opentelemetry::trace::Status::error(message));
                }
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::Item;

    #[tokio::test]
    async fn a_database_url_that_is_not_postgres_is_refused() {
        let settings = StoreSettings {
            url: Some("sqlite://x.db".into()),
            ..StoreSettings::default()
        };
        let err = settings.open::<Item>("test").await.unwrap_err();
        assert!(err.to_string().contains("postgres://"), "{err}");
        assert!(err.to_string().contains("got sqlite"), "{err}");
    }
}
