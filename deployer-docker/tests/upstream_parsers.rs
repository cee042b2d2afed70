//! Image references and `DOCKER_HOST` addresses read as Docker reads them:
//! Docker's own test cases (distribution/reference and the docker CLI,
//! transcribed in `tests/upstream/*.tsv` with their source), and the
//! installed docker CLI itself where it answers without a daemon.
//!
//! Where this crate reads a case otherwise, the difference is listed here
//! with its reason; any other difference fails.

use deployer_docker::{Endpoint, ImageRef, TlsFiles};

/// The rows of a data file: its tab-separated columns, without comments.
fn rows(text: &str) -> Vec<Vec<&str>> {
    text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).map(|l| l.split('\t').collect()).collect()
}

#[test]
fn dockers_name_cases_normalise_as_docker_normalises_them() {
    let mut n = 0;
    for row in rows(include_str!("upstream/normalize.tsv")) {
        let [at, verdict, domain, path, reference] = row[..] else { panic!("a malformed row {row:?}") };
        let parsed = ImageRef::parse(reference);
        match verdict {
            "valid" => {
                let r = parsed.unwrap_or_else(|e| panic!("normalize_test.go line {at}: {e}"));
                if domain != "-" {
                    assert_eq!((r.registry(), r.repository()), (domain, path), "normalize_test.go line {at}");
                }
            }
            _ => assert!(parsed.is_err(), "normalize_test.go line {at}: {reference:?} was accepted"),
        }
        n += 1;
    }
    assert_eq!(n, 110);
}

#[test]
fn dockers_reference_cases_parse_as_docker_parses_them() {
    let mut n = 0;
    for row in rows(include_str!("upstream/reference.tsv")) {
        let [at, verdict, domain, repository, tag, digest, input] = row[..] else { panic!("a malformed row {row:?}") };
        let parsed = ImageRef::parse(input);
        match verdict {
            "valid" => {
                let r = parsed.unwrap_or_else(|e| panic!("reference_test.go line {at}: {input:?}: {e}"));
                // Parse takes any first component of a name with more as its
                // domain; normalised, only one with '.' or ':', `localhost`
                // or an upper-case letter is one (splitDockerDomain).
                let is_domain =
                    |d: &str| d.contains(['.', ':']) || d == "localhost" || d.bytes().any(|b| b.is_ascii_uppercase());
                let registry = if domain != "-" && is_domain(domain) { domain } else { "docker.io" };
                assert_eq!(r.registry(), registry, "reference_test.go line {at}");
                assert_eq!(r.name(), repository, "reference_test.go line {at}");
                assert_eq!(r.tag(), Some(tag).filter(|t| *t != "-"), "reference_test.go line {at}");
                assert_eq!(r.digest(), Some(digest).filter(|d| *d != "-"), "reference_test.go line {at}");
            }
            error => assert!(parsed.is_err(), "reference_test.go line {at}: {input:?} was accepted ({error})"),
        }
        n += 1;
    }
    assert_eq!(n, 46);
}

/// Where this crate refuses an address the CLI takes, and why.
fn refused_on_purpose(cli: &str) -> Option<&'static str> {
    let (scheme, rest) = cli.split_once("://")?;
    match scheme {
        "fd" => Some("fd:// is a daemon's socket-activation address, not one a client dials"),
        "npipe" => Some("npipe:// is a Windows named pipe"),
        "unix" if !rest.starts_with('/') => {
            Some("a relative socket path would depend on the deployer's working directory")
        }
        "tcp" if rest.contains('/') => {
            Some("a path after host:port is not used by a deployer (Endpoint::parse says so)")
        }
        "tcp" if rest.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_err()) => {
            Some("a port over 65535: the CLI takes the text and fails to connect")
        }
        _ => None,
    }
}

#[test]
fn docker_cli_host_cases_read_as_the_cli_reads_them() {
    let mut differences = Vec::new();
    let mut n = 0;
    for row in rows(include_str!("upstream/hosts.tsv")) {
        let [at, _test, verdict, address, cli] = row[..] else { panic!("a malformed row {row:?}") };
        n += 1;
        let ours = Endpoint::parse(address, None);
        if verdict == "invalid" {
            assert!(ours.is_err(), "hosts_test.go line {at}: {address:?} was accepted as {ours:?}");
            continue;
        }
        if let Some(why) = refused_on_purpose(cli) {
            assert!(ours.is_err(), "hosts_test.go line {at}: {address:?}");
            differences.push(format!("line {at} {address:?}: {why}"));
            continue;
        }
        let ours = ours.unwrap_or_else(|e| panic!("hosts_test.go line {at}: {e}"));
        let expected = match cli.split_once("://") {
            Some(("unix", path)) => Endpoint::Unix(path.into()),
            Some(("tcp", address)) => Endpoint::Tcp { address: address.to_owned(), tls: None },
            _ => panic!("hosts_test.go line {at}: {cli:?}"),
        };
        assert_eq!(ours, expected, "hosts_test.go line {at}: {address:?}");
    }
    assert_eq!(n, 48);
    assert_eq!(differences.len(), 15, "{differences:#?}");
    // With TLS the default port is 2376, as ParseHost(true, …) has it.
    let tls = TlsFiles { ca: "/c".into(), cert: "/c".into(), key: "/c".into() };
    let e = Endpoint::parse("tcp://host:", Some(tls)).unwrap();
    assert!(matches!(e, Endpoint::Tcp { address, .. } if address == "host:2376"));
}

/// What the installed docker CLI makes of `args` without a daemon: its
/// first line of error output.
fn docker_cli(env: &[(&str, &str)], args: &[&str]) -> String {
    let out = std::process::Command::new("docker")
        .envs(env.iter().copied())
        .env("DOCKER_CONFIG", std::env::temp_dir().join("deployer-no-docker-config"))
        .args(args)
        .output()
        .expect("the docker CLI runs (install docker.io)");
    let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    text.lines().find(|l| !l.trim().is_empty()).unwrap_or("").to_owned()
}

#[test]
fn the_installed_docker_cli_takes_and_refuses_the_same_image_names() {
    let mut names: Vec<String> = Vec::new();
    for row in rows(include_str!("upstream/normalize.tsv")) {
        names.push(row[4].to_owned());
    }
    for row in rows(include_str!("upstream/reference.tsv")) {
        names.push(row[6].to_owned());
    }
    names.extend(["Foo/bar", "index.docker.io/debian", "a__b/c", "a___b", "reg.io:port/app", "x:-t"].map(String::from));
    names.retain(|n| !n.is_empty() && !n.starts_with('-'));
    let mut differences = Vec::new();
    for name in &names {
        let answer = docker_cli(&[], &["--host", "unix:///nonexistent/docker.sock", "pull", "-q", name]);
        let cli_takes = answer.contains("Cannot connect to the Docker daemon");
        // Anything else it says is why it refuses the name (the reference
        // format, the digest, the length, a 64-digit id).
        assert!(!answer.is_empty() && !answer.contains("panic"), "{name:?}: the CLI said {answer:?}");
        let ours = ImageRef::parse(name).is_ok();
        if ours != cli_takes {
            differences
                .push(format!("{name:?}: the CLI {} it ({answer})", if cli_takes { "takes" } else { "refuses" }));
        }
    }
    // The one difference: the CLI (it links crypto/sha512) takes sha512
    // digests, which reference_test.go line 101 says the package refuses by
    // default; this crate pins images by the sha256 digests registries
    // report, and refuses others.
    assert_eq!(differences.len(), 1, "{differences:#?}");
    assert!(differences[0].contains("@sha512:"), "{differences:#?}");
}

#[test]
fn the_installed_docker_cli_reads_docker_host_as_this_crate_does() {
    let mut checked = 0;
    for row in rows(include_str!("upstream/hosts.tsv")) {
        let address = row[3];
        // Only addresses that need no name lookup (no network here), and
        // none the CLI crashes on (it panics on fd:// and npipe://).
        // (0.0.0.1 is no loopback address: this machine's network answers it.)
        let local = ["localhost", "127.", "[::1]", "[0:0"].iter().any(|h| address.contains(h))
            || address.trim_start().starts_with(':')
            || address.trim_start().starts_with("tcp://:")
            || address.trim() == "tcp://"
            || row[2] == "invalid";
        if !local || address.contains("fd://") || address.contains("npipe://") || address.trim().is_empty() {
            continue;
        }
        let answer = docker_cli(&[("DOCKER_HOST", address)], &["version", "--format", "{{.Server.Version}}"]);
        let dialled = answer
            .split_once("Cannot connect to the Docker daemon at ")
            .map(|(_, rest)| rest.trim_end_matches(". Is the docker daemon running?").to_owned())
            .or_else(|| {
                answer.split_once("Get \"http://").map(|(_, r)| format!("tcp://{}", r.split('/').next().unwrap_or("")))
            });
        let ours = Endpoint::parse(address, None);
        match (dialled, ours) {
            (Some(cli), Ok(Endpoint::Tcp { address: a, .. })) => assert_eq!(cli, format!("tcp://{a}"), "{address:?}"),
            (Some(cli), Ok(Endpoint::Unix(p))) => assert_eq!(cli, format!("unix://{}", p.display()), "{address:?}"),
            (Some(cli), Err(e)) => {
                assert!(refused_on_purpose(&cli).is_some(), "{address:?}: the CLI dials {cli}, this crate refuses: {e}")
            }
            (None, Err(_)) => {}
            (None, Ok(e)) => panic!("{address:?}: the CLI refuses it ({answer}), this crate reads {e:?}"),
            (Some(cli), Ok(e)) => panic!("{address:?}: the CLI dials {cli}, this crate reads {e:?}"),
        }
        checked += 1;
    }
    // Of the 48 cases: those that need no name lookup and do not crash the CLI.
    assert_eq!(checked, 26, "the addresses checked against the CLI");
}
