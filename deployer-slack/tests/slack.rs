//! Posting to a local server that answers as Slack's incoming webhooks do
//! (`200 ok`, or an error status with a short reason).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use deployer_core::{Config, Context, Engine, Output, Secret, Value, Var};
use deployer_slack::Slack;
use serde_json::Value as Json_;

/// What the fake webhook received, and how many of the next posts it refuses.
#[derive(Default)]
struct Hook {
    texts: Vec<String>,
    refuse: usize,
}

type Shared = Arc<Mutex<Hook>>;

async fn receive(State(hook): State<Shared>, Json(body): Json<Json_>) -> (StatusCode, &'static str) {
    let mut hook = hook.lock().unwrap();
    if hook.refuse > 0 {
        hook.refuse -= 1;
        return (StatusCode::INTERNAL_SERVER_ERROR, "rollup_error");
    }
    hook.texts.push(body["text"].as_str().unwrap_or_default().to_owned());
    (StatusCode::OK, "ok")
}

/// A fake incoming webhook; its URL carries a token like Slack's.
async fn start() -> (String, Shared) {
    let hook: Shared = Arc::default();
    let app = Router::new().route("/services/T0001/B0001/{token}", post(receive)).with_state(hook.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/services/T0001/B0001/SECRETTOKEN42", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, hook)
}

fn work(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("deployer-slack-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn settle<T: Value + std::fmt::Debug>(
    engine: &Engine<T>,
    what: &str,
    want: impl Fn(&Output<T>) -> bool,
) -> Output<T> {
    let wait = Duration::from_secs(20);
    engine.settle(wait, want).await.unwrap_or_else(|last| panic!("{what}: still {last:?} after {wait:?}"))
}

/// Every byte under `dir` (logs and the store), to look for the secret.
fn everything(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(everything(&path));
        } else {
            out.extend(std::fs::read(&path).unwrap_or_default());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_only_when_the_message_changes_and_keeps_the_url_secret() {
    let dir = work("posts");
    let (url, hook) = start().await;
    let state = dir.join("state");
    {
        let ctx = Context::open(&state, Config::default()).unwrap();
        let slack = Slack::new(&ctx, "deploys", Secret::new(url.clone())).unwrap();
        let message = Var::new("message", "Deploy 4f2a9c1 as www: running".to_owned());
        let engine = Engine::new(slack.post("notify www", "deploy-www", &message.current()));
        settle(&engine, "the first post", |o| matches!(o, Output::Ok(_))).await;
        assert_eq!(hook.lock().unwrap().texts, ["Deploy 4f2a9c1 as www: running"]);
        message.set("Deploy 4f2a9c1 as www: ok".to_owned());
        settle(&engine, "the second post", |_| hook.lock().unwrap().texts.len() == 2).await;
        settle(&engine, "posted", |o| matches!(o, Output::Ok(_))).await;
        // Slack refuses: the stage fails with Slack's reason, not the URL.
        hook.lock().unwrap().refuse = 1;
        message.set("Deploy 9b1e0aa as www: failed".to_owned());
        let out = settle(&engine, "refused", |o| o.err().is_some()).await;
        let error = out.err().unwrap().message().to_owned();
        assert!(error.contains("Slack refused the message: 500") && error.contains("rollup_error"), "{error}");
        assert!(!error.contains("SECRETTOKEN42"), "{error}");
        message.set("Deploy 9b1e0aa as www: ok".to_owned());
        settle(&engine, "the third post", |o| matches!(o, Output::Ok(_))).await;
    }
    assert_eq!(hook.lock().unwrap().texts.len(), 3);
    // A restart with the same message posts nothing: the store knows.
    {
        let ctx = Context::open(&state, Config::default()).unwrap();
        let slack = Slack::new(&ctx, "deploys", Secret::new(url.clone())).unwrap();
        let message = Var::new("message", "Deploy 9b1e0aa as www: ok".to_owned());
        let engine = Engine::new(slack.post("notify www", "deploy-www", &message.current()));
        settle(&engine, "known after a restart", |o| matches!(o, Output::Ok(_))).await;
    }
    assert_eq!(hook.lock().unwrap().texts.len(), 3, "{:?}", hook.lock().unwrap().texts);
    let all = everything(&state);
    assert!(!all.windows(13).any(|w| w == b"SECRETTOKEN42"), "the webhook URL reached the state directory");
    assert!(all.windows(9).any(|w| w == b"Posting t"), "the jobs' logs are there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_slack_is_a_clear_error_without_the_url() {
    let dir = work("unreachable");
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let ctx = Context::open(&dir.join("state"), Config::default()).unwrap();
    let url = format!("http://127.0.0.1:{port}/services/T/B/SECRETTOKEN42");
    let slack = Slack::new(&ctx, "deploys", Secret::new(url)).unwrap();
    let engine = Engine::new(slack.post("notify", "k", &deployer_core::Current::from("hi".to_owned())));
    let out = settle(&engine, "the failure", |o| o.err().is_some()).await;
    let error = out.err().unwrap().message().to_owned();
    assert!(error.starts_with("posting to Slack:") && !error.contains("SECRETTOKEN42"), "{error}");
}
