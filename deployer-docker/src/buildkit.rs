//! BuildKit builds through the daemon's own BuildKit (`POST /build` with
//! `version=2`), as `DOCKER_BUILDKIT=1 docker build` makes them.
//!
//! Why not bollard's `buildkit` feature: its session serves registry
//! credentials and file export only, so a `RUN --mount=type=secret` finds
//! no secret, and its build stream needs the generated BuildKit protobuf
//! types (tonic, prost). What a build needs is small, so it is here:
//!
//! - a **session** (`POST /session`, upgraded to HTTP/2, on which the daemon
//!   is the gRPC client and we serve three methods: the health check,
//!   `Secrets/GetSecret` for `--mount=type=secret`, `Auth/Credentials` for
//!   private base images);
//! - the **build** (`POST /build?version=2&session=…` with the context as
//!   a tar body), whose progress (base64 `StatusResponse` protobuf) is
//!   rendered as the lines `docker build --progress=plain` prints.
//!
//! Both run on connections of their own ([`DockerHost::dial`]), so they
//! work over every endpoint (Unix socket, TCP, TLS, SSH tunnel). Checked
//! against Debian's dockerd 20.10, the oldest daemon the deployer supports.

use std::collections::HashMap;
use std::convert::Infallible;

use bytes::Bytes;
use deployer_core::{Error, Job, Secret};
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncRead;

use crate::build::BuildOptions;
use crate::error::DockerError;
use crate::host::DockerHost;

/// What a build is given through its session.
#[derive(Default)]
pub(crate) struct SessionData {
    /// `--mount=type=secret,id=…` values by id.
    pub(crate) secrets: HashMap<String, Secret<Vec<u8>>>,
    /// Registry credentials by registry (`127.0.0.1:5000`, `docker.io`).
    pub(crate) credentials: HashMap<String, bollard::auth::DockerCredentials>,
}

/// The gRPC methods the session serves (announced to the daemon, which
/// calls no others).
const HEALTH: &str = "/grpc.health.v1.Health/Check";
const GET_SECRET: &str = "/moby.buildkit.secrets.v1.Secrets/GetSecret";
const CREDENTIALS: &str = "/moby.filesync.v1.Auth/Credentials";

/// The largest gRPC request the session reads (they are a few bytes).
const MAX_REQUEST: usize = 64 << 10;

/// Builds `context` with BuildKit on `host`; the image id.
pub(crate) async fn build(
    job: &Job,
    host: &DockerHost,
    options: &BuildOptions,
    context: impl AsyncRead + Send + 'static,
    session: SessionData,
) -> Result<String, Error> {
    let id = session_id()?;
    let _session = start_session(host, &id, session).await?;

    let io = host.dial().await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| daemon_error(host, format!("connecting for the build: {e}")))?;
    let connection = tokio::spawn(connection);
    let body = StreamBody::new(tokio_util::io::ReaderStream::new(context).map(|chunk| chunk.map(Frame::data)));
    let request = hyper::Request::post(format!("/build?{}", query(options, &id)))
        .header("Host", "docker")
        .header("Content-Type", "application/x-tar")
        .body(body)
        .map_err(|e| Error::msg(format!("the build request: {e}")))?;
    let response = sender.send_request(request).await.map_err(|e| daemon_error(host, e.to_string()))?;
    let status = response.status();
    let mut body = response.into_body();
    if !status.is_success() {
        let text = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let message = serde_json::from_slice::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&text).trim().to_owned());
        return Err(daemon_error(host, format!("{status}: {message}")).into());
    }

    let mut progress = Progress::default();
    let mut lines = job.lines();
    let mut pending = Vec::new();
    let mut image = None;
    let cancelled = job.cancelled();
    tokio::pin!(cancelled);
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            reason = &mut cancelled => {
                connection.abort(); // closes the connection: BuildKit stops the build
                lines.finish();
                return Err(job.cancellation_error().unwrap_or_else(|| Error::msg(reason)));
            }
        };
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| daemon_error(host, format!("reading the build's progress: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            match message(&line)? {
                Message::None => {}
                Message::Text(text) => lines.push(text.as_bytes()),
                Message::Trace(status) => {
                    for text in progress.render(&status) {
                        lines.push(text.as_bytes());
                    }
                }
                Message::Image(id) => image = Some(id),
                Message::Failed(why) => {
                    lines.finish();
                    return Err(crate::build::build_error(host, options, &why));
                }
            }
        }
    }
    lines.finish();
    image.ok_or_else(|| Error::msg(format!("the BuildKit build on {} reported no image id", host.name())))
}

fn daemon_error(host: &DockerHost, why: String) -> DockerError {
    DockerError::Daemon { host: host.name().to_owned(), what: "docker build (BuildKit)".into(), why }
}

/// A fresh session id (random, as the CLI's).
fn session_id() -> Result<String, Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| Error::msg(format!("no random numbers for a session id: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The `/build` query for `options`.
fn query(options: &BuildOptions, session: &str) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("version", "2").append_pair("session", session).append_pair("dockerfile", &options.dockerfile);
    q.append_pair("rm", "1").append_pair("forcerm", "1");
    q.append_pair("buildargs", &serde_json::to_string(&options.build_args).unwrap_or_default());
    q.append_pair("labels", &serde_json::to_string(&options.labels).unwrap_or_default());
    if let Some(target) = &options.target {
        q.append_pair("target", target);
    }
    if options.pull {
        q.append_pair("pull", "1");
    }
    if let Some(platform) = &options.platform {
        q.append_pair("platform", platform);
    }
    q.finish()
}

/// A running session; dropping it ends it.
struct Session(tokio::task::JoinHandle<()>);

impl Drop for Session {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Opens the session `id` on `host` and serves it until dropped.
async fn start_session(host: &DockerHost, id: &str, data: SessionData) -> Result<Session, Error> {
    let io = host.dial().await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, http_body_util::Empty<Bytes>>(TokioIo::new(io))
            .await
            .map_err(|e| daemon_error(host, format!("opening the build session: {e}")))?;
    let connection = tokio::spawn(connection.with_upgrades());
    let mut request = hyper::Request::post("/session")
        .header("Host", "docker")
        .header("Connection", "Upgrade")
        .header("Upgrade", "h2c")
        .header("X-Docker-Expose-Session-Uuid", id)
        .header("X-Docker-Expose-Session-Name", "deployer");
    for method in [HEALTH, GET_SECRET, CREDENTIALS] {
        request = request.header("X-Docker-Expose-Session-Grpc-Method", method);
    }
    let request = request.body(http_body_util::Empty::new()).map_err(|e| Error::msg(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| daemon_error(host, format!("opening the build session: {e}")))?;
    if response.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
        return Err(daemon_error(
            host,
            format!("the daemon refused a build session ({}): does it support BuildKit?", response.status()),
        )
        .into());
    }
    let upgraded = hyper::upgrade::on(response)
        .await
        .map_err(|e| daemon_error(host, format!("upgrading the build session: {e}")))?;
    let data = std::sync::Arc::new(data);
    let task = tokio::spawn(async move {
        let _connection = connection;
        let service = hyper::service::service_fn(move |request| serve(data.clone(), request));
        let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(upgraded, service);
        if let Err(e) = served.await {
            tracing::debug!("the build session ended: {e}");
        }
    });
    Ok(Session(task))
}

type GrpcBody = StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

/// Answers one gRPC call from the daemon.
async fn serve(
    data: std::sync::Arc<SessionData>,
    request: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<GrpcBody>, Infallible> {
    let path = request.uri().path().to_owned();
    let body = http_body_util::Limited::new(request.into_body(), MAX_REQUEST).collect().await;
    let Some(message) = body.ok().map(|b| b.to_bytes()).and_then(|b| grpc_message(&b).map(<[u8]>::to_vec)) else {
        return Ok(grpc_reply(None, 3, "a malformed request"));
    };
    let reply = match path.as_str() {
        HEALTH => grpc_reply(Some(proto::field_varint(1, 1)), 0, ""), // SERVING
        GET_SECRET => {
            let id = proto::string(&message, 1).unwrap_or_default();
            match data.secrets.get(&id) {
                Some(value) => grpc_reply(Some(proto::field_bytes(1, value.expose())), 0, ""),
                None => grpc_reply(None, 5, &format!("no build secret {id:?} was given")), // NOT_FOUND
            }
        }
        CREDENTIALS => {
            let host = proto::string(&message, 1).unwrap_or_default();
            let mut out = Vec::new();
            if let Some((user, secret)) = credentials_for(&data.credentials, &host) {
                out.extend(proto::field_bytes(1, user.as_bytes()));
                out.extend(proto::field_bytes(2, secret.as_bytes()));
            }
            grpc_reply(Some(out), 0, "")
        }
        _ => grpc_reply(None, 12, "not served by the deployer"), // UNIMPLEMENTED
    };
    Ok(reply)
}

/// The user and secret for `host` (BuildKit names Docker Hub
/// `registry-1.docker.io`); an identity token goes with no user name.
fn credentials_for(
    credentials: &HashMap<String, bollard::auth::DockerCredentials>,
    host: &str,
) -> Option<(String, String)> {
    let hub = ["docker.io", "index.docker.io", "registry-1.docker.io", "https://index.docker.io/v1/"];
    let found = credentials.get(host).or_else(|| {
        if hub.contains(&host) {
            hub.iter().find_map(|h| credentials.get(*h))
        } else {
            None
        }
    })?;
    if let Some(token) = found.identitytoken.as_ref().filter(|t| !t.is_empty()) {
        return Some((String::new(), token.clone()));
    }
    Some((found.username.clone().unwrap_or_default(), found.password.clone().unwrap_or_default()))
}

/// The message of a gRPC request body (one uncompressed message).
fn grpc_message(body: &[u8]) -> Option<&[u8]> {
    let (&[compressed, a, b, c, d], rest) = body.split_first_chunk::<5>()?;
    let len = u32::from_be_bytes([a, b, c, d]) as usize;
    (compressed == 0 && rest.len() == len).then_some(rest)
}

/// A gRPC reply: the message (if any), then the status in the trailers.
fn grpc_reply(message: Option<Vec<u8>>, status: u32, why: &str) -> hyper::Response<GrpcBody> {
    let mut frames = Vec::new();
    if let Some(message) = message {
        let mut data = Vec::with_capacity(5 + message.len());
        data.push(0);
        data.extend_from_slice(&(message.len() as u32).to_be_bytes());
        data.extend_from_slice(&message);
        frames.push(Ok(Frame::data(Bytes::from(data))));
    }
    let mut trailers = hyper::HeaderMap::new();
    trailers.insert("grpc-status", status.into());
    if let Ok(why) = hyper::header::HeaderValue::from_str(why) {
        if !why.is_empty() {
            trailers.insert("grpc-message", why);
        }
    }
    frames.push(Ok(Frame::trailers(trailers)));
    let mut response = hyper::Response::new(StreamBody::new(futures_util::stream::iter(frames)));
    response.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("application/grpc"));
    response
}

/// One message of the build's stream.
#[derive(Debug, PartialEq)]
enum Message {
    None,
    /// Text to log as it is.
    Text(String),
    /// A BuildKit `StatusResponse` (protobuf).
    Trace(Vec<u8>),
    /// The built image's id.
    Image(String),
    /// The build failed.
    Failed(String),
}

/// Reads one line of the build's JSON stream.
fn message(line: &[u8]) -> Result<Message, Error> {
    let line = line.trim_ascii();
    if line.is_empty() {
        return Ok(Message::None);
    }
    let value: serde_json::Value = serde_json::from_slice(line).map_err(|e| {
        let start = String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned();
        Error::msg(format!("the daemon sent a build message that is not JSON ({e}): {start:?}"))
    })?;
    if let Some(error) = value.get("errorDetail").and_then(|d| d.get("message")).or_else(|| value.get("error")) {
        return Ok(Message::Failed(error.as_str().unwrap_or_default().to_owned()));
    }
    match value.get("id").and_then(|id| id.as_str()) {
        Some("moby.buildkit.trace") => {
            use base64::Engine;
            let aux = value.get("aux").and_then(|a| a.as_str()).unwrap_or_default();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(aux)
                .map_err(|e| Error::msg(format!("a BuildKit progress message is not base64: {e}")))?;
            Ok(Message::Trace(bytes))
        }
        Some("moby.image.id") => {
            let id = value.get("aux").and_then(|a| a.get("ID")).and_then(|id| id.as_str()).unwrap_or_default();
            Ok(Message::Image(id.to_owned()))
        }
        _ => match value.get("stream").and_then(|s| s.as_str()) {
            Some(text) => Ok(Message::Text(text.to_owned())),
            None => Ok(Message::None),
        },
    }
}

/// Renders BuildKit's progress as `--progress=plain` does: each step
/// numbered in the order it appears (`#3 [build 2/4] RUN make`), its
/// output lines, and how it ended (`#3 DONE 1.2s`, `#3 CACHED`,
/// `#3 ERROR: …`).
#[derive(Default)]
struct Progress {
    steps: HashMap<String, Step>,
}

#[derive(Default)]
struct Step {
    number: usize,
    started: bool,
    ended: bool,
    /// Output not yet ended by a newline.
    partial: Vec<u8>,
}

impl Progress {
    /// The lines one `StatusResponse` adds.
    fn render(&mut self, status: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for (field, value) in proto::fields(status) {
            match (field, value) {
                (1, proto::Value::Bytes(vertex)) => self.vertex(vertex, &mut out),
                (3, proto::Value::Bytes(log)) => self.log(log, &mut out),
                _ => {} // statuses (transfer counters) and warnings
            }
        }
        out
    }

    fn step(&mut self, digest: &str) -> &mut Step {
        let next = self.steps.len() + 1;
        self.steps.entry(digest.to_owned()).or_insert_with(|| Step { number: next, ..Step::default() })
    }

    fn vertex(&mut self, vertex: &[u8], out: &mut Vec<String>) {
        let digest = proto::string(vertex, 1).unwrap_or_default();
        let name = proto::string(vertex, 3).unwrap_or_default();
        let cached = proto::varint(vertex, 4).unwrap_or(0) != 0;
        let started = proto::bytes(vertex, 5).map(proto::timestamp);
        let completed = proto::bytes(vertex, 6).map(proto::timestamp);
        let error = proto::string(vertex, 7).filter(|e| !e.is_empty());
        let step = self.step(&digest);
        let n = step.number;
        if step.ended {
            return;
        }
        if !step.started && (started.is_some() || cached || completed.is_some()) {
            step.started = true;
            out.push(format!("#{n} {name}\n"));
        }
        if completed.is_some() || cached || error.is_some() {
            if !step.partial.is_empty() {
                let rest = std::mem::take(&mut step.partial);
                out.push(format!("#{n} {}\n", String::from_utf8_lossy(&rest)));
            }
            let failed = error.is_some();
            if let Some(error) = error {
                out.push(format!("#{n} ERROR: {error}\n"));
            } else if cached {
                out.push(format!("#{n} CACHED\n"));
            } else if let (Some(s), Some(c)) = (started, completed) {
                out.push(format!("#{n} DONE {:.1}s\n", (c - s).max(0.0)));
            } else {
                out.push(format!("#{n} DONE\n"));
            }
            if completed.is_some() || failed {
                step.ended = true;
            }
        }
    }

    fn log(&mut self, log: &[u8], out: &mut Vec<String>) {
        let digest = proto::string(log, 1).unwrap_or_default();
        let msg = proto::bytes(log, 4).unwrap_or_default();
        let step = self.step(&digest);
        let n = step.number;
        step.partial.extend_from_slice(msg);
        while let Some(end) = step.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = step.partial.drain(..=end).collect();
            out.push(format!("#{n} {}", String::from_utf8_lossy(&line)));
        }
    }
}

/// Just enough protocol buffers to read BuildKit's progress and the
/// session's requests, and to write the replies.
mod proto {
    /// A field's value.
    pub(super) enum Value<'a> {
        Varint(u64),
        Bytes(&'a [u8]),
        Fixed,
    }

    fn varint_at(buf: &[u8], pos: &mut usize) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *buf.get(*pos)?;
            *pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    /// The fields of a message, in order; stops at the first malformed one.
    pub(super) fn fields(buf: &[u8]) -> impl Iterator<Item = (u64, Value<'_>)> {
        let mut pos = 0;
        std::iter::from_fn(move || {
            if pos >= buf.len() {
                return None;
            }
            let tag = varint_at(buf, &mut pos)?;
            let value = match tag & 7 {
                0 => Value::Varint(varint_at(buf, &mut pos)?),
                1 => {
                    pos = pos.checked_add(8).filter(|&p| p <= buf.len())?;
                    Value::Fixed
                }
                2 => {
                    let len = usize::try_from(varint_at(buf, &mut pos)?).ok()?;
                    let end = pos.checked_add(len).filter(|&e| e <= buf.len())?;
                    let bytes = &buf[pos..end];
                    pos = end;
                    Value::Bytes(bytes)
                }
                5 => {
                    pos = pos.checked_add(4).filter(|&p| p <= buf.len())?;
                    Value::Fixed
                }
                _ => return None,
            };
            Some((tag >> 3, value))
        })
    }

    /// The last value of length-delimited field `n`.
    pub(super) fn bytes(buf: &[u8], n: u64) -> Option<&[u8]> {
        fields(buf)
            .filter_map(|(f, v)| match v {
                Value::Bytes(b) if f == n => Some(b),
                _ => None,
            })
            .last()
    }

    /// Field `n` as text.
    pub(super) fn string(buf: &[u8], n: u64) -> Option<String> {
        bytes(buf, n).map(|b| String::from_utf8_lossy(b).into_owned())
    }

    /// The last value of varint field `n`.
    pub(super) fn varint(buf: &[u8], n: u64) -> Option<u64> {
        fields(buf)
            .filter_map(|(f, v)| match v {
                Value::Varint(x) if f == n => Some(x),
                _ => None,
            })
            .last()
    }

    /// A `google.protobuf.Timestamp` as seconds.
    pub(super) fn timestamp(buf: &[u8]) -> f64 {
        varint(buf, 1).unwrap_or(0) as f64 + varint(buf, 2).unwrap_or(0) as f64 / 1e9
    }

    fn put_varint(out: &mut Vec<u8>, mut value: u64) {
        while value >= 0x80 {
            out.push((value as u8) | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
    }

    /// Field `n` = `value`, as a varint.
    pub(super) fn field_varint(n: u64, value: u64) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(&mut out, n << 3);
        put_varint(&mut out, value);
        out
    }

    /// Field `n` = `value`, length-delimited.
    pub(super) fn field_bytes(n: u64, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(&mut out, (n << 3) | 2);
        put_varint(&mut out, value.len() as u64);
        out.extend_from_slice(value);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vertex(digest: &str, name: &str, extra: &[Vec<u8>]) -> Vec<u8> {
        let mut v = proto::field_bytes(1, digest.as_bytes());
        v.extend(proto::field_bytes(3, name.as_bytes()));
        for e in extra {
            v.extend_from_slice(e);
        }
        proto::field_bytes(1, &v)
    }

    fn time(seconds: u64, nanos: u64) -> Vec<u8> {
        let mut t = proto::field_varint(1, seconds);
        t.extend(proto::field_varint(2, nanos));
        t
    }

    #[test]
    fn progress_reads_as_the_plain_progress_of_the_cli() {
        // A real first message of dockerd 20.10 (`[internal] load remote
        // build context`, no times yet): nothing to print.
        use base64::Engine;
        let real = base64::engine::general_purpose::STANDARD
            .decode("Cm8KR3NoYTI1NjowMDM5YTA5YmY0NmRhN2M2ZmVmMmQyYjkxNjQxMzI5ZTA3NDQ4YTUwNjllZDQ0NWY2YTU3OWE4ZTUzN2M3MDQ5GiRbaW50ZXJuYWxdIGxvYWQgcmVtb3RlIGJ1aWxkIGNvbnRleHQ=")
            .unwrap();
        let mut p = Progress::default();
        assert!(p.render(&real).is_empty());
        // Its start, from the same daemon.
        let started = base64::engine::general_purpose::STANDARD
            .decode("Cn0KR3NoYTI1NjowMDM5YTA5YmY0NmRhN2M2ZmVmMmQyYjkxNjQxMzI5ZTA3NDQ4YTUwNjllZDQ0NWY2YTU3OWE4ZTUzN2M3MDQ5GiRbaW50ZXJuYWxdIGxvYWQgcmVtb3RlIGJ1aWxkIGNvbnRleHQqDAiS98bYBhCqgImsAg==")
            .unwrap();
        assert_eq!(p.render(&started), ["#1 [internal] load remote build context\n"]);

        let run = "[build 1/2] RUN make";
        let mut out = p.render(&vertex("sha256:b", run, &[proto::field_bytes(5, &time(10, 0))]));
        let mut log = proto::field_bytes(1, b"sha256:b");
        log.extend(proto::field_bytes(4, b"compiling\nlink"));
        out.extend(p.render(&proto::field_bytes(3, &log)));
        out.extend(p.render(&vertex(
            "sha256:b",
            run,
            &[proto::field_bytes(5, &time(10, 0)), proto::field_bytes(6, &time(11, 500_000_000))],
        )));
        out.extend(p.render(&vertex("sha256:c", "[build 2/2] COPY . .", &[proto::field_varint(4, 1)])));
        out.extend(p.render(&vertex(
            "sha256:d",
            "[stage-2 1/1] RUN false",
            &[proto::field_bytes(5, &time(12, 0)), proto::field_bytes(7, b"exit code: 1")],
        )));
        assert_eq!(
            out,
            [
                "#2 [build 1/2] RUN make\n",
                "#2 compiling\n",
                "#2 link\n",
                "#2 DONE 1.5s\n",
                "#3 [build 2/2] COPY . .\n",
                "#3 CACHED\n",
                "#4 [stage-2 1/1] RUN false\n",
                "#4 ERROR: exit code: 1\n",
            ]
        );
        // Malformed protobuf renders what it can and never panics.
        assert!(p.render(&[0x0a, 0xff, 0xff]).is_empty());
    }

    #[test]
    fn the_build_stream_is_read_as_dockerd_writes_it() {
        assert_eq!(message(b"{\"stream\":\"Step 1\\n\"}\r\n").unwrap(), Message::Text("Step 1\n".into()));
        assert_eq!(
            message(br#"{"id":"moby.image.id","aux":{"ID":"sha256:8d78"}}"#).unwrap(),
            Message::Image("sha256:8d78".into())
        );
        assert_eq!(
            message(br#"{"errorDetail":{"message":"failed to solve"},"error":"failed to solve"}"#).unwrap(),
            Message::Failed("failed to solve".into())
        );
        assert_eq!(message(br#"{"id":"moby.buildkit.trace","aux":"CgA="}"#).unwrap(), Message::Trace(vec![10, 0]));
        assert!(message(b"not json").is_err());
        assert_eq!(message(b"\r\n").unwrap(), Message::None);
    }

    #[test]
    fn session_requests_and_replies_are_framed_as_grpc() {
        let request = [&[0u8, 0, 0, 0, 7][..], &proto::field_bytes(1, b"token")].concat();
        let message = grpc_message(&request).unwrap();
        assert_eq!(proto::string(message, 1).as_deref(), Some("token"));
        assert!(grpc_message(&[0, 0, 0, 0, 9, 1]).is_none(), "a short body");
        assert!(grpc_message(&[1, 0, 0, 0, 0]).is_none(), "compressed");
        let hub = bollard::auth::DockerCredentials {
            username: Some("alice".into()),
            password: Some("pw".into()),
            ..Default::default()
        };
        let creds = HashMap::from([("docker.io".to_string(), hub)]);
        assert_eq!(credentials_for(&creds, "registry-1.docker.io"), Some(("alice".into(), "pw".into())));
        assert_eq!(credentials_for(&creds, "ghcr.io"), None);
    }

    #[test]
    fn the_query_carries_every_option() {
        let mut options = BuildOptions::dockerfile("dir/Dockerfile");
        options.build_args.insert("A".into(), "1 2".into());
        options.target = Some("dev".into());
        options.pull = true;
        options.platform = Some("linux/arm64".into());
        let q = query(&options, "abc");
        assert_eq!(
            q,
            "version=2&session=abc&dockerfile=dir%2FDockerfile&rm=1&forcerm=1&buildargs=%7B%22A%22%3A%221+2%22%7D\
             &labels=%7B%7D&target=dev&pull=1&platform=linux%2Farm64"
        );
    }
}
