//! Runs a batch of sagas with bounded concurrency and checks each one afterwards.
use std::sync::Arc;

use saga_proto::order::v1::LineItem;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::participants::Participants;
use crate::report::SagaReport;
use crate::saga::{Saga, SagaPlan, Scenario};
use crate::settings::OrchestratorSettings;

/// A batch: which scenarios, in which order, how many at once.
#[derive(Debug, Clone)]
pub struct Batch {
    pub run_id: String,
    pub scenarios: Vec<Scenario>,
    pub concurrency: usize,
    /// Read each saga's participants back afterwards.
    pub verify: bool,
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
    pub fn plan(&self, index: usize, settings: &OrchestratorSettings) -> SagaPlan {
        SagaPlan {
            saga_id: format!("{}-{index}", self.run_id),
            scenario: self.scenarios[index],
            user_id: settings.user_id.clone(),
            currency: "EUR".into(),
            items: demo_items(),
            address: settings.shipping_address.clone(),
        }
    }

    /// Runs every saga and hands each report to `done` as it finishes, then returns them all
    /// in saga order.
    pub async fn run<P: Participants + 'static>(
        &self,
        participants: Arc<P>,
        settings: Arc<OrchestratorSettings>,
        mut done: impl FnMut(&SagaReport),
    ) -> Vec<SagaReport> {
        let permits = Arc::new(Semaphore::new(self.concurrency.max(1)));
        let mut tasks = JoinSet::new();
        let mut reports: Vec<Option<SagaReport>> = vec![None; self.scenarios.len()];
        for index in 0..self.scenarios.len() {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let plan = self.plan(index, &settings);
            let (participants, settings, verify) =
                (participants.clone(), settings.clone(), self.verify);
            tasks.spawn(async move {
                let _permit = permit;
                let saga = Saga {
                    participants: participants.as_ref(),
                    retry: &settings.retry,
                    compensation_retry: &settings.compensation_retry,
                    verify,
                };
                (index, saga.run(&plan).await)
            });
            while let Some(Ok((index, report))) = tasks.try_join_next() {
                done(&report);
                reports[index] = Some(report);
            }
        }
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((index, report)) => {
                    done(&report);
                    reports[index] = Some(report);
                }
                Err(err) => tracing::error!(%err, "a saga task panicked"),
            }
        }
        reports.into_iter().flatten().collect()
    }
}
