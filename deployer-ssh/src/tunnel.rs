//! Tunnels: a local TCP port or Unix socket forwarded to a Unix socket on
//! the host (`/var/run/docker.sock`), every local connection a channel on
//! the host's one SSH connection.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;

use crate::connection::Pool;
use crate::error::SshError;
use crate::host::Host;

/// Where a tunnel listens on this machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalEnd {
    /// A TCP address (on loopback).
    Tcp(SocketAddr),
    /// A Unix socket.
    Unix(PathBuf),
}

/// A forwarding from a local end to a Unix socket on a host, open until
/// dropped (the listener closes, and connections through it end).
#[derive(Debug)]
pub struct Tunnel {
    local: LocalEnd,
    accept: JoinHandle<()>,
}

impl Tunnel {
    /// Where to connect on this machine.
    pub fn local(&self) -> &LocalEnd {
        &self.local
    }

    /// The local end as a Docker host URL: `tcp://127.0.0.1:port` or
    /// `unix:///path`.
    pub fn docker_host(&self) -> String {
        match &self.local {
            LocalEnd::Tcp(addr) => format!("tcp://{addr}"),
            LocalEnd::Unix(path) => format!("unix://{}", path.display()),
        }
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.accept.abort();
        if let LocalEnd::Unix(path) = &self.local {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Carries one local connection to `remote` on `host`.
async fn forward<S>(pool: Arc<Pool>, host: Arc<Host>, remote: Arc<str>, mut local: S)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let log = |m: &str| tracing::debug!("{m}");
    let opened = pool
        .with_channel(&host, &log, |session| {
            let remote = remote.clone();
            async move { session.channel_open_direct_streamlocal(remote.to_string()).await }
        })
        .await;
    let channel = match opened {
        Ok(channel) => channel,
        Err(e) => {
            tracing::warn!("tunnel to {}:{remote}: {e}", host.name());
            return;
        }
    };
    let mut stream = channel.into_stream();
    if let Err(e) = tokio::io::copy_bidirectional(&mut local, &mut stream).await {
        tracing::debug!("tunnel to {}:{remote} ended: {e}", host.name());
    }
}

/// A tunnel from 127.0.0.1 (a free port) to `remote` on `host`. The
/// connection to the host is made now, so that a bad host fails here.
pub(crate) async fn tcp(pool: Arc<Pool>, host: Host, remote: &str) -> Result<Tunnel, SshError> {
    pool.session(&host, &|m| tracing::info!("{m}")).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| SshError::Config(format!("cannot listen on 127.0.0.1 for a tunnel: {e}")))?;
    let addr = listener.local_addr().map_err(|e| SshError::Config(format!("the tunnel's address: {e}")))?;
    let (host, remote) = (Arc::new(host), Arc::<str>::from(remote));
    let accept = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let _ = socket.set_nodelay(true);
            tokio::spawn(forward(pool.clone(), host.clone(), remote.clone(), socket));
        }
    });
    Ok(Tunnel { local: LocalEnd::Tcp(addr), accept })
}

/// A tunnel from the Unix socket `local` (created, readable by this user
/// only) to `remote` on `host`.
pub(crate) async fn unix(pool: Arc<Pool>, host: Host, local: &Path, remote: &str) -> Result<Tunnel, SshError> {
    use std::os::unix::fs::PermissionsExt;
    pool.session(&host, &|m| tracing::info!("{m}")).await?;
    if local.exists() {
        return Err(SshError::Config(format!("{} already exists: not replacing it with a tunnel", local.display())));
    }
    let listener = tokio::net::UnixListener::bind(local)
        .map_err(|e| SshError::Config(format!("cannot listen on {} for a tunnel: {e}", local.display())))?;
    std::fs::set_permissions(local, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| SshError::Config(format!("cannot restrict {}: {e}", local.display())))?;
    let (host, remote) = (Arc::new(host), Arc::<str>::from(remote));
    let accept = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(forward(pool.clone(), host.clone(), remote.clone(), socket));
        }
    });
    Ok(Tunnel { local: LocalEnd::Unix(local.to_owned()), accept })
}
