//! The runtime graph: an arena of nodes, evaluated by height-ordered change
//! propagation.
//!
//! Invariants:
//! - a node's height is greater than the height of each of its inputs, so
//!   popping the lowest height first recomputes a node after its inputs;
//! - a node is alive while it has dependents or holds (the root, a bind's
//!   current body, a list item); when both drop to zero it is released, and so
//!   are its inputs, recursively;
//! - release hooks (cancelling jobs, unwatching monitors) and start actions
//!   (spawning jobs) run only after propagation, so a resource released and
//!   re-acquired in the same step is never torn down.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use smallvec::SmallVec;

use crate::analysis::Stats;
use crate::output::{NodeState, Output};
use crate::term::{AnyTerm, Kind, TermCore, TermId};

/// A deferred action, run after propagation.
pub(crate) type Deferred = Box<dyn FnOnce() + Send>;

/// A runtime node: the typed state of one instantiated term.
pub(crate) trait RtNode: Send + 'static {
    /// The term this node instantiates.
    fn term(&self) -> &dyn AnyTerm;
    /// The current output, as `&Output<T>`.
    fn value(&self) -> &dyn Any;
    /// The current output, as `&mut Output<T>` (used to set list items).
    fn value_mut(&mut self) -> &mut dyn Any;
    /// The coarse state of the output.
    fn state(&self) -> NodeState;
    /// The error, if the output is one.
    fn error(&self) -> Option<crate::Error>;
    /// Recomputes the output from the inputs; true if it changed.
    fn recompute(&mut self, cx: &mut Cx<'_>) -> bool;
    /// Calls `f` on every runtime input (static and dynamic).
    fn for_each_input(&self, f: &mut dyn FnMut(u32));
    /// Drops holds and queues release hooks; called once, when released.
    fn release(&mut self, _cx: &mut Cx<'_>) {}
    /// The dynamic parts built so far (for the diagram).
    fn dynamic(&self) -> Dynamic {
        Dynamic::None
    }
    /// Job id and background update, for primitives.
    fn metadata(&self) -> Option<Metadata> {
        None
    }
}

/// What a dynamic node has built, for the analysis.
pub(crate) enum Dynamic {
    /// Nothing dynamic.
    None,
    /// A bind's current body.
    Bind(Option<Arc<dyn AnyTerm>>),
    /// A keyed map's branches, in list order.
    List(Vec<BranchTerms>),
}

/// One branch of a keyed map: its item and the root of its body.
pub(crate) type BranchTerms = (Arc<dyn AnyTerm>, Arc<dyn AnyTerm>);

/// What a primitive says about itself besides its value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    /// The job currently or last producing the value.
    pub job_id: Option<String>,
    /// Set when a background update runs while an older value is shown.
    pub update: Option<crate::output::ActiveState>,
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

    fn take(&self) -> Vec<NodeRef> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

struct Slot {
    node: Option<Box<dyn RtNode>>,
    dependents: SmallVec<[u32; 2]>,
    height: u32,
    generation: u32,
    holds: u16,
    queued: bool,
    counted: bool,
    state: NodeState,
}

/// Nodes waiting to be recomputed, bucketed by height.
#[derive(Default)]
struct Queue {
    buckets: Vec<Vec<u32>>,
    lowest: usize,
    len: usize,
}

impl Queue {
    fn push(&mut self, index: u32, height: u32) {
        let h = height as usize;
        if self.buckets.len() <= h {
            self.buckets.resize_with(h + 1, Vec::new);
        }
        self.buckets[h].push(index);
        self.lowest = self.lowest.min(h);
        self.len += 1;
    }

    fn pop(&mut self) -> Option<(u32, u32)> {
        if self.len == 0 {
            return None;
        }
        while self.lowest < self.buckets.len() {
            if let Some(i) = self.buckets[self.lowest].pop() {
                self.len -= 1;
                return Some((i, self.lowest as u32));
            }
            self.lowest += 1;
        }
        None
    }
}

/// The arena and the propagation machinery of one engine.
pub(crate) struct Graph {
    engine_id: u32,
    slots: Vec<Slot>,
    free: Vec<u32>,
    queue: Queue,
    /// Live nodes of terms whose slot field belongs to another engine.
    foreign: HashMap<TermId, u32>,
    pub(crate) inbox: Arc<Inbox>,
    /// Release hooks, run after propagation.
    releases: Vec<Deferred>,
    /// Start actions, run after the release hooks.
    starts: Vec<Deferred>,
    /// Released nodes, dropped after propagation.
    dropped: Vec<Box<dyn RtNode>>,
    counts: [u64; 6],
    recomputed: u64,
    /// Evaluation steps so far (propagations).
    step: u64,
}

fn state_index(s: NodeState) -> usize {
    use crate::output::ActiveState::*;
    match s {
        NodeState::Ok => 0,
        NodeState::Active(Ready) => 1,
        NodeState::Active(Running) => 2,
        NodeState::Active(WaitingForConfirmation) => 3,
        NodeState::Failed => 4,
        NodeState::Blocked => 5,
    }
}

/// Whether a term is counted in the statistics (the boxes that stand for work
/// or inputs, as opposed to plumbing and control points).
fn is_counted(core: &TermCore) -> bool {
    match core.kind {
        Kind::Var | Kind::Primitive => true,
        Kind::Constant | Kind::BindIn => core.label.is_some(),
        Kind::Observe { hidden } => !hidden,
        _ => false,
    }
}

impl Graph {
    pub(crate) fn new(engine_id: u32, inbox: Arc<Inbox>) -> Graph {
        Graph {
            engine_id,
            slots: Vec::new(),
            free: Vec::new(),
            queue: Queue::default(),
            foreign: HashMap::new(),
            inbox,
            releases: Vec::new(),
            starts: Vec::new(),
            dropped: Vec::new(),
            counts: [0; 6],
            recomputed: 0,
            step: 1,
        }
    }

    /// The live node of `term` in this graph, if any.
    pub(crate) fn live(&self, term: &dyn AnyTerm) -> Option<u32> {
        let core = term.core();
        let slot = core.slot.load(std::sync::atomic::Ordering::Acquire);
        if slot == 0 {
            return None;
        }
        if (slot >> 32) as u32 == self.engine_id {
            return Some((slot as u32) - 1);
        }
        self.foreign.get(&core.id).copied()
    }

    fn claim(&mut self, core: &TermCore, index: u32) {
        use std::sync::atomic::Ordering;
        let ours = ((self.engine_id as u64) << 32) | (index as u64 + 1);
        if core.slot.compare_exchange(0, ours, Ordering::AcqRel, Ordering::Acquire).is_err() {
            self.foreign.insert(core.id, index);
        }
    }

    fn unclaim(&mut self, core: &TermCore, index: u32) {
        use std::sync::atomic::Ordering;
        let ours = ((self.engine_id as u64) << 32) | (index as u64 + 1);
        if core.slot.compare_exchange(ours, 0, Ordering::AcqRel, Ordering::Acquire).is_err() {
            self.foreign.remove(&core.id);
        }
    }

    /// A reference to the live node at `index`.
    pub(crate) fn node_ref(&self, index: u32) -> NodeRef {
        NodeRef { index, generation: self.slots[index as usize].generation }
    }

    pub(crate) fn value(&self, index: u32) -> &dyn Any {
        self.slots[index as usize].node.as_deref().expect("read of a node being recomputed (cycle)").value()
    }

    pub(crate) fn node(&self, index: u32) -> Option<&dyn RtNode> {
        self.slots.get(index as usize).and_then(|s| s.node.as_deref())
    }

    pub(crate) fn stats(&self) -> Stats {
        let c = &self.counts;
        Stats { ok: c[0], ready: c[1], running: c[2], waiting_for_confirmation: c[3], failed: c[4], blocked: c[5] }
    }

    /// Number of recomputations since the engine started.
    pub(crate) fn recomputed(&self) -> u64 {
        self.recomputed
    }

    /// Number of live nodes.
    pub(crate) fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Instantiates `root` (and every input not yet live), computing each new
    /// node once. Returns the root's index. Iterative, so deep pipelines do
    /// not overflow the stack.
    pub(crate) fn instantiate(&mut self, root: &Arc<dyn AnyTerm>) -> u32 {
        if let Some(i) = self.live(&**root) {
            return i;
        }
        let mut stack: Vec<(Arc<dyn AnyTerm>, bool)> = vec![(root.clone(), false)];
        let mut inputs: SmallVec<[u32; 4]> = SmallVec::new();
        while let Some((term, expanded)) = stack.pop() {
            if self.live(&*term).is_some() {
                continue;
            }
            if !expanded {
                stack.push((term.clone(), true));
                term.for_each_input(&mut |input| {
                    if self.live(&**input).is_none() {
                        stack.push((input.clone(), false));
                    }
                });
                continue;
            }
            inputs.clear();
            term.for_each_input(&mut |input| {
                inputs.push(self.live(&**input).expect("input instantiated before its user"));
            });
            self.create(term, &inputs);
        }
        self.live(&**root).expect("root instantiated")
    }

    fn create(&mut self, term: Arc<dyn AnyTerm>, inputs: &[u32]) -> u32 {
        let height = inputs.iter().map(|&i| self.slots[i as usize].height).max().map_or(1, |h| h + 1);
        let counted = is_counted(term.core());
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    node: None,
                    dependents: SmallVec::new(),
                    height: 0,
                    generation: 0,
                    holds: 0,
                    queued: false,
                    counted: false,
                    state: NodeState::Ok,
                });
                u32::try_from(self.slots.len() - 1).expect("more than 2^32 nodes")
            }
        };
        {
            let slot = &mut self.slots[index as usize];
            slot.height = height;
            slot.counted = counted;
            slot.holds = 0;
            slot.queued = false;
        }
        for &i in inputs {
            self.slots[i as usize].dependents.push(index);
        }
        self.claim(term.core(), index);
        let mut node = term.instantiate(inputs, &mut Cx { graph: self, me: index });
        node.recompute(&mut Cx { graph: self, me: index });
        self.recomputed += 1;
        let state = node.state();
        let slot = &mut self.slots[index as usize];
        slot.state = state;
        slot.node = Some(node);
        if counted {
            self.counts[state_index(state)] += 1;
        }
        index
    }

    /// Keeps `index` alive until the matching `unhold`.
    pub(crate) fn hold(&mut self, index: u32) {
        self.slots[index as usize].holds += 1;
    }

    /// Drops a hold; releases the node if nothing else uses it.
    pub(crate) fn unhold(&mut self, index: u32) {
        let slot = &mut self.slots[index as usize];
        slot.holds -= 1;
        if slot.holds == 0 && slot.dependents.is_empty() {
            self.release(index);
        }
    }

    /// Makes `dependent` a user of `input` (a dynamic edge).
    pub(crate) fn attach(&mut self, input: u32, dependent: u32) {
        self.slots[input as usize].dependents.push(dependent);
        let needed = self.slots[input as usize].height + 1;
        self.raise_height(dependent, needed);
    }

    /// Removes the edge `input -> dependent`; releases `input` if unused.
    pub(crate) fn detach(&mut self, input: u32, dependent: u32) {
        let slot = &mut self.slots[input as usize];
        if let Some(pos) = slot.dependents.iter().position(|&d| d == dependent) {
            slot.dependents.swap_remove(pos);
        }
        if slot.dependents.is_empty() && slot.holds == 0 {
            self.release(input);
        }
    }

    fn raise_height(&mut self, index: u32, height: u32) {
        let limit = self.slots.len() as u32 + 2;
        let mut stack = vec![(index, height)];
        while let Some((i, h)) = stack.pop() {
            let slot = &mut self.slots[i as usize];
            if slot.height >= h {
                continue;
            }
            assert!(h <= limit, "dependency cycle through a bind (a pipeline cannot depend on itself)");
            slot.height = h;
            if slot.queued {
                self.queue.push(i, h);
            }
            for &d in &self.slots[i as usize].dependents {
                stack.push((d, h + 1));
            }
        }
    }

    /// Queues `index` for recomputation in this step.
    pub(crate) fn enqueue(&mut self, index: u32) {
        let slot = &mut self.slots[index as usize];
        if !slot.queued && slot.node.is_some() {
            slot.queued = true;
            self.queue.push(index, slot.height);
        }
    }

    fn enqueue_dependents(&mut self, index: u32) {
        let n = self.slots[index as usize].dependents.len();
        for k in 0..n {
            let d = self.slots[index as usize].dependents[k];
            self.enqueue(d);
        }
    }

    /// Replaces the output of node `index` (a list item) and queues its users.
    pub(crate) fn set_value<T: PartialEq + 'static>(&mut self, index: u32, value: Output<T>) {
        let Some(node) = self.slots[index as usize].node.as_mut() else { return };
        let cell = node.value_mut().downcast_mut::<Output<T>>().expect("item has the wrong type (engine bug)");
        if *cell != value {
            *cell = value;
            self.note_state(index);
            self.enqueue_dependents(index);
        }
    }

    fn note_state(&mut self, index: u32) {
        let slot = &mut self.slots[index as usize];
        if let Some(node) = slot.node.as_ref() {
            let new = node.state();
            if new != slot.state {
                if slot.counted {
                    self.counts[state_index(slot.state)] -= 1;
                    self.counts[state_index(new)] += 1;
                }
                slot.state = new;
            }
        }
    }

    fn release(&mut self, index: u32) {
        let mut work = vec![index];
        while let Some(i) = work.pop() {
            let Some(mut node) = self.slots[i as usize].node.take() else { continue };
            node.release(&mut Cx { graph: self, me: i });
            let mut inputs: SmallVec<[u32; 4]> = SmallVec::new();
            node.for_each_input(&mut |input| inputs.push(input));
            for input in inputs {
                let slot = &mut self.slots[input as usize];
                if let Some(pos) = slot.dependents.iter().position(|&d| d == i) {
                    slot.dependents.swap_remove(pos);
                }
                if slot.dependents.is_empty() && slot.holds == 0 && slot.node.is_some() {
                    work.push(input);
                }
            }
            let slot = &mut self.slots[i as usize];
            if slot.counted {
                self.counts[state_index(slot.state)] -= 1;
            }
            slot.generation = slot.generation.wrapping_add(1);
            slot.queued = false;
            slot.dependents = SmallVec::new();
            self.free.push(i);
            self.unclaim(node.term().core(), i);
            self.dropped.push(node);
        }
    }

    /// One propagation: recompute everything that changed, then run release
    /// hooks and start actions. Returns the number of nodes recomputed.
    pub(crate) fn propagate(&mut self) -> u64 {
        let before = self.recomputed;
        for r in self.inbox.take() {
            if let Some(slot) = self.slots.get(r.index as usize) {
                if slot.generation == r.generation {
                    self.enqueue(r.index);
                }
            }
        }
        while let Some((index, height)) = self.queue.pop() {
            let slot = &mut self.slots[index as usize];
            if !slot.queued || slot.height != height {
                continue; // released, or moved to a higher bucket
            }
            slot.queued = false;
            let Some(mut node) = slot.node.take() else { continue };
            let changed = node.recompute(&mut Cx { graph: self, me: index });
            self.recomputed += 1;
            self.slots[index as usize].node = Some(node);
            // The state can change without the value changing (a primitive
            // whose input arrived shows its own job's state, not a blocked one).
            self.note_state(index);
            if changed {
                self.enqueue_dependents(index);
            }
        }
        self.finish_step();
        self.step += 1;
        self.recomputed - before
    }

    /// The number of the evaluation step in progress (or next).
    pub(crate) fn step(&self) -> u64 {
        self.step
    }

    /// Runs release hooks, then start actions, then drops released nodes.
    pub(crate) fn finish_step(&mut self) {
        for hook in std::mem::take(&mut self.releases) {
            hook();
        }
        for start in std::mem::take(&mut self.starts) {
            start();
        }
        self.dropped.clear();
    }
}

/// What a node may do while it is recomputed or instantiated.
pub(crate) struct Cx<'g> {
    pub(crate) graph: &'g mut Graph,
    pub(crate) me: u32,
}

impl Cx<'_> {
    /// The output of input node `index`.
    pub(crate) fn read<T: 'static>(&self, index: u32) -> &Output<T> {
        typed(self.graph.value(index))
    }

    /// Instantiates `term` (if it has no live node yet) and returns its index.
    pub(crate) fn instantiate(&mut self, term: &Arc<dyn AnyTerm>) -> u32 {
        self.graph.instantiate(term)
    }

    /// A reference to this node, for external sources to post to.
    pub(crate) fn me(&self) -> NodeRef {
        self.graph.node_ref(self.me)
    }

    /// The engine's inbox.
    pub(crate) fn inbox(&self) -> &Arc<Inbox> {
        &self.graph.inbox
    }

    /// Runs `hook` after this propagation (release side effects).
    pub(crate) fn on_release(&mut self, hook: Deferred) {
        self.graph.releases.push(hook);
    }

    /// Runs `action` after this propagation, after the release hooks.
    pub(crate) fn after_step(&mut self, action: Deferred) {
        self.graph.starts.push(action);
    }
}
