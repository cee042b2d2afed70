//! Ref names read as git reads them: git's own test cases of `git
//! check-ref-format` (transcribed in `tests/upstream/check-ref-format.tsv`
//! with their source), and the installed `git check-ref-format` itself on
//! those and on names that reach a deployer from forges and configuration.
//!
//! A [`RefName`] is a branch name or a full ref, so git's rules apply as
//! with `--allow-onelevel`; on top of them a `RefName` refuses what would
//! be dangerous on a command line or in a label (the differences are
//! listed below with their reason, and the test fails if any other
//! appears).

use std::process::Command;

use deployer_git::RefName;

/// A ref of the data file: `\ooo` escapes to bytes.
fn unescape(text: &str) -> Vec<u8> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| d.iter().all(|d| (b'0'..=b'7').contains(d)));
        match (b[i], octal) {
            (b'\\', Some(digits)) => {
                out.push(digits.iter().fold(0u8, |n, d| n * 8 + (d - b'0')));
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

/// What the installed git says of `name` with `options`.
fn git_says(options: &[&str], name: &[u8]) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let out = Command::new("git")
        .arg("check-ref-format")
        .args(options)
        .arg(std::ffi::OsStr::from_bytes(name))
        .output()
        .expect("git runs (install git)");
    out.status.success()
}

fn ours(name: &[u8]) -> bool {
    std::str::from_utf8(name).is_ok_and(|s| RefName::new(s).is_ok())
}

/// Where a `RefName` refuses what git accepts, and why. Nothing else may
/// differ.
fn known_difference(name: &str) -> Option<&'static str> {
    if name.starts_with('-') {
        return Some("a leading '-' would be read as an option by the git a deployer runs");
    }
    if name.contains([';', '&', '|', '`', '$', '<', '>', '(', ')', '{', '}', '\'', '"']) {
        return Some("shell characters: a ref reaches command lines, labels and job descriptions");
    }
    None
}

#[test]
fn gits_own_cases_agree_with_git_and_with_refname() {
    let data = include_str!("upstream/check-ref-format.tsv");
    let mut cases = 0;
    for line in data.lines().filter(|l| !l.starts_with('#')) {
        let cols: Vec<&str> = line.split('\t').collect();
        let [at, verdict, options, name] = cols[..] else { panic!("a malformed row: {line:?}") };
        let name = unescape(name);
        let options: Vec<&str> = if options == "-" { vec![] } else { vec![options] };
        let valid = verdict == "valid";
        // The transcription says what git says.
        assert_eq!(git_says(&options, &name), valid, "t1402 line {at}: git disagrees with the transcription");
        // A RefName reads it as git does with one-level names allowed.
        let expected = git_says(&["--allow-onelevel"], &name);
        if !options.is_empty() || name.contains(&b'/') {
            assert_eq!(expected, valid, "t1402 line {at}: one-level names change nothing here");
        }
        assert_eq!(ours(&name), expected, "t1402 line {at}: {:?}", String::from_utf8_lossy(&name));
        cases += 1;
    }
    assert_eq!(cases, 41, "every transcribed case was run");
}

#[test]
fn names_from_forges_and_configuration_are_read_as_the_installed_git_reads_them() {
    let names = [
        "main",
        "live",
        "staging",
        "refs/heads/live",
        "refs/pull/12/head",
        "refs/tags/v1.2.3",
        "gh-pages",
        "release/2026.12",
        "HEAD",
        "@",
        "a@",
        "@a",
        "a@{1}",
        "a/@/b",
        "a.",
        "a..b",
        ".a",
        "a/.b",
        "a/b.",
        "a.lock",
        "a/b.lock",
        "a.lock.b",
        "a.lo",
        "a//b",
        "/a",
        "a/",
        "a b",
        "a\tb",
        "a~1",
        "a^",
        "a:b",
        "a[b",
        "a]b",
        "a?",
        "a*",
        "a\\b",
        "a\u{7f}",
        "a\u{1}",
        "ä/ö",
        "fu\u{df}",
        "a;b",
        "a&b",
        "a|b",
        "a`b",
        "a$b",
        "x$(id)",
        "a<b",
        "a>b",
        "a(b",
        "a)b",
        "a{b",
        "a}b",
        "a'b",
        "a\"b",
        "a%b",
        "a#b",
        "a!b",
        "a,b",
        "a=b",
        "a+b",
        "a-b",
        "-a",
        "refs/heads/-a",
        "a/-b",
        "_",
        "1",
        "refs",
        "refs/",
        "ref/heads/x.lock/y",
    ];
    let mut differences = Vec::new();
    for name in names {
        let ours = ours(name.as_bytes());
        // git reads an argument starting with '-' as an option.
        if name.starts_with('-') {
            assert!(!ours, "{name:?}");
            continue;
        }
        let git = git_says(&["--allow-onelevel"], name.as_bytes());
        if ours == git {
            continue;
        }
        match known_difference(name) {
            Some(why) if git && !ours => differences.push(format!("{name:?}: {why}")),
            _ => panic!("{name:?}: git says {git}, RefName says {ours}"),
        }
    }
    // The shell characters git accepts and a RefName refuses.
    assert_eq!(differences.len(), 14, "{differences:#?}");
}
