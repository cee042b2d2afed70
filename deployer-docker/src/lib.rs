//! Docker for the deployer: build the Dockerfile of a commit, push it, and
//! update the service running it — through the Engine API (bollard), with
//! updates that wait for health, roll back on failure, and drift that is
//! seen.
//!
//! - Hosts ([`DockerHost`]): a Unix socket, TCP with client certificates,
//!   or `ssh://user@host` through a deployer-ssh tunnel to the remote
//!   socket; Docker context names resolve as the docker CLI resolves them
//!   ([`Docker::context`]), so an ocurrent-deployer config folder works
//!   unchanged.
//! - Operations, each a cached operation with a per-use label and
//!   OCurrent's confirmation level: [`Docker::build`] (a commit or a
//!   directory), [`Docker::pull`] (digest-aware, on a schedule),
//!   [`Docker::tag`], [`Docker::push`], [`Docker::push_manifest`]
//!   (multi-architecture, through the registry's API), [`Docker::service`]
//!   (health-gated, rolled back on failure, drift shown), [`Docker::run`]
//!   and [`Docker::pread`]. Builds for an architecture may run on a
//!   [`HostPool`].
//! - Builds use the legacy builder, or BuildKit
//!   ([`BuildOptions::buildkit`]: `RUN --mount=type=cache`, build secrets
//!   from [`Docker::build_secret`], multi-stage builds, BuildKit's progress
//!   in the log); [`BuildOptions::include_git`] puts a real `.git` at the
//!   commit in the context.
//! - A service's first deploy can come from a compose file ([`Stack`]: the
//!   version-3 keys of a swarm stack, created as `docker stack deploy`
//!   creates it), so no bollard structs are needed to create one.
//! - Registry credentials from a docker `config.json` (`auths`, credential
//!   helpers) or given as secrets; passed with pulls, pushes and service
//!   updates.
//!
//! ```no_run
//! use std::time::Duration;
//! use deployer_core::cache::Schedule;
//! use deployer_core::{Config, Context, Engine};
//! use deployer_docker::Docker;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let ctx = Context::open("/var/lib/deployer".as_ref(), Config::default())?;
//! let docker = Docker::new(&ctx);
//! let watch = docker.context("watch.ocaml.org")?;
//! let weekly = Schedule::every(Duration::from_secs(7 * 86_400));
//! let image = docker.pull(&watch, "chocobozzz/peertube:production-bookworm", weekly)?;
//! let peertube = docker.service(&watch, "infra_peertube", &image, Default::default());
//! Engine::new(peertube).run().await;
//! # Ok(()) }
//! ```

mod auth;
mod build;
mod buildkit;
mod compose;
mod context;
mod drift;
mod error;
mod extract;
mod host;
mod image;
mod images;
mod registry;
mod run;
mod service;

/// Entry points for the fuzz targets in `fuzz/` (the `fuzzing` feature).
/// Not part of the API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    /// The endpoint of the Docker context `name` in the config directory
    /// `dir` (its `meta.json`, its TLS files), as a host would resolve it.
    pub fn resolve_context(name: &str, dir: &std::path::Path) -> Result<crate::Endpoint, crate::DockerError> {
        crate::context::resolve(name, dir)
    }
}

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use deployer_core::cache::{BuildCache, OutputCache, Schedule};
use deployer_core::{Context, Current, Error, Level, Monitor, Value};
use deployer_git::Git;
use deployer_ssh::Ssh;

pub use auth::Credentials;
pub use build::{BuildKey, BuildOptions, BuildSource, RegistryAuth};
pub use compose::{ComposeError, Mode, Port, Stack, StackService, Volume, VolumeSource, STACK_LABEL};
pub use context::{config_dir, context_name, Endpoint, TlsFiles, DEFAULT_SOCKET};
pub use drift::LiveService;
pub use error::DockerError;
pub use extract::ExtractKey;
pub use host::{DockerHost, HostPool};
pub use image::{BadReference, Image, ImageRef, DOCKER_HUB};
pub use images::{PullKey, TagKey};
pub use registry::{Descriptor, Platform};
pub use run::RunKey;
pub use service::{Deployed, ServiceKey, ServiceOptions};

/// What the operations share: the hosts by name, credentials, and the
/// drift monitors to refresh after a deploy.
#[derive(Clone)]
pub(crate) struct Shared {
    inner: Arc<SharedInner>,
}

struct SharedInner {
    auth: auth::Auth,
    hosts: RwLock<HashMap<String, DockerHost>>,
    http: std::sync::OnceLock<reqwest::Client>,
    monitors: RwLock<HashMap<(String, String), Monitor<LiveService>>>,
    /// Services a deploy job is working on now.
    deploying: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
    /// When the last deploy of each service started (Unix milliseconds).
    deploy_started: std::sync::Mutex<HashMap<(String, String), i64>>,
    /// BuildKit build secrets by id.
    build_secrets: RwLock<HashMap<String, deployer_core::Secret<Vec<u8>>>>,
}

/// Marks a service as being deployed while it lives.
pub(crate) struct Deploying {
    shared: Shared,
    key: (String, String),
}

impl Drop for Deploying {
    fn drop(&mut self) {
        self.shared.inner.deploying.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.key);
    }
}

impl Shared {
    /// The host called `name`.
    pub(crate) fn host(&self, name: &str) -> Result<DockerHost, Error> {
        self.inner
            .hosts
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| Error::msg(format!("no Docker host called {name:?} is configured")))
    }

    fn add_host(&self, host: &DockerHost) -> Result<(), DockerError> {
        let mut hosts = self.inner.hosts.write().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = hosts.get(host.name()) {
            if existing.endpoint() != host.endpoint() {
                return Err(DockerError::Config(format!(
                    "two Docker hosts are called {:?} ({:?} and {:?})",
                    host.name(),
                    existing.endpoint(),
                    host.endpoint()
                )));
            }
        }
        hosts.insert(host.name().to_owned(), host.clone());
        Ok(())
    }

    /// The build secret `id`.
    pub(crate) fn build_secret(&self, id: &str) -> Option<deployer_core::Secret<Vec<u8>>> {
        self.inner.build_secrets.read().unwrap_or_else(|e| e.into_inner()).get(id).cloned()
    }

    /// The credentials for the image `tag`'s repository (given for it, or
    /// for its registry).
    pub(crate) async fn credentials_for(&self, tag: &ImageRef) -> Result<Option<Credentials>, DockerError> {
        self.inner.auth.lookup_repository(tag.registry(), tag.repository()).await
    }

    /// The credentials given for every registry, for builds (base images).
    pub(crate) async fn build_credentials(
        &self,
    ) -> Result<HashMap<String, bollard::auth::DockerCredentials>, DockerError> {
        let registries: Vec<String> = self.inner.auth.given_registries();
        let mut out = HashMap::new();
        for r in registries {
            if let Some(c) = self.inner.auth.lookup(&r).await? {
                out.insert(r.clone(), c.for_daemon(&r));
            }
        }
        Ok(out)
    }

    /// A client for `registry`'s HTTP API.
    pub(crate) fn registry(
        &self,
        registry: &str,
        credentials: Option<Credentials>,
    ) -> Result<registry::Registry, DockerError> {
        let http = match self.inner.http.get() {
            Some(h) => h.clone(),
            None => {
                let h = registry::http_client()?;
                let _ = self.inner.http.set(h.clone());
                h
            }
        };
        Ok(registry::Registry::new(http, registry, credentials))
    }

    /// Marks `name` on `host` as being deployed until the guard is dropped:
    /// its drift check waits meanwhile.
    pub(crate) fn deploying_guard(&self, host: &str, name: &str) -> Deploying {
        let key = (host.to_owned(), name.to_owned());
        self.inner.deploy_started.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone(), drift::now_ms());
        self.inner.deploying.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone());
        Deploying { shared: self.clone(), key }
    }

    /// When the last deploy of `name` on `host` by this process started.
    pub(crate) fn deploy_started(&self, host: &str, name: &str) -> Option<i64> {
        self.inner
            .deploy_started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(host.to_owned(), name.to_owned()))
            .copied()
    }

    /// Whether a deploy job is working on `name` on `host`.
    pub(crate) fn deploying(&self, host: &str, name: &str) -> bool {
        self.inner.deploying.lock().unwrap_or_else(|e| e.into_inner()).contains(&(host.to_owned(), name.to_owned()))
    }

    /// Reads the live state of `name` on `host` again (after a deploy).
    pub(crate) fn refresh_live(&self, host: &str, name: &str) {
        if let Some(m) =
            self.inner.monitors.read().unwrap_or_else(|e| e.into_inner()).get(&(host.to_owned(), name.to_owned()))
        {
            m.refresh();
        }
    }
}

/// Docker for a deployer: the hosts, the credentials, and the caches of
/// every operation (recorded in the context's store). Cloning gives
/// another handle on the same ones.
#[derive(Clone)]
pub struct Docker {
    ctx: Context,
    shared: Shared,
    git: Git,
    ssh: Ssh,
    config_dir: PathBuf,
    ssh_defaults: Arc<RwLock<Option<SshDefaults>>>,
    builds: BuildCache<build::Build>,
    pool_builds: Arc<RwLock<HashMap<String, BuildCache<build::Build>>>>,
    pulls: BuildCache<images::Pull>,
    tags: OutputCache<images::Tag>,
    pushes: OutputCache<images::Push>,
    manifests: OutputCache<images::PushManifest>,
    runs: BuildCache<run::Run>,
    preads: BuildCache<run::Run>,
    extracts: BuildCache<extract::Extract>,
    services: OutputCache<service::UpdateService>,
    service_options: Arc<RwLock<HashMap<ServiceKey, ServiceOptions>>>,
    plain_tcp: Arc<std::sync::atomic::AtomicBool>,
}

/// `source` as a [`BuildSource`] stage: a fetched `Commit` (or a
/// `BuildSource` itself) goes straight into a build.
fn as_source<S: Value + Into<BuildSource>>(source: &Current<S>) -> Current<BuildSource> {
    source.map(|s| s.clone().into())
}

/// The key file and known_hosts file for `ssh://` contexts.
#[derive(Clone, Debug)]
struct SshDefaults {
    key_file: Option<PathBuf>,
    known_hosts: Option<PathBuf>,
}

impl Docker {
    /// Docker with `ctx`'s store and jobs, git for build contexts, and SSH
    /// for `ssh://` hosts. Contexts and credentials are read from the
    /// docker CLI's configuration directory (`DOCKER_CONFIG` or
    /// `~/.docker`) unless [`Docker::config_dir`] says otherwise. Its `Git`
    /// and `Ssh` are the context's: [`Git::new`] and [`Ssh::new`] give every
    /// caller with one context the same mirrors and connections.
    pub fn new(ctx: &Context) -> Docker {
        Docker::with(ctx, Git::new(ctx), Ssh::new(ctx))
    }

    /// Like [`Docker::new`], sharing `git`'s mirrors and `ssh`'s connections.
    pub fn with(ctx: &Context, git: Git, ssh: Ssh) -> Docker {
        let auth = auth::Auth::new();
        let config_dir = context::config_dir();
        auth.use_config_dir(&config_dir);
        let shared = Shared {
            inner: Arc::new(SharedInner {
                auth,
                hosts: RwLock::default(),
                http: std::sync::OnceLock::new(),
                monitors: RwLock::default(),
                deploying: std::sync::Mutex::default(),
                deploy_started: std::sync::Mutex::default(),
                build_secrets: RwLock::default(),
            }),
        };
        let build = |target| build::Build {
            shared: shared.clone(),
            git: git.clone(),
            target,
            level: Level::Average,
            timeout: None,
        };
        let service_options = Arc::new(RwLock::new(HashMap::new()));
        Docker {
            ctx: ctx.clone(),
            services: OutputCache::new(
                ctx,
                service::UpdateService { shared: shared.clone(), options: service_options.clone() },
            ),
            service_options,
            plain_tcp: Arc::default(),
            builds: BuildCache::new(ctx, build(build::Target::Hosts)),
            pool_builds: Arc::default(),
            pulls: BuildCache::new(ctx, images::Pull { shared: shared.clone() }),
            tags: OutputCache::new(ctx, images::Tag { shared: shared.clone() }),
            pushes: OutputCache::new(ctx, images::Push { shared: shared.clone() }),
            manifests: OutputCache::new(ctx, images::PushManifest { shared: shared.clone() }),
            runs: BuildCache::new(ctx, run::Run { shared: shared.clone(), capture: false }),
            preads: BuildCache::new(ctx, run::Run { shared: shared.clone(), capture: true }),
            extracts: BuildCache::new(
                ctx,
                extract::Extract { shared: shared.clone(), dir: ctx.state_dir().join("docker-files") },
            ),
            shared,
            git,
            ssh,
            config_dir,
            ssh_defaults: Arc::default(),
        }
    }

    /// Reads contexts and `config.json` credentials from `dir` (an
    /// ocurrent-deployer `config/docker` folder) instead.
    pub fn config_dir(mut self, dir: &Path) -> Docker {
        self.config_dir = dir.to_owned();
        self.shared.inner.auth.use_config_dir(dir);
        self
    }

    /// Uses `credentials` for `registry` (`docker.io`, `ghcr.io`,
    /// `127.0.0.1:5000`); the password is kept out of every log.
    pub fn credentials(&self, registry: &str, credentials: Credentials) {
        self.shared.inner.auth.set(registry, credentials);
    }

    /// Uses `credentials` for pushes, pulls and deploys of the images under
    /// `repository` (`ocurrentbuilder/staging`, `ghcr.io/org/app`; a path
    /// prefix covers the repositories below it), instead of the registry's:
    /// upstream pushes its staging images as one Docker Hub user and the
    /// final ones as another. Builds' base images still use the registry's.
    pub fn credentials_for_repository(&self, repository: &str, credentials: Credentials) -> Result<(), BadReference> {
        let r = ImageRef::parse(repository)?;
        if r.tag().is_some() || r.digest().is_some() {
            return Err(BadReference {
                reference: repository.to_owned(),
                why: "a repository, not an image: no tag or digest",
            });
        }
        self.shared.inner.auth.set_for_repository(r.registry(), r.repository(), credentials);
        Ok(())
    }

    /// Gives BuildKit builds the secret `id` (`RUN --mount=type=secret,id=…`
    /// in a Dockerfile, listed in [`BuildOptions::secrets`]). The value is
    /// kept out of every log, and goes only with trusted builds.
    pub fn build_secret(&self, id: &str, value: &str) {
        deployer_core::register_secret(value);
        self.shared
            .inner
            .build_secrets
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_owned(), deployer_core::Secret::new(value.as_bytes().to_vec()));
    }

    /// The private key and known_hosts file for hosts reached over
    /// `ssh://` (else `~/.ssh/config` and OpenSSH's defaults).
    pub fn ssh_identity(&self, key_file: Option<&Path>, known_hosts: Option<&Path>) {
        *self.ssh_defaults.write().unwrap_or_else(|e| e.into_inner()) =
            Some(SshDefaults { key_file: key_file.map(Path::to_owned), known_hosts: known_hosts.map(Path::to_owned) });
    }

    fn add(&self, host: DockerHost) -> Result<DockerHost, DockerError> {
        self.shared.add_host(&host)?;
        Ok(host)
    }

    fn tunnels_dir(&self) -> PathBuf {
        // Short: a Unix socket path must fit in 108 bytes.
        let dir = self.ctx.state_dir().join("docker-tunnels");
        if dir.as_os_str().len() < 70 {
            dir
        } else {
            std::env::temp_dir().join(format!("deployer-tunnels-{}", std::process::id()))
        }
    }

    /// Allows `tcp://` daemons without TLS on other machines (off by
    /// default: registry credentials and build contexts would cross the
    /// network in clear, and anyone on the path could drive the daemon).
    pub fn allow_plain_tcp(&self, allow: bool) {
        self.plain_tcp.store(allow, std::sync::atomic::Ordering::Relaxed);
    }

    /// The host of an endpoint, called `name`. A `tcp://` endpoint without
    /// TLS must be on loopback, unless [`Docker::allow_plain_tcp`].
    pub fn host(&self, name: &str, endpoint: Endpoint) -> Result<DockerHost, DockerError> {
        if let Endpoint::Tcp { address, tls: None } = &endpoint {
            if !registry::is_loopback(address) && !self.plain_tcp.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(DockerError::Config(format!(
                    "the Docker host {name} is tcp://{address} without TLS: registry credentials would cross the \
                     network in clear. Use TLS (a context with certificates), ssh://, or allow plain TCP explicitly"
                )));
            }
        }
        let ssh = match &endpoint {
            Endpoint::Ssh { destination, .. } => Some((self.ssh.clone(), self.ssh_host(destination)?)),
            _ => None,
        };
        self.add(DockerHost::new(name, endpoint, ssh, self.tunnels_dir()))
    }

    /// The host of the daemon socket at `path`, called `name`.
    pub fn unix(&self, name: &str, path: &Path) -> Result<DockerHost, DockerError> {
        self.host(name, Endpoint::Unix(path.to_owned()))
    }

    /// The host of a daemon reached over SSH as `ssh_host`, whose socket
    /// there is `socket` (`/var/run/docker.sock` by default).
    pub fn ssh(&self, name: &str, ssh_host: deployer_ssh::Host, socket: &str) -> Result<DockerHost, DockerError> {
        let endpoint = Endpoint::Ssh { destination: ssh_host.destination(), socket: socket.to_owned() };
        self.add(DockerHost::new(name, endpoint, Some((self.ssh.clone(), ssh_host)), self.tunnels_dir()))
    }

    /// The host of the Docker context `name`, resolved as `docker --context
    /// name` would resolve it in the configuration directory.
    pub fn context(&self, name: &str) -> Result<DockerHost, DockerError> {
        let endpoint = context::resolve(name, &self.config_dir)?;
        self.host(name, endpoint)
    }

    /// The host the docker CLI would use with no `--context`
    /// (`DOCKER_HOST`, `DOCKER_CONTEXT`, `currentContext`, `default`).
    pub fn default_host(&self) -> Result<DockerHost, DockerError> {
        let name = context::context_name(None, &self.config_dir)?;
        self.context(&name)
    }

    /// The SSH host for `destination` (`[user@]host[:port]`).
    fn ssh_host(&self, destination: &str) -> Result<deployer_ssh::Host, DockerError> {
        let (user, rest) = match destination.rsplit_once('@') {
            Some((u, r)) => (Some(u), r),
            None => (None, destination),
        };
        let (alias, port) = match rest.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => (h, p.parse::<u16>().ok()),
            _ => (rest, None),
        };
        let mut host = deployer_ssh::Host::from_user_config(alias).map_err(|e| DockerError::Config(e.to_string()))?;
        if let Some(user) = user {
            host = host.user(user);
        }
        if let Some(port) = port {
            host = host.port(port);
        }
        if let Some(d) = self.ssh_defaults.read().unwrap_or_else(|e| e.into_inner()).clone() {
            if let Some(key) = d.key_file {
                host = host.key_file(key);
            }
            if let Some(known) = d.known_hosts {
                host = host.known_hosts(known);
            }
        }
        Ok(host)
    }

    /// A pool of `hosts` for builds for `arch`.
    pub fn pool(&self, arch: &str, hosts: Vec<DockerHost>) -> HostPool {
        HostPool::new(arch, hosts)
    }

    /// The stage `label`: `source` built on `host` with `options` (fixed,
    /// or a stage: build arguments read from elsewhere). The value is the
    /// image's id on that host. Output streams into the job's
    /// log; a newer source cancels a build in progress.
    pub fn build<S: Value + Into<BuildSource>>(
        &self,
        label: &str,
        host: &DockerHost,
        source: &Current<S>,
        options: impl Into<Current<BuildOptions>>,
    ) -> Current<Image> {
        let source = as_source(source);
        let on = host.name().to_owned();
        let key = source.pair(&options.into()).map(move |(source, options)| BuildKey {
            on: on.clone(),
            source: source.clone(),
            options: options.clone(),
            push: None,
        });
        self.builds.get(label, key)
    }

    /// Like [`Docker::build`], on whichever host of `pool` is free, for
    /// `linux/<the pool's arch>` unless `options` name a platform.
    pub fn build_on_pool<S: Value + Into<BuildSource>>(
        &self,
        label: &str,
        pool: &HostPool,
        source: &Current<S>,
        options: impl Into<Current<BuildOptions>>,
    ) -> Current<Image> {
        self.pool_build(label, pool, &as_source(source), options.into(), None)
    }

    /// Like [`Docker::build_on_pool`], then pushes the image as `tag` from
    /// the host that built it, in the same job (what an OCluster worker's
    /// `build_and_push` does). The value is the pushed `repo@sha256:…`.
    pub fn build_and_push_on_pool<S: Value + Into<BuildSource>>(
        &self,
        label: &str,
        pool: &HostPool,
        source: &Current<S>,
        options: impl Into<Current<BuildOptions>>,
        tag: &str,
    ) -> Result<Current<Image>, BadReference> {
        let tag = ImageRef::parse(tag)?;
        Ok(self.pool_build(label, pool, &as_source(source), options.into(), Some(tag)))
    }

    fn pool_build(
        &self,
        label: &str,
        pool: &HostPool,
        source: &Current<BuildSource>,
        options: Current<BuildOptions>,
        push: Option<ImageRef>,
    ) -> Current<Image> {
        let cache = {
            let mut caches = self.pool_builds.write().unwrap_or_else(|e| e.into_inner());
            caches
                .entry(pool.arch().to_owned())
                .or_insert_with(|| {
                    for h in &pool.hosts {
                        let _ = self.shared.add_host(h);
                    }
                    BuildCache::new(
                        &self.ctx,
                        build::Build {
                            shared: self.shared.clone(),
                            git: self.git.clone(),
                            target: build::Target::Pool(pool.clone()),
                            level: Level::Average,
                            timeout: pool.timeout,
                        },
                    )
                })
                .clone()
        };
        let on = format!("pool:{}", pool.arch());
        // A pool builds for its architecture: said to the builder, so that
        // it does not take cached layers of another platform's build (the
        // legacy builder would, and the image would not run here).
        let platform = format!("linux/{}", pool.arch());
        let key = source.pair(&options).map(move |(source, options)| BuildKey {
            on: on.clone(),
            source: source.clone(),
            options: BuildOptions {
                platform: options.platform.clone().or_else(|| Some(platform.clone())),
                ..options.clone()
            },
            push: push.clone(),
        });
        cache.get(label, key)
    }

    /// The stage `docker pull <tag>` on `host`: the registry is asked for
    /// the tag's digest when `schedule` expires, and the image is pulled
    /// only if that digest is not already on the host. The value is
    /// `repo@sha256:…`. A failed pull (the registry down) is tried again
    /// after 10 minutes, or after the schedule's own
    /// [`Schedule::retry_failures_after`].
    pub fn pull(&self, host: &DockerHost, tag: &str, schedule: Schedule) -> Result<Current<Image>, BadReference> {
        let key = PullKey { host: host.name().to_owned(), tag: ImageRef::parse(tag)?, arch: None };
        Ok(self.pulls.get_scheduled(&format!("docker pull {tag}"), key, schedule))
    }

    /// Like [`Docker::pull`], for the `linux/<arch>` image of a
    /// multi-architecture tag.
    pub fn pull_arch(
        &self,
        host: &DockerHost,
        tag: &str,
        arch: &str,
        schedule: Schedule,
    ) -> Result<Current<Image>, BadReference> {
        let key = PullKey { host: host.name().to_owned(), tag: ImageRef::parse(tag)?, arch: Some(arch.to_owned()) };
        Ok(self.pulls.get_scheduled(&format!("docker pull {tag} ({arch})"), key, schedule))
    }

    /// The stage `docker tag <tag>`: tags each `image` as `tag` on `host`.
    pub fn tag(&self, host: &DockerHost, tag: &str, image: &Current<Image>) -> Result<Current<()>, BadReference> {
        let key = TagKey { host: host.name().to_owned(), tag: ImageRef::parse(tag)? };
        Ok(self.tags.set(&format!("docker tag {tag}"), key, image.clone()))
    }

    /// The stage `docker push <tag>`: tags `image` as `tag` on `host` and
    /// pushes it. The value is `repo@sha256:…`.
    pub fn push(&self, host: &DockerHost, tag: &str, image: &Current<Image>) -> Result<Current<Image>, BadReference> {
        let key = TagKey { host: host.name().to_owned(), tag: ImageRef::parse(tag)? };
        Ok(self.pushes.set(&format!("docker push {tag}"), key, image.clone()))
    }

    /// The stage `docker manifest push <tag>`: a multi-architecture index of
    /// `images` (pushed `repo@sha256:…` images in `tag`'s repository, one
    /// per platform) pushed as `tag`. The value is `tag@sha256:…`.
    pub fn push_manifest(&self, tag: &str, images: &Current<Vec<Image>>) -> Result<Current<Image>, BadReference> {
        let key = ImageRef::parse(tag)?;
        Ok(self.manifests.set(&format!("docker manifest push {tag}"), key, images.clone()))
    }

    /// The stage `docker service <name>` on `host`: updates the service to
    /// each `image` (health-gated, rolled back on failure; latched, so the
    /// running version stays shown during an update), followed by a check
    /// that fails when what runs drifts from what was deployed.
    pub fn service(
        &self,
        host: &DockerHost,
        name: &str,
        image: &Current<Image>,
        options: ServiceOptions,
    ) -> Current<Deployed> {
        let drift_every = options.drift_check;
        let key = ServiceKey { host: host.name().to_owned(), name: name.to_owned() };
        self.service_options.write().unwrap_or_else(|e| e.into_inner()).insert(key.clone(), options);
        let deployed = self.services.set(&format!("docker service {name}"), key, image.clone());
        let live = drift::monitor(self.shared.clone(), host.name(), name, drift_every);
        self.shared
            .inner
            .monitors
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert((host.name().to_owned(), name.to_owned()), live.clone());
        deployed.pair(&live.current()).try_map(|(d, l)| drift::check(d, l))
    }

    /// Pulls `tag` on `host` now, as part of `job`, the way [`Docker::pull`]
    /// does: the registry is asked for the digest, and nothing is pulled
    /// if that image is already there. Returns `repo@sha256:…`.
    pub async fn pull_now(&self, job: &deployer_core::Job, host: &DockerHost, tag: &str) -> Result<Image, Error> {
        let key = PullKey {
            host: host.name().to_owned(),
            tag: ImageRef::parse(tag).map_err(|e| Error::msg(e.to_string()))?,
            arch: None,
        };
        images::pull_latest(&self.shared, job, host, &key).await
    }

    /// Sets the service `name` on `host` to `image` and returns at once,
    /// without the health gate of [`Docker::service`] (what `docker service
    /// update --detach --image` does). For tools and benchmarks; pipelines
    /// use [`Docker::service`].
    pub async fn set_service_image(&self, host: &DockerHost, name: &str, image: &Image) -> Result<(), Error> {
        service::set_image(&self.shared, host, name, image).await
    }

    /// The stage `label`: the file at `path` (absolute) copied out of each
    /// `image` on `host` (a unikernel built in Docker, say). The value is
    /// where the copy is, under the state directory.
    pub fn extract(&self, label: &str, host: &DockerHost, image: &Current<Image>, path: &str) -> Current<PathBuf> {
        let (h, p) = (host.name().to_owned(), path.to_owned());
        let key = image.map(move |image| ExtractKey { host: h.clone(), image: image.clone(), path: p.clone() });
        self.extracts.get(label, key)
    }

    /// The stage `docker run`: runs `args` in a container of each `image`
    /// on `host` (logged; the container removed).
    pub fn run(&self, label: &str, host: &DockerHost, image: &Current<Image>, args: Vec<String>) -> Current<()> {
        let h = host.name().to_owned();
        let key = image.map(move |image| RunKey { host: h.clone(), image: image.clone(), args: args.clone() });
        self.runs.get(label, key).ignore_value()
    }

    /// Like [`Docker::run`], with the container's standard output as the
    /// value.
    pub fn pread(&self, label: &str, host: &DockerHost, image: &Current<Image>, args: Vec<String>) -> Current<String> {
        let h = host.name().to_owned();
        let key = image.map(move |image| RunKey { host: h.clone(), image: image.clone(), args: args.clone() });
        self.preads.get(label, key)
    }
}

/// How often a deployed service is checked for drift by default.
pub const DRIFT_CHECK: Duration = Duration::from_secs(60);
