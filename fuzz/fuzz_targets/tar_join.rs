//! The tar stream joiner (a commit's archive and its submodules' become one
//! build context): any stream is copied whole-entry by whole-entry or
//! refused, never with a panic, and what it writes is a run of whole
//! blocks that it reports truly, which copies again to itself.
#![no_main]

use std::sync::OnceLock;

use deployer_git::fuzzing::copy_tar_entries;
use libfuzzer_sys::fuzz_target;

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(deployer_fuzz::runtime)
}

fuzz_target!(|bytes: &[u8]| {
    let Ok((out, n)) = rt().block_on(copy_tar_entries(bytes)) else { return };
    assert_eq!(out.len() as u64, n, "the bytes it says it wrote");
    assert_eq!(out.len() % 512, 0, "whole blocks");
    assert!(out.len() <= bytes.len(), "it wrote more than it read");
    assert_eq!(&bytes[..out.len()], &out[..], "entries are copied as they are");
    let (again, _) = rt().block_on(copy_tar_entries(&out)).expect("its own output copies");
    assert_eq!(again, out);
});
