//! Engine benchmark: 1,000 chains of 100 nodes (100,000 nodes), measured with
//! the deployer engine and with salsa in one run.
//!
//! Run with `cargo bench -p deployer-benches --bench engine`. Memory per node
//! is measured first, each engine in a child process of its own (peak RSS
//! above the child's starting RSS, over 100,000 nodes).

mod salsa_chains;

use std::hint::black_box;
use std::process::Command;

use criterion::{criterion_group, Criterion};
use deployer_benches::{plain_loop, rss, Chains, CHAINS, INITIAL_ROOT, LENGTH};
use deployer_core::Output;
use salsa::Setter;

const NODES: u64 = (CHAINS * LENGTH) as u64;

fn engine(c: &mut Criterion) {
    let mut group = c.benchmark_group("chains");
    group.sample_size(20);
    group.bench_function("plain_loop/all_100k_hashes", |b| b.iter(|| black_box(plain_loop(CHAINS, LENGTH, &[]))));

    group.bench_function("deployer/first_evaluation", |b| {
        b.iter_with_large_drop(|| {
            let chains = Chains::new(CHAINS, LENGTH);
            chains.engine.step();
            assert_eq!(chains.engine.output(), Output::Ok(INITIAL_ROOT));
            chains
        })
    });
    group.bench_function("salsa/first_evaluation", |b| {
        b.iter_with_large_drop(|| {
            let (db, heads, all) = salsa_chains::setup(CHAINS);
            assert_eq!(salsa_chains::root(&db, all), INITIAL_ROOT);
            (db, heads, all)
        })
    });

    let chains = Chains::new(CHAINS, LENGTH);
    chains.engine.step();
    // One change recomputes exactly its chain: the var, its 100 nodes, the
    // `all` and the root; setting the same value again recomputes nothing.
    chains.heads[CHAINS / 2].set(12345);
    let report = chains.engine.step();
    assert_eq!(report.recomputed, 103, "one change recomputes 103 nodes");
    assert_eq!(chains.engine.output(), Output::Ok(plain_loop(CHAINS, LENGTH, &[(CHAINS / 2, 12345)])));
    chains.heads[CHAINS / 2].set(12345);
    assert_eq!(chains.engine.step().recomputed, 0, "an unchanged value recomputes nothing");
    let mut n = 1_000_000u64;
    group.bench_function("deployer/one_change", |b| {
        b.iter(|| {
            n += 1;
            chains.heads[CHAINS / 2].set(n);
            black_box(chains.engine.step());
        })
    });
    group.bench_function("deployer/same_value", |b| {
        b.iter(|| {
            chains.heads[CHAINS / 2].set(n);
            black_box(chains.engine.step());
        })
    });
    assert_eq!(chains.engine.output(), Output::Ok(plain_loop(CHAINS, LENGTH, &[(CHAINS / 2, n)])));

    let (mut db, heads, all) = salsa_chains::setup(CHAINS);
    salsa_chains::root(&db, all);
    group.bench_function("salsa/one_change", |b| {
        b.iter(|| {
            n += 1;
            heads[CHAINS / 2].set_value(&mut db).to(n);
            black_box(salsa_chains::root(&db, all));
        })
    });
    group.bench_function("salsa/same_value", |b| {
        b.iter(|| {
            heads[CHAINS / 2].set_value(&mut db).to(n);
            black_box(salsa_chains::root(&db, all));
        })
    });
    group.finish();
}

criterion_group!(benches, engine);

/// In a child process: builds and evaluates one engine's pipeline and prints
/// the peak RSS growth in bytes per node.
fn measure_memory(which: &str) {
    let (_, start) = rss();
    match which {
        "deployer" => {
            let chains = Chains::new(CHAINS, LENGTH);
            chains.engine.step();
            assert_eq!(chains.engine.output(), Output::Ok(INITIAL_ROOT));
            let (peak, _) = rss();
            println!("{}", (peak - start) as f64 / NODES as f64);
            std::mem::forget(chains);
        }
        _ => {
            let (db, heads, all) = salsa_chains::setup(CHAINS);
            assert_eq!(salsa_chains::root(&db, all), INITIAL_ROOT);
            let (peak, _) = rss();
            println!("{}", (peak - start) as f64 / NODES as f64);
            std::mem::forget((db, heads));
        }
    }
}

fn memory_report() {
    let exe = std::env::current_exe().expect("own path");
    let mut figures = Vec::new();
    for which in ["deployer", "salsa"] {
        let out = Command::new(&exe).env("DEPLOYER_BENCH_MEMORY", which).output().expect("child runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let bytes: f64 = text.trim().parse().unwrap_or_else(|_| panic!("child printed {text:?}"));
        println!("memory/{which}: {bytes:.1} bytes per node (peak RSS growth / {NODES})");
        figures.push(bytes);
    }
    println!("memory/ratio deployer/salsa: {:.2}", figures[0] / figures[1]);
}

fn main() {
    if let Ok(which) = std::env::var("DEPLOYER_BENCH_MEMORY") {
        measure_memory(&which);
        return;
    }
    memory_report();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
