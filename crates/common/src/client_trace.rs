//! The client side of gRPC tracing, mirroring the server's layer: every call through a wrapped
//! channel is a client span named `package.Service/Method` with the `rpc.*` attributes, a child
//! of the caller's span, whose W3C context travels in the request headers.
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

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
pub(crate) fn grpc_status(headers: &http::HeaderMap) -> (i32, &str) {
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
        crate::telemetry::inject(&span.context(), request.headers_mut());
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
