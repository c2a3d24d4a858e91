//! The Create Order saga: CreateOrder → ProcessPayment → StartShipping → ApproveOrder, and the
//! compensations that undo it when a step fails.
//!
//! A step whose outcome is unknown (its retries ran out on UNAVAILABLE or a deadline) is treated
//! as possibly done: it is compensated by order id, which also closes the order's slot so that a
//! request still in flight can never charge or ship afterwards.
use std::future::Future;
use std::time::Instant;

use saga_proto::order::v1 as order;
use saga_proto::payment::v1 as payment;
use saga_proto::shipping::v1 as shipping;
use serde::Serialize;
use tonic::{Code, Status};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::participants::{By, Participants};
use crate::report::{Outcome, SagaReport, StepReport};
use crate::retry::{Failed, RetryPolicy};

/// Which saga to run: the happy path, or a failure asked of one service per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    Success,
    PaymentFailure,
    ShippingFailure,
}

impl Scenario {
    pub const ALL: [Scenario; 3] = [
        Scenario::Success,
        Scenario::PaymentFailure,
        Scenario::ShippingFailure,
    ];

    /// The outcome this scenario leads to when the services behave.
    pub fn expected(self) -> Outcome {
        match self {
            Scenario::Success => Outcome::Completed,
            Scenario::PaymentFailure => Outcome::PaymentFailed,
            Scenario::ShippingFailure => Outcome::ShippingFailed,
        }
    }
}

/// Everything one saga needs to know.
#[derive(Debug, Clone, PartialEq)]
pub struct SagaPlan {
    pub saga_id: String,
    pub scenario: Scenario,
    pub user_id: String,
    pub currency: String,
    pub items: Vec<order::LineItem>,
    pub address: String,
}

/// Runs sagas over `participants` with the given retry policies.
#[derive(Debug)]
pub struct Saga<'a, P> {
    pub participants: &'a P,
    pub retry: &'a RetryPolicy,
    pub compensation_retry: &'a RetryPolicy,
    /// Read the participants back after the saga (inside its trace).
    pub verify: bool,
}

/// A compensating action.
#[derive(Debug, Clone)]
enum Undo {
    CancelShipping(By),
    RefundPayment(By),
    CancelOrder(String),
}

/// The state a response leaves its resource in, for the step report, and whether that state
/// fails a forward step.
trait Describe {
    fn describe(&self) -> String;
    fn failure(&self) -> Option<String> {
        None
    }
}

impl Describe for order::Order {
    fn describe(&self) -> String {
        self.status().as_str_name().to_owned()
    }
}

impl Describe for payment::Payment {
    fn describe(&self) -> String {
        self.status().as_str_name().to_owned()
    }
    fn failure(&self) -> Option<String> {
        (self.status() != payment::PaymentStatus::Completed)
            .then(|| format!("payment {}: {}", self.describe(), self.decline_reason))
    }
}

impl Describe for shipping::Shipment {
    fn describe(&self) -> String {
        self.status().as_str_name().to_owned()
    }
    fn failure(&self) -> Option<String> {
        (self.status() != shipping::ShipmentStatus::Started)
            .then(|| format!("shipment {}: {}", self.describe(), self.failure_reason))
    }
}

fn status_text(status: &Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

impl<P: Participants> Saga<'_, P> {
    /// Runs one saga to its end and reports it. Never panics on a service's answer.
    ///
    /// The saga is one trace: a root span (joining `TRACEPARENT` when given), a child span per
    /// step and compensation, and under those the gRPC client spans whose context the services
    /// continue.
    pub async fn run(&self, plan: &SagaPlan) -> SagaReport {
        let root = tracing::info_span!(
            "saga",
            otel.name = "saga CreateOrder",
            saga.id = %plan.saga_id,
            saga.scenario = ?plan.scenario,
            saga.outcome = tracing::field::Empty,
            order.id = tracing::field::Empty,
            payment.id = tracing::field::Empty,
            shipping.id = tracing::field::Empty,
        );
        if let Some(parent) = saga_common::telemetry::context_from_env() {
            let _ = root.set_parent(parent);
        }
        let started = Instant::now();
        let mut report = SagaReport::new(plan.saga_id.clone(), plan.scenario);
        async {
            report.trace_id = saga_common::telemetry::current_trace_id();
            self.drive(plan, &mut report).await;
            report.duration_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            report.duration_ms = report.duration_us / 1000;
            if self.verify {
                let span = tracing::info_span!("saga.verify", otel.name = "verify");
                crate::verify::check(self.participants, self.retry, &mut report)
                    .instrument(span)
                    .await;
            }
        }
        .instrument(root.clone())
        .await;
        record_outcome(&root, &report);
        report
    }

    async fn drive(&self, plan: &SagaPlan, report: &mut SagaReport) {
        let p = self.participants;

        // 1. The order, PENDING: the saga's semantic lock.
        let create = order::CreateOrderRequest {
            idempotency_key: plan.saga_id.clone(),
            user_id: plan.user_id.clone(),
            currency: plan.currency.clone(),
            items: plan.items.clone(),
        };
        let order = match self
            .step(report, "CreateOrder", false, || {
                p.create_order(create.clone())
            })
            .await
        {
            Ok(order) => order,
            Err(failed) => {
                let unknown = if failed.outcome_unknown() {
                    format!(
                        "; an order with idempotency key {} may exist as PENDING",
                        plan.saga_id
                    )
                } else {
                    String::new()
                };
                return self.end(
                    report,
                    Outcome::Failed,
                    format!(
                        "CreateOrder failed: {}{unknown}",
                        status_text(&failed.status)
                    ),
                );
            }
        };
        let order_id = order.order_id.clone();
        report.order_id = Some(order_id.clone());
        if order.status() != order::OrderStatus::Pending {
            // An earlier run of this saga got further: finish from what it left.
            return self.settle_earlier_run(report, &order).await;
        }
        let cancel_order = Undo::CancelOrder(order_id.clone());

        // 2. The charge.
        let charge = payment::ProcessPaymentRequest {
            order_id: order_id.clone(),
            amount_minor: order.total_minor,
            currency: order.currency.clone(),
        };
        let inject = plan.scenario == Scenario::PaymentFailure;
        let paid = self
            .step(report, "ProcessPayment", false, || {
                p.process_payment(charge.clone(), inject)
            })
            .await;
        let payment_id = match paid {
            Ok(payment) => {
                report.payment_id = Some(payment.payment_id.clone());
                if let Some(why) = payment.failure() {
                    return self
                        .compensate(report, Outcome::PaymentFailed, why, vec![cancel_order])
                        .await;
                }
                payment.payment_id
            }
            Err(failed) => {
                let why = format!("ProcessPayment failed: {}", status_text(&failed.status));
                let mut undo = vec![cancel_order];
                if failed.outcome_unknown() {
                    undo.insert(0, Undo::RefundPayment(By::Order(order_id.clone())));
                }
                return self
                    .compensate(report, Outcome::PaymentFailed, why, undo)
                    .await;
            }
        };
        let refund = Undo::RefundPayment(By::Id(payment_id));

        // 3. The shipment.
        let start = shipping::StartShippingRequest {
            order_id: order_id.clone(),
            address: plan.address.clone(),
        };
        let inject = plan.scenario == Scenario::ShippingFailure;
        let shipped = self
            .step(report, "StartShipping", false, || {
                p.start_shipping(start.clone(), inject)
            })
            .await;
        let shipping_id = match shipped {
            Ok(shipment) => {
                report.shipping_id = Some(shipment.shipping_id.clone());
                if let Some(why) = shipment.failure() {
                    let undo = vec![refund, cancel_order];
                    return self
                        .compensate(report, Outcome::ShippingFailed, why, undo)
                        .await;
                }
                shipment.shipping_id
            }
            Err(failed) => {
                let why = format!("StartShipping failed: {}", status_text(&failed.status));
                let mut undo = vec![refund, cancel_order];
                if failed.outcome_unknown() {
                    undo.insert(0, Undo::CancelShipping(By::Order(order_id.clone())));
                }
                return self
                    .compensate(report, Outcome::ShippingFailed, why, undo)
                    .await;
            }
        };
        let cancel_shipping = Undo::CancelShipping(By::Id(shipping_id));

        // 4. Approval releases the semantic lock.
        let approved = self
            .step(report, "ApproveOrder", false, || p.approve_order(&order_id))
            .await;
        let failed = match approved {
            Ok(_) => return self.end(report, Outcome::Completed, String::new()),
            Err(failed) => failed,
        };
        let why = format!("ApproveOrder failed: {}", status_text(&failed.status));
        if !failed.outcome_unknown() {
            let undo = vec![cancel_shipping, refund, cancel_order];
            return self
                .compensate(report, Outcome::ApprovalFailed, why, undo)
                .await;
        }
        // Unknown: cancelling first lets the order service settle the race. If the approval
        // did land, the cancel is refused and the saga is complete.
        match self.undo(report, &cancel_order).await {
            Ok(()) => {
                self.compensate(
                    report,
                    Outcome::ApprovalFailed,
                    why,
                    vec![cancel_shipping, refund],
                )
                .await
            }
            Err(status) if status.code() == Code::FailedPrecondition => {
                self.end(report, Outcome::Completed, String::new())
            }
            Err(status) => self.end(
                report,
                Outcome::CompensationFailed,
                format!("{why}; CancelOrder then failed: {}", status_text(&status)),
            ),
        }
    }

    /// The order of a rerun saga is no longer PENDING. APPROVED: the saga completed. CANCELLED:
    /// it was compensated; the compensations run again by order id (they are idempotent) so
    /// nothing stays charged or shipping, and no forward step runs against a cancelled order.
    async fn settle_earlier_run(&self, report: &mut SagaReport, order: &order::Order) {
        let by = By::Order(order.order_id.clone());
        if order.status() == order::OrderStatus::Approved {
            let p = self.participants;
            if let Ok(payment) = self
                .step(report, "GetPayment", false, || p.get_payment(&by))
                .await
            {
                report.payment_id = Some(payment.payment_id);
            }
            if let Ok(shipment) = self
                .step(report, "GetShipment", false, || p.get_shipment(&by))
                .await
            {
                report.shipping_id = Some(shipment.shipping_id);
            }
            return self.end(report, Outcome::Completed, String::new());
        }
        let why = format!(
            "order was {} by an earlier run",
            order.status().as_str_name()
        );
        let undo = vec![Undo::CancelShipping(by.clone()), Undo::RefundPayment(by)];
        self.compensate(report, Outcome::PaymentFailed, why, undo)
            .await;
        // A shipment with an address was really started (or failed) before: shipping failed.
        if report.outcome == Outcome::PaymentFailed && report.shipped_before {
            report.outcome = Outcome::ShippingFailed;
        }
    }

    /// Runs the compensations in order. All of them are attempted even if one fails, so as
    /// little as possible is left behind.
    async fn compensate(
        &self,
        report: &mut SagaReport,
        outcome: Outcome,
        why: String,
        undo: Vec<Undo>,
    ) {
        let mut failures = Vec::new();
        for action in &undo {
            if let Err(status) = self.undo(report, action).await {
                failures.push(format!("{action:?}: {}", status_text(&status)));
            }
        }
        if failures.is_empty() {
            self.end(report, outcome, why);
        } else {
            let reason = format!("{why}; compensation failed: {}", failures.join("; "));
            self.end(report, Outcome::CompensationFailed, reason);
        }
    }

    async fn undo(&self, report: &mut SagaReport, action: &Undo) -> Result<(), Status> {
        let p = self.participants;
        let result = match action {
            Undo::CancelOrder(order_id) => {
                let reason = report.reason_so_far();
                self.step(report, "CancelOrder", true, || {
                    p.cancel_order(order_id, &reason)
                })
                .await
                .map(drop)
            }
            Undo::RefundPayment(by) => self
                .step(report, "RefundPayment", true, || p.refund_payment(by))
                .await
                .map(|payment| {
                    report.payment_id.get_or_insert(payment.payment_id);
                }),
            Undo::CancelShipping(by) => self
                .step(report, "CancelShipping", true, || p.cancel_shipping(by))
                .await
                .map(|shipment| {
                    report.shipped_before = !shipment.address.is_empty();
                    report.shipping_id.get_or_insert(shipment.shipping_id);
                }),
        };
        result.map_err(|failed| failed.status)
    }

    fn end(&self, report: &mut SagaReport, outcome: Outcome, reason: String) {
        report.outcome = outcome;
        report.reason = (!reason.is_empty()).then_some(reason);
    }

    /// One call with retries, recorded in the report.
    async fn step<T, F, Fut>(
        &self,
        report: &mut SagaReport,
        step: &'static str,
        compensation: bool,
        call: F,
    ) -> Result<T, Failed>
    where
        T: Describe,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let policy = if compensation {
            self.compensation_retry
        } else {
            self.retry
        };
        let span = tracing::info_span!(
            "saga.step",
            otel.name = step,
            saga.step = step,
            saga.compensation = compensation,
            saga.attempts = tracing::field::Empty,
        );
        let started = Instant::now();
        let result = policy.run(call).instrument(span.clone()).await;
        let (outcome, detail, attempts) = match &result {
            Ok((value, attempts)) => ("ok", value.describe(), *attempts),
            Err(failed) => ("error", status_text(&failed.status), failed.attempts),
        };
        span.record("saga.attempts", attempts);
        let failure = match &result {
            Ok((value, _)) if !compensation => value.failure(),
            Ok(_) => None,
            Err(_) => Some(detail.clone()),
        };
        span.in_scope(|| match &failure {
            // A declined payment is the saga working; a step that ran out of retries is not.
            Some(reason) if result.is_ok() => {
                tracing::info!(saga_id = %report.saga_id, step, compensation, %reason, attempts, "saga step failed");
                span.set_status(opentelemetry::trace::Status::error(reason.clone()));
            }
            Some(reason) => {
                tracing::warn!(saga_id = %report.saga_id, step, compensation, %reason, attempts, "saga step failed");
                span.set_status(opentelemetry::trace::Status::error(reason.clone()));
            }
            None => {
                tracing::debug!(saga_id = %report.saga_id, step, compensation, %detail, attempts, "saga step");
            }
        });
        report.steps.push(StepReport {
            step,
            compensation,
            result: outcome,
            detail,
            attempts,
            duration_ms: elapsed_ms(started),
        });
        result.map(|(value, _)| value)
    }
}

impl SagaReport {
    /// What to write on a cancelled order: the failed step, for whoever reads the order later.
    fn reason_so_far(&self) -> String {
        self.steps
            .iter()
            .rev()
            .find(|step| !step.compensation)
            .map(|step| format!("saga {}: {} {}", self.saga_id, step.step, step.detail))
            .unwrap_or_default()
    }
}

/// The saga's ids and outcome on its root span; a saga that did not complete is an error there,
/// with its reason.
fn record_outcome(root: &tracing::Span, report: &SagaReport) {
    root.record("saga.outcome", format!("{:?}", report.outcome));
    for (field, value) in [
        ("order.id", &report.order_id),
        ("payment.id", &report.payment_id),
        ("shipping.id", &report.shipping_id),
    ] {
        if let Some(value) = value {
            root.record(field, value.as_str());
        }
    }
    if report.outcome != Outcome::Completed || !report.is_ok() {
        let reason = report
            .reason
            .clone()
            .unwrap_or_else(|| "the participants disagree with the outcome".into());
        root.set_status(opentelemetry::trace::Status::error(reason));
    }
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}
