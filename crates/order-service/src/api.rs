//! gRPC adapter: proto in, domain call, proto out. No business rules here.
use std::sync::Arc;

use saga_common::error::to_status;
use saga_common::faults::{TransientFaults, guarded};
use saga_proto::order::v1 as pb;
use saga_proto::order::v1::order_service_server::{OrderService, OrderServiceServer};
use saga_store::Store;
use tonic::{Request, Response, Status};

use crate::OrderSettings;
use crate::orders::{LineItem, NewOrder, Order, OrderError, OrderStatus, Orders};

/// The OrderService implementation.
#[derive(Debug, Clone)]
pub struct OrderApi {
    orders: Arc<Orders>,
    faults: TransientFaults,
}

impl OrderApi {
    pub fn new(orders: Arc<Orders>, faults: TransientFaults) -> Self {
        Self { orders, faults }
    }

    /// The server the binary runs, over the store its settings chose.
    pub fn server(settings: &OrderSettings, store: Store<Order>) -> OrderServiceServer<Self> {
        let orders = Arc::new(Orders::new(store));
        OrderServiceServer::new(Self::new(orders, settings.faults.clone()))
    }
}

fn reply(result: Result<Order, OrderError>) -> Result<pb::Order, Status> {
    result.map(pb::Order::from).map_err(|err| to_status(&err))
}

#[tonic::async_trait]
impl OrderService for OrderApi {
    async fn create_order(
        &self,
        request: Request<pb::CreateOrderRequest>,
    ) -> Result<Response<pb::CreateOrderResponse>, Status> {
        let req = request.into_inner();
        let new = NewOrder {
            idempotency_key: req.idempotency_key,
            user_id: req.user_id,
            currency: req.currency,
            items: req.items.into_iter().map(LineItem::from).collect(),
        };
        guarded(&self.faults, async {
            let order = reply(self.orders.create(new).await)?;
            Ok(pb::CreateOrderResponse { order: Some(order) })
        })
        .await
    }

    async fn cancel_order(
        &self,
        request: Request<pb::CancelOrderRequest>,
    ) -> Result<Response<pb::CancelOrderResponse>, Status> {
        let req = request.into_inner();
        guarded(&self.faults, async {
            let order = reply(self.orders.cancel(&req.order_id, &req.reason).await)?;
            Ok(pb::CancelOrderResponse { order: Some(order) })
        })
        .await
    }

    async fn approve_order(
        &self,
        request: Request<pb::ApproveOrderRequest>,
    ) -> Result<Response<pb::ApproveOrderResponse>, Status> {
        let req = request.into_inner();
        guarded(&self.faults, async {
            let order = reply(self.orders.approve(&req.order_id).await)?;
            Ok(pb::ApproveOrderResponse { order: Some(order) })
        })
        .await
    }

    async fn get_order(
        &self,
        request: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::GetOrderResponse>, Status> {
        use pb::get_order_request::Target;
        let target = request
            .into_inner()
            .target
            .ok_or_else(|| Status::invalid_argument("set either order_id or idempotency_key"))?;
        guarded(&self.faults, async {
            let order = match &target {
                Target::OrderId(id) => self.orders.get(id).await,
                Target::IdempotencyKey(key) => self.orders.get_by_key(key).await,
            };
            Ok(pb::GetOrderResponse {
                order: Some(reply(order)?),
            })
        })
        .await
    }
}

impl From<pb::LineItem> for LineItem {
    fn from(item: pb::LineItem) -> Self {
        Self {
            sku: item.sku,
            quantity: item.quantity,
            unit_price_minor: item.unit_price_minor,
        }
    }
}

impl From<Order> for pb::Order {
    fn from(order: Order) -> Self {
        let status = match order.status {
            OrderStatus::Pending => pb::OrderStatus::Pending,
            OrderStatus::Approved => pb::OrderStatus::Approved,
            OrderStatus::Cancelled => pb::OrderStatus::Cancelled,
        };
        Self {
            order_id: order.id,
            user_id: order.user_id,
            currency: order.currency,
            items: order
                .items
                .into_iter()
                .map(|item| pb::LineItem {
                    sku: item.sku,
                    quantity: item.quantity,
                    unit_price_minor: item.unit_price_minor,
                })
                .collect(),
            total_minor: order.total_minor,
            status: status.into(),
            cancel_reason: order.cancel_reason.unwrap_or_default(),
            idempotency_key: order.idempotency_key,
        }
    }
}
