//! OpenSSH's patterns, shared by `known_hosts` and `ssh_config`.

/// Whether `name` matches `pattern`, where `*` is any run of characters and
/// `?` any one; letters match case-insensitively, as host names do.
pub(crate) fn wildcard(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => wildcard(&pattern[1..], name) || (!name.is_empty() && wildcard(pattern, &name[1..])),
        (Some(b'?'), Some(_)) => wildcard(&pattern[1..], &name[1..]),
        (Some(p), Some(n)) if p.eq_ignore_ascii_case(n) => wildcard(&pattern[1..], &name[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::wildcard;

    #[test]
    fn stars_and_question_marks() {
        for (p, n) in [("*", ""), ("*.org", "a.b.org"), ("h?st", "HOST"), ("[10.0.0.*]:22??", "[10.0.0.7]:2201")] {
            assert!(wildcard(p.as_bytes(), n.as_bytes()), "{p} {n}");
        }
        for (p, n) in [("?", ""), ("*.org", "a.org.uk"), ("host", "hostx")] {
            assert!(!wildcard(p.as_bytes(), n.as_bytes()), "{p} {n}");
        }
    }
}
