//! `BuildCache`: run a builder once per key.

use std::sync::Arc;
use std::time::Duration;

use super::driver::{Cache, Operation, RunFuture};
use super::{Builder, Schedule};
use crate::config::Level;
use crate::context::Context;
use crate::job::{Job, Pool};
use crate::output::Error;
use crate::term::Current;

/// A builder seen by the driver: its value is `()`.
struct Build<B>(B);

impl<B: Builder> Operation for Build<B> {
    type Key = B::Key;
    type Value = ();
    type Outcome = B::Value;
    const STORES_VALUE: bool = false;

    fn id(&self) -> &str {
        B::ID
    }
    fn describe(&self, key: &B::Key, _: &()) -> Option<String> {
        self.0.describe(key)
    }
    fn level(&self, key: &B::Key) -> Level {
        self.0.level(key)
    }
    fn auto_cancel(&self) -> bool {
        self.0.auto_cancel()
    }
    fn latched(&self) -> bool {
        self.0.latched()
    }
    fn idempotent(&self) -> bool {
        true // a build may always run again
    }
    fn retry_failures_after(&self) -> Option<Duration> {
        self.0.retry_failures_after()
    }
    fn pool(&self) -> Option<Pool> {
        self.0.pool()
    }
    fn timeout(&self) -> Option<Duration> {
        self.0.timeout()
    }
    fn run<'a>(&'a self, job: &'a Job, key: &'a B::Key, _: &'a ()) -> RunFuture<'a, B::Value> {
        self.0.build(job, key)
    }
}

/// Runs a [`Builder`] once per key, remembering results in the store.
/// Cloning gives another handle on the same cache.
///
/// ```no_run
/// # use deployer_core::cache::{BuildCache, Builder, Schedule};
/// # use deployer_core::{Context, Current, Error, Job};
/// # struct Pull;
/// # #[async_trait::async_trait]
/// # impl Builder for Pull {
/// #     const ID: &'static str = "docker-pull";
/// #     type Key = String;
/// #     type Value = String;
/// #     async fn build(&self, _: &Job, tag: &String) -> Result<String, Error> { Ok(tag.clone()) }
/// # }
/// # fn pipeline(ctx: &Context) -> Current<String> {
/// let pulls = BuildCache::new(ctx, Pull);
/// let weekly = Schedule::every(std::time::Duration::from_secs(7 * 86_400));
/// pulls.get_scheduled("docker pull peertube", "chocobozzz/peertube:production".to_string(), weekly)
/// # }
/// ```
pub struct BuildCache<B: Builder> {
    cache: Arc<Cache<Build<B>>>,
}

impl<B: Builder> Clone for BuildCache<B> {
    fn clone(&self) -> Self {
        BuildCache { cache: self.cache.clone() }
    }
}

impl<B: Builder> BuildCache<B> {
    /// A cache running `builder`, keeping results in `ctx`'s store.
    pub fn new(ctx: &Context, builder: B) -> BuildCache<B> {
        BuildCache { cache: Cache::new(ctx, Build(builder)) }
    }

    /// A stage labelled `label` whose value is the result of building each
    /// value of `key`.
    ///
    /// It is waiting, ready or running while building, then the result. A
    /// failure stays until a rebuild is requested or the key changes.
    pub fn get(&self, label: &str, key: impl Into<Current<B::Key>>) -> Current<B::Value> {
        self.get_scheduled(label, key, Schedule::never())
    }

    /// [`BuildCache::get`], with results expiring after `schedule`; while an
    /// expired result is rebuilt, it stays visible (the diagram shows the
    /// update).
    pub fn get_scheduled(&self, label: &str, key: impl Into<Current<B::Key>>, schedule: Schedule) -> Current<B::Value> {
        Cache::stage(&self.cache, label, &key.into(), &Current::constant(()), schedule)
    }

    /// Asks for `key` to be built again (if it is in use).
    pub fn rebuild(&self, key: &B::Key) -> Result<(), Error> {
        self.cache.rebuild(key)
    }

    /// Number of keys held in memory (in use by the pipeline or still building).
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// Whether no key is held in memory.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
