//! `docker-run` / `docker-pread`: a command run in a fresh container of an
//! image; its output logged (and for `pread`, returned); the container
//! always removed.

use async_trait::async_trait;
use bollard::container::LogOutput;
use deployer_core::cache::Builder;
use deployer_core::{Error, ErrorKind, Job, Level};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::error::{daemon_message, DockerError};
use crate::image::Image;
use crate::Shared;

/// What a run is keyed by.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunKey {
    /// The host's name.
    pub host: String,
    /// The image.
    pub image: Image,
    /// The command and its arguments (empty: the image's own).
    pub args: Vec<String>,
}

/// The builder behind `Docker::run` and `Docker::pread`.
pub(crate) struct Run {
    pub(crate) shared: Shared,
    /// Whether standard output is the result (`pread`).
    pub(crate) capture: bool,
}

#[async_trait]
impl Builder for Run {
    const ID: &'static str = "docker-run";
    type Key = RunKey;
    type Value = String;

    fn describe(&self, key: &RunKey) -> Option<String> {
        let verb = if self.capture { "docker pread" } else { "docker run" };
        Some(format!("{verb} {} {} on {}", key.image.short(), key.args.join(" "), key.host))
    }
    fn level(&self, _: &RunKey) -> Level {
        Level::Average
    }
    fn auto_cancel(&self) -> bool {
        true
    }
    async fn build(&self, job: &Job, key: &RunKey) -> Result<String, Error> {
        let host = self.shared.host(&key.host)?;
        let docker = host.client().await?;
        let daemon = |what: String| {
            let host = host.name().to_owned();
            move |e: bollard::errors::Error| Error::from(DockerError::daemon(host.clone(), what.clone(), &e))
        };
        let config = bollard::models::ContainerCreateBody {
            image: Some(key.image.to_string()),
            cmd: (!key.args.is_empty()).then(|| key.args.clone()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let created = docker
            .create_container(None::<bollard::query_parameters::CreateContainerOptions>, config)
            .await
            .map_err(daemon(format!("creating a container of {}", key.image)))?;
        let id = created.id;
        job.log(&format!("Running {} {} in container {}", key.image, key.args.join(" "), &id[..12.min(id.len())]));
        let result = self.run_container(job, &docker, &id, daemon(format!("running container {id}"))).await;
        let remove = bollard::query_parameters::RemoveContainerOptionsBuilder::new().force(true).build();
        if let Err(e) = docker.remove_container(&id, Some(remove)).await {
            job.log(&format!("Could not remove container {id}: {}", daemon_message(&e)));
        }
        result
    }
}

impl Run {
    async fn run_container(
        &self,
        job: &Job,
        docker: &bollard::Docker,
        id: &str,
        daemon: impl Fn(bollard::errors::Error) -> Error,
    ) -> Result<String, Error> {
        docker.start_container(id, None::<bollard::query_parameters::StartContainerOptions>).await.map_err(&daemon)?;
        let options =
            bollard::query_parameters::LogsOptionsBuilder::new().follow(true).stdout(true).stderr(true).build();
        let mut logs = docker.logs(id, Some(options));
        let (mut out, mut err) = (job.lines(), job.lines());
        let mut captured = Vec::new();
        let cancelled = job.cancelled();
        tokio::pin!(cancelled);
        loop {
            let item = tokio::select! {
                item = logs.next() => item,
                _ = &mut cancelled => {
                    let _ = docker.kill_container(id, None::<bollard::query_parameters::KillContainerOptions>).await;
                    return Err(job.cancellation_error().unwrap_or_else(|| Error::new(ErrorKind::Cancelled, "Cancelled")));
                }
            };
            let Some(item) = item else { break };
            match item.map_err(&daemon)? {
                LogOutput::StdOut { message } => {
                    if self.capture {
                        captured.extend_from_slice(&message);
                    }
                    out.push(&message);
                }
                LogOutput::StdErr { message } => err.push(&message),
                _ => {}
            }
        }
        out.finish();
        err.finish();
        let mut wait = docker.wait_container(id, None::<bollard::query_parameters::WaitContainerOptions>);
        let code = match wait.next().await {
            Some(Ok(w)) => w.status_code,
            // A non-zero exit comes back as an error carrying the code.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
            Some(Err(e)) => return Err(daemon(e)),
            None => 0,
        };
        if code != 0 {
            let code = i32::try_from(code).unwrap_or(i32::MAX);
            return Err(Error::new(
                ErrorKind::Exit { code: Some(code), signal: None },
                format!("the container exited with status {code}"),
            ));
        }
        Ok(String::from_utf8_lossy(&captured).into_owned())
    }
}
