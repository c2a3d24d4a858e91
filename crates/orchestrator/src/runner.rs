//! Runs a batch of sagas with bounded concurrency: which scenario each saga plays, which part of
//! the batch this process runs (a Kubernetes Indexed Job shards it), and which sagas are read
//! back afterwards.
use std::ops::Range;
use std::sync::Arc;

use saga_proto::order::v1::LineItem;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::participants::Participants;
use crate::report::SagaReport;
use crate::saga::{Saga, SagaPlan, Scenario};
use crate::settings::OrchestratorSettings;

/// Which scenario saga `index` plays.
#[derive(Debug, Clone, PartialEq)]
pub enum Scenarios {
    /// The list over and over: `[Success]` for `--scenario success`, all three for `all`.
    Cycle(Vec<Scenario>),
    /// A weighted random mix, the same for every run with the same seed, so that a rerun or
    /// another shard agrees on what saga `index` is.
    Mix {
        weights: Vec<(Scenario, u32)>,
        seed: u64,
    },
}

/// SplitMix64: a well-mixed 64-bit hash of `x`.
fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A number in [0, 1) fixed by `seed` and `index`.
fn unit(seed: u64, index: u64) -> f64 {
    (mix64(seed ^ mix64(index)) >> 11) as f64 / (1u64 << 53) as f64
}

impl Scenarios {
    pub fn at(&self, index: u64) -> Scenario {
        match self {
            Scenarios::Cycle(list) => {
                let len = list.len().max(1) as u64;
                list.get((index % len) as usize)
                    .copied()
                    .unwrap_or(Scenario::Success)
            }
            Scenarios::Mix { weights, seed } => {
                let total: u64 = weights.iter().map(|(_, w)| u64::from(*w)).sum();
                let mut pick = mix64(seed ^ mix64(index)) % total.max(1);
                for (scenario, weight) in weights {
                    if pick < u64::from(*weight) {
                        return *scenario;
                    }
                    pick -= u64::from(*weight);
                }
                Scenario::Success
            }
        }
    }

    /// Parses `success=80,payment-failure=10,shipping-failure=10`.
    pub fn parse_mix(text: &str, seed: u64) -> Result<Self, String> {
        let mut weights = Vec::new();
        for part in text.split(',').filter(|p| !p.trim().is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("'{part}' should look like success=80"))?;
            let scenario = <Scenario as clap::ValueEnum>::from_str(name.trim(), true)
                .map_err(|_| format!("unknown scenario '{}' in --mix", name.trim()))?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("weight of {} must be a whole number", name.trim()))?;
            weights.push((scenario, weight));
        }
        if weights.iter().all(|(_, w)| *w == 0) {
            return Err("--mix needs at least one positive weight".into());
        }
        Ok(Scenarios::Mix { weights, seed })
    }
}

/// A stable 64-bit seed from a run id.
pub fn seed_of(run_id: &str) -> u64 {
    run_id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The part `index` of `count` sagas split over `shards`: contiguous and covering everything.
pub fn shard(count: u64, index: u64, shards: u64) -> Range<u64> {
    let shards = shards.max(1);
    let index = index.min(shards - 1);
    let start = count * index / shards;
    let end = count * (index + 1) / shards;
    start..end
}

/// A batch: which sagas, playing what, how many at once, which ones are read back.
#[derive(Debug, Clone)]
pub struct Batch {
    pub run_id: String,
    pub scenarios: Scenarios,
    /// The saga indices this process runs.
    pub range: Range<u64>,
    pub concurrency: usize,
    /// Fraction of sagas read back afterwards (1: all, 0: none).
    pub verify_sample: f64,
}

/// The demo cart every saga orders.
pub fn demo_items() -> Vec<LineItem> {
    vec![
        LineItem {
            sku: "book-rust-in-action".into(),
            quantity: 1,
            unit_price_minor: 3999,
        },
        LineItem {
            sku: "mug-ferris".into(),
            quantity: 2,
            unit_price_minor: 1250,
        },
    ]
}

impl Batch {
    /// The plan of saga `index`: its id is the run id and the index, so a rerun of the same
    /// run addresses the same orders.
    pub fn plan(&self, index: u64, settings: &OrchestratorSettings) -> SagaPlan {
        SagaPlan {
            saga_id: format!("{}-{index}", self.run_id),
            scenario: self.scenarios.at(index),
            user_id: settings.user_id.clone(),
            currency: "EUR".into(),
            items: demo_items(),
            address: settings.shipping_address.clone(),
        }
    }

    pub fn len(&self) -> u64 {
        self.range.end.saturating_sub(self.range.start)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn verifies(&self, index: u64) -> bool {
        self.verify_sample >= 1.0
            || unit(seed_of(&self.run_id) ^ 0x5EED, index) < self.verify_sample
    }

    /// Runs every saga of the range and hands each report to `done` as it finishes. Reports
    /// are not kept: a batch of millions must not grow memory.
    pub async fn run<P: Participants + 'static>(
        &self,
        participants: Arc<P>,
        settings: Arc<OrchestratorSettings>,
        mut done: impl FnMut(SagaReport),
    ) {
        let permits = Arc::new(Semaphore::new(self.concurrency.max(1)));
        let mut tasks = JoinSet::new();
        for index in self.range.clone() {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let plan = self.plan(index, &settings);
            let verify = self.verifies(index);
            let (participants, settings) = (participants.clone(), settings.clone());
            tasks.spawn(async move {
                let _permit = permit;
                let saga = Saga {
                    participants: participants.as_ref(),
                    retry: &settings.retry,
                    compensation_retry: &settings.compensation_retry,
                    verify,
                };
                saga.run(&plan).await
            });
            while let Some(joined) = tasks.try_join_next() {
                finish(joined, &mut done);
            }
        }
        while let Some(joined) = tasks.join_next().await {
            finish(joined, &mut done);
        }
    }
}

fn finish(joined: Result<SagaReport, tokio::task::JoinError>, done: &mut impl FnMut(SagaReport)) {
    match joined {
        Ok(report) => done(report),
        // The summary counts it as missing.
        Err(err) => tracing::error!(%err, "a saga task panicked"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_everything_once() {
        for (count, shards) in [(10, 3), (3, 5), (1000, 7), (0, 2)] {
            let mut next = 0;
            for index in 0..shards {
                let range = shard(count, index, shards);
                assert_eq!(range.start, next);
                next = range.end;
            }
            assert_eq!(next, count);
        }
    }

    #[test]
    fn mix_is_deterministic_and_weighted() {
        let mix =
            Scenarios::parse_mix("success=80,payment-failure=10,shipping-failure=10", 7).unwrap();
        let again =
            Scenarios::parse_mix("success=80,payment-failure=10,shipping-failure=10", 7).unwrap();
        let picks: Vec<Scenario> = (0..10_000).map(|i| mix.at(i)).collect();
        assert!(
            picks
                .iter()
                .zip((0..10_000).map(|i| again.at(i)))
                .all(|(a, b)| *a == b)
        );
        let successes = picks.iter().filter(|s| **s == Scenario::Success).count();
        assert!((7_500..8_500).contains(&successes), "{successes}");
        assert!(Scenarios::parse_mix("nope=1", 1).is_err());
        assert!(Scenarios::parse_mix("success=x", 1).is_err());
        assert!(Scenarios::parse_mix("success=0", 1).is_err());
    }

    #[test]
    fn cycle_and_sampling() {
        let cycle = Scenarios::Cycle(Scenario::ALL.to_vec());
        assert_eq!(cycle.at(4), Scenario::PaymentFailure);
        let batch = Batch {
            run_id: "r".into(),
            scenarios: cycle,
            range: 0..10_000,
            concurrency: 1,
            verify_sample: 0.1,
        };
        let verified = (0..10_000).filter(|i| batch.verifies(*i)).count();
        assert!((800..1_200).contains(&verified), "{verified}");
    }
}
