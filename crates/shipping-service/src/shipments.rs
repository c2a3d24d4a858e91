//! Shipments: where a shipment starts or fails, and is cancelled on compensation.
//!
//! The order id is the idempotency key: at most one shipment per order, so a repeated
//! StartShipping returns the first shipment and never ships twice.
use saga_common::telemetry::StatusCounter;
use saga_common::time::now_micros;
use saga_common::validate::{self, ValidationError};
use saga_common::{Classify, ErrorKind, IdKind};
use saga_store::{Record, Repository, Store, StoreError, Target, find};
use serde::{Deserialize, Serialize};

/// Shipments by what happened to them (`status`: started, failed, cancelled), counted where the
/// change is stored, never on an idempotent replay. A slot cancelled before any start counts
/// as cancelled. Made on first use, after the binary installed its meter provider.
static EVENTS: std::sync::LazyLock<StatusCounter> = std::sync::LazyLock::new(|| {
    StatusCounter::new("saga.shipments", "Shipments started, failed, or cancelled")
});

/// Longest delivery address accepted.
pub const MAX_ADDRESS_LEN: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShipmentStatus {
    Started,
    Failed,
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shipment {
    pub id: String,
    pub order_id: String,
    pub address: String,
    pub status: ShipmentStatus,
    pub failure_reason: Option<String>,
    /// Microseconds since the epoch; 0 on shipments written before times were kept.
    #[serde(default)]
    pub created_at: i64,
    #[serde(default)]
    pub updated_at: i64,
}

impl Record for Shipment {
    const TABLE: &'static str = "shipments";
    fn id(&self) -> &str {
        &self.id
    }
    fn key(&self) -> &str {
        &self.order_id
    }
    fn status(&self) -> &'static str {
        match self.status {
            ShipmentStatus::Started => "started",
            ShipmentStatus::Failed => "failed",
            ShipmentStatus::Cancelled => "cancelled",
        }
    }
    fn updated_at(&self) -> i64 {
        self.updated_at
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ShippingError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("no shipment found for {0}")]
    NotFound(String),
    #[error(
        "order {0} already has a shipment to another address; a shipment's address cannot change"
    )]
    DifferentAddress(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Classify for ShippingError {
    fn kind(&self) -> ErrorKind {
        match self {
            ShippingError::Invalid(_) => ErrorKind::InvalidArgument,
            ShippingError::NotFound(_) => ErrorKind::NotFound,
            ShippingError::DifferentAddress(_) => ErrorKind::FailedPrecondition,
            ShippingError::Store(err) => err.kind(),
        }
    }
}

/// Checks a shipment target from a request.
pub fn check_target(target: &Target) -> Result<(), ValidationError> {
    match target {
        Target::Id(id) => IdKind::Shipment.check("shipping_id", id),
        Target::Key(order_id) => IdKind::Order.check("order_id", order_id),
    }
}

/// The shipment register over a repository.
#[derive(Debug, Default)]
pub struct Shipments<R = Store<Shipment>> {
    repo: R,
}

impl Shipments {
    /// A register kept in memory.
    pub fn in_memory() -> Self {
        Self::default()
    }
}

impl<R: Repository<Shipment>> Shipments<R> {
    pub fn new(repo: R) -> Self {
        Self { repo }
    }

    /// The repository behind the domain, for read-back checks.
    pub fn repository(&self) -> &R {
        &self.repo
    }

    /// Starts shipping an order, or records a FAILED shipment when `failure` gives a reason.
    /// A repeat for the same order returns the first shipment whatever `failure` says now.
    pub async fn start(
        &self,
        order_id: String,
        address: String,
        failure: Option<String>,
    ) -> Result<Shipment, ShippingError> {
        IdKind::Order.check("order_id", &order_id)?;
        validate::text("address", &address, MAX_ADDRESS_LEN)?;
        let status = if failure.is_some() {
            ShipmentStatus::Failed
        } else {
            ShipmentStatus::Started
        };
        let candidate = Shipment {
            id: IdKind::Shipment.generate(),
            order_id,
            address,
            status,
            failure_reason: failure,
            created_at: now_micros(),
            updated_at: now_micros(),
        };
        let (stored, inserted) = self.repo.insert_or_get(candidate.clone()).await?;
        // A slot cancelled before the start never held an address.
        if stored.address != candidate.address && !stored.address.is_empty() {
            return Err(ShippingError::DifferentAddress(stored.order_id));
        }
        if inserted {
            match &stored.failure_reason {
                Some(reason) => {
                    tracing::info!(shipping_id = %stored.id, %reason, "shipment failed");
                    EVENTS.add("failed");
                }
                None => {
                    tracing::info!(shipping_id = %stored.id, "shipment started");
                    EVENTS.add("started");
                }
            }
        }
        Ok(stored)
    }

    /// Cancels a shipment: STARTED → CANCELLED; CANCELLED and FAILED stay (nothing ships).
    /// By order with no shipment yet, the order's slot is CANCELLED so a late start never ships.
    pub async fn cancel(&self, target: &Target) -> Result<Shipment, ShippingError> {
        check_target(target)?;
        let existing = match (find(&self.repo, target).await?, target) {
            (Some(shipment), _) => shipment,
            (None, Target::Id(id)) => {
                return Err(ShippingError::NotFound(format!("shipment {id}")));
            }
            (None, Target::Key(order_id)) => {
                let tombstone = Shipment {
                    id: IdKind::Shipment.generate(),
                    order_id: order_id.clone(),
                    address: String::new(),
                    status: ShipmentStatus::Cancelled,
                    failure_reason: None,
                    created_at: now_micros(),
                    updated_at: now_micros(),
                };
                let (stored, inserted) = self.repo.insert_or_get(tombstone).await?;
                if inserted {
                    tracing::info!(shipping_id = %stored.id, %order_id, "shipment slot cancelled before any start");
                    EVENTS.add("cancelled");
                    return Ok(stored);
                }
                stored
            }
        };
        // Whether this call cancelled: a concurrent cancel finds it CANCELLED already.
        let mut changed = false;
        let transition = |shipment: &Shipment| -> Result<Option<Shipment>, ShippingError> {
            match shipment.status {
                ShipmentStatus::Started => {
                    changed = true;
                    Ok(Some(Shipment {
                        status: ShipmentStatus::Cancelled,
                        updated_at: now_micros().max(shipment.updated_at + 1),
                        ..shipment.clone()
                    }))
                }
                ShipmentStatus::Failed | ShipmentStatus::Cancelled => {
                    changed = false;
                    Ok(None)
                }
            }
        };
        let cancelled = self
            .repo
            .update(&existing.id, transition)
            .await?
            .ok_or_else(|| ShippingError::NotFound(format!("shipment {}", existing.id)))?;
        if changed {
            tracing::info!(shipping_id = %cancelled.id, "shipment cancelled");
            EVENTS.add("cancelled");
        }
        Ok(cancelled)
    }

    pub async fn get(&self, target: &Target) -> Result<Shipment, ShippingError> {
        check_target(target)?;
        find(&self.repo, target).await?.ok_or_else(|| {
            ShippingError::NotFound(match target {
                Target::Id(id) => format!("shipment {id}"),
                Target::Key(order_id) => format!("order {order_id}"),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDRESS: &str = "1 Main St, Springfield";

    #[tokio::test]
    async fn one_shipment_per_order() {
        let shipments = Shipments::in_memory();
        let order = IdKind::Order.generate();
        let first = shipments
            .start(order.clone(), ADDRESS.into(), None)
            .await
            .unwrap();
        assert_eq!(first.status, ShipmentStatus::Started);
        assert_eq!(
            shipments
                .start(order.clone(), ADDRESS.into(), Some("x".into()))
                .await
                .unwrap(),
            first
        );
        let err = shipments
            .start(order, "elsewhere".into(), None)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    }

    #[tokio::test]
    async fn cancel_rules() {
        let shipments = Shipments::in_memory();
        let order = IdKind::Order.generate();
        let failed = shipments
            .start(order.clone(), ADDRESS.into(), Some("no truck".into()))
            .await
            .unwrap();
        assert_eq!(failed.status, ShipmentStatus::Failed);
        assert_eq!(
            shipments
                .cancel(&Target::Id(failed.id))
                .await
                .unwrap()
                .status,
            ShipmentStatus::Failed
        );

        let order = IdKind::Order.generate();
        let started = shipments
            .start(order.clone(), ADDRESS.into(), None)
            .await
            .unwrap();
        let target = Target::Id(started.id);
        assert_eq!(
            shipments.cancel(&target).await.unwrap().status,
            ShipmentStatus::Cancelled
        );
        assert_eq!(
            shipments.cancel(&target).await.unwrap().status,
            ShipmentStatus::Cancelled
        );
        assert_eq!(
            shipments.get(&Target::Key(order)).await.unwrap().status,
            ShipmentStatus::Cancelled
        );
    }

    #[tokio::test]
    async fn cancel_before_start_closes_the_slot() {
        let shipments = Shipments::in_memory();
        let order = IdKind::Order.generate();
        let cancelled = shipments.cancel(&Target::Key(order.clone())).await.unwrap();
        assert_eq!(cancelled.status, ShipmentStatus::Cancelled);
        let late = shipments.start(order, ADDRESS.into(), None).await.unwrap();
        assert_eq!(
            (late.id, late.status),
            (cancelled.id, ShipmentStatus::Cancelled)
        );
    }

    #[tokio::test]
    async fn bad_input() {
        let shipments = Shipments::in_memory();
        let order = IdKind::Order.generate();
        for (order_id, address, field) in [
            ("nope".to_owned(), ADDRESS.to_owned(), "order_id"),
            (order.clone(), String::new(), "address"),
            (order.clone(), "x".repeat(MAX_ADDRESS_LEN + 1), "address"),
        ] {
            let err = shipments.start(order_id, address, None).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument);
            assert!(err.to_string().contains(field), "{err}");
        }
        let missing = Target::Id(IdKind::Shipment.generate());
        assert_eq!(
            shipments.cancel(&missing).await.unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            shipments.get(&Target::Key(order)).await.unwrap_err().kind(),
            ErrorKind::NotFound
        );
    }
}
