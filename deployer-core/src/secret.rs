//! `Secret<T>`: a value that never shows up in logs, errors or the web UI;
//! and the process's register of secret strings, scrubbed from every job
//! log line and every [`Error`](crate::Error) message.

use std::fmt;
use std::sync::RwLock;

use base64::Engine as _;

/// Every registered secret, in every form it may be written in, longest
/// first (so that a secret containing another is replaced whole).
static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// What a secret is replaced with.
const REDACTED: &str = "[redacted]";

/// Registers `secret` for the whole process: from now on it is replaced by
/// `[redacted]` in job logs and error messages (and so in the diagram, the
/// API, the store's outcomes and the web pages), in the forms it is
/// commonly written in: as it is, each line of a multi-line one (a PEM
/// key), URL-encoded, JSON- and Rust-escaped, and base64 (standard and
/// URL-safe, at each alignment, so also inside a larger base64 text such
/// as `user:password` in a `Basic` header).
pub fn register_secret(secret: &str) {
    if secret.is_empty() {
        return;
    }
    let mut forms = vec![secret.to_owned()];
    forms.extend(secret.lines().map(str::trim).filter(|l| l.len() >= 3).map(str::to_owned));
    let mut derived = Vec::new();
    for form in &forms {
        derived.push(percent_encoded(form));
        if let Ok(json) = serde_json::to_string(form) {
            derived.push(json[1..json.len() - 1].to_owned());
        }
        let debug = format!("{form:?}");
        derived.push(debug[1..debug.len() - 1].to_owned());
        if form.len() >= 4 {
            derived.extend(base64_forms(form.as_bytes()));
        }
    }
    forms.extend(derived);
    let mut secrets = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    for form in forms {
        if !form.is_empty() && !secrets.contains(&form) {
            secrets.push(form);
        }
    }
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// `text` with every registered secret replaced by `[redacted]`.
pub fn scrub_secrets(text: &str) -> String {
    let secrets = SECRETS.read().unwrap_or_else(|e| e.into_inner());
    let mut out = text.to_owned();
    for s in secrets.iter() {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), REDACTED);
        }
    }
    out
}

/// `bytes` with every registered secret replaced, byte by byte (for text
/// that may be cut in the middle of a character).
pub(crate) fn scrub_bytes(bytes: &[u8]) -> Vec<u8> {
    let secrets = SECRETS.read().unwrap_or_else(|e| e.into_inner());
    let mut out = bytes.to_vec();
    for s in secrets.iter() {
        let s = s.as_bytes();
        if out.windows(s.len()).any(|w| w == s) {
            let mut next = Vec::with_capacity(out.len());
            let mut i = 0;
            while i < out.len() {
                if out[i..].starts_with(s) {
                    next.extend_from_slice(REDACTED.as_bytes());
                    i += s.len();
                } else {
                    next.push(out[i]);
                    i += 1;
                }
            }
            out = next;
        }
    }
    out
}

/// The length of the longest registered form (0 with none).
pub(crate) fn longest_secret() -> usize {
    SECRETS.read().unwrap_or_else(|e| e.into_inner()).first().map_or(0, String::len)
}

/// `text` with every byte but the unreserved ones percent-encoded.
fn percent_encoded(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The base64 text that `bytes` always turn into, wherever they stand in
/// a longer input: at each of the three alignments, the characters made
/// from their bits alone; standard and URL-safe alphabets.
fn base64_forms(bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for engine in [base64::engine::general_purpose::STANDARD_NO_PAD, base64::engine::general_purpose::URL_SAFE_NO_PAD] {
        for k in 0..3usize {
            let mut input = vec![0u8; k];
            input.extend_from_slice(bytes);
            let encoded = engine.encode(&input);
            // Characters 0..start hold bits of the k bytes before; those
            // from full onwards, bits of the bytes after.
            let start = (8 * k).div_ceil(6);
            let full = 8 * (k + bytes.len()) / 6;
            if full >= start + 8 {
                out.push(encoded[start..full].to_owned());
            }
        }
    }
    // The whole secret alone, padded, too.
    out.push(base64::engine::general_purpose::STANDARD.encode(bytes));
    out
}

/// A value (a password, a token, a key) that prints as `[redacted]`.
///
/// `Debug` and `Display` never show the value; [`Secret::expose`] does, for
/// the one place that needs it. Register string secrets with
/// [`Context::secret`](crate::Context::secret) so they are also scrubbed from
/// job logs.
///
/// ```
/// let token = deployer_core::Secret::new("ghp_abc123".to_string());
/// assert_eq!(format!("{token} {token:?}"), "[redacted] Secret([redacted])");
/// assert_eq!(token.expose(), "ghp_abc123");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps `value`.
    pub fn new(value: T) -> Secret<T> {
        Secret(value)
    }

    /// The value itself. Do not log it.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_common_form_of_a_secret_is_scrubbed() {
        let secret = "p@ss\"w/ord\\x+y";
        register_secret(secret);
        let b64 = base64::engine::general_purpose::STANDARD;
        let cases = [
            secret.to_owned(),
            percent_encoded(secret),
            serde_json::to_string(secret).unwrap(),
            format!("{secret:?}"),
            b64.encode(secret),
            b64.encode(format!("alice:{secret}")),
            b64.encode(format!("ab:{secret}")),
            b64.encode(format!("{{\"password\":\"{secret}\"}}")),
            base64::engine::general_purpose::URL_SAFE.encode(format!("u:{secret}")),
        ];
        for text in cases {
            let scrubbed = scrub_secrets(&format!("before {text} after"));
            assert!(scrubbed.contains(REDACTED), "{text}: {scrubbed}");
            assert!(!scrubbed.contains(secret), "{scrubbed}");
        }
        // Short secrets are registered too.
        register_secret("q7");
        assert_eq!(scrub_secrets("key=q7"), "key=[redacted]");
        assert_eq!(scrub_bytes(b"x q7 y"), b"x [redacted] y");
    }
}
