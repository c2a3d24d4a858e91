//! PostgreSQL, for several replicas of a service (`DATABASE_URL`), through sqlx.
//!
//! Each kind of record is one table: `id` (primary key), `key` (unique: the idempotency key),
//! `version` (bumped by every update) and `body` (the record as JSON). Updates are optimistic
//! ([`super::update_optimistically`]), so no `SELECT … FOR UPDATE` is held across a transition
//! and every replica can take any request. SQLite ([`super::sqlite`]) keeps the same layout.
use std::marker::PhantomData;
use std::time::Duration;

use sqlx::postgres::{PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Executor, PgPool, Row};

use super::{
    Column, MIGRATIONS, Record, Repository, StoreError, VersionedRows, decode, encode,
    update_optimistically,
};

fn unavailable(err: sqlx::Error) -> StoreError {
    StoreError::Unavailable(err.to_string())
}

/// An open database.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(|err| {
                StoreError::Unavailable(format!("cannot open {}: {err}", redact(url)))
            })?;
        Ok(Self { pool })
    }

    /// Creates or upgrades the table of `R`. An advisory lock keeps replicas that start
    /// together from migrating at the same time.
    pub async fn migrate<R: Record>(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await.map_err(unavailable)?;
        conn.execute("SELECT pg_advisory_lock(7265937)")
            .await
            .map_err(unavailable)?;
        let result = async {
            conn.execute(
                "CREATE TABLE IF NOT EXISTS order_saga_schema (tbl TEXT NOT NULL, version BIGINT NOT NULL, PRIMARY KEY (tbl, version))",
            )
            .await?;
            for (version, statement) in MIGRATIONS {
                let done = sqlx::query("SELECT 1 FROM order_saga_schema WHERE tbl = $1 AND version = $2")
                    .bind(R::TABLE)
                    .bind(*version)
                    .fetch_optional(&mut *conn)
                    .await?
                    .is_some();
                if !done {
                    conn.execute(AssertSqlSafe(statement.replace("{table}", R::TABLE))).await?;
                    sqlx::query("INSERT INTO order_saga_schema (tbl, version) VALUES ($1, $2)")
                        .bind(R::TABLE)
                        .bind(*version)
                        .execute(&mut *conn)
                        .await?;
                }
            }
            Ok::<(), sqlx::Error>(())
        }
        .await;
        conn.execute("SELECT pg_advisory_unlock(7265937)")
            .await
            .map_err(unavailable)?;
        result.map_err(unavailable)
    }

    /// The repository of `R` in this database (after [`PgStore::migrate`]).
    pub fn repository<R: Record>(&self) -> PgRepository<R> {
        PgRepository {
            store: self.clone(),
            record: PhantomData,
        }
    }
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

/// The records of one kind in a [`PgStore`].
#[derive(Debug)]
pub struct PgRepository<R> {
    store: PgStore,
    record: PhantomData<fn() -> R>,
}

fn body<R: Record>(row: &PgRow) -> Result<R, StoreError> {
    let body: String = row
        .try_get("body")
        .map_err(|err| StoreError::Corrupt(err.to_string()))?;
    decode(&body)
}

impl<R: Record> PgRepository<R> {
    /// The statement with this record's table (a constant, never input).
    fn sql(&self, template: &str) -> AssertSqlSafe<String> {
        AssertSqlSafe(template.replace("{table}", R::TABLE))
    }
}

impl<R: Record> VersionedRows<R> for PgRepository<R> {
    async fn fetch(&self, by: Column, value: &str) -> Result<Option<(R, i64)>, StoreError> {
        let sql = self.sql(&format!(
            "SELECT body, version FROM {{table}} WHERE {} = $1",
            by.name()
        ));
        let row = sqlx::query(sql)
            .bind(value.to_owned())
            .fetch_optional(&self.store.pool)
            .await
            .map_err(unavailable)?;
        row.map(|row| {
            let version: i64 = row
                .try_get("version")
                .map_err(|err| StoreError::Corrupt(err.to_string()))?;
            Ok((body(&row)?, version))
        })
        .transpose()
    }

    async fn write_if_unchanged(
        &self,
        id: &str,
        version: i64,
        body: String,
    ) -> Result<bool, StoreError> {
        let sql = self.sql(
            "UPDATE {table} SET body = $1, version = version + 1 WHERE id = $2 AND version = $3",
        );
        let written = sqlx::query(sql)
            .bind(body)
            .bind(id.to_owned())
            .bind(version)
            .execute(&self.store.pool)
            .await
            .map_err(unavailable)?
            .rows_affected();
        Ok(written == 1)
    }
}

impl<R: Record> Repository<R> for PgRepository<R> {
    async fn insert_or_get(&self, record: R) -> Result<(R, bool), StoreError> {
        let sql = self.sql("INSERT INTO {table} (id, key, version, body) VALUES ($1, $2, 1, $3) ON CONFLICT (key) DO NOTHING");
        let inserted = sqlx::query(sql)
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
        match self.fetch(Column::Key, record.key()).await? {
            Some((existing, _)) => Ok((existing, false)),
            None => Err(StoreError::Unavailable(format!(
                "key {} conflicted but cannot be read back",
                record.key()
            ))),
        }
    }

    async fn get(&self, id: &str) -> Result<Option<R>, StoreError> {
        Ok(self.fetch(Column::Id, id).await?.map(|(record, _)| record))
    }

    async fn get_by_key(&self, key: &str) -> Result<Option<R>, StoreError> {
        Ok(self
            .fetch(Column::Key, key)
            .await?
            .map(|(record, _)| record))
    }

    async fn update<E, F>(&self, id: &str, transition: F) -> Result<Option<R>, E>
    where
        E: From<StoreError> + Send,
        F: FnMut(&R) -> Result<Option<R>, E> + Send,
    {
        update_optimistically(self, id, transition).await
    }

    async fn all(&self) -> Result<Vec<R>, StoreError> {
        let rows = sqlx::query(self.sql("SELECT body FROM {table}"))
            .fetch_all(&self.store.pool)
            .await
            .map_err(unavailable)?;
        rows.iter().map(body).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{Item, contract, race};

    /// A fresh database on the server of `POSTGRES_TEST_URL` (`./scripts/test` starts one);
    /// `None` outside CI when there is none.
    async fn database(name: &str) -> Option<PgStore> {
        let Ok(admin) = std::env::var("POSTGRES_TEST_URL") else {
            assert!(
                std::env::var("CI").is_err(),
                "POSTGRES_TEST_URL is not set in CI"
            );
            eprintln!("SKIPPED: POSTGRES_TEST_URL is not set (./scripts/test sets it)");
            return None;
        };
        let pool = PgPool::connect(&admin).await.unwrap();
        let database = format!("saga_unit_{name}_{}", std::process::id());
        for statement in [
            format!("DROP DATABASE IF EXISTS {database}"),
            format!("CREATE DATABASE {database}"),
        ] {
            pool.execute(AssertSqlSafe(statement)).await.unwrap();
        }
        pool.close().await;
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        let store = PgStore::connect(&format!("{base}/{database}"))
            .await
            .unwrap();
        store.migrate::<Item>().await.unwrap();
        store.migrate::<Item>().await.unwrap(); // idempotent
        Some(store)
    }

    #[tokio::test]
    async fn keeps_the_contract() {
        if let Some(store) = database("contract").await {
            contract(&store.repository::<Item>()).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_updates_are_not_lost() {
        if let Some(store) = database("race").await {
            race(std::sync::Arc::new(store.repository::<Item>()), 20).await;
        }
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }
}
