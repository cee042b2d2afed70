//! Web benchmark: the pipeline page of a 10,000-box pipeline, the collapsed
//! page of a 100,000-box pipeline, a 100 MB job log streamed to a client
//! (with the server's peak memory growth), a log of one 8 MB line, and 200
//! clients that open a live log and then stop reading (the latency of
//! `/api/stats` and the memory meanwhile).
//!
//! Run with `cargo bench -p deployer-benches --bench web`. In quick mode
//! (`cargo test --benches`) the logs are a tenth of the size and 20 clients
//! stall.

use std::hint::black_box;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Instant;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use criterion::{criterion_group, Criterion, Throughput};
use deployer_benches::{quick, rss};
use deployer_core::{Config, Context, Current, Engine, Output, Source, Var};
use deployer_web::Site;
use http_body_util::BodyExt;
use tower::ServiceExt;

/// One repository's pipeline: `items` commits, each fetched, built, tested,
/// pushed and deployed (five boxes each).
fn stages(items: &Current<Vec<u64>>) -> Current<Vec<u64>> {
    items.list_map(|item| {
        let mut x = item;
        for stage in ["fetch", "build", "test", "push", "deploy"] {
            x = x.primitive(stage, |v, _| Source::new(Output::Ok(v.wrapping_mul(31).wrapping_add(7))));
        }
        x
    })
}

fn context(name: &str) -> Context {
    let dir = std::env::temp_dir().join(format!("deployer-web-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    Context::open(&dir, Config::new(None)).expect("context")
}

async fn get(app: &axum::Router, uri: &str) -> (StatusCode, usize) {
    let mut req = Request::get(uri).header("host", "localhost").body(Body::empty()).expect("request");
    req.extensions_mut().insert(ConnectInfo("127.0.0.1:1".parse::<SocketAddr>().expect("addr")));
    let resp = app.clone().oneshot(req).await.expect("response");
    let status = resp.status();
    // Consume the body frame by frame, as a client does, without keeping it.
    let mut body = resp.into_body();
    let mut len = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("body").into_data() {
            len += data.len();
        }
    }
    (status, len)
}

fn web(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let _guard = rt.enter();
    let mut group = c.benchmark_group("web");
    group.sample_size(20);

    // 10,000 boxes: 2,000 commits × 5 stages.
    let commits = Var::new("commits", (0..2_000).collect::<Vec<u64>>());
    let engine = Engine::new(stages(&commits.current()));
    engine.step();
    let ctx = context("10k");
    let app = Site::new("bench", engine.handle(), ctx).router();
    let (status, bytes) = rt.block_on(get(&app, "/"));
    assert_eq!(status, StatusCode::OK);
    eprintln!("10,000-box pipeline page: {bytes} bytes");
    group.bench_function("pipeline_page_10k_boxes", |b| b.iter(|| black_box(rt.block_on(get(&app, "/")))));

    // 100,000 boxes: 100 repositories of 200 commits × 5 stages, collapsed
    // to one box per repository.
    let repos: Vec<Current<Vec<u64>>> = (0..100)
        .map(|r| {
            let input = Current::constant_labelled(&format!("repo-{r}"), (0..200).map(|i| r * 1_000 + i).collect());
            stages(&input).collapse("repo", &format!("repo-{r}"), &input)
        })
        .collect();
    let big = Engine::new(Current::all(repos));
    let t = Instant::now();
    big.step();
    eprintln!(
        "100,000-box pipeline: first step {:.0} ms, {} nodes",
        t.elapsed().as_secs_f64() * 1e3,
        big.handle().node_count()
    );
    let big_app = Site::new("bench", big.handle(), context("100k")).router();
    let (status, bytes) = rt.block_on(get(&big_app, "/"));
    assert_eq!(status, StatusCode::OK);
    eprintln!("100,000-box pipeline page, collapsed: {bytes} bytes");
    group.bench_function("pipeline_page_100k_boxes_collapsed", |b| {
        b.iter(|| black_box(rt.block_on(get(&big_app, "/"))))
    });
    group.bench_function("pipeline_page_100k_one_repo_expanded", |b| {
        b.iter(|| black_box(rt.block_on(get(&big_app, "/?repo=repo-42"))))
    });

    // A 100 MB log, streamed as server-sent events.
    let mb = if quick() { 10 } else { 100 };
    let ctx = context("log");
    let job = ctx.jobs.create("big-log", "big log").expect("job");
    write_log(&job, mb << 20);
    job.finish();
    let id = job.id().to_owned();
    let log_app = Site::new("bench", engine.handle(), ctx).router();
    let uri = format!("/job/{id}/events");
    // Reset the high-water mark (Linux), so the peak below is this stream's.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = rss().1;
    let (status, bytes) = rt.block_on(get(&log_app, &uri));
    assert_eq!(status, StatusCode::OK);
    let peak = rss().0;
    eprintln!(
        "{mb} MB log: {bytes} bytes of events; peak RSS {} MB while streaming, {} MB above the RSS before",
        peak >> 20,
        peak.saturating_sub(before) >> 20
    );
    group.sample_size(10);
    group.throughput(Throughput::Bytes((mb as u64) << 20));
    group.bench_function("stream_100mb_log", |b| b.iter(|| black_box(rt.block_on(get(&log_app, &uri)))));

    // One line of 8 MB: sent in pieces, in time linear in its length.
    let line_mb = if quick() { 1 } else { 8 };
    let ctx = context("line");
    let job = ctx.jobs.create("long-line", "long line").expect("job");
    std::fs::write(job.log_path(), format!("{}\n", "y".repeat(line_mb << 20))).expect("log");
    job.finish();
    let line_app = Site::new("bench", engine.handle(), ctx).router();
    let line_uri = format!("/job/{}/events", job.id());
    let t = Instant::now();
    let (status, bytes) = rt.block_on(get(&line_app, &line_uri));
    assert_eq!(status, StatusCode::OK);
    eprintln!("one {line_mb} MB line: {bytes} bytes of events in {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
    group.throughput(Throughput::Bytes((line_mb as u64) << 20));
    group.bench_function("stream_8mb_line", |b| b.iter(|| black_box(rt.block_on(get(&line_app, &line_uri)))));
    group.finish();

    stalled_readers(&rt, engine.handle());
}

/// Appends about `bytes` bytes of coloured 100-byte lines to `job`'s log.
fn write_log(job: &deployer_core::Job, bytes: usize) {
    let mut f = std::fs::OpenOptions::new().append(true).open(job.log_path()).expect("log");
    let line = format!("{}\x1b[32m ok\x1b[0m\n", "x".repeat(90));
    let chunk = line.repeat(10_000);
    let mut written = 0;
    while written < bytes {
        f.write_all(chunk.as_bytes()).expect("write");
        written += chunk.len();
    }
}

/// One HTTP/1.1 GET over a new connection; the time to the whole answer.
async fn timed_get(addr: SocketAddr, path: &str) -> std::time::Duration {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read");
    assert!(out.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&out[..out.len().min(200)]));
    t.elapsed()
}

/// The number of live log streams open, from `/metrics`.
async fn open_streams(addr: SocketAddr) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await.expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out.lines()
        .find_map(|l| l.strip_prefix("deployer_log_streams "))
        .and_then(|n| n.trim().parse().ok())
        .expect("the metrics give the number of open streams")
}

/// Latencies of `n` sequential `/api/stats` requests: (median, max).
async fn stats_latency(addr: SocketAddr, n: usize) -> (f64, f64) {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        times.push(timed_get(addr, "/api/stats").await.as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    (times[n / 2], times[n - 1])
}

/// 200 clients (each its own loopback address) open the live log of a
/// running job with a 30 MB log and read nothing; `/api/stats` must stay
/// fast and memory bounded (streams are capped; stalled ones dropped).
fn stalled_readers(rt: &tokio::runtime::Runtime, engine: deployer_core::EngineHandle) {
    let (readers, mb) = if quick() { (20u32, 3) } else { (200u32, 30) };
    let ctx = context("stalled");
    let job = ctx.jobs.create("chatty", "chatty").expect("job");
    write_log(&job, mb << 20); // running: the streams stay open
    let id = job.id().to_owned();
    let site = Site::new("bench", engine, ctx);
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(site.serve(listener));
        let (base_median, base_max) = stats_latency(addr, 20).await;
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let before = rss().1;
        let mut clients = Vec::new();
        for n in 0..readers {
            use tokio::io::AsyncWriteExt;
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            let me = std::net::Ipv4Addr::new(127, 0, (2 + n / 250) as u8, (1 + n % 250) as u8);
            socket.bind(SocketAddr::from((me, 0))).expect("bind a loopback address");
            let mut s = socket.connect(addr).await.expect("connect");
            let req = format!("GET /job/{id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
            s.write_all(req.as_bytes()).await.expect("write");
            clients.push(s); // and never read
        }
        // Let the server fill what it can.
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let (median, max) = stats_latency(addr, 20).await;
        let peak = rss().0;
        let open = open_streams(addr).await;
        eprintln!(
            "{readers} stalled readers of a {mb} MB live log ({open} streams admitted, the rest refused): \
             /api/stats median {median:.2} ms, max {max:.2} ms (alone: {base_median:.2} / {base_max:.2} ms); \
             peak RSS {} MB above before",
            peak.saturating_sub(before) >> 20
        );
        if !quick() {
            assert!(max < 200.0, "/api/stats took {max:.0} ms with stalled readers");
            assert!(peak.saturating_sub(before) < 64 << 20, "stalled readers took {} MB", (peak - before) >> 20);
        }
        drop(clients);
    });
    job.finish();
}

criterion_group!(benches, web);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
