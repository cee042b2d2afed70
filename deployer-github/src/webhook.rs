//! GitHub's webhook deliveries, mounted on deployer-web: the signature is
//! checked over the raw body, in constant time, before anything is parsed.

use std::sync::Arc;

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

/// Deliveries whose bodies are read at once: at most this many times
/// [`MAX_BODY`] of memory, whatever clients do; more wait for no one and
/// are answered 503.
pub const MAX_READING: usize = 16;

struct Hook {
    github: GitHub,
    secret: Secret<String>,
    reading: tokio::sync::Semaphore,
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
    let Ok(_permit) = hook.reading.try_acquire() else {
        tracing::warn!("refused a webhook delivery: {MAX_READING} are being read already");
        return (StatusCode::SERVICE_UNAVAILABLE, "busy\n");
    };
    let body: Bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => return (StatusCode::PAYLOAD_TOO_LARGE, "too large\n"),
    };
    if !signature_ok(hook.secret.expose().as_bytes(), &body, header("x-hub-signature-256")) {
        tracing::warn!("refused a webhook delivery with a wrong signature");
        return (StatusCode::UNAUTHORIZED, "bad signature\n");
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
                    hook.github.rerequested(&Rerequest { repo, hash: hash.to_owned(), external_id });
                }
                _ => tracing::warn!("a {event} re-run request without a repository or commit"),
            }
        }
        "ping" => tracing::info!("GitHub pinged the webhook"),
        other => tracing::info!("ignoring a {other} ({action}) delivery"),
    }
    (StatusCode::OK, "OK\n")
}

impl GitHub {
    /// The webhook endpoint (`POST /webhooks/github`), checking deliveries
    /// against `secret`: mount it with `deployer_web::Site::mount`. A bad or
    /// missing signature is 401 and nothing is parsed (a missing one before
    /// the body is read); a body over 25 MB is 413; more than
    /// [`MAX_READING`] bodies being read at once, 503; signed JSON that
    /// does not parse is 400.
    pub fn webhook_routes(&self, secret: Secret<String>) -> Router {
        self.ctx.jobs.register_secret(secret.expose());
        Router::new().route(PATH, post(deliver)).layer(DefaultBodyLimit::max(MAX_BODY)).with_state(Arc::new(Hook {
            github: self.clone(),
            secret,
            reading: tokio::sync::Semaphore::new(MAX_READING),
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
