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
        let log = std::fs::File::create(dir.join("sshd.log")).unwrap();
        let child = Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(dir.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("sshd starts");
        wait_listening(port, "sshd");
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
