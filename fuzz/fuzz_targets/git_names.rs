//! Git remotes and ref names from configuration and from forges: checking
//! never panics, and what is accepted stays consistent: a remote parses
//! again to itself, its host is part of it, a ref's full name is a ref
//! name too, and a submodule path resolves to a remote or a clear error.
#![no_main]

use deployer_git::{RefName, Remote};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    let (first, second) = text.split_once('\n').unwrap_or((text, "../other.git"));
    if let Ok(remote) = Remote::new(first) {
        assert_eq!(Remote::new(remote.as_str()).ok().as_ref(), Some(&remote), "{first:?}");
        if let Some(host) = remote.host() {
            assert!(!host.is_empty() && remote.as_str().contains(host), "{first:?}: host {host:?}");
            assert!(!host.contains(['/', '@']), "{first:?}: host {host:?}");
        }
        let _ = remote.short_name();
        let _ = remote.is_local();
        if let Ok(joined) = remote.join(second) {
            assert_eq!(Remote::new(joined.as_str()).ok().as_ref(), Some(&joined), "{first:?} + {second:?}");
        }
    }
    if let Ok(name) = RefName::new(first) {
        let full = name.full();
        let again = RefName::new(&full).unwrap_or_else(|e| panic!("{first:?} is a ref but {full:?} is not: {e}"));
        assert_eq!(again.full(), full);
        assert!(!full.contains("..") && !full.starts_with('-'), "{full:?}");
    }
});
