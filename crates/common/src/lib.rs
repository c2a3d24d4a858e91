//! What every order-saga binary needs, in one small crate: settings, logs and traces, the gRPC
//! server bootstrap (health, reflection, graceful shutdown), injected faults, ids, input checks,
//! the repository trait and the error-to-status table.

mod client_trace;
pub mod config;
pub mod error;
pub mod faults;
pub mod ids;
pub mod server;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod validate;

pub use error::{Classify, ErrorKind};
pub use ids::IdKind;
pub use store::{MemoryRepository, Record, Repository, StoreError, Target};
