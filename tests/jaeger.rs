//! Traces in the real Jaeger: the pinned Jaeger v2 (tests/jaeger/config.yaml, moved to free
//! ports) receives OTLP from the three services and the orchestrator; each saga of the three
//! scenarios is read back through Jaeger's own query API, `/api/traces/<trace id>`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use support::{Services, Tool, eventually, free_port, http_get, root, temp_dir};

/// One trace as Jaeger's query API returns it.
struct Trace {
    /// Span name → (service, tags as text).
    spans: Vec<(String, String, HashMap<String, String>)>,
}

impl Trace {
    fn parse(body: &str) -> Option<Vec<Trace>> {
        let answer: serde_json::Value = serde_json::from_str(body).ok()?;
        let traces = answer["data"].as_array()?;
        Some(
            traces
                .iter()
                .map(|trace| {
                    let processes = &trace["processes"];
                    let spans = trace["spans"]
                        .as_array()
                        .map(Vec::as_slice)
                        .unwrap_or_default()
                        .iter()
                        .map(|span| {
                            let process = span["processID"].as_str().unwrap_or_default();
                            let service = processes[process]["serviceName"]
                                .as_str()
                                .unwrap_or_default()
                                .to_owned();
                            let tags = span["tags"]
                                .as_array()
                                .map(Vec::as_slice)
                                .unwrap_or_default()
                                .iter()
                                .map(|tag| {
                                    let value = match &tag["value"] {
                                        serde_json::Value::String(s) => s.clone(),
                                        other => other.to_string(),
                                    };
                                    (tag["key"].as_str().unwrap_or_default().to_owned(), value)
                                })
                                .collect();
                            let name = span["operationName"].as_str().unwrap_or_default();
                            (name.to_owned(), service, tags)
                        })
                        .collect();
                    Trace { spans }
                })
                .collect(),
        )
    }

    fn services(&self) -> BTreeSet<&str> {
        self.spans.iter().map(|(_, s, _)| s.as_str()).collect()
    }

    fn compensations(&self) -> BTreeSet<&str> {
        self.spans
            .iter()
            .filter(|(_, _, tags)| {
                tags.get("saga.compensation").map(String::as_str) == Some("true")
            })
            .map(|(name, _, _)| name.as_str())
            .collect()
    }

    fn root_is_error(&self) -> Option<bool> {
        let (_, _, tags) = self
            .spans
            .iter()
            .find(|(n, _, _)| n == "saga CreateOrder")?;
        Some(
            tags.get("otel.status_code").map(String::as_str) == Some("ERROR")
                || tags.get("error").map(String::as_str) == Some("true"),
        )
    }
}

/// tests/jaeger/config.yaml with every port replaced by a free one: (config, OTLP gRPC
/// endpoint, query URL, health URL).
fn jaeger_config() -> (String, String, String, String) {
    let mut config = std::fs::read_to_string(root().join("tests/jaeger/config.yaml")).unwrap();
    let mut ports = HashMap::new();
    for port in [4317, 4318, 16685, 16686, 13133] {
        let free = free_port();
        config = config.replace(&format!("127.0.0.1:{port}"), &format!("127.0.0.1:{free}"));
        ports.insert(port, free);
    }
    (
        config,
        format!("http://127.0.0.1:{}", ports[&4317]),
        format!("http://127.0.0.1:{}", ports[&16686]),
        format!("http://127.0.0.1:{}/status", ports[&13133]),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_saga_is_one_trace_in_jaeger() {
    let dir = temp_dir("jaeger");
    let (config, otlp, query, health) = jaeger_config();
    std::fs::write(dir.join("config.yaml"), config).unwrap();
    let jaeger = Tool::start("jaeger", &["--config".into(), "config.yaml".into()], dir);
    assert!(jaeger.wait_ready(&health).await);
    assert!(jaeger.wait_ready(&format!("{query}/api/services")).await);

    // Jaeger takes traces only: metrics stay home.
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_TRACES_SAMPLER", "always_on"),
        ("OTEL_METRICS_EXPORTER", "none"),
    ];
    let services = Services::start_with(&env);
    for process in [&services.order, &services.payment, &services.shipping] {
        assert!(process.wait_serving().await);
    }
    let output = services
        .orchestrator()
        .envs(env)
        .args(["run", "--scenario", "all", "--output", "json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let sagas: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|value| value.get("summary").is_none())
        .collect();
    assert_eq!(sagas.len(), 3, "{sagas:?}");
    // SIGTERM flushes the services' last spans.
    services.terminate();

    let all: BTreeSet<&str> = [
        "saga-orchestrator",
        "order-service",
        "payment-service",
        "shipping-service",
    ]
    .into();
    for saga in &sagas {
        let trace_id = saga["trace_id"].as_str().expect("trace_id in the report");
        let outcome = saga["outcome"].as_str().unwrap();
        let (compensations, error): (&[&str], bool) = match outcome {
            "completed" => (&[], false),
            "payment_failed" => (&["CancelOrder"], true),
            "shipping_failed" => (&["FailOrder", "RefundPayment", "CancelOrder"], true),
            other => panic!("unexpected outcome {other}"),
        };
        let compensations: BTreeSet<&str> = compensations.iter().copied().collect();
        let url = format!("{query}/api/traces/{trace_id}");
        let mut last = String::new();
        // Export is batched: poll until the whole trace is there, within a bound.
        let complete = eventually(Duration::from_secs(30), || {
            let body = http_get(&url, &[]).unwrap_or_default();
            let ok = Trace::parse(&body).is_some_and(|traces| {
                traces.len() == 1
                    && traces[0].services() == all
                    && traces[0].compensations() == compensations
                    && traces[0].root_is_error() == Some(error)
            });
            last = body;
            async move { ok }
        })
        .await;
        assert!(
            complete,
            "{outcome} saga {trace_id}: Jaeger holds {last}\nJaeger's log:\n{}",
            jaeger.log()
        );
    }
}
