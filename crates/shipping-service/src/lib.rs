//! The shipping service: at most one shipment per order, cancelled on compensation.
//! `shipments` is the domain (where a shipment starts, fails or is cancelled),
//! `api` the gRPC adapter.

pub mod api;
pub mod shipments;

pub use api::ShippingApi;

/// Settings of the shipping service: `SHIPPING_*` variables.
pub type ShippingSettings = saga_common::settings::ServiceSettings<
    saga_common::faults::BusinessFaults,
    saga_store::StoreSettings,
>;

/// The port the service listens on unless `listen_addr` says otherwise.
pub const DEFAULT_PORT: u16 = 50053;

/// The port of `GET /metrics` unless `metrics_listen_addr` says otherwise.
pub const DEFAULT_METRICS_PORT: u16 = 9093;

/// Both default ports.
pub const DEFAULT_PORTS: saga_common::server::DefaultPorts = saga_common::server::DefaultPorts {
    grpc: DEFAULT_PORT,
    metrics: DEFAULT_METRICS_PORT,
};
