//! Issue 20 §2: faults with the real services. The Docker daemon is
//! stopped and started again in the middle of a service update; a registry
//! goes down during a push and during a scheduled pull; sshd is killed
//! during a deploy tunnelled over SSH; the git remote becomes unreachable
//! and is then force-pushed. Each time the job fails clearly, the service
//! keeps running a whole version (the old one, or the new one, never a mix),
//! and once the service is back the pipeline converges by itself: the
//! failure is of kind `Unavailable` and is tried again after
//! `RETRY_UNAVAILABLE` (the clock is a manual one, so "a minute later" is a
//! step of the test).
//!
//! The tests of this binary run one at a time (`FAULTS`): one of them stops
//! the daemon the others use, and the SSH test counts this process's sockets.

mod support {
    pub mod docker;
    pub mod pipeline;
}

#[path = "../../deployer-ssh/tests/support/sshd.rs"]
mod sshd;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bollard::models::ServiceSpecUpdateConfig;
use deployer_core::cache::{Schedule, RETRY_UNAVAILABLE};
use deployer_core::{Config, Context, Current, Engine, ErrorKind, ManualClock, Output, Var};
use deployer_docker::{BuildOptions, BuildSource, Deployed, Docker, DockerHost, Image, ServiceOptions};
use support::docker::{busybox_context, docker_cli, run, served_by, services, SERVE};
use support::pipeline::{dir, docker, log, quick_options, quick_spec_with, settle, unique};

/// One fault test at a time.
static FAULTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const START: i64 = 1_764_000_000_000;

fn context(d: &Path) -> (Context, ManualClock) {
    let clock = ManualClock::new(START);
    (Context::open_with_clock(&d.join("state"), Config::default(), clock.clock()).unwrap(), clock)
}

/// Waits (polling, `secs` at most) until `ready` holds.
async fn wait_until(what: &str, secs: u64, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ready() {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The image in the service's spec, and the images its running containers
/// run (sorted).
fn service_images(name: &str) -> (String, Vec<String>) {
    let s = services();
    let spec =
        run(docker_cli(s).args(["service", "inspect", name, "--format", "{{.Spec.TaskTemplate.ContainerSpec.Image}}"]));
    let ids =
        run(docker_cli(s).args(["ps", "-q", "--filter"]).arg(format!("label=com.docker.swarm.service.name={name}")));
    let mut running: Vec<String> =
        ids.lines().map(|id| run(docker_cli(s).args(["inspect", id, "--format", "{{.Config.Image}}"]))).collect();
    running.sort();
    (spec, running)
}

/// Whether `spec_image` (`repo:tag@sha256:…` or `repo@sha256:…`) is `image`.
fn is_image(spec_image: &str, image: &Image) -> bool {
    spec_image == image.as_str() || spec_image.ends_with(&format!("@{}", image.digest()))
}

/// Swarm's update state of the service (`updating`, `completed`, … or
/// empty).
fn update_state(name: &str) -> String {
    let s = services();
    let out = docker_cli(s)
        .args(["service", "inspect", name, "--format", "{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}"])
        .output()
        .expect("docker runs");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Builds `version` of a web server and deploys it as `name` through the
/// registry `registry`: build → push → service, with `replicas` replicas
/// updated one at a time, 2 s apart.
struct Web {
    source: Var<BuildSource>,
    deployed: Current<Deployed>,
}

fn web(ctx: &Context, d: &Path, registry: &str, name: &str, replicas: u64) -> Web {
    let (docker, host) = docker(ctx, d);
    web_on(&docker, &host, d, registry, name, replicas)
}

/// [`web`] through `docker` on `host`.
fn web_on(docker: &Docker, host: &DockerHost, d: &Path, registry: &str, name: &str, replicas: u64) -> Web {
    let source = Var::new("source", BuildSource::Dir(busybox_context(&d.join("v1"), "v1", SERVE)));
    let image = docker.build("build", host, &source.current(), BuildOptions::default());
    let pushed = docker.push(host, &format!("{registry}/{name}:live"), &image).unwrap();
    let mut spec = quick_spec_with(replicas);
    spec.update_config =
        Some(ServiceSpecUpdateConfig { parallelism: Some(1), delay: Some(2_000_000_000), ..Default::default() });
    let options = ServiceOptions { create: Some(spec), ..quick_options() };
    let deployed = docker.service(host, name, &pushed, options);
    Web { source, deployed }
}

/// Steps `engine` until the update of service `name` from `old` is
/// half-way: swarm is updating and one task runs the new image (the one the
/// deployer put in the spec), another `old`. Gives the new image.
async fn half_way(engine: &Engine<Deployed>, name: &str, old: &Image) -> Image {
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < Duration::from_secs(180), "the update never got half-way");
        engine.step();
        let (spec, running) = service_images(name);
        if !is_image(&spec, old)
            && update_state(name) == "updating"
            && running.iter().any(|i| *i == spec)
            && running.iter().any(|i| is_image(i, old))
        {
            return Image(spec);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until swarm has ended its update of `name` (to `new` or back to
/// `old`) with `replicas` tasks all on one version: never a mix. Gives the
/// version it ended on.
async fn update_ended(name: &str, replicas: usize, old: &Image, new: &Image) -> &'static str {
    let mut on = "";
    wait_until("swarm's update to end", 180, || {
        let (spec, running) = service_images(name);
        let all = |image: &Image| running.len() == replicas && running.iter().all(|i| is_image(i, image));
        on = if update_state(name) != "updating" && is_image(&spec, new) && all(new) {
            "the new version"
        } else if is_image(&spec, old) && all(old) {
            "the old version"
        } else {
            ""
        };
        !on.is_empty()
    })
    .await;
    on
}

/// The directory of the services' files (where `docker.pid` is).
fn services_dir() -> PathBuf {
    services().socket.parent().expect("the socket is in the services' directory").to_owned()
}

/// Stops the test daemon (SIGTERM, as `systemctl restart` does) and waits
/// for it to exit. `scripts/docker-services` starts it again once the
/// returned guard is dropped (it watches DIR/hold).
async fn stop_dockerd() -> impl Drop {
    struct Hold(PathBuf);
    impl Drop for Hold {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let d = services_dir();
    let hold = Hold(d.join("hold"));
    std::fs::write(&hold.0, "a fault test stopped dockerd\n").unwrap();
    let pid = std::fs::read_to_string(d.join("docker.pid")).expect("dockerd's pid file").trim().to_owned();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success(), "cannot stop dockerd (pid {pid}): the fault tests need to be root, as ./scripts/test is");
    // scripts/docker-services has seen the exit (and will start it again).
    let held = d.join("held");
    wait_until("dockerd's exit, seen by scripts/docker-services", 60, || held.exists()).await;
    hold
}

/// Waits for the daemon to answer again and its swarm to be active.
async fn wait_for_dockerd() {
    let s = services();
    wait_until("dockerd back with its swarm", 120, || {
        docker_cli(s)
            .args(["info", "--format", "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "active true")
            && docker_cli(s).args(["node", "ls", "-q"]).output().is_ok_and(|o| o.status.success())
    })
    .await;
}

/// The daemon is stopped while a two-replica service is half-way through
/// its update (one task on v2, one on v1). The job fails clearly (the
/// daemon did not answer, kind `Unavailable`); once the daemon is back,
/// swarm finishes its update and the service runs one version on all its
/// tasks; a minute later the deployer tries again by itself, finds v2
/// running and confirms it, without an operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerd_restarted_in_the_middle_of_a_service_update() {
    let _one = FAULTS.lock().await;
    let s = services();
    let d = dir("fault-dockerd");
    let (ctx, clock) = context(&d);
    let name = unique("fault-dockerd");
    let w = web(&ctx, &d, &s.registry, &name, 2);
    let engine = Engine::new(w.deployed.clone());
    let out = settle(&engine, "v1 deployed", 180, |o| o.is_ok()).await;
    let v1 = out.ok().unwrap().image;
    w.source.set(BuildSource::Dir(busybox_context(&d.join("v2"), "v2", SERVE)));
    let v2 = half_way(&engine, &name, &v1).await;
    let hold = stop_dockerd().await;
    let out = settle(&engine, "the deploy's failure", 120, |o| o.err().is_some()).await;
    let e = out.err().unwrap().clone();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e:?}");
    assert!(
        e.message().contains(&name) && e.message().contains("on test"),
        "the error names the service and host: {e:?}"
    );
    let history = ctx.store.history(Default::default()).await.unwrap();
    let failed = history.rows.iter().find(|r| !r.ok && r.op == "docker-service").expect("a failed deploy row");
    let job_log = log(&ctx, &failed.job_id);
    assert!(job_log.contains("Lost track of the update"), "{job_log}");
    drop(hold);
    wait_for_dockerd().await;
    // Swarm ends its update: one version on every task, never a mix.
    let on = update_ended(&name, 2, &v1, &v2).await;
    println!("after the restart, swarm left {name} on {on}");
    // A minute later, the deployer tries again by itself and confirms v2.
    clock.advance(RETRY_UNAVAILABLE);
    engine.step();
    let out = settle(
        &engine,
        "v2 confirmed after the restart",
        180,
        |o| matches!(o, Output::Ok(d) if d.image.digest() == v2.digest()),
    )
    .await;
    assert!(out.is_ok());
    let (spec, running) = service_images(&name);
    assert!(
        is_image(&spec, &v2) && running.len() == 2 && running.iter().all(|i| is_image(i, &v2)),
        "{spec} {running:?}"
    );
    assert_eq!(served_by(s, &name), "v2");
    run(docker_cli(s).args(["service", "rm", &name]));
}

/// A registry of this test's own on a fixed loopback port, which the test
/// stops and starts again (same port, same data).
struct Registry {
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
    address: String,
}

impl Registry {
    fn start(d: &Path) -> Registry {
        std::fs::create_dir_all(d).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = d.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                d.join("data").display()
            ),
        )
        .unwrap();
        let mut r = Registry { child: None, config, log: d.join("registry.log"), address: format!("127.0.0.1:{port}") };
        r.up();
        r
    }

    fn up(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry starts (Debian's docker-registry)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&self.address).is_err() {
            assert!(Instant::now() < deadline, "the registry did not listen on {} within 30 s", self.address);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.down();
    }
}

/// The registry is down when v2 is pushed: the push fails clearly, the
/// service keeps running v1 untouched, and the push is tried again by
/// itself; once the registry is back, v2 is pushed and deployed. Then a
/// weekly pull of the same tag finds the registry down: a clear failure,
/// retried by itself, and the service deployed from the pull is untouched
/// throughout (nothing is redeployed when the pull comes back with the
/// same digest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_down_during_a_push_and_during_a_scheduled_pull() {
    let _one = FAULTS.lock().await;
    let s = services();
    let d = dir("fault-registry");
    let (ctx, clock) = context(&d);
    let mut registry = Registry::start(&d.join("registry"));
    let name = unique("fault-registry");
    let w = web(&ctx, &d, &registry.address, &name, 1);
    let engine = Engine::new(w.deployed.clone());
    let v1 = settle(&engine, "v1 deployed", 180, |o| o.is_ok()).await.ok().unwrap().image;
    registry.down();
    w.source.set(BuildSource::Dir(busybox_context(&d.join("v2"), "v2", SERVE)));
    let out = settle(&engine, "the push's failure", 180, |o| o.err().is_some()).await;
    let e = out.err().unwrap().clone();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e:?}");
    assert!(e.message().contains(&registry.address), "the error names the registry: {e:?}");
    let (spec, running) = service_images(&name);
    assert!(is_image(&spec, &v1) && running.iter().all(|i| is_image(i, &v1)), "v1 untouched: {spec} {running:?}");
    assert_eq!(served_by(s, &name), "v1");
    // Still down a minute later: tried again, failed again, v1 untouched.
    let pushes = |ctx: &Context| {
        let ctx = ctx.clone();
        async move {
            let rows = ctx.store.history(Default::default()).await.unwrap().rows;
            rows.iter().filter(|r| r.op == "docker-push" && !r.ok).count()
        }
    };
    assert_eq!(pushes(&ctx).await, 1);
    clock.advance(RETRY_UNAVAILABLE);
    engine.step();
    let deadline = Instant::now() + Duration::from_secs(120);
    while pushes(&ctx).await < 2 {
        assert!(Instant::now() < deadline, "the push was not tried again");
        tokio::time::timeout(Duration::from_secs(1), engine.next()).await.ok();
    }
    assert_eq!(served_by(s, &name), "v1");
    // Back: the next retry pushes and deploys v2.
    registry.up();
    clock.advance(RETRY_UNAVAILABLE);
    engine.step();
    let v2 =
        settle(&engine, "v2 deployed once the registry is back", 180, |o| matches!(o, Output::Ok(d) if d.image != v1))
            .await
            .ok()
            .unwrap()
            .image;
    assert_eq!(served_by(s, &name), "v2");
    drop(engine);

    // A weekly pull of the tag, deployed as another service.
    let (docker, host) = docker(&ctx, &d);
    let pulled_name = unique("fault-pulled");
    let weekly = Schedule::every(Duration::from_secs(7 * 86_400));
    let pulled = docker.pull(&host, &format!("{}/{name}:live", registry.address), weekly).unwrap();
    let deployed = docker.service(&host, &pulled_name, &pulled, quick_options());
    let engine = Engine::new(deployed);
    let first = settle(&engine, "the pulled image deployed", 180, |o| o.is_ok()).await.ok().unwrap();
    assert_eq!(first.image.digest(), v2.digest());
    let version = || run(docker_cli(s).args(["service", "inspect", &pulled_name, "--format", "{{.Version.Index}}"]));
    let before = version();
    registry.down();
    clock.advance(Duration::from_secs(7 * 86_400));
    engine.step();
    let pulls_failed = |ctx: &Context| {
        let ctx = ctx.clone();
        async move {
            let rows = ctx.store.history(Default::default()).await.unwrap().rows;
            rows.into_iter().filter(|r| r.op == "docker-pull" && !r.ok).collect::<Vec<_>>()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let failed = loop {
        let failed = pulls_failed(&ctx).await;
        if let Some(row) = failed.first() {
            break row.clone();
        }
        assert!(Instant::now() < deadline, "the weekly pull did not fail");
        tokio::time::timeout(Duration::from_secs(1), engine.next()).await.ok();
    };
    assert!(failed.unavailable, "the failed pull is retried by itself: {failed:?}");
    assert!(failed.outcome.contains(&registry.address), "the failure names the registry: {}", failed.outcome);
    assert_eq!(version(), before, "the service is untouched while the registry is down");
    assert_eq!(served_by(s, &pulled_name), "v2");
    registry.up();
    clock.advance(RETRY_UNAVAILABLE);
    engine.step();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let rows = ctx.store.history(Default::default()).await.unwrap().rows;
        if rows.iter().any(|r| r.op == "docker-pull" && r.ok && r.finished > failed.finished) {
            break;
        }
        assert!(Instant::now() < deadline, "the pull was not retried once the registry was back");
        tokio::time::timeout(Duration::from_secs(1), engine.next()).await.ok();
    }
    let out = settle(&engine, "the pulled service", 60, |o| o.is_ok()).await;
    assert_eq!(out.ok().unwrap().image.digest(), v2.digest());
    assert_eq!(version(), before, "the same digest is not deployed again");
    run(docker_cli(s).args(["service", "rm", &name, &pulled_name]));
}

/// sshd is killed (the listener, every connection and what they run, as
/// when the host crashes) while a deploy tunnelled over SSH watches a
/// two-replica service half-way through its update. The job fails clearly
/// (nothing answered, naming the service and host); the deployer keeps no
/// socket to the dead server and left no process behind; the daemon itself
/// was not touched, so swarm finishes the update on its own; once sshd is
/// back, the retry a minute later connects again, over one new connection,
/// and confirms the new version without an operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sshd_killed_during_a_deploy_tunnelled_over_ssh() {
    let _one = FAULTS.lock().await;
    let s = services();
    let d = dir("fault-sshd");
    // The test's own services (started for this process) are not the deployer's.
    let services_running = sshd::children_other_than(&[]);
    let (ctx, clock) = context(&d);
    let mut server = sshd::Sshd::start(&d.join("sshd"));
    let known = server.known_hosts("known_hosts", server.port);
    let ssh_host = deployer_ssh::Host::new(&format!("{}@127.0.0.1:{}", server.user, server.port))
        .unwrap()
        .key_file(&server.client_key)
        .known_hosts(&known);
    let config = d.join("docker-config");
    std::fs::create_dir_all(&config).unwrap();
    let docker = Docker::new(&ctx).config_dir(&config);
    let host = docker.ssh("tunnelled", ssh_host, &s.socket.to_string_lossy()).unwrap();
    let name = unique("fault-sshd");
    let w = web_on(&docker, &host, &d, &s.registry, &name, 2);
    let engine = Engine::new(w.deployed.clone());
    let v1 = settle(&engine, "v1 deployed over SSH", 180, |o| o.is_ok()).await.ok().unwrap().image;
    assert_eq!(sshd::connections_to(server.port), ["01"], "one SSH connection carries every request");
    w.source.set(BuildSource::Dir(busybox_context(&d.join("v2"), "v2", SERVE)));
    let v2 = half_way(&engine, &name, &v1).await;
    server.kill();
    let out = settle(&engine, "the deploy's failure", 120, |o| o.err().is_some()).await;
    let e = out.err().unwrap().clone();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e:?}");
    assert!(e.message().contains(&name) && e.message().contains("tunnelled"), "names the service and host: {e:?}");
    println!("the tunnelled deploy failed: {e}");
    wait_until("no socket left to the dead sshd", 20, || sshd::connections_to(server.port).is_empty()).await;
    // The daemon was not touched: swarm ends its update by itself.
    let on = update_ended(&name, 2, &v1, &v2).await;
    println!("with sshd dead, swarm left {name} on {on}");
    // Back a minute later: the retry connects again and confirms v2.
    server.restart();
    clock.advance(RETRY_UNAVAILABLE);
    engine.step();
    settle(
        &engine,
        "v2 confirmed over a new connection",
        180,
        |o| matches!(o, Output::Ok(d) if d.image.digest() == v2.digest()),
    )
    .await;
    assert_eq!(served_by(s, &name), "v2");
    assert_eq!(sshd::connections_to(server.port), ["01"], "one new connection, none left from before");
    let left: Vec<String> =
        sshd::children_other_than(&["sshd"]).into_iter().filter(|p| !services_running.contains(p)).collect();
    assert_eq!(left, Vec::<String>::new(), "the deployer left no process behind");
    run(docker_cli(s).args(["service", "rm", &name]));
}
