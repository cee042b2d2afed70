//! Hosts: where to connect, as whom, with which key, and how to check the
//! server's key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use deployer_core::Secret;
use russh::keys::ssh_key::PublicKey;

use crate::error::SshError;
use crate::known_hosts::HostKeyPolicy;

/// How the client proves who it is.
#[derive(Clone, Debug)]
pub enum Identity {
    /// A private key file (OpenSSH or PEM; ed25519, ECDSA or RSA), with its
    /// passphrase if it is encrypted.
    KeyFile {
        /// The file.
        path: PathBuf,
        /// Its passphrase.
        passphrase: Option<Secret<String>>,
    },
    /// The keys of an SSH agent, at this socket (`None`: `$SSH_AUTH_SOCK`).
    Agent(Option<PathBuf>),
    /// What OpenSSH tries by default: the agent (if `$SSH_AUTH_SOCK` is
    /// set), then `~/.ssh/id_ed25519`, `id_ecdsa` and `id_rsa` (unencrypted).
    Default,
}

/// A host to run commands on or tunnel to: its address, user, identity and
/// host-key policy. Built from a destination and refined with builder
/// methods, or read from an `ssh_config` file ([`Host::from_ssh_config`]).
///
/// ```
/// use deployer_ssh::Host;
///
/// let host = Host::new("deploy@watch.ocaml.org:2222")?
///     .key_file("/run/secrets/deployer-ssh-key")
///     .known_hosts("/etc/deployer/known_hosts");
/// assert_eq!(host.destination(), "deploy@watch.ocaml.org:2222");
/// # Ok::<(), deployer_ssh::SshError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Host {
    pub(crate) name: String,
    pub(crate) hostname: String,
    pub(crate) port: u16,
    pub(crate) user: String,
    pub(crate) identity: Identity,
    pub(crate) host_keys: HostKeyPolicy,
    pub(crate) connect_timeout: Duration,
    pub(crate) keepalive: Duration,
}

/// Refuses what a host name or user must never hold.
pub(crate) fn check_word(what: &str, word: &str) -> Result<(), SshError> {
    if word.is_empty() {
        return Err(SshError::Config(format!("the {what} is empty")));
    }
    if word.starts_with('-') || word.chars().any(|c| c.is_whitespace() || c.is_control() || c == '/') {
        return Err(SshError::Config(format!("the {what} {word:?} is not a valid name")));
    }
    // OpenSSH's own rules (readconf.c, ssh_valid_ruser and
    // ssh_valid_hostname): shell characters in a user name would reach a
    // shell through `%r`; in a host name, and a ',' too, which would make a
    // known_hosts line list other hosts. This crate also refuses '$' and
    // '\\' in a user name, which OpenSSH lets through.
    if what == "user" && word.chars().any(|c| "'`\"$\\;&<>|(){}".contains(c)) {
        return Err(SshError::Config(format!("the user {word:?} contains shell characters")));
    }
    if what == "host name" && word.chars().any(|c| "'`\"$\\;&<>|(){},".contains(c)) {
        return Err(SshError::Config(format!("the host name {word:?} contains characters OpenSSH refuses")));
    }
    // Nor what known_hosts reads as a pattern, a negation, brackets or a
    // comment: a key learned for such a name would be listed for others.
    if what == "host name" && word.chars().any(|c| "*?![]#".contains(c)) {
        return Err(SshError::Config(format!(
            "the host name {word:?} contains a character known_hosts reads as a pattern (* ? ! [ ] #)"
        )));
    }
    Ok(())
}

/// `$HOME`, for `~` and default files.
pub(crate) fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from)
}

/// The current user's name, the default login.
fn current_user() -> String {
    login_name()
}

/// The user id this process runs as (the owner of `/proc/self`), or
/// `u32::MAX` if that cannot be read.
pub(crate) fn effective_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid())
}

/// The login name of the user running this process, as OpenSSH takes it
/// (from the password database by user id, not from `$USER`, which anyone
/// can set): the owner of `/proc/self` looked up in `/etc/passwd`; `$USER`
/// or `$LOGNAME` only where that cannot be read.
pub(crate) fn login_name() -> String {
    let by_uid = Some(effective_uid()).filter(|&u| u != u32::MAX).and_then(|uid| {
        let uid = uid.to_string();
        let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
        passwd.lines().find_map(|l| {
            let mut f = l.split(':');
            let (name, _, id) = (f.next()?, f.next()?, f.next()?);
            (id == uid).then(|| name.to_owned())
        })
    });
    by_uid
        .or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("LOGNAME").ok())
        .unwrap_or_else(|| "root".to_owned())
}

impl Host {
    /// A host from a destination: `host`, `user@host`, `user@host:port`,
    /// `[v6 address]:port` or `ssh://user@host:port` (as Docker writes it).
    /// The user defaults to the login name of the user running this (as
    /// OpenSSH, not `$USER`), the port to 22, the identity to
    /// OpenSSH's defaults, host keys to `~/.ssh/known_hosts`.
    pub fn new(destination: &str) -> Result<Host, SshError> {
        let rest = destination.strip_prefix("ssh://").unwrap_or(destination);
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (user, address) = match rest.rsplit_once('@') {
            Some((user, address)) => (Some(user.to_owned()), address),
            None => (None, rest),
        };
        let (hostname, port) = if let Some(v6) = address.strip_prefix('[') {
            let (inside, after) = v6
                .split_once(']')
                .ok_or_else(|| SshError::Config(format!("{destination:?}: an IPv6 address without its ']'")))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(SshError::Config(format!("{destination:?}: unexpected {after:?}"))),
            };
            (inside.to_owned(), port)
        } else {
            match address.split_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (address.to_owned(), None),
            }
        };
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| SshError::Config(format!("{destination:?}: the port {p:?} is not a port number")))?,
            None => 22,
        };
        let user = user.unwrap_or_else(current_user);
        check_word("user", &user)?;
        check_word("host name", &hostname)?;
        // OpenSSH connects to (and looks keys up for) the name in lower
        // case, whatever case it was written in (`ssh -G` shows it).
        let hostname = hostname.to_ascii_lowercase();
        let known_hosts = home().unwrap_or_default().join(".ssh").join("known_hosts");
        Ok(Host {
            name: destination.to_owned(),
            hostname,
            port,
            user,
            identity: Identity::Default,
            host_keys: HostKeyPolicy::KnownHosts(known_hosts),
            connect_timeout: Duration::from_secs(15),
            keepalive: Duration::from_secs(15),
        })
    }

    /// The host `alias` as an `ssh_config` file at `config` describes it
    /// (`HostName`, `User`, `Port`, `IdentityFile`, `IdentityAgent`,
    /// `UserKnownHostsFile`, `StrictHostKeyChecking`, `ConnectTimeout`,
    /// `ServerAliveInterval`; `Host` patterns and `Include`). Its name in
    /// labels is `alias`.
    pub fn from_ssh_config(alias: &str, config: &Path) -> Result<Host, SshError> {
        crate::config::resolve(alias, config)
    }

    /// The host `alias` as `~/.ssh/config` describes it (or as a plain
    /// destination if there is no such file).
    pub fn from_user_config(alias: &str) -> Result<Host, SshError> {
        let path = home().unwrap_or_default().join(".ssh").join("config");
        if path.exists() {
            Host::from_ssh_config(alias, &path)
        } else {
            Host::new(alias)
        }
    }

    /// Logs in as `user`.
    pub fn user(mut self, user: &str) -> Host {
        self.user = user.to_owned();
        self
    }

    /// Connects to `port`.
    pub fn port(mut self, port: u16) -> Host {
        self.port = port;
        self
    }

    /// Authenticates with the unencrypted private key in `path`.
    pub fn key_file(mut self, path: impl Into<PathBuf>) -> Host {
        self.identity = Identity::KeyFile { path: path.into(), passphrase: None };
        self
    }

    /// Authenticates with the private key in `path`, encrypted with
    /// `passphrase`.
    pub fn encrypted_key_file(mut self, path: impl Into<PathBuf>, passphrase: Secret<String>) -> Host {
        deployer_core::register_secret(passphrase.expose());
        self.identity = Identity::KeyFile { path: path.into(), passphrase: Some(passphrase) };
        self
    }

    /// Authenticates with the keys of the SSH agent at `$SSH_AUTH_SOCK`.
    pub fn agent(mut self) -> Host {
        self.identity = Identity::Agent(None);
        self
    }

    /// Authenticates with the keys of the SSH agent listening on `socket`.
    pub fn agent_socket(mut self, socket: impl Into<PathBuf>) -> Host {
        self.identity = Identity::Agent(Some(socket.into()));
        self
    }

    /// Checks the server's key against the `known_hosts` file at `path`
    /// (plain and hashed entries); an unknown or changed key is refused.
    pub fn known_hosts(mut self, path: impl Into<PathBuf>) -> Host {
        self.host_keys = HostKeyPolicy::KnownHosts(path.into());
        self
    }

    /// Accepts only this server key: an OpenSSH public key line
    /// (`ssh-ed25519 AAAA… comment`, the server's `ssh_host_*_key.pub`).
    pub fn pinned_key(mut self, openssh: &str) -> Result<Host, SshError> {
        let key = PublicKey::from_openssh(openssh.trim())
            .map_err(|e| SshError::Config(format!("the pinned host key is not an OpenSSH public key: {e}")))?;
        self.host_keys = HostKeyPolicy::Pinned(key);
        Ok(self)
    }

    /// Trust on first use: a host missing from the `known_hosts` file at
    /// `path` is added to it on first connection. A changed key is still
    /// refused. Off unless asked for.
    pub fn learn_unknown_hosts(mut self, path: impl Into<PathBuf>) -> Host {
        self.host_keys = HostKeyPolicy::LearnUnknown(path.into());
        self
    }

    /// Gives up connecting after `timeout` (15 s by default).
    pub fn connect_timeout(mut self, timeout: Duration) -> Host {
        self.connect_timeout = timeout;
        self
    }

    /// Sends a keepalive after `interval` of silence, and drops the
    /// connection after three unanswered ones (15 s by default).
    pub fn keepalive(mut self, interval: Duration) -> Host {
        self.keepalive = interval;
        self
    }

    /// The name it was given (an alias or a destination), for labels.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `user@host:port`: who and where, without aliases.
    pub fn destination(&self) -> String {
        let host = if self.hostname.contains(':') { format!("[{}]", self.hostname) } else { self.hostname.clone() };
        format!("{}@{host}:{}", self.user, self.port)
    }

    /// What a connection is shared by: the destination, the identity and
    /// the host-key policy.
    pub(crate) fn connection_key(&self) -> String {
        let identity = match &self.identity {
            Identity::KeyFile { path, .. } => format!("key {}", path.display()),
            Identity::Agent(socket) => format!("agent {socket:?}"),
            Identity::Default => "default".to_owned(),
        };
        let keys = match &self.host_keys {
            HostKeyPolicy::KnownHosts(p) => format!("known {}", p.display()),
            HostKeyPolicy::Pinned(k) => format!("pinned {}", k.fingerprint(Default::default())),
            HostKeyPolicy::LearnUnknown(p) => format!("learn {}", p.display()),
        };
        format!("{} | {identity} | {keys}", self.destination())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations() {
        let h = Host::new("root@127.0.0.1:2222").unwrap();
        assert_eq!((h.user.as_str(), h.hostname.as_str(), h.port), ("root", "127.0.0.1", 2222));
        let h = Host::new("ssh://deploy@example.org").unwrap();
        assert_eq!((h.user.as_str(), h.hostname.as_str(), h.port), ("deploy", "example.org", 22));
        let h = Host::new("[::1]:2200").unwrap();
        assert_eq!((h.hostname.as_str(), h.port), ("::1", 2200));
        assert!(h.destination().ends_with("@[::1]:2200"), "{}", h.destination());
        for bad in ["", "-oProxyCommand=x", "a@", "h:0", "h:port", "h:99999", "[::1", "a b", "u@h/x"] {
            assert!(Host::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bad_pinned_key_is_refused_clearly() {
        let e = Host::new("h").unwrap().pinned_key("not a key").unwrap_err();
        assert!(e.to_string().contains("not an OpenSSH public key"), "{e}");
    }
}
