//! The crash test: a child process publishes through two `OutputCache`s
//! sharing a pool of 3 (one publisher idempotent, one not) and is killed
//! with SIGKILL at a random point, 50 times, then runs to the end.
//!
//! After every kill: the database reopens; every publish the child saw
//! recorded (it prints `ack <op> <key>` only once the stage shows the
//! outcome) is in the store; the kill is counted as landing mid-publish when
//! a publish had started (the publisher appends `start <op> <key>` to a
//! side-effect file before doing anything) without an outcome.
//!
//! At the end, for the ordinary publisher: no publish ever started twice;
//! every key ended either published or failed as "interrupted" (a publish
//! that may have taken effect is not repeated), every interrupted key had
//! started, and there are at most kills × pool size of them. For the
//! idempotent publisher: every key ended published (zero waiting for an
//! operator), and at most kills × pool size keys were started twice.
//!
//! This file is its own test binary without libtest's harness: the parent
//! re-executes it with `DEPLOYER_CRASH_CHILD` set to run the child.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deployer_core::cache::{digest, OutputCache, Publisher};
use deployer_core::store::Store;
use deployer_core::{Config, Context, Current, Engine, Error, Job, Level, Output, Pool};

const KEYS: usize = 1000;
const IDEMPOTENT_KEYS: usize = 300;
const KILLS: usize = 50;
const POOL: usize = 3;
const CHILD_ENV: &str = "DEPLOYER_CRASH_CHILD";

fn main() {
    match std::env::var_os(CHILD_ENV) {
        Some(dir) => child(Path::new(&dir)),
        None => parent(),
    }
}

/// Appends `start <op> <key>` to the side-effect file, then pretends to
/// deploy for a few milliseconds.
async fn effect(effects: &Path, op: &str, job: &Job, key: &str, value: &str) -> Result<String, Error> {
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(effects)?;
    // One write(2) with O_APPEND: a kill cannot leave half a line.
    file.write_all(format!("start {op} {key}\n").as_bytes())?;
    job.log(&format!("deploying {value}"));
    // Take a few milliseconds, so that kills land inside publishes.
    let pause = 5 + digest(&key)?.as_bytes()[0] as u64 % 20;
    tokio::time::sleep(Duration::from_millis(pause)).await;
    Ok(format!("{key} runs {value}"))
}

/// Publishes `key := value`; not safe to repeat.
struct Deploy {
    effects: PathBuf,
    pool: Pool,
}

#[async_trait]
impl Publisher for Deploy {
    const ID: &'static str = "crash-deploy";
    type Key = String;
    type Value = String;
    type Outcome = String;

    fn level(&self) -> Level {
        Level::Harmless
    }
    fn pool(&self) -> Option<Pool> {
        Some(self.pool.clone())
    }
    async fn publish(&self, job: &Job, key: &String, value: &String) -> Result<String, Error> {
        effect(&self.effects, Self::ID, job, key, value).await
    }
}

/// Sets a tag: doing it twice is harmless.
struct Tag {
    effects: PathBuf,
    pool: Pool,
}

#[async_trait]
impl Publisher for Tag {
    const ID: &'static str = "crash-tag";
    type Key = String;
    type Value = String;
    type Outcome = String;

    fn level(&self) -> Level {
        Level::Harmless
    }
    fn idempotent(&self) -> bool {
        true
    }
    fn pool(&self) -> Option<Pool> {
        Some(self.pool.clone())
    }
    async fn publish(&self, job: &Job, key: &String, value: &String) -> Result<String, Error> {
        effect(&self.effects, Self::ID, job, key, value).await
    }
}

fn child(dir: &Path) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let ctx = Context::open(&dir.join("state"), Config::new(None)).expect("the state reopens");
        let pool = Pool::new("deploy", POOL);
        let effects = dir.join("effects");
        let deploys = OutputCache::new(&ctx, Deploy { effects: effects.clone(), pool: pool.clone() });
        let tags = OutputCache::new(&ctx, Tag { effects, pool });
        let stage = |op: &'static str, i: usize, set: Current<String>| {
            let key = format!("svc-{i:03}");
            set.map(move |outcome| {
                println!("ack {op} {key}");
                outcome.clone()
            })
            .catch()
        };
        // Interleaved, so that kills cut publishes of both kinds.
        let mut stages = Vec::new();
        let mut names = Vec::new();
        for i in 0..KEYS {
            let set = deploys.set("deploy", format!("svc-{i:03}"), format!("image-{i}"));
            stages.push(stage(Deploy::ID, i, set));
            names.push((Deploy::ID, i));
            if i < IDEMPOTENT_KEYS {
                let set = tags.set("tag", format!("svc-{i:03}"), format!("image-{i}"));
                stages.push(stage(Tag::ID, i, set));
                names.push((Tag::ID, i));
            }
        }
        let engine = Engine::new(Current::all(stages));
        let debug = std::env::var_os("CRASH_DEBUG").is_some();
        engine.step();
        // Tell the parent that publishing has begun: its kill delay counts
        // from here, so that slow machines are tested as well as fast ones.
        println!("running");
        loop {
            if let Output::Ok(results) = engine.output() {
                for (&(op, i), r) in names.iter().zip(&results) {
                    match r {
                        Ok(_) => println!("final {op} svc-{i:03} ok"),
                        Err(e) => println!("final {op} svc-{i:03} err {}", e.message()),
                    }
                }
                std::io::stdout().flush().unwrap();
                std::process::exit(0);
            }
            engine.next().await;
            if debug {
                eprintln!("{:?}", engine.stats());
            }
        }
    });
}

/// A small deterministic generator for the kill delays.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Runs the child; kills it `kill_after` after it started publishing (if
/// given). Returns its stdout lines.
fn run_child(dir: &Path, kill_after: Option<Duration>) -> Vec<String> {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .env(CHILD_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the child starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut early = Vec::new();
    match kill_after {
        Some(delay) => {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(line) if line == "running" => break,
                    Ok(line) => early.push(line),
                    Err(_) => {
                        let _ = child.kill();
                        panic!("the child did not start publishing within 60 s");
                    }
                }
            }
            std::thread::sleep(delay);
            // SIGKILL: no destructor, no flush, no chance to finish anything.
            let _ = child.kill();
            let _ = child.wait();
        }
        None => {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    assert!(status.success(), "the final child failed: {status}");
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("the final child did not finish in 60 s");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    reader.join().unwrap();
    early.extend(rx.try_iter());
    early
}

/// What the store holds for one (op, key).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Rows {
    /// One of its rows is a success.
    ok: bool,
    /// Rows recording an interrupted publish.
    interrupted: usize,
}

/// The store's rows by (op, key). Opening the store records the jobs the
/// killed child left running as interrupted.
fn recorded(dir: &Path) -> BTreeMap<(String, String), Rows> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let path = dir.join("state").join("db.sqlite");
        let store = Store::open(&path).unwrap_or_else(|e| panic!("the database does not reopen: {e}"));
        let mut rows = BTreeMap::new();
        for (op, keys) in [(Deploy::ID, KEYS), (Tag::ID, IDEMPOTENT_KEYS)] {
            for i in 0..keys {
                let name = format!("svc-{i:03}");
                for row in store.builds_of(op, &digest(&name).unwrap(), 1000).await.unwrap() {
                    let r: &mut Rows = rows.entry((op.to_owned(), name.clone())).or_default();
                    r.ok |= row.ok;
                    r.interrupted += usize::from(row.interrupted);
                }
            }
        }
        rows
    })
}

fn interrupted_rows(rows: &BTreeMap<(String, String), Rows>) -> usize {
    rows.values().map(|r| r.interrupted).sum()
}

/// How many times each (op, key) publish started, from the side-effect file.
fn starts(dir: &Path) -> BTreeMap<(String, String), usize> {
    let effects = std::fs::read_to_string(dir.join("effects")).unwrap_or_default();
    let mut starts = BTreeMap::new();
    for line in effects.lines() {
        let rest = line.strip_prefix("start ").expect("a start line");
        let (op, key) = rest.split_once(' ').expect("start <op> <key>");
        *starts.entry((op.to_owned(), key.to_owned())).or_default() += 1;
    }
    starts
}

fn parent() {
    let base = std::env::var_os("DEPLOYER_TEST_WORK").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("crash-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let started = Instant::now();
    let mut seed = 0x5eed_u64;
    let mut acked = BTreeSet::new();
    let mut kills_mid_publish = 0;
    let mut cut_total = 0;
    let kills = std::env::var("CRASH_KILLS").ok().and_then(|k| k.parse().ok()).unwrap_or(KILLS);
    let mut interrupted_before = 0;
    for round in 0..kills {
        let delay = Duration::from_millis(splitmix(&mut seed) % 200);
        let lines = run_child(&dir, Some(delay));
        for line in &lines {
            if let Some((op, key)) = line.strip_prefix("ack ").and_then(|l| l.split_once(' ')) {
                acked.insert((op.to_owned(), key.to_owned()));
            }
        }
        let rows = recorded(&dir);
        for key in &acked {
            assert!(
                rows.get(key).is_some_and(|r| r.ok),
                "round {round}: {key:?} was acknowledged but its outcome is lost"
            );
        }
        // Every publish started (durably) and not finished when the child
        // was killed now has an "interrupted" row: at most one per pool slot.
        let cut = interrupted_rows(&rows) - interrupted_before;
        interrupted_before += cut;
        assert!(cut <= POOL, "round {round}: one kill cut {cut} publishes with a pool of {POOL}");
        if cut > 0 {
            kills_mid_publish += 1;
            cut_total += cut;
        }
        // A side effect that began without a successful outcome was cut
        // by a kill, so it must be recorded as interrupted.
        for (key, n) in starts(&dir) {
            let r = rows.get(&key).copied().unwrap_or_default();
            assert!(
                r.ok || r.interrupted >= n,
                "round {round}: {key:?} started {n} times but has {} interrupted rows and no success",
                r.interrupted
            );
        }
    }
    let lines = run_child(&dir, None);
    let starts = starts(&dir);
    let finals: Vec<&String> = lines.iter().filter(|l| l.starts_with("final ")).collect();
    assert_eq!(finals.len(), KEYS + IDEMPOTENT_KEYS, "the final child reports every key");
    let rows = recorded(&dir);
    let (mut interrupted, mut before_effect, mut repeated) = (0, 0, 0);
    for line in finals {
        let mut words = line["final ".len()..].splitn(3, ' ');
        let (op, key, result) = (words.next().unwrap(), words.next().unwrap(), words.next().unwrap());
        let k = (op.to_owned(), key.to_owned());
        let n = starts.get(&k).copied().unwrap_or(0);
        let r = rows.get(&k).copied().unwrap_or_default();
        match (op, result) {
            (Deploy::ID, "ok") => assert_eq!(n, 1, "{op} {key} is published but started {n} times"),
            (Deploy::ID, _) => {
                assert!(result.contains("interrupted"), "{op} {key} failed for another reason: {line}");
                assert_eq!(r.interrupted, 1, "{op} {key}: one interrupted row");
                // Never repeated; its effect began, unless the kill fell
                // between the durable start record and the effect.
                assert!(n <= 1, "{op} {key} is interrupted and was started again ({n} starts)");
                before_effect += usize::from(n == 0);
                interrupted += 1;
            }
            (_, "ok") => {
                assert!(n >= 1, "{op} {key} is published but never started");
                assert!(n <= 1 + r.interrupted, "{op} {key} started {n} times after {} interruptions", r.interrupted);
                repeated += usize::from(n > 1);
            }
            (_, _) => panic!("the idempotent {op} {key} waits for an operator: {line}"),
        }
    }
    assert_eq!(rows.len(), KEYS + IDEMPOTENT_KEYS, "every key has a row");
    assert!(kills_mid_publish > 0, "no kill landed during a publish: the test proves nothing");
    assert!(repeated > 0, "no idempotent publish was interrupted: the test proves nothing for them");
    assert!(
        interrupted + repeated <= cut_total,
        "{interrupted} interrupted and {repeated} repeated for {cut_total} cut"
    );
    println!(
        "crash test: {kills} kills ({kills_mid_publish} during publishes, {cut_total} publishes cut); \
         {KEYS} publishes: {} published, {interrupted} interrupted and not repeated ({before_effect} cut before \
         their effect began); {IDEMPOTENT_KEYS} idempotent publishes: all published, {repeated} run again after an \
         interruption; {:.1} s",
        KEYS - interrupted,
        started.elapsed().as_secs_f64()
    );
    std::fs::remove_dir_all(&dir).ok();
}
