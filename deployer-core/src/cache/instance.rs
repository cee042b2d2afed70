//! What every cache keeps per key, whatever the kind of cache: the registry
//! of instances, the bookkeeping of an instance's driver and job, the
//! operator's "rebuild" action, and loading the last outcome from the store.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use serde::de::DeserializeOwned;

use crate::context::Context;
use crate::job::{Job, JobActions, Jobs};
use crate::output::{ActiveState, Error};
use crate::store::BuildRecord;

/// A cache's instances in use, by key digest.
pub(crate) struct Registry<I>(Mutex<HashMap<String, Arc<I>>>);

impl<I> Default for Registry<I> {
    fn default() -> Self {
        Registry(Mutex::default())
    }
}

impl<I> Registry<I> {
    /// The map, locked. Lock order: the registry before an instance.
    pub(crate) fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<I>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The instance for `digest`, made by `make` if there is none.
    pub(crate) fn get_or_insert(&self, digest: &str, make: impl FnOnce() -> I) -> Arc<I> {
        self.lock().entry(digest.to_owned()).or_insert_with(|| Arc::new(make())).clone()
    }

    /// The instance for `digest`, if it is in use.
    pub(crate) fn get(&self, digest: &str) -> Option<Arc<I>> {
        self.lock().get(digest).cloned()
    }

    /// Number of instances.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

impl<I: Rebuildable> Registry<I> {
    /// Asks the instance for `key` to run again; errors if it is not in use.
    pub(crate) fn rebuild<K: serde::Serialize + fmt::Display>(&self, op: &str, key: &K) -> Result<(), Error> {
        match self.get(&super::digest(key)?) {
            Some(i) => i.request_rebuild(),
            None => Err(Error::msg(format!("{op} {key} is not in use"))),
        }
    }
}

/// Removes `instance` from a locked registry, unless another instance has
/// replaced it already.
pub(crate) fn unregister<I>(map: &mut HashMap<String, Arc<I>>, digest: &str, instance: &Arc<I>) {
    if map.get(digest).is_some_and(|i| Arc::ptr_eq(i, instance)) {
        map.remove(digest);
    }
}

/// The state every instance has: who uses it, its driver task, its job.
pub(crate) struct Tracking {
    /// Stages of the pipeline using the instance.
    pub(crate) refs: usize,
    /// Whether the last outcome was loaded from the store.
    pub(crate) loaded: bool,
    /// The task running builds or publishes.
    pub(crate) driver: Option<tokio::task::AbortHandle>,
    /// The state shown while a job is pending.
    pub(crate) active: ActiveState,
    /// The job running now.
    pub(crate) job: Option<Job>,
    /// The job shown on the stage (running now, or the last one).
    pub(crate) job_id: Option<String>,
}

impl Tracking {
    /// No users, nothing loaded, no job.
    pub(crate) fn new() -> Tracking {
        Tracking { refs: 0, loaded: false, driver: None, active: ActiveState::Ready, job: None, job_id: None }
    }

    /// Makes `job_id` the stage's job, with `actions` for operators; the
    /// previous job's actions are forgotten.
    pub(crate) fn show_job(&mut self, jobs: &Jobs, job_id: &str, actions: Arc<dyn JobActions>) {
        if let Some(old) = self.job_id.replace(job_id.to_owned()) {
            if old != job_id {
                jobs.remove_actions(&old);
            }
        }
        jobs.set_actions(job_id, actions);
    }

    /// Starts the driver task if users want it and none is running. Errors
    /// when there is no tokio runtime to run it on.
    pub(crate) fn ensure_driver<F>(&mut self, drive: impl FnOnce() -> F) -> Result<(), Error>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if self.refs == 0 || self.driver.is_some() {
            return Ok(());
        }
        let rt = tokio::runtime::Handle::try_current().map_err(|_| Error::msg("no tokio runtime to run jobs"))?;
        self.driver = Some(rt.spawn(drive()).abort_handle());
        Ok(())
    }

    /// Tears the instance down once nobody uses it: stops the driver and
    /// forgets the job's actions.
    pub(crate) fn retire(&mut self, jobs: &Jobs) {
        if let Some(driver) = self.driver.take() {
            driver.abort();
        }
        if let Some(id) = &self.job_id {
            jobs.remove_actions(id);
        }
    }
}

/// An instance an operator can ask to run again.
pub(crate) trait Rebuildable: Send + Sync + 'static {
    /// Asks for the work to run again.
    fn request_rebuild(self: Arc<Self>) -> Result<(), Error>;

    /// The job shown on the stage now.
    fn job_id(&self) -> Option<String>;
}

/// The "rebuild" action of a job, pointing at its instance.
pub(crate) struct RebuildAction<I>(pub(crate) Weak<I>);

impl<I: Rebuildable> RebuildAction<I> {
    /// The action for `instance`'s jobs.
    pub(crate) fn of(instance: &Arc<I>) -> Arc<dyn JobActions> {
        Arc::new(RebuildAction(Arc::downgrade(instance)))
    }
}

impl<I: Rebuildable> JobActions for RebuildAction<I> {
    fn rebuild(&self) -> Result<(), Error> {
        match self.0.upgrade() {
            Some(i) => i.request_rebuild(),
            None => Err(Error::msg("this job's stage is no longer part of the pipeline")),
        }
    }

    fn latest_job(&self) -> Option<String> {
        self.0.upgrade()?.job_id()
    }
}

/// The last outcome of a key, as loaded from the store.
pub(crate) struct Loaded<V> {
    /// The row.
    pub(crate) row: BuildRecord,
    /// The outcome, when the row counts (see [`load_latest`]).
    pub(crate) result: Option<Result<V, Error>>,
}

/// Loads the latest outcome of `op` for key `digest`. The outcome counts
/// only if `counts` accepts the row; an outcome that no longer deserializes
/// is logged and invalidated in the store, so it is built again.
pub(crate) async fn load_latest<V: DeserializeOwned>(
    ctx: &Context,
    op: &'static str,
    digest: &str,
    key: &(dyn fmt::Display + Sync),
    counts: impl Fn(&BuildRecord) -> bool,
) -> Option<Loaded<V>> {
    let row = match ctx.store.latest(op, digest).await {
        Ok(Some(row)) => row,
        Ok(None) => return None,
        Err(e) => {
            tracing::error!(op, "cannot read the store: {e}");
            return None;
        }
    };
    let result = if !counts(&row) {
        None
    } else if row.ok {
        match serde_json::from_str::<V>(&row.outcome) {
            Ok(v) => Some(Ok(v)),
            Err(e) => {
                tracing::warn!(op, key = %key, "stored outcome no longer deserializes ({e}); running again");
                if let Err(e) = ctx.store.invalidate(op, digest).await {
                    tracing::error!(op, "cannot invalidate a stored outcome: {e}");
                }
                None
            }
        }
    } else {
        Some(Err(Error::msg(row.outcome.clone())))
    };
    Some(Loaded { row, result })
}
