//! `ssh_config` files: the first line of the input is the alias, the rest
//! the file (which may `Include` itself or others, also fuzzed: the second
//! file is the input reversed). Resolving never panics, never hangs, and a
//! resolved host has a host name, a user and a port.
#![no_main]

use std::sync::OnceLock;

use deployer_fuzz::scratch;
use deployer_ssh::Host;
use libfuzzer_sys::fuzz_target;

fn dir() -> &'static std::path::PathBuf {
    static D: OnceLock<std::path::PathBuf> = OnceLock::new();
    D.get_or_init(|| scratch("ssh-config"))
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    let (alias, config) = text.split_once('\n').unwrap_or((text, ""));
    let dir = dir();
    let path = dir.join("config");
    std::fs::write(&path, config).expect("config written");
    let other: String = config.chars().rev().collect();
    std::fs::write(dir.join("other"), other).expect("other written");
    if let Ok(host) = Host::from_ssh_config(alias, &path) {
        assert_eq!(host.name(), alias);
        let destination = host.destination();
        let back = Host::new(&destination).unwrap_or_else(|e| panic!("{alias:?} gave {destination:?}: {e}"));
        assert_eq!(back.destination(), destination);
    }
});
