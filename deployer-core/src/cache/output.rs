//! `OutputCache`: set a key to a value by running a publisher, once per value.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Notify;

use super::instance::{load_latest, unregister, RebuildAction, Rebuildable, Registry, Tracking};
use super::{digest, run_job, JobPlan};
use crate::config::Level;
use crate::context::Context;
use crate::current::{Current, Value};
use crate::engine::Metadata;
use crate::job::{Job, Pool, Priority};
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
    instances: Registry<Instance<P>>,
}

struct Desired<V> {
    value: V,
    digest: String,
    step: u64,
}

struct State<P: Publisher> {
    t: Tracking,
    desired: Option<Desired<P::Value>>,
    rebuild: bool,
    /// The digest being published now.
    publishing: Option<String>,
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
        OutputCache { shared: Arc::new(Shared { publisher, ctx: ctx.clone(), instances: Registry::default() }) }
    }

    /// A stage that sets `key` to `value` and shows the outcome.
    ///
    /// Two different values for one key in the same evaluation step are an
    /// error on the stage that set the second one.
    pub fn set(&self, key: &Current<P::Key>, value: &Current<P::Value>) -> Current<P::Outcome> {
        let shared = self.shared.clone();
        key.pair(value).primitive(P::ID, move |(key, value), cx| {
            let (key_digest, d) = match (digest(key), digest(value)) {
                (Ok(k), Ok(v)) => (k, v),
                (Err(e), _) | (_, Err(e)) => return Source::new(Output::Err(e)),
            };
            let instance = Shared::instance(&shared, key, key_digest);
            {
                let mut st = instance.lock();
                if let Some(desired) = &st.desired {
                    if desired.step == cx.step() && desired.digest != d && st.t.refs > 0 {
                        let msg = format!(
                            "{} {key} set to different values in the same step ({} and {value})",
                            P::ID,
                            desired.value
                        );
                        return Source::new(Output::Err(Error::msg(msg)));
                    }
                }
                st.t.refs += 1;
                let changed = st.desired.as_ref().is_none_or(|x| x.digest != d);
                st.desired = Some(Desired { value: value.clone(), digest: d, step: cx.step() });
                if changed && shared.publisher.auto_cancel() {
                    if let (Some(publishing), Some(job)) = (&st.publishing, &st.t.job) {
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
        self.shared.instances.rebuild(P::ID, key)
    }

    /// Number of keys held in memory.
    pub fn len(&self) -> usize {
        self.shared.instances.len()
    }

    /// Whether no key is held in memory.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<P: Publisher> Shared<P> {
    fn instance(this: &Arc<Self>, key: &P::Key, d: String) -> Arc<Instance<P>> {
        this.instances.get_or_insert(&d.clone(), || Instance {
            shared: Arc::downgrade(this),
            key: key.clone(),
            digest: d,
            source: Source::new(Output::Active(ActiveState::Ready)),
            wake: Notify::new(),
            state: Mutex::new(State {
                t: Tracking::new(),
                desired: None,
                rebuild: false,
                publishing: None,
                current: None,
            }),
        })
    }
}

impl<P: Publisher> Rebuildable for Instance<P> {
    fn request_rebuild(self: Arc<Self>) -> Result<(), Error> {
        let mut st = self.lock();
        if st.publishing.is_some() {
            return Err(Error::msg(format!("{} {} is already being published", P::ID, self.key)));
        }
        st.rebuild = true;
        drop(st);
        self.wake.notify_one();
        Ok(())
    }

    fn job_id(&self) -> Option<String> {
        self.lock().t.job_id.clone()
    }
}

impl<P: Publisher> Instance<P> {
    fn lock(&self) -> MutexGuard<'_, State<P>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn show(&self, st: &State<P>) {
        let desired = st.desired.as_ref().map(|d| d.digest.as_str());
        let value = match (&st.publishing, &st.current) {
            (Some(_), _) => Output::Active(st.t.active),
            (None, Some((d, result))) if Some(d.as_str()) == desired => result.clone().into(),
            (None, _) => Output::Active(ActiveState::Ready),
        };
        let job_id = st.t.job_id.clone();
        self.source.update(|v, m| {
            *v = value;
            *m = Metadata { job_id, update: None };
        });
    }

    fn ensure_driver(self: &Arc<Self>) {
        let me = self.clone();
        let started = self.lock().t.ensure_driver(|| me.drive());
        if let Err(e) = started {
            self.source.set(Output::Err(e));
        }
    }

    fn release(self: &Arc<Self>) {
        let Some(shared) = self.shared.upgrade() else { return };
        let mut map = shared.instances.lock();
        let mut st = self.lock();
        st.t.refs -= 1;
        if st.t.refs > 0 || st.publishing.is_some() {
            return; // a publish in progress always finishes and is recorded
        }
        st.t.retire(&shared.ctx.jobs);
        unregister(&mut map, &self.digest, self);
    }

    async fn load(self: &Arc<Self>, shared: &Shared<P>) {
        // An interrupted publish counts as a failure: it is not repeated
        // without an operator, as it may have taken effect.
        let loaded = load_latest(&shared.ctx, P::ID, &self.digest, &self.key, |row| !row.rebuild).await;
        let mut st = self.lock();
        st.t.loaded = true;
        if let Some(loaded) = loaded {
            st.t.show_job(&shared.ctx.jobs, &loaded.row.job_id, RebuildAction::of(self));
            if let (Some(result), Some(value)) = (loaded.result, loaded.row.value) {
                st.current = Some((value, result));
            }
        }
    }

    async fn drive(self: Arc<Self>) {
        let Some(shared) = self.shared.upgrade() else { return };
        if !self.lock().t.loaded {
            self.load(&shared).await;
        }
        loop {
            let todo = {
                let mut st = self.lock();
                let wanted = st.desired.as_ref().map(|d| (d.value.clone(), d.digest.clone()));
                let todo = match (wanted, &st.current) {
                    (Some((_, want)), Some((have, _))) if &want == have && !st.rebuild => None,
                    (wanted, _) => wanted,
                };
                match todo {
                    None => {
                        self.show(&st);
                        None
                    }
                    Some((value, d)) => {
                        st.rebuild = false;
                        st.publishing = Some(d.clone());
                        st.t.active = ActiveState::Ready;
                        self.show(&st);
                        Some((value, d))
                    }
                }
            };
            let Some((value, value_digest)) = todo else {
                self.wake.notified().await;
                continue;
            };
            self.publish_once(&shared, value, value_digest).await;
            let mut map = shared.instances.lock();
            let mut st = self.lock();
            if st.t.refs == 0 {
                st.t.driver = None; // this task: it ends here
                st.t.retire(&shared.ctx.jobs);
                unregister(&mut map, &self.digest, &self);
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
                st.t.show_job(&shared.ctx.jobs, job.id(), RebuildAction::of(&me));
                st.t.job = Some(job.clone());
                me.show(&st);
            },
            move |active| {
                let mut st = status_me.lock();
                st.t.active = active;
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
        st.t.job = None;
        st.t.job_id = Some(run.job_id);
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
