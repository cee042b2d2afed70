//! deployer-github against a local stand-in for GitHub's REST API
//! (`support/fake_github.rs`) and real webhook payloads (`payloads/`, from
//! octokit/webhooks, byte for byte), delivered signed to a running
//! deployer-web server.

mod support {
    pub mod fake_github;
}

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deployer_core::{Config, Context, Current, Engine, Output, Secret, Value, Var};
use deployer_github::login::GitHubLogin;
use deployer_github::{sign, Auth, CheckStatus, CiRef, DeploymentState, GitHub, Protection, Repo, Rerequest, State};
use deployer_web::{Login, Site};
use support::fake_github::{self, payload, FakeGitHub, APP_ID};

const SECRET: &str = "webhook secret for the tests";

fn work(name: &str) -> PathBuf {
    let base = std::env::var_os("DEPLOYER_TEST_WORK").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("github-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn sha(n: u32) -> String {
    format!("{n:040x}")
}

async fn settle<T: Value + std::fmt::Debug>(
    engine: &Engine<T>,
    what: &str,
    want: impl Fn(&Output<T>) -> bool,
) -> Output<T> {
    let wait = Duration::from_secs(20);
    engine.settle(wait, want).await.unwrap_or_else(|last| panic!("{what}: still {last:?} after {wait:?}"))
}

/// A fake with installation 1 on Codertocat (Hello-World, Space) and
/// installation 2 on "other" (not allowed).
async fn fake(dir: &Path) -> FakeGitHub {
    let gh = FakeGitHub::start(dir).await;
    {
        let mut w = gh.world.lock().unwrap();
        w.installations.push((1, "Codertocat".into(), vec!["Codertocat/Hello-World".into()]));
        w.installations.push((2, "other".into(), vec!["other/repo".into()]));
    }
    gh.set_branch("Codertocat/Hello-World", "master", &sha(1));
    gh
}

fn app(gh: &FakeGitHub, ctx: &Context) -> GitHub {
    let auth = Auth::App {
        app_id: APP_ID,
        private_key: Secret::new(gh.private_key.clone()),
        accounts: vec!["codertocat".into()],
    };
    GitHub::with_api(ctx, &gh.url, auth).unwrap()
}

/// A plain HTTP/1.1 request; the status, headers and body.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    // The server may answer (413, 401) and close before the body is sent.
    let _ = s.write_all(body).await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

/// A deployer-web site with the webhook mounted; its address.
async fn site(ctx: &Context, engine: deployer_core::EngineHandle, github: &GitHub) -> SocketAddr {
    let site = Site::new("test", engine, ctx.clone()).mount(github.webhook_routes(Secret::new(SECRET.into())));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(site.serve(listener));
    addr
}

fn ping_body() -> Vec<u8> {
    payload("ping.repository-hook.json")
}

/// Sends a delivery's headers and nothing else; the status and head of the
/// answer (within 5 s).
async fn headers_only(addr: SocketAddr, headers: &[(&str, &str)]) -> (u16, String) {
    use tokio::io::AsyncReadExt;
    let mut s = stall(addr, headers).await;
    let mut out = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut out))
        .await
        .expect("an answer without the body being sent")
        .unwrap();
    let text = String::from_utf8_lossy(&out[..n]).into_owned();
    (text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0), text)
}

/// A connection that sent a delivery's headers and stalls (sends no body).
async fn stall(addr: SocketAddr, headers: &[(&str, &str)]) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("POST /webhooks/github HTTP/1.1\r\nHost: {addr}\r\nX-GitHub-Event: push\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s
}

async fn deliver(addr: SocketAddr, event: &str, body: &[u8], signature: Option<String>) -> u16 {
    let mut headers = vec![("X-GitHub-Event", event), ("Content-Type", "application/json")];
    let sig;
    if let Some(s) = signature {
        sig = s;
        headers.push(("X-Hub-Signature-256", &sig));
    }
    http(addr, "POST", "/webhooks/github", &headers, body).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_lists_every_branch_and_pull_request_with_installation_tokens() {
    let dir = work("refs");
    let gh = fake(&dir).await;
    for i in 0..150 {
        gh.set_branch("Codertocat/Hello-World", &format!("b{i:03}"), &sha(100 + i));
    }
    gh.set_branch("Codertocat/Hello-World", "gh-pages", &sha(9));
    gh.world.lock().unwrap().pulls.insert(
        "codertocat/hello-world".into(),
        (1..=120).map(|n| (n, sha(1000 + n as u32), format!("PR {n}"))).collect(),
    );
    let ctx = Context::open(&dir.join("state"), Config::default()).unwrap();
    let github = app(&gh, &ctx);
    let repo = Repo::parse("Codertocat/Hello-World").unwrap();
    let engine = Engine::new(github.ci_refs(&repo));
    let out = settle(&engine, "the refs", |o| !matches!(o, Output::Active(_))).await;
    let Output::Ok(refs) = out else { panic!("{out:?}") };
    assert_eq!(refs.iter().filter(|r| r.gref.starts_with("refs/heads/")).count(), 151, "150 + master, not gh-pages");
    assert_eq!(refs.iter().filter(|r| r.gref.starts_with("refs/pull/")).count(), 120, "beyond OCurrent's 100");
    let pr7 = refs.iter().find(|r| r.gref == "refs/pull/7/head").unwrap();
    assert_eq!((pr7.hash.clone(), pr7.title.as_deref()), (sha(1007), Some("PR 7")));
    // The App's JWT got installation tokens; the repository calls used one.
    assert_eq!(gh.seen("/app/installations/1/access_tokens").len(), 1, "one token, cached");
    assert!(gh.seen("/app/installations/2/").is_empty(), "not allowed: no token for 'other'");
    let pages = gh.seen("/repos/Codertocat/Hello-World/branches");
    assert_eq!(pages.len(), 2, "two pages of 100");
    assert!(pages.iter().all(|s| s.authorization.starts_with("Bearer ghs_fake1")), "{:?}", pages[0].authorization);
    // A repository of an account not in the allow-list is an error that says why.
    let other = github.head_of(&Repo::parse("other/repo").unwrap(), "main");
    let engine = Engine::new(other);
    let out = settle(&engine, "the refused repo", |o| !matches!(o, Output::Active(_))).await;
    assert!(out.err().unwrap().message().contains("cannot see other/repo"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_webhooks_refresh_heads_and_bad_ones_change_nothing() {
    let dir = work("webhooks");
    let gh = fake(&dir).await;
    let ctx = Context::open(&dir.join("state"), Config::default()).unwrap();
    let github = app(&gh, &ctx).poll_every(Duration::from_secs(3600));
    let repo = Repo::parse("Codertocat/Hello-World").unwrap();
    let head = github.head_of(&repo, "master");
    let engine = Engine::new(head.clone());
    let addr = site(&ctx, engine.handle(), &github).await;
    settle(&engine, "the first head", |o| matches!(o, Output::Ok(r) if r.hash == sha(1))).await;
    let reads = || gh.seen("/repos/Codertocat/Hello-World/branches/master").len();
    let before = reads();
    gh.set_branch("Codertocat/Hello-World", "master", &sha(2));
    let push = payload("push.branch-created.json");
    // Unsigned, wrongly signed, signed with another secret: 401, no read.
    assert_eq!(deliver(addr, "push", &push, None).await, 401);
    assert_eq!(deliver(addr, "push", &push, Some("sha256=00".into())).await, 401);
    assert_eq!(deliver(addr, "push", &push, Some(sign("another secret", &push))).await, 401);
    let mut tampered = push.clone();
    tampered[10] ^= 1;
    assert_eq!(deliver(addr, "push", &tampered, Some(sign(SECRET, &push))).await, 401);
    engine.step();
    assert_eq!(reads(), before, "a refused delivery triggers nothing");
    // Signed: the head is read again.
    assert_eq!(deliver(addr, "push", &push, Some(sign(SECRET, &push))).await, 200);
    settle(&engine, "the new head", |o| matches!(o, Output::Ok(r) if r.hash == sha(2))).await;
    // Signed but not JSON: 400. Over 25 MB: 413. Unknown event: 200.
    let junk = b"{not json".to_vec();
    assert_eq!(deliver(addr, "push", &junk, Some(sign(SECRET, &junk))).await, 400);
    let huge = vec![b' '; 25 * 1024 * 1024 + 1];
    assert_eq!(deliver(addr, "push", &huge, Some(sign(SECRET, &huge))).await, 413);
    let ping = payload("ping.repository-hook.json");
    assert_eq!(deliver(addr, "ping", &ping, Some(sign(SECRET, &ping))).await, 200);
    let deployment = payload("deployment.created.json");
    assert_eq!(deliver(addr, "deployment", &deployment, Some(sign(SECRET, &deployment))).await, 200);
    // No signature: refused before the body is read (none is sent here).
    let (status, _) = headers_only(addr, &[("Content-Length", "20000000")]).await;
    assert_eq!(status, 401);
    // Security issue 10: stalled senders cannot hold the webhook. 50
    // connections send a signature-shaped header and then nothing; real
    // deliveries go through meanwhile (memory is counted by bytes that
    // arrived, not by connections), and each stalled one is dropped (408)
    // after its idle time.
    let fake_signature = format!("sha256={}", "0".repeat(64));
    let mut stalled = Vec::new();
    for _ in 0..50 {
        stalled.push(stall(addr, &[("X-Hub-Signature-256", &fake_signature), ("Content-Length", "1000")]).await);
    }
    let started = std::time::Instant::now();
    for _ in 0..20 {
        assert_eq!(deliver(addr, "ping", &ping_body(), Some(sign(SECRET, &ping_body()))).await, 200);
    }
    assert!(started.elapsed() < Duration::from_secs(3), "deliveries waited: {:?}", started.elapsed());
    for (i, s) in stalled.iter_mut().enumerate() {
        use tokio::io::AsyncReadExt;
        let mut out = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(15), s.read(&mut out))
            .await
            .unwrap_or_else(|_| panic!("stalled sender {i} still held after 15 s"))
            .unwrap();
        let text = String::from_utf8_lossy(&out[..n]);
        assert!(text.starts_with("HTTP/1.1 408"), "stalled sender {i}: {text}");
    }
    // Security issue 11: a delivery id acted on already is not acted on
    // again (a replay, or GitHub's redelivery).
    let before = reads();
    let with_id = |id: &str| {
        let id = id.to_owned();
        let push = push.clone();
        async move {
            let sig = sign(SECRET, &push);
            let headers = [
                ("X-GitHub-Event", "push"),
                ("Content-Type", "application/json"),
                ("X-Hub-Signature-256", sig.as_str()),
                ("X-GitHub-Delivery", id.as_str()),
            ];
            http(addr, "POST", "/webhooks/github", &headers, &push).await
        }
    };
    let (status, _, body) = with_id("72d3162e-cc78-11e3-81ab-4c9367dc0958").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "OK\n");
    let _ = before;
    tokio::time::sleep(Duration::from_secs(1)).await;
    engine.step();
    let after_first = reads();
    let (status, _, body) = with_id("72d3162e-cc78-11e3-81ab-4c9367dc0958").await;
    assert_eq!(status, 200);
    assert!(body.contains("already delivered"), "{body}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    engine.step();
    assert_eq!(reads(), after_first, "a replayed delivery read the head again");
    // Every payload of the set is accepted when signed.
    for entry in std::fs::read_dir(fake_github::payloads_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".json") {
            continue;
        }
        let event = name.split('.').next().unwrap().to_owned();
        let body = std::fs::read(&path).unwrap();
        assert_eq!(deliver(addr, &event, &body, Some(sign(SECRET, &body))).await, 200, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_statuses_deployments_and_reruns() {
    let dir = work("checks");
    let gh = fake(&dir).await;
    let ctx = Context::open(&dir.join("state"), Config::default()).unwrap();
    let github = app(&gh, &ctx);
    let repo = Repo::parse("Codertocat/Hello-World").unwrap();
    let commit =
        Current::constant(CiRef { repo: repo.clone(), gref: "refs/heads/master".into(), hash: sha(5), title: None });
    let status = Var::new(
        "status",
        CheckStatus {
            state: State::InProgress,
            summary: "Building".into(),
            details_url: Some("http://deployer/job/x".into()),
            external_id: Some("2026-12-01/120000-build-abc".into()),
        },
    );
    let check = github.check_run("deployability check", &commit, "deployability", &status.current());
    let plain = github.commit_status("status", &commit, "ocurrent-deployer", &status.current());
    let deployed = github.deployment(
        "GitHub deployment",
        &commit,
        "ocaml.org",
        &Current::constant(DeploymentState {
            ok: true,
            description: "live".into(),
            log_url: None,
            environment_url: Some("https://ocaml.org".into()),
        }),
    );
    let engine = Engine::new(check.pair(&plain).pair(&deployed));
    settle(&engine, "the reports", |o| matches!(o, Output::Ok(_))).await;
    status.set(CheckStatus { state: State::Success, summary: "Passed".into(), details_url: None, external_id: None });
    settle(&engine, "the update", |o| {
        matches!(o, Output::Ok(_))
            && gh.seen("/repos/Codertocat/Hello-World/check-runs/").len() == 1
            && gh.seen(&format!("/repos/Codertocat/Hello-World/statuses/{}", sha(5))).len() == 2
    })
    .await;
    let created = gh.seen("/repos/Codertocat/Hello-World/check-runs");
    assert_eq!(created[0].method, "POST");
    assert_eq!(created[0].body["status"], "in_progress");
    assert_eq!(created[0].body["external_id"], "2026-12-01/120000-build-abc");
    let updated = &created[1];
    assert_eq!((updated.method.as_str(), &updated.body["conclusion"]), ("PATCH", &serde_json::json!("success")));
    let statuses = gh.seen(&format!("/repos/Codertocat/Hello-World/statuses/{}", sha(5)));
    assert_eq!(
        statuses.iter().map(|s| s.body["state"].as_str().unwrap().to_owned()).collect::<Vec<_>>(),
        ["pending", "success"]
    );
    let deployments = gh.seen("/repos/Codertocat/Hello-World/deployments");
    assert_eq!(deployments[0].body["environment"], "ocaml.org");
    assert_eq!(deployments[1].body["state"], "success");
    // A check's re-run, from the real payload: the hook hears of it.
    let heard: Arc<Mutex<Vec<Rerequest>>> = Arc::default();
    github.on_rerequest({
        let heard = heard.clone();
        move |r| heard.lock().unwrap().push(r.clone())
    });
    let addr = site(&ctx, engine.handle(), &github).await;
    // The real payload, as if for our repository through each installation.
    let rerun_via = |full_name: &str, installation: u64| {
        let mut v: serde_json::Value = serde_json::from_slice(&payload("check_run.rerequested.json")).unwrap();
        v["repository"]["full_name"] = full_name.into();
        v["installation"]["id"] = installation.into();
        serde_json::to_vec(&v).unwrap()
    };
    // Security issue 9: through another installation (another account,
    // where the App is also installed), nothing is re-run, whatever the
    // payload names; a repository no installation of ours serves, neither.
    for (name, installation) in [("Codertocat/Hello-World", 2), ("other/repo", 2), ("github/hello-world", 1)] {
        let body = rerun_via(name, installation);
        assert_eq!(deliver(addr, "check_run", &body, Some(sign(SECRET, &body))).await, 200);
    }
    assert!(heard.lock().unwrap().is_empty(), "a re-run from another installation: {:?}", heard.lock().unwrap());
    let rerun = rerun_via("Codertocat/Hello-World", 1);
    assert_eq!(deliver(addr, "check_run", &rerun, Some(sign(SECRET, &rerun))).await, 200);
    let heard = heard.lock().unwrap().clone();
    assert_eq!(heard.len(), 1);
    assert_eq!(
        (heard[0].repo.to_string(), heard[0].hash.as_str(), heard[0].installation),
        ("Codertocat/Hello-World".into(), "d6fde92930d4715a2b49857d24b940956b26d2d3", Some(1))
    );
}

/// A fake, an App on it polling hourly, and an engine showing the master
/// head of Codertocat/Hello-World, read once.
async fn master_head(name: &str) -> (FakeGitHub, Context, GitHub, Engine<CiRef>) {
    let dir = work(name);
    let gh = fake(&dir).await;
    let ctx = Context::open(&dir.join("state"), Config::default()).unwrap();
    let github = app(&gh, &ctx).poll_every(Duration::from_secs(3600));
    let repo = Repo::parse("Codertocat/Hello-World").unwrap();
    let engine = Engine::new(github.head_of(&repo, "master"));
    settle(&engine, "the first head", |o| matches!(o, Output::Ok(_))).await;
    (gh, ctx, github, engine)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_is_waited_out_not_hammered() {
    let (gh, _ctx, github, engine) = master_head("ratelimit").await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    gh.world.lock().unwrap().limited_until = now + 600;
    assert_eq!(github.repository_changed("Codertocat/Hello-World"), 1);
    let out = settle(&engine, "the rate limit", |o| o.err().is_some()).await;
    assert!(out.err().unwrap().message().contains("rate limit"), "{out:?}");
    let asked = gh.seen("/repos/Codertocat/Hello-World/branches/master").len();
    // More changes while limited: the reads stop here, before GitHub (their
    // error says so), and no request reaches it.
    for _ in 0..5 {
        github.repository_changed("Codertocat/Hello-World");
    }
    let out =
        settle(&engine, "a read held back", |o| o.err().is_some_and(|e| e.message().contains("no requests for"))).await;
    assert!(out.err().unwrap().message().contains("s more"), "{out:?}");
    assert_eq!(gh.seen("/repos/Codertocat/Hello-World/branches/master").len(), asked, "nothing sent before the reset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_repository_access_is_checked() {
    let dir = work("access");
    let gh = fake(&dir).await;
    let ctx = Context::open(&dir.join("state"), Config::default()).unwrap();
    let github = app(&gh, &ctx);
    let repos = vec![Repo::parse("Codertocat/Hello-World").unwrap(), Repo::parse("Codertocat/Space").unwrap()];
    let engine = Engine::new(github.repository_access(repos));
    let addr = site(&ctx, engine.handle(), &github).await;
    let out = settle(&engine, "the access check", |o| !matches!(o, Output::Active(_))).await;
    let message = out.err().unwrap().message().to_owned();
    assert!(message.contains("cannot see codertocat/space") && message.contains("Repository access"), "{message}");
    // The repository is added to the installation; GitHub says so.
    gh.world.lock().unwrap().installations[0].2.push("Codertocat/Space".into());
    gh.world.lock().unwrap().installations[0].2.push("Codertocat/Unused".into());
    let added = payload("installation_repositories.added.json");
    assert_eq!(deliver(addr, "installation_repositories", &added, Some(sign(SECRET, &added))).await, 200);
    let out = settle(&engine, "access granted", |o| matches!(o, Output::Ok(_))).await;
    let Output::Ok(report) = out else { unreachable!() };
    assert_eq!(report.unused, ["codertocat/unused"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_installation_fails_its_repositories_only() {
    let dir = work("revoked");
    let gh = fake(&dir).await;
    gh.world.lock().unwrap().installations.push((3, "octo-org".into(), vec!["octo-org/app".into()]));
    gh.set_branch("octo-org/app", "live", &sha(7));
    let ctx = Context::open(&dir.join("state"), Config::default()).unwrap();
    let auth = Auth::App {
        app_id: APP_ID,
        private_key: Secret::new(gh.private_key.clone()),
        accounts: vec!["codertocat".into(), "octo-org".into()],
    };
    let github = GitHub::with_api(&ctx, &gh.url, auth).unwrap().poll_every(Duration::from_secs(3600));
    let hello = github.head_of(&Repo::parse("Codertocat/Hello-World").unwrap(), "master");
    let app_head = github.head_of(&Repo::parse("octo-org/app").unwrap(), "live");
    let engine = Engine::new(hello.pair(&app_head));
    let addr = site(&ctx, engine.handle(), &github).await;
    settle(&engine, "both heads", |o| matches!(o, Output::Ok((a, b)) if a.hash == sha(1) && b.hash == sha(7))).await;
    // Codertocat uninstalls the App; GitHub says so.
    gh.world.lock().unwrap().installations.retain(|(id, _, _)| *id != 1);
    let deleted = payload("installation.deleted.json");
    assert_eq!(deliver(addr, "installation", &deleted, Some(sign(SECRET, &deleted))).await, 200);
    let hello_engine = Engine::new(hello);
    let out = settle(&hello_engine, "Hello-World refused", |o| o.err().is_some()).await;
    let message = out.err().unwrap().message().to_owned();
    assert!(
        message.contains("cannot see Codertocat/Hello-World") && message.contains("Repository access"),
        "{message}"
    );
    // The other installation's repository carries on, and moves on.
    gh.set_branch("octo-org/app", "live", &sha(8));
    let app_engine = Engine::new(app_head.clone());
    github.repository_changed("octo-org/app");
    settle(&app_engine, "octo-org/app still read", |o| matches!(o, Output::Ok(r) if r.hash == sha(8))).await;
    // Uninstalled with no webhook (a delivery lost): its token is refused
    // (401), the installations are listed again, and the read fails saying
    // what to fix instead of "Bad credentials".
    gh.world.lock().unwrap().installations.retain(|(id, _, _)| *id != 3);
    github.repository_changed("octo-org/app");
    let out = settle(&app_engine, "octo-org/app refused", |o| o.err().is_some()).await;
    let message = out.err().unwrap().message().to_owned();
    assert!(message.contains("cannot see octo-org/app") && message.contains("Repository access"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_branch_protection_is_reported() {
    let dir = work("protection");
    let gh = fake(&dir).await;
    {
        let mut w = gh.world.lock().unwrap();
        w.protection
            .insert("codertocat/hello-world/live".into(), Some(vec!["ci/build".into(), "deployability".into()]));
        w.protection.insert("codertocat/hello-world/staging".into(), Some(vec!["ci/build".into()]));
        w.protection.insert("codertocat/hello-world/secret".into(), None);
    }
    let ctx = Context::open(&dir.join("state"), Config::default()).unwrap();
    let github = app(&gh, &ctx);
    let repo = Repo::parse("Codertocat/Hello-World").unwrap();
    let read = |branch: &str| Engine::new(github.branch_protection(&repo, branch, "deployability"));
    let cases = [
        ("live", Protection::Required),
        ("staging", Protection::NotRequired { required: vec!["ci/build".into()] }),
        ("dev", Protection::Unprotected),
    ];
    for (branch, want) in cases {
        let out = settle(&read(branch), branch, |o| !matches!(o, Output::Active(_))).await;
        assert_eq!(out.ok(), Some(want), "{branch}");
    }
    let out = settle(&read("secret"), "secret", |o| !matches!(o, Output::Active(_))).await;
    let Some(Protection::Unknown(why)) = out.clone().ok() else { panic!("{out:?}") };
    assert!(why.contains("Administration: read"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_in_with_github() {
    let dir = work("login");
    let gh = fake(&dir).await;
    let ctx = Context::open(&dir.join("state"), Config::default()).unwrap();
    let login = GitHubLogin::new("client-id", Secret::new("oauth-secret".into()), &["alice", "carol=42"])
        .builders(&["77"])
        .urls(&gh.url, &gh.url)
        .secure_cookies(false)
        .pin_file(dir.join("state/github-pins.json"));
    let engine = Engine::new(Current::constant(1u32));
    let site = Site::new("test", engine.handle(), ctx.clone()).login(login.clone()).mount(login.routes());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(site.serve(listener));
    let (status, head, _) = http(addr, "GET", "/login", &[], b"").await;
    assert_eq!(status, 303);
    let location = head.lines().find_map(|l| l.strip_prefix("location: ")).unwrap().to_owned();
    assert!(location.starts_with(&format!("{}/login/oauth/authorize?client_id=client-id", gh.url)), "{location}");
    let state = location.split("state=").nth(1).unwrap().to_owned();
    let cookie =
        head.lines().find_map(|l| l.strip_prefix("set-cookie: ")).unwrap().split(';').next().unwrap().to_owned();
    assert!(cookie.starts_with("deployer_oauth_state=") && head.contains("HttpOnly"));
    // A callback whose state is not this browser's is refused.
    let (status, _, _) = http(addr, "GET", &format!("/login/callback?code=good-code&state={state}"), &[], b"").await;
    assert_eq!(status, 403, "no state cookie");
    let (status, head, _) =
        http(addr, "GET", &format!("/login/callback?code=good-code&state={state}"), &[("Cookie", &cookie)], b"").await;
    assert_eq!(status, 303, "{head}");
    let session = head
        .lines()
        .filter_map(|l| l.strip_prefix("set-cookie: "))
        .find(|c| c.starts_with("deployer_session="))
        .unwrap();
    let session = session.split(';').next().unwrap().to_owned();
    let mut headers = axum::http::HeaderMap::new();
    headers.insert("cookie", session.parse().unwrap());
    let user = login.user(&headers).expect("logged in");
    assert_eq!(user.id, "github:1", "users are keyed by their numeric id");
    assert_eq!(user.name, "github:Alice", "and shown by login");
    assert_eq!(user.role, deployer_web::Role::Admin, "alice is an admin (case-insensitive)");
    // The state is single-use.
    let (status, _, _) =
        http(addr, "GET", &format!("/login/callback?code=good-code&state={state}"), &[("Cookie", &cookie)], b"").await;
    assert_eq!(status, 403);
    // The client secret never reaches a log.
    let token_requests = gh.seen("/login/oauth/access_token");
    assert_eq!(token_requests.len(), 1);

    // Security issue 4: roles follow the numeric id. "alice" is pinned to
    // id 1: renamed, id 1 is still admin; someone else who registers
    // "alice" (id 666) gets nothing; "carol=42" and "77" are ids.
    let log_in = |code: &'static str| async move {
        let (_, head, _) = http(addr, "GET", "/login", &[], b"").await;
        let state = head.lines().find_map(|l| l.strip_prefix("location: ")).unwrap().split("state=").nth(1).unwrap();
        let state = state.to_owned();
        let cookie = head.lines().find_map(|l| l.strip_prefix("set-cookie: ")).unwrap().split(';').next().unwrap();
        let cookie = cookie.to_owned();
        let (status, head, body) =
            http(addr, "GET", &format!("/login/callback?code={code}&state={state}"), &[("Cookie", &cookie)], b"").await;
        assert_eq!(status, 303, "{code}: {head}{body}");
        let session =
            head.lines().filter_map(|l| l.strip_prefix("set-cookie: ")).find(|c| c.starts_with("deployer_session="));
        session.unwrap().split(';').next().unwrap().to_owned()
    };
    let user_of = |session: &str| {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("cookie", session.parse().unwrap());
        login.user(&headers).unwrap()
    };
    use deployer_web::Role;
    let renamed = user_of(&log_in("code-alicia-1").await);
    assert_eq!((renamed.id.as_str(), renamed.name.as_str(), renamed.role), ("github:1", "github:alicia", Role::Admin));
    let squatter = user_of(&log_in("code-alice-666").await);
    assert_eq!((squatter.id.as_str(), squatter.role), ("github:666", Role::Viewer), "the name alone gives nothing");
    assert_eq!(user_of(&log_in("code-carol-41").await).role, Role::Viewer, "carol=42 is id 42");
    assert_eq!(user_of(&log_in("code-whoever-42").await).role, Role::Admin);
    assert_eq!(user_of(&log_in("code-dave-77").await).role, Role::Builder);
    // The pin outlives the process.
    let pins = std::fs::read_to_string(dir.join("state/github-pins.json")).unwrap();
    assert!(pins.contains("\"alice\": 1"), "{pins}");

    // Security issue 3: logging out is a POST from this site with the
    // session's token; a GET or a cross-site POST does nothing.
    let mut headers = axum::http::HeaderMap::new();
    headers.insert("cookie", session.parse().unwrap());
    let form = login.logout(&headers).expect("a logout form for a session");
    assert_eq!(form.url, "/logout");
    let (status, _, _) = http(addr, "GET", "/logout", &[("Cookie", &session)], b"").await;
    assert_eq!(status, 405, "GET /logout is no longer a route");
    let body = format!("token={}", form.token);
    let form_headers = |origin: &'static str| {
        [
            ("Cookie", session.clone()),
            ("Origin", origin.to_owned()),
            ("Content-Type", "application/x-www-form-urlencoded".into()),
        ]
    };
    let cross = form_headers("http://evil.example");
    let cross: Vec<(&str, &str)> = cross.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(http(addr, "POST", "/logout", &cross, body.as_bytes()).await.0, 403);
    assert!(login.user(&headers).is_some(), "still logged in after a cross-site logout");
    let origin: &'static str = Box::leak(format!("http://{addr}").into_boxed_str());
    let same = form_headers(origin);
    let same: Vec<(&str, &str)> = same.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(http(addr, "POST", "/logout", &same, b"token=wrong").await.0, 403, "a wrong token");
    assert!(login.user(&headers).is_some());
    assert_eq!(http(addr, "POST", "/logout", &same, body.as_bytes()).await.0, 303);
    assert!(login.user(&headers).is_none(), "logged out");
}

/// Security issue 20: a transport error is not a revoked token (what is
/// known of the installations stays), and after a token is refused the
/// retry mints a new one instead of sending the refused token again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_replaced_and_a_transport_error_is_only_an_error() {
    let (gh, _ctx, github, engine) = master_head("token-refresh").await;
    let listings = || gh.seen("/app/installations").len();
    let (listed, minted) = (listings(), gh.world.lock().unwrap().minted);
    // The connection breaks in the middle of an answer.
    gh.world.lock().unwrap().break_bodies = 10; // octocrab retries a few times itself
    gh.set_branch("Codertocat/Hello-World", "master", &sha(3));
    github.repository_changed("Codertocat/Hello-World");
    let out = settle(&engine, "the broken read", |o| o.err().is_some()).await;
    assert!(!out.err().unwrap().message().contains("cannot see"), "{out:?}");
    assert_eq!(listings(), listed, "a transport error made the installations be listed again");
    assert_eq!(gh.world.lock().unwrap().minted, minted, "nor a new token minted");
    gh.world.lock().unwrap().break_bodies = 0;
    github.repository_changed("Codertocat/Hello-World");
    settle(&engine, "read again", |o| matches!(o, Output::Ok(r) if r.hash == sha(3))).await;
    // Now GitHub revokes the token in use (401 Bad credentials).
    {
        let mut w = gh.world.lock().unwrap();
        let current = format!("1x{}", w.minted);
        w.revoked.push(current);
    }
    gh.set_branch("Codertocat/Hello-World", "master", &sha(4));
    github.repository_changed("Codertocat/Hello-World");
    settle(&engine, "the head with a new token", |o| matches!(o, Output::Ok(r) if r.hash == sha(4))).await;
    assert!(gh.world.lock().unwrap().minted > minted, "a new token was minted");
}
