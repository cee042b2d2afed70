//! The engine's behaviour: async primitives, monitors, coalescing, releases.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deployer_core::monitor::{BoxFuture, Refresh};
use deployer_core::{ActiveState, Current, Engine, Error, Monitor, Output, Var};

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

#[tokio::test]
async fn an_async_primitive_runs_and_reports() {
    let input = Var::new("n", Output::Ok(20u64));
    let doubled = input.current().run("double", |n| async move { Ok(n * 2 + 2) });
    let engine = Engine::new(doubled);
    engine.step();
    // Started after the step; its switch to running is an event for the next one.
    assert_eq!(engine.output(), Output::Active(ActiveState::Ready));
    assert_eq!(settle(&engine, |o| o.is_ok()).await, Output::Ok(42));
    input.set(1);
    assert_eq!(settle(&engine, |o| *o == Output::Ok(4)).await, Output::Ok(4));
}

#[tokio::test]
async fn a_panicking_job_is_an_error_on_its_node() {
    let input = Current::constant(1u8);
    let job = input.run("explode", |_| async move {
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

struct Flag(Arc<AtomicUsize>);
impl Drop for Flag {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_new_input_aborts_the_running_job() {
    let dropped = Arc::new(AtomicUsize::new(0));
    let input = Var::new("n", Output::Ok(1u64));
    let d = dropped.clone();
    let job = input.current().run("slow", move |n| {
        let flag = Flag(d.clone());
        async move {
            let _flag = flag;
            if n == 1 {
                std::future::pending::<()>().await;
            }
            Ok(n)
        }
    });
    let engine = Engine::new(job);
    engine.step();
    tokio::task::yield_now().await;
    assert_eq!(dropped.load(Ordering::SeqCst), 0);
    input.set(2);
    assert_eq!(settle(&engine, |o| o.is_ok()).await, Output::Ok(2));
    assert_eq!(dropped.load(Ordering::SeqCst), 2, "the first run was aborted, the second finished");
}

#[test]
fn many_updates_between_steps_coalesce() {
    let input = Var::new("n", Output::Ok(0u64));
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
    let input = Var::new("n", Output::Ok(2u64));
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
    refresh: Arc<std::sync::Mutex<Option<Refresh>>>,
) -> Monitor<usize> {
    Monitor::new(
        "branch head",
        move || -> BoxFuture<Result<usize, Error>> {
            let v = value.load(Ordering::SeqCst);
            Box::pin(async move { Ok(v) })
        },
        move |r| -> BoxFuture<Result<Box<dyn Send>, Error>> {
            watches.fetch_add(1, Ordering::SeqCst);
            *refresh.lock().unwrap() = Some(r);
            Box::pin(async move { Ok(Box::new(()) as Box<dyn Send>) })
        },
    )
}

#[tokio::test]
async fn monitors_watch_while_used_and_refresh() {
    let value = Arc::new(AtomicUsize::new(7));
    let watches = Arc::new(AtomicUsize::new(0));
    let refresh = Arc::new(std::sync::Mutex::new(None));
    let monitor = counting_monitor(value.clone(), watches.clone(), refresh.clone());
    let wanted = Var::new("wanted", Output::Ok(true));
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
    // No longer used: unwatched at the end of the step.
    wanted.set(false);
    engine.step();
    assert_eq!(monitor.users(), 0);
    assert!(!monitor.is_watching());
    assert_eq!(watches.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_monitor_released_and_reacquired_in_one_step_keeps_watching() {
    let watches = Arc::new(AtomicUsize::new(0));
    let monitor = counting_monitor(Arc::new(AtomicUsize::new(1)), watches.clone(), Arc::default());
    let generation = Var::new("generation", Output::Ok(0u32));
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
    assert!(!monitor.is_watching());
}

#[tokio::test]
async fn run_is_event_driven() {
    let input = Var::new("n", Output::Ok(1u64));
    let engine = Arc::new(Engine::new(input.current().map(|n| n * 10)));
    let e = engine.clone();
    let task = tokio::spawn(async move { e.run().await });
    tokio::time::timeout(Duration::from_secs(5), async {
        while engine.output() != Output::Ok(10) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    let (steps_before, _, _) = engine.handle().timings();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (steps_idle, _, _) = engine.handle().timings();
    assert_eq!(steps_before, steps_idle, "no step without an event (no polling)");
    input.set(5);
    tokio::time::timeout(Duration::from_secs(5), async {
        while engine.output() != Output::Ok(50) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    task.abort();
}

#[test]
fn deep_pipelines_do_not_overflow_the_stack() {
    let input = Var::new("n", Output::Ok(0u64));
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
    let input = Var::new("n", Output::Ok(3u64));
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
    let input = Var::new("head", Output::Ok("abc".to_string()));
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
