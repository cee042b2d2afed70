//! Test-only: a real Docker Engine (Debian's `docker.io`) in swarm mode and
//! a real registry (Debian's `docker-registry`) on 127.0.0.1, and test
//! images built `FROM scratch` with Debian's `busybox-static`.
//!
//! `./scripts/test` starts one dockerd and one registry for the whole run
//! (`scripts/docker-services`) and names them in the `DEPLOYER_TEST_DOCKER*`
//! and `DEPLOYER_TEST_REGISTRY` variables. Without those, the first test of
//! a process runs `scripts/docker-services` itself, which stops when the
//! process exits (`setpriv --pdeathsig`). Either way, a service that cannot
//! start fails the tests loudly. (Shared with the Docker benchmark, which
//! includes this file.)

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Where the daemon and registry are.
pub struct Services {
    /// The daemon's socket.
    pub socket: PathBuf,
    /// `127.0.0.1:port` of the registry.
    pub registry: String,
    /// `127.0.0.1:port` where the daemon speaks TLS (client certificates).
    pub tcp: String,
    /// The client's TLS material there (`ca.pem`, `cert.pem`, `key.pem`).
    pub tls: PathBuf,
    /// A directory for this process's files.
    pub work: PathBuf,
}

static SERVICES: OnceLock<Services> = OnceLock::new();

/// Runs a command; panics with its output if it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?} cannot run: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `docker` (the CLI) talking to the test daemon.
pub fn docker_cli(services: &Services) -> Command {
    let mut cmd = Command::new("docker");
    cmd.env("DOCKER_HOST", format!("unix://{}", services.socket.display()))
        .env("DOCKER_CONFIG", services.work.join("cli-config"))
        .env("DOCKER_BUILDKIT", "0");
    cmd
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "{what} was not ready within {} s", timeout.as_secs());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `cmd` so that it is stopped when this process exits: SIGTERM from
/// `setpriv --pdeathsig` (it is started from a thread that lives as long as
/// the process), and `DEPLOYER_SERVICES_PARENT` for scripts that watch it.
fn start_for_process_lifetime(program: &str, args: Vec<String>, log: PathBuf) {
    let (tx, rx) = std::sync::mpsc::channel();
    let program = program.to_owned();
    let what = format!("{program} {args:?}");
    std::thread::spawn(move || {
        let log = std::fs::File::create(&log).expect("a log file");
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "TERM", "--"])
            .arg(&program)
            .args(&args)
            .env("DEPLOYER_SERVICES_PARENT", std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a log file"))
            .stderr(log)
            .spawn();
        let started = child.is_ok();
        tx.send(child.map(|_| ()).map_err(|e| e.to_string())).expect("the test waits");
        if started {
            // Keep this thread (the parent of the process) alive.
            loop {
                std::thread::park();
            }
        }
    });
    rx.recv().expect("the starter answers").unwrap_or_else(|e| panic!("cannot start {what} ({e})"));
}

/// The services, started on first use.
pub fn services() -> &'static Services {
    SERVICES.get_or_init(|| {
        let base = std::env::var_os("DEPLOYER_TEST_WORK").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
        let work = base.join(format!("docker-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).unwrap();
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let vars =
            ["DEPLOYER_TEST_DOCKER", "DEPLOYER_TEST_REGISTRY", "DEPLOYER_TEST_DOCKER_TCP", "DEPLOYER_TEST_DOCKER_TLS"];
        let found: Vec<Option<String>> = vars.iter().map(|v| var(v)).collect();
        let values: Vec<String> =
            if found.iter().all(Option::is_some) { found.into_iter().flatten().collect() } else { start_own(&work) };
        let services = Services {
            socket: PathBuf::from(&values[0]),
            registry: values[1].clone(),
            tcp: values[2].clone(),
            tls: PathBuf::from(&values[3]),
            work,
        };
        wait_for("dockerd", Duration::from_secs(60), || {
            docker_cli(&services)
                .arg("version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        let swarm = run(docker_cli(&services).args(["info", "--format", "{{.Swarm.LocalNodeState}}"]));
        if swarm != "active" {
            // On a free port: another daemon's swarm may hold 2377.
            let listen = format!("127.0.0.1:{}", free_port());
            run(docker_cli(&services).args([
                "swarm",
                "init",
                "--advertise-addr",
                "127.0.0.1",
                "--listen-addr",
                &listen,
            ]));
        }
        let registry = services.registry.clone();
        wait_for("the registry", Duration::from_secs(30), || std::net::TcpStream::connect(&registry).is_ok());
        services
    })
}

/// A dockerd and a registry of this process's own (`scripts/docker-services`):
/// the values of the four variables, in order.
fn start_own(work: &Path) -> Vec<String> {
    assert!(
        Path::new("/usr/sbin/dockerd").exists() && Path::new("/usr/bin/docker-registry").exists(),
        "dockerd or docker-registry is missing: install Debian's docker.io and docker-registry (./scripts/test does)"
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/docker-services");
    let d = work.join("d");
    start_for_process_lifetime(
        &script.to_string_lossy(),
        vec![d.display().to_string()],
        work.join("docker-services.log"),
    );
    let env = d.join("env");
    wait_for("scripts/docker-services (see its log)", Duration::from_secs(90), || env.exists());
    let text = std::fs::read_to_string(&env).unwrap();
    ["DEPLOYER_TEST_DOCKER", "DEPLOYER_TEST_REGISTRY", "DEPLOYER_TEST_DOCKER_TCP", "DEPLOYER_TEST_DOCKER_TLS"]
        .iter()
        .map(|name| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("{} has no {name}", env.display()))
                .to_owned()
        })
        .collect()
}

/// A build context in `dir`: busybox and a Dockerfile whose command is
/// `command` (run by busybox's sh), with `/index.html` saying `version`.
pub fn busybox_context(dir: &Path, version: &str, command: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy("/bin/busybox", dir.join("busybox")).expect("busybox-static is installed (/bin/busybox)");
    std::fs::write(dir.join("index.html"), format!("{version}\n")).unwrap();
    let command = command.replace('"', "\\\"");
    std::fs::write(
        dir.join("Dockerfile"),
        format!(
            "FROM scratch\nCOPY busybox /bin/busybox\nCOPY index.html /www/index.html\n\
             CMD [\"/bin/busybox\", \"sh\", \"-c\", \"{command}\"]\n"
        ),
    )
    .unwrap();
    dir.to_owned()
}

/// The command of a web server on port 8080 serving /www.
pub const SERVE: &str = "exec /bin/busybox httpd -f -p 8080 -h /www";

/// What `GET /` answers inside a running task of `service`.
pub fn served_by(services: &Services, service: &str) -> String {
    let ids = run(docker_cli(services)
        .args(["ps", "-q", "--filter"])
        .arg(format!("label=com.docker.swarm.service.name={service}")));
    let id = ids.lines().next().unwrap_or_else(|| panic!("no running container of {service}"));
    run(docker_cli(services).args(["exec", id, "/bin/busybox", "wget", "-qO-", "http://127.0.0.1:8080/index.html"]))
}

/// A registry of this process's own that asks for a user name and password
/// (htpasswd, bcrypt), on a free loopback port; stopped when the process
/// exits. Returns `127.0.0.1:port`.
pub fn registry_with_password(user: &str, password: &str) -> String {
    let s = services();
    let d = s.work.join(format!("auth-registry-{user}"));
    std::fs::create_dir_all(&d).unwrap();
    let htpasswd = run(Command::new("htpasswd").args(["-Bbn", user, password]));
    std::fs::write(d.join("htpasswd"), format!("{htpasswd}\n")).unwrap();
    let port = free_port();
    let config = d.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n\
             auth:\n  htpasswd:\n    realm: deployer-test\n    path: {}\n",
            d.join("data").display(),
            d.join("htpasswd").display()
        ),
    )
    .unwrap();
    start_for_process_lifetime(
        "docker-registry",
        vec!["serve".to_owned(), config.display().to_string()],
        d.join("registry.log"),
    );
    let address = format!("127.0.0.1:{port}");
    wait_for("the registry with a password", Duration::from_secs(30), || {
        std::net::TcpStream::connect(&address).is_ok()
    });
    address
}
