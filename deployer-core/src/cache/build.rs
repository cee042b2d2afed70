//! `BuildCache`: run a builder once per key.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Notify;

use super::instance::{load_latest, unregister, RebuildAction, Rebuildable, Registry, Tracking};
use super::{digest, run_job, JobPlan, Schedule};
use crate::config::Level;
use crate::context::Context;
use crate::current::{Current, Value};
use crate::engine::Metadata;
use crate::job::{Job, Pool, Priority};
use crate::output::{ActiveState, Error, Output};
use crate::primitive::Source;
use crate::store::now_ms;

/// An operation that produces a value from a key (a build, a pull).
///
/// The key identifies the work: the same key is built once, and its result
/// is reused, across restarts too. Anything that should not trigger a rebuild
/// when it changes (credentials, a pool) belongs in the builder, not the key.
///
/// ```
/// use deployer_core::cache::Builder;
/// use deployer_core::{Error, Job};
///
/// struct Checksum;
///
/// #[async_trait::async_trait]
/// impl Builder for Checksum {
///     const ID: &'static str = "checksum";
///     type Key = String;
///     type Value = u64;
///     async fn build(&self, job: &Job, key: &String) -> Result<u64, Error> {
///         job.log(&format!("summing {key}"));
///         Ok(key.bytes().map(u64::from).sum())
///     }
/// }
/// ```
#[async_trait]
pub trait Builder: Send + Sync + 'static {
    /// The operation's name: its box label and its id in the store. Keep it
    /// stable; changing it forgets every cached result.
    const ID: &'static str;
    /// What identifies one build (serialized to compute its digest).
    type Key: Value + Serialize + fmt::Display;
    /// The result (serialized into the store).
    type Value: Value + Serialize + DeserializeOwned;

    /// How risky building `key` is (jobs at or above the threshold wait for
    /// confirmation).
    fn level(&self, _key: &Self::Key) -> Level {
        Level::Average
    }

    /// Whether a build no longer needed by the pipeline is cancelled (else it
    /// finishes and its result is kept).
    fn auto_cancel(&self) -> bool {
        false
    }

    /// The pool builds wait for, if any.
    fn pool(&self) -> Option<Pool> {
        None
    }

    /// Cancel a build after this long.
    fn timeout(&self) -> Option<Duration> {
        None
    }

    /// Builds `key`, logging to `job`. The job has already started (confirmed,
    /// with its pool slot).
    async fn build(&self, job: &Job, key: &Self::Key) -> Result<Self::Value, Error>;
}

struct Shared<B: Builder> {
    builder: B,
    ctx: Context,
    instances: Registry<Instance<B>>,
}

struct State<V> {
    t: Tracking,
    /// The `valid_for` of each user of the instance.
    schedules: Vec<Option<Duration>>,
    rebuild: bool,
    building: bool,
    current: Option<Result<V, Error>>,
    finished: Option<i64>,
}

impl<V> State<V> {
    /// When the current value expires: the earliest schedule wins.
    fn expires_at(&self) -> Option<i64> {
        let valid_for = self.schedules.iter().flatten().min()?;
        match (&self.current, self.finished) {
            (Some(Ok(_)), Some(finished)) => Some(finished + valid_for.as_millis() as i64),
            _ => None,
        }
    }
}

struct Instance<B: Builder> {
    shared: Weak<Shared<B>>,
    key: B::Key,
    digest: String,
    source: Source<B::Value>,
    wake: Notify,
    state: Mutex<State<B::Value>>,
}

/// Runs a [`Builder`] once per key, remembering results in the store.
/// Cloning gives another handle on the same cache.
pub struct BuildCache<B: Builder> {
    shared: Arc<Shared<B>>,
}

impl<B: Builder> Clone for BuildCache<B> {
    fn clone(&self) -> Self {
        BuildCache { shared: self.shared.clone() }
    }
}

impl<B: Builder> BuildCache<B> {
    /// A cache running `builder`, keeping results in `ctx`'s store.
    pub fn new(ctx: &Context, builder: B) -> BuildCache<B> {
        BuildCache { shared: Arc::new(Shared { builder, ctx: ctx.clone(), instances: Registry::default() }) }
    }

    /// A stage whose value is the result of building each value of `key`.
    ///
    /// It is `Ready`/`Running` while building, then the result. With a
    /// schedule, the result expires; while it is rebuilt the old value stays
    /// visible (the diagram shows the update). A failure stays until a
    /// rebuild is requested or the key changes.
    pub fn get(&self, key: &Current<B::Key>, schedule: Schedule) -> Current<B::Value> {
        let shared = self.shared.clone();
        key.primitive(B::ID, move |key, cx| {
            let d = match digest(key) {
                Ok(d) => d,
                Err(e) => return Source::new(Output::Err(e)),
            };
            let instance = Shared::instance(&shared, key, d);
            {
                let mut st = instance.lock();
                st.t.refs += 1;
                st.schedules.push(schedule.valid_for);
            }
            instance.wake.notify_one();
            let start = instance.clone();
            cx.after_step(move || start.ensure_driver());
            let release = instance.clone();
            cx.on_release(move || release.release(schedule.valid_for));
            instance.source.clone()
        })
    }

    /// Asks for `key` to be built again (if it is in use).
    pub fn rebuild(&self, key: &B::Key) -> Result<(), Error> {
        self.shared.instances.rebuild(B::ID, key)
    }

    /// Number of keys held in memory (in use by the pipeline or still building).
    pub fn len(&self) -> usize {
        self.shared.instances.len()
    }

    /// Whether no key is held in memory.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<B: Builder> Shared<B> {
    fn instance(this: &Arc<Self>, key: &B::Key, d: String) -> Arc<Instance<B>> {
        this.instances.get_or_insert(&d.clone(), || Instance {
            shared: Arc::downgrade(this),
            key: key.clone(),
            digest: d,
            source: Source::new(Output::Active(ActiveState::Ready)),
            wake: Notify::new(),
            state: Mutex::new(State {
                t: Tracking::new(),
                schedules: Vec::new(),
                rebuild: false,
                building: false,
                current: None,
                finished: None,
            }),
        })
    }
}

impl<B: Builder> Rebuildable for Instance<B> {
    fn request_rebuild(self: Arc<Self>) -> Result<(), Error> {
        let mut st = self.lock();
        if st.building {
            return Err(Error::msg(format!("{} {} is already being built", B::ID, self.key)));
        }
        st.rebuild = true;
        drop(st);
        if let Some(shared) = self.shared.upgrade() {
            let (store, digest) = (shared.ctx.store.clone(), self.digest.clone());
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { store.mark_rebuild(B::ID, &digest).await });
            }
        }
        self.wake.notify_one();
        Ok(())
    }

    fn job_id(&self) -> Option<String> {
        self.lock().t.job_id.clone()
    }
}

impl<B: Builder> Instance<B> {
    fn lock(&self) -> MutexGuard<'_, State<B::Value>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Shows the state on the stage: the result, or pending, or the old
    /// result with a background update.
    fn show(&self, st: &State<B::Value>) {
        let (value, update) = match (&st.current, st.building) {
            (Some(Ok(v)), true) => (Output::Ok(v.clone()), Some(st.t.active)),
            (Some(r), false) => (r.clone().into(), None),
            (_, true) => (Output::Active(st.t.active), None),
            (None, false) => (Output::Active(ActiveState::Ready), None),
        };
        let job_id = st.t.job_id.clone();
        self.source.update(|v, m| {
            *v = value;
            *m = Metadata { job_id, update };
        });
    }

    fn ensure_driver(self: &Arc<Self>) {
        let me = self.clone();
        let started = self.lock().t.ensure_driver(|| me.drive());
        if let Err(e) = started {
            self.source.set(Output::Err(e));
        }
    }

    fn release(self: &Arc<Self>, valid_for: Option<Duration>) {
        let Some(shared) = self.shared.upgrade() else { return };
        let mut map = shared.instances.lock();
        let mut st = self.lock();
        st.t.refs -= 1;
        if let Some(pos) = st.schedules.iter().position(|s| *s == valid_for) {
            st.schedules.remove(pos);
        }
        if st.t.refs > 0 {
            drop(st);
            self.wake.notify_one();
            return;
        }
        if st.building {
            // The driver removes the instance when the build ends.
            if shared.builder.auto_cancel() {
                if let Some(job) = &st.t.job {
                    job.cancel("Auto-cancelling job because it is no longer needed");
                }
            }
            return;
        }
        st.t.retire(&shared.ctx.jobs);
        unregister(&mut map, &self.digest, self);
    }

    async fn load(self: &Arc<Self>, shared: &Shared<B>) {
        // An interrupted build is not a result: it runs again.
        let loaded =
            load_latest(&shared.ctx, B::ID, &self.digest, &self.key, |row| !row.rebuild && !row.interrupted).await;
        let mut st = self.lock();
        st.t.loaded = true;
        if let Some(loaded) = loaded {
            st.t.show_job(&shared.ctx.jobs, &loaded.row.job_id, RebuildAction::of(self));
            if loaded.result.is_some() {
                st.finished = Some(loaded.row.finished);
            }
            st.current = loaded.result;
        }
    }

    async fn drive(self: Arc<Self>) {
        let Some(shared) = self.shared.upgrade() else { return };
        if !self.lock().t.loaded {
            self.load(&shared).await;
        }
        loop {
            let idle_until = {
                let mut st = self.lock();
                let expires = st.expires_at();
                let expired = expires.is_some_and(|t| now_ms() >= t);
                if st.current.is_none() || st.rebuild || expired {
                    st.rebuild = false;
                    st.building = true;
                    st.t.active = ActiveState::Ready;
                    self.show(&st);
                    None
                } else {
                    self.show(&st);
                    Some(expires)
                }
            };
            if let Some(expires) = idle_until {
                let sleep = async {
                    match expires {
                        Some(t) => tokio::time::sleep(Duration::from_millis((t - now_ms()).max(0) as u64)).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = sleep => {}
                }
                continue;
            }
            self.build_once(&shared).await;
            // Leave when nobody uses the instance any more.
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

    async fn build_once(self: &Arc<Self>, shared: &Arc<Shared<B>>) {
        let builder = &shared.builder;
        let plan = JobPlan {
            op: B::ID,
            key: &self.digest,
            value: None,
            description: format!("{} {}", B::ID, self.key),
            level: builder.level(&self.key),
            pool: builder
                .pool()
                .map(|p| (p, if self.lock().current.is_some() { Priority::Low } else { Priority::High })),
            timeout: builder.timeout(),
        };
        let me = self.clone();
        let status_me = self.clone();
        let obsolete_me = self.clone();
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
            move || obsolete_me.lock().t.refs == 0,
            |job| async move {
                let value = builder.build(&job, &self.key).await?;
                serde_json::to_string(&value).map_err(|e| Error::msg(format!("cannot serialize the result: {e}")))
            },
        )
        .await;
        let mut st = self.lock();
        st.building = false;
        st.t.job = None;
        st.t.job_id = Some(run.job_id);
        st.finished = Some(now_ms());
        st.current = match run.result {
            Ok(json) => Some(serde_json::from_str(&json).map_err(|e| Error::msg(e.to_string()))),
            // Not recorded, or cancelled because unused: try again next time.
            Err(_) if !run.recorded || st.t.refs == 0 => None,
            Err(e) => Some(Err(e)),
        };
        self.show(&st);
    }
}
