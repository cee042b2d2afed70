//! The store: refusing bad files without touching them, history queries
//! with paging and filters, retention (rows and logs), reopening.

use std::path::PathBuf;
use std::time::Duration;

use deployer_core::store::{HistoryQuery, JobRecord, Retention, Store, StoreError, SCHEMA_VERSION};
use deployer_core::{Config, Context, ManualClock};

fn dir(name: &str) -> PathBuf {
    let base = std::env::var_os("DEPLOYER_TEST_WORK").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("store-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn record(op: &str, key: &str, build: i64, ok: bool, finished: i64, job_id: &str) -> JobRecord {
    JobRecord {
        op: op.into(),
        key: key.into(),
        build,
        job_id: job_id.into(),
        description: format!("{op} {key}"),
        value: None,
        ok,
        outcome: if ok { "\"done\"".into() } else { "it broke".into() },
        rebuild: false,
        interrupted: false,
        unavailable: false,
        ready: finished - 10,
        running: Some(finished - 5),
        finished,
    }
}

#[test]
fn a_file_that_is_not_a_database_is_refused_and_left_alone() {
    let path = dir("corrupt").join("db.sqlite");
    let garbage = b"this is not SQLite, it is a text file someone put here\n".repeat(100);
    std::fs::write(&path, &garbage).unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::NotADatabase { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "the error names the file: {msg}");
    assert!(msg.contains("not a deployer database"), "{msg}");
    assert_eq!(std::fs::read(&path).unwrap(), garbage, "the file is unchanged");
    let wal = path.with_extension("sqlite-wal");
    assert!(!wal.exists(), "no journal was created next to it");
}

#[test]
fn a_newer_schema_is_refused_and_left_alone() {
    let path = dir("newer").join("db.sqlite");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE future (x); PRAGMA user_version = 99;").unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let err = Store::open(&path).unwrap_err();
    match &err {
        StoreError::NewerSchema { found, supported, .. } => {
            assert_eq!(*found, 99);
            assert_eq!(*supported, SCHEMA_VERSION);
        }
        other => panic!("wrong error: {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()) && msg.contains("version 99"), "{msg}");
    assert_eq!(std::fs::read(&path).unwrap(), before, "the file is unchanged");
}

/// A database with a valid header whose pages are damaged: the integrity
/// check on open refuses it, and it is left byte for byte as it was.
#[test]
fn a_database_with_corrupt_pages_is_refused_and_left_alone() {
    let path = dir("pages").join("db.sqlite");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE t (x TEXT); CREATE INDEX t_x ON t (x);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
             INSERT INTO t SELECT printf('row %d %s', i, hex(randomblob(40))) FROM n;",
        )
        .unwrap();
    }
    let mut bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[..16], b"SQLite format 3\0");
    // Scribble over the middle of the file, past the header and schema.
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 3000] {
        *b = 0x5a;
    }
    std::fs::write(&path, &bytes).unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::NotADatabase { .. }), "{err:?}");
    assert!(err.to_string().contains("integrity check failed"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "the file is unchanged");
}

/// A newer schema in WAL mode (the deployer's own journal mode) is refused
/// just the same, and the file is not changed.
#[test]
fn a_newer_schema_in_wal_mode_is_refused_and_left_alone() {
    let path = dir("newer-wal").join("db.sqlite");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch("CREATE TABLE future (x); INSERT INTO future VALUES (1); PRAGMA user_version = 42;")
            .unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::NewerSchema { found: 42, .. }), "{err:?}");
    assert_eq!(std::fs::read(&path).unwrap(), before, "the file is unchanged");
}

#[tokio::test]
async fn history_pages_and_filters() {
    let path = dir("history").join("db.sqlite");
    let store = Store::open(&path).unwrap();
    let mut rows = Vec::new();
    for i in 0..250i64 {
        let op = if i % 2 == 0 { "docker-build" } else { "docker-push" };
        let day = if i < 100 { "2026-11-23" } else { "2026-11-24" };
        rows.push(record(
            op,
            &format!("key-{}", i % 10),
            i / 10 + 1,
            i % 5 != 0,
            1_000_000 + i,
            &format!("{day}/{i:06}-{op}-x"),
        ));
    }
    store.import(rows).await.unwrap();
    assert_eq!(store.count().await.unwrap(), 250);
    assert_eq!(store.ops().await.unwrap(), ["docker-build", "docker-push"]);

    // Walk every page: newest first, no row twice, none missed.
    let mut seen = Vec::new();
    let mut query = HistoryQuery { limit: 40, ..HistoryQuery::default() };
    loop {
        let page = store.history(query.clone()).await.unwrap();
        assert!(page.rows.len() <= 40);
        seen.extend(page.rows.iter().map(|r| r.finished));
        match page.next {
            Some(cursor) => query.after = Some(cursor),
            None => break,
        }
    }
    let want: Vec<i64> = (0..250).rev().map(|i| 1_000_000 + i).collect();
    assert_eq!(seen, want);

    let failed_pushes = store
        .history(HistoryQuery { op: Some("docker-push".into()), ok: Some(false), limit: 1000, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(failed_pushes.rows.len(), 25);
    assert!(failed_pushes.rows.iter().all(|r| r.op == "docker-push" && !r.ok));

    let yesterday = store
        .history(HistoryQuery { job_prefix: Some("2026-11-23".into()), limit: 1000, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(yesterday.rows.len(), 100);
    // GLOB characters in a prefix are literal.
    let none = store.history(HistoryQuery { job_prefix: Some("2026*".into()), ..Default::default() }).await.unwrap();
    assert!(none.rows.is_empty());

    let window = store
        .history(HistoryQuery { since: Some(1_000_010), until: Some(1_000_020), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(
        window.rows.iter().map(|r| r.finished).collect::<Vec<_>>(),
        (1_000_010..1_000_020).rev().collect::<Vec<_>>()
    );
    assert!(window.next.is_none());

    let by_job = store.by_job("2026-11-24/000123-docker-push-x").await.unwrap().unwrap();
    assert_eq!((by_job.key.as_str(), by_job.build), ("key-3", 13));
    let builds = store.builds_of("docker-push", "key-3", 3).await.unwrap();
    assert_eq!(builds.iter().map(|r| r.build).collect::<Vec<_>>(), [25, 24, 23]);
    drop(store);

    // Everything is there after reopening.
    let store = Store::open(&path).unwrap();
    assert_eq!(store.count().await.unwrap(), 250);
}

#[tokio::test]
async fn retention_deletes_old_builds_and_their_logs_but_never_the_latest() {
    let state = dir("retention");
    // The store reads "now" from the context's clock.
    let now = 1_800_000_000_000;
    let ctx = Context::open_with_clock(&state, Config::new(None), ManualClock::new(now).clock()).unwrap();
    let day = 24 * 3600 * 1000;
    let mut rows = Vec::new();
    let mut logs = Vec::new();
    for build in 1..=6i64 {
        let job = ctx.jobs.create("build", "build").unwrap();
        job.log("some output");
        job.finish();
        logs.push(ctx.jobs.log_file(job.id()).unwrap());
        // Builds 1-3 are 30 days old, 4-6 are recent.
        let finished = if build <= 3 { now - 30 * day } else { now - build };
        rows.push(record("build", "k", build, true, finished, job.id()));
    }
    // A key whose only build is old: kept (it is the latest).
    let lone = ctx.jobs.create("build", "build").unwrap();
    lone.finish();
    rows.push(record("build", "lonely", 1, true, now - 90 * day, lone.id()));
    ctx.store.import(rows).await.unwrap();

    let deleted =
        ctx.prune(Retention { keep_last: None, max_age: Some(Duration::from_secs(7 * 24 * 3600)) }).await.unwrap();
    assert_eq!(deleted, 3);
    assert!(logs[..3].iter().all(|p| !p.exists()), "the logs of deleted builds are deleted");
    assert!(logs[3..].iter().all(|p| p.exists()));
    assert!(ctx.jobs.log_file(lone.id()).unwrap().exists());

    let deleted = ctx.prune(Retention { keep_last: Some(2), max_age: None }).await.unwrap();
    assert_eq!(deleted, 1);
    let left = ctx.store.builds_of("build", "k", 10).await.unwrap();
    assert_eq!(left.iter().map(|r| r.build).collect::<Vec<_>>(), [6, 5]);
    assert!(!logs[3].exists());
    assert_eq!(ctx.store.builds_of("build", "lonely", 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_broad_job_prefix_pages_like_a_narrow_one() {
    // More matches than are sorted in memory: the store walks newest-first.
    let store = Store::open(&dir("broad").join("db.sqlite")).unwrap();
    let rows: Vec<_> = (0..6_000i64)
        .map(|i| {
            let day = if i % 3 == 0 { "2026-10-01" } else { "2026-10-02" };
            // Finish times interleave the two days, newest not in the first.
            record(
                "build",
                &format!("k{}", i % 50),
                i / 50 + 1,
                true,
                5_000_000 - i * 7 % 6_000 * 3,
                &format!("{day}/{i:06}-build-x"),
            )
        })
        .collect();
    let mut want: Vec<(i64, String)> =
        rows.iter().filter(|r| r.job_id.starts_with("2026-10-01")).map(|r| (r.finished, r.job_id.clone())).collect();
    store.import(rows).await.unwrap();
    want.sort_by(|a, b| b.cmp(a));
    let mut got = Vec::new();
    let mut query = HistoryQuery { job_prefix: Some("2026-10-01".into()), limit: 500, ..HistoryQuery::default() };
    loop {
        let page = store.history(query.clone()).await.unwrap();
        got.extend(page.rows.iter().map(|r| (r.finished, r.job_id.clone())));
        match page.next {
            Some(c) => query.after = Some(c),
            None => break,
        }
    }
    assert_eq!(got.len(), 2_000);
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), want.iter().map(|w| w.0).collect::<Vec<_>>());
}

/// A database written by the previous release (schema 2) is migrated in
/// place: its rows are kept, with an empty description.
#[tokio::test]
async fn a_schema_2_database_is_migrated_and_keeps_its_rows() {
    let path = dir("migrate").join("db.sqlite");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE cache (op TEXT NOT NULL, key TEXT NOT NULL, build INTEGER NOT NULL, job_id TEXT NOT NULL,
                value TEXT, ok INTEGER NOT NULL, outcome TEXT NOT NULL, rebuild INTEGER NOT NULL DEFAULT 0,
                interrupted INTEGER NOT NULL DEFAULT 0, ready INTEGER NOT NULL, running INTEGER,
                finished INTEGER NOT NULL, PRIMARY KEY (op, key, build));
             CREATE INDEX cache_finished ON cache (finished);
             CREATE INDEX cache_op_finished ON cache (op, finished);
             CREATE TABLE ops (op TEXT PRIMARY KEY) WITHOUT ROWID;
             CREATE TABLE running (job_id TEXT PRIMARY KEY, op TEXT NOT NULL, key TEXT NOT NULL, value TEXT,
                started INTEGER NOT NULL);
             CREATE INDEX cache_job_id_finished ON cache (job_id, finished);
             INSERT INTO cache VALUES ('build', 'k', 1, '2026-11-24/000000-build-aaaaaa', NULL, 1, '\"v1\"', 0, 0, 1, 2, 3);
             INSERT INTO ops VALUES ('build');
             PRAGMA user_version = 2;",
        )
        .unwrap();
    }
    let store = Store::open(&path).unwrap();
    let row = store.latest("build", "k").await.unwrap().unwrap();
    assert_eq!((row.outcome.as_str(), row.description.as_str()), ("\"v1\"", ""));
    drop(store);
    assert_eq!(deployer_core::store::schema_version(&path).unwrap(), SCHEMA_VERSION);
}
