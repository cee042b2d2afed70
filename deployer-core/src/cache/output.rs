//! `OutputCache`: set a key to a value by running a publisher, once per value.

use std::sync::Arc;
use std::time::Duration;

use super::driver::{Cache, Operation, RunFuture};
use super::{Publisher, Schedule};
use crate::config::Level;
use crate::context::Context;
use crate::job::{Job, Pool};
use crate::output::Error;
use crate::term::Current;

/// A publisher seen by the driver.
struct Publish<P>(P);

impl<P: Publisher> Operation for Publish<P> {
    type Key = P::Key;
    type Value = P::Value;
    type Outcome = P::Outcome;
    const STORES_VALUE: bool = true;

    fn id(&self) -> &str {
        P::ID
    }
    fn describe(&self, key: &P::Key, value: &P::Value) -> Option<String> {
        self.0.describe(key, value)
    }
    fn level(&self, _: &P::Key) -> Level {
        self.0.level()
    }
    fn auto_cancel(&self) -> bool {
        self.0.auto_cancel()
    }
    fn latched(&self) -> bool {
        self.0.latched()
    }
    fn idempotent(&self) -> bool {
        self.0.idempotent()
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
    fn run<'a>(&'a self, job: &'a Job, key: &'a P::Key, value: &'a P::Value) -> RunFuture<'a, P::Outcome> {
        self.0.publish(job, key, value)
    }
}

/// Runs a [`Publisher`] to set keys to values, once per value.
/// Cloning gives another handle on the same cache.
pub struct OutputCache<P: Publisher> {
    cache: Arc<Cache<Publish<P>>>,
}

impl<P: Publisher> Clone for OutputCache<P> {
    fn clone(&self) -> Self {
        OutputCache { cache: self.cache.clone() }
    }
}

impl<P: Publisher> OutputCache<P> {
    /// A cache running `publisher`, keeping outcomes in `ctx`'s store.
    pub fn new(ctx: &Context, publisher: P) -> OutputCache<P> {
        OutputCache { cache: Cache::new(ctx, Publish(publisher)) }
    }

    /// A stage labelled `label` that sets `key` to `value` and shows the
    /// outcome.
    ///
    /// Two different values for one key in the same evaluation step are an
    /// error on the stage that set the second one.
    pub fn set(
        &self,
        label: &str,
        key: impl Into<Current<P::Key>>,
        value: impl Into<Current<P::Value>>,
    ) -> Current<P::Outcome> {
        self.set_scheduled(label, key, value, Schedule::never())
    }

    /// [`OutputCache::set`], publishing the same value again when
    /// `schedule` expires (a monthly backup), or after a failure, on the
    /// same schedule.
    pub fn set_scheduled(
        &self,
        label: &str,
        key: impl Into<Current<P::Key>>,
        value: impl Into<Current<P::Value>>,
        schedule: Schedule,
    ) -> Current<P::Outcome> {
        Cache::stage(&self.cache, label, &key.into(), &value.into(), schedule)
    }

    /// Asks for `key`'s value to be published again (after a failure).
    pub fn rebuild(&self, key: &P::Key) -> Result<(), Error> {
        self.cache.rebuild(key)
    }

    /// Number of keys held in memory.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// Whether no key is held in memory.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
