//! Security issue 15: the `deployer` binary is given every kind of secret
//! it takes (the GitHub App key, the webhook secret, the OAuth client
//! secret, the Slack URL, a registry password, the albatross CA key), run
//! against stand-ins that fail in every way they can — GitHub answers
//! every request with an error quoting the whole request back, Slack
//! likewise, Docker and albatross cannot be reached — while every page and
//! API response is read. Then every byte it wrote (state directory: SQLite,
//! job logs, indexes), served and printed (stderr) is searched for each
//! secret in its raw, URL-encoded, base64, JSON-escaped forms and its
//! halves (a secret split over a line cut): there must be no hit. Its log
//! (`-v --log-format json`) is JSON lines, and is scanned too.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;

/// Kills the deployer when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn work() -> PathBuf {
    let base = std::env::var_os("DEPLOYER_TEST_WORK").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("secret-scan-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("the command runs");
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A server on loopback that answers every request with `status` and a
/// body quoting the whole request (headers and body): a hostile or broken
/// upstream that puts whatever it was sent into its error.
fn echo_server(status: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                stream.set_read_timeout(Some(Duration::from_secs(2))).ok();
                let mut request = Vec::new();
                let mut buf = [0u8; 8192];
                // Headers, then as much body as Content-Length says.
                loop {
                    let Ok(n) = stream.read(&mut buf) else { break };
                    if n == 0 {
                        break;
                    }
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                            })
                            .and_then(|v| v.parse::<usize>().ok())
                            .unwrap_or(0);
                        if request.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let body = serde_json::json!({ "message": String::from_utf8_lossy(&request) }).to_string();
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    url
}

/// An HTTP/1.1 request to `addr`; the whole response.
fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> String {
    let Ok(mut c) = std::net::TcpStream::connect(addr) else { return String::new() };
    c.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    c.write_all(req.as_bytes()).unwrap();
    c.write_all(body).unwrap();
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Every file below `dir`, read whole.
fn every_file(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            every_file(&path, out);
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path, bytes));
        }
    }
}

/// The forms a secret could be written in.
fn forms(secret: &str) -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let url: String = secret
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let json = serde_json::to_string(secret).unwrap();
    let mut out = vec![
        secret.to_owned(),
        url,
        b64.encode(secret),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret),
        json[1..json.len() - 1].to_owned(),
    ];
    // Halves: a secret split over a cut line (each half long enough not to
    // turn up by chance).
    let mid = secret.len() / 2;
    if secret.is_char_boundary(mid) && mid >= 12 {
        out.push(secret[..mid].to_owned());
        out.push(secret[mid..].to_owned());
    }
    out.retain(|f| f.len() >= 12);
    out.sort();
    out.dedup();
    out
}

#[test]
fn no_secret_reaches_any_byte_the_deployer_writes_serves_or_prints() {
    let dir = work();
    let state = dir.join("state");
    // The secrets, each distinctive, some with characters that quoting
    // and encodings change.
    let app_key = dir.join("app.pem");
    run(Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
        .arg(&app_key));
    let webhook_secret = "whsec-\"quoted\"\\and/slashed+Secret-8842";
    let oauth_secret = "oauth-client-secret-7f3a9c21d8e44b0b9c1e";
    let registry_password = "reg+pass/word=\"x\"-55a1c9e0";
    let github = echo_server("500 Internal Server Error");
    let slack_stand_in = echo_server("500 Internal Server Error");
    let slack_url = format!("{slack_stand_in}/services/T000SCAN/B000SCAN/slackTokenXyZ0123456789abc");
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, format!("{text}\n")).unwrap();
        p
    };
    let webhook_file = write("webhook", webhook_secret);
    let oauth_file = write("oauth", oauth_secret);
    let slack_file = write("slack", &slack_url);
    let registry_file = write("registry-password", registry_password);
    // An albatross operator CA and its key.
    let ca_key = dir.join("ca.key");
    let ca_pem = dir.join("ca.pem");
    run(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=deployer-scan", "-keyout"])
        .arg(&ca_key)
        .arg("-out")
        .arg(&ca_pem));
    let albatross = echo_server("400 Bad Request");
    let albatross_address = albatross.trim_start_matches("http://").to_owned();
    let listen = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();

    let stderr_path = dir.join("stderr");
    let child = Command::new(env!("CARGO_BIN_EXE_deployer"))
        .arg("--flavour=mirage")
        .arg(format!("--state-dir={}", state.display()))
        .arg(format!("--listen={listen}"))
        .arg(format!("--web-url=http://{listen}"))
        .arg("--docker=unix:///nonexistent/docker.sock")
        .arg(format!("--github-api={github}"))
        .arg("--github-app-id=4242")
        .arg(format!("--github-private-key-file={}", app_key.display()))
        .arg(format!("--github-webhook-secret-file={}", webhook_file.display()))
        .arg("--github-oauth-client-id=Iv1.scan")
        .arg(format!("--github-oauth-secret-file={}", oauth_file.display()))
        .arg(format!("--slack={}", slack_file.display()))
        .arg(format!("--registry-auth=127.0.0.1:5999=alice:{}", registry_file.display()))
        .arg(format!("--albatross={albatross_address}"))
        .arg(format!("--albatross-server-ca={}", ca_pem.display()))
        .arg(format!("--albatross-client-ca={}", ca_pem.display()))
        .arg(format!("--albatross-client-ca-key={}", ca_key.display()))
        .arg("--poll-every=1")
        .arg("--log-format=json")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("the deployer binary starts");
    let _running = Running(child);

    // The site comes up; then every page and API answer is read, while the
    // pipeline fails, twice over some seconds.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !http(&listen, "GET", "/", &[], b"").starts_with("HTTP/1.1 200") {
        assert!(
            Instant::now() < deadline,
            "the deployer's site did not come up: {}",
            std::fs::read_to_string(&stderr_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut served = Vec::new();
    let push = br#"{"ref":"refs/heads/main","repository":{"full_name":"mirage/mirage-www"}}"#;
    let signature = {
        use hmac::Mac;
        let mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(webhook_secret.as_bytes()).unwrap();
        let bytes = mac.chain_update(push).finalize().into_bytes();
        format!("sha256={}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
    };
    for round in 0..3 {
        std::thread::sleep(Duration::from_secs(2));
        let delivery = http(
            &listen,
            "POST",
            "/webhooks/github",
            &[
                ("X-GitHub-Event", "push"),
                ("X-Hub-Signature-256", &signature),
                ("X-GitHub-Delivery", &format!("scan-{round}")),
            ],
            push,
        );
        assert!(delivery.starts_with("HTTP/1.1 200"), "{delivery}");
        served.push(delivery);
        for page in [
            "/",
            "/jobs",
            "/query",
            "/metrics",
            "/services",
            "/login",
            "/admin-login",
            "/api/pipeline",
            "/api/stats",
            "/api/jobs",
            "/api/history",
        ] {
            served.push(http(&listen, "GET", page, &[], b""));
        }
        // Every job's page and log.
        let history = http(&listen, "GET", "/api/history?limit=1000", &[], b"");
        let jobs = http(&listen, "GET", "/api/jobs", &[], b"");
        let mut ids: Vec<String> = Vec::new();
        for text in [&history, &jobs] {
            let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
            for (i, _) in body.match_indices("\"job_id\":\"").chain(body.match_indices("\"id\":\"")) {
                let rest = &body[i..];
                let start = rest.find(":\"").unwrap() + 2;
                if let Some(end) = rest[start..].find('"') {
                    let id = &rest[start..start + end];
                    if id.contains('/') && !ids.iter().any(|x| x == id) {
                        ids.push(id.to_owned());
                    }
                }
            }
        }
        for id in &ids {
            served.push(http(&listen, "GET", &format!("/job/{id}"), &[], b""));
            served.push(http(&listen, "GET", &format!("/api/job/{id}/log"), &[], b""));
        }
        served.push(history);
        served.push(jobs);
    }
    drop(_running);

    // Make sure the run really failed in the ways it should have: GitHub's
    // errors (quoting the request) and Slack's are in there, scrubbed.
    let mut written = Vec::new();
    every_file(&state, &mut written);
    assert!(
        written.iter().any(|(p, _)| p.ends_with("db.sqlite")),
        "the deployer wrote its state: {:?}",
        written.iter().map(|(p, _)| p.display().to_string()).collect::<Vec<_>>()
    );
    written.push((stderr_path.clone(), std::fs::read(&stderr_path).unwrap()));
    for (i, s) in served.iter().enumerate() {
        written.push((PathBuf::from(format!("(served #{i})")), s.as_bytes().to_vec()));
    }
    // The operator sees what happens: JSON lines (one event each) on stderr.
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    let events: Vec<serde_json::Value> =
        stderr.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert!(events.iter().any(|e| e["level"] == "ERROR" || e["level"] == "WARN"), "no failure was logged: {stderr}");
    let total: usize = written.iter().map(|(_, b)| b.len()).sum();
    let all_text: String = written.iter().map(|(_, b)| String::from_utf8_lossy(b).into_owned()).collect();
    assert!(
        all_text.contains("[redacted]"),
        "nothing was ever scrubbed: the stand-ins were not reached? {}",
        served
            .iter()
            .filter(|s| s.contains("error") || s.contains("fail"))
            .map(|s| &s[..s.len().min(3000)])
            .collect::<Vec<_>>()
            .join("\n=====\n")
    );

    let key_text = std::fs::read_to_string(&app_key).unwrap();
    let ca_key_text = std::fs::read_to_string(&ca_key).unwrap();
    let mut secrets: Vec<(&str, String)> = vec![
        ("webhook secret", webhook_secret.to_owned()),
        ("OAuth client secret", oauth_secret.to_owned()),
        ("Slack URL", slack_url.clone()),
        ("Slack URL's token", "slackTokenXyZ0123456789abc".to_owned()),
        ("registry password", registry_password.to_owned()),
        ("registry Basic value", format!("alice:{registry_password}")),
    ];
    for (what, pem) in [("App key", &key_text), ("albatross CA key", &ca_key_text)] {
        for line in pem.lines().filter(|l| !l.starts_with("-----") && l.len() >= 16) {
            secrets.push((what, line.to_owned()));
        }
    }
    let mut hits = Vec::new();
    for (what, secret) in &secrets {
        for form in forms(secret) {
            for (path, bytes) in &written {
                if bytes.windows(form.len()).any(|w| w == form.as_bytes()) {
                    hits.push(format!("{what} ({form:?}) in {}", path.display()));
                }
            }
        }
    }
    eprintln!(
        "secret scan: {} secrets in {} forms, {} files and answers, {total} bytes scanned, {} hits",
        secrets.len(),
        secrets.iter().map(|(_, s)| forms(s).len()).sum::<usize>(),
        written.len(),
        hits.len()
    );
    assert!(hits.is_empty(), "secrets found:\n{}", hits.join("\n"));
}
