//! Trace propagation, both halves: a server span per gRPC call, parented on the caller's
//! (`GrpcTraceLayer`), and a client span per call through a channel, its context sent along
//! (`GrpcClientTraceLayer`).
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

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
        let path = request.uri().path().trim_start_matches('/').to_owned();
        if path.starts_with("grpc.health.") || path.starts_with("grpc.reflection.") {
            return Box::pin(self.inner.call(request));
        }
        let parent = super::extract(request.headers());
        if !super::sampled(&parent) {
            // The caller's trace is not exported: neither is this part of it.
            return Box::pin(super::unsampled(parent, self.inner.call(request)));
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
        let _ = span.set_parent(parent);
        let future = self.inner.call(request);
        Box::pin(async move {
            let result = future.instrument(span.clone()).await;
            if let Ok(response) = &result {
                let (code, message) = grpc_status(response.headers());
                span.record("rpc.grpc.status_code", code);
                if server_error(code) {
                    span.set_status(opentelemetry::trace::Status::error(message.to_owned()));
                }
            }
            result
        })
    }
}

tokio::task_local! {
    /// Set while the current span stands for the calls made (see [`calls_traced_by_span`]).
    static CALLS_IN_SPAN: ();
}

/// Runs `work` with the current span standing for its gRPC calls: they open no client span of
/// their own and carry the current span's context, so the services' spans hang under it. A
/// saga step's span does this: it records the step, its attempts (an event per failed one) and
/// its outcome, and a client span per call beside it would double the spans of a saga.
pub async fn calls_traced_by_span<F: Future>(work: F) -> F::Output {
    CALLS_IN_SPAN.scope((), work).await
}

/// Wraps a channel so that its calls are traced.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcClientTraceLayer;

impl<S> tower_layer::Layer<S> for GrpcClientTraceLayer {
    type Service = GrpcClientTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcClientTrace { inner }
    }
}

/// The service [`GrpcClientTraceLayer`] wraps around a channel.
#[derive(Debug, Clone)]
pub struct GrpcClientTrace<S> {
    inner: S,
}

/// The gRPC status of a response whose headers carry it (unary errors come back
/// trailers-only); a response without one succeeded so far.
pub fn grpc_status(headers: &http::HeaderMap) -> (i32, &str) {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let code = header("grpc-status")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (code, header("grpc-message").unwrap_or_default())
}

impl<S, B, R> tower_service::Service<http::Request<B>> for GrpcClientTrace<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if CALLS_IN_SPAN.try_with(|_| ()).is_ok() {
            let context = super::sampling::unsampled_context()
                .unwrap_or_else(|| tracing::Span::current().context());
            super::inject(&context, request.headers_mut());
            return Box::pin(self.inner.call(request));
        }
        let path = request.uri().path().trim_start_matches('/').to_owned();
        let (service, method) = path.split_once('/').unwrap_or((path.as_str(), ""));
        let span = tracing::info_span!(
            "grpc.client",
            otel.name = %path,
            otel.kind = "client",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        // In an unsampled trace the span is not traced; its context still goes along.
        let context = super::sampling::unsampled_context().unwrap_or_else(|| span.context());
        super::inject(&context, request.headers_mut());
        let future = self.inner.call(request);
        Box::pin(async move {
            let result = future.instrument(span.clone()).await;
            // Any code but OK is an error on a client span (OpenTelemetry's RPC conventions).
            let (code, message) = match &result {
                Ok(response) => {
                    let (code, message) = grpc_status(response.headers());
                    (code, message.to_owned())
                }
                Err(err) => (tonic::Code::Unavailable as i32, err.to_string()),
            };
            span.record("rpc.grpc.status_code", code);
            if code != 0 {
                let code = tonic::Code::from_i32(code);
                span.set_status(opentelemetry::trace::Status::error(format!(
                    "{code:?}: {message}"
                )));
            }
            result
        })
    }
}
