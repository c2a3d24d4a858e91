//! The order service: orders are PENDING while their saga runs, then APPROVED or CANCELLED.
//! `orders` is the domain (plain Rust), `api` the gRPC adapter.

pub mod api;
pub mod orders;

pub use api::OrderApi;

/// Settings of the order service: `ORDER_*` variables.
pub type OrderSettings = saga_common::settings::ServiceSettings<
    saga_common::faults::TransientFaults,
    saga_store::StoreSettings,
>;

/// The port the service listens on unless `listen_addr` says otherwise.
pub const DEFAULT_PORT: u16 = 50051;

/// The port of `GET /metrics` unless `metrics_listen_addr` says otherwise.
pub const DEFAULT_METRICS_PORT: u16 = 9091;

/// Both default ports.
pub const DEFAULT_PORTS: saga_common::server::DefaultPorts = saga_common::server::DefaultPorts {
    grpc: DEFAULT_PORT,
    metrics: DEFAULT_METRICS_PORT,
};
