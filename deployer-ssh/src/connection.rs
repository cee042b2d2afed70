//! Connections: made once per host (destination, identity and host-key
//! policy), checked against the host-key policy, authenticated, and
//! reused until they close; a closed one is made again on next use.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use russh::client;
use russh::keys::ssh_key::{Algorithm, HashAlg, PublicKey};
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};

use crate::error::SshError;
use crate::host::{home, Host, Identity};
use crate::known_hosts::{self, HostKeyPolicy, Verdict};

/// A live, authenticated connection.
pub(crate) type Session = Arc<client::Handle<Client>>;

/// The client side of a connection: checks the server's key.
pub(crate) struct Client {
    host: Host,
    /// Why the server's key was refused, for the error.
    refusal: Arc<Mutex<Option<SshError>>>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(&mut self, server_key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let verdict = match server_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => verify(&self.host, key),
            PublicKeyOrCertificate::Certificate(_) => Err(SshError::Session {
                host: self.host.destination(),
                why: "the server showed a host certificate, which is not supported".to_owned(),
            }),
        };
        match verdict {
            Ok(()) => Ok(true),
            Err(e) => {
                *self.refusal.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                Ok(false)
            }
        }
    }
}

/// Whether `host`'s policy accepts `key` (learning it if it may).
fn verify(host: &Host, key: &PublicKey) -> Result<(), SshError> {
    let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
    let destination = host.destination();
    let (path, learn) = match &host.host_keys {
        HostKeyPolicy::Pinned(pinned) if pinned.key_data() == key.key_data() => return Ok(()),
        HostKeyPolicy::Pinned(_) => {
            return Err(SshError::ChangedHostKey { host: destination, fingerprint, file: None });
        }
        HostKeyPolicy::KnownHosts(path) => (path, false),
        HostKeyPolicy::LearnUnknown(path) => (path, true),
    };
    let text = known_hosts::read(path)?;
    match known_hosts::check(&text, &host.hostname, host.port, key) {
        Verdict::Known => Ok(()),
        Verdict::Changed(line) => {
            Err(SshError::ChangedHostKey { host: destination, fingerprint, file: Some((path.clone(), line)) })
        }
        Verdict::Revoked(line) => {
            Err(SshError::RevokedHostKey { host: destination, fingerprint, file: (path.clone(), line) })
        }
        // Trust on first use is for a host not known at all: a known host
        // showing a key of another type (a man in the middle offering only
        // another algorithm) is refused like a changed key.
        Verdict::Unknown if learn => match known_hosts::first_listed(&text, &host.hostname, host.port) {
            Some(line) => {
                Err(SshError::ChangedHostKey { host: destination, fingerprint, file: Some((path.clone(), line)) })
            }
            None => learn_key(path, host, key),
        },
        Verdict::Unknown => Err(SshError::UnknownHostKey { host: destination, fingerprint, file: Some(path.clone()) }),
    }
}

/// Appends `key` for `host` to the `known_hosts` file at `path`.
fn learn_key(path: &Path, host: &Host, key: &PublicKey) -> Result<(), SshError> {
    let line = known_hosts::line_for(&host.hostname, host.port, key)?;
    let cannot = |e: std::io::Error| SshError::Config(format!("cannot record the host key in {}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(cannot)?;
    }
    if known_hosts::forgets(path) {
        return Err(SshError::Config(format!(
            "cannot learn host keys into {}: it keeps nothing, so every key would be accepted",
            path.display()
        )));
    }
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(cannot)?;
    // A file whose last line has no newline would run into the new one.
    let before = std::fs::read(path).map_err(cannot)?;
    let line = if before.last().is_some_and(|&b| b != b'\n') { format!("\n{line}") } else { line };
    file.write_all(line.as_bytes()).map_err(cannot)?;
    tracing::info!(
        "learned the host key of {} ({}) into {}",
        host.destination(),
        key.fingerprint(HashAlg::Sha256),
        path.display()
    );
    Ok(())
}

/// The host-key types to ask the server for: those already recorded for
/// the host first (so that the key it shows is the one we know), then
/// russh's defaults.
fn preferred_host_keys(host: &Host) -> Result<Vec<Algorithm>, SshError> {
    let known = match &host.host_keys {
        HostKeyPolicy::Pinned(key) => vec![key.algorithm()],
        HostKeyPolicy::KnownHosts(path) | HostKeyPolicy::LearnUnknown(path) => {
            known_hosts::known_algorithms(&known_hosts::read(path)?, &host.hostname, host.port)
        }
    };
    let mut out = Vec::new();
    for algorithm in known {
        match algorithm {
            // An RSA key signs with SHA-2 (OpenSSH refuses SHA-1 by default).
            Algorithm::Rsa { .. } => {
                out.push(Algorithm::Rsa { hash: Some(HashAlg::Sha512) });
                out.push(Algorithm::Rsa { hash: Some(HashAlg::Sha256) });
            }
            other => out.push(other),
        }
    }
    for algorithm in russh::Preferred::DEFAULT.key.iter() {
        if !out.contains(algorithm) {
            out.push(algorithm.clone());
        }
    }
    Ok(out)
}

/// Connects to `host`, checks its key and authenticates.
async fn connect(host: &Host, log: &(dyn Fn(&str) + Sync)) -> Result<client::Handle<Client>, SshError> {
    let destination = host.destination();
    let mut config = client::Config {
        keepalive_interval: Some(host.keepalive),
        keepalive_max: 3,
        nodelay: true,
        ..Default::default()
    };
    config.preferred.key = Cow::Owned(preferred_host_keys(host)?);
    let refusal = Arc::new(Mutex::new(None));
    let handler = Client { host: host.clone(), refusal: refusal.clone() };
    log(&format!("Connecting to {destination}"));
    let address = (host.hostname.as_str(), host.port);
    let connecting = client::connect(Arc::new(config), address, handler);
    let mut handle = match tokio::time::timeout(host.connect_timeout, connecting).await {
        Ok(Ok(handle)) => handle,
        Ok(Err(e)) => {
            if let Some(refused) = refusal.lock().unwrap_or_else(|e| e.into_inner()).take() {
                return Err(refused);
            }
            return Err(SshError::Connect { host: destination, why: describe(&e) });
        }
        Err(_) => {
            return Err(SshError::Connect {
                host: destination,
                why: format!("no answer within {} s", host.connect_timeout.as_secs_f32()),
            })
        }
    };
    authenticate(&mut handle, host).await?;
    log(&format!("Connected to {destination}"));
    Ok(handle)
}

/// Whether `e` (on `session`) means the connection is gone, rather than
/// that the server refused one request.
fn connection_lost(e: &russh::Error, session: &Session) -> bool {
    session.is_closed()
        || matches!(
            e,
            russh::Error::SendError
                | russh::Error::RecvError
                | russh::Error::Disconnect
                | russh::Error::HUP
                | russh::Error::IO(_)
                | russh::Error::KeepaliveTimeout
                | russh::Error::InactivityTimeout
        )
}

/// A russh error in words.
pub(crate) fn describe(e: &russh::Error) -> String {
    match e {
        russh::Error::IO(io) => io.to_string(),
        russh::Error::Disconnect => "the server closed the connection".to_owned(),
        other => other.to_string(),
    }
}

/// Authenticates with `host`'s identity.
async fn authenticate(handle: &mut client::Handle<Client>, host: &Host) -> Result<(), SshError> {
    let refused = |why: String| SshError::Auth { host: host.destination(), why };
    match &host.identity {
        Identity::KeyFile { path, passphrase } => {
            let key = load_key(path, passphrase.as_ref().map(|p| p.expose().as_str()))?;
            if offer_key(handle, host, key).await? {
                return Ok(());
            }
            Err(refused(format!("the key {} was not accepted for user {}", path.display(), host.user)))
        }
        Identity::Agent(socket) => {
            let offered = offer_agent(handle, host, socket.as_deref()).await?;
            if offered.accepted {
                return Ok(());
            }
            Err(refused(format!("none of the agent's {} keys was accepted for user {}", offered.tried, host.user)))
        }
        Identity::Default => {
            let mut tried = Vec::new();
            if std::env::var_os("SSH_AUTH_SOCK").is_some() {
                match offer_agent(handle, host, None).await {
                    Ok(offered) if offered.accepted => return Ok(()),
                    Ok(offered) => tried.push(format!("the agent's {} keys", offered.tried)),
                    Err(e) => tracing::debug!("the SSH agent is not usable: {e}"),
                }
            }
            let dir = home().unwrap_or_default().join(".ssh");
            for name in ["id_ed25519", "id_ecdsa", "id_rsa"] {
                let path = dir.join(name);
                if !path.exists() {
                    continue;
                }
                tried.push(path.display().to_string());
                match load_key(&path, None) {
                    Ok(key) => {
                        if offer_key(handle, host, key).await? {
                            return Ok(());
                        }
                    }
                    Err(e) => tracing::debug!("skipping {}: {e}", path.display()),
                }
            }
            if tried.is_empty() {
                return Err(refused(
                    "no key to offer (no agent, no ~/.ssh/id_ed25519, id_ecdsa or id_rsa): configure a key file"
                        .to_owned(),
                ));
            }
            Err(refused(format!("tried {}, none was accepted for user {}", tried.join(", "), host.user)))
        }
    }
}

/// Reads a private key; errors name the file, never the passphrase.
fn load_key(path: &Path, passphrase: Option<&str>) -> Result<russh::keys::PrivateKey, SshError> {
    russh::keys::load_secret_key(path, passphrase).map_err(|e| {
        let why = match (&e, passphrase) {
            (russh::keys::Error::KeyIsEncrypted, None) => "it is encrypted: give its passphrase".to_owned(),
            (russh::keys::Error::IO(io), _) => io.to_string(),
            (_, Some(_)) => format!("{e} (is the passphrase right?)"),
            _ => e.to_string(),
        };
        SshError::Key(format!("cannot read {}: {why}", path.display()))
    })
}

/// Offers one private key; `Ok(true)` if it was accepted.
async fn offer_key(
    handle: &mut client::Handle<Client>,
    host: &Host,
    key: russh::keys::PrivateKey,
) -> Result<bool, SshError> {
    let session = |e: russh::Error| SshError::Session { host: host.destination(), why: describe(&e) };
    let hash = if key.algorithm().is_rsa() {
        handle.best_supported_rsa_hash().await.map_err(session)?.flatten()
    } else {
        None
    };
    let result = handle
        .authenticate_publickey(host.user.clone(), PrivateKeyWithHashAlg::new(Arc::new(key), hash))
        .await
        .map_err(session)?;
    Ok(result.success())
}

/// What offering an agent's keys did.
struct Offered {
    tried: usize,
    accepted: bool,
}

/// Offers each key of the agent at `socket` (or `$SSH_AUTH_SOCK`).
async fn offer_agent(
    handle: &mut client::Handle<Client>,
    host: &Host,
    socket: Option<&Path>,
) -> Result<Offered, SshError> {
    use russh::keys::agent::client::AgentClient;
    use russh::keys::agent::AgentIdentity;
    let where_ = socket.map_or_else(|| "$SSH_AUTH_SOCK".to_owned(), |s| s.display().to_string());
    let agent_error = |e: russh::keys::Error| SshError::Config(format!("the SSH agent at {where_}: {e}"));
    let mut agent = match socket {
        Some(path) => AgentClient::connect_uds(path).await.map_err(agent_error)?,
        None => AgentClient::connect_env().await.map_err(agent_error)?,
    };
    let identities = agent.request_identities().await.map_err(agent_error)?;
    let mut tried = 0;
    for identity in identities {
        let AgentIdentity::PublicKey { key, .. } = identity else { continue };
        tried += 1;
        let hash = if key.algorithm().is_rsa() {
            handle
                .best_supported_rsa_hash()
                .await
                .map_err(|e| SshError::Session { host: host.destination(), why: describe(&e) })?
                .flatten()
        } else {
            None
        };
        match handle.authenticate_publickey_with(host.user.clone(), key, hash, &mut agent).await {
            Ok(result) if result.success() => return Ok(Offered { tried, accepted: true }),
            Ok(_) => {}
            Err(e) => tracing::debug!("the agent could not sign: {e}"),
        }
    }
    Ok(Offered { tried, accepted: false })
}

/// The connections, one per host (and identity and host-key policy).
#[derive(Default)]
pub(crate) struct Pool {
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Session>>>>>,
}

impl Pool {
    /// An open connection to `host`: the one in use if it is still open,
    /// else a new one. One connection is made at a time per host.
    pub(crate) async fn session(&self, host: &Host, log: &(dyn Fn(&str) + Sync)) -> Result<Session, SshError> {
        let slot =
            self.slots.lock().unwrap_or_else(|e| e.into_inner()).entry(host.connection_key()).or_default().clone();
        let mut current = slot.lock().await;
        if let Some(session) = current.as_ref() {
            if !session.is_closed() {
                return Ok(session.clone());
            }
            log(&format!("The connection to {} was closed: connecting again", host.destination()));
        }
        let session = Arc::new(connect(host, log).await?);
        *current = Some(session.clone());
        Ok(session)
    }

    /// Forgets `session` (found broken), so that the next use reconnects.
    pub(crate) async fn forget(&self, host: &Host, session: &Session) {
        let slot = self.slots.lock().unwrap_or_else(|e| e.into_inner()).get(&host.connection_key()).cloned();
        if let Some(slot) = slot {
            let mut current = slot.lock().await;
            if current.as_ref().is_some_and(|s| Arc::ptr_eq(s, session)) {
                *current = None;
            }
        }
    }

    /// Opens a channel with `open` on a connection to `host`; if the
    /// connection turns out to be dead, reconnects once and tries again.
    pub(crate) async fn with_channel<T, F, Fut>(
        &self,
        host: &Host,
        log: &(dyn Fn(&str) + Sync),
        open: F,
    ) -> Result<T, SshError>
    where
        F: Fn(Session) -> Fut,
        Fut: std::future::Future<Output = Result<T, russh::Error>>,
    {
        let session = self.session(host, log).await?;
        match open(session.clone()).await {
            Ok(t) => Ok(t),
            Err(e) if !connection_lost(&e, &session) => {
                Err(SshError::Session { host: host.destination(), why: describe(&e) })
            }
            Err(e) => {
                log(&format!("The connection to {} failed ({}): connecting again", host.destination(), describe(&e)));
                self.forget(host, &session).await;
                let session = self.session(host, log).await?;
                open(session).await.map_err(|e| SshError::Session { host: host.destination(), why: describe(&e) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHERYbVActYdOJlXncfi0+ejMA0oDcgh1KTWLBpDe9QK";
    const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBFvafbIl2BSmKWAPzCUVG9olX4GPK9j9ROm5vNbL2Mk/YdEq8Ws+l3i6sDlIYTc2EdjpnkK6cjxVkvH7odZ5xps=";

    fn key(line: &str) -> PublicKey {
        PublicKey::from_openssh(line).unwrap()
    }

    fn tmp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("deployer-ssh-verify-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn trust_on_first_use_does_not_learn_another_type_for_a_known_host() {
        let dir = tmp("other-type");
        let file = dir.join("known_hosts");
        std::fs::write(&file, format!("[127.0.0.1]:2222 {ED}\n")).unwrap();
        let host = Host::new("deploy@127.0.0.1:2222").unwrap().learn_unknown_hosts(&file);
        // The man in the middle offers only ECDSA.
        let e = verify(&host, &key(ECDSA)).unwrap_err();
        assert!(matches!(e, SshError::ChangedHostKey { .. }), "{e}");
        assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 1, "nothing was learned");
        assert!(verify(&host, &key(ED)).is_ok());
        // A host not known at all is learned, on a line of its own even
        // when the file's last line had no newline.
        std::fs::write(&file, format!("[127.0.0.1]:2222 {ED}")).unwrap();
        let other = Host::new("deploy@127.0.0.2:2222").unwrap().learn_unknown_hosts(&file);
        verify(&other, &key(ECDSA)).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(verify(&host, &key(ED)).is_ok() && verify(&other, &key(ECDSA)).is_ok(), "both lines still read");
    }

    #[test]
    fn learning_into_dev_null_is_refused() {
        let host = Host::new("deploy@127.0.0.1:2222").unwrap().learn_unknown_hosts("/dev/null");
        let e = verify(&host, &key(ED)).unwrap_err().to_string();
        assert!(e.contains("every key would be accepted"), "{e}");
    }
}
