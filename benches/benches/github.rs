//! Webhook benchmark: signed `push` deliveries (the real payload shape) at
//! 1,000 per second for 30 s to a running deployer-web server, each after
//! moving the branch on a local stand-in for GitHub's API, while 50 stalled
//! senders (a signature-shaped header, then no body) hold connections
//! open, each opened again as soon as the server drops it. Measured: every
//! delivery accepted, the latency from sending a delivery to the engine
//! showing that head (or a later one) — p99 under 10 ms — and resident
//! memory before and after.
//!
//! Run with `cargo bench -p deployer-benches --bench github`. In quick mode
//! (`cargo test --benches`) it sends 200 per second for 2 s and checks only
//! that nothing was lost.

#[path = "../../deployer-github/tests/support/fake_github.rs"]
mod fake_github;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deployer_benches::{quick, rss};
use deployer_core::{Config, Context, Engine, Output, Secret};
use deployer_github::{sign, Auth, GitHub, Repo};
use deployer_web::Site;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "benchmark webhook secret";

fn sha(n: u64) -> String {
    format!("{n:040x}")
}

/// Keeps `n` connections that sent a delivery's headers and then nothing:
/// each is opened again when the server drops it. Counts the drops.
fn stalled_senders(addr: SocketAddr, n: usize, dropped: Arc<AtomicU64>) {
    for _ in 0..n {
        let dropped = dropped.clone();
        tokio::spawn(async move {
            loop {
                let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let head = format!(
                    "POST /webhooks/github HTTP/1.1\r\nHost: {addr}\r\nX-GitHub-Event: push\r\n\
                     X-Hub-Signature-256: sha256={}\r\nContent-Length: 1000\r\n\r\n",
                    "0".repeat(64)
                );
                let _ = s.write_all(head.as_bytes()).await;
                let mut out = Vec::new();
                let _ = s.read_to_end(&mut out).await; // until the server drops it
                dropped.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
}

/// One delivery on its own connection; the status code.
async fn deliver(addr: SocketAddr, body: &[u8], signature: &str) -> u16 {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else { return 0 };
    let head = format!(
        "POST /webhooks/github HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nX-GitHub-Event: push\r\n\
         Content-Type: application/json\r\nX-Hub-Signature-256: {signature}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    if s.write_all(head.as_bytes()).await.is_err() || s.write_all(body).await.is_err() {
        return 0;
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

fn main() {
    let (rate, secs) = if quick() { (200u64, 2u64) } else { (1000, 30) };
    let total = rate * secs;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = std::env::var_os("DEPLOYER_TEST_WORK")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("bench-github-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let payload = fake_github::payload("push.branch-created.json");
    let signature = sign(SECRET, &payload);
    rt.block_on(async {
        let gh = fake_github::FakeGitHub::start(&dir).await;
        gh.set_branch("Codertocat/Hello-World", "master", &sha(0));
        // Count requests only, so that the memory measured is the deployer's.
        gh.world.lock().unwrap().count_only = true;
        let ctx = Context::open(&dir.join("state"), Config::default()).unwrap();
        let github = GitHub::with_api(&ctx, &gh.url, Auth::Token(Secret::new("ghp_bench".into()))).unwrap().poll_every(Duration::from_secs(3600));
        let head = github.head_of(&Repo::parse("Codertocat/Hello-World").unwrap(), "master");
        let engine = Arc::new(Engine::new(head.clone()));
        let site = Site::new("bench", engine.handle(), ctx.clone()).mount(github.webhook_routes(Secret::new(SECRET.into())));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(site.serve(listener));
        tokio::spawn({
            let engine = engine.clone();
            async move { engine.run().await }
        });
        // When each head was first seen (index = the head's number).
        let seen_at: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; total as usize + 1]));
        let latest = Arc::new(AtomicU64::new(0));
        let mut rx = engine.watch(&head);
        tokio::spawn({
            let (seen_at, latest) = (seen_at.clone(), latest.clone());
            async move {
                while rx.changed().await.is_ok() {
                    let now = Instant::now();
                    let n = match &*rx.borrow_and_update() {
                        Output::Ok(r) => u64::from_str_radix(&r.hash, 16).unwrap_or(0),
                        _ => continue,
                    };
                    latest.fetch_max(n, Ordering::SeqCst);
                    let mut seen = seen_at.lock().unwrap();
                    if let Some(slot) = seen.get_mut(n as usize) {
                        slot.get_or_insert(now);
                    }
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), async {
            while !matches!(engine.output(), Output::Ok(_)) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the first head within 10 s");
        let stalled_dropped = Arc::new(AtomicU64::new(0));
        stalled_senders(addr, 50, stalled_dropped.clone());
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let rss_before = rss().1;
        // The load: one delivery every 1/rate s, each after moving the branch.
        let sent_at: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; total as usize + 1]));
        let ok = Arc::new(AtomicU64::new(0));
        // Finished deliveries are counted, not kept (a JoinHandle keeps its
        // task's memory until awaited).
        let done = Arc::new(AtomicU64::new(0));
        let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let start = Instant::now();
        let mut rss_early = 0;
        for i in 1..=total {
            if i == total / 6 {
                rss_early = rss().1; // after a sixth of the run (5 s when measured)
            }
            tick.tick().await;
            gh.set_branch("Codertocat/Hello-World", "master", &sha(i));
            sent_at.lock().unwrap()[i as usize] = Some(Instant::now());
            let (payload, signature, ok, done) = (payload.clone(), signature.clone(), ok.clone(), done.clone());
            tokio::spawn(async move {
                if deliver(addr, &payload, &signature).await == 200 {
                    ok.fetch_add(1, Ordering::SeqCst);
                }
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
        tokio::time::timeout(Duration::from_secs(30), async {
            while done.load(Ordering::SeqCst) < total {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .expect("every delivery answered within 30 s of the last");
        let sending = start.elapsed();
        tokio::time::timeout(Duration::from_secs(10), async {
            while latest.load(Ordering::SeqCst) < total {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .expect("the last head is seen within 10 s of the last delivery");
        let rss_after = rss().1;
        // For each delivery: the first time its head or a later one was seen.
        let seen = seen_at.lock().unwrap().clone();
        let sent = sent_at.lock().unwrap().clone();
        let mut first_after = vec![None; seen.len()];
        let mut earliest: Option<Instant> = None;
        for i in (1..seen.len()).rev() {
            if let Some(t) = seen[i] {
                earliest = Some(earliest.map_or(t, |e: Instant| e.min(t)));
            }
            first_after[i] = earliest;
        }
        let mut latencies: Vec<f64> = (1..seen.len())
            .filter_map(|i| Some(first_after[i]?.saturating_duration_since(sent[i]?).as_secs_f64() * 1e3))
            .collect();
        latencies.sort_by(f64::total_cmp);
        let pick = |p: f64| latencies[((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1];
        let accepted = ok.load(Ordering::SeqCst);
        let reads = gh.world.lock().unwrap().counts.get("/repos/Codertocat/Hello-World/branches/master").copied().unwrap_or(0);
        eprintln!(
            "github: {total} signed deliveries in {:.1} s ({:.0}/s) beside 50 stalled senders ({} of their connections \
             dropped by the server), {accepted} accepted, {} lost; head seen after p50 {:.2} ms, p99 {:.2} ms, max \
             {:.2} ms; {reads} branch reads (refreshes coalesced); RSS {} MB before, {} MB after a sixth, {} MB at the end",
            sending.as_secs_f64(),
            total as f64 / sending.as_secs_f64(),
            stalled_dropped.load(Ordering::SeqCst),
            total - accepted,
            pick(0.5),
            pick(0.99),
            pick(1.0),
            rss_before >> 20,
            rss_early >> 20,
            rss_after >> 20
        );
        assert_eq!(accepted, total, "deliveries were lost");
        if !quick() {
            assert!(pick(0.99) < 10.0, "p99 {:.1} ms is over 10 ms", pick(0.99));
            // Flat: what the first sixth settled at, not growing with the run.
            assert!(rss_after < rss_early + (16 << 20), "memory grew from {} to {} MB", rss_early >> 20, rss_after >> 20);
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}
