//! Monitors: ref-counted watches of external resources.
//!
//! A monitor watches something outside (a branch head, a registry tag). It
//! starts watching when the first stage using it enters the pipeline and stops
//! when the last one leaves. The engine counts users; the monitor runs its
//! `watch` and `read` functions on the tokio runtime.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::current::{Current, Value};
use crate::engine::graph::Metadata;
use crate::output::{ActiveState, Error, Output};
use crate::primitive::{CatchUnwind, Source};

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

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

type ReadFn<T> = dyn Fn() -> BoxFuture<Result<T, Error>> + Send + Sync;
type WatchFn = dyn Fn(Refresh) -> BoxFuture<Result<Box<dyn Send>, Error>> + Send + Sync;

/// A watched external resource whose value is a pipeline input.
///
/// `watch(refresh)` installs the watch (a webhook subscription, a timer) and
/// returns a guard; dropping the guard removes the watch. `read()` fetches the
/// current value. The order is OCurrent's: install the watch, then read, then
/// read again after each refresh.
///
/// ```
/// use deployer_core::{Engine, Monitor, Output};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let monitor = Monitor::new(
///     "clock",
///     || Box::pin(async { Ok(42u64) }),
///     |_refresh| Box::pin(async { Ok(Box::new(()) as Box<dyn Send>) }),
/// );
/// let engine = Engine::new(monitor.current());
/// engine.step();
/// assert_eq!(monitor.users(), 1);
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
    state: Mutex<MonitorState>,
}

#[derive(Default)]
struct MonitorState {
    users: usize,
    task: Option<tokio::task::AbortHandle>,
}

impl<T: Value> Monitor<T> {
    /// A monitor named `name` (its box in the diagram).
    pub fn new(
        name: &str,
        read: impl Fn() -> BoxFuture<Result<T, Error>> + Send + Sync + 'static,
        watch: impl Fn(Refresh) -> BoxFuture<Result<Box<dyn Send>, Error>> + Send + Sync + 'static,
    ) -> Monitor<T> {
        Monitor {
            inner: Arc::new(MonitorInner {
                name: name.into(),
                read: Box::new(read),
                watch: Box::new(watch),
                source: Source::new(Output::Active(ActiveState::Running)),
                state: Mutex::new(MonitorState::default()),
            }),
        }
    }

    /// Number of stages currently using the monitor.
    pub fn users(&self) -> usize {
        self.inner.lock().users
    }

    /// Whether the watch is installed now.
    pub fn is_watching(&self) -> bool {
        self.inner.lock().task.is_some()
    }

    /// A stage whose value is the monitored resource's current value.
    pub fn current(&self) -> Current<T> {
        let inner = self.inner.clone();
        Current::constant(()).primitive(&self.inner.name.clone(), move |_, cx| {
            inner.lock().users += 1;
            let start = inner.clone();
            cx.after_step(move || MonitorInner::start(&start));
            let stop = inner.clone();
            cx.on_release(move || MonitorInner::release(&stop));
            inner.source.clone()
        })
    }
}

impl<T: Value> MonitorInner<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, MonitorState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn start(this: &Arc<Self>) {
        let mut state = this.lock();
        if state.users == 0 || state.task.is_some() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            this.source.set(Output::Err(Error::msg("no tokio runtime to run this monitor")));
            return;
        };
        let me = this.clone();
        let handle = runtime.spawn(async move { me.watch_loop().await });
        state.task = Some(handle.abort_handle());
    }

    fn release(this: &Arc<Self>) {
        let mut state = this.lock();
        state.users -= 1;
        if state.users == 0 {
            if let Some(task) = state.task.take() {
                task.abort();
            }
            this.source.update(|v, m| {
                *v = Output::Active(ActiveState::Running);
                *m = Metadata::default();
            });
        }
    }

    async fn watch_loop(self: Arc<Self>) {
        let notify = Arc::new(Notify::new());
        // Dropped when the task is aborted, which removes the watch.
        let _guard = match CatchUnwind(Box::pin((self.watch)(Refresh(notify.clone())))).await {
            Ok(guard) => guard,
            Err(e) => {
                self.source.set(Output::Err(e));
                return;
            }
        };
        loop {
            self.source.update(|_, m| m.update = Some(ActiveState::Running));
            let value = CatchUnwind(Box::pin((self.read)())).await;
            self.source.update(|v, m| {
                *v = value.into();
                m.update = None;
            });
            notify.notified().await;
        }
    }
}
