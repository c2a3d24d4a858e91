//! Arbitrary bytes as the request messages of the three services.
//!
//! The first byte picks the RPC (its low 7 bits modulo 10) and whether the call carries
//! `x-inject-failure` (its high bit); the rest is decoded with prost as that RPC's request, as
//! tonic would. Decoding must never panic. What decodes goes through the domain's own
//! validation (`NewOrder::validate`, `IdKind::check`, `validate::{text, currency,
//! positive_amount}`, `check_target`) and through the real gRPC handler (`OrderApi`,
//! `PaymentApi`, `ShippingApi`) over a fresh in-memory store, called directly without a network.
//!
//! Beyond "no panic", each input checks that:
//! - the handler answers OK, INVALID_ARGUMENT, NOT_FOUND or FAILED_PRECONDITION, never an
//!   internal error, and an error message stays short whatever the input's size;
//! - the handler agrees with the validation functions: refused exactly when they refuse;
//! - a mutating call repeated with the same request returns the same answer (idempotency), and
//!   what it stored reads back.
//!
//! The in-memory store and zero faults never wait, so every handler future completes on its
//! first poll; `now` asserts that.
#![no_main]

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use order_service::OrderApi;
use order_service::orders::{LineItem, MAX_ID_LEN, NewOrder, Orders};
use payment_service::PaymentApi;
use payment_service::payments::{self, Payments};
use prost::Message;
use saga_common::IdKind;
use saga_common::faults::{BusinessFaults, INJECT_FAILURE_HEADER};
use saga_store::Target;
use saga_common::validate::{self, ValidationError};
use saga_proto::order::v1::{self as order, order_service_server::OrderService};
use saga_proto::payment::v1::{self as payment, payment_service_server::PaymentService};
use saga_proto::shipping::v1::{self as shipping, shipping_service_server::ShippingService};
use shipping_service::ShippingApi;
use shipping_service::shipments::{self, MAX_ADDRESS_LEN, Shipments};
use tonic::{Code, Request, Status};

/// Longest error message a client may get back, whatever it sent.
const MAX_MESSAGE: usize = 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let inject = selector & 0x80 != 0;
    match (selector & 0x7f) % 10 {
        0 => decoded(bytes, |r| create_order(r)),
        1 => decoded(bytes, |r| cancel_order(r)),
        2 => decoded(bytes, |r| approve_order(r)),
        3 => decoded(bytes, |r| get_order(r)),
        4 => decoded(bytes, |r| process_payment(r, inject)),
        5 => decoded(bytes, |r| refund_payment(r)),
        6 => decoded(bytes, |r| get_payment(r)),
        7 => decoded(bytes, |r| start_shipping(r, inject)),
        8 => decoded(bytes, |r| cancel_shipping(r)),
        _ => decoded(bytes, |r| get_shipment(r)),
    }
});

fn decoded<M: Message + Default>(bytes: &[u8], check: impl FnOnce(M)) {
    if let Ok(message) = M::decode(bytes) {
        check(message);
    }
}

// ---- orders ---------------------------------------------------------------------------------

fn order_api() -> OrderApi {
    OrderApi::new(Arc::new(Orders::in_memory()))
}

fn create_order(req: order::CreateOrderRequest) {
    let new = NewOrder {
        idempotency_key: req.idempotency_key.clone(),
        user_id: req.user_id.clone(),
        currency: req.currency.clone(),
        items: req.items.iter().cloned().map(LineItem::from).collect(),
    };
    let total = new.validate();
    bounded(&total);
    let api = order_api();
    let first = reply(now(api.create_order(Request::new(req.clone()))));
    agrees("CreateOrder", &total, &first);
    let Ok(created) = &first else { return };
    let order = created
        .order
        .clone()
        .expect("CreateOrder answers the order");
    assert_eq!(Ok(order.total_minor), total);
    assert_eq!(order.status(), order::OrderStatus::Pending);
    assert!(IdKind::Order.check("order_id", &order.order_id).is_ok());
    let again = reply(now(api.create_order(Request::new(req))));
    assert_eq!(
        again, first,
        "CreateOrder repeated with the same key and body"
    );

    use order::get_order_request::Target as T;
    for target in [
        T::OrderId(order.order_id.clone()),
        T::IdempotencyKey(order.idempotency_key.clone()),
    ] {
        let get = order::GetOrderRequest {
            target: Some(target),
        };
        let read = reply(now(api.get_order(Request::new(get))));
        assert_eq!(read.map(|r| r.order), Ok(Some(order.clone())));
    }
}

fn cancel_order(req: order::CancelOrderRequest) {
    let check = IdKind::Order.check("order_id", &req.order_id);
    bounded(&check);
    let api = order_api();
    // On an empty store a well-formed id is unknown.
    let answer = reply(now(api.cancel_order(Request::new(req.clone()))));
    expect_missing("CancelOrder", &check, &answer);

    // Any reason is kept, cut short, on an order that exists.
    let created = now(api.create_order(Request::new(order::CreateOrderRequest {
        idempotency_key: "k".into(),
        user_id: "u".into(),
        currency: "EUR".into(),
        items: vec![order::LineItem {
            sku: "s".into(),
            quantity: 1,
            unit_price_minor: 1,
        }],
    })))
    .expect("a valid order is created")
    .into_inner()
    .order
    .expect("CreateOrder answers the order");
    let cancel = order::CancelOrderRequest {
        order_id: created.order_id,
        reason: req.reason,
    };
    let cancelled = reply(now(api.cancel_order(Request::new(cancel))))
        .expect("a pending order can be cancelled")
        .order
        .expect("CancelOrder answers the order");
    assert_eq!(cancelled.status(), order::OrderStatus::Cancelled);
    assert!(cancelled.cancel_reason.len() <= MAX_MESSAGE);
}

fn approve_order(req: order::ApproveOrderRequest) {
    let check = IdKind::Order.check("order_id", &req.order_id);
    bounded(&check);
    let answer = reply(now(order_api().approve_order(Request::new(req))));
    expect_missing("ApproveOrder", &check, &answer);
}

fn get_order(req: order::GetOrderRequest) {
    use order::get_order_request::Target as T;
    let check = match &req.target {
        None => Err(ValidationError::new("target", "is required")),
        Some(T::OrderId(id)) => IdKind::Order.check("order_id", id),
        Some(T::IdempotencyKey(key)) => validate::text("idempotency_key", key, MAX_ID_LEN),
    };
    bounded(&check);
    let answer = reply(now(order_api().get_order(Request::new(req))));
    expect_missing("GetOrder", &check, &answer);
}

// ---- payments -------------------------------------------------------------------------------

fn payment_api() -> PaymentApi {
    let faults = BusinessFaults {
        allow_injection: true,
        ..BusinessFaults::default()
    };
    PaymentApi::new(Arc::new(Payments::in_memory()), faults)
}

fn process_payment(req: payment::ProcessPaymentRequest, inject: bool) {
    let check = IdKind::Order
        .check("order_id", &req.order_id)
        .and_then(|()| validate::positive_amount("amount_minor", req.amount_minor))
        .and_then(|()| validate::currency("currency", &req.currency));
    bounded(&check);
    let api = payment_api();
    let first = reply(now(api.process_payment(injected(req.clone(), inject))));
    agrees("ProcessPayment", &check, &first);
    let Ok(processed) = &first else { return };
    let paid = processed
        .payment
        .clone()
        .expect("ProcessPayment answers the payment");
    assert_eq!(paid.amount_minor, req.amount_minor);
    let declined = paid.status() == payment::PaymentStatus::Declined;
    assert_eq!(declined, inject);
    // A repeat returns the first payment, whatever it asks for now.
    let again = reply(now(api.process_payment(injected(req.clone(), !inject))));
    assert_eq!(again, first, "ProcessPayment repeated for the same order");

    // Compensating by order leaves nothing charged, and reads back.
    use payment::refund_payment_request::Target as T;
    let refund = payment::RefundPaymentRequest {
        target: Some(T::OrderId(req.order_id.clone())),
    };
    let refunded = reply(now(api.refund_payment(Request::new(refund))))
        .expect("refund by order")
        .payment
        .expect("RefundPayment answers the payment");
    let expected = if declined {
        payment::PaymentStatus::Declined
    } else {
        payment::PaymentStatus::Refunded
    };
    assert_eq!(refunded.status(), expected);
    let get = payment::GetPaymentRequest {
        target: Some(payment::get_payment_request::Target::PaymentId(
            paid.payment_id,
        )),
    };
    let read = reply(now(api.get_payment(Request::new(get))));
    assert_eq!(read.map(|r| r.payment), Ok(Some(refunded)));
}

fn refund_payment(req: payment::RefundPaymentRequest) {
    use payment::refund_payment_request::Target as T;
    let target = req.target.clone().map(|t| match t {
        T::PaymentId(id) => Target::Id(id),
        T::OrderId(id) => Target::Key(id),
    });
    let check = target_check(&target, payments::check_target);
    bounded(&check);
    let answer = reply(now(payment_api().refund_payment(Request::new(req))));
    match (&check, &target) {
        // By order on an empty ledger: the order's slot is voided.
        (Ok(()), Some(Target::Key(_))) => {
            let voided = answer.expect("refund by order").payment.expect("a payment");
            assert_eq!(voided.status(), payment::PaymentStatus::Voided);
        }
        _ => expect_missing("RefundPayment", &check, &answer),
    }
}

fn get_payment(req: payment::GetPaymentRequest) {
    use payment::get_payment_request::Target as T;
    let target = req.target.clone().map(|t| match t {
        T::PaymentId(id) => Target::Id(id),
        T::OrderId(id) => Target::Key(id),
    });
    let check = target_check(&target, payments::check_target);
    bounded(&check);
    let answer = reply(now(payment_api().get_payment(Request::new(req))));
    expect_missing("GetPayment", &check, &answer);
}

// ---- shipments ------------------------------------------------------------------------------

fn shipping_api() -> ShippingApi {
    let faults = BusinessFaults {
        allow_injection: true,
        ..BusinessFaults::default()
    };
    ShippingApi::new(Arc::new(Shipments::in_memory()), faults)
}

fn start_shipping(req: shipping::StartShippingRequest, inject: bool) {
    let check = IdKind::Order
        .check("order_id", &req.order_id)
        .and_then(|()| validate::text("address", &req.address, MAX_ADDRESS_LEN));
    bounded(&check);
    let api = shipping_api();
    let first = reply(now(api.start_shipping(injected(req.clone(), inject))));
    agrees("StartShipping", &check, &first);
    let Ok(started) = &first else { return };
    let shipment = started
        .shipment
        .clone()
        .expect("StartShipping answers the shipment");
    assert_eq!(shipment.address, req.address);
    let failed = shipment.status() == shipping::ShipmentStatus::Failed;
    assert_eq!(failed, inject);
    let again = reply(now(api.start_shipping(injected(req.clone(), !inject))));
    assert_eq!(again, first, "StartShipping repeated for the same order");

    use shipping::cancel_shipping_request::Target as T;
    let cancel = shipping::CancelShippingRequest {
        target: Some(T::OrderId(req.order_id)),
    };
    let cancelled = reply(now(api.cancel_shipping(Request::new(cancel))))
        .expect("cancel by order")
        .shipment
        .expect("CancelShipping answers the shipment");
    let expected = if failed {
        shipping::ShipmentStatus::Failed
    } else {
        shipping::ShipmentStatus::Cancelled
    };
    assert_eq!(cancelled.status(), expected);
}

fn cancel_shipping(req: shipping::CancelShippingRequest) {
    use shipping::cancel_shipping_request::Target as T;
    let target = req.target.clone().map(|t| match t {
        T::ShippingId(id) => Target::Id(id),
        T::OrderId(id) => Target::Key(id),
    });
    let check = target_check(&target, shipments::check_target);
    bounded(&check);
    let answer = reply(now(shipping_api().cancel_shipping(Request::new(req))));
    match (&check, &target) {
        // By order with no shipment yet: the order's slot is closed.
        (Ok(()), Some(Target::Key(_))) => {
            let closed = answer
                .expect("cancel by order")
                .shipment
                .expect("a shipment");
            assert_eq!(closed.status(), shipping::ShipmentStatus::Cancelled);
        }
        _ => expect_missing("CancelShipping", &check, &answer),
    }
}

fn get_shipment(req: shipping::GetShipmentRequest) {
    use shipping::get_shipment_request::Target as T;
    let target = req.target.clone().map(|t| match t {
        T::ShippingId(id) => Target::Id(id),
        T::OrderId(id) => Target::Key(id),
    });
    let check = target_check(&target, shipments::check_target);
    bounded(&check);
    let answer = reply(now(shipping_api().get_shipment(Request::new(req))));
    expect_missing("GetShipment", &check, &answer);
}

// ---- shared checks --------------------------------------------------------------------------

/// Polls `future` once: with an in-memory store and no faults nothing ever waits.
fn now<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("a handler waited on an in-memory store with no faults"),
    }
}

/// The reply's message, or the status after checking its code and size.
fn reply<T>(result: Result<tonic::Response<T>, Status>) -> Result<T, Code> {
    match result {
        Ok(response) => Ok(response.into_inner()),
        Err(status) => {
            assert!(
                matches!(
                    status.code(),
                    Code::InvalidArgument | Code::NotFound | Code::FailedPrecondition
                ),
                "unexpected status {status:?}"
            );
            assert!(
                status.message().len() <= MAX_MESSAGE,
                "a {}-byte error message: {:?}",
                status.message().len(),
                &status.message()[..MAX_MESSAGE.min(status.message().len())]
            );
            Err(status.code())
        }
    }
}

fn injected<T>(message: T, inject: bool) -> Request<T> {
    let mut request = Request::new(message);
    if inject {
        request
            .metadata_mut()
            .insert(INJECT_FAILURE_HEADER, "true".parse().expect("ASCII"));
    }
    request
}

fn bounded<T>(check: &Result<T, ValidationError>) {
    if let Err(err) = check {
        assert!(
            err.to_string().len() <= MAX_MESSAGE,
            "a {}-byte validation message",
            err.to_string().len()
        );
    }
}

fn target_check(
    target: &Option<Target>,
    check: impl Fn(&Target) -> Result<(), ValidationError>,
) -> Result<(), ValidationError> {
    match target {
        None => Err(ValidationError::new("target", "is required")),
        Some(target) => check(target),
    }
}

/// A call on an empty store: accepted input is valid (the call succeeds), refused input is
/// INVALID_ARGUMENT.
fn agrees<T, U: std::fmt::Debug>(
    rpc: &str,
    check: &Result<T, ValidationError>,
    answer: &Result<U, Code>,
) {
    match (check, answer) {
        (Ok(_), Ok(_)) | (Err(_), Err(Code::InvalidArgument)) => {}
        (check, answer) => panic!(
            "{rpc}: validation says {:?}, the handler {answer:?}",
            check.as_ref().map(|_| ()),
        ),
    }
}

/// A lookup on an empty store: a well-formed id is NOT_FOUND, a malformed one INVALID_ARGUMENT.
fn expect_missing<U: std::fmt::Debug>(
    rpc: &str,
    check: &Result<(), ValidationError>,
    answer: &Result<U, Code>,
) {
    let expected = if check.is_ok() {
        Code::NotFound
    } else {
        Code::InvalidArgument
    };
    match answer {
        Err(code) if *code == expected => {}
        _ => panic!("{rpc}: validation says {check:?}, expected {expected:?}, got {answer:?}"),
    }
}
