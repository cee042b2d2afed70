//! `known_hosts` files: the first line of the input is the host, the
//! second its port, the rest the file. Checking a key never panics or
//! hangs, and agrees with itself: the line this crate would add for a host
//! (for a host a destination may name) makes the key known for it, and a key the file lists for the host is
//! never "unknown".
#![no_main]

use std::sync::OnceLock;

use deployer_ssh::fuzzing::{known_hosts_check, known_hosts_line, known_hosts_listed, wildcard};
use libfuzzer_sys::fuzz_target;
use russh::keys::ssh_key::PublicKey;

/// The key every input is checked against (made for these targets).
const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOztXUlu3zUt6G2QIxG48qFmYrAfy5ACXwmg1ntXhEIR fuzz";

fn key() -> &'static PublicKey {
    static K: OnceLock<PublicKey> = OnceLock::new();
    K.get_or_init(|| PublicKey::from_openssh(KEY).expect("the key"))
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    let mut parts = text.splitn(3, '\n');
    let (host, port, file) = (parts.next().unwrap_or(""), parts.next().unwrap_or("22"), parts.next().unwrap_or(""));
    let port = port.parse::<u16>().unwrap_or(22);
    let verdict = known_hosts_check(file, host, port, key());
    let (first, types) = known_hosts_listed(file, host, port);
    if verdict == "known" {
        assert!(first.is_some() && types > 0, "known, yet nothing is listed: {verdict} {first:?} {types}");
    }
    // A host pattern matches itself, in any case, as a literal.
    if !host.contains(['*', '?']) {
        assert!(wildcard(host.as_bytes(), host.to_ascii_uppercase().as_bytes(), true));
    }
    // Lines are written only for hosts a destination may name.
    // (`Host::new` reads `user@host:port`: only a bare name is a host name.)
    let bare = !host.contains(['@', ':']) && deployer_ssh::Host::new(host).is_ok();
    let Some(line) = known_hosts_line(host, port, key()).filter(|_| bare) else {
        return;
    };
    {
        let learned = format!("{file}\n{line}\n");
        let after = known_hosts_check(&learned, host, port, key());
        // Only a revocation or another key already listed wins over it.
        assert!(
            after == "known" || after.starts_with("revoked") || after.starts_with("changed"),
            "the line it writes for {host:?}:{port} ({line:?}) leaves the key {after}"
        );
        if verdict == "unknown" {
            assert_eq!(after, "known", "{line:?} appended to a file that did not list {host:?}");
        }
    }
});
