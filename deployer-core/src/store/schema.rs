//! Opening the database: checks, pragmas, migrations, interrupted jobs.

use std::path::Path;

use rusqlite::{params, Connection, OpenFlags};

use super::StoreError;
use crate::clock::Clock;

/// Migrations, in order; the schema version is the number applied.
const MIGRATIONS: &[&str] = &[
    // 1: the history of builds and publishes, the list of operations, and
    // the jobs in progress (to detect interrupted ones).
    "CREATE TABLE cache (
        op TEXT NOT NULL,
        key TEXT NOT NULL,
        build INTEGER NOT NULL,
        job_id TEXT NOT NULL,
        value TEXT,
        ok INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        rebuild INTEGER NOT NULL DEFAULT 0,
        interrupted INTEGER NOT NULL DEFAULT 0,
        ready INTEGER NOT NULL,
        running INTEGER,
        finished INTEGER NOT NULL,
        PRIMARY KEY (op, key, build)
    );
    CREATE INDEX cache_job_id ON cache (job_id);
    CREATE INDEX cache_finished ON cache (finished);
    CREATE INDEX cache_op_finished ON cache (op, finished);
    CREATE TABLE ops (op TEXT PRIMARY KEY) WITHOUT ROWID;
    CREATE TABLE running (
        job_id TEXT PRIMARY KEY,
        op TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT,
        started INTEGER NOT NULL
    );",
    // 2: job-id prefix queries read the finish times from the index alone.
    "CREATE INDEX cache_job_id_finished ON cache (job_id, finished);
    DROP INDEX cache_job_id;",
    // 3: what each job did, in words (history rows say what was built or
    // deployed, not only digests).
    "ALTER TABLE cache ADD COLUMN description TEXT NOT NULL DEFAULT '';
    ALTER TABLE running ADD COLUMN description TEXT NOT NULL DEFAULT '';",
    // 4: pages of rare rows are found without scanning: failures (of an
    // operation, or of all), and builds marked for rebuild.
    "CREATE INDEX cache_op_ok_finished ON cache (op, ok, finished);
    CREATE INDEX cache_ok_finished ON cache (ok, finished);
    CREATE INDEX cache_rebuild_finished ON cache (finished) WHERE rebuild = 1;",
    // 5: failures because something outside did not answer are retried by
    // themselves, after a restart too.
    "ALTER TABLE cache ADD COLUMN unavailable INTEGER NOT NULL DEFAULT 0;",
];

/// The schema version this program writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Opens `path`: refuses corrupt files and newer schemas without changing
/// them, then sets the pragmas, migrates, and records interrupted jobs.
pub(super) fn open(path: &Path, clock: &Clock) -> Result<Connection, StoreError> {
    if path.exists() {
        check(path)?;
    }
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
                path: path.to_owned(),
                source: rusqlite::Error::InvalidPath(format!("{}: {e}", dir.display()).into()),
            })?;
        }
    }
    let mut conn = Connection::open(path).map_err(|source| StoreError::Open { path: path.to_owned(), source })?;
    let not_db = |e: rusqlite::Error| StoreError::NotADatabase { path: path.to_owned(), detail: e.to_string() };
    conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(not_db)?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(not_db)?;
    // FULL: a commit is on disk when it returns (group commit keeps this cheap).
    conn.pragma_update(None, "synchronous", "FULL").map_err(not_db)?;
    conn.pragma_update(None, "foreign_keys", "ON").map_err(not_db)?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(not_db)?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    record_interrupted(&mut conn, clock)?;
    Ok(conn)
}

/// Jobs still in `running` were interrupted by the end of the previous
/// process: record each as a failed build.
fn record_interrupted(conn: &mut Connection, clock: &Clock) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare("SELECT job_id, op, key, value, started, description FROM running")?;
        type Row = (String, String, String, Option<String>, i64, String);
        let rows: Vec<Row> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))?
            .collect::<Result<_, _>>()?;
        let now = clock.now_ms();
        for (job_id, op, key, value, started, description) in rows {
            tracing::warn!(job_id, op, key, "job was running when the deployer stopped; recording it as interrupted");
            tx.execute(
                "INSERT INTO cache (op, key, build, job_id, value, ok, outcome, interrupted, ready, running, finished,
                                    description)
                 VALUES (?1, ?2, (SELECT COALESCE(MAX(build), 0) + 1 FROM cache WHERE op = ?1 AND key = ?2),
                         ?3, ?4, 0, 'interrupted: the deployer stopped while this job was running', 1, ?5, ?5, ?6, ?7)",
                params![op, key, job_id, value, started, now, description],
            )?;
            tx.execute("INSERT OR IGNORE INTO ops (op) VALUES (?1)", params![op])?;
        }
        tx.execute("DELETE FROM running", [])?;
    }
    tx.commit()?;
    Ok(())
}

/// Checks an existing file before anything writes to it: it must be a
/// SQLite database whose pages are intact (`PRAGMA quick_check`) and whose
/// schema is not newer than this program's. Reads only.
fn check(path: &Path) -> Result<(), StoreError> {
    let not_db = |detail: String| StoreError::NotADatabase { path: path.to_owned(), detail };
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|source| StoreError::Open { path: path.to_owned(), source })?;
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(|e| not_db(e.to_string()))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema { path: path.to_owned(), found, supported: SCHEMA_VERSION });
    }
    let problems: Vec<String> = conn
        .prepare("PRAGMA quick_check(5)")
        .and_then(|mut s| s.query_map([], |r| r.get::<_, String>(0))?.collect())
        .map_err(|e| not_db(e.to_string()))?;
    if problems != ["ok"] {
        return Err(not_db(format!("integrity check failed: {}", problems.join("; "))));
    }
    Ok(())
}
