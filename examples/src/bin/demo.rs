//! The local demo: a deployer on one machine, deploying to a real Docker
//! swarm.
//!
//! It makes a git repository whose Dockerfile serves a page (a `FROM
//! scratch` image with busybox's httpd), watches its `live` branch, and for
//! each new commit: fetches it, builds the image from the commit, pushes it
//! to the local registry, and updates the swarm service `deployer-demo` to
//! it — health-gated, rolled back if the new version does not stay up. The
//! web UI (the pipeline, its jobs and logs) is on 127.0.0.1:8080.
//!
//! The demo commits v1, then v2, then a broken v3 (its server exits at
//! once), and checks at each step what the service serves on its port:
//! v1, v2, and v2 again after the rollback. It prints the time of each
//! phase (detect, fetch, build, push, update, converge, confirm) and the
//! engine's own share of the total.
//!
//! ```text
//! demo --registry 127.0.0.1:5000 [--docker unix:///var/run/docker.sock]
//!      [--listen 127.0.0.1:8080] [--port 8081] [--name deployer-demo] [--once] [--keep]
//! ```
//!
//! `./scripts/demo` installs Docker and the registry when they are missing,
//! starts them, and runs this. With `--once` it exits after the checks
//! (status 0 only if the service runs the expected image digest), without
//! `--once` it keeps the web UI up until Ctrl-C. Its files (the repository,
//! the state directory) are removed when it ends, unless `--keep`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deployer_core::{Config, Context, Current, Engine, Error, Output, ResultExt};
use deployer_docker::{BuildOptions, BuildSource, Deployed, Docker, DockerHost, Endpoint, Image, ServiceOptions};
use deployer_git::{local_branch, Commit, CommitId, Git};
use deployer_web::Site;

/// How long any phase may take.
const PATIENCE: Duration = Duration::from_secs(300);

/// The command line.
struct Args {
    registry: String,
    docker: Option<String>,
    listen: String,
    port: u16,
    name: String,
    once: bool,
    keep: bool,
}

const USAGE: &str =
    "usage: demo --registry HOST:PORT [--docker URL] [--listen ADDR] [--port PORT] [--name NAME] [--once] [--keep]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        registry: String::new(),
        docker: None,
        listen: "127.0.0.1:8080".into(),
        port: 8081,
        name: "deployer-demo".into(),
        once: false,
        keep: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |what: &str| it.next().ok_or_else(|| format!("{flag} needs {what}"));
        match flag.as_str() {
            "--registry" => args.registry = value("HOST:PORT")?,
            "--docker" => args.docker = Some(value("a Docker host URL (unix:///…, tcp://…, ssh://…)")?),
            "--listen" => args.listen = value("an address")?,
            "--port" => {
                let v = value("a port")?;
                args.port = v.parse().map_err(|_| format!("--port {v:?} is not a port number"))?;
            }
            "--name" => args.name = value("a service name")?,
            "--once" => args.once = true,
            "--keep" => args.keep = true,
            "--help" | "-h" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if args.registry.is_empty() {
        return Err(format!("--registry is required (./scripts/demo gives it)\n{USAGE}"));
    }
    Ok(args)
}

fn git(repo: &Path, args: &[&str]) -> Result<String, Error> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["-c", "user.name=demo", "-c", "user.email=demo@localhost"])
        .args(args)
        .output()
        .context("running git (is it installed?)")?;
    if !out.status.success() {
        return Err(Error::msg(format!("git {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Commits a version of the site (and its server command) and moves `live`
/// to it; returns the commit's hash.
fn commit(repo: &Path, version: &str, command: &str) -> Result<String, Error> {
    std::fs::write(repo.join("index.html"), format!("{version}\n"))?;
    std::fs::write(
        repo.join("Dockerfile"),
        format!(
            "FROM scratch\nCOPY busybox /bin/busybox\nCOPY index.html /www/index.html\n\
             CMD [\"/bin/busybox\", \"sh\", \"-c\", \"{command}\"]\n"
        ),
    )?;
    git(repo, &["add", "."])?;
    git(repo, &["commit", "-q", "-m", version])?;
    git(repo, &["branch", "-f", "live", "HEAD"])?;
    git(repo, &["rev-parse", "HEAD"])
}

const SERVE: &str = "exec /bin/busybox httpd -f -p 8080 -h /www";
const BROKEN: &str = "echo this version is broken; exit 3";

/// A plain HTTP/1.1 GET; the body.
async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out.split_once("\r\n\r\n").map_or(out.clone(), |(_, body)| body.to_owned()))
}

/// Waits until the service's port answers with `version`.
async fn serves(port: u16, version: &str) -> Result<(), Error> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let wait = async {
        loop {
            if let Ok(body) = http_get(addr, "/index.html").await {
                if body.trim() == version {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .map_err(|_| Error::msg(format!("127.0.0.1:{port} did not serve {version:?} within 60 s")))
}

/// Waits until `rx` shows a value that `want` accepts; returns it.
async fn until<T: Clone + Send + Sync + 'static>(
    rx: &mut tokio::sync::watch::Receiver<Output<T>>,
    what: &str,
    want: impl Fn(&Output<T>) -> bool,
) -> Result<Output<T>, Error> {
    let found = tokio::time::timeout(PATIENCE, rx.wait_for(|o| want(o)))
        .await
        .map_err(|_| Error::msg(format!("the demo waited {} s for {what}", PATIENCE.as_secs())))?
        .map_err(|_| Error::msg("the engine stopped"))?;
    Ok(found.clone())
}

/// What the service's spec and tasks say, read by the demo to time the
/// update and the convergence (the deployer itself does not need this).
async fn service_state(docker: &bollard::Docker, name: &str, digest: &str) -> (bool, bool) {
    let Ok(service) = docker.inspect_service(name, None).await else { return (false, false) };
    let spec_image = service
        .spec
        .and_then(|s| s.task_template)
        .and_then(|t| t.container_spec)
        .and_then(|c| c.image)
        .unwrap_or_default();
    let updated = spec_image.ends_with(digest);
    let filters = std::collections::HashMap::from([("service", vec![name]), ("desired-state", vec!["running"])]);
    let options = bollard::query_parameters::ListTasksOptionsBuilder::new().filters(&filters).build();
    let tasks = docker.list_tasks(Some(options)).await.unwrap_or_default();
    let running = tasks.iter().any(|t| {
        let on = t.spec.as_ref().and_then(|s| s.container_spec.as_ref()).and_then(|c| c.image.as_deref()).unwrap_or("");
        on.ends_with(digest) && t.status.as_ref().and_then(|s| s.state) == Some(bollard::models::TaskState::RUNNING)
    });
    (updated, running)
}

/// The stages the demo watches.
struct Stages {
    head: Current<CommitId>,
    commit: Current<Commit>,
    image: Current<Image>,
    pushed: Current<Image>,
    deployed: Current<Deployed>,
}

fn pipeline(ctx: &Context, docker: &Docker, host: &DockerHost, repo: &Path, args: &Args) -> Result<Stages, Error> {
    let git = Git::new(ctx);
    let head = local_branch(repo, "live")?.current();
    let commit = git.fetch("fetch live", &head);
    let source = commit.map(|c| BuildSource::Commit(c.clone()));
    let image = docker.build("build", host, &source, BuildOptions::default());
    let tag = format!("{}/deployer-demo:live", args.registry);
    let pushed = docker.push(host, &tag, &image).map_err(|e| Error::msg(e.to_string()))?;
    let options =
        ServiceOptions { monitor: Duration::from_secs(3), create: Some(service_spec(args.port)), ..Default::default() };
    let deployed = docker.service(host, &args.name, &pushed, options);
    Ok(Stages { head, commit, image, pushed, deployed })
}

/// The service's spec for its first deploy: one replica, the page on
/// `port` of this machine, a short stop grace period.
fn service_spec(port: u16) -> bollard::models::ServiceSpec {
    use bollard::models::*;
    ServiceSpec {
        mode: Some(ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated { replicas: Some(1) }),
            ..Default::default()
        }),
        task_template: Some(TaskSpec {
            container_spec: Some(TaskSpecContainerSpec {
                stop_grace_period: Some(1_000_000_000),
                ..Default::default()
            }),
            ..Default::default()
        }),
        endpoint_spec: Some(EndpointSpec {
            ports: Some(vec![EndpointPortConfig {
                target_port: Some(8080),
                published_port: Some(i64::from(port)),
                publish_mode: Some(EndpointPortConfigPublishModeEnum::HOST),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The times of one deploy's phases.
struct Phases {
    version: String,
    image: Image,
    phases: Vec<(&'static str, Duration)>,
    engine: Duration,
}

/// Commits `version` and follows it to a running service.
async fn deploy_version(
    repo: &Path,
    version: &str,
    engine: &Engine<Deployed>,
    stages: &Stages,
    client: &bollard::Docker,
    args: &Args,
) -> Result<Phases, Error> {
    let (mut head, mut commit_rx, mut image_rx, mut pushed_rx, mut deployed_rx) = (
        engine.watch(&stages.head),
        engine.watch(&stages.commit),
        engine.watch(&stages.image),
        engine.watch(&stages.pushed),
        engine.watch(&stages.deployed),
    );
    let engine_before = engine.handle().timings().total;
    let (old_image, old_pushed) = (engine.output_of(&stages.image), engine.output_of(&stages.pushed));
    let start = Instant::now();
    let hash = commit(repo, version, SERVE)?;
    let mut phases = Vec::new();
    let mut mark = |name, at: &mut Instant| {
        let now = Instant::now();
        phases.push((name, now - *at));
        *at = now;
    };
    let mut at = start;
    until(&mut head, "the new head", |o| matches!(o, Output::Ok(id) if id.hash.as_str() == hash)).await?;
    mark("detect", &mut at);
    until(&mut commit_rx, "the fetch", |o| matches!(o, Output::Ok(c) if c.id.hash.as_str() == hash)).await?;
    mark("fetch", &mut at);
    let new = |old: &Option<Output<Image>>, o: &Output<Image>| match o {
        Output::Ok(_) => old.as_ref() != Some(o),
        Output::Err(_) => true,
        Output::Active(_) => false,
    };
    if let Output::Err(e) = until(&mut image_rx, "the build", |o| new(&old_image, o)).await? {
        return Err(Error::msg(format!("the build of {version} failed: {}", e.message())));
    }
    mark("build", &mut at);
    let pushed = match until(&mut pushed_rx, "the push", |o| new(&old_pushed, o)).await? {
        Output::Ok(p) => p,
        Output::Err(e) => return Err(Error::msg(format!("the push of {version} failed: {}", e.message()))),
        Output::Active(_) => unreachable!("until waits for an outcome"),
    };
    mark("push", &mut at);
    // Update (the spec names the new image) and converge (a task runs it),
    // seen from outside; then the deployer's confirmation (the monitoring
    // window).
    let digest = pushed.digest().to_owned();
    let mut updated = false;
    loop {
        let (u, running) = service_state(client, &args.name, &digest).await;
        if u && !updated {
            updated = true;
            mark("update", &mut at);
        }
        if running {
            if !updated {
                mark("update", &mut at);
            }
            mark("converge", &mut at);
            break;
        }
        if start.elapsed() > PATIENCE {
            return Err(Error::msg(format!("the service never ran {version}")));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deployed = until(&mut deployed_rx, "the deploy", |o| match o {
        Output::Ok(d) => d.image == pushed,
        Output::Err(_) => true,
        _ => false,
    })
    .await?;
    if let Output::Err(e) = deployed {
        return Err(Error::msg(format!("the deploy of {version} failed: {}", e.message())));
    }
    mark("confirm", &mut at);
    serves(args.port, version).await?;
    let engine_after = engine.handle().timings().total;
    Ok(Phases { version: version.to_owned(), image: pushed, phases, engine: engine_after - engine_before })
}

fn print_phases(p: &Phases) {
    let total: Duration = p.phases.iter().map(|(_, d)| *d).sum();
    let parts: Vec<String> = p.phases.iter().map(|(n, d)| format!("{n} {:.2} s", d.as_secs_f64())).collect();
    println!(
        "  {}: {} — total {:.2} s; the engine's own steps {:.1} ms ({:.3}% of it)",
        p.version,
        parts.join(", "),
        total.as_secs_f64(),
        p.engine.as_secs_f64() * 1e3,
        100.0 * p.engine.as_secs_f64() / total.as_secs_f64()
    );
}

/// The demo's files, removed when it ends (unless `--keep`).
struct Files {
    dir: std::path::PathBuf,
    keep: bool,
}

impl Drop for Files {
    fn drop(&mut self) {
        if self.keep {
            println!("(the demo's files are kept in {})", self.dir.display());
        } else if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("removing {}: {e}", self.dir.display());
        }
    }
}

async fn run(args: Args) -> Result<(), Error> {
    let dir = std::env::temp_dir().join(format!("deployer-demo-{}", std::process::id()));
    let _files = Files { dir: dir.clone(), keep: args.keep };
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo)?;
    std::fs::copy("/bin/busybox", repo.join("busybox"))
        .context("copying /bin/busybox into the demo's repository (install busybox-static)")?;
    git(&repo, &["init", "-q", "-b", "main"])?;

    let ctx = Context::open(&dir.join("state"), Config::default()).map_err(|e| Error::msg(e.to_string()))?;
    let docker = Docker::new(&ctx);
    let host = match &args.docker {
        Some(url) => docker.host("local", Endpoint::parse(url, None)?)?,
        None => docker.default_host()?,
    };
    let client = host.client().await?;
    // A swarm of one, if the daemon is not in one yet.
    let state = client.info().await.map_err(|e| Error::msg(format!("asking Docker for its state: {e}")))?;
    let active = state.swarm.and_then(|s| s.local_node_state).map(|s| s.to_string()) == Some("active".into());
    if !active {
        // On a free port: another daemon's swarm may hold 2377.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let request = bollard::models::SwarmInitRequest {
            listen_addr: Some(format!("127.0.0.1:{port}")),
            advertise_addr: Some("127.0.0.1".into()),
            ..Default::default()
        };
        client.init_swarm(request).await.map_err(|e| Error::msg(format!("starting swarm mode: {e}")))?;
        println!("started swarm mode on the Docker daemon");
    }
    // A service left by an earlier run would not be the one we create.
    let _ = client.delete_service(&args.name).await;

    let stages = pipeline(&ctx, &docker, &host, &repo, &args)?;
    let engine = Arc::new(Engine::new(stages.deployed.clone()));
    tokio::spawn({
        let engine = engine.clone();
        async move { engine.run().await }
    });
    let listener = match tokio::net::TcpListener::bind(&args.listen).await {
        Ok(l) => l,
        Err(_) => tokio::net::TcpListener::bind("127.0.0.1:0").await?,
    };
    let ui = listener.local_addr()?;
    let site = Site::new("deployer demo", engine.handle(), ctx.clone());
    // Without a login, acting on the UI (rebuild, confirm) needs the admin
    // token the site keeps in the state directory: the demo's operator is
    // the person at this terminal, so the demo prints the link that logs in.
    let token_file = ctx.state_dir().join("web-admin-token");
    tokio::spawn(site.serve(listener));
    println!("web UI: http://{ui}/ — the service will answer on http://127.0.0.1:{}/", args.port);
    for _ in 0..50 {
        if token_file.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    match std::fs::read_to_string(&token_file) {
        Ok(token) => println!("to act on it as the admin, open http://{ui}/admin-login?token={}\n", token.trim()),
        Err(_) => println!("(no admin token in {}: the UI is view-only)\n", token_file.display()),
    }

    let started = Instant::now();
    let v1 = deploy_version(&repo, "v1", &engine, &stages, &client, &args).await?;
    println!("v1 deployed and serving");
    let v2 = deploy_version(&repo, "v2", &engine, &stages, &client, &args).await?;
    println!("v2 deployed and serving");
    // A broken version: its server exits at once. Rolled back; v2 serves.
    let mut deployed_rx = engine.watch(&stages.deployed);
    let broken = Instant::now();
    commit(&repo, "v3 (broken)", BROKEN)?;
    let out = until(&mut deployed_rx, "the broken version's rollback", |o| o.err().is_some()).await?;
    let why = out.err().map(|e| e.message().to_owned()).unwrap_or_default();
    if !why.contains("rolled back") {
        return Err(Error::msg(format!("the broken version should have been rolled back, but: {why}")));
    }
    serves(args.port, "v2").await?;
    println!("v3 was broken: {why}\nv2 still serving after the rollback ({:.1} s)\n", broken.elapsed().as_secs_f64());

    // The service runs exactly the image v2 was pushed as.
    let running = {
        let service = client.inspect_service(&args.name, None).await.map_err(|e| Error::msg(e.to_string()))?;
        service
            .spec
            .and_then(|s| s.task_template)
            .and_then(|t| t.container_spec)
            .and_then(|c| c.image)
            .unwrap_or_default()
    };
    if !running.ends_with(v2.image.digest()) {
        return Err(Error::msg(format!("the service runs {running}, not the v2 image {}", v2.image)));
    }
    println!("phases (wall time):");
    print_phases(&v1);
    print_phases(&v2);
    let deployer_core::Timings { steps, total, .. } = engine.handle().timings();
    println!(
        "whole demo: {:.1} s; {steps} engine steps took {:.1} ms in all ({:.3}%)",
        started.elapsed().as_secs_f64(),
        total.as_secs_f64() * 1e3,
        100.0 * total.as_secs_f64() / started.elapsed().as_secs_f64()
    );
    println!("the service runs {running} (v2), as expected");
    if args.once {
        let _ = client.delete_service(&args.name).await;
        return Ok(());
    }
    println!("\nserving the web UI at http://{ui}/ until Ctrl-C (files in {}, removed then)", dir.display());
    let _ = tokio::signal::ctrl_c().await;
    let _ = client.delete_service(&args.name).await;
    Ok(())
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args).await {
        eprintln!("demo failed: {}", e.message());
        std::process::exit(1);
    }
}
