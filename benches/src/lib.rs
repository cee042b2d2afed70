//! Shared code for the benchmarks: the shapes they measure, built with the
//! deployer engine, plus a plain loop as the floor.
//!
//! The engine benchmark's shape: 1,000 independent chains of 100 nodes. Each
//! chain has one input `head` (initially the chain index);
//! `node(c, 0) = splitmix64(head)`,
//! `node(c, k) = splitmix64(node(c, k - 1) ^ k * 0x9E3779B97F4A7C15)`,
//! and the root XORs the 1,000 chain ends.
//!
//! ```
//! let chains = deployer_benches::Chains::new(10, 5);
//! chains.engine.step();
//! assert_eq!(chains.engine.output(), deployer_core::Output::Ok(deployer_benches::plain_loop(10, 5, &[])));
//! ```

use deployer_core::{Current, Engine, Var};

/// Chains in the benchmark.
pub const CHAINS: usize = 1_000;
/// Nodes per chain.
pub const LENGTH: usize = 100;
/// The root's value with the initial heads.
pub const INITIAL_ROOT: u64 = 0x1cf6_8348_28e1_e977;

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The standard splitmix64 finaliser (adds the golden gamma first).
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `node(c, k)` from `node(c, k - 1)`.
pub fn step_hash(previous: u64, k: usize) -> u64 {
    splitmix64(previous ^ (k as u64).wrapping_mul(GOLDEN))
}

/// The root computed by a plain loop over every node; `overrides` sets
/// `(chain, head)` pairs.
pub fn plain_loop(chains: usize, length: usize, overrides: &[(usize, u64)]) -> u64 {
    let mut root = 0;
    for c in 0..chains {
        let head = overrides.iter().rev().find(|(i, _)| *i == c).map_or(c as u64, |(_, h)| *h);
        let mut x = splitmix64(head);
        for k in 1..length {
            x = step_hash(x, k);
        }
        root ^= x;
    }
    root
}

/// The benchmark's pipeline, built with the deployer engine.
pub struct Chains {
    /// One input per chain.
    pub heads: Vec<Var<u64>>,
    /// The engine evaluating the root.
    pub engine: Engine<u64>,
}

impl Chains {
    /// Builds `chains` chains of `length` nodes (the engine has not run yet).
    pub fn new(chains: usize, length: usize) -> Chains {
        let heads: Vec<Var<u64>> = (0..chains).map(|c| Var::new("head", c as u64)).collect();
        let ends = heads.iter().map(|head| {
            let mut node = head.current().map(|h| splitmix64(*h));
            for k in 1..length {
                node = node.map(move |x| step_hash(*x, k));
            }
            node
        });
        let root: Current<u64> = Current::all(ends).map(|xs| xs.iter().fold(0, |acc, x| acc ^ x));
        Chains { heads, engine: Engine::new(root) }
    }
}

/// Whether the benchmark runs in quick mode: once, small, as a test (`cargo
/// test --benches`, which CI runs), rather than measured (`cargo bench`,
/// which passes `--bench`). Quick mode keeps every benchmark working and
/// its correctness checks; timing targets are checked when measured.
pub fn quick() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

/// Peak and current resident set size of this process, in bytes, from
/// `/proc/self/status` (`VmHWM`, `VmRSS`).
pub fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use deployer_core::Output;

    #[test]
    fn the_engine_computes_the_documented_root() {
        let chains = Chains::new(CHAINS, LENGTH);
        chains.engine.step();
        assert_eq!(chains.engine.output(), Output::Ok(INITIAL_ROOT));
        assert_eq!(plain_loop(CHAINS, LENGTH, &[]), INITIAL_ROOT);
        chains.heads[500].set(12345);
        chains.engine.step();
        assert_eq!(chains.engine.output(), Output::Ok(plain_loop(CHAINS, LENGTH, &[(500, 12345)])));
    }
}
