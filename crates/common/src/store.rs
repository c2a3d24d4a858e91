//! The repository every service keeps its resources in. Each record has an id and a unique key
//! (an order's idempotency key; a payment's or shipment's order id): the key is what makes the
//! mutating calls idempotent, because a second insert with the same key returns the first record.
//!
//! Three implementations: [`sqlite::SqliteRepository`] (the default: one file per service),
//! [`postgres::PgRepository`] (several replicas) and [`MemoryRepository`] (tests, throwaway
//! runs). [`Store`] is whichever the settings chose.
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Mutex, MutexGuard};

use serde::Serialize;
use serde::de::DeserializeOwned;

pub mod postgres;
pub mod sqlite;

/// Schema changes in order; each runs once per table, recorded in `order_saga_schema`.
/// `{table}` is the record's table. The same SQL on SQLite and PostgreSQL.
const MIGRATIONS: &[(i64, &str)] = &[(
    1,
    "CREATE TABLE IF NOT EXISTS {table} (
        id TEXT PRIMARY KEY,
        key TEXT NOT NULL UNIQUE,
        version BIGINT NOT NULL,
        body TEXT NOT NULL
    )",
)];

/// The column a row is looked up by.
#[derive(Debug, Clone, Copy)]
enum Column {
    Id,
    Key,
}

impl Column {
    fn name(self) -> &'static str {
        match self {
            Column::Id => "id",
            Column::Key => "key",
        }
    }
}

/// A record as the SQL stores keep it: JSON in the `body` column.
fn encode<R: Record>(record: &R) -> Result<String, StoreError> {
    serde_json::to_string(record).map_err(|err| StoreError::Corrupt(err.to_string()))
}

fn decode<R: Record>(body: &str) -> Result<R, StoreError> {
    serde_json::from_str(body).map_err(|err| StoreError::Corrupt(err.to_string()))
}

/// Rows with a version column, bumped by every write: what the SQL stores give the optimistic
/// update.
trait VersionedRows<R: Record>: Sync {
    /// The record and its version.
    fn fetch(
        &self,
        by: Column,
        value: &str,
    ) -> impl Future<Output = Result<Option<(R, i64)>, StoreError>> + Send;
    /// Writes `body` over row `id` if it is still at `version`; `false` if another write came
    /// first.
    fn write_if_unchanged(
        &self,
        id: &str,
        version: i64,
        body: String,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// [`Repository::update`] for the SQL stores: read the row and its version, apply the
/// transition, write it back only if the version is unchanged, else decide again on the new
/// state. No lock is held across the transition, and it works the same on every replica.
async fn update_optimistically<R, E, F>(
    rows: &impl VersionedRows<R>,
    id: &str,
    mut transition: F,
) -> Result<Option<R>, E>
where
    R: Record,
    E: From<StoreError> + Send,
    F: FnMut(&R) -> Result<Option<R>, E> + Send,
{
    loop {
        let Some((current, version)) = rows.fetch(Column::Id, id).await? else {
            return Ok(None);
        };
        let Some(next) = transition(&current)? else {
            return Ok(Some(current));
        };
        if rows.write_if_unchanged(id, version, encode(&next)?).await? {
            return Ok(Some(next));
        }
    }
}

/// A stored resource.
pub trait Record: Clone + Send + Sync + Serialize + DeserializeOwned + 'static {
    /// The SQL table of this kind of record.
    const TABLE: &'static str;
    fn id(&self) -> &str;
    /// At most one record per key.
    fn key(&self) -> &str;
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("stored record is unreadable: {0}")]
    Corrupt(String),
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

/// In-memory repository: a map behind a mutex that is never held across an `.await`.
#[derive(Debug)]
pub struct MemoryRepository<R> {
    inner: Mutex<Inner<R>>,
}

#[derive(Debug)]
struct Inner<R> {
    by_id: HashMap<String, R>,
    id_by_key: HashMap<String, String>,
}

impl<R> Default for MemoryRepository<R> {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                by_id: HashMap::new(),
                id_by_key: HashMap::new(),
            }),
        }
    }
}

impl<R> MemoryRepository<R> {
    fn lock(&self) -> MutexGuard<'_, Inner<R>> {
        // A panic while holding the lock cannot leave a half-written map: every write is one insert.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<R: Record> Repository<R> for MemoryRepository<R> {
    async fn insert_or_get(&self, record: R) -> Result<(R, bool), StoreError> {
        let mut inner = self.lock();
        if let Some(existing) = inner
            .id_by_key
            .get(record.key())
            .and_then(|id| inner.by_id.get(id))
        {
            return Ok((existing.clone(), false));
        }
        inner
            .id_by_key
            .insert(record.key().to_owned(), record.id().to_owned());
        inner.by_id.insert(record.id().to_owned(), record.clone());
        Ok((record, true))
    }

    async fn get(&self, id: &str) -> Result<Option<R>, StoreError> {
        Ok(self.lock().by_id.get(id).cloned())
    }

    async fn get_by_key(&self, key: &str) -> Result<Option<R>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .id_by_key
            .get(key)
            .and_then(|id| inner.by_id.get(id))
            .cloned())
    }

    async fn update<E, F>(&self, id: &str, mut transition: F) -> Result<Option<R>, E>
    where
        E: From<StoreError> + Send,
        F: FnMut(&R) -> Result<Option<R>, E> + Send,
    {
        let mut inner = self.lock();
        let Some(current) = inner.by_id.get_mut(id) else {
            return Ok(None);
        };
        if let Some(next) = transition(current)? {
            *current = next;
        }
        Ok(Some(current.clone()))
    }

    async fn all(&self) -> Result<Vec<R>, StoreError> {
        Ok(self.lock().by_id.values().cloned().collect())
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

impl<R: Record> Repository<R> for Store<R> {
    async fn insert_or_get(&self, record: R) -> Result<(R, bool), StoreError> {
        match self {
            Store::Memory(repo) => repo.insert_or_get(record).await,
            Store::Sqlite(repo) => repo.insert_or_get(record).await,
            Store::Postgres(repo) => repo.insert_or_get(record).await,
        }
    }

    async fn get(&self, id: &str) -> Result<Option<R>, StoreError> {
        match self {
            Store::Memory(repo) => repo.get(id).await,
            Store::Sqlite(repo) => repo.get(id).await,
            Store::Postgres(repo) => repo.get(id).await,
        }
    }

    async fn get_by_key(&self, key: &str) -> Result<Option<R>, StoreError> {
        match self {
            Store::Memory(repo) => repo.get_by_key(key).await,
            Store::Sqlite(repo) => repo.get_by_key(key).await,
            Store::Postgres(repo) => repo.get_by_key(key).await,
        }
    }

    async fn update<E, F>(&self, id: &str, transition: F) -> Result<Option<R>, E>
    where
        E: From<StoreError> + Send,
        F: FnMut(&R) -> Result<Option<R>, E> + Send,
    {
        match self {
            Store::Memory(repo) => repo.update(id, transition).await,
            Store::Sqlite(repo) => repo.update(id, transition).await,
            Store::Postgres(repo) => repo.update(id, transition).await,
        }
    }

    async fn all(&self) -> Result<Vec<R>, StoreError> {
        match self {
            Store::Memory(repo) => repo.all().await,
            Store::Sqlite(repo) => repo.all().await,
            Store::Postgres(repo) => repo.all().await,
        }
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

    #[tokio::test]
    async fn memory_keeps_the_contract() {
        contract(&MemoryRepository::default()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_loses_no_update() {
        race(std::sync::Arc::new(MemoryRepository::default()), 50).await;
    }
}
