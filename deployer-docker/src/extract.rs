//! `docker-extract`: a file copied out of an image (a unikernel's
//! `/unikernel.hvt`, a static site's build), through a container that is
//! created, never started, and removed.

use std::path::PathBuf;

use async_trait::async_trait;
use deployer_core::cache::Builder;
use deployer_core::{Error, Job, Level, ResultExt};
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};

use crate::error::{daemon_message, DockerError};
use crate::image::Image;
use crate::Shared;

/// What an extraction is keyed by.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtractKey {
    /// The host's name.
    pub host: String,
    /// The image.
    pub image: Image,
    /// The absolute path of the file in the image.
    pub path: String,
}

/// The builder behind `Docker::extract`.
pub(crate) struct Extract {
    pub(crate) shared: Shared,
    /// Where extracted files go.
    pub(crate) dir: PathBuf,
}

#[async_trait]
impl Builder for Extract {
    const ID: &'static str = "docker-extract";
    type Key = ExtractKey;
    type Value = PathBuf;

    fn describe(&self, key: &ExtractKey) -> Option<String> {
        Some(format!("docker cp {}:{} on {}", key.image.short(), key.path, key.host))
    }
    fn level(&self, _: &ExtractKey) -> Level {
        Level::Harmless
    }
    async fn build(&self, job: &Job, key: &ExtractKey) -> Result<PathBuf, Error> {
        if !key.path.starts_with('/') || key.path.ends_with('/') || key.path.split('/').any(|c| c == "..") {
            return Err(Error::msg(format!("{:?} is not an absolute path to a file", key.path)));
        }
        let host = self.shared.host(&key.host)?;
        let docker = host.client().await?;
        let daemon = |what: String| {
            let host = host.name().to_owned();
            move |e: bollard::errors::Error| Error::from(DockerError::daemon(host, what, &e))
        };
        let config = bollard::models::ContainerCreateBody {
            image: Some(key.image.to_string()),
            // Never started; a command is needed for images without one.
            cmd: Some(vec!["/extract".to_owned()]),
            ..Default::default()
        };
        let created = docker
            .create_container(None::<bollard::query_parameters::CreateContainerOptions>, config)
            .await
            .map_err(daemon(format!("creating a container of {}", key.image)))?;
        let id = created.id;
        let dir = self.dir.join(format!("{}-{}", key.image.short(), crate::host::short_hash(&key.path)));
        let result = async {
            std::fs::create_dir_all(&dir).context(format!("creating {}", dir.display()))?;
            let options = bollard::query_parameters::DownloadFromContainerOptionsBuilder::new().path(&key.path).build();
            let stream = docker
                .download_from_container(&id, Some(options))
                .map_err(|e| std::io::Error::other(daemon_message(&e)));
            let tar = tokio_util::io::StreamReader::new(stream);
            job.log(&format!("Copying {} out of {}", key.path, key.image));
            job.exec_with_input(tokio::process::Command::new("tar").arg("-x").arg("-C").arg(&dir), tar)
                .await
                .map_err(|e| e.context(format!("copying {} out of {} (is it in the image?)", key.path, key.image)))?;
            let name = key.path.rsplit('/').next().unwrap_or("file");
            let file = dir.join(name);
            if !file.is_file() {
                return Err(Error::msg(format!("{} in {} is not a file", key.path, key.image)));
            }
            Ok(file)
        }
        .await;
        let remove = bollard::query_parameters::RemoveContainerOptionsBuilder::new().force(true).build();
        if let Err(e) = docker.remove_container(&id, Some(remove)).await {
            job.log(&format!("Could not remove container {id}: {}", daemon_message(&e)));
        }
        result
    }
}
