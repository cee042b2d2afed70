//! Jobs: pools (capacity, priority, cancel while queued), processes killed
//! on cancel, timeouts, live log streaming, and confirmation.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deployer_core::job::JobStatus;
use deployer_core::{Config, Jobs, Level, Pool, Priority};
use tokio::process::Command;

fn jobs(name: &str, config: Config) -> Jobs {
    let base = std::env::var_os("DEPLOYER_TEST_WORK").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("jobs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    Jobs::new(&dir, config)
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_pool_runs_at_most_capacity_jobs_and_serves_high_priority_first() {
    let pool = Pool::new("docker", 2);
    let a = pool.acquire(Priority::High).await;
    let b = pool.acquire(Priority::Low).await;
    assert_eq!(pool.in_use(), 2);
    assert!(pool.would_wait());
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for (name, prio) in [("low-1", Priority::Low), ("high-1", Priority::High), ("low-2", Priority::Low)] {
        let (p, order) = (pool.clone(), order.clone());
        waiters.push(tokio::spawn(async move {
            let guard = p.acquire(prio).await;
            order.lock().unwrap().push(name);
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(guard);
        }));
        // Queue them in a known order.
        let want = waiters.len();
        eventually("queued", || {
            let (h, l) = pool.queue_lengths();
            h + l == want
        })
        .await;
    }
    assert_eq!(pool.queue_lengths(), (1, 2));
    drop(a);
    eventually("one served", || order.lock().unwrap().len() == 1).await;
    assert_eq!(pool.in_use(), 2, "a freed slot goes straight to a waiter");
    drop(b);
    for w in waiters {
        w.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), ["high-1", "low-1", "low-2"]);
    assert_eq!(pool.in_use(), 0);
    let (waited, served) = pool.wait_time();
    assert_eq!(served, 5);
    assert!(waited > Duration::ZERO);
}

#[tokio::test]
async fn cancelling_a_queued_job_gives_up_its_place() {
    let jobs = jobs("pool-cancel", Config::new(None));
    let pool = Pool::new("one", 1);
    let holder = pool.acquire(Priority::High).await;
    let queued = jobs.create("queued").unwrap();
    let next = jobs.create("next").unwrap();
    let q = queued.clone();
    let p = pool.clone();
    let first =
        tokio::spawn(async move { q.start(Level::Harmless, Some((&p, Priority::High)), None).await.map(|_| ()) });
    eventually("first queued", || queued.status() == JobStatus::Queued).await;
    let (n, p) = (next.clone(), pool.clone());
    let second = tokio::spawn(async move { n.start(Level::Harmless, Some((&p, Priority::Low)), None).await.is_ok() });
    eventually("second queued", || pool.queue_lengths() == (1, 1)).await;
    queued.cancel("no longer needed");
    let err = first.await.unwrap().unwrap_err();
    assert_eq!(err.message(), "Cancelled: no longer needed");
    drop(holder);
    assert!(second.await.unwrap(), "the next job gets the slot the cancelled one left");
    assert_eq!(next.status(), JobStatus::Running);
    let (log, _) = jobs.read_log(queued.id(), 0, 1 << 20).unwrap();
    let log = String::from_utf8(log).unwrap();
    assert!(log.contains("Waiting for resource in pool one"), "{log}");
    assert!(log.contains("Cancelling: no longer needed"), "{log}");
}

/// Whether a process with exactly this command line is running.
fn process_running(cmdline: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " ").trim_end() == cmdline)
            .unwrap_or(false)
    })
}

#[tokio::test]
async fn cancelling_a_job_kills_its_process() {
    let jobs = jobs("kill", Config::new(None));
    let job = jobs.create("sleeper").unwrap();
    job.start(Level::Harmless, None, None).await.unwrap();
    // A distinctive duration, to find this very process in /proc.
    let secs = format!("120.{}", std::process::id());
    let j = job.clone();
    let s = secs.clone();
    let run = tokio::spawn(async move { j.exec(Command::new("sleep").arg(&s)).await });
    let cmdline = format!("sleep {secs}");
    eventually("sleep started", || process_running(&cmdline)).await;
    let t = Instant::now();
    job.cancel("operator pressed Cancel");
    let err = run.await.unwrap().unwrap_err();
    assert_eq!(err.message(), "Cancelled: operator pressed Cancel");
    assert!(t.elapsed() < Duration::from_secs(5));
    eventually("sleep killed", || !process_running(&cmdline)).await;
}

#[tokio::test]
async fn a_job_past_its_timeout_is_cancelled() {
    let jobs = jobs("timeout", Config::new(None));
    let job = jobs.create("slow").unwrap();
    job.start(Level::Harmless, None, Some(Duration::from_millis(300))).await.unwrap();
    let t = Instant::now();
    let err = job.exec(Command::new("sleep").arg("60")).await.unwrap_err();
    assert!(err.message().starts_with("Cancelled: Timeout"), "{}", err.message());
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_failing_command_names_itself_and_its_status() {
    let jobs = jobs("status", Config::new(None));
    let job = jobs.create("false").unwrap();
    job.start(Level::Harmless, None, None).await.unwrap();
    let err = job.exec(Command::new("sh").args(["-c", "echo oops >&2; exit 3"])).await.unwrap_err();
    assert_eq!(err.message(), "Command sh \"-c\" \"echo oops >&2; exit 3\" exited with status 3");
    let err = job.exec(&mut Command::new("no-such-program-here")).await.unwrap_err();
    assert!(err.message().contains("is no-such-program-here installed?"), "{}", err.message());
    let out = job.check_output(Command::new("echo").arg("hello")).await.unwrap();
    assert_eq!(out, "hello\n");
    let (log, _) = jobs.read_log(job.id(), 0, 1 << 20).unwrap();
    assert!(String::from_utf8(log).unwrap().contains("oops"));
}

#[tokio::test]
async fn a_log_can_be_followed_live_from_an_offset() {
    let jobs = jobs("stream", Config::new(None));
    let job = jobs.create("chatty").unwrap();
    job.start(Level::Harmless, None, None).await.unwrap();
    let writer = job.clone();
    let lines = tokio::spawn(async move {
        for i in 0..20 {
            writer.log(&format!("line {i}"));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        writer.finish();
    });
    // Follow it the way the web UI does: read what is there, wait for more.
    let mut offset = 0u64;
    let mut seen = Vec::new();
    loop {
        jobs.wait_for_log_data(job.id(), offset).await;
        let (bytes, finished) = jobs.read_log(job.id(), offset, 64).unwrap();
        offset += bytes.len() as u64;
        seen.extend(bytes);
        if finished && jobs.read_log(job.id(), offset, 64).unwrap().0.is_empty() {
            break;
        }
    }
    lines.await.unwrap();
    let text = String::from_utf8(seen).unwrap();
    let got: Vec<&str> = text.lines().filter(|l| l.contains("line ")).collect();
    assert_eq!(got.len(), 20, "{text}");
    assert!(got[19].ends_with("line 19"));
    // From an offset in the middle: exactly the rest.
    let half = text.find("line 10").unwrap() as u64;
    let (rest, finished) = jobs.read_log(job.id(), half, 1 << 20).unwrap();
    assert!(finished);
    assert!(String::from_utf8(rest).unwrap().starts_with("line 10"));
}

#[tokio::test]
async fn log_ids_with_path_tricks_are_rejected() {
    let jobs = jobs("tricks", Config::new(None));
    for bad in ["../db.sqlite", "2026-11-24/../../etc/passwd", "/etc/passwd", "2026-11-24/a/b", ""] {
        assert!(jobs.read_log(bad, 0, 10).is_err(), "{bad:?} was accepted");
        assert!(jobs.log_file(bad).is_err(), "{bad:?} was accepted");
    }
}

#[tokio::test]
async fn dangerous_jobs_wait_for_confirmation_until_the_threshold_changes() {
    let config = Config::new(Some(Level::AboveAverage));
    let jobs = jobs("confirm", config.clone());
    let harmless = jobs.create("harmless").unwrap();
    harmless.start(Level::Average, None, None).await.unwrap();
    assert_eq!(harmless.status(), JobStatus::Running);

    let risky = jobs.create("risky").unwrap();
    let r = risky.clone();
    let run = tokio::spawn(async move { r.start(Level::Dangerous, None, None).await.map(|_| ()) });
    eventually("waiting", || risky.status() == JobStatus::WaitingForConfirmation).await;
    let other = jobs.create("other").unwrap();
    let o = other.clone();
    let other_run = tokio::spawn(async move { o.start(Level::AboveAverage, None, None).await.map(|_| ()) });
    eventually("waiting", || other.status() == JobStatus::WaitingForConfirmation).await;
    // An operator starts one early; the other keeps waiting.
    risky.approve_early_start();
    run.await.unwrap().unwrap();
    assert_eq!(risky.status(), JobStatus::Running);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(other.status(), JobStatus::WaitingForConfirmation);
    // Raising the threshold at run time releases it.
    config.set_confirm(Some(Level::Dangerous));
    other_run.await.unwrap().unwrap();
    assert_eq!(other.status(), JobStatus::Running);
}

#[tokio::test]
async fn the_threshold_can_release_itself_after_a_while() {
    let config = Config::new(Some(Level::Harmless));
    assert!(!config.is_confirmed(Level::Average));
    let release = config.auto_release(Duration::from_millis(100));
    release.await.unwrap();
    assert_eq!(config.confirm(), None);
    assert!(config.is_confirmed(Level::Dangerous));
}
