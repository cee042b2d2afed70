//! The salsa version computes the same root as the engine.

#[path = "../benches/salsa_chains.rs"]
mod salsa_chains;

use salsa::Setter;

#[test]
fn salsa_computes_the_documented_root() {
    let (mut db, heads, all) = salsa_chains::setup(deployer_benches::CHAINS);
    assert_eq!(salsa_chains::root(&db, all), deployer_benches::INITIAL_ROOT);
    heads[500].set_value(&mut db).to(12345);
    assert_eq!(
        salsa_chains::root(&db, all),
        deployer_benches::plain_loop(deployer_benches::CHAINS, deployer_benches::LENGTH, &[(500, 12345)])
    );
}
