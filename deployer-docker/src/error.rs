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
}

impl fmt::Display for DockerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DockerError::Config(why) => write!(f, "Docker configuration: {why}"),
            DockerError::Connect { host, why } => write!(f, "cannot reach the Docker daemon of {host}: {why}"),
            DockerError::Daemon { host, what, why } => write!(f, "{what} on {host}: {why}"),
            DockerError::Registry { registry, why } => write!(f, "registry {registry}: {why}"),
        }
    }
}

impl std::error::Error for DockerError {}

impl From<DockerError> for deployer_core::Error {
    fn from(e: DockerError) -> deployer_core::Error {
        deployer_core::Error::msg(e.to_string())
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
        other => other.to_string(),
    }
}

/// Whether a bollard error is the daemon saying "not found".
pub(crate) fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })
}
