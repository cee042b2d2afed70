//! What can go wrong, naming the host, registry or file involved (never a
//! password or token).

use std::fmt;

/// Why a Docker operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DockerError {
    /// A host, context or credential configuration is not usable.
    Config(String),
    /// The daemon could not be reached.
    Connect {
        /// The host's name (its context).
        host: String,
        /// What happened.
        why: String,
    },
    /// The daemon refused or failed a request.
    Daemon {
        /// The host's name.
        host: String,
        /// What was asked (`updating service web`).
        what: String,
        /// The daemon's answer.
        why: String,
    },
    /// A registry refused or failed a request.
    Registry {
        /// The registry (`127.0.0.1:5000`).
        registry: String,
        /// What happened.
        why: String,
    },
    /// A request that got no answer: the connection to the daemon failed
    /// or was cut, the daemon was not ready (a swarm manager restarting), or
    /// the daemon could not reach a registry. It may pass, so the failure
    /// is of kind [`Unavailable`](deployer_core::ErrorKind::Unavailable) and
    /// is tried again by itself.
    Unanswered {
        /// Who did not answer (`test`, `registry 127.0.0.1:5000`).
        whom: String,
        /// What was asked (`updating the service web`).
        what: String,
        /// What happened.
        why: String,
    },
}

impl DockerError {
    /// The error for the daemon of `host` failing `what` with `e`:
    /// [`DockerError::Unanswered`] when nothing answered, else
    /// [`DockerError::Daemon`].
    pub(crate) fn daemon(host: impl Into<String>, what: impl Into<String>, e: &bollard::errors::Error) -> DockerError {
        let (host, what, why) = (host.into(), what.into(), daemon_message(e));
        if unanswered(e) {
            DockerError::Unanswered { whom: host, what, why }
        } else {
            DockerError::Daemon { host, what, why }
        }
    }
}

/// Whether `e` says that nothing answered: the connection to the daemon
/// failed, was cut or timed out; the daemon was unavailable (503: a swarm
/// manager without its raft yet); or the daemon's own request to a registry
/// found no one there (Go's network errors, which the daemon passes on).
fn unanswered(e: &bollard::errors::Error) -> bool {
    use bollard::errors::Error as E;
    match e {
        E::IOError { .. }
        | E::RequestTimeoutError
        | E::HyperResponseError { .. }
        | E::HyperLegacyError { .. }
        | E::HttpClientError { .. }
        | E::SocketNotFoundError(_) => true,
        E::DockerResponseServerError { status_code: 503, .. } => true,
        E::DockerResponseServerError { message, .. } => no_one_there(message),
        E::DockerStreamError { error } => no_one_there(error),
        _ => false,
    }
}

/// Whether a daemon's message is a Go network error for a peer that did not
/// answer (`dial tcp 127.0.0.1:5000: connect: connection refused`, an I/O
/// timeout, a connection reset): the only form in which the daemon says that
/// a registry was unreachable.
pub(crate) fn no_one_there(message: &str) -> bool {
    const DIAL: [&str; 4] = ["connect: connection refused", "i/o timeout", "no route to host", ": EOF"];
    (message.contains("dial tcp ") && DIAL.iter().any(|s| message.contains(s)))
        || message.contains("connection reset by peer")
}

impl fmt::Display for DockerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DockerError::Config(why) => write!(f, "Docker configuration: {why}"),
            DockerError::Connect { host, why } => write!(f, "cannot reach the Docker daemon of {host}: {why}"),
            DockerError::Daemon { host, what, why } => write!(f, "{what} on {host}: {why}"),
            DockerError::Registry { registry, why } => write!(f, "registry {registry}: {why}"),
            DockerError::Unanswered { whom, what, why } => write!(f, "{what} on {whom}: {why}"),
        }
    }
}

impl std::error::Error for DockerError {}

impl From<DockerError> for deployer_core::Error {
    fn from(e: DockerError) -> deployer_core::Error {
        let kind = match e {
            DockerError::Connect { .. } | DockerError::Unanswered { .. } => deployer_core::ErrorKind::Unavailable,
            _ => deployer_core::ErrorKind::Failed,
        };
        deployer_core::Error::new(kind, e.to_string())
    }
}

impl From<crate::BadReference> for deployer_core::Error {
    fn from(e: crate::BadReference) -> deployer_core::Error {
        deployer_core::Error::msg(e.to_string())
    }
}

/// The daemon's message in a bollard error (without the request's details).
pub(crate) fn daemon_message(e: &bollard::errors::Error) -> String {
    use bollard::errors::Error as E;
    match e {
        E::DockerResponseServerError { status_code, message } => format!("{message} (HTTP {status_code})"),
        E::DockerStreamError { error } => error.clone(),
        E::IOError { err } => err.to_string(),
        E::RequestTimeoutError => "the daemon did not answer in time".to_owned(),
        E::HyperResponseError { .. } | E::HyperLegacyError { .. } | E::HttpClientError { .. } => {
            format!("the connection to the daemon failed ({})", causes(e))
        }
        other => other.to_string(),
    }
}

/// What `e` wraps, innermost last (`client error (SendRequest): connection
/// closed before message completed`), without `e`'s own words: for an HTTP
/// client error, the cause is what tells a reader what happened.
fn causes(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = cause.source();
    }
    if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    }
}

/// Whether a bollard error is the daemon saying "not found".
pub(crate) fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })
}
