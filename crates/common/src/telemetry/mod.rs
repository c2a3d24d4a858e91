//! Logs, traces and metrics for every binary.
//!
//! Logs: JSON lines carrying `trace_id`/`span_id` when stderr (where logs go) is not a terminal or
//! `LOG_FORMAT=json`, readable text on a terminal; `RUST_LOG` filters (default `info`).
//!
//! Traces: exported over OTLP only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the traces-specific
//! variable) is set; otherwise no OpenTelemetry layer is installed at all, so nothing slows down.
//! gRPC by default, `OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf` as the alternative. The SDK reads
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER(_ARG)` and `OTEL_BSP_*`.
//! Export runs on the batch processor's own thread with a bounded queue: a missing or slow
//! collector costs one warning and dropped spans, never a stalled call.
//!
//! Metrics (see [`metrics`]): the services serve them to Prometheus at `GET /metrics`; every
//! binary also exports them over OTLP when an endpoint is set (`OTEL_METRICS_EXPORTER=none`
//! turns that off, `OTEL_METRIC_EXPORT_INTERVAL` sets the period).

use std::io::IsTerminal;

use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use std::sync::atomic::{AtomicBool, Ordering};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::{EnvFilter, Layer, fmt as tfmt, prelude::*};

pub mod exposition;
mod grpc;
mod logs;
pub mod metrics;
mod propagation;
mod sampling;

pub use grpc::{
    GrpcClientTrace, GrpcClientTraceLayer, GrpcTrace, GrpcTraceLayer, calls_traced_by_span,
    grpc_status,
};
pub use logs::flush as flush_logs;
pub use metrics::{RpcMetrics, RpcMetricsLayer, StatusCounter};
pub use propagation::{extract, inject};
pub(crate) use sampling::sampled;
pub use sampling::{Root, root, start_root, unsampled};

/// Keeps telemetry alive; [`TelemetryGuard::shutdown`] flushes the last spans and metrics.
#[must_use = "telemetry stops when the guard is dropped"]
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    meters: Option<SdkMeterProvider>,
    registry: Option<prometheus::Registry>,
}

impl TelemetryGuard {
    /// Where the Prometheus exporter keeps the metrics, when asked for by [`init_with`].
    pub fn registry(&self) -> Option<&prometheus::Registry> {
        self.registry.as_ref()
    }

    /// Flushes and stops the exporters: the last metrics (a short-lived Job's only ones) and
    /// spans leave now. Both `shutdown`s block while the exporter still needs the runtime, so
    /// they run on a blocking thread.
    pub async fn shutdown(mut self) {
        if let Some(meters) = self.meters.take() {
            let flushed = tokio::task::spawn_blocking(move || meters.shutdown()).await;
            if let Ok(Err(err)) = flushed {
                tracing::warn!(%err, "could not flush the last metrics");
            }
        }
        if let Some(provider) = self.provider.take() {
            let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(err)) = flushed {
                tracing::warn!(%err, "could not flush the last spans");
            }
        }
        logs::flush_for_exit();
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let meters = self.meters.take();
        let provider = self.provider.take();
        if meters.is_some() || provider.is_some() {
            // Off the async worker: the exporters may need the runtime to finish.
            let _ = std::thread::spawn(move || {
                if let Some(meters) = meters {
                    let _ = meters.shutdown();
                }
                if let Some(provider) = provider {
                    let _ = provider.shutdown();
                }
            })
            .join();
        }
        logs::flush_for_exit();
    }
}

/// The log filter from `RUST_LOG` (default `info`).
enum LogFilter {
    /// Plain `target=level` directives: next to nothing per span or event.
    Targets(Targets),
    /// Span and field directives need `EnvFilter`, which runs on every span enter and exit.
    Env(Box<EnvFilter>),
}

fn log_filter() -> LogFilter {
    let directives = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    match directives.parse::<Targets>() {
        Ok(targets) => LogFilter::Targets(targets),
        Err(_) => LogFilter::Env(Box::new(
            EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info")),
        )),
    }
}

/// Whether logs should be JSON lines.
pub fn json_logs() -> bool {
    match std::env::var("LOG_FORMAT") {
        Ok(format) if format.eq_ignore_ascii_case("json") => true,
        Ok(format) if format.eq_ignore_ascii_case("text") => false,
        _ => !std::io::stderr().is_terminal(),
    }
}

fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.trim().is_empty())
}

/// Whether an OTLP endpoint is configured and the SDK is not disabled.
pub fn export_configured() -> bool {
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    !disabled
        && (env_set("OTEL_EXPORTER_OTLP_ENDPOINT") || env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

fn resource(service_name: &str) -> Resource {
    let detected = Resource::builder().build();
    let named = detected
        .get(&opentelemetry::Key::new("service.name"))
        .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
    let mut builder = Resource::builder()
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if !named {
        builder = builder.with_service_name(service_name.to_owned());
    }
    builder.build()
}

fn http_protocol() -> bool {
    [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ]
    .iter()
    .find_map(|name| std::env::var(name).ok())
    .is_some_and(|p| p.trim().eq_ignore_ascii_case("http/protobuf"))
}

/// Export retries stay short: a blip of the collector is bridged, a dead one costs a binary at
/// most a few hundred milliseconds on exit (the exporter's default would be about a second).
fn retry_policy() -> opentelemetry_otlp::RetryPolicy {
    opentelemetry_otlp::RetryPolicy::default()
        .with_max_retries(2)
        .with_initial_delay(std::time::Duration::from_millis(50))
        .with_max_delay(std::time::Duration::from_millis(200))
        .with_max_jitter(std::time::Duration::from_millis(20))
}

fn tracer_provider(service_name: &str) -> Result<SdkTracerProvider, String> {
    use opentelemetry_otlp::{WithHttpConfig, WithTonicConfig};
    let exporter = if http_protocol() {
        opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_retry_policy(retry_policy())
            .build()
    } else {
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_retry_policy(retry_policy())
            .build()
    }
    .map_err(|err| err.to_string())?;
    // The sampler OTEL_TRACES_SAMPLER asks for, kept for sampling::root as well.
    let sampler = opentelemetry_sdk::trace::Config::default().sampler;
    sampling::keep_sampler(sampler.box_clone());
    Ok(SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_id_generator(sampling::PinnedIds::default())
        .with_batch_exporter(WarnOnce {
            inner: exporter,
            warned: AtomicBool::new(false),
        })
        .with_resource(resource(service_name))
        .build())
}

/// An exporter that says once, in the log, that the collector cannot be reached. Spans that
/// cannot be exported are dropped: the saga never waits for the collector.
#[derive(Debug)]
struct WarnOnce<E> {
    inner: E,
    warned: AtomicBool,
}

impl<E: SpanExporter> SpanExporter for WarnOnce<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let result = self.inner.export(batch).await;
        if let Err(err) = &result
            && !self.warned.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(%err, "cannot export spans; dropping them and carrying on (warned once)");
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: std::time::Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The log layer `RUST_LOG` asks for, JSON lines when `json` ([`json_logs`]); `traced` when
/// spans go to OpenTelemetry (JSON lines then carry their trace and span ids).
fn log_layer<S>(json: bool, traced: bool) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    if json {
        logs::flush_on_panic();
        match log_filter() {
            LogFilter::Targets(targets) => logs::JsonLogs { traced }
                .with_filter(logs::EventsOnly(targets))
                .boxed(),
            LogFilter::Env(filter) => logs::JsonLogs { traced }.with_filter(*filter).boxed(),
        }
    } else {
        let layer = tfmt::layer()
            .with_writer(std::io::stderr)
            .with_target(false);
        match log_filter() {
            LogFilter::Targets(targets) => layer.with_filter(targets).boxed(),
            LogFilter::Env(filter) => layer.with_filter(*filter).boxed(),
        }
    }
}

/// Installs logging and, when configured, trace and metric export for `service_name` (the
/// default `service.name`). Logs go to stderr so that stdout stays for a binary's real output.
pub fn init(service_name: &str) -> TelemetryGuard {
    init_with(service_name, false)
}

/// As [`init`]; with `prometheus`, metrics are also kept for the Prometheus text exposition
/// ([`TelemetryGuard::registry`], served by [`exposition::serve`]).
pub fn init_with(service_name: &str, prometheus: bool) -> TelemetryGuard {
    opentelemetry::global::set_text_map_propagator(propagator());
    let (provider, problem) = if export_configured() {
        match tracer_provider(service_name) {
            Ok(provider) => (Some(provider), None),
            Err(err) => (None, Some(err)),
        }
    } else {
        (None, None)
    };
    // Each layer filters for itself: RUST_LOG chooses what is logged, not what is traced.
    // Spans are INFO; events at INFO and above become span events.
    let otel = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(service_name.to_owned()))
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_location(false)
            // Module paths say nothing a span's name and attributes do not.
            .with_target(false)
            // Nothing reads OpenTelemetry's thread-local context (parents come from the tracing
            // span stack), and activating it on every poll of every span cost ~5% of the
            // orchestrator's CPU at 100% sampling.
            .with_context_activation(false)
            .with_filter(sampling::SampledOnly)
    });
    let (json, traced) = (json_logs(), otel.is_some());
    // No `Option` layer: an absent one counts as wanting every span (`Interest::always`), and
    // with it every INFO span of ours and of tonic's would be built and entered for nothing.
    let installed = match otel {
        Some(otel) if json => tracing_subscriber::registry()
            .with(otel)
            .with(log_layer(json, traced))
            .with(sampling::UnsampledSpansOff)
            .try_init(),
        Some(otel) => tracing_subscriber::registry()
            .with(otel)
            .with(log_layer(json, traced))
            .try_init(),
        None => tracing_subscriber::registry()
            .with(log_layer(json, traced))
            .try_init(),
    };
    if installed.is_err() {
        // Tests start several services in one process; the first subscriber wins.
        tracing::debug!(service_name, "tracing subscriber already installed");
    }
    if let Some(problem) = problem {
        tracing::warn!(%problem, "cannot export traces; continuing without them");
    }
    let registry = prometheus.then(prometheus::Registry::new);
    let meters = match metrics::provider(resource(service_name), registry.as_ref()) {
        Ok(meters) => meters,
        Err(problem) => {
            tracing::warn!(%problem, "cannot export metrics; continuing without them");
            None
        }
    };
    if let Some(meters) = &meters {
        opentelemetry::global::set_meter_provider(meters.clone());
    }
    TelemetryGuard {
        provider,
        meters,
        registry,
    }
}

/// The W3C trace id of the current span, if it is being traced and sampled (exported).
pub fn current_trace_id() -> Option<String> {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    span_context
        .is_sampled()
        .then(|| span_context.trace_id().to_string())
}

/// W3C trace context and baggage, for libraries that ask the global propagator; our calls use
/// [`inject`] and [`extract`].
fn propagator() -> TextMapCompositePropagator {
    TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ])
}

/// The context handed down in the `TRACEPARENT` (and `TRACESTATE`) environment variables, as a
/// CI system or a Job template can set them.
pub fn context_from_env() -> Option<Context> {
    // Read once: every saga of the run is a child of it.
    static FROM_ENV: std::sync::OnceLock<Option<Context>> = std::sync::OnceLock::new();
    FROM_ENV.get_or_init(read_context_from_env).clone()
}

fn read_context_from_env() -> Option<Context> {
    let traceparent = std::env::var("TRACEPARENT").ok()?;
    let mut headers = http::HeaderMap::new();
    headers.insert("traceparent", traceparent.parse().ok()?);
    if let Some(state) = std::env::var("TRACESTATE")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        headers.insert("tracestate", state);
    }
    let context = extract(&headers);
    context.span().span_context().is_valid().then_some(context)
}

/// Held by every unit test that installs a subscriber. A callsite's interest is cached for the
/// whole process and recomputed, on whichever thread registers a subscriber, from all the
/// subscribers alive then; with per-layer filters a test's subscriber can then be asked on
/// another test's thread and a span meant to be off comes out on (`events_only_creates_no_span`
/// failed 8 times in 200 runs of this crate's tests, with or without a rebuild of the cache;
/// none in 300 with this lock).
#[cfg(test)]
pub(crate) fn one_subscriber_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_round_trips_through_headers() {
        let mut headers = http::HeaderMap::new();
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        headers.insert("traceparent", traceparent.parse().unwrap());
        let context = extract(&headers);
        assert_eq!(
            context.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let mut sent = http::HeaderMap::new();
        inject(&context, &mut sent);
        assert_eq!(
            sent.get("traceparent").unwrap().to_str().unwrap(),
            traceparent
        );
    }
}
