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

/// The match itself, in O(pattern × name) steps at worst: on a mismatch
/// only the last `*` seen takes one more character (a recursive match, as
/// OpenSSH's `match_pattern` is, takes exponential time on patterns such as
/// `*a*a*a*a*b`, and a pattern comes from a file).
fn matches(pattern: &[u8], name: &[u8], fold: bool) -> bool {
    let same = |p: u8, n: u8| p == n || (fold && p.eq_ignore_ascii_case(&n));
    let (mut p, mut n) = (0, 0);
    // After the last `*`: where the pattern resumes, and the name's
    // position that `*` has covered up to.
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p + 1, n));
                p += 1;
            }
            Some(b'?') => {
                p += 1;
                n += 1;
            }
            Some(&c) if same(c, name[n]) => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((after, covered)) => {
                    p = after;
                    n = covered + 1;
                    star = Some((after, covered + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
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
        for (p, n, yes) in [("a*b*c", "aXbYc", true), ("a*b*c", "aXbY", false), ("**", "", true), ("*?", "", false)] {
            assert_eq!(wildcard(p.as_bytes(), n.as_bytes()), yes, "{p} {n}");
        }
    }

    /// A pattern comes from a file and must not hang the deployer: the
    /// recursive match this replaced took exponential time here.
    #[test]
    fn many_stars_take_linear_time() {
        let pattern = "*a".repeat(30) + "b";
        let name = "a".repeat(200);
        let started = std::time::Instant::now();
        assert!(!wildcard(pattern.as_bytes(), name.as_bytes()));
        assert!(wildcard(pattern.as_bytes(), (name + "b").as_bytes()));
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "{:?}", started.elapsed());
    }
}
