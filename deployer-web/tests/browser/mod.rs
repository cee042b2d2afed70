//! Test-only: drives Debian's headless Chromium over the DevTools protocol
//! (a websocket speaking JSON), enough to navigate, evaluate JavaScript,
//! resize and take screenshots. If Chromium cannot start, tests fail loudly.

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct Chromium {
    _child: Child,
    _profile: tempdir::Dir,
    socket: Socket,
    next_id: u64,
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

async fn http_get(port: u16, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("DevTools HTTP endpoint");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes()).await.unwrap();
    let mut reader = BufReader::new(s);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await.unwrap();
    String::from_utf8(body).unwrap()
}

impl Chromium {
    pub async fn launch() -> Chromium {
        let base =
            std::env::var_os("DEPLOYER_TEST_WORK").map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
        let profile = tempdir::Dir(base.join(format!("chromium-{}-{:?}", std::process::id(), Instant::now())));
        std::fs::create_dir_all(&profile.0).unwrap();
        let mut child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                "--hide-scrollbars",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.0.display()))
            .arg("about:blank")
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("cannot start chromium: install Debian's chromium package (scripts/test does)");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let port = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.strip_prefix("DevTools listening on ws://127.0.0.1:") {
                    return rest.split('/').next().unwrap().parse::<u16>().unwrap();
                }
            }
            panic!("chromium exited without opening DevTools");
        })
        .await
        .expect("chromium did not open DevTools within 30 s");
        // Keep draining stderr so chromium never blocks on it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let list: Value = serde_json::from_str(&http_get(port, "/json/list").await).expect("DevTools target list");
        let url = list
            .as_array()
            .and_then(|a| a.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .expect("a page target")
            .to_owned();
        let (socket, _) = tokio_tungstenite::connect_async(url).await.expect("DevTools websocket");
        let mut c = Chromium { _child: child, _profile: profile, socket, next_id: 0 };
        c.call("Page.enable", json!({})).await;
        c
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.socket.send(Message::Text(msg.into())).await.expect("send to chromium");
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(30), self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("chromium did not answer {method}"))
                .expect("chromium closed the socket")
                .expect("websocket error");
            let Message::Text(text) = msg else { continue };
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["id"] == id {
                if let Some(e) = v.get("error") {
                    panic!("{method} failed: {e}");
                }
                return v["result"].clone();
            }
        }
    }

    pub async fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
        self.wait_for(&format!("(document.readyState === 'complete' && location.href.startsWith({url:?})) || null"))
            .await;
    }

    /// Evaluates `expr`; a string result as is, anything else as JSON.
    pub async fn eval(&mut self, expr: &str) -> String {
        let r = self
            .call("Runtime.evaluate", json!({"expression": expr, "returnByValue": true, "awaitPromise": true}))
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            return format!("exception: {e}");
        }
        match &r["result"]["value"] {
            Value::String(s) => s.clone(),
            Value::Null => "null".into(),
            v if r["result"]["type"] == "undefined" => {
                let _ = v;
                "null".into()
            }
            v => v.to_string(),
        }
    }

    /// Polls `expr` until it gives something other than null/false (10 s).
    pub async fn wait_for(&mut self, expr: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = String::new();
        while Instant::now() < deadline {
            last = self.eval(expr).await;
            if last != "null" && last != "false" && !last.starts_with("exception:") {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting for {expr} (last: {last})");
    }

    pub async fn size(&mut self, width: u32, height: u32, mobile: bool) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        )
        .await;
    }

    pub async fn screenshot(&mut self, path: &Path) {
        let r = self.call("Page.captureScreenshot", json!({"format": "png"})).await;
        let png = base64::engine::general_purpose::STANDARD.decode(r["data"].as_str().unwrap()).unwrap();
        assert!(png.len() > 1000, "an empty screenshot");
        std::fs::write(path, png).unwrap();
    }
}
