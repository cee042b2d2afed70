//! Test-only: a real OpenSSH server (Debian's `openssh-server`) on a free
//! loopback port, with its own host key, client keys and authorized_keys in
//! a temporary directory; stopped when dropped. Also a TCP proxy that can
//! cut every connection through it, and an `ssh-agent`. (Shared with the
//! SSH benchmark, which includes this file.)

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The passphrase of the test's encrypted RSA key.
pub const PASSPHRASE: &str = "correct horse battery staple";

/// Runs a command; panics with its stderr if it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?} cannot run: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh ed25519 key pair at `path` (and `path.pub`), with `passphrase`.
pub fn keygen(path: &Path, kind: &str, passphrase: &str) -> String {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(path.with_extension("pub"));
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(["-q", "-t", kind, "-N", passphrase, "-C", "deployer-test", "-f"]).arg(path);
    if kind == "rsa" {
        cmd.args(["-b", "2048"]);
    }
    run(&mut cmd);
    std::fs::read_to_string(format!("{}.pub", path.display())).unwrap().trim().to_owned()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until something accepts connections on `port`.
fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on 127.0.0.1:{port} within 10 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// An sshd on 127.0.0.1.
pub struct Sshd {
    child: Child,
    /// Its port.
    pub port: u16,
    /// Its directory (keys, config, log).
    pub dir: PathBuf,
    /// Its host key, as an OpenSSH public key line.
    pub host_key: String,
    /// A client key in authorized_keys (ed25519, unencrypted).
    pub client_key: PathBuf,
    /// A client key in authorized_keys (RSA, encrypted with PASSPHRASE).
    pub rsa_key: PathBuf,
    /// A key that is not in authorized_keys.
    pub stranger_key: PathBuf,
    /// The user to log in as (this process's).
    pub user: String,
}

impl Sshd {
    /// Starts one in `dir` (created), with fresh keys.
    pub fn start(dir: &Path) -> Sshd {
        let sshd = Path::new("/usr/sbin/sshd");
        assert!(sshd.exists(), "/usr/sbin/sshd is missing: install Debian's openssh-server (./scripts/test does)");
        std::fs::create_dir_all(dir).unwrap();
        let is_root = run(Command::new("id").arg("-u")).trim() == "0";
        if is_root {
            // The privilege-separation directory sshd insists on.
            std::fs::create_dir_all("/run/sshd").unwrap();
        }
        let host_key = keygen(&dir.join("host_key"), "ed25519", "");
        let client = keygen(&dir.join("client_key"), "ed25519", "");
        let rsa = keygen(&dir.join("rsa_key"), "rsa", PASSPHRASE);
        keygen(&dir.join("stranger_key"), "ed25519", "");
        std::fs::write(dir.join("authorized_keys"), format!("{client}\n{rsa}\n")).unwrap();
        let port = free_port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
             PidFile {d}/sshd.pid\nUsePAM no\nStrictModes no\nPermitRootLogin yes\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nAllowStreamLocalForwarding yes\nMaxStartups 200\nMaxSessions 200\n\
             LogLevel VERBOSE\n",
            d = dir.display()
        );
        std::fs::write(dir.join("sshd_config"), config).unwrap();
        let child = Sshd::spawn(dir, port);
        let user = run(Command::new("id").arg("-un")).trim().to_owned();
        Sshd {
            child,
            port,
            dir: dir.to_owned(),
            host_key,
            client_key: dir.join("client_key"),
            rsa_key: dir.join("rsa_key"),
            stranger_key: dir.join("stranger_key"),
            user,
        }
    }

    /// Starts sshd with the configuration in `dir`, logging to its
    /// `sshd.log` (appended), and waits until it listens on `port`.
    fn spawn(dir: &Path, port: u16) -> Child {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("sshd.log")).unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(dir.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("sshd starts");
        wait_listening(port, "sshd");
        child
    }

    /// Kills sshd as a crashed or rebooted host does: SIGKILL to the
    /// listener and to every process under it (each connection's sshd and
    /// the commands it runs), so every connection drops at once. Waits
    /// until they are all gone and the port refuses connections.
    pub fn kill(&mut self) {
        let mut pids = descendants(self.child.id());
        pids.push(self.child.id());
        // One that exited meanwhile is not an error.
        let _ = Command::new("kill").arg("-KILL").args(pids.iter().map(u32::to_string)).stderr(Stdio::null()).status();
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        while pids.iter().any(|p| alive(*p)) || std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(Instant::now() < deadline, "sshd's processes {pids:?} still there 10 s after SIGKILL");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts sshd again after [`Sshd::kill`], on the same port with the
    /// same keys.
    pub fn restart(&mut self) {
        self.child = Sshd::spawn(&self.dir, self.port);
    }

    /// The processes under sshd: one per connection and the commands they
    /// run.
    pub fn sessions(&self) -> Vec<u32> {
        descendants(self.child.id())
    }

    /// A known_hosts file at `name` listing this server's key for `port`.
    pub fn known_hosts(&self, name: &str, port: u16) -> PathBuf {
        let path = self.dir.join(name);
        let mut fields = self.host_key.split(' ');
        let (kind, blob) = (fields.next().unwrap(), fields.next().unwrap());
        std::fs::write(&path, format!("[127.0.0.1]:{port} {kind} {blob}\n")).unwrap();
        path
    }

    /// What sshd logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether process `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rfind(')').is_some_and(|i| !stat[i + 1..].trim_start().starts_with('Z')))
}

/// The processes under `pid` (its children, theirs, …), from `/proc`.
pub fn descendants(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| Some((p, parent(p)?)))
        .collect();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(parents.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    found.remove(0);
    found
}

/// This process's children whose command name is not in `allowed`, as
/// `pid name`: what the code under test started and left running.
pub fn children_other_than(allowed: &[&str]) -> Vec<String> {
    let me = std::process::id();
    descendants(me)
        .into_iter()
        .filter(|pid| alive(*pid) && parent(*pid) == Some(me))
        .filter_map(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?.trim().to_owned();
            (!allowed.contains(&comm.as_str())).then(|| format!("{pid} {comm}"))
        })
        .collect()
}

/// The parent of process `pid`.
fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// This process's TCP connections to `127.0.0.1:port` that are not closed
/// (their states, as `/proc/net/tcp` names them in hex: `01` established,
/// `08` close-wait, …): a socket the deployer leaked stays in this list.
pub fn connections_to(port: u16) -> Vec<String> {
    let mine: std::collections::HashSet<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|l| l.to_str().and_then(|l| l.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_owned)))
        .collect();
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let remote = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.len() > 9 && f[2] == remote && mine.contains(f[9])).then(|| f[3].to_owned())
        })
        .collect()
}

/// A TCP proxy to a port, counting the connections it carries; `cut`
/// drops them all (a network failure, as the client sees it).
pub struct Proxy {
    /// The port to connect to.
    pub port: u16,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    cut: Arc<tokio::sync::watch::Sender<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts one to `127.0.0.1:target` (on the current tokio runtime).
    pub async fn start(target: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let cut = Arc::new(cut);
        let task = tokio::spawn({
            let (accepted, cut) = (accepted.clone(), cut.clone());
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let mut cut_rx = cut.subscribe();
                    tokio::spawn(async move {
                        let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = cut_rx.changed() => {}
                        }
                    });
                }
            }
        });
        Proxy { port, accepted, cut, task }
    }

    /// Drops every connection through the proxy.
    pub fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An ssh-agent listening on a socket in `dir`, holding `keys`.
pub struct Agent {
    child: Child,
    /// Its socket.
    pub socket: PathBuf,
}

impl Agent {
    /// Starts one and adds `keys` to it.
    pub fn start(dir: &Path, keys: &[&Path]) -> Agent {
        let socket = dir.join("agent.sock");
        let _ = std::fs::remove_file(&socket);
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ssh-agent starts (Debian's openssh-client)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "ssh-agent made no socket within 10 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        for key in keys {
            run(Command::new("ssh-add").arg("-q").arg(key).env("SSH_AUTH_SOCK", &socket));
        }
        Agent { child, socket }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
