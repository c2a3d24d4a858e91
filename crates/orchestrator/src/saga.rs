//! The Create Order saga: CreateOrder → ProcessPayment → StartShipping → ApproveOrder, each
//! forward step pushing the compensation that undoes it, and a failure unwinding that stack in
//! reverse (Temporal's saga samples keep the same shape).
//!
//! A step whose outcome is unknown (its retries ran out on UNAVAILABLE or a deadline) is treated
//! as possibly done: it pushes its compensation by order id, which also closes the order's slot
//! so that a request still in flight can never charge or ship afterwards.
//!
//! Before undoing anything but the order itself, a failing saga marks its order failed
//! (`FailOrder`): from then on nothing can approve it, neither a late approval of this saga nor
//! `recover` settling it from elsewhere, so the unwinding cannot race a completion. A
//! compensation that runs out of attempts leaves the order PENDING with the reason (parked),
//! where `recover` finds it and settles it later with [`Saga::settle`].
use std::future::Future;
use std::time::Instant;

use saga_common::telemetry::Root;
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
}

impl Compensation {
    fn step(&self) -> &'static str {
        match self {
            Compensation::CancelShipping(_) => "CancelShipping",
            Compensation::RefundPayment(_) => "RefundPayment",
            Compensation::CancelOrder(_) => "CancelOrder",
        }
    }
}

/// Where a saga starts: its plan, or (settling) its order.
#[derive(Debug, Clone, Copy)]
enum Start<'a> {
    Plan(&'a SagaPlan),
    Order(&'a order::Order),
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
        let report = SagaReport::new(plan.saga_id.clone(), plan.scenario);
        self.drive(report, Start::Plan(plan)).await
    }

    /// Settles the saga of an order found PENDING for too long (`recover`): approves it when
    /// every step did succeed, and compensates it otherwise. Its own trace, like a saga's.
    pub async fn settle(&self, order: &order::Order) -> SagaReport {
        let mut report = SagaReport::new(order.idempotency_key.clone(), None);
        report.order_id = Some(order.order_id.clone());
        self.drive(report, Start::Order(order)).await
    }

    async fn drive(&self, report: SagaReport, start: Start<'_>) -> SagaReport {
        let name = match start {
            Start::Plan(_) => "saga CreateOrder",
            Start::Order(_) => "saga settle",
        };
        // The sampler decides here, once for the whole saga, before any span of it exists
        // (see telemetry::root): an unsampled saga builds none, its context alone travels.
        let parent = saga_common::telemetry::context_from_env();
        let root = match saga_common::telemetry::root(parent.as_ref(), name) {
            Root::Unsampled(context) => Err(context),
            Root::Traced => {
                let root = tracing::info_span!(
                    "saga",
                    otel.name = name,
                    saga.id = %report.saga_id,
                    saga.scenario = ?report.scenario,
                    saga.outcome = tracing::field::Empty,
                    order.id = tracing::field::Empty,
                    payment.id = tracing::field::Empty,
                    shipping.id = tracing::field::Empty,
                );
                if let Some(parent) = parent {
                    let _ = root.set_parent(parent);
                }
                saga_common::telemetry::start_root(&root);
                Ok(root)
            }
        };
        let started = Instant::now();
        let mut run = Run {
            report,
            stack: Vec::new(),
            shipped_before: false,
        };
        let work = async {
            run.report.trace_id = saga_common::telemetry::current_trace_id();
            let ended = match start {
                Start::Plan(plan) => self.forward_path(plan, &mut run).await,
                Start::Order(order) => self.settle_from(&mut run, order).await,
            };
            let (outcome, reason) = match ended {
                Ok(outcome) => (outcome, String::new()),
                Err(stop) => self.unwind(&mut run, stop).await,
            };
            let report = &mut run.report;
            report.outcome = outcome;
            report.reason = (!reason.is_empty()).then_some(reason);
            let elapsed = started.elapsed();
            report.duration_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
            report.duration_ms = report.duration_us / 1000;
            crate::metrics::saga(outcome, elapsed.as_secs_f64());
            if self.verify {
                let span = tracing::info_span!("saga.verify", otel.name = "verify");
                crate::verify::check(self.participants, self.retry, report)
                    .instrument(span)
                    .await;
            }
        };
        match root {
            Ok(root) => {
                work.instrument(root.clone()).await;
                record_outcome(&root, &run.report);
            }
            Err(context) => saga_common::telemetry::unsampled(context, work).await,
        }
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
        if order.status() != order::OrderStatus::Pending || !order.last_error.is_empty() {
            // An earlier run of this saga got further: finish from what it left.
            return self.settle_from(run, &order).await;
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

        // 4. Approval releases the semantic lock. Its outcome unknown, it needs no compensation
        // of its own: the unwinding's FailOrder settles the race at the order service.
        self.approve(run, &order_id).await
    }

    async fn approve(&self, run: &mut Run, order_id: &str) -> Result<Outcome, Stop> {
        let p = self.participants;
        self.forward(run, "ApproveOrder", Outcome::ApprovalFailed, None, || {
            p.approve_order(order_id)
        })
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

    /// Settles a saga from its order alone: a rerun whose order is settled or failed, or an
    /// order `recover` found PENDING for too long. APPROVED: the saga completed. CANCELLED: the
    /// compensations run again by order id (they are idempotent), so nothing stays charged or
    /// shipping. PENDING: approved when its payment is COMPLETED and its shipment STARTED and
    /// its saga did not fail; otherwise compensated by order id, and then cancelled.
    async fn settle_from(&self, run: &mut Run, order: &order::Order) -> Result<Outcome, Stop> {
        let p = self.participants;
        let by = Target::OrderId(order.order_id.clone());
        let status = order.status();
        let paid = self
            .step(&mut run.report, "GetPayment", false, || p.get_payment(&by))
            .await;
        let shipped = self
            .step(&mut run.report, "GetShipment", false, || {
                p.get_shipment(&by)
            })
            .await;
        if status == order::OrderStatus::Approved {
            // The reads were only for the ids in the report.
            return Ok(Outcome::Completed);
        }
        if status == order::OrderStatus::Pending {
            run.stack
                .push(Compensation::CancelOrder(order.order_id.clone()));
        }
        run.stack.push(Compensation::RefundPayment(by.clone()));
        run.stack.push(Compensation::CancelShipping(by));
        let state = |read: Result<String, Failed>| match read {
            Ok(state) => state,
            Err(failed) if failed.status.code() == Code::NotFound => "none".into(),
            Err(failed) => format!("unreadable ({})", status_text(&failed.status)),
        };
        let payment = state(paid.as_ref().map(Resource::state).map_err(Clone::clone));
        let shipment = state(shipped.as_ref().map(Resource::state).map_err(Clone::clone));
        let ready = paid.is_ok_and(|p| p.status() == payment::PaymentStatus::Completed)
            && shipped.is_ok_and(|s| s.status() == shipping::ShipmentStatus::Started);
        if status == order::OrderStatus::Pending && order.last_error.is_empty() && ready {
            // Every step did succeed: forward recovery.
            return self.approve(run, &order.order_id).await;
        }
        let mut why = format!(
            "order {} (payment {payment}, shipment {shipment})",
            status.as_str_name()
        );
        if !order.last_error.is_empty() {
            why.push_str(&format!("; its saga failed: {}", order.last_error));
        }
        Err(Stop {
            outcome: Outcome::PaymentFailed,
            why,
            unknown: false,
        })
    }

    /// Runs the owed compensations, the latest first. Unless only the order is left to cancel,
    /// the order is first marked failed, so nothing approves it while it is being undone; if
    /// that is refused because the order is APPROVED, an approval whose outcome was unknown did
    /// land, and the saga completed. Every compensation is attempted even if one fails, so as
    /// little as possible is left behind; but then the order is not cancelled: it stays PENDING
    /// with the reason (parked) for `recover`.
    async fn unwind(&self, run: &mut Run, stop: Stop) -> (Outcome, String) {
        let Stop {
            mut outcome, why, ..
        } = stop;
        let lock_only = run
            .stack
            .iter()
            .all(|owed| matches!(owed, Compensation::CancelOrder(_)));
        if let Some(order_id) = run.report.order_id.clone().filter(|_| !lock_only) {
            match self.fail_order(run, &order_id, &why).await {
                Ok(()) => {}
                Err(status) if status.code() == Code::FailedPrecondition => {
                    return (Outcome::Completed, String::new());
                }
                Err(status) => {
                    let reason = format!(
                        "{why}; FailOrder then failed: {}; nothing was undone and the order \
                         stays PENDING for recover",
                        status_text(&status)
                    );
                    return (Outcome::CompensationFailed, reason);
                }
            }
        }
        let mut failures = Vec::new();
        while let Some(compensation) = run.stack.pop() {
            if let (Compensation::CancelOrder(order_id), false) =
                (&compensation, failures.is_empty())
            {
                let reason = format!("{why}; compensation failed: {}", failures.join("; "));
                let parked = match self.fail_order(run, order_id, &reason).await {
                    Ok(()) => "parked: the order stays PENDING with this reason for recover",
                    Err(_) => "the order stays PENDING for recover",
                };
                return (Outcome::CompensationFailed, format!("{reason}; {parked}"));
            }
            if let Err(status) = self.compensate(run, &compensation).await {
                failures.push(format!("{compensation:?}: {}", status_text(&status)));
            }
        }
        if !failures.is_empty() {
            let reason = format!("{why}; compensation failed: {}", failures.join("; "));
            return (Outcome::CompensationFailed, reason);
        }
        // A settled saga that found a shipment really started (or failed): shipping failed.
        if outcome == Outcome::PaymentFailed && run.shipped_before {
            outcome = Outcome::ShippingFailed;
        }
        (outcome, why)
    }

    /// Records on the order that its saga failed, and why.
    async fn fail_order(&self, run: &mut Run, order_id: &str, why: &str) -> Result<(), Status> {
        let p = self.participants;
        self.step(&mut run.report, "FailOrder", true, || {
            p.fail_order(order_id, why)
        })
        .await
        .map(drop)
        .map_err(|failed| failed.status)
    }

    async fn compensate(&self, run: &mut Run, compensation: &Compensation) -> Result<(), Status> {
        let p = self.participants;
        let step = compensation.step();
        let report = &mut run.report;
        let result = match compensation {
            Compensation::CancelOrder(order_id) => {
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
        // The client side of the step's calls (a server span per attempt hangs under it).
        let span = tracing::info_span!(
            "saga.step",
            otel.name = step,
            otel.kind = "client",
            saga.step = step,
            saga.compensation = compensation,
            saga.attempts = tracing::field::Empty,
        );
        let started = Instant::now();
        // Boxed, so that the saga's own future stays small: a saga task was 19 KB, copied
        // at every spawn and at every await of a nested step (memcpy, 12% of the orchestrator).
        let result = Box::pin(
            saga_common::telemetry::calls_traced_by_span(policy.run(call)).instrument(span.clone()),
        )
        .await;
        let (outcome, detail, attempts) = match &result {
            Ok((value, attempts)) => ("ok", value.state(), *attempts),
            Err(failed) => ("error", status_text(&failed.status), failed.attempts),
        };
        span.record("saga.attempts", attempts);
        crate::metrics::step(step, compensation, attempts, result.is_ok());
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

    fn saga<'a>(fake: &'a FakeParticipants, policy: &'a RetryPolicy) -> Saga<'a, FakeParticipants> {
        Saga {
            participants: fake,
            retry: policy,
            compensation_retry: policy,
            verify: true,
        }
    }

    async fn run(fake: &FakeParticipants, scenario: Scenario) -> SagaReport {
        saga(fake, &policy()).run(&plan(scenario)).await
    }

    async fn settle(fake: &FakeParticipants, order: &order::Order) -> SagaReport {
        saga(fake, &policy()).settle(order).await
    }

    /// A saga's future is copied whole when its task is spawned, and a nested step's at each
    /// await: over gRPC a saga was 19 KB (memcpy, 12% of the orchestrator's CPU) until tonic's
    /// call futures and the steps were boxed.
    #[tokio::test]
    async fn a_saga_over_grpc_is_a_small_future() {
        let settings = crate::OrchestratorSettings::default();
        let grpc = crate::grpc::GrpcParticipants::new(&settings).unwrap();
        let saga = Saga {
            participants: &grpc,
            retry: &settings.retry,
            compensation_retry: &settings.compensation_retry,
            verify: true,
        };
        let plan = plan(Scenario::Success);
        let size = std::mem::size_of_val(&saga.run(&plan));
        assert!(size <= 8 * 1024, "a saga's future is {size} bytes");
    }

    fn steps(report: &SagaReport, compensation: bool) -> Vec<&'static str> {
        let steps = report.steps.iter();
        steps
            .filter(|s| s.compensation == compensation)
            .map(|s| s.step)
            .collect()
    }

    fn reason(report: &SagaReport) -> &str {
        report.reason.as_deref().unwrap_or("")
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
        assert_eq!(payment.amount_minor, 2_500);
        assert_eq!(report.payment_id, Some(payment.payment_id));
        assert!(report.shipping_id.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_declined_payment_only_cancels_the_order() {
        let fake = FakeParticipants::default();
        let report = run(&fake, Scenario::PaymentFailure).await;
        assert_eq!(report.outcome, Outcome::PaymentFailed, "{report:?}");
        assert!(report.is_ok(), "{report:?}");
        // Nothing but the order to undo: no FailOrder first.
        assert_eq!(steps(&report, true), ["CancelOrder"]);
        assert!(reason(&report).contains("DECLINED"));
        let order = fake.only_order();
        assert_eq!(order.status(), OrderStatus::Cancelled);
        assert!(order.cancel_reason.contains("ProcessPayment"), "{order:?}");
        assert!(fake.shipment_of(&order.order_id).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_shipment_marks_the_order_refunds_then_cancels() {
        let fake = FakeParticipants::default();
        let report = run(&fake, Scenario::ShippingFailure).await;
        assert_eq!(report.outcome, Outcome::ShippingFailed, "{report:?}");
        assert!(report.is_ok(), "{report:?}");
        let undo = ["FailOrder", "RefundPayment", "CancelOrder"];
        assert_eq!(steps(&report, true), undo);
        let order = fake.only_order();
        let payment = fake.payment_of(&order.order_id).unwrap();
        assert_eq!(payment.status(), PaymentStatus::Refunded);
        assert_eq!(order.failure_count, 1);
        assert!(
            order.last_error.contains("SHIPMENT_STATUS_FAILED"),
            "{order:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_approval_unwinds_everything_in_reverse() {
        let fake = FakeParticipants::default();
        fake.script("ApproveOrder", [Act::Decline]);
        let report = run(&fake, Scenario::Success).await;
        assert_eq!(report.outcome, Outcome::ApprovalFailed, "{report:?}");
        let undo = [
            "FailOrder",
            "CancelShipping",
            "RefundPayment",
            "CancelOrder",
        ];
        assert_eq!(steps(&report, true), undo);
        assert!(report.is_ok(), "{report:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_to_completion() {
        let fake = FakeParticipants::default();
        let flaky = [Act::Fail(unavailable()), Act::LoseReply(unavailable())];
        fake.script("ProcessPayment", flaky);
        let report = run(&fake, Scenario::Success).await;
        assert_eq!(report.outcome, Outcome::Completed, "{report:?}");
        let charge = report.steps.iter().find(|s| s.step == "ProcessPayment");
        assert_eq!(charge.map(|s| s.attempts), Some(3));
        // The lost reply's charge is the one the retry got back: charged once.
        let order = fake.only_order();
        let payment = fake.payment_of(&order.order_id).unwrap();
        assert_eq!(payment.status(), PaymentStatus::Completed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_order_fails_the_saga_with_nothing_to_undo() {
        let fake = FakeParticipants::default();
        let refused = Act::Fail(Status::invalid_argument("items: empty"));
        fake.script("CreateOrder", [refused]);
        let report = run(&fake, Scenario::Success).await;
        assert_eq!(report.outcome, Outcome::Failed);
        assert!(reason(&report).contains("InvalidArgument"), "{report:?}");
        assert!(!reason(&report).contains("may exist"), "{report:?}");
        assert_eq!(fake.calls(), ["CreateOrder"]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_order_of_unknown_outcome_is_named_for_whoever_settles_it() {
        let fake = FakeParticipants::default();
        fake.script("CreateOrder", always(Act::LoseReply(unavailable())));
        let report = run(&fake, Scenario::Success).await;
        assert_eq!(report.outcome, Outcome::Failed);
        let named = "idempotency key run-0 may exist as PENDING";
        assert!(reason(&report).contains(named), "{report:?}");
        assert_eq!(fake.only_order().status(), OrderStatus::Pending);
    }

    #[tokio::test(start_paused = true)]
    async fn a_charge_of_unknown_outcome_is_refunded_by_order() {
        let fake = FakeParticipants::default();
        fake.script("ProcessPayment", always(Act::LoseReply(unavailable())));
        let report = run(&fake, Scenario::Success).await;
        assert_eq!(report.outcome, Outcome::PaymentFailed, "{report:?}");
        let undo = ["FailOrder", "RefundPayment", "CancelOrder"];
        assert_eq!(steps(&report, true), undo);
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
        assert!(reason(&report).contains("DeadlineExceeded"), "{report:?}");
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
        let undo = [
            "FailOrder",
            "CancelShipping",
            "RefundPayment",
            "CancelOrder",
        ];
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
        // Marking the order failed settles the race: refused, since it is APPROVED.
        assert_eq!(steps(&report, true), ["FailOrder"]);
        assert_eq!(fake.only_order().status(), OrderStatus::Approved);
        assert!(report.is_ok(), "{report:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_approval_that_never_landed_locks_the_order_then_unwinds() {
        let fake = FakeParticipants::default();
        fake.script("ApproveOrder", always(Act::Fail(unavailable())));
        let report = run(&fake, Scenario::Success).await;
        assert_eq!(report.outcome, Outcome::ApprovalFailed, "{report:?}");
        let undo = [
            "FailOrder",
            "CancelShipping",
            "RefundPayment",
            "CancelOrder",
        ];
        assert_eq!(steps(&report, true), undo);
        assert!(report.is_ok(), "{report:?}");
        // A late approval can no longer land.
        let order = fake.only_order();
        assert!(fake.approve_order(&order.order_id).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn an_approval_race_that_cannot_be_settled_undoes_nothing() {
        let fake = FakeParticipants::default();
        fake.script("ApproveOrder", always(Act::Fail(unavailable())));
        fake.script("FailOrder", always(Act::Fail(unavailable())));
        let report = run(&fake, Scenario::Success).await;
        assert_eq!(report.outcome, Outcome::CompensationFailed, "{report:?}");
        assert!(
            reason(&report).contains("FailOrder then failed"),
            "{report:?}"
        );
        assert_eq!(steps(&report, true), ["FailOrder"]);
        let order = fake.only_order();
        assert_eq!(order.status(), OrderStatus::Pending);
        let payment = fake.payment_of(&order.order_id).unwrap();
        assert_eq!(payment.status(), PaymentStatus::Completed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_compensation_that_runs_out_of_attempts_parks_the_order() {
        let fake = FakeParticipants::default();
        fake.script("RefundPayment", always(Act::Fail(unavailable())));
        let report = run(&fake, Scenario::ShippingFailure).await;
        assert_eq!(report.outcome, Outcome::CompensationFailed, "{report:?}");
        assert!(reason(&report).contains("compensation failed: RefundPayment"));
        assert!(reason(&report).contains("parked"), "{report:?}");
        // Not cancelled: the second FailOrder records why, and the order stays PENDING.
        let undo = ["FailOrder", "RefundPayment", "FailOrder"];
        assert_eq!(steps(&report, true), undo);
        let order = fake.only_order();
        assert_eq!(order.status(), OrderStatus::Pending);
        assert_eq!(order.failure_count, 2);
        assert!(order.last_error.contains("RefundPayment"), "{order:?}");
        assert!(!report.is_ok());

        // The fault gone, settling the parked order finishes the compensation.
        let settled = settle(&fake, &order).await;
        assert_eq!(settled.outcome, Outcome::ShippingFailed, "{settled:?}");
        assert!(settled.is_ok(), "{settled:?}");
        let order = fake.only_order();
        assert_eq!(order.status(), OrderStatus::Cancelled);
        let payment = fake.payment_of(&order.order_id).unwrap();
        assert_eq!(payment.status(), PaymentStatus::Refunded);
    }

    #[tokio::test(start_paused = true)]
    async fn the_other_compensations_still_run_when_one_fails() {
        let fake = FakeParticipants::default();
        fake.script("ApproveOrder", [Act::Decline]);
        fake.script("CancelShipping", always(Act::Fail(unavailable())));
        let report = run(&fake, Scenario::Success).await;
        assert_eq!(report.outcome, Outcome::CompensationFailed, "{report:?}");
        let undo = ["FailOrder", "CancelShipping", "RefundPayment", "FailOrder"];
        assert_eq!(steps(&report, true), undo);
        let order = fake.only_order();
        let payment = fake.payment_of(&order.order_id).unwrap();
        assert_eq!(payment.status(), PaymentStatus::Refunded);
    }

    #[tokio::test(start_paused = true)]
    async fn rerunning_a_completed_saga_only_reads() {
        let fake = FakeParticipants::default();
        let first = run(&fake, Scenario::Success).await;
        let again = run(&fake, Scenario::Success).await;
        assert_eq!(again.outcome, Outcome::Completed, "{again:?}");
        let reads = ["CreateOrder", "GetPayment", "GetShipment"];
        assert_eq!(steps(&again, false), reads);
        assert!(steps(&again, true).is_empty());
        assert_eq!(again.payment_id, first.payment_id);
        assert_eq!(again.shipping_id, first.shipping_id);
    }

    #[tokio::test(start_paused = true)]
    async fn rerunning_a_compensated_saga_settles_by_order_and_never_charges() {
        let fake = FakeParticipants::default();
        run(&fake, Scenario::ShippingFailure).await;
        let again = run(&fake, Scenario::Success).await;
        assert_eq!(again.outcome, Outcome::ShippingFailed, "{again:?}");
        let reads = ["CreateOrder", "GetPayment", "GetShipment"];
        assert_eq!(steps(&again, false), reads);
        let undo = ["FailOrder", "CancelShipping", "RefundPayment"];
        assert_eq!(steps(&again, true), undo);

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
    async fn an_order_cancelled_by_someone_else_is_settled_not_continued() {
        let fake = FakeParticipants::default();
        run(&fake, Scenario::Success).await;
        let order = fake.only_order();
        fake.set_order_status(&order.order_id, OrderStatus::Cancelled);
        let again = run(&fake, Scenario::Success).await;
        assert_eq!(again.outcome, Outcome::ShippingFailed, "{again:?}");
        assert!(
            reason(&again).contains("order ORDER_STATUS_CANCELLED"),
            "{again:?}"
        );
        assert!(
            reason(&again).contains("shipment SHIPMENT_STATUS_STARTED"),
            "{again:?}"
        );
        let shipment = fake.shipment_of(&order.order_id).unwrap();
        assert_eq!(shipment.status(), ShipmentStatus::Cancelled);
    }

    /// A saga stopped for good after `last` succeeded (its orchestrator killed): what
    /// `recover` finds, on services that answer again.
    async fn abandoned_after(last: &'static str) -> (FakeParticipants, order::Order) {
        let fake = FakeParticipants::default();
        let steps = [
            "CreateOrder",
            "ProcessPayment",
            "StartShipping",
            "ApproveOrder",
        ];
        let killed = || always(Act::Fail(Status::invalid_argument("killed")));
        let after = steps.iter().position(|s| *s == last).map_or(0, |i| i + 1);
        for rpc in steps.iter().skip(after) {
            fake.script(rpc, killed());
        }
        // Its own unwinding never ran either.
        fake.script("FailOrder", killed());
        fake.script("CancelOrder", killed());
        run(&fake, Scenario::Success).await;
        fake.clear_script();
        let order = fake.only_order();
        assert_eq!(order.status(), OrderStatus::Pending);
        (fake, order)
    }

    #[tokio::test(start_paused = true)]
    async fn settling_an_order_whose_steps_all_succeeded_approves_it() {
        let (fake, order) = abandoned_after("StartShipping").await;
        let report = settle(&fake, &order).await;
        assert_eq!(report.outcome, Outcome::Completed, "{report:?}");
        let forward = ["GetPayment", "GetShipment", "ApproveOrder"];
        assert_eq!(steps(&report, false), forward);
        assert!(report.is_ok(), "{report:?}");
        assert_eq!(fake.only_order().status(), OrderStatus::Approved);
    }

    #[tokio::test(start_paused = true)]
    async fn settling_a_charged_order_without_shipment_refunds_and_closes_the_slot() {
        let (fake, order) = abandoned_after("ProcessPayment").await;
        let report = settle(&fake, &order).await;
        assert_eq!(report.outcome, Outcome::PaymentFailed, "{report:?}");
        let undo = [
            "FailOrder",
            "CancelShipping",
            "RefundPayment",
            "CancelOrder",
        ];
        assert_eq!(steps(&report, true), undo);
        assert!(report.is_ok(), "{report:?}");
        let order = fake.only_order();
        assert_eq!(order.status(), OrderStatus::Cancelled);
        let payment = fake.payment_of(&order.order_id).unwrap();
        assert_eq!(payment.status(), PaymentStatus::Refunded);
        // A StartShipping still in flight can never ship now.
        let shipment = fake.shipment_of(&order.order_id).unwrap();
        assert_eq!(shipment.status(), ShipmentStatus::Cancelled);
    }

    #[tokio::test(start_paused = true)]
    async fn settling_an_order_with_nothing_done_voids_both_slots() {
        let (fake, order) = abandoned_after("CreateOrder").await;
        let report = settle(&fake, &order).await;
        assert_eq!(report.outcome, Outcome::PaymentFailed, "{report:?}");
        let order = fake.only_order();
        assert_eq!(order.status(), OrderStatus::Cancelled);
        let payment = fake.payment_of(&order.order_id).unwrap();
        assert_eq!(payment.status(), PaymentStatus::Voided);
    }

    #[tokio::test(start_paused = true)]
    async fn settling_races_a_late_approval_safely() {
        let (fake, order) = abandoned_after("StartShipping").await;
        // The saga's own approval lands before the sweeper acts.
        fake.approve_order(&order.order_id).await.unwrap();
        let report = settle(&fake, &order).await;
        assert_eq!(report.outcome, Outcome::Completed, "{report:?}");
        assert!(report.is_ok(), "{report:?}");

        let (fake, order) = abandoned_after("ProcessPayment").await;
        // The sweeper marks the order failed first: a live saga's approval is refused after.
        let report = settle(&fake, &order).await;
        assert_eq!(report.outcome, Outcome::PaymentFailed, "{report:?}");
        assert!(fake.approve_order(&order.order_id).await.is_err());
    }
}
