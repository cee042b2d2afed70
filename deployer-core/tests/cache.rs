//! OCurrent's cache scenarios (test/test_cache.ml), restated and run against
//! the real SQLite store, with builders and publishers whose jobs the test
//! finishes; time moves on a manual clock. Each scenario steps the engine
//! one evaluation at a time and checks what the stage shows at every step.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use deployer_core::cache::{digest, BuildCache, Builder, OutputCache, Publisher, Schedule};
use deployer_core::store::{JobRecord, JobStart};
use deployer_core::{
    ActiveState, Config, Context, Current, Engine, Error, Job, Level, ManualClock, Output, Pool, Value, Var,
};
use support::{state_dir, wait_finished, Control, FakeBuild, FakePush};
use tokio::sync::Notify;

const START: i64 = 1_764_000_000_000;

fn context(name: &str) -> (Context, ManualClock) {
    let clock = ManualClock::new(START);
    (Context::open_with_clock(&state_dir(name), Config::default(), clock.clock()).unwrap(), clock)
}

fn builder(control: &Control) -> FakeBuild {
    FakeBuild { prefix: "build", level: Level::Average, auto_cancel: false, latched: false, control: control.clone() }
}

/// Runs the next step once something has happened (10 s at most).
async fn next<T: Value>(engine: &Engine<T>) {
    tokio::time::timeout(Duration::from_secs(10), engine.next()).await.expect("nothing happened within 10 s");
}

fn ok<T>(v: T) -> Output<T> {
    Output::Ok(v)
}

fn running<T>() -> Output<T> {
    Output::Active(ActiveState::Running)
}

/// The update shown on the (only) job box.
fn update<T: Value>(engine: &Engine<T>) -> Option<ActiveState> {
    engine.diagram(&Default::default()).boxes.iter().find(|b| b.job_id.is_some()).and_then(|b| b.update)
}

#[tokio::test]
async fn basic_build_once_per_key_then_rebuild_then_restart() {
    let (ctx, _clock) = context("basic");
    let dir = ctx.state_dir().to_owned();
    let control = Control::default();
    let cache = BuildCache::new(&ctx, builder(&control));
    let key = Var::new("key", "a".to_string());
    let engine = Engine::new(cache.get("build", key.current()));
    engine.step();
    assert_eq!(engine.output(), running());
    control.complete(&ctx.jobs, "build a", Ok("A1")).await;
    next(&engine).await;
    assert_eq!(engine.output(), ok("A1".to_string()));
    // Another key, then back: the first result is reused, not rebuilt.
    key.set("b".into());
    engine.step();
    assert_eq!(engine.output(), running());
    control.complete(&ctx.jobs, "build b", Ok("B1")).await;
    next(&engine).await;
    key.set("a".into());
    engine.step();
    assert_eq!(engine.output(), ok("A1".to_string()), "reused within the step");
    assert_eq!(control.runs("build a"), 1);
    // The job page offers Rebuild: it runs again, at once.
    let history = ctx.store.history(Default::default()).await.unwrap();
    let job_a = history.rows.iter().find(|r| r.outcome == "\"A1\"").unwrap().job_id.clone();
    let actions = ctx.jobs.actions(&job_a).expect("rebuild action");
    actions.rebuild().unwrap();
    let new_job = actions.latest_job().expect("the new job exists as soon as the rebuild is asked for");
    assert_ne!(new_job, job_a);
    next(&engine).await;
    assert_eq!(engine.output(), running());
    assert!(actions.rebuild().unwrap_err().message().contains("is still running"));
    control.complete(&ctx.jobs, "build a", Ok("A2")).await;
    next(&engine).await;
    assert_eq!(engine.output(), ok("A2".to_string()));
    let builds = ctx.store.builds_of("fake-build", &digest(&"a".to_string()).unwrap(), 10).await.unwrap();
    assert_eq!(builds.iter().map(|b| b.build).collect::<Vec<_>>(), vec![2, 1]);
    assert!(builds[1].rebuild, "the superseded build is marked for rebuild");
    assert_eq!(builds[0].description, "build a");

    // A restart reuses the stored result without building: the first
    // step shows it.
    drop(engine);
    let ctx2 = Context::open(&dir, Config::default()).unwrap();
    let cache2 = BuildCache::new(&ctx2, builder(&control));
    let engine2 = Engine::new(cache2.get("build", "a".to_string()));
    engine2.step();
    assert_eq!(engine2.output(), ok("A2".to_string()));
    assert_eq!(control.runs("build a"), 2);
}

#[tokio::test]
async fn expiry_with_two_schedules_the_earliest_wins_and_the_old_value_stays_visible() {
    let (ctx, clock) = context("expires");
    let control = Control::default();
    let cache = BuildCache::new(&ctx, builder(&control));
    let key = Current::constant("img".to_string());
    let short = cache.get_scheduled("build", &key, Schedule::every(Duration::from_secs(60)));
    let long = cache.get_scheduled("build", &key, Schedule::every(Duration::from_secs(3600)));
    let engine = Engine::new(short.pair(&long));
    engine.step();
    control.complete(&ctx.jobs, "build img", Ok("v1")).await;
    next(&engine).await;
    let v1 = ok(("v1".to_string(), "v1".to_string()));
    assert_eq!(engine.output(), v1);
    // One minute later (the short schedule), the result expires: it is
    // rebuilt while the old value stays shown, with the update on the box.
    clock.advance(Duration::from_secs(60));
    next(&engine).await;
    assert_eq!(engine.output(), v1);
    assert_eq!(update(&engine), Some(ActiveState::Running));
    control.wait_running("build img").await;
    // The stored row was not invalidated while the rebuild runs.
    let d = digest(&"img".to_string()).unwrap();
    let latest = ctx.store.latest("fake-build", &d).await.unwrap().unwrap();
    assert_eq!((latest.build, latest.outcome.as_str()), (1, "\"v1\""));
    control.complete(&ctx.jobs, "build img", Ok("v2")).await;
    next(&engine).await;
    assert_eq!(engine.output(), ok(("v2".to_string(), "v2".to_string())));
    assert_eq!(update(&engine), None);
    assert_eq!(control.runs("build img"), 2);
}

/// A build that runs until asked to stop, then finishes cleaning up only
/// when the test says so, and returns what it had built.
struct SlowToCancel {
    started: Arc<Notify>,
    cleanup: Arc<Notify>,
    runs: Arc<std::sync::atomic::AtomicUsize>,
}

#[async_trait]
impl Builder for SlowToCancel {
    const ID: &'static str = "slow-to-cancel";
    type Key = String;
    type Value = String;
    fn auto_cancel(&self) -> bool {
        true
    }
    fn describe(&self, key: &String) -> Option<String> {
        Some(format!("build {key}"))
    }
    async fn build(&self, job: &Job, key: &String) -> Result<String, Error> {
        let n = self.runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        if n > 1 {
            return Ok(format!("{key} (run {n})"));
        }
        self.started.notify_one();
        job.cancelled().await;
        self.cleanup.notified().await;
        Ok(format!("{key} (finished while cancelling)"))
    }
}

#[tokio::test]
async fn auto_cancel_then_wanted_again_before_the_cancel_finished_builds_again() {
    let (ctx, _clock) = context("autocancel");
    let (started, cleanup) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let cache =
        BuildCache::new(&ctx, SlowToCancel { started: started.clone(), cleanup: cleanup.clone(), runs: runs.clone() });
    let wanted = Var::new("wanted", true);
    let c = cache.clone();
    let engine = Engine::new(wanted.current().and_then(move |w| {
        if *w {
            c.get("build", "a".to_string())
        } else {
            Current::constant("unwanted".to_string())
        }
    }));
    engine.step();
    tokio::time::timeout(Duration::from_secs(10), started.notified()).await.expect("the build started");
    let job = ctx.jobs.find("build a").remove(0);
    // Not wanted: the job is asked to stop.
    wanted.set(false);
    engine.step();
    assert_eq!(engine.output(), ok("unwanted".to_string()));
    assert!(job.cancelled_reason().is_some_and(|r| r.contains("Auto-cancelling")));
    // Wanted again while it is still cleaning up: the stage re-attaches to
    // it (same job, no second build, no "already building").
    wanted.set(true);
    engine.step();
    assert_eq!(engine.output(), running());
    let shown = engine.diagram(&Default::default()).boxes.iter().find_map(|b| b.job_id.clone());
    assert_eq!(shown.as_deref(), Some(job.id()));
    assert_eq!(ctx.jobs.find("build a").len(), 1);
    // It finishes its cleanup with a result: as in OCurrent, a cancelled
    // run is never the answer (issue 23). A replacement build runs, and its
    // result is the value.
    cleanup.notify_one();
    wait_finished(&job).await;
    let out = engine.settle(Duration::from_secs(10), |o| matches!(o, Output::Ok(_))).await.unwrap();
    assert_eq!(out, ok("a (run 2)".to_string()));
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 2, "a replacement build");
    let first = ctx.store.by_job(job.id()).await.unwrap().unwrap();
    assert!(first.ok && first.rebuild, "recorded as it ended, never reloaded as the answer: {first:?}");
    assert!(ctx.jobs.active().is_empty());
}

#[tokio::test]
async fn an_auto_cancelled_build_that_stops_is_built_again_when_wanted_again() {
    let (ctx, _clock) = context("autocancel-stop");
    let control = Control::default();
    let cache = BuildCache::new(&ctx, FakeBuild { auto_cancel: true, ..builder(&control) });
    let key = Var::new("key", "a".to_string());
    let engine = Engine::new(cache.get("build", key.current()));
    engine.step();
    control.wait_running("build a").await;
    let first = ctx.jobs.find("build a").remove(0);
    key.set("b".into());
    engine.step();
    wait_finished(&first).await;
    // Its failure is recorded but not sticky.
    let row = ctx.store.by_job(first.id()).await.unwrap().unwrap();
    assert_eq!(row.outcome, "Cancelled");
    assert!(row.rebuild);
    control.complete(&ctx.jobs, "build b", Ok("B")).await;
    next(&engine).await;
    assert_eq!(engine.output(), ok("B".to_string()));
    key.set("a".into());
    engine.step();
    assert_eq!(engine.output(), running());
    control.complete(&ctx.jobs, "build a", Ok("A")).await;
    next(&engine).await;
    assert_eq!(engine.output(), ok("A".to_string()));
    assert_eq!(control.runs("build a"), 2);
}

#[tokio::test]
async fn a_failure_is_sticky_and_reloaded_after_a_restart() {
    let (ctx, _clock) = context("failure");
    let dir = ctx.state_dir().to_owned();
    let control = Control::default();
    {
        let cache = BuildCache::new(&ctx, builder(&control));
        let engine = Engine::new(cache.get("build", "x".to_string()));
        engine.step();
        control.complete(&ctx.jobs, "build x", Err("compiler crashed")).await;
        next(&engine).await;
        assert_eq!(engine.output().err().unwrap().message(), "compiler crashed");
    }
    // Restart: the failure is reloaded (shown at the first step), not rebuilt.
    let ctx = Context::open(&dir, Config::default()).unwrap();
    let cache = BuildCache::new(&ctx, builder(&control));
    let engine = Engine::new(cache.get("build", "x".to_string()));
    engine.step();
    assert_eq!(engine.output().err().unwrap().message(), "compiler crashed");
    assert_eq!(control.runs("build x"), 1);
    // Until a rebuild is asked for.
    cache.rebuild(&"x".to_string()).unwrap();
    next(&engine).await;
    assert_eq!(engine.output(), running());
    control.complete(&ctx.jobs, "build x", Ok("fixed")).await;
    next(&engine).await;
    assert_eq!(engine.output(), ok("fixed".to_string()));
}

fn publisher(control: &Control, auto_cancel: bool, latched: bool) -> FakePush {
    FakePush { control: control.clone(), auto_cancel, latched }
}

#[tokio::test]
async fn output_publishes_once_per_value_and_lets_a_stale_publish_finish() {
    let (ctx, _clock) = context("output");
    let control = Control::default();
    let cache = OutputCache::new(&ctx, publisher(&control, false, false));
    let value = Var::new("image", "v1".to_string());
    let engine = Engine::new(cache.set("deploy svc", "svc".to_string(), value.current()));
    engine.step();
    assert_eq!(engine.output(), running());
    control.wait_running("push v1 as svc").await;
    // The value changes mid-publish: without auto-cancel, v1 finishes first.
    value.set("v2".into());
    engine.step();
    control.complete(&ctx.jobs, "push v1 as svc", Ok("deployed v1")).await;
    next(&engine).await;
    assert_eq!(engine.output(), running(), "v2 is being published");
    control.complete(&ctx.jobs, "push v2 as svc", Ok("deployed v2")).await;
    next(&engine).await;
    assert_eq!(engine.output(), ok("deployed v2".to_string()));
    // Back to v1: published again (v2 is what is live); the same value
    // twice in a row publishes once.
    value.set("v1".into());
    engine.step();
    control.complete(&ctx.jobs, "push v1 as svc", Ok("deployed v1 again")).await;
    next(&engine).await;
    assert_eq!(engine.output(), ok("deployed v1 again".to_string()));
    value.set("v1".into());
    engine.step();
    assert_eq!(control.runs("push v1 as svc"), 2);
    assert_eq!(control.runs("push v2 as svc"), 1);
    // History rows say what was deployed.
    let history = ctx.store.history(Default::default()).await.unwrap();
    assert_eq!(history.rows[0].description, "push v1 as svc");
}

#[tokio::test]
async fn output_retry_new_a_stale_failure_is_not_sticky() {
    let (ctx, _clock) = context("output-retry-new");
    let control = Control::default();
    let cache = OutputCache::new(&ctx, publisher(&control, false, false));
    let value = Var::new("input", "1".to_string());
    let engine = Engine::new(cache.set("set foo", "foo".to_string(), value.current()));
    engine.step();
    control.wait_running("push 1 as foo").await;
    // We change our mind while still setting the old one; the old one fails.
    value.set("2".into());
    engine.step();
    control.complete(&ctx.jobs, "push 1 as foo", Err("Failed")).await;
    next(&engine).await;
    assert_eq!(engine.output(), running(), "the new value is being published");
    control.complete(&ctx.jobs, "push 2 as foo", Ok("2")).await;
    next(&engine).await;
    assert_eq!(engine.output(), ok("2".to_string()));
}

#[tokio::test]
async fn output_auto_cancel_then_rebuild() {
    let (ctx, _clock) = context("output-autocancel");
    let control = Control::default();
    let cache = OutputCache::new(&ctx, publisher(&control, true, false));
    let value = Var::new("input", "bar".to_string());
    let engine = Engine::new(cache.set("set foo", "foo".to_string(), value.current()));
    engine.step();
    control.complete(&ctx.jobs, "push bar as foo", Ok("bar")).await;
    next(&engine).await;
    value.set("baz".into());
    engine.step();
    control.wait_running("push baz as foo").await;
    let baz = ctx.jobs.find("push baz as foo").remove(0);
    value.set("new".into());
    engine.step();
    wait_finished(&baz).await;
    let row = ctx.store.by_job(baz.id()).await.unwrap().unwrap();
    assert_eq!(row.outcome, "Cancelled");
    control.complete(&ctx.jobs, "push new as foo", Ok("new")).await;
    next(&engine).await;
    assert_eq!(engine.output(), ok("new".to_string()));
    cache.rebuild(&"foo".to_string()).unwrap();
    next(&engine).await;
    assert_eq!(engine.output(), running());
    control.complete(&ctx.jobs, "push new as foo", Ok("new again")).await;
    next(&engine).await;
    assert_eq!(engine.output(), ok("new again".to_string()));
}

#[tokio::test]
async fn output_retry_after_a_failure_only_when_asked() {
    let (ctx, _clock) = context("output-retry");
    let control = Control::default();
    let cache = OutputCache::new(&ctx, publisher(&control, false, false));
    let engine = Engine::new(cache.set("set foo", "foo".to_string(), "value".to_string()));
    engine.step();
    control.complete(&ctx.jobs, "push value as foo", Err("registry down")).await;
    next(&engine).await;
    assert_eq!(engine.output().err().unwrap().message(), "registry down");
    // Sticky: the instance plans nothing (no job exists) until a rebuild.
    assert!(ctx.jobs.active().is_empty());
    cache.rebuild(&"foo".to_string()).unwrap();
    next(&engine).await;
    control.complete(&ctx.jobs, "push value as foo", Ok("deployed")).await;
    next(&engine).await;
    assert_eq!(engine.output(), ok("deployed".to_string()));
    assert_eq!(control.runs("push value as foo"), 2);
}

/// OCurrent's latched scenarios: the key is a commit, the value a base image.
fn latched_setup(
    name: &str,
    auto_cancel: bool,
) -> (Context, Control, Var<String>, Var<String>, Engine<Output<String>>) {
    let (ctx, _clock) = context(name);
    let control = Control::default();
    let cache = OutputCache::new(&ctx, publisher(&control, auto_cancel, true));
    let commit = Var::new("commit", "r1".to_string());
    let base = Var::new("base", "alpine:3.10".to_string());
    let engine = Engine::new(cache.set("build", commit.current(), base.current()).state());
    (ctx, control, commit, base, engine)
}

#[tokio::test]
async fn latched_a_new_value_keeps_the_old_outcome_shown_a_new_key_does_not() {
    let (ctx, control, commit, base, engine) = latched_setup("latched", false);
    engine.step();
    assert_eq!(engine.output(), ok(running()));
    control.complete(&ctx.jobs, "push alpine:3.10 as r1", Ok("3.10-outcome")).await;
    next(&engine).await;
    assert_eq!(engine.output(), ok(ok("3.10-outcome".to_string())));
    // Changing the base (the value) latches the result.
    base.set("alpine:3.11".into());
    engine.step();
    assert_eq!(engine.output(), ok(ok("3.10-outcome".to_string())));
    assert_eq!(update(&engine), Some(ActiveState::Running));
    control.complete(&ctx.jobs, "push alpine:3.11 as r1", Ok("3.11-outcome")).await;
    next(&engine).await;
    assert_eq!(engine.output(), ok(ok("3.11-outcome".to_string())));
    assert_eq!(update(&engine), None);
    // Changing the commit (the key) does not.
    commit.set("r2".into());
    engine.step();
    assert_eq!(engine.output(), ok(running()));
}

#[tokio::test]
async fn latched_auto_cancel_keeps_the_old_outcome_through_two_changes() {
    let (ctx, control, _commit, base, engine) = latched_setup("latched-autocancel", true);
    engine.step();
    control.complete(&ctx.jobs, "push alpine:3.10 as r1", Ok("3.10-outcome")).await;
    next(&engine).await;
    base.set("alpine:3.11".into());
    engine.step();
    control.wait_running("push alpine:3.11 as r1").await;
    let job = ctx.jobs.find("push alpine:3.11 as r1").remove(0);
    base.set("alpine:3.12".into());
    engine.step();
    assert_eq!(engine.output(), ok(ok("3.10-outcome".to_string())));
    wait_finished(&job).await;
    next(&engine).await;
    assert_eq!(engine.output(), ok(ok("3.10-outcome".to_string())), "still latched while 3.12 is published");
    assert_eq!(update(&engine), Some(ActiveState::Running));
    control.complete(&ctx.jobs, "push alpine:3.12 as r1", Ok("3.12-outcome")).await;
    next(&engine).await;
    assert_eq!(engine.output(), ok(ok("3.12-outcome".to_string())));
}

#[tokio::test]
async fn clear_error_a_latched_failure_survives_a_restart() {
    let (ctx, control, _commit, base, engine) = latched_setup("clear-error", false);
    let dir = ctx.state_dir().to_owned();
    base.set(String::new());
    engine.step();
    control.complete(&ctx.jobs, "push  as r1", Err("bad-base")).await;
    next(&engine).await;
    let failed = |o: &Output<Output<String>>| matches!(o, Output::Ok(Output::Err(e)) if e.message() == "bad-base");
    assert!(failed(&engine.output()));
    // Changing the base latches the failure.
    base.set("alpine:3.11".into());
    engine.step();
    assert!(failed(&engine.output()));
    control.complete(&ctx.jobs, "push alpine:3.11 as r1", Ok("3.11-outcome")).await;
    next(&engine).await;
    base.set(String::new());
    engine.step();
    control.complete(&ctx.jobs, "push  as r1", Err("bad-base")).await;
    next(&engine).await;
    assert!(failed(&engine.output()));
    drop(engine);
    // Restart: the failure is reloaded, and latched while the new value
    // is published.
    let ctx = Context::open(&dir, Config::default()).unwrap();
    let cache = OutputCache::new(&ctx, publisher(&control, false, true));
    let engine = Engine::new(cache.set("build", "r1".to_string(), "alpine:3.11".to_string()).state());
    engine.step();
    assert!(failed(&engine.output()), "{:?}", engine.output());
    assert_eq!(update(&engine), Some(ActiveState::Running));
    control.complete(&ctx.jobs, "push alpine:3.11 as r1", Ok("3.11-outcome")).await;
    next(&engine).await;
    assert_eq!(engine.output(), ok(ok("3.11-outcome".to_string())));
}

#[tokio::test]
async fn two_values_for_one_key_in_one_step_is_an_error() {
    let (ctx, _clock) = context("conflict");
    let control = Control::default();
    let cache = OutputCache::new(&ctx, publisher(&control, false, false));
    let a = cache.set("deploy", "svc".to_string(), "v1".to_string());
    let b = cache.set("deploy", "svc".to_string(), "v2".to_string());
    let engine = Engine::new(a.pair(&b).state());
    engine.step();
    let Output::Ok(Output::Err(e)) = engine.output() else { panic!("expected an error, got {:?}", engine.output()) };
    assert!(e.message().contains("set to two different values in the same step"), "{e}");
}

/// Publishes like `FakePush`, but may be re-run after a crash.
struct Idempotent {
    control: Control,
}

#[async_trait]
impl Publisher for Idempotent {
    const ID: &'static str = "idempotent";
    type Key = String;
    type Value = String;
    type Outcome = String;
    fn idempotent(&self) -> bool {
        true
    }
    fn describe(&self, key: &String, value: &String) -> Option<String> {
        Some(format!("tag {key} {value}"))
    }
    async fn publish(&self, job: &Job, key: &String, value: &String) -> Result<String, Error> {
        self.control.run(job, format!("tag {key} {value}")).await
    }
}

#[tokio::test]
async fn an_interrupted_job_builders_and_idempotent_publishers_rerun_others_wait() {
    let dir = state_dir("interrupted");
    let key = digest(&"k".to_string()).unwrap();
    let value = digest(&"v1".to_string()).unwrap();
    {
        // A process that died mid-job: the starts were recorded, not the outcomes.
        let ctx = Context::open(&dir, Config::default()).unwrap();
        for (op, value, job_id) in [
            ("fake-build", None, "2026-11-24/000000-fake-build-aaaaaa"),
            ("fake-push", Some(value.as_str()), "2026-11-24/000000-fake-push-bbbbbb"),
            ("idempotent", Some(value.as_str()), "2026-11-24/000000-idempotent-cccccc"),
        ] {
            let start = JobStart { op, key: &key, value, job_id, description: "before the crash" };
            ctx.store.record_start(start).await.unwrap();
        }
    }
    let ctx = Context::open(&dir, Config::default()).unwrap();
    let row = ctx.store.latest("fake-push", &key).await.unwrap().unwrap();
    assert!(row.interrupted && !row.ok && row.outcome.starts_with("interrupted"), "{row:?}");
    assert_eq!(row.description, "before the crash");
    let control = Control::default();
    let builds = BuildCache::new(&ctx, builder(&control));
    let pushes = OutputCache::new(&ctx, publisher(&control, false, false));
    let tags = OutputCache::new(&ctx, Idempotent { control: control.clone() });
    let k = Current::constant("k".to_string());
    let v = Current::constant("v1".to_string());
    let engine =
        Engine::new((&builds.get("build", &k), &pushes.set("push", &k, &v).state(), &tags.set("tag", &k, &v)).join());
    engine.step();
    control.complete(&ctx.jobs, "build k", Ok("built")).await;
    control.complete(&ctx.jobs, "tag k v1", Ok("tagged")).await;
    next(&engine).await;
    let Output::Ok((built, Output::Err(e), tagged)) = engine.output() else { panic!("{:?}", engine.output()) };
    assert_eq!((built.as_str(), tagged.as_str()), ("built", "tagged"));
    assert!(e.message().starts_with("interrupted"), "the publish is not repeated: {e}");
    assert_eq!(control.runs("push v1 as k"), 0);
}

use deployer_core::Join;

#[tokio::test]
async fn a_stored_outcome_that_no_longer_deserializes_is_rebuilt() {
    let dir = state_dir("undeserializable");
    let key = digest(&"k".to_string()).unwrap();
    {
        let ctx = Context::open(&dir, Config::default()).unwrap();
        ctx.store
            .import(vec![JobRecord {
                op: "fake-build".into(),
                key: key.clone(),
                build: 1,
                job_id: "2026-11-24/000000-fake-build-cccccc".into(),
                description: "build k".into(),
                value: None,
                ok: true,
                outcome: "{\"an old format\": 1}".into(),
                rebuild: false,
                interrupted: false,
                unavailable: false,
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
    let engine = Engine::new(cache.get("build", "k".to_string()));
    engine.step();
    assert_eq!(engine.output(), running());
    control.complete(&ctx.jobs, "build k", Ok("fresh")).await;
    next(&engine).await;
    assert_eq!(engine.output(), ok("fresh".to_string()));
}

#[tokio::test]
async fn dangerous_jobs_wait_for_confirmation_from_the_first_step() {
    let ctx = Context::open(&state_dir("confirm"), Config::new(Some(Level::Average))).unwrap();
    let control = Control::default();
    let cache = BuildCache::new(&ctx, FakeBuild { level: Level::Dangerous, ..builder(&control) });
    let engine = Engine::new(Current::all([cache.get("build", "a".to_string()), cache.get("build", "b".to_string())]));
    engine.step();
    assert_eq!(engine.stats().waiting_for_confirmation, 2, "never shown running before confirmation");
    assert_eq!(engine.output(), Output::Active(ActiveState::WaitingForConfirmation));
    // An operator starts one early.
    let a = ctx.jobs.find("build a").remove(0);
    a.approve_early_start();
    control.wait_running("build a").await;
    next(&engine).await;
    assert_eq!(engine.stats().waiting_for_confirmation, 1);
    let (log, _) = ctx.jobs.read_log(a.id(), 0, 1 << 16).unwrap();
    assert!(String::from_utf8_lossy(&log).contains("Waiting for confirm-threshold > dangerous"));
    // Lowering the threshold at run time releases the other.
    ctx.config().set_confirm(None);
    control.wait_running("build b").await;
    next(&engine).await;
    assert_eq!(engine.stats().waiting_for_confirmation, 0);
    control.complete(&ctx.jobs, "build a", Ok("A")).await;
    control.complete(&ctx.jobs, "build b", Ok("B")).await;
    next(&engine).await;
    assert!(engine.output().is_ok());
}

/// A build that takes its pool slot and holds it until the test says so.
struct Pooled {
    pool: Pool,
    control: Control,
}

#[async_trait]
impl Builder for Pooled {
    const ID: &'static str = "pooled";
    type Key = String;
    type Value = String;
    fn pool(&self) -> Option<Pool> {
        Some(self.pool.clone())
    }
    fn describe(&self, key: &String) -> Option<String> {
        Some(format!("build {key}"))
    }
    async fn build(&self, job: &Job, key: &String) -> Result<String, Error> {
        self.control.run(job, format!("build {key}")).await
    }
}

#[tokio::test]
async fn a_job_queued_for_a_full_pool_shows_ready_then_running() {
    let (ctx, _clock) = context("pool");
    let control = Control::default();
    let cache = BuildCache::new(&ctx, Pooled { pool: Pool::new("one", 1), control: control.clone() });
    let a = cache.get("build", "a".to_string());
    let b = cache.get("build", "b".to_string());
    let seen: Arc<Mutex<Vec<Output<String>>>> = Arc::default();
    let engine = Engine::new(a.pair(&b));
    let mut watch_b = engine.watch(&b);
    engine.step();
    assert_eq!(engine.output_of(&a), Some(running()));
    control.wait_running("build a").await;
    // b: every state it showed, step by step.
    let record = |rx: &mut tokio::sync::watch::Receiver<Output<String>>| {
        seen.lock().unwrap().push(rx.borrow_and_update().clone())
    };
    record(&mut watch_b);
    control.complete(&ctx.jobs, "build a", Ok("A")).await;
    control.wait_running("build b").await;
    while engine.output_of(&b) != Some(running()) {
        next(&engine).await;
    }
    record(&mut watch_b);
    control.complete(&ctx.jobs, "build b", Ok("B")).await;
    next(&engine).await;
    record(&mut watch_b);
    assert_eq!(*seen.lock().unwrap(), [Output::Active(ActiveState::Ready), running(), ok("B".to_string())]);
}

/// Fails while the test says so; retried by itself after a minute.
struct Flaky {
    control: Control,
}

#[async_trait]
impl Builder for Flaky {
    const ID: &'static str = "flaky";
    type Key = String;
    type Value = String;
    fn describe(&self, key: &String) -> Option<String> {
        Some(format!("fetch {key}"))
    }
    fn retry_failures_after(&self) -> Option<Duration> {
        Some(Duration::from_secs(60))
    }
    async fn build(&self, job: &Job, key: &String) -> Result<String, Error> {
        self.control.run(job, format!("fetch {key}")).await
    }
}

#[tokio::test]
async fn a_builder_may_retry_its_failures_after_a_while() {
    let (ctx, clock) = context("retry-failures");
    let control = Control::default();
    let cache = BuildCache::new(&ctx, Flaky { control: control.clone() });
    let engine = Engine::new(cache.get("fetch", "repo".to_string()));
    engine.step();
    control.complete(&ctx.jobs, "fetch repo", Err("remote unreachable")).await;
    next(&engine).await;
    assert_eq!(engine.output().err().unwrap().message(), "remote unreachable");
    assert!(ctx.jobs.active().is_empty(), "nothing runs before the retry time");
    clock.advance(Duration::from_secs(60));
    next(&engine).await;
    // The failure stays shown while the retry runs.
    assert_eq!(engine.output().err().unwrap().message(), "remote unreachable");
    assert_eq!(update(&engine), Some(ActiveState::Running));
    control.complete(&ctx.jobs, "fetch repo", Ok("fetched")).await;
    next(&engine).await;
    assert_eq!(engine.output(), ok("fetched".to_string()));
}

#[tokio::test]
async fn a_scheduled_publish_runs_again_on_its_schedule_after_a_success_or_a_failure() {
    let (ctx, clock) = context("output-scheduled");
    let control = Control::default();
    let cache = OutputCache::new(&ctx, publisher(&control, false, false));
    let monthly = Schedule::every(Duration::from_secs(30 * 24 * 3600));
    let engine = Engine::new(cache.set_scheduled("backup", "tarsnap".to_string(), "backup.sh".to_string(), monthly));
    engine.step();
    control.complete(&ctx.jobs, "push backup.sh as tarsnap", Ok("backed up")).await;
    next(&engine).await;
    assert_eq!(engine.output(), ok("backed up".to_string()));
    clock.advance(Duration::from_secs(29 * 24 * 3600));
    engine.step();
    assert!(ctx.jobs.active().is_empty(), "nothing runs before the month is over");
    clock.advance(Duration::from_secs(24 * 3600));
    next(&engine).await;
    control.complete(&ctx.jobs, "push backup.sh as tarsnap", Err("host unreachable")).await;
    next(&engine).await;
    assert_eq!(engine.output().err().unwrap().message(), "host unreachable");
    // The failure is tried again on the schedule, not before.
    clock.advance(Duration::from_secs(29 * 24 * 3600));
    engine.step();
    assert!(ctx.jobs.active().is_empty(), "a failure waits for its schedule");
    clock.advance(Duration::from_secs(24 * 3600));
    next(&engine).await;
    control.complete(&ctx.jobs, "push backup.sh as tarsnap", Ok("backed up again")).await;
    next(&engine).await;
    assert_eq!(engine.output(), ok("backed up again".to_string()));
    assert_eq!(control.runs("push backup.sh as tarsnap"), 3);
}

/// Issue 23: retry is an option of the schedule. A monthly publish whose
/// run failed is tried again after the hour its schedule says, not a month
/// later; a success still waits for the month.
#[tokio::test]
async fn a_schedule_may_retry_a_failure_sooner_than_it_expires() {
    let (ctx, clock) = context("output-scheduled-retry");
    let control = Control::default();
    let cache = OutputCache::new(&ctx, publisher(&control, false, false));
    let monthly = Schedule::every(Duration::from_secs(30 * 24 * 3600)).retry_failures_after(Duration::from_secs(3600));
    let engine = Engine::new(cache.set_scheduled("backup", "tarsnap".to_string(), "backup.sh".to_string(), monthly));
    engine.step();
    control.complete(&ctx.jobs, "push backup.sh as tarsnap", Err("host unreachable")).await;
    next(&engine).await;
    assert_eq!(engine.output().err().unwrap().message(), "host unreachable");
    clock.advance(Duration::from_secs(3599));
    engine.step();
    assert!(ctx.jobs.active().is_empty(), "nothing runs before the hour is over");
    clock.advance(Duration::from_secs(1));
    next(&engine).await;
    control.complete(&ctx.jobs, "push backup.sh as tarsnap", Ok("backed up")).await;
    next(&engine).await;
    assert_eq!(engine.output(), ok("backed up".to_string()));
    // A success is not retried: the next run is a month later.
    clock.advance(Duration::from_secs(2 * 3600));
    engine.step();
    assert!(ctx.jobs.active().is_empty(), "a success waits for its month");
    assert_eq!(control.runs("push backup.sh as tarsnap"), 2);
}

/// Fails with [`ErrorKind::Unavailable`] while `down` is set; otherwise
/// publishes at once.
struct Remote {
    down: Arc<std::sync::atomic::AtomicBool>,
    runs: Arc<std::sync::atomic::AtomicUsize>,
}

#[async_trait]
impl Publisher for Remote {
    const ID: &'static str = "remote";
    type Key = String;
    type Value = String;
    type Outcome = String;
    fn level(&self) -> Level {
        Level::Harmless
    }
    async fn publish(&self, _job: &Job, key: &String, value: &String) -> Result<String, Error> {
        use std::sync::atomic::Ordering::SeqCst;
        self.runs.fetch_add(1, SeqCst);
        if self.down.load(SeqCst) {
            return Err(Error::new(deployer_core::ErrorKind::Unavailable, "the registry did not answer"));
        }
        Ok(format!("{key} = {value}"))
    }
}

/// Issue 20 (faults): a failure because something outside did not answer is
/// retried by itself after `RETRY_UNAVAILABLE`, with no rule set by the
/// publisher or the use, and keeps that kind across a restart; once the
/// service answers, the value is published. (Other failures stay sticky:
/// `output_retry_after_a_failure_only_when_asked`.)
#[tokio::test]
async fn a_failure_because_a_service_did_not_answer_is_retried_by_itself_after_a_restart_too() {
    use deployer_core::cache::RETRY_UNAVAILABLE;
    use std::sync::atomic::Ordering::SeqCst;
    let (ctx, clock) = context("unavailable");
    let dir = ctx.state_dir().to_owned();
    let down = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let remote = || Remote { down: down.clone(), runs: runs.clone() };
    {
        let cache = OutputCache::new(&ctx, remote());
        let engine = Engine::new(cache.set("push", "tag".to_string(), "v1".to_string()));
        engine.step();
        next(&engine).await;
        let err = engine.output().err().cloned().expect("the push failed");
        assert_eq!(err.kind(), deployer_core::ErrorKind::Unavailable);
        assert_eq!(runs.load(SeqCst), 1);
        clock.advance(RETRY_UNAVAILABLE - Duration::from_secs(1));
        engine.step();
        assert!(ctx.jobs.active().is_empty(), "nothing runs before the retry time");
        assert_eq!(runs.load(SeqCst), 1);
        clock.advance(Duration::from_secs(1));
        next(&engine).await;
        while runs.load(SeqCst) < 2 || !ctx.jobs.active().is_empty() {
            next(&engine).await;
        }
        assert!(engine.output().err().is_some(), "still down: {:?}", engine.output());
    }
    // A restart reloads the failure with its kind: it is retried too.
    let ctx = Context::open_with_clock(&dir, Config::default(), clock.clock()).unwrap();
    let cache = OutputCache::new(&ctx, remote());
    let engine = Engine::new(cache.set("push", "tag".to_string(), "v1".to_string()));
    engine.step();
    assert_eq!(engine.output().err().map(Error::kind), Some(deployer_core::ErrorKind::Unavailable));
    assert_eq!(runs.load(SeqCst), 2, "the reloaded failure is not run again at once");
    down.store(false, SeqCst);
    clock.advance(RETRY_UNAVAILABLE);
    next(&engine).await;
    while engine.output() != ok("tag = v1".to_string()) {
        next(&engine).await;
    }
    assert_eq!(runs.load(SeqCst), 3);
}
