//! `docker-pull` (digest-aware: the registry is asked for the digest, and
//! nothing is pulled when it is already here), `docker-tag`, `docker-push`
//! and `docker-push-manifest` (a multi-architecture index, through the
//! registry's API).

use async_trait::async_trait;
use deployer_core::cache::{Builder, Publisher};
use deployer_core::{Error, Job, Level};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::error::{is_not_found, DockerError};
use crate::image::{Image, ImageRef};
use crate::Shared;

/// What a pull is keyed by.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullKey {
    /// The host's name.
    pub host: String,
    /// The image to pull.
    pub tag: ImageRef,
    /// For a multi-architecture image, the architecture to pull.
    pub arch: Option<String>,
}

/// The builder behind `Docker::pull`.
pub(crate) struct Pull {
    pub(crate) shared: Shared,
}

/// Logs a pull's or push's progress without its progress bars.
fn log_progress(job: &Job, last: &mut String, status: Option<&str>, id: Option<&str>) {
    let Some(status) = status else { return };
    if status.starts_with("Downloading") || status.starts_with("Extracting") || status.starts_with("Pushing") {
        return;
    }
    let line = match id {
        Some(id) => format!("{id}: {status}"),
        None => status.to_owned(),
    };
    if line != *last {
        job.log(&line);
        *last = line;
    }
}

#[async_trait]
impl Builder for Pull {
    const ID: &'static str = "docker-pull";
    type Key = PullKey;
    type Value = Image;

    fn describe(&self, key: &PullKey) -> Option<String> {
        Some(match &key.arch {
            Some(arch) => format!("docker pull {} ({arch}) on {}", key.tag, key.host),
            None => format!("docker pull {} on {}", key.tag, key.host),
        })
    }
    fn level(&self, _: &PullKey) -> Level {
        Level::MostlyHarmless
    }
    fn retry_failures_after(&self) -> Option<std::time::Duration> {
        // A registry that was down is asked again soon, not next week.
        Some(std::time::Duration::from_secs(600))
    }
    async fn build(&self, job: &Job, key: &PullKey) -> Result<Image, Error> {
        let host = self.shared.host(&key.host)?;
        pull_latest(&self.shared, job, &host, key).await
    }
}

/// The digest-aware pull: asks the registry for `key`'s digest, and pulls
/// only if that image is not on `host` already.
pub(crate) async fn pull_latest(
    shared: &Shared,
    job: &Job,
    host: &crate::DockerHost,
    key: &PullKey,
) -> Result<Image, Error> {
    let docker = host.client().await?;
    let tag = &key.tag;
    let credentials = shared.credentials_for(tag).await?;
    // The digest first, from the registry (through the daemon, or for an
    // architecture from the registry's index).
    let digest = match &key.arch {
        None => {
            let daemon_creds = credentials.as_ref().map(|c| c.for_daemon(tag.registry()));
            let inspect = docker.inspect_registry_image(tag.as_str(), daemon_creds).await.map_err(|e| {
                DockerError::daemon(host.name().to_owned(), format!("asking the registry for {tag}'s digest"), &e)
            })?;
            inspect.descriptor.digest.ok_or_else(|| Error::msg(format!("the registry gave no digest for {tag}")))?
        }
        Some(arch) => {
            let registry = shared.registry(tag.registry(), credentials.clone())?;
            let reference = tag.digest().unwrap_or(tag.tag_or_latest());
            let manifests = registry.index(tag.repository(), reference).await?;
            manifests
                .iter()
                .find(|m| m.platform.as_ref().is_some_and(|p| p.architecture == *arch && p.os == "linux"))
                .map(|m| m.digest.clone())
                .ok_or_else(|| Error::msg(format!("{tag} has no linux/{arch} image")))?
        }
    };
    let pinned = tag.with_digest(&digest);
    job.log(&format!("{tag} is {digest} in the registry"));
    match docker.inspect_image(&pinned).await {
        Ok(_) => {
            job.log(&format!("{pinned} is already on {}: not pulling", host.name()));
            return Ok(Image(pinned));
        }
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(DockerError::daemon(host.name().to_owned(), format!("inspecting {pinned}"), &e).into()),
    }
    job.log(&format!("Pulling {pinned} on {}", host.name()));
    let options = bollard::query_parameters::CreateImageOptionsBuilder::new().from_image(&pinned).build();
    let daemon_creds = credentials.as_ref().map(|c| c.for_daemon(tag.registry()));
    let mut stream = docker.create_image(Some(options), None, daemon_creds);
    let mut last = String::new();
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| DockerError::daemon(host.name().to_owned(), format!("pulling {pinned}"), &e))?;
        if let Some(detail) = info.error_detail {
            return Err(Error::msg(format!(
                "pulling {pinned} on {}: {}",
                host.name(),
                detail.message.unwrap_or_default()
            )));
        }
        log_progress(job, &mut last, info.status.as_deref(), info.id.as_deref());
    }
    Ok(Image(pinned))
}

/// What a tag or a push is keyed by.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagKey {
    /// The host's name.
    pub host: String,
    /// The tag (`registry/repo:tag`).
    pub tag: ImageRef,
}

/// The publisher behind `Docker::tag`.
pub(crate) struct Tag {
    pub(crate) shared: Shared,
}

/// Tags `image` as `tag` on `host`.
async fn tag_image(shared: &Shared, job: &Job, key: &TagKey, image: &Image) -> Result<(), Error> {
    let host = shared.host(&key.host)?;
    let docker = host.client().await?;
    job.log(&format!("Tagging {image} as {} on {}", key.tag, host.name()));
    let options = bollard::query_parameters::TagImageOptionsBuilder::new()
        .repo(key.tag.name())
        .tag(key.tag.tag_or_latest())
        .build();
    docker.tag_image(image.as_str(), Some(options)).await.map_err(|e| {
        Error::from(DockerError::daemon(host.name().to_owned(), format!("tagging {image} as {}", key.tag), &e))
    })
}

#[async_trait]
impl Publisher for Tag {
    const ID: &'static str = "docker-tag";
    type Key = TagKey;
    type Value = Image;
    type Outcome = ();

    fn describe(&self, key: &TagKey, image: &Image) -> Option<String> {
        Some(format!("docker tag {} {} on {}", image.short(), key.tag, key.host))
    }
    fn level(&self) -> Level {
        Level::Average
    }
    fn idempotent(&self) -> bool {
        true
    }
    async fn publish(&self, job: &Job, key: &TagKey, image: &Image) -> Result<(), Error> {
        tag_image(&self.shared, job, key, image).await
    }
}

/// The publisher behind `Docker::push`.
pub(crate) struct Push {
    pub(crate) shared: Shared,
}

#[async_trait]
impl Publisher for Push {
    const ID: &'static str = "docker-push";
    type Key = TagKey;
    type Value = Image;
    type Outcome = Image;

    fn describe(&self, key: &TagKey, image: &Image) -> Option<String> {
        Some(format!("docker push {} as {} from {}", image.short(), key.tag, key.host))
    }
    fn level(&self) -> Level {
        Level::Dangerous
    }
    fn idempotent(&self) -> bool {
        true
    }
    async fn publish(&self, job: &Job, key: &TagKey, image: &Image) -> Result<Image, Error> {
        push_image(&self.shared, job, key, image).await
    }
}

/// Tags `image` as `key.tag` on `key.host` and pushes it; returns the
/// pushed `repo@sha256:…`.
pub(crate) async fn push_image(shared: &Shared, job: &Job, key: &TagKey, image: &Image) -> Result<Image, Error> {
    {
        tag_image(shared, job, key, image).await?;
        let host = shared.host(&key.host)?;
        let docker = host.client().await?;
        let tag = &key.tag;
        let credentials = shared.credentials_for(tag).await?;
        job.log(&format!("Pushing {tag}"));
        let options = bollard::query_parameters::PushImageOptionsBuilder::new().tag(tag.tag_or_latest()).build();
        let mut stream =
            docker.push_image(tag.name(), Some(options), credentials.as_ref().map(|c| c.for_daemon(tag.registry())));
        let mut last = String::new();
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| DockerError::daemon(host.name().to_owned(), format!("pushing {tag}"), &e))?;
            if let Some(detail) = info.error_detail {
                return Err(Error::msg(format!("pushing {tag}: {}", detail.message.unwrap_or_default())));
            }
            log_progress(job, &mut last, info.status.as_deref(), None);
        }
        let inspect = docker
            .inspect_image(tag.as_str())
            .await
            .map_err(|e| DockerError::daemon(host.name().to_owned(), format!("inspecting {tag} after the push"), &e))?;
        let prefix = format!("{}@", tag.name());
        let pushed = inspect
            .repo_digests
            .unwrap_or_default()
            .into_iter()
            .find(|d| d.starts_with(&prefix))
            .ok_or_else(|| Error::msg(format!("the push of {tag} left no {prefix}sha256:… digest")))?;
        job.log(&format!("Pushed {pushed}"));
        Ok(Image(pushed))
    }
}

/// The publisher behind `Docker::push_manifest`.
pub(crate) struct PushManifest {
    pub(crate) shared: Shared,
}

#[async_trait]
impl Publisher for PushManifest {
    const ID: &'static str = "docker-push-manifest";
    type Key = ImageRef;
    type Value = Vec<Image>;
    type Outcome = Image;

    fn describe(&self, tag: &ImageRef, images: &Vec<Image>) -> Option<String> {
        let short: Vec<&str> = images.iter().map(Image::short).collect();
        Some(format!("docker manifest push {tag} [{}]", short.join(", ")))
    }
    fn level(&self) -> Level {
        Level::Dangerous
    }
    fn auto_cancel(&self) -> bool {
        true
    }
    fn idempotent(&self) -> bool {
        true
    }
    async fn publish(&self, job: &Job, tag: &ImageRef, images: &Vec<Image>) -> Result<Image, Error> {
        if images.is_empty() {
            return Err(Error::msg(format!("no images for the manifest list {tag}")));
        }
        let credentials = self.shared.credentials_for(tag).await?;
        let registry = self.shared.registry(tag.registry(), credentials)?;
        let mut descriptors = Vec::new();
        for image in images {
            let r = ImageRef::parse(image.as_str()).map_err(|e| Error::msg(e.to_string()))?;
            let digest = r.digest().ok_or_else(|| {
                Error::msg(format!("{image} is not pushed (a manifest list refers to repo@sha256:… images)"))
            })?;
            if r.registry() != tag.registry() {
                return Err(Error::msg(format!(
                    "{image} is not on {}: push each architecture's image to the list's registry",
                    tag.registry()
                )));
            }
            if r.repository() != tag.repository() {
                job.log(&format!("Mounting {image} into {}", tag.repository()));
                registry.copy_manifest(r.repository(), tag.repository(), digest).await?;
            }
            let descriptor = registry.descriptor(tag.repository(), digest).await?;
            let platform = descriptor.platform.as_ref().map_or("?".into(), |p| format!("{}/{}", p.os, p.architecture));
            job.log(&format!("{digest}: {platform}, {} bytes", descriptor.size));
            descriptors.push(descriptor);
        }
        let mut platforms: Vec<_> = descriptors.iter().filter_map(|d| d.platform.clone()).collect();
        platforms.sort_by(|a, b| (&a.os, &a.architecture, &a.variant).cmp(&(&b.os, &b.architecture, &b.variant)));
        if platforms.windows(2).any(|w| w[0] == w[1]) {
            return Err(Error::msg(format!("two images for {tag} are for the same platform")));
        }
        let digest = registry.put_index(tag.repository(), tag.tag_or_latest(), &descriptors).await?;
        let pushed = tag.with_digest(&digest);
        job.log(&format!("Pushed {pushed}"));
        Ok(Image(pushed))
    }
}
