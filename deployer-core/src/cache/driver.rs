//! The one driver behind every cache: per key in use, an instance that
//! decides when its operation runs, runs it as a job, records the outcome,
//! and shows the state on the stages using it.
//!
//! A builder is an operation whose value is `()`; a publisher's value is
//! what it sets the key to. Everything else (schedules, latching, auto
//! cancellation, rebuilds, restarts) is the same code for both.
//!
//! Lock order: the registry, then an instance, then a source.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Notify;

use super::{digest, Schedule};
use crate::config::Level;
use crate::context::Context;
use crate::job::{Job, JobActions, JobStatus, Pool, PoolGuard, Priority};
use crate::node::Metadata;
use crate::output::{ActiveState, Error, ErrorKind, Output};
use crate::primitive::{CatchUnwind, Hooks, Source};
use crate::store::{JobRecord, JobStart};
use crate::term::{Current, Value};

/// The future an operation's run returns.
pub(crate) type RunFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'a>>;

/// What the driver needs to know about an operation (implemented by the
/// adapters of [`Builder`](super::Builder), [`Publisher`](super::Publisher)
/// and closures).
pub(crate) trait Operation: Send + Sync + 'static {
    /// What identifies one instance.
    type Key: Value + Serialize;
    /// What the key is set to (`()` for builders).
    type Value: Value + Serialize;
    /// What a run returns (stored).
    type Outcome: Value + Serialize + DeserializeOwned;
    /// Whether the value's digest is stored with each row (publishers).
    const STORES_VALUE: bool;

    /// The stable name in the store.
    fn id(&self) -> &str;
    /// What a run does, in words; `None`: the label of the stage.
    fn describe(&self, key: &Self::Key, value: &Self::Value) -> Option<String>;
    /// How risky a run is.
    fn level(&self, key: &Self::Key) -> Level;
    /// Whether a run no longer wanted is asked to stop.
    fn auto_cancel(&self) -> bool;
    /// Whether the previous outcome stays shown while a run goes on.
    fn latched(&self) -> bool;
    /// Whether an interrupted run may simply be run again.
    fn idempotent(&self) -> bool;
    /// After how long a failure is retried by itself (else it is sticky).
    fn retry_failures_after(&self) -> Option<Duration> {
        None
    }
    /// The pool runs wait for.
    fn pool(&self) -> Option<Pool>;
    /// The time limit of a run.
    fn timeout(&self) -> Option<Duration>;
    /// Does the work.
    fn run<'a>(&'a self, job: &'a Job, key: &'a Self::Key, value: &'a Self::Value) -> RunFuture<'a, Self::Outcome>;
}

/// A cache: an operation, the services it uses, and its instances in use.
pub(crate) struct Cache<O: Operation> {
    pub(crate) op: O,
    ctx: Context,
    /// Instances by key digest.
    instances: Mutex<HashMap<String, Arc<Instance<O>>>>,
}

struct Desired<V> {
    value: V,
    digest: String,
    step: u64,
}

/// The last recorded outcome.
struct Done<T> {
    value_digest: String,
    result: Result<T, Error>,
    finished: i64,
    job_id: String,
}

/// Why a run was started.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reason {
    /// No outcome yet, or one for another value.
    New,
    /// An operator asked.
    Rebuild,
    /// The outcome expired.
    Expired,
}

/// A run: planned (the job exists) or executing.
struct Running<V> {
    job: Job,
    value: V,
    value_digest: String,
    /// Show the previous outcome, with this run as its update.
    latch: bool,
    /// The state shown while it is pending.
    active: ActiveState,
    /// Cancelled because no longer wanted: its outcome is discarded.
    obsolete: bool,
    /// The driver has taken it.
    executing: bool,
    priority: Priority,
    /// The pool slot taken when the run was planned (when one was free).
    slot: Option<PoolGuard>,
}

struct State<O: Operation> {
    /// Stages using the instance.
    refs: usize,
    /// The `valid_for` of each user.
    schedules: Vec<super::Schedule>,
    desired: Option<Desired<O::Value>>,
    loaded: bool,
    current: Option<Done<O::Outcome>>,
    rebuild: bool,
    running: Option<Running<O::Value>>,
    driver: Option<tokio::task::AbortHandle>,
    /// The job whose actions are registered (shown on the stage).
    shown_job: Option<String>,
}

pub(crate) struct Instance<O: Operation> {
    cache: Weak<Cache<O>>,
    key: O::Key,
    digest: String,
    /// The label of the stage that first used the instance.
    label: String,
    source: Source<O::Outcome>,
    wake: Notify,
    state: Mutex<State<O>>,
}

impl<O: Operation> Cache<O> {
    pub(crate) fn new(ctx: &Context, op: O) -> Arc<Cache<O>> {
        Arc::new(Cache { op, ctx: ctx.clone(), instances: Mutex::default() })
    }

    fn registry(&self) -> MutexGuard<'_, HashMap<String, Arc<Instance<O>>>> {
        self.instances.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of keys held in memory.
    pub(crate) fn len(&self) -> usize {
        self.registry().len()
    }

    /// A stage labelled `label` that sets each value of `key` to each value
    /// of `value` (for a builder: builds each key) with `schedule`.
    pub(crate) fn stage(
        this: &Arc<Self>,
        label: &str,
        key: &Current<O::Key>,
        value: &Current<O::Value>,
        schedule: Schedule,
    ) -> Current<O::Outcome> {
        let cache = this.clone();
        let label_owned = label.to_owned();
        key.pair(value).primitive(label, move |(key, value), hooks| {
            match Cache::use_instance(&cache, &label_owned, key, value, schedule, hooks) {
                Ok(source) => source,
                Err(e) => Source::new(Output::Err(e)),
            }
        })
    }

    /// Registers one use of the instance for `key` wanting `value`; starts
    /// its job now if one is needed.
    fn use_instance(
        this: &Arc<Self>,
        label: &str,
        key: &O::Key,
        value: &O::Value,
        schedule: Schedule,
        hooks: &mut Hooks,
    ) -> Result<Source<O::Outcome>, Error> {
        let (key_digest, value_digest) = (digest(key)?, digest(value)?);
        let instance = this
            .registry()
            .entry(key_digest.clone())
            .or_insert_with(|| {
                Arc::new(Instance {
                    cache: Arc::downgrade(this),
                    key: key.clone(),
                    digest: key_digest,
                    label: label.to_owned(),
                    source: Source::new(Output::Active(ActiveState::Ready)),
                    wake: Notify::new(),
                    state: Mutex::new(State {
                        refs: 0,
                        schedules: Vec::new(),
                        desired: None,
                        loaded: false,
                        current: None,
                        rebuild: false,
                        running: None,
                        driver: None,
                        shown_job: None,
                    }),
                })
            })
            .clone();
        {
            let mut st = instance.lock();
            if let Some(desired) = &st.desired {
                if desired.step == hooks.step() && desired.digest != value_digest && st.refs > 0 {
                    return Err(Error::msg(format!(
                        "{} ({}) was set to two different values in the same step",
                        label,
                        this.op.id()
                    )));
                }
            }
            st.refs += 1;
            st.schedules.push(schedule);
            st.desired = Some(Desired { value: value.clone(), digest: value_digest, step: hooks.step() });
            if !st.loaded {
                instance.load(this, &mut st);
            }
            instance.drop_obsolete_plan(&mut st);
            instance.plan(this, &mut st);
            instance.show(this, &st);
        }
        instance.wake.notify_one();
        let start = instance.clone();
        hooks.after_step(move || start.ensure_driver());
        let release = instance.clone();
        hooks.on_release(move || release.release(schedule));
        Ok(instance.source.clone())
    }

    /// Asks for `key` to run again (if it is in use).
    pub(crate) fn rebuild(&self, key: &O::Key) -> Result<(), Error> {
        let d = digest(key)?;
        let instance = self.registry().get(&d).cloned();
        match instance {
            Some(i) => i.request_rebuild(),
            None => Err(Error::msg(format!("{} has no key {d} in use", self.op.id()))),
        }
    }
}

/// The state a job shows first, and the pool slot it gets now: waiting for
/// confirmation if its level needs it; else running with a slot taken now,
/// or ready (queued) if the pool is full.
fn first_state(ctx: &Context, level: Level, pool: Option<&Pool>) -> (ActiveState, Option<PoolGuard>) {
    if !ctx.config().is_confirmed(level) {
        return (ActiveState::WaitingForConfirmation, None);
    }
    match pool {
        None => (ActiveState::Running, None),
        Some(pool) => match pool.try_acquire() {
            Some(slot) => (ActiveState::Running, Some(slot)),
            None => (ActiveState::Ready, None),
        },
    }
}

fn active_state(status: JobStatus) -> Option<ActiveState> {
    match status {
        JobStatus::WaitingForConfirmation => Some(ActiveState::WaitingForConfirmation),
        JobStatus::Queued => Some(ActiveState::Ready),
        JobStatus::Running => Some(ActiveState::Running),
        JobStatus::Ready | JobStatus::Finished => None,
    }
}

impl<O: Operation> Instance<O> {
    fn lock(&self) -> MutexGuard<'_, State<O>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the key's last outcome from the store (within the evaluation
    /// step that first uses the key, so the stage starts in its true state).
    fn load(self: &Arc<Self>, cache: &Cache<O>, st: &mut State<O>) {
        st.loaded = true;
        let id = cache.op.id();
        let row = match cache.ctx.store.latest_blocking(id, &self.digest) {
            Ok(Some(row)) => row,
            Ok(None) => return,
            Err(e) => {
                // Unknown history: running again could repeat a publish.
                let e = Error::msg(format!("cannot read the last outcome from the store: {e}"));
                st.current =
                    Some(Done { value_digest: String::new(), result: Err(e), finished: 0, job_id: String::new() });
                return;
            }
        };
        self.show_job(cache, st, &row.job_id);
        if row.rebuild || (row.interrupted && cache.op.idempotent()) {
            return; // run again
        }
        let value_digest = row.value.clone().unwrap_or_else(|| unit_digest().to_owned());
        let result = if row.ok {
            match serde_json::from_str::<O::Outcome>(&row.outcome) {
                Ok(v) => Ok(v),
                Err(e) => {
                    tracing::warn!(
                        op = id,
                        key = self.digest,
                        "stored outcome no longer deserializes ({e}); running again"
                    );
                    let (store, op, key) = (cache.ctx.store.clone(), id.to_owned(), self.digest.clone());
                    if let Ok(rt) = tokio::runtime::Handle::try_current() {
                        rt.spawn(async move { store.invalidate(&op, &key).await });
                    }
                    return;
                }
            }
        } else if row.unavailable {
            Err(Error::new(ErrorKind::Unavailable, row.outcome.clone()))
        } else {
            Err(Error::msg(row.outcome.clone()))
        };
        st.current = Some(Done { value_digest, result, finished: row.finished, job_id: row.job_id });
    }

    /// When the current outcome expires: `finished` plus the earliest
    /// schedule, as in OCurrent, whether it succeeded or failed (a failed
    /// scheduled job is tried again on its schedule); a failure also
    /// expires after its schedules' `retry_failures_after` (else the
    /// operation's), if sooner, and an [`ErrorKind::Unavailable`] one after
    /// [`RETRY_UNAVAILABLE`](super::RETRY_UNAVAILABLE) at the latest.
    fn expires_at(cache: &Cache<O>, st: &State<O>) -> Option<i64> {
        let done = st.current.as_ref()?;
        let scheduled = st.schedules.iter().filter_map(|s| s.valid_for).min();
        let retry = match &done.result {
            Err(e) => {
                // The uses' own rule wins over the operation's default; a
                // service that did not answer is asked again in any case.
                let per_use = st.schedules.iter().filter_map(|s| s.retry_failures_after).min();
                let rule = per_use.or_else(|| cache.op.retry_failures_after());
                match e.kind() {
                    ErrorKind::Unavailable => {
                        Some(rule.map_or(super::RETRY_UNAVAILABLE, |r| r.min(super::RETRY_UNAVAILABLE)))
                    }
                    _ => rule,
                }
            }
            Ok(_) => None,
        };
        let valid_for = [scheduled, retry].into_iter().flatten().min()?;
        Some(done.finished + valid_for.as_millis() as i64)
    }

    /// Why a run is needed now, if it is.
    fn reason(cache: &Cache<O>, st: &State<O>) -> Option<Reason> {
        let desired = st.desired.as_ref()?;
        match &st.current {
            None => Some(Reason::New),
            Some(done) if done.value_digest != desired.digest => Some(Reason::New),
            Some(_) if st.rebuild => Some(Reason::Rebuild),
            Some(_) => {
                Instance::expires_at(cache, st).filter(|t| cache.ctx.clock().now_ms() >= *t).map(|_| Reason::Expired)
            }
        }
    }

    /// A planned (not yet executing) run for a value no longer wanted is
    /// dropped, so that the right one is planned.
    fn drop_obsolete_plan(&self, st: &mut State<O>) {
        let wanted = st.desired.as_ref().map(|d| d.digest.clone());
        let Some(run) = &mut st.running else { return };
        let stale = Some(&run.value_digest) != wanted.as_ref();
        if !stale {
            return;
        }
        if !run.executing {
            run.job.log("Not started: a newer value is wanted");
            run.job.finish();
            st.running = None;
        } else if self.cache.upgrade().is_some_and(|c| c.op.auto_cancel()) && !run.obsolete {
            run.obsolete = true;
            run.job.cancel("Auto-cancelling job because it is no longer needed");
        }
    }

    /// Creates the job for the next run, if one is needed and none is
    /// planned or running. Called within evaluation steps, by the driver
    /// after each run, and by operators' rebuilds.
    fn plan(self: &Arc<Self>, cache: &Cache<O>, st: &mut State<O>) {
        if st.running.is_some() || st.refs == 0 {
            return;
        }
        let Some(reason) = Instance::reason(cache, st) else { return };
        let desired = st.desired.as_ref().expect("a reason needs a desired value");
        let value = desired.value.clone();
        let value_digest = desired.digest.clone();
        let description = cache.op.describe(&self.key, &value).unwrap_or_else(|| self.label.clone());
        let job = match cache.ctx.jobs.create(cache.op.id(), &description) {
            Ok(job) => job,
            Err(e) => {
                // The state directory could not be written (a full disk,
                // say): nothing ran, so it is tried again later by itself.
                let result = Err(Error::new(ErrorKind::Unavailable, format!("cannot create a job: {}", e.message())));
                st.current =
                    Some(Done { value_digest, result, finished: cache.ctx.clock().now_ms(), job_id: String::new() });
                return;
            }
        };
        job.log(&format!("New job: {description}"));
        let level = cache.op.level(&self.key);
        let pool = cache.op.pool();
        let latch = st.current.is_some() && (cache.op.latched() || reason == Reason::Expired);
        if let Some(pool) = &pool {
            cache.ctx.jobs.note_pool(pool);
        }
        let (active, slot) = first_state(&cache.ctx, level, pool.as_ref());
        st.rebuild = false;
        st.running = Some(Running {
            active,
            slot,
            job: job.clone(),
            value,
            value_digest,
            latch,
            obsolete: false,
            executing: false,
            priority: if st.current.is_some() { Priority::Low } else { Priority::High },
        });
        self.show_job(cache, st, job.id());
    }

    /// Registers the actions of `job_id` (shown on the stage now), and
    /// forgets those of the job shown before.
    fn show_job(self: &Arc<Self>, cache: &Cache<O>, st: &mut State<O>, job_id: &str) {
        if let Some(old) = st.shown_job.replace(job_id.to_owned()) {
            if old != job_id {
                cache.ctx.jobs.remove_actions(&old);
            }
        }
        let actions: Arc<dyn JobActions> = Arc::new(RebuildAction(Arc::downgrade(self)));
        cache.ctx.jobs.set_actions(job_id, actions);
    }

    /// Shows the state on the stages: the outcome, or pending, or the
    /// previous outcome with the update in progress.
    fn show(&self, cache: &Cache<O>, st: &State<O>) {
        let desired = st.desired.as_ref().map(|d| d.digest.as_str());
        let (value, update) = match (&st.running, &st.current) {
            (Some(run), Some(done)) if run.latch => (done.result.clone().into(), Some(run.active)),
            (Some(run), _) => (Output::Active(run.active), None),
            (None, Some(done)) if Some(done.value_digest.as_str()) == desired => (done.result.clone().into(), None),
            (None, Some(done)) if cache.op.latched() => (done.result.clone().into(), None),
            (None, _) => (Output::Active(ActiveState::Ready), None),
        };
        let job_id = match (&st.running, &st.current) {
            (Some(run), _) => Some(run.job.id().to_owned()),
            (None, Some(done)) if !done.job_id.is_empty() => Some(done.job_id.clone()),
            _ => st.shown_job.clone(),
        };
        self.source.update(|v, m| {
            *v = value;
            *m = Metadata { job_id, update };
        });
    }

    fn ensure_driver(self: &Arc<Self>) {
        let Some(cache) = self.cache.upgrade() else { return };
        let mut st = self.lock();
        if st.refs == 0 || st.driver.is_some() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            drop(st);
            self.source.set(Output::Err(Error::msg("no tokio runtime to run jobs")));
            return;
        };
        let me = self.clone();
        st.driver = Some(rt.spawn(async move { me.drive(cache).await }).abort_handle());
    }

    fn release(self: &Arc<Self>, schedule: super::Schedule) {
        let Some(cache) = self.cache.upgrade() else { return };
        let mut map = cache.registry();
        let mut st = self.lock();
        st.refs -= 1;
        if let Some(pos) = st.schedules.iter().position(|s| *s == schedule) {
            st.schedules.remove(pos);
        }
        if st.refs > 0 {
            drop(st);
            self.wake.notify_one();
            return;
        }
        if let Some(run) = &mut st.running {
            if !run.executing {
                run.job.log("Not started: no longer needed");
                run.job.finish();
                st.running = None;
            } else {
                if cache.op.auto_cancel() && !run.obsolete {
                    run.obsolete = true;
                    run.job.cancel("Auto-cancelling job because it is no longer needed");
                }
                return; // the driver retires the instance when the run ends
            }
        }
        self.retire(&cache, &mut st, &mut map);
    }

    /// Removes an unused instance: stops its driver and forgets its actions.
    fn retire(self: &Arc<Self>, cache: &Cache<O>, st: &mut State<O>, map: &mut HashMap<String, Arc<Instance<O>>>) {
        if let Some(driver) = st.driver.take() {
            driver.abort();
        }
        if let Some(id) = st.shown_job.take() {
            cache.ctx.jobs.remove_actions(&id);
        }
        if map.get(&self.digest).is_some_and(|i| Arc::ptr_eq(i, self)) {
            map.remove(&self.digest);
        }
    }

    fn request_rebuild(self: &Arc<Self>) -> Result<(), Error> {
        let cache = self.cache.upgrade().ok_or_else(|| Error::msg("this stage is no longer part of the pipeline"))?;
        let mut st = self.lock();
        if let Some(run) = &st.running {
            return Err(Error::msg(format!("{} is still running (job {})", self.label, run.job.id())));
        }
        st.rebuild = true;
        let (store, op, digest) = (cache.ctx.store.clone(), cache.op.id().to_owned(), self.digest.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { store.mark_rebuild(&op, &digest).await });
        }
        self.plan(&cache, &mut st);
        self.show(&cache, &st);
        drop(st);
        self.wake.notify_one();
        Ok(())
    }

    /// Runs planned jobs one at a time, sleeps until a wake-up or the
    /// expiry of the outcome, and leaves once the instance is unused.
    async fn drive(self: Arc<Self>, cache: Arc<Cache<O>>) {
        loop {
            let next = {
                let mut st = self.lock();
                self.plan(&cache, &mut st);
                self.show(&cache, &st);
                match &mut st.running {
                    Some(run) => {
                        run.executing = true;
                        let slot = run.slot.take();
                        Ok((run.job.clone(), run.value.clone(), run.value_digest.clone(), run.priority, slot))
                    }
                    None => Err(Instance::expires_at(&cache, &st)),
                }
            };
            match next {
                Ok((job, value, value_digest, priority, slot)) => {
                    self.execute(&cache, job, value, value_digest, priority, slot).await;
                    let mut map = cache.registry();
                    let mut st = self.lock();
                    if st.refs == 0 {
                        st.driver = None; // this task: it ends here
                        self.retire(&cache, &mut st, &mut map);
                        return;
                    }
                }
                Err(expires) => {
                    let clock = cache.ctx.clock().clone();
                    let expiry = async {
                        match expires {
                            Some(t) => clock.sleep_until(t).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = expiry => {}
                    }
                }
            }
        }
    }

    /// Runs one job: confirmation and pool slot, durable start, the work,
    /// durable outcome; then updates the instance.
    async fn execute(
        self: &Arc<Self>,
        cache: &Arc<Cache<O>>,
        job: Job,
        value: O::Value,
        value_digest: String,
        priority: Priority,
        slot: Option<PoolGuard>,
    ) {
        let ctx = &cache.ctx;
        let op = &cache.op;
        let ready = ctx.clock().now_ms();
        let mut status = job.subscribe_status();
        let result = {
            let run = async {
                // A slot taken when the run was planned is kept; else the job
                // queues for one (after its confirmation).
                let _slot = slot;
                let pool = if _slot.is_some() { None } else { op.pool() };
                let _queued_slot =
                    job.start(op.level(&self.key), pool.as_ref().map(|p| (p, priority)), op.timeout()).await?;
                // Noted durably only now: a job that died waiting for confirmation
                // or a pool slot never touched anything, so it is not "interrupted".
                let start = JobStart {
                    op: op.id(),
                    key: &self.digest,
                    value: O::STORES_VALUE.then_some(value_digest.as_str()),
                    job_id: job.id(),
                    description: job.description(),
                };
                ctx.store.record_start(start).await.map_err(|e| {
                    Error::new(ErrorKind::Unavailable, format!("cannot record the start of the job: {e}"))
                })?;
                CatchUnwind(op.run(&job, &self.key, &value)).await
            };
            tokio::pin!(run);
            let result = loop {
                tokio::select! {
                    r = &mut run => break r,
                    changed = status.changed() => if changed.is_ok() {
                        if let Some(active) = active_state(*status.borrow_and_update()) {
                            let mut st = self.lock();
                            if let Some(r) = &mut st.running {
                                r.active = active;
                            }
                            self.show(cache, &st);
                        }
                    },
                }
            };
            result
        };
        // A cancelled job that did not succeed ends "Cancelled" (or timed
        // out); its own error is in the log.
        let result = match (result, job.cancellation_error()) {
            // Cancelled before it started: the error says what it waited for.
            (Err(e), Some(_)) if job.info().started.is_none() => Err(e),
            (Err(e), Some(cancelled)) => {
                job.log(&format!("Error after cancelling: {}", e.message()));
                Err(cancelled)
            }
            (result, _) => result,
        };
        let result = result.and_then(|outcome| {
            serde_json::to_string(&outcome)
                .map(|json| (outcome, json))
                .map_err(|e| Error::msg(format!("cannot serialize the outcome: {e}")))
        });
        match &result {
            Ok(_) => job.log("Job succeeded"),
            Err(e) => job.log(&format!("Job failed: {}", e.message())),
        }
        let obsolete = self.lock().running.as_ref().is_some_and(|r| r.obsolete);
        let (ok, outcome) = match &result {
            Ok((_, json)) => (true, json.clone()),
            Err(e) => (false, ctx.jobs.scrub(e.message())),
        };
        let record = JobRecord {
            op: op.id().to_owned(),
            key: self.digest.clone(),
            build: 0,
            job_id: job.id().to_owned(),
            description: job.description().to_owned(),
            value: O::STORES_VALUE.then(|| value_digest.clone()),
            ok,
            outcome,
            // A cancelled run's outcome, even a success, is never reloaded
            // as the answer for its value (OCurrent's rule).
            rebuild: obsolete,
            interrupted: false,
            unavailable: result.as_ref().err().is_some_and(|e| e.kind() == ErrorKind::Unavailable),
            ready,
            running: job.info().started,
            finished: ctx.clock().now_ms(),
        };
        let unrecorded = match ctx.store.record(record).await {
            Ok(_) => None,
            Err(e) => {
                let e = format!("cannot record the outcome of job {}: {e}", job.id());
                tracing::error!("{e}");
                job.log(&e);
                Some(e)
            }
        };
        let mut st = self.lock();
        st.running = None;
        let wanted = st.desired.as_ref().is_some_and(|d| d.digest == value_digest);
        match result {
            // A run auto-cancelled because its value was no longer wanted is
            // not the answer, even if it succeeded (it may have stopped half
            // way, or published something already superseded): as in
            // OCurrent, if the value is wanted again, a new run starts, and a
            // latched stage keeps showing the outcome before it.
            Ok(_) if obsolete => {
                job.log("Its result is discarded: the job was cancelled because it was no longer needed");
            }
            Ok((outcome, _)) => {
                st.current = Some(Done {
                    value_digest,
                    result: Ok(outcome),
                    finished: ctx.clock().now_ms(),
                    job_id: job.id().to_owned(),
                });
            }
            // A failure that could not be recorded is not the answer for
            // its value (a restart would not know it): it shows, saying why,
            // and is tried again later by itself, as when a service did not
            // answer (the store's disk was full, say). Not at once: a
            // store that refuses writes would make that a busy loop.
            Err(e) if wanted && !obsolete && unrecorded.is_some() => {
                let why = unrecorded.unwrap_or_default();
                let message = format!("{}; and {why}", ctx.jobs.scrub(e.message()));
                st.current = Some(Done {
                    value_digest,
                    result: Err(Error::new(ErrorKind::Unavailable, message)),
                    finished: ctx.clock().now_ms(),
                    job_id: job.id().to_owned(),
                });
            }
            // Sticky, unless it was for a value no longer wanted or
            // cancelled because no longer needed.
            Err(e) if wanted && !obsolete => {
                let e = e.with_message(ctx.jobs.scrub(e.message()));
                st.current = Some(Done {
                    value_digest,
                    result: Err(e),
                    finished: ctx.clock().now_ms(),
                    job_id: job.id().to_owned(),
                });
            }
            _ => {}
        }
        self.show(cache, &st);
        drop(st);
        // Finished only once the stages show the outcome: whoever waits for
        // the job to finish then sees its outcome in the next step.
        job.finish();
    }
}

/// The digest of `()`, the value of every build.
pub(crate) fn unit_digest() -> &'static str {
    static UNIT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    UNIT.get_or_init(|| digest(&()).expect("() serializes"))
}

/// The "rebuild" action of a job, pointing at its instance.
struct RebuildAction<O: Operation>(Weak<Instance<O>>);

impl<O: Operation> JobActions for RebuildAction<O> {
    fn rebuild(&self) -> Result<(), Error> {
        match self.0.upgrade() {
            Some(i) => i.request_rebuild(),
            None => Err(Error::msg("this job's stage is no longer part of the pipeline")),
        }
    }

    fn latest_job(&self) -> Option<String> {
        let i = self.0.upgrade()?;
        let st = i.lock();
        st.running.as_ref().map(|r| r.job.id().to_owned()).or_else(|| st.shown_job.clone())
    }

    fn key_json(&self) -> Option<serde_json::Value> {
        serde_json::to_value(&self.0.upgrade()?.key).ok()
    }
}
