//! Web benchmark: the pipeline page of a 10,000-box pipeline, the collapsed
//! page of a 100,000-box pipeline, and a 100 MB job log streamed to a
//! client (with the server's peak memory growth).
//!
//! Run with `cargo bench -p deployer-benches --bench web`.

use std::hint::black_box;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Instant;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use criterion::{criterion_group, Criterion, Throughput};
use deployer_benches::rss;
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
    let mut req = Request::get(uri).body(Body::empty()).expect("request");
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
    let ctx = context("log");
    let job = ctx.jobs.create("big-log", "big log").expect("job");
    {
        let mut f = std::fs::OpenOptions::new().append(true).open(job.log_path()).expect("log");
        let line = format!("{}\x1b[32m ok\x1b[0m\n", "x".repeat(90));
        let chunk = line.repeat(10_000);
        let mut written = 0;
        while written < 100 << 20 {
            f.write_all(chunk.as_bytes()).expect("write");
            written += chunk.len();
        }
    }
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
        "100 MB log: {bytes} bytes of events; peak RSS {} MB while streaming, {} MB above the RSS before",
        peak >> 20,
        peak.saturating_sub(before) >> 20
    );
    group.sample_size(10);
    group.throughput(Throughput::Bytes(100 << 20));
    group.bench_function("stream_100mb_log", |b| b.iter(|| black_box(rt.block_on(get(&log_app, &uri)))));
    group.finish();
}

criterion_group!(benches, web);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
