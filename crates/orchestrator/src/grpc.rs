//! The participants over gRPC: one lazily connected channel per service, failure injection
//! through request metadata, and a readiness wait on `grpc.health.v1`.
use std::time::Duration;

use saga_common::faults::INJECT_FAILURE_HEADER;
use saga_proto::order::v1::{self as order, order_service_client::OrderServiceClient};
use saga_proto::payment::v1::{self as payment, payment_service_client::PaymentServiceClient};
use saga_proto::shipping::v1::{self as shipping, shipping_service_client::ShippingServiceClient};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::participants::{By, Participants, missing};
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

/// The three services behind gRPC channels.
#[derive(Debug, Clone)]
pub struct GrpcParticipants {
    order: OrderServiceClient<Channel>,
    payment: PaymentServiceClient<Channel>,
    shipping: ShippingServiceClient<Channel>,
    channels: [(&'static str, &'static str, Channel); 3],
    call_timeout: Duration,
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
        Ok(Self {
            order: OrderServiceClient::new(order.clone()),
            payment: PaymentServiceClient::new(payment.clone()),
            shipping: ShippingServiceClient::new(shipping.clone()),
            channels: [
                ("order.v1.OrderService", "order_url", order),
                ("payment.v1.PaymentService", "payment_url", payment),
                ("shipping.v1.ShippingService", "shipping_url", shipping),
            ],
            call_timeout: settings.retry.call_timeout(),
        })
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

    fn request<T>(&self, message: T, inject_failure: bool) -> Request<T> {
        let mut request = Request::new(message);
        // The server can give up on work its caller has stopped waiting for.
        request.set_timeout(self.call_timeout);
        if inject_failure {
            request.metadata_mut().insert(
                INJECT_FAILURE_HEADER,
                tonic::metadata::MetadataValue::from_static("true"),
            );
        }
        request
    }
}

fn refund_target(by: &By) -> payment::refund_payment_request::Target {
    use payment::refund_payment_request::Target;
    match by {
        By::Id(id) => Target::PaymentId(id.clone()),
        By::Order(id) => Target::OrderId(id.clone()),
    }
}

fn get_payment_target(by: &By) -> payment::get_payment_request::Target {
    use payment::get_payment_request::Target;
    match by {
        By::Id(id) => Target::PaymentId(id.clone()),
        By::Order(id) => Target::OrderId(id.clone()),
    }
}

fn cancel_target(by: &By) -> shipping::cancel_shipping_request::Target {
    use shipping::cancel_shipping_request::Target;
    match by {
        By::Id(id) => Target::ShippingId(id.clone()),
        By::Order(id) => Target::OrderId(id.clone()),
    }
}

fn get_shipment_target(by: &By) -> shipping::get_shipment_request::Target {
    use shipping::get_shipment_request::Target;
    match by {
        By::Id(id) => Target::ShippingId(id.clone()),
        By::Order(id) => Target::OrderId(id.clone()),
    }
}

/// Marks a client span with the call's status code (any non-OK code is an error).
fn record_status<T>(span: &tracing::Span, result: &Result<T, Status>) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let code = result
        .as_ref()
        .map_or_else(|status| status.code(), |_| tonic::Code::Ok);
    span.record("rpc.grpc.status_code", code as i32);
    if let Err(status) = result {
        span.set_status(opentelemetry::trace::Status::error(format!(
            "{:?}: {}",
            status.code(),
            status.message()
        )));
    }
}

impl GrpcParticipants {
    /// One RPC in a client span (`package.Service/Method`), whose context travels to the server
    /// in the request metadata.
    async fn call<Q, A, F, Fut>(
        &self,
        path: &'static str,
        message: Q,
        inject_failure: bool,
        send: F,
    ) -> Result<A, Status>
    where
        F: FnOnce(Request<Q>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<A>, Status>>,
    {
        use tracing::Instrument;
        use tracing_opentelemetry::OpenTelemetrySpanExt;

        let (service, method) = path.split_once('/').unwrap_or((path, ""));
        let span = tracing::info_span!(
            "grpc.client",
            otel.name = path,
            otel.kind = "client",
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        let mut request = self.request(message, inject_failure);
        saga_common::telemetry::inject(&span.context(), request.metadata_mut());
        let result = send(request).instrument(span.clone()).await;
        record_status(&span, &result);
        result.map(tonic::Response::into_inner)
    }
}

impl GrpcParticipants {
    async fn read_order(
        &self,
        target: order::get_order_request::Target,
    ) -> Result<order::Order, Status> {
        let message = order::GetOrderRequest {
            target: Some(target),
        };
        let mut client = self.order.clone();
        let path = "order.v1.OrderService/GetOrder";
        let reply = self
            .call(path, message, false, |r| async move {
                client.get_order(r).await
            })
            .await?;
        reply.order.ok_or_else(|| missing("order"))
    }
}

impl Participants for GrpcParticipants {
    async fn create_order(
        &self,
        request: order::CreateOrderRequest,
    ) -> Result<order::Order, Status> {
        let mut client = self.order.clone();
        let path = "order.v1.OrderService/CreateOrder";
        let reply = self
            .call(path, request, false, |r| async move {
                client.create_order(r).await
            })
            .await?;
        reply.order.ok_or_else(|| missing("order"))
    }

    async fn cancel_order(&self, order_id: &str, reason: &str) -> Result<order::Order, Status> {
        let message = order::CancelOrderRequest {
            order_id: order_id.to_owned(),
            reason: reason.to_owned(),
        };
        let mut client = self.order.clone();
        let path = "order.v1.OrderService/CancelOrder";
        let reply = self
            .call(path, message, false, |r| async move {
                client.cancel_order(r).await
            })
            .await?;
        reply.order.ok_or_else(|| missing("order"))
    }

    async fn approve_order(&self, order_id: &str) -> Result<order::Order, Status> {
        let message = order::ApproveOrderRequest {
            order_id: order_id.to_owned(),
        };
        let mut client = self.order.clone();
        let path = "order.v1.OrderService/ApproveOrder";
        let reply = self
            .call(path, message, false, |r| async move {
                client.approve_order(r).await
            })
            .await?;
        reply.order.ok_or_else(|| missing("order"))
    }

    async fn get_order(&self, order_id: &str) -> Result<order::Order, Status> {
        self.read_order(order::get_order_request::Target::OrderId(
            order_id.to_owned(),
        ))
        .await
    }

    async fn find_order(&self, idempotency_key: &str) -> Result<order::Order, Status> {
        self.read_order(order::get_order_request::Target::IdempotencyKey(
            idempotency_key.to_owned(),
        ))
        .await
    }

    async fn process_payment(
        &self,
        request: payment::ProcessPaymentRequest,
        inject_failure: bool,
    ) -> Result<payment::Payment, Status> {
        let mut client = self.payment.clone();
        let path = "payment.v1.PaymentService/ProcessPayment";
        let reply = self
            .call(path, request, inject_failure, |r| async move {
                client.process_payment(r).await
            })
            .await?;
        reply.payment.ok_or_else(|| missing("payment"))
    }

    async fn refund_payment(&self, by: &By) -> Result<payment::Payment, Status> {
        let message = payment::RefundPaymentRequest {
            target: Some(refund_target(by)),
        };
        let mut client = self.payment.clone();
        let path = "payment.v1.PaymentService/RefundPayment";
        let reply = self
            .call(path, message, false, |r| async move {
                client.refund_payment(r).await
            })
            .await?;
        reply.payment.ok_or_else(|| missing("payment"))
    }

    async fn get_payment(&self, by: &By) -> Result<payment::Payment, Status> {
        let message = payment::GetPaymentRequest {
            target: Some(get_payment_target(by)),
        };
        let mut client = self.payment.clone();
        let path = "payment.v1.PaymentService/GetPayment";
        let reply = self
            .call(path, message, false, |r| async move {
                client.get_payment(r).await
            })
            .await?;
        reply.payment.ok_or_else(|| missing("payment"))
    }

    async fn start_shipping(
        &self,
        request: shipping::StartShippingRequest,
        inject_failure: bool,
    ) -> Result<shipping::Shipment, Status> {
        let mut client = self.shipping.clone();
        let path = "shipping.v1.ShippingService/StartShipping";
        let reply = self
            .call(path, request, inject_failure, |r| async move {
                client.start_shipping(r).await
            })
            .await?;
        reply.shipment.ok_or_else(|| missing("shipment"))
    }

    async fn cancel_shipping(&self, by: &By) -> Result<shipping::Shipment, Status> {
        let message = shipping::CancelShippingRequest {
            target: Some(cancel_target(by)),
        };
        let mut client = self.shipping.clone();
        let path = "shipping.v1.ShippingService/CancelShipping";
        let reply = self
            .call(path, message, false, |r| async move {
                client.cancel_shipping(r).await
            })
            .await?;
        reply.shipment.ok_or_else(|| missing("shipment"))
    }

    async fn get_shipment(&self, by: &By) -> Result<shipping::Shipment, Status> {
        let message = shipping::GetShipmentRequest {
            target: Some(get_shipment_target(by)),
        };
        let mut client = self.shipping.clone();
        let path = "shipping.v1.ShippingService/GetShipment";
        let reply = self
            .call(path, message, false, |r| async move {
                client.get_shipment(r).await
            })
            .await?;
        reply.shipment.ok_or_else(|| missing("shipment"))
    }
}
