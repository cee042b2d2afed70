//! The benchmark's shape built with salsa, for comparison (included by the
//! benchmark and by its test).

/// A chain's input.
#[salsa::input]
pub struct Head {
    #[returns(copy)]
    pub value: u64,
}

/// Node `k` of the chain whose input is `head`.
#[salsa::interned]
pub struct NodeId<'db> {
    pub head: Head,
    #[returns(copy)]
    pub k: u32,
}

/// All the chains' inputs.
#[salsa::input]
pub struct Heads {
    #[returns(ref)]
    pub all: Vec<Head>,
}

/// The value of one node.
#[salsa::tracked(returns(copy))]
pub fn node<'db>(db: &'db dyn salsa::Database, id: NodeId<'db>) -> u64 {
    let k = id.k(db);
    let head = id.head(db);
    if k == 0 {
        deployer_benches::splitmix64(head.value(db))
    } else {
        deployer_benches::step_hash(node(db, NodeId::new(db, head, k - 1)), k as usize)
    }
}

/// The XOR of the chain ends.
#[salsa::tracked(returns(copy))]
pub fn root(db: &dyn salsa::Database, heads: Heads) -> u64 {
    let last = deployer_benches::LENGTH as u32 - 1;
    heads.all(db).iter().fold(0, |acc, h| acc ^ node(db, NodeId::new(db, *h, last)))
}

/// A database with the benchmark's inputs.
pub fn setup(chains: usize) -> (salsa::DatabaseImpl, Vec<Head>, Heads) {
    let db = salsa::DatabaseImpl::new();
    let heads: Vec<Head> = (0..chains).map(|c| Head::new(&db, c as u64)).collect();
    let all = Heads::new(&db, heads.clone());
    (db, heads, all)
}
