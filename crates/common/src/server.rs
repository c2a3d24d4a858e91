//! The gRPC server bootstrap every service shares: health (overall and per service), reflection
//! v1 and v1alpha, and a graceful shutdown that turns health NOT_SERVING first.
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::config::{self, EXIT_BAD_CONFIG};
use crate::settings::{FaultSettings, Limits, OpenStore, ServiceSettings, ShutdownSettings};
use crate::telemetry::{GrpcTraceLayer, RpcMetricsLayer};

/// Process exit code when a dependency (the store) cannot be reached (EX_UNAVAILABLE).
pub const EXIT_UNAVAILABLE: u8 = 69;

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
    /// Faults injected around every RPC (none by default).
    pub faults: crate::faults::InjectedFaults,
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
        faults,
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
    let reflection = reflection(S::NAME)?;
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
        // Outermost first: an injected fault shows in the call's server span and metrics; the
        // metrics layer polls the trace layer's boxed future in place (no second box).
        .layer(RpcMetricsLayer::new(
            S::NAME,
            saga_proto::FILE_DESCRIPTOR_SET,
        ))
        .layer(GrpcTraceLayer)
        .layer(crate::faults::FaultLayer::new(faults))
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

/// The ports a service listens on unless its settings say otherwise.
#[derive(Debug, Clone, Copy)]
pub struct DefaultPorts {
    pub grpc: u16,
    /// `GET /metrics`.
    pub metrics: u16,
}

/// The whole life of a service binary: settings, telemetry, TLS, store, bind, serve, drain,
/// flush. `env_prefix` names its environment variables, `ports` are used when `listen_addr`
/// or `metrics_listen_addr` is unset; `make` builds the gRPC service from settings and the
/// opened store.
pub async fn run_service<F, St, T, S>(
    name: &str,
    env_prefix: &str,
    ports: DefaultPorts,
    make: impl FnOnce(&ServiceSettings<F, St>, T) -> S,
) -> ExitCode
where
    F: FaultSettings,
    St: OpenStore<T>,
    S: GrpcService,
{
    use clap::Parser;
    let cli = ServiceCli::parse();
    let settings: ServiceSettings<F, St> = match config::load(env_prefix, cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("{name}: {err}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let metrics_addr = settings.metrics_listen_addr.resolve(ports.metrics);
    let telemetry = crate::telemetry::init_with(name, metrics_addr.is_some());
    // TLS before the store: a bad path fails fast, without creating a database.
    let tls = match settings.tls.config() {
        Ok(tls) => tls,
        Err(err) => {
            eprintln!("{name}: invalid setting: {err}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    // The store before binding: a service reports SERVING only once it can keep what it
    // acknowledges.
    let store = match settings.store.open_store(name).await {
        Ok(store) => store,
        Err(err) => {
            tracing::error!(%err, "cannot open the store");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    let addr = settings
        .listen_addr
        .unwrap_or(SocketAddr::from(([0, 0, 0, 0], ports.grpc)));
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
    let metrics = match (metrics_addr, telemetry.registry()) {
        (Some(metrics_addr), Some(registry)) => match TcpListener::bind(metrics_addr).await {
            Ok(listener) => {
                let bound = listener.local_addr().unwrap_or(metrics_addr);
                tracing::info!(metrics_addr = %bound, "metrics at GET /metrics");
                let serving = crate::telemetry::exposition::serve(
                    listener,
                    registry.clone(),
                    std::future::pending(),
                );
                Some(tokio::spawn(serving))
            }
            Err(err) => {
                let variable = format!("{env_prefix}_METRICS_LISTEN_ADDR");
                tracing::error!(%metrics_addr, %err, "cannot listen for metrics; is another process using the port? Set {variable} to another address, or to the empty string to turn metrics off");
                eprintln!(
                    "{name}: cannot listen for metrics on {metrics_addr}: {err}; set {variable} to another address, or empty to turn metrics off"
                );
                return ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    let options = ServeOptions {
        shutdown: settings.shutdown.clone(),
        limits: settings.limits,
        tls,
        health_listener,
        faults: settings.faults.injected(),
    };
    let service = make(&settings, store);
    let served = serve(service, listener, options, crate::shutdown::signal()).await;
    // Scrapes are answered through the drain; they stop with the process.
    if let Some(metrics) = metrics {
        metrics.abort();
    }
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
