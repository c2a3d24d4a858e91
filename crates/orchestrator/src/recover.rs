//! No saga left behind: `recover` finds every order left PENDING past a grace period (its
//! orchestrator killed, or its compensation parked) and settles it from what the participants
//! hold; `audit` checks the saga's invariants over the whole store.
use std::time::{Duration, SystemTime};

use futures::StreamExt as _;
use saga_proto::order::v1::{self as order, OrderStatus};
use saga_proto::payment::v1::PaymentStatus;
use saga_proto::shipping::v1::ShipmentStatus;
use serde::Serialize;
use tonic::Status;

use crate::participants::Participants;
use crate::report::{Outcome, SagaReport};
use crate::retry::RetryPolicy;
use crate::saga::Saga;
use crate::verify::{read_back, violations};

/// Orders per ListOrders page.
const PAGE_SIZE: i32 = 500;
/// The longest wait between two attempts to settle a parked order.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// Every order in `status` (every status when `None`) last updated before `updated_before`,
/// oldest first, read page by page.
pub async fn list_orders<P: Participants>(
    participants: &P,
    policy: &RetryPolicy,
    status: Option<OrderStatus>,
    updated_before: Option<SystemTime>,
) -> Result<Vec<order::Order>, Status> {
    let mut orders = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = order::ListOrdersRequest {
            status: status.map_or(0, i32::from),
            updated_before: updated_before.map(prost_types::Timestamp::from),
            page_size: Some(PAGE_SIZE),
            page_token: page_token.clone(),
        };
        let (page, _) = policy
            .run(|| participants.list_orders(request.clone()))
            .await
            .map_err(|failed| failed.status)?;
        orders.extend(page.orders);
        if page.next_page_token.is_empty() {
            return Ok(orders);
        }
        page_token = page.next_page_token;
    }
}

/// When an order last changed.
fn updated(order: &order::Order) -> SystemTime {
    order
        .update_time
        .and_then(|t| SystemTime::try_from(t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// How long a parked order rests before the next attempt: the grace period, doubled for
/// every failure recorded after the saga's own.
pub fn backoff(grace: Duration, failure_count: u32) -> Duration {
    let doublings = failure_count.saturating_sub(1).min(16);
    grace
        .saturating_mul(1 << doublings)
        .min(MAX_BACKOFF.max(grace))
}

/// What `recover` did, or would do, with one order.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Action {
    /// Settled: its report says how.
    Settled { report: Box<SagaReport> },
    /// Still PENDING after this pass, and why.
    Stuck { reason: String },
    /// Parked and resting: retried after `retry_in_secs`.
    Waiting { retry_in_secs: u64 },
    /// `--dry-run`: what a real pass would do.
    WouldSettle { plan: &'static str },
}

/// One order `recover` found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Found {
    pub order_id: String,
    pub saga_id: String,
    /// Seconds since the order last changed.
    pub age_secs: u64,
    pub failure_count: u32,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub last_error: String,
    #[serde(flatten)]
    pub action: Action,
}

impl Found {
    pub fn is_settled(&self) -> bool {
        matches!(&self.action, Action::Settled { report } if report.is_ok())
    }

    pub fn to_text(&self) -> String {
        let head = format!(
            "order {} (saga {}, {}s old",
            self.order_id, self.saga_id, self.age_secs
        );
        let failures = match self.failure_count {
            0 => String::new(),
            n => format!(", {n} failures recorded"),
        };
        let error = match self.last_error.as_str() {
            "" => String::new(),
            e => format!("; last error: {e}"),
        };
        match &self.action {
            Action::Settled { report } if report.is_ok() => {
                let how = match report.outcome {
                    Outcome::Completed => "approved".to_owned(),
                    _ => format!("compensated ({:?})", report.outcome),
                };
                format!("settled {head}{failures}): {how}")
            }
            Action::Settled { report } => format!(
                "STUCK {head}{failures}): {}",
                report
                    .reason
                    .as_deref()
                    .unwrap_or("its read-back disagrees")
            ),
            Action::Stuck { reason } => format!("STUCK {head}{failures}): {reason}"),
            Action::Waiting { retry_in_secs } => {
                format!("STUCK {head}{failures}): parked, next attempt in {retry_in_secs}s{error}")
            }
            Action::WouldSettle { plan } => format!("STUCK {head}{failures}): {plan}{error}"),
        }
    }
}

/// The whole pass.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RecoverSummary {
    pub found: u64,
    pub approved: u64,
    pub compensated: u64,
    pub stuck: u64,
}

impl RecoverSummary {
    pub fn record(&mut self, found: &Found) {
        self.found += 1;
        match &found.action {
            Action::Settled { report } if report.is_ok() => match report.outcome {
                Outcome::Completed => self.approved += 1,
                _ => self.compensated += 1,
            },
            _ => self.stuck += 1,
        }
    }

    pub fn to_text(&self) -> String {
        format!(
            "recover: {} found, {} approved, {} compensated, {} stuck",
            self.found, self.approved, self.compensated, self.stuck
        )
    }
}

/// What `recover` is asked to do.
#[derive(Debug, Clone, Copy)]
pub struct Recover {
    /// Orders untouched for less than this are left to their live saga.
    pub grace: Duration,
    pub dry_run: bool,
    pub concurrency: usize,
}

impl Recover {
    /// Finds every PENDING order older than the grace period and settles it (or, dry, says
    /// what it would do), `concurrency` at a time. `done` sees each order as it ends.
    pub async fn run<P: Participants>(
        &self,
        saga: &Saga<'_, P>,
        mut done: impl FnMut(Found),
    ) -> Result<RecoverSummary, Status> {
        let now = SystemTime::now();
        let cutoff = now
            .checked_sub(self.grace)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let pending = list_orders(
            saga.participants,
            saga.retry,
            Some(OrderStatus::Pending),
            Some(cutoff),
        )
        .await?;
        let mut summary = RecoverSummary::default();
        let mut settled = futures::stream::iter(pending)
            .map(|order| self.one(saga, order, now))
            .buffer_unordered(self.concurrency.max(1));
        while let Some(found) = settled.next().await {
            summary.record(&found);
            done(found);
        }
        Ok(summary)
    }

    async fn one<P: Participants>(
        &self,
        saga: &Saga<'_, P>,
        order: order::Order,
        now: SystemTime,
    ) -> Found {
        let age = now.duration_since(updated(&order)).unwrap_or_default();
        let action = if let Some(wait) = self.resting(&order, now) {
            Action::Waiting {
                retry_in_secs: wait.as_secs().max(1),
            }
        } else if self.dry_run {
            let plan = self.plan(saga, &order).await;
            Action::WouldSettle { plan }
        } else {
            Action::Settled {
                report: Box::new(saga.settle(&order).await),
            }
        };
        Found {
            order_id: order.order_id,
            saga_id: order.idempotency_key,
            age_secs: age.as_secs(),
            failure_count: order.failure_count,
            last_error: order.last_error,
            action,
        }
    }

    /// How much longer a parked `order` rests before its next attempt, if it does.
    fn resting(&self, order: &order::Order, now: SystemTime) -> Option<Duration> {
        let age = now.duration_since(updated(order)).unwrap_or_default();
        backoff(self.grace, order.failure_count)
            .checked_sub(age)
            .filter(|wait| !wait.is_zero())
    }

    /// What settling `order` would do, from what its participants hold now.
    async fn plan<P: Participants>(
        &self,
        saga: &Saga<'_, P>,
        order: &order::Order,
    ) -> &'static str {
        let Ok(observed) = read_back(saga.participants, saga.retry, &order.order_id).await else {
            return "would settle once its participants can be read";
        };
        let paid = observed
            .payment
            .is_some_and(|p| p.status() == PaymentStatus::Completed);
        let shipped = observed
            .shipment
            .is_some_and(|s| s.status() == ShipmentStatus::Started);
        if paid && shipped && order.last_error.is_empty() {
            "would approve (payment COMPLETED, shipment STARTED)"
        } else {
            "would compensate by order id, then cancel"
        }
    }
}

/// What `audit` found over the whole store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AuditReport {
    pub orders: u64,
    pub approved: u64,
    pub cancelled: u64,
    /// PENDING within the grace period: sagas still running.
    pub pending_live: u64,
    /// PENDING past the grace period: stuck (a violation).
    pub pending_stuck: u64,
    /// Orders whose payment is COMPLETED, and those among them that are not APPROVED.
    pub charged: u64,
    pub charged_not_approved: u64,
    /// Shipments STARTED on CANCELLED orders.
    pub shipped_cancelled: u64,
    pub violations: Vec<String>,
}

impl AuditReport {
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }

    pub fn to_text(&self) -> String {
        format!(
            "audit: {} orders, {} approved, {} cancelled, {} pending (live), {} pending past the grace period; {} charged, {} charged but not approved, {} shipments started on cancelled orders; {} violations",
            self.orders,
            self.approved,
            self.cancelled,
            self.pending_live,
            self.pending_stuck,
            self.charged,
            self.charged_not_approved,
            self.shipped_cancelled,
            self.violations.len()
        )
    }
}

/// Checks every order against the saga's invariants: none PENDING past `grace`; APPROVED ⇔
/// payment COMPLETED and shipment STARTED; CANCELLED ⇒ nothing charged and nothing shipping;
/// amounts match. At most one payment and one shipment per order holds by construction: the
/// order id is their unique key in every store, and the reads below go by it.
pub async fn audit<P: Participants>(
    participants: &P,
    policy: &RetryPolicy,
    grace: Duration,
    concurrency: usize,
) -> Result<AuditReport, Status> {
    let now = SystemTime::now();
    let orders = list_orders(participants, policy, None, None).await?;
    let mut report = AuditReport::default();
    let mut read = futures::stream::iter(orders)
        .map(|order| async move {
            let observed = read_back(participants, policy, &order.order_id).await;
            (order, observed)
        })
        .buffer_unordered(concurrency.max(1));
    while let Some((order, observed)) = read.next().await {
        report.orders += 1;
        let id = &order.order_id;
        let observed = match observed {
            Ok(observed) => observed,
            Err(status) => {
                let why = format!("{:?}: {}", status.code(), status.message());
                report.violations.push(format!("{id}: unreadable: {why}"));
                continue;
            }
        };
        let (charged, shipping) = (observed.charged(), observed.shipping());
        report.charged += u64::from(charged);
        match order.status() {
            OrderStatus::Approved => report.approved += 1,
            OrderStatus::Cancelled => {
                report.cancelled += 1;
                report.shipped_cancelled += u64::from(shipping);
            }
            _ => {
                let age = now.duration_since(updated(&order)).unwrap_or_default();
                if age < grace {
                    report.pending_live += 1;
                } else {
                    report.pending_stuck += 1;
                    report.violations.push(format!(
                        "{id}: PENDING for {}s (saga {}){}",
                        age.as_secs(),
                        order.idempotency_key,
                        match order.last_error.as_str() {
                            "" => String::new(),
                            e => format!("; last error: {e}"),
                        }
                    ));
                }
                report.charged_not_approved += u64::from(charged);
                continue;
            }
        }
        if charged && order.status() != OrderStatus::Approved {
            report.charged_not_approved += 1;
        }
        for violation in violations(None, &observed) {
            report.violations.push(format!("{id}: {violation}"));
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Scenario;
    use crate::fake::{Act, FakeParticipants};
    use crate::saga::SagaPlan;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            call_timeout_ms: 50,
            initial_backoff_ms: 1,
            max_backoff_ms: 2,
        }
    }

    fn plan(index: usize, scenario: Scenario) -> SagaPlan {
        SagaPlan {
            saga_id: format!("r-{index}"),
            scenario,
            user_id: "u".into(),
            currency: "EUR".into(),
            items: vec![order::LineItem {
                sku: "s".into(),
                quantity: 1,
                unit_price_minor: 100,
            }],
            address: "a".into(),
        }
    }

    #[test]
    fn backoff_doubles_per_failure_and_is_capped() {
        let grace = Duration::from_secs(30);
        assert_eq!(backoff(grace, 0), grace);
        assert_eq!(backoff(grace, 1), grace);
        assert_eq!(backoff(grace, 2), grace * 2);
        assert_eq!(backoff(grace, 4), grace * 8);
        assert_eq!(backoff(grace, 40), MAX_BACKOFF);
        assert_eq!(backoff(Duration::ZERO, 9), Duration::ZERO);
    }

    /// Sagas abandoned at every point, a parked one, and finished ones: recover settles every
    /// PENDING one, twice changes nothing, and audit is clean after.
    #[tokio::test(start_paused = true)]
    async fn recover_settles_every_stuck_saga_once_and_audit_agrees() {
        let fake = FakeParticipants::default();
        let retry = policy();
        let saga = Saga {
            participants: &fake,
            retry: &retry,
            compensation_retry: &retry,
            verify: true,
        };
        let killed = || vec![Act::Fail(Status::invalid_argument("killed")); 3];
        let steps = ["ProcessPayment", "StartShipping", "ApproveOrder"];
        for (index, stop) in steps.iter().enumerate() {
            fake.script(stop, killed());
            fake.script("FailOrder", killed());
            fake.script("CancelOrder", killed());
            saga.run(&plan(index, Scenario::Success)).await;
            fake.clear_script();
        }
        fake.script(
            "RefundPayment",
            vec![Act::Fail(Status::unavailable("down")); 3],
        );
        let parked = saga.run(&plan(3, Scenario::ShippingFailure)).await;
        assert_eq!(parked.outcome, Outcome::CompensationFailed);
        saga.run(&plan(4, Scenario::Success)).await;
        saga.run(&plan(5, Scenario::PaymentFailure)).await;

        let grace = Duration::ZERO;
        let before = audit(&fake, &retry, grace, 4).await.unwrap();
        assert_eq!((before.orders, before.pending_stuck), (6, 4), "{before:?}");
        assert!(!before.is_ok());

        let dry = Recover {
            grace,
            dry_run: true,
            concurrency: 4,
        };
        let mut listed = Vec::new();
        let summary = dry.run(&saga, |found| listed.push(found)).await.unwrap();
        assert_eq!((summary.found, summary.stuck), (4, 4), "{listed:?}");
        let parked = listed.iter().find(|f| f.saga_id == "r-3").unwrap();
        assert!(parked.last_error.contains("RefundPayment"), "{parked:?}");
        assert!(
            parked.to_text().contains("would compensate"),
            "{}",
            parked.to_text()
        );
        assert_eq!(audit(&fake, &retry, grace, 4).await.unwrap(), before);

        let real = Recover {
            dry_run: false,
            ..dry
        };
        let summary = real.run(&saga, |_| {}).await.unwrap();
        assert_eq!(summary.found, 4);
        // Abandoned after StartShipping: every step had succeeded, so it is approved.
        assert_eq!(
            (summary.approved, summary.compensated),
            (1, 3),
            "{summary:?}"
        );
        let again = real.run(&saga, |_| {}).await.unwrap();
        assert_eq!(again, RecoverSummary::default());

        let after = audit(&fake, &retry, grace, 4).await.unwrap();
        assert!(after.is_ok(), "{after:?}");
        assert_eq!((after.approved, after.cancelled), (2, 4), "{after:?}");
        assert_eq!(after.charged_not_approved, 0);
    }

    #[test]
    fn a_parked_order_rests_longer_after_every_failure() {
        let pass = Recover {
            grace: Duration::from_secs(30),
            dry_run: false,
            concurrency: 1,
        };
        let now = SystemTime::now();
        let order = |failures: u32, age_secs: u64| order::Order {
            failure_count: failures,
            update_time: Some((now - Duration::from_secs(age_secs)).into()),
            ..order::Order::default()
        };
        // Listed only past the grace period: an unparked order is due at once.
        assert_eq!(pass.resting(&order(0, 31), now), None);
        assert_eq!(pass.resting(&order(1, 31), now), None);
        // Parked once (the saga's failure and one more): twice the grace period.
        let wait = pass.resting(&order(2, 31), now).unwrap();
        assert_eq!(wait.as_secs(), 29);
        assert_eq!(pass.resting(&order(2, 61), now), None);
        assert_eq!(
            pass.resting(&order(4, 200), now).map(|w| w.as_secs()),
            Some(40)
        );
    }
}
