//! One term type and one runtime type per combinator.
//!
//! The public constructors are in [`crate::current`]; this module holds the
//! machinery: how each combinator is instantiated and recomputed.

use std::any::Any;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crate::node::{Dynamic, Node, Runtime};
use crate::output::{panic_message, ActiveState, Error, NodeState, Output};
use crate::term::{in_bind, in_group, in_scope_of, AnyTerm, Current, Kind, TermCore, TermId, TermRef, Value};

/// Replaces `slot` with `new`, reporting whether it changed.
pub(crate) fn store<T: PartialEq>(slot: &mut Output<T>, new: Output<T>) -> bool {
    if *slot == new {
        false
    } else {
        *slot = new;
        true
    }
}

/// Runs user code, turning a panic into an error originating at `me`.
pub(crate) fn guarded<T>(me: TermId, f: impl FnOnce() -> Output<T>) -> Output<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(out) => out,
        Err(payload) => Output::Err(Error::with_origin(panic_message(&*payload), me)),
    }
}

/// Attributes unattributed errors in `out` to `me`.
pub(crate) fn attribute<T>(out: Output<T>, me: TermId) -> Output<T> {
    match out {
        Output::Err(e) => Output::Err(e.attributed(me)),
        other => other,
    }
}

/// Combines outputs the way `all` does: the first error wins over anything
/// pending; otherwise the first pending state wins; otherwise all values.
pub(crate) fn combine_all<T: Clone>(outputs: &[&Output<T>]) -> Output<Vec<T>> {
    if let Some(e) = outputs.iter().find_map(|o| o.err()) {
        return Output::Err(e.clone());
    }
    if let Some(a) = outputs.iter().find_map(|o| match o {
        Output::Active(a) => Some(*a),
        _ => None,
    }) {
        return Output::Active(a);
    }
    Output::Ok(
        outputs
            .iter()
            .map(|o| match o {
                Output::Ok(v) => v.clone(),
                _ => unreachable!("checked above"),
            })
            .collect(),
    )
}

/// The pair rule: an error in either input wins over a pending state;
/// otherwise the first input's state wins.
pub(crate) fn combine_pair<A: Clone, B: Clone>(a: &Output<A>, b: &Output<B>) -> Output<(A, B)> {
    match (a, b) {
        (Output::Err(e), _) | (_, Output::Err(e)) => Output::Err(e.clone()),
        (Output::Active(s), _) | (_, Output::Active(s)) => Output::Active(*s),
        (Output::Ok(a), Output::Ok(b)) => Output::Ok((a.clone(), b.clone())),
    }
}

/// The state a join of `outputs` shows when one of them has no value: the
/// first error, else the first pending state; `None` when all have values.
pub(crate) fn join_blocker(outputs: &[(Option<&Error>, Option<ActiveState>)]) -> Option<Output<()>> {
    if let Some(e) = outputs.iter().find_map(|(e, _)| *e) {
        return Some(Output::Err(e.clone()));
    }
    outputs.iter().find_map(|(_, a)| *a).map(Output::Active)
}

macro_rules! rt_common {
    ($t:ty) => {
        rt_common!($t, derived_state);
    };
    ($t:ty, $state:ident) => {
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
            self.value.$state(self.term.core.id)
        }
        fn error(&self) -> Option<Error> {
            self.value.err().cloned()
        }
    };
}

// ---------------------------------------------------------------- constants

pub(crate) struct ConstTerm<T> {
    pub(crate) core: TermCore,
    pub(crate) value: Output<T>,
}

struct ConstRt<T> {
    term: Arc<ConstTerm<T>>,
    value: Output<T>,
}

impl<T: Value> AnyTerm for ConstTerm<T> {
    fn core(&self) -> &TermCore {
        &self.core
    }
    fn for_each_input(&self, _f: &mut dyn FnMut(&Arc<dyn AnyTerm>)) {}
    fn static_state(&self) -> Option<NodeState> {
        Some(self.value.state(self.core.id))
    }
    fn instantiate(self: Arc<Self>, _inputs: &[u32], _rt: &mut dyn Runtime) -> Box<dyn Node> {
        let value = attribute(self.value.clone(), self.core.id);
        Box::new(ConstRt { term: self, value })
    }
}

impl<T: Value> Node for ConstRt<T> {
    rt_common!(T, state);
    fn recompute(&mut self, _rt: &mut dyn Runtime) -> bool {
        false
    }
    fn for_each_input(&self, _f: &mut dyn FnMut(u32)) {}
}

// ---------------------------------------------------------------- map (one input)

/// A function of one input's whole output.
pub(crate) struct MapTerm<A, B, F> {
    pub(crate) core: TermCore,
    pub(crate) input: TermRef,
    pub(crate) f: F,
    pub(crate) _types: PhantomData<fn(A) -> B>,
}

struct MapRt<A, B, F> {
    term: Arc<MapTerm<A, B, F>>,
    input: u32,
    value: Output<B>,
}

impl<A, B, F> AnyTerm for MapTerm<A, B, F>
where
    A: Value,
    B: Value,
    F: Fn(&Output<A>, TermId) -> Output<B> + Send + Sync + 'static,
{
    fn core(&self) -> &TermCore {
        &self.core
    }
    fn for_each_input(&self, f: &mut dyn FnMut(&Arc<dyn AnyTerm>)) {
        f(&self.input);
    }
    fn instantiate(self: Arc<Self>, inputs: &[u32], _rt: &mut dyn Runtime) -> Box<dyn Node> {
        Box::new(MapRt { term: self, input: inputs[0], value: Output::Active(ActiveState::Ready) })
    }
}

impl<A, B, F> Node for MapRt<A, B, F>
where
    A: Value,
    B: Value,
    F: Fn(&Output<A>, TermId) -> Output<B> + Send + Sync + 'static,
{
    rt_common!(B);
    fn recompute(&mut self, rt: &mut dyn Runtime) -> bool {
        let me = self.term.core.id;
        let input = rt.read::<A>(self.input);
        let new = guarded(me, || (self.term.f)(input, me));
        store(&mut self.value, new)
    }
    fn for_each_input(&self, f: &mut dyn FnMut(u32)) {
        f(self.input);
    }
}

// ---------------------------------------------------------------- map2

/// A function of two inputs' outputs (pair, gate).
pub(crate) struct Map2Term<A, B, C, F> {
    pub(crate) core: TermCore,
    pub(crate) a: TermRef,
    pub(crate) b: TermRef,
    pub(crate) f: F,
    pub(crate) _types: PhantomData<fn(A, B) -> C>,
}

struct Map2Rt<A, B, C, F> {
    term: Arc<Map2Term<A, B, C, F>>,
    a: u32,
    b: u32,
    value: Output<C>,
}

impl<A, B, C, F> AnyTerm for Map2Term<A, B, C, F>
where
    A: Value,
    B: Value,
    C: Value,
    F: Fn(&Output<A>, &Output<B>, TermId) -> Output<C> + Send + Sync + 'static,
{
    fn core(&self) -> &TermCore {
        &self.core
    }
    fn for_each_input(&self, f: &mut dyn FnMut(&Arc<dyn AnyTerm>)) {
        f(&self.a);
        f(&self.b);
    }
    fn instantiate(self: Arc<Self>, inputs: &[u32], _rt: &mut dyn Runtime) -> Box<dyn Node> {
        Box::new(Map2Rt { term: self, a: inputs[0], b: inputs[1], value: Output::Active(ActiveState::Ready) })
    }
}

impl<A, B, C, F> Node for Map2Rt<A, B, C, F>
where
    A: Value,
    B: Value,
    C: Value,
    F: Fn(&Output<A>, &Output<B>, TermId) -> Output<C> + Send + Sync + 'static,
{
    rt_common!(C);
    fn recompute(&mut self, rt: &mut dyn Runtime) -> bool {
        let me = self.term.core.id;
        let (a, b) = (rt.read::<A>(self.a), rt.read::<B>(self.b));
        let new = guarded(me, || (self.term.f)(a, b, me));
        store(&mut self.value, new)
    }
    fn for_each_input(&self, f: &mut dyn FnMut(u32)) {
        f(self.a);
        f(self.b);
    }
}

// ---------------------------------------------------------------- all (n inputs)

/// A function of many inputs of one type (all, all_labelled).
pub(crate) struct AllTerm<T, U, F> {
    pub(crate) core: TermCore,
    pub(crate) inputs: Vec<TermRef>,
    pub(crate) f: F,
    pub(crate) _types: PhantomData<fn(T) -> U>,
}

struct AllRt<T, U, F> {
    term: Arc<AllTerm<T, U, F>>,
    inputs: Box<[u32]>,
    value: Output<U>,
}

impl<T, U, F> AnyTerm for AllTerm<T, U, F>
where
    T: Value,
    U: Value,
    F: Fn(&[&Output<T>], TermId) -> Output<U> + Send + Sync + 'static,
{
    fn core(&self) -> &TermCore {
        &self.core
    }
    fn for_each_input(&self, f: &mut dyn FnMut(&Arc<dyn AnyTerm>)) {
        self.inputs.iter().for_each(|i| f(i));
    }
    fn instantiate(self: Arc<Self>, inputs: &[u32], _rt: &mut dyn Runtime) -> Box<dyn Node> {
        Box::new(AllRt { term: self, inputs: inputs.into(), value: Output::Active(ActiveState::Ready) })
    }
}

impl<T, U, F> Node for AllRt<T, U, F>
where
    T: Value,
    U: Value,
    F: Fn(&[&Output<T>], TermId) -> Output<U> + Send + Sync + 'static,
{
    rt_common!(U);
    fn recompute(&mut self, rt: &mut dyn Runtime) -> bool {
        let me = self.term.core.id;
        let outputs: Vec<&Output<T>> = self.inputs.iter().map(|&i| rt.read::<T>(i)).collect();
        let new = guarded(me, || (self.term.f)(&outputs, me));
        store(&mut self.value, new)
    }
    fn for_each_input(&self, f: &mut dyn FnMut(u32)) {
        self.inputs.iter().for_each(|&i| f(i));
    }
}

// ---------------------------------------------------------------- join (n inputs of any types)

/// A function of several inputs of different types, read as erased outputs
/// (the tuple joins).
pub(crate) struct JoinTerm<U, F> {
    pub(crate) core: TermCore,
    pub(crate) inputs: Vec<TermRef>,
    pub(crate) f: F,
    pub(crate) _types: PhantomData<fn() -> U>,
}

struct JoinRt<U, F> {
    term: Arc<JoinTerm<U, F>>,
    inputs: Box<[u32]>,
    value: Output<U>,
}

impl<U, F> AnyTerm for JoinTerm<U, F>
where
    U: Value,
    F: Fn(&[&dyn Any]) -> Output<U> + Send + Sync + 'static,
{
    fn core(&self) -> &TermCore {
        &self.core
    }
    fn for_each_input(&self, f: &mut dyn FnMut(&Arc<dyn AnyTerm>)) {
        self.inputs.iter().for_each(|i| f(i));
    }
    fn instantiate(self: Arc<Self>, inputs: &[u32], _rt: &mut dyn Runtime) -> Box<dyn Node> {
        Box::new(JoinRt { term: self, inputs: inputs.into(), value: Output::Active(ActiveState::Ready) })
    }
}

impl<U, F> Node for JoinRt<U, F>
where
    U: Value,
    F: Fn(&[&dyn Any]) -> Output<U> + Send + Sync + 'static,
{
    rt_common!(U);
    fn recompute(&mut self, rt: &mut dyn Runtime) -> bool {
        let me = self.term.core.id;
        let outputs: smallvec::SmallVec<[&dyn Any; 6]> = self.inputs.iter().map(|&i| rt.value(i)).collect();
        let new = guarded(me, || (self.term.f)(&outputs));
        store(&mut self.value, new)
    }
    fn for_each_input(&self, f: &mut dyn FnMut(u32)) {
        self.inputs.iter().for_each(|&i| f(i));
    }
}

// ---------------------------------------------------------------- bind

/// The decision half of a bind: runs the user's function on each new value of
/// the input and instantiates the pipeline it returns.
pub(crate) struct BindInTerm<A, B, F> {
    pub(crate) core: TermCore,
    pub(crate) input: TermRef,
    pub(crate) f: F,
    pub(crate) _types: PhantomData<fn(A) -> B>,
}

/// The output of a `BindIn` node is the index of the body's root node.
struct BindInRt<A, B, F> {
    term: Arc<BindInTerm<A, B, F>>,
    input: u32,
    last: Option<A>,
    body: Option<(Arc<dyn AnyTerm>, u32)>,
    value: Output<u32>,
}

impl<A, B, F> AnyTerm for BindInTerm<A, B, F>
where
    A: Value,
    B: Value,
    F: Fn(&A) -> Current<B> + Send + Sync + 'static,
{
    fn core(&self) -> &TermCore {
        &self.core
    }
    fn for_each_input(&self, f: &mut dyn FnMut(&Arc<dyn AnyTerm>)) {
        f(&self.input);
    }
    fn instantiate(self: Arc<Self>, inputs: &[u32], _rt: &mut dyn Runtime) -> Box<dyn Node> {
        Box::new(BindInRt {
            term: self,
            input: inputs[0],
            last: None,
            body: None,
            value: Output::Active(ActiveState::Ready),
        })
    }
}

impl<A, B, F> BindInRt<A, B, F> {
    fn drop_body(&mut self, rt: &mut dyn Runtime) {
        if let Some((_, index)) = self.body.take() {
            rt.unhold(index);
        }
    }
}

impl<A, B, F> Node for BindInRt<A, B, F>
where
    A: Value,
    B: Value,
    F: Fn(&A) -> Current<B> + Send + Sync + 'static,
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
        self.value.derived_state(self.term.core.id)
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
                self.drop_body(rt);
                return store(&mut self.value, new);
            }
        };
        if self.last.as_ref() == Some(&input) && self.body.is_some() {
            return false;
        }
        let parent: Arc<dyn AnyTerm> = self.term.clone();
        let f = &self.term.f;
        let built = catch_unwind(AssertUnwindSafe(|| in_bind(parent, || f(&input))));
        self.last = Some(input);
        match built {
            Ok(body) => {
                let index = rt.instantiate(&body.term);
                rt.hold(index);
                self.drop_body(rt);
                self.body = Some((body.term, index));
                store(&mut self.value, Output::Ok(index))
            }
            Err(payload) => {
                self.drop_body(rt);
                store(&mut self.value, Output::Err(Error::with_origin(panic_message(&*payload), me)))
            }
        }
    }
    fn for_each_input(&self, f: &mut dyn FnMut(u32)) {
        f(self.input);
    }
    fn release(&mut self, rt: &mut dyn Runtime) {
        self.drop_body(rt);
    }
    fn dynamic(&self) -> Dynamic {
        Dynamic::Bind(self.body.as_ref().map(|(t, _)| t.clone()))
    }
}

/// The result half of a bind: the output of whatever the bind built.
pub(crate) struct BindOutTerm<B> {
    pub(crate) core: TermCore,
    pub(crate) bind_in: TermRef,
    pub(crate) _types: PhantomData<fn() -> B>,
}

struct BindOutRt<B> {
    term: Arc<BindOutTerm<B>>,
    bind_in: u32,
    body: Option<u32>,
    value: Output<B>,
}

impl<B: Value> AnyTerm for BindOutTerm<B> {
    fn core(&self) -> &TermCore {
        &self.core
    }
    fn for_each_input(&self, f: &mut dyn FnMut(&Arc<dyn AnyTerm>)) {
        f(&self.bind_in);
    }
    fn instantiate(self: Arc<Self>, inputs: &[u32], _rt: &mut dyn Runtime) -> Box<dyn Node> {
        Box::new(BindOutRt { term: self, bind_in: inputs[0], body: None, value: Output::Active(ActiveState::Ready) })
    }
}

impl<B: Value> Node for BindOutRt<B> {
    rt_common!(B);
    fn recompute(&mut self, rt: &mut dyn Runtime) -> bool {
        let wanted = match rt.read::<u32>(self.bind_in) {
            Output::Ok(index) => Ok(*index),
            other => Err(other.cast::<B>().expect("not ok")),
        };
        let body = wanted.as_ref().ok().copied();
        if body != self.body {
            if let Some(index) = body {
                rt.attach(index, rt.me());
            }
            if let Some(old) = self.body.take() {
                rt.detach(old, rt.me());
            }
            self.body = body;
        }
        let new = match wanted {
            Ok(index) => rt.read::<B>(index).clone(),
            Err(state) => state,
        };
        store(&mut self.value, new)
    }
    fn for_each_input(&self, f: &mut dyn FnMut(u32)) {
        f(self.bind_in);
        if let Some(body) = self.body {
            f(body);
        }
    }
}

// ---------------------------------------------------------------- keyed lists

/// One item of a keyed map: a cell whose value the list node sets.
pub(crate) struct ItemTerm<T> {
    pub(crate) core: TermCore,
    pub(crate) _types: PhantomData<fn() -> T>,
}

struct ItemRt<T> {
    term: Arc<ItemTerm<T>>,
    value: Output<T>,
}

impl<T: Value> AnyTerm for ItemTerm<T> {
    fn core(&self) -> &TermCore {
        &self.core
    }
    fn for_each_input(&self, _f: &mut dyn FnMut(&Arc<dyn AnyTerm>)) {}
    fn instantiate(self: Arc<Self>, _inputs: &[u32], _rt: &mut dyn Runtime) -> Box<dyn Node> {
        Box::new(ItemRt { term: self, value: Output::Active(ActiveState::Ready) })
    }
}

impl<T: Value> Node for ItemRt<T> {
    rt_common!(T, state);
    fn recompute(&mut self, _rt: &mut dyn Runtime) -> bool {
        false
    }
    fn for_each_input(&self, _f: &mut dyn FnMut(u32)) {}
}

/// The input half of a keyed map: keeps one branch per key.
pub(crate) struct ListInTerm<T, K, U, KF, BF> {
    pub(crate) core: TermCore,
    pub(crate) input: TermRef,
    pub(crate) key: KF,
    pub(crate) body: BF,
    pub(crate) _types: PhantomData<fn(T, K) -> U>,
}

struct Branch {
    item: (Arc<dyn AnyTerm>, u32),
    root: (Arc<dyn AnyTerm>, u32),
}

/// The output of a `ListIn` node: the body roots, in list order.
struct ListInRt<T, K, U, KF, BF> {
    term: Arc<ListInTerm<T, K, U, KF, BF>>,
    input: u32,
    branches: BTreeMap<K, Branch>,
    order: Vec<K>,
    value: Output<Arc<[u32]>>,
}

impl<T, K, U, KF, BF> AnyTerm for ListInTerm<T, K, U, KF, BF>
where
    T: Value,
    K: Ord + Clone + std::fmt::Display + Send + Sync + 'static,
    U: Value,
    KF: Fn(&T) -> K + Send + Sync + 'static,
    BF: Fn(Current<T>) -> Current<U> + Send + Sync + 'static,
{
    fn core(&self) -> &TermCore {
        &self.core
    }
    fn for_each_input(&self, f: &mut dyn FnMut(&Arc<dyn AnyTerm>)) {
        f(&self.input);
    }
    fn instantiate(self: Arc<Self>, inputs: &[u32], _rt: &mut dyn Runtime) -> Box<dyn Node> {
        Box::new(ListInRt {
            term: self,
            input: inputs[0],
            branches: BTreeMap::new(),
            order: Vec::new(),
            value: Output::Active(ActiveState::Ready),
        })
    }
}

impl<T, K, U, KF, BF> ListInRt<T, K, U, KF, BF>
where
    T: Value,
    K: Ord + Clone + std::fmt::Display + Send + Sync + 'static,
    U: Value,
    KF: Fn(&T) -> K + Send + Sync + 'static,
    BF: Fn(Current<T>) -> Current<U> + Send + Sync + 'static,
{
    fn remove_branch(rt: &mut dyn Runtime, branch: Branch) {
        rt.unhold(branch.root.1);
        rt.unhold(branch.item.1);
    }

    fn clear(&mut self, rt: &mut dyn Runtime) {
        for (_, branch) in std::mem::take(&mut self.branches) {
            Self::remove_branch(rt, branch);
        }
        self.order.clear();
    }

    fn update(&mut self, items: &[T], rt: &mut dyn Runtime) -> Result<Arc<[u32]>, Error> {
        let me = self.term.core.id;
        let keys = catch_unwind(AssertUnwindSafe(|| items.iter().map(&self.term.key).collect::<Vec<K>>()))
            .map_err(|p| Error::with_origin(panic_message(&*p), me))?;
        let mut sorted: Vec<&K> = keys.iter().collect();
        sorted.sort();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::with_origin(format!("duplicate key {:?} in list_map input", w[0].to_string()), me));
        }
        // Remove branches whose key is gone (after building new ones, so
        // shared nodes are not released and rebuilt).
        let mut roots = Vec::with_capacity(items.len());
        for (item, key) in items.iter().zip(&keys) {
            if let Some(branch) = self.branches.get(key) {
                rt.set_output(branch.item.1, Output::Ok(item.clone()));
                roots.push(branch.root.1);
                continue;
            }
            let label: Arc<str> = key.to_string().into();
            let scope = self.term.core.scope.as_deref();
            let item_term: Arc<dyn AnyTerm> = in_scope_of(scope, || {
                Arc::new(ItemTerm::<T> { core: TermCore::new(Kind::Item, Some(label)), _types: PhantomData })
            });
            let item_index = rt.instantiate(&item_term);
            rt.hold(item_index);
            rt.set_output(item_index, Output::Ok(item.clone()));
            let body = &self.term.body;
            let current = Current::from_term(item_term.clone());
            let group = item_term.core().id;
            let scope = self.term.core.scope.as_deref();
            let root_term = match catch_unwind(AssertUnwindSafe(|| in_group(scope, group, || body(current)))) {
                Ok(c) => c.term,
                Err(p) => {
                    rt.unhold(item_index);
                    return Err(Error::with_origin(panic_message(&*p), me));
                }
            };
            let root_index = rt.instantiate(&root_term);
            rt.hold(root_index);
            roots.push(root_index);
            self.branches.insert(key.clone(), Branch { item: (item_term, item_index), root: (root_term, root_index) });
        }
        let wanted: std::collections::BTreeSet<&K> = keys.iter().collect();
        let gone: Vec<K> = self.branches.keys().filter(|k| !wanted.contains(k)).cloned().collect();
        for key in gone {
            if let Some(branch) = self.branches.remove(&key) {
                Self::remove_branch(rt, branch);
            }
        }
        self.order = keys;
        Ok(roots.into())
    }
}

impl<T, K, U, KF, BF> Node for ListInRt<T, K, U, KF, BF>
where
    T: Value,
    K: Ord + Clone + std::fmt::Display + Send + Sync + 'static,
    U: Value,
    KF: Fn(&T) -> K + Send + Sync + 'static,
    BF: Fn(Current<T>) -> Current<U> + Send + Sync + 'static,
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
        self.value.derived_state(self.term.core.id)
    }
    fn error(&self) -> Option<crate::Error> {
        self.value.err().cloned()
    }
    fn recompute(&mut self, rt: &mut dyn Runtime) -> bool {
        let items = match rt.read::<Vec<T>>(self.input) {
            Output::Ok(items) => items.clone(),
            other => {
                let new = other.cast().expect("not ok");
                self.clear(rt);
                return store(&mut self.value, new);
            }
        };
        let new = match self.update(&items, rt) {
            Ok(roots) => Output::Ok(roots),
            Err(e) => {
                self.clear(rt);
                Output::Err(e)
            }
        };
        store(&mut self.value, new)
    }
    fn for_each_input(&self, f: &mut dyn FnMut(u32)) {
        f(self.input);
    }
    fn release(&mut self, rt: &mut dyn Runtime) {
        self.clear(rt);
    }
    fn placeholder_stages(&self) -> u32 {
        let showing_template = match &self.value {
            Output::Ok(roots) => roots.is_empty(),
            _ => true,
        };
        match (&self.term.core.kind, showing_template) {
            (Kind::ListMap(info), true) => info.template_stages,
            _ => 0,
        }
    }
    fn dynamic(&self) -> Dynamic {
        Dynamic::List {
            branches: self
                .order
                .iter()
                .filter_map(|k| self.branches.get(k))
                .map(|b| (b.item.0.clone(), b.root.0.clone()))
                .collect(),
            empty: matches!(&self.value, Output::Ok(roots) if roots.is_empty()),
        }
    }
}

/// The output half of a keyed map: the branch results, in list order.
pub(crate) struct ListOutTerm<U> {
    pub(crate) core: TermCore,
    pub(crate) list_in: TermRef,
    pub(crate) _types: PhantomData<fn() -> U>,
}

struct ListOutRt<U> {
    term: Arc<ListOutTerm<U>>,
    list_in: u32,
    roots: Arc<[u32]>,
    value: Output<Vec<U>>,
}

impl<U: Value> AnyTerm for ListOutTerm<U> {
    fn core(&self) -> &TermCore {
        &self.core
    }
    fn for_each_input(&self, f: &mut dyn FnMut(&Arc<dyn AnyTerm>)) {
        f(&self.list_in);
    }
    fn instantiate(self: Arc<Self>, inputs: &[u32], _rt: &mut dyn Runtime) -> Box<dyn Node> {
        Box::new(ListOutRt {
            term: self,
            list_in: inputs[0],
            roots: Arc::new([]),
            value: Output::Active(ActiveState::Ready),
        })
    }
}

impl<U: Value> Node for ListOutRt<U> {
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
        self.value.derived_state(self.term.core.id)
    }
    fn error(&self) -> Option<crate::Error> {
        self.value.err().cloned()
    }
    fn recompute(&mut self, rt: &mut dyn Runtime) -> bool {
        let (roots, early): (Arc<[u32]>, Option<Output<Vec<U>>>) = match rt.read::<Arc<[u32]>>(self.list_in) {
            Output::Ok(roots) => (roots.clone(), None),
            other => (Arc::new([]), Some(other.cast().expect("not ok"))),
        };
        if roots != self.roots {
            // One edge per occurrence; attach the new ones before detaching
            // the old ones so that shared nodes stay alive.
            for &r in roots.iter() {
                rt.attach(r, rt.me());
            }
            let old = std::mem::replace(&mut self.roots, roots.clone());
            for &r in old.iter() {
                rt.detach(r, rt.me());
            }
        }
        let new = match early {
            Some(state) => state,
            None => {
                let outputs: Vec<&Output<U>> = roots.iter().map(|&r| rt.read::<U>(r)).collect();
                combine_all(&outputs)
            }
        };
        store(&mut self.value, new)
    }
    fn for_each_input(&self, f: &mut dyn FnMut(u32)) {
        f(self.list_in);
        self.roots.iter().for_each(|&r| f(r));
    }
}
