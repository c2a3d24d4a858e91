//! PostgreSQL, for several replicas of a service (`DATABASE_URL`), through sqlx. The table
//! layout, statements and repository are those of [`crate::sql`].
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, Executor, PgPool};

use crate::StoreError;
use crate::sql::{
    self, APPLIED_SQL, Column, Indexed, Inserted, ListParams, Result, Row, SCHEMA_TABLE,
    SqlDatabase, SqlRepository, Table,
};

/// A row that does not decode is corrupt; anything else is the database or the way to it.
fn store_error(err: sqlx::Error) -> StoreError {
    match err {
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
            StoreError::Corrupt(err.to_string())
        }
        other => StoreError::Unavailable(other.to_string()),
    }
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
pub type PgRepository<R> = SqlRepository<PgStore, R>;

impl SqlDatabase for PgStore {
    async fn migrate_table(&self, table: Table) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        // Replicas that start together take turns; the lock ends with the transaction.
        tx.execute("SELECT pg_advisory_xact_lock(7265937)")
            .await
            .map_err(store_error)?;
        tx.execute(SCHEMA_TABLE).await.map_err(store_error)?;
        let applied: Vec<i64> = sqlx::query_scalar(APPLIED_SQL)
            .bind(table)
            .fetch_all(&mut *tx)
            .await
            .map_err(store_error)?;
        for statement in sql::pending_migrations(table, &applied) {
            tx.execute(AssertSqlSafe(statement))
                .await
                .map_err(store_error)?;
        }
        tx.commit().await.map_err(store_error)
    }

    async fn insert(
        &self,
        table: Table,
        row: Indexed<'_>,
        key: &str,
        body: String,
    ) -> Result<Inserted> {
        let inserted = sqlx::query(AssertSqlSafe(sql::insert_sql(table)))
            .bind(row.id.to_owned())
            .bind(key.to_owned())
            .bind(body)
            .bind(row.status)
            .bind(row.updated_at)
            .execute(&self.pool)
            .await
            .map_err(store_error)?
            .rows_affected()
            == 1;
        if inserted {
            return Ok(Inserted::New);
        }
        Ok(Inserted::Existing(
            self.fetch(table, Column::Key, key).await?,
        ))
    }

    async fn fetch(&self, table: Table, by: Column, value: &str) -> Result<Option<Row>> {
        sqlx::query_as(AssertSqlSafe(sql::select_sql(table, by)))
            .bind(value.to_owned())
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)
    }

    async fn write_at(
        &self,
        table: Table,
        row: Indexed<'_>,
        version: i64,
        body: String,
    ) -> Result<bool> {
        let written = sqlx::query(AssertSqlSafe(sql::update_sql(table)))
            .bind(body)
            .bind(row.status)
            .bind(row.updated_at)
            .bind(row.id.to_owned())
            .bind(version)
            .execute(&self.pool)
            .await
            .map_err(store_error)?
            .rows_affected();
        Ok(written == 1)
    }

    async fn all(&self, table: Table) -> Result<Vec<String>> {
        sqlx::query_scalar(AssertSqlSafe(sql::all_sql(table)))
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)
    }

    async fn list(&self, table: Table, params: ListParams) -> Result<Vec<Row>> {
        let mut query =
            sqlx::query_as(AssertSqlSafe(sql::list_sql(table, params.status.is_some())));
        if let Some(status) = params.status {
            query = query.bind(status);
        }
        query
            .bind(params.before)
            .bind(params.after_at)
            .bind(params.after_id)
            .bind(params.limit)
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{Item, contract, race};

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
