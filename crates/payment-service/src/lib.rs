//! The payment service: at most one charge per order, refunded on compensation.
//! `payments` is the domain (where a payment is declined or refunded),
//! `api` the gRPC adapter.

pub mod api;
pub mod payments;

pub use api::PaymentApi;

/// Settings of the payment service: `PAYMENT_*` variables.
pub type PaymentSettings = saga_common::settings::ServiceSettings<
    saga_common::faults::BusinessFaults,
    saga_store::StoreSettings,
>;

/// The port the service listens on unless `listen_addr` says otherwise.
pub const DEFAULT_PORT: u16 = 50052;

/// The port of `GET /metrics` unless `metrics_listen_addr` says otherwise.
pub const DEFAULT_METRICS_PORT: u16 = 9092;

/// Both default ports.
pub const DEFAULT_PORTS: saga_common::server::DefaultPorts = saga_common::server::DefaultPorts {
    grpc: DEFAULT_PORT,
    metrics: DEFAULT_METRICS_PORT,
};
