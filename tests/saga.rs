//! The saga over real gRPC: every scenario's outcome and the final state in all three services,
//! idempotent replays, convergence under transient errors, and unknown outcomes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use payment_service::payments::PaymentStatus;

use saga_common::faults::{BusinessFaults, TransientFaults};
use saga_orchestrator::runner::{Batch, Scenarios};
use saga_orchestrator::saga::Saga;
use saga_orchestrator::{Outcome, Participants, SagaPlan, Scenario};
use saga_proto::order::v1 as order;
use saga_proto::payment::v1 as payment;
use shipping_service::shipments::ShipmentStatus;
use support::{Cluster, Faults};
use tonic::Code;

fn plan(saga_id: &str, scenario: Scenario) -> SagaPlan {
    SagaPlan {
        saga_id: saga_id.into(),
        scenario,
        user_id: "alice".into(),
        currency: "EUR".into(),
        items: saga_orchestrator::runner::demo_items(),
        address: "1 Main St".into(),
    }
}

async fn run(cluster: &Cluster, plan: &SagaPlan) -> saga_orchestrator::SagaReport {
    let settings = cluster.settings();
    let participants = cluster.participants();
    let saga = Saga {
        participants: &participants,
        retry: &settings.retry,
        compensation_retry: &settings.compensation_retry,
        verify: false,
    };
    let mut report = saga.run(plan).await;
    saga_orchestrator::verify::check(&participants, &settings.retry, &mut report).await;
    report
}

#[tokio::test]
async fn success_approves_charges_and_ships() {
    let cluster = Cluster::start(Faults::injectable()).await;
    let report = run(&cluster, &plan("s-ok", Scenario::Success)).await;
    assert_eq!(report.outcome, Outcome::Completed, "{report:?}");
    assert!(report.is_ok(), "{report:?}");

    let order = cluster
        .orders
        .get(report.order_id.as_deref().unwrap())
        .await
        .unwrap();
    assert_eq!(order.status, order_service::orders::OrderStatus::Approved);
    assert_eq!(order.total_minor, 3999 + 2 * 1250);
    let payments = cluster.payments_all().await;
    assert_eq!(payments.len(), 1);
    assert_eq!(payments[0].status, PaymentStatus::Completed);
    assert_eq!(payments[0].amount_minor, order.total_minor);
    let shipments = cluster.shipments_all().await;
    assert_eq!(shipments.len(), 1);
    assert_eq!(shipments[0].status, ShipmentStatus::Started);
    let steps: Vec<_> = report.steps.iter().map(|s| s.step).collect();
    assert_eq!(
        steps,
        [
            "CreateOrder",
            "ProcessPayment",
            "StartShipping",
            "ApproveOrder"
        ]
    );
}

#[tokio::test]
async fn payment_failure_cancels_the_order() {
    let cluster = Cluster::start(Faults::injectable()).await;
    let report = run(&cluster, &plan("s-pay", Scenario::PaymentFailure)).await;
    assert_eq!(report.outcome, Outcome::PaymentFailed, "{report:?}");
    assert!(report.is_ok(), "{report:?}");
    let order = cluster
        .orders
        .get(report.order_id.as_deref().unwrap())
        .await
        .unwrap();
    assert_eq!(order.status, order_service::orders::OrderStatus::Cancelled);
    assert!(order.cancel_reason.unwrap().contains("ProcessPayment"));
    let payments = cluster.payments_all().await;
    assert_eq!(payments.len(), 1);
    assert_eq!(payments[0].status, PaymentStatus::Declined);
    assert!(
        cluster.shipments_all().await.is_empty(),
        "no shipment may start"
    );
    let compensations: Vec<_> = report
        .steps
        .iter()
        .filter(|s| s.compensation)
        .map(|s| s.step)
        .collect();
    assert_eq!(compensations, ["CancelOrder"]);
}

#[tokio::test]
async fn shipping_failure_refunds_and_cancels() {
    let cluster = Cluster::start(Faults::injectable()).await;
    let report = run(&cluster, &plan("s-ship", Scenario::ShippingFailure)).await;
    assert_eq!(report.outcome, Outcome::ShippingFailed, "{report:?}");
    assert!(report.is_ok(), "{report:?}");
    let order = cluster
        .orders
        .get(report.order_id.as_deref().unwrap())
        .await
        .unwrap();
    assert_eq!(order.status, order_service::orders::OrderStatus::Cancelled);
    assert_eq!(
        cluster.payments_all().await[0].status,
        PaymentStatus::Refunded
    );
    assert_eq!(
        cluster.shipments_all().await[0].status,
        ShipmentStatus::Failed
    );
    let compensations: Vec<_> = report
        .steps
        .iter()
        .filter(|s| s.compensation)
        .map(|s| s.step)
        .collect();
    assert_eq!(compensations, ["FailOrder", "RefundPayment", "CancelOrder"]);
}

#[tokio::test]
async fn failure_scenarios_are_refused_when_injection_is_off() {
    let cluster = Cluster::start(Faults::default()).await;
    let report = run(&cluster, &plan("s-off", Scenario::PaymentFailure)).await;
    // The charge is refused outright (FAILED_PRECONDITION), and the saga still compensates.
    assert_eq!(report.outcome, Outcome::PaymentFailed, "{report:?}");
    assert!(
        report
            .reason
            .as_deref()
            .unwrap()
            .contains("allow_injection")
    );
    assert!(cluster.payments_all().await.is_empty());
}

#[tokio::test]
async fn replaying_a_saga_changes_nothing() {
    let cluster = Cluster::start(Faults::injectable()).await;
    let first = run(&cluster, &plan("s-replay", Scenario::Success)).await;
    let again = run(&cluster, &plan("s-replay", Scenario::Success)).await;
    assert_eq!(again.outcome, Outcome::Completed);
    assert_eq!(
        (&first.order_id, &first.payment_id, &first.shipping_id),
        (&again.order_id, &again.payment_id, &again.shipping_id)
    );
    assert_eq!(cluster.orders_all().await.len(), 1);
    assert_eq!(cluster.payments_all().await.len(), 1, "one charge");
    assert_eq!(cluster.shipments_all().await.len(), 1);
}

#[tokio::test]
async fn mutating_calls_are_idempotent() {
    let cluster = Cluster::start(Faults::injectable()).await;
    let p = cluster.participants();
    let create = order::CreateOrderRequest {
        idempotency_key: "key-1".into(),
        user_id: "bob".into(),
        currency: "USD".into(),
        items: saga_orchestrator::runner::demo_items(),
    };
    let a = p.create_order(create.clone()).await.unwrap();
    let b = p.create_order(create.clone()).await.unwrap();
    assert_eq!(a, b);
    let charge = payment::ProcessPaymentRequest {
        order_id: a.order_id.clone(),
        amount_minor: a.total_minor,
        currency: a.currency.clone(),
    };
    let pay1 = p.process_payment(charge.clone(), false).await.unwrap();
    // Even a repeat that asks for a decline returns the first (completed) payment.
    let pay2 = p.process_payment(charge.clone(), true).await.unwrap();
    assert_eq!(pay1, pay2);
    assert_eq!(cluster.payments_all().await.len(), 1);

    let by = saga_orchestrator::participants::Target::Id(pay1.payment_id.clone());
    let r1 = p.refund_payment(&by).await.unwrap();
    let r2 = p.refund_payment(&by).await.unwrap();
    assert_eq!(
        (r1.status(), r2.status()),
        (
            payment::PaymentStatus::Refunded,
            payment::PaymentStatus::Refunded
        )
    );
    let c1 = p.cancel_order(&a.order_id, "test").await.unwrap();
    let c2 = p.cancel_order(&a.order_id, "test").await.unwrap();
    assert_eq!(c1, c2);
    assert_eq!(c1.status(), order::OrderStatus::Cancelled);

    // Same key, different body: refused, nothing created.
    let mut other = create;
    other.user_id = "mallory".into();
    assert_eq!(
        p.create_order(other).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    assert_eq!(cluster.orders_all().await.len(), 1);
}

#[tokio::test]
async fn half_of_all_calls_failing_transiently_still_converges() {
    let flaky = TransientFaults {
        transient_error_rate: 0.5,
        ..TransientFaults::default()
    };
    let flaky_business = BusinessFaults {
        transient_error_rate: 0.5,
        allow_injection: true,
        ..BusinessFaults::default()
    };
    let cluster = Cluster::start(Faults {
        order: flaky,
        payment: flaky_business.clone(),
        shipping: flaky_business,
    })
    .await;
    let batch = Batch {
        run_id: "flaky".into(),
        scenarios: Scenarios::Cycle(Scenario::ALL.to_vec()),
        range: 0..30,
        concurrency: 8,
        verify_sample: 1.0,
    };
    let mut reports = Vec::new();
    batch
        .run(
            Arc::new(cluster.participants()),
            Arc::new(cluster.settings()),
            |report| reports.push(report),
        )
        .await;
    reports.sort_by_key(|r| {
        r.saga_id
            .rsplit('-')
            .next()
            .and_then(|i| i.parse::<u32>().ok())
    });
    assert_eq!(reports.len(), 30);
    let mut retried = 0;
    for (report, scenario) in reports.iter().zip(Scenario::ALL.repeat(10)) {
        assert_eq!(report.outcome, scenario.expected(), "{report:#?}");
        assert!(report.is_ok(), "{report:#?}");
        retried += report.steps.iter().filter(|s| s.attempts > 1).count();
    }
    assert!(
        retried > 10,
        "transient faults should have forced retries, saw {retried}"
    );
    // Lost replies were retried idempotently: one payment and at most one shipment per order.
    assert_eq!(cluster.orders_all().await.len(), 30);
    assert_eq!(cluster.payments_all().await.len(), 30);
    assert_eq!(cluster.shipments_all().await.len(), 20);
}

/// A saga against a cluster where `slow` answers only after the orchestrator's deadline (every
/// attempt times out), read back once the late calls have landed.
async fn run_with_a_slow_service(
    cluster: &Cluster,
    saga_id: &str,
) -> saga_orchestrator::SagaReport {
    let mut settings = cluster.settings();
    settings.retry.call_timeout_ms = 100;
    settings.retry.max_attempts = 2;
    let participants = cluster.participants();
    let saga = Saga {
        participants: &participants,
        retry: &settings.retry,
        compensation_retry: &settings.compensation_retry,
        verify: false,
    };
    let mut report = saga.run(&plan(saga_id, Scenario::Success)).await;
    // Late calls land after the compensation: give them time, then read everything back.
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    saga_orchestrator::verify::check(&participants, &cluster.settings().retry, &mut report).await;
    report
}

fn slow() -> BusinessFaults {
    BusinessFaults {
        latency_ms: 300,
        allow_injection: true,
        ..BusinessFaults::default()
    }
}

#[tokio::test]
async fn a_charge_whose_outcome_is_unknown_is_never_left_behind() {
    let cluster = Cluster::start(Faults {
        payment: slow(),
        ..Faults::injectable()
    })
    .await;
    let report = run_with_a_slow_service(&cluster, "s-unknown-pay").await;
    assert_eq!(report.outcome, Outcome::PaymentFailed, "{report:#?}");
    assert!(report.is_ok(), "{report:#?}");
    for payment in cluster.payments_all().await {
        assert_ne!(payment.status, PaymentStatus::Completed, "{payment:?}");
    }
}

#[tokio::test]
async fn a_shipment_whose_outcome_is_unknown_is_cancelled_and_refunded() {
    let cluster = Cluster::start(Faults {
        shipping: slow(),
        ..Faults::injectable()
    })
    .await;
    let report = run_with_a_slow_service(&cluster, "s-unknown-ship").await;
    assert_eq!(report.outcome, Outcome::ShippingFailed, "{report:#?}");
    let compensations: Vec<_> = report
        .steps
        .iter()
        .filter(|s| s.compensation)
        .map(|s| s.step)
        .collect();
    assert_eq!(
        compensations,
        [
            "FailOrder",
            "CancelShipping",
            "RefundPayment",
            "CancelOrder"
        ]
    );
    assert!(report.is_ok(), "{report:#?}");
    for shipment in cluster.shipments_all().await {
        assert_ne!(shipment.status, ShipmentStatus::Started, "{shipment:?}");
    }
    assert_eq!(
        cluster.payments_all().await[0].status,
        PaymentStatus::Refunded
    );
}

#[tokio::test]
async fn an_unreachable_service_fails_the_saga_with_a_clear_reason() {
    let mut cluster = Cluster::start(Faults::injectable()).await;
    cluster.payment.begin_shutdown();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut settings = cluster.settings();
    settings.retry.max_attempts = 3;
    settings.compensation_retry.max_attempts = 3;
    let participants = cluster.participants();
    let saga = Saga {
        participants: &participants,
        retry: &settings.retry,
        compensation_retry: &settings.compensation_retry,
        verify: false,
    };
    let report = saga.run(&plan("s-down", Scenario::Success)).await;
    // The charge's outcome is unknown and the refund cannot reach the service either.
    assert_eq!(report.outcome, Outcome::CompensationFailed, "{report:#?}");
    assert!(!report.is_ok());
    let reason = report.reason.unwrap();
    assert!(reason.contains("Unavailable"), "{reason}");
    // The order is parked: PENDING with the reason, for `recover`, and marked failed, so
    // nothing approves it meanwhile.
    let order = cluster
        .orders
        .get(report.order_id.as_deref().unwrap())
        .await
        .unwrap();
    assert_eq!(order.status, order_service::orders::OrderStatus::Pending);
    assert_eq!(order.failure_count, 2, "{order:?}");
    let last_error = order.last_error.unwrap_or_default();
    assert!(last_error.contains("RefundPayment"), "{last_error}");
}

#[tokio::test]
async fn rerunning_a_compensated_saga_never_charges_a_cancelled_order() {
    let cluster = Cluster::start(Faults::injectable()).await;
    for (saga_id, scenario, expected) in [
        (
            "rerun-pay",
            Scenario::PaymentFailure,
            Outcome::PaymentFailed,
        ),
        (
            "rerun-ship",
            Scenario::ShippingFailure,
            Outcome::ShippingFailed,
        ),
    ] {
        let first = run(&cluster, &plan(saga_id, scenario)).await;
        assert_eq!(first.outcome, expected);
        // The same saga again, this time without asking for a failure.
        let again = run(&cluster, &plan(saga_id, Scenario::Success)).await;
        assert_eq!(again.outcome, expected, "{again:#?}");
        assert!(again.is_ok(), "{again:#?}");
        assert_eq!(again.order_id, first.order_id);
        assert!(
            again.steps.iter().all(|s| s.step != "ProcessPayment"),
            "{again:#?}"
        );
    }
    assert_eq!(cluster.payments_all().await.len(), 2);
    for payment in cluster.payments_all().await {
        assert_ne!(payment.status, PaymentStatus::Completed, "{payment:?}");
    }
}

#[tokio::test]
async fn rerunning_a_refused_charge_does_not_charge() {
    // Injection is off: the payment-failure scenario's charge is refused, nothing is recorded.
    let cluster = Cluster::start(Faults::default()).await;
    let first = run(&cluster, &plan("rerun-refused", Scenario::PaymentFailure)).await;
    assert_eq!(first.outcome, Outcome::PaymentFailed);
    let again = run(&cluster, &plan("rerun-refused", Scenario::Success)).await;
    assert_eq!(again.outcome, Outcome::PaymentFailed, "{again:#?}");
    assert!(again.is_ok(), "{again:#?}");
    for payment in cluster.payments_all().await {
        assert_ne!(payment.status, PaymentStatus::Completed, "{payment:?}");
    }
}
