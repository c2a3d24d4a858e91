//! Hostile input over real gRPC: one table of requests a careless or malicious client could send,
//! each with the exact status code it must get. Nothing may panic (a panicking handler would
//! show up as a closed stream or a wrong code), and afterwards every service still answers its
//! health check SERVING and a normal order still goes through.
//!
//! The table runs in order on one connection per service, so a case that broke the connection
//! would fail every case after it. A few cases build on the ones before them (an idempotency key
//! reused with another body, a second charge for the same order).
//!
//! One request carries an enum (ListOrders' status), which gets unknown values; the raw cases
//! send unknown fields of every wire type, and malformed encodings. Field errors must name the
//! field (`.names`). The raw cases are hand-encoded gRPC frames sent
//! through the same channel: this package has no `prost` or `bytes` to write a codec with, so a
//! frame travels as a `String` body and the raw bytes are kept to valid UTF-8 (short messages,
//! field numbers below 16, ASCII payloads).
//!
//! Run with `--nocapture` to see the code and message every case got.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use saga_common::IdKind;
use saga_proto::order::v1::{self as order, order_service_client::OrderServiceClient};
use saga_proto::payment::v1::{self as payment, payment_service_client::PaymentServiceClient};
use saga_proto::shipping::v1::{self as shipping, shipping_service_client::ShippingServiceClient};
use support::{Cluster, Faults};
use tonic::Code;
use tonic::codegen::http;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const KB: usize = 1024;
const MB: usize = 1024 * 1024;
/// tonic's default limit on a received message, which the services keep.
const MESSAGE_LIMIT: usize = 4 * MB;
/// hyper's default limit on a request's header list (HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE).
const HEADER_LIST_LIMIT: usize = 16 * KB;

/// One RPC with its request, typed or hand-encoded.
enum Rpc {
    CreateOrder(order::CreateOrderRequest),
    CancelOrder(order::CancelOrderRequest),
    ApproveOrder(order::ApproveOrderRequest),
    GetOrder(order::GetOrderRequest),
    FailOrder(order::FailOrderRequest),
    ListOrders(order::ListOrdersRequest),
    ProcessPayment(payment::ProcessPaymentRequest),
    RefundPayment(payment::RefundPaymentRequest),
    GetPayment(payment::GetPaymentRequest),
    StartShipping(shipping::StartShippingRequest),
    CancelShipping(shipping::CancelShippingRequest),
    GetShipment(shipping::GetShipmentRequest),
    /// A request body sent as it is to `path` on `service`: one or more gRPC frames, or not.
    Raw {
        service: Service,
        path: &'static str,
        body: Vec<u8>,
    },
}

#[derive(Debug, Clone, Copy)]
enum Service {
    Order,
    Payment,
    Shipping,
}

struct Case {
    what: String,
    rpc: Rpc,
    /// Request headers: gRPC metadata for typed calls, plain HTTP/2 headers for raw ones.
    headers: Vec<(&'static str, Vec<u8>)>,
    expect: Code,
    /// A word the error message must hold: the field at fault.
    names: Option<&'static str>,
}

fn case(what: impl Into<String>, rpc: Rpc, expect: Code) -> Case {
    Case {
        what: what.into(),
        rpc,
        headers: Vec::new(),
        expect,
        names: None,
    }
}

impl Case {
    fn names(mut self, field: &'static str) -> Self {
        self.names = Some(field);
        self
    }

    fn header(mut self, name: &'static str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

// ---- requests -------------------------------------------------------------------------------

fn new_order(key: &str) -> order::CreateOrderRequest {
    order::CreateOrderRequest {
        idempotency_key: key.into(),
        user_id: "alice".into(),
        currency: "EUR".into(),
        items: vec![line(1, 500)],
    }
}

fn line(quantity: u32, unit_price_minor: i64) -> order::LineItem {
    order::LineItem {
        sku: "book".into(),
        quantity,
        unit_price_minor,
    }
}

fn create(f: impl FnOnce(&mut order::CreateOrderRequest)) -> Rpc {
    let mut request = new_order("hostile");
    f(&mut request);
    Rpc::CreateOrder(request)
}

fn get_order(order_id: impl Into<String>) -> Rpc {
    Rpc::GetOrder(order::GetOrderRequest {
        target: Some(order::get_order_request::Target::OrderId(order_id.into())),
    })
}

fn get_order_by_key(key: impl Into<String>) -> Rpc {
    Rpc::GetOrder(order::GetOrderRequest {
        target: Some(order::get_order_request::Target::IdempotencyKey(key.into())),
    })
}

fn list(f: impl FnOnce(&mut order::ListOrdersRequest)) -> Rpc {
    let mut request = order::ListOrdersRequest::default();
    f(&mut request);
    Rpc::ListOrders(request)
}

fn fail_order(order_id: impl Into<String>, reason: impl Into<String>) -> Rpc {
    Rpc::FailOrder(order::FailOrderRequest {
        order_id: order_id.into(),
        reason: reason.into(),
    })
}

/// A page token as ListOrders makes them (hex of its text).
fn token(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

fn charge(order_id: &str, amount_minor: i64, currency: &str) -> Rpc {
    Rpc::ProcessPayment(payment::ProcessPaymentRequest {
        order_id: order_id.into(),
        amount_minor,
        currency: currency.into(),
    })
}

fn ship(order_id: &str, address: impl Into<String>) -> Rpc {
    Rpc::StartShipping(shipping::StartShippingRequest {
        order_id: order_id.into(),
        address: address.into(),
    })
}

fn fresh_order() -> String {
    IdKind::Order.generate()
}

// ---- hand-encoded protobuf and gRPC frames --------------------------------------------------

fn varint(mut value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// A field key: field number and wire type (0 varint, 1 fixed64, 2 length-delimited,
/// 3 start group, 4 end group, 5 fixed32; 6 and 7 do not exist).
fn key(field: u32, wire_type: u8) -> Vec<u8> {
    varint(u64::from(field) << 3 | u64::from(wire_type))
}

fn bytes_field(field: u32, value: &[u8]) -> Vec<u8> {
    let mut out = key(field, 2);
    out.extend(varint(value.len() as u64));
    out.extend_from_slice(value);
    out
}

fn string_field(field: u32, value: &str) -> Vec<u8> {
    bytes_field(field, value.as_bytes())
}

/// A valid CreateOrderRequest, as the generated code would encode it.
fn create_order_bytes(key: &str) -> Vec<u8> {
    let mut item = string_field(1, "book");
    item.extend(self::key(2, 0));
    item.extend(varint(1));
    item.extend(self::key(3, 0));
    item.extend(varint(100)); // one byte: a larger varint would not be valid UTF-8
    [
        string_field(1, key),
        string_field(2, "alice"),
        string_field(3, "EUR"),
        bytes_field(4, &item),
    ]
    .concat()
}

/// One gRPC frame: compression flag, big-endian length, message.
fn frame(message: &[u8]) -> Vec<u8> {
    frame_with(0, u32::try_from(message.len()).unwrap(), message)
}

fn frame_with(flag: u8, declared_len: u32, message: &[u8]) -> Vec<u8> {
    let mut out = vec![flag];
    out.extend(declared_len.to_be_bytes());
    out.extend_from_slice(message);
    out
}

fn raw(service: Service, path: &'static str, body: Vec<u8>) -> Rpc {
    Rpc::Raw {
        service,
        path,
        body,
    }
}

const CREATE_ORDER: &str = "/order.v1.OrderService/CreateOrder";
const GET_ORDER: &str = "/order.v1.OrderService/GetOrder";
const REFUND_PAYMENT: &str = "/payment.v1.PaymentService/RefundPayment";
const GET_PAYMENT: &str = "/payment.v1.PaymentService/GetPayment";
const START_SHIPPING: &str = "/shipping.v1.ShippingService/StartShipping";
const CANCEL_SHIPPING: &str = "/shipping.v1.ShippingService/CancelShipping";

// ---- the table ------------------------------------------------------------------------------

fn cases() -> Vec<Case> {
    use Code::{
        FailedPrecondition as Precondition, Internal, InvalidArgument as Invalid, NotFound, Ok,
        OutOfRange, Unimplemented, Unknown,
    };
    use payment::get_payment_request::Target as GetPay;
    use payment::refund_payment_request::Target as RefundPay;
    use shipping::cancel_shipping_request::Target as CancelShip;
    use shipping::get_shipment_request::Target as GetShip;

    let uuid = fresh_order()["ord-".len()..].to_owned();
    let charged = fresh_order();
    let shipped = fresh_order();
    let emoji = "\u{1F600}"; // one character, four bytes
    let mut cases = vec![
        // Empty and blank strings.
        case(
            "CreateOrder, every field empty",
            Rpc::CreateOrder(order::CreateOrderRequest::default()),
            Invalid,
        ),
        case(
            "CreateOrder, empty idempotency_key",
            create(|r| r.idempotency_key.clear()),
            Invalid,
        ),
        case(
            "CreateOrder, blank user_id",
            create(|r| r.user_id = " \t ".into()),
            Invalid,
        ),
        case(
            "CreateOrder, empty sku",
            create(|r| r.items[0].sku.clear()),
            Invalid,
        ),
        case(
            "CreateOrder, no items",
            create(|r| r.items.clear()),
            Invalid,
        ),
        // Long strings, counted in characters, not bytes.
        case(
            "CreateOrder, user_id of 128 four-byte characters (at the limit)",
            create(|r| {
                r.idempotency_key = "emoji-128".into();
                r.user_id = emoji.repeat(128);
            }),
            Ok,
        ),
        case(
            "CreateOrder, user_id of 129 four-byte characters",
            create(|r| r.user_id = emoji.repeat(129)),
            Invalid,
        ),
        // Control characters.
        case(
            "CreateOrder, NUL in user_id",
            create(|r| r.user_id = "al\0ice".into()),
            Invalid,
        ),
        case(
            "CreateOrder, newline in idempotency_key",
            create(|r| r.idempotency_key = "k\nSet-Cookie: x".into()),
            Invalid,
        ),
        case(
            "CreateOrder, ESC sequence in sku",
            create(|r| r.items[0].sku = "\u{1b}[31mred".into()),
            Invalid,
        ),
        case(
            "CreateOrder, currency with NUL",
            create(|r| r.currency = "E\0R".into()),
            Invalid,
        ),
        case(
            "CreateOrder, currency of three multibyte characters",
            create(|r| r.currency = "€€€".into()),
            Invalid,
        ),
        // Amounts.
        case(
            "CreateOrder, unit price i64::MIN",
            create(|r| r.items = vec![line(1, i64::MIN)]),
            Invalid,
        ),
        case(
            "CreateOrder, unit price 0",
            create(|r| r.items = vec![line(1, 0)]),
            Invalid,
        ),
        case(
            "CreateOrder, quantity 0",
            create(|r| r.items = vec![line(0, 1)]),
            Invalid,
        ),
        case(
            "CreateOrder, u32::MAX x i64::MAX overflows",
            create(|r| r.items = vec![line(u32::MAX, i64::MAX)]),
            Invalid,
        ),
        case(
            "CreateOrder, two lines whose sum overflows i64",
            create(|r| r.items = vec![line(1, i64::MAX / 2 + 1), line(1, i64::MAX / 2 + 1)]),
            Invalid,
        ),
        case(
            "CreateOrder, one line of 1 x i64::MAX (total i64::MAX)",
            create(|r| {
                r.idempotency_key = "max-total".into();
                r.items = vec![line(1, i64::MAX)];
            }),
            Ok,
        ),
        case(
            "CreateOrder, 100 lines of i64::MAX / 100",
            create(|r| {
                r.idempotency_key = "hundred-lines".into();
                r.items = vec![line(1, i64::MAX / 100); 100];
            }),
            Ok,
        ),
        case(
            "CreateOrder, 101 lines",
            create(|r| r.items = vec![line(1, 1); 101]),
            Invalid,
        ),
        // The same idempotency key: same body replays, another body is refused.
        case(
            "CreateOrder, key 'dup'",
            Rpc::CreateOrder(new_order("dup")),
            Ok,
        ),
        case(
            "CreateOrder, key 'dup' again, same body",
            Rpc::CreateOrder(new_order("dup")),
            Ok,
        ),
        case(
            "CreateOrder, key 'dup' again, another user",
            Rpc::CreateOrder(order::CreateOrderRequest {
                user_id: "mallory".into(),
                ..new_order("dup")
            }),
            Precondition,
        ),
        case(
            "CreateOrder, key 'dup' again, another price",
            Rpc::CreateOrder(order::CreateOrderRequest {
                items: vec![line(1, 1)],
                ..new_order("dup")
            }),
            Precondition,
        ),
        case(
            "GetOrder by idempotency key 'dup'",
            get_order_by_key("dup"),
            Ok,
        ),
        case(
            "GetOrder, no target",
            Rpc::GetOrder(order::GetOrderRequest { target: None }),
            Invalid,
        ),
        case(
            "GetOrder, empty idempotency key",
            get_order_by_key(""),
            Invalid,
        ),
        case(
            "GetOrder, 1 MB idempotency key",
            get_order_by_key("k".repeat(MB)),
            Invalid,
        ),
        case(
            "GetOrder, idempotency key with control characters",
            get_order_by_key("dup\r\n"),
            Invalid,
        ),
        // Malformed ids.
        case("GetOrder, empty id", get_order(""), Invalid),
        case(
            "GetOrder, payment id",
            get_order(IdKind::Payment.generate()),
            Invalid,
        ),
        case(
            "GetOrder, prefix without a UUID",
            get_order("ord-12345"),
            Invalid,
        ),
        case(
            "GetOrder, UUID without a prefix",
            get_order(uuid.clone()),
            Invalid,
        ),
        case(
            "GetOrder, id with control characters",
            get_order(format!("ord-{}\u{7}\r\n", &uuid)),
            Invalid,
        ),
        case(
            "GetOrder, id with a NUL inside the UUID",
            get_order(format!("ord-{}\0{}", &uuid[..8], &uuid[9..])),
            Invalid,
        ),
        case(
            "GetOrder, 10 KB id",
            get_order(format!("ord-{}", "0".repeat(10 * KB))),
            Invalid,
        ),
        case(
            "GetOrder, 1 MB id",
            get_order(format!("ord-{}", "f".repeat(MB))),
            Invalid,
        ),
        // Only the canonical spelling names a record: another spelling of the same UUID would
        // be another key (a second payment for one order).
        case(
            "GetOrder, upper-case UUID",
            get_order(format!("ord-{}", uuid.to_uppercase())),
            Invalid,
        ),
        case(
            "GetOrder, braced UUID",
            get_order(format!("ord-{{{uuid}}}")),
            Invalid,
        ),
        case(
            "GetOrder, URN UUID",
            get_order(format!("ord-urn:uuid:{uuid}")),
            Invalid,
        ),
        case(
            "GetOrder, UUID without hyphens",
            get_order(format!("ord-{}", uuid.replace('-', ""))),
            Invalid,
        ),
        // ListOrders: the sweeper's and the operator's listing.
        case(
            "ListOrders, nothing set (every order, 100 a page)",
            list(|_| {}),
            Ok,
        ),
        case(
            "ListOrders, PENDING, 1000 a page",
            list(|r| {
                r.status = order::OrderStatus::Pending.into();
                r.page_size = Some(1000);
            }),
            Ok,
        ),
        case(
            "ListOrders, page size 0",
            list(|r| r.page_size = Some(0)),
            Invalid,
        )
        .names("page_size"),
        case(
            "ListOrders, page size 1001",
            list(|r| r.page_size = Some(1001)),
            Invalid,
        )
        .names("page_size"),
        case(
            "ListOrders, page size -1",
            list(|r| r.page_size = Some(-1)),
            Invalid,
        )
        .names("page_size"),
        case(
            "ListOrders, page size i32::MIN",
            list(|r| r.page_size = Some(i32::MIN)),
            Invalid,
        )
        .names("page_size"),
        case("ListOrders, status 99", list(|r| r.status = 99), Invalid).names("status"),
        case("ListOrders, status -1", list(|r| r.status = -1), Invalid).names("status"),
        case(
            "ListOrders, garbage page token",
            list(|r| r.page_token = "not a token".into()),
            Invalid,
        )
        .names("page_token"),
        case(
            "ListOrders, odd-length hex page token",
            list(|r| r.page_token = "abc".into()),
            Invalid,
        )
        .names("page_token"),
        case(
            "ListOrders, hex page token of junk",
            list(|r| r.page_token = token("hello")),
            Invalid,
        )
        .names("page_token"),
        case(
            "ListOrders, page token with a bad order id",
            list(|r| r.page_token = token("v1|||5|ord-nope")),
            Invalid,
        )
        .names("page_token"),
        case(
            "ListOrders, page token of another listing (status)",
            list(|r| r.page_token = token(&format!("v1|pending||5|ord-{uuid}"))),
            Invalid,
        )
        .names("page_token"),
        case(
            "ListOrders, page token of this listing",
            list(|r| r.page_token = token(&format!("v1|||5|ord-{uuid}"))),
            Ok,
        ),
        case(
            "ListOrders, 1 MB page token",
            list(|r| r.page_token = "ab".repeat(MB / 2)),
            Invalid,
        )
        .names("page_token"),
        case(
            "ListOrders, updated_before in year 10000",
            list(|r| {
                r.updated_before = Some(prost_types::Timestamp {
                    seconds: 253_402_300_800,
                    nanos: 0,
                })
            }),
            Invalid,
        )
        .names("updated_before"),
        case(
            "ListOrders, updated_before before year 1",
            list(|r| {
                r.updated_before = Some(prost_types::Timestamp {
                    seconds: i64::MIN,
                    nanos: 0,
                })
            }),
            Invalid,
        )
        .names("updated_before"),
        case(
            "ListOrders, updated_before with negative nanos",
            list(|r| {
                r.updated_before = Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: -1,
                })
            }),
            Invalid,
        )
        .names("updated_before"),
        case(
            "ListOrders, updated_before at the epoch (nothing that old)",
            list(|r| r.updated_before = Some(prost_types::Timestamp::default())),
            Ok,
        ),
        // FailOrder: what a failing saga records.
        case("FailOrder, empty id", fail_order("", "why"), Invalid).names("order_id"),
        case(
            "FailOrder, unknown order",
            fail_order(fresh_order(), "why"),
            NotFound,
        ),
        case(
            "FailOrder, empty reason",
            fail_order(fresh_order(), ""),
            Invalid,
        )
        .names("reason"),
        case(
            "FailOrder, 1 MB reason",
            fail_order(fresh_order(), "r".repeat(MB)),
            Invalid,
        )
        .names("reason"),
        case(
            "FailOrder, reason with control characters",
            fail_order(fresh_order(), "a\u{0}b"),
            Invalid,
        )
        .names("reason"),
        case(
            "CancelOrder, unknown order, 1 MB reason",
            Rpc::CancelOrder(order::CancelOrderRequest {
                order_id: fresh_order(),
                reason: "r".repeat(MB),
            }),
            NotFound,
        ),
        case(
            "ApproveOrder, shipment id",
            Rpc::ApproveOrder(order::ApproveOrderRequest {
                order_id: IdKind::Shipment.generate(),
            }),
            Invalid,
        ),
        // Payments: amounts, currencies, ids, the same order twice.
        case(
            "ProcessPayment, amount i64::MIN",
            charge(&fresh_order(), i64::MIN, "EUR"),
            Invalid,
        ),
        case(
            "ProcessPayment, amount 0",
            charge(&fresh_order(), 0, "EUR"),
            Invalid,
        ),
        case(
            "ProcessPayment, amount i64::MAX",
            charge(&fresh_order(), i64::MAX, "EUR"),
            Ok,
        ),
        case(
            "ProcessPayment, lower-case currency",
            charge(&fresh_order(), 1, "eur"),
            Invalid,
        ),
        case(
            "ProcessPayment, 1 MB currency",
            charge(&fresh_order(), 1, &"E".repeat(MB)),
            Invalid,
        ),
        case(
            "ProcessPayment, 10 KB order id",
            charge(&"o".repeat(10 * KB), 1, "EUR"),
            Invalid,
        ),
        case(
            "ProcessPayment, payment id as order id",
            charge(&IdKind::Payment.generate(), 1, "EUR"),
            Invalid,
        ),
        case(
            "ProcessPayment, first charge",
            charge(&charged, 100, "EUR"),
            Ok,
        ),
        case(
            "ProcessPayment, same order, same charge",
            charge(&charged, 100, "EUR"),
            Ok,
        ),
        case(
            "ProcessPayment, same order, another amount",
            charge(&charged, 101, "EUR"),
            Precondition,
        ),
        case(
            "ProcessPayment, same order, another currency",
            charge(&charged, 100, "USD"),
            Precondition,
        ),
        // Oneof targets.
        case(
            "RefundPayment, no target",
            Rpc::RefundPayment(payment::RefundPaymentRequest { target: None }),
            Invalid,
        ),
        case(
            "GetPayment, no target",
            Rpc::GetPayment(payment::GetPaymentRequest { target: None }),
            Invalid,
        ),
        case(
            "RefundPayment, empty payment_id",
            Rpc::RefundPayment(payment::RefundPaymentRequest {
                target: Some(RefundPay::PaymentId(String::new())),
            }),
            Invalid,
        ),
        case(
            "RefundPayment, 1 MB order_id",
            Rpc::RefundPayment(payment::RefundPaymentRequest {
                target: Some(RefundPay::OrderId("ord-".repeat(MB / 4))),
            }),
            Invalid,
        ),
        case(
            "GetPayment, order id as payment_id",
            Rpc::GetPayment(payment::GetPaymentRequest {
                target: Some(GetPay::PaymentId(fresh_order())),
            }),
            Invalid,
        ),
        case(
            "RefundPayment by unknown order: voids the slot",
            Rpc::RefundPayment(payment::RefundPaymentRequest {
                target: Some(RefundPay::OrderId(fresh_order())),
            }),
            Ok,
        ),
        // Shipping.
        case(
            "StartShipping, empty address",
            ship(&fresh_order(), ""),
            Invalid,
        ),
        case(
            "StartShipping, blank address",
            ship(&fresh_order(), "\u{a0} \t"),
            Invalid,
        ),
        case(
            "StartShipping, address of 512 characters (at the limit)",
            ship(&fresh_order(), "a".repeat(512)),
            Ok,
        ),
        case(
            "StartShipping, address of 513 characters",
            ship(&fresh_order(), "a".repeat(513)),
            Invalid,
        ),
        case(
            "StartShipping, 10 KB address",
            ship(&fresh_order(), "a".repeat(10 * KB)),
            Invalid,
        ),
        case(
            "StartShipping, 1 MB address",
            ship(&fresh_order(), "a".repeat(MB)),
            Invalid,
        ),
        case(
            "StartShipping, address with NUL",
            ship(&fresh_order(), "1 Main St\0DROP TABLE"),
            Invalid,
        ),
        case(
            "StartShipping, 1 MB order id",
            ship(&"ord-".repeat(MB / 4), "1 Main St"),
            Invalid,
        ),
        case(
            "StartShipping, first start",
            ship(&shipped, "1 Main St"),
            Ok,
        ),
        case(
            "StartShipping, same order, another address",
            ship(&shipped, "2 Main St"),
            Precondition,
        ),
        case(
            "CancelShipping, no target",
            Rpc::CancelShipping(shipping::CancelShippingRequest { target: None }),
            Invalid,
        ),
        case(
            "GetShipment, no target",
            Rpc::GetShipment(shipping::GetShipmentRequest { target: None }),
            Invalid,
        ),
        case(
            "CancelShipping, malformed shipping_id",
            Rpc::CancelShipping(shipping::CancelShippingRequest {
                target: Some(CancelShip::ShippingId("shp-x".into())),
            }),
            Invalid,
        ),
        case(
            "GetShipment, payment id as order_id",
            Rpc::GetShipment(shipping::GetShipmentRequest {
                target: Some(GetShip::OrderId(IdKind::Payment.generate())),
            }),
            Invalid,
        ),
        // Metadata.
        case(
            "ProcessPayment, x-inject-failure with non-ASCII bytes",
            charge(&fresh_order(), 1, "EUR"),
            Ok,
        )
        .header("x-inject-failure", b"\xff\xfe\x80 \xc3(".to_vec()),
        case(
            "StartShipping, 8 KB x-inject-failure",
            ship(&fresh_order(), "1 Main St"),
            Ok,
        )
        .header("x-inject-failure", "x".repeat(8 * KB)),
        case(
            "CreateOrder, x-inject-failure (the order service ignores it)",
            Rpc::CreateOrder(new_order("inject-order")),
            Ok,
        )
        .header("x-inject-failure", "true"),
        case(
            "CreateOrder, garbage traceparent",
            Rpc::CreateOrder(new_order("tp-garbage")),
            Ok,
        )
        .header("traceparent", "garbage"),
        case(
            "CreateOrder, traceparent with an all-zero trace id and bad flags",
            Rpc::CreateOrder(new_order("tp-zero")),
            Ok,
        )
        .header(
            "traceparent",
            "00-00000000000000000000000000000000-0000000000000000-zz",
        ),
        case(
            "CreateOrder, traceparent of non-ASCII bytes",
            Rpc::CreateOrder(new_order("tp-binary")),
            Ok,
        )
        .header("traceparent", b"00-\xff\xfe-\x80".to_vec()),
        case(
            "CreateOrder, 8 KB traceparent, tracestate and baggage",
            Rpc::CreateOrder(new_order("tp-long")),
            Ok,
        )
        .header("traceparent", "0".repeat(8 * KB))
        .header("tracestate", ",=".repeat(KB))
        .header("baggage", "%%=;;=,".repeat(KB / 2)),
        // hyper refuses it with HTTP 431 and no grpc-status, which tonic maps to UNKNOWN.
        case(
            "CreateOrder, 32 KB header (over the 16 KB header list limit)",
            Rpc::CreateOrder(new_order("header-too-big")),
            Unknown,
        )
        .header("x-padding", "p".repeat(2 * HEADER_LIST_LIMIT)),
        // Messages over the size limit: refused before decoding, with OUT_OF_RANGE.
        case(
            "CreateOrder, user_id just under the message limit",
            create(|r| r.user_id = "u".repeat(MESSAGE_LIMIT - 100)),
            Invalid,
        ),
        case(
            "CreateOrder, user_id of 4 MiB (message over the limit)",
            create(|r| r.user_id = "u".repeat(MESSAGE_LIMIT)),
            OutOfRange,
        ),
        case(
            "CreateOrder, five 1 MB skus (message over the limit)",
            create(|r| {
                r.items = vec![
                    order::LineItem {
                        sku: "s".repeat(MB),
                        ..line(1, 1)
                    };
                    5
                ];
            }),
            OutOfRange,
        ),
        case(
            "StartShipping, 5 MB address (message over the limit)",
            ship(&fresh_order(), "a".repeat(5 * MB)),
            OutOfRange,
        ),
    ];

    // Raw frames: unknown fields, bad encodings, bad framing, unknown methods.
    let unknown_fields = [
        key(5, 0),
        varint(42),
        key(6, 1),
        b"ABCDEFGH".to_vec(),
        string_field(7, "unknown bytes"),
        key(9, 5),
        b"WXYZ".to_vec(),
        key(10, 3),
        key(11, 0),
        varint(1),
        key(10, 4),
    ]
    .concat();
    let get_unknown_order = string_field(1, &fresh_order());
    cases.extend([
        case(
            "raw CreateOrder, as encoded by the generated code",
            raw(
                Service::Order,
                CREATE_ORDER,
                frame(&create_order_bytes("raw-plain")),
            ),
            Ok,
        ),
        case(
            "raw CreateOrder, unknown fields of every valid wire type (ignored)",
            raw(
                Service::Order,
                CREATE_ORDER,
                frame(&[create_order_bytes("raw-unknown"), unknown_fields.clone()].concat()),
            ),
            Ok,
        ),
        case(
            "raw GetOrder, unknown fields before the id (ignored)",
            raw(
                Service::Order,
                GET_ORDER,
                frame(&[unknown_fields, get_unknown_order.clone()].concat()),
            ),
            NotFound,
        ),
        case(
            "raw GetOrder, empty message",
            raw(Service::Order, GET_ORDER, frame(&[])),
            Invalid,
        ),
        case(
            "raw GetOrder, both oneof members, idempotency_key last (last wins)",
            raw(
                Service::Order,
                GET_ORDER,
                frame(&[string_field(1, &fresh_order()), string_field(2, "dup")].concat()),
            ),
            Ok,
        ),
        case(
            "raw GetOrder, order_id sent as a varint (wrong wire type)",
            raw(
                Service::Order,
                GET_ORDER,
                frame(&[key(1, 0), varint(7)].concat()),
            ),
            Internal,
        ),
        case(
            "raw GetOrder, wire type 7",
            raw(
                Service::Order,
                GET_ORDER,
                frame(&[key(2, 7), varint(1)].concat()),
            ),
            Internal,
        ),
        case(
            "raw GetOrder, end group without a start",
            raw(Service::Order, GET_ORDER, frame(&key(3, 4))),
            Internal,
        ),
        case(
            "raw GetOrder, string longer than the message",
            raw(
                Service::Order,
                GET_ORDER,
                frame(&[key(1, 2), varint(100), b"ord-".to_vec()].concat()),
            ),
            Internal,
        ),
        case(
            "raw GetOrder, truncated varint",
            raw(Service::Order, GET_ORDER, frame(&[key(5, 0)].concat())),
            Internal,
        ),
        case(
            "raw RefundPayment, both oneof members, order_id last (last wins)",
            raw(
                Service::Payment,
                REFUND_PAYMENT,
                frame(
                    &[
                        string_field(1, &IdKind::Payment.generate()),
                        string_field(2, "nope"),
                    ]
                    .concat(),
                ),
            ),
            Invalid,
        ),
        case(
            "raw RefundPayment, both oneof members, payment_id last (last wins)",
            raw(
                Service::Payment,
                REFUND_PAYMENT,
                frame(
                    &[
                        string_field(2, "nope"),
                        string_field(1, &IdKind::Payment.generate()),
                    ]
                    .concat(),
                ),
            ),
            NotFound,
        ),
        case(
            "raw GetPayment, empty message (oneof unset)",
            raw(Service::Payment, GET_PAYMENT, frame(&[])),
            Invalid,
        ),
        case(
            "raw CancelShipping, both oneof members, order_id last (last wins)",
            raw(
                Service::Shipping,
                CANCEL_SHIPPING,
                frame(&[string_field(1, "shp-nope"), string_field(2, &fresh_order())].concat()),
            ),
            Ok,
        ),
        case(
            "raw StartShipping, address sent as fixed32 (wrong wire type)",
            raw(
                Service::Shipping,
                START_SHIPPING,
                frame(&[string_field(1, &fresh_order()), key(2, 5), b"1 Ma".to_vec()].concat()),
            ),
            Internal,
        ),
        case(
            "raw GetOrder, compressed flag without grpc-encoding",
            raw(Service::Order, GET_ORDER, frame_with(1, 3, b"abc")),
            Internal,
        ),
        case(
            "raw GetOrder, compression flag 2",
            raw(Service::Order, GET_ORDER, frame_with(2, 0, b"")),
            Internal,
        ),
        case(
            "raw GetOrder, unsupported grpc-encoding",
            raw(Service::Order, GET_ORDER, frame_with(1, 3, b"abc")),
            Unimplemented,
        )
        .header("grpc-encoding", "zstd"),
        case(
            "raw GetOrder, frame header declaring 5 MiB (body never sent)",
            raw(
                Service::Order,
                GET_ORDER,
                frame_with(0, u32::try_from(5 * MB).unwrap(), b""),
            ),
            OutOfRange,
        ),
        case(
            "raw GetOrder, frame header declaring more than the body holds",
            raw(Service::Order, GET_ORDER, frame_with(0, 100, b"abc")),
            Internal,
        ),
        case(
            "raw GetOrder, half a frame header",
            raw(Service::Order, GET_ORDER, vec![0, 0]),
            Internal,
        ),
        case(
            "raw GetOrder, no frame at all",
            raw(Service::Order, GET_ORDER, Vec::new()),
            Internal,
        ),
        case(
            "raw GetOrder, two messages in a unary call",
            raw(
                Service::Order,
                GET_ORDER,
                [frame(&get_unknown_order), frame(&get_unknown_order)].concat(),
            ),
            NotFound,
        ),
        case(
            "raw GetOrder, garbage grpc-timeout",
            raw(Service::Order, GET_ORDER, frame(&get_unknown_order)),
            NotFound,
        )
        .header("grpc-timeout", "soon"),
        case(
            "raw GetOrder, content-type application/json",
            raw(Service::Order, GET_ORDER, frame(&get_unknown_order)),
            NotFound,
        )
        .header("content-type", "application/json"),
        case(
            "raw, unknown method",
            raw(
                Service::Order,
                "/order.v1.OrderService/DropOrders",
                frame(&[]),
            ),
            Unimplemented,
        ),
        case(
            "raw, unknown service",
            raw(
                Service::Payment,
                "/order.v1.OrderService/GetOrder",
                frame(&[]),
            ),
            Unimplemented,
        ),
    ]);
    cases
}

// ---- running a case -------------------------------------------------------------------------

struct Clients {
    order: OrderServiceClient<Channel>,
    payment: PaymentServiceClient<Channel>,
    shipping: ShippingServiceClient<Channel>,
    channels: [Channel; 3],
}

impl Clients {
    async fn connect(cluster: &Cluster) -> Self {
        let order = support::channel(cluster.order.url()).await;
        let payment = support::channel(cluster.payment.url()).await;
        let shipping = support::channel(cluster.shipping.url()).await;
        // Hostile requests are big: let the typed clients send them (tonic's default limit on a
        // sent message is already unlimited) and leave the server's limit as it is.
        Self {
            order: OrderServiceClient::new(order.clone()),
            payment: PaymentServiceClient::new(payment.clone()),
            shipping: ShippingServiceClient::new(shipping.clone()),
            channels: [order, payment, shipping],
        }
    }
}

fn request<T>(message: T, headers: &[(&'static str, Vec<u8>)]) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    for (name, value) in headers {
        let value: AsciiMetadataValue = MetadataValue::try_from(value.as_slice())
            .expect("any byte but controls is a valid header value");
        request.metadata_mut().insert(*name, value);
    }
    request
}

fn outcome<T>(result: Result<tonic::Response<T>, tonic::Status>) -> (Code, String) {
    match result {
        Ok(_) => (Code::Ok, String::new()),
        Err(status) => (status.code(), status.message().to_owned()),
    }
}

/// Sends `body` as it is, and reads the status: tonic answers every unary error trailers-only
/// (the status in the headers), so a 200 response without one carries a message and succeeded.
async fn send_raw(
    channel: &mut Channel,
    path: &str,
    body: Vec<u8>,
    headers: &[(&'static str, Vec<u8>)],
) -> (Code, String) {
    use tonic::codegen::Service as _;
    let body = String::from_utf8(body).expect("a raw body must be valid UTF-8 (a String body)");
    let mut request = http::Request::builder()
        .method(http::Method::POST)
        .uri(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(body))
        .unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_static(name),
            http::HeaderValue::from_bytes(value).unwrap(),
        );
    }
    if let Err(err) = std::future::poll_fn(|cx| channel.poll_ready(cx)).await {
        return (Code::Unavailable, format!("channel not ready: {err}"));
    }
    let response = match channel.call(request).await {
        Ok(response) => response,
        Err(err) => return (Code::Unavailable, format!("transport error: {err}")),
    };
    if response.status() != http::StatusCode::OK {
        return (Code::Unknown, format!("HTTP {}", response.status()));
    }
    match tonic::Status::from_header_map(response.headers()) {
        Some(status) => (status.code(), status.message().to_owned()),
        None => (Code::Ok, String::new()),
    }
}

async fn run(c: &mut Clients, rpc: Rpc, headers: &[(&'static str, Vec<u8>)]) -> (Code, String) {
    let h = headers;
    match rpc {
        Rpc::CreateOrder(r) => outcome(c.order.create_order(request(r, h)).await),
        Rpc::CancelOrder(r) => outcome(c.order.cancel_order(request(r, h)).await),
        Rpc::ApproveOrder(r) => outcome(c.order.approve_order(request(r, h)).await),
        Rpc::GetOrder(r) => outcome(c.order.get_order(request(r, h)).await),
        Rpc::FailOrder(r) => outcome(c.order.fail_order(request(r, h)).await),
        Rpc::ListOrders(r) => outcome(c.order.list_orders(request(r, h)).await),
        Rpc::ProcessPayment(r) => outcome(c.payment.process_payment(request(r, h)).await),
        Rpc::RefundPayment(r) => outcome(c.payment.refund_payment(request(r, h)).await),
        Rpc::GetPayment(r) => outcome(c.payment.get_payment(request(r, h)).await),
        Rpc::StartShipping(r) => outcome(c.shipping.start_shipping(request(r, h)).await),
        Rpc::CancelShipping(r) => outcome(c.shipping.cancel_shipping(request(r, h)).await),
        Rpc::GetShipment(r) => outcome(c.shipping.get_shipment(request(r, h)).await),
        Rpc::Raw {
            service,
            path,
            body,
        } => {
            let channel = &mut c.channels[service as usize];
            send_raw(channel, path, body, h).await
        }
    }
}

fn shorten(message: &str) -> String {
    saga_common::validate::shorten(message)
}

#[tokio::test]
async fn hostile_requests_get_exact_codes_and_the_services_keep_serving() {
    let cluster = Cluster::start(Faults::injectable()).await;
    let mut clients = Clients::connect(&cluster).await;

    let mut failures = Vec::new();
    let cases = cases();
    let total = cases.len();
    for Case {
        what,
        rpc,
        headers,
        expect,
        names,
    } in cases
    {
        let call = run(&mut clients, rpc, &headers);
        let (code, message) = match tokio::time::timeout(Duration::from_secs(20), call).await {
            Ok(outcome) => outcome,
            Err(_) => (Code::DeadlineExceeded, "no answer in 20 s".to_owned()),
        };
        let named = names.is_none_or(|field| message.contains(field));
        let mark = if code == expect && named {
            "ok  "
        } else {
            "FAIL"
        };
        println!("{mark} {what}: {code:?} {}", shorten(&message));
        if code != expect || !named {
            failures.push(format!(
                "{what}: expected {expect:?} naming {names:?}, got {code:?} ({})",
                shorten(&message)
            ));
        }
    }

    // Every service still answers its health check SERVING, overall and by name.
    for (server, name) in [
        (&cluster.order, "order.v1.OrderService"),
        (&cluster.payment, "payment.v1.PaymentService"),
        (&cluster.shipping, "shipping.v1.ShippingService"),
    ] {
        let mut health = HealthClient::new(support::channel(server.url()).await);
        for service in ["", name] {
            let check = HealthCheckRequest {
                service: service.into(),
            };
            let status = health.check(check).await.map(|r| r.into_inner().status());
            if !matches!(status, Ok(ServingStatus::Serving)) {
                failures.push(format!("health of '{service}' on {name}: {status:?}"));
            }
        }
    }
    // And a normal order still goes through, on the connection the hostile cases used.
    let after = clients
        .order
        .create_order(new_order("after-the-storm"))
        .await;
    if let Err(status) = after {
        failures.push(format!(
            "a normal CreateOrder afterwards failed: {status:?}"
        ));
    }

    assert!(
        failures.is_empty(),
        "{} of {total} hostile cases went wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
