//! Logs (and, once exported, traces) for every binary.
//!
//! JSON lines when stderr (where logs go) is not a terminal or `LOG_FORMAT=json`, readable text on a terminal;
//! `RUST_LOG` filters (default `info`).
use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Keeps telemetry alive; dropping it flushes what is buffered.
#[must_use = "telemetry stops when the guard is dropped"]
#[derive(Debug)]
pub struct TelemetryGuard {
    _private: (),
}

/// Whether logs should be JSON lines.
pub fn json_logs() -> bool {
    match std::env::var("LOG_FORMAT") {
        Ok(format) if format.eq_ignore_ascii_case("json") => true,
        Ok(format) if format.eq_ignore_ascii_case("text") => false,
        _ => !std::io::stderr().is_terminal(),
    }
}

/// Installs the global subscriber for `service_name`. Logs go to stderr so that stdout stays
/// for a binary's real output (the orchestrator's report).
pub fn init(service_name: &str) -> TelemetryGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = if json_logs() {
        registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        registry
            .with(fmt::layer().with_writer(std::io::stderr).with_target(false))
            .try_init()
    };
    if result.is_err() {
        // Tests start several services in one process; the first subscriber wins.
        tracing::debug!(service_name, "tracing subscriber already installed");
    }
    TelemetryGuard { _private: () }
}
