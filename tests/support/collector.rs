//! A test OTLP collector: a real `TraceService` gRPC server (from the official
//! `opentelemetry-proto` crate) that keeps every span it receives.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::{Span, status::StatusCode};
use tokio::net::TcpListener;

/// One received span with the `service.name` of the resource that sent it.
#[derive(Debug, Clone)]
pub struct Received {
    pub service: String,
    pub span: Span,
}

impl Received {
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }
    pub fn id(&self) -> String {
        hex(&self.span.span_id)
    }
    pub fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }
    pub fn name(&self) -> &str {
        &self.span.name
    }
    pub fn attribute(&self, key: &str) -> Option<String> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref())
            .map(|value| match value {
                Value::StringValue(s) => s.clone(),
                Value::IntValue(i) => i.to_string(),
                Value::BoolValue(b) => b.to_string(),
                Value::DoubleValue(d) => d.to_string(),
                other => format!("{other:?}"),
            })
    }
    pub fn is_error(&self) -> bool {
        self.span
            .status
            .as_ref()
            .is_some_and(|s| s.code == StatusCode::Error as i32)
    }
    pub fn status_message(&self) -> String {
        self.span
            .status
            .as_ref()
            .map(|s| s.message.clone())
            .unwrap_or_default()
    }
    pub fn has_event(&self, name: &str) -> bool {
        self.span.events.iter().any(|e| e.name == name)
    }
    pub fn events_named(&self, name: &str) -> usize {
        self.span.events.iter().filter(|e| e.name == name).count()
    }
    pub fn kind(&self) -> i32 {
        self.span.kind
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, Clone, Default)]
pub struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(Received {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    /// Serves the collector on 127.0.0.1:0 for the rest of the test.
    pub async fn start() -> (Self, SocketAddr) {
        let collector = Collector::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
                .unwrap();
        });
        (collector, addr)
    }

    pub fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }

    /// Spans grouped by trace id.
    pub fn traces(&self) -> HashMap<String, Vec<Received>> {
        let mut traces: HashMap<String, Vec<Received>> = HashMap::new();
        for span in self.spans() {
            traces.entry(span.trace_id()).or_default().push(span);
        }
        traces
    }
}

/// Every way a trace's parentage is broken: more or less than one root, or a parent that is not
/// in the trace (an orphan).
pub fn parentage_problems(trace: &[Received], root_may_have_parent: Option<&str>) -> Vec<String> {
    let ids: HashSet<String> = trace.iter().map(Received::id).collect();
    let mut problems = Vec::new();
    let roots: Vec<&Received> = trace
        .iter()
        .filter(|s| {
            let parent = s.parent_id();
            parent.is_empty() || root_may_have_parent == Some(parent.as_str())
        })
        .collect();
    if roots.len() != 1 {
        problems.push(format!(
            "expected one root, found {}: {:?}",
            roots.len(),
            roots.iter().map(|s| s.name()).collect::<Vec<_>>()
        ));
    }
    for span in trace {
        let parent = span.parent_id();
        let rooted = parent.is_empty() || root_may_have_parent == Some(parent.as_str());
        if !rooted && !ids.contains(&parent) {
            problems.push(format!(
                "orphan span {} from {} (parent {parent})",
                span.name(),
                span.service
            ));
        }
    }
    problems
}
