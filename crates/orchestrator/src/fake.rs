//! In-memory participants for unit tests: the three services' state machines (idempotent by
//! order id, slots closed by compensations by order id), and a script per RPC saying what each
//! next call does instead of just answering.
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use saga_proto::order::v1::{self as order, OrderStatus};
use saga_proto::payment::v1::{self as payment, PaymentStatus};
use saga_proto::shipping::v1::{self as shipping, ShipmentStatus};
use tonic::Status;

use crate::participants::{Participants, Target};

/// What one call does.
#[derive(Debug, Clone)]
pub enum Act {
    /// Behave as the real service does.
    Answer,
    /// Fail before anything happens.
    Fail(Status),
    /// Take effect, then lose the reply: the caller cannot know which.
    LoseReply(Status),
    /// Wait (longer than the caller's deadline, to hang), then behave.
    Delay(Duration),
    /// The step's business failure: a declined payment, a failed shipment.
    Decline,
}

#[derive(Debug, Default)]
struct State {
    script: HashMap<&'static str, VecDeque<Act>>,
    calls: Vec<&'static str>,
    /// By order id.
    orders: HashMap<String, order::Order>,
    payments: HashMap<String, payment::Payment>,
    shipments: HashMap<String, shipping::Shipment>,
    next_id: u64,
}

impl State {
    fn id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}-{}", self.next_id)
    }

    fn order(&mut self, order_id: &str) -> Result<&mut order::Order, Status> {
        self.orders
            .get_mut(order_id)
            .ok_or_else(|| Status::not_found(format!("order {order_id}")))
    }
}

/// Now, as the services stamp their records.
pub fn now() -> prost_types::Timestamp {
    prost_types::Timestamp::from(std::time::SystemTime::now())
}

/// Marks an order changed.
fn touch(order: &mut order::Order) -> order::Order {
    order.update_time = Some(now());
    order.clone()
}

#[derive(Debug, Default)]
pub struct FakeParticipants {
    state: Mutex<State>,
}

impl FakeParticipants {
    /// The next calls of `rpc` do `acts`, in order; after them, calls answer.
    pub fn script(&self, rpc: &'static str, acts: impl IntoIterator<Item = Act>) -> &Self {
        self.with(|state| state.script.entry(rpc).or_default().extend(acts));
        self
    }

    /// Every call so far, by RPC name.
    pub fn calls(&self) -> Vec<&'static str> {
        self.with(|state| state.calls.clone())
    }

    /// The one order there is.
    pub fn only_order(&self) -> order::Order {
        self.with(|state| {
            assert_eq!(state.orders.len(), 1, "{:?}", state.orders);
            state.orders.values().next().cloned().unwrap_or_default()
        })
    }

    pub fn payment_of(&self, order_id: &str) -> Option<payment::Payment> {
        self.with(|state| state.payments.get(order_id).cloned())
    }

    pub fn shipment_of(&self, order_id: &str) -> Option<shipping::Shipment> {
        self.with(|state| state.shipments.get(order_id).cloned())
    }

    /// Sets an order's status behind the saga's back, as another actor would.
    pub fn set_order_status(&self, order_id: &str, status: OrderStatus) {
        self.with(|state| {
            if let Ok(order) = state.order(order_id) {
                order.set_status(status);
            }
        });
    }

    /// Forgets what was scripted: every call answers from now on.
    pub fn clear_script(&self) {
        self.with(|state| state.script.clear());
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut state)
    }

    /// One call: the scripted act around `effect` (whose flag asks for the business failure).
    async fn call<T>(
        &self,
        rpc: &'static str,
        effect: impl FnOnce(&mut State, bool) -> Result<T, Status>,
    ) -> Result<T, Status> {
        let act = self.with(|state| {
            state.calls.push(rpc);
            state
                .script
                .get_mut(rpc)
                .and_then(VecDeque::pop_front)
                .unwrap_or(Act::Answer)
        });
        match act {
            Act::Answer => self.with(|state| effect(state, false)),
            Act::Decline => self.with(|state| effect(state, true)),
            Act::Fail(status) => Err(status),
            Act::LoseReply(status) => {
                let _ = self.with(|state| effect(state, false));
                Err(status)
            }
            Act::Delay(delay) => {
                tokio::time::sleep(delay).await;
                self.with(|state| effect(state, false))
            }
        }
    }
}

fn find<'a, T>(
    by_order: &'a mut HashMap<String, T>,
    target: &Target,
    id_of: impl Fn(&T) -> &str,
) -> Option<&'a mut T> {
    match target {
        Target::OrderId(order_id) => by_order.get_mut(order_id),
        Target::Id(id) => by_order.values_mut().find(|value| id_of(value) == id),
    }
}

fn missing(target: &Target) -> Status {
    Status::not_found(format!("nothing for {target:?}"))
}

impl Participants for FakeParticipants {
    async fn create_order(
        &self,
        request: order::CreateOrderRequest,
    ) -> Result<order::Order, Status> {
        self.call("CreateOrder", |state, _| {
            let key = &request.idempotency_key;
            if let Some(order) = state.orders.values().find(|o| &o.idempotency_key == key) {
                return Ok(order.clone());
            }
            let mut order = order::Order {
                order_id: state.id("order"),
                user_id: request.user_id,
                currency: request.currency,
                total_minor: request
                    .items
                    .iter()
                    .map(|item| i64::from(item.quantity) * item.unit_price_minor)
                    .sum(),
                items: request.items,
                idempotency_key: request.idempotency_key,
                create_time: Some(now()),
                update_time: Some(now()),
                ..order::Order::default()
            };
            order.set_status(OrderStatus::Pending);
            state.orders.insert(order.order_id.clone(), order.clone());
            Ok(order)
        })
        .await
    }

    async fn cancel_order(&self, order_id: &str, reason: &str) -> Result<order::Order, Status> {
        self.call("CancelOrder", |state, _| {
            let order = state.order(order_id)?;
            if order.status() == OrderStatus::Approved {
                return Err(Status::failed_precondition("order is APPROVED"));
            }
            if order.status() == OrderStatus::Pending {
                order.set_status(OrderStatus::Cancelled);
                order.cancel_reason = reason.to_owned();
                return Ok(touch(order));
            }
            Ok(order.clone())
        })
        .await
    }

    async fn approve_order(&self, order_id: &str) -> Result<order::Order, Status> {
        self.call("ApproveOrder", |state, decline| {
            let order = state.order(order_id)?;
            if decline || order.status() == OrderStatus::Cancelled {
                return Err(Status::failed_precondition("order is CANCELLED"));
            }
            if !order.last_error.is_empty() {
                return Err(Status::failed_precondition("the order's saga failed"));
            }
            if order.status() == OrderStatus::Pending {
                order.set_status(OrderStatus::Approved);
                return Ok(touch(order));
            }
            Ok(order.clone())
        })
        .await
    }

    async fn fail_order(&self, order_id: &str, reason: &str) -> Result<order::Order, Status> {
        self.call("FailOrder", |state, _| {
            let order = state.order(order_id)?;
            match order.status() {
                OrderStatus::Approved => Err(Status::failed_precondition("order is APPROVED")),
                OrderStatus::Pending => {
                    order.last_error = reason.to_owned();
                    order.failure_count += 1;
                    Ok(touch(order))
                }
                _ => Ok(order.clone()),
            }
        })
        .await
    }

    async fn list_orders(
        &self,
        request: order::ListOrdersRequest,
    ) -> Result<order::ListOrdersResponse, Status> {
        self.call("ListOrders", |state, _| {
            let key = |o: &order::Order| {
                let t = o.update_time.unwrap_or_default();
                (t.seconds, t.nanos, o.order_id.clone())
            };
            let before = request.updated_before.map(|t| (t.seconds, t.nanos));
            let mut orders: Vec<order::Order> = state
                .orders
                .values()
                .filter(|o| request.status == 0 || o.status == request.status)
                .filter(|o| before.is_none_or(|b| (key(o).0, key(o).1) < b))
                .cloned()
                .collect();
            orders.sort_by_key(key);
            // The token is an offset: enough for a fake whose orders do not move under a test.
            let start: usize = request.page_token.parse().unwrap_or(0);
            let size = usize::try_from(request.page_size.unwrap_or(100))
                .unwrap_or(0)
                .max(1);
            let page: Vec<_> = orders.iter().skip(start).take(size).cloned().collect();
            let next = start + page.len();
            Ok(order::ListOrdersResponse {
                orders: page,
                next_page_token: if next < orders.len() {
                    next.to_string()
                } else {
                    String::new()
                },
            })
        })
        .await
    }

    async fn get_order(&self, order_id: &str) -> Result<order::Order, Status> {
        self.call("GetOrder", |state, _| state.order(order_id).cloned())
            .await
    }

    async fn find_order(&self, idempotency_key: &str) -> Result<order::Order, Status> {
        self.call("GetOrder", |state, _| {
            let found = state.orders.values();
            found
                .into_iter()
                .find(|o| o.idempotency_key == idempotency_key)
                .cloned()
                .ok_or_else(|| Status::not_found(idempotency_key.to_owned()))
        })
        .await
    }

    async fn process_payment(
        &self,
        request: payment::ProcessPaymentRequest,
        inject_failure: bool,
    ) -> Result<payment::Payment, Status> {
        self.call("ProcessPayment", |state, decline| {
            if let Some(existing) = state.payments.get(&request.order_id) {
                return Ok(existing.clone());
            }
            let mut payment = payment::Payment {
                payment_id: state.id("payment"),
                order_id: request.order_id.clone(),
                amount_minor: request.amount_minor,
                currency: request.currency,
                ..payment::Payment::default()
            };
            if decline || inject_failure {
                payment.set_status(PaymentStatus::Declined);
                payment.decline_reason = "card declined".into();
            } else {
                payment.set_status(PaymentStatus::Completed);
            }
            state.payments.insert(request.order_id, payment.clone());
            Ok(payment)
        })
        .await
    }

    async fn refund_payment(&self, target: &Target) -> Result<payment::Payment, Status> {
        self.call("RefundPayment", |state, _| {
            let next_id = state.id("payment");
            let found = find(&mut state.payments, target, |p| &p.payment_id);
            let payment = match (found, target) {
                (Some(payment), _) => payment,
                (None, Target::Id(_)) => return Err(missing(target)),
                (None, Target::OrderId(order_id)) => {
                    let mut voided = payment::Payment {
                        payment_id: next_id,
                        order_id: order_id.clone(),
                        ..payment::Payment::default()
                    };
                    voided.set_status(PaymentStatus::Voided);
                    state.payments.insert(order_id.clone(), voided.clone());
                    return Ok(voided);
                }
            };
            match payment.status() {
                PaymentStatus::Completed => payment.set_status(PaymentStatus::Refunded),
                PaymentStatus::Declined if matches!(target, Target::Id(_)) => {
                    return Err(Status::failed_precondition("nothing to refund"));
                }
                _ => {}
            }
            Ok(payment.clone())
        })
        .await
    }

    async fn get_payment(&self, target: &Target) -> Result<payment::Payment, Status> {
        self.call("GetPayment", |state, _| {
            find(&mut state.payments, target, |p| &p.payment_id)
                .map(|p| p.clone())
                .ok_or_else(|| missing(target))
        })
        .await
    }

    async fn start_shipping(
        &self,
        request: shipping::StartShippingRequest,
        inject_failure: bool,
    ) -> Result<shipping::Shipment, Status> {
        self.call("StartShipping", |state, decline| {
            if let Some(existing) = state.shipments.get(&request.order_id) {
                return Ok(existing.clone());
            }
            let mut shipment = shipping::Shipment {
                shipping_id: state.id("shipment"),
                order_id: request.order_id.clone(),
                address: request.address,
                ..shipping::Shipment::default()
            };
            if decline || inject_failure {
                shipment.set_status(ShipmentStatus::Failed);
                shipment.failure_reason = "no courier".into();
            } else {
                shipment.set_status(ShipmentStatus::Started);
            }
            state.shipments.insert(request.order_id, shipment.clone());
            Ok(shipment)
        })
        .await
    }

    async fn cancel_shipping(&self, target: &Target) -> Result<shipping::Shipment, Status> {
        self.call("CancelShipping", |state, _| {
            let next_id = state.id("shipment");
            let found = find(&mut state.shipments, target, |s| &s.shipping_id);
            let shipment = match (found, target) {
                (Some(shipment), _) => shipment,
                (None, Target::Id(_)) => return Err(missing(target)),
                (None, Target::OrderId(order_id)) => {
                    let mut closed = shipping::Shipment {
                        shipping_id: next_id,
                        order_id: order_id.clone(),
                        ..shipping::Shipment::default()
                    };
                    closed.set_status(ShipmentStatus::Cancelled);
                    state.shipments.insert(order_id.clone(), closed.clone());
                    return Ok(closed);
                }
            };
            if shipment.status() == ShipmentStatus::Started {
                shipment.set_status(ShipmentStatus::Cancelled);
            }
            Ok(shipment.clone())
        })
        .await
    }

    async fn get_shipment(&self, target: &Target) -> Result<shipping::Shipment, Status> {
        self.call("GetShipment", |state, _| {
            find(&mut state.shipments, target, |s| &s.shipping_id)
                .map(|s| s.clone())
                .ok_or_else(|| missing(target))
        })
        .await
    }
}
