//! After a saga: read every participant's state back and check it agrees with the outcome.
use saga_proto::order::v1::{self as order, OrderStatus};
use saga_proto::payment::v1::{self as payment, PaymentStatus};
use saga_proto::shipping::v1::{self as shipping, ShipmentStatus};
use tonic::{Code, Status};

use crate::participants::{Participants, Target};
use crate::report::{Consistency, Outcome, SagaReport};
use crate::retry::RetryPolicy;

/// What the services say about one order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    pub order: Option<order::Order>,
    pub payment: Option<payment::Payment>,
    pub shipment: Option<shipping::Shipment>,
}

/// Reads an order, its payment and its shipment; NOT_FOUND is an absence, not an error.
pub async fn read_back<P: Participants>(
    participants: &P,
    policy: &RetryPolicy,
    order_id: &str,
) -> Result<Observed, Status> {
    let by = Target::OrderId(order_id.to_owned());
    let order = optional(policy.run(|| participants.get_order(order_id)).await)?;
    let payment = optional(policy.run(|| participants.get_payment(&by)).await)?;
    let shipment = optional(policy.run(|| participants.get_shipment(&by)).await)?;
    Ok(Observed {
        order,
        payment,
        shipment,
    })
}

fn optional<T>(result: Result<(T, u32), crate::retry::Failed>) -> Result<Option<T>, Status> {
    match result {
        Ok((value, _)) => Ok(Some(value)),
        Err(failed) if failed.status.code() == Code::NotFound => Ok(None),
        Err(failed) => Err(failed.status),
    }
}

impl Observed {
    /// The payment took money that is still taken.
    pub fn charged(&self) -> bool {
        let payment = self.payment.as_ref();
        payment.is_some_and(|p| p.status() == PaymentStatus::Completed)
    }

    /// The shipment is on its way.
    pub fn shipping(&self) -> bool {
        let shipment = self.shipment.as_ref();
        shipment.is_some_and(|s| s.status() == ShipmentStatus::Started)
    }
}

/// Every way `observed` disagrees with the saga's invariants or, when given, with `outcome`.
pub fn violations(outcome: Option<Outcome>, observed: &Observed) -> Vec<String> {
    let mut found = Vec::new();
    let Some(order) = &observed.order else {
        return vec!["the order does not exist".into()];
    };
    let (charged, shipping) = (observed.charged(), observed.shipping());
    let payment_state = observed
        .payment
        .as_ref()
        .map_or("none", |p| p.status().as_str_name());
    let shipment_state = observed
        .shipment
        .as_ref()
        .map_or("none", |s| s.status().as_str_name());
    match order.status() {
        OrderStatus::Approved => {
            if !charged {
                found.push(format!("order APPROVED but payment is {payment_state}"));
            }
            if !shipping {
                found.push(format!("order APPROVED but shipment is {shipment_state}"));
            }
        }
        OrderStatus::Cancelled => {
            if charged {
                found.push(
                    "order CANCELLED but its payment is still COMPLETED (not refunded)".into(),
                );
            }
            if shipping {
                found.push("order CANCELLED but its shipment is still STARTED".into());
            }
        }
        other => found.push(format!(
            "order is {} after the saga ended",
            other.as_str_name()
        )),
    }
    if let Some(payment) = &observed.payment {
        let took_money = matches!(
            payment.status(),
            PaymentStatus::Completed | PaymentStatus::Refunded
        );
        if took_money
            && (payment.amount_minor, &payment.currency) != (order.total_minor, &order.currency)
        {
            found.push(format!(
                "payment of {} {} does not match order total {} {}",
                payment.amount_minor, payment.currency, order.total_minor, order.currency
            ));
        }
    }
    let approved = order.status() == OrderStatus::Approved;
    if let Some(outcome) = outcome
        && (outcome == Outcome::Completed) != approved
    {
        found.push(format!(
            "outcome {outcome:?} but order is {}",
            order.status().as_str_name()
        ));
    }
    found
}

/// Reads the saga's participants back and records the verdict in `report`.
pub async fn check<P: Participants>(
    participants: &P,
    policy: &RetryPolicy,
    report: &mut SagaReport,
) {
    let Some(order_id) = report.order_id.clone() else {
        return;
    };
    let violations = match read_back(participants, policy, &order_id).await {
        Ok(observed) => violations(Some(report.outcome), &observed),
        Err(status) => vec![format!(
            "could not read the saga's state back: {:?}: {}",
            status.code(),
            status.message()
        )],
    };
    report.consistency = Some(Consistency {
        consistent: violations.is_empty(),
        violations,
    });
}

const NO_ORDER: &str = "no order";

/// What `saga-orchestrator verify` found for a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RunVerdict {
    pub run_id: String,
    pub sagas: u64,
    pub completed: u64,
    pub compensated: u64,
    /// Sagas with no order: never started, or their first step's outcome stayed unknown.
    pub missing: u64,
    /// Orders still PENDING: a saga that did not finish.
    pub pending: u64,
    /// Sagas whose participants break an invariant, with the reasons.
    pub violations: Vec<String>,
    /// Charges still COMPLETED on a cancelled order.
    pub unrefunded_charges: u64,
    /// Acknowledged ids checked, and those no longer there.
    pub acknowledged: u64,
    pub lost: Vec<String>,
}

impl RunVerdict {
    pub fn is_ok(&self) -> bool {
        self.missing == 0 && self.pending == 0 && self.violations.is_empty() && self.lost.is_empty()
    }
}

/// A write the orchestrator saw acknowledged: which kind of resource, and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acknowledged {
    Order(String),
    Payment(String),
    Shipment(String),
}

/// Reads sagas `<run_id>-0 .. <run_id>-<count-1>` back from the services, `concurrency` at a
/// time, and checks every invariant: each saga ended (its order is APPROVED or CANCELLED); an
/// approved order is charged and shipping; a cancelled one has no charge left and no live
/// shipment. At most one payment and one shipment per order holds by construction (the order id
/// is their unique key) and is what makes the reads below well defined.
pub async fn verify_run<P: Participants>(
    participants: &P,
    policy: &RetryPolicy,
    run_id: &str,
    count: u64,
    concurrency: usize,
    acknowledged: &[Acknowledged],
) -> RunVerdict {
    use futures::StreamExt as _;
    let mut verdict = RunVerdict {
        run_id: run_id.to_owned(),
        sagas: count,
        ..RunVerdict::default()
    };
    let results: Vec<(String, Result<Observed, String>)> = futures::stream::iter(0..count)
        .map(|index| async move {
            let saga_id = format!("{run_id}-{index}");
            let order = match optional(policy.run(|| participants.find_order(&saga_id)).await) {
                Ok(Some(order)) => order,
                Ok(None) => return (saga_id, Err(NO_ORDER.to_owned())),
                Err(status) => return (saga_id, Err(format!("unreadable: {}", status.message()))),
            };
            let observed = read_back(participants, policy, &order.order_id)
                .await
                .map_err(|status| format!("unreadable: {}", status.message()));
            (saga_id, observed)
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    for (saga_id, result) in results {
        match result {
            Err(why) if why == NO_ORDER => verdict.missing += 1,
            Err(why) => verdict.violations.push(format!("{saga_id}: {why}")),
            Ok(observed) => {
                let status = observed.order.as_ref().map(order::Order::status);
                match status {
                    Some(OrderStatus::Approved) => verdict.completed += 1,
                    Some(OrderStatus::Cancelled) => verdict.compensated += 1,
                    _ => verdict.pending += 1,
                }
                if status == Some(OrderStatus::Cancelled)
                    && observed
                        .payment
                        .as_ref()
                        .is_some_and(|p| p.status() == PaymentStatus::Completed)
                {
                    verdict.unrefunded_charges += 1;
                }
                for violation in violations(None, &observed) {
                    verdict.violations.push(format!("{saga_id}: {violation}"));
                }
            }
        }
    }
    for ack in acknowledged {
        verdict.acknowledged += 1;
        let found = match ack {
            Acknowledged::Order(id) => policy.run(|| participants.get_order(id)).await.map(drop),
            Acknowledged::Payment(id) => {
                let by = Target::Id(id.clone());
                policy.run(|| participants.get_payment(&by)).await.map(drop)
            }
            Acknowledged::Shipment(id) => {
                let by = Target::Id(id.clone());
                policy
                    .run(|| participants.get_shipment(&by))
                    .await
                    .map(drop)
            }
        };
        if let Err(failed) = found {
            verdict.lost.push(format!(
                "{ack:?}: {:?} {}",
                failed.status.code(),
                failed.status.message()
            ));
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(o: OrderStatus, p: Option<PaymentStatus>, s: Option<ShipmentStatus>) -> Observed {
        Observed {
            order: Some(order::Order {
                status: o.into(),
                total_minor: 100,
                currency: "EUR".into(),
                ..Default::default()
            }),
            payment: p.map(|p| payment::Payment {
                status: p.into(),
                amount_minor: 100,
                currency: "EUR".into(),
                ..Default::default()
            }),
            shipment: s.map(|s| shipping::Shipment {
                status: s.into(),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn consistent_ends() {
        use {OrderStatus as O, PaymentStatus as P, ShipmentStatus as S};
        let ok = [
            (
                Outcome::Completed,
                observed(O::Approved, Some(P::Completed), Some(S::Started)),
            ),
            (
                Outcome::PaymentFailed,
                observed(O::Cancelled, Some(P::Declined), None),
            ),
            (
                Outcome::PaymentFailed,
                observed(O::Cancelled, Some(P::Voided), None),
            ),
            (
                Outcome::ShippingFailed,
                observed(O::Cancelled, Some(P::Refunded), Some(S::Failed)),
            ),
            (
                Outcome::ShippingFailed,
                observed(O::Cancelled, Some(P::Refunded), Some(S::Cancelled)),
            ),
        ];
        for (outcome, observed) in ok {
            assert_eq!(
                violations(Some(outcome), &observed),
                Vec::<String>::new(),
                "{outcome:?}"
            );
        }
    }

    #[test]
    fn inconsistent_ends() {
        use {OrderStatus as O, PaymentStatus as P, ShipmentStatus as S};
        let bad = [
            (
                Outcome::Completed,
                observed(O::Approved, Some(P::Refunded), Some(S::Started)),
            ),
            (
                Outcome::PaymentFailed,
                observed(O::Cancelled, Some(P::Completed), None),
            ),
            (
                Outcome::ShippingFailed,
                observed(O::Cancelled, Some(P::Refunded), Some(S::Started)),
            ),
            (
                Outcome::ShippingFailed,
                observed(O::Pending, Some(P::Refunded), Some(S::Failed)),
            ),
            (Outcome::Completed, observed(O::Cancelled, None, None)),
        ];
        for (outcome, observed) in bad {
            assert!(
                !violations(Some(outcome), &observed).is_empty(),
                "{outcome:?} {observed:?}"
            );
        }
        let mut wrong_amount = observed(O::Approved, Some(P::Completed), Some(S::Started));
        if let Some(p) = wrong_amount.payment.as_mut() {
            p.amount_minor = 99;
        }
        assert_eq!(violations(Some(Outcome::Completed), &wrong_amount).len(), 1);
        assert_eq!(
            violations(Some(Outcome::Completed), &Observed::default()).len(),
            1
        );
    }
}
