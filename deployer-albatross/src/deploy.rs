//! Daemons and the deploy operation: force-create a unikernel under its
//! name, then confirm that it runs the image that was sent and keeps
//! running through a settle time.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use deployer_core::cache::Publisher;
use deployer_core::{Error, Job, Level};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::message::{
    Block, Bridge, Command, Config, CreateVersion, FailBehaviour, Header, InfoVersion, Name, Payload, Success, Typ,
    UnikernelCmd, Wire,
};
use crate::transport::{self, Remote, TransportError, STREAM_ABOVE};

/// Where a daemon is.
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// Its Unix socket on this machine (`/run/albatross/util/vmmd.sock`).
    Local(PathBuf),
    /// Its TLS endpoint.
    Remote(Remote),
}

/// The default local socket.
pub const DEFAULT_SOCKET: &str = "/run/albatross/util/vmmd.sock";

struct DaemonInner {
    name: String,
    endpoint: Endpoint,
    timeout: Duration,
    /// The encodings it understood last.
    versions: Mutex<(CreateVersion, InfoVersion)>,
}

/// An albatross daemon. Cloning gives another handle on the same one.
#[derive(Clone)]
pub struct Daemon {
    inner: Arc<DaemonInner>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Daemon({}: {:?})", self.inner.name, self.inner.endpoint)
    }
}

fn older_create(v: CreateVersion) -> Option<CreateVersion> {
    match v {
        CreateVersion::V27 => Some(CreateVersion::V26),
        CreateVersion::V26 => Some(CreateVersion::V15),
        CreateVersion::V15 => None,
    }
}

fn older_info(v: InfoVersion) -> Option<InfoVersion> {
    match v {
        InfoVersion::V27 => Some(InfoVersion::V26),
        InfoVersion::V26 => Some(InfoVersion::V24),
        InfoVersion::V24 => None,
    }
}

impl Daemon {
    /// A daemon called `name` (for labels and keys) at `endpoint`; each
    /// exchange may take `timeout`.
    pub fn new(name: &str, endpoint: Endpoint, timeout: Duration) -> Daemon {
        Daemon {
            inner: Arc::new(DaemonInner {
                name: name.to_owned(),
                endpoint,
                timeout,
                versions: Mutex::new((CreateVersion::V27, InfoVersion::V27)),
            }),
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Sends one command about `name`; the reply.
    async fn exchange(
        &self,
        name: &Name,
        command: &Command<'_>,
        stream: Option<&[u8]>,
    ) -> Result<Wire<'static>, TransportError> {
        match &self.inner.endpoint {
            Endpoint::Local(socket) => {
                let wire = Wire { header: Header::new(name.clone()), payload: Payload::Command(command.clone()) };
                transport::local(socket, &wire, self.inner.timeout).await
            }
            Endpoint::Remote(remote) => transport::remote(remote, name, command, stream, self.inner.timeout).await,
        }
    }

    /// Force-creates `name` from `config`, falling back to older encodings
    /// when the daemon closes without replying; its reply.
    async fn force_create(&self, job: &Job, name: &Name, config: &Config<'_>) -> Result<Wire<'static>, TransportError> {
        let mut version = self.inner.versions.lock().unwrap_or_else(|e| e.into_inner()).0;
        loop {
            let streamed = matches!(self.inner.endpoint, Endpoint::Remote(_)) && config.image.len() > STREAM_ABOVE;
            let sent = if streamed { Config { image: Cow::Borrowed(&[]), ..config.clone() } } else { config.clone() };
            let command = Command::Unikernel(UnikernelCmd::ForceCreate(version, sent));
            let stream = streamed.then_some(&config.image[..]);
            match self.exchange(name, &command, stream).await {
                Err(TransportError::NoReply) => match older_create(version) {
                    Some(older) => {
                        job.log(&format!(
                            "{} did not understand force-create {version:?}: trying {older:?}",
                            self.name()
                        ));
                        version = older;
                    }
                    None => return Err(TransportError::NoReply),
                },
                other => {
                    if other.is_ok() {
                        self.inner.versions.lock().unwrap_or_else(|e| e.into_inner()).0 = version;
                    }
                    return other;
                }
            }
        }
    }

    /// What runs under `name`, as info reports it.
    pub async fn info(&self, name: &Name) -> Result<Vec<(Name, crate::message::Info)>, Error> {
        let mut version = self.inner.versions.lock().unwrap_or_else(|e| e.into_inner()).1;
        loop {
            let command = Command::Unikernel(UnikernelCmd::Info(version));
            match self.exchange(name, &command, None).await {
                Err(TransportError::NoReply) => match older_info(version) {
                    Some(older) => version = older,
                    None => return Err(Error::msg(format!("{}: {}", self.name(), TransportError::NoReply))),
                },
                Err(e) => return Err(Error::msg(format!("{}: {e}", self.name()))),
                Ok(reply) => {
                    self.inner.versions.lock().unwrap_or_else(|e| e.into_inner()).1 = version;
                    return match reply.payload {
                        Payload::Success(Success::UnikernelInfo(_, list)) => Ok(list),
                        Payload::Failure(why) => {
                            Err(Error::msg(format!("{} refused info for {name}: {why}", self.name())))
                        }
                        other => Err(Error::msg(format!("{} answered info with {other:?}", self.name()))),
                    };
                }
            }
        }
    }
}

/// A network interface: the unikernel's name for it, and the host bridge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Net {
    /// The unikernel's device name (`service`).
    pub netif: String,
    /// The host bridge (`br0`).
    pub bridge: String,
    /// A fixed MAC address, if wanted.
    pub mac: Option<[u8; 6]>,
}

/// A block device: the unikernel's name for it, and the host's device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// The unikernel's device name.
    pub name: String,
    /// Albatross's block device.
    pub host_device: String,
    /// Its sector size, if not the default.
    pub sector_size: Option<i64>,
}

/// How a unikernel runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unikernel {
    /// Memory, in MB (albatross's default is 32).
    pub memory_mb: i64,
    /// CPUs it may use (`{0}` by default).
    pub cpuids: BTreeSet<i64>,
    /// Network interfaces.
    pub nets: Vec<Net>,
    /// Block devices.
    pub disks: Vec<Disk>,
    /// Boot arguments (`--ipv4=10.0.0.2/24`).
    pub arguments: Vec<String>,
    /// Restart it when it fails.
    pub restart_on_failure: bool,
    /// Restart only on these exit codes (empty: albatross's default set).
    pub exit_codes: BTreeSet<i64>,
    /// Start priority (0 first).
    pub startup: Option<i64>,
    /// Whether albatross adds `--name=<label>`.
    pub add_name: bool,
    /// Send the image zlib-compressed.
    pub compress: bool,
    /// How long it must keep running after it started to count as deployed.
    pub settle: Duration,
}

impl Default for Unikernel {
    fn default() -> Unikernel {
        Unikernel {
            memory_mb: 32,
            cpuids: BTreeSet::from([0]),
            nets: Vec::new(),
            disks: Vec::new(),
            arguments: Vec::new(),
            restart_on_failure: true,
            exit_codes: BTreeSet::new(),
            startup: None,
            add_name: true,
            compress: true,
            settle: Duration::from_secs(5),
        }
    }
}

impl Unikernel {
    fn config<'a>(&self, image: Cow<'a, [u8]>) -> Config<'a> {
        Config {
            typ: Typ::Solo5,
            compressed: self.compress,
            image,
            startup: self.startup,
            add_name: self.add_name,
            fail_behaviour: if self.restart_on_failure {
                FailBehaviour::Restart(self.exit_codes.clone())
            } else {
                FailBehaviour::Quit
            },
            cpuids: self.cpuids.clone(),
            memory: self.memory_mb,
            blocks: self
                .disks
                .iter()
                .map(|d| Block {
                    name: d.name.clone(),
                    host_device: Some(d.host_device.clone()),
                    sector_size: d.sector_size,
                })
                .collect(),
            bridges: self
                .nets
                .iter()
                .map(|n| Bridge { netif: n.netif.clone(), bridge: Some(n.bridge.clone()), mac: n.mac })
                .collect(),
            arguments: self.arguments.clone(),
            cpus: Some(1),
            linux_boot_partition: None,
        }
    }
}

/// A unikernel image on this machine, with its SHA-256.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageFile {
    /// Where it is.
    pub path: PathBuf,
    /// Its SHA-256, in hex.
    pub sha256: String,
}

impl ImageFile {
    /// Reads and hashes the image at `path`.
    pub fn load(path: &Path) -> Result<ImageFile, Error> {
        let size = std::fs::metadata(path)
            .map_err(|e| Error::msg(format!("reading the unikernel {}: {e}", path.display())))?
            .len();
        if size > MAX_IMAGE {
            return Err(Error::msg(format!(
                "the unikernel {} is {size} bytes; albatross takes images of at most {MAX_IMAGE} bytes",
                path.display()
            )));
        }
        let bytes =
            std::fs::read(path).map_err(|e| Error::msg(format!("reading the unikernel {}: {e}", path.display())))?;
        Ok(ImageFile { path: path.to_owned(), sha256: hex(&Sha256::digest(&bytes)) })
    }
}

/// The largest image sent: albatross frames hold 2 GiB, less room for the
/// rest of the command.
pub const MAX_IMAGE: u64 = i32::MAX as u64 - (1 << 20);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a deploy is keyed by.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployKey {
    /// The daemon's name.
    pub daemon: String,
    /// The unikernel's name (`:www`).
    pub name: String,
}

/// What is deployed: an image and how it runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// The image.
    pub image: ImageFile,
    /// How it runs.
    pub unikernel: Unikernel,
}

/// A unikernel running the deployed image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Running {
    /// Its name.
    pub name: String,
    /// SHA-256 of its image, as albatross reports it.
    pub digest: String,
    /// When it started, as albatross reports it.
    pub started: Option<String>,
}

/// The publisher behind `Albatross::deploy`.
pub(crate) struct Deploy {
    pub(crate) daemons: Arc<Mutex<std::collections::HashMap<String, Daemon>>>,
}

#[async_trait]
impl Publisher for Deploy {
    const ID: &'static str = "albatross-deploy";
    type Key = DeployKey;
    type Value = Deployment;
    type Outcome = Running;

    fn describe(&self, key: &DeployKey, d: &Deployment) -> Option<String> {
        Some(format!(
            "albatross deploy {} ({}) to {}",
            key.name,
            &d.image.sha256[..12.min(d.image.sha256.len())],
            key.daemon
        ))
    }
    fn level(&self) -> Level {
        Level::Dangerous
    }
    fn latched(&self) -> bool {
        true
    }
    fn idempotent(&self) -> bool {
        true
    }
    async fn publish(&self, job: &Job, key: &DeployKey, d: &Deployment) -> Result<Running, Error> {
        let daemon = self.daemons.lock().unwrap_or_else(|e| e.into_inner()).get(&key.daemon).cloned();
        let daemon = daemon.ok_or_else(|| Error::msg(format!("no albatross daemon called {:?}", key.daemon)))?;
        let name = Name::parse(&key.name).map_err(|e| Error::msg(e.to_string()))?;
        let bytes = tokio::fs::read(&d.image.path)
            .await
            .map_err(|e| Error::msg(format!("reading the unikernel {}: {e}", d.image.path.display())))?;
        let digest = hex(&Sha256::digest(&bytes));
        if digest != d.image.sha256 {
            return Err(Error::msg(format!(
                "{} changed since it was hashed ({} now, {} then)",
                d.image.path.display(),
                digest,
                d.image.sha256
            )));
        }
        let image = if d.unikernel.compress {
            use std::io::Write;
            let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            z.write_all(&bytes)
                .and_then(|()| z.finish())
                .map_err(|e| Error::msg(format!("compressing the image: {e}")))?
        } else {
            bytes
        };
        job.log(&format!("Force-creating {name} on {} ({} bytes sent, sha256 {digest})", daemon.name(), image.len()));
        let config = d.unikernel.config(Cow::Borrowed(&image));
        let reply = daemon
            .force_create(job, &name, &config)
            .await
            .map_err(|e| Error::msg(format!("{}: {e}", daemon.name())))?;
        match reply.payload {
            Payload::Success(Success::String(said)) => job.log(&format!("{}: {said}", daemon.name())),
            Payload::Success(other) => job.log(&format!("{}: {other:?}", daemon.name())),
            Payload::Failure(why) => return Err(Error::msg(format!("{} refused {name}: {why}", daemon.name()))),
            other => return Err(Error::msg(format!("{} answered {other:?}", daemon.name()))),
        }
        // Confirm: it runs this image, and still does after the settle time.
        let first = running(&daemon, &name, &digest).await?;
        job.log(&format!("{name} runs sha256 {digest} (started {})", first.started.as_deref().unwrap_or("?")));
        tokio::select! {
            _ = tokio::time::sleep(d.unikernel.settle) => {}
            reason = job.cancelled() => return Err(job.cancellation_error().unwrap_or_else(|| Error::msg(reason))),
        }
        let later = running(&daemon, &name, &digest).await.map_err(|e| {
            Error::msg(format!("{name} stopped within {} s of starting: {}", d.unikernel.settle.as_secs(), e.message()))
        })?;
        if later.started != first.started {
            return Err(Error::msg(format!(
                "{name} restarted within {} s of starting (started {} then {}): it is failing",
                d.unikernel.settle.as_secs(),
                first.started.as_deref().unwrap_or("?"),
                later.started.as_deref().unwrap_or("?")
            )));
        }
        job.log(&format!("{name} still runs after {} s", d.unikernel.settle.as_secs()));
        Ok(later)
    }
}

/// `name` as info reports it, if it runs the image with `digest`.
async fn running(daemon: &Daemon, name: &Name, digest: &str) -> Result<Running, Error> {
    let list = daemon.info(name).await?;
    let (_, info) = list
        .iter()
        .find(|(n, _)| n == name)
        .ok_or_else(|| Error::msg(format!("{name} is not running on {}", daemon.name())))?;
    let reported = hex(&info.digest);
    if reported != digest {
        return Err(Error::msg(format!(
            "{name} on {} runs sha256 {reported}, not the image sent ({digest})",
            daemon.name()
        )));
    }
    Ok(Running { name: name.to_string(), digest: reported, started: info.started.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_albatross_cannot_take_is_refused_before_it_is_read() {
        let path = std::env::temp_dir().join(format!("deployer-huge-{}.hvt", std::process::id()));
        // Sparse: its size is all that is looked at.
        std::fs::File::create(&path).unwrap().set_len(MAX_IMAGE + 1).unwrap();
        let e = ImageFile::load(&path).unwrap_err();
        let _ = std::fs::remove_file(&path);
        assert!(e.message().contains("albatross takes images of at most"), "{}", e.message());
    }
}
