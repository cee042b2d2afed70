//! `Secret<T>`: a value that never shows up in logs, errors or the web UI.

use std::fmt;

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
