//! Drift: what a deployed service runs, read on a schedule and compared
//! with what was deployed. A difference (an image changed by hand, tasks
//! that keep failing) is an error on the service's check box; it is
//! repaired only when someone asks (a rebuild of the deploy job).

use std::time::Duration;

use bollard::models::TaskState;
use deployer_core::{Error, Monitor};

use crate::error::{is_not_found, DockerError};
use crate::image::Image;
use crate::service::Deployed;
use crate::Shared;

/// What a service runs now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveService {
    /// Whether the service exists.
    pub exists: bool,
    /// The image its spec names.
    pub image: Option<String>,
    /// Tasks running.
    pub running: usize,
    /// Tasks wanted (replicas, or the tasks of a global service).
    pub wanted: usize,
    /// Whether an update or rollback is in progress (ours or anyone's).
    pub updating: bool,
    /// When this was read (Unix milliseconds).
    pub read_at: i64,
    /// When this process last started deploying the service (Unix
    /// milliseconds), if it has.
    pub deploy_started: Option<i64>,
}

/// Now, in Unix milliseconds (deploys and readings are compared by it).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Reads `name` on `host`.
async fn read(shared: &Shared, host: &str, name: &str) -> Result<LiveService, Error> {
    let read_at = now_ms();
    let docker_host = shared.host(host)?;
    let docker = docker_host.client().await?;
    let service = match docker.inspect_service(name, None).await {
        Ok(s) => s,
        Err(e) if is_not_found(&e) => {
            let deploy_started = shared.deploy_started(host, name);
            return Ok(LiveService {
                exists: false,
                image: None,
                running: 0,
                wanted: 0,
                updating: false,
                read_at,
                deploy_started,
            });
        }
        Err(e) => return Err(DockerError::daemon(host.to_owned(), format!("inspecting {name}"), &e).into()),
    };
    let spec = service.spec.clone().unwrap_or_default();
    let image = spec.task_template.as_ref().and_then(|t| t.container_spec.as_ref()).and_then(|c| c.image.clone());
    let filters = std::collections::HashMap::from([("service", vec![name]), ("desired-state", vec!["running"])]);
    let options = bollard::query_parameters::ListTasksOptionsBuilder::new().filters(&filters).build();
    let tasks = docker
        .list_tasks(Some(options))
        .await
        .map_err(|e| DockerError::daemon(host.to_owned(), format!("listing the tasks of {name}"), &e))?;
    let running = tasks.iter().filter(|t| t.status.as_ref().and_then(|s| s.state) == Some(TaskState::RUNNING)).count();
    let wanted = spec
        .mode
        .as_ref()
        .and_then(|m| m.replicated.as_ref())
        .and_then(|r| r.replicas)
        .map_or(tasks.len(), |r| r as usize);
    use bollard::models::ServiceUpdateStatusStateEnum as S;
    let updating = shared.deploying(host, name)
        || matches!(service.update_status.as_ref().and_then(|s| s.state), Some(S::UPDATING | S::ROLLBACK_STARTED));
    let deploy_started = shared.deploy_started(host, name);
    Ok(LiveService { exists: true, image, running, wanted, updating, read_at, deploy_started })
}

/// A monitor of `name` on `host`, read every `every` (and on refresh).
pub(crate) fn monitor(shared: Shared, host: &str, name: &str, every: Duration) -> Monitor<LiveService> {
    let (host, name) = (host.to_owned(), name.to_owned());
    Monitor::poll(&format!("docker service {name} on {host}: what runs"), every, move || {
        let (shared, host, name) = (shared.clone(), host.clone(), name.clone());
        async move { read(&shared, &host, &name).await }
    })
}

/// Whether `live` is what `deployed` left; the difference as an error.
pub(crate) fn check(deployed: &Deployed, live: &LiveService) -> Result<Deployed, Error> {
    // An update in progress, a reading from before the deploy (a fresh one
    // is on its way), or a deploy newer than the one shown (its outcome is
    // on its way: the stage still shows the previous one): nothing to
    // compare yet.
    if live.updating || live.read_at < deployed.at || live.deploy_started.is_some_and(|s| s > deployed.at) {
        return Ok(deployed.clone());
    }
    if !live.exists {
        return Err(Error::msg(format!("drift: the service {} no longer exists (removed by hand?)", deployed.name)));
    }
    let image = &deployed.image;
    let matches = |s: &str| s == image.as_str() || s.ends_with(&format!("@{}", image.digest()));
    match &live.image {
        Some(running) if !matches(running) => Err(Error::msg(format!(
            "drift: {} runs {running}, but {} was deployed (changed by hand?); rebuild the deploy to restore it",
            deployed.name, image
        ))),
        _ if live.running < live.wanted => Err(Error::msg(format!(
            "drift: {} has {}/{} tasks running {} (are they failing?)",
            deployed.name,
            live.running,
            live.wanted,
            Image::short(image)
        ))),
        _ => Ok(deployed.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_is_an_image_or_a_replica_count() {
        let d = Deployed { name: "web".into(), image: Image(format!("r/web@sha256:{}", "a".repeat(64))), at: 1000 };
        let ok = LiveService {
            exists: true,
            image: Some(format!("r/web:live@sha256:{}", "a".repeat(64))),
            running: 2,
            wanted: 2,
            updating: false,
            read_at: 2000,
            deploy_started: Some(900),
        };
        assert_eq!(check(&d, &ok).unwrap(), d);
        let by_hand = LiveService { image: Some("r/web:debug".into()), ..ok.clone() };
        assert!(check(&d, &by_hand).unwrap_err().message().contains("runs r/web:debug"));
        let failing = LiveService { running: 1, ..ok.clone() };
        assert!(check(&d, &failing).unwrap_err().message().contains("1/2 tasks"));
        let updating = LiveService { updating: true, ..by_hand.clone() };
        assert!(check(&d, &updating).is_ok(), "an update in progress is not drift");
        let stale = LiveService { read_at: 500, ..by_hand };
        assert!(check(&d, &stale).is_ok(), "a reading from before the deploy is not drift");
        let gone = LiveService { exists: false, ..ok.clone() };
        assert!(check(&d, &gone).unwrap_err().message().contains("no longer exists"));
        let not_yet = LiveService { exists: false, read_at: 500, ..ok.clone() };
        assert!(check(&d, &not_yet).is_ok(), "before the first deploy the service may not exist yet");
        // A newer deploy has finished but the stage still shows the one
        // before (its outcome is on its way): the new image is not drift.
        let next = LiveService { image: Some("r/web@sha256:bbbb".into()), deploy_started: Some(1500), ..ok };
        assert!(check(&d, &next).is_ok(), "the next deploy's image is not drift");
        let next_shown = Deployed { at: 1600, ..d.clone() };
        assert!(check(&next_shown, &next).is_err(), "once its outcome shows, a difference is drift again");
    }
}
