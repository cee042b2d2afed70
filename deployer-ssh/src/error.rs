//! What can go wrong, in words that name the host and the file involved
//! (never a key or a passphrase).

use std::fmt;
use std::path::PathBuf;

/// Why an SSH operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SshError {
    /// A host's configuration (or an `ssh_config` file) is not usable.
    Config(String),
    /// A private key could not be read or decrypted.
    Key(String),
    /// The host could not be reached.
    Connect {
        /// `user@host:port`.
        host: String,
        /// What happened.
        why: String,
    },
    /// The host's key is not known (and learning unknown keys is off).
    UnknownHostKey {
        /// `user@host:port`.
        host: String,
        /// The key's SHA-256 fingerprint.
        fingerprint: String,
        /// Where it was looked for (`None`: a pinned key).
        file: Option<PathBuf>,
    },
    /// The host showed a key other than the one recorded for it.
    ChangedHostKey {
        /// `user@host:port`.
        host: String,
        /// The key's SHA-256 fingerprint.
        fingerprint: String,
        /// Where the recorded key is, and its line (`None`: a pinned key).
        file: Option<(PathBuf, usize)>,
    },
    /// The host showed a key marked `@revoked`.
    RevokedHostKey {
        /// `user@host:port`.
        host: String,
        /// The key's SHA-256 fingerprint.
        fingerprint: String,
        /// The file and the line that revokes it.
        file: (PathBuf, usize),
    },
    /// The server refused every key offered.
    Auth {
        /// `user@host:port`.
        host: String,
        /// What was tried.
        why: String,
    },
    /// The connection or a channel on it failed.
    Session {
        /// `user@host:port`.
        host: String,
        /// What happened.
        why: String,
    },
}

impl fmt::Display for SshError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SshError::Config(why) => write!(f, "SSH configuration: {why}"),
            SshError::Key(why) => write!(f, "SSH key: {why}"),
            SshError::Connect { host, why } => write!(f, "cannot connect to {host}: {why}"),
            SshError::UnknownHostKey { host, fingerprint, file: Some(file) } => write!(
                f,
                "refusing {host}: its host key ({fingerprint}) is not in {} (add it there after checking it, \
                 e.g. with ssh-keyscan; unknown hosts are learned only when asked for)",
                file.display()
            ),
            SshError::UnknownHostKey { host, fingerprint, file: None } => {
                write!(f, "refusing {host}: its host key ({fingerprint}) is not the pinned key")
            }
            SshError::ChangedHostKey { host, fingerprint, file: Some((file, line)) } => write!(
                f,
                "refusing {host}: its host key CHANGED (now {fingerprint}; {}:{line} records another). \
                 This may be an attack; if the host was reinstalled, update that line",
                file.display()
            ),
            SshError::ChangedHostKey { host, fingerprint, file: None } => {
                write!(f, "refusing {host}: its host key ({fingerprint}) is not the pinned key")
            }
            SshError::RevokedHostKey { host, fingerprint, file: (file, line) } => {
                write!(f, "refusing {host}: its host key ({fingerprint}) is revoked ({}:{line})", file.display())
            }
            SshError::Auth { host, why } => write!(f, "{host} refused authentication: {why}"),
            SshError::Session { host, why } => write!(f, "SSH session with {host}: {why}"),
        }
    }
}

impl std::error::Error for SshError {}

/// A host that could not be reached gives a failure of kind
/// [`Unavailable`](deployer_core::ErrorKind::Unavailable) (nothing ran
/// there, so it is tried again by itself); a session cut while a command ran
/// is an ordinary failure, retried on its schedule, since the command may
/// have done part of its work.
impl From<SshError> for deployer_core::Error {
    fn from(e: SshError) -> deployer_core::Error {
        let kind = match e {
            SshError::Connect { .. } => deployer_core::ErrorKind::Unavailable,
            _ => deployer_core::ErrorKind::Failed,
        };
        deployer_core::Error::new(kind, e.to_string())
    }
}
