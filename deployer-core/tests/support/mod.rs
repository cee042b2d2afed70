//! Test-only: a plugin of fake jobs built on the core's public extension
//! points (caches, jobs, a real SQLite store in a temporary directory), whose
//! jobs finish when the test says so, like OCurrent's test plugins; and a
//! driver that steps the engine one evaluation at a time and checks the
//! diagram and statistics after every step.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use deployer_core::cache::{BuildCache, Builder, OutputCache, Publisher, Schedule};
use deployer_core::{
    Clock, Config, Context, Current, Engine, Error, Expanded, Job, JobStatus, Level, ManualClock, Output, Stats, Value,
    Var,
};
use tokio::sync::{oneshot, Notify};

/// A fresh state directory under the test work directory.
pub fn state_dir(name: &str) -> PathBuf {
    use std::hash::{BuildHasher, Hasher};
    let base = std::env::var_os("DEPLOYER_TEST_WORK").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    let dir = base.join(format!("{name}-{}-{:x}", std::process::id(), h.finish()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Jobs waiting for the test to finish them, by description.
type Waiting = BTreeMap<String, oneshot::Sender<Result<String, String>>>;

/// Lets the test finish fake jobs.
#[derive(Clone, Default)]
pub struct Control {
    waiting: Arc<Mutex<Waiting>>,
    changed: Arc<Notify>,
    runs: Arc<Mutex<BTreeMap<String, usize>>>,
}

impl Control {
    /// The body of every fake job: waits for the test's verdict, or stops
    /// when cancelled (returning an error, as a cooperative job does).
    pub async fn run(&self, job: &Job, what: String) -> Result<String, Error> {
        *self.runs.lock().unwrap().entry(what.clone()).or_default() += 1;
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().unwrap().insert(what.clone(), tx);
        self.changed.notify_waiters();
        job.log(&format!("running {what}"));
        tokio::select! {
            r = rx => r.map_err(|_| Error::msg("test dropped the job"))?.map_err(Error::msg),
            reason = job.cancelled() => Err(Error::msg(format!("stopped: {reason}"))),
        }
    }

    /// Waits until the job `what` waits for the test (fails after 10 s).
    pub async fn wait_running(&self, what: &str) {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if self.waiting.lock().unwrap().get(what).is_some_and(|tx| !tx.is_closed()) {
                    return;
                }
                changed.await;
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!("job {what:?} never started; waiting: {:?}", self.waiting.lock().unwrap().keys().collect::<Vec<_>>())
        });
    }

    /// Finishes the job `what` with `result`, and returns once the job has
    /// finished (so its outcome shows at the next step).
    pub async fn complete(&self, jobs: &deployer_core::Jobs, what: &str, result: Result<&str, &str>) {
        self.wait_running(what).await;
        let job = jobs.find(what).into_iter().next().unwrap_or_else(|| panic!("no active job {what:?}"));
        let tx = self.waiting.lock().unwrap().remove(what).expect("waiting");
        let _ = tx.send(result.map(str::to_owned).map_err(str::to_owned));
        wait_finished(&job).await;
    }

    /// How many times the job `what` ran.
    pub fn runs(&self, what: &str) -> usize {
        self.runs.lock().unwrap().get(what).copied().unwrap_or(0)
    }

    /// Descriptions of the jobs waiting for the test.
    pub fn waiting(&self) -> Vec<String> {
        self.waiting.lock().unwrap().iter().filter(|(_, tx)| !tx.is_closed()).map(|(k, _)| k.clone()).collect()
    }
}

/// Waits (on events, 10 s at most) until `job` has finished.
pub async fn wait_finished(job: &Job) {
    let mut status = job.subscribe_status();
    tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| *s == JobStatus::Finished))
        .await
        .unwrap_or_else(|_| panic!("job {} did not finish", job.id()))
        .unwrap();
}

/// A fake builder: `<prefix> <key>` is its jobs' description.
pub struct FakeBuild {
    pub prefix: &'static str,
    pub level: Level,
    pub auto_cancel: bool,
    pub latched: bool,
    pub control: Control,
}

#[async_trait]
impl Builder for FakeBuild {
    const ID: &'static str = "fake-build";
    type Key = String;
    type Value = String;
    fn describe(&self, key: &String) -> Option<String> {
        Some(format!("{} {key}", self.prefix))
    }
    fn level(&self, _: &String) -> Level {
        self.level
    }
    fn auto_cancel(&self) -> bool {
        self.auto_cancel
    }
    fn latched(&self) -> bool {
        self.latched
    }
    async fn build(&self, job: &Job, key: &String) -> Result<String, Error> {
        self.control.run(job, format!("{} {key}", self.prefix)).await
    }
}

/// A fake builder of lists (the rev-deps query).
pub struct FakeList {
    pub control: Control,
}

#[async_trait]
impl Builder for FakeList {
    const ID: &'static str = "fake-list";
    type Key = String;
    type Value = Vec<String>;
    fn describe(&self, key: &String) -> Option<String> {
        Some(format!("get-revdeps {key}"))
    }
    async fn build(&self, job: &Job, key: &String) -> Result<Vec<String>, Error> {
        let out = self.control.run(job, format!("get-revdeps {key}")).await?;
        Ok(out.split_whitespace().map(str::to_owned).collect())
    }
}

/// A fake publisher: `push <value> as <key>`.
pub struct FakePush {
    pub control: Control,
    pub auto_cancel: bool,
    pub latched: bool,
}

#[async_trait]
impl Publisher for FakePush {
    const ID: &'static str = "fake-push";
    type Key = String;
    type Value = String;
    type Outcome = String;
    fn describe(&self, key: &String, value: &String) -> Option<String> {
        Some(format!("push {value} as {key}"))
    }
    fn auto_cancel(&self) -> bool {
        self.auto_cancel
    }
    fn latched(&self) -> bool {
        self.latched
    }
    async fn publish(&self, job: &Job, key: &String, value: &String) -> Result<String, Error> {
        self.control.run(job, format!("push {value} as {key}")).await
    }
}

/// OCurrent's test plugins: fetch, build, test (`docker run make test`),
/// push, pull (scheduled, latched) and rev-deps, on a real store.
pub struct Fake {
    pub ctx: Context,
    pub control: Control,
    pub clock: ManualClock,
    fetches: BuildCache<FakeBuild>,
    builds: BuildCache<FakeBuild>,
    tests: BuildCache<FakeBuild>,
    pulls: BuildCache<FakeBuild>,
    revdeps: BuildCache<FakeList>,
    pushes: OutputCache<FakePush>,
}

impl Fake {
    pub fn new(name: &str, config: Config) -> Fake {
        let clock = ManualClock::new(1_764_000_000_000);
        let ctx = Context::open_with_clock(&state_dir(name), config, clock.clock()).unwrap();
        let control = Control::default();
        let op =
            |prefix, level| FakeBuild { prefix, level, auto_cancel: false, latched: false, control: control.clone() };
        Fake {
            fetches: BuildCache::new(&ctx, op("fetch", Level::MostlyHarmless)),
            builds: BuildCache::new(&ctx, op("build", Level::Average)),
            tests: BuildCache::new(&ctx, op("docker run make test on", Level::Average)),
            pulls: BuildCache::new(&ctx, op("docker pull", Level::MostlyHarmless)),
            revdeps: BuildCache::new(&ctx, FakeList { control: control.clone() }),
            pushes: OutputCache::new(&ctx, FakePush { control: control.clone(), auto_cancel: false, latched: false }),
            ctx,
            control,
            clock,
        }
    }

    pub fn fetch(&self, commit: &Current<String>) -> Current<String> {
        self.fetches.get("fetch", commit)
    }

    pub fn build(&self, label: &str, src: &Current<String>) -> Current<String> {
        self.builds.get(label, src)
    }

    pub fn test(&self, image: &Current<String>) -> Current<()> {
        self.tests.get("docker run make test", image).ignore_value()
    }

    pub fn push(&self, tag: &str, image: &Current<String>) -> Current<String> {
        self.pushes.set(&format!("docker push {tag}"), tag.to_owned(), image)
    }

    /// `docker pull <image>`, valid for an hour.
    pub fn pull(&self, image: &str) -> Current<String> {
        self.pulls.get_scheduled(
            &format!("docker pull {image}"),
            image.to_owned(),
            Schedule::every(Duration::from_secs(3600)),
        )
    }

    pub fn revdeps(&self, src: &Current<String>) -> Current<Vec<String>> {
        self.revdeps.get("get-revdeps", src)
    }

    /// Finishes the job described `what`.
    pub async fn complete(&self, what: &str, result: Result<&str, &str>) {
        self.control.complete(&self.ctx.jobs, what, result).await;
    }

    /// Cancels the active job described `what` (as an operator does).
    pub fn cancel(&self, what: &str) {
        let jobs = self.ctx.jobs.find(what);
        let job = jobs.first().unwrap_or_else(|| panic!("no active job {what:?}"));
        job.cancel("Cancelled by user");
    }
}

/// Steps an engine one evaluation at a time, like OCurrent's test driver:
/// the pipeline is built inside a bind named "choose pipeline" on a variable
/// named "current-test".
pub struct Driver<T: Value> {
    pub engine: Engine<T>,
    step: usize,
}

impl<T: Value + std::fmt::Debug> Driver<T> {
    pub fn new(pipeline: impl Fn() -> Current<T> + Send + Sync + 'static) -> Driver<T> {
        let selected = Var::new("current-test", ());
        let root = selected.current().bind("choose pipeline", move |_| pipeline());
        Driver { engine: Engine::new(root), step: 0 }
    }

    /// Runs the next evaluation step: the first at once, later ones when
    /// something has changed (failing after 10 s of nothing). Then checks
    /// the diagram against `expected` (see `check_text`).
    pub async fn step(&mut self, expected: &str) {
        if self.step == 0 {
            self.engine.step();
        } else {
            tokio::time::timeout(Duration::from_secs(10), self.engine.next())
                .await
                .unwrap_or_else(|_| panic!("step {}: nothing happened within 10 s\n{}", self.step + 1, self.summary()));
        }
        self.step += 1;
        let actual = self.summary();
        check_text(&actual, expected, &format!("step {}", self.step));
    }

    /// Like `step`, and checks the statistics too.
    pub async fn step_with_stats(&mut self, expected: &str, stats: Stats) {
        self.step(expected).await;
        assert_eq!(self.engine.stats(), stats, "step {}: statistics", self.step);
    }

    pub fn summary(&self) -> String {
        self.engine.diagram(&Expanded::none()).summary()
    }
}

pub fn stats(ok: u64, ready: u64, running: u64, waiting: u64, failed: u64, blocked: u64) -> Stats {
    Stats { ok, ready, running, waiting_for_confirmation: waiting, failed, blocked }
}

/// Compares diagram summaries as multisets of lines (box order does not
/// matter; every box and edge does).
#[track_caller]
pub fn check_text(actual: &str, expected: &str, what: &str) {
    let norm = |s: &str| {
        let mut v: Vec<String> = s.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect();
        v.sort();
        v
    };
    let (a, e) = (norm(actual), norm(expected));
    if a != e {
        panic!("{what}: diagram differs\n--- expected\n{}\n--- actual\n{}\n", e.join("\n"), a.join("\n"));
    }
}

/// Checks an engine's diagram against `expected`.
#[track_caller]
pub fn check_diagram<T: Value>(engine: &Engine<T>, expected: &str) {
    check_text(&engine.diagram(&Expanded::none()).summary(), expected, "diagram");
}

/// A clock for tests that do not move time.
pub fn system_clock() -> Clock {
    Clock::system()
}

/// A value set once, read later (a variable built inside the pipeline).
pub struct Slot<T>(OnceLock<T>);

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot(OnceLock::new())
    }
}

impl<T: Clone> Slot<T> {
    pub fn set(&self, v: T) -> T {
        let _ = self.0.set(v.clone());
        v
    }
    pub fn get(&self) -> T {
        self.0.get().expect("set by the pipeline").clone()
    }
}

/// Output helper for tests.
pub fn ok<T>(v: T) -> Output<T> {
    Output::Ok(v)
}
