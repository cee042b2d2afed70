//! deployer-git against real git: repositories made in temporary
//! directories, served as paths, `file://` and by `git daemon` on loopback;
//! the real engine, caches and store.

use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use deployer_core::{Config, Context, Current, Engine, Job, Level, ManualClock, Output, Secret, Value};
use deployer_git::{local_branch, Commit, CommitId, Git, Remote};

fn work(name: &str) -> PathBuf {
    let base = std::env::var_os("DEPLOYER_TEST_WORK").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("git-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs git in `dir`; panics with its stderr if it fails.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=test", "-c", "user.email=test@localhost", "-c", "protocol.file.allow=always"])
        .args(args)
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?} in {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A working repository on branch `main`.
fn repo(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    git(dir, &["init", "-q", "-b", "main"]);
    dir.to_owned()
}

/// Writes `file` and commits it; returns the new hash.
fn commit(repo: &Path, file: &str, content: &str) -> String {
    let path = repo.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, content).unwrap();
    git(repo, &["add", "."]);
    git(repo, &["commit", "-q", "-m", &format!("{file}: {content}")]);
    git(repo, &["rev-parse", "HEAD"])
}

/// `git daemon` serving `base` on a free loopback port; stopped on drop.
struct Daemon {
    child: Child,
    port: u16,
}

impl Daemon {
    fn start(base: &Path) -> Daemon {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Daemon::start_on(base, port)
    }

    /// The same on `port` (a daemon started again where it was).
    fn start_on(base: &Path, port: u16) -> Daemon {
        let child = Command::new("git")
            .args(["daemon", "--reuseaddr", "--export-all", "--enable=receive-pack", "--listen=127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(base)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // `git daemon` runs `git-daemon` as a child: its own process
            // group, so that stopping it stops both.
            .process_group(0)
            .spawn()
            .expect("git daemon starts (Debian's git package has it)");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "git daemon did not listen on {port} within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon { child, port }
    }

    fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
        // Until the port is free again (a daemon may be started on it).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(std::time::Instant::now() < deadline, "git daemon still listens on {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn context(dir: &Path) -> Context {
    Context::open(&dir.join("state"), Config::default()).unwrap()
}

/// Steps `engine` until `want` holds (10 s at most).
async fn settle<T: Value + std::fmt::Debug>(
    engine: &Engine<T>,
    what: &str,
    want: impl Fn(&Output<T>) -> bool,
) -> Output<T> {
    let wait = Duration::from_secs(10);
    engine.settle(wait, want).await.unwrap_or_else(|last| panic!("{what}: still {last:?} after {wait:?}"))
}

fn is_commit(hash: &str) -> impl Fn(&Output<Commit>) -> bool + '_ {
    move |o| matches!(o, Output::Ok(c) if c.id.hash.as_str() == hash)
}

/// A job for direct calls (checkouts).
async fn job(ctx: &Context, name: &str) -> Job {
    let job = ctx.jobs.create(name, name).unwrap();
    job.start(Level::Harmless, None, None).await.unwrap();
    job
}

fn log(ctx: &Context, job: &str) -> String {
    String::from_utf8(ctx.jobs.read_log(job, 0, 1 << 20).unwrap().0).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_branch_is_watched_fetched_and_checked_out() {
    let dir = work("local");
    let src = repo(&dir.join("src"));
    let first = commit(&src, "VERSION", "v1");
    let ctx = context(&dir);
    let git = Git::new(&ctx);
    let head = local_branch(&src, "main").unwrap();
    let fetched = git.fetch("fetch src", &head.current());
    let engine = Engine::new(fetched.clone());
    let out = settle(&engine, "the first commit", is_commit(&first)).await;
    let Output::Ok(commit1) = out else { unreachable!() };
    assert_eq!(commit1.id.to_string(), format!("src#{}", &first[..7]));
    // A commit made while the pipeline runs is seen and fetched.
    let second = commit(&src, "VERSION", "v2");
    let Output::Ok(commit2) = settle(&engine, "the second commit", is_commit(&second)).await else { unreachable!() };
    let j = job(&ctx, "checkout").await;
    let checkout = git.checkout(&j, &commit2).await.unwrap();
    assert_eq!(std::fs::read_to_string(checkout.path().join("VERSION")).unwrap(), "v2");
    let path = checkout.path().to_owned();
    drop(checkout);
    assert!(!path.exists(), "the checkout is removed when dropped");
    // The fetch job's log shows git's work; its box label is per use.
    let history = ctx.store.history(Default::default()).await.unwrap();
    let row = history.rows.iter().find(|r| r.description == format!("fetch {}", commit2.id)).expect("a history row");
    assert!(log(&ctx, &row.job_id).contains("Exec: git"), "git runs through the job");
    let diagram = engine.diagram(&Default::default());
    assert!(diagram.boxes.iter().any(|b| b.label == "fetch src"));
    assert!(diagram.boxes.iter().any(|b| b.label == "src main"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packed_refs_only_update_is_seen() {
    let dir = work("packed");
    let src = repo(&dir.join("src"));
    let first = commit(&src, "a", "1");
    git(&src, &["pack-refs", "--all", "--prune"]);
    let head = local_branch(&src, "main").unwrap();
    let engine = Engine::new(head.current());
    settle(&engine, "the first head", |o| matches!(o, Output::Ok(c) if c.hash.as_str() == first)).await;
    // A new commit object, and the branch moved by rewriting packed-refs
    // alone (no loose ref is written): OCurrent misses this.
    let tree = git(&src, &["write-tree"]);
    let second = git(&src, &["commit-tree", &tree, "-p", &first, "-m", "packed only"]);
    let packed = src.join(".git/packed-refs");
    let text = std::fs::read_to_string(&packed).unwrap().replace(&first, &second);
    let tmp = src.join(".git/packed-refs.new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &packed).unwrap();
    assert!(!src.join(".git/refs/heads/main").exists());
    settle(&engine, "the packed-refs update", |o| matches!(o, Output::Ok(c) if c.hash.as_str() == second)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_branch_over_git_daemon_sees_pushes_on_refresh() {
    let dir = work("daemon");
    let served = dir.join("served");
    std::fs::create_dir_all(&served).unwrap();
    git(&served, &["init", "-q", "--bare", "-b", "main", "app.git"]);
    let daemon = Daemon::start(&served);
    let work_tree = repo(&dir.join("work"));
    let first = commit(&work_tree, "VERSION", "v1");
    git(&work_tree, &["push", "-q", &daemon.url("app.git"), "main"]);
    let ctx = context(&dir);
    let git_ = Git::new(&ctx);
    let remote = Remote::new(&daemon.url("app.git")).unwrap();
    // Polled hourly: only refresh() (a webhook) makes it look sooner.
    let head = git_.remote_branch(&remote, "main", Duration::from_secs(3600)).unwrap();
    let fetched = git_.fetch("fetch app", &head.current());
    let engine = Engine::new(fetched);
    settle(&engine, "the first commit", is_commit(&first)).await;
    let second = commit(&work_tree, "VERSION", "v2");
    git(&work_tree, &["push", "-q", &daemon.url("app.git"), "main"]);
    head.refresh();
    let Output::Ok(c) = settle(&engine, "the pushed commit", is_commit(&second)).await else { unreachable!() };
    let j = job(&ctx, "checkout").await;
    let co = git_.checkout(&j, &c).await.unwrap();
    assert_eq!(std::fs::read_to_string(co.path().join("VERSION")).unwrap(), "v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submodules_are_fetched_checked_out_and_in_the_tar_context() {
    let dir = work("submodules");
    let util = repo(&dir.join("util"));
    commit(&util, "util.txt", "utility");
    let lib = repo(&dir.join("lib"));
    commit(&lib, "lib.txt", "library v1");
    git(&lib, &["submodule", "add", "-q", util.to_str().unwrap(), "deps/util"]);
    git(&lib, &["commit", "-q", "-m", "add util"]);
    let app = repo(&dir.join("app"));
    commit(&app, "main.txt", "app");
    git(&app, &["submodule", "add", "-q", lib.to_str().unwrap(), "vendor/lib"]);
    git(&app, &["commit", "-q", "-m", "add lib"]);
    let hash = git(&app, &["rev-parse", "HEAD"]);
    let ctx = context(&dir);
    let git_ = Git::new(&ctx);
    let id = CommitId::new(app.to_str().unwrap(), "main", &hash).unwrap();
    let engine = Engine::new(git_.fetch("fetch app", &Current::constant(id)));
    let Output::Ok(c) = settle(&engine, "the fetch", is_commit(&hash)).await else { unreachable!() };
    assert_eq!(c.submodules.len(), 1);
    assert_eq!(c.submodules[0].0, "vendor/lib");
    let j = job(&ctx, "checkout").await;
    let co = git_.checkout(&j, &c).await.unwrap();
    assert_eq!(std::fs::read_to_string(co.path().join("vendor/lib/lib.txt")).unwrap(), "library v1");
    assert_eq!(std::fs::read_to_string(co.path().join("main.txt")).unwrap(), "app");
    assert_eq!(std::fs::read_to_string(co.path().join("vendor/lib/deps/util/util.txt")).unwrap(), "utility");
    // The build context has the submodules' files too, under their paths,
    // as one archive (tar stops at the first end marker, so a joined
    // stream with one left inside would lose the submodules).
    let mut tar = git_.tar_context(&j, &c).await.unwrap();
    let mut bytes = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut tar, &mut bytes).await.unwrap();
    tar.finish().await.unwrap();
    let listing = tar_names(&bytes);
    for file in ["main.txt", "vendor/lib/lib.txt", "vendor/lib/deps/util/util.txt"] {
        assert!(listing.iter().any(|n| n == file), "{file} is missing from {listing:?}");
    }
    assert_eq!(tar_file(&bytes, "vendor/lib/deps/util/util.txt"), "utility");
    // The same files as the checkout.
    let mut in_checkout = files_below(co.path(), co.path());
    let mut in_context: Vec<String> = listing.into_iter().filter(|n| !n.ends_with('/')).collect();
    in_checkout.sort();
    in_context.sort();
    assert_eq!(in_context, in_checkout);
}

/// The files below `dir`, relative to `root`.
fn files_below(root: &Path, dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_below(root, &path));
        } else {
            out.push(path.strip_prefix(root).unwrap().to_string_lossy().into_owned());
        }
    }
    out
}

/// One file of a tar archive.
fn tar_file(bytes: &[u8], name: &str) -> String {
    let mut child = Command::new("tar")
        .args(["-xO", "-f", "-", name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("tar runs");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "tar found no {name}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The names in a tar archive.
fn tar_names(bytes: &[u8]) -> Vec<String> {
    let mut child =
        Command::new("tar").arg("-t").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("tar runs");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_force_push_removes_a_commit_but_a_fetched_one_stays_pinned() {
    let dir = work("force");
    let served = dir.join("served");
    std::fs::create_dir_all(&served).unwrap();
    git(&served, &["init", "-q", "--bare", "-b", "main", "app.git"]);
    let daemon = Daemon::start(&served);
    let url = daemon.url("app.git");
    let w = repo(&dir.join("work"));
    let base = commit(&w, "f", "base");
    let fetched_early = commit(&w, "f", "fetched before the force-push");
    git(&w, &["push", "-q", &url, "main"]);
    let ctx = context(&dir);
    let git_ = Git::new(&ctx);
    let id = |h: &str| CommitId::new(&url, "main", h).unwrap();
    let key = deployer_core::Var::new("commit", id(&fetched_early));
    let engine = Engine::new(git_.fetch("fetch app", &key.current()));
    let Output::Ok(early) = settle(&engine, "the early fetch", is_commit(&fetched_early)).await else { unreachable!() };
    // Rewrite history: the early commit is gone from the remote, and so is
    // one pushed in between that nobody fetched.
    let lost = commit(&w, "f", "pushed, then force-pushed away");
    git(&w, &["push", "-q", &url, "main"]);
    git(&w, &["reset", "-q", "--hard", &base]);
    let rewritten = commit(&w, "f", "rewritten");
    git(&w, &["push", "-q", "-f", &url, "main"]);
    git(&served.join("app.git"), &["reflog", "expire", "--expire=now", "--all"]);
    git(&served.join("app.git"), &["gc", "-q", "--prune=now"]);
    key.set(id(&rewritten));
    settle(&engine, "the rewritten head", is_commit(&rewritten)).await;
    // The early commit was pinned in the mirror: still checked out.
    let j = job(&ctx, "checkout").await;
    let co = git_.checkout(&j, &early).await.unwrap();
    assert_eq!(std::fs::read_to_string(co.path().join("f")).unwrap(), "fetched before the force-push");
    // The lost one fails, naming it.
    key.set(id(&lost));
    let out = settle(&engine, "the lost commit", |o| o.err().is_some()).await;
    let message = out.err().unwrap().message().to_owned();
    assert!(message.contains(&lost) && message.contains("force-pushed away"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pipelines_share_one_mirror() {
    let dir = work("shared");
    let src = repo(&dir.join("src"));
    let a = commit(&src, "f", "a");
    let b = commit(&src, "f", "b");
    let ctx = context(&dir);
    let git_ = Git::new(&ctx);
    let id = |h: &str| Current::constant(CommitId::new(src.to_str().unwrap(), "main", h).unwrap());
    let one = Engine::new(git_.fetch("fetch a", &id(&a)));
    let two = Engine::new(git_.fetch("fetch b", &id(&b)));
    one.step();
    two.step();
    let (ra, rb) = tokio::join!(settle(&one, "a", is_commit(&a)), settle(&two, "b", is_commit(&b)));
    let (Output::Ok(ca), Output::Ok(cb)) = (ra, rb) else { unreachable!() };
    assert_eq!(ca.mirror, cb.mirror, "one mirror per remote");
    let mirrors: Vec<_> = std::fs::read_dir(ctx.state_dir().join("git")).unwrap().collect();
    assert_eq!(mirrors.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_remote_fails_saying_so_and_is_retried() {
    let dir = work("unreachable");
    let manual = ManualClock::new(1_764_000_000_000);
    let ctx = Context::open_with_clock(&dir.join("state"), Config::default(), manual.clock()).unwrap();
    let git_ = Git::new(&ctx);
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port(); // closed again
    let url = format!("git://127.0.0.1:{port}/app.git");
    let id = CommitId::new(&url, "main", "4f2a9c1e0d5b7a8c9f1e2d3c4b5a69788796a5b4").unwrap();
    let engine = Engine::new(git_.fetch("fetch app", &Current::constant(id)));
    let out = settle(&engine, "the failure", |o| o.err().is_some()).await;
    assert!(out.err().unwrap().message().contains(&url), "{:?}", out);
    let row = ctx.store.history(Default::default()).await.unwrap().rows.remove(0);
    assert!(log(&ctx, &row.job_id).contains("127.0.0.1"), "the log says which remote");
    // The next try comes by itself.
    manual.advance(deployer_git::RETRY_FAILED_FETCH);
    let rows = async {
        loop {
            if ctx.store.history(Default::default()).await.unwrap().rows.len() >= 2 {
                return;
            }
            engine.next().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), rows).await.expect("the fetch was tried again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_mirror_is_recloned_saying_so() {
    let dir = work("corrupt");
    let src = repo(&dir.join("src"));
    let a = commit(&src, "f", "a");
    let ctx = context(&dir);
    let git_ = Git::new(&ctx);
    let key = deployer_core::Var::new("commit", CommitId::new(src.to_str().unwrap(), "main", &a).unwrap());
    let engine = Engine::new(git_.fetch("fetch", &key.current()));
    let Output::Ok(ca) = settle(&engine, "a", is_commit(&a)).await else { unreachable!() };
    // Break the mirror.
    std::fs::remove_dir_all(ca.mirror.join("objects")).unwrap();
    std::fs::write(ca.mirror.join("HEAD"), "garbage").unwrap();
    let b = commit(&src, "f", "b");
    key.set(CommitId::new(src.to_str().unwrap(), "main", &b).unwrap());
    settle(&engine, "b", is_commit(&b)).await;
    let history = ctx.store.history(Default::default()).await.unwrap();
    let row = history.rows.iter().find(|r| r.ok && r.description.contains(&b[..7])).unwrap();
    assert!(log(&ctx, &row.job_id).contains("is corrupt: re-cloning it"), "{}", log(&ctx, &row.job_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_reaches_git_but_no_log() {
    let dir = work("token");
    // An "HTTPS server" that accepts and hangs up: the fetch fails, and its
    // log must not hold the token in any form.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            drop(s);
        }
    });
    let ctx = context(&dir);
    let git_ = Git::new(&ctx);
    let token = "ghs_S3cr3tT0k3nValue";
    git_.token("127.0.0.1", Secret::new(token.to_owned()));
    let url = format!("https://127.0.0.1:{port}/o/app.git");
    let id = CommitId::new(&url, "main", "4f2a9c1e0d5b7a8c9f1e2d3c4b5a69788796a5b4").unwrap();
    let engine = Engine::new(git_.fetch("fetch app", &Current::constant(id)));
    let out = settle(&engine, "the failure", |o| o.err().is_some()).await;
    let row = ctx.store.history(Default::default()).await.unwrap().rows.remove(0);
    let text = format!("{}\n{}\n{:?}", log(&ctx, &row.job_id), row.outcome, out);
    use base64::Engine as _;
    let header = base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{token}"));
    assert!(!text.contains(token) && !text.contains(&header), "{text}");
    assert!(!std::fs::read_dir(ctx.state_dir().join("git")).unwrap().any(|e| {
        let config = e.unwrap().path().join("config");
        std::fs::read_to_string(config).unwrap_or_default().contains(token)
    }));
}

#[test]
fn bad_input_is_refused_before_any_command_runs() {
    assert!(CommitId::new("--upload-pack=touch /tmp/pwned", "main", &"a".repeat(40)).is_err());
    assert!(CommitId::new("https://x/r.git", "-c core.sshCommand=x", &"a".repeat(40)).is_err());
    assert!(CommitId::new("https://x/r.git", "main; rm -rf /", &"a".repeat(40)).is_err());
    assert!(CommitId::new("https://x/r.git", "main", "HEAD").is_err());
    assert!(local_branch(Path::new("relative/path"), "main").is_err());
    assert!(local_branch(Path::new("/srv/app"), "$(id)").is_err());
}

/// Security issue 7: an untrusted commit (a pull request's) whose
/// `.gitmodules` names the deployer's own mirror by path, a `file://` URL,
/// an `ssh://` URL or plain `http://` gets none of them fetched: the fetch
/// fails naming the submodule, and nothing connects to the hosts named.
/// The operator's own commit with a local submodule still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_commits_hostile_submodules_are_not_fetched() {
    use deployer_git::Trust;
    let dir = work("hostile-submodules");
    let ctx = context(&dir);
    let git_ = Git::new(&ctx);
    // A private repository the deployer has mirrored for its own use.
    let secret = repo(&dir.join("secret"));
    let secret_hash = commit(&secret, "token.txt", "s3cr3t-deploy-key");
    let id = CommitId::new(secret.to_str().unwrap(), "main", &secret_hash).unwrap();
    let engine = Engine::new(git_.fetch("fetch secret", &Current::constant(id.clone())));
    settle(&engine, "the secret's fetch", is_commit(&secret_hash)).await;
    let mirror = git_.mirror_path(&id.repo);
    assert!(mirror.exists());
    // Listeners that count connections, standing for ssh and http hosts.
    let ssh = TcpListener::bind("127.0.0.1:0").unwrap();
    let http = TcpListener::bind("127.0.0.1:0").unwrap();
    for l in [&ssh, &http] {
        l.set_nonblocking(true).unwrap();
    }
    let hostile = [
        mirror.display().to_string(),
        format!("file://{}", mirror.display()),
        format!("ssh://git@127.0.0.1:{}/secret.git", ssh.local_addr().unwrap().port()),
        format!("git@127.0.0.1:secret.git"),
        format!("http://127.0.0.1:{}/secret.git", http.local_addr().unwrap().port()),
    ];
    for (i, url) in hostile.iter().enumerate() {
        let pr = repo(&dir.join(format!("pr{i}")));
        commit(&pr, "main.txt", "a pull request");
        std::fs::write(pr.join(".gitmodules"), format!("[submodule \"x\"]\n\tpath = deps/x\n\turl = {url}\n")).unwrap();
        git(&pr, &["add", ".gitmodules"]);
        git(&pr, &["update-index", "--add", "--cacheinfo", &format!("160000,{secret_hash},deps/x")]);
        git(&pr, &["commit", "-q", "-m", "hostile submodule"]);
        let hash = git(&pr, &["rev-parse", "HEAD"]);
        let pr_id = CommitId::new(pr.to_str().unwrap(), "main", &hash).unwrap();
        let fetch = git_.fetch_with_trust(
            &format!("fetch pr{i}"),
            &Current::constant(pr_id),
            &Current::constant(Trust::Untrusted),
        );
        let engine = Engine::new(fetch);
        let out = settle(&engine, url, |o| !matches!(o, Output::Active(_))).await;
        let e = out
            .err()
            .unwrap_or_else(|| panic!("{url}: the untrusted commit's submodule was fetched"))
            .message()
            .to_owned();
        assert!(e.contains("submodule deps/x") && e.contains("untrusted"), "{url}: {e}");
    }
    assert!(ssh.accept().is_err() && http.accept().is_err(), "something connected to the hosts .gitmodules named");
    // The operator's own commit: the same kind of submodule is fetched.
    let own = repo(&dir.join("own"));
    commit(&own, "main.txt", "ours");
    git(&own, &["submodule", "add", "-q", secret.to_str().unwrap(), "deps/x"]);
    git(&own, &["commit", "-q", "-m", "our submodule"]);
    let hash = git(&own, &["rev-parse", "HEAD"]);
    let own_id = CommitId::new(own.to_str().unwrap(), "main", &hash).unwrap();
    let fetch = git_.fetch_with_trust("fetch own", &Current::constant(own_id), &Current::constant(Trust::Operator));
    let engine = Engine::new(fetch);
    let Output::Ok(c) = settle(&engine, "our fetch", is_commit(&hash)).await else { unreachable!() };
    assert_eq!(c.submodules.len(), 1);
}

/// A deploy of a fetched commit, for the fault test below: records each
/// commit it deploys (test code standing in for a service update).
struct RecordDeploy {
    deployed: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

#[async_trait::async_trait]
impl deployer_core::cache::Publisher for RecordDeploy {
    const ID: &'static str = "test-deploy";
    type Key = String;
    type Value = Commit;
    type Outcome = String;
    fn level(&self) -> Level {
        Level::Harmless
    }
    fn latched(&self) -> bool {
        true
    }
    async fn publish(&self, _job: &Job, _key: &String, commit: &Commit) -> Result<String, deployer_core::Error> {
        let hash = commit.id.hash.as_str().to_owned();
        self.deployed.lock().unwrap().push(hash.clone());
        Ok(hash)
    }
}

/// Issue 20 §2: the git remote becomes unreachable, and while it is, its
/// branch is force-pushed. The version deployed from it stays deployed (no
/// deploy runs while the head cannot be read); once the remote answers
/// again (same address), the new head is fetched and deployed, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_remote_then_force_pushed_keeps_the_deployed_version_then_deploys_the_new_head() {
    let dir = work("unreachable-force");
    let served = dir.join("served");
    std::fs::create_dir_all(&served).unwrap();
    git(&served, &["init", "-q", "--bare", "-b", "main", "app.git"]);
    let daemon = Daemon::start(&served);
    let (port, url) = (daemon.port, daemon.url("app.git"));
    let w = repo(&dir.join("work"));
    let base = commit(&w, "VERSION", "v1 base");
    let first = commit(&w, "VERSION", "v1");
    git(&w, &["push", "-q", &url, "main"]);
    let ctx = context(&dir);
    let git_ = Git::new(&ctx);
    let head = git_.remote_branch(&Remote::new(&url).unwrap(), "main", Duration::from_secs(3600)).unwrap();
    let fetched = git_.fetch("fetch app", &head.current());
    let deployed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let deploys = deployer_core::cache::OutputCache::new(&ctx, RecordDeploy { deployed: deployed.clone() });
    let engine = Engine::new(deploys.set("deploy app", "app".to_string(), fetched));
    settle(&engine, "v1 deployed", |o| matches!(o, Output::Ok(h) if *h == first)).await;
    // The remote goes away; meanwhile its branch is rewritten (pushed
    // straight into the served repository).
    drop(daemon);
    git(&w, &["reset", "-q", "--hard", &base]);
    let rewritten = commit(&w, "VERSION", "v2, force-pushed");
    git(&w, &["push", "-q", "-f", served.join("app.git").to_str().unwrap(), "main"]);
    head.refresh();
    // The head cannot be read: the failure names the remote and blocks the
    // deploy, which does not run (the service keeps what it runs).
    let out = settle(&engine, "the unreachable remote's failure", |o| o.err().is_some()).await;
    let message = out.err().unwrap().message().to_owned();
    assert!(message.contains(&format!("127.0.0.1:{port}")), "the failure names the remote: {message}");
    assert_eq!(*deployed.lock().unwrap(), [first.clone()], "nothing is deployed while the head cannot be read");
    // Back, at the same address: the new head is fetched and deployed once.
    let _daemon = Daemon::start_on(&served, port);
    head.refresh();
    settle(&engine, "the force-pushed head deployed", |o| matches!(o, Output::Ok(h) if *h == rewritten)).await;
    assert_eq!(*deployed.lock().unwrap(), [first, rewritten]);
}
