//! What every order-saga binary needs, in one small crate: settings, logs and traces, the gRPC
//! server bootstrap (health, reflection, graceful shutdown), injected faults, ids, input checks
//! and the error-to-status table. The stores are in `saga-store`, which only the services link.

pub mod config;
pub mod error;
pub mod faults;
pub mod ids;
pub mod server;
pub mod settings;
pub mod shutdown;
pub mod telemetry;
pub mod time;
pub mod validate;

pub use error::{Classify, ErrorKind};
pub use ids::IdKind;
