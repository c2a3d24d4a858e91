//! The participants over gRPC: one lazily connected channel per service, traced by
//! [`GrpcClientTraceLayer`](saga_common::telemetry::GrpcClientTraceLayer), failure injection
//! through request metadata, and a readiness wait on `grpc.health.v1`.
use std::future::Future;
use std::time::Duration;

use saga_common::faults::{INJECT_FAILURE_HEADER, INJECT_FAULT_HEADER};
use saga_common::telemetry::{GrpcClientTrace, GrpcClientTraceLayer};
use saga_proto::order::v1::{self as order, order_service_client::OrderServiceClient};
use saga_proto::payment::v1::{self as payment, payment_service_client::PaymentServiceClient};
use saga_proto::shipping::v1::{self as shipping, shipping_service_client::ShippingServiceClient};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tower_layer::Layer;

use crate::participants::{Participants, Target, missing};
use crate::settings::{ClientTls, OrchestratorSettings};

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid {name} '{url}': {source}")]
    BadUrl {
        name: &'static str,
        url: String,
        source: tonic::transport::Error,
    },
    #[error("{0}")]
    NotReady(String),
    #[error("TLS: {0}")]
    Tls(String),
}

/// A channel whose every call is a client span, its context sent along in the headers.
type Traced = GrpcClientTrace<Channel>;

/// The three services behind gRPC channels.
#[derive(Debug, Clone)]
pub struct GrpcParticipants {
    order: OrderServiceClient<Traced>,
    payment: PaymentServiceClient<Traced>,
    shipping: ShippingServiceClient<Traced>,
    /// Untraced, for the health checks: probes would bury the sagas.
    channels: [(&'static str, &'static str, Channel); 3],
    call_timeout: Duration,
    /// Step faults every call asks for (`run --fault`).
    faults: Option<tonic::metadata::AsciiMetadataValue>,
}

fn channel(
    name: &'static str,
    url: &str,
    tls: Option<&ClientTlsConfig>,
) -> Result<Channel, ConnectError> {
    let bad_url = |source| ConnectError::BadUrl {
        name,
        url: url.to_owned(),
        source,
    };
    let mut endpoint = Endpoint::from_shared(url.to_owned()).map_err(bad_url)?;
    if let Some(tls) = tls.filter(|_| url.starts_with("https://")) {
        endpoint = endpoint.tls_config(tls.clone()).map_err(bad_url)?;
    }
    // Lazy: an unreachable service is an UNAVAILABLE call, which the retry policy handles.
    Ok(endpoint
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .connect_lazy())
}

fn read_pem(what: &str, path: &std::path::Path) -> Result<Vec<u8>, ConnectError> {
    std::fs::read(path)
        .map_err(|err| ConnectError::Tls(format!("cannot read {what} {}: {err}", path.display())))
}

/// The client TLS configuration from settings; `None` when no TLS file is set.
fn tls_config(tls: &ClientTls) -> Result<Option<ClientTlsConfig>, ConnectError> {
    if tls.ca_file.is_none() && tls.cert_file.is_none() {
        return Ok(None);
    }
    let mut config = ClientTlsConfig::new();
    if let Some(ca) = &tls.ca_file {
        config = config.ca_certificate(Certificate::from_pem(read_pem("tls.ca_file", ca)?));
    }
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        config = config.identity(Identity::from_pem(
            read_pem("tls.cert_file", cert)?,
            read_pem("tls.key_file", key)?,
        ));
    }
    if let Some(domain) = &tls.domain {
        config = config.domain_name(domain.clone());
    }
    Ok(Some(config))
}

impl GrpcParticipants {
    pub fn new(settings: &OrchestratorSettings) -> Result<Self, ConnectError> {
        let tls = tls_config(&settings.tls)?;
        let order = channel("order_url", &settings.order_url, tls.as_ref())?;
        let payment = channel("payment_url", &settings.payment_url, tls.as_ref())?;
        let shipping = channel("shipping_url", &settings.shipping_url, tls.as_ref())?;
        let traced = |channel: &Channel| GrpcClientTraceLayer.layer(channel.clone());
        Ok(Self {
            order: OrderServiceClient::new(traced(&order)),
            payment: PaymentServiceClient::new(traced(&payment)),
            shipping: ShippingServiceClient::new(traced(&shipping)),
            channels: [
                ("order.v1.OrderService", "order_url", order),
                ("payment.v1.PaymentService", "payment_url", payment),
                ("shipping.v1.ShippingService", "shipping_url", shipping),
            ],
            call_timeout: settings.retry.call_timeout(),
            faults: None,
        })
    }

    /// Asks the services for these step faults (`RPC=KIND[@RATE]`) on every call; they must
    /// allow injection.
    pub fn with_faults(mut self, faults: &[String]) -> Result<Self, String> {
        if faults.is_empty() {
            return Ok(self);
        }
        let joined = faults.join(",");
        saga_common::faults::parse_step_faults(&joined)?;
        let value = joined
            .parse()
            .map_err(|_| format!("--fault '{joined}' is not plain ASCII"))?;
        self.faults = Some(value);
        Ok(self)
    }

    /// Waits until every service reports SERVING, or `timeout` passes.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), ConnectError> {
        let deadline = tokio::time::Instant::now() + timeout;
        for (service, setting, channel) in &self.channels {
            let mut health = HealthClient::new(channel.clone());
            loop {
                let request = HealthCheckRequest {
                    service: (*service).to_owned(),
                };
                let last = match health.check(request).await {
                    Ok(response) if response.get_ref().status() == ServingStatus::Serving => break,
                    Ok(response) => format!("{:?}", response.get_ref().status()),
                    Err(status) => format!("{}: {}", status.code(), status.message()),
                };
                if tokio::time::Instant::now() >= deadline {
                    return Err(ConnectError::NotReady(format!(
                        "{service} is not serving after {}s (last answer: {last}); \
                         is it running, and is {setting} right?",
                        timeout.as_secs()
                    )));
                }
                tracing::debug!(service, %last, "waiting for service");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    /// A request with the call's deadline (so the server can give up on work its caller has
    /// stopped waiting for) and, when asked, the failure-injection header.
    fn request<T>(&self, message: T, inject_failure: bool) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(self.call_timeout);
        if let Some(faults) = &self.faults {
            request
                .metadata_mut()
                .insert(INJECT_FAULT_HEADER, faults.clone());
        }
        if inject_failure {
            request.metadata_mut().insert(
                INJECT_FAILURE_HEADER,
                tonic::metadata::MetadataValue::from_static("true"),
            );
        }
        request
    }
}

/// A response that carries one resource.
trait Reply {
    type Resource;
    const RESOURCE: &'static str;
    fn resource(self) -> Option<Self::Resource>;
}

macro_rules! reply {
    ($resource:ty, $field:ident: $($response:ty),+) => {$(
        impl Reply for $response {
            type Resource = $resource;
            const RESOURCE: &'static str = stringify!($field);
            fn resource(self) -> Option<$resource> {
                self.$field
            }
        }
    )+};
}

reply!(order::Order, order: order::CreateOrderResponse, order::CancelOrderResponse,
    order::ApproveOrderResponse, order::FailOrderResponse, order::GetOrderResponse);
reply!(payment::Payment, payment: payment::ProcessPaymentResponse,
    payment::RefundPaymentResponse, payment::GetPaymentResponse);
reply!(shipping::Shipment, shipment: shipping::StartShippingResponse,
    shipping::CancelShippingResponse, shipping::GetShipmentResponse);

/// The resource of a unary call's reply; an empty one breaks the contract.
async fn resource<R: Reply>(
    call: impl Future<Output = Result<Response<R>, Status>>,
) -> Result<R::Resource, Status> {
    call.await?
        .into_inner()
        .resource()
        .ok_or_else(|| missing(R::RESOURCE))
}

/// A request's `target` oneof from a [`Target`]; `$id` is the variant of the resource's own id.
macro_rules! oneof {
    ($target:expr => $($oneof:ident)::+, $id:ident) => {
        Some(match $target {
            Target::Id(id) => $($oneof)::+::$id(id.clone()),
            Target::OrderId(id) => $($oneof)::+::OrderId(id.clone()),
        })
    };
}

/// The unary wrappers: each method's request, and which client sends it. One line a method, so
/// that a new RPC is one more line and the wrappers cannot drift apart.
macro_rules! unary {
    ($(fn $name:ident($($arg:ident: $ty:ty),*) -> $resource:ty
        = $client:ident.$rpc:ident($message:expr $(, inject $inject:expr)?);)+) => {$(
        async fn $name(&self, $($arg: $ty),*) -> Result<$resource, Status> {
            let inject = false $(|| $inject)?;
            let request = self.request($message, inject);
            // Boxed: tonic's call future is kilobytes, and unboxed every future around it
            // (retry, deadline, step, saga) held a copy's room and moved it as it went.
            resource(Box::pin(self.$client.clone().$rpc(request))).await
        }
    )+};
}

impl Participants for GrpcParticipants {
    unary! {
        fn create_order(request: order::CreateOrderRequest) -> order::Order
            = order.create_order(request);
        fn cancel_order(order_id: &str, reason: &str) -> order::Order
            = order.cancel_order(order::CancelOrderRequest {
                order_id: order_id.to_owned(),
                reason: reason.to_owned(),
            });
        fn approve_order(order_id: &str) -> order::Order
            = order.approve_order(order::ApproveOrderRequest { order_id: order_id.to_owned() });
        fn fail_order(order_id: &str, reason: &str) -> order::Order
            = order.fail_order(order::FailOrderRequest {
                order_id: order_id.to_owned(),
                reason: reason.to_owned(),
            });
        fn get_order(order_id: &str) -> order::Order
            = order.get_order(order::GetOrderRequest {
                target: Some(order::get_order_request::Target::OrderId(order_id.to_owned())),
            });
        fn find_order(key: &str) -> order::Order
            = order.get_order(order::GetOrderRequest {
                target: Some(order::get_order_request::Target::IdempotencyKey(key.to_owned())),
            });
        fn process_payment(request: payment::ProcessPaymentRequest, inject_failure: bool)
            -> payment::Payment = payment.process_payment(request, inject inject_failure);
        fn refund_payment(target: &Target) -> payment::Payment
            = payment.refund_payment(payment::RefundPaymentRequest {
                target: oneof!(target => payment::refund_payment_request::Target, PaymentId),
            });
        fn get_payment(target: &Target) -> payment::Payment
            = payment.get_payment(payment::GetPaymentRequest {
                target: oneof!(target => payment::get_payment_request::Target, PaymentId),
            });
        fn start_shipping(request: shipping::StartShippingRequest, inject_failure: bool)
            -> shipping::Shipment = shipping.start_shipping(request, inject inject_failure);
        fn cancel_shipping(target: &Target) -> shipping::Shipment
            = shipping.cancel_shipping(shipping::CancelShippingRequest {
                target: oneof!(target => shipping::cancel_shipping_request::Target, ShippingId),
            });
        fn get_shipment(target: &Target) -> shipping::Shipment
            = shipping.get_shipment(shipping::GetShipmentRequest {
                target: oneof!(target => shipping::get_shipment_request::Target, ShippingId),
            });
    }

    async fn list_orders(
        &self,
        request: order::ListOrdersRequest,
    ) -> Result<order::ListOrdersResponse, Status> {
        let request = self.request(request, false);
        Ok(self.order.clone().list_orders(request).await?.into_inner())
    }
}
