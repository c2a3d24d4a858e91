//! The Create Order saga orchestrator.
//!
//! `saga` drives one saga and its compensations over any [`Participants`] (unit-tested over
//! `fake`); `grpc` is the real implementation over tonic; `retry` is the backoff policy;
//! `verify` reads participants' state back and checks it against the saga's outcome; `report`
//! renders results; `stats` sums a batch up; `runner` runs batches; `settings` loads the
//! configuration; `recover` settles orders left PENDING and audits the whole store; `cli` parses the command line and `cmd` holds one module per subcommand.

pub mod cli;
pub mod cmd;
#[cfg(test)]
mod fake;
pub mod grpc;
pub mod metrics;
pub mod participants;
pub mod recover;
pub mod report;
pub mod retry;
pub mod runner;
pub mod saga;
pub mod settings;
pub mod stats;
pub mod verify;

pub use participants::Participants;
pub use report::{Outcome, SagaReport};
pub use saga::{SagaPlan, Scenario};
pub use settings::OrchestratorSettings;
