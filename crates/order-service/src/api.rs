//! gRPC adapter: proto in, domain call, proto out. No business rules here; injected faults are
//! the server's `FaultLayer`.
use std::sync::Arc;

use saga_common::error::to_status;
use saga_common::time::{micros, timestamp};
use saga_common::validate::ValidationError;
use saga_proto::order::v1 as pb;
use saga_proto::order::v1::order_service_server::{OrderService, OrderServiceServer};
use saga_store::Store;
use tonic::{Request, Response, Status};

use crate::OrderSettings;
use crate::orders::{
    DEFAULT_PAGE_SIZE, LineItem, NewOrder, Order, OrderError, OrderQuery, OrderStatus, Orders,
};

/// The OrderService implementation.
#[derive(Debug, Clone)]
pub struct OrderApi {
    orders: Arc<Orders>,
}

impl OrderApi {
    pub fn new(orders: Arc<Orders>) -> Self {
        Self { orders }
    }

    /// The server the binary runs, over the store its settings chose.
    pub fn server(_settings: &OrderSettings, store: Store<Order>) -> OrderServiceServer<Self> {
        OrderServiceServer::new(Self::new(Arc::new(Orders::new(store))))
    }
}

/// ListOrders' request, checked.
fn order_query(request: pb::ListOrdersRequest) -> Result<OrderQuery, ValidationError> {
    let status = match pb::OrderStatus::try_from(request.status) {
        Ok(pb::OrderStatus::Unspecified) => None,
        Ok(pb::OrderStatus::Pending) => Some(OrderStatus::Pending),
        Ok(pb::OrderStatus::Approved) => Some(OrderStatus::Approved),
        Ok(pb::OrderStatus::Cancelled) => Some(OrderStatus::Cancelled),
        Err(_) => {
            let message = format!("must be an OrderStatus, got {}", request.status);
            return Err(ValidationError::new("status", message));
        }
    };
    let updated_before = request
        .updated_before
        .map(|time| micros("updated_before", &time))
        .transpose()?;
    let page_size = match request.page_size {
        None => DEFAULT_PAGE_SIZE,
        Some(size) => usize::try_from(size).map_err(|_| {
            ValidationError::new("page_size", format!("must be from 1 to 1000, got {size}"))
        })?,
    };
    Ok(OrderQuery {
        status,
        updated_before,
        page_size,
        page_token: request.page_token,
    })
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
        let order = reply(self.orders.create(new).await)?;
        Ok(Response::new(pb::CreateOrderResponse {
            order: Some(order),
        }))
    }

    async fn cancel_order(
        &self,
        request: Request<pb::CancelOrderRequest>,
    ) -> Result<Response<pb::CancelOrderResponse>, Status> {
        let req = request.into_inner();
        let order = reply(self.orders.cancel(&req.order_id, &req.reason).await)?;
        Ok(Response::new(pb::CancelOrderResponse {
            order: Some(order),
        }))
    }

    async fn approve_order(
        &self,
        request: Request<pb::ApproveOrderRequest>,
    ) -> Result<Response<pb::ApproveOrderResponse>, Status> {
        let req = request.into_inner();
        let order = reply(self.orders.approve(&req.order_id).await)?;
        Ok(Response::new(pb::ApproveOrderResponse {
            order: Some(order),
        }))
    }

    async fn fail_order(
        &self,
        request: Request<pb::FailOrderRequest>,
    ) -> Result<Response<pb::FailOrderResponse>, Status> {
        let req = request.into_inner();
        let order = reply(self.orders.fail(&req.order_id, &req.reason).await)?;
        Ok(Response::new(pb::FailOrderResponse { order: Some(order) }))
    }

    async fn list_orders(
        &self,
        request: Request<pb::ListOrdersRequest>,
    ) -> Result<Response<pb::ListOrdersResponse>, Status> {
        let query = order_query(request.into_inner())
            .map_err(|err| to_status(&OrderError::Invalid(err)))?;
        let page = self
            .orders
            .list(&query)
            .await
            .map_err(|err| to_status(&err))?;
        Ok(Response::new(pb::ListOrdersResponse {
            orders: page.orders.into_iter().map(pb::Order::from).collect(),
            next_page_token: page.next_page_token,
        }))
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
        let order = match &target {
            Target::OrderId(id) => self.orders.get(id).await,
            Target::IdempotencyKey(key) => self.orders.get_by_key(key).await,
        };
        Ok(Response::new(pb::GetOrderResponse {
            order: Some(reply(order)?),
        }))
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
            create_time: timestamp(order.created_at),
            update_time: timestamp(order.updated_at),
            last_error: order.last_error.unwrap_or_default(),
            failure_count: order.failure_count,
        }
    }
}
