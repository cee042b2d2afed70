//! GitHub's webhook deliveries, mounted on deployer-web: the signature is
//! checked over the raw body, in constant time, before anything is parsed.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use deployer_core::Secret;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::{GitHub, Repo, Rerequest};

/// The largest delivery accepted (GitHub caps payloads at 25 MB).
pub const MAX_BODY: usize = 25 << 20;

/// Where GitHub is told to deliver.
pub const PATH: &str = "/webhooks/github";

/// Bodies being read hold at most this much memory between them (16 ×
/// [`MAX_BODY`]), whatever clients do. It is counted by the bytes that
/// have arrived, so a sender that stalls holds only what it sent; a
/// delivery that finds the memory taken waits for it up to
/// [`WAIT_FOR_MEMORY`], then is answered 503.
pub const READ_BUDGET: usize = 16 * MAX_BODY;

/// How long a delivery waits for memory to read its body into.
pub const WAIT_FOR_MEMORY: Duration = Duration::from_secs(10);

/// A body that sends nothing for this long is dropped (408).
pub const BODY_IDLE: Duration = Duration::from_secs(5);

/// A body not read whole after this long is dropped (408): 25 MB in that
/// time is 0.8 MB/s, far below what GitHub sends at.
pub const BODY_TIME: Duration = Duration::from_secs(30);

/// Delivery ids (`X-GitHub-Delivery`) remembered, to answer a replay or a
/// redelivery of a delivery already acted on without acting again.
pub const REMEMBERED_DELIVERIES: usize = 100_000;

struct Hook {
    github: GitHub,
    secret: Secret<String>,
    /// Memory for bodies being read, in KiB.
    budget: Arc<tokio::sync::Semaphore>,
    seen: Mutex<Seen>,
}

/// The ids of the deliveries acted on lately (the oldest forgotten first).
#[derive(Default)]
struct Seen {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl Seen {
    fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    fn insert(&mut self, id: &str) {
        if self.ids.insert(id.to_owned()) {
            self.order.push_back(id.to_owned());
            while self.order.len() > REMEMBERED_DELIVERIES {
                if let Some(old) = self.order.pop_front() {
                    self.ids.remove(&old);
                }
            }
        }
    }
}

/// Why a body was not read.
enum ReadFailure {
    TooLarge,
    Slow,
    Busy,
    Broken,
}

/// Reads `body` whole, taking memory from `budget` (KiB) as bytes arrive:
/// at most `MAX_BODY`, with nothing for [`BODY_IDLE`] or in all more than
/// [`BODY_TIME`] dropped. The permits are held until the body is dropped.
async fn read_body(
    body: Body,
    budget: &Arc<tokio::sync::Semaphore>,
) -> Result<(Vec<u8>, tokio::sync::OwnedSemaphorePermit), ReadFailure> {
    use http_body_util::BodyExt;
    let deadline = tokio::time::Instant::now() + BODY_TIME;
    let mut body = body;
    let mut bytes = Vec::new();
    let mut held = match budget.clone().try_acquire_many_owned(0) {
        Ok(p) => p,
        Err(_) => return Err(ReadFailure::Busy),
    };
    let mut held_kib = 0usize;
    loop {
        let idle = tokio::time::Instant::now() + BODY_IDLE;
        let frame = match tokio::time::timeout_at(idle.min(deadline), body.frame()).await {
            Err(_) => return Err(ReadFailure::Slow),
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(ReadFailure::Broken),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        if bytes.len() + data.len() > MAX_BODY {
            return Err(ReadFailure::TooLarge);
        }
        let need_kib = (bytes.len() + data.len()).div_ceil(1024);
        if need_kib > held_kib {
            let more = u32::try_from(need_kib - held_kib).map_err(|_| ReadFailure::TooLarge)?;
            let wait = tokio::time::Instant::now() + WAIT_FOR_MEMORY;
            match tokio::time::timeout_at(wait.min(deadline), budget.clone().acquire_many_owned(more)).await {
                Ok(Ok(p)) => held.merge(p),
                Ok(Err(_)) => return Err(ReadFailure::Broken),
                Err(_) => return Err(ReadFailure::Busy),
            }
            held_kib = need_kib;
        }
        bytes.extend_from_slice(&data);
    }
    Ok((bytes, held))
}

/// Whether `signature` (`sha256=<hex>`) is the HMAC-SHA256 of `body`.
pub(crate) fn signature_ok(secret: &[u8], body: &[u8], signature: Option<&str>) -> bool {
    let Some(hex_sig) = signature.and_then(|s| s.strip_prefix("sha256=")) else { return false };
    let Ok(sig) = hex::decode(hex_sig) else { return false };
    let Ok(mac) = Hmac::<Sha256>::new_from_slice(secret) else { return false };
    mac.chain_update(body).verify_slice(&sig).is_ok()
}

/// `sha256=<hex>` for `body`: what GitHub sends (for tests and tools).
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    format!("sha256={}", hex::encode(mac.chain_update(body).finalize().into_bytes()))
}

/// A `sha256=` followed by 64 hex digits: the shape of a signature.
fn signature_shaped(signature: Option<&str>) -> bool {
    signature
        .and_then(|s| s.strip_prefix("sha256="))
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

async fn deliver(State(hook): State<Arc<Hook>>, headers: HeaderMap, body: Body) -> (StatusCode, &'static str) {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    // Before the body is read: no signature, no reading; a declared length
    // over the limit, no reading; and only so many bodies at once.
    if !signature_shaped(header("x-hub-signature-256")) {
        tracing::warn!("refused a webhook delivery without a signature");
        return (StatusCode::UNAUTHORIZED, "bad signature\n");
    }
    if header("content-length").and_then(|l| l.parse::<usize>().ok()).is_some_and(|l| l > MAX_BODY) {
        return (StatusCode::PAYLOAD_TOO_LARGE, "too large\n");
    }
    let (body, _memory) = match read_body(body, &hook.budget).await {
        Ok(read) => read,
        Err(ReadFailure::TooLarge) => return (StatusCode::PAYLOAD_TOO_LARGE, "too large\n"),
        Err(ReadFailure::Slow) => {
            tracing::warn!("dropped a webhook delivery whose body came too slowly");
            return (StatusCode::REQUEST_TIMEOUT, "too slow\n");
        }
        Err(ReadFailure::Busy) => {
            tracing::warn!("refused a webhook delivery: no memory to read it into for {WAIT_FOR_MEMORY:?}");
            return (StatusCode::SERVICE_UNAVAILABLE, "busy\n");
        }
        Err(ReadFailure::Broken) => return (StatusCode::BAD_REQUEST, "the body could not be read\n"),
    };
    let body = Bytes::from(body);
    if !signature_ok(hook.secret.expose().as_bytes(), &body, header("x-hub-signature-256")) {
        tracing::warn!("refused a webhook delivery with a wrong signature");
        return (StatusCode::UNAUTHORIZED, "bad signature\n");
    }
    // A delivery acted on already (a replay, or GitHub delivering it
    // again) changes nothing more.
    let delivery = header("x-github-delivery").filter(|d| !d.is_empty() && d.len() <= 100).map(str::to_owned);
    if let Some(id) = &delivery {
        if hook.seen.lock().unwrap_or_else(|e| e.into_inner()).contains(id) {
            tracing::info!("delivery {id} was acted on already: ignored");
            return (StatusCode::OK, "already delivered\n");
        }
    }
    let event = header("x-github-event").unwrap_or("").to_owned();
    let payload: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!("a signed {event} delivery is not JSON: {e}");
            return (StatusCode::BAD_REQUEST, "not JSON\n");
        }
    };
    let repo = payload.pointer("/repository/full_name").and_then(Value::as_str);
    let action = payload.get("action").and_then(Value::as_str).unwrap_or("");
    match event.as_str() {
        "push" | "pull_request" | "create" | "delete" => match repo {
            Some(repo) => {
                let n = hook.github.repository_changed(repo);
                tracing::debug!("{event} on {repo}: {n} monitors refreshed");
            }
            None => tracing::warn!("a {event} delivery without a repository"),
        },
        "installation" | "installation_repositories" => hook.github.installations_changed(),
        "check_run" | "check_suite" if action == "rerequested" => {
            let object = payload.get(&event).cloned().unwrap_or(Value::Null);
            let hash = object.get("head_sha").and_then(Value::as_str);
            match (repo.and_then(|r| Repo::parse(r).ok()), hash) {
                (Some(repo), Some(hash)) => {
                    let external_id =
                        object.get("external_id").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
                    let installation = payload.pointer("/installation/id").and_then(Value::as_u64);
                    hook.github.rerequested(&Rerequest { repo, hash: hash.to_owned(), external_id, installation });
                }
                _ => tracing::warn!("a {event} re-run request without a repository or commit"),
            }
        }
        "ping" => tracing::info!("GitHub pinged the webhook"),
        other => tracing::info!("ignoring a {other} ({action}) delivery"),
    }
    if let Some(id) = &delivery {
        hook.seen.lock().unwrap_or_else(|e| e.into_inner()).insert(id);
    }
    (StatusCode::OK, "OK\n")
}

impl GitHub {
    /// The webhook endpoint (`POST /webhooks/github`), checking deliveries
    /// against `secret`: mount it with `deployer_web::Site::mount`. A bad or
    /// missing signature is 401 and nothing is parsed (a missing one before
    /// the body is read); a body over 25 MB is 413; a body that stalls
    /// ([`BODY_IDLE`]) or takes too long ([`BODY_TIME`]) is 408; with
    /// [`READ_BUDGET`] taken by bodies being read, a delivery waits
    /// [`WAIT_FOR_MEMORY`], then 503; signed JSON that does not parse is
    /// 400; a delivery id seen before is 200 and nothing is done again.
    pub fn webhook_routes(&self, secret: Secret<String>) -> Router {
        self.ctx.jobs.register_secret(secret.expose());
        Router::new().route(PATH, post(deliver)).layer(DefaultBodyLimit::max(MAX_BODY)).with_state(Arc::new(Hook {
            github: self.clone(),
            secret,
            budget: Arc::new(tokio::sync::Semaphore::new(READ_BUDGET / 1024)),
            seen: Mutex::default(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        let s = sign("It's a Secret to Everybody", b"Hello, World!");
        // GitHub's documented example.
        assert_eq!(s, "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17");
        assert!(signature_ok(b"It's a Secret to Everybody", b"Hello, World!", Some(&s)));
        assert!(!signature_ok(b"It's a Secret to Everybody", b"Hello, World?", Some(&s)));
        assert!(!signature_ok(b"other", b"Hello, World!", Some(&s)));
        assert!(!signature_ok(b"k", b"x", None));
        assert!(!signature_ok(b"k", b"x", Some("sha1=00")));
    }
}
