//! `deployer-local --flavour … [OWNER/NAME]`: a flavour's deploy branches
//! on this machine, GitHub read anonymously. See `deployer-local --help`.

fn main() {
    deployer_examples::deployer::cli::main(deployer_examples::deployer::cli::Mode::Local);
}
