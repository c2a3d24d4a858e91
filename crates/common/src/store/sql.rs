//! The SQL repository: SQLite (WAL, one file per service) by default, PostgreSQL when the URL
//! says so, through sqlx's `Any` driver so that one implementation serves both.
//!
//! Each kind of record is one table: `id` (primary key), `key` (unique: the idempotency key),
//! `version` (bumped by every update) and `body` (the record as JSON). Updates are optimistic:
//! read the row and its version, apply the transition, write it back only if the version is
//! unchanged, else read again. That needs neither `SELECT … FOR UPDATE` nor SQLite's write lock
//! held across the transition, and is the same SQL on both databases.
use std::marker::PhantomData;
use std::path::Path;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, AssertSqlSafe, Executor, Row};

use super::{Record, Repository, StoreError};

/// Schema changes in order; each runs once per table, recorded in `order_saga_schema`.
/// `{table}` is the record's table.
const MIGRATIONS: &[(i64, &str)] = &[(
    1,
    "CREATE TABLE IF NOT EXISTS {table} (
        id TEXT PRIMARY KEY,
        key TEXT NOT NULL UNIQUE,
        version BIGINT NOT NULL,
        body TEXT NOT NULL
    )",
)];

fn unavailable(err: sqlx::Error) -> StoreError {
    StoreError::Unavailable(err.to_string())
}

/// An open database.
#[derive(Debug, Clone)]
pub struct SqlStore {
    pool: AnyPool,
    postgres: bool,
}

/// How SQLite commits: FULL survives a power cut, NORMAL (WAL) only a crash of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    Full,
    Normal,
}

impl SqlStore {
    /// The SQLite database of `service` in `data_dir` (created if missing).
    pub async fn sqlite(
        data_dir: &Path,
        service: &str,
        synchronous: Synchronous,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|err| {
            StoreError::Unavailable(format!(
                "cannot create data directory {}: {err}",
                data_dir.display()
            ))
        })?;
        let file = data_dir.join(format!("{service}.sqlite"));
        let url = format!("sqlite://{}?mode=rwc", file.display());
        let sync = match synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        };
        Self::connect(&url, sync).await
    }

    /// PostgreSQL (or any URL sqlx knows).
    pub async fn url(url: &str) -> Result<Self, StoreError> {
        Self::connect(url, "FULL").await
    }

    async fn connect(url: &str, sqlite_sync: &'static str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let postgres = url.starts_with("postgres:") || url.starts_with("postgresql:");
        // SQLite has one writer at a time: a single connection makes writers queue in the pool
        // (asynchronously) instead of spinning in SQLite's busy handler, which sleeps in steps of
        // up to 100 ms and wrecks tail latency.
        let pool = AnyPoolOptions::new()
            .max_connections(if postgres { 16 } else { 1 })
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if conn.backend_name().eq_ignore_ascii_case("sqlite") {
                        // WAL: readers never wait for the writer. busy_timeout: writers queue
                        // instead of failing.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute(AssertSqlSafe(format!("PRAGMA synchronous = {sqlite_sync}")))
                            .await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await
            .map_err(|err| {
                StoreError::Unavailable(format!("cannot open {}: {err}", redact(url)))
            })?;
        Ok(Self { pool, postgres })
    }

    /// Creates or upgrades the table of `R`. On PostgreSQL an advisory lock keeps replicas that
    /// start together from migrating at the same time.
    pub async fn migrate<R: Record>(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await.map_err(unavailable)?;
        if self.postgres {
            conn.execute("SELECT pg_advisory_lock(7265937)")
                .await
                .map_err(unavailable)?;
        }
        let result = async {
            conn.execute(
                "CREATE TABLE IF NOT EXISTS order_saga_schema (tbl TEXT NOT NULL, version BIGINT NOT NULL, PRIMARY KEY (tbl, version))",
            )
            .await?;
            for (version, statement) in MIGRATIONS {
                let done = sqlx::query(AssertSqlSafe(self.dialect("SELECT 1 FROM order_saga_schema WHERE tbl = $1 AND version = $2")))
                    .bind(R::TABLE)
                    .bind(*version)
                    .fetch_optional(&mut *conn)
                    .await?
                    .is_some();
                if !done {
                    conn.execute(AssertSqlSafe(statement.replace("{table}", R::TABLE))).await?;
                    sqlx::query(AssertSqlSafe(self.dialect("INSERT INTO order_saga_schema (tbl, version) VALUES ($1, $2)")))
                        .bind(R::TABLE)
                        .bind(*version)
                        .execute(&mut *conn)
                        .await?;
                }
            }
            Ok::<(), sqlx::Error>(())
        }
        .await;
        if self.postgres {
            conn.execute("SELECT pg_advisory_unlock(7265937)")
                .await
                .map_err(unavailable)?;
        }
        result.map_err(unavailable)
    }

    /// The repository of `R` in this database (after [`SqlStore::migrate`]).
    pub fn repository<R: Record>(&self) -> SqlRepository<R> {
        SqlRepository {
            store: self.clone(),
            record: PhantomData,
        }
    }

    /// Queries are written with PostgreSQL's `$n` placeholders; SQLite gets `?` (each is used
    /// once, in order). The only other dynamic parts of our SQL are table names, which are
    /// constants of the record types: hence `AssertSqlSafe` around the results.
    fn dialect(&self, sql: &str) -> String {
        if self.postgres {
            return sql.to_owned();
        }
        to_question_marks(sql)
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }
}

fn to_question_marks(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            while chars.peek().is_some_and(char::is_ascii_digit) {
                chars.next();
            }
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

/// A URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            let user = credentials.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// The records of one kind in a [`SqlStore`].
#[derive(Debug)]
pub struct SqlRepository<R> {
    store: SqlStore,
    record: PhantomData<fn() -> R>,
}

fn decode<R: Record>(row: &AnyRow) -> Result<R, StoreError> {
    let body: String = row
        .try_get("body")
        .map_err(|err| StoreError::Corrupt(err.to_string()))?;
    serde_json::from_str(&body).map_err(|err| StoreError::Corrupt(err.to_string()))
}

fn encode<R: Record>(record: &R) -> Result<String, StoreError> {
    serde_json::to_string(record).map_err(|err| StoreError::Corrupt(err.to_string()))
}

impl<R: Record> SqlRepository<R> {
    fn sql(&self, template: &str) -> String {
        self.store.dialect(&template.replace("{table}", R::TABLE))
    }

    async fn fetch_one_by(
        &self,
        column: &str,
        value: &str,
    ) -> Result<Option<(R, i64)>, StoreError> {
        let sql = self.sql(&format!(
            "SELECT body, version FROM {{table}} WHERE {column} = $1"
        ));
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(value.to_owned())
            .fetch_optional(&self.store.pool)
            .await
            .map_err(unavailable)?;
        row.map(|row| {
            let version: i64 = row
                .try_get("version")
                .map_err(|err| StoreError::Corrupt(err.to_string()))?;
            Ok((decode(&row)?, version))
        })
        .transpose()
    }
}

impl<R: Record> Repository<R> for SqlRepository<R> {
    async fn insert_or_get(&self, record: R) -> Result<(R, bool), StoreError> {
        let sql = self.sql("INSERT INTO {table} (id, key, version, body) VALUES ($1, $2, 1, $3) ON CONFLICT (key) DO NOTHING");
        let inserted = sqlx::query(AssertSqlSafe(sql))
            .bind(record.id().to_owned())
            .bind(record.key().to_owned())
            .bind(encode(&record)?)
            .execute(&self.store.pool)
            .await
            .map_err(unavailable)?
            .rows_affected()
            == 1;
        if inserted {
            return Ok((record, true));
        }
        match self.fetch_one_by("key", record.key()).await? {
            Some((existing, _)) => Ok((existing, false)),
            None => Err(StoreError::Unavailable(format!(
                "key {} conflicted but cannot be read back",
                record.key()
            ))),
        }
    }

    async fn get(&self, id: &str) -> Result<Option<R>, StoreError> {
        Ok(self.fetch_one_by("id", id).await?.map(|(record, _)| record))
    }

    async fn get_by_key(&self, key: &str) -> Result<Option<R>, StoreError> {
        Ok(self
            .fetch_one_by("key", key)
            .await?
            .map(|(record, _)| record))
    }

    async fn update<E, F>(&self, id: &str, mut transition: F) -> Result<Option<R>, E>
    where
        E: From<StoreError> + Send,
        F: FnMut(&R) -> Result<Option<R>, E> + Send,
    {
        let sql = self.sql(
            "UPDATE {table} SET body = $1, version = version + 1 WHERE id = $2 AND version = $3",
        );
        loop {
            let Some((current, version)) = self.fetch_one_by("id", id).await? else {
                return Ok(None);
            };
            let Some(next) = transition(&current)? else {
                return Ok(Some(current));
            };
            let written = sqlx::query(AssertSqlSafe(sql.clone()))
                .bind(encode(&next)?)
                .bind(id.to_owned())
                .bind(version)
                .execute(&self.store.pool)
                .await
                .map_err(unavailable)?
                .rows_affected();
            if written == 1 {
                return Ok(Some(next));
            }
            // Someone else updated the record in between: decide again on its new state.
        }
    }

    async fn all(&self) -> Result<Vec<R>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(self.sql("SELECT body FROM {table}")))
            .fetch_all(&self.store.pool)
            .await
            .map_err(unavailable)?;
        rows.iter().map(decode).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{Item, contract, item};

    fn temp_dir(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("saga-sql-{name}-{}", std::process::id()))
    }

    #[tokio::test]
    async fn sqlite_keeps_the_contract_and_survives_a_reopen() {
        let dir = temp_dir("contract");
        let _ = std::fs::remove_dir_all(&dir);
        let store = SqlStore::sqlite(&dir, "test", Synchronous::Full)
            .await
            .unwrap();
        store.migrate::<Item>().await.unwrap();
        store.migrate::<Item>().await.unwrap(); // idempotent
        contract(&store.repository::<Item>()).await;
        store.pool().close().await;

        let reopened = SqlStore::sqlite(&dir, "test", Synchronous::Normal)
            .await
            .unwrap();
        reopened.migrate::<Item>().await.unwrap();
        let repo = reopened.repository::<Item>();
        assert_eq!(repo.get("a").await.unwrap().map(|r| r.n), Some(1));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn concurrent_updates_are_not_lost() {
        let dir = temp_dir("race");
        let _ = std::fs::remove_dir_all(&dir);
        let store = SqlStore::sqlite(&dir, "test", Synchronous::Normal)
            .await
            .unwrap();
        store.migrate::<Item>().await.unwrap();
        let repo = std::sync::Arc::new(store.repository::<Item>());
        repo.insert_or_get(item("a", "k")).await.unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..20 {
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
            });
        }
        while tasks.join_next().await.is_some() {}
        assert_eq!(repo.get("a").await.unwrap().map(|r| r.n), Some(20));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn placeholders_and_redaction() {
        assert_eq!(to_question_marks("a = $1 AND b = $12"), "a = ? AND b = ?");
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("sqlite://x"), "sqlite://x");
    }
}
