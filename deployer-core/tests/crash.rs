//! The crash test: a child process publishes through an `OutputCache` and is
//! killed with SIGKILL at a random point, 50 times, then runs to the end.
//!
//! After every kill: the database reopens; every publish the child saw
//! recorded (it prints `ack <key>` only once the stage shows the outcome) is
//! in the store. At the end: no publish ever started twice for the same
//! value (the publisher appends `start <key>` to a side-effect file before
//! doing anything), and every key ended either published or failed as
//! interrupted (publishes that may have taken effect are not repeated).
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
const KILLS: usize = 50;
const CHILD_ENV: &str = "DEPLOYER_CRASH_CHILD";

fn main() {
    match std::env::var_os(CHILD_ENV) {
        Some(dir) => child(Path::new(&dir)),
        None => parent(),
    }
}

/// Publishes `key := value`, noting the start in a side-effect file first.
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
        let mut effects = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.effects)
            .map_err(|e| Error::msg(e.to_string()))?;
        // One write(2) with O_APPEND: a kill cannot leave half a line.
        effects.write_all(format!("start {key}\n").as_bytes()).map_err(|e| Error::msg(e.to_string()))?;
        job.log(&format!("deploying {value}"));
        // Take a few milliseconds, so that kills land inside publishes.
        let pause = 5 + digest(key)?.as_bytes()[0] as u64 % 20;
        tokio::time::sleep(Duration::from_millis(pause)).await;
        Ok(format!("{key} runs {value}"))
    }
}

fn child(dir: &Path) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let ctx = Context::open(&dir.join("state"), Config::new(None)).expect("the state reopens");
        let cache = OutputCache::new(&ctx, Deploy { effects: dir.join("effects"), pool: Pool::new("deploy", 3) });
        let stages = (0..KEYS).map(|i| {
            let key = format!("svc-{i:03}");
            let value = format!("image-{i}");
            let k = key.clone();
            cache
                .set(&Current::constant(key), &Current::constant(value))
                .map(move |outcome| {
                    println!("ack {k}");
                    outcome.clone()
                })
                .catch()
        });
        let engine = Engine::new(Current::all(stages));
        let debug = std::env::var_os("CRASH_DEBUG").is_some();
        engine.step();
        // Tell the parent that publishing has begun: its kill delay counts
        // from here, so that slow machines are tested as well as fast ones.
        println!("running");
        loop {
            engine.next().await;
            if debug {
                eprintln!("{:?}", engine.stats());
            }
            if let Output::Ok(results) = engine.output() {
                for (i, r) in results.iter().enumerate() {
                    match r {
                        Ok(_) => println!("final svc-{i:03} ok"),
                        Err(e) => println!("final svc-{i:03} err {}", e.message()),
                    }
                }
                std::io::stdout().flush().unwrap();
                std::process::exit(0);
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

/// The store's rows for our operation: value digest → succeeded.
fn recorded(dir: &Path) -> BTreeMap<String, bool> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let path = dir.join("state").join("db.sqlite");
        let store = Store::open(&path).unwrap_or_else(|e| panic!("the database does not reopen: {e}"));
        let mut rows = BTreeMap::new();
        for i in 0..KEYS {
            let key = digest(&format!("svc-{i:03}")).unwrap();
            for row in store.builds_of(Deploy::ID, &key, 1000).await.unwrap() {
                let ok = rows.entry(format!("svc-{i:03}")).or_insert(false);
                *ok |= row.ok;
            }
        }
        rows
    })
}

fn parent() {
    let base = std::env::var_os("DEPLOYER_TEST_WORK").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("crash-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let started = Instant::now();
    let mut seed = 0x5eed_u64;
    let mut acked = BTreeSet::new();
    let mut kills_mid_publish = 0;
    let kills = std::env::var("CRASH_KILLS").ok().and_then(|k| k.parse().ok()).unwrap_or(KILLS);
    for round in 0..kills {
        let delay = Duration::from_millis(splitmix(&mut seed) % 200);
        let lines = run_child(&dir, Some(delay));
        for line in &lines {
            if let Some(key) = line.strip_prefix("ack ") {
                acked.insert(key.to_owned());
            }
        }
        let rows = recorded(&dir);
        for key in &acked {
            assert_eq!(rows.get(key), Some(&true), "round {round}: {key} was acknowledged but its outcome is lost");
        }
        // Keys whose publish started but has no successful outcome: the
        // kill landed inside their publish.
        let effects = std::fs::read_to_string(dir.join("effects")).unwrap_or_default();
        if effects.lines().any(|l| l.strip_prefix("start ").is_some_and(|k| rows.get(k) != Some(&true))) {
            kills_mid_publish += 1;
        }
    }
    let lines = run_child(&dir, None);
    let effects = std::fs::read_to_string(dir.join("effects")).unwrap();
    let mut starts: BTreeMap<&str, usize> = BTreeMap::new();
    for line in effects.lines() {
        *starts.entry(line.strip_prefix("start ").expect("a start line")).or_default() += 1;
    }
    let twice: Vec<_> = starts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "published twice: {twice:?}");
    let finals: Vec<&String> = lines.iter().filter(|l| l.starts_with("final ")).collect();
    assert_eq!(finals.len(), KEYS, "the final child reports every key");
    let mut interrupted = 0;
    for line in finals {
        let key = &line["final ".len()..]["svc-000".len()..].trim();
        let name = &line["final ".len().."final svc-000".len()];
        if key.starts_with("ok") {
            assert_eq!(starts.get(name), Some(&1), "{name} is published but never started");
        } else {
            assert!(key.contains("interrupted"), "{name} failed for another reason: {line}");
            interrupted += 1;
        }
    }
    let rows = recorded(&dir);
    assert_eq!(rows.len(), KEYS, "every key has a row");
    assert!(kills_mid_publish > 0, "no kill landed during a publish: the test proves nothing");
    println!(
        "crash test: {kills} kills ({kills_mid_publish} during publishes), {KEYS} keys, {} published, \
         {interrupted} interrupted and not repeated, {:.1} s",
        KEYS - interrupted,
        started.elapsed().as_secs_f64()
    );
    std::fs::remove_dir_all(&dir).ok();
}
