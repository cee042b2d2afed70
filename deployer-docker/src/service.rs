//! `docker-service`: a Swarm service updated to an image, gated on health.
//!
//! The update changes the image only (the rest of the spec is kept) and
//! sends the registry credentials along (`--with-registry-auth`). Then it
//! waits for the update to complete and for the new tasks to stay running
//! through a monitoring window. If the update pauses, rolls back, or a new
//! task fails in the window, the service is rolled back to its previous
//! spec and the job fails with the task's own error.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bollard::models::{Service, ServiceSpec, ServiceUpdateStatusStateEnum as UpdateState, Task, TaskState};
use deployer_core::cache::Publisher;
use deployer_core::{Error, Job, Level};
use serde::{Deserialize, Serialize};

use crate::error::{is_not_found, DockerError};
use crate::host::DockerHost;
use crate::image::{Image, ImageRef};
use crate::Shared;

/// How a service is updated.
#[derive(Clone, Debug)]
pub struct ServiceOptions {
    /// How long new tasks must keep running after the update completes
    /// (10 s by default).
    pub monitor: Duration,
    /// How long the whole update may take before it is rolled back
    /// (10 minutes by default).
    pub deadline: Duration,
    /// A spec to create the service from if it does not exist (the first
    /// deploy); without one, a missing service is an error.
    pub create: Option<ServiceSpec>,
    /// How often what runs is compared with what was deployed (a minute by
    /// default).
    pub drift_check: Duration,
}

impl Default for ServiceOptions {
    fn default() -> ServiceOptions {
        ServiceOptions {
            monitor: Duration::from_secs(10),
            deadline: Duration::from_secs(600),
            create: None,
            drift_check: crate::DRIFT_CHECK,
        }
    }
}

/// What a service update is keyed by.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServiceKey {
    /// The host's name.
    pub host: String,
    /// The service's name.
    pub name: String,
}

/// A service running an image: what a deploy leaves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployed {
    /// The service.
    pub name: String,
    /// The image it runs.
    pub image: Image,
    /// When the deploy was confirmed (Unix milliseconds).
    pub at: i64,
}

/// The publisher behind `Docker::service`.
pub(crate) struct UpdateService {
    pub(crate) shared: Shared,
    /// Each service's options.
    pub(crate) options: std::sync::Arc<std::sync::RwLock<HashMap<ServiceKey, ServiceOptions>>>,
}

/// How often the service's state is read while waiting.
const POLL: Duration = Duration::from_millis(250);

fn daemon(host: &DockerHost, what: String) -> impl FnOnce(bollard::errors::Error) -> Error + '_ {
    move |e| Error::from(DockerError::daemon(host.name(), what, &e))
}

/// The service's image (as its spec names it).
fn spec_image(spec: &ServiceSpec) -> Option<&str> {
    spec.task_template.as_ref()?.container_spec.as_ref()?.image.as_deref()
}

/// Whether a spec's image is `image` (a spec may pin `tag@digest` for a
/// digest the image names as `repo@digest`).
fn same_image(spec: &ServiceSpec, image: &Image) -> bool {
    spec_image(spec).is_some_and(|s| is_image(s, image))
}

/// Whether an image reference from the daemon (`repo:tag@sha256:…`,
/// `repo@sha256:…`) is `image`.
fn is_image(reference: &str, image: &Image) -> bool {
    reference == image.as_str() || reference.ends_with(&format!("@{}", image.digest()))
}

/// Whether task `t` is of `image`.
fn task_of(t: &Task, image: &Image) -> bool {
    t.spec
        .as_ref()
        .and_then(|s| s.container_spec.as_ref())
        .and_then(|c| c.image.as_deref())
        .is_some_and(|i| is_image(i, image))
}

/// Whether swarm is already rolling `service` out on `image`: its update is
/// in progress, or a task of `image` that should run is on its way (being
/// scheduled, pulled or started). Forcing an update then would replace
/// tasks swarm is starting for this very image: after a restart of the
/// deployer in the middle of a deploy, that would update the service twice
/// for one value.
fn rolling_out(service: &Service, tasks: &[Task], image: &Image) -> bool {
    let updating = service.update_status.as_ref().and_then(|u| u.state) == Some(UpdateState::UPDATING);
    let on_its_way = tasks.iter().any(|t| {
        task_of(t, image)
            && matches!(
                t.status.as_ref().and_then(|s| s.state),
                Some(
                    TaskState::NEW
                        | TaskState::ALLOCATED
                        | TaskState::PENDING
                        | TaskState::ASSIGNED
                        | TaskState::ACCEPTED
                        | TaskState::PREPARING
                        | TaskState::READY
                        | TaskState::STARTING
                )
            )
    });
    updating || on_its_way
}

/// The tasks of `name` that should be running.
async fn running_tasks(docker: &bollard::Docker, host: &DockerHost, name: &str) -> Result<Vec<Task>, Error> {
    let filters: HashMap<&str, Vec<&str>> =
        HashMap::from([("service", vec![name]), ("desired-state", vec!["running"])]);
    let options = bollard::query_parameters::ListTasksOptionsBuilder::new().filters(&filters).build();
    docker.list_tasks(Some(options)).await.map_err(daemon(host, format!("listing the tasks of {name}")))
}

/// The newest failure among the service's tasks running `image`, if any.
async fn task_failure(docker: &bollard::Docker, name: &str, image: &Image) -> Option<String> {
    let filters: HashMap<&str, Vec<&str>> = HashMap::from([("service", vec![name])]);
    let options = bollard::query_parameters::ListTasksOptionsBuilder::new().filters(&filters).build();
    let mut tasks = docker.list_tasks(Some(options)).await.ok()?;
    tasks.sort_by(|a, b| b.updated_at.cmp(&a.updated_at));
    tasks.into_iter().find_map(|t| {
        let runs_image = task_of(&t, image);
        let status = t.status.as_ref()?;
        let failed = matches!(status.state, Some(TaskState::FAILED | TaskState::REJECTED));
        (runs_image && failed).then(|| {
            let err = status.err.clone().unwrap_or_default();
            let code = status.container_status.as_ref().and_then(|c| c.exit_code);
            match code {
                Some(code) if err.is_empty() => format!("a task exited with status {code}"),
                _ => format!("a task failed: {err}"),
            }
        })
    })
}

/// How many replicas the service wants (`None`: global).
fn wanted(service: &Service) -> Option<u64> {
    service.spec.as_ref()?.mode.as_ref()?.replicated.as_ref()?.replicas.map(|r| r as u64)
}

/// Whether the service runs `image` everywhere it should.
async fn converged(
    docker: &bollard::Docker,
    host: &DockerHost,
    service: &Service,
    name: &str,
    image: &Image,
) -> Result<(usize, usize), Error> {
    let (running, want, _) = converged_since(docker, host, service, name, image).await?;
    Ok((running, want))
}

/// Like [`converged`], with when the youngest of the running new tasks
/// started running (the daemon's clock).
async fn converged_since(
    docker: &bollard::Docker,
    host: &DockerHost,
    service: &Service,
    name: &str,
    image: &Image,
) -> Result<(usize, usize, Option<chrono::DateTime<chrono::FixedOffset>>), Error> {
    let tasks = running_tasks(docker, host, name).await?;
    let new: Vec<_> = tasks
        .iter()
        .filter(|t| task_of(t, image) && t.status.as_ref().and_then(|s| s.state) == Some(TaskState::RUNNING))
        .collect();
    let youngest = new
        .iter()
        .map(|t| t.status.as_ref().and_then(|s| s.timestamp.as_deref()).and_then(daemon_time))
        .collect::<Option<Vec<_>>>()
        .and_then(|times| times.into_iter().max());
    let want = wanted(service).map_or(tasks.len().max(1), |w| w as usize);
    Ok((new.len(), want, youngest))
}

/// A timestamp as the daemon writes it (RFC 3339, nanoseconds).
fn daemon_time(text: &str) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    chrono::DateTime::parse_from_rfc3339(text).ok()
}

/// How long swarm's own update monitor watched the new tasks before it
/// called the update complete: from the youngest one's start to the
/// update's completion, both on the daemon's clock (no clock skew with
/// this machine).
fn watched_by_swarm(completed_at: Option<&str>, youngest: Option<chrono::DateTime<chrono::FixedOffset>>) -> Duration {
    match (completed_at.and_then(daemon_time), youngest) {
        (Some(done), Some(started)) => (done - started).to_std().unwrap_or_default(),
        _ => Duration::ZERO,
    }
}

impl UpdateService {
    async fn inspect(&self, docker: &bollard::Docker, host: &DockerHost, name: &str) -> Result<Option<Service>, Error> {
        match docker.inspect_service(name, None).await {
            Ok(s) => Ok(Some(s)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(daemon(host, format!("inspecting the service {name}"))(e)),
        }
    }

    /// Waits for the update to end; `Err(reason)` if it must be rolled back.
    async fn watch_update(
        &self,
        options: &ServiceOptions,
        job: &Job,
        (docker, host): (&bollard::Docker, &DockerHost),
        name: &str,
        image: &Image,
        started: Instant,
    ) -> Result<Result<(), String>, Error> {
        let mut last_state = None;
        let mut healthy_since: Option<Instant> = None;
        loop {
            if let Some(e) = job.cancellation_error() {
                return Ok(Err(format!("the job was cancelled ({})", e.message())));
            }
            if started.elapsed() > options.deadline {
                return Ok(Err(format!("the update did not converge within {} s", options.deadline.as_secs())));
            }
            let service = self
                .inspect(docker, host, name)
                .await?
                .ok_or_else(|| Error::msg(format!("the service {name} disappeared during its update")))?;
            let status = service.update_status.clone().unwrap_or_default();
            if status.state != last_state {
                job.log(&format!(
                    "Update of {name}: {}{}",
                    status.state.map_or("-".to_owned(), |s| s.to_string()),
                    status.message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default()
                ));
                last_state = status.state;
            }
            match status.state {
                Some(UpdateState::PAUSED)
                | Some(UpdateState::ROLLBACK_STARTED)
                | Some(UpdateState::ROLLBACK_PAUSED)
                | Some(UpdateState::ROLLBACK_COMPLETED) => {
                    let why = task_failure(docker, name, image).await.or(status.message).unwrap_or_default();
                    return Ok(Err(format!(
                        "the update {}: {why}",
                        status.state.map_or(String::new(), |s| s.to_string())
                    )));
                }
                Some(UpdateState::UPDATING) => healthy_since = None,
                _ => {
                    // Completed (or no update to run): the new tasks must run,
                    // and keep running through the monitoring window. The
                    // window counts from the tasks' start, so the time swarm's
                    // own update monitor already watched them counts: with a
                    // swarm monitor as long as the window, the deploy is
                    // confirmed as the update completes.
                    let (running, want, youngest) = converged_since(docker, host, &service, name, image).await?;
                    if let Some(why) = task_failure(docker, name, image).await {
                        return Ok(Err(why));
                    }
                    if running >= want {
                        let credit = match status.state {
                            Some(UpdateState::COMPLETED) => watched_by_swarm(status.completed_at.as_deref(), youngest),
                            _ => Duration::ZERO,
                        };
                        let since = *healthy_since.get_or_insert_with(|| {
                            let now = Instant::now();
                            now.checked_sub(credit.min(options.monitor)).unwrap_or(now)
                        });
                        if since.elapsed() >= options.monitor {
                            let window = options.monitor.as_secs_f64();
                            if credit >= options.monitor {
                                job.log(&format!(
                                    "{name}: {running}/{want} tasks running {image}; confirmed as the update \
                                     completed: swarm's update monitor watched them for {:.1} s (the window is \
                                     {window:.0} s)",
                                    credit.as_secs_f64()
                                ));
                            } else {
                                job.log(&format!(
                                    "{name}: {running}/{want} tasks running {image} for {window:.0} s ({:.1} s of \
                                     it watched by swarm's update monitor)",
                                    credit.as_secs_f64()
                                ));
                            }
                            return Ok(Ok(()));
                        }
                    } else {
                        healthy_since = None;
                    }
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Rolls `name` back to its previous spec and waits for it.
    async fn roll_back(
        &self,
        options: &ServiceOptions,
        job: &Job,
        docker: &bollard::Docker,
        host: &DockerHost,
        name: &str,
        previous: &ServiceSpec,
    ) -> Result<(), Error> {
        let service = self
            .inspect(docker, host, name)
            .await?
            .ok_or_else(|| Error::msg(format!("the service {name} disappeared before its rollback")))?;
        let state = service.update_status.as_ref().and_then(|s| s.state);
        if state != Some(UpdateState::ROLLBACK_COMPLETED) && state != Some(UpdateState::ROLLBACK_STARTED) {
            job.log(&format!("Rolling {name} back to {}", spec_image(previous).unwrap_or("its previous spec")));
            let version = service.version.and_then(|v| v.index).unwrap_or_default();
            let update = bollard::query_parameters::UpdateServiceOptionsBuilder::new()
                .version(i32::try_from(version).unwrap_or(i32::MAX))
                .rollback("previous")
                .build();
            let spec = service.spec.clone().unwrap_or_default();
            docker
                .update_service(name, spec, update, None)
                .await
                .map_err(daemon(host, format!("rolling {name} back")))?;
        }
        let started = Instant::now();
        loop {
            let service = self.inspect(docker, host, name).await?;
            let state = service.as_ref().and_then(|s| s.update_status.as_ref()).and_then(|s| s.state);
            if state == Some(UpdateState::ROLLBACK_COMPLETED) {
                job.log(&format!("{name} is back on {}", spec_image(previous).unwrap_or("its previous spec")));
                return Ok(());
            }
            if state == Some(UpdateState::ROLLBACK_PAUSED) || started.elapsed() > options.deadline {
                return Err(Error::msg(format!(
                    "the rollback of {name} did not complete ({state:?}): check the service by hand"
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Asks for `service` (called `name`) to run `image`, keeping the rest of
/// its spec (or, with `force`, to remake its tasks), with `credentials` for
/// the registry. Only the request: nothing is waited for.
pub(crate) async fn send_update(
    docker: &bollard::Docker,
    host: &DockerHost,
    service: &Service,
    name: &str,
    image: &Image,
    force: bool,
    credentials: Option<bollard::auth::DockerCredentials>,
) -> Result<(), Error> {
    let mut spec = service.spec.clone().unwrap_or_default();
    let version = service.version.as_ref().and_then(|v| v.index).unwrap_or_default();
    let task = spec.task_template.get_or_insert_with(Default::default);
    if force {
        task.force_update = Some(task.force_update.unwrap_or(0) + 1);
    }
    task.container_spec.get_or_insert_with(Default::default).image = Some(image.to_string());
    let update = bollard::query_parameters::UpdateServiceOptionsBuilder::new()
        .version(i32::try_from(version).unwrap_or(i32::MAX))
        .build();
    docker
        .update_service(name, spec, update, credentials)
        .await
        .map(|_| ())
        .map_err(daemon(host, format!("updating the service {name}")))
}

/// The credentials for `image`'s registry, for the daemon.
pub(crate) async fn credentials_for(
    shared: &Shared,
    image: &Image,
) -> Result<Option<bollard::auth::DockerCredentials>, Error> {
    let Ok(r) = ImageRef::parse(image.as_str()) else { return Ok(None) };
    Ok(shared.credentials_for(&r).await?.map(|c| c.for_daemon(r.registry())))
}

/// Sets `name` on `host` to `image` without waiting (what `docker service
/// update --detach --image` does).
pub(crate) async fn set_image(shared: &Shared, host: &DockerHost, name: &str, image: &Image) -> Result<(), Error> {
    let docker = host.client().await?;
    let service = match docker.inspect_service(name, None).await {
        Ok(s) => s,
        Err(e) if is_not_found(&e) => return Err(Error::msg(format!("there is no service {name} on {}", host.name()))),
        Err(e) => return Err(daemon(host, format!("inspecting the service {name}"))(e)),
    };
    let credentials = credentials_for(shared, image).await?;
    send_update(&docker, host, &service, name, image, false, credentials).await
}

#[async_trait]
impl Publisher for UpdateService {
    const ID: &'static str = "docker-service";
    type Key = ServiceKey;
    type Value = Image;
    type Outcome = Deployed;

    fn describe(&self, key: &ServiceKey, image: &Image) -> Option<String> {
        Some(format!("docker service {} := {} on {}", key.name, image, key.host))
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
    async fn publish(&self, job: &Job, key: &ServiceKey, image: &Image) -> Result<Deployed, Error> {
        let _deploying = self.shared.deploying_guard(&key.host, &key.name);
        let result = self.deploy(job, key, image).await;
        self.shared.refresh_live(&key.host, &key.name);
        result
    }
}

impl UpdateService {
    async fn deploy(&self, job: &Job, key: &ServiceKey, image: &Image) -> Result<Deployed, Error> {
        let options = self.options.read().unwrap_or_else(|e| e.into_inner()).get(key).cloned().unwrap_or_default();
        let host = self.shared.host(&key.host)?;
        let docker = host.client().await?;
        let name = &key.name;
        let credentials = credentials_for(&self.shared, image).await?;
        let started = Instant::now();
        let Some(service) = self.inspect(&docker, &host, name).await? else {
            let Some(template) = &options.create else {
                return Err(Error::msg(format!(
                    "there is no service {name} on {}: deploy it first (docker stack deploy), or give a spec to create it",
                    host.name()
                )));
            };
            let mut spec = template.clone();
            spec.name = Some(name.clone());
            let container = spec
                .task_template
                .get_or_insert_with(Default::default)
                .container_spec
                .get_or_insert_with(Default::default);
            container.image = Some(image.to_string());
            let created = crate::compose::ensure_networks(&docker, &spec)
                .await
                .map_err(daemon(&host, format!("creating the networks of the service {name}")))?;
            for network in created {
                job.log(&format!("Created the overlay network {network}"));
            }
            job.log(&format!("Creating the service {name} with {image}"));
            docker
                .create_service(spec, credentials)
                .await
                .map_err(daemon(&host, format!("creating the service {name}")))?;
            return match self.watch_update(&options, job, (&docker, &host), name, image, started).await? {
                Ok(()) => Ok(Deployed { name: name.clone(), image: image.clone(), at: crate::drift::now_ms() }),
                Err(why) => Err(Error::msg(format!("the new service {name} is not healthy: {why}"))),
            };
        };
        let previous = service.spec.clone().unwrap_or_default();
        let (running, want) = converged(&docker, &host, &service, name, image).await?;
        let force = if same_image(&previous, image) {
            if running >= want {
                job.log(&format!("{name} already runs {image} ({running}/{want} tasks)"));
                return Ok(Deployed { name: name.clone(), image: image.clone(), at: crate::drift::now_ms() });
            }
            // The right image, its tasks on their way (a deploy cut by a
            // restart of the deployer): watch swarm finish it.
            if rolling_out(&service, &running_tasks(&docker, &host, name).await?, image) {
                job.log(&format!(
                    "{name} is already being rolled out on {image} ({running}/{want} tasks run): watching it"
                ));
                return match self.watch_update(&options, job, (&docker, &host), name, image, started).await? {
                    Ok(()) => Ok(Deployed { name: name.clone(), image: image.clone(), at: crate::drift::now_ms() }),
                    Err(why) => {
                        job.log(&format!("{name} is not healthy on {image}: {why}"));
                        // Back to swarm's previous spec, the one before this rollout.
                        self.roll_back(&options, job, &docker, &host, name, &ServiceSpec::default()).await?;
                        Err(Error::msg(format!("{name} was rolled back: {why}")))
                    }
                };
            }
            // The right image, not running: make the tasks again.
            job.log(&format!("{name} has {image} but {running}/{want} tasks run: forcing an update"));
            true
        } else {
            job.log(&format!("Updating {name} from {} to {image}", spec_image(&previous).unwrap_or("?")));
            false
        };
        send_update(&docker, &host, &service, name, image, force, credentials).await?;
        match self.watch_update(&options, job, (&docker, &host), name, image, started).await {
            Ok(Ok(())) => Ok(Deployed { name: name.clone(), image: image.clone(), at: crate::drift::now_ms() }),
            Ok(Err(why)) => {
                job.log(&format!("{name} is not healthy on {image}: {why}"));
                self.roll_back(&options, job, &docker, &host, name, &previous).await?;
                Err(Error::msg(format!("{name} was rolled back: {why}")))
            }
            Err(e) => {
                // The daemon went away mid-update: try to restore the old spec.
                job.log(&format!("Lost track of the update of {name}: {}", e.message()));
                if let Err(r) = self.roll_back(&options, job, &docker, &host, name, &previous).await {
                    job.log(&format!("Could not roll {name} back: {}", r.message()));
                }
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 23: the window counts from the new tasks' start; the time
    /// swarm's update monitor watched them (its completion minus the
    /// youngest task's start, both the daemon's clock) is credited.
    #[test]
    fn the_time_swarm_watched_the_new_tasks_is_read_from_the_daemons_clock() {
        let youngest = daemon_time("2026-12-03T19:35:58.490589966Z");
        assert_eq!(watched_by_swarm(Some("2026-12-03T19:36:03.990589966Z"), youngest), Duration::from_millis(5500));
        // A completion before the start (another update's), or no times: no credit.
        assert_eq!(watched_by_swarm(Some("2026-12-03T19:35:50Z"), youngest), Duration::ZERO);
        assert_eq!(watched_by_swarm(None, youngest), Duration::ZERO);
        assert_eq!(watched_by_swarm(Some("not a time"), youngest), Duration::ZERO);
    }
}
