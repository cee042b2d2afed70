//! Property: after any sequence of input changes, incremental evaluation
//! gives the same output, statistics and diagram as evaluating the same
//! pipeline from scratch, and the same output as a plain interpreter of the
//! pipeline. Pipelines mix maps, failures, pairs, `all`, binds, keyed lists,
//! gates and jobs (a build cache on a real store).

mod support;

use async_trait::async_trait;
use deployer_core::cache::{BuildCache, Builder};
use deployer_core::{Config, Context, Current, Engine, Error, Expanded, Job, Level, Output, Var};
use proptest::prelude::*;

/// One node of a random pipeline; indices refer to earlier nodes.
#[derive(Clone, Debug)]
enum Op {
    Input(usize),
    Map(usize, u64),
    FailIf(usize, u64),
    Pair(usize, usize),
    All(Vec<usize>),
    Bind(usize, usize, usize),
    ListMap(u64),
    /// `a` gated on `b` (ignoring `b`'s value).
    Gate(usize, usize),
    /// A job computing `mix(a, k)`, failing when `a % 5 == 0`.
    Job(usize, u64),
}

const N_VARS: usize = 3;

fn op(n: usize) -> impl Strategy<Value = Op> {
    let i = 0..n;
    prop_oneof![
        (0..N_VARS).prop_map(Op::Input),
        (i.clone(), any::<u64>()).prop_map(|(a, k)| Op::Map(a, k)),
        (i.clone(), 2..5u64).prop_map(|(a, m)| Op::FailIf(a, m)),
        (i.clone(), i.clone()).prop_map(|(a, b)| Op::Pair(a, b)),
        prop::collection::vec(i.clone(), 0..4).prop_map(Op::All),
        (i.clone(), i.clone(), i.clone()).prop_map(|(a, b, c)| Op::Bind(a, b, c)),
        any::<u64>().prop_map(Op::ListMap),
        (i.clone(), i.clone()).prop_map(|(a, b)| Op::Gate(a, b)),
        (i.clone(), any::<u64>()).prop_map(|(a, k)| Op::Job(a, k)),
    ]
}

fn program() -> impl Strategy<Value = Vec<Op>> {
    (1..12usize).prop_flat_map(|len| {
        let mut ops: Vec<BoxedStrategy<Op>> = vec![(0..N_VARS).prop_map(Op::Input).boxed()];
        for n in 1..len {
            ops.push(op(n).boxed());
        }
        ops
    })
}

fn mix(a: u64, k: u64) -> u64 {
    (a ^ k).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17)
}

struct Inputs {
    vars: Vec<Var<u64>>,
    list: Var<Vec<u64>>,
    jobs: BuildCache<Mix>,
}

/// A job: `mix(x, k)` for the key `(x, k)`, failing for multiples of 5.
struct Mix;

#[async_trait]
impl Builder for Mix {
    const ID: &'static str = "mix";
    type Key = (u64, u64);
    type Value = u64;
    fn level(&self, _: &(u64, u64)) -> Level {
        Level::Harmless
    }
    async fn build(&self, _job: &Job, &(x, k): &(u64, u64)) -> Result<u64, Error> {
        if x % 5 == 0 {
            return Err(Error::msg(format!("job failed on {x}")));
        }
        Ok(mix(x, k))
    }
}

fn build(ops: &[Op], inputs: &Inputs) -> Current<u64> {
    let mut nodes: Vec<Current<u64>> = Vec::new();
    for op in ops {
        let node = match op {
            Op::Input(v) => inputs.vars[*v].current(),
            Op::Map(a, k) => {
                let k = *k;
                nodes[*a].map(move |x| mix(*x, k))
            }
            Op::FailIf(a, m) => {
                let m = *m;
                nodes[*a].try_map(move |x| if x % m == 0 { Err(format!("{x} divisible by {m}")) } else { Ok(x / m) })
            }
            Op::Pair(a, b) => nodes[*a].pair(&nodes[*b]).map(|(x, y)| mix(*x, *y)),
            Op::All(items) => {
                Current::all(items.iter().map(|i| nodes[*i].clone())).map(|xs| xs.iter().fold(7, |acc, x| mix(acc, *x)))
            }
            Op::Bind(c, a, b) => {
                let (a, b) = (nodes[*a].clone(), nodes[*b].clone());
                nodes[*c].and_then(move |x| if x % 2 == 0 { a.clone() } else { b.map(|y| y + 1) })
            }
            Op::ListMap(k) => {
                let k = *k;
                inputs
                    .list
                    .current()
                    .list_map_by(|x| *x % 4, move |item| item.map(move |x| mix(*x, k)))
                    .map(|xs| xs.iter().fold(0, |acc, x| acc ^ x))
            }
            Op::Gate(a, b) => nodes[*a].gate(&nodes[*b].ignore_value()),
            Op::Job(a, k) => {
                let k = *k;
                inputs.jobs.get("mix", nodes[*a].map(move |x| (*x, k)))
            }
        };
        nodes.push(node);
    }
    nodes.pop().expect("at least one op")
}

/// The same pipeline, evaluated directly (errors as strings, no pending states).
fn interpret(ops: &[Op], vars: &[u64], list: &[u64]) -> Result<u64, String> {
    let mut values: Vec<Result<u64, String>> = Vec::new();
    for op in ops {
        let v =
            match op {
                Op::Input(v) => Ok(vars[*v]),
                Op::Map(a, k) => values[*a].clone().map(|x| mix(x, *k)),
                Op::FailIf(a, m) => values[*a].clone().and_then(|x| {
                    if x % m == 0 {
                        Err(format!("{x} divisible by {m}"))
                    } else {
                        Ok(x / m)
                    }
                }),
                Op::Pair(a, b) => match (&values[*a], &values[*b]) {
                    (Err(e), _) | (_, Err(e)) => Err(e.clone()),
                    (Ok(x), Ok(y)) => Ok(mix(*x, *y)),
                },
                Op::All(items) => items
                    .iter()
                    .map(|i| values[*i].clone())
                    .collect::<Result<Vec<_>, _>>()
                    .map(|xs| xs.iter().fold(7, |acc, x| mix(acc, *x))),
                Op::Bind(c, a, b) => values[*c].clone().and_then(|x| {
                    if x % 2 == 0 {
                        values[*a].clone()
                    } else {
                        values[*b].clone().map(|y| y + 1)
                    }
                }),
                Op::ListMap(k) => {
                    let mut keys: Vec<u64> = list.iter().map(|x| x % 4).collect();
                    keys.sort();
                    if let Some(w) = keys.windows(2).find(|w| w[0] == w[1]) {
                        Err(format!("duplicate key \"{}\" in list_map input", w[0]))
                    } else {
                        Ok(list.iter().map(|x| mix(*x, *k)).fold(0, |acc, x| acc ^ x))
                    }
                }
                Op::Gate(a, b) => match (&values[*b], &values[*a]) {
                    (Err(e), _) | (_, Err(e)) => Err(e.clone()),
                    (Ok(_), Ok(x)) => Ok(*x),
                },
                Op::Job(a, k) => values[*a].clone().and_then(|x| {
                    if x % 5 == 0 {
                        Err(format!("job failed on {x}"))
                    } else {
                        Ok(mix(x, *k))
                    }
                }),
            };
        values.push(v);
    }
    values.pop().expect("at least one op")
}

fn as_result(o: Output<u64>) -> Result<u64, String> {
    match o {
        Output::Ok(v) => Ok(v),
        Output::Err(e) => Err(e.message().to_owned()),
        Output::Active(a) => Err(format!("unexpectedly pending: {a}")),
    }
}

#[derive(Clone, Debug)]
enum Change {
    Var(usize, u64),
    List(Vec<u64>),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        3 => (0..N_VARS, 0..20u64).prop_map(|(v, x)| Change::Var(v, x)),
        1 => prop::collection::vec(0..12u64, 0..5).prop_map(Change::List),
    ]
}

/// Steps `engine` until no job is active (each job's outcome is shown
/// before it finishes, so the step after that sees it).
async fn settle(engine: &Engine<u64>, ctx: &Context) {
    engine.step();
    loop {
        let active: Vec<Job> = ctx.jobs.active().iter().filter_map(|j| ctx.jobs.get(&j.id)).collect();
        if active.is_empty() {
            return;
        }
        for job in &active {
            support::wait_finished(job).await;
        }
        engine.step();
    }
}

fn summary(engine: &Engine<u64>) -> String {
    engine.diagram(&Expanded::none()).summary()
}

fn check(ops: Vec<Op>, changes: Vec<Vec<Change>>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let dir = support::state_dir("incremental");
    let ctx = Context::open(&dir, Config::default()).unwrap();
    let result = rt.block_on(async {
        let inputs = Inputs {
            vars: (0..N_VARS).map(|i| Var::new(&format!("v{i}"), i as u64 + 1)).collect(),
            list: Var::new("list", vec![1, 2]),
            jobs: BuildCache::new(&ctx, Mix),
        };
        let mut vars: Vec<u64> = (0..N_VARS).map(|i| i as u64 + 1).collect();
        let mut list = vec![1, 2];
        let pipeline = build(&ops, &inputs);
        let engine = Engine::new(pipeline.clone());
        settle(&engine, &ctx).await;
        prop_assert_eq!(as_result(engine.output()), interpret(&ops, &vars, &list));
        for batch in changes {
            for c in batch {
                match c {
                    Change::Var(v, x) => {
                        vars[v] = x;
                        inputs.vars[v].set(x);
                    }
                    Change::List(l) => {
                        list = l.clone();
                        inputs.list.set(l);
                    }
                }
            }
            settle(&engine, &ctx).await;
            let incremental = engine.output();
            let scratch = Engine::new(pipeline.clone());
            settle(&scratch, &ctx).await;
            prop_assert_eq!(&incremental, &scratch.output());
            // The O(1) statistics and the diagram agree with a fresh
            // evaluation (template stages, failures, gates, jobs included).
            prop_assert_eq!(engine.stats(), scratch.stats());
            prop_assert_eq!(summary(&engine), summary(&scratch));
            // Released branches are really gone: no more live nodes than a
            // from-scratch evaluation has.
            prop_assert_eq!(engine.handle().node_count(), scratch.handle().node_count());
            prop_assert_eq!(as_result(incremental), interpret(&ops, &vars, &list));
            drop(scratch);
            // A fresh build of the same program agrees too (no shared terms).
            let rebuilt = Engine::new(build(&ops, &inputs));
            settle(&rebuilt, &ctx).await;
            prop_assert_eq!(as_result(rebuilt.output()), interpret(&ops, &vars, &list));
        }
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&dir);
    result
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn incremental_equals_from_scratch(ops in program(), changes in prop::collection::vec(prop::collection::vec(change(), 1..4), 1..8)) {
        check(ops, changes)?;
    }
}
