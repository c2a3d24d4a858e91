//! One module per subcommand of `saga-orchestrator`.
pub mod run;
pub mod verify;
