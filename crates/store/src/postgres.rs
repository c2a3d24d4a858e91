//! PostgreSQL, for several replicas of a service (`DATABASE_URL`), through sqlx. The table
//! layout, the conflict and version rules and the repository are those of [`crate::sql`].
//!
//! Writes are group-committed, as on SQLite. Each table has a task that takes the inserts and
//! updates queued while its last batch ran (up to [`MAX_BATCH`]) and runs them as ONE statement
//! ([`write_sql`]: the rows as arrays, unnested). A statement outside a transaction is its own
//! transaction, so a batch costs one round trip and one WAL flush instead of one per write, and
//! each caller is answered only after the statement, COMMIT included, has returned. Lookups by
//! id or key are batched the same way ([`fetch_sql`]): a statement's fixed costs (round trip,
//! executor start, wake-ups on both sides) are many times a row's. Under load batches grow by
//! themselves; a lone request still runs at once. Listings go straight to the pool.
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection, PgPool, Postgres};
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::StoreError;
use crate::sql::{
    self, APPLIED_SQL, Column, Indexed, Inserted, ListParams, Owned, Result, Row, SCHEMA_TABLE,
    SqlDatabase, SqlRepository, Table,
};

/// Requests per statement at most: bounds the time a batch holds its callers.
const MAX_BATCH: usize = 256;

/// Times a batch is run again after a deadlock or serialization failure (other replicas write
/// the same tables) before its callers are told to retry.
const CONFLICT_RETRIES: u32 = 5;

/// A batch connection idle this long is pinged before its next statement; a busy one is not
/// (one that broke meanwhile fails that batch, which is `Unavailable` and retried, and is
/// replaced).
const PING_AFTER_IDLE: Duration = Duration::from_secs(5);

/// A row that does not decode is corrupt; anything else is the database or the way to it.
fn store_error(err: sqlx::Error) -> StoreError {
    match err {
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
            StoreError::Corrupt(err.to_string())
        }
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// The same error, for each caller of a failed batch.
fn copy(err: &StoreError) -> StoreError {
    match err {
        StoreError::Unavailable(why) => StoreError::Unavailable(why.clone()),
        StoreError::Corrupt(why) => StoreError::Corrupt(why.clone()),
    }
}

/// An open database.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// The queue of each table's task, started by its first request. Dropping the last
    /// [`PgStore`] drops the queues, and each task ends once it has answered what they held.
    tables: Arc<std::sync::Mutex<HashMap<Table, mpsc::UnboundedSender<Request>>>>,
    /// Batch statements run, successful or not (the tests check that requests share them).
    statements: Arc<AtomicU64>,
}

impl PgStore {
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            // Plan each statement once per connection: planning every run was a third of the
            // database's work (PostgreSQL's own choice keeps planning statements whose custom
            // plans look cheaper, as a batch's do). Every statement here finds its rows through
            // an index, and with scans of whole tables off a plan made while a table was small
            // still does, however big the table grows.
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("SET plan_cache_mode = force_generic_plan")
                        .await?;
                    conn.execute("SET enable_seqscan = off").await.map(drop)
                })
            })
            .connect(url)
            .await
            .map_err(|err| {
                StoreError::Unavailable(format!("cannot open {}: {err}", redact(url)))
            })?;
        Ok(Self {
            pool,
            tables: Arc::default(),
            statements: Arc::default(),
        })
    }

    /// Queues `request` for the task of `table`.
    fn send(&self, table: Table, mut request: Request) {
        let mut tables = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        // Two rounds: a task that has stopped (its runtime shut down) is replaced once. A
        // request that finds no task is dropped, and its caller told so.
        for _ in 0..2 {
            let queue = tables.entry(table).or_insert_with(|| {
                let (queue, requests) = mpsc::unbounded_channel();
                let batcher = Batcher {
                    pool: self.pool.clone(),
                    write: write_sql(table).into(),
                    fetch: fetch_sql(table).into(),
                    writer: Mutex::default(),
                    reader: Mutex::default(),
                    statements: self.statements.clone(),
                };
                tokio::spawn(batcher.serve(requests));
                queue
            });
            match queue.send(request) {
                Ok(()) => return,
                Err(mpsc::error::SendError(back)) => {
                    tables.remove(table);
                    request = back;
                }
            }
        }
    }

    /// Has the task of `table` run `write`: whether it took effect.
    async fn write(&self, table: Table, write: Write) -> Result<bool> {
        let (reply, answer) = oneshot::channel();
        self.send(table, Request::Write(write, reply));
        answer.await.map_err(|_| stopped(table))?
    }

    /// Batch statements run so far, all tables.
    #[cfg(test)]
    fn statements(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }
}

fn stopped(table: Table) -> StoreError {
    StoreError::Unavailable(format!("the PostgreSQL task of {table} has stopped"))
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

/// One batch of writes to `table` as one statement. `$1`–`$5` are the inserts and `$6`–`$10`
/// the updates, one array per column; it returns the ids inserted (`false`) and written
/// (`true`). Both parts see the same snapshot, which is safe: a batch holds at most one write
/// per id and per key ([`admit`]), and an update is of a row read before, never of one this
/// statement inserts. An id taken under another key fails the statement, as it fails
/// [`sql::insert_sql`]; the batch then runs again a write at a time ([`Batcher::write`]).
/// `table` is a record's `TABLE` constant, never input.
fn write_sql(table: Table) -> String {
    format!(
        "WITH inserted AS (\
            INSERT INTO {table} (id, key, version, body, status, updated_at) \
            SELECT id, key, 1, body, status, updated_at \
            FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[]) \
            AS u (id, key, body, status, updated_at) \
            ON CONFLICT (key) DO NOTHING RETURNING id), \
        written AS (\
            UPDATE {table} AS t \
            SET body = u.body, status = u.status, updated_at = u.updated_at, version = t.version + 1 \
            FROM UNNEST($6::text[], $7::bigint[], $8::text[], $9::text[], $10::bigint[]) \
            AS u (id, version, body, status, updated_at) \
            WHERE t.id = u.id AND t.version = u.version RETURNING t.id) \
        SELECT false, id FROM inserted UNION ALL SELECT true, id FROM written"
    )
}

/// The rows of a batch of lookups: `$1` the ids, `$2` the keys. (Two index scans: `id = ANY($1)
/// OR key = ANY($2)` is planned as a scan of the table.)
fn fetch_sql(table: Table) -> String {
    format!(
        "SELECT id, key, body, version FROM {table} WHERE id = ANY($1) \
        UNION ALL SELECT id, key, body, version FROM {table} WHERE key = ANY($2)"
    )
}

/// What a table's task is asked, and where the answer goes.
#[derive(Debug)]
enum Request {
    /// `true` if the row was inserted (its key was free) or written (its version was current).
    Write(Write, oneshot::Sender<Result<bool>>),
    Fetch(Fetch, oneshot::Sender<Result<Option<Row>>>),
}

#[derive(Debug)]
enum Write {
    /// Inserts the row unless its key (or its id) is taken.
    Insert {
        row: Owned,
        key: String,
        body: String,
    },
    /// Writes over row `id` if it is still at `version`.
    Update {
        row: Owned,
        version: i64,
        body: String,
    },
}

impl Write {
    fn id(&self) -> &str {
        match self {
            Write::Insert { row, .. } | Write::Update { row, .. } => &row.id,
        }
    }

    fn key(&self) -> Option<&str> {
        match self {
            Write::Insert { key, .. } => Some(key),
            Write::Update { .. } => None,
        }
    }
}

/// A lookup of one row.
#[derive(Debug)]
struct Fetch {
    by: Column,
    value: String,
}

type WriteRequest = (Write, oneshot::Sender<Result<bool>>);
type FetchRequest = (Fetch, oneshot::Sender<Result<Option<Row>>>);

/// Takes the next batch out of `waiting`: in order, up to [`MAX_BATCH`], and at most one write
/// per id and per key, because one statement cannot update a row twice and two inserts of one
/// key would leave unclear which of them won. The others stay, in order, for the next batch.
fn admit(waiting: &mut VecDeque<WriteRequest>) -> Vec<WriteRequest> {
    let mut ids = HashSet::new();
    let mut keys = HashSet::new();
    let mut batch = Vec::with_capacity(waiting.len().min(MAX_BATCH));
    let mut later = VecDeque::new();
    for request in waiting.drain(..) {
        let (id, key) = (request.0.id(), request.0.key());
        if batch.len() < MAX_BATCH && !ids.contains(id) && key.is_none_or(|key| !keys.contains(key))
        {
            ids.insert(id.to_owned());
            keys.extend(key.map(str::to_owned));
            batch.push(request);
        } else {
            later.push_back(request);
        }
    }
    *waiting = later;
    batch
}

/// A deadlock or a serialization failure: the statement was undone whole and can run again.
fn conflicted(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| code == "40P01" || code == "40001")
}

/// An error one row can cause (bad data, a constraint, a size limit), as opposed to the
/// database or the connection failing.
fn row_at_fault(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| {
            ["22", "23", "54"]
                .iter()
                .any(|class| code.starts_with(class))
        })
}

/// The task of one table: batches its writes and its lookups.
struct Batcher {
    pool: PgPool,
    write: Arc<str>,
    fetch: Arc<str>,
    /// The connections batches run on, one per kind, kept between batches: a connection
    /// taken from the pool for each statement costs a second round trip, sqlx's check when it
    /// is given back.
    writer: Mutex<Held>,
    reader: Mutex<Held>,
    statements: Arc<AtomicU64>,
}

/// A connection taken from the pool for good, and when it last ran a statement.
#[derive(Default)]
struct Held {
    conn: Option<PoolConnection<Postgres>>,
    used: Option<Instant>,
}

impl Held {
    /// The connection, taken from the pool if there is none, or pinged if it has been idle.
    async fn get(&mut self, pool: &PgPool) -> Result<&mut PgConnection, sqlx::Error> {
        let idle = self
            .used
            .is_none_or(|used| used.elapsed() >= PING_AFTER_IDLE);
        if let Some(conn) = &mut self.conn
            && idle
            && conn.ping().await.is_err()
        {
            self.conn = None;
        }
        self.used = Some(Instant::now());
        let conn = match self.conn.take() {
            Some(conn) => conn,
            None => pool.acquire().await?,
        };
        Ok(&mut **self.conn.insert(conn))
    }

    /// Notes how a statement on the connection ended: after an error other than a refused
    /// row or a conflict (the connection broke, the server is shutting it down, the protocol
    /// went astray), it goes back to the pool, which closes it if it is broken.
    fn ended<T>(&mut self, result: &Result<T, sqlx::Error>) {
        if let Err(err) = result
            && !row_at_fault(err)
            && !conflicted(err)
        {
            self.conn = None;
        }
    }
}

/// A running batch.
type Running<'a> = Option<Pin<Box<dyn Future<Output = ()> + Send + 'a>>>;

/// Runs the batch in `slot`, if any (the task's `select!` polls it only then).
async fn finish(slot: &mut Running<'_>) {
    if let Some(batch) = slot {
        batch.await;
    }
}

impl Batcher {
    /// Runs batches until every sender is gone and every request answered: one batch of writes
    /// and one of lookups at a time, each taking all of its kind that queued while the last
    /// ran (up to [`MAX_BATCH`]). A request that finds none of its kind running starts one at
    /// once. The batches run inside this task, not spawned, as each hop between tasks costs
    /// more than the statement's own work here.
    async fn serve(self, mut requests: mpsc::UnboundedReceiver<Request>) {
        let mut writes = VecDeque::new();
        let mut fetches = Vec::new();
        let mut writing: Running<'_> = None;
        let mut fetching: Running<'_> = None;
        let mut open = true;
        let room =
            |writes: &VecDeque<_>, fetches: &Vec<_>| writes.len() + fetches.len() < 2 * MAX_BATCH;
        loop {
            while open && room(&writes, &fetches) {
                match requests.try_recv() {
                    Ok(Request::Write(write, reply)) => writes.push_back((write, reply)),
                    Ok(Request::Fetch(fetch, reply)) => fetches.push((fetch, reply)),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                }
            }
            if writing.is_none() && !writes.is_empty() {
                writing = Some(Box::pin(self.write(admit(&mut writes))));
            }
            if fetching.is_none() && !fetches.is_empty() {
                let batch = fetches.drain(..fetches.len().min(MAX_BATCH)).collect();
                fetching = Some(Box::pin(self.fetch(batch)));
            }
            if writing.is_none() && fetching.is_none() {
                if !open {
                    return;
                }
                // Nothing queued and nothing running: wait for a request.
                match requests.recv().await {
                    Some(Request::Write(write, reply)) => writes.push_back((write, reply)),
                    Some(Request::Fetch(fetch, reply)) => fetches.push((fetch, reply)),
                    None => open = false,
                }
                continue;
            }
            tokio::select! {
                request = requests.recv(), if open && room(&writes, &fetches) => match request {
                    Some(Request::Write(write, reply)) => writes.push_back((write, reply)),
                    Some(Request::Fetch(fetch, reply)) => fetches.push((fetch, reply)),
                    None => open = false,
                },
                () = finish(&mut writing), if writing.is_some() => writing = None,
                () = finish(&mut fetching), if fetching.is_some() => fetching = None,
            }
        }
    }

    /// Runs a batch of writes and answers its callers.
    async fn write(&self, batch: Vec<WriteRequest>) {
        let writes: Vec<&Write> = batch.iter().map(|(write, _)| write).collect();
        let answers = match self.commit(&writes).await {
            Ok(done) => done.into_iter().map(Ok).collect(),
            // One bad row failed the statement and so the batch, which wrote nothing: each
            // write alone, so that only the bad one fails.
            Err(err) if writes.len() > 1 && row_at_fault(&err) => {
                let mut answers = Vec::with_capacity(writes.len());
                for write in &writes {
                    let done = self.commit(&[write]).await;
                    answers.push(
                        done.map(|done| done.first() == Some(&true))
                            .map_err(|err| StoreError::Unavailable(err.to_string())),
                    );
                }
                answers
            }
            // Nothing of the batch is acknowledged: its callers retry.
            Err(err) => {
                let why = format!("batch write failed, retry: {err}");
                writes
                    .iter()
                    .map(|_| Err(StoreError::Unavailable(why.clone())))
                    .collect()
            }
        };
        drop(writes);
        for ((_, reply), answer) in batch.into_iter().zip(answers) {
            // A caller that gave up (deadline) no longer listens; its write stands.
            let _ = reply.send(answer);
        }
    }

    /// Runs `writes` as one [`write_sql`] statement (again after a deadlock or serialization
    /// failure) and says which of them took effect.
    async fn commit(&self, writes: &[&Write]) -> Result<Vec<bool>, sqlx::Error> {
        let mut inserts = Vec::new();
        let mut updates = Vec::new();
        for write in writes {
            match write {
                Write::Insert { row, key, body } => {
                    inserts.push((row, key.as_str(), body.as_str()))
                }
                Write::Update { row, version, body } => {
                    updates.push((row, *version, body.as_str()));
                }
            }
        }
        // The same order in every replica's batches (keys for inserts, ids for updates), so that
        // two batches take their row locks in one order rather than into a deadlock.
        inserts.sort_unstable_by_key(|(_, key, _)| *key);
        updates.sort_unstable_by_key(|(row, _, _)| row.id.as_str());
        let mut new = Columns::default();
        let mut keys = Vec::with_capacity(inserts.len());
        for (row, key, body) in inserts {
            new.push(row, body);
            keys.push(key);
        }
        let mut changed = Columns::default();
        let mut versions = Vec::with_capacity(updates.len());
        for (row, version, body) in updates {
            changed.push(row, body);
            versions.push(version);
        }
        let mut held = self.writer.lock().await;
        let mut conflicts = 0;
        let rows: Vec<(bool, String)> = loop {
            self.statements.fetch_add(1, Ordering::Relaxed);
            let conn = held.get(&self.pool).await?;
            let result = sqlx::query_as(AssertSqlSafe(self.write.clone()))
                .bind(&new.ids)
                .bind(&keys)
                .bind(&new.bodies)
                .bind(&new.statuses)
                .bind(&new.updated_at)
                .bind(&changed.ids)
                .bind(&versions)
                .bind(&changed.bodies)
                .bind(&changed.statuses)
                .bind(&changed.updated_at)
                .fetch_all(conn)
                .await;
            held.ended(&result);
            match result {
                Ok(rows) => break rows,
                Err(err) if conflicted(&err) && conflicts < CONFLICT_RETRIES => {
                    conflicts += 1;
                    tracing::debug!(error = %err, conflicts, "batch write conflicted; running it again");
                    tokio::time::sleep(Duration::from_millis(u64::from(conflicts))).await;
                }
                Err(err) => return Err(err),
            }
        };
        let mut inserted = HashSet::new();
        let mut written = HashSet::new();
        for (update, id) in rows {
            if update {
                written.insert(id);
            } else {
                inserted.insert(id);
            }
        }
        Ok(writes
            .iter()
            .map(|write| match write {
                Write::Insert { row, .. } => inserted.contains(&row.id),
                Write::Update { row, .. } => written.contains(&row.id),
            })
            .collect())
    }

    /// Runs a batch of lookups and answers its callers.
    async fn fetch(&self, batch: Vec<FetchRequest>) {
        let fetches: Vec<&Fetch> = batch.iter().map(|(fetch, _)| fetch).collect();
        let answers = match self.look_up(&fetches).await {
            Ok(rows) => rows.into_iter().map(Ok).collect(),
            // As for writes: one bad value (a key PostgreSQL refuses) fails only its lookup.
            Err(err) if fetches.len() > 1 && row_at_fault(&err) => {
                let mut answers = Vec::with_capacity(fetches.len());
                for fetch in &fetches {
                    let row = self.look_up(&[fetch]).await;
                    answers.push(
                        row.map(|mut rows| rows.pop().flatten())
                            .map_err(store_error),
                    );
                }
                answers
            }
            Err(err) => {
                let err = store_error(err);
                fetches.iter().map(|_| Err(copy(&err))).collect()
            }
        };
        drop(fetches);
        for ((_, reply), answer) in batch.into_iter().zip(answers) {
            let _ = reply.send(answer);
        }
    }

    /// Runs `fetches` as one [`fetch_sql`] statement: the row each asks for, if any.
    async fn look_up(&self, fetches: &[&Fetch]) -> Result<Vec<Option<Row>>, sqlx::Error> {
        let mut ids = Vec::new();
        let mut keys = Vec::new();
        for fetch in fetches {
            match fetch.by {
                Column::Id => ids.push(fetch.value.as_str()),
                Column::Key => keys.push(fetch.value.as_str()),
            }
        }
        self.statements.fetch_add(1, Ordering::Relaxed);
        let mut held = self.reader.lock().await;
        let conn = held.get(&self.pool).await?;
        let result = sqlx::query_as(AssertSqlSafe(self.fetch.clone()))
            .bind(&ids)
            .bind(&keys)
            .fetch_all(conn)
            .await;
        held.ended(&result);
        let rows: Vec<(String, String, String, i64)> = result?;
        let by_id: HashMap<&str, usize> = rows
            .iter()
            .enumerate()
            .map(|(i, row)| (row.0.as_str(), i))
            .collect();
        let by_key: HashMap<&str, usize> = rows
            .iter()
            .enumerate()
            .map(|(i, row)| (row.1.as_str(), i))
            .collect();
        Ok(fetches
            .iter()
            .map(|fetch| {
                let index = match fetch.by {
                    Column::Id => by_id.get(fetch.value.as_str()),
                    Column::Key => by_key.get(fetch.value.as_str()),
                };
                index
                    .and_then(|&i| rows.get(i))
                    .map(|(_, _, body, version)| (body.clone(), *version))
            })
            .collect())
    }
}

/// The columns both kinds of write set, as the arrays [`write_sql`] unnests.
#[derive(Default)]
struct Columns<'a> {
    ids: Vec<&'a str>,
    bodies: Vec<&'a str>,
    statuses: Vec<&'static str>,
    updated_at: Vec<i64>,
}

impl<'a> Columns<'a> {
    fn push(&mut self, row: &'a Owned, body: &'a str) {
        self.ids.push(&row.id);
        self.bodies.push(body);
        self.statuses.push(row.status);
        self.updated_at.push(row.updated_at);
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
        let write = Write::Insert {
            row: row.into(),
            key: key.to_owned(),
            body,
        };
        if self.write(table, write).await? {
            return Ok(Inserted::New);
        }
        Ok(Inserted::Existing(
            self.fetch(table, Column::Key, key).await?,
        ))
    }

    async fn fetch(&self, table: Table, by: Column, value: &str) -> Result<Option<Row>> {
        let (reply, answer) = oneshot::channel();
        let fetch = Fetch {
            by,
            value: value.to_owned(),
        };
        self.send(table, Request::Fetch(fetch, reply));
        answer.await.map_err(|_| stopped(table))?
    }

    async fn write_at(
        &self,
        table: Table,
        row: Indexed<'_>,
        version: i64,
        body: String,
    ) -> Result<bool> {
        let write = Write::Update {
            row: row.into(),
            version,
            body,
        };
        self.write(table, write).await
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
    use crate::Repository;
    use crate::tests::{Item, contract, item, race};

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
            race(std::sync::Arc::new(store.repository::<Item>()), 50).await;
        }
    }

    /// Adds one to `n` of record `id`.
    async fn bump(repo: &PgRepository<Item>, id: &str) {
        repo.update::<StoreError, _>(id, |r: &Item| {
            Ok(Some(Item {
                n: r.n + 1,
                ..r.clone()
            }))
        })
        .await
        .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_batch_and_none_is_lost() {
        let Some(store) = database("batch").await else {
            return;
        };
        let repo = std::sync::Arc::new(store.repository::<Item>());
        let before = store.statements();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200 {
            let repo = repo.clone();
            tasks.spawn(async move {
                let id = format!("id{i}");
                let (_, inserted) = repo
                    .insert_or_get(item(&id, &format!("k{i}")))
                    .await
                    .unwrap();
                assert!(inserted);
                for _ in 0..3 {
                    bump(&repo, &id).await;
                }
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.unwrap();
        }
        let all = repo.all().await.unwrap();
        assert_eq!(all.len(), 200);
        assert!(all.iter().all(|r| r.n == 3), "{all:?}");
        // 800 writes and 600 lookups, far fewer statements.
        let statements = store.statements() - before;
        assert!(
            statements < 700,
            "{statements} statements for 1,400 requests"
        );
    }

    /// Two replicas on one database bump the same two rows in opposite orders: their batches
    /// lock rows in one order (or run again after a deadlock), and no update is lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_writing_the_same_rows_lose_nothing() {
        let Some(first) = database("replicas").await else {
            return;
        };
        let second = PgStore {
            pool: first.pool.clone(),
            tables: Arc::default(),
            statements: Arc::default(),
        };
        let replicas =
            [first.repository::<Item>(), second.repository::<Item>()].map(std::sync::Arc::new);
        for id in ["a", "b"] {
            replicas[0].insert_or_get(item(id, id)).await.unwrap();
        }
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..40 {
            let repo = replicas[i % 2].clone();
            let order = if i % 2 == 0 { ["a", "b"] } else { ["b", "a"] };
            tasks.spawn(async move {
                for id in order {
                    bump(&repo, id).await;
                }
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.unwrap();
        }
        for id in ["a", "b"] {
            assert_eq!(replicas[1].get(id).await.unwrap().map(|r| r.n), Some(40));
        }
    }

    #[tokio::test]
    async fn a_bad_row_fails_only_its_own_request() {
        let Some(store) = database("bad_row").await else {
            return;
        };
        let repo = store.repository::<Item>();
        repo.insert_or_get(item("a", "k1")).await.unwrap();
        let before = store.statements();
        // In one batch (this runtime has one thread: the writer runs once all three are
        // queued): an id taken under another key, a key PostgreSQL refuses (NUL), a good row.
        let (taken, refused, good) = tokio::join!(
            repo.insert_or_get(item("a", "k2")),
            repo.insert_or_get(item("b", "k\0")),
            repo.insert_or_get(item("c", "k3"))
        );
        assert!(
            matches!(&taken, Err(StoreError::Unavailable(why)) if why.contains("items_pkey")),
            "{taken:?}"
        );
        assert!(
            matches!(refused, Err(StoreError::Unavailable(_))),
            "{refused:?}"
        );
        assert!(good.unwrap().1);
        // The batch, then each of its three writes alone.
        assert_eq!(store.statements() - before, 4);
        // Lookups too: a key PostgreSQL refuses fails only its own.
        let (refused, good) = tokio::join!(repo.get_by_key("k\0"), repo.get("a"));
        assert!(
            matches!(refused, Err(StoreError::Unavailable(_))),
            "{refused:?}"
        );
        assert_eq!(good.unwrap().map(|r| r.key), Some("k1".into()));
        let mut ids: Vec<String> = repo
            .all()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        ids.sort();
        assert_eq!(ids, ["a", "c"]);
    }

    #[tokio::test]
    async fn a_broken_connection_fails_one_batch_and_is_replaced() {
        let Some(store) = database("broken").await else {
            return;
        };
        let repo = store.repository::<Item>();
        repo.insert_or_get(item("a", "k1")).await.unwrap();
        assert!(repo.get("a").await.unwrap().is_some());
        // Ends the connections the batches hold (not the one this runs on).
        store
            .pool
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            .await
            .unwrap();
        // At most the first write and the first lookup fail, as Unavailable; then they work.
        let first = repo.insert_or_get(item("b", "k2")).await;
        assert!(
            matches!(first, Ok(_) | Err(StoreError::Unavailable(_))),
            "{first:?}"
        );
        let (stored, _) = repo.insert_or_get(item("b", "k2")).await.unwrap();
        assert_eq!(stored.id, "b");
        let first = repo.get("b").await;
        assert!(
            matches!(first, Ok(_) | Err(StoreError::Unavailable(_))),
            "{first:?}"
        );
        assert!(repo.get("b").await.unwrap().is_some());
    }

    #[test]
    fn a_batch_takes_one_write_per_id_and_key_in_order() {
        let request = |write| (write, oneshot::channel().0);
        let insert = |id: &str, key: &str| {
            request(Write::Insert {
                row: Owned {
                    id: id.into(),
                    status: "s",
                    updated_at: 0,
                },
                key: key.into(),
                body: String::new(),
            })
        };
        let update = |id: &str| {
            request(Write::Update {
                row: Owned {
                    id: id.into(),
                    status: "s",
                    updated_at: 0,
                },
                version: 1,
                body: String::new(),
            })
        };
        let mut waiting = VecDeque::from([
            update("a"),
            insert("b", "k"),
            update("a"),
            insert("c", "k"),
            insert("d", "l"),
            update("b"),
        ]);
        let ids = |batch: &[WriteRequest]| {
            batch
                .iter()
                .map(|(write, _)| write.id().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&admit(&mut waiting)), ["a", "b", "d"]);
        assert_eq!(ids(&admit(&mut waiting)), ["a", "c", "b"]);
        assert!(waiting.is_empty());
        let mut many: VecDeque<_> = (0..MAX_BATCH + 1).map(|i| update(&i.to_string())).collect();
        assert_eq!(admit(&mut many).len(), MAX_BATCH);
        assert_eq!(many.len(), 1);
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }
}
