//! Metrics, by OpenTelemetry's conventions: one `SdkMeterProvider` per process, read by a
//! Prometheus exporter (the services' `GET /metrics`) and, when `OTEL_EXPORTER_OTLP_ENDPOINT`
//! is set, by a periodic OTLP exporter. Instruments come from [`meter`]; without a provider
//! (in-process tests, a binary with nothing to export to) they are no-ops that cost nothing.
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use opentelemetry::metrics::{Counter, Histogram, Meter};
use opentelemetry::{Key, KeyValue, Value};
use opentelemetry_sdk::metrics::SdkMeterProvider;

/// The instrumentation scope of every instrument of the project.
pub const SCOPE: &str = "order-saga";

/// The meter every instrument is made from: the global provider's, so instruments must be made
/// after `telemetry::init` (the services make theirs when they build their server).
pub fn meter() -> Meter {
    opentelemetry::global::meter(SCOPE)
}

/// Bucket bounds in seconds for RPC and saga durations: sub-millisecond calls on loopback up
/// to the 10 s request timeout (OpenTelemetry's RPC advice, with the first decade split finer).
pub const DURATION_BOUNDS: [f64; 17] = [
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
    5.0, 10.0,
];

fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.trim().is_empty())
}

/// Whether metrics go out over OTLP: an endpoint is set, the SDK is not disabled, and
/// `OTEL_METRICS_EXPORTER` does not say `none`.
pub fn otlp_configured() -> bool {
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    let exporter = std::env::var("OTEL_METRICS_EXPORTER").unwrap_or_default();
    let otlp = exporter.trim().is_empty()
        || exporter
            .split(',')
            .any(|e| e.trim().eq_ignore_ascii_case("otlp"));
    !disabled
        && otlp
        && (env_set("OTEL_EXPORTER_OTLP_ENDPOINT")
            || env_set("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"))
}

fn http_protocol() -> bool {
    [
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ]
    .iter()
    .find_map(|name| std::env::var(name).ok())
    .is_some_and(|p| p.trim().eq_ignore_ascii_case("http/protobuf"))
}

/// The meter provider: a Prometheus reader on `registry` when given, a periodic OTLP reader
/// (interval from `OTEL_METRIC_EXPORT_INTERVAL`, 60 s by default) when configured. `None` when
/// there is neither, so that instruments stay no-ops.
pub(crate) fn provider(
    resource: opentelemetry_sdk::Resource,
    registry: Option<&prometheus::Registry>,
) -> Result<Option<SdkMeterProvider>, String> {
    let otlp = otlp_configured();
    if registry.is_none() && !otlp {
        return Ok(None);
    }
    let mut builder = SdkMeterProvider::builder().with_resource(resource);
    if let Some(registry) = registry {
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            // One scope for everything: its labels on every series would only add noise.
            .scope_info_enabled(false)
            .build()
            .map_err(|err| format!("cannot build the Prometheus exporter: {err}"))?;
        builder = builder.with_reader(exporter);
    }
    if otlp {
        use opentelemetry_otlp::{WithHttpConfig, WithTonicConfig};
        let exporter = if http_protocol() {
            opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_retry_policy(super::retry_policy())
                .build()
        } else {
            opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .with_retry_policy(super::retry_policy())
                .build()
        }
        .map_err(|err| format!("cannot build the OTLP metric exporter: {err}"))?;
        builder = builder.with_periodic_exporter(exporter);
    }
    Ok(Some(builder.build()))
}

/// A counter of what happened to one kind of record, by `status` (`created`, `approved`, …).
#[derive(Debug, Clone)]
pub struct StatusCounter {
    counter: Counter<u64>,
}

impl StatusCounter {
    pub fn new(name: &'static str, description: &'static str) -> Self {
        Self {
            counter: meter()
                .u64_counter(name)
                .with_description(description)
                .build(),
        }
    }

    /// Counts one `status` event; the attribute is built from static strings: no allocation.
    pub fn add(&self, status: &'static str) {
        self.counter
            .add(1, &[KeyValue::new(Key::from_static_str("status"), status)]);
    }
}

/// gRPC status codes 0 (OK) to 16 (UNAUTHENTICATED).
const CODES: usize = 17;

/// The attributes of every (method, status code) pair, built once per server.
#[derive(Debug)]
struct RpcAttributes {
    /// `package.Service/Method` → its index in `tables`.
    methods: HashMap<String, usize>,
    /// Attributes by status code, one table per method; the last one is for paths the server
    /// does not serve (`rpc.method` = `_OTHER`, as the conventions say), so that a caller cannot
    /// blow up the number of series by calling made-up methods.
    tables: Vec<Vec<[KeyValue; 4]>>,
}

fn by_code(service: &Value, method: &Value) -> Vec<[KeyValue; 4]> {
    (0..CODES as i64)
        .map(|code| {
            [
                KeyValue::new(Key::from_static_str("rpc.system"), "grpc"),
                KeyValue::new(Key::from_static_str("rpc.service"), service.clone()),
                KeyValue::new(Key::from_static_str("rpc.method"), method.clone()),
                KeyValue::new(Key::from_static_str("rpc.grpc.status_code"), code),
            ]
        })
        .collect()
}

impl RpcAttributes {
    /// The methods of `service` (e.g. `order.v1.OrderService`) from the encoded descriptor set.
    fn new(service: &str, descriptors: &[u8]) -> Self {
        use prost::Message;
        let mut methods = HashMap::new();
        let mut tables = Vec::new();
        let set = prost_types::FileDescriptorSet::decode(descriptors).unwrap_or_default();
        for file in &set.file {
            for described in &file.service {
                let name = match file.package() {
                    "" => described.name().to_owned(),
                    package => format!("{package}.{}", described.name()),
                };
                if name != service {
                    continue;
                }
                let service_value = Value::from(name.clone());
                for method in &described.method {
                    let path = format!("{name}/{}", method.name());
                    methods.insert(path, tables.len());
                    tables.push(by_code(
                        &service_value,
                        &Value::from(method.name().to_owned()),
                    ));
                }
            }
        }
        tables.push(by_code(&Value::from("_OTHER"), &Value::from("_OTHER")));
        Self { methods, tables }
    }

    /// The table index of `path` (that of `_OTHER` when the server does not serve it).
    fn index(&self, path: &str) -> usize {
        self.methods
            .get(path)
            .copied()
            .unwrap_or(self.tables.len() - 1)
    }

    fn attributes(&self, index: usize, code: i32) -> &[KeyValue] {
        let code = usize::try_from(code)
            .ok()
            .filter(|c| *c < CODES)
            .unwrap_or(2);
        self.tables
            .get(index)
            .and_then(|table| table.get(code))
            .map_or(&[], |attributes| attributes.as_slice())
    }

    #[cfg(test)]
    fn get(&self, path: &str, code: i32) -> &[KeyValue] {
        self.attributes(self.index(path), code)
    }
}

/// RED metrics of every gRPC call: `rpc.server.call.duration` (seconds), by `rpc.system`,
/// `rpc.service`, `rpc.method` and `rpc.grpc.status_code` (the names the server spans carry),
/// so that its count is the calls by method and status. Health checks and reflection are not
/// counted, as they are not traced. It goes outside [`super::GrpcTraceLayer`], whose boxed
/// future it polls in place.
#[derive(Debug, Clone)]
pub struct RpcMetricsLayer {
    shared: Arc<(Histogram<f64>, RpcAttributes)>,
}

impl RpcMetricsLayer {
    /// For a server of `service` (its gRPC name), whose methods are in `descriptors`.
    pub fn new(service: &str, descriptors: &[u8]) -> Self {
        let histogram = meter()
            .f64_histogram("rpc.server.call.duration")
            .with_unit("s")
            .with_description("Duration of gRPC calls handled, by method and status code")
            .with_boundaries(DURATION_BOUNDS.to_vec())
            .build();
        Self {
            shared: Arc::new((histogram, RpcAttributes::new(service, descriptors))),
        }
    }
}

impl<S> tower_layer::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service [`RpcMetricsLayer`] wraps around each gRPC service.
#[derive(Debug, Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    shared: Arc<(Histogram<f64>, RpcAttributes)>,
}

impl<S, B, R> tower_service::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Unpin,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = RpcCall<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().trim_start_matches('/');
        let measured = !(path.starts_with("grpc.health.") || path.starts_with("grpc.reflection."));
        // The path is looked up now, while the request still owns it; the code comes later.
        let method = measured.then(|| self.shared.1.index(path));
        RpcCall {
            inner: self.inner.call(request),
            started: Instant::now(),
            method,
            shared: self.shared.clone(),
        }
    }
}

/// A call being measured.
#[derive(Debug)]
pub struct RpcCall<F> {
    inner: F,
    started: Instant,
    /// The method's attribute table; `None`: not measured (health, reflection).
    method: Option<usize>,
    shared: Arc<(Histogram<f64>, RpcAttributes)>,
}

impl<F, R, E> Future for RpcCall<F>
where
    F: Future<Output = Result<http::Response<R>, E>> + Unpin,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let result = match Pin::new(&mut this.inner).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(result) => result,
        };
        if let Some(method) = this.method.take() {
            // A transport-level error never became a gRPC status: UNKNOWN, as tonic reports it.
            let code = match &result {
                Ok(response) => super::grpc_status(response.headers()).0,
                Err(_) => tonic::Code::Unknown as i32,
            };
            let (histogram, table) = &*this.shared;
            let attributes = table.attributes(method, code);
            histogram.record(this.started.elapsed().as_secs_f64(), attributes);
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_name_the_served_methods_and_nothing_else() {
        let table = RpcAttributes::new("order.v1.OrderService", saga_proto::FILE_DESCRIPTOR_SET);
        let ok = table.get("order.v1.OrderService/CreateOrder", 0);
        assert_eq!(ok[1].value.as_str(), "order.v1.OrderService");
        assert_eq!(ok[2].value.as_str(), "CreateOrder");
        assert_eq!(ok[3].value, Value::I64(0));
        let not_found = table.get("order.v1.OrderService/GetOrder", 5);
        assert_eq!(not_found[3].value, Value::I64(5));
        let made_up = table.get("order.v1.OrderService/Nope", 12);
        assert_eq!(made_up[2].value.as_str(), "_OTHER");
        // Another service's method is not this server's.
        let elsewhere = table.get("payment.v1.PaymentService/ProcessPayment", 0);
        assert_eq!(elsewhere[1].value.as_str(), "_OTHER");
        assert_eq!(table.get("x", 99)[3].value, Value::I64(2));
    }
}
