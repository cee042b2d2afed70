//! deployer-ssh against a real OpenSSH server on loopback (started by the
//! test, see `support/sshd.rs`), with the real engine, caches and store.

mod support {
    pub mod sshd;
}

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use deployer_core::cache::Schedule;
use deployer_core::{Config, Context, Current, Engine, ErrorKind, Job, Level, Output, Secret, Value, Var};
use deployer_ssh::{Host, RunOptions, Ssh, SshError};
use support::sshd::{keygen, Agent, Proxy, Sshd, PASSPHRASE};

fn work(name: &str) -> PathBuf {
    let base = std::env::var_os("DEPLOYER_TEST_WORK").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("ssh-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn context(dir: &Path) -> Context {
    Context::open(&dir.join("state"), Config::default()).unwrap()
}

/// The server's host, checked against a known_hosts file naming it.
fn host(sshd: &Sshd, port: u16) -> Host {
    Host::new(&format!("{}@127.0.0.1:{port}", sshd.user))
        .unwrap()
        .key_file(&sshd.client_key)
        .known_hosts(sshd.known_hosts(&format!("known_hosts_{port}"), port))
}

fn args(line: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), line.into()]
}

/// Steps `engine` until `want` holds (20 s at most).
async fn settle<T: Value + std::fmt::Debug>(
    engine: &Engine<T>,
    what: &str,
    want: impl Fn(&Output<T>) -> bool,
) -> Output<T> {
    let wait = Duration::from_secs(20);
    engine.settle(wait, want).await.unwrap_or_else(|last| panic!("{what}: still {last:?} after {wait:?}"))
}

fn log(ctx: &Context, job: &str) -> String {
    String::from_utf8(ctx.jobs.read_log(job, 0, 1 << 20).unwrap().0).unwrap()
}

/// The one running job, once there is one.
async fn running_job(ctx: &Context) -> String {
    wait_for("a running job", || ctx.jobs.active().first().map(|j| j.id.clone())).await
}

/// Polls `check` every 10 ms until it gives a value (20 s at most).
async fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(t) = check() {
            return t;
        }
        assert!(Instant::now() < deadline, "waited 20 s for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A job for direct calls.
async fn job(ctx: &Context, name: &str) -> Job {
    let job = ctx.jobs.create(name, name).unwrap();
    job.start(Level::Harmless, None, None).await.unwrap();
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_streams_into_the_log_as_it_arrives_and_status_0_is_success() {
    let dir = work("stream");
    let sshd = Sshd::start(&dir.join("sshd"));
    let ctx = context(&dir);
    let ssh = Ssh::new(&ctx);
    let go = dir.join("go");
    let line = format!(
        "echo first; while [ ! -e {go} ]; do sleep 0.02; done; echo 'to stderr' >&2; printf 'no newline'",
        go = go.display()
    );
    let engine = Engine::new(ssh.run(&host(&sshd, sshd.port), "stream", args(&line), Schedule::never()));
    engine.step();
    let id = running_job(&ctx).await;
    // The first line is in the log while the command still runs.
    wait_for("the first line", || log(&ctx, &id).contains(": first\n").then_some(())).await;
    assert!(matches!(engine.output(), Output::Active(_)), "{:?}", engine.output());
    std::fs::write(&go, "").unwrap();
    settle(&engine, "success", |o| matches!(o, Output::Ok(()))).await;
    let text = log(&ctx, &id);
    assert!(text.contains(": to stderr\n") && text.contains(": no newline\n"), "{text}");
    assert!(!text.contains('\r'), "the terminal adds no carriage returns: {text:?}");
    let history = ctx.store.history(Default::default()).await.unwrap();
    assert!(history.rows[0].description.starts_with("ssh "), "{}", history.rows[0].description);
    assert!(history.rows[0].ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nonzero_status_is_an_error_naming_it_and_the_engine_carries_on() {
    let dir = work("status");
    let sshd = Sshd::start(&dir.join("sshd"));
    let ctx = context(&dir);
    let ssh = Ssh::new(&ctx);
    let h = host(&sshd, sshd.port);
    let command = Var::new("command", args("echo failing; exit 3"));
    let failing = ssh.run(&h, "failing", command.current(), Schedule::never());
    let fine = ssh.run(&h, "fine", args("true"), Schedule::never());
    let engine = Engine::new(Current::pair(&failing, &fine));
    let out = settle(&engine, "the failure", |o| o.err().is_some()).await;
    let e = out.err().unwrap();
    assert!(e.message().contains("exited with status 3"), "{}", e.message());
    assert_eq!(e.kind(), ErrorKind::Exit { code: Some(3), signal: None });
    // The other run still ran, and succeeded.
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let history = ctx.store.history(Default::default()).await.unwrap();
            if history.rows.iter().any(|r| r.ok && r.description.contains(": fine:")) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the other run succeeded within 20 s");
    // A new command runs; the same one does not run again.
    command.set(args("exit 0"));
    settle(&engine, "the fix", |o| matches!(o, Output::Ok(_))).await;
    let history = ctx.store.history(Default::default()).await.unwrap();
    assert_eq!(history.rows.iter().filter(|r| r.description.contains(": failing:")).count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_hangs_up_on_the_remote_command() {
    let dir = work("cancel");
    let sshd = Sshd::start(&dir.join("sshd"));
    let ctx = context(&dir);
    let ssh = Ssh::new(&ctx);
    let hup = dir.join("hup");
    let line = format!(
        "trap 'echo hung-up > {hup}; exit 1' HUP; echo started; while :; do sleep 0.05; done",
        hup = hup.display()
    );
    let engine = Engine::new(ssh.run(&host(&sshd, sshd.port), "forever", args(&line), Schedule::never()));
    engine.step();
    let id = running_job(&ctx).await;
    wait_for("the command to start", || log(&ctx, &id).contains(": started\n").then_some(())).await;
    ctx.jobs.get(&id).unwrap().cancel("the test cancelled it");
    let out = settle(&engine, "the cancellation", |o| o.err().is_some()).await;
    assert_eq!(out.err().unwrap().kind(), ErrorKind::Cancelled);
    wait_for("the remote command's hang-up", || hup.exists().then_some(())).await;
    assert_eq!(std::fs::read_to_string(&hup).unwrap(), "hung-up\n");
    assert!(log(&ctx, &id).contains("Hanging up on"), "{}", log(&ctx, &id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_never_ends_times_out() {
    let dir = work("timeout");
    let sshd = Sshd::start(&dir.join("sshd"));
    let ctx = context(&dir);
    let ssh = Ssh::with(&ctx, RunOptions { timeout: Some(Duration::from_secs(1)), ..Default::default() });
    let hup = dir.join("hup");
    let line = format!("trap 'touch {}; exit 1' HUP; while :; do sleep 0.05; done", hup.display());
    let engine = Engine::new(ssh.run(&host(&sshd, sshd.port), "stuck", args(&line), Schedule::never()));
    let out = settle(&engine, "the time-out", |o| o.err().is_some()).await;
    assert_eq!(out.err().unwrap().kind(), ErrorKind::TimedOut, "{:?}", out);
    wait_for("the remote command's hang-up", || hup.exists().then_some(())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_share_one_connection_and_a_dropped_one_is_made_again() {
    let dir = work("reuse");
    let sshd = Sshd::start(&dir.join("sshd"));
    let proxy = Proxy::start(sshd.port).await;
    let ctx = context(&dir);
    let ssh = Ssh::new(&ctx);
    let h = host(&sshd, proxy.port);
    for n in 0..5 {
        let j = job(&ctx, &format!("run {n}")).await;
        ssh.exec(&j, &h, &args(&format!("echo run {n}"))).await.unwrap();
        assert!(log(&ctx, j.id()).contains(&format!(": run {n}\n")));
        j.finish();
    }
    assert_eq!(proxy.connections(), 1, "five runs, one connection");
    proxy.cut();
    let j = job(&ctx, "after the cut").await;
    ssh.exec(&j, &h, &args("echo again")).await.unwrap();
    assert!(log(&ctx, j.id()).contains(": again\n"), "{}", log(&ctx, j.id()));
    assert_eq!(proxy.connections(), 2, "the dropped connection was made again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_changed_host_keys_are_refused_before_authentication() {
    let dir = work("hostkeys");
    let sshd = Sshd::start(&dir.join("sshd"));
    let ctx = context(&dir);
    let ssh = Ssh::new(&ctx);
    let j = job(&ctx, "host keys").await;
    let base = Host::new(&format!("{}@127.0.0.1:{}", sshd.user, sshd.port)).unwrap().key_file(&sshd.client_key);
    // Unknown: an empty file.
    let empty = dir.join("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    let e = ssh.exec(&j, &base.clone().known_hosts(&empty), &args("true")).await.unwrap_err();
    assert!(e.message().contains("is not in") && e.message().contains("SHA256:"), "{}", e.message());
    // Changed: the file lists another key for this host and port.
    let other = keygen(&dir.join("other_host_key"), "ed25519", "");
    let mut fields = other.split(' ');
    let changed = dir.join("changed_known_hosts");
    std::fs::write(
        &changed,
        format!("[127.0.0.1]:{} {} {}\n", sshd.port, fields.next().unwrap(), fields.next().unwrap()),
    )
    .unwrap();
    let e = ssh.exec(&j, &base.clone().known_hosts(&changed), &args("true")).await.unwrap_err();
    assert!(e.message().contains("CHANGED") && e.message().contains("changed_known_hosts:1"), "{}", e.message());
    // A pinned key that is not the server's.
    let e = ssh.exec(&j, &base.clone().pinned_key(&other).unwrap(), &args("true")).await.unwrap_err();
    assert!(e.message().contains("not the pinned key"), "{}", e.message());
    assert!(!sshd.log().contains("Accepted publickey"), "no key was offered to an unverified server");
    // The right pinned key works.
    ssh.exec(&j, &base.clone().pinned_key(&sshd.host_key).unwrap(), &args("true")).await.unwrap();
    // Hashed entries (ssh-keygen -H) work.
    let hashed = sshd.known_hosts("hashed_known_hosts", sshd.port);
    support::sshd::run(std::process::Command::new("ssh-keygen").arg("-q").arg("-H").arg("-f").arg(&hashed));
    assert!(std::fs::read_to_string(&hashed).unwrap().starts_with("|1|"));
    let fresh = Ssh::new(&ctx); // a new connection, checked against the hashed file
    fresh.exec(&j, &base.clone().known_hosts(&hashed), &args("true")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_on_first_use_only_when_asked() {
    let dir = work("tofu");
    let sshd = Sshd::start(&dir.join("sshd"));
    let ctx = context(&dir);
    let j = job(&ctx, "tofu").await;
    let learned = dir.join("learned_known_hosts");
    let h = Host::new(&format!("{}@127.0.0.1:{}", sshd.user, sshd.port))
        .unwrap()
        .key_file(&sshd.client_key)
        .learn_unknown_hosts(&learned);
    Ssh::new(&ctx).exec(&j, &h, &args("true")).await.unwrap();
    let text = std::fs::read_to_string(&learned).unwrap();
    assert!(text.starts_with(&format!("[127.0.0.1]:{} ssh-ed25519 ", sshd.port)), "{text}");
    // Now strict checking against the learned file passes.
    Ssh::new(&ctx).exec(&j, &h.clone().known_hosts(&learned), &args("true")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_files_passphrases_agents_and_refusals() {
    let dir = work("auth");
    let sshd = Sshd::start(&dir.join("sshd"));
    let ctx = context(&dir);
    let j = job(&ctx, "auth").await;
    let base = host(&sshd, sshd.port);
    // A key the server does not know.
    let e = Ssh::new(&ctx).exec(&j, &base.clone().key_file(&sshd.stranger_key), &args("true")).await.unwrap_err();
    assert!(e.message().contains("refused authentication") && e.message().contains("stranger_key"), "{}", e.message());
    // An encrypted RSA key: without its passphrase, with a wrong one, with it.
    let e = Ssh::new(&ctx).exec(&j, &base.clone().key_file(&sshd.rsa_key), &args("true")).await.unwrap_err();
    assert!(e.message().contains("give its passphrase"), "{}", e.message());
    let wrong = Secret::new("wrong passphrase".to_owned());
    let e = Ssh::new(&ctx).exec(&j, &base.clone().encrypted_key_file(&sshd.rsa_key, wrong), &args("true")).await;
    let message = e.unwrap_err().message().to_owned();
    assert!(message.contains("rsa_key") && !message.contains("wrong passphrase"), "{message}");
    let right = Secret::new(PASSPHRASE.to_owned());
    Ssh::new(&ctx).exec(&j, &base.clone().encrypted_key_file(&sshd.rsa_key, right), &args("true")).await.unwrap();
    // An agent holding the ed25519 key.
    let agent = Agent::start(&dir, &[&sshd.client_key]);
    Ssh::new(&ctx).exec(&j, &base.clone().agent_socket(&agent.socket), &args("true")).await.unwrap();
    assert!(!log(&ctx, j.id()).contains(PASSPHRASE), "the passphrase is in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ssh_config_alias_and_an_unreachable_host() {
    let dir = work("config");
    let sshd = Sshd::start(&dir.join("sshd"));
    let ctx = context(&dir);
    let j = job(&ctx, "config").await;
    let known = sshd.known_hosts("known_hosts", sshd.port);
    let config = dir.join("ssh_config");
    std::fs::write(
        &config,
        format!(
            "Host backups\n  HostName 127.0.0.1\n  Port {}\n  User {}\n  IdentityFile {}\n  UserKnownHostsFile {}\n",
            sshd.port,
            sshd.user,
            sshd.client_key.display(),
            known.display()
        ),
    )
    .unwrap();
    let h = Host::from_ssh_config("backups", &config).unwrap();
    assert_eq!(h.name(), "backups");
    Ssh::new(&ctx).exec(&j, &h, &args("echo via the alias")).await.unwrap();
    assert!(log(&ctx, j.id()).contains(": via the alias\n"));
    // Issue 23 (one rule for labels): a scheduled run's box and its job
    // both name the host as the pipeline does (the alias); the job's log
    // says where that is.
    let engine = Engine::new(Ssh::new(&ctx).run(&h, "tarsnap", args("true"), Schedule::never()));
    engine.step();
    let label = engine.diagram(&Default::default()).boxes.iter().find(|b| b.job_id.is_some()).map(|b| b.label.clone());
    assert_eq!(label.as_deref(), Some("ssh backups: tarsnap"));
    settle(&engine, "the aliased run", |o| matches!(o, Output::Ok(()))).await;
    let row = ctx.store.history(Default::default()).await.unwrap().rows.into_iter().next().unwrap();
    assert_eq!(row.description, "ssh backups: tarsnap: sh -c true");
    assert!(
        log(&ctx, &row.job_id).contains(&format!("Exec on {}: sh -c true", h.destination())),
        "{}",
        log(&ctx, &row.job_id)
    );
    // Nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let e = Ssh::new(&ctx).exec(&j, &host(&sshd, closed), &args("true")).await.unwrap_err();
    assert!(e.message().contains("cannot connect to") && e.message().contains("refused"), "{}", e.message());
    let e: SshError = Host::from_ssh_config("backups", &dir.join("missing")).unwrap_err();
    assert!(e.to_string().contains("cannot read"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_reaches_a_unix_socket_on_the_host_over_one_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = work("tunnel");
    let sshd = Sshd::start(&dir.join("sshd"));
    let proxy = Proxy::start(sshd.port).await;
    // A Unix socket "on the host" (this machine): an echo server.
    let remote = dir.join("echo.sock");
    let listener = tokio::net::UnixListener::bind(&remote).unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let ctx = context(&dir);
    let ssh = Ssh::new(&ctx);
    let local = dir.join("local.sock");
    let tunnel = ssh.tunnel(&host(&sshd, proxy.port), &local, remote.to_str().unwrap()).await.unwrap();
    assert_eq!(tunnel.docker_host(), format!("unix://{}", local.display()));
    let mut clients = Vec::new();
    for n in 0..3 {
        let local = local.clone();
        clients.push(tokio::spawn(async move {
            let mut s = tokio::net::UnixStream::connect(&local).await.unwrap();
            let message = format!("hello {n} through the tunnel");
            s.write_all(message.as_bytes()).await.unwrap();
            let mut back = vec![0u8; message.len()];
            s.read_exact(&mut back).await.unwrap();
            assert_eq!(back, message.as_bytes());
        }));
    }
    for c in clients {
        tokio::time::timeout(Duration::from_secs(20), c).await.expect("an echo within 20 s").unwrap();
    }
    assert_eq!(proxy.connections(), 1, "three clients, one SSH connection");
    let tcp = ssh.tunnel_tcp(&host(&sshd, proxy.port), remote.to_str().unwrap()).await.unwrap();
    assert!(tcp.docker_host().starts_with("tcp://127.0.0.1:"));
    drop(tunnel);
    assert!(!local.exists(), "the socket is removed with the tunnel");
    // A host that cannot be reached fails when the tunnel is made.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let e = ssh.tunnel(&host(&sshd, closed), &dir.join("other.sock"), "/x").await.unwrap_err();
    assert!(e.to_string().contains("cannot connect"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_two_runs_at_once_for_one_key() {
    let dir = work("serial");
    let sshd = Sshd::start(&dir.join("sshd"));
    let ctx = context(&dir);
    let ssh = Ssh::new(&ctx);
    let (trace, go) = (dir.join("trace"), dir.join("go"));
    let first = format!(
        "echo first-start >> {t}; while [ ! -e {g} ]; do sleep 0.02; done; echo first-end >> {t}",
        t = trace.display(),
        g = go.display()
    );
    let command = Var::new("command", args(&first));
    let engine = Engine::new(ssh.run(&host(&sshd, sshd.port), "deploy", command.current(), Schedule::never()));
    engine.step();
    wait_for("the first run", || std::fs::read_to_string(&trace).ok().filter(|t| t.contains("first-start"))).await;
    // A new command while the first still runs: it waits for it.
    command.set(args(&format!("echo second >> {}", trace.display())));
    engine.step();
    std::fs::write(&go, "").unwrap();
    settle(&engine, "the second run", |o| {
        matches!(o, Output::Ok(())) && std::fs::read_to_string(&trace).is_ok_and(|t| t.contains("second"))
    })
    .await;
    assert_eq!(std::fs::read_to_string(&trace).unwrap(), "first-start\nfirst-end\nsecond\n");
}

/// Issue 20 §2: sshd is killed (the listener, every connection and the
/// command they run, as when the host crashes) in the middle of a scheduled
/// command. The run fails clearly, naming the host, and keeps no socket to
/// the dead server; while sshd is down the retries fail as "nothing
/// answered"; once it is back the next retry connects again, over one new
/// connection, and succeeds. No process is left behind on the deployer's
/// side (it runs SSH in-process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sshd_killed_during_a_scheduled_command_fails_clearly_and_the_next_run_reconnects() {
    let dir = work("killed");
    let mut sshd = Sshd::start(&dir.join("sshd"));
    let ctx = context(&dir);
    let ssh = Ssh::new(&ctx);
    let (runs, go) = (dir.join("runs"), dir.join("go"));
    let line = format!(
        "echo run >> {runs}; echo started; while [ ! -e {go} ]; do sleep 0.02; done; echo finished",
        runs = runs.display(),
        go = go.display()
    );
    // An hourly job whose failures are tried again after a second.
    let schedule = Schedule::every(Duration::from_secs(3600)).retry_failures_after(Duration::from_secs(1));
    let engine = Engine::new(ssh.run(&host(&sshd, sshd.port), "nightly", args(&line), schedule));
    engine.step();
    let id = running_job(&ctx).await;
    wait_for("the command to start", || log(&ctx, &id).contains(": started\n").then_some(())).await;
    assert_eq!(support::sshd::connections_to(sshd.port), ["01"], "one established connection");
    sshd.kill();
    let out = settle(&engine, "the run's failure", |o| o.err().is_some()).await;
    let e = out.err().unwrap().clone();
    assert!(e.message().contains("127.0.0.1"), "the error names the host: {e:?}");
    assert_ne!(e.kind(), ErrorKind::Cancelled, "{e:?}");
    assert!(e.message().contains("closed before"), "{e:?}");
    wait_for("no socket left to the dead server", || support::sshd::connections_to(sshd.port).is_empty().then_some(()))
        .await;
    // Down: the retries find nobody there.
    let deadline = Instant::now() + Duration::from_secs(20);
    let refused = loop {
        let rows = ctx.store.history(Default::default()).await.unwrap().rows;
        if let Some(row) = rows.into_iter().find(|r| !r.ok && r.unavailable) {
            break row;
        }
        assert!(Instant::now() < deadline, "no retry while sshd was down within 20 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(refused.outcome.contains("cannot connect to"), "{}", refused.outcome);
    assert_eq!(std::fs::read_to_string(&runs).unwrap(), "run\n", "nothing ran while sshd was down");
    // Back: the next retry connects again and the command runs to its end.
    std::fs::write(&go, "").unwrap();
    sshd.restart();
    settle(&engine, "the run after the restart", |o| matches!(o, Output::Ok(()))).await;
    assert_eq!(std::fs::read_to_string(&runs).unwrap(), "run\nrun\n");
    let history = ctx.store.history(Default::default()).await.unwrap();
    let ok = history.rows.iter().find(|r| r.ok).expect("a successful run");
    assert!(log(&ctx, &ok.job_id).contains(": finished\n"), "{}", log(&ctx, &ok.job_id));
    assert_eq!(support::sshd::connections_to(sshd.port), ["01"], "one new connection, none left from before");
    // The deployer runs SSH in-process: it started no process of its own.
    let servers = ["sshd", "ssh-agent", "ssh-keygen", "ssh-add", "id"];
    assert_eq!(support::sshd::children_other_than(&servers), Vec::<String>::new());
}
