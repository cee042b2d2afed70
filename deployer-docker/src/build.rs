//! `docker-build`: an image built from a git commit (its files streamed as
//! the build context, submodules included) or a directory, on one host or
//! on whichever host of a pool is free.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use deployer_core::cache::Builder;
use deployer_core::{Error, Job, Level, Pool, ResultExt};
use deployer_git::{Commit, Git};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncRead;

use crate::error::{daemon_message, DockerError};
use crate::host::{DockerHost, HostPool};
use crate::image::ImageRef;
use crate::images::TagKey;
use crate::Shared;

/// What an image is built from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum BuildSource {
    /// A fetched git commit (see `deployer_git::Git::fetch`).
    Commit(Commit),
    /// A directory on the deployer's machine (rebuilt when its path
    /// changes, or on request).
    Dir(PathBuf),
}

impl From<Commit> for BuildSource {
    fn from(c: Commit) -> BuildSource {
        BuildSource::Commit(c)
    }
}

/// How to build.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildOptions {
    /// The Dockerfile's path in the context (`Dockerfile`).
    pub dockerfile: String,
    /// `--build-arg`s.
    pub build_args: BTreeMap<String, String>,
    /// The stage to build (`--target`), if not the last.
    pub target: Option<String>,
    /// Labels for the image.
    pub labels: BTreeMap<String, String>,
    /// Pull newer base images first (`--pull`).
    pub pull: bool,
    /// The platform to build for (`linux/arm64`), if not the host's.
    pub platform: Option<String>,
    /// Which registry credentials the daemon may use to pull the build's
    /// base images. A build of code from outside (a pull request, a fork)
    /// must get [`RegistryAuth::None`] ([`BuildOptions::untrusted`]): its
    /// Dockerfile's `FROM private-registry/secret` would otherwise be
    /// pulled with the deployer's rights.
    #[serde(default, skip_serializing_if = "RegistryAuth::is_default")]
    pub registry_auth: RegistryAuth,
    /// Build with BuildKit (`DOCKER_BUILDKIT=1`): `RUN --mount=type=cache`
    /// and `--mount=type=secret`, parallel stages, its progress in the
    /// log. Else the legacy builder.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub buildkit: bool,
    /// The ids of the build secrets the Dockerfile mounts
    /// (`RUN --mount=type=secret,id=…`), given to
    /// [`Docker::build_secret`](crate::Docker::build_secret). Needs
    /// [`buildkit`](BuildOptions::buildkit). Their values are not part of
    /// the build's key (a new value does not rebuild), and never go with
    /// an untrusted build ([`RegistryAuth::None`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Put the commit's `.git` in the context (a real repository at that
    /// commit: `git rev-parse HEAD`, `git describe` work), as OCurrent's
    /// and OCluster's `include_git`. Else only its files.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub include_git: bool,
}

/// The registry credentials a build is given (see
/// [`BuildOptions::registry_auth`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistryAuth {
    /// Every credential the deployer has (for the operator's own branches).
    #[default]
    Deployer,
    /// None: base images are pulled anonymously.
    None,
}

impl RegistryAuth {
    fn is_default(&self) -> bool {
        *self == RegistryAuth::Deployer
    }
}

impl Default for BuildOptions {
    fn default() -> BuildOptions {
        BuildOptions {
            dockerfile: "Dockerfile".into(),
            build_args: BTreeMap::new(),
            target: None,
            labels: BTreeMap::new(),
            pull: false,
            platform: None,
            registry_auth: RegistryAuth::Deployer,
            buildkit: false,
            secrets: Vec::new(),
            include_git: false,
        }
    }
}

impl BuildOptions {
    /// The Dockerfile at `path` in the context.
    pub fn dockerfile(path: &str) -> BuildOptions {
        BuildOptions { dockerfile: path.into(), ..BuildOptions::default() }
    }

    /// The same options for a build of untrusted code: no registry
    /// credentials go with it.
    pub fn untrusted(self) -> BuildOptions {
        BuildOptions { registry_auth: RegistryAuth::None, ..self }
    }

    /// The same options, built with BuildKit.
    pub fn buildkit(self) -> BuildOptions {
        BuildOptions { buildkit: true, ..self }
    }
}

/// A build's cache key: where, from what, how.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BuildKey {
    /// The host's name, or `pool:<arch>`.
    pub on: String,
    /// The source.
    pub source: BuildSource,
    /// The options.
    pub options: BuildOptions,
    /// Where to push the image from the host that built it (a pool's
    /// build leaves the image on whichever host was free).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<ImageRef>,
}

/// Where builds of one cache run.
#[derive(Clone)]
pub(crate) enum Target {
    /// Hosts by name (any registered host).
    Hosts,
    /// A pool of hosts for one architecture.
    Pool(HostPool),
}

/// The builder behind `Docker::build`.
pub(crate) struct Build {
    pub(crate) shared: Shared,
    pub(crate) git: Git,
    pub(crate) target: Target,
    pub(crate) level: Level,
    pub(crate) timeout: Option<Duration>,
}

/// Describes a source for labels and logs.
fn describe_source(source: &BuildSource) -> String {
    match source {
        BuildSource::Commit(c) => c.id.to_string(),
        BuildSource::Dir(d) => d.display().to_string(),
    }
}

#[async_trait]
impl Builder for Build {
    const ID: &'static str = "docker-build";
    type Key = BuildKey;
    type Value = crate::Image;

    fn describe(&self, key: &BuildKey) -> Option<String> {
        let push = key.push.as_ref().map(|t| format!(", push {t}")).unwrap_or_default();
        Some(format!("docker build {} ({}) on {}{push}", describe_source(&key.source), key.options.dockerfile, key.on))
    }
    fn level(&self, key: &BuildKey) -> Level {
        // Pushing changes a registry: one step up, as OCluster does.
        if key.push.is_some() {
            self.level.max(Level::AboveAverage)
        } else {
            self.level
        }
    }
    fn auto_cancel(&self) -> bool {
        true
    }
    fn pool(&self) -> Option<Pool> {
        match &self.target {
            Target::Hosts => None,
            Target::Pool(p) => Some(p.pool.clone()),
        }
    }
    fn timeout(&self) -> Option<Duration> {
        self.timeout
    }
    async fn build(&self, job: &Job, key: &BuildKey) -> Result<crate::Image, Error> {
        match &self.target {
            Target::Hosts => {
                let host = self.shared.host(&key.on)?;
                self.build_and_push(job, &host, key).await
            }
            Target::Pool(pool) => {
                let (i, host) = pool.take()?;
                job.log(&format!("Building on {} (from the {} pool)", host.name(), pool.arch()));
                let result = self.build_and_push(job, &host, key).await;
                pool.give_back(i);
                result
            }
        }
    }
}

impl Build {
    /// The build, then the push when the key asks for one, on one host.
    async fn build_and_push(&self, job: &Job, host: &DockerHost, key: &BuildKey) -> Result<crate::Image, Error> {
        let image = self.build_image(job, host, key).await?;
        match &key.push {
            None => Ok(image),
            Some(tag) => {
                let at = TagKey { host: host.name().to_owned(), tag: tag.clone() };
                crate::images::push_image(&self.shared, job, &at, &image).await
            }
        }
    }
}

impl Build {
    async fn context(&self, job: &Job, source: &BuildSource, include_git: bool) -> Result<TarReader, Error> {
        match source {
            BuildSource::Commit(commit) if include_git => {
                Ok(TarReader::Git(Some(self.git.tar_context_with_git(job, commit).await?)))
            }
            BuildSource::Commit(commit) => Ok(TarReader::Git(Some(self.git.tar_context(job, commit).await?))),
            BuildSource::Dir(dir) => {
                if !dir.is_dir() {
                    return Err(Error::msg(format!("the build directory {} does not exist", dir.display())));
                }
                let mut tar = tokio::process::Command::new("tar");
                tar.arg("-c").arg("-C").arg(dir).arg(".");
                Ok(TarReader::Tar(Some(Box::new(job.stream_output(&mut tar)?))))
            }
        }
    }

    async fn build_image(&self, job: &Job, host: &DockerHost, key: &BuildKey) -> Result<crate::Image, Error> {
        let options = &key.options;
        if !options.secrets.is_empty() && !options.buildkit {
            return Err(Error::msg(format!(
                "build secrets ({}) need BuildKit: set BuildOptions::buildkit",
                options.secrets.join(", ")
            )));
        }
        if let BuildSource::Dir(_) = &key.source {
            if options.include_git {
                return Err(Error::msg("include_git needs a git commit to build, not a directory"));
            }
        }
        let docker = host.client().await?;
        let reader = self.context(job, &key.source, options.include_git).await?;
        let (reader, finished) = Finishing::new(reader);
        if options.buildkit {
            return self.build_with_buildkit(job, host, key, reader, finished).await;
        }
        let body = bollard::body_try_stream(tokio_util::io::ReaderStream::new(reader));
        let mut builder = bollard::query_parameters::BuildImageOptionsBuilder::new()
            .dockerfile(&options.dockerfile)
            .rm(true)
            .forcerm(true)
            .buildargs(&options.build_args.clone().into_iter().collect())
            .labels(&options.labels.clone().into_iter().collect());
        if let Some(target) = &options.target {
            builder = builder.target(target);
        }
        if options.pull {
            builder = builder.pull("true");
        }
        if let Some(platform) = &options.platform {
            builder = builder.platform(platform);
        }
        let credentials = match options.registry_auth {
            RegistryAuth::Deployer => self.shared.build_credentials().await?,
            RegistryAuth::None => {
                job.log("No registry credentials go with this build (untrusted code)");
                std::collections::HashMap::new()
            }
        };
        let platform = options.platform.as_deref().map(|p| format!(" for {p}")).unwrap_or_default();
        job.log(&format!(
            "Building {} ({}){platform} on {}",
            describe_source(&key.source),
            options.dockerfile,
            host.name()
        ));
        let mut stream = docker.build_image(builder.build(), Some(credentials), Some(body));
        let mut lines = job.lines();
        let mut image = None;
        let cancelled = job.cancelled();
        tokio::pin!(cancelled);
        loop {
            let item = tokio::select! {
                item = stream.next() => item,
                reason = &mut cancelled => {
                    drop(stream); // closes the request: the daemon stops the build
                    lines.finish();
                    return Err(job.cancellation_error().unwrap_or_else(|| Error::msg(reason)));
                }
            };
            let Some(item) = item else { break };
            let info = item.map_err(|e| build_error(host, &key.options, &daemon_message(&e)))?;
            if let Some(text) = &info.stream {
                lines.push(text.as_bytes());
            }
            if let Some(status) = &info.status {
                lines.push(format!("{status}\n").as_bytes());
            }
            if let Some(detail) = &info.error_detail {
                lines.finish();
                let message = detail.message.clone().unwrap_or_default();
                return Err(build_error(host, &key.options, &message));
            }
            if let Some(id) = info.aux.as_ref().and_then(|aux| aux.id.clone()) {
                image = Some(id);
            }
        }
        lines.finish();
        finished.check().await.context("sending the build context")?;
        let id = image.ok_or_else(|| Error::msg(format!("the build on {} reported no image id", host.name())))?;
        job.log(&format!("Built {id}"));
        Ok(crate::Image(id))
    }
}

impl Build {
    async fn build_with_buildkit(
        &self,
        job: &Job,
        host: &DockerHost,
        key: &BuildKey,
        reader: Finishing,
        finished: Finished,
    ) -> Result<crate::Image, Error> {
        let options = &key.options;
        let mut session = crate::buildkit::SessionData::default();
        match options.registry_auth {
            RegistryAuth::Deployer => {
                session.credentials = self.shared.build_credentials().await?;
                for id in &options.secrets {
                    let value = self.shared.build_secret(id).ok_or_else(|| {
                        Error::msg(format!("the build secret {id:?} was not given (Docker::build_secret)"))
                    })?;
                    session.secrets.insert(id.clone(), value);
                }
            }
            RegistryAuth::None => {
                job.log("No registry credentials and no build secrets go with this build (untrusted code)");
            }
        }
        let platform = options.platform.as_deref().map(|p| format!(" for {p}")).unwrap_or_default();
        job.log(&format!(
            "Building {} ({}){platform} on {} with BuildKit",
            describe_source(&key.source),
            options.dockerfile,
            host.name()
        ));
        let id = crate::buildkit::build(job, host, options, reader, session).await?;
        finished.check().await.context("sending the build context")?;
        job.log(&format!("Built {id}"));
        Ok(crate::Image(id))
    }
}

/// A failed build's error, with a hint for a missing Dockerfile.
pub(crate) fn build_error(host: &DockerHost, options: &BuildOptions, message: &str) -> Error {
    let message = message.trim();
    if message.contains("Cannot locate specified Dockerfile")
        || message.contains("no such file or directory") && message.contains(&options.dockerfile)
    {
        return Error::msg(format!(
            "the build context has no {} (docker build on {}: {message})",
            options.dockerfile,
            host.name()
        ));
    }
    Error::from(DockerError::Daemon {
        host: host.name().to_owned(),
        what: "docker build".into(),
        why: message.to_owned(),
    })
}

/// A build context being streamed (from git, or `tar` of a directory),
/// finished the same way: read to the end, then asked whether it was whole.
enum TarReader {
    Git(Option<deployer_git::TarContext>),
    Tar(Option<Box<deployer_core::job::OutputStream>>),
}

impl AsyncRead for TarReader {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            TarReader::Git(Some(t)) => std::pin::Pin::new(t).poll_read(cx, buf),
            TarReader::Tar(Some(t)) => std::pin::Pin::new(t).poll_read(cx, buf),
            _ => std::task::Poll::Ready(Ok(())),
        }
    }
}

impl TarReader {
    async fn finish(self) -> Result<(), Error> {
        match self {
            TarReader::Git(Some(t)) => t.finish().await,
            TarReader::Tar(Some(t)) => t.finish().await,
            _ => Ok(()),
        }
    }
}

/// Hands the context to the request body and gets it back at its end, so
/// that the archiver's exit status can be checked after the build.
struct Finishing {
    inner: Option<TarReader>,
    done: Option<tokio::sync::oneshot::Sender<TarReader>>,
}

/// Where the context comes back.
struct Finished(tokio::sync::oneshot::Receiver<TarReader>);

impl Finishing {
    fn new(reader: TarReader) -> (Finishing, Finished) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (Finishing { inner: Some(reader), done: Some(tx) }, Finished(rx))
    }
}

impl AsyncRead for Finishing {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let Some(inner) = self.inner.as_mut() else { return std::task::Poll::Ready(Ok(())) };
        let before = buf.filled().len();
        let poll = std::pin::Pin::new(inner).poll_read(cx, buf);
        if matches!(poll, std::task::Poll::Ready(Ok(()))) && buf.filled().len() == before {
            // The end: give the context back for its status.
            if let (Some(inner), Some(done)) = (self.inner.take(), self.done.take()) {
                let _ = done.send(inner);
            }
        }
        poll
    }
}

impl Finished {
    /// The archiver's status once the body was read to its end (an error
    /// if the daemon stopped reading it first).
    async fn check(self) -> Result<(), Error> {
        let reader = self.0.await.map_err(|_| Error::msg("the daemon stopped reading the build context"))?;
        reader.finish().await
    }
}
