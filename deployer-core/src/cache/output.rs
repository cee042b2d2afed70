//! `OutputCache`: set a key to a value by running a publisher, once per value.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Notify;

use super::{digest, run_job, JobPlan};
use crate::config::Level;
use crate::context::Context;
use crate::current::{Current, Value};
use crate::engine::Metadata;
use crate::job::{Job, JobActions, Pool, Priority};
use crate::output::{ActiveState, Error, Output};
use crate::primitive::Source;

/// An operation that sets a key to a value somewhere outside (a push, a
/// service update, a status on GitHub).
///
/// It runs again only when the value's digest changes. A publish whose
/// outcome was recorded is never repeated for the same value; a publish
/// interrupted by a crash is recorded as failed and waits for an operator.
#[async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// The operation's name: its box label and its id in the store.
    const ID: &'static str;
    /// What is being set (a service name, a tag).
    type Key: Value + Serialize + fmt::Display;
    /// The value to set it to (only its digest is stored).
    type Value: Value + Serialize + fmt::Display;
    /// What publishing returns (stored).
    type Outcome: Value + Serialize + DeserializeOwned;

    /// How risky publishing is.
    fn level(&self) -> Level {
        Level::Dangerous
    }

    /// Whether a publish is cancelled when a newer value arrives (else it
    /// finishes, then the newer value is published).
    fn auto_cancel(&self) -> bool {
        false
    }

    /// The pool publishes wait for, if any.
    fn pool(&self) -> Option<Pool> {
        None
    }

    /// Cancel a publish after this long.
    fn timeout(&self) -> Option<Duration> {
        None
    }

    /// Sets `key` to `value`, logging to `job` (already started).
    async fn publish(&self, job: &Job, key: &Self::Key, value: &Self::Value) -> Result<Self::Outcome, Error>;
}

struct Shared<P: Publisher> {
    publisher: P,
    ctx: Context,
    instances: Mutex<HashMap<String, Arc<Instance<P>>>>,
}

struct Desired<V> {
    value: V,
    digest: String,
    step: u64,
}

struct State<P: Publisher> {
    refs: usize,
    desired: Option<Desired<P::Value>>,
    rebuild: bool,
    loaded: bool,
    driver: Option<tokio::task::AbortHandle>,
    /// The digest being published now.
    publishing: Option<String>,
    active: ActiveState,
    job: Option<Job>,
    job_id: Option<String>,
    /// The last recorded outcome and the digest of its value.
    current: Option<(String, Result<P::Outcome, Error>)>,
}

struct Instance<P: Publisher> {
    shared: Weak<Shared<P>>,
    key: P::Key,
    digest: String,
    source: Source<P::Outcome>,
    wake: Notify,
    state: Mutex<State<P>>,
}

/// Runs a [`Publisher`] to set keys to values, once per value.
/// Cloning gives another handle on the same cache.
pub struct OutputCache<P: Publisher> {
    shared: Arc<Shared<P>>,
}

impl<P: Publisher> Clone for OutputCache<P> {
    fn clone(&self) -> Self {
        OutputCache { shared: self.shared.clone() }
    }
}

impl<P: Publisher> OutputCache<P> {
    /// A cache running `publisher`, keeping outcomes in `ctx`'s store.
    pub fn new(ctx: &Context, publisher: P) -> OutputCache<P> {
        OutputCache { shared: Arc::new(Shared { publisher, ctx: ctx.clone(), instances: Mutex::default() }) }
    }

    /// A stage that sets `key` to `value` and shows the outcome.
    ///
    /// Two different values for one key in the same evaluation step are an
    /// error on the stage that set the second one.
    pub fn set(&self, key: &Current<P::Key>, value: &Current<P::Value>) -> Current<P::Outcome> {
        let shared = self.shared.clone();
        key.pair(value).primitive(P::ID, move |(key, value), cx| {
            let instance = Shared::instance(&shared, key);
            let d = digest(value);
            {
                let mut st = instance.lock();
                if let Some(desired) = &st.desired {
                    if desired.step == cx.step() && desired.digest != d && st.refs > 0 {
                        let msg = format!(
                            "{} {key} set to different values in the same step ({} and {value})",
                            P::ID,
                            desired.value
                        );
                        return Source::new(Output::Err(Error::msg(msg)));
                    }
                }
                st.refs += 1;
                let changed = st.desired.as_ref().is_none_or(|x| x.digest != d);
                st.desired = Some(Desired { value: value.clone(), digest: d, step: cx.step() });
                if changed && shared.publisher.auto_cancel() {
                    if let (Some(publishing), Some(job)) = (&st.publishing, &st.job) {
                        if st.desired.as_ref().is_some_and(|x| &x.digest != publishing) {
                            job.cancel("Auto-cancelling job because it is no longer needed");
                        }
                    }
                }
            }
            instance.wake.notify_one();
            let start = instance.clone();
            cx.after_step(move || start.ensure_driver());
            let release = instance.clone();
            cx.on_release(move || release.release());
            instance.source.clone()
        })
    }

    /// Asks for `key`'s value to be published again (after a failure).
    pub fn rebuild(&self, key: &P::Key) -> Result<(), Error> {
        let instance = self.shared.lock().get(&digest(key)).cloned();
        match instance {
            Some(i) => i.request_rebuild(),
            None => Err(Error::msg(format!("{} {key} is not in use", P::ID))),
        }
    }

    /// Number of keys held in memory.
    pub fn len(&self) -> usize {
        self.shared.lock().len()
    }

    /// Whether no key is held in memory.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<P: Publisher> Shared<P> {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Instance<P>>>> {
        self.instances.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn instance(this: &Arc<Self>, key: &P::Key) -> Arc<Instance<P>> {
        let d = digest(key);
        this.lock()
            .entry(d.clone())
            .or_insert_with(|| {
                Arc::new(Instance {
                    shared: Arc::downgrade(this),
                    key: key.clone(),
                    digest: d,
                    source: Source::new(Output::Active(ActiveState::Ready)),
                    wake: Notify::new(),
                    state: Mutex::new(State {
                        refs: 0,
                        desired: None,
                        rebuild: false,
                        loaded: false,
                        driver: None,
                        publishing: None,
                        active: ActiveState::Ready,
                        job: None,
                        job_id: None,
                        current: None,
                    }),
                })
            })
            .clone()
    }
}

struct Republish<P: Publisher>(Weak<Instance<P>>);

impl<P: Publisher> JobActions for Republish<P> {
    fn rebuild(&self) -> Result<(), Error> {
        match self.0.upgrade() {
            Some(i) => i.request_rebuild(),
            None => Err(Error::msg("this job's stage is no longer part of the pipeline")),
        }
    }
}

impl<P: Publisher> Instance<P> {
    fn lock(&self) -> MutexGuard<'_, State<P>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn show(&self, st: &State<P>) {
        let desired = st.desired.as_ref().map(|d| d.digest.as_str());
        let value = match (&st.publishing, &st.current) {
            (Some(_), _) => Output::Active(st.active),
            (None, Some((d, result))) if Some(d.as_str()) == desired => result.clone().into(),
            (None, _) => Output::Active(ActiveState::Ready),
        };
        let job_id = st.job_id.clone();
        self.source.update(|v, m| {
            *v = value;
            *m = Metadata { job_id, update: None };
        });
    }

    fn request_rebuild(self: &Arc<Self>) -> Result<(), Error> {
        let mut st = self.lock();
        if st.publishing.is_some() {
            return Err(Error::msg(format!("{} {} is already being published", P::ID, self.key)));
        }
        st.rebuild = true;
        drop(st);
        self.wake.notify_one();
        Ok(())
    }

    fn ensure_driver(self: &Arc<Self>) {
        let mut st = self.lock();
        if st.refs == 0 || st.driver.is_some() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            drop(st);
            self.source.set(Output::Err(Error::msg("no tokio runtime to run publishes")));
            return;
        };
        let me = self.clone();
        st.driver = Some(rt.spawn(async move { me.drive().await }).abort_handle());
    }

    fn release(self: &Arc<Self>) {
        let Some(shared) = self.shared.upgrade() else { return };
        let mut map = shared.lock();
        let mut st = self.lock();
        st.refs -= 1;
        if st.refs > 0 || st.publishing.is_some() {
            return; // a publish in progress always finishes and is recorded
        }
        if let Some(driver) = st.driver.take() {
            driver.abort();
        }
        if let Some(id) = &st.job_id {
            shared.ctx.jobs.remove_actions(id);
        }
        if map.get(&self.digest).is_some_and(|i| Arc::ptr_eq(i, self)) {
            map.remove(&self.digest);
        }
    }

    async fn load(self: &Arc<Self>, shared: &Shared<P>) {
        let row = shared.ctx.store.latest(P::ID, &self.digest).await;
        let mut invalid = false;
        {
            let mut st = self.lock();
            st.loaded = true;
            match row {
                Ok(Some(row)) => {
                    st.job_id = Some(row.job_id.clone());
                    shared.ctx.jobs.set_actions(&row.job_id, Arc::new(Republish(Arc::downgrade(self))));
                    // An interrupted publish is a failure: it is not repeated
                    // without an operator, as it may have taken effect.
                    if !row.rebuild {
                        let result = if row.ok {
                            match serde_json::from_str::<P::Outcome>(&row.outcome) {
                                Ok(o) => Some(Ok(o)),
                                Err(e) => {
                                    tracing::warn!(op = P::ID, key = %self.key, "stored outcome no longer deserializes ({e}); publishing again");
                                    invalid = true;
                                    None
                                }
                            }
                        } else {
                            Some(Err(Error::msg(row.outcome)))
                        };
                        if let (Some(result), Some(value)) = (result, row.value) {
                            st.current = Some((value, result));
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::error!(op = P::ID, "cannot read the store: {e}"),
            }
        }
        if invalid {
            if let Err(e) = shared.ctx.store.invalidate(P::ID, &self.digest).await {
                tracing::error!(op = P::ID, "cannot invalidate a stored outcome: {e}");
            }
        }
    }

    async fn drive(self: Arc<Self>) {
        let Some(shared) = self.shared.upgrade() else { return };
        if !self.lock().loaded {
            self.load(&shared).await;
        }
        loop {
            let todo = {
                let mut st = self.lock();
                let wanted = st.desired.as_ref().map(|d| (d.value.clone(), d.digest.clone()));
                let done = match (&wanted, &st.current) {
                    (Some((_, want)), Some((have, _))) => want == have && !st.rebuild,
                    (None, _) => true,
                    _ => false,
                };
                if done {
                    self.show(&st);
                    None
                } else {
                    let (value, d) = wanted.expect("checked");
                    st.rebuild = false;
                    st.publishing = Some(d.clone());
                    st.active = ActiveState::Ready;
                    self.show(&st);
                    Some((value, d))
                }
            };
            let Some((value, value_digest)) = todo else {
                self.wake.notified().await;
                continue;
            };
            self.publish_once(&shared, value, value_digest).await;
            let mut map = shared.lock();
            let mut st = self.lock();
            if st.refs == 0 {
                st.driver = None;
                if let Some(id) = &st.job_id {
                    shared.ctx.jobs.remove_actions(id);
                }
                if map.get(&self.digest).is_some_and(|i| Arc::ptr_eq(i, &self)) {
                    map.remove(&self.digest);
                }
                return;
            }
        }
    }

    async fn publish_once(self: &Arc<Self>, shared: &Arc<Shared<P>>, value: P::Value, value_digest: String) {
        let publisher = &shared.publisher;
        let plan = JobPlan {
            op: P::ID,
            key: &self.digest,
            value: Some(&value_digest),
            description: format!("{} {} := {}", P::ID, self.key, value),
            level: publisher.level(),
            pool: publisher.pool().map(|p| (p, Priority::High)),
            timeout: publisher.timeout(),
        };
        let (me, status_me, obsolete_me) = (self.clone(), self.clone(), self.clone());
        let wanted = value_digest.clone();
        let run = run_job(
            &shared.ctx,
            plan,
            move |job| {
                let mut st = me.lock();
                if let Some(old) = st.job_id.replace(job.id().to_owned()) {
                    me.shared.upgrade().inspect(|s| s.ctx.jobs.remove_actions(&old));
                }
                st.job = Some(job.clone());
                if let Some(s) = me.shared.upgrade() {
                    s.ctx.jobs.set_actions(job.id(), Arc::new(Republish(Arc::downgrade(&me))));
                }
                me.show(&st);
            },
            move |active| {
                let mut st = status_me.lock();
                st.active = active;
                status_me.show(&st);
            },
            move || obsolete_me.lock().desired.as_ref().is_some_and(|d| d.digest != wanted),
            |job| async move {
                let outcome = publisher.publish(&job, &self.key, &value).await?;
                serde_json::to_string(&outcome).map_err(|e| Error::msg(format!("cannot serialize the outcome: {e}")))
            },
        )
        .await;
        let mut st = self.lock();
        st.publishing = None;
        st.job = None;
        st.job_id = Some(run.job_id);
        let obsolete = st.desired.as_ref().is_some_and(|d| d.digest != value_digest);
        st.current = match run.result {
            Ok(json) => Some((value_digest, serde_json::from_str(&json).map_err(|e| Error::msg(e.to_string())))),
            // Cancelled for a newer value, or not recorded: not sticky.
            Err(_) if obsolete || !run.recorded => None,
            Err(e) => Some((value_digest, Err(e))),
        };
        self.show(&st);
    }
}
