//! A token set for a host reaches that host over HTTPS, as an
//! `Authorization` header, and nowhere else: not another host, not plain
//! HTTP. The HTTPS server is `openssl s_server` with a certificate made by
//! the test; it prints the request git sends. (Its own test binary: git is
//! told to skip certificate checks through the environment.)

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use deployer_core::{Config, Context, Current, Engine, Secret};
use deployer_git::{CommitId, Git};

const TOKEN: &str = "ghs_HttpsT0kenForTheTest";
const HASH: &str = "4f2a9c1e0d5b7a8c9f1e2d3c4b5a69788796a5b4";

fn work() -> PathBuf {
    let base = std::env::var_os("DEPLOYER_TEST_WORK").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("git-https-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// An HTTPS server that prints each request it gets and never answers.
struct TlsServer {
    child: Child,
    lines: mpsc::Receiver<String>,
    port: u16,
}

impl TlsServer {
    fn start(dir: &Path) -> TlsServer {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        if !cert.exists() {
            let made = Command::new("openssl")
                .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
                .args(["-subj", "/CN=127.0.0.1", "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&cert)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("openssl runs (Debian's openssl package)");
            assert!(made.success(), "openssl made no certificate");
        }
        let port = free_port();
        let mut child = Command::new("openssl")
            .args(["s_server", "-quiet", "-accept", &format!("127.0.0.1:{port}"), "-cert"])
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdin(Stdio::piped()) // held open: s_server stops at the end of its input
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "openssl s_server did not listen within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        // That probe was a connection too; s_server takes the next one.
        TlsServer { child, lines, port }
    }

    /// The request head git sends (up to its blank line).
    fn request(&self) -> Vec<String> {
        let mut head = Vec::new();
        loop {
            let line = self.lines.recv_timeout(Duration::from_secs(20)).expect("git sent a request within 20 s");
            let line = line.trim_end().to_owned();
            if line.starts_with("GET ") {
                head.clear();
            }
            if line.is_empty() && !head.is_empty() {
                return head;
            }
            if !line.is_empty() {
                head.push(line);
            }
        }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fetches `url` until `server` has seen the request; returns its head.
fn request_for(git_: &Git, url: &str, server: impl FnOnce() -> Vec<String>) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let id = CommitId::new(url, "main", HASH).unwrap();
    let engine = Engine::new(git_.fetch("fetch app", &Current::constant(id)));
    let _guard = rt.enter();
    engine.step();
    server()
}

fn authorization(head: &[String]) -> Option<&str> {
    head.iter().find_map(|l| l.strip_prefix("Authorization: "))
}

#[test]
fn a_token_reaches_its_host_over_https_and_nowhere_else() {
    // Alone in its binary, so no other test sees this.
    std::env::set_var("GIT_SSL_NO_VERIFY", "1");
    let dir = work();
    let ctx = Context::open(&dir.join("state"), Config::default()).unwrap();
    let git_ = Git::new(&ctx);
    git_.token("127.0.0.1", Secret::new(TOKEN.to_owned()));
    use base64::Engine as _;
    let expected =
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{TOKEN}")));

    // Its host, over HTTPS: the header is sent.
    let server = TlsServer::start(&dir);
    let url = format!("https://127.0.0.1:{}/o/app.git", server.port);
    let head = request_for(&git_, &url, || server.request());
    assert!(head[0].starts_with("GET /o/app.git/info/refs"), "{head:?}");
    assert_eq!(authorization(&head), Some(expected.as_str()), "{head:?}");
    drop(server);

    // Another host (the same machine by another name): no header.
    let server = TlsServer::start(&dir);
    let url = format!("https://localhost:{}/o/app.git", server.port);
    let head = request_for(&git_, &url, || server.request());
    assert_eq!(authorization(&head), None, "a token for 127.0.0.1 went to localhost: {head:?}");
    drop(server);

    // Its host over plain HTTP: no header.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://127.0.0.1:{}/o/app.git", listener.local_addr().unwrap().port());
    let head = request_for(&git_, &url, || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).expect("git sent a request within 20 s");
            assert!(n > 0, "git hung up before its request ended");
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).lines().map(str::to_owned).take_while(|l| !l.is_empty()).collect()
    });
    assert!(head[0].starts_with("GET /o/app.git/info/refs"), "{head:?}");
    assert_eq!(authorization(&head), None, "a token went over plain HTTP: {head:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
