//! What the saga needs from the three services, as one trait: the gRPC implementation lives in
//! `grpc`, and tests drive the saga through fakes without a network.
use std::future::Future;

use saga_proto::order::v1 as order;
use saga_proto::payment::v1 as payment;
use saga_proto::shipping::v1 as shipping;
use tonic::Status;

/// A payment or shipment, named by its own id or by its order: the `target` oneof of the
/// requests, and the store's `Target` (by id or by key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Id(String),
    OrderId(String),
}

pub trait Participants: Send + Sync {
    fn create_order(
        &self,
        request: order::CreateOrderRequest,
    ) -> impl Future<Output = Result<order::Order, Status>> + Send;
    fn cancel_order(
        &self,
        order_id: &str,
        reason: &str,
    ) -> impl Future<Output = Result<order::Order, Status>> + Send;
    fn approve_order(
        &self,
        order_id: &str,
    ) -> impl Future<Output = Result<order::Order, Status>> + Send;
    /// Marks the order's saga failed: it stays PENDING, can no longer be approved, and keeps
    /// `reason`.
    fn fail_order(
        &self,
        order_id: &str,
        reason: &str,
    ) -> impl Future<Output = Result<order::Order, Status>> + Send;
    fn list_orders(
        &self,
        request: order::ListOrdersRequest,
    ) -> impl Future<Output = Result<order::ListOrdersResponse, Status>> + Send;
    fn get_order(
        &self,
        order_id: &str,
    ) -> impl Future<Output = Result<order::Order, Status>> + Send;
    /// The order created with `idempotency_key` (a saga's id).
    fn find_order(
        &self,
        idempotency_key: &str,
    ) -> impl Future<Output = Result<order::Order, Status>> + Send;

    /// `inject_failure` asks the service to decline (the payment-failure scenario).
    fn process_payment(
        &self,
        request: payment::ProcessPaymentRequest,
        inject_failure: bool,
    ) -> impl Future<Output = Result<payment::Payment, Status>> + Send;
    fn refund_payment(
        &self,
        target: &Target,
    ) -> impl Future<Output = Result<payment::Payment, Status>> + Send;
    fn get_payment(
        &self,
        target: &Target,
    ) -> impl Future<Output = Result<payment::Payment, Status>> + Send;

    /// `inject_failure` asks the service to fail the shipment (the shipping-failure scenario).
    fn start_shipping(
        &self,
        request: shipping::StartShippingRequest,
        inject_failure: bool,
    ) -> impl Future<Output = Result<shipping::Shipment, Status>> + Send;
    fn cancel_shipping(
        &self,
        target: &Target,
    ) -> impl Future<Output = Result<shipping::Shipment, Status>> + Send;
    fn get_shipment(
        &self,
        target: &Target,
    ) -> impl Future<Output = Result<shipping::Shipment, Status>> + Send;
}

/// A response whose message field was left empty: the service broke the contract.
pub fn missing(what: &str) -> Status {
    Status::internal(format!("the service answered without a {what}"))
}
