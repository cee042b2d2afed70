//! The web UI against a running engine: HTTP-level checks of access control
//! (host names, origins, CSRF tokens bound to a browser, proxies, roles
//! before bodies), bounded streams, exact log resumption, bad input, the API
//! and metrics; and a real headless Chromium that loads the pipeline,
//! follows a job link, watches a log line arrive live, presses Rebuild and
//! lands on the new job. Screenshots go to `target/web-screenshots/`.

mod browser;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request, StatusCode};
use deployer_core::cache::{BuildCache, Builder};
use deployer_core::job::JobStatus;
use deployer_core::{Config, Context, Current, Engine, Error, Job, Level, Pool};
use deployer_web::{ClientHeader, Limits, LocalAdmin, Login, Role, Site, User};
use http_body_util::BodyExt;
use tokio::sync::Notify;
use tower::ServiceExt;

/// A build that logs a first line, waits for the test, logs a coloured
/// second line, and succeeds.
struct SlowBuild {
    go: Arc<Notify>,
    level: Level,
    pool: Option<Pool>,
}

#[async_trait]
impl Builder for SlowBuild {
    const ID: &'static str = "slow-build";
    type Key = String;
    type Value = String;
    fn level(&self, _: &String) -> Level {
        self.level
    }
    fn pool(&self) -> Option<Pool> {
        self.pool.clone()
    }
    fn describe(&self, key: &String) -> Option<String> {
        Some(format!("slow build of {key}"))
    }
    async fn build(&self, job: &Job, key: &String) -> Result<String, Error> {
        job.log(&format!("building {key}: first line"));
        tokio::select! {
            _ = self.go.notified() => {}
            reason = job.cancelled() => return Err(Error::msg(format!("stopped: {reason}"))),
        }
        job.log("\x1b[32mLIVE second line\x1b[0m <not a tag>");
        Ok(format!("built {key}"))
    }
}

struct Setup {
    ctx: Context,
    engine: Arc<Engine<String>>,
    go: Arc<Notify>,
    _run: tokio::task::JoinHandle<()>,
}

fn state_dir(name: &str) -> PathBuf {
    let base = std::env::var_os("DEPLOYER_TEST_WORK").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("web-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn setup(name: &str) -> Setup {
    setup_with(name, Level::Harmless, None, None)
}

fn setup_with(name: &str, level: Level, confirm: Option<Level>, pool: Option<Pool>) -> Setup {
    let ctx = Context::open(&state_dir(name), Config::new(confirm)).unwrap();
    let go = Arc::new(Notify::new());
    let cache = BuildCache::new(&ctx, SlowBuild { go: go.clone(), level, pool });
    let built = cache.get("slow-build", Current::constant_labelled("repo", "app".to_owned()));
    let deployed = built.map(|v| format!("deployed {v}"));
    let engine = Arc::new(Engine::new(deployed));
    let e = engine.clone();
    let run = tokio::spawn(async move { e.run().await });
    Setup { ctx, engine, go, _run: run }
}

/// The site of most tests: without login, the old loopback rule (each
/// test of another rule builds its own site).
fn site(s: &Setup) -> Site {
    Site::new("d", s.engine.handle(), s.ctx.clone()).local_admin(LocalAdmin::Loopback)
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    /// The CSRF cookie the reply sets, if any.
    fn cookie(&self) -> Option<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| v.strip_prefix("deployer-csrf="))
            .map(|v| v.split(';').next().unwrap().to_owned())
    }

    /// The CSRF token in the page's forms, if any.
    fn token(&self) -> Option<String> {
        let at = self.body.find("name=\"csrf\" value=\"")? + 19;
        Some(self.body[at..at + 64].to_owned())
    }
}

/// Sends `req` from client `from`, with `Host: localhost` unless it has one.
async fn send(app: &axum::Router, mut req: Request<Body>, from: &str) -> Reply {
    req.extensions_mut().insert(ConnectInfo(from.parse::<SocketAddr>().unwrap()));
    if !req.headers().contains_key("host") {
        req.headers_mut().insert("host", "localhost:8080".parse().unwrap());
    }
    let resp = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    Reply { status: parts.status, headers: parts.headers, body: String::from_utf8_lossy(&bytes).into_owned() }
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn with(mut req: Request<Body>, headers: &[(&'static str, &str)]) -> Request<Body> {
    for (k, v) in headers {
        req.headers_mut().insert(*k, v.parse().unwrap());
    }
    req
}

fn post(uri: &str, form: &str) -> Request<Body> {
    Request::post(uri)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(form.to_owned()))
        .unwrap()
}

/// A form POST from the browser holding `cookie`.
fn post_from(uri: &str, form: &str, cookie: &str) -> Request<Body> {
    with(post(uri, form), &[("cookie", &format!("deployer-csrf={cookie}"))])
}

async fn wait_for_job(ctx: &Context) -> String {
    for _ in 0..500 {
        if let Some(j) = ctx.jobs.active().first() {
            return j.id.clone();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no job started");
}

async fn wait_status(ctx: &Context, job: &str, status: JobStatus) {
    let job = ctx.jobs.get(job).expect("active job");
    let mut rx = job.subscribe_status();
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|s| *s == status))
        .await
        .expect("the job reached the status")
        .unwrap();
}

const LOCAL: &str = "127.0.0.1:40000";
const REMOTE: &str = "203.0.113.7:40000";

/// A browser on this machine: its cookie and the token its pages carry.
async fn local_browser(app: &axum::Router, page: &str) -> (String, String) {
    let reply = send(app, get(page), LOCAL).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    (reply.cookie().expect("a CSRF cookie for a client that may act"), reply.token().expect("a token"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_host_name_is_refused_dns_rebinding() {
    let s = setup("host");
    let app = site(&s).allow_host("deployer.example.org").router();
    // A page on evil.example whose name now resolves to 127.0.0.1.
    let evil = send(&app, with(get("/"), &[("host", "evil.example:8080")]), LOCAL).await;
    assert_eq!(evil.status, StatusCode::MISDIRECTED_REQUEST);
    assert!(evil.token().is_none() && evil.cookie().is_none(), "nothing for the rebinding page");
    let (cookie, token) = local_browser(&app, "/").await;
    let form = format!("csrf={token}&level=dangerous");
    let req = with(post_from("/set/confirm", &form, &cookie), &[("host", "evil.example:8080")]);
    assert_eq!(send(&app, req, LOCAL).await.status, StatusCode::MISDIRECTED_REQUEST);
    assert_eq!(s.ctx.config().confirm(), None, "nothing changed");
    // The names it answers to.
    for host in ["localhost", "127.0.0.1:8080", "[::1]:8080", "deployer.example.org", "Deployer.Example.org:443"] {
        assert_eq!(send(&app, with(get("/"), &[("host", host)]), REMOTE).await.status, StatusCode::OK, "{host}");
    }
    let no_host = Request::get("/").body(Body::empty()).unwrap();
    let mut no_host = no_host;
    no_host.extensions_mut().insert(ConnectInfo(LOCAL.parse::<SocketAddr>().unwrap()));
    let reply = app.clone().oneshot(no_host).await.unwrap();
    assert_eq!(reply.status(), StatusCode::MISDIRECTED_REQUEST, "a request without Host");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_site_post_is_refused_even_with_a_valid_token() {
    let s = setup("origin");
    let app = site(&s).router();
    let (cookie, token) = local_browser(&app, "/").await;
    let form = format!("csrf={token}&level=dangerous");
    for headers in [
        vec![("origin", "http://evil.example")],
        vec![("origin", "null")],
        vec![("sec-fetch-site", "cross-site")],
        vec![("sec-fetch-site", "same-site"), ("origin", "http://sub.localhost:8080")],
    ] {
        let reply = send(&app, with(post_from("/set/confirm", &form, &cookie), &headers), LOCAL).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{headers:?}: {}", reply.body);
        assert_eq!(s.ctx.config().confirm(), None, "{headers:?}: nothing changed");
    }
    // The same form from the site's own page goes through.
    let same = [("origin", "http://localhost:8080"), ("sec-fetch-site", "same-origin")];
    let reply = send(&app, with(post_from("/set/confirm", &form, &cookie), &same), LOCAL).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(s.ctx.config().confirm(), Some(Level::Dangerous));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csrf_tokens_are_bound_to_the_browser() {
    let s = setup("csrf");
    let app = site(&s).router();
    let (cookie_a, token_a) = local_browser(&app, "/").await;
    let (cookie_b, token_b) = local_browser(&app, "/").await;
    assert_ne!(cookie_a, cookie_b, "each browser gets its own random cookie");
    assert_ne!(token_a, token_b, "and its own token (no process-wide constant)");
    // A browser that already has a cookie keeps it and its token.
    let again = send(&app, with(get("/"), &[("cookie", &format!("deployer-csrf={cookie_a}"))]), LOCAL).await;
    assert!(again.cookie().is_none());
    assert_eq!(again.token().as_deref(), Some(token_a.as_str()));
    // Another browser's token, no cookie, no token: refused.
    let form = |t: &str| format!("csrf={t}&level=average");
    for req in [
        post_from("/set/confirm", &form(&token_a), &cookie_b),
        post("/set/confirm", &form(&token_a)),
        post_from("/set/confirm", "level=average", &cookie_a),
    ] {
        assert_eq!(send(&app, req, LOCAL).await.status, StatusCode::FORBIDDEN);
    }
    assert_eq!(s.ctx.config().confirm(), None);
    let cookie_header = again.headers.get("set-cookie");
    assert!(cookie_header.is_none());
    let first = send(&app, get("/jobs"), LOCAL).await;
    let set = first.headers["set-cookie"].to_str().unwrap();
    assert!(set.contains("SameSite=Strict") && set.contains("HttpOnly"), "{set}");
    let reply = send(&app, post_from("/set/confirm", &form(&token_a), &cookie_a), LOCAL).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_clients_that_may_act_get_a_token() {
    let s = setup("token");
    let app = site(&s).router();
    let job = wait_for_job(&s.ctx).await;
    for page in ["/", "/query", &format!("/job/{job}"), "/jobs"] {
        let remote = send(&app, get(page), REMOTE).await;
        assert_eq!(remote.status, StatusCode::OK, "{page}");
        assert!(remote.token().is_none(), "{page}: a remote viewer got a token");
        assert!(remote.cookie().is_none(), "{page}: a remote viewer got a cookie");
        assert!(!remote.body.contains("method=\"post\""), "{page}: a remote viewer got a form");
    }
    for page in ["/", "/query", &format!("/job/{job}")] {
        assert!(send(&app, get(page), LOCAL).await.token().is_some(), "{page}: the local admin gets a token");
    }
    s.go.notify_one();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_headers_make_a_request_remote_unless_the_proxy_is_trusted() {
    let s = setup("proxy");
    let app = site(&s).router();
    let (cookie, token) = local_browser(&app, "/").await;
    for (name, value) in [
        ("x-forwarded-for", "203.0.113.9"),
        ("forwarded", "for=203.0.113.9;proto=https"),
        ("x-real-ip", "203.0.113.9"),
        ("x-forwarded-host", "deployer.example.org"),
    ] {
        let page = send(&app, with(get("/"), &[(name, value)]), LOCAL).await;
        assert!(page.token().is_none(), "{name}: proxied requests are remote");
        let req = with(post_from("/set/confirm", &format!("csrf={token}&level=average"), &cookie), &[(name, value)]);
        assert_eq!(send(&app, req, LOCAL).await.status, StatusCode::FORBIDDEN, "{name}");
    }
    assert_eq!(s.ctx.config().confirm(), None);
    // With the proxy named, the client it forwards decides.
    let app = site(&s).trust_proxy("127.0.0.1".parse().unwrap(), ClientHeader::XForwardedFor).router();
    let via = |client: &str| with(get("/"), &[("x-forwarded-for", client)]);
    assert!(send(&app, via("203.0.113.9"), LOCAL).await.token().is_none());
    assert!(send(&app, via("127.0.0.1"), LOCAL).await.token().is_some());
    // A request the proxy did not forward is not believed to be local.
    assert!(send(&app, get("/"), LOCAL).await.token().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_post_is_refused_before_its_body_is_read() {
    let s = setup("body");
    let app = site(&s).router();
    let polled = Arc::new(AtomicBool::new(false));
    let p = polled.clone();
    // A 2 MB body that notes when the server starts reading it.
    let stream = futures_util::stream::once(async move {
        p.store(true, Ordering::SeqCst);
        Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![b'a'; 2 << 20]))
    });
    let req = Request::post("/set/confirm")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from_stream(stream))
        .unwrap();
    assert_eq!(send(&app, req, REMOTE).await.status, StatusCode::FORBIDDEN);
    assert!(!polled.load(Ordering::SeqCst), "the body of a refused request was read");
    // From a client that may act, a body over the form limit is refused.
    let (cookie, token) = local_browser(&app, "/").await;
    let big = format!("csrf={token}&level=average&pad={}", "x".repeat(100 * 1024));
    assert_eq!(send(&app, post_from("/set/confirm", &big, &cookie), LOCAL).await.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(s.ctx.config().confirm(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_selected_redirects_and_notices_are_fixed_texts() {
    let s = setup("selected");
    let app = site(&s).router();
    let job = wait_for_job(&s.ctx).await;
    s.go.notify_one();
    let row = async {
        loop {
            if s.ctx.store.by_job(&job).await.unwrap().is_some() && s.ctx.jobs.get(&job).is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), row).await.expect("the build was recorded");
    let today = &job[..10];
    let page = send(&app, get(&format!("/query?date={today}&result=passed")), LOCAL).await;
    assert!(page.body.contains(&format!("name=\"job\" value=\"{job}\"")), "{}", page.body);
    assert!(page.body.contains("slow build of app"), "the history says what each job did");
    let (cookie, token) = (page.cookie().unwrap(), page.token().unwrap());
    let form = format!("csrf={token}&job={}&job=2026-01-01%2F000000-gone-abc", job.replace('/', "%2F"));
    let reply = send(&app, post_from("/query", &form, &cookie), LOCAL).await;
    // 303: reloading the page that follows does not rebuild again.
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    let location = reply.headers["location"].to_str().unwrap().to_owned();
    assert_eq!(location, "/query?rebuilt=1&not_rebuilt=1");
    let page = send(&app, get(&location), LOCAL).await;
    assert!(page.body.contains("Rebuilding 1 job(s). 1 could not be rebuilt"), "{}", page.body);
    // A link cannot put words on a page.
    let attack =
        send(&app, get(&format!("/job/{job}?notice=Your+session+expired.+Log+in+at+evil.example")), REMOTE).await;
    assert_eq!(attack.status, StatusCode::BAD_REQUEST);
    assert!(!attack.body.contains("evil.example"), "{}", attack.body);
    let ok = send(&app, get(&format!("/job/{job}?notice=rebuild-requested")), REMOTE).await;
    assert!(ok.body.contains("Rebuild requested."));
    s.go.notify_one();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_api_and_bad_input() {
    let s = setup("http");
    let app = Site::new("test deployer", s.engine.handle(), s.ctx.clone()).local_admin(LocalAdmin::Loopback).router();
    let job = wait_for_job(&s.ctx).await;

    let reply = send(&app, get("/"), REMOTE).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["x-frame-options"], "DENY");
    assert!(reply.headers["content-security-policy"].to_str().unwrap().contains("frame-ancestors 'none'"));
    assert!(reply.body.contains("<svg") && reply.body.contains(&format!("href=\"/job/{job}\"")), "{}", reply.body);
    assert!(reply.body.contains("Running…"));
    // No HTML page is cached; the static files are.
    for page in ["/", "/jobs", "/query", &format!("/job/{job}"), "/no/such/page", "/query?result=maybe"] {
        let r = send(&app, get(page), REMOTE).await;
        assert_eq!(r.headers["cache-control"], "no-store", "{page}");
    }
    assert_eq!(send(&app, get("/static/style.css"), REMOTE).await.headers["cache-control"], "max-age=86400");

    // Unknown jobs, bad ids, bad parameters.
    assert_eq!(send(&app, get("/job/2026-01-01/000000-nothing-abc"), LOCAL).await.status, StatusCode::NOT_FOUND);
    assert_eq!(send(&app, get("/job/2026-01-01/..%2Fdb.sqlite"), LOCAL).await.status, StatusCode::BAD_REQUEST);
    for (uri, says) in [
        ("/query?result=maybe", "result must be"),
        ("/query?date=2026-1-1", "date must look like 2026-11-24"),
        ("/query?colour=red", "colour"),
        ("/query?prefix=%zz", "malformed percent-encoding"),
        ("/api/history?after=yesterday", "after must be"),
        (&format!("/api/job/{job}/log?offset=%zz"), "malformed percent-encoding"),
        (&format!("/api/job/{job}/log?offset=-1"), "offset"),
    ] {
        let r = send(&app, get(uri), LOCAL).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{uri}");
        assert!(r.body.contains(says), "{uri}: {}", r.body);
    }
    let r = send(&app, get(&format!("/api/job/{job}/log?offset=999999999")), LOCAL).await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE, "{}", r.body);
    assert!(r.headers["content-range"].to_str().unwrap().starts_with("bytes */"));

    // The job page, as a local admin and as a remote viewer.
    let page = send(&app, get(&format!("/job/{job}")), LOCAL).await;
    assert!(page.body.contains("id=\"cancel\""), "a running job can be cancelled locally");
    assert!(page.body.contains("slow build of app"), "the page says what the job does");
    assert!(!send(&app, get(&format!("/job/{job}")), REMOTE).await.body.contains("id=\"cancel\""));
    let (cookie, token) = (page.cookie().unwrap(), page.token().unwrap());
    assert_eq!(
        send(&app, post_from(&format!("/job/{job}/explode"), &format!("csrf={token}"), &cookie), LOCAL).await.status,
        StatusCode::NOT_FOUND
    );

    // The API.
    let r = send(&app, get("/api/jobs"), REMOTE).await;
    assert_eq!(r.headers["content-type"], "application/json");
    assert!(r.body.contains(&job) && r.body.contains("\"description\":\"slow build of app\""), "{}", r.body);
    let stats: serde_json::Value = serde_json::from_str(&send(&app, get("/api/stats"), REMOTE).await.body).unwrap();
    assert_eq!(stats["stats"]["running"], 1);
    assert!(send(&app, get("/api/pipeline"), REMOTE).await.body.contains("\"label\":\"slow-build\""));
    let r = send(&app, get(&format!("/api/job/{job}/log")), REMOTE).await;
    assert!(r.body.contains("first line"));
    let next: u64 = r.headers["x-log-next"].to_str().unwrap().parse().unwrap();
    let r = send(&app, get(&format!("/api/job/{job}/log?offset={next}")), REMOTE).await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, ""), "the end of the log is not past it");

    // Cancel it for real; the history shows it once recorded.
    let reply = send(&app, post_from(&format!("/job/{job}/cancel"), &format!("csrf={token}"), &cookie), LOCAL).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    let row = async {
        loop {
            if let Some(row) = s.ctx.store.by_job(&job).await.unwrap() {
                return row;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let row = tokio::time::timeout(Duration::from_secs(10), row).await.expect("the cancelled build is recorded");
    assert_eq!(row.outcome, "Cancelled");
    assert!(send(&app, get("/query?op=slow-build&result=failed"), REMOTE).await.body.contains(&job));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_openmetrics_with_escaped_labels_and_latency_histograms() {
    let s = setup_with("metrics", Level::Harmless, None, Some(Pool::new("we\"ird\\pool\nname", 1)));
    let app = site(&s).router();
    let job = wait_for_job(&s.ctx).await;
    wait_status(&s.ctx, &job, JobStatus::Running).await;
    send(&app, get("/"), REMOTE).await;
    let r = send(&app, get("/metrics"), REMOTE).await;
    assert!(r.headers["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    let m = r.body;
    assert!(m.contains("deployer_pipeline_stages{state=\"running\"} 1"), "{m}");
    assert!(m.contains("deployer_jobs{state=\"running\"} 1"), "{m}");
    assert!(m.contains(r#"deployer_pool_in_use{pool="we\"ird\\pool\nname"} 1"#), "label values are escaped: {m}");
    assert!(m.contains("deployer_http_request_duration_seconds_bucket{"), "a latency histogram: {m}");
    assert!(m.contains("route=\"/\""), "{m}");
    assert!(m.trim_end().ends_with("# EOF"), "{m}");
    s.go.notify_one();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_starts_a_waiting_job_and_plugins_mount_routes() {
    let s = setup_with("start", Level::Dangerous, Some(Level::Dangerous), None);
    let hook = axum::Router::new().route("/webhooks/test", axum::routing::post(|| async { "hook ran" }));
    let app = site(&s).mount(hook).nav_link("Webhooks", "/webhooks/test").router();
    let job = wait_for_job(&s.ctx).await;
    let page = send(&app, get(&format!("/job/{job}")), LOCAL).await;
    assert!(page.body.contains("waiting for confirmation") && page.body.contains("id=\"start\""), "{}", page.body);
    assert!(page.body.contains("href=\"/webhooks/test\""), "the plugin's nav link is shown");
    let (cookie, token) = (page.cookie().unwrap(), page.token().unwrap());
    let start = format!("/job/{job}/start");
    let reply = send(&app, post_from(&start, &format!("csrf={token}"), &cookie), LOCAL).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    wait_status(&s.ctx, &job, JobStatus::Running).await;
    // Starting it again: it is not waiting any more.
    let reply = send(&app, post_from(&start, &format!("csrf={token}"), &cookie), LOCAL).await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert!(reply.body.contains("not waiting for confirmation"));
    // The mounted route answers, with the site's headers and host check.
    let reply = send(&app, post("/webhooks/test", ""), REMOTE).await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "hook ran"));
    assert_eq!(reply.headers["x-frame-options"], "DENY");
    let evil = with(post("/webhooks/test", ""), &[("host", "evil.example")]);
    assert_eq!(send(&app, evil, REMOTE).await.status, StatusCode::MISDIRECTED_REQUEST);
    s.go.notify_one();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_pages_and_actions_are_guarded_like_the_sites_own() {
    use deployer_web::{Page, Refused};
    let s = setup("extension");
    let acted: Arc<std::sync::Mutex<Vec<(String, String)>>> = Arc::default();
    let app =
        site(&s)
            .login(HeaderLogin)
            .page("/things/{name}", |r| async move {
                let name = r.param("name").unwrap_or_default().to_owned();
                if name == "missing" {
                    return Err(Refused::NotFound("There is no such thing.".into()));
                }
                let form = if r.who.can(Role::Builder) {
                    format!(
                        r#"<form method="post" action="/things/{name}/poke">{}<button>Poke</button></form>"#,
                        r.csrf_input()
                    )
                } else {
                    String::new()
                };
                Ok(Page {
                    title: format!("Thing {name}"),
                    body: format!("<h1>{}</h1>{form}", deployer_web::html::escape(&name)),
                })
            })
            .action("/things/{name}/poke", Role::Builder, {
                let acted = acted.clone();
                move |r| {
                    let acted = acted.clone();
                    async move {
                        let who = r.who.user.as_ref().map(|u| u.id.clone()).unwrap_or_default();
                        acted.lock().unwrap().push((r.param("name").unwrap_or_default().to_owned(), who));
                        Ok("/things/done?notice=poked".to_owned())
                    }
                }
            })
            .action("/things/{name}/away", Role::Builder, |r| async move {
                Ok(r.field("to").unwrap_or_default().to_owned())
            })
            .router();
    // A viewer sees the page in the site's layout, and no form.
    let page = send(&app, get("/things/a%3Cb"), REMOTE).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("<h1>a&lt;b</h1>") && !page.body.contains("<title>Thing a<b"));
    assert!(page.body.contains("href=\"/jobs\"") && !page.body.contains("<form"), "{}", page.body);
    assert_eq!(page.headers["cache-control"], "no-store");
    assert_eq!(send(&app, get("/things/missing"), REMOTE).await.status, StatusCode::NOT_FOUND);
    // A viewer's POST: refused before the body is read; nothing done.
    assert_eq!(send(&app, post("/things/a/poke", "csrf=x"), REMOTE).await.status, StatusCode::FORBIDDEN);
    // A builder gets the form and its token; without the token: refused.
    let alice = [("x-user", "github:alice")];
    let page = send(&app, with(get("/things/a"), &alice), REMOTE).await;
    assert!(page.body.contains("<form"), "{}", page.body);
    let (cookie, token) = (page.cookie().unwrap(), page.token().unwrap());
    let no_token = with(post_from("/things/a/poke", "", &cookie), &alice);
    assert_eq!(send(&app, no_token, REMOTE).await.status, StatusCode::FORBIDDEN);
    // Cross-site, even with the token: refused.
    let cross = with(
        post_from("/things/a/poke", &format!("csrf={token}"), &cookie),
        &[("x-user", "github:alice"), ("origin", "https://evil.example")],
    );
    assert_eq!(send(&app, cross, REMOTE).await.status, StatusCode::FORBIDDEN);
    assert!(acted.lock().unwrap().is_empty(), "nothing was done by a refused request");
    // With it: done once, by alice, and redirected (303).
    let ok = with(post_from("/things/a/poke", &format!("csrf={token}"), &cookie), &alice);
    let reply = send(&app, ok, REMOTE).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(reply.headers["location"], "/things/done?notice=poked");
    assert_eq!(*acted.lock().unwrap(), [("a".to_owned(), "github:alice".to_owned())]);
    // An action may not send the browser to another site.
    // `/%09/evil.example/` is "/\t/evil.example/": browsers drop the tab.
    for to in
        ["//evil.example/x", "/%5Cevil.example", "https://evil.example/", "/%09/evil.example/", "/%0A/evil.example"]
    {
        let req = with(post_from("/things/a/away", &format!("csrf={token}&to={to}"), &cookie), &alice);
        let reply = send(&app, req, REMOTE).await;
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR, "{to}");
        assert!(!reply.headers.contains_key("location"), "{to}");
    }
    s.go.notify_one();
}

struct HeaderLogin;

impl Login for HeaderLogin {
    fn user(&self, headers: &HeaderMap) -> Option<User> {
        let id = headers.get("x-user")?.to_str().ok()?;
        Some(User { id: id.to_owned(), name: id.to_owned(), role: Role::Builder })
    }
    fn login_url(&self) -> String {
        "/login".into()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_login_anonymous_users_only_view() {
    let s = setup("login");
    let app = site(&s).login(HeaderLogin).router();
    let job = wait_for_job(&s.ctx).await;
    let page = send(&app, get(&format!("/job/{job}")), LOCAL).await;
    assert!(!page.body.contains("id=\"cancel\""), "anonymous, even on loopback: view only");
    assert!(page.body.contains("href=\"/login\""));
    let page = send(&app, with(get(&format!("/job/{job}")), &[("x-user", "github:alice")]), REMOTE).await;
    assert!(page.body.contains("id=\"cancel\"") && page.body.contains("github:alice"));
    let (cookie, token) = (page.cookie().unwrap(), page.token().unwrap());
    // A builder may not change the confirmation level.
    let req = with(
        post_from("/set/confirm", &format!("csrf={token}&level=dangerous"), &cookie),
        &[("x-user", "github:alice")],
    );
    assert_eq!(send(&app, req, REMOTE).await.status, StatusCode::FORBIDDEN);
    // Another user with alice's browser token: refused.
    let req =
        with(post_from(&format!("/job/{job}/cancel"), &format!("csrf={token}"), &cookie), &[("x-user", "github:bob")]);
    assert_eq!(send(&app, req, REMOTE).await.status, StatusCode::FORBIDDEN);
    s.go.notify_one();
}

/// Parses server-sent events into (id, data) pairs (the `end` event has no id).
fn events(body: &str) -> Vec<(Option<String>, String, String)> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty() && !e.starts_with(':'))
        .map(|e| {
            let (mut id, mut kind, mut data) = (None, String::new(), Vec::new());
            for line in e.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("event: ") {
                    kind = v.to_owned();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push(v.to_owned());
                }
            }
            (id, kind, data.join("\n"))
        })
        .collect()
}

/// The log text an event stream shows: numbered lines start a new line,
/// continuation pieces extend the last; tags dropped, entities decoded.
/// Also returns the line numbers shown.
fn shown_text(html: &str) -> (String, Vec<u64>) {
    let (mut text, mut numbers) = (String::new(), Vec::new());
    let mut rest = html;
    while let Some(at) = rest.find("<span class=\"line") {
        rest = &rest[at..];
        let end = rest.find('>').unwrap();
        let open = &rest[..end];
        rest = &rest[end + 1..];
        if let Some(id) = open.strip_prefix("<span class=\"line\" id=\"L") {
            numbers.push(id.trim_end_matches('"').parse().unwrap());
            if !text.is_empty() {
                text.push('\n');
            }
            // Skip the number's anchor.
            let a = rest.find("</a>").unwrap();
            rest = &rest[a + 4..];
        }
        // The body runs to the line's closing tag: count nested spans.
        let (mut depth, mut i) = (1, 0);
        while depth > 0 {
            let next_open = rest[i..].find("<span").map(|p| p + i);
            let next_close = rest[i..].find("</span>").map(|p| p + i).unwrap();
            match next_open {
                Some(o) if o < next_close => {
                    depth += 1;
                    i = o + 5;
                }
                _ => {
                    depth -= 1;
                    i = next_close + 7;
                }
            }
        }
        let body = &rest[..i - 7];
        let mut plain = String::new();
        let mut in_tag = false;
        for c in body.chars() {
            match c {
                '<' => in_tag = true,
                '>' => in_tag = false,
                c if !in_tag => plain.push(c),
                _ => {}
            }
        }
        text.push_str(
            &plain
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&#39;", "'")
                .replace("&amp;", "&"),
        );
        rest = &rest[i..];
    }
    (text, numbers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_resumed_at_any_of_its_own_event_ids_continues_byte_for_byte() {
    let s = setup("resume");
    let app = site(&s).router();
    let job = s.ctx.jobs.create("raw-log", "raw log").unwrap();
    // Lines of many lengths, colours and a window title (not log text),
    // and one line longer than a chunk: several chunk boundaries fall
    // inside lines and inside escape codes.
    let mut log = Vec::new();
    let mut expected = Vec::new();
    for i in 0..3000 {
        let line = match i % 7 {
            0 => format!("\x1b[1;31mred {i}\x1b[0m <b>&amp;"),
            3 => format!("\x1b]0;title {i}\x07plain {i} {}", "x".repeat(i % 90)),
            _ => format!("line {i} {}", "y".repeat((i * 37) % 120)),
        };
        let shown = match i % 7 {
            0 => format!("red {i} <b>&amp;"),
            3 => format!("plain {i} {}", "x".repeat(i % 90)),
            _ => line.clone(),
        };
        log.extend_from_slice(line.as_bytes());
        log.push(b'\n');
        expected.push(shown);
        if i == 1500 {
            let long = "z".repeat(200_000);
            log.extend_from_slice(long.as_bytes());
            log.push(b'\n');
            expected.push(long);
        }
    }
    std::fs::write(job.log_path(), &log).unwrap();
    job.finish();
    let expected = expected.join("\n");
    let uri = format!("/job/{}/events", job.id());
    let whole = events(&send(&app, get(&uri), REMOTE).await.body);
    assert_eq!(whole.last().map(|e| e.1.as_str()), Some("end"));
    let log_events: Vec<_> = whole.iter().filter(|e| e.1 == "log").collect();
    assert!(log_events.len() > 5, "several chunks: {}", log_events.len());
    let all_html: String = log_events.iter().map(|e| e.2.as_str()).collect();
    let (text, numbers) = shown_text(&all_html);
    assert_eq!(text, expected, "the stream shows the log exactly");
    assert_eq!(numbers, (1..=expected.lines().count() as u64).collect::<Vec<_>>());
    // Reconnect after every event with the server's own id.
    for k in 0..log_events.len() - 1 {
        let id = log_events[k].0.clone().expect("log events have ids");
        let req = with(get(&uri), &[("last-event-id", &id)]);
        let rest = events(&send(&app, req, REMOTE).await.body);
        let html: String = log_events[..=k]
            .iter()
            .map(|e| e.2.clone())
            .chain(rest.iter().filter(|e| e.1 == "log").map(|e| e.2.clone()))
            .collect();
        let (text, numbers) = shown_text(&html);
        assert_eq!(text, expected, "resumed after event {k} (id {id})");
        assert_eq!(numbers, (1..=expected.lines().count() as u64).collect::<Vec<_>>(), "line numbers after event {k}");
    }
}

/// Issue 23: the job page holds the log so far (readable without
/// JavaScript, no "End of log." above an empty log), and its live stream
/// resumes right after it: page + stream is the log exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_page_holds_the_log_so_far_and_the_stream_continues_it() {
    let s = setup("page-log");
    let app = site(&s).router();
    let page_of = |body: &str| -> (String, String, String) {
        let start = body.find("<pre id=\"log\"").expect("the log element");
        let events = body[start..].split("data-events=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
        let open = start + body[start..].find('>').unwrap() + 1;
        let close = open + body[open..].find("</pre>").unwrap();
        let end = body.split("id=\"log-end\" class=\"log-end\">").nth(1).unwrap().split('<').next().unwrap().to_owned();
        (body[open..close].to_owned(), events, end)
    };
    // A short finished log: all of it in the page.
    let short = s.ctx.jobs.create("short", "short").unwrap();
    std::fs::write(short.log_path(), "one <b>\ntwo\n").unwrap();
    short.finish();
    let body = send(&app, get(&format!("/job/{}", short.id())), REMOTE).await.body;
    let (html, events_uri, end) = page_of(&body);
    assert_eq!(shown_text(&html), ("one <b>\ntwo".to_owned(), vec![1, 2]));
    assert_eq!(end, "End of log.");
    let rest = events(&send(&app, get(&events_uri), REMOTE).await.body);
    assert!(rest.iter().all(|e| e.1 != "log"), "nothing is sent twice: {rest:?}");
    // 2.5 MB: the page holds the first MiB, the stream the rest.
    let long = s.ctx.jobs.create("long", "long").unwrap();
    let lines: Vec<String> = (0..30_000).map(|i| format!("line {i} {}", "x".repeat(i % 150))).collect();
    std::fs::write(long.log_path(), format!("{}\n", lines.join("\n"))).unwrap();
    long.finish();
    let body = send(&app, get(&format!("/job/{}", long.id())), REMOTE).await.body;
    let (html, events_uri, end) = page_of(&body);
    assert_ne!(end, "End of log.");
    assert!(html.len() > 500_000 && body.contains("This page shows the log so far"), "{}", html.len());
    let rest = events(&send(&app, get(&events_uri), REMOTE).await.body);
    let streamed: String = rest.iter().filter(|e| e.1 == "log").map(|e| e.2.as_str()).collect();
    let (text, numbers) = shown_text(&format!("{html}{streamed}"));
    assert_eq!(text, lines.join("\n"));
    assert_eq!(numbers, (1..=30_000).collect::<Vec<u64>>());
    // A running job: its lines so far, and "Streaming…".
    let running = s.ctx.jobs.create("running", "running").unwrap();
    std::fs::write(running.log_path(), "started\n").unwrap();
    let body = send(&app, get(&format!("/job/{}", running.id())), REMOTE).await.body;
    let (html, _, end) = page_of(&body);
    assert_eq!(shown_text(&html).0, "started");
    assert_eq!(end, "Streaming…");
    running.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_8_mb_line_is_sent_in_pieces() {
    let s = setup("long-line");
    let app = site(&s).router();
    let job = s.ctx.jobs.create("raw-log", "raw log").unwrap();
    let line = "é".repeat(4 << 20); // 8 MB, two bytes a character
    std::fs::write(job.log_path(), format!("{line}\nafter\n")).unwrap();
    job.finish();
    let body = send(&app, get(&format!("/job/{}/events", job.id())), REMOTE).await.body;
    let all = events(&body);
    let biggest = all.iter().map(|e| e.2.len()).max().unwrap();
    assert!(biggest < 4 * 64 * 1024, "an event of {biggest} bytes: the line was not sent in pieces");
    assert!(all.len() > 100, "{} events", all.len());
    let html: String = all.iter().filter(|e| e.1 == "log").map(|e| e.2.as_str()).collect();
    let (text, numbers) = shown_text(&html);
    assert_eq!(numbers, [1, 2]);
    assert!(text == format!("{line}\nafter"), "the pieces make the line, with no character cut");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_log_streams_are_capped() {
    let s = setup("caps");
    let limits = Limits { streams_per_job: 2, streams_per_client: 3, ..Limits::default() };
    let app = site(&s).limits(limits).router();
    let job = wait_for_job(&s.ctx).await;
    let uri = format!("/job/{job}/events");
    let open = |from: &'static str| {
        let app = app.clone();
        let uri = uri.clone();
        async move {
            let mut req = with(get(&uri), &[("host", "localhost")]);
            req.extensions_mut().insert(ConnectInfo(from.parse::<SocketAddr>().unwrap()));
            app.oneshot(req).await.unwrap()
        }
    };
    // The job is running, so these streams stay open while held.
    let a = open(REMOTE).await;
    let b = open(LOCAL).await;
    assert_eq!((a.status(), b.status()), (StatusCode::OK, StatusCode::OK));
    let c = open("198.51.100.1:1").await;
    assert_eq!(c.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(c.headers()["retry-after"], "10");
    drop(a);
    assert_eq!(open("198.51.100.1:1").await.status(), StatusCode::OK, "a closed stream frees its place");
    s.go.notify_one();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_chromium_follow_a_job_watch_its_log_and_rebuild() {
    let s = setup("browser");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let site = Site::new("deployer (test)", s.engine.handle(), s.ctx.clone());
    tokio::spawn(site.serve(listener));
    let first_job = wait_for_job(&s.ctx).await;
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/web-screenshots");
    std::fs::create_dir_all(&shots).unwrap();

    let mut chrome = browser::Chromium::launch().await;
    chrome.size(1280, 800, false).await;
    // No login: the operator logs in with the site's admin token (the
    // default), typed into the form, as a browser would.
    let token = std::fs::read_to_string(s.ctx.state_dir().join("web-admin-token")).unwrap();
    chrome.navigate(&format!("http://{addr}/admin-login")).await;
    chrome.wait_for("document.querySelector('input[name=token]') ? true : null").await;
    chrome
        .eval(&format!(
            "document.querySelector('input[name=token]').value = {:?}; document.querySelector('form').submit()",
            token.trim()
        ))
        .await;
    chrome
        .wait_for("location.pathname === '/' && document.querySelector('.who').textContent.includes('admin') || null")
        .await;
    let href = chrome.wait_for("document.querySelector('svg a[href^=\"/job/\"]')?.getAttribute('href')").await;
    assert_eq!(href, format!("/job/{first_job}"));
    chrome.screenshot(&shots.join("pipeline-laptop.png")).await;

    // Follow the job link by clicking the box.
    chrome
        .eval(
            "document.querySelector('svg a[href^=\"/job/\"]').dispatchEvent(new MouseEvent('click', {bubbles: true}))",
        )
        .await;
    chrome.wait_for(&format!("location.pathname === '/job/{first_job}' || null")).await;
    chrome.wait_for("document.getElementById('log').textContent.includes('first line') || null").await;
    // The build goes on: the next line must arrive without a reload.
    s.go.notify_one();
    let html = chrome
        .wait_for("(t => t.includes('LIVE second line') ? t : null)(document.getElementById('log').innerHTML)")
        .await;
    assert!(html.contains("class=\"fg2\""), "the ANSI colour is rendered: {html}");
    assert!(html.contains("&lt;not a tag&gt;"), "log text is escaped: {html}");
    assert!(html.contains("id=\"L2\""), "lines have anchors: {html}");
    chrome.wait_for("document.getElementById('log-end').textContent === 'End of log.' || null").await;
    // Reload: the finished job offers Rebuild; pressing it (a real form
    // POST, with the browser's cookie and the page's token, from the site's
    // own origin) opens the new job.
    chrome.navigate(&format!("http://{addr}/job/{first_job}")).await;
    chrome.wait_for("document.getElementById('rebuild') ? true : null").await;
    chrome.screenshot(&shots.join("job-laptop.png")).await;
    chrome.eval("document.getElementById('rebuild').click()").await;
    let path = chrome.wait_for(&format!("location.pathname !== '/job/{first_job}' ? location.pathname : null")).await;
    let new_job = path.strip_prefix("/job/").expect("a job page");
    assert_ne!(new_job, first_job);
    assert!(s.ctx.jobs.get(new_job).is_some(), "the new job is running");
    chrome.wait_for("document.getElementById('log').textContent.includes('first line') || null").await;
    chrome.navigate(&format!("http://{addr}/query")).await;
    chrome.wait_for(&format!("document.body.textContent.includes('{first_job}') || null")).await;
    chrome.screenshot(&shots.join("history-laptop.png")).await;

    // Phone width.
    chrome.size(390, 844, true).await;
    chrome.navigate(&format!("http://{addr}/job/{new_job}")).await;
    chrome.wait_for("document.getElementById('log').textContent.includes('first line') || null").await;
    chrome.screenshot(&shots.join("job-phone.png")).await;
    chrome.navigate(&format!("http://{addr}/")).await;
    chrome.wait_for("document.querySelector('svg') ? true : null").await;
    chrome.screenshot(&shots.join("pipeline-phone.png")).await;
    let overflow = chrome.eval("document.documentElement.scrollWidth <= window.innerWidth + 1").await;
    assert_eq!(overflow, "true", "the page fits a phone's width (the diagram scrolls inside its frame)");
    s.go.notify_one();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_no_headers_is_closed() {
    use tokio::io::AsyncReadExt;
    let s = setup("header-timeout");
    let limits = Limits { header_read: Duration::from_millis(500), ..Limits::default() };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(site(&s).limits(limits).serve(listener));
    // Half a request line, then nothing: the server hangs up.
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut conn, b"GET / HT").await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection was still open after 10 s");
    s.go.notify_one();
}

/// Security issue 2: with no login, a plain `proxy_pass` from this machine
/// (loopback peer, no forwarding header, `Host: 127.0.0.1:8080`) used to
/// make every client of the proxy an admin. Now only the admin token acts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_login_a_plain_proxy_pass_gets_no_admin_only_the_token_does() {
    let s = setup("admin-token");
    let app = Site::new("d", s.engine.handle(), s.ctx.clone()).router();
    let token = std::fs::read_to_string(s.ctx.state_dir().join("web-admin-token")).unwrap().trim().to_owned();
    let host = [("host", "127.0.0.1:8080")];
    // The proxied GET: no CSRF cookie, no token, no forms.
    let page = send(&app, with(get("/"), &host), LOCAL).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.token().is_none() && page.cookie().is_none(), "a proxied client got a token");
    assert!(page.body.contains("href=\"/admin-login\""), "the page offers the token login");
    // curl's POST without Origin or Sec-Fetch-Site.
    let reply = send(&app, with(post("/set/confirm", "level=none"), &host), LOCAL).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(s.ctx.config().confirm(), None);
    // A wrong token is refused; a cross-site login form is refused.
    let wrong = send(&app, with(post("/admin-login", "token=0000"), &host), LOCAL).await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    assert!(!wrong.headers.contains_key("set-cookie"));
    let cross = with(post("/admin-login", &format!("token={token}")), &[("origin", "http://evil.example")]);
    assert_eq!(send(&app, cross, LOCAL).await.status, StatusCode::FORBIDDEN);
    // The right token sets the admin cookie (HttpOnly, SameSite=Strict)...
    let login = send(&app, post("/admin-login", &format!("token={token}")), REMOTE).await;
    assert_eq!(login.status, StatusCode::SEE_OTHER, "{}", login.body);
    let set = login.headers["set-cookie"].to_str().unwrap().to_owned();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
    let admin = set.split(';').next().unwrap().to_owned();
    // ... with which a browser gets a token and acts, from anywhere.
    let page = send(&app, with(get("/"), &[("cookie", &admin)]), REMOTE).await;
    let (csrf_cookie, csrf) = (page.cookie().expect("a CSRF cookie"), page.token().expect("a token"));
    let form = with(
        post("/set/confirm", &format!("csrf={csrf}&level=dangerous")),
        &[("cookie", &format!("{admin}; deployer-csrf={csrf_cookie}"))],
    );
    assert_eq!(send(&app, form, REMOTE).await.status, StatusCode::SEE_OTHER);
    assert_eq!(s.ctx.config().confirm(), Some(Level::Dangerous));
    // Without the CSRF token the cookie alone does nothing.
    let no_csrf = with(post("/set/confirm", "level=average"), &[("cookie", &admin)]);
    assert_eq!(send(&app, no_csrf, REMOTE).await.status, StatusCode::FORBIDDEN);
    // A script sends the token as a bearer header (no CSRF token needed:
    // browsers never add that header by themselves).
    let script = with(post("/set/confirm", "level=harmless"), &[("authorization", &format!("Bearer {token}"))]);
    assert_eq!(send(&app, script, REMOTE).await.status, StatusCode::SEE_OTHER);
    assert_eq!(s.ctx.config().confirm(), Some(Level::Harmless));
    let bad = with(post("/set/confirm", "level=none"), &[("authorization", "Bearer nope")]);
    assert_eq!(send(&app, bad, REMOTE).await.status, StatusCode::FORBIDDEN);
    assert_eq!(s.ctx.config().confirm(), Some(Level::Harmless));
    // A link with the token works too (for a URL the operator prints).
    let link = send(&app, get(&format!("/admin-login?token={token}")), REMOTE).await;
    assert_eq!(link.status, StatusCode::SEE_OTHER);
    s.go.notify_one();
}

/// Security issue 1 over HTTP: behind HAProxy (`option forwardfor` adds a
/// second line) and nginx (sets X-Real-IP, passes the client's
/// X-Forwarded-For through), a client-sent `127.0.0.1` is not believed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_only_its_own_hop_counts() {
    let s = setup("proxy-hops");
    let proxy = "127.0.0.1".parse().unwrap();
    let haproxy = site(&s).trust_proxy(proxy, ClientHeader::XForwardedFor).router();
    let mut req = get("/");
    req.headers_mut().append("x-forwarded-for", "127.0.0.1".parse().unwrap());
    req.headers_mut().append("x-forwarded-for", "203.0.113.9".parse().unwrap());
    assert!(send(&haproxy, req, LOCAL).await.token().is_none(), "the client's own line was believed");
    let nginx = site(&s).trust_proxy(proxy, ClientHeader::XRealIp).router();
    let req = with(get("/"), &[("x-forwarded-for", "127.0.0.1"), ("x-real-ip", "203.0.113.9")]);
    assert!(send(&nginx, req, LOCAL).await.token().is_none(), "X-Forwarded-For was read instead of X-Real-IP");
    let req = with(get("/"), &[("x-real-ip", "127.0.0.1")]);
    assert!(send(&nginx, req, LOCAL).await.token().is_some(), "the proxy's own header is believed");
    s.go.notify_one();
}

/// Security issue 13: behind a trusted proxy, the per-client stream cap
/// is per forwarded client, not one cap shared by every user of the proxy;
/// and resuming a stream reads nothing before the point (the id says it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_caps_are_per_forwarded_client_and_resuming_costs_no_scan() {
    let s = setup("stream-clients");
    let limits = Limits { streams_per_client: 1, ..Limits::default() };
    let app = site(&s).limits(limits).trust_proxy("127.0.0.1".parse().unwrap(), ClientHeader::XRealIp).router();
    let job = wait_for_job(&s.ctx).await;
    let open = |client: &'static str| {
        let app = app.clone();
        let req = with(get(&format!("/job/{job}/events")), &[("x-real-ip", client), ("host", "localhost")]);
        async move {
            let mut r = req;
            r.extensions_mut().insert(ConnectInfo(LOCAL.parse::<SocketAddr>().unwrap()));
            app.oneshot(r).await.unwrap()
        }
    };
    let a = open("198.51.100.1").await;
    assert_eq!(a.status(), StatusCode::OK);
    let b = open("198.51.100.2").await;
    assert_eq!(b.status(), StatusCode::OK, "another user of the same proxy has a place of their own");
    assert_eq!(open("198.51.100.1").await.status(), StatusCode::TOO_MANY_REQUESTS, "the first user's cap");
    drop((a, b));
    // A finished job with a 30 MB log: a made-up id far past its end starts
    // from the top, and the top is what is sent (nothing was counted).
    let big = s.ctx.jobs.create("big-log", "big log").unwrap();
    let line = "x".repeat(999) + "\n";
    std::fs::write(big.log_path(), line.repeat(30_000)).unwrap();
    big.finish();
    let uri = format!("/job/{}/events", big.id());
    for id in ["999999999999", "999999999999.5.1", "29000000.29000.1", "10.1.1.1"] {
        let started = std::time::Instant::now();
        let mut req = with(get(&uri), &[("last-event-id", id), ("host", "localhost")]);
        req.extensions_mut().insert(ConnectInfo(REMOTE.parse::<SocketAddr>().unwrap()));
        let reply = app.clone().oneshot(req).await.unwrap();
        assert_eq!(reply.status(), StatusCode::OK);
        let mut body = reply.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        let text = String::from_utf8_lossy(&first);
        let elapsed = started.elapsed();
        if id.starts_with("29000000.") {
            assert!(text.contains("id=\"L29001\""), "{id}: resumed at line 29001: {}", &text[..200.min(text.len())]);
        } else {
            assert!(text.contains("id=\"L1\""), "{id}: from the top: {}", &text[..200.min(text.len())]);
        }
        assert!(elapsed < Duration::from_millis(500), "{id}: {elapsed:?}");
    }
    s.go.notify_one();
}

/// Security issue 14: error pages quote little of a bad query value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_pages_quote_little_of_a_bad_value() {
    let s = setup("quote");
    let app = site(&s).router();
    let long = "A".repeat(4000);
    for key in ["result", "date", "limit", "after", "rebuild"] {
        for path in ["/query", "/api/history"] {
            let reply = send(&app, get(&format!("{path}?{key}={long}")), REMOTE).await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path} {key}");
            let run = reply.body.matches('A').count();
            assert!(run <= 120, "{path} {key}: {run} characters of the value quoted");
        }
    }
    s.go.notify_one();
}
