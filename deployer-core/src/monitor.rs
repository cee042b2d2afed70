//! Monitors: ref-counted watches of external resources.
//!
//! A monitor watches something outside (a branch head, a registry tag). It
//! starts watching when the first stage using it enters the pipeline and stops
//! when the last one leaves. The engine counts users; the monitor runs its
//! `watch`, `read` and unwatch actions on the tokio runtime, one at a time.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::node::Metadata;
use crate::output::{ActiveState, Error, Output};
use crate::primitive::{CatchUnwind, Source};
use crate::term::{Current, Value};

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A read slower than this shows the box as updating while it runs; faster
/// reads change nothing on screen unless the value changes.
const SLOW_READ: Duration = Duration::from_secs(1);

/// Handed to a monitor's `watch` function: call [`Refresh::refresh`] when the
/// watched resource may have changed. Calls made while a read is running
/// coalesce into one more read.
#[derive(Clone)]
pub struct Refresh(Arc<Notify>);

impl Refresh {
    /// Asks for the resource to be read again.
    pub fn refresh(&self) {
        self.0.notify_one();
    }
}

/// How to stop watching, returned by a monitor's `watch` function.
pub struct Unwatch(Option<Box<dyn FnOnce() -> BoxFuture<()> + Send>>);

impl Unwatch {
    /// Nothing to undo.
    pub fn nothing() -> Unwatch {
        Unwatch(None)
    }

    /// Stop watching by dropping `guard` (a timer task's handle, say).
    pub fn on_drop(guard: impl Send + 'static) -> Unwatch {
        Unwatch(Some(Box::new(move || {
            drop(guard);
            Box::pin(async {})
        })))
    }

    /// Stop watching by running `f` to completion (closing a connection,
    /// deregistering a webhook). The monitor keeps serving its last value
    /// until it has finished.
    pub fn with(f: impl FnOnce() -> BoxFuture<()> + Send + 'static) -> Unwatch {
        Unwatch(Some(Box::new(f)))
    }

    async fn run(self) {
        if let Some(f) = self.0 {
            f().await;
        }
    }
}

type ReadFn<T> = dyn Fn() -> BoxFuture<Result<T, Error>> + Send + Sync;
type WatchFn = dyn Fn(Refresh) -> BoxFuture<Result<Unwatch, Error>> + Send + Sync;

/// A watched external resource whose value is a pipeline input.
///
/// `watch(refresh)` installs the watch (a webhook subscription, a timer) and
/// returns how to remove it; `read()` fetches the current value. The order is
/// OCurrent's: install the watch, then read, then read again after each
/// refresh. When the last stage using the monitor leaves the pipeline, the
/// watch is removed; its last value is served until that has finished, and a
/// stage arriving meanwhile does not start a second watch (the monitor
/// watches again once the first has been removed).
///
/// ```
/// use std::time::Duration;
/// use deployer_core::{Engine, Monitor, Output};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// // Read every 10 minutes, or whenever a webhook handler calls refresh().
/// let head = Monitor::poll("main head", Duration::from_secs(600), || async { Ok("4f2a9c1".to_string()) });
/// let engine = Engine::new(head.current());
/// engine.step();
/// assert_eq!(head.users(), 1);
/// # let out = loop { engine.next().await; if engine.output().is_ok() { break engine.output(); } };
/// # assert_eq!(out, Output::Ok("4f2a9c1".to_string()));
/// head.refresh(); // what a webhook handler does
/// # }
/// ```
pub struct Monitor<T> {
    inner: Arc<MonitorInner<T>>,
}

impl<T> Clone for Monitor<T> {
    fn clone(&self) -> Self {
        Monitor { inner: self.inner.clone() }
    }
}

struct MonitorInner<T> {
    name: Arc<str>,
    read: Box<ReadFn<T>>,
    watch: Box<WatchFn>,
    source: Source<T>,
    /// Rung by `refresh()`: read again.
    refresh: Arc<Notify>,
    /// Rung when the number of users drops to zero.
    unused: Notify,
    state: Mutex<MonitorState>,
}

#[derive(Default)]
struct MonitorState {
    users: usize,
    /// The task that watches, reads and unwatches.
    task: Option<tokio::task::AbortHandle>,
    /// Whether a watch is installed (or being installed or removed).
    watching: bool,
}

impl<T: Value> Monitor<T> {
    /// A monitor named `name` (its box in the diagram) that reads with
    /// `read` and watches with `watch`.
    pub fn new(
        name: &str,
        read: impl Fn() -> BoxFuture<Result<T, Error>> + Send + Sync + 'static,
        watch: impl Fn(Refresh) -> BoxFuture<Result<Unwatch, Error>> + Send + Sync + 'static,
    ) -> Monitor<T> {
        Monitor {
            inner: Arc::new(MonitorInner {
                name: name.into(),
                read: Box::new(read),
                watch: Box::new(watch),
                source: Source::new(Output::Active(ActiveState::Running)),
                refresh: Arc::new(Notify::new()),
                unused: Notify::new(),
                state: Mutex::new(MonitorState::default()),
            }),
        }
    }

    /// A monitor named `name` that calls `read` when it starts watching,
    /// then every `every`, and whenever [`Monitor::refresh`] is called (by a
    /// webhook handler, say). A read that returns the same value as before
    /// changes nothing and does not wake the engine.
    ///
    /// `read` is cloned for each read and called once, so it can move what
    /// it captured into its future (`move || async move { … }`).
    pub fn poll<F, Fut>(name: &str, every: Duration, read: F) -> Monitor<T>
    where
        F: FnOnce() -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<T, Error>> + Send + 'static,
    {
        Monitor::new(
            name,
            move || Box::pin((read.clone())()),
            move |refresh| {
                Box::pin(async move {
                    if every.is_zero() {
                        return Err(Error::msg("a polling monitor's period must be more than zero"));
                    }
                    let ticker = tokio::spawn(async move {
                        let mut interval = tokio::time::interval(every);
                        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        interval.tick().await; // the first tick is now: the monitor reads anyway
                        loop {
                            interval.tick().await;
                            refresh.refresh();
                        }
                    });
                    Ok(Unwatch::on_drop(AbortOnDrop(ticker)))
                })
            },
        )
    }

    /// Asks the monitor to read its resource again now (if it is watching).
    pub fn refresh(&self) {
        if self.inner.lock().watching {
            self.inner.refresh.notify_one();
        }
    }

    /// Number of stages currently using the monitor.
    pub fn users(&self) -> usize {
        self.inner.lock().users
    }

    /// Whether a watch is installed (or being installed or removed) now.
    pub fn is_watching(&self) -> bool {
        self.inner.lock().watching
    }

    /// A stage whose value is the monitored resource's current value.
    pub fn current(&self) -> Current<T> {
        let inner = self.inner.clone();
        Current::constant(()).primitive(&self.inner.name.clone(), move |_, hooks| {
            inner.lock().users += 1;
            let start = inner.clone();
            hooks.after_step(move || MonitorInner::start(&start));
            let stop = inner.clone();
            hooks.on_release(move || MonitorInner::release(&stop));
            inner.source.clone()
        })
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T: Value> MonitorInner<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, MonitorState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn start(this: &Arc<Self>) {
        let mut state = this.lock();
        if state.users == 0 || state.task.is_some() {
            return; // unused, or the task (watching or unwatching) is there
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            this.source.set(Output::Err(Error::msg("no tokio runtime to run this monitor")));
            return;
        };
        let me = this.clone();
        state.watching = true;
        state.task = Some(runtime.spawn(async move { me.run().await }).abort_handle());
    }

    fn release(this: &Arc<Self>) {
        let mut state = this.lock();
        state.users -= 1;
        if state.users == 0 {
            this.unused.notify_one();
        }
    }

    fn in_use(&self) -> bool {
        self.lock().users > 0
    }

    /// Watches and reads while the monitor has users, then unwatches; if
    /// users came back meanwhile, watches again. Ends unused.
    async fn run(self: Arc<Self>) {
        loop {
            if let Some(unwatch) = self.watch_and_read().await {
                unwatch.run().await;
            }
            let mut state = self.lock();
            if state.users == 0 {
                state.task = None;
                state.watching = false;
                drop(state);
                self.source.update(|v, m| {
                    *v = Output::Active(ActiveState::Running);
                    *m = Metadata::default();
                });
                return;
            }
        }
    }

    /// Installs the watch and reads after each refresh until the monitor is
    /// unused; returns how to unwatch (`None` if the watch failed).
    async fn watch_and_read(&self) -> Option<Unwatch> {
        let unwatch = loop {
            match CatchUnwind(Box::pin((self.watch)(Refresh(self.refresh.clone())))).await {
                Ok(unwatch) => break unwatch,
                Err(e) => {
                    self.source.set(Output::Err(e.context(format!("watching {}", self.name))));
                    // Try again on the next refresh, unless unused first.
                    tokio::select! {
                        _ = self.refresh.notified() => {}
                        _ = self.unused.notified() => {}
                    }
                    if !self.in_use() {
                        return None;
                    }
                }
            }
        };
        while self.in_use() {
            let read = CatchUnwind(Box::pin((self.read)()));
            tokio::pin!(read);
            let value = tokio::select! {
                v = &mut read => v,
                _ = tokio::time::sleep(SLOW_READ) => {
                    self.source.update(|_, m| m.update = Some(ActiveState::Running));
                    read.await
                }
            };
            self.source.update(|v, m| {
                *v = value.into();
                m.update = None;
            });
            tokio::select! {
                _ = self.refresh.notified() => {}
                _ = self.unused.notified() => {}
            }
        }
        Some(unwatch)
    }
}
