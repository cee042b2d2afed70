//! OCurrent's cache scenarios (test/test_cache.ml), run against the real
//! SQLite store, with a builder and a publisher whose jobs the test finishes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use deployer_core::cache::{BuildCache, Builder, OutputCache, Publisher, Schedule};
use deployer_core::{ActiveState, Config, Context, Current, Engine, Error, Job, Level, Output, Value, Var};
use tokio::sync::oneshot;

fn state_dir(name: &str) -> PathBuf {
    let base = std::env::var_os("DEPLOYER_TEST_WORK").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("cache-{name}-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    h.finish()
}

/// Jobs waiting for the test to finish them, by description.
type Waiting = BTreeMap<String, oneshot::Sender<Result<String, String>>>;

#[derive(Clone, Default)]
struct Control {
    waiting: Arc<Mutex<Waiting>>,
    runs: Arc<Mutex<BTreeMap<String, usize>>>,
}

impl Control {
    async fn run(&self, job: &Job, what: String) -> Result<String, Error> {
        *self.runs.lock().unwrap().entry(what.clone()).or_default() += 1;
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().unwrap().insert(what.clone(), tx);
        job.log(&format!("running {what}"));
        tokio::select! {
            r = rx => r.map_err(|_| Error::msg("test dropped the job"))?.map_err(Error::msg),
            reason = job.cancelled() => Err(Error::msg(format!("Cancelled: {reason}"))),
        }
    }

    /// Waits until the job `what` is running, then finishes it.
    async fn complete(&self, what: &str, result: Result<&str, &str>) {
        let tx = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let found = {
                    let mut waiting = self.waiting.lock().unwrap();
                    // A cancelled job leaves a closed sender behind: skip it.
                    if waiting.get(what).is_some_and(|tx| tx.is_closed()) {
                        waiting.remove(what);
                    }
                    waiting.remove(what)
                };
                if let Some(tx) = found {
                    return tx;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!("job {what:?} never started; waiting: {:?}", self.waiting.lock().unwrap().keys().collect::<Vec<_>>())
        });
        let _ = tx.send(result.map(str::to_owned).map_err(str::to_owned));
    }

    async fn wait_running(&self, what: &str) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while self.waiting.lock().unwrap().get(what).is_none_or(|tx| tx.is_closed()) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("job {what:?} never started"));
    }

    fn runs(&self, what: &str) -> usize {
        self.runs.lock().unwrap().get(what).copied().unwrap_or(0)
    }
}

struct TestBuilder {
    control: Control,
    auto_cancel: bool,
    level: Level,
}

#[async_trait]
impl Builder for TestBuilder {
    const ID: &'static str = "test-build";
    type Key = String;
    type Value = String;
    fn level(&self, _key: &String) -> Level {
        self.level
    }
    fn auto_cancel(&self) -> bool {
        self.auto_cancel
    }
    async fn build(&self, job: &Job, key: &String) -> Result<String, Error> {
        self.control.run(job, format!("build {key}")).await
    }
}

struct TestPublisher {
    control: Control,
    auto_cancel: bool,
}

#[async_trait]
impl Publisher for TestPublisher {
    const ID: &'static str = "test-publish";
    type Key = String;
    type Value = String;
    type Outcome = String;
    fn level(&self) -> Level {
        Level::Average
    }
    fn auto_cancel(&self) -> bool {
        self.auto_cancel
    }
    async fn publish(&self, job: &Job, key: &String, value: &String) -> Result<String, Error> {
        self.control.run(job, format!("set {key}={value}")).await
    }
}

fn builder(control: &Control) -> TestBuilder {
    TestBuilder { control: control.clone(), auto_cancel: false, level: Level::Average }
}

async fn settle<T: Value + std::fmt::Debug>(engine: &Engine<T>, want: impl Fn(&Output<T>) -> bool) -> Output<T> {
    engine.step();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let out = engine.output();
            if want(&out) {
                return out;
            }
            engine.next().await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!("engine did not settle; output {:?}\n{}", engine.output(), engine.diagram(&Default::default()).summary())
    })
}

fn is_ok_of<T: PartialEq + Clone>(v: T) -> impl Fn(&Output<T>) -> bool {
    move |o| *o == Output::Ok(v.clone())
}

#[tokio::test]
async fn basic_build_once_per_key_then_rebuild() {
    let dir = state_dir("basic");
    let ctx = Context::open(&dir, Config::default()).unwrap();
    let control = Control::default();
    let cache = BuildCache::new(&ctx, builder(&control));
    let key = Var::new("key", Output::Ok("a".to_string()));
    let engine = Engine::new(cache.get(&key.current(), Schedule::never()));
    engine.step();
    control.complete("build a", Ok("A1")).await;
    settle(&engine, is_ok_of("A1".to_string())).await;
    assert_eq!(control.runs("build a"), 1);
    // Another key, then back: the first result is reused, not rebuilt.
    key.set("b".into());
    engine.step();
    control.complete("build b", Ok("B1")).await;
    settle(&engine, is_ok_of("B1".to_string())).await;
    key.set("a".into());
    settle(&engine, is_ok_of("A1".to_string())).await;
    assert_eq!(control.runs("build a"), 1);
    // The job page offers Rebuild: it runs again.
    let history = ctx.store.history(Default::default()).await.unwrap();
    let job_a = history.rows.iter().find(|r| r.outcome == "\"A1\"").unwrap().job_id.clone();
    ctx.jobs.actions(&job_a).expect("rebuild action").rebuild().unwrap();
    control.complete("build a", Ok("A2")).await;
    settle(&engine, is_ok_of("A2".to_string())).await;
    assert_eq!(control.runs("build a"), 2);
    let builds =
        ctx.store.builds_of("test-build", &deployer_core::cache::digest(&"a".to_string()).unwrap(), 10).await.unwrap();
    assert_eq!(builds.iter().map(|b| b.build).collect::<Vec<_>>(), vec![2, 1]);
    assert!(builds[1].rebuild, "the superseded build is marked for rebuild");

    // A restart reuses the stored result without building.
    drop(engine);
    let ctx2 = Context::open(&dir, Config::default()).unwrap();
    let cache2 = BuildCache::new(&ctx2, builder(&control));
    let engine2 = Engine::new(cache2.get(&Current::constant("a".to_string()), Schedule::never()));
    settle(&engine2, is_ok_of("A2".to_string())).await;
    assert_eq!(control.runs("build a"), 2);
}

#[tokio::test]
async fn expiry_with_two_schedules_the_earliest_wins_and_the_old_value_stays_visible() {
    let dir = state_dir("expires");
    let ctx = Context::open(&dir, Config::default()).unwrap();
    let control = Control::default();
    let cache = BuildCache::new(&ctx, builder(&control));
    let key = Current::constant("img".to_string());
    let short = cache.get(&key, Schedule::every(Duration::from_millis(400)));
    let long = cache.get(&key, Schedule::every(Duration::from_secs(3600)));
    let engine = Engine::new(short.pair(&long));
    engine.step();
    control.complete("build img", Ok("v1")).await;
    settle(&engine, |o| o.is_ok()).await;
    let started = std::time::Instant::now();
    // It expires after the short schedule; while the rebuild runs the old
    // value is shown, with the update in progress on the diagram.
    control.wait_running("build img").await;
    assert!(started.elapsed() < Duration::from_secs(3), "the earliest schedule wins");
    assert_eq!(engine.output(), Output::Ok(("v1".to_string(), "v1".to_string())));
    settle(&engine, |_| engine.diagram(&Default::default()).boxes.iter().any(|b| b.update.is_some())).await;
    // The stored row was not invalidated while the rebuild runs.
    let d = deployer_core::cache::digest(&"img".to_string()).unwrap();
    let latest = ctx.store.latest("test-build", &d).await.unwrap().unwrap();
    assert_eq!((latest.build, latest.outcome.as_str()), (1, "\"v1\""));
    control.complete("build img", Ok("v2")).await;
    settle(&engine, is_ok_of(("v2".to_string(), "v2".to_string()))).await;
    assert_eq!(control.runs("build img"), 2);
}

#[tokio::test]
async fn auto_cancel_of_an_unwanted_build_then_wanted_again() {
    let dir = state_dir("autocancel");
    let ctx = Context::open(&dir, Config::default()).unwrap();
    let control = Control::default();
    let cache =
        BuildCache::new(&ctx, TestBuilder { control: control.clone(), auto_cancel: true, level: Level::Average });
    let key = Var::new("key", Output::Ok("a".to_string()));
    let engine = Engine::new(cache.get(&key.current(), Schedule::never()));
    engine.step();
    control.wait_running("build a").await;
    key.set("b".into());
    engine.step();
    // The build of "a" is cancelled; its failure is not sticky.
    control.complete("build b", Ok("B")).await;
    settle(&engine, is_ok_of("B".to_string())).await;
    let d = deployer_core::cache::digest(&"a".to_string()).unwrap();
    let row = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(r) = ctx.store.latest("test-build", &d).await.unwrap() {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    assert!(!row.ok && row.outcome.contains("Auto-cancelling"), "{row:?}");
    assert!(row.rebuild, "an auto-cancelled build is retried when wanted again");
    key.set("a".into());
    engine.step();
    control.complete("build a", Ok("A")).await;
    settle(&engine, is_ok_of("A".to_string())).await;
    assert_eq!(control.runs("build a"), 2);
}

#[tokio::test]
async fn a_failure_is_sticky_and_reloaded_after_a_restart() {
    let dir = state_dir("failure");
    let control = Control::default();
    {
        let ctx = Context::open(&dir, Config::default()).unwrap();
        let cache = BuildCache::new(&ctx, builder(&control));
        let engine = Engine::new(cache.get(&Current::constant("x".to_string()), Schedule::never()));
        engine.step();
        control.complete("build x", Err("compiler crashed")).await;
        let out = settle(&engine, |o| o.err().is_some()).await;
        assert_eq!(out.err().unwrap().message(), "compiler crashed");
    }
    // Restart: the failure is reloaded, not rebuilt.
    let ctx = Context::open(&dir, Config::default()).unwrap();
    let cache = BuildCache::new(&ctx, builder(&control));
    let engine = Engine::new(cache.get(&Current::constant("x".to_string()), Schedule::never()));
    let out = settle(&engine, |o| o.err().is_some()).await;
    assert_eq!(out.err().unwrap().message(), "compiler crashed");
    assert_eq!(control.runs("build x"), 1);
    // Until a rebuild is asked for.
    cache.rebuild(&"x".to_string()).unwrap();
    control.complete("build x", Ok("fixed")).await;
    settle(&engine, is_ok_of("fixed".to_string())).await;
}

/// `svc := image` through a test publisher, with `image` starting at v1.
fn publish_svc(name: &str, auto_cancel: bool) -> (Context, Control, Var<String>, Engine<String>) {
    let ctx = Context::open(&state_dir(name), Config::default()).unwrap();
    let control = Control::default();
    let cache = OutputCache::new(&ctx, TestPublisher { control: control.clone(), auto_cancel });
    let value = Var::new("image", Output::Ok("v1".to_string()));
    let engine = Engine::new(cache.set(&Current::constant("svc".to_string()), &value.current()));
    (ctx, control, value, engine)
}

#[tokio::test]
async fn output_publishes_once_per_value_and_lets_a_stale_publish_finish() {
    let (_ctx, control, value, engine) = publish_svc("output", false);
    engine.step();
    control.wait_running("set svc=v1").await;
    // The value changes mid-publish: without auto-cancel, v1 finishes first.
    value.set("v2".into());
    engine.step();
    control.complete("set svc=v1", Ok("deployed v1")).await;
    control.complete("set svc=v2", Ok("deployed v2")).await;
    settle(&engine, is_ok_of("deployed v2".to_string())).await;
    // Back to v1: already published once, but v2 is what is live, so v1 is
    // published again; setting v1 twice in a row publishes once.
    value.set("v1".into());
    engine.step();
    control.complete("set svc=v1", Ok("deployed v1 again")).await;
    settle(&engine, is_ok_of("deployed v1 again".to_string())).await;
    value.set("v1".into());
    engine.step();
    assert_eq!(control.runs("set svc=v1"), 2);
    assert_eq!(control.runs("set svc=v2"), 1);
}

#[tokio::test]
async fn output_auto_cancel() {
    let (ctx, control, value, engine) = publish_svc("output-autocancel", true);
    engine.step();
    control.wait_running("set svc=v1").await;
    value.set("v2".into());
    engine.step();
    control.complete("set svc=v2", Ok("deployed v2")).await;
    settle(&engine, is_ok_of("deployed v2".to_string())).await;
    let history = ctx.store.history(Default::default()).await.unwrap();
    let cancelled = history.rows.iter().find(|r| !r.ok).expect("the v1 publish is recorded");
    assert!(cancelled.outcome.contains("Auto-cancelling"), "{cancelled:?}");
}

#[tokio::test]
async fn output_retry_after_a_failure() {
    let dir = state_dir("output-retry");
    let ctx = Context::open(&dir, Config::default()).unwrap();
    let control = Control::default();
    let cache = OutputCache::new(&ctx, TestPublisher { control: control.clone(), auto_cancel: false });
    let engine = Engine::new(cache.set(&Current::constant("svc".to_string()), &Current::constant("v1".to_string())));
    engine.step();
    control.complete("set svc=v1", Err("registry down")).await;
    settle(&engine, |o| o.err().is_some()).await;
    // Sticky: nothing happens until a rebuild.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(control.runs("set svc=v1"), 1);
    cache.rebuild(&"svc".to_string()).unwrap();
    control.complete("set svc=v1", Ok("deployed")).await;
    settle(&engine, is_ok_of("deployed".to_string())).await;
    assert_eq!(control.runs("set svc=v1"), 2);
}

#[tokio::test]
async fn two_values_for_one_key_in_one_step_is_an_error() {
    let dir = state_dir("conflict");
    let ctx = Context::open(&dir, Config::default()).unwrap();
    let control = Control::default();
    let cache = OutputCache::new(&ctx, TestPublisher { control: control.clone(), auto_cancel: false });
    let key = Current::constant("svc".to_string());
    let a = cache.set(&key, &Current::constant("v1".to_string()));
    let b = cache.set(&key, &Current::constant("v2".to_string()));
    let engine = Engine::new(a.pair(&b).state());
    engine.step();
    let Output::Ok(Output::Err(e)) = engine.output() else { panic!("expected an error, got {:?}", engine.output()) };
    assert!(e.message().contains("set to different values in the same step"), "{e}");
}

#[tokio::test]
async fn an_interrupted_job_is_recorded_failed_builders_retry_publishers_do_not() {
    let dir = state_dir("interrupted");
    let key = deployer_core::cache::digest(&"k".to_string()).unwrap();
    let value = deployer_core::cache::digest(&"v1".to_string()).unwrap();
    {
        // A process that died mid-job: the start was recorded, not the outcome.
        let ctx = Context::open(&dir, Config::default()).unwrap();
        ctx.store.record_start("test-build", &key, None, "2026-11-24/000000-test-build-aaaaaa").await.unwrap();
        ctx.store
            .record_start("test-publish", &key, Some(&value), "2026-11-24/000000-test-publish-bbbbbb")
            .await
            .unwrap();
    }
    let ctx = Context::open(&dir, Config::default()).unwrap();
    let row = ctx.store.latest("test-build", &key).await.unwrap().unwrap();
    assert!(row.interrupted && !row.ok, "{row:?}");
    assert!(row.outcome.starts_with("interrupted"), "{row:?}");
    let control = Control::default();
    let builds = BuildCache::new(&ctx, builder(&control));
    let publishes = OutputCache::new(&ctx, TestPublisher { control: control.clone(), auto_cancel: false });
    let k = Current::constant("k".to_string());
    let engine = Engine::new(
        builds.get(&k, Schedule::never()).pair(&publishes.set(&k, &Current::constant("v1".to_string())).state()),
    );
    engine.step();
    control.complete("build k", Ok("built")).await;
    let out = settle(&engine, |o| o.is_ok()).await;
    let Output::Ok((built, Output::Err(e))) = out else { panic!("unexpected {out:?}") };
    assert_eq!(built, "built");
    assert!(e.message().starts_with("interrupted"), "the publish is not repeated: {e}");
    assert_eq!(control.runs("set k=v1"), 0);
}

#[tokio::test]
async fn a_stored_outcome_that_no_longer_deserializes_is_rebuilt() {
    let dir = state_dir("undeserializable");
    let key = deployer_core::cache::digest(&"k".to_string()).unwrap();
    {
        let ctx = Context::open(&dir, Config::default()).unwrap();
        ctx.store
            .insert_many(vec![deployer_core::store::BuildRecord {
                op: "test-build".into(),
                key: key.clone(),
                build: 1,
                job_id: "2026-11-24/000000-test-build-cccccc".into(),
                value: None,
                ok: true,
                outcome: "{\"an old format\": 1}".into(),
                rebuild: false,
                interrupted: false,
                ready: 0,
                running: None,
                finished: 0,
            }])
            .await
            .unwrap();
    }
    let ctx = Context::open(&dir, Config::default()).unwrap();
    let control = Control::default();
    let cache = BuildCache::new(&ctx, builder(&control));
    let engine = Engine::new(cache.get(&Current::constant("k".to_string()), Schedule::never()));
    engine.step();
    control.complete("build k", Ok("fresh")).await;
    settle(&engine, is_ok_of("fresh".to_string())).await;
}

#[tokio::test]
async fn dangerous_jobs_wait_for_confirmation() {
    let dir = state_dir("confirm");
    let ctx = Context::open(&dir, Config::new(Some(Level::Average))).unwrap();
    let control = Control::default();
    let cache =
        BuildCache::new(&ctx, TestBuilder { control: control.clone(), auto_cancel: false, level: Level::Dangerous });
    let engine = Engine::new(Current::all([
        cache.get(&Current::constant("a".to_string()), Schedule::never()),
        cache.get(&Current::constant("b".to_string()), Schedule::never()),
    ]));
    engine.step();
    settle(&engine, |_| engine.stats().waiting_for_confirmation == 2).await;
    assert_eq!(engine.output(), Output::Active(ActiveState::WaitingForConfirmation));
    // An operator starts one early.
    let waiting = ctx.jobs.active();
    assert_eq!(waiting.len(), 2);
    let first = &waiting[0].id;
    let (log, _) = ctx.jobs.read_log(first, 0, 1 << 16).unwrap();
    let which = if String::from_utf8_lossy(&log).contains("New job: test-build a") { "a" } else { "b" };
    assert!(String::from_utf8_lossy(&log).contains("Waiting for confirm-threshold > dangerous"));
    ctx.jobs.get(first).unwrap().approve_early_start();
    control.wait_running(&format!("build {which}")).await;
    settle(&engine, |_| engine.stats().waiting_for_confirmation == 1).await;
    // Lowering the threshold at run time releases the other.
    ctx.config().set_confirm(None);
    settle(&engine, |_| engine.stats().waiting_for_confirmation == 0).await;
    control.complete("build a", Ok("A")).await;
    control.complete("build b", Ok("B")).await;
    settle(&engine, |o| o.is_ok()).await;
}
