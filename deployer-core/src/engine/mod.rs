//! The engine: evaluates a pipeline, then re-evaluates it whenever an input
//! changes.
//!
//! The engine is event-driven: a [`Var`](crate::Var) set, a job finishing or a
//! monitor reading a new value wakes it; any number of such events between two
//! steps coalesce into one step. There is no polling interval.

pub(crate) mod graph;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::analysis::{Diagram, Expanded, Stats};
use crate::node::{typed, Inbox};
use crate::output::{Error, NodeState, Output};
use crate::term::{AnyTerm, Current, Value};

use graph::Graph;

/// What one evaluation step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepReport {
    /// The step's number, from 1.
    pub step: u64,
    /// Nodes recomputed in this step.
    pub recomputed: u64,
    /// Time the step took.
    pub duration: Duration,
}

/// Sees the graph after each step; returns false once nobody listens.
type Observer = Box<dyn FnMut(&Graph) -> bool + Send>;

pub(crate) struct State {
    pub(crate) graph: Graph,
    pub(crate) root: Option<u32>,
    steps: u64,
    last_step: Duration,
    total: Duration,
    /// Called after each step with the graph (see [`Engine::watch`]);
    /// return false once nobody listens.
    observers: Vec<Observer>,
}

impl Drop for State {
    fn drop(&mut self) {
        // Release the whole pipeline so jobs are aborted and monitors unwatched.
        if let Some(root) = self.root.take() {
            self.graph.unhold(root);
            self.graph.finish_step();
        }
    }
}

pub(crate) struct Shared {
    state: Mutex<State>,
    inbox: Arc<Inbox>,
    pub(crate) root_term: Arc<dyn AnyTerm>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn step(&self) -> StepReport {
        let start = Instant::now();
        let mut state = self.lock();
        let recomputed = match state.root {
            None => {
                let before = state.graph.recomputed();
                let root = state.graph.instantiate(&self.root_term);
                state.graph.hold(root);
                state.root = Some(root);
                // Sources may have posted while the graph was built.
                state.graph.propagate();
                state.graph.recomputed() - before
            }
            Some(_) => state.graph.propagate(),
        };
        let mut observers = std::mem::take(&mut state.observers);
        observers.retain_mut(|observe| observe(&state.graph));
        state.observers = observers;
        let duration = start.elapsed();
        state.steps += 1;
        state.last_step = duration;
        state.total += duration;
        StepReport { step: state.steps, recomputed, duration }
    }
}

/// Evaluates a pipeline and keeps it up to date.
///
/// [`Engine::step`] runs one evaluation step; [`Engine::run`] steps whenever
/// something changed, forever. Dropping the engine releases the pipeline:
/// jobs of operations that cancel when unneeded are asked to stop, and
/// monitors stop watching.
///
/// ```
/// use deployer_core::{Current, Engine, Output, Var};
///
/// let commit = Var::new("commit", "abc".to_string());
/// let image = commit.current().map(|c| format!("app:{c}"));
/// let engine = Engine::new(image);
/// engine.step();
/// assert_eq!(engine.output(), Output::Ok("app:abc".to_string()));
/// ```
pub struct Engine<T> {
    shared: Arc<Shared>,
    _pipeline: Current<T>,
}

/// How much evaluating the engine has done ([`EngineHandle::timings`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timings {
    /// Steps so far.
    pub steps: u64,
    /// How long the last step took.
    pub last_step: Duration,
    /// Time spent evaluating, in all.
    pub total: Duration,
}

/// A type-erased, cloneable view of an engine, for the web UI and metrics.
#[derive(Clone)]
pub struct EngineHandle {
    shared: Arc<Shared>,
}

impl<T: Value> Engine<T> {
    /// An engine for `pipeline`. Nothing runs until the first step.
    pub fn new(pipeline: Current<T>) -> Engine<T> {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let engine_id = NEXT.fetch_add(1, Ordering::Relaxed);
        let inbox = Inbox::new();
        let state = State {
            graph: Graph::new(engine_id, inbox.clone()),
            root: None,
            steps: 0,
            last_step: Duration::ZERO,
            total: Duration::ZERO,
            observers: Vec::new(),
        };
        let shared = Arc::new(Shared { state: Mutex::new(state), inbox, root_term: pipeline.term.clone() });
        Engine { shared, _pipeline: pipeline }
    }

    /// Runs one evaluation step: the first builds and evaluates the whole
    /// pipeline; later ones recompute only what changed since.
    pub fn step(&self) -> StepReport {
        self.shared.step()
    }

    /// Waits until something changed, then runs one step.
    pub async fn next(&self) -> StepReport {
        self.shared.inbox.notify.notified().await;
        self.step()
    }

    /// Steps now and whenever something changes until the output satisfies
    /// `want`, for at most `timeout`; returns that output, or the last one
    /// seen when time ran out. What tests and one-shot tools wait with,
    /// instead of sleeping.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use std::time::Duration;
    /// use deployer_core::{Current, Engine, Output};
    ///
    /// let engine = Engine::new(Current::constant(2).map(|x| x * 21));
    /// let out = engine.settle(Duration::from_secs(5), |o| matches!(o, Output::Ok(_))).await;
    /// assert_eq!(out, Ok(Output::Ok(42)));
    /// # }
    /// ```
    pub async fn settle(
        &self,
        timeout: std::time::Duration,
        want: impl Fn(&Output<T>) -> bool,
    ) -> Result<Output<T>, Output<T>> {
        self.step();
        let waited = tokio::time::timeout(timeout, async {
            loop {
                let out = self.output();
                if want(&out) {
                    return out;
                }
                self.next().await;
            }
        })
        .await;
        waited.map_err(|_| self.output())
    }

    /// Steps whenever something changes, forever.
    pub async fn run(&self) {
        loop {
            let report = self.step();
            tracing::debug!(step = report.step, recomputed = report.recomputed, "evaluated");
            self.shared.inbox.notify.notified().await;
        }
    }

    /// The pipeline's output after the last step (`Active(Ready)` before the first).
    pub fn output(&self) -> Output<T> {
        let state = self.shared.lock();
        match state.root {
            Some(root) => typed::<T>(state.graph.value(root)).clone(),
            None => Output::Active(crate::ActiveState::Ready),
        }
    }

    /// The output of `stage` after the last step, if it is part of the
    /// pipeline now (`None` before the first step, or when the stage is in
    /// a branch that is not built, such as a bind's previous body).
    pub fn output_of<U: Value>(&self, stage: &Current<U>) -> Option<Output<U>> {
        let state = self.shared.lock();
        let index = state.graph.live(&*stage.term)?;
        Some(typed::<U>(state.graph.value(index)).clone())
    }

    /// A receiver that sees the output of `stage` after every step that
    /// changed it (while the stage is part of the pipeline): observe one
    /// stage from code instead of matching on the pipeline's final output.
    ///
    /// ```
    /// use deployer_core::{Engine, Output, Var};
    ///
    /// let head = Var::new("head", 1u32);
    /// let doubled = head.current().map(|n| n * 2);
    /// let engine = Engine::new(doubled.map(|n| n + 1));
    /// let mut seen = engine.watch(&doubled);
    /// engine.step();
    /// assert_eq!(*seen.borrow_and_update(), Output::Ok(2));
    /// head.set(5);
    /// engine.step();
    /// assert!(seen.has_changed().unwrap());
    /// assert_eq!(*seen.borrow_and_update(), Output::Ok(10));
    /// ```
    pub fn watch<U: Value>(&self, stage: &Current<U>) -> watch::Receiver<Output<U>> {
        let mut state = self.shared.lock();
        let initial = match state.graph.live(&*stage.term) {
            Some(i) => typed::<U>(state.graph.value(i)).clone(),
            None => Output::Active(crate::ActiveState::Ready),
        };
        let (tx, rx) = watch::channel(initial);
        let term = stage.term.clone();
        state.observers.push(Box::new(move |graph| {
            if tx.is_closed() {
                return false;
            }
            if let Some(i) = graph.live(&*term) {
                let now = typed::<U>(graph.value(i));
                tx.send_if_modified(|old| {
                    if old == now {
                        false
                    } else {
                        *old = now.clone();
                        true
                    }
                });
            }
            true
        }));
        rx
    }

    /// A type-erased handle on this engine.
    pub fn handle(&self) -> EngineHandle {
        EngineHandle { shared: self.shared.clone() }
    }

    /// Counts of boxes per state, in O(1).
    pub fn stats(&self) -> Stats {
        self.handle().stats()
    }

    /// The pipeline's diagram, with the collapse groups in `expanded` open.
    pub fn diagram(&self, expanded: &Expanded) -> Diagram {
        self.handle().diagram(expanded)
    }
}

impl EngineHandle {
    /// Counts of boxes per state, in O(1).
    pub fn stats(&self) -> Stats {
        self.shared.lock().graph.stats()
    }

    /// The pipeline's diagram (before the first step: its static shape).
    pub fn diagram(&self, expanded: &Expanded) -> Diagram {
        let state = self.shared.lock();
        crate::analysis::diagram(&self.shared.root_term, &state.graph, expanded)
    }

    /// How many steps ran, and how long they took.
    pub fn timings(&self) -> Timings {
        let s = self.shared.lock();
        Timings { steps: s.steps, last_step: s.last_step, total: s.total }
    }

    /// The pipeline's overall state and, if it failed, the error (`None`
    /// before the first step).
    pub fn result(&self) -> Option<(NodeState, Option<Error>)> {
        let state = self.shared.lock();
        let root = state.root?;
        let node = state.graph.node(root)?;
        Some((node.state(), node.error()))
    }

    /// Number of live runtime nodes.
    pub fn node_count(&self) -> usize {
        self.shared.lock().graph.len()
    }

    /// Asks the engine to run a step soon (used when the confirmation
    /// threshold or other engine-wide settings change).
    pub fn wake(&self) {
        self.shared.inbox.wake();
    }
}
