//! Caches: builds that run once per key, and publishes that run once per
//! value, with their outcomes kept in the store.
//!
//! - [`BuildCache`] runs a [`Builder`] once per key and remembers the result
//!   (success or failure) across restarts. A [`Schedule`] makes results
//!   expire; the old value stays visible while the rebuild runs.
//! - [`OutputCache`] runs a [`Publisher`] to set a key to a value, again only
//!   when the value's digest changes. A publish whose outcome was recorded is
//!   never repeated for the same value, even across restarts.
//!
//! Failures are sticky: a failed build or publish is not retried until an
//! operator asks for a rebuild or the key (or value) changes.

mod build;
mod instance;
mod output;

use std::future::Future;
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest as _, Sha256};

pub use build::{BuildCache, Builder};
pub use output::{OutputCache, Publisher};

use crate::config::Level;
use crate::context::Context;
use crate::job::{Job, JobStatus, Pool, Priority};
use crate::output::{ActiveState, Error};
use crate::primitive::CatchUnwind;
use crate::store::{now_ms, BuildRecord};

/// How long a cached result stays valid.
///
/// When a key is used with several schedules, the earliest expiry wins.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Schedule {
    /// Rebuild after this long; `None`: valid until a rebuild is requested.
    pub valid_for: Option<Duration>,
}

impl Schedule {
    /// Results never expire.
    pub fn never() -> Schedule {
        Schedule { valid_for: None }
    }

    /// Results expire `period` after they were produced.
    pub fn every(period: Duration) -> Schedule {
        Schedule { valid_for: Some(period) }
    }
}

/// The digest of a key or value: SHA-256 of its JSON form, in hex. Fails
/// for values JSON cannot represent (such as maps with non-string keys).
pub fn digest<T: Serialize>(value: &T) -> Result<String, Error> {
    let json =
        serde_json::to_vec(value).map_err(|e| Error::msg(format!("cannot serialize a cache key or value: {e}")))?;
    let hash = Sha256::digest(&json);
    Ok(hash.iter().map(|b| format!("{b:02x}")).collect())
}

/// What an operation needs to start its job.
pub(crate) struct JobPlan<'a> {
    pub(crate) op: &'static str,
    pub(crate) key: &'a str,
    pub(crate) value: Option<&'a str>,
    pub(crate) description: String,
    pub(crate) level: Level,
    pub(crate) pool: Option<(Pool, Priority)>,
    pub(crate) timeout: Option<Duration>,
}

/// What happened to a job run by a cache.
pub(crate) struct JobRun {
    pub(crate) job_id: String,
    /// The JSON outcome, or the error.
    pub(crate) result: Result<String, Error>,
    /// Whether the outcome reached the store (if not, the run is retried).
    pub(crate) recorded: bool,
}

/// The pending state shown for a job in `status`.
pub(crate) fn active_state(status: JobStatus) -> ActiveState {
    match status {
        JobStatus::WaitingForConfirmation => ActiveState::WaitingForConfirmation,
        JobStatus::Running | JobStatus::Finished => ActiveState::Running,
        JobStatus::Ready | JobStatus::Queued => ActiveState::Ready,
    }
}

/// Runs one job for a cache: notes its start durably, waits for confirmation
/// and a pool slot, runs `work`, then records the outcome durably before the
/// job is reported finished. `on_job` is told the job once it exists;
/// `on_status` each time its status changes; `obsolete` is asked, when the
/// job ends, whether it was cancelled because it is no longer wanted (then
/// the outcome is recorded as needing a rebuild, so it is not sticky).
pub(crate) async fn run_job<W, F>(
    ctx: &Context,
    plan: JobPlan<'_>,
    on_job: impl FnOnce(&Job),
    on_status: impl Fn(ActiveState),
    obsolete: impl Fn() -> bool,
    work: W,
) -> JobRun
where
    W: FnOnce(Job) -> F,
    F: Future<Output = Result<String, Error>> + Send,
{
    let ready = now_ms();
    let job = match ctx.jobs.create(plan.op) {
        Ok(job) => job,
        Err(e) => return JobRun { job_id: String::new(), result: Err(e), recorded: false },
    };
    job.log(&format!("New job: {}", plan.description));
    on_job(&job);
    let mut status = job.subscribe_status();
    let run = async {
        let _slot = job.start(plan.level, plan.pool.as_ref().map(|(p, prio)| (p, *prio)), plan.timeout).await?;
        // Noted durably only now: a job that died waiting for confirmation
        // or a pool slot never touched anything, so it is not "interrupted".
        if let Err(e) = ctx.store.record_start(plan.op, plan.key, plan.value, job.id()).await {
            return Err(Error::msg(format!("cannot record the start of the job: {e}")));
        }
        // Cancelling drops the work, whether or not it watches for it (its
        // child processes are killed on drop).
        tokio::select! {
            r = CatchUnwind(Box::pin(work(job.clone()))) => r,
            reason = job.cancelled() => Err(Error::msg(format!("Cancelled: {reason}"))),
        }
    };
    tokio::pin!(run);
    let result = loop {
        tokio::select! {
            r = &mut run => break r,
            changed = status.changed() => if changed.is_ok() {
                let s = *status.borrow_and_update();
                on_status(active_state(s));
            },
        }
    };
    let result = match (result, job.cancelled_reason()) {
        (Ok(v), _) => Ok(v),
        (Err(_), Some(reason)) => Err(Error::msg(format!("Cancelled: {reason}"))),
        (Err(e), None) => Err(e),
    };
    match &result {
        Ok(_) => job.log("Job succeeded"),
        Err(e) => job.log(&format!("Job failed: {}", e.message())),
    }
    let started = job.info().started;
    let (ok, outcome) = match &result {
        Ok(json) => (true, json.clone()),
        Err(e) => (false, ctx.jobs.scrub(e.message())),
    };
    let record = BuildRecord {
        op: plan.op.to_owned(),
        key: plan.key.to_owned(),
        build: 0,
        job_id: job.id().to_owned(),
        value: plan.value.map(str::to_owned),
        ok,
        outcome,
        rebuild: !ok && obsolete(),
        interrupted: false,
        ready,
        running: started,
        finished: now_ms(),
    };
    let recorded = match ctx.store.record(record).await {
        Ok(_) => true,
        Err(e) => {
            job.log(&format!("cannot record the outcome: {e}"));
            false
        }
    };
    job.finish();
    let result = result.map_err(|e| Error::msg(ctx.jobs.scrub(e.message())));
    JobRun { job_id: job.id().to_owned(), result, recorded }
}
