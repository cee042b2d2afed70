//! The web UI against a running engine: HTTP-level checks (status codes,
//! roles, CSRF, headers, API, metrics) and a real headless Chromium that
//! loads the pipeline, follows a job link, watches a log line arrive live,
//! presses Rebuild and lands on the new job. Screenshots go to
//! `target/web-screenshots/`.

mod browser;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use deployer_core::cache::{BuildCache, Builder};
use deployer_core::{Config, Context, Current, Engine, Error, Job, Level};
use deployer_web::{Login, Role, Site, User};
use http_body_util::BodyExt;
use tokio::sync::Notify;
use tower::ServiceExt;

/// A build that logs a first line, waits for the test, logs a coloured
/// second line, and succeeds.
struct SlowBuild {
    go: Arc<Notify>,
    level: Level,
}

#[async_trait]
impl Builder for SlowBuild {
    const ID: &'static str = "slow-build";
    type Key = String;
    type Value = String;
    fn level(&self, _: &String) -> Level {
        self.level
    }
    async fn build(&self, job: &Job, key: &String) -> Result<String, Error> {
        job.log(&format!("building {key}: first line"));
        self.go.notified().await;
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
    setup_with(name, Level::Harmless, None)
}

fn setup_with(name: &str, level: Level, confirm: Option<Level>) -> Setup {
    let ctx = Context::open(&state_dir(name), Config::new(confirm)).unwrap();
    let go = Arc::new(Notify::new());
    let cache = BuildCache::new(&ctx, SlowBuild { go: go.clone(), level });
    let built = cache.get("slow-build", Current::constant_labelled("repo", "app".to_owned()));
    let deployed = built.map(|v| format!("deployed {v}"));
    let engine = Arc::new(Engine::new(deployed));
    let e = engine.clone();
    let run = tokio::spawn(async move { e.run().await });
    Setup { ctx, engine, go, _run: run }
}

async fn send(app: &axum::Router, req: Request<Body>, from: &str) -> (StatusCode, axum::http::HeaderMap, String) {
    let mut req = req;
    req.extensions_mut().insert(ConnectInfo(from.parse::<SocketAddr>().unwrap()));
    let resp = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, String::from_utf8_lossy(&bytes).into_owned())
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn post(uri: &str, form: &str) -> Request<Body> {
    Request::post(uri)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(form.to_owned()))
        .unwrap()
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

const LOCAL: &str = "127.0.0.1:40000";
const REMOTE: &str = "203.0.113.7:40000";

fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a form with a CSRF token") + 19;
    page[at..at + 64].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_api_and_protection() {
    let s = setup("http");
    let app = Site::new("test deployer", s.engine.handle(), s.ctx.clone()).router();
    let job = wait_for_job(&s.ctx).await;

    let (status, headers, body) = send(&app, get("/"), REMOTE).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-frame-options"], "DENY");
    assert!(headers["content-security-policy"].to_str().unwrap().contains("frame-ancestors 'none'"));
    assert!(body.contains("<svg") && body.contains(&format!("href=\"/job/{job}\"")), "{body}");
    assert!(body.contains("Running…"));
    assert!(!body.contains("<form method=\"post\" action=\"/set/confirm\""), "a remote viewer gets no settings form");

    // Unknown jobs, bad ids, bad parameters.
    assert_eq!(send(&app, get("/job/2026-01-01/000000-nothing-abc"), LOCAL).await.0, StatusCode::NOT_FOUND);
    assert_eq!(send(&app, get("/job/2026-01-01/..%2Fdb.sqlite"), LOCAL).await.0, StatusCode::BAD_REQUEST);
    let (status, _, body) = send(&app, get("/query?result=maybe"), LOCAL).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("result must be"), "{body}");
    assert_eq!(send(&app, get("/no/such/page"), LOCAL).await.0, StatusCode::NOT_FOUND);
    assert_eq!(send(&app, get("/api/history?after=yesterday"), LOCAL).await.0, StatusCode::BAD_REQUEST);

    // The job page, as a local admin and as a remote viewer.
    let (status, _, page) = send(&app, get(&format!("/job/{job}")), LOCAL).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("id=\"cancel\""), "a running job can be cancelled locally");
    let (_, _, remote_page) = send(&app, get(&format!("/job/{job}")), REMOTE).await;
    assert!(!remote_page.contains("id=\"cancel\""));
    let token = csrf_of(&page);

    // POSTs: without a token, with a wrong one, from a remote client: 403, nothing changes.
    let cancel = format!("/job/{job}/cancel");
    assert_eq!(send(&app, post(&cancel, ""), LOCAL).await.0, StatusCode::FORBIDDEN);
    assert_eq!(send(&app, post(&cancel, &format!("csrf={}", "0".repeat(64))), LOCAL).await.0, StatusCode::FORBIDDEN);
    assert_eq!(send(&app, post(&cancel, &format!("csrf={token}")), REMOTE).await.0, StatusCode::FORBIDDEN);
    assert!(s.ctx.jobs.get(&job).unwrap().cancelled_reason().is_none(), "nothing was cancelled");
    assert_eq!(send(&app, post("/set/confirm", "level=dangerous"), LOCAL).await.0, StatusCode::FORBIDDEN);
    assert_eq!(s.ctx.config().confirm(), None);
    let (status, _, body) = send(&app, post("/set/confirm", &format!("csrf={token}&level=loud")), LOCAL).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("loud"), "{body}");
    let (status, headers, _) = send(&app, post("/set/confirm", &format!("csrf={token}&level=dangerous")), LOCAL).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], "/");
    assert_eq!(s.ctx.config().confirm(), Some(Level::Dangerous));

    // The API and metrics.
    let (_, headers, jobs) = send(&app, get("/api/jobs"), REMOTE).await;
    assert_eq!(headers["content-type"], "application/json");
    assert!(jobs.contains(&job));
    let (_, _, stats) = send(&app, get("/api/stats"), REMOTE).await;
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["stats"]["running"], 1);
    let (_, _, graph) = send(&app, get("/api/pipeline"), REMOTE).await;
    assert!(graph.contains("\"label\":\"slow-build\""), "{graph}");
    let (_, _, log) = send(&app, get(&format!("/api/job/{job}/log")), REMOTE).await;
    assert!(log.contains("first line"));
    let (_, headers, metrics) = send(&app, get("/metrics"), REMOTE).await;
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    assert!(metrics.contains("deployer_pipeline_stages{state=\"running\"} 1"), "{metrics}");
    assert!(metrics.contains("deployer_jobs{status=\"running\"} 1"), "{metrics}");

    assert_eq!(
        send(&app, post(&format!("/job/{job}/explode"), &format!("csrf={token}")), LOCAL).await.0,
        StatusCode::NOT_FOUND
    );

    // Cancel it for real.
    let (status, _, _) = send(&app, post(&cancel, &format!("csrf={token}")), LOCAL).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    // The history shows it once recorded.
    let mut row = None;
    for _ in 0..200 {
        row = s.ctx.store.by_job(&job).await.unwrap();
        if row.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(row.expect("the cancelled build is recorded").outcome, "Cancelled: Cancelled by user");
    let (_, _, history) = send(&app, get("/query?op=slow-build&result=failed"), REMOTE).await;
    assert!(history.contains(&job), "{history}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_starts_a_waiting_job_and_plugins_mount_routes() {
    let s = setup_with("start", Level::Dangerous, Some(Level::Dangerous));
    let hook = axum::Router::new().route("/webhooks/test", axum::routing::post(|| async { "hook ran" }));
    let app =
        Site::new("d", s.engine.handle(), s.ctx.clone()).mount(hook).nav_link("Webhooks", "/webhooks/test").router();
    let job = wait_for_job(&s.ctx).await;
    for _ in 0..200 {
        if s.ctx.jobs.get(&job).unwrap().status() == deployer_core::job::JobStatus::WaitingForConfirmation {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, _, page) = send(&app, get(&format!("/job/{job}")), LOCAL).await;
    assert!(page.contains("waiting for confirmation") && page.contains("id=\"start\""), "{page}");
    assert!(page.contains("href=\"/webhooks/test\""), "the plugin's nav link is shown");
    let token = csrf_of(&page);
    let (status, _, _) = send(&app, post(&format!("/job/{job}/start"), &format!("csrf={token}")), LOCAL).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    for _ in 0..200 {
        if s.ctx.jobs.get(&job).unwrap().status() == deployer_core::job::JobStatus::Running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(s.ctx.jobs.get(&job).unwrap().status(), deployer_core::job::JobStatus::Running);
    // Starting it again: it is not waiting any more.
    let (status, _, body) = send(&app, post(&format!("/job/{job}/start"), &format!("csrf={token}")), LOCAL).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(body.contains("not waiting for confirmation"));
    // The mounted route answers, with the site's security headers.
    let (status, headers, body) = send(&app, post("/webhooks/test", ""), REMOTE).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "hook ran"));
    assert_eq!(headers["x-frame-options"], "DENY");
    s.go.notify_one();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_selected_from_the_history() {
    let s = setup("selected");
    let app = Site::new("d", s.engine.handle(), s.ctx.clone()).router();
    let job = wait_for_job(&s.ctx).await;
    s.go.notify_one();
    for _ in 0..500 {
        if s.ctx.store.by_job(&job).await.unwrap().is_some() && s.ctx.jobs.get(&job).is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The event stream of a finished log ends; a client reconnecting with
    // Last-Event-ID resumes after what it had, with the right line numbers.
    let (status, headers, events) = send(&app, get(&format!("/job/{job}/events")), REMOTE).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/event-stream");
    assert!(events.contains("id=\"L1\"") && events.contains("event: end"), "{events}");
    let log = std::fs::read_to_string(s.ctx.jobs.log_file(&job).unwrap()).unwrap();
    let first_line = log.find('\n').unwrap() + 1;
    let mut req = get(&format!("/job/{job}/events"));
    req.headers_mut().insert("last-event-id", first_line.to_string().parse().unwrap());
    let (_, _, resumed) = send(&app, req, REMOTE).await;
    assert!(!resumed.contains("id=\"L1\"") && resumed.contains("id=\"L2\""), "{resumed}");
    assert!(resumed.contains("first line"));

    let today = &job[..10];
    let (status, _, page) = send(&app, get(&format!("/query?date={today}&result=passed")), LOCAL).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains(&format!("name=\"job\" value=\"{job}\"")), "{page}");
    let token = csrf_of(&page);
    let form = format!("csrf={token}&job={}&job=2026-01-01%2F000000-gone-abc", job.replace('/', "%2F"));
    let (status, _, body) = send(&app, post("/query", &form), LOCAL).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains("Rebuilding 1 job(s). Not rebuilt: 2026-01-01/000000-gone-abc: no longer in the pipeline."),
        "{body}"
    );
    let mut new_job = None;
    for _ in 0..500 {
        new_job = s.ctx.jobs.active().into_iter().map(|j| j.id).find(|id| *id != job);
        if new_job.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(new_job.is_some(), "a new build started");
    s.go.notify_one();
}

struct HeaderLogin;

impl Login for HeaderLogin {
    fn user(&self, headers: &axum::http::HeaderMap) -> Option<User> {
        let id = headers.get("x-user")?.to_str().ok()?;
        Some(User { id: id.to_owned(), role: Role::Builder })
    }
    fn login_url(&self) -> String {
        "/login".into()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_login_anonymous_users_only_view() {
    let s = setup("login");
    let app = Site::new("d", s.engine.handle(), s.ctx.clone()).login(HeaderLogin).router();
    let job = wait_for_job(&s.ctx).await;
    let (_, _, page) = send(&app, get(&format!("/job/{job}")), LOCAL).await;
    assert!(!page.contains("id=\"cancel\""), "anonymous, even on loopback: view only");
    assert!(page.contains("href=\"/login\""));
    let mut req = get(&format!("/job/{job}"));
    req.headers_mut().insert("x-user", "github:alice".parse().unwrap());
    let (_, _, page) = send(&app, req, REMOTE).await;
    assert!(page.contains("id=\"cancel\"") && page.contains("github:alice"));
    let token = csrf_of(&page);
    // A builder may not change the confirmation level.
    let mut req = post("/set/confirm", &format!("csrf={token}&level=dangerous"));
    req.headers_mut().insert("x-user", "github:alice".parse().unwrap());
    assert_eq!(send(&app, req, REMOTE).await.0, StatusCode::FORBIDDEN);
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
    chrome.navigate(&format!("http://{addr}/")).await;
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
    // Reload: the finished job offers Rebuild; pressing it opens the new job.
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
