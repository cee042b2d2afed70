//! Albatross for the deployer: MirageOS unikernels deployed to an
//! albatross daemon, over its local Unix socket or its TLS endpoint — the
//! protocol spoken by this crate itself.
//!
//! - [`message`]: albatross's ASN.1 DER messages (commands, replies,
//!   failures, the certificate extension), strict like albatross.
//! - [`Daemon`]: a local socket, or a [`Remote`] TLS endpoint where every
//!   command travels in a fresh client certificate signed by the
//!   operator's CA key (a secret); images over [`STREAM_ABOVE`] are
//!   streamed after the handshake. The newest command encodings are tried
//!   first; a daemon that closes without replying gets the older ones.
//! - [`Albatross::deploy`]: the stage that force-creates a unikernel from
//!   an image and a typed [`Unikernel`] configuration, then confirms it
//!   runs that image (albatross's SHA-256) and is still running after a
//!   settle time. Re-deployed only when the image or the configuration
//!   changes; `Dangerous` by default.
//!
//! ```no_run
//! use std::path::PathBuf;
//! use deployer_albatross::{Albatross, Unikernel, Net, DEFAULT_SOCKET};
//! use deployer_core::{Config, Context, Current, Engine};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let ctx = Context::open("/var/lib/deployer".as_ref(), Config::default())?;
//! let albatross = Albatross::new(&ctx);
//! let local = albatross.local("local", DEFAULT_SOCKET.as_ref());
//! let image = albatross.image_file("www image", &Current::constant(PathBuf::from("/srv/www.hvt")));
//! let www = Unikernel {
//!     memory_mb: 256,
//!     nets: vec![Net { netif: "service".into(), bridge: "br0".into(), mac: None }],
//!     arguments: vec!["--ipv4=10.0.0.2/24".into()],
//!     ..Unikernel::default()
//! };
//! let deployed = albatross.deploy(&local, "www", &image, www)?;
//! Engine::new(deployed).run().await;
//! # Ok(()) }
//! ```

mod deploy;
pub mod message;
mod transport;
mod wire;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deployer_core::cache::OutputCache;
use deployer_core::{Context, Current, Level};

pub use deploy::{
    Daemon, DeployKey, Deployment, Disk, Endpoint, ImageFile, Net, Running, Unikernel, DEFAULT_SOCKET, MAX_IMAGE,
};
pub use message::{BadName, Name, TooLarge};
pub use transport::{Remote, TransportError, EXTENSION_OID, STREAM_ABOVE};
pub use wire::DecodeError;

/// How long one exchange with a daemon may take by default.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// Albatross for a deployer: the daemons, and the cache of deploys.
/// Cloning gives another handle on the same ones.
#[derive(Clone)]
pub struct Albatross {
    ctx: Context,
    daemons: Arc<Mutex<HashMap<String, Daemon>>>,
    deploys: OutputCache<deploy::Deploy>,
}

impl Albatross {
    /// Albatross with deploys recorded in `ctx`'s store.
    pub fn new(ctx: &Context) -> Albatross {
        let daemons = Arc::new(Mutex::new(HashMap::new()));
        Albatross {
            ctx: ctx.clone(),
            deploys: OutputCache::new(ctx, deploy::Deploy { daemons: daemons.clone() }),
            daemons,
        }
    }

    fn add(&self, daemon: Daemon) -> Daemon {
        self.daemons.lock().unwrap_or_else(|e| e.into_inner()).insert(daemon.name().to_owned(), daemon.clone());
        daemon
    }

    /// A daemon at `endpoint`, each exchange with it limited to `timeout`.
    pub fn daemon(&self, name: &str, endpoint: Endpoint, timeout: Duration) -> Daemon {
        if let Endpoint::Remote(remote) = &endpoint {
            self.ctx.jobs.register_secret(remote.client_ca_key.expose());
        }
        self.add(Daemon::new(name, endpoint, timeout))
    }

    /// The daemon on this machine, at `socket` (see [`DEFAULT_SOCKET`]).
    pub fn local(&self, name: &str, socket: &Path) -> Daemon {
        self.daemon(name, Endpoint::Local(socket.to_owned()), TIMEOUT)
    }

    /// A daemon reached through its TLS endpoint.
    pub fn remote(&self, name: &str, remote: Remote) -> Daemon {
        self.daemon(name, Endpoint::Remote(remote), TIMEOUT)
    }

    /// The stage `label`: the unikernel image at each `path`, read and
    /// hashed (a job, so a missing file is a clear failure).
    pub fn image_file(&self, label: &str, path: &Current<PathBuf>) -> Current<ImageFile> {
        path.run(&self.ctx, label, Level::Harmless, |job, path: PathBuf| async move {
            let image = ImageFile::load(&path)?;
            job.log(&format!("{}: sha256 {}", path.display(), image.sha256));
            Ok(image)
        })
    }

    /// The stage `albatross <label>`: deploys each `image` as the unikernel
    /// `label` on `daemon`, configured by `unikernel`. The label is checked
    /// here, before anything is sent.
    pub fn deploy(
        &self,
        daemon: &Daemon,
        label: &str,
        image: &Current<ImageFile>,
        unikernel: Unikernel,
    ) -> Result<Current<Running>, BadName> {
        let name = Name::unikernel(label)?;
        let key = DeployKey { daemon: daemon.name().to_owned(), name: name.to_string() };
        let value = image.map(move |image| Deployment { image: image.clone(), unikernel: unikernel.clone() });
        Ok(self.deploys.set(&format!("albatross {label}"), key, value))
    }
}
