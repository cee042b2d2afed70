//! `deployer --flavour tarides|ocaml|mirage`: ocurrent-deployer in Rust.
//! See `deployer --help`.

fn main() {
    deployer_examples::deployer::cli::main(deployer_examples::deployer::cli::Mode::Full);
}
