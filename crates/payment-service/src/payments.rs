//! Payments: where a charge is taken or declined, refunded, or voided before it arrives.
//!
//! The order id is the idempotency key: at most one payment per order, so a repeated
//! ProcessPayment returns the first payment and never charges twice.
use saga_common::telemetry::StatusCounter;
use saga_common::time::now_micros;
use saga_common::validate::{self, ValidationError};
use saga_common::{Classify, ErrorKind, IdKind};
use saga_store::{Record, Repository, Store, StoreError, Target, find};
use serde::{Deserialize, Serialize};

/// Payments by what happened to them (`status`: completed, declined, refunded, voided), counted
/// where the change is stored, never on an idempotent replay. Made on first use, after the
/// binary installed its meter provider.
static EVENTS: std::sync::LazyLock<StatusCounter> = std::sync::LazyLock::new(|| {
    StatusCounter::new(
        "saga.payments",
        "Payments completed, declined, refunded, or voided before any charge",
    )
});

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaymentStatus {
    Completed,
    Declined,
    Refunded,
    /// Compensated before any charge: the order's payment slot is closed.
    Voided,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    pub id: String,
    pub order_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub status: PaymentStatus,
    pub decline_reason: Option<String>,
    /// Microseconds since the epoch; 0 on payments written before times were kept.
    #[serde(default)]
    pub created_at: i64,
    #[serde(default)]
    pub updated_at: i64,
}

impl Record for Payment {
    const TABLE: &'static str = "payments";
    fn id(&self) -> &str {
        &self.id
    }
    fn key(&self) -> &str {
        &self.order_id
    }
    fn status(&self) -> &'static str {
        match self.status {
            PaymentStatus::Completed => "completed",
            PaymentStatus::Declined => "declined",
            PaymentStatus::Refunded => "refunded",
            PaymentStatus::Voided => "voided",
        }
    }
    fn updated_at(&self) -> i64 {
        self.updated_at
    }
}

/// A charge request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    pub order_id: String,
    pub amount_minor: i64,
    pub currency: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("no payment found for {0}")]
    NotFound(String),
    #[error(
        "order {order_id} was already charged {amount_minor} {currency}; a payment's amount cannot change"
    )]
    DifferentCharge {
        order_id: String,
        amount_minor: i64,
        currency: String,
    },
    #[error("payment {0} was declined; there is nothing to refund")]
    NothingToRefund(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Classify for PaymentError {
    fn kind(&self) -> ErrorKind {
        match self {
            PaymentError::Invalid(_) => ErrorKind::InvalidArgument,
            PaymentError::NotFound(_) => ErrorKind::NotFound,
            PaymentError::DifferentCharge { .. } | PaymentError::NothingToRefund(_) => {
                ErrorKind::FailedPrecondition
            }
            PaymentError::Store(err) => err.kind(),
        }
    }
}

/// Checks a payment target from a request.
pub fn check_target(target: &Target) -> Result<(), ValidationError> {
    match target {
        Target::Id(id) => IdKind::Payment.check("payment_id", id),
        Target::Key(order_id) => IdKind::Order.check("order_id", order_id),
    }
}

/// The payment ledger over a repository.
#[derive(Debug, Default)]
pub struct Payments<R = Store<Payment>> {
    repo: R,
}

impl Payments {
    /// A ledger kept in memory.
    pub fn in_memory() -> Self {
        Self::default()
    }
}

impl<R: Repository<Payment>> Payments<R> {
    pub fn new(repo: R) -> Self {
        Self { repo }
    }

    /// The repository behind the domain, for read-back checks.
    pub fn repository(&self) -> &R {
        &self.repo
    }

    /// Charges an order, or declines it when `decline` gives a reason. A repeat for the same
    /// order returns the first payment whatever `decline` says now.
    pub async fn process(
        &self,
        charge: Charge,
        decline: Option<String>,
    ) -> Result<Payment, PaymentError> {
        IdKind::Order.check("order_id", &charge.order_id)?;
        validate::positive_amount("amount_minor", charge.amount_minor)?;
        validate::currency("currency", &charge.currency)?;
        let status = if decline.is_some() {
            PaymentStatus::Declined
        } else {
            PaymentStatus::Completed
        };
        let candidate = Payment {
            id: IdKind::Payment.generate(),
            order_id: charge.order_id,
            amount_minor: charge.amount_minor,
            currency: charge.currency,
            status,
            decline_reason: decline,
            created_at: now_micros(),
            updated_at: now_micros(),
        };
        let (stored, inserted) = self.repo.insert_or_get(candidate.clone()).await?;
        // A voided slot never held a charge, so any amount replays to it.
        let same_charge = stored.status == PaymentStatus::Voided
            || (stored.amount_minor == candidate.amount_minor
                && stored.currency == candidate.currency);
        if !same_charge {
            return Err(PaymentError::DifferentCharge {
                order_id: stored.order_id,
                amount_minor: stored.amount_minor,
                currency: stored.currency,
            });
        }
        if inserted {
            match &stored.decline_reason {
                Some(reason) => {
                    tracing::info!(payment_id = %stored.id, %reason, "payment declined");
                    EVENTS.add("declined");
                }
                None => {
                    tracing::info!(payment_id = %stored.id, amount_minor = stored.amount_minor, "payment completed");
                    EVENTS.add("completed");
                }
            }
        }
        Ok(stored)
    }

    /// Refunds a payment. By id: COMPLETED → REFUNDED, REFUNDED and VOIDED stay, DECLINED is
    /// refused. By order: whatever the order's payment is, nothing stays charged afterwards;
    /// with no payment yet, the order's slot is VOIDED so a late charge is never taken.
    pub async fn refund(&self, target: &Target) -> Result<Payment, PaymentError> {
        check_target(target)?;
        let by_order = matches!(target, Target::Key(_));
        let existing = match (find(&self.repo, target).await?, target) {
            (Some(payment), _) => payment,
            (None, Target::Id(id)) => return Err(PaymentError::NotFound(format!("payment {id}"))),
            (None, Target::Key(order_id)) => {
                let tombstone = Payment {
                    id: IdKind::Payment.generate(),
                    order_id: order_id.clone(),
                    amount_minor: 0,
                    currency: String::new(),
                    status: PaymentStatus::Voided,
                    decline_reason: None,
                    created_at: now_micros(),
                    updated_at: now_micros(),
                };
                let (stored, inserted) = self.repo.insert_or_get(tombstone).await?;
                if inserted {
                    tracing::info!(payment_id = %stored.id, %order_id, "payment slot voided before any charge");
                    EVENTS.add("voided");
                    return Ok(stored);
                }
                stored
            }
        };
        // Whether this call refunded: a concurrent refund of the same payment finds it REFUNDED.
        let mut changed = false;
        let transition = |payment: &Payment| match payment.status {
            PaymentStatus::Completed => {
                changed = true;
                Ok(Some(Payment {
                    status: PaymentStatus::Refunded,
                    updated_at: now_micros().max(payment.updated_at + 1),
                    ..payment.clone()
                }))
            }
            PaymentStatus::Refunded | PaymentStatus::Voided => {
                changed = false;
                Ok(None)
            }
            PaymentStatus::Declined if by_order => {
                changed = false;
                Ok(None)
            }
            PaymentStatus::Declined => Err(PaymentError::NothingToRefund(payment.id.clone())),
        };
        let refunded = self
            .repo
            .update(&existing.id, transition)
            .await?
            .ok_or_else(|| PaymentError::NotFound(format!("payment {}", existing.id)))?;
        if changed {
            tracing::info!(payment_id = %refunded.id, amount_minor = refunded.amount_minor, "payment refunded");
            EVENTS.add("refunded");
        }
        Ok(refunded)
    }

    pub async fn get(&self, target: &Target) -> Result<Payment, PaymentError> {
        check_target(target)?;
        find(&self.repo, target).await?.ok_or_else(|| {
            PaymentError::NotFound(match target {
                Target::Id(id) => format!("payment {id}"),
                Target::Key(order_id) => format!("order {order_id}"),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge(order_id: &str) -> Charge {
        Charge {
            order_id: order_id.into(),
            amount_minor: 2500,
            currency: "EUR".into(),
        }
    }

    #[tokio::test]
    async fn one_payment_per_order() {
        let payments = Payments::in_memory();
        let order = IdKind::Order.generate();
        let first = payments.process(charge(&order), None).await.unwrap();
        assert_eq!(first.status, PaymentStatus::Completed);
        // A repeat returns the first payment, even if this call would have been declined.
        assert_eq!(
            payments
                .process(charge(&order), Some("no".into()))
                .await
                .unwrap(),
            first
        );
        let mut other = charge(&order);
        other.amount_minor = 1;
        assert_eq!(
            payments.process(other, None).await.unwrap_err().kind(),
            ErrorKind::FailedPrecondition
        );
    }

    #[tokio::test]
    async fn decline_and_refund_rules() {
        let payments = Payments::in_memory();
        let order = IdKind::Order.generate();
        let declined = payments
            .process(charge(&order), Some("card expired".into()))
            .await
            .unwrap();
        assert_eq!(declined.status, PaymentStatus::Declined);
        let by_id = Target::Id(declined.id.clone());
        assert_eq!(
            payments.refund(&by_id).await.unwrap_err().kind(),
            ErrorKind::FailedPrecondition
        );
        // By order, compensation of a declined charge is a no-op.
        assert_eq!(
            payments.refund(&Target::Key(order)).await.unwrap().status,
            PaymentStatus::Declined
        );

        let order = IdKind::Order.generate();
        let paid = payments.process(charge(&order), None).await.unwrap();
        let target = Target::Id(paid.id.clone());
        assert_eq!(
            payments.refund(&target).await.unwrap().status,
            PaymentStatus::Refunded
        );
        assert_eq!(
            payments.refund(&target).await.unwrap().status,
            PaymentStatus::Refunded
        );
        assert_eq!(
            payments.get(&Target::Key(order)).await.unwrap().status,
            PaymentStatus::Refunded
        );
    }

    #[tokio::test]
    async fn refund_before_charge_voids_the_slot() {
        let payments = Payments::in_memory();
        let order = IdKind::Order.generate();
        let voided = payments.refund(&Target::Key(order.clone())).await.unwrap();
        assert_eq!(voided.status, PaymentStatus::Voided);
        // The late charge is never taken.
        let late = payments.process(charge(&order), None).await.unwrap();
        assert_eq!(late.status, PaymentStatus::Voided);
        assert_eq!(late.id, voided.id);
    }

    #[tokio::test]
    async fn bad_input() {
        let payments = Payments::in_memory();
        let order = IdKind::Order.generate();
        for (charge, field) in [
            (
                Charge {
                    amount_minor: 0,
                    ..charge(&order)
                },
                "amount_minor",
            ),
            (
                Charge {
                    amount_minor: -3,
                    ..charge(&order)
                },
                "amount_minor",
            ),
            (
                Charge {
                    currency: "usd".into(),
                    ..charge(&order)
                },
                "currency",
            ),
            (
                Charge {
                    order_id: "42".into(),
                    ..charge(&order)
                },
                "order_id",
            ),
        ] {
            let err = payments.process(charge, None).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument);
            assert!(err.to_string().contains(field), "{err}");
        }
        let missing = Target::Id(IdKind::Payment.generate());
        assert_eq!(
            payments.get(&missing).await.unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            payments.refund(&missing).await.unwrap_err().kind(),
            ErrorKind::NotFound
        );
        let wrong = Target::Id(order);
        assert_eq!(
            payments.get(&wrong).await.unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
    }
}
