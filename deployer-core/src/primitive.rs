//! Primitives: stages whose value comes from outside the engine (a job, a
//! watched resource), and [`Source`], the cell such values are written to.
//!
//! This is the low-level extension point. Most plugins use the caches built on
//! top of it ([`crate::cache`]), which give every piece of work a job, a log,
//! a confirmation level and a history row; [`crate::Monitor`] covers watched
//! inputs.

use std::any::Any;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use crate::node::{Deferred, Inbox, Metadata, Node, NodeRef, Runtime};
use crate::nodes::{attribute, store};
use crate::output::{panic_message, ActiveState, Error, NodeState, Output};
use crate::term::{AnyTerm, Current, Kind, TermCore, TermRef, Value};

/// A value written from outside the engine and read by the stages that watch it.
///
/// Setting a different value wakes the engine, which re-evaluates the
/// watchers at its next step; setting an equal value does nothing.
/// Cloning gives another handle on the same cell.
pub struct Source<T> {
    inner: Arc<Mutex<SourceState<T>>>,
}

struct SourceState<T> {
    value: Output<T>,
    metadata: Metadata,
    watchers: Vec<(Weak<Inbox>, NodeRef)>,
}

impl<T> Clone for Source<T> {
    fn clone(&self) -> Self {
        Source { inner: self.inner.clone() }
    }
}

impl<T: Value> Source<T> {
    /// A new cell holding `initial`.
    pub fn new(initial: Output<T>) -> Source<T> {
        Source {
            inner: Arc::new(Mutex::new(SourceState {
                value: initial,
                metadata: Metadata::default(),
                watchers: Vec::new(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SourceState<T>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current value.
    pub fn get(&self) -> Output<T> {
        self.lock().value.clone()
    }

    /// The current metadata (job id, background update).
    pub fn metadata(&self) -> Metadata {
        self.lock().metadata.clone()
    }

    /// Sets the value; wakes the watchers if it changed.
    pub fn set(&self, value: Output<T>) {
        self.update(|v, _| *v = value);
    }

    /// Sets the metadata; wakes the watchers if it changed.
    pub fn set_metadata(&self, metadata: Metadata) {
        self.update(|_, m| *m = metadata);
    }

    /// Changes value and metadata together; wakes the watchers if either changed.
    pub fn update(&self, f: impl FnOnce(&mut Output<T>, &mut Metadata)) {
        let mut state = self.lock();
        let (old_value, old_meta) = (state.value.clone(), state.metadata.clone());
        let SourceState { value, metadata, watchers } = &mut *state;
        f(value, metadata);
        if *value == old_value && *metadata == old_meta {
            return;
        }
        watchers.retain(|(inbox, node)| match inbox.upgrade() {
            Some(inbox) => {
                inbox.post(*node);
                true
            }
            None => false,
        });
    }

    pub(crate) fn watch(&self, inbox: &Arc<Inbox>, node: NodeRef) {
        self.lock().watchers.push((Arc::downgrade(inbox), node));
    }

    pub(crate) fn unwatch(&self, inbox: &Arc<Inbox>, node: NodeRef) {
        self.lock().watchers.retain(|(i, n)| !(*n == node && std::ptr::eq(i.as_ptr(), Arc::as_ptr(inbox))));
    }
}

/// What a primitive may do when it starts on a new input value.
pub struct Hooks {
    releases: Vec<Deferred>,
    starts: Vec<Deferred>,
    step: u64,
}

impl Hooks {
    /// The number of the engine's current evaluation step: two calls with
    /// the same number happen in the same step.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Runs `hook` when this run is no longer wanted (the input changed or the
    /// stage left the pipeline). Hooks run after the evaluation step, so a
    /// resource released and acquired again in one step survives.
    pub fn on_release(&mut self, hook: impl FnOnce() + Send + 'static) {
        self.releases.push(Box::new(hook));
    }

    /// Runs `action` after the evaluation step, if this run is still wanted
    /// then. Side effects (spawning a job) belong here.
    pub fn after_step(&mut self, action: impl FnOnce() + Send + 'static) {
        self.starts.push(Box::new(action));
    }
}

pub(crate) struct PrimTerm<A, B, F> {
    core: TermCore,
    input: TermRef,
    f: F,
    _types: PhantomData<fn(A) -> B>,
}

struct Run<B> {
    source: Source<B>,
    releases: Vec<Deferred>,
    /// Cleared when the run is stopped, so its start actions are skipped.
    wanted: Arc<std::sync::atomic::AtomicBool>,
}

struct PrimRt<A, B, F> {
    term: Arc<PrimTerm<A, B, F>>,
    input: u32,
    last: Option<A>,
    run: Option<Run<B>>,
    value: Output<B>,
    metadata: Metadata,
}

impl<A, B, F> AnyTerm for PrimTerm<A, B, F>
where
    A: Value,
    B: Value,
    F: Fn(&A, &mut Hooks) -> Source<B> + Send + Sync + 'static,
{
    fn core(&self) -> &TermCore {
        &self.core
    }
    fn for_each_input(&self, f: &mut dyn FnMut(&Arc<dyn AnyTerm>)) {
        f(&self.input);
    }
    fn instantiate(self: Arc<Self>, inputs: &[u32], _rt: &mut dyn Runtime) -> Box<dyn Node> {
        Box::new(PrimRt {
            term: self,
            input: inputs[0],
            last: None,
            run: None,
            value: Output::Active(ActiveState::Ready),
            metadata: Metadata::default(),
        })
    }
}

impl<A, B, F> PrimRt<A, B, F>
where
    B: Value,
{
    fn stop(&mut self, rt: &mut dyn Runtime) {
        if let Some(run) = self.run.take() {
            run.wanted.store(false, std::sync::atomic::Ordering::Release);
            run.source.unwatch(rt.inbox(), rt.me_ref());
            for hook in run.releases {
                rt.on_release(hook);
            }
        }
    }
}

impl<A, B, F> Node for PrimRt<A, B, F>
where
    A: Value,
    B: Value,
    F: Fn(&A, &mut Hooks) -> Source<B> + Send + Sync + 'static,
{
    fn term(&self) -> &dyn AnyTerm {
        &*self.term
    }
    fn value(&self) -> &dyn Any {
        &self.value
    }
    fn value_mut(&mut self) -> &mut dyn Any {
        &mut self.value
    }
    fn state(&self) -> NodeState {
        if self.run.is_some() {
            self.value.state(self.term.core.id)
        } else {
            self.value.derived_state(self.term.core.id)
        }
    }
    fn error(&self) -> Option<crate::Error> {
        self.value.err().cloned()
    }
    fn recompute(&mut self, rt: &mut dyn Runtime) -> bool {
        let me = self.term.core.id;
        let input = match rt.read::<A>(self.input) {
            Output::Ok(v) => v.clone(),
            other => {
                let new = other.cast().expect("not ok");
                self.last = None;
                self.stop(rt);
                let meta_changed = self.metadata != Metadata::default();
                self.metadata = Metadata::default();
                return store(&mut self.value, new) || meta_changed;
            }
        };
        if self.run.is_none() || self.last.as_ref() != Some(&input) {
            self.stop(rt);
            let mut hooks = Hooks { releases: Vec::new(), starts: Vec::new(), step: rt.step() };
            let started = catch_unwind(AssertUnwindSafe(|| (self.term.f)(&input, &mut hooks)));
            self.last = Some(input);
            let source = match started {
                Ok(source) => source,
                Err(payload) => Source::new(Output::Err(Error::with_origin(panic_message(&*payload), me))),
            };
            source.watch(rt.inbox(), rt.me_ref());
            let wanted = Arc::new(std::sync::atomic::AtomicBool::new(true));
            for start in hooks.starts {
                let wanted = wanted.clone();
                rt.after_step(Box::new(move || {
                    if wanted.load(std::sync::atomic::Ordering::Acquire) {
                        start();
                    }
                }));
            }
            self.run = Some(Run { source, releases: hooks.releases, wanted });
        }
        let source = &self.run.as_ref().expect("started above").source;
        let (value, metadata) = {
            let state = source.lock();
            (attribute(state.value.clone(), me), state.metadata.clone())
        };
        let meta_changed = metadata != self.metadata;
        self.metadata = metadata;
        store(&mut self.value, value) || meta_changed
    }
    fn for_each_input(&self, f: &mut dyn FnMut(u32)) {
        f(self.input);
    }
    fn release(&mut self, rt: &mut dyn Runtime) {
        self.stop(rt);
    }
    fn metadata(&self) -> Option<Metadata> {
        Some(self.metadata.clone())
    }
}

impl<A: Value> Current<A> {
    /// `x.primitive(label, f)` is a stage drawn as a box named `label` whose
    /// value comes from outside the engine.
    ///
    /// On each new value of `x`, `f` is called and returns the [`Source`] the
    /// stage shows from then on; the previous run is released (its
    /// `on_release` hooks run). While `x` is pending or failed, so is the stage
    /// (blocked). `f` must not wait for long (it runs inside the evaluation
    /// step): start work with [`Hooks::after_step`].
    pub fn primitive<B: Value>(
        &self,
        label: &str,
        f: impl Fn(&A, &mut Hooks) -> Source<B> + Send + Sync + 'static,
    ) -> Current<B> {
        Current::from_term(Arc::new(PrimTerm {
            core: TermCore::new(Kind::Primitive, Some(label.into())),
            input: TermRef::new(self.term.clone()),
            f,
            _types: PhantomData,
        }))
    }
}

/// Polls a future, turning a panic into an error.
pub(crate) struct CatchUnwind<F: ?Sized>(pub(crate) Pin<Box<F>>);

impl<T, F: Future<Output = Result<T, Error>> + ?Sized> Future for CatchUnwind<F> {
    type Output = Result<T, Error>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(poll) => poll,
            Err(payload) => Poll::Ready(Err(Error::msg(panic_message(&*payload)))),
        }
    }
}
