//! Where the services keep their resources. Each record has an id and a unique key (an order's
//! idempotency key; a payment's or shipment's order id): the key is what makes the mutating calls
//! idempotent, because a second insert with the same key returns the first record.
//!
//! Three implementations: [`sqlite::SqliteRepository`] (the default: one file per service),
//! [`postgres::PgRepository`] (several replicas) and [`MemoryRepository`] (tests, throwaway
//! runs). The two SQL stores share everything but the talking to their database ([`sql`]).
//! [`Store`] is whichever [`StoreSettings`] chose.
use std::future::Future;

use saga_common::{Classify, ErrorKind};
use serde::Serialize;
use serde::de::DeserializeOwned;

mod memory;
pub mod postgres;
mod settings;
pub mod sql;
pub mod sqlite;

pub use memory::MemoryRepository;
pub use settings::{Backend, StoreSettings};

/// A stored resource.
pub trait Record: Clone + Send + Sync + Serialize + DeserializeOwned + 'static {
    /// The SQL table of this kind of record.
    const TABLE: &'static str;
    fn id(&self) -> &str;
    /// At most one record per key.
    fn key(&self) -> &str;
    /// The record's state (e.g. `pending`): an indexed column it can be listed by. Never empty.
    fn status(&self) -> &'static str;
    /// When the record last changed, in microseconds since the Unix epoch: the other indexed
    /// column, and the order of a listing.
    fn updated_at(&self) -> i64;
}

/// Which records to list, a page at a time, in `(updated_at, id)` order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// Only records in this state.
    pub status: Option<&'static str>,
    /// Only records last updated strictly before this (microseconds since the epoch).
    pub updated_before: Option<i64>,
    /// Only records after this `(updated_at, id)`: where the previous page ended.
    pub after: Option<(i64, String)>,
    /// At most this many.
    pub limit: usize,
}

impl ListQuery {
    /// Whether `record` belongs in the listing (the in-memory store filters with it).
    pub fn matches<R: Record>(&self, record: &R) -> bool {
        let position = (record.updated_at(), record.id());
        self.status.is_none_or(|status| record.status() == status)
            && self
                .updated_before
                .is_none_or(|before| record.updated_at() < before)
            && self
                .after
                .as_ref()
                .is_none_or(|(at, id)| position > (*at, id.as_str()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or refused the write: nothing was decided, try again.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A row that does not decode: retrying reads the same bytes, so only a person can fix it.
    #[error(
        "a stored record cannot be read ({0}); it was written by an incompatible version or changed outside the service: repair the row or restore the database"
    )]
    Corrupt(String),
}

impl Classify for StoreError {
    fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Unavailable(_) => ErrorKind::Unavailable,
            StoreError::Corrupt(_) => ErrorKind::DataLoss,
        }
    }
}

/// Storage for one kind of record. Implementations make each call atomic.
pub trait Repository<R: Record>: Send + Sync {
    /// Stores `record` unless one with the same key exists. Returns the stored record and
    /// whether it is the one just inserted.
    fn insert_or_get(
        &self,
        record: R,
    ) -> impl Future<Output = Result<(R, bool), StoreError>> + Send;
    fn get(&self, id: &str) -> impl Future<Output = Result<Option<R>, StoreError>> + Send;
    fn get_by_key(&self, key: &str) -> impl Future<Output = Result<Option<R>, StoreError>> + Send;
    /// Applies `transition` to record `id` atomically (`Ok(None)` from it keeps the record as
    /// it is); `Ok(None)` if there is no such record.
    fn update<E, F>(
        &self,
        id: &str,
        transition: F,
    ) -> impl Future<Output = Result<Option<R>, E>> + Send
    where
        E: From<StoreError> + Send,
        F: FnMut(&R) -> Result<Option<R>, E> + Send;
    /// Every record, for read-back checks and tests.
    fn all(&self) -> impl Future<Output = Result<Vec<R>, StoreError>> + Send;
    /// A page of the records `query` selects, in `(updated_at, id)` order, through the index
    /// on those columns (and `status`).
    fn list(&self, query: &ListQuery) -> impl Future<Output = Result<Vec<R>, StoreError>> + Send;
}

/// How a payment or shipment is named in a request: by its own id, or by its order (the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Id(String),
    Key(String),
}

/// Looks a record up by id or by key.
pub async fn find<R: Record>(
    repo: &impl Repository<R>,
    target: &Target,
) -> Result<Option<R>, StoreError> {
    match target {
        Target::Id(id) => repo.get(id).await,
        Target::Key(key) => repo.get_by_key(key).await,
    }
}

/// The repository the settings chose.
#[derive(Debug)]
pub enum Store<R> {
    Memory(MemoryRepository<R>),
    Sqlite(sqlite::SqliteRepository<R>),
    Postgres(postgres::PgRepository<R>),
}

impl<R> Default for Store<R> {
    fn default() -> Self {
        Store::Memory(MemoryRepository::default())
    }
}

/// Forwards a call to the repository the store holds: `dispatch!(self, repo => repo.get(id))`.
macro_rules! dispatch {
    ($store:expr, $repo:ident => $call:expr) => {
        match $store {
            Store::Memory($repo) => $call.await,
            Store::Sqlite($repo) => $call.await,
            Store::Postgres($repo) => $call.await,
        }
    };
}

impl<R: Record> Repository<R> for Store<R> {
    async fn insert_or_get(&self, record: R) -> Result<(R, bool), StoreError> {
        dispatch!(self, repo => repo.insert_or_get(record))
    }

    async fn get(&self, id: &str) -> Result<Option<R>, StoreError> {
        dispatch!(self, repo => repo.get(id))
    }

    async fn get_by_key(&self, key: &str) -> Result<Option<R>, StoreError> {
        dispatch!(self, repo => repo.get_by_key(key))
    }

    async fn update<E, F>(&self, id: &str, transition: F) -> Result<Option<R>, E>
    where
        E: From<StoreError> + Send,
        F: FnMut(&R) -> Result<Option<R>, E> + Send,
    {
        dispatch!(self, repo => repo.update(id, transition))
    }

    async fn all(&self) -> Result<Vec<R>, StoreError> {
        dispatch!(self, repo => repo.all())
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<R>, StoreError> {
        dispatch!(self, repo => repo.list(query))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
    pub struct Item {
        pub id: String,
        pub key: String,
        pub n: u32,
    }
    impl Record for Item {
        const TABLE: &'static str = "items";
        fn id(&self) -> &str {
            &self.id
        }
        fn key(&self) -> &str {
            &self.key
        }
        fn status(&self) -> &'static str {
            if self.n.is_multiple_of(2) {
                "even"
            } else {
                "odd"
            }
        }
        fn updated_at(&self) -> i64 {
            i64::from(self.n)
        }
    }
    pub fn item(id: &str, key: &str) -> Item {
        Item {
            id: id.into(),
            key: key.into(),
            n: 0,
        }
    }

    /// The contract every repository keeps; run against each implementation.
    pub async fn contract(repo: &impl Repository<Item>) {
        assert_eq!(
            repo.insert_or_get(item("a", "k")).await.unwrap(),
            (item("a", "k"), true)
        );
        assert_eq!(
            repo.insert_or_get(item("b", "k")).await.unwrap(),
            (item("a", "k"), false)
        );
        assert_eq!(repo.get("b").await.unwrap(), None);
        assert_eq!(repo.get_by_key("k").await.unwrap(), Some(item("a", "k")));
        assert_eq!(repo.all().await.unwrap().len(), 1);
        let bumped = repo
            .update::<StoreError, _>("a", |r: &Item| {
                Ok(Some(Item {
                    n: r.n + 1,
                    ..r.clone()
                }))
            })
            .await
            .unwrap();
        assert_eq!(bumped.map(|r| r.n), Some(1));
        let kept = repo
            .update::<StoreError, _>("a", |_| Ok(None))
            .await
            .unwrap();
        assert_eq!(kept.map(|r| r.n), Some(1));
        assert!(
            repo.update::<StoreError, _>("zz", |_| Ok(None))
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(repo.get("a").await.unwrap().map(|r| r.n), Some(1));

        // Listing: by status, before a time, a page after a position, in (updated_at, id) order.
        for (id, n) in [("c", 4), ("b", 2), ("d", 2), ("e", 7)] {
            let record = Item {
                n,
                ..item(id, &format!("key-{id}"))
            };
            repo.insert_or_get(record).await.unwrap();
        }
        let ids = |records: Vec<Item>| records.into_iter().map(|r| r.id).collect::<Vec<_>>();
        let query = ListQuery {
            status: None,
            updated_before: None,
            after: None,
            limit: 10,
        };
        assert_eq!(
            ids(repo.list(&query).await.unwrap()),
            ["a", "b", "d", "c", "e"]
        );
        let even = ListQuery {
            status: Some("even"),
            ..query.clone()
        };
        assert_eq!(ids(repo.list(&even).await.unwrap()), ["b", "d", "c"]);
        let page = ListQuery {
            after: Some((2, "b".into())),
            limit: 2,
            ..query.clone()
        };
        assert_eq!(ids(repo.list(&page).await.unwrap()), ["d", "c"]);
        let before = ListQuery {
            updated_before: Some(4),
            ..query.clone()
        };
        assert_eq!(ids(repo.list(&before).await.unwrap()), ["a", "b", "d"]);
    }

    /// `n` concurrent callers each bump record "a" and race to insert under one key: no update
    /// is lost and exactly one insert wins. Run against each implementation.
    pub async fn race<Rp: Repository<Item> + 'static>(repo: std::sync::Arc<Rp>, n: u32) {
        repo.insert_or_get(item("a", "k")).await.unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..n {
            let repo = repo.clone();
            tasks.spawn(async move {
                repo.update::<StoreError, _>("a", |r: &Item| {
                    Ok(Some(Item {
                        n: r.n + 1,
                        ..r.clone()
                    }))
                })
                .await
                .unwrap();
                repo.insert_or_get(item(&format!("id{i}"), "shared"))
                    .await
                    .unwrap()
            });
        }
        let mut winners = 0;
        while let Some(joined) = tasks.join_next().await {
            let (stored, inserted) = joined.unwrap();
            winners += u32::from(inserted);
            assert_eq!(stored.key, "shared");
        }
        assert_eq!(winners, 1);
        assert_eq!(repo.get("a").await.unwrap().map(|r| r.n), Some(n));
        assert_eq!(repo.all().await.unwrap().len(), 2);
    }

    #[test]
    fn a_corrupt_record_is_not_worth_a_retry() {
        assert_eq!(StoreError::Corrupt("x".into()).kind(), ErrorKind::DataLoss);
        assert_eq!(
            StoreError::Unavailable("x".into()).kind(),
            ErrorKind::Unavailable
        );
    }

    #[tokio::test]
    async fn memory_keeps_the_contract() {
        contract(&MemoryRepository::default()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_loses_no_update() {
        race(std::sync::Arc::new(MemoryRepository::default()), 50).await;
    }
}
