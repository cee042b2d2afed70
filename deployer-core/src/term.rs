//! Terms: the static description of a pipeline.
//!
//! A [`Current`](crate::Current) is a handle on a term. Terms are immutable
//! and shared; the engine instantiates them into runtime nodes
//! ([`crate::engine`]). Because terms exist before anything runs, the diagram
//! of a pipeline can be drawn before its first evaluation.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::num::NonZeroU64;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::engine::graph::{Cx, RtNode};

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

/// What a term does, as far as the diagram is concerned.
#[derive(Clone, Debug)]
pub(crate) enum Kind {
    /// A constant, failure or pending value; drawn only when labelled.
    Constant,
    /// An input set from outside ([`crate::Var`]).
    Var,
    /// A pure function of one input; drawn only if it failed.
    Map,
    /// Joins inputs (pair, all); never drawn.
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
    /// One item of a `list_map` / `option_map` (drawn as its key).
    Item,
    /// A keyed map over a dynamic list.
    ListMap(Arc<ListInfo>),
    /// The result half of a keyed map; never drawn.
    ListOut,
    /// A collapsible group: everything between `input` and this node.
    Collapse(Arc<CollapseInfo>),
}

/// Static facts about a `list_map` / `option_map`.
pub(crate) struct ListInfo {
    /// The body applied to a placeholder item, drawn while the list is
    /// pending or empty.
    pub(crate) template: Arc<dyn AnyTerm>,
    /// The placeholder item of the template.
    pub(crate) placeholder: TermId,
    /// Drawn dotted (an `option_map`).
    pub(crate) option: bool,
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
    /// Where the term was built: the enclosing `with_context` values and
    /// bind (drawn as extra inputs) and the list item whose body built it.
    pub(crate) context: Option<Arc<BuildContext>>,
    /// The runtime node of this term in the engine that owns it:
    /// `engine_id << 32 | (index + 1)`, or 0.
    pub(crate) slot: AtomicU64,
}

impl TermCore {
    pub(crate) fn new(kind: Kind, label: Option<Arc<str>>) -> TermCore {
        TermCore { id: TermId::fresh(), kind, label, context: construction_context(), slot: AtomicU64::new(0) }
    }
}

/// A term with its output type erased. Implemented by one struct per combinator.
pub(crate) trait AnyTerm: Send + Sync + 'static {
    /// Id, kind, label.
    fn core(&self) -> &TermCore;
    /// Calls `f` on each static input, in the order `instantiate` expects.
    fn for_each_input(&self, f: &mut dyn FnMut(&Arc<dyn AnyTerm>));
    /// The state of a term that needs no evaluation (a constant), for
    /// drawing it before it is instantiated.
    fn static_state(&self) -> Option<crate::NodeState> {
        None
    }
    /// Builds the runtime node, given the runtime indices of the inputs.
    fn instantiate(self: Arc<Self>, inputs: &[u32], cx: &mut Cx<'_>) -> Box<dyn RtNode>;
}

/// Where terms are being built.
#[derive(Default)]
pub(crate) struct BuildContext {
    /// Drawn as extra inputs of every term built here.
    pub(crate) parents: Vec<Arc<dyn AnyTerm>>,
    /// The list item (or template placeholder) whose body is being built.
    pub(crate) group: Option<TermId>,
}

#[derive(Default)]
struct Builder {
    parents: Vec<Arc<dyn AnyTerm>>,
    groups: Vec<TermId>,
    /// The context shared by every term built until the stacks change.
    cached: Option<Arc<BuildContext>>,
}

thread_local! {
    static BUILDER: RefCell<Builder> = RefCell::new(Builder::default());
}

fn construction_context() -> Option<Arc<BuildContext>> {
    BUILDER.with(|b| {
        let mut b = b.borrow_mut();
        if b.parents.is_empty() && b.groups.is_empty() {
            return None;
        }
        if b.cached.is_none() {
            let ctx = BuildContext { parents: b.parents.clone(), group: b.groups.last().copied() };
            b.cached = Some(Arc::new(ctx));
        }
        b.cached.clone()
    })
}

fn push_and_run<R>(push: impl FnOnce(&mut Builder), pop: fn(&mut Builder), f: impl FnOnce() -> R) -> R {
    struct Pop(fn(&mut Builder));
    impl Drop for Pop {
        fn drop(&mut self) {
            BUILDER.with(|b| {
                let mut b = b.borrow_mut();
                (self.0)(&mut b);
                b.cached = None;
            });
        }
    }
    BUILDER.with(|b| {
        let mut b = b.borrow_mut();
        push(&mut b);
        b.cached = None;
    });
    let _pop = Pop(pop);
    f()
}

/// Runs `f` with `parent` drawn as an input of every term `f` builds.
pub(crate) fn with_parent<R>(parent: Arc<dyn AnyTerm>, f: impl FnOnce() -> R) -> R {
    push_and_run(
        |b| b.parents.push(parent),
        |b| {
            b.parents.pop();
        },
        f,
    )
}

/// Runs `f`, marking every term it builds as part of list item `group`.
pub(crate) fn in_group<R>(group: TermId, f: impl FnOnce() -> R) -> R {
    push_and_run(
        |b| b.groups.push(group),
        |b| {
            b.groups.pop();
        },
        f,
    )
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
