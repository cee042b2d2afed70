//! The engine's behaviour: closure stages, monitors (OCurrent's monitor
//! lifecycle), coalescing, releases, observing stages, panics, diagrams.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deployer_core::monitor::{Refresh, Unwatch};
use deployer_core::{
    ActiveState, BoxFuture, Config, Context, Current, Engine, Error, Join, Level, Monitor, NodeState, Output, Source,
    Var,
};
use support::{check_diagram, state_dir};
use tokio::sync::Notify;

async fn settle<T: deployer_core::Value>(engine: &Engine<T>, until: impl Fn(&Output<T>) -> bool) -> Output<T> {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let out = engine.output();
            if until(&out) {
                return out;
            }
            engine.next().await;
        }
    })
    .await
    .expect("engine settled within 10 s")
}

fn context(name: &str) -> Context {
    Context::open(&state_dir(name), Config::default()).unwrap()
}

#[tokio::test]
async fn a_closure_stage_is_a_job_and_starts_in_the_step_that_asks_for_it() {
    let ctx = context("run");
    let input = Var::new("n", 20u64);
    let doubled = input.current().run(&ctx, "double", Level::Average, |job, n| async move {
        job.log(&format!("doubling {n}"));
        Ok(n * 2 + 2)
    });
    let engine = Engine::new(doubled);
    engine.step();
    // Running from the first step, with a job (no "ready" step first).
    assert_eq!(engine.output(), Output::Active(ActiveState::Running));
    let job_id = engine.diagram(&Default::default()).boxes[1].job_id.clone().expect("the box links to its job");
    assert_eq!(settle(&engine, |o| o.is_ok()).await, Output::Ok(42));
    input.set(1);
    assert_eq!(settle(&engine, |o| *o == Output::Ok(4)).await, Output::Ok(4));
    // Each run left a history row and a log.
    let history = ctx.store.history(Default::default()).await.unwrap();
    assert_eq!(history.rows.len(), 2);
    let mut described: Vec<&str> = history.rows.iter().map(|r| r.description.as_str()).collect();
    described.sort();
    assert_eq!(described, ["double 1", "double 20"], "each row says what the job did");
    assert!(history.rows.iter().all(|r| r.op == "double"));
    let (log, _) = ctx.jobs.read_log(&job_id, 0, 1 << 20).unwrap();
    assert!(String::from_utf8(log).unwrap().contains("doubling 20"));
}

#[tokio::test]
async fn a_closure_stage_waits_for_confirmation_at_its_level() {
    let ctx = Context::open(&state_dir("run-confirm"), Config::new(Some(Level::Dangerous))).unwrap();
    let deploy = Current::constant(1u8).run(&ctx, "service update", Level::Dangerous, |_, n| async move { Ok(n) });
    let engine = Engine::new(deploy);
    engine.step();
    assert_eq!(engine.output(), Output::Active(ActiveState::WaitingForConfirmation));
    ctx.config().set_confirm(None);
    assert_eq!(settle(&engine, |o| o.is_ok()).await, Output::Ok(1));
}

#[tokio::test]
async fn a_panicking_job_is_an_error_on_its_node() {
    let ctx = context("run-panic");
    let job = Current::constant(1u8).run(&ctx, "explode", Level::Harmless, |_, _| async move {
        if true {
            panic!("job blew up");
        }
        Ok::<u8, Error>(0)
    });
    let engine = Engine::new(job.clone());
    engine.step();
    let out = settle(&engine, |o| o.err().is_some()).await;
    let err = out.err().unwrap();
    assert_eq!(err.message(), "panic: job blew up");
    assert_eq!(err.origin(), Some(job.id()));
}

#[tokio::test]
async fn a_new_input_asks_the_running_job_to_stop_and_its_answer_is_recorded() {
    let ctx = context("run-cancel");
    let cleaned = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(Notify::new());
    let input = Var::new("n", 1u64);
    let (c, s) = (cleaned.clone(), started.clone());
    let job = input.current().run(&ctx, "slow", Level::Harmless, move |job, n| {
        let (cleaned, started) = (c.clone(), s.clone());
        async move {
            if n == 1 {
                started.notify_one();
                // Cancellation is a request: this job cleans up, then ends.
                job.cancelled().await;
                cleaned.fetch_add(1, Ordering::SeqCst);
                return Err(Error::msg("stopped after cleaning up"));
            }
            Ok(n)
        }
    });
    let engine = Engine::new(job);
    engine.step();
    within("the first run started", started.notified()).await;
    input.set(2);
    assert_eq!(settle(&engine, |o| o.is_ok()).await, Output::Ok(2));
    assert_eq!(cleaned.load(Ordering::SeqCst), 1, "the first run saw the request and cleaned up");
    let history = ctx.store.history(Default::default()).await.unwrap();
    let first = history.rows.iter().find(|r| !r.ok).expect("the first run is recorded");
    assert_eq!(first.outcome, "Cancelled");
    assert!(first.rebuild, "an auto-cancelled run is not a sticky failure");
    let (log, _) = ctx.jobs.read_log(&first.job_id, 0, 1 << 20).unwrap();
    let log = String::from_utf8(log).unwrap();
    assert!(log.contains("Cancelling: Auto-cancelling job because it is no longer needed"), "{log}");
    assert!(log.contains("stopped after cleaning up"), "its own error is in the log: {log}");
}

#[test]
fn many_updates_between_steps_coalesce() {
    let input = Var::new("n", 0u64);
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let engine = Engine::new(input.current().map(move |n| {
        c.fetch_add(1, Ordering::SeqCst);
        n + 1
    }));
    engine.step();
    for i in 1..=100 {
        input.set(i);
    }
    let report = engine.step();
    assert_eq!(engine.output(), Output::Ok(101));
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one evaluation at start, one for the 100 updates");
    assert_eq!(report.recomputed, 2, "the var and the map");
    // Setting the value it already has does nothing.
    input.set(100);
    assert_eq!(engine.step().recomputed, 0);
}

#[test]
fn an_unchanged_map_result_stops_propagation() {
    let input = Var::new("n", 2u64);
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let parity = input.current().map(|n| n % 2);
    let engine = Engine::new(parity.map(move |p| {
        c.fetch_add(1, Ordering::SeqCst);
        *p
    }));
    engine.step();
    input.set(4);
    engine.step();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    input.set(5);
    engine.step();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

fn counting_monitor(
    value: Arc<AtomicUsize>,
    watches: Arc<AtomicUsize>,
    refresh: Arc<Mutex<Option<Refresh>>>,
) -> Monitor<usize> {
    Monitor::new(
        "branch head",
        move || -> BoxFuture<Result<usize, Error>> {
            let v = value.load(Ordering::SeqCst);
            Box::pin(async move { Ok(v) })
        },
        move |r| -> BoxFuture<Result<Unwatch, Error>> {
            watches.fetch_add(1, Ordering::SeqCst);
            *refresh.lock().unwrap() = Some(r);
            Box::pin(async move { Ok(Unwatch::nothing()) })
        },
    )
}

#[tokio::test]
async fn monitors_watch_while_used_and_refresh() {
    let value = Arc::new(AtomicUsize::new(7));
    let watches = Arc::new(AtomicUsize::new(0));
    let refresh = Arc::new(Mutex::new(None));
    let monitor = counting_monitor(value.clone(), watches.clone(), refresh.clone());
    let wanted = Var::new("wanted", true);
    let m = monitor.clone();
    let pipeline = wanted.current().and_then(move |w| if *w { m.current() } else { Current::constant(0) });
    let engine = Engine::new(pipeline);
    engine.step();
    assert_eq!(monitor.users(), 1);
    assert!(monitor.is_watching());
    assert_eq!(settle(&engine, |o| o.is_ok()).await, Output::Ok(7));
    // The resource changes and the watch says so.
    value.store(8, Ordering::SeqCst);
    refresh.lock().unwrap().as_ref().unwrap().refresh();
    assert_eq!(settle(&engine, |o| *o == Output::Ok(8)).await, Output::Ok(8));
    // No longer used: unwatched.
    wanted.set(false);
    engine.step();
    assert_eq!(monitor.users(), 0);
    tokio::time::timeout(Duration::from_secs(5), async {
        while monitor.is_watching() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("unwatched");
    assert_eq!(watches.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_monitor_released_and_reacquired_in_one_step_keeps_watching() {
    let watches = Arc::new(AtomicUsize::new(0));
    let monitor = counting_monitor(Arc::new(AtomicUsize::new(1)), watches.clone(), Arc::default());
    let generation = Var::new("generation", 0u32);
    let m = monitor.clone();
    // Each generation builds a new stage on the same monitor.
    let pipeline = generation.current().and_then(move |g| {
        let g = *g;
        m.current().map(move |v| v + g as usize)
    });
    let engine = Engine::new(pipeline);
    engine.step();
    settle(&engine, |o| o.is_ok()).await;
    for g in 1..5 {
        generation.set(g);
        engine.step();
        assert_eq!(monitor.users(), 1);
        assert!(monitor.is_watching());
    }
    assert_eq!(watches.load(Ordering::SeqCst), 1, "never unwatched in between");
    drop(engine);
    assert_eq!(monitor.users(), 0, "dropping the engine releases the pipeline");
}

/// The resource of OCurrent's monitor test: reads block until the test
/// provides data; installing and removing the watch each wait for the test.
#[derive(Clone, Default)]
struct Resource {
    data: Arc<Mutex<Vec<Result<String, String>>>>,
    data_ready: Arc<Notify>,
    installed: Arc<Notify>,
    allow_install: Arc<Notify>,
    allow_unwatch: Arc<Notify>,
    unwatching: Arc<Notify>,
    watches: Arc<AtomicUsize>,
    unwatched: Arc<AtomicUsize>,
    reads: Arc<AtomicUsize>,
}

impl Resource {
    fn provide(&self, v: &str) {
        self.data.lock().unwrap().push(Ok(v.to_owned()));
        self.data_ready.notify_one();
    }

    fn monitor(&self) -> Monitor<String> {
        let (r, w) = (self.clone(), self.clone());
        Monitor::new(
            "input",
            move || -> BoxFuture<Result<String, Error>> {
                let r = r.clone();
                Box::pin(async move {
                    r.reads.fetch_add(1, Ordering::SeqCst);
                    loop {
                        if let Some(v) = r.data.lock().unwrap().pop() {
                            return v.map_err(Error::msg);
                        }
                        r.data_ready.notified().await;
                    }
                })
            },
            move |_refresh| -> BoxFuture<Result<Unwatch, Error>> {
                let w = w.clone();
                Box::pin(async move {
                    w.watches.fetch_add(1, Ordering::SeqCst);
                    w.installed.notify_one();
                    w.allow_install.notified().await;
                    let u = w.clone();
                    Ok(Unwatch::with(move || {
                        Box::pin(async move {
                            u.unwatching.notify_one();
                            u.allow_unwatch.notified().await;
                            u.unwatched.fetch_add(1, Ordering::SeqCst);
                        })
                    }))
                })
            },
        )
    }
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f).await.unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// OCurrent's test_monitor.ml: watch before read; the old value is served
/// while unwatching; a user arriving meanwhile does not start a second
/// watch; after the unwatch the monitor watches again.
#[tokio::test]
async fn monitor_lifecycle() {
    let res = Resource::default();
    let monitor = res.monitor();
    let wanted = Var::new("wanted", true);
    let m = monitor.clone();
    let engine = Engine::new(wanted.current().and_then(move |w| {
        if *w {
            m.current().state()
        } else {
            Current::constant(Output::Ok(String::new()))
        }
    }));
    res.provide("init");
    engine.step();
    // Data is there, but the watch is being installed: nothing read yet.
    within("watch started", res.installed.notified()).await;
    assert_eq!(engine.output(), Output::Ok(Output::Active(ActiveState::Running)));
    assert_eq!(res.reads.load(Ordering::SeqCst), 0);
    res.allow_install.notify_one();
    let read = |v: &str| Output::Ok(Output::Ok(v.to_owned()));
    assert_eq!(settle(&engine, |o| *o == read("init")).await, read("init"));
    // Not wanted: the watch is being removed, the old value still served.
    wanted.set(false);
    engine.step();
    assert_eq!(monitor.users(), 0);
    within("unwatch started", res.unwatching.notified()).await;
    assert!(monitor.is_watching(), "unwatching waits for the test");
    assert_eq!(engine.output(), Output::Ok(Output::Ok(String::new())));
    // Wanted again before the unwatch finished: no second watch, old value.
    wanted.set(true);
    engine.step();
    assert_eq!(engine.output(), read("init"));
    assert_eq!(res.watches.load(Ordering::SeqCst), 1);
    // The unwatch finishes; the monitor watches again and re-reads.
    res.allow_unwatch.notify_one();
    within("watch restarted", res.installed.notified()).await;
    assert_eq!(res.unwatched.load(Ordering::SeqCst), 1);
    assert_eq!(res.watches.load(Ordering::SeqCst), 2);
    res.provide("restart");
    res.allow_install.notify_one();
    assert_eq!(settle(&engine, |o| *o == read("restart")).await, read("restart"));
    // Not wanted, unwatched fully: the value goes back to pending.
    wanted.set(false);
    engine.step();
    within("unwatch started", res.unwatching.notified()).await;
    res.allow_unwatch.notify_one();
    within("unwatched", async {
        while monitor.is_watching() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    wanted.set(true);
    engine.step();
    assert_eq!(engine.output(), Output::Ok(Output::Active(ActiveState::Running)));
    within("watch again", res.installed.notified()).await;
    res.provide("baz");
    res.allow_install.notify_one();
    assert_eq!(settle(&engine, |o| *o == read("baz")).await, read("baz"));
}

#[tokio::test(start_paused = true)]
async fn a_polling_monitor_with_unchanged_reads_does_not_wake_the_engine() {
    let value = Arc::new(AtomicUsize::new(1));
    let reads = Arc::new(AtomicUsize::new(0));
    let (v, r) = (value.clone(), reads.clone());
    let head = Monitor::poll("head", Duration::from_millis(200), move || {
        let (v, r) = (v.clone(), r.clone());
        async move {
            r.fetch_add(1, Ordering::SeqCst);
            Ok(v.load(Ordering::SeqCst))
        }
    });
    let engine = Engine::new(head.current());
    engine.step();
    assert_eq!(settle(&engine, |o| o.is_ok()).await, Output::Ok(1));
    let steps = engine.handle().timings().steps;
    // Ten polls later (virtual time): ten more reads, no step.
    tokio::time::sleep(Duration::from_millis(2_050)).await;
    assert!(reads.load(Ordering::SeqCst) >= 11, "{} reads", reads.load(Ordering::SeqCst));
    let mut next = std::pin::pin!(engine.next());
    assert!(futures_util::FutureExt::now_or_never(next.as_mut()).is_none(), "an unchanged read woke the engine");
    assert_eq!(engine.handle().timings().steps, steps);
    // A change is seen at the next poll, or at once on refresh (a webhook).
    value.store(2, Ordering::SeqCst);
    head.refresh();
    next.await;
    assert_eq!(engine.output(), Output::Ok(2));
}

#[tokio::test]
async fn a_polling_monitor_with_no_period_is_an_error_naming_it() {
    let head = Monitor::poll("head", Duration::ZERO, || async { Ok(1u8) });
    let engine = Engine::new(head.current());
    engine.step();
    let out = settle(&engine, |o| o.err().is_some()).await;
    assert_eq!(out.err().unwrap().message(), "watching head: a polling monitor's period must be more than zero");
}

#[tokio::test]
async fn a_stage_can_be_watched_from_code() {
    let head = Var::new("head", 1u32);
    let doubled = head.current().map(|n| n * 2);
    let engine = Engine::new(doubled.map(|n| n + 1));
    let mut seen = engine.watch(&doubled);
    engine.step();
    assert_eq!(*seen.borrow_and_update(), Output::Ok(2));
    head.set(5);
    engine.step();
    assert_eq!(*seen.borrow_and_update(), Output::Ok(10));
    assert_eq!(engine.output_of(&doubled), Some(Output::Ok(10)));
    // An unchanged output is not sent again.
    head.set(5);
    engine.step();
    assert!(!seen.has_changed().unwrap());
}

#[test]
fn joins_three_inputs_and_plain_values_are_constants() {
    let image: Current<&str> = "app:v2".into();
    let host = Var::new("host", "prod-1");
    let replicas = Var::with_output("replicas", Output::<u8>::Active(ActiveState::Running));
    let engine = Engine::new((&image, &host.current(), &replicas.current()).join());
    engine.step();
    assert_eq!(engine.output(), Output::Active(ActiveState::Running));
    replicas.set_output(Output::Err(Error::msg("no such service")));
    engine.step();
    assert_eq!(engine.output().err().map(|e| e.message().to_owned()).as_deref(), Some("no such service"));
    replicas.set(3);
    engine.step();
    assert_eq!(engine.output(), Output::Ok(("app:v2", "prod-1", 3)));
}

#[test]
fn with_context_evaluates_the_context_and_releases_it_with_its_users() {
    let flag = Var::new("flag", true);
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let ctx = Current::constant(()).primitive("commit", move |_, _| {
        r.fetch_add(1, Ordering::SeqCst);
        Source::new(Output::Ok("abc"))
    });
    let c = ctx.clone();
    let pipeline = flag.current().and_then(move |on| {
        if *on {
            deployer_core::with_context(&c, || {
                Current::constant(()).primitive("build", |_, _| Source::new(Output::Ok(())))
            })
        } else {
            Current::constant(())
        }
    });
    let engine = Engine::new(pipeline);
    engine.step();
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the context ran");
    let diagram = engine.diagram(&Default::default());
    let commit = diagram.boxes.iter().find(|b| b.label == "commit").unwrap();
    assert_eq!(commit.state, Some(NodeState::Ok));
    let nodes = engine.handle().node_count();
    flag.set(false);
    engine.step();
    assert!(engine.handle().node_count() < nodes - 1, "the context left with its user");
    assert!(engine.output_of(&ctx).is_none());
}

/// In virtual time, a sleep ends only when every task is idle; an engine
/// that polled would wake at each period and step. An hour passes with no
/// step: it waits for events only.
#[tokio::test(start_paused = true)]
async fn run_is_event_driven() {
    let input = Var::new("n", 1u64);
    let engine = Arc::new(Engine::new(input.current().map(|n| n * 10)));
    let e = engine.clone();
    let task = tokio::spawn(async move { e.run().await });
    tokio::task::yield_now().await;
    assert_eq!(engine.output(), Output::Ok(10));
    let steps_before = engine.handle().timings().steps;
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let steps_idle = engine.handle().timings().steps;
    assert_eq!(steps_before, steps_idle, "no step without an event (no polling)");
    input.set(5);
    tokio::task::yield_now().await;
    assert_eq!(engine.output(), Output::Ok(50), "an event is handled at once");
    task.abort();
}

#[test]
fn deep_pipelines_do_not_overflow_the_stack() {
    let input = Var::new("n", 0u64);
    let mut c = input.current();
    for _ in 0..200_000 {
        c = c.map(|x| x + 1);
    }
    let engine = Engine::new(c);
    engine.step();
    assert_eq!(engine.output(), Output::Ok(200_000));
    input.set(1);
    engine.step();
    assert_eq!(engine.output(), Output::Ok(200_001));
    let diagram = engine.diagram(&Default::default());
    assert_eq!(diagram.boxes.len(), 1);
}

#[test]
fn a_term_can_be_shared_by_two_engines() {
    let input = Var::new("n", 3u64);
    let pipeline = input.current().map(|n| n * 3);
    let a = Engine::new(pipeline.clone());
    let b = Engine::new(pipeline);
    a.step();
    b.step();
    input.set(4);
    a.step();
    b.step();
    assert_eq!(a.output(), Output::Ok(12));
    assert_eq!(b.output(), Output::Ok(12));
}

#[test]
fn dot_and_json_exports() {
    let input = Var::new("head", "abc".to_string());
    let failing = input.current().try_map(|_| Err::<String, _>("no \"quote\" allowed"));
    let engine = Engine::new(failing);
    engine.step();
    let diagram = engine.diagram(&Default::default());
    let dot = diagram.to_dot();
    assert!(dot.starts_with("digraph pipeline {"));
    assert!(dot.contains("rankdir=LR"));
    assert!(dot.contains("fillcolor=\"#90ee90\""), "ok colour: {dot}");
    assert!(dot.contains("fillcolor=\"#ff4500\""), "failed colour: {dot}");
    assert!(dot.contains("tooltip=\"no \\\"quote\\\" allowed\""), "escaped tooltip: {dot}");
    let json: serde_json::Value = serde_json::from_str(&diagram.to_json()).unwrap();
    assert_eq!(json["boxes"][0]["label"], "head");
    assert_eq!(json["boxes"][0]["state"], "ok");
    assert_eq!(json["boxes"][1]["state"], "failed");
    assert_eq!(json["edges"].as_array().unwrap().len(), 1);
}

#[test]
fn a_panic_in_user_code_is_an_error_on_that_node() {
    let input = Var::new("n", 1u32);
    let boom = input.current().map(|n| if *n == 2 { panic!("bad input {n}") } else { *n });
    let shown = boom.map(|n| n + 1);
    let engine = Engine::new(shown);
    engine.step();
    assert_eq!(engine.output(), Output::Ok(2));
    input.set(2);
    engine.step();
    let err = engine.output().err().cloned().expect("an error");
    assert_eq!(err.message(), "panic: bad input 2");
    assert_eq!(err.origin(), Some(boom.id()));
    // The failed map is drawn, as in OCurrent.
    check_diagram(
        &engine,
        "
        n: ok
        map: failed
        n -> map",
    );
    // And the engine carries on.
    input.set(3);
    engine.step();
    assert_eq!(engine.output(), Output::Ok(4));
    let bind_panic = input.current().and_then(|_| -> Current<u32> { panic!("in bind") });
    let engine = Engine::new(bind_panic);
    engine.step();
    assert_eq!(engine.output().err().map(|e| e.message().to_owned()), Some("panic: in bind".into()));
}

#[test]
fn duplicate_keys_in_list_map_are_an_error_on_that_node() {
    let items = Var::new("items", vec!["a".to_string(), "b".to_string(), "a".to_string()]);
    let mapped = items.current().list_map(|x| x.map(|s| s.to_uppercase()));
    let engine = Engine::new(mapped);
    engine.step();
    let err = engine.output().err().cloned().expect("an error");
    assert_eq!(err.message(), "duplicate key \"a\" in list_map input");
    items.set(vec!["a".to_string(), "b".to_string()]);
    engine.step();
    assert_eq!(engine.output(), Output::Ok(vec!["A".to_string(), "B".to_string()]));
}

#[test]
fn collapse_hides_a_group_until_expanded() {
    let head = Var::new("head", "123".to_string());
    let stage = |x: &Current<String>, label: &str| x.primitive(label, |v, _| Source::new(Output::Ok(v.clone())));
    let src = stage(&head.current(), "fetch");
    let tested = stage(&stage(&src, "build"), "test");
    let pipeline = tested.collapse("repo", "app", &src);
    let engine = Engine::new(pipeline);
    engine.step();
    check_diagram(
        &engine,
        "
        head: ok
        fetch: ok
        (+): ok
        head -> fetch
        fetch -> (+)",
    );
    let open = engine.diagram(&deployer_core::Expanded::from_pairs([("repo", "app")]));
    support::check_text(
        &open.summary(),
        "
        head: ok
        fetch: ok
        build: ok
        test: ok
        head -> fetch
        fetch -> build
        build -> test",
        "expanded",
    );
    let dot = engine.diagram(&Default::default()).to_dot();
    assert!(dot.contains("URL=\"?repo=app\""), "{dot}");
}

#[test]
fn errors_record_their_origin() {
    let failing: Current<u8> = Current::fail("broken");
    let downstream = failing.map(|x| x + 1);
    let engine = Engine::new(downstream.clone());
    engine.step();
    let e: Error = engine.output().err().cloned().unwrap();
    assert_eq!(e.origin(), Some(failing.id()));
    assert_eq!(Output::<u8>::Err(e.clone()).state(failing.id()), NodeState::Failed);
    assert_eq!(Output::<u8>::Err(e).state(downstream.id()), NodeState::Blocked);
}

/// Issue 23, a documented choice (ARCHITECTURE.md, "Where the core differs
/// from OCurrent"): OCurrent marks a monitor's box "updating" the moment a
/// re-read starts; here the mark appears only once a read has lasted 1 s,
/// so the frequent quick reads (webhook-driven, polls) neither flicker the
/// diagram nor cost the engine a step each. A quick read shows no mark; a
/// slow one shows it after 1 s and until it ends.
#[tokio::test(start_paused = true)]
async fn a_monitor_marks_its_box_updating_only_for_a_read_slower_than_a_second() {
    let delay = Arc::new(Mutex::new(Duration::ZERO));
    let reads = Arc::new(AtomicUsize::new(0));
    let refresh: Arc<Mutex<Option<deployer_core::monitor::Refresh>>> = Arc::new(Mutex::new(None));
    let (d, n, r) = (delay.clone(), reads.clone(), refresh.clone());
    let monitor = Monitor::new(
        "head",
        move || -> BoxFuture<Result<usize, Error>> {
            let (wait, read) = (*d.lock().unwrap(), n.fetch_add(1, Ordering::SeqCst) + 1);
            Box::pin(async move {
                tokio::time::sleep(wait).await;
                Ok(read)
            })
        },
        move |refresh| -> BoxFuture<Result<Unwatch, Error>> {
            *r.lock().unwrap() = Some(refresh);
            Box::pin(async move { Ok(Unwatch::nothing()) })
        },
    );
    let engine = Engine::new(monitor.current());
    let update = |e: &Engine<usize>| e.diagram(&Default::default()).boxes[0].update;
    engine.step();
    tokio::time::timeout(Duration::from_secs(5), engine.next()).await.unwrap();
    assert_eq!(engine.output(), Output::Ok(1));
    // A quick re-read (0.5 s): no mark at any point, one new value.
    *delay.lock().unwrap() = Duration::from_millis(500);
    refresh.lock().unwrap().as_ref().unwrap().refresh();
    tokio::time::sleep(Duration::from_millis(400)).await;
    engine.step();
    assert_eq!((engine.output(), update(&engine)), (Output::Ok(1), None));
    tokio::time::timeout(Duration::from_secs(5), engine.next()).await.unwrap();
    assert_eq!((engine.output(), update(&engine)), (Output::Ok(2), None));
    // A slow re-read (3 s): no mark before 1 s, the mark from then on (the
    // old value still shown), then the new value without it.
    *delay.lock().unwrap() = Duration::from_secs(3);
    refresh.lock().unwrap().as_ref().unwrap().refresh();
    tokio::time::sleep(Duration::from_millis(900)).await;
    engine.step();
    assert_eq!(update(&engine), None);
    tokio::time::sleep(Duration::from_millis(200)).await;
    engine.step();
    assert_eq!((engine.output(), update(&engine)), (Output::Ok(2), Some(deployer_core::ActiveState::Running)));
    tokio::time::timeout(Duration::from_secs(5), engine.next()).await.unwrap();
    while engine.output() != Output::Ok(3) {
        tokio::time::timeout(Duration::from_secs(5), engine.next()).await.unwrap();
    }
    assert_eq!(update(&engine), None);
    assert_eq!(reads.load(Ordering::SeqCst), 3);
}
