//! Jobs: pools (capacity, priority, cancel while queued), processes killed
//! on cancel, timeouts, live log streaming, and confirmation.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deployer_core::job::JobStatus;
use deployer_core::{Clock, Config, ErrorKind, Jobs, Level, ManualClock, Pool, Priority};
use tokio::process::Command;

fn jobs(name: &str, config: Config) -> Jobs {
    jobs_with_clock(name, config, Clock::system())
}

fn jobs_with_clock(name: &str, config: Config, clock: Clock) -> Jobs {
    let base = std::env::var_os("DEPLOYER_TEST_WORK").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("jobs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    Jobs::new(&dir, config, clock)
}

fn log_of(jobs: &Jobs, id: &str) -> String {
    String::from_utf8(jobs.read_log(id, 0, 1 << 20).unwrap().0).unwrap()
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
    let queued = jobs.create("queued", "queued").unwrap();
    let next = jobs.create("next", "next").unwrap();
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
    assert_eq!(err.message(), "Cancelled while waiting for a slot in pool one");
    assert_eq!(err.kind(), ErrorKind::Cancelled);
    drop(holder);
    assert!(second.await.unwrap(), "the next job gets the slot the cancelled one left");
    assert_eq!(next.status(), JobStatus::Running);
    let (log, _) = jobs.read_log(queued.id(), 0, 1 << 20).unwrap();
    let log = String::from_utf8(log).unwrap();
    assert!(log.contains("Waiting for resource in pool one"), "{log}");
    assert!(log.contains("Cancelling: no longer needed"), "{log}");
    assert!(log.contains("Cancelled while waiting for a slot in pool one"), "{log}");
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
    let job = jobs.create("sleeper", "sleeper").unwrap();
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
    // What happened to the process, and why.
    assert_eq!(err.kind(), ErrorKind::Cancelled);
    assert!(
        err.message().starts_with(&format!("Command sleep \"{secs}\" was stopped with SIGTERM after "))
            && err.message().ends_with(": operator pressed Cancel"),
        "{}",
        err.message()
    );
    assert!(t.elapsed() < Duration::from_secs(5));
    eventually("sleep killed", || !process_running(&cmdline)).await;
    assert!(log_of(&jobs, job.id()).contains("was stopped with SIGTERM"));
}

#[tokio::test]
async fn a_process_ignoring_sigterm_gets_sigkill() {
    let jobs = jobs("kill-hard", Config::new(None));
    let job = jobs.create("stubborn", "stubborn").unwrap();
    job.start(Level::Harmless, None, None).await.unwrap();
    let j = job.clone();
    let run = tokio::spawn(async move {
        j.exec(Command::new("sh").args(["-c", "trap '' TERM; echo ready; while :; do sleep 0.1; done"])).await
    });
    eventually("ready", || log_of(&jobs, job.id()).contains("ready")).await;
    job.cancel("stop");
    let err = run.await.unwrap().unwrap_err();
    assert!(err.message().contains("was stopped with SIGKILL after 5"), "{}", err.message());
}

#[tokio::test]
async fn a_job_past_its_timeout_is_cancelled() {
    // The time limit is read from the clock: a manual clock passes it
    // without the test waiting.
    let clock = ManualClock::new(0);
    let jobs = jobs_with_clock("timeout", Config::new(None), clock.clock());
    let job = jobs.create("slow", "slow").unwrap();
    job.start(Level::Harmless, None, Some(Duration::from_secs(300))).await.unwrap();
    let j = job.clone();
    let run = tokio::spawn(async move { j.exec(Command::new("sleep").arg("60")).await });
    eventually("sleep started", || log_of(&jobs, job.id()).contains("Exec: sleep")).await;
    clock.advance(Duration::from_secs(300));
    let err = run.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TimedOut);
    assert!(err.message().contains("was stopped with SIGTERM after"), "{}", err.message());
    assert!(err.message().ends_with(": Timed out (after 5 min)"), "{}", err.message());
    assert_eq!(job.cancellation_error().unwrap().message(), "Timed out (after 5 min)");
}

#[tokio::test]
async fn the_log_keeps_the_order_stdout_and_stderr_were_written_in() {
    let jobs = jobs("order", Config::new(None));
    let job = jobs.create("chatty", "chatty").unwrap();
    job.start(Level::Harmless, None, None).await.unwrap();
    let script = "for i in $(seq 1 200); do echo out $i; echo err $i >&2; done";
    job.exec(Command::new("sh").args(["-c", script])).await.unwrap();
    let log = log_of(&jobs, job.id());
    let lines: Vec<&str> = log.lines().filter_map(|l| l.split_once(": ").map(|(_, t)| t)).collect();
    let expected: Vec<String> = (1..=200).flat_map(|i| [format!("out {i}"), format!("err {i}")]).collect();
    let got: Vec<&str> = lines.iter().copied().filter(|l| l.starts_with("out ") || l.starts_with("err ")).collect();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn processes_can_be_fed_input_and_piped_into_each_other() {
    let jobs = jobs("pipe", Config::new(None));
    let job = jobs.create("pipe", "pipe").unwrap();
    job.start(Level::Harmless, None, None).await.unwrap();
    job.exec_with_input(Command::new("wc").arg("-l"), &b"one\ntwo\nthree\n"[..]).await.unwrap();
    job.exec_pipe(Command::new("printf").arg("a\\nb\\n"), Command::new("tr").args(["a-z", "A-Z"])).await.unwrap();
    let log = log_of(&jobs, job.id());
    assert!(log.lines().any(|l| l.ends_with(": 3")), "{log}");
    assert!(log.lines().any(|l| l.ends_with(": A")) && log.lines().any(|l| l.ends_with(": B")), "{log}");
    // The failing side of a pipe is named.
    let err = job.exec_pipe(&mut Command::new("true"), Command::new("sh").args(["-c", "exit 4"])).await.unwrap_err();
    assert_eq!(err.message(), "Command sh \"-c\" \"exit 4\" exited with status 4");
    assert_eq!(err.kind(), ErrorKind::Exit { code: Some(4), signal: None });
}

#[tokio::test]
async fn a_failing_command_names_itself_and_its_status() {
    let jobs = jobs("status", Config::new(None));
    let job = jobs.create("false", "false").unwrap();
    job.start(Level::Harmless, None, None).await.unwrap();
    let err = job.exec(Command::new("sh").args(["-c", "echo oops >&2; exit 3"])).await.unwrap_err();
    assert_eq!(err.message(), "Command sh \"-c\" \"echo oops >&2; exit 3\" exited with status 3");
    assert_eq!(err.kind(), ErrorKind::Exit { code: Some(3), signal: None });
    // "docker is not installed" is told apart from "the tests failed" by kind.
    let err = job.exec(&mut Command::new("no-such-program-here")).await.unwrap_err();
    assert!(err.message().contains("is no-such-program-here installed?"), "{}", err.message());
    assert_eq!(err.kind(), ErrorKind::Io(std::io::ErrorKind::NotFound));
    let out = job.check_output(Command::new("echo").arg("hello")).await.unwrap();
    assert_eq!(out, "hello\n");
    let log = log_of(&jobs, job.id());
    assert!(log.contains("oops"));
    assert!(log.lines().any(|l| l.ends_with(": hello")), "what check_output captured is logged: {log}");
}

#[tokio::test]
async fn a_log_can_be_followed_live_from_an_offset() {
    let jobs = jobs("stream", Config::new(None));
    let job = jobs.create("chatty", "chatty").unwrap();
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
    let harmless = jobs.create("harmless", "harmless").unwrap();
    harmless.start(Level::Average, None, None).await.unwrap();
    assert_eq!(harmless.status(), JobStatus::Running);

    let risky = jobs.create("risky", "risky").unwrap();
    let r = risky.clone();
    let run = tokio::spawn(async move { r.start(Level::Dangerous, None, None).await.map(|_| ()) });
    eventually("waiting", || risky.status() == JobStatus::WaitingForConfirmation).await;
    let other = jobs.create("other", "other").unwrap();
    let o = other.clone();
    let other_run = tokio::spawn(async move { o.start(Level::AboveAverage, None, None).await.map(|_| ()) });
    eventually("waiting", || other.status() == JobStatus::WaitingForConfirmation).await;
    // An operator starts one early; the other is still waiting.
    risky.approve_early_start();
    run.await.unwrap().unwrap();
    assert_eq!(risky.status(), JobStatus::Running);
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

#[tokio::test]
async fn a_multi_line_secret_in_a_process_output_never_reaches_the_log() {
    let jobs = jobs("pem", Config::new(None));
    let key = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACDh1k3Q0t5yJ0X9Y3ab8cd0eG2Q0Lr7KQmq9E0n0mP6lAAAAJgAAAAAAAAA
AAAAAAtzc2gtZWQyNTUxOQAAACDh1k3Q0t5yJ0X9Y3ab8cd0eG2Q0Lr7KQmq9E0n0mP6lA
-----END OPENSSH PRIVATE KEY-----";
    jobs.register_secret(key);
    let job = jobs.create("leaky", "leaky").unwrap();
    job.start(Level::Harmless, None, None).await.unwrap();
    let pem = std::env::temp_dir().join(format!("deployer-pem-{}", std::process::id()));
    std::fs::write(&pem, key).unwrap();
    // The process prints the key, line by line, on stdout and on stderr.
    job.exec(Command::new("sh").arg("-c").arg(format!("cat {0}; cat {0} >&2", pem.display()))).await.unwrap();
    job.check_output(Command::new("cat").arg(&pem)).await.unwrap();
    std::fs::remove_file(&pem).unwrap();
    let log = log_of(&jobs, job.id());
    for line in key.lines().skip(1).take(3) {
        assert!(!log.contains(line), "a line of the key reached the log:\n{log}");
    }
    assert!(log.contains("[redacted]"), "{log}");
}

#[tokio::test]
async fn a_process_output_can_be_streamed_and_its_status_checked() {
    use tokio::io::AsyncReadExt;
    let jobs = jobs("stream-output", Config::new(None));
    let job = jobs.create("archive", "archive").unwrap();
    job.start(Level::Harmless, None, None).await.unwrap();
    let mut out = job.stream_output(Command::new("sh").args(["-c", "printf 'tar bytes'; echo warning >&2"])).unwrap();
    let mut bytes = Vec::new();
    out.read_to_end(&mut bytes).await.unwrap();
    out.finish().await.unwrap();
    assert_eq!(bytes, b"tar bytes");
    assert!(log_of(&jobs, job.id()).contains("warning"), "stderr is logged");
    let mut failing = job.stream_output(Command::new("sh").args(["-c", "exit 5"])).unwrap();
    failing.read_to_end(&mut Vec::new()).await.unwrap();
    let err = failing.finish().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Exit { code: Some(5), signal: None });
}

/// Security issue 15: a secret straddling the 64 KiB cut of a long line,
/// a secret with quotes and backslashes in a command line, and a secret in
/// an error message never reach the log or the error unscrubbed.
#[tokio::test]
async fn secrets_survive_no_line_cut_no_quoting_and_no_error() {
    let jobs = jobs("secret-forms", Config::new(None));
    let secret = "tok\"en\\with-quotes-0123456789";
    jobs.register_secret(secret);
    let job = jobs.create("leaky", "leaky").unwrap();
    job.start(Level::Harmless, None, None).await.unwrap();
    // One line of 100 KiB whose secret spans byte 65,536.
    let mut line = "x".repeat(64 * 1024 - 10);
    line.push_str(secret);
    line.push_str(&"y".repeat(100 * 1024 - line.len()));
    let mut out = job.lines();
    out.push(line.as_bytes());
    out.push(b"\n");
    out.finish();
    // An argument holding the secret, quoted in the "Exec:" line.
    job.exec(Command::new("true").arg(format!("--token={secret}"))).await.unwrap();
    let log = log_of(&jobs, job.id());
    for half in [&secret[..10], &secret[10..]] {
        assert!(!log.contains(half), "a piece of the secret ({half:?}) reached the log");
    }
    assert!(!log.contains(&format!("{secret:?}")[1..20]), "the quoted secret reached the log");
    assert!(log.matches("[redacted]").count() >= 2, "{}", &log[..200]);
    // An error's message is scrubbed where it is made.
    let e = deployer_core::Error::msg(format!("the server said: bad token {secret}"));
    assert_eq!(e.message(), "the server said: bad token [redacted]");
    let e = e.context(format!("with {secret:?}"));
    assert!(!e.message().contains("with-quotes"), "{}", e.message());
}
