//! `Var<T>`: an input of the pipeline, set from outside.

use std::any::Any;
use std::sync::Arc;

use crate::node::{Node, NodeRef, Runtime};
use crate::nodes::{attribute, store};
use crate::output::{NodeState, Output};
use crate::primitive::Source;
use crate::term::{AnyTerm, Current, Kind, TermCore, Value};

/// A named input of the pipeline, set from outside the engine (a webhook
/// handler, a test, a timer).
///
/// Setting a value equal to the current one does nothing; a different value
/// wakes every engine reading the variable, and many sets between two
/// evaluation steps coalesce into one re-evaluation.
///
/// ```
/// use deployer_core::{Engine, Output, Var};
///
/// let head = Var::new("head", 1u64);
/// let engine = Engine::new(head.current().map(|h| h * 10));
/// engine.step();
/// head.set(2);
/// engine.step();
/// assert_eq!(engine.output(), Output::Ok(20));
/// ```
pub struct Var<T> {
    source: Source<T>,
    current: Current<T>,
}

impl<T> Clone for Var<T> {
    fn clone(&self) -> Self {
        Var { source: self.source.clone(), current: self.current.clone() }
    }
}

struct VarTerm<T> {
    core: TermCore,
    source: Source<T>,
}

struct VarRt<T> {
    term: Arc<VarTerm<T>>,
    watching: Option<NodeRef>,
    value: Output<T>,
}

impl<T: Value> AnyTerm for VarTerm<T> {
    fn core(&self) -> &TermCore {
        &self.core
    }
    fn for_each_input(&self, _f: &mut dyn FnMut(&Arc<dyn AnyTerm>)) {}
    fn instantiate(self: Arc<Self>, _inputs: &[u32], rt: &mut dyn Runtime) -> Box<dyn Node> {
        let me = rt.me_ref();
        self.source.watch(rt.inbox(), me);
        Box::new(VarRt { term: self, watching: Some(me), value: Output::Active(crate::ActiveState::Ready) })
    }
}

impl<T: Value> Node for VarRt<T> {
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
        self.value.state(self.term.core.id)
    }
    fn error(&self) -> Option<crate::Error> {
        self.value.err().cloned()
    }
    fn recompute(&mut self, _rt: &mut dyn Runtime) -> bool {
        let value = attribute(self.term.source.get(), self.term.core.id);
        store(&mut self.value, value)
    }
    fn for_each_input(&self, _f: &mut dyn FnMut(u32)) {}
    fn release(&mut self, rt: &mut dyn Runtime) {
        if let Some(me) = self.watching.take() {
            self.term.source.unwatch(rt.inbox(), me);
        }
    }
}

impl<T: Value> Var<T> {
    /// A variable named `name` (its box in the diagram) holding `value`.
    pub fn new(name: &str, value: T) -> Var<T> {
        Var::with_output(name, Output::Ok(value))
    }

    /// A variable named `name` whose output starts as `initial` (a value, a
    /// pending state or an error).
    pub fn with_output(name: &str, initial: Output<T>) -> Var<T> {
        let source = Source::new(initial);
        let term = Arc::new(VarTerm { core: TermCore::new(Kind::Var, Some(name.into())), source: source.clone() });
        Var { source, current: Current::from_term(term) }
    }

    /// The stage that reads this variable. Every call returns the same stage.
    pub fn current(&self) -> Current<T> {
        self.current.clone()
    }

    /// Sets the value.
    pub fn set(&self, value: T) {
        self.source.set(Output::Ok(value));
    }

    /// Sets the whole output (a value, a pending state or an error).
    pub fn set_output(&self, output: Output<T>) {
        self.source.set(output);
    }

    /// Replaces the output with `f(current output)`.
    pub fn update(&self, f: impl FnOnce(&Output<T>) -> Output<T>) {
        self.source.update(|v, _| *v = f(v));
    }

    /// The current output.
    pub fn get(&self) -> Output<T> {
        self.source.get()
    }
}
