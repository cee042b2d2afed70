//! The interface between terms and the engine's runtime.
//!
//! A term builds a [`Node`] (its typed runtime state) and recomputes it
//! through the [`Runtime`] trait, which the engine implements. Terms know
//! this interface, never the engine itself; outside sources (a job, a
//! monitor) reach the engine only through an [`Inbox`].

use std::any::Any;
use std::sync::{Arc, Mutex};

use crate::output::{ActiveState, Error, NodeState, Output};
use crate::term::AnyTerm;

/// A deferred action, run after propagation.
pub(crate) type Deferred = Box<dyn FnOnce() + Send>;

/// A runtime node: the typed state of one instantiated term.
pub(crate) trait Node: Send + 'static {
    /// The term this node instantiates.
    fn term(&self) -> &dyn AnyTerm;
    /// The current output, as `&Output<T>`.
    fn value(&self) -> &dyn Any;
    /// The current output, as `&mut Output<T>` (used to set list items).
    fn value_mut(&mut self) -> &mut dyn Any;
    /// The coarse state of the output.
    fn state(&self) -> NodeState;
    /// The error, if the output is one.
    fn error(&self) -> Option<Error>;
    /// Recomputes the output from the inputs; true if it changed.
    fn recompute(&mut self, rt: &mut dyn Runtime) -> bool;
    /// Calls `f` on every runtime input (static and dynamic).
    fn for_each_input(&self, f: &mut dyn FnMut(u32));
    /// Drops holds and queues release hooks; called once, when released.
    fn release(&mut self, _rt: &mut dyn Runtime) {}
    /// The dynamic parts built so far (for the diagram).
    fn dynamic(&self) -> Dynamic {
        Dynamic::None
    }
    /// Job id and background update, for primitives.
    fn metadata(&self) -> Option<Metadata> {
        None
    }
    /// Stages this node stands for besides itself, all blocked: the body of
    /// a list template shown while the list is pending or empty.
    fn placeholder_stages(&self) -> u32 {
        0
    }
}

/// What a node may ask of the engine while it is recomputed or instantiated.
pub(crate) trait Runtime {
    /// The output of node `index`, as `&Output<T>`.
    fn value(&self, index: u32) -> &dyn Any;
    /// Instantiates `term` (if it has no live node yet) and returns its index.
    fn instantiate(&mut self, term: &Arc<dyn AnyTerm>) -> u32;
    /// Keeps `index` alive until the matching `unhold`.
    fn hold(&mut self, index: u32);
    /// Drops a hold; releases the node if nothing else uses it.
    fn unhold(&mut self, index: u32);
    /// Makes `dependent` a user of `input` (a dynamic edge).
    fn attach(&mut self, input: u32, dependent: u32);
    /// Removes the edge `input -> dependent`; releases `input` if unused.
    fn detach(&mut self, input: u32, dependent: u32);
    /// Replaces the output of node `index` with `value` (an `Output<T>` of
    /// the node's type) and queues its users if it changed.
    fn set_value(&mut self, index: u32, value: &mut dyn FnMut(&mut dyn Any) -> bool);
    /// The index of the node being recomputed.
    fn me(&self) -> u32;
    /// A reference to this node, for external sources to post to.
    fn me_ref(&self) -> NodeRef;
    /// The engine's inbox.
    fn inbox(&self) -> &Arc<Inbox>;
    /// Runs `hook` after this propagation (release side effects).
    fn on_release(&mut self, hook: Deferred);
    /// Runs `action` after this propagation, after the release hooks.
    fn after_step(&mut self, action: Deferred);
    /// The number of the evaluation step in progress.
    fn step(&self) -> u64;
}

impl dyn Runtime + '_ {
    /// The output of input node `index`.
    pub(crate) fn read<T: 'static>(&self, index: u32) -> &Output<T> {
        typed(self.value(index))
    }

    /// Sets the output of node `index` (a list item) and queues its users
    /// if it changed.
    pub(crate) fn set_output<T: PartialEq + 'static>(&mut self, index: u32, value: Output<T>) {
        let mut value = Some(value);
        self.set_value(index, &mut |cell| {
            let cell = cell.downcast_mut::<Output<T>>().expect("item has the wrong type (engine bug)");
            let new = value.take().expect("set once");
            if *cell == new {
                false
            } else {
                *cell = new;
                true
            }
        });
    }
}

/// What a dynamic node has built, for the analysis.
pub(crate) enum Dynamic {
    /// Nothing dynamic.
    None,
    /// A bind's current body.
    Bind(Option<Arc<dyn AnyTerm>>),
    /// A keyed map's branches, in list order, and whether the list is
    /// known to be empty.
    List {
        /// Item and body root of each branch.
        branches: Vec<BranchTerms>,
        /// The list is empty (not pending).
        empty: bool,
    },
}

/// One branch of a keyed map: its item and the root of its body.
pub(crate) type BranchTerms = (Arc<dyn AnyTerm>, Arc<dyn AnyTerm>);

/// What a primitive says about itself besides its value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    /// The job currently or last producing the value.
    pub job_id: Option<String>,
    /// Set when a background update runs while an older value is shown
    /// (a latched operation being updated, an expired result being rebuilt).
    pub update: Option<ActiveState>,
}

/// Reads `&Output<T>` from a node's erased value.
pub(crate) fn typed<T: 'static>(value: &dyn Any) -> &Output<T> {
    value.downcast_ref::<Output<T>>().expect("runtime node has the wrong output type (engine bug)")
}

/// A reference to a live node that stays valid while the node lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct NodeRef {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

/// Where external sources post "this node should recompute".
pub(crate) struct Inbox {
    pending: Mutex<Vec<NodeRef>>,
    pub(crate) notify: tokio::sync::Notify,
}

impl Inbox {
    pub(crate) fn new() -> Arc<Inbox> {
        Arc::new(Inbox { pending: Mutex::new(Vec::new()), notify: tokio::sync::Notify::new() })
    }

    /// Asks for `node` to be recomputed at the next step, and wakes the engine.
    pub(crate) fn post(&self, node: NodeRef) {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).push(node);
        self.notify.notify_one();
    }

    /// Wakes the engine without a node (for example, the threshold changed).
    pub(crate) fn wake(&self) {
        self.notify.notify_one();
    }

    /// The nodes posted since the last call.
    pub(crate) fn take(&self) -> Vec<NodeRef> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }
}
