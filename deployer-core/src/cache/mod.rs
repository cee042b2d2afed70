//! Caches: every piece of external work as a cached operation with a job.
//!
//! - [`BuildCache`] runs a [`Builder`] once per key and remembers the result
//!   (success or failure) across restarts. A [`Schedule`] makes results
//!   expire; the old value stays visible while the rebuild runs.
//! - [`OutputCache`] runs a [`Publisher`] to set a key to a value, again only
//!   when the value's digest changes. A publish whose outcome was recorded is
//!   never repeated for the same value, even across restarts.
//! - [`Current::run`](crate::Current::run) is a builder written as a closure.
//!
//! Each use of a cache is a box with its own label (`docker push
//! org/app:live`); the operation's `ID` is its stable name in the store.
//! Every run is a job: it has an id and a log, waits for confirmation when
//! its level is at or above the threshold, takes a pool slot, and leaves a
//! history row saying what it did. A job starts within the evaluation step
//! that asks for it, so its box goes straight to running (or waiting).
//!
//! Failures are sticky: a failed build or publish is not retried until an
//! operator asks for a rebuild or the key (or value) changes. Cancelling a
//! job is a request the operation sees ([`Job::cancelled`]); what it returns
//! is recorded, and an error then reads "Cancelled". A *latched* operation
//! keeps showing its previous outcome while it runs again (the diagram shows
//! the update as a gradient); an *idempotent* one is re-run by itself after
//! a crash interrupted it, where others wait for an operator.
//!
//! All of them share one driver (`cache/driver.rs`); [`BuildCache`] and
//! [`OutputCache`] only adapt their traits to it.

mod build;
mod closure;
mod driver;
mod output;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

pub use build::BuildCache;
pub use output::OutputCache;

use crate::config::Level;
use crate::job::{Job, Pool};
use crate::output::Error;
use crate::term::Value;

/// After how long, at the latest, a failure of kind
/// [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) (a daemon,
/// registry or host that did not answer) is tried again by itself, whatever
/// the operation's or the use's rule: one minute. Such a failure says
/// nothing about the value, so no operator should have to ask again once
/// the service is back.
pub const RETRY_UNAVAILABLE: Duration = Duration::from_secs(60);

/// How long a cached result stays valid, and how soon a failure is tried
/// again.
///
/// When a key is used with several schedules, the earliest expiry wins.
///
/// ```
/// use std::time::Duration;
/// use deployer_core::Schedule;
/// // A monthly backup whose failure is tried again after an hour, not a month.
/// let monthly = Schedule::every(Duration::from_secs(30 * 86_400)).retry_failures_after(Duration::from_secs(3600));
/// assert_eq!(monthly.to_string(), "valid for 720 h, a failure tried again after 1 h");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Schedule {
    /// Run again after this long; `None`: valid until a rebuild is requested.
    pub valid_for: Option<Duration>,
    /// Try a failure again after this long, if that is sooner than
    /// `valid_for`, instead of the operation's own rule
    /// ([`Builder::retry_failures_after`]: a pull's 10 minutes, say).
    /// `None`: the operation's rule.
    pub retry_failures_after: Option<Duration>,
}

impl Schedule {
    /// Results never expire.
    pub fn never() -> Schedule {
        Schedule { valid_for: None, retry_failures_after: None }
    }

    /// Results expire `period` after they were produced.
    pub fn every(period: Duration) -> Schedule {
        Schedule { valid_for: Some(period), retry_failures_after: None }
    }

    /// The same schedule, with a failed run tried again `after` it ended.
    pub fn retry_failures_after(self, after: Duration) -> Schedule {
        Schedule { retry_failures_after: Some(after), ..self }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.valid_for {
            None => f.write_str("never expires")?,
            Some(d) => write!(f, "valid for {}", crate::job::human_duration(d))?,
        }
        match self.retry_failures_after {
            None => Ok(()),
            Some(d) => write!(f, ", a failure tried again after {}", crate::job::human_duration(d)),
        }
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
///     fn describe(&self, key: &String) -> Option<String> {
///         Some(format!("checksum {key}"))
///     }
///     async fn build(&self, job: &Job, key: &String) -> Result<u64, Error> {
///         job.log(&format!("summing {key}"));
///         Ok(key.bytes().map(u64::from).sum())
///     }
/// }
/// ```
#[async_trait]
pub trait Builder: Send + Sync + 'static {
    /// The operation's stable name in the store (and part of its jobs' ids).
    /// Changing it forgets every cached result. Boxes get their labels from
    /// each use ([`BuildCache::get`]).
    const ID: &'static str;
    /// What identifies one build (serialized to compute its digest).
    type Key: Value + Serialize;
    /// The result (serialized into the store).
    type Value: Value + Serialize + DeserializeOwned;

    /// What a job building `key` does, in words (`docker build 4f2a9c1`),
    /// for its page and its history row. `None`: the box's label.
    fn describe(&self, _key: &Self::Key) -> Option<String> {
        None
    }

    /// How risky building `key` is (jobs at or above the threshold wait for
    /// confirmation).
    fn level(&self, _key: &Self::Key) -> Level {
        Level::Average
    }

    /// Whether a build no longer needed by the pipeline is asked to stop
    /// (else it finishes and its result is kept).
    fn auto_cancel(&self) -> bool {
        false
    }

    /// Whether the previous result stays shown (with the update in
    /// progress) while the key is built again after a rebuild request.
    /// Expired results always stay shown while they are rebuilt.
    fn latched(&self) -> bool {
        false
    }

    /// After how long a failed build is tried again by itself. `None` (the
    /// default): failures are sticky until a rebuild is asked for or the key
    /// changes, except those of kind
    /// [`Unavailable`](crate::ErrorKind::Unavailable), retried after
    /// [`RETRY_UNAVAILABLE`]. Set it for other failures that pass.
    fn retry_failures_after(&self) -> Option<Duration> {
        None
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

/// An operation that sets a key to a value somewhere outside (a push, a
/// service update, a status on GitHub).
///
/// It runs again only when the value's digest changes. A publish whose
/// outcome was recorded is never repeated for the same value. A publish
/// interrupted by a crash is run again after the restart if the publisher is
/// [idempotent](Publisher::idempotent); otherwise it is recorded as failed
/// and waits for an operator.
#[async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// The operation's stable name in the store (and part of its jobs' ids).
    const ID: &'static str;
    /// What is being set (a service name, a tag).
    type Key: Value + Serialize;
    /// The value to set it to (only its digest is stored).
    type Value: Value + Serialize;
    /// What publishing returns (stored).
    type Outcome: Value + Serialize + DeserializeOwned;

    /// What a job setting `key` to `value` does, in words (`service web :=
    /// sha256:…`), for its page and its history row. `None`: the box's label.
    fn describe(&self, _key: &Self::Key, _value: &Self::Value) -> Option<String> {
        None
    }

    /// How risky publishing is.
    fn level(&self) -> Level {
        Level::Dangerous
    }

    /// Whether a publish is asked to stop when a newer value arrives (else
    /// it finishes, then the newer value is published).
    fn auto_cancel(&self) -> bool {
        false
    }

    /// Whether the previous outcome stays shown, with the update in
    /// progress, while a new value is published (a service keeps serving
    /// the old version while it is updated).
    fn latched(&self) -> bool {
        false
    }

    /// Whether publishing the same value twice is harmless (setting a
    /// service to an image digest, a commit status, a tag): then a publish
    /// interrupted by a crash is run again after the restart instead of
    /// waiting for an operator.
    fn idempotent(&self) -> bool {
        false
    }

    /// After how long a failed publish is tried again by itself. `None` (the
    /// default): failures are sticky until a rebuild is asked for or the
    /// value changes, except those of kind
    /// [`Unavailable`](crate::ErrorKind::Unavailable), retried after
    /// [`RETRY_UNAVAILABLE`].
    fn retry_failures_after(&self) -> Option<Duration> {
        None
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
