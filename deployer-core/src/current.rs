//! `Current<T>`: a typed, incrementally evaluated value, and its combinators.

use std::any::Any;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::node::typed;
use crate::nodes::{
    combine_all, combine_pair, join_blocker, AllTerm, BindInTerm, BindOutTerm, ConstTerm, ItemTerm, JoinTerm,
    ListInTerm, ListOutTerm, Map2Term, MapTerm,
};
use crate::output::{ActiveState, Error, Output};
use crate::term::{
    in_group, template_stages, with_context_term, AnyTerm, CollapseInfo, Current, Kind, ListInfo, TermCore, TermId,
    TermRef, Value,
};

fn new_term<X: AnyTerm>(x: X) -> Arc<dyn AnyTerm> {
    Arc::new(x)
}

impl<T: Value> From<T> for Current<T> {
    /// A constant stage (not drawn): lets functions taking
    /// `impl Into<Current<T>>` accept a plain value.
    fn from(value: T) -> Current<T> {
        Current::constant(value)
    }
}

impl<T> From<&Current<T>> for Current<T> {
    fn from(c: &Current<T>) -> Current<T> {
        c.clone()
    }
}

impl<T: Value> Current<T> {
    fn of_output_labelled(label: Option<Arc<str>>, value: Output<T>) -> Current<T> {
        Current::from_term(new_term(ConstTerm { core: TermCore::new(Kind::Constant, label), value }))
    }

    /// `constant(v)` is a stage whose value is always `v`; it is not drawn.
    pub fn constant(value: T) -> Current<T> {
        Current::of_output_labelled(None, Output::Ok(value))
    }

    /// `constant_labelled(label, v)` is `constant(v)`, drawn as a box named `label`.
    pub fn constant_labelled(label: &str, value: T) -> Current<T> {
        Current::of_output_labelled(Some(label.into()), Output::Ok(value))
    }

    /// `fail(msg)` is a stage that always fails with `msg`.
    pub fn fail(message: &str) -> Current<T> {
        Current::of_output_labelled(None, Output::Err(Error::msg(message)))
    }

    /// `active(s)` is a stage that is always pending in state `s`.
    pub fn active(state: ActiveState) -> Current<T> {
        Current::of_output_labelled(None, Output::Active(state))
    }

    /// `of_output(o)` is a stage whose output is always `o`.
    pub fn of_output(output: Output<T>) -> Current<T> {
        Current::of_output_labelled(None, output)
    }

    fn map_output<U: Value>(
        &self,
        kind: Kind,
        label: Option<Arc<str>>,
        f: impl Fn(&Output<T>, TermId) -> Output<U> + Send + Sync + 'static,
    ) -> Current<U> {
        Current::from_term(new_term(MapTerm {
            core: TermCore::new(kind, label),
            input: TermRef::new(self.term.clone()),
            f,
            _types: PhantomData,
        }))
    }

    /// `x.map(f)` is a stage that runs `x` and then transforms its value with `f`.
    ///
    /// When `f` returns a value equal to the previous one, nothing downstream
    /// is re-evaluated. A panic in `f` becomes an error on this node.
    pub fn map<U: Value>(&self, f: impl Fn(&T) -> U + Send + Sync + 'static) -> Current<U> {
        self.map_output(Kind::Map, None, move |o, _| match o {
            Output::Ok(v) => Output::Ok(f(v)),
            other => other.cast().expect("not ok"),
        })
    }

    /// `x.try_map(f)` is like `map`, but `f` may fail; its error originates here.
    pub fn try_map<U: Value, E: Into<Error>>(
        &self,
        f: impl Fn(&T) -> Result<U, E> + Send + Sync + 'static,
    ) -> Current<U> {
        self.map_output(Kind::Map, None, move |o, me| match o {
            Output::Ok(v) => match f(v) {
                Ok(u) => Output::Ok(u),
                Err(e) => Output::Err(e.into().attributed(me)),
            },
            other => other.cast().expect("not ok"),
        })
    }

    /// `x.map_err(f)` is `x` with its error message (if any) rewritten by `f`.
    pub fn map_err(&self, f: impl Fn(&str) -> String + Send + Sync + 'static) -> Current<T> {
        self.map_output(Kind::Map, None, move |o, me| match o {
            Output::Err(e) => Output::Err(Error::with_origin(f(e.message()), e.origin().unwrap_or(me))),
            other => other.clone(),
        })
    }

    /// `x.ignore_value()` is `x` with its value replaced by `()`.
    pub fn ignore_value(&self) -> Current<()> {
        self.map_output(Kind::Map, None, |o, _| o.as_ref().map(|_| ()))
    }

    /// `x.pair(&y)` is a stage with both values; errors win over pending states,
    /// otherwise `x`'s state wins. Not drawn. For three or more, see [`Join`].
    pub fn pair<U: Value>(&self, other: &Current<U>) -> Current<(T, U)> {
        Current::from_term(new_term(Map2Term {
            core: TermCore::new(Kind::Join, None),
            a: TermRef::new(self.term.clone()),
            b: TermRef::new(other.term.clone()),
            f: |a: &Output<T>, b: &Output<U>, _| combine_pair(a, b),
            _types: PhantomData,
        }))
    }

    /// `x.gate(&ctrl)` is `x`'s value, held back until `ctrl` is `Ok(())`.
    ///
    /// It holds back only what comes after it, not `x` itself: use it to keep a
    /// deploy from running until the tests pass.
    ///
    /// ```
    /// use deployer_core::{ActiveState, Current, Engine, Output};
    ///
    /// let image = Current::constant("image:v2");
    /// let tests: Current<()> = Current::active(ActiveState::Running);
    /// let engine = Engine::new(image.gate(&tests));
    /// engine.step();
    /// assert_eq!(engine.output(), Output::Active(ActiveState::Running));
    /// ```
    pub fn gate(&self, on: &Current<()>) -> Current<T> {
        Current::from_term(new_term(Map2Term {
            core: TermCore::new(Kind::Gate, None),
            a: TermRef::new(on.term.clone()),
            b: TermRef::new(self.term.clone()),
            f: |ctrl: &Output<()>, x: &Output<T>, _| combine_pair(ctrl, x).map(|(_, x)| x),
            _types: PhantomData,
        }))
    }

    /// `x.state()` is always `Ok`: its value is `x`'s output (value, pending or
    /// error). Drawn as a box; see [`Current::state_hidden`].
    pub fn state(&self) -> Current<Output<T>> {
        self.map_output(Kind::Observe { hidden: false }, Some("state".into()), |o, _| Output::Ok(o.clone()))
    }

    /// `x.state_hidden()` is [`Current::state`] without a box in the diagram.
    pub fn state_hidden(&self) -> Current<Output<T>> {
        self.map_output(Kind::Observe { hidden: true }, None, |o, _| Output::Ok(o.clone()))
    }

    /// `x.catch()` turns `x`'s error into an `Ok(Err(e))` value; it stays
    /// pending while `x` is pending.
    pub fn catch(&self) -> Current<Result<T, Error>> {
        self.catch_with(false)
    }

    /// [`Current::catch`] without a box in the diagram.
    pub fn catch_hidden(&self) -> Current<Result<T, Error>> {
        self.catch_with(true)
    }

    fn catch_with(&self, hidden: bool) -> Current<Result<T, Error>> {
        let label = (!hidden).then(|| "catch".into());
        self.map_output(Kind::Observe { hidden }, label, |o, _| match o {
            Output::Ok(v) => Output::Ok(Ok(v.clone())),
            Output::Err(e) => Output::Ok(Err(e.clone())),
            Output::Active(a) => Output::Active(*a),
        })
    }

    /// `x.and_then(f)` runs `x`, then evaluates the pipeline `f(value)`.
    ///
    /// This is the monadic bind: what `f` builds cannot be drawn before `x`
    /// has a value. Prefer `map`, `pair` and `list_map` where they suffice.
    /// A new value of `x` replaces the pipeline `f` built before, releasing
    /// the parts it no longer uses.
    pub fn and_then<U: Value>(&self, f: impl Fn(&T) -> Current<U> + Send + Sync + 'static) -> Current<U> {
        self.bind_with(None, f)
    }

    /// `x.bind(label, f)` is [`Current::and_then`], drawn as a box named `label`
    /// from which edges lead to everything `f` builds.
    pub fn bind<U: Value>(&self, label: &str, f: impl Fn(&T) -> Current<U> + Send + Sync + 'static) -> Current<U> {
        self.bind_with(Some(label.into()), f)
    }

    fn bind_with<U: Value>(
        &self,
        label: Option<Arc<str>>,
        f: impl Fn(&T) -> Current<U> + Send + Sync + 'static,
    ) -> Current<U> {
        let bind_in = new_term(BindInTerm {
            core: TermCore::new(Kind::BindIn, label),
            input: TermRef::new(self.term.clone()),
            f,
            _types: PhantomData::<fn(T) -> U>,
        });
        Current::from_term(new_term(BindOutTerm::<U> {
            core: TermCore::new(Kind::BindOut, None),
            bind_in: TermRef::new(bind_in),
            _types: PhantomData,
        }))
    }

    /// `output.collapse(key, value, &input)` draws everything between `input`
    /// and `output` as a single `+` box, until the diagram is asked to expand
    /// `key=value` (the web UI puts that in the page's query string).
    pub fn collapse<I: Value>(&self, key: &str, value: &str, input: &Current<I>) -> Current<T> {
        self.map_output(
            Kind::Collapse(Arc::new(CollapseInfo { key: key.into(), value: value.into(), input: input.term.clone() })),
            None,
            |o, _| o.clone(),
        )
    }

    /// `all(xs)` is a stage with every value of `xs`, in order. The first error
    /// wins over pending states; otherwise the first pending state wins.
    /// `all([])` is `Ok(vec![])`. Not drawn.
    pub fn all(items: impl IntoIterator<Item = Current<T>>) -> Current<Vec<T>> {
        let inputs: Vec<TermRef> = items.into_iter().map(|c| TermRef::new(c.term)).collect();
        Current::from_term(new_term(AllTerm {
            core: TermCore::new(Kind::Join, None),
            inputs,
            f: |outputs: &[&Output<T>], _| combine_all(outputs),
            _types: PhantomData::<fn(T) -> Vec<T>>,
        }))
    }
}

impl Current<()> {
    /// `all_labelled([(name, x), …])` succeeds when every `x` does (their
    /// values are dropped): the way to join independent pipelines into one
    /// root. On failure its message names the failed items: `"A, B failed:
    /// msg"` when they share one message, `"A, B failed"` otherwise. The
    /// error originates here.
    ///
    /// ```
    /// use deployer_core::Current;
    /// let app = Current::constant("registry.example/app@sha256:1".to_string());
    /// let backup = Current::constant(());
    /// let root = Current::all_labelled([("app", app.ignore_value()), ("backup", backup)]);
    /// # let _ = root;
    /// let root = Current::all_labelled([("app", app)]); // any value type
    /// # let _ = root;
    /// ```
    pub fn all_labelled<L: Into<String>, T: Value>(items: impl IntoIterator<Item = (L, Current<T>)>) -> Current<()> {
        let (labels, inputs): (Vec<String>, Vec<TermRef>) =
            items.into_iter().map(|(l, c)| (l.into(), TermRef::new(c.ignore_value().term))).unzip();
        Current::from_term(new_term(AllTerm {
            core: TermCore::new(Kind::AllLabelled, Some("all".into())),
            inputs,
            f: move |outputs: &[&Output<()>], me| {
                let failed: Vec<(&str, &Error)> =
                    labels.iter().zip(outputs).filter_map(|(l, o)| o.err().map(|e| (l.as_str(), e))).collect();
                if let Some((_, first)) = failed.first() {
                    let names: Vec<&str> = failed.iter().map(|(l, _)| *l).collect();
                    let same = failed.iter().all(|(_, e)| e.message() == first.message());
                    let msg = if same {
                        format!("{} failed: {}", names.join(", "), first.message())
                    } else {
                        format!("{} failed", names.join(", "))
                    };
                    return Output::Err(Error::with_origin(msg, me));
                }
                combine_all(outputs).map(|_| ())
            },
            _types: PhantomData::<fn(()) -> ()>,
        }))
    }
}

/// `with_context(&ctx, f)` runs `f`, drawing `ctx` as an input of every stage
/// `f` builds (for example, the commit a group of jobs is about).
/// Contexts nest: an inner stage gets edges from every enclosing context.
///
/// The context is evaluated while any of those stages is part of the
/// pipeline, so its box shows its own state.
pub fn with_context<C: Value, R>(ctx: &Current<C>, f: impl FnOnce() -> R) -> R {
    with_context_term(ctx.term.clone(), f)
}

fn list_map_with<T, K, U>(
    input: &Current<Vec<T>>,
    option: bool,
    label: Option<Arc<str>>,
    key: impl Fn(&T) -> K + Send + Sync + 'static,
    body: impl Fn(Current<T>) -> Current<U> + Send + Sync + 'static,
) -> Current<Vec<U>>
where
    T: Value,
    K: Ord + Clone + fmt::Display + Send + Sync + 'static,
    U: Value,
{
    let placeholder: Arc<dyn AnyTerm> =
        new_term(ItemTerm::<T> { core: TermCore::new(Kind::Item, Some("(each item)".into())), _types: PhantomData });
    let placeholder_id = placeholder.core().id;
    let scope = placeholder.core().scope.clone();
    let template = in_group(scope.as_deref(), placeholder_id, || body(Current::from_term(placeholder))).term;
    let stages = template_stages(&template, placeholder_id);
    let info = ListInfo { template, placeholder: placeholder_id, option, template_stages: stages };
    let list_in = new_term(ListInTerm {
        core: TermCore::new(Kind::ListMap(Arc::new(info)), label),
        input: TermRef::new(input.term.clone()),
        key,
        body,
        _types: PhantomData::<fn(T, K) -> U>,
    });
    Current::from_term(new_term(ListOutTerm::<U> {
        core: TermCore::new(Kind::ListOut, None),
        list_in: TermRef::new(list_in),
        _types: PhantomData,
    }))
}

impl<T: Value> Current<Vec<T>> {
    /// `xs.list_map_by(key, f)` applies the pipeline `f` to each item of the
    /// dynamic list `xs`, identifying items by `key`.
    ///
    /// Adding or removing one key evaluates only that key's branch; an item
    /// whose value changes under the same key updates its branch in place.
    /// Results come back in list order. Two items with the same key are an
    /// error on this node. The body is drawn (as a cluster) even before the
    /// list is known.
    pub fn list_map_by<K, U>(
        &self,
        key: impl Fn(&T) -> K + Send + Sync + 'static,
        f: impl Fn(Current<T>) -> Current<U> + Send + Sync + 'static,
    ) -> Current<Vec<U>>
    where
        K: Ord + Clone + fmt::Display + Send + Sync + 'static,
        U: Value,
    {
        list_map_with(self, false, None, key, f)
    }

    /// `xs.list_map(f)` is `list_map_by` keyed by the items themselves.
    pub fn list_map<U: Value>(&self, f: impl Fn(Current<T>) -> Current<U> + Send + Sync + 'static) -> Current<Vec<U>>
    where
        T: Ord + fmt::Display,
    {
        list_map_with(self, false, None, |t: &T| t.clone(), f)
    }

    /// `xs.list_iter(f)` is `list_map` for bodies run for their effect.
    pub fn list_iter(&self, f: impl Fn(Current<T>) -> Current<()> + Send + Sync + 'static) -> Current<()>
    where
        T: Ord + fmt::Display,
    {
        self.list_map(f).ignore_value()
    }
}

impl<T: Value> Current<Option<T>> {
    /// `x.option_map(f)` is `Some` of the pipeline `f` applied to the value
    /// inside `x`, or `None`. The body is drawn in a dotted cluster, straight
    /// from `x`'s box, even for `None` (then it is blocked).
    pub fn option_map<U: Value>(
        &self,
        f: impl Fn(Current<T>) -> Current<U> + Send + Sync + 'static,
    ) -> Current<Option<U>> {
        let as_list = self.map_output(Kind::Map, None, |o: &Output<Option<T>>, _| {
            o.as_ref().map(|o| o.iter().cloned().collect::<Vec<T>>())
        });
        let out = list_map_with(&as_list, true, None, |_: &T| "some", f);
        out.map(|v: &Vec<U>| v.first().cloned())
    }

    /// `x.option_iter(f)` is `option_map` for bodies run for their effect.
    pub fn option_iter(&self, f: impl Fn(Current<T>) -> Current<()> + Send + Sync + 'static) -> Current<()> {
        self.option_map(f).ignore_value()
    }
}

/// Joins three or more stages into one stage of a tuple, without nested
/// pairs: `(&a, &b, &c).join()`. As with [`Current::pair`], an error in any
/// input wins over a pending state; otherwise the first pending input's
/// state wins. Not drawn.
///
/// ```
/// use deployer_core::{Current, Engine, Join, Output};
///
/// let image = Current::constant("app:v2");
/// let host = Current::constant("prod-1");
/// let replicas = Current::constant(3u8);
/// let engine = Engine::new((&image, &host, &replicas).join());
/// engine.step();
/// assert_eq!(engine.output(), Output::Ok(("app:v2", "prod-1", 3)));
/// ```
pub trait Join {
    /// The tuple of the inputs' values.
    type Output;
    /// A stage with every input's value.
    fn join(self) -> Current<Self::Output>;
}

fn state_of<T: 'static>(o: &dyn Any) -> (Option<&Error>, Option<ActiveState>) {
    match typed::<T>(o) {
        Output::Ok(_) => (None, None),
        Output::Active(a) => (None, Some(*a)),
        Output::Err(e) => (Some(e), None),
    }
}

fn value_of<T: Clone + 'static>(o: &dyn Any) -> T {
    match typed::<T>(o) {
        Output::Ok(v) => v.clone(),
        _ => unreachable!("join checked every input has a value"),
    }
}

macro_rules! tuple_join {
    ($($t:ident $i:tt),+) => {
        impl<$($t: Value),+> Join for ($(&Current<$t>,)+) {
            type Output = ($($t,)+);
            fn join(self) -> Current<($($t,)+)> {
                let inputs = vec![$(TermRef::new(self.$i.term.clone())),+];
                Current::from_term(new_term(JoinTerm {
                    core: TermCore::new(Kind::Join, None),
                    inputs,
                    f: |outputs: &[&dyn Any]| {
                        if let Some(blocked) = join_blocker(&[$(state_of::<$t>(outputs[$i])),+]) {
                            return blocked.cast().expect("not ok");
                        }
                        Output::Ok(($(value_of::<$t>(outputs[$i]),)+))
                    },
                    _types: PhantomData,
                }))
            }
        }
    };
}

tuple_join!(A 0, B 1, C 2);
tuple_join!(A 0, B 1, C 2, D 3);
tuple_join!(A 0, B 1, C 2, D 3, E 4);
tuple_join!(A 0, B 1, C 2, D 3, E 4, F 5);
