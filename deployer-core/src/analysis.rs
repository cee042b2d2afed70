//! Analysis: statistics and the pipeline's diagram.
//!
//! The diagram follows OCurrent's simplification: plain maps, pairs and
//! unlabelled constants get no box (a map that failed does), and an edge
//! `a -> c` is dropped when `c` also depends on `a` through another input.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use serde::Serialize;
use smallvec::SmallVec;

use crate::engine::graph::Graph;
use crate::node::{BranchTerms, Dynamic};
use crate::output::{ActiveState, NodeState};
use crate::term::{AnyTerm, BoxRule, Kind, TermId};

/// Counts of stages per state, maintained as nodes change, so reading them
/// is O(1) whatever the size of the pipeline.
///
/// As in OCurrent, only *stages* are counted: variables, primitives (jobs,
/// monitors) and labelled binds, including those drawn in the body of a
/// list whose items are not known yet or that is empty (counted as
/// blocked). Constants, gates, items and `state`/`catch` boxes are drawn
/// but not counted; plumbing (maps, pairs) is neither.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Boxes with a value.
    pub ok: u64,
    /// Boxes ready to run.
    pub ready: u64,
    /// Boxes running.
    pub running: u64,
    /// Boxes waiting for an operator's confirmation.
    pub waiting_for_confirmation: u64,
    /// Boxes that failed themselves.
    pub failed: u64,
    /// Boxes blocked by a failure upstream.
    pub blocked: u64,
}

/// The collapse groups to draw expanded, as `key=value` pairs (the web UI
/// takes them from the page's query string).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expanded(BTreeSet<(String, String)>);

impl Expanded {
    /// Nothing expanded.
    pub fn none() -> Expanded {
        Expanded::default()
    }

    /// Expands the groups named by `pairs`.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Expanded {
        Expanded(pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }

    fn contains(&self, key: &str, value: &str) -> bool {
        self.0.contains(&(key.to_owned(), value.to_owned()))
    }
}

/// How a box is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    /// A rounded box (stages).
    Box,
    /// A circle (a gate).
    Circle,
    /// A collapsed group, drawn `+`.
    Collapsed,
}

/// One box of the diagram.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DiagramBox {
    /// The box's id (the term's id; stable while the process runs).
    pub id: u64,
    /// The text in the box.
    pub label: String,
    /// How it is drawn.
    pub shape: Shape,
    /// Its state; `None` when the stage has not been evaluated yet.
    pub state: Option<NodeState>,
    /// The job producing the value, for a link to its log.
    pub job_id: Option<String>,
    /// A background update in progress while an older value is shown.
    pub update: Option<ActiveState>,
    /// The error message, when the box failed.
    pub message: Option<String>,
    /// The cluster (list or option map) the box is in.
    pub cluster: Option<usize>,
    /// For a collapsed group: the `key=value` that expands it.
    pub expand: Option<(String, String)>,
}

/// An edge of the diagram.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Edge {
    /// Source box id.
    pub from: u64,
    /// Target box id.
    pub to: u64,
    /// Dashed (the control input of a gate).
    pub dashed: bool,
}

/// A cluster: the boxes of one `list_map` (solid) or `option_map` (dotted).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Cluster {
    /// Index in [`Diagram::clusters`].
    pub index: usize,
    /// Drawn dotted.
    pub dotted: bool,
    /// The enclosing cluster, for nested lists.
    pub parent: Option<usize>,
}

/// The pipeline's diagram: boxes, edges and clusters.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Diagram {
    /// The boxes, in dependency order.
    pub boxes: Vec<DiagramBox>,
    /// The edges, after transitive reduction.
    pub edges: Vec<Edge>,
    /// The clusters.
    pub clusters: Vec<Cluster>,
}

/// The fill colour OCurrent uses for a state.
pub fn state_colour(state: Option<NodeState>) -> &'static str {
    match state {
        None => "#ffffff",
        Some(NodeState::Ok) => "#90ee90",
        Some(NodeState::Active(ActiveState::Ready)) => "#ffff00",
        Some(NodeState::Active(ActiveState::Running)) => "#ffa500",
        Some(NodeState::Active(ActiveState::WaitingForConfirmation)) => "#4975ff",
        Some(NodeState::Failed) => "#ff4500",
        Some(NodeState::Blocked) => "#d3d3d3",
    }
}

fn dot_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

impl Diagram {
    /// The diagram in Graphviz's DOT language, with OCurrent's colours and
    /// links from job boxes to `/job/<id>`.
    pub fn to_dot(&self) -> String {
        let mut out = String::new();
        out.push_str("digraph pipeline {\n");
        out.push_str("  graph [fontname=\"ui-system,sans-serif\" bgcolor=\"transparent\" rankdir=LR]\n");
        out.push_str("  node [shape=\"box\" style=\"filled,rounded\" fontname=\"ui-system,sans-serif\"]\n");
        out.push_str("  edge [fontname=\"ui-system,sans-serif\"]\n");
        let mut by_cluster: HashMap<Option<usize>, Vec<&DiagramBox>> = HashMap::new();
        for b in &self.boxes {
            by_cluster.entry(b.cluster).or_default().push(b);
        }
        let write_box = |out: &mut String, b: &DiagramBox, indent: &str| {
            let fill = match b.update {
                Some(u) => format!("{}:{}", state_colour(Some(NodeState::Active(u))), state_colour(b.state)),
                None => state_colour(b.state).to_owned(),
            };
            let (shape, label) = match b.shape {
                Shape::Box => ("box", b.label.clone()),
                Shape::Circle => ("circle", String::new()),
                Shape::Collapsed => ("box", "+".to_owned()),
            };
            let suffix = match (&b.job_id, b.state) {
                (Some(_), Some(NodeState::Ok)) => " ✔",
                (Some(_), Some(NodeState::Active(_))) => " …",
                (Some(_), Some(NodeState::Failed)) => " ✗",
                _ => "",
            };
            let _ = write!(
                out,
                "{indent}n{} [label=\"{}{}\" shape=\"{}\" fillcolor=\"{}\"",
                b.id,
                dot_escape(&label),
                suffix,
                shape,
                fill
            );
            if b.update.is_some() {
                out.push_str(" style=\"filled,rounded\" gradientangle=90");
            }
            if let Some(job) = &b.job_id {
                let _ = write!(out, " URL=\"/job/{}\" target=\"_top\"", dot_escape(job));
            } else if let Some((k, v)) = &b.expand {
                let _ = write!(out, " URL=\"?{}={}\" target=\"_top\"", dot_escape(k), dot_escape(v));
            }
            if let Some(msg) = &b.message {
                let msg: String = msg.chars().take(4096).collect();
                let _ = write!(out, " tooltip=\"{}\"", dot_escape(&msg));
            }
            out.push_str("]\n");
        };
        for b in by_cluster.get(&None).into_iter().flatten() {
            write_box(&mut out, b, "  ");
        }
        // Clusters, nested.
        fn write_cluster(
            out: &mut String,
            c: &Cluster,
            all: &[Cluster],
            by_cluster: &HashMap<Option<usize>, Vec<&DiagramBox>>,
            write_box: &dyn Fn(&mut String, &DiagramBox, &str),
            depth: usize,
        ) {
            let indent = "  ".repeat(depth + 1);
            let _ = writeln!(out, "{indent}subgraph cluster_{} {{", c.index);
            if c.dotted {
                let _ = writeln!(out, "{indent}  style=dotted");
            }
            for b in by_cluster.get(&Some(c.index)).into_iter().flatten() {
                write_box(out, b, &format!("{indent}  "));
            }
            for child in all.iter().filter(|x| x.parent == Some(c.index)) {
                write_cluster(out, child, all, by_cluster, write_box, depth + 1);
            }
            let _ = writeln!(out, "{indent}}}");
        }
        for c in self.clusters.iter().filter(|c| c.parent.is_none()) {
            write_cluster(&mut out, c, &self.clusters, &by_cluster, &write_box, 0);
        }
        for e in &self.edges {
            let _ = write!(out, "  n{} -> n{}", e.from, e.to);
            out.push_str(if e.dashed { " [style=dashed]\n" } else { "\n" });
        }
        out.push_str("}\n");
        out
    }

    /// The diagram as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("diagram serializes")
    }

    /// A stable text form for tests: one line per box (`label: state`, in
    /// dependency order) and one per edge (`from -> to`), using labels.
    pub fn summary(&self) -> String {
        let name = |b: &DiagramBox| match b.shape {
            Shape::Box => b.label.clone(),
            Shape::Circle => "(gate)".to_owned(),
            Shape::Collapsed => "(+)".to_owned(),
        };
        let label: HashMap<u64, String> = self.boxes.iter().map(|b| (b.id, name(b))).collect();
        let mut out = String::new();
        for b in &self.boxes {
            let state = b.state.map_or("-", |s| s.name());
            let cluster = b.cluster.map(|c| format!(" [c{c}]")).unwrap_or_default();
            let _ = writeln!(out, "{}: {state}{cluster}", name(b));
        }
        for e in &self.edges {
            let arrow = if e.dashed { "-.->" } else { "->" };
            let _ = writeln!(out, "{} {arrow} {}", label[&e.from], label[&e.to]);
        }
        out
    }
}

type Out = SmallVec<[usize; 2]>;

/// How the diagram draws one list item (or template placeholder).
struct ItemInfo {
    /// The list's input, whose boxes the item hangs off.
    list_input: TermId,
    /// An `option_map` item: not drawn, the body hangs off the input.
    option: bool,
    /// For a template placeholder: its label.
    template: Option<&'static str>,
}

/// Walks the terms from the root, building the diagram.
struct Walk<'a> {
    graph: &'a Graph,
    expanded: &'a Expanded,
    diagram: Diagram,
    /// The box indices standing for each term's output.
    outs: HashMap<TermId, Out>,
    /// Box index -> the list item group its term was built in.
    groups: Vec<Option<TermId>>,
    /// List item (or placeholder) -> the cluster it belongs to.
    item_cluster: HashMap<TermId, usize>,
    /// List item (or placeholder) -> how to draw it.
    items: HashMap<TermId, ItemInfo>,
    /// Template placeholder -> the state of the template's boxes (blocked
    /// while the list is evaluated; unknown before).
    templates: HashMap<TermId, Option<NodeState>>,
    /// (cluster, group of the list's own term), to nest clusters.
    cluster_groups: Vec<(usize, TermId)>,
    /// Incoming edges per box, before reduction: (source box, dashed).
    incoming: Vec<Vec<(usize, bool)>>,
}

/// The body a bind built, if any (`term` is the BindOut).
fn bind_body(term: &Arc<dyn AnyTerm>, graph: &Graph) -> Option<Arc<dyn AnyTerm>> {
    let mut bind_in = None;
    term.for_each_input(&mut |i| bind_in = Some(i.clone()));
    let node = graph.node(graph.live(&*bind_in?)?)?;
    match node.dynamic() {
        Dynamic::Bind(body) => body,
        _ => None,
    }
}

/// What a list map shows now: its branches, or its template (with the
/// label of the placeholder: the list is empty, or not known yet).
enum Shown {
    Branches(Vec<BranchTerms>),
    Template(&'static str),
}

fn shown(term: &Arc<dyn AnyTerm>, graph: &Graph) -> Shown {
    if let Some(node) = graph.live(&**term).and_then(|i| graph.node(i)) {
        if let Dynamic::List { branches, empty } = node.dynamic() {
            if !branches.is_empty() {
                return Shown::Branches(branches);
            }
            if empty {
                return Shown::Template("(empty list)");
            }
        }
    }
    Shown::Template("(each item)")
}

/// The children of `term` for the walk: everything whose output the term's
/// drawing needs.
fn children(term: &Arc<dyn AnyTerm>, graph: &Graph, expanded: &Expanded, out: &mut Vec<Arc<dyn AnyTerm>>) {
    let core = term.core();
    match &core.kind {
        Kind::Collapse(info) if !expanded.contains(&info.key, &info.value) => out.push(info.input.clone()),
        _ => term.for_each_input(&mut |i| out.push(i.clone())),
    }
    if let Some(scope) = &core.scope {
        out.extend(scope.drawn_inputs().cloned());
    }
    match &core.kind {
        Kind::BindOut => out.extend(bind_body(term, graph)),
        Kind::ListMap(info) => match shown(term, graph) {
            Shown::Template(_) => out.push(info.template.clone()),
            Shown::Branches(pairs) => {
                for (item, root) in pairs {
                    out.push(item);
                    out.push(root);
                }
            }
        },
        _ => {}
    }
}

impl Walk<'_> {
    fn union(&self, terms: &[Arc<dyn AnyTerm>]) -> Out {
        let mut out = Out::new();
        for t in terms {
            for &b in self.outs.get(&t.core().id).into_iter().flatten() {
                if !out.contains(&b) {
                    out.push(b);
                }
            }
        }
        out
    }

    /// Called when the walk enters a list map, before its children: notes
    /// its cluster and how to draw its items.
    fn enter_list(&mut self, term: &Arc<dyn AnyTerm>) {
        let core = term.core();
        let Kind::ListMap(info) = &core.kind else { return };
        let cluster = self.diagram.clusters.len();
        self.diagram.clusters.push(Cluster { index: cluster, dotted: info.option, parent: None });
        if let Some(group) = core.group() {
            self.cluster_groups.push((cluster, group));
        }
        let mut list_input = None;
        term.for_each_input(&mut |i| list_input = Some(i.core().id));
        let list_input = list_input.expect("a list map has an input");
        match shown(term, self.graph) {
            Shown::Template(label) => {
                // Blocked while the list is evaluated, or while an enclosing
                // template is shown blocked.
                let live = self.graph.live(&**term).is_some();
                let outer = core.group().and_then(|g| self.templates.get(&g).copied()).flatten();
                let state = if live { Some(NodeState::Blocked) } else { outer };
                self.templates.insert(info.placeholder, state);
                self.item_cluster.insert(info.placeholder, cluster);
                self.items
                    .insert(info.placeholder, ItemInfo { list_input, option: info.option, template: Some(label) });
            }
            Shown::Branches(pairs) => {
                for (item, _) in pairs {
                    let id = item.core().id;
                    self.item_cluster.insert(id, cluster);
                    self.items.insert(id, ItemInfo { list_input, option: info.option, template: None });
                }
            }
        }
    }

    /// The state to draw for `term`: its node's, or for an unevaluated term
    /// of a shown template, the template's; else its static state.
    fn state_of(&self, term: &dyn AnyTerm) -> (Option<NodeState>, Option<&dyn crate::node::Node>) {
        let node = self.graph.live(term).and_then(|i| self.graph.node(i));
        if let Some(n) = node {
            return (Some(n.state()), Some(n));
        }
        let core = term.core();
        // A template's placeholder item and the terms built from it.
        let group = match core.kind {
            Kind::Item => Some(core.id),
            _ => core.group(),
        };
        let template = group.and_then(|g| self.templates.get(&g).copied()).flatten();
        (template.or_else(|| term.static_state()), None)
    }

    fn add_box(&mut self, term: &dyn AnyTerm, label: String, shape: Shape) -> usize {
        let core = term.core();
        let (state, node) = self.state_of(term);
        let (job_id, update, message) = match node {
            Some(n) => {
                let meta = n.metadata().unwrap_or_default();
                let message = match state {
                    Some(NodeState::Failed) => n.error().map(|e| e.message().to_owned()),
                    _ => None,
                };
                (meta.job_id, meta.update, message)
            }
            None => (None, None, None),
        };
        let index = self.diagram.boxes.len();
        self.diagram.boxes.push(DiagramBox {
            id: core.id.get(),
            label,
            shape,
            state,
            job_id,
            update,
            message,
            cluster: None,
            expand: None,
        });
        let group = match core.kind {
            Kind::Item => Some(core.id),
            _ => core.group(),
        };
        self.groups.push(group);
        self.incoming.push(Vec::new());
        index
    }

    fn connect(&mut self, to: usize, from: &Out, dashed: bool) {
        for &f in from {
            if f != to && !self.incoming[to].iter().any(|&(x, _)| x == f) {
                self.incoming[to].push((f, dashed));
            }
        }
    }

    /// A box for `term`, with edges from its inputs and its scope.
    fn boxed(&mut self, term: &Arc<dyn AnyTerm>, inputs: &[Arc<dyn AnyTerm>], label: String, shape: Shape) -> Out {
        let b = self.add_box(&**term, label, shape);
        let from = self.union(inputs);
        self.connect(b, &from, false);
        self.connect_scope(term, b);
        smallvec::smallvec![b]
    }

    fn connect_scope(&mut self, term: &Arc<dyn AnyTerm>, b: usize) {
        if let Some(scope) = term.core().scope.clone() {
            let inputs: Vec<Arc<dyn AnyTerm>> = scope.drawn_inputs().cloned().collect();
            let from = self.union(&inputs);
            self.connect(b, &from, false);
        }
    }

    /// Computes the output boxes of `term`, whose children are done.
    fn visit(&mut self, term: &Arc<dyn AnyTerm>) {
        let core = term.core();
        let (state, _) = self.state_of(&**term);
        let mut inputs = Vec::new();
        term.for_each_input(&mut |i| inputs.push(i.clone()));
        let label = core.label.as_deref().unwrap_or("").to_owned();
        let out: Out = match (core.box_rule(), &core.kind) {
            (BoxRule::Always, Kind::Gate) => {
                let b = self.add_box(&**term, String::new(), Shape::Circle);
                let ctrl = self.union(&inputs[..1]);
                let value = self.union(&inputs[1..]);
                self.connect(b, &value, false);
                self.connect(b, &ctrl, true);
                self.connect_scope(term, b);
                smallvec::smallvec![b]
            }
            (BoxRule::Always, Kind::Item) => self.item(term),
            (BoxRule::Always, _) => self.boxed(term, &inputs, label, Shape::Box),
            (BoxRule::IfFailed, _) if state == Some(NodeState::Failed) => {
                let label = if label.is_empty() { "map".to_owned() } else { label };
                self.boxed(term, &inputs, label, Shape::Box)
            }
            (BoxRule::IfFailed, _) => self.union(&inputs),
            (BoxRule::Never, Kind::BindOut) => {
                // The body's output, or the bind itself when the body draws
                // nothing of its own (a constant).
                let body = bind_body(term, self.graph).map(|b| self.union(&[b])).unwrap_or_default();
                if body.is_empty() {
                    self.union(&inputs)
                } else {
                    body
                }
            }
            (BoxRule::Never, _) => self.union(&inputs),
            (BoxRule::Cluster, Kind::ListMap(info)) => {
                let roots: Vec<Arc<dyn AnyTerm>> = match shown(term, self.graph) {
                    Shown::Template(_) => vec![info.template.clone()],
                    Shown::Branches(pairs) => pairs.into_iter().map(|(_, root)| root).collect(),
                };
                self.union(&roots)
            }
            (BoxRule::Cluster, _) => self.union(&inputs),
            (BoxRule::Collapsible, Kind::Collapse(info)) => {
                if self.expanded.contains(&info.key, &info.value) {
                    self.union(&inputs)
                } else {
                    let b = self.add_box(&**term, "+".to_owned(), Shape::Collapsed);
                    self.diagram.boxes[b].expand = Some((info.key.to_string(), info.value.to_string()));
                    let from = self.union(std::slice::from_ref(&info.input));
                    self.connect(b, &from, false);
                    smallvec::smallvec![b]
                }
            }
            (BoxRule::Collapsible, _) => self.union(&inputs),
        };
        self.outs.insert(core.id, out);
    }

    /// A list item: a box labelled with its key (or the template's
    /// placeholder text) hanging off the list's input; for an option, no
    /// box at all.
    fn item(&mut self, term: &Arc<dyn AnyTerm>) -> Out {
        let id = term.core().id;
        let Some(info) = self.items.get(&id) else {
            return Out::new(); // not reached through its list
        };
        let list_input = self.outs.get(&info.list_input).cloned().unwrap_or_default();
        if info.option {
            return list_input;
        }
        let label = match info.template {
            Some(text) => text.to_owned(),
            None => term.core().label.as_deref().unwrap_or("").to_owned(),
        };
        let b = self.add_box(&**term, label, Shape::Box);
        self.connect(b, &list_input, false);
        smallvec::smallvec![b]
    }
    /// Assigns clusters and drops edges implied by other edges.
    fn finish(mut self) -> Diagram {
        for (i, group) in self.groups.iter().enumerate() {
            if let Some(g) = group {
                self.diagram.boxes[i].cluster = self.item_cluster.get(g).copied();
            }
        }
        for &(cluster, group) in &self.cluster_groups {
            self.diagram.clusters[cluster].parent = self.item_cluster.get(&group).copied();
        }
        // A solid edge s -> b is redundant when s is an ancestor of another
        // solid source of b (a gate's dashed control edge never makes its
        // value edge redundant). Ancestors are found by walking the incoming
        // edges upward.
        let n = self.incoming.len();
        let mut mark = vec![0u32; n];
        let mut stamp = 0u32;
        let mut stack = Vec::new();
        for b in 0..n {
            let sources = &self.incoming[b];
            let mut keep: Vec<(usize, bool)> = sources.clone();
            if sources.iter().filter(|&&(_, dashed)| !dashed).count() > 1 {
                stamp += 1;
                for &(s, _) in sources.iter().filter(|&&(_, dashed)| !dashed) {
                    stack.extend(self.incoming[s].iter().map(|&(x, _)| x));
                }
                while let Some(x) = stack.pop() {
                    if mark[x] == stamp {
                        continue;
                    }
                    mark[x] = stamp;
                    stack.extend(self.incoming[x].iter().map(|&(y, _)| y));
                }
                keep.retain(|&(s, dashed)| dashed || mark[s] != stamp);
            }
            for (s, dashed) in keep {
                self.diagram.edges.push(Edge { from: self.diagram.boxes[s].id, to: self.diagram.boxes[b].id, dashed });
            }
        }
        self.diagram
    }
}

/// Builds the diagram of the pipeline rooted at `root`, with the states of
/// the live nodes of `graph`. Iterative, so deep pipelines do not overflow
/// the stack.
pub(crate) fn diagram(root: &Arc<dyn AnyTerm>, graph: &Graph, expanded: &Expanded) -> Diagram {
    let mut b = Walk {
        graph,
        expanded,
        diagram: Diagram::default(),
        outs: HashMap::new(),
        groups: Vec::new(),
        item_cluster: HashMap::new(),
        items: HashMap::new(),
        templates: HashMap::new(),
        cluster_groups: Vec::new(),
        incoming: Vec::new(),
    };
    let mut stack: Vec<(Arc<dyn AnyTerm>, bool)> = vec![(root.clone(), false)];
    let mut kids = Vec::new();
    let mut entered: std::collections::HashSet<TermId> = std::collections::HashSet::new();
    while let Some((term, expanded_children)) = stack.pop() {
        let id = term.core().id;
        if b.outs.contains_key(&id) {
            continue;
        }
        if expanded_children {
            b.visit(&term);
            continue;
        }
        if !entered.insert(id) {
            continue; // already on the stack, its visit is pending
        }
        stack.push((term.clone(), true));
        b.enter_list(&term);
        kids.clear();
        children(&term, graph, expanded, &mut kids);
        for k in kids.drain(..).rev() {
            if !b.outs.contains_key(&k.core().id) && !entered.contains(&k.core().id) {
                stack.push((k, false));
            }
        }
    }
    b.finish()
}
