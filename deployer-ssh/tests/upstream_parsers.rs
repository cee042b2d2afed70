//! Host patterns and `ssh_config` read as OpenSSH reads them: OpenSSH's own
//! test cases of its wildcard matcher (transcribed in
//! `tests/upstream/match_pattern.tsv` with their source), and the installed
//! `ssh -G` (which prints what the client would use, without connecting)
//! on configurations a deployer meets.

use std::path::{Path, PathBuf};
use std::process::Command;

use deployer_ssh::fuzzing::wildcard;
use deployer_ssh::Host;

#[test]
fn openssh_match_pattern_cases_agree() {
    let mut n = 0;
    for line in include_str!("upstream/match_pattern.tsv").lines().filter(|l| !l.starts_with('#')) {
        let cols: Vec<&str> = line.split('\t').collect();
        let [at, matches, string, pattern] = cols[..] else { panic!("a malformed row {line:?}") };
        // Host patterns in ssh_config compare as typed (OpenSSH's
        // match_pattern is case-sensitive; known_hosts lower-cases first).
        assert_eq!(wildcard(pattern.as_bytes(), string.as_bytes(), false), matches == "1", "tests.c line {at}");
        n += 1;
    }
    assert_eq!(n, 76);
}

fn dir() -> PathBuf {
    let base = std::env::var_os("DEPLOYER_TEST_WORK").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("ssh-upstream-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `ssh -G`'s user, host name and port for `alias` under `config`, as
/// `user@host:port` (a v6 host in brackets), or its error.
fn ssh_g(alias: &str, config: &Path) -> Result<String, String> {
    let out =
        Command::new("ssh").arg("-G").arg("-F").arg(config).arg(alias).output().expect("ssh runs (openssh-client)");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let get =
        |k: &str| text.lines().find_map(|l| l.strip_prefix(&format!("{k} "))).map(str::to_owned).unwrap_or_default();
    let host = get("hostname");
    let host = if host.contains(':') { format!("[{host}]") } else { host };
    Ok(format!("{}@{host}:{}", get("user"), get("port")))
}

#[test]
fn ssh_config_resolves_as_ssh_dash_g_resolves_it() {
    let dir = dir();
    let me = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap().trim().to_owned();
    let cases: &[(&str, &str)] = &[
        ("watch", "Host watch !nope\n\tHostName 127.0.0.1\n\tPort=2222\n\tUser deploy\n"),
        ("watch", "Host watch\n\tPort 2222\nHost *\n\tPort 3333\n\tUser any\n"),
        ("web1", "Host web?\n\tHostName %h.example.org\n\tUser \"deploy\"\n"),
        ("Watch", "Host watch\n\tUser lower\n"),
        ("nope", "Host * !nope\n\tUser excluded\n"),
        ("a.b", "Host *.b\n\tUser star\nHost a.*\n\tUser second\n"),
        ("v6", "Host v6\n\tHostName ::1\n\tPort 2200\n"),
        ("x", "User first\nUser second\nHost x\n\tUser third\n"),
        ("x", "Host=x\n\tPort=22\n\tHostName=example.org\n"),
        ("x", "Host x\n\tHostName %%h\n"),
        ("x", "# only a comment\n"),
        ("y", "Host x y\n\tHostName both.example\n"),
        ("plain", "Host plain\n\tHostName EXAMPLE.org\n"),
    ];
    let mut agreed = 0;
    for (i, (alias, text)) in cases.iter().enumerate() {
        let config = dir.join(format!("config{i}"));
        std::fs::write(&config, text).unwrap();
        let theirs = ssh_g(alias, &config);
        let ours = Host::from_ssh_config(alias, &config).map(|h| h.destination()).map_err(|e| e.to_string());
        match (&theirs, &ours) {
            (Ok(t), Ok(o)) if t == o => agreed += 1,
            _ => panic!("{alias} under {text:?}: ssh -G says {theirs:?}, this crate {ours:?} (user {me})"),
        }
    }
    assert_eq!(agreed, cases.len());
}

/// Found by the `known_hosts` fuzz target: a host name with a ',' was
/// taken, and the known_hosts line learned for it (`a,b ssh-ed25519 …`)
/// named two other hosts instead. Host names and users are checked as
/// OpenSSH's readconf.c (ssh_valid_hostname, ssh_valid_ruser) checks them.
#[test]
fn host_names_and_users_are_refused_as_openssh_refuses_them() {
    // …and then a name starting with '!' (a negation there), which
    // OpenSSH itself would write as it is.
    for bad in ["e,amplae.5mplx", "!xample.org22", "a*b", "h?", "#h", "a;b", "a(b", "a{b}", "a|b", "-h", "a b", "a'b"] {
        assert!(Host::new(bad).is_err(), "host {bad:?}");
    }
    for bad in ["u{x}", "u;x", "u(x)", "u`x`", "-u", "u x"] {
        assert!(Host::new(&format!("{bad}@h")).is_err(), "user {bad:?}");
    }
    for ok in ["h.example", "[::1]:22", "deploy@10.0.0.1:2222", "a_b@h-1", "xn--n3h.example"] {
        assert!(Host::new(ok).is_ok(), "{ok:?}");
    }
}
