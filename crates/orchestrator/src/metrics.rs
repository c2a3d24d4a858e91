//! The orchestrator's metrics (exported over OTLP when configured; no-ops otherwise): sagas by
//! outcome and their duration, step attempts and retries, compensations by step, and the stuck
//! sagas `recover` and `audit` found. Attributes are static strings: recording allocates
//! nothing beyond what the SDK needs.
use std::sync::LazyLock;

use opentelemetry::metrics::{Counter, Gauge, Histogram};
use opentelemetry::{Key, KeyValue};
use saga_common::telemetry::metrics::{DURATION_BOUNDS, meter};

use crate::report::Outcome;

struct Instruments {
    runs: Counter<u64>,
    duration: Histogram<f64>,
    attempts: Counter<u64>,
    retries: Counter<u64>,
    compensations: Counter<u64>,
    stuck: Gauge<u64>,
}

/// Made on first use, after `main` installed the meter provider.
static INSTRUMENTS: LazyLock<Instruments> = LazyLock::new(|| {
    let meter = meter();
    Instruments {
        runs: meter
            .u64_counter("saga.runs")
            .with_description("Sagas run to their end, by outcome")
            .build(),
        duration: meter
            .f64_histogram("saga.duration")
            .with_unit("s")
            .with_description("Duration of sagas, compensations included, by outcome")
            .with_boundaries(DURATION_BOUNDS.to_vec())
            .build(),
        attempts: meter
            .u64_counter("saga.step.attempts")
            .with_description("Calls made by saga steps, retries included")
            .build(),
        retries: meter
            .u64_counter("saga.step.retries")
            .with_description("Calls made by saga steps beyond their first")
            .build(),
        compensations: meter
            .u64_counter("saga.compensations")
            .with_description("Compensating steps run, by step and result")
            .build(),
        stuck: meter
            .u64_gauge("saga.stuck")
            .with_description(
                "Sagas found PENDING past the grace period by the last recover or audit",
            )
            .build(),
    }
});

fn kv(key: &'static str, value: &'static str) -> KeyValue {
    KeyValue::new(Key::from_static_str(key), value)
}

/// One saga ended (run or settled).
pub fn saga(outcome: Outcome, seconds: f64) {
    let attributes = [kv("saga.outcome", outcome.name())];
    INSTRUMENTS.runs.add(1, &attributes);
    INSTRUMENTS.duration.record(seconds, &attributes);
}

/// One step ended after `attempts` calls; `ok` says whether it succeeded.
pub fn step(step: &'static str, compensation: bool, attempts: u32, ok: bool) {
    let attributes = [
        kv("saga.step", step),
        KeyValue::new(Key::from_static_str("saga.compensation"), compensation),
    ];
    INSTRUMENTS.attempts.add(u64::from(attempts), &attributes);
    if attempts > 1 {
        INSTRUMENTS
            .retries
            .add(u64::from(attempts - 1), &attributes);
    }
    if compensation {
        let result = if ok { "ok" } else { "error" };
        INSTRUMENTS
            .compensations
            .add(1, &[kv("saga.step", step), kv("result", result)]);
    }
}

/// What `recover` (`command` = `recover`) or `audit` found stuck.
pub fn stuck(command: &'static str, sagas: u64) {
    INSTRUMENTS
        .stuck
        .record(sagas, &[kv("saga.command", command)]);
}
