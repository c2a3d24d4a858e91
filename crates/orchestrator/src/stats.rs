//! Batch figures: throughput, latency percentiles per outcome (HdrHistogram), retries, errors.
use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::report::{Outcome, SagaReport};

/// Latency of a group of sagas, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The figures of a finished batch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub run_id: String,
    pub sagas: u64,
    pub completed: u64,
    pub compensated: u64,
    pub failed: u64,
    pub inconsistent: u64,
    /// Sagas that did not report (a task that panicked).
    pub missing: u64,
    pub verified: u64,
    pub elapsed_secs: f64,
    pub sagas_per_sec: f64,
    /// Attempts beyond the first, over all steps.
    pub retries: u64,
    /// Steps that ended in an error (after their retries).
    pub step_errors: u64,
    pub latency: Latency,
    pub latency_by_outcome: BTreeMap<String, Latency>,
    /// Sagas per latency bucket ([`BUCKETS_MS`]) per outcome, for the text histogram.
    #[serde(skip)]
    pub buckets_by_outcome: BTreeMap<String, Vec<u64>>,
}

/// Upper bounds (exclusive) of the histogram's buckets in milliseconds, log-spaced 1-2-5; the
/// last bucket holds everything beyond.
pub const BUCKETS_MS: [u64; 15] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000,
];

/// Sagas of `h` (microseconds) in each bucket of [`BUCKETS_MS`], one more for the overflow.
fn buckets(h: &Histogram<u64>) -> Vec<u64> {
    let mut low = 0;
    let mut counts: Vec<u64> = BUCKETS_MS
        .iter()
        .map(|&high_ms| {
            let high = high_ms * 1000;
            let count = h.count_between(low, high - 1);
            low = high;
            count
        })
        .collect();
    counts.push(h.count_between(low, u64::MAX));
    counts
}

/// The width of the longest bar, in characters.
const BAR_WIDTH: usize = 40;

/// A bar `count / max` of [`BAR_WIDTH`], in eighths of a block.
fn bar(count: u64, max: u64) -> String {
    const EIGHTHS: [char; 8] = [' ', '▏', '▎', '▍', '▌', '▋', '▊', '▉'];
    if max == 0 || count == 0 {
        return String::new();
    }
    let eighths = (count * BAR_WIDTH as u64 * 8).div_ceil(max);
    let full = usize::try_from(eighths / 8).unwrap_or(BAR_WIDTH);
    let mut text = "█".repeat(full);
    let rest = usize::try_from(eighths % 8).unwrap_or(0);
    if rest > 0 {
        text.push(EIGHTHS[rest]);
    }
    text
}

/// A bucket's label: `< 1 ms`, `1-2`, … `≥ 60000`.
fn bucket_label(index: usize) -> String {
    match (
        index.checked_sub(1).map(|i| BUCKETS_MS[i]),
        BUCKETS_MS.get(index),
    ) {
        (None, Some(high)) => format!("< {high}"),
        (Some(low), Some(high)) => format!("{low}-{high}"),
        (Some(low), None) => format!(">= {low}"),
        (None, None) => String::new(),
    }
}

/// Collects saga reports as they finish.
#[derive(Debug)]
pub struct Stats {
    all: Histogram<u64>,
    by_outcome: BTreeMap<String, Histogram<u64>>,
    completed: u64,
    compensated: u64,
    failed: u64,
    inconsistent: u64,
    verified: u64,
    retries: u64,
    step_errors: u64,
}

/// Microseconds from 1 µs to an hour, 3 significant digits.
#[allow(clippy::expect_used)]
fn histogram() -> Histogram<u64> {
    // Constant, valid bounds: this cannot fail.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

fn latency(h: &Histogram<u64>) -> Latency {
    let ms = |us: u64| us as f64 / 1000.0;
    Latency {
        count: h.len(),
        p50_ms: ms(h.value_at_quantile(0.50)),
        p90_ms: ms(h.value_at_quantile(0.90)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        max_ms: ms(h.max()),
    }
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            all: histogram(),
            by_outcome: BTreeMap::new(),
            completed: 0,
            compensated: 0,
            failed: 0,
            inconsistent: 0,
            verified: 0,
            retries: 0,
            step_errors: 0,
        }
    }
}

impl Stats {
    pub fn record(&mut self, report: &SagaReport) {
        let micros = report.duration_us.max(1);
        let _ = self.all.record(micros);
        let outcome = serde_json::to_value(report.outcome)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let _ = self
            .by_outcome
            .entry(outcome)
            .or_insert_with(histogram)
            .record(micros);
        match report.outcome {
            Outcome::Completed => self.completed += 1,
            o if o.is_compensated() => self.compensated += 1,
            _ => self.failed += 1,
        }
        if let Some(consistency) = &report.consistency {
            self.verified += 1;
            if !consistency.consistent {
                self.inconsistent += 1;
            }
        }
        for step in &report.steps {
            self.retries += u64::from(step.attempts.saturating_sub(1));
            if step.result == "error" {
                self.step_errors += 1;
            }
        }
    }

    pub fn summary(&self, run_id: &str, expected: u64, elapsed: Duration) -> Summary {
        let sagas = self.all.len();
        let secs = elapsed.as_secs_f64();
        Summary {
            run_id: run_id.to_owned(),
            sagas,
            completed: self.completed,
            compensated: self.compensated,
            failed: self.failed,
            inconsistent: self.inconsistent,
            missing: expected.saturating_sub(sagas),
            verified: self.verified,
            elapsed_secs: secs,
            sagas_per_sec: if secs > 0.0 { sagas as f64 / secs } else { 0.0 },
            retries: self.retries,
            step_errors: self.step_errors,
            latency: latency(&self.all),
            latency_by_outcome: self
                .by_outcome
                .iter()
                .map(|(outcome, h)| (outcome.clone(), latency(h)))
                .collect(),
            buckets_by_outcome: self
                .by_outcome
                .iter()
                .map(|(outcome, h)| (outcome.clone(), buckets(h)))
                .collect(),
        }
    }
}

impl Summary {
    /// Every saga settled, none inconsistent, none missing.
    pub fn is_ok(&self) -> bool {
        self.failed == 0 && self.inconsistent == 0 && self.missing == 0
    }

    /// The one-line verdict.
    pub fn headline(&self) -> String {
        format!(
            "run {}: {} sagas, {} completed, {} compensated, {} failed, {} inconsistent",
            self.run_id,
            self.sagas,
            self.completed,
            self.compensated,
            self.failed,
            self.inconsistent
        )
    }

    /// The verdict and the figures, as a small table.
    pub fn to_text(&self) -> String {
        let mut text = format!(
            "{}\n  {:.2} s, {:.1} sagas/s, {} retries, {} step errors, {} verified\n",
            self.headline(),
            self.elapsed_secs,
            self.sagas_per_sec,
            self.retries,
            self.step_errors,
            self.verified
        );
        text.push_str(&format!(
            "  {:<16} {:>8} {:>9} {:>9} {:>9} {:>9}\n",
            "latency (ms)", "sagas", "p50", "p90", "p99", "max"
        ));
        let rows = std::iter::once(("all", &self.latency))
            .chain(self.latency_by_outcome.iter().map(|(k, v)| (k.as_str(), v)));
        for (name, l) in rows {
            text.push_str(&format!(
                "  {:<16} {:>8} {:>9.2} {:>9.2} {:>9.2} {:>9.2}\n",
                name, l.count, l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
            ));
        }
        text.push_str(&self.histogram());
        text
    }

    /// Latency histograms, one per outcome, drawn with block characters over the same buckets:
    /// from the first bucket any saga fell in to the last.
    pub fn histogram(&self) -> String {
        let used = |counts: &Vec<u64>| counts.iter().position(|c| *c > 0);
        let first = self.buckets_by_outcome.values().filter_map(used).min();
        let last = self
            .buckets_by_outcome
            .values()
            .filter_map(|counts| counts.iter().rposition(|c| *c > 0))
            .max();
        let (Some(first), Some(last)) = (first, last) else {
            return String::new();
        };
        let mut text = String::from("  latency histogram (ms)\n");
        for (outcome, counts) in &self.buckets_by_outcome {
            let total: u64 = counts.iter().sum();
            let max = counts.iter().copied().max().unwrap_or(0);
            text.push_str(&format!("  {outcome} ({total} sagas)\n"));
            for (index, count) in counts.iter().enumerate().take(last + 1).skip(first) {
                text.push_str(&format!(
                    "  {:>13} │{:<width$} {}\n",
                    bucket_label(index),
                    bar(*count, max),
                    count,
                    width = BAR_WIDTH
                ));
            }
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::saga::Scenario;

    fn report(outcome: Outcome, micros: u64) -> SagaReport {
        let mut report = SagaReport::new("s".into(), Scenario::Success);
        report.outcome = outcome;
        report.duration_us = micros;
        report
    }

    #[test]
    fn percentiles_per_outcome() {
        let mut stats = Stats::default();
        for i in 1..=100 {
            stats.record(&report(Outcome::Completed, i * 1000));
        }
        stats.record(&report(Outcome::PaymentFailed, 5000));
        stats.record(&report(Outcome::Failed, 7000));
        let summary = stats.summary("r", 103, Duration::from_secs(2));
        assert_eq!(
            (
                summary.sagas,
                summary.completed,
                summary.compensated,
                summary.failed
            ),
            (102, 100, 1, 1)
        );
        assert_eq!(summary.missing, 1);
        assert!(!summary.is_ok());
        assert!((summary.sagas_per_sec - 51.0).abs() < 1e-9);
        let completed = &summary.latency_by_outcome["completed"];
        assert!((completed.p50_ms - 50.0).abs() < 0.1, "{completed:?}");
        assert!((completed.p99_ms - 99.0).abs() < 0.1, "{completed:?}");
        assert!((completed.max_ms - 100.0).abs() < 0.1, "{completed:?}");
        assert!(summary.to_text().contains("payment_failed"));
    }

    #[test]
    fn histogram_draws_a_bar_per_bucket_and_outcome() {
        let mut stats = Stats::default();
        // 10 completed sagas at 3 ms, 5 at 7 ms, 1 at 150 ms; 2 compensated at 15 ms.
        for _ in 0..10 {
            stats.record(&report(Outcome::Completed, 3_000));
        }
        for _ in 0..5 {
            stats.record(&report(Outcome::Completed, 7_000));
        }
        stats.record(&report(Outcome::Completed, 150_000));
        stats.record(&report(Outcome::PaymentFailed, 15_000));
        stats.record(&report(Outcome::PaymentFailed, 15_000));
        let summary = stats.summary("r", 18, Duration::from_secs(1));
        let text = summary.histogram();
        let lines: Vec<&str> = text.lines().collect();
        // From the 2-5 ms bucket to the 100-200 ms one: 6 buckets per outcome.
        assert_eq!(lines.len(), 1 + 2 * (1 + 6), "{text}");
        assert_eq!(lines[1], "  completed (16 sagas)");
        let full = "█".repeat(BAR_WIDTH);
        assert_eq!(lines[2], format!("  {:>13} │{full} 10", "2-5"));
        assert_eq!(
            lines[3],
            format!("  {:>13} │{:<40} 5", "5-10", "█".repeat(20))
        );
        assert_eq!(lines[4], format!("  {:>13} │{:<40} 0", "10-20", ""));
        assert_eq!(lines[7], format!("  {:>13} │{:<40} 1", "100-200", "████"));
        assert_eq!(lines[8], "  payment_failed (2 sagas)");
        assert_eq!(lines[11], format!("  {:>13} │{full} 2", "10-20"));
        assert!(summary.to_text().ends_with(&text));
        // Eighths of a block: 1 of 3 is 13.3 blocks, drawn 13 and 3/8.
        assert_eq!(bar(1, 3), format!("{}▍", "█".repeat(13)));
        assert_eq!(bar(0, 3), "");
        assert_eq!(bucket_label(0), "< 1");
        assert_eq!(bucket_label(BUCKETS_MS.len()), ">= 60000");
        assert_eq!(
            Summary {
                buckets_by_outcome: BTreeMap::new(),
                ..summary
            }
            .histogram(),
            ""
        );
    }
}
