//! Jobs: the unit of work behind a box of the diagram, with its log.
//!
//! A job has an id of the form `YYYY-MM-DD/HHMMSS-<label>-<random>` (UTC) and
//! one append-only log file, `<state>/job/<id>.log`. Each write opens,
//! appends and closes the file, so a job waiting in a queue holds no file
//! handle. Readers can follow a log live from any offset.
//!
//! A job is started with [`Job::start`], which waits for the operator's
//! confirmation when the job's level is at or above the threshold, then for
//! a slot in a [`Pool`]. It can be cancelled with a reason; processes it runs
//! through [`Job::exec`] are killed then.

mod pool;
mod process;

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{watch, Notify};

pub use pool::{Pool, PoolGuard, Priority};
pub use process::{LogLines, OutputStream};

use crate::clock::Clock;
use crate::config::{Config, Level};
use crate::output::{Error, ErrorKind};

/// A job id that is not of the form `YYYY-MM-DD/<name>`, or tries to leave
/// the log directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadJobId(pub String);

impl fmt::Display for BadJobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid job id {:?} (expected YYYY-MM-DD/HHMMSS-label-xxxxxx)", self.0)
    }
}

impl std::error::Error for BadJobId {}

/// Checks a job id and returns its log file's path relative to the job
/// directory. Rejects anything that could escape it (`..`, `/`, `\`, NUL,
/// leading dots).
pub fn log_path(id: &str) -> Result<PathBuf, BadJobId> {
    let bad = || BadJobId(id.to_owned());
    let (date, name) = id.split_once('/').ok_or_else(bad)?;
    let date_ok = date.len() == 10
        && date.bytes().enumerate().all(|(i, b)| if i == 4 || i == 7 { b == b'-' } else { b.is_ascii_digit() });
    let name_ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.contains("..");
    if !date_ok || !name_ok {
        return Err(bad());
    }
    Ok(Path::new(date).join(format!("{name}.log")))
}

fn sanitize_label(label: &str) -> String {
    let s: String = label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '-' })
        .take(40)
        .collect();
    if s.is_empty() {
        "job".to_owned()
    } else {
        s
    }
}

fn random_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    format!("{:06x}", h.finish() & 0xff_ffff)
}

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Created, not started.
    Ready,
    /// Held until an operator confirms (its level is at or above the threshold).
    WaitingForConfirmation,
    /// Waiting for a slot in a pool.
    Queued,
    /// Running.
    Running,
    /// Finished (its log is closed).
    Finished,
}

/// What the web UI lists about an active job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JobInfo {
    /// The job's id.
    pub id: String,
    /// What the job does (`docker push org/app:live`).
    pub description: String,
    /// Where it is in its life.
    pub status: JobStatus,
    /// When it was created (Unix milliseconds).
    pub created: i64,
    /// When it started running, if it has.
    pub started: Option<i64>,
    /// Its level, once it asked to start.
    pub level: Option<Level>,
    /// The reason it was cancelled, if it was.
    pub cancelled: Option<String>,
}

/// What an operator can do to the work behind a job (registered by caches).
pub trait JobActions: Send + Sync {
    /// Asks for the work to run again (a new job starts soon after).
    fn rebuild(&self) -> Result<(), Error>;

    /// The id of the stage's latest job (after a rebuild: the new one, once
    /// it exists).
    fn latest_job(&self) -> Option<String> {
        None
    }

    /// The key of the stage's work as JSON (as its digest was taken), so
    /// that a program can tell which subject a job is about (a commit, an
    /// image) without reading its description.
    fn key_json(&self) -> Option<serde_json::Value> {
        None
    }
}

struct JobsInner {
    dir: PathBuf,
    config: Config,
    clock: Clock,
    active: Mutex<BTreeMap<String, Job>>,
    actions: Mutex<BTreeMap<String, Arc<dyn JobActions>>>,
    pools: Mutex<BTreeMap<String, Pool>>,
}

/// The registry of jobs: creates them, lists the active ones, finds logs.
/// Cloning gives another handle on the same registry.
#[derive(Clone)]
pub struct Jobs {
    inner: Arc<JobsInner>,
}

impl fmt::Debug for Jobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Jobs({})", self.inner.dir.display())
    }
}

impl Jobs {
    /// A registry keeping logs under `dir`, with the run-time `config` and
    /// reading the time from `clock`.
    pub fn new(dir: &Path, config: Config, clock: Clock) -> Jobs {
        Jobs {
            inner: Arc::new(JobsInner {
                dir: dir.to_owned(),
                config,
                clock,
                active: Mutex::default(),
                actions: Mutex::default(),
                pools: Mutex::default(),
            }),
        }
    }

    /// The engine-wide settings (the confirmation threshold).
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The clock jobs read the time from.
    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Creates a job of operation `op` (part of its id) doing `description`
    /// (shown on its page and in the history), and its empty log file.
    pub fn create(&self, op: &str, description: &str) -> Result<Job, Error> {
        let now = self.inner.clock.now();
        // A new log file each time: a name already taken (by a job of the
        // same second whose random part collides, or by one that failed
        // before it could say so) gets another random part.
        let mut attempts = 0;
        let (id, path) = loop {
            let id = format!(
                "{}/{}-{}-{}",
                now.format("%Y-%m-%d"),
                now.format("%H%M%S"),
                sanitize_label(op),
                random_suffix()
            );
            let path = self.inner.dir.join(log_path(&id).map_err(|e| Error::msg(e.to_string()))?);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| Error::from(e).context(format!("creating {}", parent.display())))?;
            }
            match std::fs::OpenOptions::new().create_new(true).append(true).open(&path) {
                Ok(_) => break (id, path),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempts < 8 => attempts += 1,
                Err(e) => return Err(Error::from(e).context(format!("creating log {}", path.display()))),
            }
        };
        let (log_len, _) = watch::channel(0u64);
        let (status, _) = watch::channel(JobStatus::Ready);
        let (cancel, _) = watch::channel(None);
        let job = Job {
            inner: Arc::new(JobInner {
                id: id.clone(),
                description: description.to_owned(),
                path,
                jobs: Arc::downgrade(&self.inner),
                created: now.timestamp_millis(),
                started: Mutex::new(None),
                level: Mutex::new(None),
                log_len,
                status,
                cancel,
                approve: Notify::new(),
            }),
        };
        self.lock_active().insert(id, job.clone());
        Ok(job)
    }

    fn lock_active(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Job>> {
        self.inner.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The active job `id`, if it is still running (or waiting).
    pub fn get(&self, id: &str) -> Option<Job> {
        self.lock_active().get(id).cloned()
    }

    /// The active jobs, oldest first.
    pub fn active(&self) -> Vec<JobInfo> {
        let mut v: Vec<JobInfo> = self.lock_active().values().map(Job::info).collect();
        v.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        v
    }

    /// The active jobs doing `description` (as given to [`Jobs::create`]).
    pub fn find(&self, description: &str) -> Vec<Job> {
        self.lock_active().values().filter(|j| j.description() == description).cloned().collect()
    }

    /// Number of active jobs.
    pub fn active_count(&self) -> usize {
        self.lock_active().len()
    }

    /// The path of job `id`'s log, checking the id.
    pub fn log_file(&self, id: &str) -> Result<PathBuf, BadJobId> {
        Ok(self.inner.dir.join(log_path(id)?))
    }

    /// Reads up to `max` bytes of job `id`'s log from `offset`. Returns the
    /// bytes and whether the log is complete (the job has finished).
    pub fn read_log(&self, id: &str, offset: u64, max: usize) -> Result<(Vec<u8>, bool), Error> {
        use std::io::{Read, Seek, SeekFrom};
        let path = self.log_file(id).map_err(|e| Error::msg(e.to_string()))?;
        let finished = self.get(id).is_none();
        let mut file = std::fs::File::open(&path).map_err(|_| Error::msg(format!("no log for job {id}")))?;
        file.seek(SeekFrom::Start(offset)).map_err(|e| Error::msg(e.to_string()))?;
        let mut buf = Vec::with_capacity(max.min(1 << 20));
        file.take(max as u64).read_to_end(&mut buf).map_err(|e| Error::msg(e.to_string()))?;
        Ok((buf, finished))
    }

    /// Waits until job `id`'s log is longer than `offset` or the job has
    /// finished (returns at once for a finished job).
    pub async fn wait_for_log_data(&self, id: &str, offset: u64) {
        let Some(job) = self.get(id) else { return };
        let mut len = job.inner.log_len.subscribe();
        let mut status = job.inner.status.subscribe();
        loop {
            if *len.borrow_and_update() > offset || *status.borrow_and_update() == JobStatus::Finished {
                return;
            }
            tokio::select! {
                r = len.changed() => if r.is_err() { return },
                r = status.changed() => if r.is_err() { return },
            }
        }
    }

    /// Registers what an operator can do to the work behind job `id`.
    pub fn set_actions(&self, id: &str, actions: Arc<dyn JobActions>) {
        self.inner.actions.lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_owned(), actions);
    }

    /// Forgets job `id`'s actions (its work left the pipeline).
    pub fn remove_actions(&self, id: &str) {
        self.inner.actions.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }

    /// The actions registered for job `id`.
    pub fn actions(&self, id: &str) -> Option<Arc<dyn JobActions>> {
        self.inner.actions.lock().unwrap_or_else(|e| e.into_inner()).get(id).cloned()
    }

    /// Notes that jobs use `pool` (listed by [`Jobs::pools`]).
    pub(crate) fn note_pool(&self, pool: &Pool) {
        let mut pools = self.inner.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.entry(pool.label().to_owned()).or_insert_with(|| pool.clone());
    }

    /// The pools jobs have used so far, by label (for metrics).
    pub fn pools(&self) -> Vec<Pool> {
        self.inner.pools.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    /// Registers a secret: it is replaced by `[redacted]` in every log line
    /// written from now on, and in every error message, in its common
    /// encodings (see [`register_secret`](crate::register_secret), which
    /// this calls: the register is the process's).
    pub fn register_secret(&self, secret: &str) {
        crate::secret::register_secret(secret);
    }

    /// `text` with every registered secret replaced by `[redacted]`.
    pub fn scrub(&self, text: &str) -> String {
        crate::secret::scrub_secrets(text)
    }

    /// Deletes the logs of `ids` (after the store pruned their history).
    pub fn delete_logs(&self, ids: &[String]) {
        for id in ids {
            if let Ok(path) = self.log_file(id) {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// `d` as people write it: "90 s", "5 min", "2 h".
pub(crate) fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 && s.is_multiple_of(3600) {
        format!("{} h", s / 3600)
    } else if s >= 60 && s.is_multiple_of(60) {
        format!("{} min", s / 60)
    } else if s >= 1 {
        format!("{:.1} s", d.as_secs_f64()).replace(".0 s", " s")
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// Why a job was cancelled.
#[derive(Clone, Debug)]
struct Cancellation {
    reason: String,
    kind: ErrorKind,
}

struct JobInner {
    id: String,
    description: String,
    path: PathBuf,
    jobs: std::sync::Weak<JobsInner>,
    created: i64,
    started: Mutex<Option<i64>>,
    level: Mutex<Option<Level>>,
    log_len: watch::Sender<u64>,
    status: watch::Sender<JobStatus>,
    cancel: watch::Sender<Option<Cancellation>>,
    approve: Notify,
}

/// One job. Cloning gives another handle on the same job.
#[derive(Clone)]
pub struct Job {
    inner: Arc<JobInner>,
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Job({})", self.inner.id)
    }
}

impl Job {
    /// The job's id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// What the job does (`docker push org/app:live`).
    pub fn description(&self) -> &str {
        &self.inner.description
    }

    /// The job's log file.
    pub fn log_path(&self) -> &Path {
        &self.inner.path
    }

    /// Where the job is in its life.
    pub fn status(&self) -> JobStatus {
        *self.inner.status.borrow()
    }

    /// A receiver that sees every status change.
    pub fn subscribe_status(&self) -> watch::Receiver<JobStatus> {
        self.inner.status.subscribe()
    }

    /// A summary for listings.
    pub fn info(&self) -> JobInfo {
        JobInfo {
            id: self.inner.id.clone(),
            description: self.inner.description.clone(),
            status: self.status(),
            created: self.inner.created,
            started: *self.inner.started.lock().unwrap_or_else(|e| e.into_inner()),
            level: *self.inner.level.lock().unwrap_or_else(|e| e.into_inner()),
            cancelled: self.cancelled_reason(),
        }
    }

    /// Appends a line to the log, timestamped, with secrets scrubbed.
    pub fn log(&self, line: &str) {
        let text = crate::secret::scrub_secrets(line);
        let now = self.inner.jobs.upgrade().map_or_else(chrono::Utc::now, |j| j.clock.now());
        let stamp = now.format("%Y-%m-%d %H:%M.%S");
        let mut out = String::with_capacity(text.len() + 24);
        for l in text.lines() {
            out.push_str(&format!("{stamp}: {l}\n"));
        }
        if text.is_empty() {
            out.push_str(&format!("{stamp}: \n"));
        }
        self.append(out.as_bytes());
    }

    /// Appends raw bytes (already scrubbed) to the log.
    fn append(&self, bytes: &[u8]) {
        let result = std::fs::OpenOptions::new().append(true).open(&self.inner.path).and_then(|mut f| {
            f.write_all(bytes)?;
            f.metadata().map(|m| m.len())
        });
        match result {
            Ok(len) => {
                self.inner.log_len.send_replace(len);
            }
            Err(e) => tracing::error!(job = self.inner.id, "cannot write job log: {e}"),
        }
    }

    /// Waits for confirmation (if `level` is at or above the threshold), then
    /// for a slot in `pool`, and marks the job running. With `timeout`, the
    /// job is cancelled when that much time has passed after it started.
    /// Fails if the job is cancelled first, saying what it was waiting for.
    pub async fn start(
        &self,
        level: Level,
        pool: Option<(&Pool, Priority)>,
        timeout: Option<Duration>,
    ) -> Result<Option<PoolGuard>, Error> {
        *self.inner.level.lock().unwrap_or_else(|e| e.into_inner()) = Some(level);
        let jobs = self.inner.jobs.upgrade();
        let config = jobs.as_ref().map(|j| j.config.clone()).unwrap_or_default();
        if !config.is_confirmed(level) {
            self.inner.status.send_replace(JobStatus::WaitingForConfirmation);
            self.log(&format!("Waiting for confirm-threshold > {level}"));
            tokio::select! {
                _ = config.confirmed(level) => self.log("Confirmation threshold lowered"),
                _ = self.inner.approve.notified() => self.log("Started early by an operator"),
                _ = self.cancelled() => {
                    let e = self.cancellation_error().expect("cancelled");
                    return Err(e.with_message(format!("{} while waiting for confirmation", e.message())));
                }
            }
        }
        let guard = match pool {
            None => None,
            Some((pool, priority)) => {
                if let Some(jobs) = &jobs {
                    Jobs { inner: jobs.clone() }.note_pool(pool);
                }
                if !pool.would_wait() {
                    Some(pool.acquire(priority).await)
                } else {
                    self.inner.status.send_replace(JobStatus::Queued);
                    self.log(&format!("Waiting for resource in pool {}", pool.label()));
                    tokio::select! {
                        g = pool.acquire(priority) => Some(g),
                        _ = self.cancelled() => {
                            let e = self.cancellation_error().expect("cancelled");
                            let msg = format!("{} while waiting for a slot in pool {}", e.message(), pool.label());
                            self.log(&msg);
                            return Err(e.with_message(msg));
                        }
                    }
                }
            }
        };
        if let Some(e) = self.cancellation_error() {
            return Err(e);
        }
        let now = jobs.as_ref().map_or_else(|| chrono::Utc::now().timestamp_millis(), |j| j.clock.now_ms());
        *self.inner.started.lock().unwrap_or_else(|e| e.into_inner()) = Some(now);
        self.inner.status.send_replace(JobStatus::Running);
        if let Some(timeout) = timeout {
            let job = self.clone();
            let clock = jobs.as_ref().map(|j| j.clock.clone()).unwrap_or_default();
            tokio::spawn(async move {
                tokio::select! {
                    _ = clock.sleep(timeout) => job.cancel_as(
                        ErrorKind::TimedOut,
                        &format!("Timed out (after {})", human_duration(timeout)),
                    ),
                    _ = job.finished() => {}
                }
            });
        }
        Ok(guard)
    }

    /// Lets a job waiting for confirmation start now.
    pub fn approve_early_start(&self) {
        self.inner.approve.notify_one();
    }

    /// Asks the job to stop, for `reason` (logged). Cancellation is a
    /// request: the operation sees it through [`Job::cancelled`] (processes
    /// run with [`Job::exec`] are stopped), may finish its cleanup, and what
    /// it returns is recorded; an error then reads "Cancelled". A second
    /// cancel only logs.
    pub fn cancel(&self, reason: &str) {
        self.cancel_as(ErrorKind::Cancelled, reason);
    }

    fn cancel_as(&self, kind: ErrorKind, reason: &str) {
        if self.cancelled_reason().is_some() {
            self.log(&format!("Cancel ignored ({reason}): already cancelled"));
            return;
        }
        self.log(&format!("Cancelling: {reason}"));
        self.inner.cancel.send_replace(Some(Cancellation { reason: reason.to_owned(), kind }));
    }

    /// The reason the job was cancelled, if it was.
    pub fn cancelled_reason(&self) -> Option<String> {
        self.inner.cancel.borrow().as_ref().map(|c| c.reason.clone())
    }

    /// The error a cancelled job ends with: "Cancelled" (kind
    /// [`ErrorKind::Cancelled`]), or for a job past its time limit the
    /// timeout (kind [`ErrorKind::TimedOut`]). `None` if not cancelled.
    pub fn cancellation_error(&self) -> Option<Error> {
        self.inner.cancel.borrow().as_ref().map(|c| match c.kind {
            ErrorKind::TimedOut => Error::new(ErrorKind::TimedOut, c.reason.clone()),
            kind => Error::new(kind, "Cancelled"),
        })
    }

    /// Completes (with the reason) when the job is asked to stop.
    pub async fn cancelled(&self) -> String {
        let mut rx = self.inner.cancel.subscribe();
        loop {
            if let Some(c) = rx.borrow_and_update().clone() {
                return c.reason;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    async fn finished(&self) {
        let mut rx = self.inner.status.subscribe();
        let _ = rx.wait_for(|s| *s == JobStatus::Finished).await;
    }

    /// Closes the log and removes the job from the active list.
    pub fn finish(&self) {
        self.inner.status.send_replace(JobStatus::Finished);
        if let Some(jobs) = self.inner.jobs.upgrade() {
            jobs.active.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.inner.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_paths_reject_escapes() {
        assert_eq!(
            log_path("2026-11-24/061500-build-a1b2c3").unwrap(),
            Path::new("2026-11-24/061500-build-a1b2c3.log")
        );
        for bad in [
            "../etc/passwd",
            "2026-11-24/../../x",
            "2026-11-24/..",
            "2026-11-24/.hidden",
            "2026-11-24/a/b",
            "2026-11-24",
            "/2026-11-24/a",
            "2026-11-24/a\\b",
            "2026-1-124/abc",
            "2026-11-24/",
            "2026-11-24/a\0b",
            "..%2f/abc",
        ] {
            assert!(log_path(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn ids_have_the_documented_shape() {
        let dir = std::env::temp_dir().join(format!("deployer-jobs-{}", random_suffix()));
        let jobs = Jobs::new(&dir, Config::default(), Clock::system());
        let job = jobs.create("docker build!", "docker build abc").unwrap();
        let (date, name) = job.id().split_once('/').unwrap();
        assert_eq!(date.len(), 10);
        assert!(name.contains("-docker-build--"), "{name}");
        assert_eq!(name.rsplit('-').next().unwrap().len(), 6);
        assert!(job.log_path().exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn secrets_are_scrubbed_from_logs() {
        let dir = std::env::temp_dir().join(format!("deployer-jobs-{}", random_suffix()));
        let jobs = Jobs::new(&dir, Config::default(), Clock::system());
        jobs.register_secret("hunter22");
        let job = jobs.create("login", "login").unwrap();
        job.log("password is hunter22, again hunter22");
        let (log, _) = jobs.read_log(job.id(), 0, 1 << 20).unwrap();
        let log = String::from_utf8(log).unwrap();
        assert!(!log.contains("hunter22"), "{log}");
        assert!(log.contains("password is [redacted], again [redacted]"), "{log}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
