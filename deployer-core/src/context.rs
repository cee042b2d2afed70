//! The deployer's shared services: the store, the job registry and the
//! run-time configuration, under one state directory.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::clock::Clock;
use crate::config::Config;
use crate::job::Jobs;
use crate::secret::Secret;
use crate::store::{Retention, Store, StoreError};

/// The store, the jobs and the configuration that caches and the web UI
/// share. Cloning gives another handle on the same services.
///
/// ```
/// # let dir = std::env::temp_dir().join(format!("deployer-doc-{}", std::process::id()));
/// let ctx = deployer_core::Context::open(&dir, deployer_core::Config::default())?;
/// assert!(ctx.state_dir().join("db.sqlite").exists());
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), deployer_core::store::StoreError>(())
/// ```
#[derive(Clone)]
pub struct Context {
    /// Outcomes of builds and publishes.
    pub store: Store,
    /// Active jobs and their logs.
    pub jobs: Jobs,
    state_dir: PathBuf,
    shared: Arc<Mutex<HashMap<TypeId, Box<dyn Any + Send + Sync>>>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("state_dir", &self.state_dir).finish_non_exhaustive()
    }
}

impl Context {
    /// Opens the services kept under `state_dir` (`db.sqlite` and `job/`),
    /// creating them if needed.
    pub fn open(state_dir: &Path, config: Config) -> Result<Context, StoreError> {
        Context::open_with_clock(state_dir, config, Clock::system())
    }

    /// [`Context::open`], with every timestamp, schedule and timeout read
    /// from `clock` (a [`ManualClock`](crate::ManualClock) in tests).
    pub fn open_with_clock(state_dir: &Path, config: Config, clock: Clock) -> Result<Context, StoreError> {
        let store = Store::open_with_clock(&state_dir.join("db.sqlite"), clock.clone())?;
        let jobs = Jobs::new(&state_dir.join("job"), config, clock);
        Ok(Context { store, jobs, state_dir: state_dir.to_owned(), shared: Arc::default() })
    }

    /// The clock timestamps, schedules and timeouts are read from.
    pub fn clock(&self) -> &Clock {
        self.jobs.clock()
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The run-time configuration (the confirmation threshold).
    pub fn config(&self) -> &Config {
        self.jobs.config()
    }

    /// The one value of type `T` for this context (and its clones): made by
    /// `make` the first time it is asked for, then the same one (a clone of
    /// it) each time. Plugins keep here what must exist once per state
    /// directory — git's mirrors and their locks, SSH's connections — so
    /// that two handles made from one context share them by construction.
    ///
    /// ```
    /// # let dir = std::env::temp_dir().join(format!("deployer-doc-shared-{}", std::process::id()));
    /// let ctx = deployer_core::Context::open(&dir, deployer_core::Config::default())?;
    /// #[derive(Clone)]
    /// struct Connections(std::sync::Arc<std::sync::Mutex<Vec<String>>>);
    /// let a = ctx.shared(|| Connections(Default::default()));
    /// let b = ctx.clone().shared(|| Connections(Default::default()));
    /// a.0.lock().unwrap().push("one".into());
    /// assert_eq!(b.0.lock().unwrap().len(), 1);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok::<(), deployer_core::store::StoreError>(())
    /// ```
    pub fn shared<T: Clone + Send + Sync + 'static>(&self, make: impl FnOnce() -> T) -> T {
        let lock = || self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(value) = lock().get(&TypeId::of::<T>()) {
            return value.downcast_ref::<T>().expect("the map is keyed by type").clone();
        }
        // Made without the lock held (`make` may ask for other shared
        // values); if another thread made one meanwhile, theirs is kept.
        let made = make();
        let mut shared = lock();
        let value = shared.entry(TypeId::of::<T>()).or_insert_with(|| Box::new(made));
        value.downcast_ref::<T>().expect("the map is keyed by type").clone()
    }

    /// Wraps `value` as a secret and registers it, so it is scrubbed from
    /// every job log.
    pub fn secret(&self, value: String) -> Secret<String> {
        self.jobs.register_secret(&value);
        Secret::new(value)
    }

    /// Deletes history beyond `policy`, and the logs of the deleted builds.
    /// Returns how many builds were deleted.
    pub async fn prune(&self, policy: Retention) -> Result<usize, StoreError> {
        let gone = self.store.prune(policy).await?;
        self.jobs.delete_logs(&gone);
        Ok(gone.len())
    }
}
