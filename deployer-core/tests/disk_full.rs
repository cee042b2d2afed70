//! Issue 20 §2: the store's disk fills up. The state directory (SQLite
//! database and job logs) is on a small tmpfs of its own; the test fills it
//! with a file, so every write the deployer makes finds no space, then
//! deletes the file. Needs root (to mount the tmpfs), as `./scripts/test`
//! is run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use deployer_core::cache::{BuildCache, Builder, OutputCache, Publisher, RETRY_UNAVAILABLE};
use deployer_core::{Config, Context, Engine, Error, ErrorKind, Job, ManualClock, Output, Var};

/// A tmpfs of `size` mounted at a fresh directory; unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(name: &str, size: &str) -> Tmpfs {
        let base = std::env::var_os("DEPLOYER_TEST_WORK").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .expect("mount runs");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs at {} (the disk-full test needs root, as ./scripts/test is run): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system of `dir` with `dir/filler`, to its last byte.
fn fill(dir: &Path) -> u64 {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let chunk = vec![0u8; 4096];
    let mut written = 0;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling {}: {e}", dir.display()),
        }
    }
    let _ = f.sync_all();
    written
}

/// `n` → `n²`, counting its runs.
struct Square(Arc<AtomicUsize>);

#[async_trait]
impl Builder for Square {
    const ID: &'static str = "square";
    type Key = u64;
    type Value = u64;
    fn describe(&self, key: &u64) -> Option<String> {
        Some(format!("square {key}"))
    }
    async fn build(&self, job: &Job, key: &u64) -> Result<u64, Error> {
        self.0.fetch_add(1, Ordering::SeqCst);
        job.log(&format!("squaring {key}"));
        Ok(key * key)
    }
}

/// Deploys a value, counting the deploys of each.
struct Deploy(Arc<Mutex<Vec<u64>>>);

#[async_trait]
impl Publisher for Deploy {
    const ID: &'static str = "deploy";
    type Key = String;
    type Value = u64;
    type Outcome = String;
    fn describe(&self, key: &String, value: &u64) -> Option<String> {
        Some(format!("deploy {value} as {key}"))
    }
    async fn publish(&self, job: &Job, key: &String, value: &u64) -> Result<String, Error> {
        self.0.lock().unwrap().push(*value);
        job.log(&format!("deploying {value}"));
        Ok(format!("{key} runs {value}"))
    }
}

/// Every job log file in the state directory.
fn job_logs(state: &Path) -> usize {
    fn walk(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries.flatten().map(|e| if e.path().is_dir() { walk(&e.path()) } else { 1 }).sum::<usize>()
            })
            .unwrap_or(0)
    }
    walk(&state.join("job"))
}

/// The pipeline: `n` → square → deploy as `web`.
struct Pipeline {
    n: Var<u64>,
    engine: Engine<String>,
}

fn pipeline(ctx: &Context, squares: &Arc<AtomicUsize>, deploys: &Arc<Mutex<Vec<u64>>>, n: u64) -> Pipeline {
    let builds = BuildCache::new(ctx, Square(squares.clone()));
    let publish = OutputCache::new(ctx, Deploy(deploys.clone()));
    let n = Var::new("n", n);
    let squared = builds.get("square", &n.current());
    let engine = Engine::new(publish.set("deploy", "web".to_owned(), &squared));
    Pipeline { n, engine }
}

async fn deployed(engine: &Engine<String>, value: u64) {
    let want = format!("web runs {value}");
    engine
        .settle(Duration::from_secs(20), |o| matches!(o, Output::Ok(s) if *s == want))
        .await
        .unwrap_or_else(|last| panic!("{want:?} not deployed within 20 s: {last:?}"));
}

/// The store's disk fills up while the pipeline has a new value to deploy.
/// The stage fails, and says the disk is full; it does not retry in a busy
/// loop (one attempt, not thousands of job logs); the five deploys recorded
/// before are all still there; nothing ran that could not be recorded as
/// started. A minute after space comes back it is tried again by itself and
/// deploys the new value once; after a restart every outcome is there and
/// the database passes its integrity check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_reported_loses_no_acknowledged_outcome_and_heals_when_space_comes_back() {
    let fs = Tmpfs::mount("disk-full", "2m");
    let state = fs.0.join("state");
    let clock = ManualClock::new(1_764_000_000_000);
    let ctx = Context::open_with_clock(&state, Config::default(), clock.clock()).unwrap();
    let squares = Arc::new(AtomicUsize::new(0));
    let deploys = Arc::new(Mutex::new(Vec::new()));
    let p = pipeline(&ctx, &squares, &deploys, 1);
    for i in 1..=5u64 {
        p.n.set(i);
        deployed(&p.engine, i * i).await;
    }
    let acknowledged = ctx.store.history(Default::default()).await.unwrap().rows;
    assert_eq!(acknowledged.len(), 10, "five squares and five deploys");
    let filled = fill(&fs.0);
    let logs = job_logs(&state);

    p.n.set(6);
    let out = p
        .engine
        .settle(Duration::from_secs(20), |o| o.err().is_some())
        .await
        .unwrap_or_else(|last| panic!("no failure within 20 s of the disk filling: {last:?}"));
    let e = out.err().unwrap().clone();
    println!("with the disk full ({filled} bytes of filler): {e}");
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e:?}");
    assert!(e.message().contains("disk is full") || e.message().contains("No space left"), "says why: {e:?}");
    // No busy loop: a second later, still one attempt.
    tokio::time::sleep(Duration::from_secs(1)).await;
    p.engine.step();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(job_logs(&state) <= logs + 1, "{} job logs after one failure: a busy loop", job_logs(&state) - logs);
    assert_eq!(squares.load(Ordering::SeqCst), 5, "nothing ran that could not be recorded as started");
    let rows = ctx.store.history(Default::default()).await.unwrap().rows;
    assert_eq!(rows.len(), 10);
    for (before, now) in acknowledged.iter().zip(&rows) {
        assert_eq!((&before.job_id, before.ok, &before.outcome), (&now.job_id, now.ok, &now.outcome));
    }

    // Space comes back: a minute later it is tried again, by itself.
    std::fs::remove_file(fs.0.join("filler")).unwrap();
    clock.advance(RETRY_UNAVAILABLE);
    p.engine.step();
    deployed(&p.engine, 36).await;
    assert_eq!(*deploys.lock().unwrap(), [1, 4, 9, 16, 25, 36], "each value deployed once");
    assert_eq!(squares.load(Ordering::SeqCst), 6);

    // A restart finds every outcome (the store passes `quick_check` as it
    // opens) and redoes nothing.
    drop(p);
    drop(ctx);
    let ctx = Context::open_with_clock(&state, Config::default(), clock.clock()).unwrap();
    let rows = ctx.store.history(Default::default()).await.unwrap().rows;
    assert_eq!(rows.iter().filter(|r| r.ok).count(), 12, "{rows:?}");
    let p = pipeline(&ctx, &squares, &deploys, 6);
    deployed(&p.engine, 36).await;
    assert_eq!(deploys.lock().unwrap().len(), 6, "nothing deployed again after the restart");
    assert_eq!(squares.load(Ordering::SeqCst), 6);
}
