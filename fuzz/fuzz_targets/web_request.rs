//! Requests to the web UI and its API, as a browser, a script or an
//! attacker sends them: the first line of the input is `METHOD TARGET`
//! (where `{job}` stands for the id of a real job with a log), then header
//! lines, an empty line and the body; a header `x-fuzz-peer: ADDR` says
//! where the request comes from (loopback is admin here). Query strings,
//! forms, cookies, forwarded-for headers, `Last-Event-ID` and `?from=`
//! resumption points are all parsed from hostile text. Nothing panics, no
//! request is a server error, every answer ends, and no text of the input
//! reaches an HTML page unescaped.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode};
use deployer_core::cache::{BuildCache, Builder};
use deployer_core::{Config, Context, Current, Engine, Error, Job, Level};
use deployer_fuzz::{runtime, scratch, RawRequest};
use deployer_web::{LocalAdmin, Site};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

/// A build that logs a few lines (one coloured, one with markup) at once.
struct QuickBuild;

#[async_trait]
impl Builder for QuickBuild {
    const ID: &'static str = "quick-build";
    type Key = String;
    type Value = String;
    fn level(&self, _: &String) -> Level {
        Level::Harmless
    }
    async fn build(&self, job: &Job, key: &String) -> Result<String, Error> {
        job.log(&format!("building {key}"));
        job.log("\x1b[32mgreen\x1b[0m <b>not a tag</b>");
        Ok(format!("built {key}"))
    }
}

struct Target {
    rt: tokio::runtime::Runtime,
    app: axum::Router,
    job: String,
}

fn target() -> &'static Target {
    static T: OnceLock<Target> = OnceLock::new();
    T.get_or_init(|| {
        let rt = runtime();
        let ctx = Context::open(&scratch("web-request"), Config::default()).expect("a store");
        let (app, job) = rt.block_on(async {
            let cache = BuildCache::new(&ctx, QuickBuild);
            let built = cache.get("build", Current::constant_labelled("repo", "app".to_owned()));
            let engine = std::sync::Arc::new(Engine::new(built));
            let e = engine.clone();
            tokio::spawn(async move { e.run().await });
            // Until the build has run and its job has a finished log.
            let job = loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let page = ctx.store.history(Default::default()).await.expect("history");
                if let Some(row) = page.rows.first() {
                    break row.job_id.clone();
                }
            };
            let app = Site::new("fuzz", engine.handle(), ctx.clone()).local_admin(LocalAdmin::Loopback).router();
            (app, job)
        });
        Target { rt, app, job }
    })
}

fuzz_target!(|input: &[u8]| {
    let t = target();
    let (line, rest) = match input.iter().position(|&b| b == b'\n') {
        Some(i) => (&input[..i], &input[i + 1..]),
        None => (input, &[][..]),
    };
    let Ok(line) = std::str::from_utf8(line) else { return };
    let (method, target) = line.split_once(' ').unwrap_or(("GET", line));
    let Ok(method) = Method::from_bytes(method.as_bytes()) else { return };
    let target = target.replace("{job}", &t.job);
    let raw = RawRequest::parse(rest);
    let mut peer: SocketAddr = "198.51.100.7:4000".parse().expect("an address");
    let mut req = Request::builder().method(method).uri(target.as_str());
    let mut host = false;
    for (n, v) in &raw.headers {
        if n == "x-fuzz-peer" {
            if let Some(p) = v.to_str().ok().and_then(|p| p.parse().ok()) {
                peer = p;
            }
            continue;
        }
        host |= n == "host";
        req = req.header(n, v);
    }
    if !host {
        req = req.header("host", "localhost:8080");
    }
    let Ok(mut req) = req.body(Body::from(raw.body.clone())) else { return };
    req.extensions_mut().insert(ConnectInfo(peer));
    let (status, html, body) = t.rt.block_on(async {
        let resp = t.app.clone().oneshot(req).await.expect("infallible");
        let (parts, body) = resp.into_parts();
        let body = tokio::time::timeout(Duration::from_secs(10), body.collect())
            .await
            .unwrap_or_else(|_| panic!("{target}: the answer did not end in 10 s"))
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let html = parts.headers.get("content-type").is_some_and(|c| c.as_bytes().starts_with(b"text/html"));
        (parts.status, html, body)
    });
    assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR, "{target}: {}", String::from_utf8_lossy(&body));
    if html {
        // Input markup (`<fuzz`) must arrive escaped.
        let page = String::from_utf8_lossy(&body);
        assert!(!page.contains("<fuzz"), "{target}: input markup reached the page unescaped");
    }
});
