//! The plugin of "Writing a plugin", end to end: a real directory, real
//! `tar` and `sh` processes, a real store, and its web route on a real site.

use std::path::PathBuf;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use deployer_core::{Config, Context, Engine, Level, Output, Secret};
use deployer_examples::tiny_plugin::{hook, Releases};
use deployer_web::Site;
use tower::ServiceExt;

fn work(name: &str) -> PathBuf {
    let base = std::env::var_os("DEPLOYER_TEST_WORK").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("tiny-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("src")).unwrap();
    dir
}

async fn settle(engine: &Engine<String>, want: impl Fn(&Output<String>) -> bool) -> Output<String> {
    engine.settle(Duration::from_secs(20), want).await.unwrap_or_else(|last| panic!("no settle; output {last:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_is_packed_and_installed_and_a_hook_brings_the_next() {
    let dir = work("release");
    std::fs::write(dir.join("src/VERSION"), "v1\n").unwrap();
    std::fs::write(dir.join("src/app.txt"), "hello\n").unwrap();
    // Installs are dangerous: they wait until the threshold is lowered.
    let ctx = Context::open(&dir.join("state"), Config::new(Some(Level::Dangerous))).unwrap();
    let token = "tok-8f3a9c2e1b7d";
    let releases = Releases::new(&ctx, dir.join("releases"), token.into(), 2);
    let version = Releases::monitor(dir.join("src"));
    let tarball = releases.pack("pack app", &version.current());
    let live = releases.install("install app", "app", &tarball);
    let engine = Engine::new(live);
    let site = Site::new("tiny", engine.handle(), ctx.clone())
        .mount(hook(version.clone(), Secret::new(token.to_owned())))
        .router();
    engine.step();
    let waiting = |o: &Output<String>| *o == Output::Active(deployer_core::ActiveState::WaitingForConfirmation);
    settle(&engine, waiting).await;
    ctx.config().set_confirm(None);
    let done = |v: &'static str| move |o: &Output<String>| matches!(o, Output::Ok(s) if s.contains(v));
    settle(&engine, done("release-v1.tar")).await;
    let installed = dir.join("releases/live/app.tar");
    let listing = std::process::Command::new("tar").arg("-tf").arg(&installed).output().unwrap();
    assert!(String::from_utf8_lossy(&listing.stdout).contains("app.txt"));

    // The hook: a wrong token is refused; the right one makes the monitor
    // read again, and the new version is packed and installed.
    std::fs::write(dir.join("src/VERSION"), "v2\n").unwrap();
    let call = |t: &str| {
        let req = Request::post("/hooks/tiny").header("host", "localhost").header("x-tiny-token", t);
        let mut req = req.body(Body::empty()).unwrap();
        req.extensions_mut().insert(ConnectInfo("203.0.113.5:1".parse::<std::net::SocketAddr>().unwrap()));
        site.clone().oneshot(req)
    };
    assert_eq!(call("wrong").await.unwrap().status(), StatusCode::FORBIDDEN);
    assert_eq!(call(token).await.unwrap().status(), StatusCode::ACCEPTED);
    settle(&engine, done("release-v2.tar")).await;

    // Every stage was a job with a history row saying what it did; the
    // token never reached a log.
    let history = ctx.store.history(Default::default()).await.unwrap();
    let described: Vec<&str> = history.rows.iter().map(|r| r.description.as_str()).collect();
    assert!(described.iter().any(|d| d.starts_with("pack ") && d.ends_with(" v2")), "{described:?}");
    assert!(described.iter().any(|d| d.starts_with("install ") && d.ends_with(" as app")), "{described:?}");
    for row in &history.rows {
        let (log, _) = ctx.jobs.read_log(&row.job_id, 0, 1 << 20).unwrap();
        let log = String::from_utf8(log).unwrap();
        assert!(!log.contains(token), "the token reached {}'s log", row.job_id);
        if row.op == "tiny-install" {
            assert!(log.contains("authenticating with [redacted]"), "{log}");
        }
    }
}
