//! Metrics checked by the real Prometheus: the three service binaries serve `GET /metrics`, the
//! pinned Prometheus scrapes them every second (and receives the orchestrator's OTLP metrics),
//! a batch with a known mix runs, and PromQL over Prometheus's HTTP API must count exactly
//! what the batch did. `promtool check metrics` must accept each service's exposition.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use support::{Process, Services, Tool, eventually, free_port, http_get, temp_dir, tool};

const NAMES: [(&str, &str); 3] = [
    ("order-service", "ORDER"),
    ("payment-service", "PAYMENT"),
    ("shipping-service", "SHIPPING"),
];

/// A PromQL instant query's vector, as `labels joined by ',' → value`, each label named in
/// `by` (in that order).
fn query(prometheus: &str, promql: &str, by: &[&str]) -> Option<BTreeMap<String, u64>> {
    let url = format!("{prometheus}/api/v1/query");
    let body = http_get(&url, &[("query", promql)])?;
    let answer: serde_json::Value = serde_json::from_str(&body).ok()?;
    let mut vector = BTreeMap::new();
    for sample in answer["data"]["result"].as_array()? {
        let key = by
            .iter()
            .map(|label| sample["metric"][label].as_str().unwrap_or("").to_owned())
            .collect::<Vec<_>>()
            .join(",");
        let value: f64 = sample["value"][1].as_str()?.parse().ok()?;
        vector.insert(key, value.round() as u64);
    }
    Some(vector)
}

fn expected(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| ((*k).to_owned(), *n))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_counts_what_the_batch_did() {
    // The services, each with its metrics on a free port.
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut procs = Vec::new();
    for ((name, prefix), port) in NAMES.iter().zip(&ports) {
        let variable = format!("{prefix}_METRICS_LISTEN_ADDR");
        let addr = format!("127.0.0.1:{port}");
        procs.push(Process::service(name, prefix, &[(&variable, &addr)]));
    }
    let services = Services {
        order: procs.remove(0),
        payment: procs.remove(0),
        shipping: procs.remove(0),
    };
    for process in [&services.order, &services.payment, &services.shipping] {
        assert!(process.wait_serving().await);
    }

    // Prometheus, scraping them every second; its OTLP receiver takes the orchestrator's.
    let dir = temp_dir("prometheus");
    let targets = ports
        .iter()
        .zip(NAMES)
        .map(|(port, (name, _))| {
            format!(
                "      - targets: [\"127.0.0.1:{port}\"]\n        labels: {{ service: {name} }}\n"
            )
        })
        .collect::<String>();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: order-saga\n    static_configs:\n{targets}"
    );
    std::fs::File::create(dir.join("prometheus.yml"))
        .unwrap()
        .write_all(config.as_bytes())
        .unwrap();
    let web = free_port();
    let prometheus_url = format!("http://127.0.0.1:{web}");
    let args = [
        "--config.file=prometheus.yml".to_owned(),
        format!("--storage.tsdb.path={}", dir.join("data").display()),
        format!("--web.listen-address=127.0.0.1:{web}"),
        "--web.enable-otlp-receiver".to_owned(),
    ];
    let prometheus = Tool::start("prometheus", &args, dir);
    assert!(
        prometheus
            .wait_ready(&format!("{prometheus_url}/-/ready"))
            .await
    );

    // The batch: deterministic per run id; its outcomes are counted from its own reports.
    let run_id = format!("metrics-{}", std::process::id());
    let output = services
        .orchestrator()
        .env(
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            format!("{prometheus_url}/api/v1/otlp/v1/metrics"),
        )
        .env("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf")
        .args([
            "run",
            "--mix",
            "success=60,payment-failure=20,shipping-failure=20",
            "--count",
            "50",
            "--concurrency",
            "8",
            "--no-verify",
            "--run-id",
            &run_id,
            "--output",
            "json",
            "--print-sagas",
            "all",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    for line in String::from_utf8(output.stdout).unwrap().lines() {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        if let Some(outcome) = value["outcome"].as_str() {
            *outcomes.entry(outcome.to_owned()).or_default() += 1;
        }
    }
    let n = |outcome: &str| outcomes.get(outcome).copied().unwrap_or(0);
    let (s, p, f) = (n("completed"), n("payment_failed"), n("shipping_failed"));
    assert_eq!(s + p + f, 50, "{outcomes:?}");
    assert!(s > 0 && p > 0 && f > 0, "a mix of all three: {outcomes:?}");

    let order = "order.v1.OrderService";
    let payment = "payment.v1.PaymentService";
    let shipping = "shipping.v1.ShippingService";
    let calls = expected(&[
        (&format!("{order},CreateOrder,0"), 50),
        (&format!("{order},ApproveOrder,0"), s),
        (&format!("{order},FailOrder,0"), f),
        (&format!("{order},CancelOrder,0"), p + f),
        (&format!("{payment},ProcessPayment,0"), 50),
        (&format!("{payment},RefundPayment,0"), f),
        (&format!("{shipping},StartShipping,0"), s + f),
    ]);
    let checks: Vec<(&str, &[&str], BTreeMap<String, u64>)> = vec![
        (
            "sum by (rpc_service, rpc_method, rpc_grpc_status_code) (rpc_server_call_duration_seconds_count)",
            &["rpc_service", "rpc_method", "rpc_grpc_status_code"],
            calls,
        ),
        (
            "sum by (status) (saga_orders_total)",
            &["status"],
            expected(&[
                ("created", 50),
                ("approved", s),
                ("cancelled", p + f),
                ("failed", f),
            ]),
        ),
        (
            "sum by (status) (saga_payments_total)",
            &["status"],
            expected(&[("completed", s + f), ("declined", p), ("refunded", f)]),
        ),
        (
            "sum by (status) (saga_shipments_total)",
            &["status"],
            expected(&[("started", s), ("failed", f)]),
        ),
        // The orchestrator's, pushed over OTLP and flushed before it exited.
        (
            "sum by (saga_outcome) (saga_runs_total)",
            &["saga_outcome"],
            expected(&[
                ("completed", s),
                ("payment_failed", p),
                ("shipping_failed", f),
            ]),
        ),
        (
            "sum by (saga_step) (saga_compensations_total)",
            &["saga_step"],
            expected(&[
                ("FailOrder", f),
                ("RefundPayment", f),
                ("CancelOrder", p + f),
            ]),
        ),
    ];
    for (promql, by, want) in &checks {
        let mut seen = None;
        let matched = eventually(Duration::from_secs(30), || {
            let got = query(&prometheus_url, promql, by);
            let ok = got.as_ref() == Some(want);
            seen = got;
            async move { ok }
        })
        .await;
        assert!(
            matched,
            "{promql}: Prometheus says {seen:?}, the batch did {want:?}"
        );
    }

    // Each exposition passes promtool's checks (format and naming lint).
    for port in &ports {
        let exposition = http_get(&format!("http://127.0.0.1:{port}/metrics"), &[]).unwrap();
        assert!(exposition.contains("rpc_server_call_duration_seconds_bucket"));
        let mut promtool = std::process::Command::new(tool("promtool"))
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        promtool
            .stdin
            .take()
            .unwrap()
            .write_all(exposition.as_bytes())
            .unwrap();
        let checked = promtool.wait_with_output().unwrap();
        assert!(
            checked.status.success(),
            "promtool check metrics on :{port}: {checked:?}\n{exposition}"
        );
    }
    services.terminate();
}
