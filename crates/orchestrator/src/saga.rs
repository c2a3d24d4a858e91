//! The Create Order saga: CreateOrder → ProcessPayment → StartShipping → ApproveOrder, each
//! forward step pushing the compensation that undoes it, and a failure unwinding that stack in
//! reverse (Temporal's saga samples keep the same shape).
//!
//! A step whose outcome is unknown (its retries ran out on UNAVAILABLE or a deadline) is treated
//! as possibly done: it pushes its compensation by order id, which also closes the order's slot
//! so that a request still in flight can never charge or ship afterwards.
use std::future::Future;
use std::time::Instant;

use saga_proto::order::v1 as order;
use saga_proto::payment::v1 as payment;
use saga_proto::shipping::v1 as shipping;
use serde::Serialize;
use tonic::{Code, Status};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::participants::{Participants, Target};
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

/// A compensating action: what undoes a forward step that may have taken effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compensation {
    CancelShipping(Target),
    RefundPayment(Target),
    /// Releases the semantic lock; it runs last, once nothing else is left charged or shipping.
    CancelOrder(String),
    /// The approval's outcome is unknown: cancel the order before undoing anything else. If the
    /// order service refuses because the approval landed, the saga completed and nothing is
    /// undone.
    CancelUnlessApproved(String),
}

impl Compensation {
    fn step(&self) -> &'static str {
        match self {
            Compensation::CancelShipping(_) => "CancelShipping",
            Compensation::RefundPayment(_) => "RefundPayment",
            Compensation::CancelOrder(_) | Compensation::CancelUnlessApproved(_) => "CancelOrder",
        }
    }
}

/// Why the forward path stopped: the outcome the unwound saga reaches, and the reason.
#[derive(Debug)]
struct Stop {
    outcome: Outcome,
    why: String,
    /// The failed step may have taken effect.
    unknown: bool,
}

/// One saga's working state: the report being written, and the compensations owed so far.
#[derive(Debug)]
struct Run {
    report: SagaReport,
    stack: Vec<Compensation>,
    /// A compensation found a shipment that had really been started (or had failed).
    shipped_before: bool,
}

/// What a forward step's answer says: the resource's state for the step report, whether that
/// state fails the step, and where its id goes in the report.
trait Resource {
    fn state(&self) -> String;
    fn failure(&self) -> Option<String> {
        None
    }
    fn remember(&self, _report: &mut SagaReport) {}
}

impl Resource for order::Order {
    fn state(&self) -> String {
        self.status().as_str_name().to_owned()
    }
    fn remember(&self, report: &mut SagaReport) {
        report.order_id.get_or_insert_with(|| self.order_id.clone());
    }
}

impl Resource for payment::Payment {
    fn state(&self) -> String {
        self.status().as_str_name().to_owned()
    }
    fn failure(&self) -> Option<String> {
        (self.status() != payment::PaymentStatus::Completed)
            .then(|| format!("payment {}: {}", self.state(), self.decline_reason))
    }
    fn remember(&self, report: &mut SagaReport) {
        report
            .payment_id
            .get_or_insert_with(|| self.payment_id.clone());
    }
}

impl Resource for shipping::Shipment {
    fn state(&self) -> String {
        self.status().as_str_name().to_owned()
    }
    fn failure(&self) -> Option<String> {
        (self.status() != shipping::ShipmentStatus::Started)
            .then(|| format!("shipment {}: {}", self.state(), self.failure_reason))
    }
    fn remember(&self, report: &mut SagaReport) {
        report
            .shipping_id
            .get_or_insert_with(|| self.shipping_id.clone());
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
        let mut run = Run {
            report: SagaReport::new(plan.saga_id.clone(), plan.scenario),
            stack: Vec::new(),
            shipped_before: false,
        };
        async {
            run.report.trace_id = saga_common::telemetry::current_trace_id();
            let (outcome, reason) = match self.forward_path(plan, &mut run).await {
                Ok(outcome) => (outcome, String::new()),
                Err(stop) => self.unwind(&mut run, stop).await,
            };
            let report = &mut run.report;
            report.outcome = outcome;
            report.reason = (!reason.is_empty()).then_some(reason);
            report.duration_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            report.duration_ms = report.duration_us / 1000;
            if self.verify {
                let span = tracing::info_span!("saga.verify", otel.name = "verify");
                crate::verify::check(self.participants, self.retry, report)
                    .instrument(span)
                    .await;
            }
        }
        .instrument(root.clone())
        .await;
        record_outcome(&root, &run.report);
        run.report
    }

    /// The forward steps; each pushes its compensation once it may have taken effect.
    async fn forward_path(&self, plan: &SagaPlan, run: &mut Run) -> Result<Outcome, Stop> {
        let p = self.participants;

        // 1. The order, PENDING: the saga's semantic lock.
        let create = order::CreateOrderRequest {
            idempotency_key: plan.saga_id.clone(),
            user_id: plan.user_id.clone(),
            currency: plan.currency.clone(),
            items: plan.items.clone(),
        };
        let order = self
            .forward(run, "CreateOrder", Outcome::Failed, None, || {
                p.create_order(create.clone())
            })
            .await
            .map_err(|mut stop| {
                if stop.unknown {
                    stop.why.push_str(&format!(
                        "; an order with idempotency key {} may exist as PENDING",
                        plan.saga_id
                    ));
                }
                stop
            })?;
        let order_id = order.order_id.clone();
        if order.status() != order::OrderStatus::Pending {
            // An earlier run of this saga got further: finish from what it left.
            return self.settle_earlier_run(run, &order).await;
        }
        run.stack.push(Compensation::CancelOrder(order_id.clone()));

        // 2. The charge.
        let by_order = Target::OrderId(order_id.clone());
        let charge = payment::ProcessPaymentRequest {
            order_id: order_id.clone(),
            amount_minor: order.total_minor,
            currency: order.currency.clone(),
        };
        let inject = plan.scenario == Scenario::PaymentFailure;
        let unknown = Compensation::RefundPayment(by_order.clone());
        let payment = self
            .forward(
                run,
                "ProcessPayment",
                Outcome::PaymentFailed,
                Some(unknown),
                || p.process_payment(charge.clone(), inject),
            )
            .await?;
        let refund = Target::Id(payment.payment_id);
        run.stack.push(Compensation::RefundPayment(refund));

        // 3. The shipment.
        let start = shipping::StartShippingRequest {
            order_id: order_id.clone(),
            address: plan.address.clone(),
        };
        let inject = plan.scenario == Scenario::ShippingFailure;
        let unknown = Compensation::CancelShipping(by_order);
        let shipment = self
            .forward(
                run,
                "StartShipping",
                Outcome::ShippingFailed,
                Some(unknown),
                || p.start_shipping(start.clone(), inject),
            )
            .await?;
        let cancel = Target::Id(shipment.shipping_id);
        run.stack.push(Compensation::CancelShipping(cancel));

        // 4. Approval releases the semantic lock.
        let unknown = Compensation::CancelUnlessApproved(order_id.clone());
        self.forward(
            run,
            "ApproveOrder",
            Outcome::ApprovalFailed,
            Some(unknown),
            || p.approve_order(&order_id),
        )
        .await?;
        Ok(Outcome::Completed)
    }

    /// One forward step. A failed state (a declined payment) or an error stops the saga with
    /// `on_failure`; an error that leaves the outcome unknown first pushes `if_unknown`, the
    /// compensation by order id that undoes whatever may have happened.
    async fn forward<T, F, Fut>(
        &self,
        run: &mut Run,
        step: &'static str,
        on_failure: Outcome,
        if_unknown: Option<Compensation>,
        call: F,
    ) -> Result<T, Stop>
    where
        T: Resource,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        match self.step(&mut run.report, step, false, call).await {
            Ok(value) => match value.failure() {
                None => Ok(value),
                Some(why) => Err(Stop {
                    outcome: on_failure,
                    why,
                    unknown: false,
                }),
            },
            Err(failed) => {
                let unknown = failed.outcome_unknown();
                if unknown {
                    run.stack.extend(if_unknown);
                }
                Err(Stop {
                    outcome: on_failure,
                    why: format!("{step} failed: {}", status_text(&failed.status)),
                    unknown,
                })
            }
        }
    }

    /// The order of a rerun saga is no longer PENDING. APPROVED: the saga completed. CANCELLED:
    /// it was compensated; the compensations run again by order id (they are idempotent) so
    /// nothing stays charged or shipping, and no forward step runs against a cancelled order.
    async fn settle_earlier_run(
        &self,
        run: &mut Run,
        order: &order::Order,
    ) -> Result<Outcome, Stop> {
        let by = Target::OrderId(order.order_id.clone());
        if order.status() == order::OrderStatus::Approved {
            let p = self.participants;
            // Only for the ids in the report: the saga completed whatever these answer.
            let _ = self
                .step(&mut run.report, "GetPayment", false, || p.get_payment(&by))
                .await;
            let _ = self
                .step(&mut run.report, "GetShipment", false, || {
                    p.get_shipment(&by)
                })
                .await;
            return Ok(Outcome::Completed);
        }
        run.stack.push(Compensation::RefundPayment(by.clone()));
        run.stack.push(Compensation::CancelShipping(by));
        Err(Stop {
            outcome: Outcome::PaymentFailed,
            why: format!(
                "order was {} by an earlier run",
                order.status().as_str_name()
            ),
            unknown: false,
        })
    }

    /// Runs the owed compensations, the latest first. All of them are attempted even if one
    /// fails, so as little as possible is left behind; only a failed cancel of an order whose
    /// approval is unknown stops the unwinding, since undoing a completed saga would be worse.
    async fn unwind(&self, run: &mut Run, stop: Stop) -> (Outcome, String) {
        let Stop {
            mut outcome, why, ..
        } = stop;
        let mut failures = Vec::new();
        while let Some(compensation) = run.stack.pop() {
            match self.compensate(run, &compensation).await {
                Ok(()) => {
                    if let Compensation::CancelUnlessApproved(order_id) = &compensation {
                        // The order is cancelled already: its own cancel is owed no more.
                        let done = Compensation::CancelOrder(order_id.clone());
                        run.stack.retain(|owed| *owed != done);
                    }
                }
                Err(status) if matches!(compensation, Compensation::CancelUnlessApproved(_)) => {
                    run.stack.clear();
                    if status.code() == Code::FailedPrecondition {
                        // The approval landed before the cancel: the saga completed.
                        return (Outcome::Completed, String::new());
                    }
                    let reason =
                        format!("{why}; CancelOrder then failed: {}", status_text(&status));
                    return (Outcome::CompensationFailed, reason);
                }
                Err(status) => {
                    failures.push(format!("{compensation:?}: {}", status_text(&status)));
                }
            }
        }
        if !failures.is_empty() {
            let reason = format!("{why}; compensation failed: {}", failures.join("; "));
            return (Outcome::CompensationFailed, reason);
        }
        // A rerun that found a shipment really started (or failed) before: shipping failed.
        if outcome == Outcome::PaymentFailed && run.shipped_before {
            outcome = Outcome::ShippingFailed;
        }
        (outcome, why)
    }

    async fn compensate(&self, run: &mut Run, compensation: &Compensation) -> Result<(), Status> {
        let p = self.participants;
        let step = compensation.step();
        let report = &mut run.report;
        let result = match compensation {
            Compensation::CancelOrder(order_id) | Compensation::CancelUnlessApproved(order_id) => {
                let reason = report.reason_so_far();
                self.step(report, step, true, || p.cancel_order(order_id, &reason))
                    .await
                    .map(drop)
            }
            Compensation::RefundPayment(target) => self
                .step(report, step, true, || p.refund_payment(target))
                .await
                .map(drop),
            Compensation::CancelShipping(target) => self
                .step(report, step, true, || p.cancel_shipping(target))
                .await
                .map(|shipment| run.shipped_before = !shipment.address.is_empty()),
        };
        result.map_err(|failed| failed.status)
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
        T: Resource,
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
            Ok((value, attempts)) => ("ok", value.state(), *attempts),
            Err(failed) => ("error", status_text(&failed.status), failed.attempts),
        };
        span.record("saga.attempts", attempts);
        if let Ok((value, _)) = &result {
            value.remember(report);
        }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use saga_proto::order::v1::OrderStatus;
    use saga_proto::payment::v1::PaymentStatus;
    use saga_proto::shipping::v1::ShipmentStatus;

    use super::*;
    use crate::fake::{Act, FakeParticipants};

    const SAGA_ID: &str = "run-0";

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            call_timeout_ms: 50,
            initial_backoff_ms: 1,
            max_backoff_ms: 2,
        }
    }

    fn plan(scenario: Scenario) -> SagaPlan {
        SagaPlan {
            saga_id: SAGA_ID.into(),
            scenario,
            user_id: "user-1".into(),
            currency: "EUR".into(),
            items: vec![order::LineItem {
                sku: "sku-1".into(),
                quantity: 2,
                unit_price_minor: 1_250,
            }],
            address: "1 Main St".into(),
        }
    }

    async fn run(fake: &FakeParticipants, scenario: Scenario) -> SagaReport {
        let (retry, compensation_retry) = (policy(), policy());
        let saga = Saga {
            participants: fake,
            retry: &retry,
            compensation_retry: &compensation_retry,
            verify: true,
        };
        saga.run(&plan(scenario)).await
    }

    fn steps(report: &SagaReport, compensation: bool) -> Vec<&'static str> {
        let steps = report.steps.iter();
        steps
            .filter(|s| s.compensation == compensation)
            .map(|s| s.step)
            .collect()
    }

    fn unavailable() -> Status {
        Status::unavailable("connection reset")
    }

    /// Every attempt of a step with `policy()`.
    fn always(act: Act) -> Vec<Act> {
        vec![act; 3]
    }

    #[tokio::test(start_paused = true)]
    async fn success_runs_the_four_steps_and_compensates_nothing() {
        let fake = FakeParticipants::default();
        let report = run(&fake, Scenario::Success).await;
        assert_eq!(report.outcome, Outcome::Completed, "{report:?}");
        assert!(report.is_ok(), "{report:?}");
        let forward = [
            "CreateOrder",
            "ProcessPayment",
            "StartShipping",
            "ApproveOrder",
        ];
        assert_eq!(steps(&report, false), forward);
        assert!(steps(&report, true).is_empty());
        let order = fake.only_order();
        assert_eq!(order.status(), OrderStatus::Approved);
        assert_eq!(report.order_id.as_deref(), Some(order.order_id.as_str()));
        let payment = fake.payment_of(&order.order_id).unwrap();
        assert_eq!(
            (payment.amount_minor, payment.currency.as_str()),
            (2_500, "EUR")
        );
        assert_eq!(report.payment_id, Some(payment.payment_id));
        assert!(report.shipping_id.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_declined_payment_cancels_the_order() {
        let fake = FakeParticipants::default();
        let report = run(&fake, Scenario::PaymentFailure).await;
        assert_eq!(report.outcome, Outcome::PaymentFailed, "{report:?}");
        assert!(report.is_ok(), "{report:?}");
        assert_eq!(steps(&report, true), ["CancelOrder"]);
        assert!(report.reason.as_deref().unwrap_or("").contains("DECLINED"));
        let order = fake.only_order();
        assert_eq!(order.status(), OrderStatus::Cancelled);
        assert!(order.cancel_reason.contains("ProcessPayment"), "{order:?}");
        assert!(fake.shipment_of(&order.order_id).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_shipment_refunds_then_cancels() {
        let fake = FakeParticipants::default();
        let report = run(&fake, Scenario::ShippingFailure).await;
        assert_eq!(report.outcome, Outcome::ShippingFailed, "{report:?}");
        assert!(report.is_ok(), "{report:?}");
        assert_eq!(steps(&report, true), ["RefundPayment", "CancelOrder"]);
        let order = fake.only_order();
        let payment = fake.payment_of(&order.order_id).unwrap();
        assert_eq!(payment.status(), PaymentStatus::Refunded);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_approval_unwinds_everything_in_reverse() {
        let fake = FakeParticipants::default();
        fake.script("ApproveOrder", [Act::Decline]);
        let report = run(&fake, Scenario::Success).await;
        assert_eq!(report.outcome, Outcome::ApprovalFailed, "{report:?}");
        let undo = ["CancelShipping", "RefundPayment", "CancelOrder"];
        assert_eq!(steps(&report, true), undo);
        assert!(report.is_ok(), "{report:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_to_completion() {
        let fake = FakeParticipants::default();
        fake.script(
            "ProcessPayment",
            [Act::Fail(unavailable()), Act::LoseReply(unavailable())],
        );
        let report = run(&fake, Scenario::Success).await;
        assert_eq!(report.outcome, Outcome::Completed, "{report:?}");
        let charge = report.steps.iter().find(|s| s.step == "ProcessPayment");
        assert_eq!(charge.map(|s| s.attempts), Some(3));
        // The lost reply's charge is the one the retry got back: charged once.
        let order = fake.only_order();
        assert_eq!(
            fake.payment_of(&order.order_id).unwrap().status(),
            PaymentStatus::Completed
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_order_fails_the_saga_with_nothing_to_undo() {
        let fake = FakeParticipants::default();
        fake.script(
            "CreateOrder",
            [Act::Fail(Status::invalid_argument("items: empty"))],
        );
        let report = run(&fake, Scenario::Success).await;
        assert_eq!(report.outcome, Outcome::Failed);
        let reason = report.reason.unwrap_or_default();
        assert!(reason.contains("InvalidArgument"), "{reason}");
        assert!(!reason.contains("may exist"), "{reason}");
        assert_eq!(fake.calls(), ["CreateOrder"]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_order_of_unknown_outcome_is_named_for_whoever_settles_it() {
        let fake = FakeParticipants::default();
        fake.script("CreateOrder", always(Act::LoseReply(unavailable())));
        let report = run(&fake, Scenario::Success).await;
        assert_eq!(report.outcome, Outcome::Failed);
        let reason = report.reason.unwrap_or_default();
        assert!(
            reason.contains("idempotency key run-0 may exist as PENDING"),
            "{reason}"
        );
        assert_eq!(fake.only_order().status(), OrderStatus::Pending);
    }

    #[tokio::test(start_paused = true)]
    async fn a_charge_of_unknown_outcome_is_refunded_by_order() {
        let fake = FakeParticipants::default();
        fake.script("ProcessPayment", always(Act::LoseReply(unavailable())));
        let report = run(&fake, Scenario::Success).await;
        assert_eq!(report.outcome, Outcome::PaymentFailed, "{report:?}");
        assert_eq!(steps(&report, true), ["RefundPayment", "CancelOrder"]);
        let order = fake.only_order();
        // The charge did land; the refund by order id found it.
        let payment = fake.payment_of(&order.order_id).unwrap();
        assert_eq!(payment.status(), PaymentStatus::Refunded);
        assert!(report.is_ok(), "{report:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_charge_that_hangs_past_its_deadline_has_its_slot_voided() {
        let fake = FakeParticipants::default();
        fake.script(
            "ProcessPayment",
            always(Act::Delay(Duration::from_secs(10))),
        );
        let report = run(&fake, Scenario::Success).await;
        assert_eq!(report.outcome, Outcome::PaymentFailed, "{report:?}");
        assert!(
            report
                .reason
                .as_deref()
                .unwrap_or("")
                .contains("DeadlineExceeded")
        );
        let order = fake.only_order();
        // Nothing was charged, and nothing can be: the slot is closed.
        let payment = fake.payment_of(&order.order_id).unwrap();
        assert_eq!(payment.status(), PaymentStatus::Voided);
        assert_eq!(order.status(), OrderStatus::Cancelled);
    }

    #[tokio::test(start_paused = true)]
    async fn a_shipment_of_unknown_outcome_is_cancelled_by_order_then_refunded() {
        let fake = FakeParticipants::default();
        fake.script("StartShipping", always(Act::LoseReply(unavailable())));
        let report = run(&fake, Scenario::Success).await;
        assert_eq!(report.outcome, Outcome::ShippingFailed, "{report:?}");
        let undo = ["CancelShipping", "RefundPayment", "CancelOrder"];
        assert_eq!(steps(&report, true), undo);
        let order = fake.only_order();
        let shipment = fake.shipment_of(&order.order_id).unwrap();
        assert_eq!(shipment.status(), ShipmentStatus::Cancelled);
        assert!(report.is_ok(), "{report:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_approval_that_landed_unseen_completes_the_saga() {
        let fake = FakeParticipants::default();
        fake.script("ApproveOrder", always(Act::LoseReply(unavailable())));
        let report = run(&fake, Scenario::Success).await;
        assert_eq!(report.outcome, Outcome::Completed, "{report:?}");
        // The cancel that settles the race is refused; nothing is undone.
        assert_eq!(steps(&report, true), ["CancelOrder"]);
        assert_eq!(fake.only_order().status(), OrderStatus::Approved);
        assert!(report.is_ok(), "{report:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_approval_that_never_landed_cancels_first_then_unwinds() {
        let fake = FakeParticipants::default();
        fake.script("ApproveOrder", always(Act::Fail(unavailable())));
        let report = run(&fake, Scenario::Success).await;
        assert_eq!(report.outcome, Outcome::ApprovalFailed, "{report:?}");
        // The order's cancel moved to the top, and is not repeated at the bottom.
        let undo = ["CancelOrder", "CancelShipping", "RefundPayment"];
        assert_eq!(steps(&report, true), undo);
        assert!(report.is_ok(), "{report:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_approval_race_that_cannot_be_settled_undoes_nothing() {
        let fake = FakeParticipants::default();
        fake.script("ApproveOrder", always(Act::Fail(unavailable())));
        fake.script("CancelOrder", always(Act::Fail(unavailable())));
        let report = run(&fake, Scenario::Success).await;
        assert_eq!(report.outcome, Outcome::CompensationFailed, "{report:?}");
        assert!(
            report
                .reason
                .as_deref()
                .unwrap_or("")
                .contains("CancelOrder then failed")
        );
        assert_eq!(steps(&report, true), ["CancelOrder"]);
        let order = fake.only_order();
        assert_eq!(
            fake.payment_of(&order.order_id).unwrap().status(),
            PaymentStatus::Completed
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_compensation_is_reported_and_the_rest_still_run() {
        let fake = FakeParticipants::default();
        fake.script("RefundPayment", always(Act::Fail(unavailable())));
        let report = run(&fake, Scenario::ShippingFailure).await;
        assert_eq!(report.outcome, Outcome::CompensationFailed, "{report:?}");
        let reason = report.reason.as_deref().unwrap_or("");
        assert!(
            reason.contains("compensation failed: RefundPayment"),
            "{reason}"
        );
        assert_eq!(steps(&report, true), ["RefundPayment", "CancelOrder"]);
        assert!(!report.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn rerunning_a_completed_saga_only_reads() {
        let fake = FakeParticipants::default();
        let first = run(&fake, Scenario::Success).await;
        let again = run(&fake, Scenario::Success).await;
        assert_eq!(again.outcome, Outcome::Completed, "{again:?}");
        assert_eq!(
            steps(&again, false),
            ["CreateOrder", "GetPayment", "GetShipment"]
        );
        assert_eq!(
            (again.payment_id, again.shipping_id),
            (first.payment_id, first.shipping_id)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn rerunning_a_compensated_saga_settles_by_order_and_never_charges() {
        let fake = FakeParticipants::default();
        run(&fake, Scenario::ShippingFailure).await;
        let again = run(&fake, Scenario::Success).await;
        assert_eq!(again.outcome, Outcome::ShippingFailed, "{again:?}");
        assert_eq!(steps(&again, false), ["CreateOrder"]);
        assert_eq!(steps(&again, true), ["CancelShipping", "RefundPayment"]);

        let fake = FakeParticipants::default();
        run(&fake, Scenario::PaymentFailure).await;
        let again = run(&fake, Scenario::Success).await;
        assert_eq!(again.outcome, Outcome::PaymentFailed, "{again:?}");
        // The shipping slot is closed for good, so a late StartShipping cannot ship.
        let order = fake.only_order();
        let shipment = fake.shipment_of(&order.order_id).unwrap();
        assert_eq!(shipment.status(), ShipmentStatus::Cancelled);
    }

    #[tokio::test(start_paused = true)]
    async fn an_order_cancelled_by_someone_else_stops_the_forward_path() {
        let fake = FakeParticipants::default();
        run(&fake, Scenario::Success).await;
        let order = fake.only_order();
        fake.set_order_status(&order.order_id, OrderStatus::Cancelled);
        let again = run(&fake, Scenario::Success).await;
        assert_eq!(again.outcome, Outcome::ShippingFailed, "{again:?}");
        assert!(
            again
                .reason
                .as_deref()
                .unwrap_or("")
                .contains("CANCELLED by an earlier run")
        );
    }
}
