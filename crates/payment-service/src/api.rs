//! gRPC adapter: proto in, domain call, proto out. The decline decision comes from the
//! configured faults (rate or injected header); the ledger records it.
use std::sync::Arc;

use saga_common::error::to_status;
use saga_common::faults::BusinessFaults;
use saga_common::time::timestamp;
use saga_proto::payment::v1 as pb;
use saga_proto::payment::v1::payment_service_server::{PaymentService, PaymentServiceServer};
use saga_store::{Store, Target};
use tonic::{Request, Response, Status};

use crate::PaymentSettings;
use crate::payments::{Charge, Payment, PaymentError, PaymentStatus, Payments};

/// The PaymentService implementation.
#[derive(Debug, Clone)]
pub struct PaymentApi {
    payments: Arc<Payments>,
    faults: BusinessFaults,
}

impl PaymentApi {
    pub fn new(payments: Arc<Payments>, faults: BusinessFaults) -> Self {
        Self { payments, faults }
    }

    /// The server the binary runs, over the store its settings chose.
    pub fn server(settings: &PaymentSettings, store: Store<Payment>) -> PaymentServiceServer<Self> {
        let payments = Arc::new(Payments::new(store));
        PaymentServiceServer::new(Self::new(payments, settings.faults.clone()))
    }
}

fn reply(result: Result<Payment, PaymentError>) -> Result<Option<pb::Payment>, Status> {
    result
        .map(|p| Some(p.into()))
        .map_err(|err| to_status(&err))
}

fn target(target: Option<Target>) -> Result<Target, Status> {
    target.ok_or_else(|| Status::invalid_argument("set either payment_id or order_id"))
}

#[tonic::async_trait]
impl PaymentService for PaymentApi {
    async fn process_payment(
        &self,
        request: Request<pb::ProcessPaymentRequest>,
    ) -> Result<Response<pb::ProcessPaymentResponse>, Status> {
        let decline = self.faults.business_failure_of(&request)?;
        let req = request.into_inner();
        let charge = Charge {
            order_id: req.order_id,
            amount_minor: req.amount_minor,
            currency: req.currency,
        };
        let payment = reply(self.payments.process(charge, decline).await)?;
        Ok(Response::new(pb::ProcessPaymentResponse { payment }))
    }

    async fn refund_payment(
        &self,
        request: Request<pb::RefundPaymentRequest>,
    ) -> Result<Response<pb::RefundPaymentResponse>, Status> {
        let target = target(request.into_inner().target.map(refund_target))?;
        let payment = reply(self.payments.refund(&target).await)?;
        Ok(Response::new(pb::RefundPaymentResponse { payment }))
    }

    async fn get_payment(
        &self,
        request: Request<pb::GetPaymentRequest>,
    ) -> Result<Response<pb::GetPaymentResponse>, Status> {
        let target = target(request.into_inner().target.map(get_target))?;
        let payment = reply(self.payments.get(&target).await)?;
        Ok(Response::new(pb::GetPaymentResponse { payment }))
    }
}

fn refund_target(target: pb::refund_payment_request::Target) -> Target {
    use pb::refund_payment_request::Target as T;
    match target {
        T::PaymentId(id) => Target::Id(id),
        T::OrderId(id) => Target::Key(id),
    }
}

fn get_target(target: pb::get_payment_request::Target) -> Target {
    use pb::get_payment_request::Target as T;
    match target {
        T::PaymentId(id) => Target::Id(id),
        T::OrderId(id) => Target::Key(id),
    }
}

impl From<Payment> for pb::Payment {
    fn from(payment: Payment) -> Self {
        let status = match payment.status {
            PaymentStatus::Completed => pb::PaymentStatus::Completed,
            PaymentStatus::Declined => pb::PaymentStatus::Declined,
            PaymentStatus::Refunded => pb::PaymentStatus::Refunded,
            PaymentStatus::Voided => pb::PaymentStatus::Voided,
        };
        Self {
            payment_id: payment.id,
            order_id: payment.order_id,
            amount_minor: payment.amount_minor,
            currency: payment.currency,
            status: status.into(),
            decline_reason: payment.decline_reason.unwrap_or_default(),
            create_time: timestamp(payment.created_at),
            update_time: timestamp(payment.updated_at),
        }
    }
}
