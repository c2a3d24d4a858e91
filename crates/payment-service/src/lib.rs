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
