//! SQLite, the embedded default: one writer connection on its own thread with group commit, and
//! one reader connection on another.
//!
//! SQLite takes one writer at a time, so a pool buys nothing; what costs is the way to the
//! connection and the commit. Writes queue on a channel; the writer thread takes everything
//! queued (up to [`MAX_BATCH`]) and runs it in one transaction. Under load batches grow by
//! themselves; a lone request still commits at once.
//!
//! With `synchronous = FULL` no request is answered before the log (the WAL) holding its batch
//! has been fsynced, so an acknowledged write survives a power cut, as it would with SQLite's own
//! FULL. But the sync does not hold the writer: the writer commits without syncing (SQLite's
//! NORMAL: the batch is in the log, not yet on disk) and hands the batch's answers to the sync
//! threads ([`Log`]), which fsync the log and then release every answer whose batch was
//! committed before that fsync began (an fsync covers everything written to the file before it,
//! and SQLite, NORMAL or not, syncs the log before a checkpoint and before it starts writing the
//! log over, so after a power cut recovery replays every synced commit). While one batch's
//! fsync runs, the writer already commits the next, and a write waits for about one fsync
//! instead of the rest of the running batch's plus its own. With `normal`, answers go out after
//! COMMIT (survives a crash of the process, not a power cut).
//!
//! Reads (a row, a page, a table) never join the writer's queue: they go to a second connection
//! on its own thread. In WAL mode a reader works while the writer writes, so a read (the `fetch`
//! of every update among them) never waits for a batch. Each read statement starts from the
//! last commit, and a write is acknowledged only after it, so a read sees every write
//! acknowledged before it was asked. A read may also see a batch committed but not yet synced:
//! with FULL its answer then waits for that sync, so no caller is ever told of a row that a power
//! cut could still take back. A row carries the batch that last wrote it until that batch is on
//! disk, so a read of older rows is answered at once; a page or a table waits for every batch
//! committed so far.
//!
//! A checkpoint thread copies the log into the database file every 250 ms (PASSIVE: it never
//! blocks the writer or the reader). Under a steady stream of commits that never catches up, so
//! SQLite never gets to write the log over from its start and the log would grow for as long as
//! the load lasts; past [`RESTART_FRAMES`] the writer, between two batches, finishes the
//! checkpoint and starts the log over (RESTART).
//!
//! The table layout, statements and repository are those of [`crate::sql`].
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, mpsc};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use crate::StoreError;
use crate::sql::{
    self, APPLIED_SQL, Column, Indexed, Inserted, ListParams, Owned, Result, Row, SCHEMA_TABLE,
    SqlDatabase, SqlRepository, Table,
};

/// How long a statement waits for another process holding the file (an operator's sqlite3).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Requests per transaction at most: bounds the time a batch holds its callers.
const MAX_BATCH: usize = 256;

/// What the writer can be asked: each runs inside the batch's transaction. Tables are the
/// records' `TABLE` constants, never input.
#[derive(Debug)]
enum Write {
    Migrate {
        table: &'static str,
    },
    /// Inserts unless the key exists; then answers with the existing row.
    Insert {
        table: &'static str,
        row: Owned,
        key: String,
        body: String,
    },
    /// Writes `body` if the row is still at `version`.
    Update {
        table: &'static str,
        row: Owned,
        version: i64,
        body: String,
    },
}

/// What the reader can be asked.
#[derive(Debug)]
enum Read {
    Get {
        table: &'static str,
        by: Column,
        value: String,
    },
    All {
        table: &'static str,
    },
    List {
        table: &'static str,
        params: ListParams,
    },
}

#[derive(Debug)]
enum Outcome {
    Done(()),
    Inserted(Inserted),
    Row(Option<Row>),
    Updated(bool),
    Rows(Vec<String>),
    Page(Vec<Row>),
}

type Reply = oneshot::Sender<Result<Outcome, StoreError>>;

/// How SQLite commits: FULL survives a power cut, NORMAL (WAL) only a crash of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    Full,
    Normal,
}

/// An open SQLite database, served by its threads until the last handle is dropped.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writes: mpsc::Sender<(Write, Reply)>,
    reads: mpsc::Sender<(Read, Reply)>,
    /// Never sent on: the checkpoint thread stops when the last clone of this is dropped.
    _checkpoints: mpsc::Sender<()>,
    /// With FULL, for a test to stall the syncs.
    #[cfg(test)]
    log: Option<Arc<Log>>,
}

impl SqliteStore {
    /// The database of `service` in `data_dir` (both created if missing).
    pub async fn open(
        data_dir: &Path,
        service: &str,
        synchronous: Synchronous,
    ) -> Result<Self, StoreError> {
        Self::open_restarting_at(data_dir, service, synchronous, RESTART_FRAMES).await
    }

    /// [`Self::open`], the log started over past `restart_frames` (a test's is small).
    async fn open_restarting_at(
        data_dir: &Path,
        service: &str,
        synchronous: Synchronous,
        restart_frames: i64,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|err| {
            StoreError::Unavailable(format!(
                "cannot create data directory {}: {err}",
                data_dir.display()
            ))
        })?;
        let file = data_dir.join(format!("{service}.sqlite"));
        let cannot_open = |err: rusqlite::Error| {
            StoreError::Unavailable(format!("cannot open {}: {err}", file.display()))
        };
        // The writer first: it turns a new file to WAL, which the others then find. With FULL
        // it commits without a sync of its own: the sync threads make each batch durable
        // before any of its answers goes out.
        let writer = connect(&file, Synchronous::Normal).map_err(cannot_open)?;
        let reader = connect_reader(&file).map_err(cannot_open)?;
        let checkpointer = connect(&file, synchronous).map_err(cannot_open)?;
        let spawn_failed =
            |err: std::io::Error| StoreError::Unavailable(format!("cannot start a thread: {err}"));
        let log = match synchronous {
            Synchronous::Full => {
                let log = Arc::new(Log::new(wal_file(&file)));
                for i in 0..SYNC_THREADS {
                    let log = log.clone();
                    std::thread::Builder::new()
                        .name(format!("sqlite-sync{i}-{service}"))
                        .spawn(move || log.sync_loop())
                        .map_err(spawn_failed)?;
                }
                Some(log)
            }
            Synchronous::Normal => None,
        };
        let (writes, queue) = mpsc::channel();
        let writer_log = log.clone();
        let restart = Arc::new(AtomicBool::new(false));
        let writer_restart = restart.clone();
        std::thread::Builder::new()
            .name(format!("sqlite-{service}"))
            .spawn(move || serve_writes(writer, &queue, writer_log.as_deref(), &writer_restart))
            .map_err(spawn_failed)?;
        let (reads, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("sqlite-read-{service}"))
            .spawn({
                let log = log.clone();
                move || serve_reads(&reader, &queue, log.as_deref())
            })
            .map_err(spawn_failed)?;
        let (_checkpoints, stop) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("sqlite-checkpoint-{service}"))
            .spawn(move || checkpoint(&checkpointer, &stop, &restart, restart_frames))
            .map_err(spawn_failed)?;
        Ok(Self {
            writes,
            reads,
            _checkpoints,
            #[cfg(test)]
            log,
        })
    }
}

/// Sends `op` to the thread behind `queue` and waits for its answer.
async fn ask<T>(queue: &mpsc::Sender<(T, Reply)>, op: T) -> Result<Outcome, StoreError> {
    let stopped = || StoreError::Unavailable("the SQLite thread has stopped".into());
    let (reply, answer) = oneshot::channel();
    queue.send((op, reply)).map_err(|_| stopped())?;
    answer.await.map_err(|_| stopped())?
}

fn connect(file: &Path, synchronous: Synchronous) -> rusqlite::Result<Connection> {
    let conn = Connection::open(file)?;
    // WAL: a commit appends to the log; readers of the file (our reader, the checker) never
    // block us, nor we them.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let sync = match synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    // Another process on the file (an operator's sqlite3) makes us wait, not fail.
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(64);
    // Checkpoints (copying the log into the database file, with its fsync) run on their own
    // thread, not inside a COMMIT that a whole batch of callers waits for.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    // A log that a burst grew is cut back to this when it is next started over.
    conn.pragma_update(None, "journal_size_limit", LOG_SIZE_LIMIT)?;
    Ok(conn)
}

/// The reader's connection: the same file, refusing any write of its own.
fn connect_reader(file: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(file)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.set_prepared_statement_cache_capacity(64);
    conn.pragma_update(None, "query_only", true)?;
    Ok(conn)
}

/// How often the log is copied into the database: often enough to keep it small.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Frames (pages) in the log past which the writer starts it over (16 MiB of 4 KiB pages).
/// Under a steady stream of commits a PASSIVE checkpoint never catches up with the writer, so
/// SQLite never gets to write the log over from its start: it grew for as long as the load
/// lasted (~45 MB/s per service in the benchmark), every commit extending the file, which made
/// every sync of it a journal commit of its new size as well.
const RESTART_FRAMES: i64 = 4096;

/// The size (bytes) a log that grew past it is cut back to when it is started over.
const LOG_SIZE_LIMIT: i64 = 64 << 20;

/// How long a restart waits for readers to leave the log before it gives up until the next
/// tick; the writer, which runs it, holds every write meanwhile.
const RESTART_WAIT: Duration = Duration::from_millis(100);

/// The checkpoint thread. PASSIVE never blocks the writer or the reader; a checkpoint that
/// cannot finish (a reader in the way) finishes on a later tick. When the log has grown past
/// `restart_frames` ([`RESTART_FRAMES`]) it asks the writer to start it over between two
/// batches.
fn checkpoint(
    conn: &Connection,
    stop: &mpsc::Receiver<()>,
    restart: &AtomicBool,
    restart_frames: i64,
) {
    let mut warned = false;
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        // (busy, frames in the log, frames copied into the database)
        let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            row.get::<_, i64>(1)
        });
        match result {
            Ok(frames) if frames > restart_frames => restart.store(true, Ordering::Relaxed),
            Ok(_) => {}
            Err(err) if !warned => {
                tracing::warn!(error = %err, "SQLite checkpoint failed; the log grows until one succeeds");
                warned = true;
            }
            Err(_) => {}
        }
    }
    // Leave the log empty for the next start.
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
}

/// The writer thread: batches until every handle is gone. With a [`Log`] (FULL), each batch's
/// answers wait in it for the fsync that makes the batch durable.
fn serve_writes(
    mut conn: Connection,
    queue: &mpsc::Receiver<(Write, Reply)>,
    log: Option<&Log>,
    restart: &AtomicBool,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = queue.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let failed = log.and_then(Log::failed);
        let mut published = None;
        let answers = match failed {
            Some(why) => batch
                .iter()
                .map(|_| Err(StoreError::Unavailable(why.clone())))
                .collect(),
            None => run_batch(&mut conn, &batch, |answers| {
                published = log.map(|log| log.publish(written(&batch, answers)));
            }),
        };
        let answered = batch.drain(..).map(|(_, reply)| reply).zip(answers);
        match (log, published) {
            (Some(log), Some(batch)) => log.committed(batch, answered),
            // A caller that gave up (deadline) no longer listens; its write stands.
            _ => answered.for_each(|(reply, answer)| {
                let _ = reply.send(answer);
            }),
        }
        if restart.swap(false, Ordering::Relaxed) {
            restart_log(&conn);
        }
    }
    if let Some(log) = log {
        log.close();
    }
}

/// Copies what is left of the log into the database and waits for the readers to leave it
/// (RESTART), so that the next commit writes the log over from its start. Run by the writer
/// between batches: a checkpoint of this kind must have the writer's lock, which a writer
/// busy batch after batch would never leave to another connection. SQLite syncs the log before
/// the copy, the database after it, and the log's new header before it is written over, so
/// nothing acknowledged depends on the frames overwritten. A restart that cannot finish in
/// [`RESTART_WAIT`] is tried again when the log is next found too long.
fn restart_log(conn: &Connection) {
    let restarted = conn
        .busy_timeout(RESTART_WAIT)
        .and_then(|()| conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(())));
    if let Err(err) = restarted {
        tracing::debug!(error = %err, "SQLite log not started over; tried again later");
    }
    if let Err(err) = conn.busy_timeout(BUSY_TIMEOUT) {
        tracing::warn!(error = %err, "cannot set SQLite's busy timeout back");
    }
}

/// The rows that `batch` wrote, by table and id: what a read of them must wait for.
fn written<'a>(
    batch: &'a [(Write, Reply)],
    answers: &'a [Result<Outcome, StoreError>],
) -> impl Iterator<Item = (Table, String)> + 'a {
    batch
        .iter()
        .zip(answers)
        .filter_map(|((op, _), answer)| match (op, answer) {
            (Write::Insert { table, row, .. }, Ok(Outcome::Inserted(Inserted::New)))
            | (Write::Update { table, row, .. }, Ok(Outcome::Updated(true))) => {
                Some((*table, row.id.clone()))
            }
            _ => None,
        })
}

/// Runs `batch` in one transaction. A statement that fails fails its own request (SQLite undoes
/// just that statement); if SQLite had to abandon the whole transaction, or the COMMIT fails,
/// nothing in the batch is acknowledged. `before_commit` sees the answers just before the
/// COMMIT that may make them visible.
fn run_batch(
    conn: &mut Connection,
    batch: &[(Write, Reply)],
    before_commit: impl FnOnce(&[Result<Outcome, StoreError>]),
) -> Vec<Result<Outcome, StoreError>> {
    let all_failed = |why: String| {
        batch
            .iter()
            .map(|_| Err(StoreError::Unavailable(why.clone())))
            .collect()
    };
    let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(err) => return all_failed(format!("cannot begin a transaction: {err}")),
    };
    let mut answers = Vec::with_capacity(batch.len());
    for (op, _) in batch {
        match write(&tx, op) {
            Ok(outcome) => answers.push(Ok(outcome)),
            Err(err) if tx.is_autocommit() => {
                return all_failed(format!("transaction rolled back, nothing written: {err}"));
            }
            Err(err) => answers.push(Err(StoreError::Unavailable(err.to_string()))),
        }
    }
    before_commit(&answers);
    match tx.commit() {
        Ok(()) => answers,
        Err(err) => all_failed(format!("commit failed, nothing written: {err}")),
    }
}

fn write(conn: &Connection, op: &Write) -> rusqlite::Result<Outcome> {
    match op {
        Write::Migrate { table } => {
            conn.execute(SCHEMA_TABLE, [])?;
            let applied = conn
                .prepare(APPLIED_SQL)?
                .query_map([table], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<i64>>>()?;
            for statement in sql::pending_migrations(table, &applied) {
                conn.execute(&statement, [])?;
            }
            Ok(Outcome::Done(()))
        }
        Write::Insert {
            table,
            row,
            key,
            body,
        } => {
            let inserted = conn
                .prepare_cached(&sql::insert_sql(table))?
                .execute(params![row.id, key, body, row.status, row.updated_at])?;
            // The row that holds the key, read inside this same transaction.
            Ok(Outcome::Inserted(if inserted == 1 {
                Inserted::New
            } else {
                Inserted::Existing(fetch(conn, table, Column::Key, key)?)
            }))
        }
        Write::Update {
            table,
            row,
            version,
            body,
        } => {
            let written = conn
                .prepare_cached(&sql::update_sql(table))?
                .execute(params![body, row.status, row.updated_at, row.id, version])?;
            Ok(Outcome::Updated(written == 1))
        }
    }
}

/// The reader thread: one read at a time, until every handle is gone. Each statement runs in
/// its own read transaction, on the latest commit; its answer goes out at once, or with a
/// [`Log`] (FULL) once what it read is on disk.
fn serve_reads(conn: &Connection, queue: &mpsc::Receiver<(Read, Reply)>, log: Option<&Log>) {
    while let Ok((op, reply)) = queue.recv() {
        match read(conn, &op) {
            Ok((outcome, seen)) => match log {
                Some(log) => log.answer_read(seen, reply, Ok(outcome)),
                None => {
                    let _ = reply.send(Ok(outcome));
                }
            },
            Err(err) => {
                let _ = reply.send(Err(StoreError::Unavailable(err.to_string())));
            }
        }
    }
}

/// What a read saw, for a [`Log`] to know what it must wait for.
#[derive(Debug)]
enum Seen {
    Nothing,
    Row(Table, String),
    /// Any number of rows: everything committed so far.
    Everything,
}

fn read(conn: &Connection, op: &Read) -> rusqlite::Result<(Outcome, Seen)> {
    match op {
        Read::Get { table, by, value } => {
            // The id too: a row is known to the log by it, whichever column found it.
            let found = conn
                .prepare_cached(&sql::select_sql(table, *by))?
                .query_row([value], |row| {
                    Ok(((row.get(0)?, row.get(1)?), row.get::<_, String>(2)?))
                })
                .optional()?;
            Ok(match found {
                Some((row, id)) => (Outcome::Row(Some(row)), Seen::Row(table, id)),
                None => (Outcome::Row(None), Seen::Nothing),
            })
        }
        Read::List { table, params } => {
            let mut statement =
                conn.prepare_cached(&sql::list_sql(table, params.status.is_some()))?;
            let read = |row: &rusqlite::Row<'_>| Ok((row.get(0)?, row.get(1)?));
            let rows = match params.status {
                Some(status) => statement.query_map(
                    params![
                        status,
                        params.before,
                        params.after_at,
                        params.after_id,
                        params.limit
                    ],
                    read,
                )?,
                None => statement.query_map(
                    params![
                        params.before,
                        params.after_at,
                        params.after_id,
                        params.limit
                    ],
                    read,
                )?,
            };
            let page = rows.collect::<rusqlite::Result<Vec<Row>>>()?;
            Ok((Outcome::Page(page), Seen::Everything))
        }
        Read::All { table } => {
            let mut statement = conn.prepare_cached(&sql::all_sql(table))?;
            let rows = statement
                .query_map([], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok((Outcome::Rows(rows), Seen::Everything))
        }
    }
}

fn fetch(conn: &Connection, table: &str, by: Column, value: &str) -> rusqlite::Result<Option<Row>> {
    conn.prepare_cached(&sql::select_sql(table, by))?
        .query_row([value], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()
}

/// Sync threads per database. Two, so that a batch committed while one fsync runs starts its
/// own at once instead of waiting for that one to end.
const SYNC_THREADS: usize = 2;

/// The log file SQLite keeps beside `file` in WAL mode.
fn wal_file(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// With FULL: which batches are on disk, and the answers that wait until theirs is. Batches are
/// numbered in commit order. An fsync of the log makes durable everything written to it before
/// the fsync began (whatever handle wrote it), so once the fsync that began after batch `n`'s
/// COMMIT has returned, batches up to `n` are on disk.
#[derive(Debug)]
struct Log {
    wal: PathBuf,
    state: Mutex<LogState>,
    /// Wakes the sync threads when a batch is committed (or the writer stops).
    more: Condvar,
    /// Held by a test to stall the syncs.
    #[cfg(test)]
    stall: Mutex<()>,
    /// Set by a test to make the syncs fail.
    #[cfg(test)]
    fail: std::sync::atomic::AtomicBool,
}

type Answer = (Reply, Result<Outcome, StoreError>);

#[derive(Debug, Default)]
struct LogState {
    /// The last batch about to be committed: numbered, with its rows below, before its COMMIT
    /// can make it visible.
    published: u64,
    /// The last batch whose COMMIT has returned.
    committed: u64,
    /// The last batch an fsync has begun for.
    claimed: u64,
    /// Every batch up to this one is on disk.
    durable: u64,
    /// Rows written by batches not on disk yet: the last such batch of each.
    unsynced: HashMap<(Table, String), u64>,
    /// Answers waiting for a batch to be on disk.
    held: Vec<(u64, Answer)>,
    /// Why the log can no longer be trusted: after a failed fsync nothing says what reached the
    /// disk, so nothing more is acknowledged until a restart has recovered the file.
    failed: Option<String>,
    /// The writer has stopped: the sync threads finish what is committed and stop.
    closed: bool,
}

impl Log {
    fn new(wal: PathBuf) -> Self {
        Self {
            wal,
            state: Mutex::default(),
            more: Condvar::new(),
            #[cfg(test)]
            stall: Mutex::default(),
            #[cfg(test)]
            fail: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn state(&self) -> MutexGuard<'_, LogState> {
        // No code panics while holding it; if one did, the numbers are still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn failed(&self) -> Option<String> {
        self.state().failed.clone()
    }

    /// Numbers the batch about to be committed and records the rows it wrote.
    fn publish(&self, rows: impl Iterator<Item = (Table, String)>) -> u64 {
        let mut state = self.state();
        state.published += 1;
        let batch = state.published;
        state.unsynced.extend(rows.map(|row| (row, batch)));
        batch
    }

    /// Batch `batch`'s COMMIT has returned (or failed, and wrote nothing): its answers wait for
    /// the next fsync.
    fn committed(&self, batch: u64, answers: impl Iterator<Item = Answer>) {
        let mut state = self.state();
        state.committed = batch;
        // A sync failed meanwhile: no sync comes for this batch either.
        if let Some(why) = state.failed.clone() {
            drop(state);
            for (reply, _) in answers {
                let _ = reply.send(Err(StoreError::Unavailable(why.clone())));
            }
            return;
        }
        state.held.extend(answers.map(|answer| (batch, answer)));
        drop(state);
        self.more.notify_one();
    }

    /// Answers a read at once if what it saw is on disk, or else once it is.
    fn answer_read(&self, seen: Seen, reply: Reply, answer: Result<Outcome, StoreError>) {
        let mut state = self.state();
        let needs = match &seen {
            Seen::Nothing => 0,
            Seen::Row(table, id) => state
                .unsynced
                .get(&(*table, id.clone()))
                .copied()
                .unwrap_or(0),
            // A statement sees at most the batches published before it ended.
            Seen::Everything => state.published,
        };
        if let Some(why) = &state.failed {
            let _ = reply.send(Err(StoreError::Unavailable(why.clone())));
        } else if needs <= state.durable {
            drop(state);
            let _ = reply.send(answer);
        } else {
            state.held.push((needs, (reply, answer)));
        }
    }

    fn close(&self) {
        self.state().closed = true;
        self.more.notify_all();
    }

    /// A sync thread: fsyncs the log whenever a batch is committed that no fsync has begun for,
    /// then releases the answers that waited for it.
    fn sync_loop(&self) {
        let mut file = None;
        loop {
            let target = {
                let mut state = self.state();
                while state.committed <= state.claimed && !state.closed && state.failed.is_none() {
                    state = self
                        .more
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                if state.committed <= state.claimed || state.failed.is_some() {
                    return;
                }
                state.claimed = state.committed;
                state.committed
            };
            let synced = self.sync(&mut file);
            let released = {
                let mut state = self.state();
                match synced {
                    Ok(()) => {
                        state.durable = state.durable.max(target);
                        let durable = state.durable;
                        state.unsynced.retain(|_, batch| *batch > durable);
                        let (ready, waiting) = std::mem::take(&mut state.held)
                            .into_iter()
                            .partition(|(batch, _)| *batch <= durable);
                        state.held = waiting;
                        ready.into_iter().map(|(_, answer)| answer).collect()
                    }
                    Err(err) => {
                        let why = format!(
                            "cannot sync the SQLite log {}: {err}; what it holds may not be on disk, restart the service to recover it",
                            self.wal.display()
                        );
                        tracing::error!(error = %why, "SQLite log sync failed");
                        state.failed = Some(why.clone());
                        self.more.notify_all();
                        std::mem::take(&mut state.held)
                            .into_iter()
                            .map(|(_, (reply, _))| {
                                (reply, Err(StoreError::Unavailable(why.clone())))
                            })
                            .collect::<Vec<_>>()
                    }
                }
            };
            for (reply, answer) in released {
                // A caller that gave up (deadline) no longer listens; its write stands.
                let _ = reply.send(answer);
            }
        }
    }

    /// One fsync of the log (opened on first use: SQLite creates it with the database's first
    /// transaction, and keeps it while any connection is open).
    fn sync(&self, file: &mut Option<std::fs::File>) -> std::io::Result<()> {
        #[cfg(test)]
        let _stalled = self.stall.lock().unwrap_or_else(PoisonError::into_inner);
        #[cfg(test)]
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::Error::other("injected"));
        }
        if file.is_none() {
            *file = Some(std::fs::File::open(&self.wal)?);
        }
        // fdatasync, as SQLite's own FULL uses on Linux: the data and the size, not the
        // modification time that every write to the log changes (with fsync, each sync was
        // also a journal commit of the file's inode).
        match file {
            Some(file) => file.sync_data(),
            None => Ok(()),
        }
    }
}

/// The records of one kind in a [`SqliteStore`].
pub type SqliteRepository<R> = SqlRepository<SqliteStore, R>;

fn unexpected(outcome: Outcome) -> StoreError {
    StoreError::Unavailable(format!(
        "unexpected answer from the SQLite thread: {outcome:?}"
    ))
}

/// Sends `op` on `queue` and unpacks the one kind of answer it has.
macro_rules! ask {
    ($queue:expr, $op:expr, $answer:path) => {
        match ask($queue, $op).await? {
            $answer(value) => Ok(value),
            other => Err(unexpected(other)),
        }
    };
}

impl SqlDatabase for SqliteStore {
    async fn migrate_table(&self, table: Table) -> Result<()> {
        ask!(&self.writes, Write::Migrate { table }, Outcome::Done)
    }

    async fn insert(
        &self,
        table: Table,
        row: Indexed<'_>,
        key: &str,
        body: String,
    ) -> Result<Inserted> {
        let (row, key) = (row.into(), key.to_owned());
        ask!(
            &self.writes,
            Write::Insert {
                table,
                row,
                key,
                body
            },
            Outcome::Inserted
        )
    }

    async fn fetch(&self, table: Table, by: Column, value: &str) -> Result<Option<Row>> {
        let value = value.to_owned();
        ask!(&self.reads, Read::Get { table, by, value }, Outcome::Row)
    }

    async fn write_at(
        &self,
        table: Table,
        row: Indexed<'_>,
        version: i64,
        body: String,
    ) -> Result<bool> {
        let row = row.into();
        ask!(
            &self.writes,
            Write::Update {
                table,
                row,
                version,
                body
            },
            Outcome::Updated
        )
    }

    async fn all(&self, table: Table) -> Result<Vec<String>> {
        ask!(&self.reads, Read::All { table }, Outcome::Rows)
    }

    async fn list(&self, table: Table, params: ListParams) -> Result<Vec<Row>> {
        ask!(&self.reads, Read::List { table, params }, Outcome::Page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{Item, contract, item, race};
    use crate::{ListQuery, Repository};

    fn temp_dir(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("saga-sqlite-{name}-{}", std::process::id()))
    }

    async fn open(dir: &Path, synchronous: Synchronous) -> SqliteStore {
        let store = SqliteStore::open(dir, "test", synchronous).await.unwrap();
        store.migrate::<Item>().await.unwrap();
        store
    }

    #[tokio::test]
    async fn keeps_the_contract_and_survives_a_reopen() {
        let dir = temp_dir("contract");
        let _ = std::fs::remove_dir_all(&dir);
        let store = open(&dir, Synchronous::Full).await;
        store.migrate::<Item>().await.unwrap(); // idempotent
        contract(&store.repository::<Item>()).await;
        drop(store);

        let reopened = open(&dir, Synchronous::Normal).await;
        let repo = reopened.repository::<Item>();
        assert_eq!(repo.get("a").await.unwrap().map(|r| r.n), Some(1));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_batch_and_none_is_lost() {
        let dir = temp_dir("race");
        let _ = std::fs::remove_dir_all(&dir);
        let store = open(&dir, Synchronous::Normal).await;
        race(std::sync::Arc::new(store.repository::<Item>()), 50).await;
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_read_never_waits_for_a_commit_in_progress() {
        let dir = temp_dir("read-alone");
        let _ = std::fs::remove_dir_all(&dir);
        let store = open(&dir, Synchronous::Full).await;
        let repo = std::sync::Arc::new(store.repository::<Item>());
        repo.insert_or_get(item("a", "k")).await.unwrap();
        // Another process holds the write lock: the writer's next batch waits for it.
        let other = Connection::open(dir.join("test.sqlite")).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let writing = tokio::spawn({
            let repo = repo.clone();
            async move { repo.insert_or_get(item("b", "k2")).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let read = tokio::time::timeout(Duration::from_secs(2), repo.get("a")).await;
        assert_eq!(
            read.expect("the read waited").unwrap(),
            Some(item("a", "k"))
        );
        let page = ListQuery {
            status: None,
            updated_before: None,
            after: None,
            limit: 10,
        };
        let listed = tokio::time::timeout(Duration::from_secs(2), repo.list(&page)).await;
        assert_eq!(listed.expect("the listing waited").unwrap().len(), 1);
        assert!(
            !writing.is_finished(),
            "the write should still wait for the lock"
        );
        other.execute_batch("ROLLBACK").unwrap();
        assert!(writing.await.unwrap().unwrap().1);
        assert_eq!(repo.get("b").await.unwrap(), Some(item("b", "k2")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_see_every_acknowledged_write() {
        let dir = temp_dir("read-after-write");
        let _ = std::fs::remove_dir_all(&dir);
        let store = open(&dir, Synchronous::Full).await;
        let repo = std::sync::Arc::new(store.repository::<Item>());
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..16 {
            let repo = repo.clone();
            tasks.spawn(async move {
                let (id, key) = (format!("id{i}"), format!("k{i}"));
                repo.insert_or_get(item(&id, &key)).await.unwrap();
                assert_eq!(repo.get_by_key(&key).await.unwrap().map(|r| r.n), Some(0));
                for n in 1..=20 {
                    let bumped = repo
                        .update::<StoreError, _>(&id, |r: &Item| {
                            Ok(Some(Item {
                                n: r.n + 1,
                                ..r.clone()
                            }))
                        })
                        .await
                        .unwrap();
                    assert_eq!(bumped.map(|r| r.n), Some(n));
                    // The acknowledged write is what the very next read finds.
                    assert_eq!(repo.get(&id).await.unwrap().map(|r| r.n), Some(n));
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    // The lock is held across awaits on purpose: it stalls the sync threads, not this task.
    #[allow(clippy::await_holding_lock)]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nothing_is_answered_before_its_batch_is_synced() {
        let dir = temp_dir("synced");
        let _ = std::fs::remove_dir_all(&dir);
        let store = open(&dir, Synchronous::Full).await;
        let repo = std::sync::Arc::new(store.repository::<Item>());
        repo.insert_or_get(item("a", "k")).await.unwrap();
        let log = store.log.clone().unwrap();
        let stalled = log.stall.lock().unwrap();
        let writing = tokio::spawn({
            let repo = repo.clone();
            async move { repo.insert_or_get(item("b", "k2")).await }
        });
        let soon = Duration::from_millis(300);
        tokio::time::sleep(soon).await;
        assert!(!writing.is_finished(), "answered before the log was synced");
        // "b" is committed (visible to the reader) but not on disk: a read of it waits, and so
        // does a listing (it could include it); a read of "a", on disk, does not.
        assert_eq!(
            tokio::time::timeout(soon, repo.get("a"))
                .await
                .unwrap()
                .unwrap(),
            Some(item("a", "k"))
        );
        let reading = tokio::spawn({
            let repo = repo.clone();
            async move { repo.get_by_key("k2").await }
        });
        let page = ListQuery {
            status: None,
            updated_before: None,
            after: None,
            limit: 10,
        };
        let listing = tokio::spawn({
            let repo = repo.clone();
            async move { repo.list(&page).await }
        });
        tokio::time::sleep(soon).await;
        assert!(!reading.is_finished() && !listing.is_finished());
        drop(stalled);
        assert!(writing.await.unwrap().unwrap().1);
        assert_eq!(reading.await.unwrap().unwrap(), Some(item("b", "k2")));
        assert_eq!(listing.await.unwrap().unwrap().len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn after_a_failed_sync_nothing_is_acknowledged() {
        let dir = temp_dir("sync-failed");
        let _ = std::fs::remove_dir_all(&dir);
        let store = open(&dir, Synchronous::Full).await;
        let repo = store.repository::<Item>();
        repo.insert_or_get(item("a", "k")).await.unwrap();
        let log = store.log.clone().unwrap();
        log.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        let err = repo.insert_or_get(item("b", "k2")).await.unwrap_err();
        assert!(err.to_string().contains("cannot sync"), "{err}");
        // Neither a read nor a later write is answered: the log can no longer be trusted.
        assert!(matches!(
            repo.get("a").await,
            Err(StoreError::Unavailable(_))
        ));
        let later = repo.insert_or_get(item("c", "k3")).await.unwrap_err();
        assert!(later.to_string().contains("cannot sync"), "{later}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_failed_statement_fails_only_its_request() {
        let dir = temp_dir("failed");
        let _ = std::fs::remove_dir_all(&dir);
        let store = open(&dir, Synchronous::Normal).await;
        let repo = store.repository::<Item>();
        repo.insert_or_get(item("a", "k1")).await.unwrap();
        // Same id, other key: the primary key refuses it.
        let (dup, other) = tokio::join!(
            repo.insert_or_get(item("a", "k2")),
            repo.insert_or_get(item("b", "k3"))
        );
        assert!(matches!(dup, Err(StoreError::Unavailable(_))), "{dup:?}");
        assert!(other.unwrap().1);
        assert_eq!(repo.all().await.unwrap().len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn the_log_is_copied_into_the_database_file_in_the_background() {
        let dir = temp_dir("checkpoint");
        let _ = std::fs::remove_dir_all(&dir);
        let store = open(&dir, Synchronous::Full).await;
        let repo = store.repository::<Item>();
        for i in 0..100 {
            repo.insert_or_get(item(&format!("id{i}"), &format!("k{i}")))
                .await
                .unwrap();
        }
        // The database file alone, without its log, has the rows once a checkpoint ran.
        let copy = dir.join("copy.sqlite");
        let mut rows = 0;
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            std::fs::copy(dir.join("test.sqlite"), &copy).unwrap();
            let conn = Connection::open(&copy).unwrap();
            rows = conn
                .query_row("SELECT COUNT(*) FROM items", [], |row| row.get(0))
                .unwrap_or(0);
            if rows == 100 {
                break;
            }
        }
        assert_eq!(rows, 100);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// How many times SQLite has started the log over: the checkpoint sequence number in its
    /// header, which each restart increments.
    fn log_restarts(dir: &Path) -> u32 {
        use std::io::Read;
        let mut header = [0u8; 16];
        std::fs::File::open(wal_file(&dir.join("test.sqlite")))
            .and_then(|mut file| file.read_exact(&mut header))
            .map_or(0, |()| {
                u32::from_be_bytes([header[12], header[13], header[14], header[15]])
            })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn under_a_steady_stream_of_writes_the_log_is_started_over() {
        let dir = temp_dir("log-restart");
        let _ = std::fs::remove_dir_all(&dir);
        // NORMAL: no caller waits for a sync, so the writer never idles, and a PASSIVE
        // checkpoint alone never catches up with it. A restart past 16 frames (64 KiB).
        let store = SqliteStore::open_restarting_at(&dir, "test", Synchronous::Normal, 16)
            .await
            .unwrap();
        store.migrate::<Item>().await.unwrap();
        let repo = Arc::new(store.repository::<Item>());
        let before = log_restarts(&dir);
        // Bounded in time and in rows, and stopped as soon as the restarts are seen: the log
        // itself stays small, but the database grows with every row written.
        let until = std::time::Instant::now() + Duration::from_secs(5);
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = tokio::task::JoinSet::new();
        for w in 0..32 {
            let (repo, stop) = (repo.clone(), stop.clone());
            writers.spawn(async move {
                let mut written = 0;
                while written < 20_000 && !stop.load(Ordering::Relaxed) {
                    let id = format!("w{w}-{written}");
                    repo.insert_or_get(item(&id, &id)).await.unwrap();
                    written += 1;
                }
                written
            });
        }
        let (mut largest, wal) = (0, wal_file(&dir.join("test.sqlite")));
        // Several restarts: a checkpoint tick is 250 ms.
        while std::time::Instant::now() < until && log_restarts(&dir) - before < 3 {
            largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.store(true, Ordering::Relaxed);
        let mut total = 0;
        while let Some(written) = writers.join_next().await {
            total += written.unwrap();
        }
        let restarts = log_restarts(&dir) - before;
        assert!(
            restarts >= 2,
            "{total} writes, and the log was started over {restarts} times (largest {largest} bytes)"
        );
        assert_eq!(repo.all().await.unwrap().len(), total);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_row_that_does_not_decode_is_corrupt() {
        let dir = temp_dir("corrupt");
        let _ = std::fs::remove_dir_all(&dir);
        let store = open(&dir, Synchronous::Full).await;
        let repo = store.repository::<Item>();
        repo.insert_or_get(item("a", "k")).await.unwrap();
        Connection::open(dir.join("test.sqlite"))
            .unwrap()
            .execute("UPDATE items SET body = 'not json'", [])
            .unwrap();
        let err = repo.get("a").await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn an_unwritable_directory_is_reported() {
        let file = temp_dir("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let err = SqliteStore::open(&file, "test", Synchronous::Full)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("data directory"), "{err}");
        std::fs::remove_file(&file).unwrap();
    }
}
