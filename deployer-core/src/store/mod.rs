//! The store: build and publish outcomes in SQLite, behind a dedicated thread.
//!
//! All database I/O happens on the store's own thread, never on the engine's
//! task or a tokio worker. Writes queued together are committed in one
//! transaction (group commit), so one fsync covers many outcomes, and each
//! caller is answered only after the commit: an outcome is durable before the
//! job that produced it is reported done.
//!
//! Schema changes are versioned migrations (`PRAGMA user_version`). A database
//! written by a newer version of this program, or a file that is not a
//! database, is refused with an error naming the file, and left untouched.

mod schema;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::clock::Clock;

pub use schema::SCHEMA_VERSION;

/// What can go wrong with the store.
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// The file could not be opened or created.
    Open {
        /// The database file.
        path: PathBuf,
        /// Why.
        source: rusqlite::Error,
    },
    /// The file exists but is not a SQLite database (or is corrupt).
    NotADatabase {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        detail: String,
    },
    /// The database was written by a newer version of this program.
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// The schema version found in the file.
        found: i64,
        /// The newest schema version this program knows.
        supported: i64,
    },
    /// A query failed.
    Sqlite(rusqlite::Error),
    /// A transaction could not be committed.
    Commit(String),
    /// The store's thread has stopped.
    Closed,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Open { path, source } => write!(f, "cannot open database {}: {source}", path.display()),
            StoreError::NotADatabase { path, detail } => {
                write!(f, "{} is not a deployer database (or is corrupt): {detail}", path.display())
            }
            StoreError::NewerSchema { path, found, supported } => write!(
                f,
                "database {} has schema version {found}, newer than the version {supported} this program supports; \
                 use a newer deployer (the file was not changed)",
                path.display()
            ),
            StoreError::Sqlite(e) => write!(f, "database error: {e}"),
            StoreError::Commit(e) => write!(f, "cannot commit to the database: {e}"),
            StoreError::Closed => f.write_str("the store has been closed"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Open { source, .. } => Some(source),
            StoreError::Sqlite(e) => Some(e),
            _ => None,
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError::Sqlite(e)
    }
}

/// What one job of a cached operation did (a build, a publish): a row of
/// the history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JobRecord {
    /// The operation's store id (`docker-build`, `docker-push`, …).
    pub op: String,
    /// The key's digest.
    pub key: String,
    /// The build number for this key, from 1.
    pub build: i64,
    /// The job that produced it.
    pub job_id: String,
    /// What the job did, in words (`docker push org/app:live`).
    pub description: String,
    /// For publishers: the digest of the value that was published.
    pub value: Option<String>,
    /// Whether it succeeded.
    pub ok: bool,
    /// The serialized outcome (JSON) on success, or the error message.
    pub outcome: String,
    /// An operator asked for it to be rebuilt.
    pub rebuild: bool,
    /// The job was running when the deployer stopped.
    pub interrupted: bool,
    /// It failed because something outside did not answer
    /// ([`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable)): the
    /// failure is retried by itself, after a restart too.
    pub unavailable: bool,
    /// When the job was created (Unix milliseconds).
    pub ready: i64,
    /// When it started running, if it did.
    pub running: Option<i64>,
    /// When it finished.
    pub finished: i64,
}

/// A job that has started work on `(op, key)`, noted so that a crash
/// before its outcome is recorded is seen at the next start.
#[derive(Clone, Copy, Debug)]
pub struct JobStart<'a> {
    /// The operation's store id.
    pub op: &'a str,
    /// The key's digest.
    pub key: &'a str,
    /// For publishers: the digest of the value being published.
    pub value: Option<&'a str>,
    /// The job.
    pub job_id: &'a str,
    /// What the job does.
    pub description: &'a str,
}

/// A filter on the history, with keyset paging.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Only this operation.
    pub op: Option<String>,
    /// Only successes (`Some(true)`) or failures (`Some(false)`).
    pub ok: Option<bool>,
    /// Only rows marked for rebuild.
    pub rebuild: Option<bool>,
    /// Only job ids starting with this (a date such as `2026-11-24` works).
    pub job_prefix: Option<String>,
    /// Only rows finished at or after this time (Unix milliseconds).
    pub since: Option<i64>,
    /// Only rows finished before this time (Unix milliseconds).
    pub until: Option<i64>,
    /// Continue after this cursor (from [`HistoryPage::next`]).
    pub after: Option<Cursor>,
    /// Rows per page (at most 1,000; 0 means 100).
    pub limit: usize,
}

/// Where a history page ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Cursor {
    /// Finish time of the last row.
    pub finished: i64,
    /// Row id of the last row.
    pub row: i64,
}

/// One page of history, newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HistoryPage {
    /// The rows.
    pub rows: Vec<JobRecord>,
    /// The cursor for the next page, if there may be one.
    pub next: Option<Cursor>,
}

/// How much history to keep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep at most this many builds per key (the newest).
    pub keep_last: Option<u32>,
    /// Delete builds that finished longer ago than this.
    pub max_age: Option<Duration>,
}

type WriteFn = Box<dyn FnOnce(&Connection) -> rusqlite::Result<()> + Send>;
type ReadFn = Box<dyn FnOnce(&mut Connection) + Send>;

enum Request {
    Write(WriteFn, oneshot::Sender<Result<(), StoreError>>),
    Read(ReadFn),
}

/// A handle on the store. Cloning gives another handle on the same thread.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<Request>,
    path: PathBuf,
    clock: Clock,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Store({})", self.path.display())
    }
}

fn row_to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<JobRecord> {
    Ok(JobRecord {
        op: row.get(0)?,
        key: row.get(1)?,
        build: row.get(2)?,
        job_id: row.get(3)?,
        value: row.get(4)?,
        ok: row.get(5)?,
        outcome: row.get(6)?,
        rebuild: row.get(7)?,
        interrupted: row.get(8)?,
        ready: row.get(9)?,
        running: row.get(10)?,
        finished: row.get(11)?,
        description: row.get(12)?,
        unavailable: row.get(13)?,
    })
}

const COLUMNS: &str =
    "op, key, build, job_id, value, ok, outcome, rebuild, interrupted, ready, running, finished, description, \
     unavailable";

impl Store {
    /// Opens (creating if needed) the database at `path`, migrates it to the
    /// current schema, records jobs left running by a previous process as
    /// interrupted, and starts the store's thread.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_with_clock(path, Clock::system())
    }

    /// [`Store::open`], with timestamps read from `clock`.
    pub fn open_with_clock(path: &Path, clock: Clock) -> Result<Store, StoreError> {
        let conn = schema::open(path, &clock)?;
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new().name("deployer-store".into()).spawn(move || serve(conn, rx)).map_err(|e| {
            StoreError::Open { path: path.to_owned(), source: rusqlite::Error::InvalidPath(e.to_string().into()) }
        })?;
        Ok(Store { tx, path: path.to_owned(), clock })
    }

    /// The clock timestamps are read from.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in the next group-commit transaction; its result is
    /// returned once the transaction is durably committed.
    async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (value_tx, value_rx) = oneshot::channel();
        let job: WriteFn = Box::new(move |tx| {
            let _ = value_tx.send(f(tx)?);
            Ok(())
        });
        let (reply, rx) = oneshot::channel();
        self.tx.send(Request::Write(job, reply)).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)??;
        value_rx.await.map_err(|_| StoreError::Closed)
    }

    /// Runs the read `f` on the store's thread and waits for it, blocking
    /// this thread (for the few reads that must complete within an
    /// evaluation step; they take microseconds).
    fn read_blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (reply, rx) = std::sync::mpsc::sync_channel(1);
        let job: ReadFn = Box::new(move |conn| {
            let _ = reply.send(f(conn).map_err(StoreError::from));
        });
        self.tx.send(Request::Read(job)).map_err(|_| StoreError::Closed)?;
        rx.recv().map_err(|_| StoreError::Closed)?
    }

    async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (reply, rx) = oneshot::channel();
        let job: ReadFn = Box::new(move |conn| {
            let _ = reply.send(f(conn).map_err(StoreError::from));
        });
        self.tx.send(Request::Read(job)).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Notes that `job_id` started working on `(op, key)` (for `value`), so
    /// that a crash before its outcome is recorded is seen at the next start.
    pub async fn record_start(&self, start: JobStart<'_>) -> Result<(), StoreError> {
        let JobStart { op, key, value, job_id, description } = start;
        let (op, key, value, job_id, description) =
            (op.to_owned(), key.to_owned(), value.map(str::to_owned), job_id.to_owned(), description.to_owned());
        let now = self.clock.now_ms();
        self.write(move |tx| {
            tx.execute(
                "INSERT OR REPLACE INTO running (job_id, op, key, value, started, description) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![job_id, op, key, value, now, description],
            )?;
            Ok(())
        })
        .await
    }

    /// Records an outcome durably and returns its build number. The row of
    /// the job in `running` is removed in the same transaction.
    pub async fn record(&self, mut record: JobRecord) -> Result<i64, StoreError> {
        self.write(move |tx| {
            let build: i64 = tx.query_row(
                "SELECT COALESCE(MAX(build), 0) + 1 FROM cache WHERE op = ?1 AND key = ?2",
                params![record.op, record.key],
                |r| r.get(0),
            )?;
            record.build = build;
            insert(tx, &record)?;
            tx.execute("DELETE FROM running WHERE job_id = ?1", params![record.job_id])?;
            Ok(build)
        })
        .await
    }

    /// The newest build of `(op, key)`.
    pub async fn latest(&self, op: &str, key: &str) -> Result<Option<JobRecord>, StoreError> {
        let (op, key) = (op.to_owned(), key.to_owned());
        self.read(move |c| latest(c, &op, &key)).await
    }

    /// [`Store::latest`], waiting on this thread: for caches that must know
    /// a key's last outcome within the evaluation step that first uses it.
    pub(crate) fn latest_blocking(&self, op: &str, key: &str) -> Result<Option<JobRecord>, StoreError> {
        let (op, key) = (op.to_owned(), key.to_owned());
        self.read_blocking(move |c| latest(c, &op, &key))
    }

    /// The newest builds of `(op, key)`, newest first.
    pub async fn builds_of(&self, op: &str, key: &str, limit: usize) -> Result<Vec<JobRecord>, StoreError> {
        let (op, key) = (op.to_owned(), key.to_owned());
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM cache WHERE op = ?1 AND key = ?2 ORDER BY build DESC LIMIT ?3"
            ))?;
            let rows = stmt.query_map(params![op, key, limit as i64], row_to_record)?;
            rows.collect()
        })
        .await
    }

    /// The build recorded for `job_id`, if any.
    pub async fn by_job(&self, job_id: &str) -> Result<Option<JobRecord>, StoreError> {
        let job_id = job_id.to_owned();
        self.read(move |c| {
            c.prepare_cached(&format!("SELECT {COLUMNS} FROM cache WHERE job_id = ?1"))?
                .query_row(params![job_id], row_to_record)
                .optional()
        })
        .await
    }

    /// Marks the newest build of `(op, key)` as needing a rebuild (a restart
    /// will rebuild it rather than reuse it).
    pub async fn mark_rebuild(&self, op: &str, key: &str) -> Result<(), StoreError> {
        let (op, key) = (op.to_owned(), key.to_owned());
        self.write(move |tx| {
            tx.execute(
                "UPDATE cache SET rebuild = 1 WHERE op = ?1 AND key = ?2 \
                 AND build = (SELECT MAX(build) FROM cache WHERE op = ?1 AND key = ?2)",
                params![op, key],
            )?;
            Ok(())
        })
        .await
    }

    /// Removes every build of `(op, key)` (used when a stored outcome no
    /// longer deserializes).
    pub async fn invalidate(&self, op: &str, key: &str) -> Result<(), StoreError> {
        let (op, key) = (op.to_owned(), key.to_owned());
        self.write(move |tx| {
            tx.execute("DELETE FROM cache WHERE op = ?1 AND key = ?2", params![op, key])?;
            Ok(())
        })
        .await
    }

    /// The operations that have history.
    pub async fn ops(&self) -> Result<Vec<String>, StoreError> {
        self.read(|c| c.prepare_cached("SELECT op FROM ops ORDER BY op")?.query_map([], |r| r.get(0))?.collect()).await
    }

    /// One page of history matching `query`, newest first.
    pub async fn history(&self, query: HistoryQuery) -> Result<HistoryPage, StoreError> {
        self.read(move |c| history(c, &query)).await
    }

    /// Deletes history beyond `policy` (never the newest build of a key) and
    /// returns the job ids whose rows were deleted, so their logs can go too.
    pub async fn prune(&self, policy: Retention) -> Result<Vec<String>, StoreError> {
        let now = self.clock.now_ms();
        self.write(move |tx| {
            let mut gone = Vec::new();
            if let Some(n) = policy.keep_last {
                let mut stmt = tx.prepare(
                    "DELETE FROM cache WHERE rowid IN (SELECT rowid FROM (SELECT rowid, ROW_NUMBER() OVER \
                     (PARTITION BY op, key ORDER BY build DESC) AS rank FROM cache) WHERE rank > ?1) RETURNING job_id",
                )?;
                let rows = stmt.query_map(params![n.max(1)], |r| r.get::<_, String>(0))?;
                for r in rows {
                    gone.push(r?);
                }
            }
            if let Some(age) = policy.max_age {
                let cutoff = now - age.as_millis() as i64;
                let mut stmt = tx.prepare(
                    "DELETE FROM cache WHERE finished < ?1 AND build < \
                     (SELECT MAX(c2.build) FROM cache c2 WHERE c2.op = cache.op AND c2.key = cache.key) RETURNING job_id",
                )?;
                let rows = stmt.query_map(params![cutoff], |r| r.get::<_, String>(0))?;
                for r in rows {
                    gone.push(r?);
                }
            }
            Ok(gone)
        })
        .await
    }

    /// Imports `records` as they are (history carried over from another
    /// deployer, say), in one transaction. Their build numbers must not
    /// collide with rows already there.
    pub async fn import(&self, records: Vec<JobRecord>) -> Result<(), StoreError> {
        self.write(move |tx| {
            for r in &records {
                insert(tx, r)?;
            }
            Ok(())
        })
        .await
    }

    /// Number of rows of history.
    pub async fn count(&self) -> Result<i64, StoreError> {
        self.read(|c| c.query_row("SELECT COUNT(*) FROM cache", [], |r| r.get(0))).await
    }
}

fn latest(c: &Connection, op: &str, key: &str) -> rusqlite::Result<Option<JobRecord>> {
    c.prepare_cached(&format!("SELECT {COLUMNS} FROM cache WHERE op = ?1 AND key = ?2 ORDER BY build DESC LIMIT 1"))?
        .query_row(params![op, key], row_to_record)
        .optional()
}

fn insert(tx: &Connection, r: &JobRecord) -> rusqlite::Result<()> {
    tx.prepare_cached(&format!(
        "INSERT OR REPLACE INTO cache ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
    ))?
    .execute(params![
        r.op,
        r.key,
        r.build,
        r.job_id,
        r.value,
        r.ok,
        r.outcome,
        r.rebuild,
        r.interrupted,
        r.ready,
        r.running,
        r.finished,
        r.description,
        r.unavailable
    ])?;
    tx.prepare_cached("INSERT OR IGNORE INTO ops (op) VALUES (?1)")?.execute(params![r.op])?;
    Ok(())
}

/// Up to this many rows matching a job-id prefix are sorted in memory.
const PREFIX_SORT_LIMIT: i64 = 2_000;

fn history(c: &Connection, q: &HistoryQuery) -> rusqlite::Result<HistoryPage> {
    let limit = match q.limit {
        0 => 100,
        n => n.min(1000),
    };
    // A job-id prefix is matched through the (job_id, finished) index. When
    // few rows match, they are read from it and sorted in memory. When many
    // match (a month), sorting would take long: instead the newest match's
    // finish time is read from the index alone, and the rows are walked
    // newest-first from there, filtering (`+job_id` keeps SQLite off the
    // index) until a page is full.
    let mut prefix = None;
    let mut newest_match = None;
    if let Some(p) = &q.job_prefix {
        // GLOB, not LIKE, so the index can be used; escape GLOB's specials.
        let escaped: String = p
            .chars()
            .map(|ch| if matches!(ch, '*' | '?' | '[') { format!("[{ch}]") } else { ch.to_string() })
            .collect();
        let pattern = format!("{escaped}*");
        let matches: i64 = c.query_row(
            "SELECT COUNT(*) FROM (SELECT 1 FROM cache WHERE job_id GLOB ?1 LIMIT ?2)",
            params![pattern, PREFIX_SORT_LIMIT],
            |r| r.get(0),
        )?;
        let by_index = matches < PREFIX_SORT_LIMIT;
        if !by_index {
            // Most often the newest row of all matches ("2026-"): then no
            // need to read every match's finish time.
            let newest: Option<(i64, bool)> = c
                .query_row(
                    "SELECT finished, job_id GLOB ?1 FROM cache ORDER BY finished DESC LIMIT 1",
                    params![pattern],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            newest_match = match newest {
                Some((finished, true)) => Some(finished),
                _ => c.query_row(
                    "SELECT MAX(finished) FROM cache INDEXED BY cache_job_id_finished WHERE job_id GLOB ?1",
                    params![pattern],
                    |r| r.get::<_, Option<i64>>(0),
                )?,
            };
        }
        prefix = Some((pattern, by_index));
    }
    let from = if prefix.as_ref().is_some_and(|(_, by_index)| *by_index) {
        "cache INDEXED BY cache_job_id_finished"
    } else {
        "cache"
    };
    let mut sql = format!("SELECT {COLUMNS}, rowid FROM {from} WHERE 1");
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    let mut arg = |sql: &mut String, clause: &str, v: rusqlite::types::Value| {
        args.push(v);
        sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
    };
    if let Some(op) = &q.op {
        arg(&mut sql, " AND op = ?", op.clone().into());
    }
    // Booleans are written into the SQL, not bound: SQLite uses a partial
    // index (`WHERE rebuild = 1`) only for a literal.
    if let Some(ok) = q.ok {
        sql.push_str(if ok { " AND ok = 1" } else { " AND ok = 0" });
    }
    if let Some(rebuild) = q.rebuild {
        sql.push_str(if rebuild { " AND rebuild = 1" } else { " AND rebuild = 0" });
    }
    if let Some((pattern, by_index)) = &prefix {
        let clause = if *by_index { " AND job_id GLOB ?" } else { " AND +job_id GLOB ?" };
        arg(&mut sql, clause, pattern.clone().into());
    }
    if let Some(newest) = newest_match {
        arg(&mut sql, " AND finished <= ?", newest.into());
    }
    if let Some(since) = q.since {
        arg(&mut sql, " AND finished >= ?", since.into());
    }
    if let Some(until) = q.until {
        arg(&mut sql, " AND finished < ?", until.into());
    }
    if let Some(after) = q.after {
        args.push(after.finished.into());
        let a = args.len();
        args.push(after.row.into());
        let b = args.len();
        sql.push_str(&format!(" AND (finished < ?{a} OR (finished = ?{a} AND rowid < ?{b}))"));
    }
    sql.push_str(&format!(" ORDER BY finished DESC, rowid DESC LIMIT {}", limit + 1));
    let mut stmt = c.prepare_cached(&sql)?;
    let mut rows = Vec::with_capacity(limit + 1);
    let mut rowids = Vec::with_capacity(limit + 1);
    for r in stmt
        .query_map(rusqlite::params_from_iter(args.iter()), |row| Ok((row_to_record(row)?, row.get::<_, i64>(14)?)))?
    {
        let (rec, rowid) = r?;
        rows.push(rec);
        rowids.push(rowid);
    }
    let next = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|r| Cursor { finished: r.finished, row: rowids[limit - 1] })
    } else {
        None
    };
    Ok(HistoryPage { rows, next })
}

/// The store's thread: runs reads one by one and commits queued writes
/// together.
fn serve(mut conn: Connection, rx: mpsc::Receiver<Request>) {
    let mut pending: Option<Request> = None;
    loop {
        let first = match pending.take() {
            Some(r) => r,
            None => match rx.recv() {
                Ok(r) => r,
                Err(_) => return,
            },
        };
        match first {
            Request::Read(f) => f(&mut conn),
            Request::Write(f, reply) => {
                let mut batch = vec![(f, reply)];
                loop {
                    match rx.try_recv() {
                        Ok(Request::Write(f, reply)) => batch.push((f, reply)),
                        Ok(read) => {
                            pending = Some(read);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                commit_batch(&mut conn, batch);
            }
        }
    }
}

type Batch = Vec<(WriteFn, oneshot::Sender<Result<(), StoreError>>)>;

fn commit_batch(conn: &mut Connection, batch: Batch) {
    let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let msg = e.to_string();
            for (_, reply) in batch {
                let _ = reply.send(Err(StoreError::Commit(msg.clone())));
            }
            return;
        }
    };
    // Each write in its own savepoint, so one failing write fails only itself.
    let mut results = Vec::with_capacity(batch.len());
    let mut tx = tx;
    for (f, reply) in batch {
        let result = match tx.savepoint() {
            Ok(sp) => {
                let r = f(&sp);
                match r {
                    Ok(()) => sp.commit().map_err(StoreError::from),
                    Err(e) => Err(StoreError::from(e)),
                }
            }
            Err(e) => Err(StoreError::from(e)),
        };
        results.push((reply, result));
    }
    let committed = tx.commit().map_err(|e| e.to_string());
    for (reply, result) in results {
        let result = match (&committed, result) {
            (Ok(()), r) => r,
            (Err(msg), _) => Err(StoreError::Commit(msg.clone())),
        };
        let _ = reply.send(result);
    }
}

/// Reads the schema version of the database at `path` without changing it.
pub fn schema_version(path: &Path) -> Result<i64, StoreError> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|source| StoreError::Open { path: path.to_owned(), source })?;
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| StoreError::NotADatabase { path: path.to_owned(), detail: e.to_string() })
}
