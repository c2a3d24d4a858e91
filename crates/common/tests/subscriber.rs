//! What [`saga_common::telemetry::init`] installs, checked in a child process: the subscriber
//! is global, read from the environment once, and each case wants its own environment.
#![allow(clippy::expect_used)]

use std::process::Command;

/// Runs the test `name` of this binary again in a child with `env`, where it does its checks.
fn in_child(name: &str, env: &[(&str, &str)]) {
    if std::env::var_os("SUBSCRIBER_CHILD").is_some() {
        return;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let output = Command::new(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env("SUBSCRIBER_CHILD", "1")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_TRACES_EXPORTER")
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .output()
        .expect("the test binary runs");
    assert!(
        output.status.success() && String::from_utf8_lossy(&output.stdout).contains("1 passed"),
        "child {name}: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn child() -> bool {
    std::env::var_os("SUBSCRIBER_CHILD").is_some()
}

/// With no trace export, JSON logs take events only: no span is built at all, ours or tonic's,
/// so a saga pays nothing for the spans it declares.
#[test]
fn without_trace_export_no_span_is_built() {
    in_child(
        "without_trace_export_no_span_is_built",
        &[("LOG_FORMAT", "json")],
    );
    if child() {
        let _telemetry = saga_common::telemetry::init("subscriber-test");
        assert!(tracing::info_span!("saga").is_disabled());
        assert!(tracing::warn_span!("saga").is_disabled());
        assert!(tracing::enabled!(tracing::Level::INFO));
        assert!(!tracing::enabled!(tracing::Level::DEBUG));
    }
}

/// Readable logs on a terminal name the spans an event happened in, so there they are built.
#[test]
fn text_logs_build_spans_for_their_context() {
    in_child(
        "text_logs_build_spans_for_their_context",
        &[("LOG_FORMAT", "text")],
    );
    if child() {
        let _telemetry = saga_common::telemetry::init("subscriber-test");
        assert!(!tracing::info_span!("saga").is_disabled());
        assert!(tracing::debug_span!("saga").is_disabled());
    }
}
