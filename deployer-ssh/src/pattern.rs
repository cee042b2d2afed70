//! OpenSSH's patterns, shared by `known_hosts` and `ssh_config`.

/// Whether `name` matches `pattern`, where `*` is any run of characters and
/// `?` any one; letters match case-insensitively, as host names do in
/// `known_hosts`.
pub(crate) fn wildcard(pattern: &[u8], name: &[u8]) -> bool {
    matches(pattern, name, true)
}

/// [`wildcard`], letters matching only in the same case: `ssh_config`'s
/// `Host` patterns, which OpenSSH compares with the alias as typed.
pub(crate) fn wildcard_exact(pattern: &[u8], name: &[u8]) -> bool {
    matches(pattern, name, false)
}

fn matches(pattern: &[u8], name: &[u8], fold: bool) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            matches(&pattern[1..], name, fold) || (!name.is_empty() && matches(pattern, &name[1..], fold))
        }
        (Some(b'?'), Some(_)) => matches(&pattern[1..], &name[1..], fold),
        (Some(p), Some(n)) if p == n || (fold && p.eq_ignore_ascii_case(n)) => matches(&pattern[1..], &name[1..], fold),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::{wildcard, wildcard_exact};

    #[test]
    fn stars_and_question_marks() {
        for (p, n) in [("*", ""), ("*.org", "a.b.org"), ("h?st", "HOST"), ("[10.0.0.*]:22??", "[10.0.0.7]:2201")] {
            assert!(wildcard(p.as_bytes(), n.as_bytes()), "{p} {n}");
        }
        for (p, n) in [("?", ""), ("*.org", "a.org.uk"), ("host", "hostx")] {
            assert!(!wildcard(p.as_bytes(), n.as_bytes()), "{p} {n}");
        }
        assert!(wildcard_exact(b"My*", b"MyBox") && !wildcard_exact(b"MyBox", b"mybox"));
    }
}
