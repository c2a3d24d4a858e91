//! One trace per saga: the real binaries export OTLP to a collector inside the test, and to the
//! real third-party collector `rotel`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use support::collector::{Collector, Received, parentage_problems};
use support::{Services, eventually};

const SERVICES: [&str; 4] = [
    "saga-orchestrator",
    "order-service",
    "payment-service",
    "shipping-service",
];
const SPAN_KIND_SERVER: i32 = 2;
const SPAN_KIND_CLIENT: i32 = 3;

/// Environment that points a binary at `endpoint` and exports quickly.
fn otel_env(endpoint: &str) -> Vec<(String, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.into()),
        ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
        ("OTEL_TRACES_SAMPLER".into(), "always_on".into()),
    ]
}

fn borrowed(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Runs the orchestrator with `args` and returns its JSON reports.
fn run_orchestrator(
    services: &Services,
    env: &[(String, String)],
    args: &[&str],
) -> Vec<serde_json::Value> {
    let output = services
        .orchestrator()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(["run", "--output", "json"])
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|value| value.get("summary").is_none())
        .collect()
}

/// Checks one saga's trace: all four services, server spans under the orchestrator's step
/// spans, no orphans, compensations and the failed step where the scenario has them.
fn check_saga_trace(trace: &[Received], saga: &serde_json::Value, parent: Option<&str>) {
    let services: HashSet<&str> = trace.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(
        services,
        SERVICES.into_iter().collect(),
        "services in the trace of {saga}"
    );
    let problems = parentage_problems(trace, parent);
    assert!(problems.is_empty(), "{problems:#?}");

    let by_id: HashMap<String, &Received> = trace.iter().map(|s| (s.id(), s)).collect();
    let servers: Vec<&Received> = trace
        .iter()
        .filter(|s| s.kind() == SPAN_KIND_SERVER)
        .collect();
    assert!(servers.len() >= 4, "server spans: {}", servers.len());
    for server in &servers {
        // Each attempt's server span hangs under its step's span, the client side of the call
        // (the read-back's calls, outside any step, have a client span each).
        let parent = by_id[&server.parent_id()];
        assert_eq!(parent.service, "saga-orchestrator", "{}", server.name());
        assert_eq!(parent.kind(), SPAN_KIND_CLIENT, "{}", server.name());
        let method = server.name().rsplit('/').next();
        assert!(
            parent.attribute("saga.step").as_deref() == method || parent.name() == server.name(),
            "{} under {}",
            server.name(),
            parent.name()
        );
        assert!(
            server.name().contains(".v1.") && server.name().contains('/'),
            "{}",
            server.name()
        );
        assert_eq!(server.attribute("rpc.system").as_deref(), Some("grpc"));
        assert!(
            server.attribute("rpc.service").is_some() && server.attribute("rpc.method").is_some()
        );
        assert!(
            server.attribute("rpc.grpc.status_code").is_some(),
            "{}",
            server.name()
        );
    }

    let root = trace
        .iter()
        .find(|s| s.name() == "saga CreateOrder")
        .expect("root span");
    assert_eq!(root.service, "saga-orchestrator");
    assert_eq!(
        root.attribute("saga.id").as_deref(),
        saga["saga_id"].as_str()
    );
    assert_eq!(
        root.attribute("order.id").as_deref(),
        saga["order_id"].as_str()
    );
    assert_eq!(
        root.attribute("payment.id").as_deref(),
        saga["payment_id"].as_str()
    );
    assert_eq!(
        root.attribute("shipping.id").as_deref(),
        saga["shipping_id"].as_str()
    );

    let steps: Vec<&Received> = trace
        .iter()
        .filter(|s| s.attribute("saga.step").is_some())
        .collect();
    let compensations: Vec<&str> = steps
        .iter()
        .filter(|s| s.attribute("saga.compensation").as_deref() == Some("true"))
        .map(|s| s.name())
        .collect();
    let failed: Vec<&str> = steps
        .iter()
        .filter(|s| s.is_error())
        .map(|s| s.name())
        .collect();
    let events = |name: &str| trace.iter().any(|s| s.has_event(name));
    match saga["outcome"].as_str().unwrap() {
        "completed" => {
            assert!(compensations.is_empty() && failed.is_empty());
            assert!(!root.is_error());
        }
        "payment_failed" => {
            assert_eq!(compensations, ["CancelOrder"]);
            assert_eq!(failed, ["ProcessPayment"]);
            assert!(root.is_error() && root.status_message().contains("DECLINED"));
            assert!(events("payment declined") && events("order cancelled"));
        }
        "shipping_failed" => {
            assert_eq!(compensations, ["FailOrder", "RefundPayment", "CancelOrder"]);
            assert_eq!(failed, ["StartShipping"]);
            assert!(root.is_error() && root.status_message().contains("FAILED"));
            assert!(
                events("shipment failed")
                    && events("payment refunded")
                    && events("order cancelled")
            );
        }
        other => panic!("unexpected outcome {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_per_saga_across_all_four_services() {
    let (collector, addr) = Collector::start().await;
    let env = otel_env(&format!("http://{addr}"));
    let services = Services::start_with(&borrowed(&env));
    let sagas = run_orchestrator(&services, &env, &["--scenario", "all"]);
    // SIGTERM flushes the services' last spans.
    services.terminate();

    assert_eq!(sagas.len(), 3);
    let traces = collector.traces();
    for saga in &sagas {
        let trace_id = saga["trace_id"]
            .as_str()
            .expect("the report names its trace");
        let trace = traces
            .get(trace_id)
            .expect("the saga's trace reached the collector");
        check_saga_trace(trace, saga, None);
    }
    assert_eq!(traces.len(), 3, "exactly one trace per saga, nothing else");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_joins_the_given_trace() {
    let (collector, addr) = Collector::start().await;
    let mut env = otel_env(&format!("http://{addr}"));
    let services = Services::start_with(&borrowed(&env));
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    env.push(("TRACEPARENT".into(), format!("00-{trace_id}-{parent}-01")));
    let sagas = run_orchestrator(&services, &env, &["--scenario", "success", "--count", "2"]);
    services.terminate();

    assert!(sagas.iter().all(|s| s["trace_id"] == trace_id), "{sagas:?}");
    let spans = collector.spans();
    assert!(!spans.is_empty());
    assert!(
        spans.iter().all(|s| s.trace_id() == trace_id),
        "every span carries the given trace id"
    );
    let roots: Vec<&Received> = spans.iter().filter(|s| s.parent_id() == parent).collect();
    assert_eq!(
        roots.len(),
        2,
        "both saga roots hang under the given parent"
    );
    let services: HashSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(services.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_retried_attempt_shows_under_its_step() {
    let (collector, addr) = Collector::start().await;
    let env = otel_env(&format!("http://{addr}"));
    let mut services_env = env.clone();
    // A quarter of the payment service's calls fail transiently (before or after their effect);
    // eight attempts make a saga that fails for it vanishingly rare.
    services_env.push(("PAYMENT_FAULTS__TRANSIENT_ERROR_RATE".into(), "0.25".into()));
    let services = Services::start_with(&borrowed(&services_env));
    let sagas = run_orchestrator(
        &services,
        &env,
        &[
            "--scenario",
            "success",
            "--count",
            "40",
            "--print-sagas",
            "all",
        ],
    );
    services.terminate();

    let traces = collector.traces();
    let mut retried = 0;
    for saga in &sagas {
        let trace = &traces[saga["trace_id"].as_str().expect("a traced saga")];
        assert!(parentage_problems(trace, None).is_empty());
        for step in trace.iter().filter(|s| s.attribute("saga.step").is_some()) {
            let attempts: usize = step.attribute("saga.attempts").unwrap().parse().unwrap();
            let servers = trace
                .iter()
                .filter(|s| s.kind() == SPAN_KIND_SERVER && s.parent_id() == step.id())
                .count();
            let failed = step.events_named("attempt failed; retrying");
            assert_eq!(
                servers,
                attempts,
                "a server span per attempt of {}",
                step.name()
            );
            assert_eq!(
                failed,
                attempts - 1,
                "an event per failed attempt of {}",
                step.name()
            );
            if attempts > 1 {
                retried += 1;
            }
        }
    }
    // 40 payment calls at a 25% failure rate: none retried once in 100,000 runs.
    assert!(retried > 0, "no step was retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsampled_parent_leaves_no_span_anywhere() {
    let (collector, addr) = Collector::start().await;
    let mut env = otel_env(&format!("http://{addr}"));
    // The default sampler (parent-based): the given parent's sampled flag is off.
    env.retain(|(k, _)| k != "OTEL_TRACES_SAMPLER");
    let services = Services::start_with(&borrowed(&env));
    env.push((
        "TRACEPARENT".into(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00".into(),
    ));
    let sagas = run_orchestrator(&services, &env, &["--scenario", "all"]);
    // A sampled saga afterwards, so that "nothing arrived" is not just "nothing exported yet".
    env.pop();
    let sampled = run_orchestrator(&services, &env, &["--scenario", "success"]);
    services.terminate();

    assert_eq!(sagas.len(), 3);
    assert!(
        sagas
            .iter()
            .all(|s| s.get("trace_id").is_none_or(serde_json::Value::is_null)),
        "{sagas:?}"
    );
    let traces = collector.traces();
    let trace_id = sampled[0]["trace_id"]
        .as_str()
        .expect("the sampled saga's trace");
    assert_eq!(
        traces.keys().collect::<Vec<_>>(),
        [trace_id],
        "only the sampled saga's trace"
    );
    check_saga_trace(&traces[trace_id], &sampled[0], None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sampled_fraction_of_sagas_is_traced_whole() {
    let (collector, addr) = Collector::start().await;
    let mut env = otel_env(&format!("http://{addr}"));
    env.retain(|(k, _)| k != "OTEL_TRACES_SAMPLER");
    env.push((
        "OTEL_TRACES_SAMPLER".into(),
        "parentbased_traceidratio".into(),
    ));
    env.push(("OTEL_TRACES_SAMPLER_ARG".into(), "0.5".into()));
    let services = Services::start_with(&borrowed(&env));
    let sagas = run_orchestrator(
        &services,
        &env,
        &[
            "--scenario",
            "success",
            "--count",
            "30",
            "--print-sagas",
            "all",
        ],
    );
    services.terminate();

    assert_eq!(sagas.len(), 30);
    let traced: Vec<&serde_json::Value> =
        sagas.iter().filter(|s| s["trace_id"].is_string()).collect();
    // 30 coin flips: all heads or all tails once in 2^29 runs.
    assert!(
        !traced.is_empty() && traced.len() < sagas.len(),
        "{} of {} sagas traced",
        traced.len(),
        sagas.len()
    );
    let traces = collector.traces();
    assert_eq!(
        traces.len(),
        traced.len(),
        "a trace for each traced saga, none else"
    );
    for saga in traced {
        let trace = &traces[saga["trace_id"].as_str().unwrap()];
        check_saga_trace(trace, saga, None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_collector_port_costs_less_than_a_second() {
    let closed = format!("http://127.0.0.1:{}", support::free_port());
    let timed = |env: Vec<(String, String)>| {
        let services = Services::start_with(&borrowed(&env));
        let started = Instant::now();
        let sagas = run_orchestrator(&services, &env, &["--scenario", "all"]);
        let elapsed = started.elapsed();
        services.terminate();
        assert_eq!(sagas.len(), 3);
        elapsed
    };
    // Warm up once so neither run pays for first-start costs.
    let _ = timed(vec![]);
    let without = timed(vec![]);
    let with_closed = timed(otel_env(&closed));
    println!("demo without tracing {without:?}, with a closed collector port {with_closed:?}");
    assert!(
        with_closed < without + Duration::from_secs(1),
        "{with_closed:?} vs {without:?}"
    );
}

/// A span as rotel's `--debug-log traces --debug-log-verbosity detailed` prints it.
#[derive(Debug, Default, Clone)]
struct RotelSpan {
    service: String,
    trace_id: String,
    parent_id: String,
    id: String,
    name: String,
    kind: String,
}

fn parse_rotel(output: &str) -> Vec<RotelSpan> {
    let mut spans = Vec::new();
    let mut service = String::new();
    let mut current: Option<RotelSpan> = None;
    for line in output.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix("-> service.name: Str(") {
            service = name.trim_end_matches(')').to_owned();
        } else if line.starts_with("Span #") {
            spans.extend(current.take());
            current = Some(RotelSpan {
                service: service.clone(),
                ..RotelSpan::default()
            });
        } else if let (Some(span), Some((key, value))) = (current.as_mut(), line.split_once(':')) {
            let value = value.trim().to_owned();
            match key.trim() {
                "Trace ID" => span.trace_id = value,
                "Parent ID" => span.parent_id = value,
                "ID" => span.id = value,
                "Name" => span.name = value,
                "Kind" => span.kind = value,
                _ => {}
            }
        }
        if line.starts_with("ResourceSpans #") {
            spans.extend(current.take());
        }
    }
    spans.extend(current);
    spans
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotel_sees_the_same_traces() {
    let grpc = support::free_port();
    let http = support::free_port();
    let log = std::env::temp_dir().join(format!("rotel-{}.log", std::process::id()));
    let mut rotel = std::process::Command::new(support::tool("rotel-agent"))
        .args(["start", "--exporter", "blackhole", "--debug-log", "traces"])
        .args(["--debug-log-verbosity", "detailed"])
        .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc}")])
        .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http}")])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ready = eventually(Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", grpc))
            .await
            .is_ok()
    })
    .await;
    assert!(ready, "rotel did not listen");

    let env = otel_env(&format!("http://127.0.0.1:{grpc}"));
    let services = Services::start_with(&borrowed(&env));
    let sagas = run_orchestrator(&services, &env, &["--scenario", "all"]);
    services.terminate();
    let want: HashSet<String> = sagas
        .iter()
        .map(|s| s["trace_id"].as_str().unwrap().to_owned())
        .collect();
    let mut spans = Vec::new();
    let complete = eventually(Duration::from_secs(10), || {
        spans = parse_rotel(&std::fs::read_to_string(&log).unwrap_or_default());
        let seen: HashSet<String> = spans.iter().map(|s| s.trace_id.clone()).collect();
        let servers = spans
            .iter()
            .filter(|s| s.kind == "SPAN_KIND_SERVER")
            .count();
        // Shipping failure: 5 calls + 3 reads; payment failure: 3 + 3; success: 4 + 3.
        std::future::ready(seen == want && servers >= 21)
    })
    .await;
    let _ = rotel.kill();
    let _ = rotel.wait();
    let _ = std::fs::remove_file(&log);
    assert!(complete, "rotel saw {} spans for {:?}", spans.len(), want);

    let by_id: HashMap<&str, &RotelSpan> = spans.iter().map(|s| (s.id.as_str(), s)).collect();
    for trace_id in &want {
        let trace: Vec<&RotelSpan> = spans.iter().filter(|s| &s.trace_id == trace_id).collect();
        let services: HashSet<&str> = trace.iter().map(|s| s.service.as_str()).collect();
        assert_eq!(services, SERVICES.into_iter().collect());
        for server in trace.iter().filter(|s| s.kind == "SPAN_KIND_SERVER") {
            let parent = by_id[server.parent_id.as_str()];
            assert_eq!(parent.kind, "SPAN_KIND_CLIENT");
            assert_eq!(parent.service, "saga-orchestrator");
            // A step's span (named for the method) or a read-back call's client span.
            assert!(
                server.name.ends_with(&format!("/{}", parent.name)) || parent.name == server.name,
                "{} under {}",
                server.name,
                parent.name
            );
        }
        let roots = trace.iter().filter(|s| s.parent_id.is_empty()).count();
        assert_eq!(roots, 1, "one root per saga trace");
    }
}
