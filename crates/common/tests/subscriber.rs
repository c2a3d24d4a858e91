//! What [`saga_common::telemetry::init`] installs, checked in a child process: the subscriber
//! is global, read from the environment once, and each case wants its own environment.
#![allow(clippy::expect_used)]

use std::process::Command;

/// Runs the test `name` of this binary again in a child with `env`, where it does its checks.
fn in_child(name: &str, env: &[(&str, &str)]) {
    if child() {
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

/// With trace export on, a span inside an unsampled trace is not built either; outside one it is.
#[test]
fn inside_an_unsampled_trace_no_span_is_built() {
    in_child(
        "inside_an_unsampled_trace_no_span_is_built",
        &[
            ("LOG_FORMAT", "json"),
            // Nothing listens there; no span is exported by this test anyway.
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
            ("OTEL_TRACES_SAMPLER", "always_off"),
        ],
    );
    if child() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let _telemetry = saga_common::telemetry::init("subscriber-test");
            let context = match saga_common::telemetry::root(None, "saga") {
                saga_common::telemetry::Root::Unsampled(context) => context,
                saga_common::telemetry::Root::Traced => panic!("always_off traced a root"),
            };
            let (built, logged) = saga_common::telemetry::unsampled(context, async {
                (
                    !tracing::info_span!("saga.step").is_disabled(),
                    tracing::enabled!(tracing::Level::INFO),
                )
            })
            .await;
            assert!(!built, "a span was built inside an unsampled trace");
            assert!(logged, "its log lines are still written");
            assert!(!tracing::info_span!("outside").is_disabled());
            // Nothing below INFO is even looked at (h2 and hyper trace a lot below it).
            assert_eq!(
                tracing::level_filters::LevelFilter::current(),
                tracing::level_filters::LevelFilter::INFO
            );
            assert!(tracing::debug_span!("below").is_disabled());
        });
    }
}
