//! End to end: the four real binaries as processes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{Process, Services, binary};

const SEED_LINES: [&str; 3] = [
    ">>> All steps completed successfully",
    ">>> Payment failed. Order has been cancelled.",
    ">>> Shipping failed. Payment refunded and order cancelled.",
];

#[test]
fn the_three_scenarios_print_the_seed_lines() {
    let services = Services::start();
    let output = services
        .orchestrator()
        .args(["run", "--scenario", "all"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        output.status
    );
    let headlines: Vec<&str> = stdout.lines().filter(|l| l.starts_with(">>>")).collect();
    assert_eq!(headlines, SEED_LINES, "{stdout}");
    // Each saga names its ids.
    assert_eq!(stdout.matches("order ord-").count(), 3, "{stdout}");
    assert!(
        stdout.contains("3 sagas, 1 completed, 2 compensated, 0 failed, 0 inconsistent"),
        "{stdout}"
    );
}

#[test]
fn json_output_is_one_object_per_saga() {
    let services = Services::start();
    let output = services
        .orchestrator()
        .args([
            "run",
            "--scenario",
            "shipping-failure",
            "--count",
            "3",
            "--concurrency",
            "3",
        ])
        .args(["--output", "json", "--run-id", "e2e-json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (summary, sagas) = lines.split_last().unwrap();
    assert_eq!(sagas.len(), 3);
    assert_eq!(summary["summary"]["sagas"], 3);
    assert_eq!(summary["summary"]["compensated"], 3);
    assert_eq!(summary["summary"]["verified"], 3);
    assert!(summary["summary"]["latency"]["p99_ms"].as_f64().unwrap() > 0.0);
    let mut ids: Vec<&str> = sagas
        .iter()
        .map(|s| s["saga_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["e2e-json-0", "e2e-json-1", "e2e-json-2"]);
    for saga in sagas {
        assert_eq!(saga["outcome"], "shipping_failed");
        assert_eq!(saga["consistency"]["consistent"], true);
        let steps: Vec<&str> = saga["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["step"].as_str().unwrap())
            .collect();
        assert_eq!(
            steps,
            [
                "CreateOrder",
                "ProcessPayment",
                "StartShipping",
                // The order is marked failed before anything is undone.
                "FailOrder",
                "RefundPayment",
                "CancelOrder"
            ]
        );
        assert!(saga["steps"][0]["duration_ms"].is_u64());
    }
}

#[test]
fn an_unreachable_service_exits_non_zero_with_a_clear_message() {
    let services = Services::start();
    let output = services
        .orchestrator()
        .env(
            "SAGA_PAYMENT_URL",
            format!("http://127.0.0.1:{}", support::free_port()),
        )
        .env("SAGA_WAIT_READY_SECS", "1")
        .args(["run", "--scenario", "success"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("payment.v1.PaymentService is not serving"),
        "{stderr}"
    );
    assert!(stderr.contains("payment_url"), "{stderr}");
}

#[test]
fn bad_configuration_exits_64_with_the_setting_named() {
    let output = std::process::Command::new(binary("payment-service"))
        .env("PAYMENT_FAULTS__FAILURE_RATE", "2")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("failure_rate"));

    let output = std::process::Command::new(binary("order-service"))
        .env("ORDER_LISTEN_ADRR", "127.0.0.1:1")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64), "a typo must not be ignored");
    assert!(String::from_utf8_lossy(&output.stderr).contains("listen_adrr"));

    let output = std::process::Command::new(binary("saga-orchestrator"))
        .env("SAGA_ORDER_URL", "ftp://example")
        .args(["run"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("order_url"));
}

// Multi-threaded: `terminate` blocks, and the health client's connection must still close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_exit_zero_on_sigterm() {
    for (name, prefix) in [
        ("order-service", "ORDER"),
        ("payment-service", "PAYMENT"),
        ("shipping-service", "SHIPPING"),
    ] {
        let mut service = Process::service(name, prefix, &[]);
        assert!(service.wait_serving().await, "{name} never served");
        let status = service.terminate();
        assert!(status.success(), "{name}: {status:?}");
    }
}
