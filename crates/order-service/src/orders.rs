//! Orders: creation with an idempotency key, the PENDING → APPROVED | CANCELLED lifecycle, the
//! record of a failed saga (which only a cancel can settle), and listing for the sweeper.
use saga_common::telemetry::StatusCounter;
use saga_common::time::now_micros;
use saga_common::validate::{self, ValidationError};
use saga_common::{Classify, ErrorKind, IdKind};
use saga_store::{ListQuery, Record, Repository, Store, StoreError};
use serde::{Deserialize, Serialize};

/// Orders by what happened to them (`status`: created, approved, cancelled, failed), counted
/// where the change is stored, never on an idempotent replay. Made on first use, after the
/// binary installed its meter provider.
static EVENTS: std::sync::LazyLock<StatusCounter> = std::sync::LazyLock::new(|| {
    StatusCounter::new(
        "saga.orders",
        "Orders created, approved, cancelled, or marked failed by their saga",
    )
});

/// Longest user id, sku and idempotency key accepted.
pub const MAX_ID_LEN: usize = 128;
pub const MAX_SKU_LEN: usize = 64;
/// Most lines in one order.
pub const MAX_ITEMS: usize = 100;
/// Longest failure reason kept.
pub const MAX_REASON_LEN: usize = 1024;
/// Orders per page: the default, and the most.
pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderStatus {
    Pending,
    Approved,
    Cancelled,
}

impl OrderStatus {
    /// The stored, indexed name.
    pub fn name(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Approved => "approved",
            OrderStatus::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineItem {
    pub sku: String,
    pub quantity: u32,
    pub unit_price_minor: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub id: String,
    pub idempotency_key: String,
    pub user_id: String,
    pub currency: String,
    pub items: Vec<LineItem>,
    pub total_minor: i64,
    pub status: OrderStatus,
    pub cancel_reason: Option<String>,
    /// Microseconds since the epoch; 0 on orders written before times were kept.
    #[serde(default)]
    pub created_at: i64,
    #[serde(default)]
    pub updated_at: i64,
    /// Why the order's saga failed, as last recorded.
    #[serde(default)]
    pub last_error: Option<String>,
    /// How many failures were recorded.
    #[serde(default)]
    pub failure_count: u32,
}

impl Record for Order {
    const TABLE: &'static str = "orders";
    fn id(&self) -> &str {
        &self.id
    }
    fn key(&self) -> &str {
        &self.idempotency_key
    }
    fn status(&self) -> &'static str {
        self.status.name()
    }
    fn updated_at(&self) -> i64 {
        self.updated_at
    }
}

impl Order {
    /// This order, changed now.
    fn changed(&self, change: impl FnOnce(&mut Order)) -> Order {
        let mut next = self.clone();
        change(&mut next);
        next.updated_at = now_micros().max(self.updated_at + 1);
        next
    }
}

/// Which orders to list: ListOrders' request, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderQuery {
    pub status: Option<OrderStatus>,
    /// Microseconds since the epoch.
    pub updated_before: Option<i64>,
    pub page_size: usize,
    /// The previous page's `next_page_token`, or empty.
    pub page_token: String,
}

/// A page of orders and the token of the next one (empty on the last page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderPage {
    pub orders: Vec<Order>,
    pub next_page_token: String,
}

/// The token of the page after `last`: where it ended and which query it belongs to, hex so
/// that nobody mistakes it for something to edit.
fn page_token(query: &OrderQuery, last: &Order) -> String {
    let status = query.status.map_or("", OrderStatus::name);
    let before = query
        .updated_before
        .map_or(String::new(), |b| b.to_string());
    let text = format!("v1|{status}|{before}|{}|{}", last.updated_at, last.id);
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Where the page of `token` starts, if the token is one of ours for this same query.
fn page_start(query: &OrderQuery) -> Result<Option<(i64, String)>, ValidationError> {
    if query.page_token.is_empty() {
        return Ok(None);
    }
    let invalid = || {
        ValidationError::new(
            "page_token",
            "is not a next_page_token of ListOrders; start again with an empty one",
        )
    };
    let token = &query.page_token;
    if token.len() > 1024 || !token.len().is_multiple_of(2) {
        return Err(invalid());
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let parts: Vec<&str> = text.split('|').collect();
    let [version, status, before, at, id] = parts.as_slice() else {
        return Err(invalid());
    };
    let same_query = *status == query.status.map_or("", OrderStatus::name)
        && *before
            == query
                .updated_before
                .map_or(String::new(), |b| b.to_string());
    if *version != "v1" || IdKind::Order.check("page_token", id).is_err() {
        return Err(invalid());
    }
    if !same_query {
        return Err(ValidationError::new(
            "page_token",
            "belongs to a listing with another status or updated_before; pass the same ones",
        ));
    }
    let at: i64 = at.parse().map_err(|_| invalid())?;
    Ok(Some((at, (*id).to_owned())))
}

/// What a client asks for in CreateOrder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    pub idempotency_key: String,
    pub user_id: String,
    pub currency: String,
    pub items: Vec<LineItem>,
}

#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("order {0} not found")]
    NotFound(String),
    #[error(
        "idempotency key '{0}' was already used for a different order; use a new key for a new order"
    )]
    KeyReused(String),
    #[error("order {id} is {from:?} and cannot be {action}")]
    IllegalTransition {
        id: String,
        from: OrderStatus,
        action: &'static str,
    },
    #[error("order {id} cannot be approved: its saga failed ({reason}); only a cancel settles it")]
    SagaFailed { id: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Classify for OrderError {
    fn kind(&self) -> ErrorKind {
        match self {
            OrderError::Invalid(_) => ErrorKind::InvalidArgument,
            OrderError::NotFound(_) => ErrorKind::NotFound,
            OrderError::KeyReused(_)
            | OrderError::IllegalTransition { .. }
            | OrderError::SagaFailed { .. } => ErrorKind::FailedPrecondition,
            OrderError::Store(err) => err.kind(),
        }
    }
}

impl NewOrder {
    /// Checks every field and returns the order's total.
    pub fn validate(&self) -> Result<i64, ValidationError> {
        validate::text("idempotency_key", &self.idempotency_key, MAX_ID_LEN)?;
        validate::text("user_id", &self.user_id, MAX_ID_LEN)?;
        validate::currency("currency", &self.currency)?;
        if self.items.is_empty() {
            return Err(ValidationError::new("items", "must hold at least one line"));
        }
        if self.items.len() > MAX_ITEMS {
            return Err(ValidationError::new(
                "items",
                format!(
                    "must hold at most {MAX_ITEMS} lines, got {}",
                    self.items.len()
                ),
            ));
        }
        let mut total: i64 = 0;
        for item in &self.items {
            validate::text("items.sku", &item.sku, MAX_SKU_LEN)?;
            if item.quantity == 0 {
                return Err(ValidationError::new("items.quantity", "must be at least 1"));
            }
            validate::positive_amount("items.unit_price_minor", item.unit_price_minor)?;
            total = item
                .unit_price_minor
                .checked_mul(i64::from(item.quantity))
                .and_then(|line| total.checked_add(line))
                .ok_or_else(|| {
                    ValidationError::new("items", "make a total too large to represent")
                })?;
        }
        Ok(total)
    }
}

/// The order book over a repository.
#[derive(Debug, Default)]
pub struct Orders<R = Store<Order>> {
    repo: R,
}

impl Orders {
    /// An order book kept in memory.
    pub fn in_memory() -> Self {
        Self::default()
    }
}

impl<R: Repository<Order>> Orders<R> {
    pub fn new(repo: R) -> Self {
        Self { repo }
    }

    /// The repository behind the domain, for read-back checks.
    pub fn repository(&self) -> &R {
        &self.repo
    }

    /// Creates a PENDING order, or returns the one created earlier with the same key.
    pub async fn create(&self, new: NewOrder) -> Result<Order, OrderError> {
        let total_minor = new.validate()?;
        let candidate = Order {
            id: IdKind::Order.generate(),
            idempotency_key: new.idempotency_key,
            user_id: new.user_id,
            currency: new.currency,
            items: new.items,
            total_minor,
            status: OrderStatus::Pending,
            cancel_reason: None,
            created_at: now_micros(),
            updated_at: now_micros(),
            last_error: None,
            failure_count: 0,
        };
        let (stored, inserted) = self.repo.insert_or_get(candidate.clone()).await?;
        let same_body = stored.user_id == candidate.user_id
            && stored.currency == candidate.currency
            && stored.items == candidate.items;
        if !inserted && !same_body {
            return Err(OrderError::KeyReused(stored.idempotency_key));
        }
        if inserted {
            tracing::info!(order_id = %stored.id, total_minor, "order created");
            EVENTS.add("created");
        }
        Ok(stored)
    }

    /// PENDING → CANCELLED; CANCELLED stays; APPROVED is refused.
    pub async fn cancel(&self, id: &str, reason: &str) -> Result<Order, OrderError> {
        IdKind::Order.check("order_id", id)?;
        let reason = validate::shorten(reason);
        self.transition(id, "cancelled", |order: &Order| match order.status {
            OrderStatus::Pending => Ok(Some(order.changed(|next| {
                next.status = OrderStatus::Cancelled;
                next.cancel_reason = Some(reason.clone());
            }))),
            OrderStatus::Cancelled => Ok(None),
            OrderStatus::Approved => Err(illegal(order, "cancelled")),
        })
        .await
        .inspect(|order| {
            tracing::info!(order_id = %order.id, "order cancelled");
        })
    }

    /// PENDING → APPROVED; APPROVED stays; CANCELLED, or PENDING after a failed saga, is
    /// refused.
    pub async fn approve(&self, id: &str) -> Result<Order, OrderError> {
        IdKind::Order.check("order_id", id)?;
        self.transition(id, "approved", |order: &Order| {
            match (order.status, &order.last_error) {
                (OrderStatus::Pending, Some(reason)) => Err(OrderError::SagaFailed {
                    id: order.id.clone(),
                    reason: reason.clone(),
                }),
                (OrderStatus::Pending, None) => Ok(Some(order.changed(|next| {
                    next.status = OrderStatus::Approved;
                }))),
                (OrderStatus::Approved, _) => Ok(None),
                (OrderStatus::Cancelled, _) => Err(illegal(order, "approved")),
            }
        })
        .await
        .inspect(|order| {
            tracing::info!(order_id = %order.id, "order approved");
        })
    }

    /// Records that the order's saga failed: PENDING stays PENDING, no longer approvable, with
    /// the reason and one more failure counted; CANCELLED stays as it is; APPROVED is refused
    /// (the saga completed).
    pub async fn fail(&self, id: &str, reason: &str) -> Result<Order, OrderError> {
        IdKind::Order.check("order_id", id)?;
        validate::text("reason", reason, MAX_REASON_LEN)?;
        self.transition(id, "failed", |order: &Order| {
            match order.status {
                OrderStatus::Pending => {
                    Ok(Some(order.changed(|next| {
                        next.last_error = Some(reason.to_owned());
                        next.failure_count = next.failure_count.saturating_add(1);
                    })))
                }
                OrderStatus::Cancelled => Ok(None),
                OrderStatus::Approved => Err(illegal(order, "failed")),
            }
        })
        .await
        .inspect(|order| {
            tracing::info!(order_id = %order.id, failures = order.failure_count, %reason, "order's saga failed");
        })
    }

    /// A page of orders, oldest update first.
    pub async fn list(&self, query: &OrderQuery) -> Result<OrderPage, OrderError> {
        if query.page_size == 0 || query.page_size > MAX_PAGE_SIZE {
            return Err(ValidationError::new(
                "page_size",
                format!("must be from 1 to {MAX_PAGE_SIZE}, got {}", query.page_size),
            )
            .into());
        }
        let after = page_start(query)?;
        let listing = ListQuery {
            status: query.status.map(OrderStatus::name),
            updated_before: query.updated_before,
            after,
            // One more than asked tells whether another page follows.
            limit: query.page_size + 1,
        };
        let mut orders = self.repo.list(&listing).await?;
        let more = orders.len() > query.page_size;
        orders.truncate(query.page_size);
        let next_page_token = match orders.last() {
            Some(last) if more => page_token(query, last),
            _ => String::new(),
        };
        Ok(OrderPage {
            orders,
            next_page_token,
        })
    }

    pub async fn get(&self, id: &str) -> Result<Order, OrderError> {
        IdKind::Order.check("order_id", id)?;
        self.repo
            .get(id)
            .await?
            .ok_or_else(|| OrderError::NotFound(id.to_owned()))
    }

    /// The order created with idempotency key `key`.
    pub async fn get_by_key(&self, key: &str) -> Result<Order, OrderError> {
        validate::text("idempotency_key", key, MAX_ID_LEN)?;
        self.repo.get_by_key(key).await?.ok_or_else(|| {
            OrderError::NotFound(format!("with idempotency key '{}'", validate::shorten(key)))
        })
    }

    /// Applies `transition` to order `id`, and counts `event` when it really changed the order
    /// (not an idempotent replay): its last call, the one whose result was stored, returned one.
    async fn transition(
        &self,
        id: &str,
        event: &'static str,
        mut transition: impl FnMut(&Order) -> Result<Option<Order>, OrderError> + Send,
    ) -> Result<Order, OrderError> {
        let mut changed = false;
        let order = self
            .repo
            .update(id, |order: &Order| {
                let next = transition(order);
                changed = matches!(next, Ok(Some(_)));
                next
            })
            .await?
            .ok_or_else(|| OrderError::NotFound(id.to_owned()))?;
        if changed {
            EVENTS.add(event);
        }
        Ok(order)
    }
}

fn illegal(order: &Order, action: &'static str) -> OrderError {
    OrderError::IllegalTransition {
        id: order.id.clone(),
        from: order.status,
        action,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_order(key: &str) -> NewOrder {
        NewOrder {
            idempotency_key: key.into(),
            user_id: "alice".into(),
            currency: "EUR".into(),
            items: vec![LineItem {
                sku: "book".into(),
                quantity: 2,
                unit_price_minor: 1250,
            }],
        }
    }

    #[tokio::test]
    async fn create_is_idempotent_per_key() {
        let orders = Orders::in_memory();
        let first = orders.create(new_order("k1")).await.unwrap();
        assert_eq!(first.total_minor, 2500);
        assert_eq!(first.status, OrderStatus::Pending);
        assert_eq!(orders.create(new_order("k1")).await.unwrap(), first);
        assert_ne!(orders.create(new_order("k2")).await.unwrap().id, first.id);
    }

    #[tokio::test]
    async fn reused_key_with_other_body_is_refused() {
        let orders = Orders::in_memory();
        orders.create(new_order("k")).await.unwrap();
        let mut other = new_order("k");
        other.user_id = "bob".into();
        assert!(matches!(
            orders.create(other).await,
            Err(OrderError::KeyReused(_))
        ));
    }

    #[tokio::test]
    async fn lifecycle() {
        let orders = Orders::in_memory();
        let order = orders.create(new_order("k")).await.unwrap();
        let cancelled = orders.cancel(&order.id, "payment declined").await.unwrap();
        assert_eq!(cancelled.status, OrderStatus::Cancelled);
        assert_eq!(orders.cancel(&order.id, "again").await.unwrap(), cancelled);
        assert_eq!(
            orders.approve(&order.id).await.unwrap_err().kind(),
            ErrorKind::FailedPrecondition
        );

        let other = orders.create(new_order("k2")).await.unwrap();
        assert_eq!(
            orders.approve(&other.id).await.unwrap().status,
            OrderStatus::Approved
        );
        assert_eq!(
            orders.approve(&other.id).await.unwrap().status,
            OrderStatus::Approved
        );
        assert_eq!(
            orders.cancel(&other.id, "late").await.unwrap_err().kind(),
            ErrorKind::FailedPrecondition
        );
    }

    #[tokio::test]
    async fn bad_input() {
        let orders = Orders::in_memory();
        let cases: Vec<(NewOrder, &str)> = vec![
            (
                NewOrder {
                    user_id: String::new(),
                    ..new_order("a")
                },
                "user_id",
            ),
            (
                NewOrder {
                    idempotency_key: "x".repeat(200),
                    ..new_order("a")
                },
                "idempotency_key",
            ),
            (
                NewOrder {
                    currency: "euro".into(),
                    ..new_order("a")
                },
                "currency",
            ),
            (
                NewOrder {
                    items: vec![],
                    ..new_order("a")
                },
                "items",
            ),
            (
                NewOrder {
                    items: vec![LineItem {
                        sku: "s".into(),
                        quantity: 0,
                        unit_price_minor: 1,
                    }],
                    ..new_order("a")
                },
                "quantity",
            ),
            (
                NewOrder {
                    items: vec![LineItem {
                        sku: "s".into(),
                        quantity: 1,
                        unit_price_minor: -1,
                    }],
                    ..new_order("a")
                },
                "unit_price_minor",
            ),
            (
                NewOrder {
                    items: vec![LineItem {
                        sku: "s".into(),
                        quantity: 2,
                        unit_price_minor: i64::MAX,
                    }],
                    ..new_order("a")
                },
                "too large",
            ),
        ];
        for (new, expected) in cases {
            let err = orders.create(new).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument);
            assert!(
                err.to_string().contains(expected),
                "{err} should mention {expected}"
            );
        }
        assert_eq!(
            orders.get("nope").await.unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        let missing = IdKind::Order.generate();
        assert_eq!(
            orders.get(&missing).await.unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            orders.cancel(&missing, "x").await.unwrap_err().kind(),
            ErrorKind::NotFound
        );
    }
}
