//! Every bad input over real gRPC gets the status code that says what is wrong, with a message
//! naming the field, and the service keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use saga_common::IdKind;
use saga_proto::order::v1::{self as order, order_service_client::OrderServiceClient};
use saga_proto::payment::v1::{self as payment, payment_service_client::PaymentServiceClient};
use saga_proto::shipping::v1::{self as shipping, shipping_service_client::ShippingServiceClient};
use support::{Cluster, Faults};
use tonic::Code;
use tonic::transport::Channel;

struct Clients {
    order: OrderServiceClient<Channel>,
    payment: PaymentServiceClient<Channel>,
    shipping: ShippingServiceClient<Channel>,
}

async fn clients(cluster: &Cluster) -> Clients {
    Clients {
        order: OrderServiceClient::new(support::channel(cluster.order.url()).await),
        payment: PaymentServiceClient::new(support::channel(cluster.payment.url()).await),
        shipping: ShippingServiceClient::new(support::channel(cluster.shipping.url()).await),
    }
}

fn good_order(key: &str) -> order::CreateOrderRequest {
    order::CreateOrderRequest {
        idempotency_key: key.into(),
        user_id: "alice".into(),
        currency: "EUR".into(),
        items: vec![order::LineItem {
            sku: "book".into(),
            quantity: 1,
            unit_price_minor: 500,
        }],
    }
}

fn expect(result: Result<impl std::fmt::Debug, tonic::Status>, code: Code, mentions: &str) {
    let status = result.expect_err("the call should have failed");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(mentions),
        "message '{}' should mention '{mentions}'",
        status.message()
    );
}

#[tokio::test]
async fn bad_orders() {
    let cluster = Cluster::start(Faults::injectable()).await;
    let mut c = clients(&cluster).await;
    let line = |quantity, unit_price_minor| order::LineItem {
        sku: "x".into(),
        quantity,
        unit_price_minor,
    };
    let cases = [
        (
            order::CreateOrderRequest {
                user_id: String::new(),
                ..good_order("a")
            },
            "user_id",
        ),
        (
            order::CreateOrderRequest {
                idempotency_key: String::new(),
                ..good_order("a")
            },
            "idempotency_key",
        ),
        (
            order::CreateOrderRequest {
                user_id: "u".repeat(10_000),
                ..good_order("a")
            },
            "user_id",
        ),
        (
            order::CreateOrderRequest {
                currency: "EURO".into(),
                ..good_order("a")
            },
            "currency",
        ),
        (
            order::CreateOrderRequest {
                items: vec![],
                ..good_order("a")
            },
            "items",
        ),
        (
            order::CreateOrderRequest {
                items: vec![line(0, 5)],
                ..good_order("a")
            },
            "quantity",
        ),
        (
            order::CreateOrderRequest {
                items: vec![line(1, 0)],
                ..good_order("a")
            },
            "unit_price_minor",
        ),
        (
            order::CreateOrderRequest {
                items: vec![line(1, -7)],
                ..good_order("a")
            },
            "unit_price_minor",
        ),
        (
            order::CreateOrderRequest {
                items: vec![line(u32::MAX, i64::MAX / 2)],
                ..good_order("a")
            },
            "too large",
        ),
        (
            order::CreateOrderRequest {
                items: vec![line(1, 1); 101],
                ..good_order("a")
            },
            "at most 100",
        ),
    ];
    for (request, field) in cases {
        expect(
            c.order.create_order(request).await,
            Code::InvalidArgument,
            field,
        );
    }
    for bad_id in [
        "",
        "42",
        "pay-00000000-0000-0000-0000-000000000000",
        "ord-not-a-uuid",
    ] {
        let request = order::GetOrderRequest {
            target: Some(order::get_order_request::Target::OrderId(bad_id.into())),
        };
        expect(
            c.order.get_order(request).await,
            Code::InvalidArgument,
            "order_id",
        );
    }
    let unknown = IdKind::Order.generate();
    let get = order::GetOrderRequest {
        target: Some(order::get_order_request::Target::OrderId(unknown.clone())),
    };
    expect(c.order.get_order(get).await, Code::NotFound, &unknown);
    let by_key = order::GetOrderRequest {
        target: Some(order::get_order_request::Target::IdempotencyKey(
            "never-used".into(),
        )),
    };
    expect(
        c.order.get_order(by_key).await,
        Code::NotFound,
        "never-used",
    );
    let neither = order::GetOrderRequest { target: None };
    expect(
        c.order.get_order(neither).await,
        Code::InvalidArgument,
        "order_id or idempotency_key",
    );
    let cancel = order::CancelOrderRequest {
        order_id: unknown.clone(),
        reason: String::new(),
    };
    expect(c.order.cancel_order(cancel).await, Code::NotFound, &unknown);
    let approve = order::ApproveOrderRequest {
        order_id: unknown.clone(),
    };
    expect(
        c.order.approve_order(approve).await,
        Code::NotFound,
        &unknown,
    );

    // Illegal transitions.
    let created = c
        .order
        .create_order(good_order("t"))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    let id = created.order_id;
    c.order
        .cancel_order(order::CancelOrderRequest {
            order_id: id.clone(),
            reason: "test".into(),
        })
        .await
        .unwrap();
    let approve = order::ApproveOrderRequest {
        order_id: id.clone(),
    };
    expect(
        c.order.approve_order(approve).await,
        Code::FailedPrecondition,
        "cannot be approved",
    );
    // Same key, different body.
    let reused = order::CreateOrderRequest {
        currency: "USD".into(),
        ..good_order("t")
    };
    expect(
        c.order.create_order(reused).await,
        Code::FailedPrecondition,
        "idempotency key",
    );

    // Still serving.
    assert!(c.order.create_order(good_order("after")).await.is_ok());
}

#[tokio::test]
async fn bad_payments() {
    let cluster = Cluster::start(Faults::injectable()).await;
    let mut c = clients(&cluster).await;
    let order_id = IdKind::Order.generate();
    let charge = |amount_minor, currency: &str| payment::ProcessPaymentRequest {
        order_id: order_id.clone(),
        amount_minor,
        currency: currency.into(),
    };
    expect(
        c.payment.process_payment(charge(0, "EUR")).await,
        Code::InvalidArgument,
        "amount_minor",
    );
    expect(
        c.payment.process_payment(charge(-1, "EUR")).await,
        Code::InvalidArgument,
        "amount_minor",
    );
    expect(
        c.payment.process_payment(charge(i64::MIN, "EUR")).await,
        Code::InvalidArgument,
        "amount_minor",
    );
    expect(
        c.payment.process_payment(charge(10, "")).await,
        Code::InvalidArgument,
        "currency",
    );
    let bad_order = payment::ProcessPaymentRequest {
        order_id: "ord-x".into(),
        ..charge(10, "EUR")
    };
    expect(
        c.payment.process_payment(bad_order).await,
        Code::InvalidArgument,
        "order_id",
    );

    use payment::refund_payment_request::Target;
    let refund = |target| payment::RefundPaymentRequest { target };
    expect(
        c.payment.refund_payment(refund(None)).await,
        Code::InvalidArgument,
        "payment_id or order_id",
    );
    let malformed = refund(Some(Target::PaymentId("pay-1".into())));
    expect(
        c.payment.refund_payment(malformed).await,
        Code::InvalidArgument,
        "payment_id",
    );
    let unknown = IdKind::Payment.generate();
    let missing = refund(Some(Target::PaymentId(unknown.clone())));
    expect(
        c.payment.refund_payment(missing).await,
        Code::NotFound,
        &unknown,
    );

    // Refunding a declined payment is illegal.
    let mut request = tonic::Request::new(charge(10, "EUR"));
    request
        .metadata_mut()
        .insert("x-inject-failure", "true".parse().unwrap());
    let declined = c
        .payment
        .process_payment(request)
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap();
    assert_eq!(declined.status(), payment::PaymentStatus::Declined);
    let again = refund(Some(Target::PaymentId(declined.payment_id)));
    expect(
        c.payment.refund_payment(again).await,
        Code::FailedPrecondition,
        "declined",
    );
    // Same order, different amount.
    expect(
        c.payment.process_payment(charge(11, "EUR")).await,
        Code::FailedPrecondition,
        "cannot change",
    );

    let get = payment::GetPaymentRequest {
        target: Some(payment::get_payment_request::Target::OrderId(
            IdKind::Order.generate(),
        )),
    };
    expect(c.payment.get_payment(get).await, Code::NotFound, "order");
}

#[tokio::test]
async fn bad_shipments() {
    let cluster = Cluster::start(Faults::default()).await;
    let mut c = clients(&cluster).await;
    let start = |order_id: &str, address: &str| shipping::StartShippingRequest {
        order_id: order_id.into(),
        address: address.into(),
    };
    let order_id = IdKind::Order.generate();
    expect(
        c.shipping.start_shipping(start("", "x")).await,
        Code::InvalidArgument,
        "order_id",
    );
    expect(
        c.shipping.start_shipping(start(&order_id, "")).await,
        Code::InvalidArgument,
        "address",
    );
    let huge = "a".repeat(600);
    expect(
        c.shipping.start_shipping(start(&order_id, &huge)).await,
        Code::InvalidArgument,
        "address",
    );

    // Injection is off on this cluster: asking for a failure is refused, not ignored.
    let mut request = tonic::Request::new(start(&order_id, "1 Main St"));
    request
        .metadata_mut()
        .insert("x-inject-failure", "true".parse().unwrap());
    expect(
        c.shipping.start_shipping(request).await,
        Code::FailedPrecondition,
        "allow_injection",
    );

    // Ship a cancelled order: the order's slot is closed, so nothing starts.
    use shipping::cancel_shipping_request::Target;
    let cancel = shipping::CancelShippingRequest {
        target: Some(Target::OrderId(order_id.clone())),
    };
    let closed = c
        .shipping
        .cancel_shipping(cancel)
        .await
        .unwrap()
        .into_inner()
        .shipment
        .unwrap();
    assert_eq!(closed.status(), shipping::ShipmentStatus::Cancelled);
    let late = c
        .shipping
        .start_shipping(start(&order_id, "1 Main St"))
        .await
        .unwrap();
    assert_eq!(
        late.into_inner().shipment.unwrap().status(),
        shipping::ShipmentStatus::Cancelled
    );

    let unknown = IdKind::Shipment.generate();
    let cancel = shipping::CancelShippingRequest {
        target: Some(Target::ShippingId(unknown.clone())),
    };
    expect(
        c.shipping.cancel_shipping(cancel).await,
        Code::NotFound,
        &unknown,
    );
    let cancel = shipping::CancelShippingRequest { target: None };
    expect(
        c.shipping.cancel_shipping(cancel).await,
        Code::InvalidArgument,
        "shipping_id or order_id",
    );
}
