//! What the two SQL stores share: the table layout, the statements, the migrations and the whole
//! repository contract ([`SqlRepository`]). A database ([`SqlDatabase`]) only runs statements:
//! SQLite on its own thread ([`crate::sqlite`]), PostgreSQL in a task per table that batches
//! them ([`crate::postgres`]); both group-commit writes.
//!
//! Each kind of record is one table: `id` (primary key), `key` (unique: the idempotency key),
//! `version` (bumped by every update), `body` (the record as JSON), and `status` and
//! `updated_at` copied out of the body into indexed columns, so that listing never scans bodies. Updates are optimistic
//! (read the version, write only if it is unchanged), so no lock is held across a transition
//! and every replica can take any request.
use std::future::Future;
use std::marker::PhantomData;

use crate::{ListQuery, Record, Repository, StoreError};

/// Schema changes in order; each runs once per table, recorded in `order_saga_schema`.
/// `{table}` is the record's table. The same SQL on SQLite and PostgreSQL.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE IF NOT EXISTS {table} (
        id TEXT PRIMARY KEY,
        key TEXT NOT NULL UNIQUE,
        version BIGINT NOT NULL,
        body TEXT NOT NULL
    )",
    ),
    // Rows written before these columns get them from their bodies (`SqlDatabase::migrate`).
    (
        2,
        "ALTER TABLE {table} ADD COLUMN status TEXT NOT NULL DEFAULT ''",
    ),
    (
        3,
        "ALTER TABLE {table} ADD COLUMN updated_at BIGINT NOT NULL DEFAULT 0",
    ),
    (
        4,
        "CREATE INDEX IF NOT EXISTS {table}_by_status ON {table} (status, updated_at, id)",
    ),
    (
        5,
        "CREATE INDEX IF NOT EXISTS {table}_by_update ON {table} (updated_at, id)",
    ),
];

/// Which migrations each table has had.
pub(crate) const SCHEMA_TABLE: &str = "CREATE TABLE IF NOT EXISTS order_saga_schema (tbl TEXT NOT NULL, version BIGINT NOT NULL, PRIMARY KEY (tbl, version))";

// The statements below are the same text for both databases. Placeholders are `$1`, `$2`, … in
// the order of their numbers: PostgreSQL's own syntax, and SQLite takes `$1` as a named parameter
// numbered by first appearance, which is then the same number. Tables are the records' `TABLE`
// constants, never input.

/// The migrations `table` has had: a single `version` column.
pub(crate) const APPLIED_SQL: &str = "SELECT version FROM order_saga_schema WHERE tbl = $1";

/// One insert (SQLite; PostgreSQL inserts a batch at once with the same conflict rule).
pub(crate) fn insert_sql(table: &str) -> String {
    format!(
        "INSERT INTO {table} (id, key, version, body, status, updated_at) VALUES ($1, $2, 1, $3, $4, $5) ON CONFLICT (key) DO NOTHING"
    )
}

/// One row by id or key: its body and version, then its id (which a lookup by key needs to know
/// the row by).
pub(crate) fn select_sql(table: &str, by: Column) -> String {
    format!(
        "SELECT body, version, id FROM {table} WHERE {} = $1",
        by.name()
    )
}

/// One update (SQLite; PostgreSQL updates a batch at once with the same version check).
pub(crate) fn update_sql(table: &str) -> String {
    format!(
        "UPDATE {table} SET body = $1, status = $2, updated_at = $3, version = version + 1 WHERE id = $4 AND version = $5"
    )
}

/// A page of rows in `(updated_at, id)` order. Parameters: the status (only when `by_status`),
/// then `updated_before`, the position after which the page starts (`updated_at`, `id`), and
/// the limit. The row-value comparison walks the index from the position on.
pub(crate) fn list_sql(table: &str, by_status: bool) -> String {
    let (status, n) = if by_status {
        ("status = $1 AND ", 1)
    } else {
        ("", 0)
    };
    format!(
        "SELECT body, version FROM {table} WHERE {status}updated_at < ${} AND (updated_at, id) > (${}, ${}) ORDER BY updated_at, id LIMIT ${}",
        n + 1,
        n + 2,
        n + 3,
        n + 4
    )
}

/// A [`ListQuery`] as the statement's parameters: the status (if any), `updated_before`,
/// the position after which to start, and the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListParams {
    pub status: Option<&'static str>,
    pub before: i64,
    pub after_at: i64,
    pub after_id: String,
    pub limit: i64,
}

impl From<&ListQuery> for ListParams {
    fn from(query: &ListQuery) -> Self {
        let (after_at, after_id) = query.after.clone().unwrap_or((i64::MIN, String::new()));
        Self {
            status: query.status,
            before: query.updated_before.unwrap_or(i64::MAX),
            after_at,
            after_id,
            limit: i64::try_from(query.limit).unwrap_or(i64::MAX),
        }
    }
}

pub(crate) fn all_sql(table: &str) -> String {
    format!("SELECT body FROM {table}")
}

/// The statements that bring `table` from the migrations in `applied` to the latest, each
/// followed by the row that records it: a database runs them in one transaction, so a migration
/// and its record stand or fall together.
pub(crate) fn pending_migrations(table: &str, applied: &[i64]) -> Vec<String> {
    MIGRATIONS
        .iter()
        .filter(|(version, _)| !applied.contains(version))
        .flat_map(|(version, statement)| {
            [
                statement.replace("{table}", table),
                // Both values are constants of this crate, so they can stand in the text.
                format!(
                    "INSERT INTO order_saga_schema (tbl, version) VALUES ('{table}', {version})"
                ),
            ]
        })
        .collect()
}

/// The column a row is looked up by.
#[derive(Debug, Clone, Copy)]
pub enum Column {
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

/// A stored row: the record as JSON and its version.
pub type Row = (String, i64);

/// A record's table: its `TABLE` constant, never input.
pub type Table = &'static str;

/// What every database call returns.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What an insert found.
#[derive(Debug)]
pub enum Inserted {
    New,
    /// The key was taken: the row that holds it (`None` if it cannot be read back).
    Existing(Option<Row>),
}

/// What a SQL database supplies; the rest is [`SqlRepository`]. `table` is always a record's
/// `TABLE` constant.
pub trait SqlDatabase: Clone + Send + Sync + 'static {
    /// Creates `order_saga_schema` and runs [`pending_migrations`] for `table`, in one
    /// transaction and one process at a time.
    fn migrate_table(&self, table: Table) -> impl Future<Output = Result<()>> + Send;
    /// Inserts the row unless its key exists.
    fn insert(
        &self,
        table: Table,
        row: Indexed<'_>,
        key: &str,
        body: String,
    ) -> impl Future<Output = Result<Inserted>> + Send;
    fn fetch(
        &self,
        table: Table,
        by: Column,
        value: &str,
    ) -> impl Future<Output = Result<Option<Row>>> + Send;
    /// Writes `body` over row `id` if it is still at `version`; `false` if another write came
    /// first.
    fn write_at(
        &self,
        table: Table,
        row: Indexed<'_>,
        version: i64,
        body: String,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Every body in `table`.
    fn all(&self, table: Table) -> impl Future<Output = Result<Vec<String>>> + Send;
    /// A page of rows ([`list_sql`]).
    fn list(
        &self,
        table: Table,
        params: ListParams,
    ) -> impl Future<Output = Result<Vec<Row>>> + Send;

    /// Creates or upgrades the table of `R`, then fills the indexed columns of rows written
    /// before they existed (their status is empty) from their bodies.
    fn migrate<R: Record>(&self) -> impl Future<Output = Result<()>> + Send {
        async move {
            self.migrate_table(R::TABLE).await?;
            let unindexed = ListQuery {
                status: Some(""),
                updated_before: None,
                after: None,
                limit: 500,
            };
            loop {
                let rows = self.list(R::TABLE, ListParams::from(&unindexed)).await?;
                if rows.is_empty() {
                    return Ok(());
                }
                let mut moved = false;
                for (body, version) in rows {
                    let record: R = decode(&body)?;
                    // Lost to another replica backfilling the same row: it is done either way.
                    moved |= self
                        .write_at(R::TABLE, Indexed::of(&record), version, body)
                        .await?;
                }
                if !moved {
                    return Ok(());
                }
            }
        }
    }

    /// The repository of `R` in this database (after [`SqlDatabase::migrate`]).
    fn repository<R: Record>(&self) -> SqlRepository<Self, R> {
        SqlRepository {
            db: self.clone(),
            record: PhantomData,
        }
    }
}

/// A row's id and indexed columns, taken from its record.
#[derive(Debug, Clone, Copy)]
pub struct Indexed<'a> {
    pub id: &'a str,
    pub status: &'static str,
    pub updated_at: i64,
}

/// [`Indexed`] with its id owned: what a store hands to the thread or task that writes it.
#[derive(Debug)]
pub(crate) struct Owned {
    pub(crate) id: String,
    pub(crate) status: &'static str,
    pub(crate) updated_at: i64,
}

impl From<Indexed<'_>> for Owned {
    fn from(row: Indexed<'_>) -> Self {
        Self {
            id: row.id.to_owned(),
            status: row.status,
            updated_at: row.updated_at,
        }
    }
}

impl<'a> Indexed<'a> {
    pub fn of<R: Record>(record: &'a R) -> Self {
        Self {
            id: record.id(),
            status: record.status(),
            updated_at: record.updated_at(),
        }
    }
}

/// The records of one kind in a SQL database.
#[derive(Debug)]
pub struct SqlRepository<D, R> {
    db: D,
    record: PhantomData<fn() -> R>,
}

/// A record as the SQL stores keep it: JSON in the `body` column.
fn encode<R: Record>(record: &R) -> Result<String, StoreError> {
    serde_json::to_string(record).map_err(|err| StoreError::Corrupt(err.to_string()))
}

fn decode<R: Record>(body: &str) -> Result<R, StoreError> {
    serde_json::from_str(body).map_err(|err| StoreError::Corrupt(err.to_string()))
}

impl<D: SqlDatabase, R: Record> SqlRepository<D, R> {
    /// The record and its version.
    async fn fetch(&self, by: Column, value: &str) -> Result<Option<(R, i64)>, StoreError> {
        let row = self.db.fetch(R::TABLE, by, value).await?;
        row.map(|(body, version)| Ok((decode(&body)?, version)))
            .transpose()
    }
}

impl<D: SqlDatabase, R: Record> Repository<R> for SqlRepository<D, R> {
    async fn insert_or_get(&self, record: R) -> Result<(R, bool), StoreError> {
        let body = encode(&record)?;
        match self
            .db
            .insert(R::TABLE, Indexed::of(&record), record.key(), body)
            .await?
        {
            Inserted::New => Ok((record, true)),
            Inserted::Existing(Some((body, _))) => Ok((decode(&body)?, false)),
            Inserted::Existing(None) => Err(StoreError::Unavailable(format!(
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

    /// Reads the row and its version, applies the transition, and writes it back only if the
    /// version is unchanged, else decides again on the new state.
    async fn update<E, F>(&self, id: &str, mut transition: F) -> Result<Option<R>, E>
    where
        E: From<StoreError> + Send,
        F: FnMut(&R) -> Result<Option<R>, E> + Send,
    {
        loop {
            let Some((current, version)) = self.fetch(Column::Id, id).await? else {
                return Ok(None);
            };
            let Some(next) = transition(&current)? else {
                return Ok(Some(current));
            };
            let written = self
                .db
                .write_at(R::TABLE, Indexed::of(&next), version, encode(&next)?)
                .await?;
            if written {
                return Ok(Some(next));
            }
        }
    }

    async fn all(&self) -> Result<Vec<R>, StoreError> {
        let bodies = self.db.all(R::TABLE).await?;
        bodies.iter().map(|body| decode(body)).collect()
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<R>, StoreError> {
        let rows = self.db.list(R::TABLE, ListParams::from(query)).await?;
        rows.iter().map(|(body, _)| decode(body)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_missing_migrations_run_each_with_its_record() {
        let all = pending_migrations("items", &[]);
        assert_eq!(all.len(), 2 * MIGRATIONS.len());
        assert!(all[0].contains("CREATE TABLE IF NOT EXISTS items"));
        assert!(all[1].contains("VALUES ('items', 1)"));
        assert!(pending_migrations("items", &[1, 2, 3, 4, 5]).is_empty());
        assert_eq!(
            pending_migrations("items", &[1]).len(),
            2 * (MIGRATIONS.len() - 1)
        );
    }
}

#[cfg(test)]
mod list_tests {
    use super::*;

    #[test]
    fn listing_numbers_its_parameters_in_order() {
        assert_eq!(
            list_sql("orders", true),
            "SELECT body, version FROM orders WHERE status = $1 AND updated_at < $2 AND (updated_at, id) > ($3, $4) ORDER BY updated_at, id LIMIT $5"
        );
        assert!(list_sql("orders", false).starts_with(
            "SELECT body, version FROM orders WHERE updated_at < $1 AND (updated_at, id) > ($2, $3)"
        ));
    }
}
