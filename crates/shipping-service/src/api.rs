//! gRPC adapter: proto in, domain call, proto out. The failure decision comes from the
//! configured faults (rate or injected header); the register records it.
use std::sync::Arc;

use saga_common::error::to_status;
use saga_common::faults::BusinessFaults;
use saga_common::time::timestamp;
use saga_proto::shipping::v1 as pb;
use saga_proto::shipping::v1::shipping_service_server::{ShippingService, ShippingServiceServer};
use saga_store::{Store, Target};
use tonic::{Request, Response, Status};

use crate::ShippingSettings;
use crate::shipments::{Shipment, ShipmentStatus, Shipments, ShippingError};

/// The ShippingService implementation.
#[derive(Debug, Clone)]
pub struct ShippingApi {
    shipments: Arc<Shipments>,
    faults: BusinessFaults,
}

impl ShippingApi {
    pub fn new(shipments: Arc<Shipments>, faults: BusinessFaults) -> Self {
        Self { shipments, faults }
    }

    /// The server the binary runs, over the store its settings chose.
    pub fn server(
        settings: &ShippingSettings,
        store: Store<Shipment>,
    ) -> ShippingServiceServer<Self> {
        let shipments = Arc::new(Shipments::new(store));
        ShippingServiceServer::new(Self::new(shipments, settings.faults.clone()))
    }
}

fn reply(result: Result<Shipment, ShippingError>) -> Result<Option<pb::Shipment>, Status> {
    result
        .map(|s| Some(s.into()))
        .map_err(|err| to_status(&err))
}

fn target(target: Option<Target>) -> Result<Target, Status> {
    target.ok_or_else(|| Status::invalid_argument("set either shipping_id or order_id"))
}

#[tonic::async_trait]
impl ShippingService for ShippingApi {
    async fn start_shipping(
        &self,
        request: Request<pb::StartShippingRequest>,
    ) -> Result<Response<pb::StartShippingResponse>, Status> {
        let failure = self.faults.business_failure_of(&request)?;
        let req = request.into_inner();
        let shipment = reply(
            self.shipments
                .start(req.order_id, req.address, failure)
                .await,
        )?;
        Ok(Response::new(pb::StartShippingResponse { shipment }))
    }

    async fn cancel_shipping(
        &self,
        request: Request<pb::CancelShippingRequest>,
    ) -> Result<Response<pb::CancelShippingResponse>, Status> {
        let target = target(request.into_inner().target.map(cancel_target))?;
        let shipment = reply(self.shipments.cancel(&target).await)?;
        Ok(Response::new(pb::CancelShippingResponse { shipment }))
    }

    async fn get_shipment(
        &self,
        request: Request<pb::GetShipmentRequest>,
    ) -> Result<Response<pb::GetShipmentResponse>, Status> {
        let target = target(request.into_inner().target.map(get_target))?;
        let shipment = reply(self.shipments.get(&target).await)?;
        Ok(Response::new(pb::GetShipmentResponse { shipment }))
    }
}

fn cancel_target(target: pb::cancel_shipping_request::Target) -> Target {
    use pb::cancel_shipping_request::Target as T;
    match target {
        T::ShippingId(id) => Target::Id(id),
        T::OrderId(id) => Target::Key(id),
    }
}

fn get_target(target: pb::get_shipment_request::Target) -> Target {
    use pb::get_shipment_request::Target as T;
    match target {
        T::ShippingId(id) => Target::Id(id),
        T::OrderId(id) => Target::Key(id),
    }
}

impl From<Shipment> for pb::Shipment {
    fn from(shipment: Shipment) -> Self {
        let status = match shipment.status {
            ShipmentStatus::Started => pb::ShipmentStatus::Started,
            ShipmentStatus::Failed => pb::ShipmentStatus::Failed,
            ShipmentStatus::Cancelled => pb::ShipmentStatus::Cancelled,
        };
        Self {
            shipping_id: shipment.id,
            order_id: shipment.order_id,
            address: shipment.address,
            status: status.into(),
            failure_reason: shipment.failure_reason.unwrap_or_default(),
            create_time: timestamp(shipment.created_at),
            update_time: timestamp(shipment.updated_at),
        }
    }
}
