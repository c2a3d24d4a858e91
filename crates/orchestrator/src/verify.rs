//! After a saga: read every participant's state back and check it agrees with the outcome.
use saga_proto::order::v1::{self as order, OrderStatus};
use saga_proto::payment::v1::{self as payment, PaymentStatus};
use saga_proto::shipping::v1::{self as shipping, ShipmentStatus};
use tonic::{Code, Status};

use crate::participants::{By, Participants};
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
    let by = By::Order(order_id.to_owned());
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

/// Every way `observed` disagrees with `outcome` or with the saga's invariants.
pub fn violations(outcome: Outcome, observed: &Observed) -> Vec<String> {
    let mut found = Vec::new();
    let Some(order) = &observed.order else {
        return vec!["the order does not exist".into()];
    };
    let charged = observed
        .payment
        .as_ref()
        .is_some_and(|p| p.status() == PaymentStatus::Completed);
    let shipping = observed
        .shipment
        .as_ref()
        .is_some_and(|s| s.status() == ShipmentStatus::Started);
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
    if (outcome == Outcome::Completed) != approved {
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
        Ok(observed) => violations(report.outcome, &observed),
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
                violations(outcome, &observed),
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
                !violations(outcome, &observed).is_empty(),
                "{outcome:?} {observed:?}"
            );
        }
        let mut wrong_amount = observed(O::Approved, Some(P::Completed), Some(S::Started));
        if let Some(p) = wrong_amount.payment.as_mut() {
            p.amount_minor = 99;
        }
        assert_eq!(violations(Outcome::Completed, &wrong_amount).len(), 1);
        assert_eq!(
            violations(Outcome::Completed, &Observed::default()).len(),
            1
        );
    }
}
