//! Docker hosts: a name (its context, for labels and cache keys) and an
//! endpoint, connected on first use — over a Unix socket, TCP with client
//! certificates, or an SSH tunnel to the remote daemon's socket.

use std::path::PathBuf;
use std::sync::Arc;

use deployer_core::Pool;
use deployer_ssh::{Ssh, Tunnel};

use crate::context::Endpoint;
use crate::error::{daemon_message, DockerError};

/// Seconds bollard waits for an answer (builds and pulls stream, so this
/// bounds silence, not the whole operation).
const API_TIMEOUT: u64 = 600;

struct Connected {
    docker: bollard::Docker,
    /// The tunnel's local end, for an `ssh://` host.
    local: Option<PathBuf>,
    _tunnel: Option<Tunnel>,
}

/// A connection of its own to a daemon (for the requests bollard cannot
/// make: a BuildKit session and its build).
pub(crate) trait DaemonIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> DaemonIo for T {}

struct Inner {
    name: String,
    endpoint: Endpoint,
    ssh: Option<(Ssh, deployer_ssh::Host)>,
    tunnels: PathBuf,
    connected: tokio::sync::Mutex<Option<Connected>>,
}

/// A Docker daemon to run operations on. Cloning gives another handle on
/// the same connection.
#[derive(Clone)]
pub struct DockerHost {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DockerHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DockerHost({}: {:?})", self.inner.name, self.inner.endpoint)
    }
}

impl DockerHost {
    /// A host called `name` at `endpoint`; `ssh` reaches `Ssh` endpoints.
    pub(crate) fn new(
        name: &str,
        endpoint: Endpoint,
        ssh: Option<(Ssh, deployer_ssh::Host)>,
        tunnels: PathBuf,
    ) -> DockerHost {
        DockerHost {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                endpoint,
                ssh,
                tunnels,
                connected: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// Its name: the context it was resolved from, or the name it was given.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Where its daemon is.
    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }

    fn connect_error(&self, why: impl Into<String>) -> DockerError {
        DockerError::Connect { host: self.inner.name.clone(), why: why.into() }
    }

    /// A client for the daemon, connecting (and agreeing on an API version)
    /// on first use.
    pub async fn client(&self) -> Result<bollard::Docker, DockerError> {
        let mut connected = self.inner.connected.lock().await;
        if let Some(c) = connected.as_ref() {
            return Ok(c.docker.clone());
        }
        let version = bollard::API_DEFAULT_VERSION;
        let (docker, tunnel) = match &self.inner.endpoint {
            Endpoint::Unix(path) => {
                let docker = bollard::Docker::connect_with_unix(&path.to_string_lossy(), API_TIMEOUT, version)
                    .map_err(|e| self.connect_error(format!("{}: {}", path.display(), daemon_message(&e))))?;
                (docker, None)
            }
            Endpoint::Tcp { address, tls: None } => {
                let docker = bollard::Docker::connect_with_http(address, API_TIMEOUT, version)
                    .map_err(|e| self.connect_error(daemon_message(&e)))?;
                (docker, None)
            }
            Endpoint::Tcp { address, tls: Some(tls) } => {
                let docker =
                    bollard::Docker::connect_with_ssl(address, &tls.key, &tls.cert, &tls.ca, API_TIMEOUT, version)
                        .map_err(|e| self.connect_error(format!("TLS to {address}: {}", daemon_message(&e))))?;
                (docker, None)
            }
            Endpoint::Ssh { destination, socket } => {
                let (ssh, host) = self
                    .inner
                    .ssh
                    .as_ref()
                    .ok_or_else(|| self.connect_error(format!("no SSH configuration for ssh://{destination}")))?;
                std::fs::create_dir_all(&self.inner.tunnels)
                    .map_err(|e| self.connect_error(format!("{}: {e}", self.inner.tunnels.display())))?;
                let local =
                    self.inner.tunnels.join(format!("{}-{}.sock", short_hash(&self.inner.name), std::process::id()));
                let _ = std::fs::remove_file(&local);
                let tunnel = ssh.tunnel(host, &local, socket).await.map_err(|e| self.connect_error(e.to_string()))?;
                let docker = bollard::Docker::connect_with_unix(&local.to_string_lossy(), API_TIMEOUT, version)
                    .map_err(|e| self.connect_error(daemon_message(&e)))?;
                (docker, Some((tunnel, local)))
            }
        };
        let docker = docker.negotiate_version().await.map_err(|e| self.connect_error(daemon_message(&e)))?;
        let (tunnel, local) = tunnel.map_or((None, None), |(t, l)| (Some(t), Some(l)));
        *connected = Some(Connected { docker: docker.clone(), local, _tunnel: tunnel });
        Ok(docker)
    }

    /// A new connection to the daemon, for one raw HTTP exchange (over the
    /// SSH tunnel for an `ssh://` host, TLS with the client certificate for
    /// a TLS one).
    pub(crate) async fn dial(&self) -> Result<Box<dyn DaemonIo>, DockerError> {
        self.client().await?; // connects, and opens the tunnel
        let local = self.inner.connected.lock().await.as_ref().and_then(|c| c.local.clone());
        let io_error = |what: &str, e: std::io::Error| self.connect_error(format!("{what}: {e}"));
        let socket = match &self.inner.endpoint {
            Endpoint::Unix(path) => Some(path.clone()),
            _ => local,
        };
        match (&self.inner.endpoint, socket) {
            (Endpoint::Ssh { .. } | Endpoint::Unix(_), Some(path)) => {
                let stream = tokio::net::UnixStream::connect(&path)
                    .await
                    .map_err(|e| io_error(&path.display().to_string(), e))?;
                Ok(Box::new(stream))
            }
            (Endpoint::Ssh { destination, .. }, None) => {
                Err(self.connect_error(format!("no tunnel to ssh://{destination}")))
            }
            (Endpoint::Unix(path), None) => Err(self.connect_error(format!("no socket {}", path.display()))),
            (Endpoint::Tcp { address, tls: None }, _) => {
                let stream = tokio::net::TcpStream::connect(address).await.map_err(|e| io_error(address, e))?;
                Ok(Box::new(stream))
            }
            (Endpoint::Tcp { address, tls: Some(tls) }, _) => {
                let connector = tls_connector(tls).map_err(|e| self.connect_error(format!("TLS to {address}: {e}")))?;
                let host = address.rsplit_once(':').map_or(address.as_str(), |(h, _)| h);
                let name = rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
                    .map_err(|e| self.connect_error(format!("TLS to {address}: {e}")))?;
                let stream = tokio::net::TcpStream::connect(address).await.map_err(|e| io_error(address, e))?;
                let tls = connector
                    .connect(name, stream)
                    .await
                    .map_err(|e| self.connect_error(format!("TLS to {address}: {e}")))?;
                Ok(Box::new(tls))
            }
        }
    }
}

/// A TLS client that trusts `tls.ca` and presents `tls.cert`/`tls.key`, as
/// the docker CLI does for a TLS context.
fn tls_connector(tls: &crate::context::TlsFiles) -> Result<tokio_rustls::TlsConnector, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read = |path: &std::path::Path| std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()));
    let pem_error = |path: &std::path::Path, e: rustls::pki_types::pem::Error| format!("{}: {e}", path.display());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&read(&tls.ca)?) {
        roots.add(cert.map_err(|e| pem_error(&tls.ca, e))?).map_err(|e| format!("{}: {e}", tls.ca.display()))?;
    }
    let chain = CertificateDer::pem_slice_iter(&read(&tls.cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(&tls.cert, e))?;
    let key = PrivateKeyDer::from_pem_slice(&read(&tls.key)?).map_err(|e| pem_error(&tls.key, e))?;
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("the client certificate: {e}"))?;
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)))
}

/// 12 hex digits naming `s` (short enough for socket paths).
pub(crate) fn short_hash(s: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(s.as_bytes()).iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// Docker hosts for one architecture, used as a pool: a build takes
/// whichever host is free (at most one build per host at a time).
#[derive(Clone, Debug)]
pub struct HostPool {
    pub(crate) arch: String,
    pub(crate) hosts: Vec<DockerHost>,
    pub(crate) pool: Pool,
    pub(crate) busy: Arc<std::sync::Mutex<Vec<bool>>>,
    pub(crate) timeout: Option<std::time::Duration>,
}

impl HostPool {
    /// A pool of `hosts` building for `arch` (`amd64`, `arm64`, …).
    pub fn new(arch: &str, hosts: Vec<DockerHost>) -> HostPool {
        let n = hosts.len();
        HostPool {
            arch: arch.to_owned(),
            pool: Pool::new(&format!("docker-{arch}"), n.max(1)),
            busy: Arc::new(std::sync::Mutex::new(vec![false; n])),
            hosts,
            timeout: None,
        }
    }

    /// Builds on this pool that run longer than `limit` are stopped (the
    /// request is closed, so the daemon stops the build) and fail with
    /// "Timed out (after …)". Upstream gives builds 50 minutes, riscv64
    /// twice that. Set it before the pool's first build.
    pub fn build_timeout(mut self, limit: std::time::Duration) -> HostPool {
        self.timeout = Some(limit);
        self
    }

    /// The architecture.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// Takes a free host (the core's pool slot guarantees one is free).
    pub(crate) fn take(&self) -> Result<(usize, DockerHost), DockerError> {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let i = busy
            .iter()
            .position(|b| !b)
            .ok_or_else(|| DockerError::Config(format!("the {} pool has no hosts", self.arch)))?;
        busy[i] = true;
        Ok((i, self.hosts[i].clone()))
    }

    /// Gives a host back.
    pub(crate) fn give_back(&self, i: usize) {
        self.busy.lock().unwrap_or_else(|e| e.into_inner())[i] = false;
    }
}
