//! Terms: the static description of a pipeline.
//!
//! A [`Current`] is a typed handle on a term. Terms are immutable and shared;
//! the engine instantiates them into runtime nodes through the interface in
//! [`crate::node`]. Because terms exist before anything runs, the diagram of a
//! pipeline can be drawn before its first evaluation.
//!
//! This module also holds the rules every other module asks about a term:
//! whether it is drawn as a box ([`TermCore::box_rule`]) and whether it is a
//! stage counted in the statistics ([`TermCore::is_stage`]).

use std::cell::{Cell, RefCell};
use std::fmt;
use std::marker::PhantomData;
use std::num::NonZeroU64;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::node::{Node, Runtime};
use crate::output::NodeState;

/// What a pipeline value must be: cloneable (items are handed to jobs),
/// comparable (an unchanged value stops propagation) and shareable.
pub trait Value: Clone + PartialEq + Send + Sync + 'static {}

impl<T: Clone + PartialEq + Send + Sync + 'static> Value for T {}

/// A pipeline stage producing a `T`: a node of the pipeline's diagram.
///
/// A `Current` is a description: building one runs nothing. An
/// [`Engine`](crate::Engine) evaluates it, runs its primitives, and when an
/// input changes re-evaluates only what depends on it. Cloning is cheap and a
/// clone is the same node (using it twice does not run it twice). A plain
/// value converts into a constant stage, so functions taking
/// `impl Into<Current<T>>` accept either.
///
/// ```
/// use deployer_core::{Current, Engine, Output};
///
/// let n: Current<u32> = 20.into();
/// let answer = n.map(|n| n * 2 + 2);
/// let engine = Engine::new(answer);
/// engine.step();
/// assert_eq!(engine.output(), Output::Ok(42));
/// ```
pub struct Current<T> {
    pub(crate) term: Arc<dyn AnyTerm>,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for Current<T> {
    fn clone(&self) -> Self {
        Current { term: self.term.clone(), _type: PhantomData }
    }
}

impl<T> fmt::Debug for Current<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Current({})", self.term.core().id)
    }
}

impl<T> Current<T> {
    /// A handle on `term`, whose output type must be `T`.
    pub(crate) fn from_term(term: Arc<dyn AnyTerm>) -> Current<T> {
        Current { term, _type: PhantomData }
    }

    /// The id of this node (the tag carried by errors that originate here).
    pub fn id(&self) -> TermId {
        self.term.core().id
    }
}

/// Identifies one term (one box or hidden node of the diagram) for the life
/// of the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TermId(NonZeroU64);

impl TermId {
    /// A new, never used id.
    pub(crate) fn fresh() -> TermId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        TermId(NonZeroU64::new(n).expect("term id counter overflowed"))
    }

    /// The id as a number (stable for the life of the process).
    pub fn get(self) -> u64 {
        self.0.get()
    }
}

impl fmt::Display for TermId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

/// What a term does, as far as the diagram and the statistics are concerned.
#[derive(Clone, Debug)]
pub(crate) enum Kind {
    /// A constant, failure or pending value; drawn only when labelled.
    Constant,
    /// An input set from outside ([`crate::Var`]).
    Var,
    /// A pure function of its inputs; drawn only if it failed.
    Map,
    /// Joins inputs (pair, join, all); never drawn.
    Join,
    /// `all_labelled`: drawn only if it failed.
    AllLabelled,
    /// `gate`: drawn as a circle, with a dashed edge from the control input.
    Gate,
    /// `state` / `catch`: drawn unless hidden.
    Observe { hidden: bool },
    /// The decision half of a bind: drawn when labelled.
    BindIn,
    /// The result half of a bind: never drawn; stands for the term it built.
    BindOut,
    /// A primitive (a job, a monitor): always drawn.
    Primitive,
    /// One item of a `list_map` (drawn as its key); of an `option_map`, not
    /// drawn (the body hangs off the input directly).
    Item,
    /// A keyed map over a dynamic list; drawn as a cluster.
    ListMap(Arc<ListInfo>),
    /// The result half of a keyed map; never drawn.
    ListOut,
    /// A collapsible group: everything between `input` and this node.
    Collapse(Arc<CollapseInfo>),
}

/// How the diagram draws a term (see [`TermCore::box_rule`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BoxRule {
    /// Never a box: the term stands for its inputs' boxes.
    Never,
    /// Always a box.
    Always,
    /// A box only when the error shown originated here.
    IfFailed,
    /// A `+` box unless its group is expanded.
    Collapsible,
    /// A cluster around its items' bodies.
    Cluster,
}

/// Static facts about a `list_map` / `option_map`.
pub(crate) struct ListInfo {
    /// The body applied to a placeholder item, drawn while the list is
    /// pending or empty.
    pub(crate) template: Arc<dyn AnyTerm>,
    /// The placeholder item of the template.
    pub(crate) placeholder: TermId,
    /// Drawn dotted, with no item boxes (an `option_map`).
    pub(crate) option: bool,
    /// Stages in the template (counted as blocked while it is shown).
    pub(crate) template_stages: u32,
}

/// Static facts about a collapse group.
pub(crate) struct CollapseInfo {
    pub(crate) key: Arc<str>,
    pub(crate) value: Arc<str>,
    pub(crate) input: Arc<dyn AnyTerm>,
}

impl fmt::Debug for ListInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ListInfo(option: {})", self.option)
    }
}

impl fmt::Debug for CollapseInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Collapse({}={})", self.key, self.value)
    }
}

impl fmt::Debug for dyn AnyTerm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.core().id)
    }
}

/// The parts every term has.
pub(crate) struct TermCore {
    pub(crate) id: TermId,
    pub(crate) kind: Kind,
    pub(crate) label: Option<Arc<str>>,
    /// Where the term was built (see [`Scope`]).
    pub(crate) scope: Option<Arc<Scope>>,
    /// The runtime node of this term in the engine that owns it:
    /// `engine_id << 32 | (index + 1)`, or 0.
    pub(crate) slot: AtomicU64,
}

impl TermCore {
    pub(crate) fn new(kind: Kind, label: Option<Arc<str>>) -> TermCore {
        TermCore { id: TermId::fresh(), kind, label, scope: current_scope(), slot: AtomicU64::new(0) }
    }

    /// How the diagram draws this term. The one place that decides which
    /// terms are boxes.
    pub(crate) fn box_rule(&self) -> BoxRule {
        match &self.kind {
            Kind::Var | Kind::Primitive | Kind::Gate | Kind::Item => BoxRule::Always,
            Kind::Constant | Kind::BindIn if self.label.is_some() => BoxRule::Always,
            Kind::Observe { hidden: false } => BoxRule::Always,
            Kind::Map | Kind::AllLabelled => BoxRule::IfFailed,
            Kind::Collapse(_) => BoxRule::Collapsible,
            Kind::ListMap(_) => BoxRule::Cluster,
            Kind::Constant
            | Kind::BindIn
            | Kind::Observe { hidden: true }
            | Kind::Join
            | Kind::BindOut
            | Kind::ListOut => BoxRule::Never,
        }
    }

    /// Whether this term is a *stage*, counted in the statistics: an input
    /// or a piece of work (variables, primitives, labelled binds), as
    /// OCurrent's statistics count them. Plumbing, constants, gates, items
    /// and `state`/`catch` boxes are drawn but not counted.
    pub(crate) fn is_stage(&self) -> bool {
        match self.kind {
            Kind::Var | Kind::Primitive => true,
            Kind::BindIn => self.label.is_some(),
            _ => false,
        }
    }

    /// The list item (or template placeholder) whose body built this term.
    pub(crate) fn group(&self) -> Option<TermId> {
        self.scope.as_ref().and_then(|s| s.group)
    }
}

/// A term with its output type erased. Implemented by one struct per combinator.
pub(crate) trait AnyTerm: Send + Sync + 'static {
    /// Id, kind, label, scope.
    fn core(&self) -> &TermCore;
    /// Calls `f` on each static input, in the order `instantiate` expects.
    fn for_each_input(&self, f: &mut dyn FnMut(&Arc<dyn AnyTerm>));
    /// The state of a term that needs no evaluation (a constant), for
    /// drawing it before it is instantiated.
    fn static_state(&self) -> Option<NodeState> {
        None
    }
    /// Builds the runtime node, given the runtime indices of the inputs.
    fn instantiate(self: Arc<Self>, inputs: &[u32], rt: &mut dyn Runtime) -> Box<dyn Node>;
}

/// Where terms are being built: drawn as extra inputs of each term, and the
/// list item a term belongs to.
#[derive(Default)]
pub(crate) struct Scope {
    /// The `with_context` values: drawn as inputs of every term built here,
    /// and evaluated while such a term is.
    pub(crate) contexts: Vec<Arc<dyn AnyTerm>>,
    /// The bind whose body is being built: drawn as an input.
    pub(crate) bind: Option<Arc<dyn AnyTerm>>,
    /// The list item (or template placeholder) whose body is being built.
    pub(crate) group: Option<TermId>,
}

impl Scope {
    /// The terms drawn as inputs of everything built in this scope.
    pub(crate) fn drawn_inputs(&self) -> impl Iterator<Item = &Arc<dyn AnyTerm>> {
        self.contexts.iter().chain(self.bind.as_ref())
    }
}

/// The stack of scopes of the thread building terms; the top is in effect.
#[derive(Default)]
struct ScopeStack {
    frames: Vec<Arc<Scope>>,
}

thread_local! {
    static SCOPES: RefCell<ScopeStack> = RefCell::new(ScopeStack::default());
}

fn current_scope() -> Option<Arc<Scope>> {
    SCOPES.with(|s| s.borrow().frames.last().cloned())
}

/// Runs `f` with `make(current scope)` in effect.
fn in_scope<R>(make: impl FnOnce(&Scope) -> Scope, f: impl FnOnce() -> R) -> R {
    struct Pop;
    impl Drop for Pop {
        fn drop(&mut self) {
            SCOPES.with(|s| {
                s.borrow_mut().frames.pop();
            });
        }
    }
    let empty = Scope::default();
    let next = {
        let top = current_scope();
        make(top.as_deref().unwrap_or(&empty))
    };
    SCOPES.with(|s| s.borrow_mut().frames.push(Arc::new(next)));
    let _pop = Pop;
    f()
}

/// Runs `f` with `ctx` drawn as an input of every term `f` builds (and kept
/// evaluated while they are). Contexts nest.
pub(crate) fn with_context_term<R>(ctx: Arc<dyn AnyTerm>, f: impl FnOnce() -> R) -> R {
    in_scope(
        |top| {
            let mut contexts = top.contexts.clone();
            contexts.push(ctx);
            Scope { contexts, bind: top.bind.clone(), group: top.group }
        },
        f,
    )
}

/// Runs `f`, the body of `bind`: what it builds is drawn with an edge from
/// the bind, and belongs to the bind's list item, if any. As in OCurrent,
/// the body starts a fresh scope (the bind itself was built in the outer one).
pub(crate) fn in_bind<R>(bind: Arc<dyn AnyTerm>, f: impl FnOnce() -> R) -> R {
    let group = bind.core().group();
    in_scope(|_| Scope { contexts: Vec::new(), bind: Some(bind), group }, f)
}

/// Runs `f` in `base` (the scope another term was built in).
pub(crate) fn in_scope_of<R>(base: Option<&Scope>, f: impl FnOnce() -> R) -> R {
    in_scope(
        |_| match base {
            Some(base) => Scope { contexts: base.contexts.clone(), bind: base.bind.clone(), group: base.group },
            None => Scope::default(),
        },
        f,
    )
}

/// Runs `f`, the body of a list for item `group`, in `base` (the scope the
/// list was built in), marking every term it builds as part of the item.
pub(crate) fn in_group<R>(base: Option<&Scope>, group: TermId, f: impl FnOnce() -> R) -> R {
    in_scope(
        |_| match base {
            Some(base) => Scope { contexts: base.contexts.clone(), bind: base.bind.clone(), group: Some(group) },
            None => Scope { group: Some(group), ..Scope::default() },
        },
        f,
    )
}

/// Number of stages in the body of a list template built for `placeholder`
/// from `root`: stages built in that group, plus those of the templates of
/// lists nested in it.
pub(crate) fn template_stages(root: &Arc<dyn AnyTerm>, placeholder: TermId) -> u32 {
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![root.clone()];
    let mut n = 0;
    while let Some(t) = stack.pop() {
        let core = t.core();
        if core.group() != Some(placeholder) || !seen.insert(core.id) {
            continue;
        }
        if core.is_stage() {
            n += 1;
        }
        if let Kind::ListMap(info) = &core.kind {
            n += info.template_stages;
        }
        t.for_each_input(&mut |i| stack.push(i.clone()));
    }
    n
}

/// A term's reference to one of its inputs.
///
/// Dropping a long chain of terms would recurse once per term and overflow
/// the stack; dropping a `TermRef` that holds the last reference instead
/// queues the input, and the outermost drop empties the queue in a loop.
pub(crate) struct TermRef(Option<Arc<dyn AnyTerm>>);

impl TermRef {
    pub(crate) fn new(term: Arc<dyn AnyTerm>) -> TermRef {
        TermRef(Some(term))
    }
}

impl Deref for TermRef {
    type Target = Arc<dyn AnyTerm>;
    fn deref(&self) -> &Arc<dyn AnyTerm> {
        self.0.as_ref().expect("a TermRef is only emptied by its drop")
    }
}

thread_local! {
    static TRASH: RefCell<Vec<Arc<dyn AnyTerm>>> = const { RefCell::new(Vec::new()) };
    static EMPTYING: Cell<bool> = const { Cell::new(false) };
}

impl Drop for TermRef {
    fn drop(&mut self) {
        let Some(term) = self.0.take() else { return };
        if Arc::strong_count(&term) > 1 {
            return; // only a count decrement, no recursion
        }
        TRASH.with(|t| t.borrow_mut().push(term));
        if EMPTYING.with(|e| e.replace(true)) {
            return; // an outer drop is emptying the queue
        }
        while let Some(next) = TRASH.with(|t| t.borrow_mut().pop()) {
            drop(next);
        }
        EMPTYING.with(|e| e.set(false));
    }
}
