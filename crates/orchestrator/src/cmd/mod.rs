//! One module per subcommand of `saga-orchestrator`.
pub mod audit;
pub mod recover;
pub mod run;
pub mod verify;
