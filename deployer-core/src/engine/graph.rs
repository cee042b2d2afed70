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
use std::sync::Arc;

use smallvec::SmallVec;

use crate::analysis::Stats;
use crate::node::{Deferred, Inbox, Node, NodeRef, Runtime};
use crate::output::NodeState;
use crate::term::{AnyTerm, TermCore, TermId};

struct Slot {
    node: Option<Box<dyn Node>>,
    dependents: SmallVec<[u32; 2]>,
    height: u32,
    generation: u32,
    holds: u32,
    queued: bool,
    /// Counted in the statistics (see `TermCore::is_stage`).
    stage: bool,
    state: NodeState,
    /// Blocked template stages this node stands for (counted as blocked).
    placeholders: u32,
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
    dropped: Vec<Box<dyn Node>>,
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

    pub(crate) fn node(&self, index: u32) -> Option<&dyn Node> {
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
                // Pushed last to first, so inputs are created in order.
                let at = stack.len();
                term.for_each_input(&mut |input| {
                    if self.live(&**input).is_none() {
                        stack.push((input.clone(), false));
                    }
                });
                stack[at..].reverse();
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
        let stage = term.core().is_stage();
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
                    stage: false,
                    state: NodeState::Ok,
                    placeholders: 0,
                });
                u32::try_from(self.slots.len() - 1).expect("more than 2^32 nodes")
            }
        };
        {
            let slot = &mut self.slots[index as usize];
            slot.height = height;
            slot.stage = stage;
            slot.holds = 0;
            slot.queued = false;
            slot.placeholders = 0;
        }
        for &i in inputs {
            self.slots[i as usize].dependents.push(index);
        }
        self.claim(term.core(), index);
        let mut node = term.clone().instantiate(inputs, &mut Eval { graph: self, me: index });
        node.recompute(&mut Eval { graph: self, me: index });
        self.recomputed += 1;
        let state = node.state();
        let placeholders = node.placeholder_stages();
        let slot = &mut self.slots[index as usize];
        slot.state = state;
        slot.placeholders = placeholders;
        slot.node = Some(node);
        if stage {
            self.counts[state_index(state)] += 1;
        }
        self.counts[state_index(NodeState::Blocked)] += placeholders as u64;
        // The `with_context` values of the scope the term was built in are
        // evaluated while it lives (they are drawn as its inputs).
        if let Some(scope) = &term.core().scope {
            for ctx in &scope.contexts {
                let c = self.instantiate(ctx);
                self.hold(c);
            }
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
    fn attach(&mut self, input: u32, dependent: u32) {
        self.slots[input as usize].dependents.push(dependent);
        let needed = self.slots[input as usize].height + 1;
        self.raise_height(dependent, needed);
    }

    /// Removes the edge `input -> dependent`; releases `input` if unused.
    fn detach(&mut self, input: u32, dependent: u32) {
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

    /// Updates the counters after node `index` may have changed state.
    fn note_state(&mut self, index: u32) {
        let slot = &mut self.slots[index as usize];
        let Some(node) = slot.node.as_ref() else { return };
        let (new, placeholders) = (node.state(), node.placeholder_stages());
        if new != slot.state {
            if slot.stage {
                self.counts[state_index(slot.state)] -= 1;
                self.counts[state_index(new)] += 1;
            }
            slot.state = new;
        }
        if placeholders != slot.placeholders {
            let blocked = &mut self.counts[state_index(NodeState::Blocked)];
            *blocked = *blocked - slot.placeholders as u64 + placeholders as u64;
            slot.placeholders = placeholders;
        }
    }

    fn release(&mut self, index: u32) {
        let mut work = vec![index];
        while let Some(i) = work.pop() {
            let Some(mut node) = self.slots[i as usize].node.take() else { continue };
            node.release(&mut Eval { graph: self, me: i });
            let mut inputs: SmallVec<[u32; 4]> = SmallVec::new();
            node.for_each_input(&mut |input| inputs.push(input));
            // The contexts this node kept evaluated.
            if let Some(scope) = &node.term().core().scope {
                for ctx in &scope.contexts {
                    if let Some(c) = self.live(&**ctx) {
                        let slot = &mut self.slots[c as usize];
                        slot.holds -= 1;
                        if slot.holds == 0 && slot.dependents.is_empty() && slot.node.is_some() {
                            work.push(c);
                        }
                    }
                }
            }
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
            if slot.stage {
                self.counts[state_index(slot.state)] -= 1;
            }
            self.counts[state_index(NodeState::Blocked)] -= slot.placeholders as u64;
            slot.placeholders = 0;
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
            let changed = node.recompute(&mut Eval { graph: self, me: index });
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

/// The engine's side of [`Runtime`]: the graph, seen from the node `me`
/// being instantiated or recomputed.
struct Eval<'g> {
    graph: &'g mut Graph,
    me: u32,
}

impl Runtime for Eval<'_> {
    fn value(&self, index: u32) -> &dyn Any {
        self.graph.value(index)
    }
    fn instantiate(&mut self, term: &Arc<dyn AnyTerm>) -> u32 {
        self.graph.instantiate(term)
    }
    fn hold(&mut self, index: u32) {
        self.graph.hold(index);
    }
    fn unhold(&mut self, index: u32) {
        self.graph.unhold(index);
    }
    fn attach(&mut self, input: u32, dependent: u32) {
        self.graph.attach(input, dependent);
    }
    fn detach(&mut self, input: u32, dependent: u32) {
        self.graph.detach(input, dependent);
    }
    fn set_value(&mut self, index: u32, update: &mut dyn FnMut(&mut dyn Any) -> bool) {
        let Some(node) = self.graph.slots[index as usize].node.as_mut() else { return };
        if update(node.value_mut()) {
            self.graph.note_state(index);
            self.graph.enqueue_dependents(index);
        }
    }
    fn me(&self) -> u32 {
        self.me
    }
    fn me_ref(&self) -> NodeRef {
        self.graph.node_ref(self.me)
    }
    fn inbox(&self) -> &Arc<Inbox> {
        &self.graph.inbox
    }
    fn on_release(&mut self, hook: Deferred) {
        self.graph.releases.push(hook);
    }
    fn after_step(&mut self, action: Deferred) {
        self.graph.starts.push(action);
    }
    fn step(&self) -> u64 {
        self.graph.step
    }
}
