//! Store benchmark: a history of 1,000,000 rows (20 operations × 5,000 keys
//! × 10 builds; one row in 10,000 a failure, another one in 10,000 marked
//! for rebuild), then history pages (broad, sparse and "needs rebuild"
//! filters), start-up, and recording outcomes.
//!
//! Run with `cargo bench -p deployer-benches --bench store`. Building the
//! database takes a few seconds before the first measurement. Measured, every
//! page must come in under 10 ms. In quick mode (`cargo test --benches`) the
//! history has 20,000 rows and only the answers are checked.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use deployer_core::store::{Cursor, HistoryQuery, JobRecord, Store};

const OPS: usize = 20;
const BUILDS: i64 = 10;
/// One row in this many is a failure, and one (another) needs a rebuild.
const SPARSE: usize = 10_000;

/// Keys per operation: 5,000 (1,000,000 rows), or 100 in quick mode.
fn keys() -> usize {
    if deployer_benches::quick() {
        100
    } else {
        5_000
    }
}

fn rows() -> usize {
    OPS * keys() * BUILDS as usize
}
const START: i64 = 1_764_000_000_000;
/// One build finishes every minute: the history spans about two years.
const MINUTE: i64 = 60_000;

fn op(i: usize) -> String {
    format!("op-{i:02}")
}

/// `YYYY-MM-DD/HHMMSS` of a Unix time in milliseconds (UTC).
fn day_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}/{:02}{:02}{:02}", rest / 3600, rest / 60 % 60, rest % 60)
}

fn row(o: usize, k: usize, build: i64) -> JobRecord {
    // Spread finish times so that pages cut across operations and keys.
    let n = (build as usize - 1) * OPS * keys() + k * OPS + o;
    let finished = START + n as i64 * MINUTE;
    JobRecord {
        op: op(o),
        key: format!("{:064x}", k),
        build,
        // Job ids begin with their creation time, as real ones do.
        job_id: format!("{}-{}-{:06x}", day_time(finished - 30_000), op(o), n),
        description: format!("{} key {k}", op(o)),
        value: None,
        ok: !n.is_multiple_of(SPARSE),
        outcome: if !n.is_multiple_of(SPARSE) { format!("\"sha256:{n:064x}\"") } else { "exit status 1".into() },
        rebuild: n % SPARSE == SPARSE / 2,
        interrupted: false,
        unavailable: false,
        ready: finished - 30_000,
        running: Some(finished - 20_000),
        finished,
    }
}

fn build_db(rt: &tokio::runtime::Runtime, path: &Path) {
    let t = Instant::now();
    let store = Store::open(path).expect("open");
    rt.block_on(async {
        let mut batch = Vec::with_capacity(50_000);
        for build in 1..=BUILDS {
            for k in 0..keys() {
                for o in 0..OPS {
                    batch.push(row(o, k, build));
                    if batch.len() == 50_000 {
                        store.import(std::mem::take(&mut batch)).await.expect("insert");
                    }
                }
            }
        }
        store.import(batch).await.expect("insert");
        assert_eq!(store.count().await.expect("count"), rows() as i64);
    });
    eprintln!("built a {}-row history in {:.1} s", rows(), t.elapsed().as_secs_f64());
}

fn work_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("deployer-store-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn store(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let dir = work_dir();
    let path = dir.join("db.sqlite");
    build_db(&rt, &path);
    let store = Store::open(&path).expect("reopen");

    let mut group = c.benchmark_group("store_1m_rows");
    group.sample_size(50);
    let page = |q: HistoryQuery, at_least: usize| {
        let page = rt.block_on(store.history(q)).expect("history");
        assert!(page.rows.len() >= at_least, "{} rows, expected at least {at_least}", page.rows.len());
        black_box(page)
    };
    // Every page comes in under 10 ms (checked when measured).
    let timed = |name: &str, q: HistoryQuery, at_least: usize| {
        let t = Instant::now();
        let first = page(q.clone(), at_least);
        let took = t.elapsed();
        eprintln!("{name}: {} rows in {:.2} ms (first call)", first.rows.len(), took.as_secs_f64() * 1e3);
        if !deployer_benches::quick() {
            let t = Instant::now();
            for _ in 0..10 {
                page(q.clone(), at_least);
            }
            let each = t.elapsed() / 10;
            assert!(each < Duration::from_millis(10), "{name}: a page took {each:?}");
        }
    };
    let sparse = rows() / SPARSE;
    let cases = [
        ("history/first_page", HistoryQuery { limit: 100, ..Default::default() }, 100),
        (
            "history/op_and_failed",
            HistoryQuery { op: Some(op(0)), ok: Some(false), limit: 100, ..Default::default() },
            sparse.min(100),
        ),
        // One row in 10,000: every failure, newest first.
        ("history/sparse_failed", HistoryQuery { ok: Some(false), limit: 100, ..Default::default() }, sparse.min(100)),
        // The "needs rebuild" filter (also one row in 10,000).
        (
            "history/needs_rebuild",
            HistoryQuery { rebuild: Some(true), limit: 100, ..Default::default() },
            sparse.min(100),
        ),
    ];
    for (name, q, at_least) in cases {
        timed(name, q.clone(), at_least);
        group.bench_function(name, |b| b.iter(|| page(q.clone(), at_least)));
    }
    let middle = Cursor { finished: START + (rows() as i64 / 2) * MINUTE, row: i64::MAX };
    group.bench_function("history/page_in_the_middle", |b| {
        b.iter(|| page(HistoryQuery { after: Some(middle), limit: 100, ..Default::default() }, 100))
    });
    // A day's jobs (1,440 rows), a month's (about 43,000), the oldest day
    // and month, and one job.
    let newest = day_time(START + (rows() as i64 - 1) * MINUTE);
    let oldest = day_time(START);
    for (name, prefix) in [
        ("history/job_prefix_recent_day", newest[..11].to_owned()),
        ("history/job_prefix_recent_month", newest[..8].to_owned()),
        ("history/job_prefix_oldest_day", oldest[..11].to_owned()),
        ("history/job_prefix_oldest_month", oldest[..8].to_owned()),
        ("history/job_prefix_matching_all", "2".to_owned()),
        ("history/job_prefix_one_job", row(3, keys() * 4 / 5, 5).job_id),
    ] {
        let q = HistoryQuery { job_prefix: Some(prefix.clone()), limit: 100, ..Default::default() };
        timed(name, q.clone(), 1);
        group.bench_function(name, |b| b.iter(|| page(q.clone(), 1)));
    }
    let since = START + (rows() as i64 * 2 / 5) * MINUTE;
    let window = HistoryQuery { since: Some(since), until: Some(since + 3_600_000), ..Default::default() };
    timed("history/time_window", window.clone(), 1);
    group.bench_function("history/time_window", |b| b.iter(|| page(window.clone(), 1)));
    drop(store);

    // Start-up: open the database (checks, migrations, interrupted jobs),
    // list the operations, and load the latest outcome of 1,000 keys.
    group.sample_size(10);
    group.bench_function("startup/open_and_load_1000_keys", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let store = Store::open(&path).expect("open");
                rt.block_on(async {
                    black_box(store.ops().await.expect("ops"));
                    for k in 0..1_000.min(keys()) {
                        let latest = store.latest(&op(k % OPS), &format!("{:064x}", k)).await.expect("latest");
                        assert_eq!(latest.map(|r| r.build), Some(BUILDS));
                    }
                });
                total += t.elapsed();
                drop(store);
            }
            total
        })
    });

    // Recording: 10,000 outcomes recorded concurrently (as finishing jobs
    // do), each durable (synchronous=FULL) before its call returns.
    let store = Store::open(&path).expect("open");
    let mut round = 0u64;
    let outcomes = if deployer_benches::quick() { 500 } else { 10_000 };
    group.throughput(Throughput::Elements(outcomes as u64));
    group.bench_function("record/10k_outcomes", |b| {
        b.iter(|| {
            round += 1;
            rt.block_on(async {
                let tasks: Vec<_> = (0..outcomes)
                    .map(|i| {
                        let store = store.clone();
                        let mut r = row(i % OPS, i, 1);
                        r.op = format!("recorded-{round}");
                        r.key = format!("{i:064x}");
                        tokio::spawn(async move { store.record(r).await.expect("record") })
                    })
                    .collect();
                for t in tasks {
                    black_box(t.await.expect("task"));
                }
            })
        })
    });
    group.finish();
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, store);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
