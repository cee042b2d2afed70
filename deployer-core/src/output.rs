//! The result of evaluating a node: a value, a pending state, or an error.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::term::TermId;

/// Why a node has no value yet.
///
/// These are the three pending states of OCurrent, as a closed type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActiveState {
    /// Ready to run, but not started (for example, queued for a pool).
    Ready,
    /// Running now.
    Running,
    /// Held until an operator confirms it (its level is at or above the threshold).
    WaitingForConfirmation,
}

impl fmt::Display for ActiveState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ActiveState::Ready => "ready",
            ActiveState::Running => "running",
            ActiveState::WaitingForConfirmation => "waiting for confirmation",
        })
    }
}

/// What kind of failure an [`Error`] is, so that callers can tell "the
/// tests failed" from "docker is not installed" without matching on text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A failure described by its message.
    Failed,
    /// An operating-system error (a file, a socket, a program that could not
    /// be started), with its kind.
    Io(std::io::ErrorKind),
    /// A process ran and did not succeed: its exit code, or the signal that
    /// ended it.
    Exit {
        /// The exit code, if it exited.
        code: Option<i32>,
        /// The signal that killed it, if one did.
        signal: Option<i32>,
    },
    /// The job was cancelled (by an operator, or because it was no longer
    /// needed).
    Cancelled,
    /// The job ran past its time limit.
    TimedOut,
    /// Something the job needs outside did not answer (a daemon that is
    /// restarting, a registry that is down, a host that dropped the
    /// connection), or the deployer's own state directory could not be
    /// written (a full disk): trying again later may succeed. A failure of this kind
    /// is retried by itself ([`cache::RETRY_UNAVAILABLE`](crate::cache::RETRY_UNAVAILABLE)).
    Unavailable,
}

/// An error flowing through a pipeline, tagged with the node it came from.
///
/// The tag is how the analysis tells a node that *failed* (the error
/// originated there) from one that is *blocked* (the error came from upstream).
/// The [`kind`](Error::kind) says what sort of failure it is. Cloning is
/// cheap: the message is shared.
///
/// ```
/// use deployer_core::{Error, ErrorKind, ResultExt};
///
/// fn read_config() -> Result<String, Error> {
///     std::fs::read_to_string("/no/such/deployer.toml").context("reading the configuration")
/// }
/// let e = read_config().unwrap_err();
/// assert_eq!(e.kind(), ErrorKind::Io(std::io::ErrorKind::NotFound));
/// assert!(e.message().starts_with("reading the configuration: "));
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Error {
    inner: Arc<ErrorInner>,
}

#[derive(PartialEq, Eq, Hash)]
struct ErrorInner {
    message: String,
    kind: ErrorKind,
    origin: Option<TermId>,
}

impl Error {
    /// An error with `message` that is not (yet) attributed to any node.
    ///
    /// When such an error enters the pipeline (returned by a primitive, or
    /// held by a constant), the node that produced it becomes its origin.
    pub fn msg(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Failed, message)
    }

    /// An error of `kind` with `message`.
    ///
    /// Registered secrets are scrubbed from the message
    /// ([`register_secret`](crate::register_secret)), so an error never
    /// carries one to a page, the API or the store.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        let message = crate::secret::scrub_secrets(&message.into());
        Error { inner: Arc::new(ErrorInner { message, kind, origin: None }) }
    }

    /// The error message.
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The node the error came from, once it has entered a pipeline.
    pub fn origin(&self) -> Option<TermId> {
        self.inner.origin
    }

    /// This error with `what` in front of its message (`"what: message"`),
    /// keeping its kind and origin.
    pub fn context(self, what: impl fmt::Display) -> Error {
        self.with_message(format!("{what}: {}", self.message()))
    }

    /// The same error (kind, origin) with another message.
    pub fn with_message(&self, message: impl Into<String>) -> Error {
        let message = crate::secret::scrub_secrets(&message.into());
        Error { inner: Arc::new(ErrorInner { message, kind: self.inner.kind, origin: self.inner.origin }) }
    }

    /// This error attributed to `origin`, unless it already has an origin.
    pub(crate) fn attributed(self, origin: TermId) -> Error {
        if self.inner.origin.is_some() {
            return self;
        }
        Error {
            inner: Arc::new(ErrorInner {
                message: self.inner.message.clone(),
                kind: self.inner.kind,
                origin: Some(origin),
            }),
        }
    }

    /// A new error with `message`, originating at `origin`.
    pub(crate) fn with_origin(message: impl Into<String>, origin: TermId) -> Error {
        Error::msg(message).attributed(origin)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Error({:?}", self.message())?;
        if self.kind() != ErrorKind::Failed {
            write!(f, ", {:?}", self.kind())?;
        }
        match self.origin() {
            Some(origin) => write!(f, " from {origin})"),
            None => f.write_str(")"),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for Error {}

impl From<String> for Error {
    fn from(message: String) -> Error {
        Error::msg(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Error {
        Error::msg(message)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::new(ErrorKind::Io(e.kind()), e.to_string())
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Error {
        Error::msg(format!("JSON: {e}"))
    }
}

/// Adds context to the error of a `Result`: `.context("reading x")`.
pub trait ResultExt<T> {
    /// The error, converted to an [`Error`], with `what` in front of its message.
    fn context(self, what: impl fmt::Display) -> Result<T, Error>;
}

impl<T, E: Into<Error>> ResultExt<T> for Result<T, E> {
    fn context(self, what: impl fmt::Display) -> Result<T, Error> {
        self.map_err(|e| e.into().context(what))
    }
}

/// The state of a node's output: a value, pending, or failed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Output<T> {
    /// The node has a value.
    Ok(T),
    /// The node is waiting for something (a job, an input, a confirmation).
    Active(ActiveState),
    /// The node, or something it depends on, failed.
    Err(Error),
}

impl<T> Output<T> {
    /// `Ok(&v)` for `Ok(v)`, otherwise the same state without the value.
    pub fn as_ref(&self) -> Output<&T> {
        match self {
            Output::Ok(v) => Output::Ok(v),
            Output::Active(a) => Output::Active(*a),
            Output::Err(e) => Output::Err(e.clone()),
        }
    }

    /// Applies `f` to the value, keeping pending and error states.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Output<U> {
        match self {
            Output::Ok(v) => Output::Ok(f(v)),
            Output::Active(a) => Output::Active(a),
            Output::Err(e) => Output::Err(e),
        }
    }

    /// The value, if there is one, borrowed (see [`Output::ok`] to take it).
    ///
    /// ```
    /// let out = deployer_core::Output::Ok("v1".to_string());
    /// assert_eq!(out.as_ok().map(String::as_str), Some("v1"));
    /// assert!(out.as_ok().is_some()); // still there
    /// ```
    pub fn as_ok(&self) -> Option<&T> {
        match self {
            Output::Ok(v) => Some(v),
            _ => None,
        }
    }

    /// The value, if there is one.
    pub fn ok(self) -> Option<T> {
        match self {
            Output::Ok(v) => Some(v),
            _ => None,
        }
    }

    /// The error, if there is one.
    pub fn err(&self) -> Option<&Error> {
        match self {
            Output::Err(e) => Some(e),
            _ => None,
        }
    }

    /// True for `Ok`.
    pub fn is_ok(&self) -> bool {
        matches!(self, Output::Ok(_))
    }

    /// The same pending or error state for another value type.
    ///
    /// Returns `None` for `Ok`, which has no such counterpart.
    pub(crate) fn cast<U>(&self) -> Option<Output<U>> {
        match self {
            Output::Ok(_) => None,
            Output::Active(a) => Some(Output::Active(*a)),
            Output::Err(e) => Some(Output::Err(e.clone())),
        }
    }

    /// The coarse state of this output at a node that only passes on pending
    /// states from its inputs: a pending state there means "blocked".
    pub(crate) fn derived_state(&self, me: TermId) -> NodeState {
        match self {
            Output::Active(_) => NodeState::Blocked,
            other => other.state(me),
        }
    }

    /// The coarse state of this output, seen from node `me`, which is the
    /// source of any pending state.
    pub fn state(&self, me: TermId) -> NodeState {
        match self {
            Output::Ok(_) => NodeState::Ok,
            Output::Active(a) => NodeState::Active(*a),
            Output::Err(e) if e.origin() == Some(me) || e.origin().is_none() => NodeState::Failed,
            Output::Err(_) => NodeState::Blocked,
        }
    }
}

impl<T, E: Into<Error>> From<Result<T, E>> for Output<T> {
    fn from(r: Result<T, E>) -> Output<T> {
        match r {
            Ok(v) => Output::Ok(v),
            Err(e) => Output::Err(e.into()),
        }
    }
}

/// The state of a box in the diagram, as OCurrent colours it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Has a value.
    Ok,
    /// Pending.
    Active(ActiveState),
    /// Failed here: the error originated at this node.
    Failed,
    /// Blocked by an error that originated upstream.
    Blocked,
}

impl NodeState {
    /// A short name: `ok`, `ready`, `running`, `waiting`, `failed`, `blocked`.
    pub fn name(self) -> &'static str {
        match self {
            NodeState::Ok => "ok",
            NodeState::Active(ActiveState::Ready) => "ready",
            NodeState::Active(ActiveState::Running) => "running",
            NodeState::Active(ActiveState::WaitingForConfirmation) => "waiting",
            NodeState::Failed => "failed",
            NodeState::Blocked => "blocked",
        }
    }
}

/// Extracts a readable message from a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        format!("panic: {s}")
    } else if let Some(s) = payload.downcast_ref::<String>() {
        format!("panic: {s}")
    } else {
        "panic (no message)".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_versus_blocked() {
        let here = TermId::fresh();
        let there = TermId::fresh();
        let e: Output<()> = Output::Err(Error::with_origin("boom", here));
        assert_eq!(e.state(here), NodeState::Failed);
        assert_eq!(e.state(there), NodeState::Blocked);
    }

    #[test]
    fn attribution_keeps_first_origin() {
        let a = TermId::fresh();
        let b = TermId::fresh();
        let e = Error::msg("x").attributed(a).attributed(b);
        assert_eq!(e.origin(), Some(a));
    }
}
