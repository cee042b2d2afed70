//! Each flavour's whole pipeline, built from the command line the way the
//! `deployer` binary builds it, without any network: GitHub's API address
//! accepts connections and never answers, Docker's socket does not exist.
//! The diagram's static shape (every repository, service, pull and SSH job
//! present before anything is read) and the first step's statistics are
//! checked.

use std::path::{Path, PathBuf};
use std::process::Command;

use deployer_core::analysis::Expanded;
use deployer_core::Engine;
use deployer_examples::deployer::cli::{build, command, Mode};
use deployer_examples::deployer::flavours;

fn work(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("deployer-flavours-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An App key, a webhook secret and a Slack URL file in `dir`.
fn secrets(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let key = dir.join("app.pem");
    let out = Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
        .arg(&key)
        .output()
        .expect("openssl runs (scripts/test installs it)");
    assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(dir.join("webhook"), "a webhook secret\n").unwrap();
    std::fs::write(dir.join("slack"), "https://hooks.slack.com/services/T0/B0/XXXX\n").unwrap();
    (key, dir.join("webhook"), dir.join("slack"))
}

/// The full deployer's command line for `flavour`, with an App, webhook
/// secret and Slack URL made in `dir`, GitHub at `silent`, no Docker.
fn full_args(flavour: &str, dir: &Path, silent: &str) -> Vec<String> {
    let (key, webhook, slack) = secrets(dir);
    let p = |p: &Path| p.display().to_string();
    vec![
        "deployer".to_owned(),
        format!("--flavour={flavour}"),
        format!("--state-dir={}", p(&dir.join("state"))),
        "--docker=unix:///nonexistent/docker.sock".into(),
        format!("--github-api={silent}"),
        "--github-app-id=1".into(),
        format!("--github-private-key-file={}", p(&key)),
        format!("--github-webhook-secret-file={}", p(&webhook)),
        format!("--slack={}", p(&slack)),
        "--albatross-socket=/nonexistent/albatross.sock".into(),
    ]
}

/// (boxes in the diagram as first drawn, boxes with every repository's
/// builds expanded, the expanded summary, stats after one step).
async fn shape(flavour: &str, silent: &str) -> (usize, usize, String, deployer_core::analysis::Stats) {
    let args = full_args(flavour, &work(flavour), silent);
    let m = command(Mode::Full).try_get_matches_from(args).unwrap();
    let deployer = build(Mode::Full, &m).unwrap_or_else(|e| panic!("{flavour}: {}", e.message()));
    let engine = Engine::new(deployer.pipeline.clone());
    let boxes = engine.diagram(&Expanded::none()).boxes.len();
    // The details link of each repository's check opens its builds.
    let all =
        Expanded::from_pairs(deployer.flavour.repos.iter().map(|r| ("repo", format!("{}-builds", r.full_name()))));
    let expanded = engine.diagram(&all);
    let summary = expanded.summary();
    engine.step();
    (boxes, expanded.boxes.len(), summary, engine.stats())
}

/// A TCP listener that accepts and never answers (GitHub unreachable in a
/// way that keeps every read pending).
fn silent_api() -> (std::net::TcpListener, String) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    (l, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_flavour_draws_its_whole_table_before_anything_is_read() {
    let (_listener, silent) = silent_api();
    for name in flavours::NAMES {
        let flavour = flavours::by_name(name).unwrap();
        let (boxes, expanded, summary, stats) = shape(name, &silent).await;
        eprintln!("{name}: {boxes} boxes, {stats:?}");
        // Every repository's group and every service's update is drawn.
        for r in &flavour.repos {
            assert!(summary.contains(&format!("{}:", r.full_name())), "{name}: no box for {}", r.full_name());
            for d in &r.images {
                for x in &d.deployments {
                    assert!(summary.contains(&format!("docker manifest push {}:", x.target)), "{name}: {}", x.target);
                    for s in &x.services {
                        assert!(summary.contains(&format!("docker service {}:", s.name)), "{name}: {}", s.name);
                    }
                }
            }
            for u in &r.unikernels {
                for (_, unikernel) in &u.deployments {
                    assert!(summary.contains(&format!("albatross {unikernel}:")), "{name}: {unikernel}");
                }
            }
        }
        for p in &flavour.pulls {
            assert!(summary.contains(&format!("docker pull {}:", p.tag)), "{name}: {}", p.tag);
        }
        for j in &flavour.ssh_jobs {
            assert!(summary.contains(&format!(": {}:", j.key)), "{name}: ssh {}", j.key);
        }
        // Nothing has a value yet but the pinned versions (none): GitHub
        // has not answered. What runs are
        // the reads (the access check, each repository's refs, each deploy
        // branch's head, each service's drift monitor, the heads build
        // arguments come from) and the scheduled pulls and SSH jobs, which
        // need nothing upstream; everything else waits on them.
        let running = 1
            + flavour.repos.len()
            // each deploy branch's head, and its protection (does it require the check?)
            + 2 * flavour.repos.iter().map(|r| r.deploy_branches().len()).sum::<usize>()
            + flavour
                .repos
                .iter()
                .flat_map(|r| &r.images)
                .flat_map(|d| &d.deployments)
                .map(|x| x.services.len())
                .sum::<usize>()
            + flavour.repos.iter().flat_map(|r| &r.images).flat_map(|d| &d.extra_args).count()
            + 2 * flavour.pulls.len()
            + flavour.ssh_jobs.len();
        assert_eq!(
            (stats.ok, stats.failed, stats.waiting_for_confirmation, stats.running as usize),
            (1, 0, 0, running),
            "{name}: {stats:?}\n{summary}"
        );
        assert!(stats.blocked > 0, "{name}: {stats:?}");
        assert_eq!(expanded, expected_boxes(&flavour, true), "{name}: {expanded} boxes\n{summary}");
        assert_eq!(boxes, expected_boxes(&flavour, false), "{name}: {boxes} boxes, collapsed");
    }
}

/// The boxes a flavour's table should give, counted from the table: the
/// access check; per repository its group, and its deployability check
/// (refs, the per-ref cluster, fetch, one build per image and architecture
/// and per unikernel, the check — or, collapsed, the refs and a `+` box); per
/// deploy branch a head, a fetch and whether its protection requires the
/// check; per
/// deployment a build per architecture and the manifest, and per service
/// the update, its drift monitor, the GitHub deployment record and the
/// Slack notice; per unikernel deployed a build, extract, read, albatross
/// deploy and notice; a box per extra build argument; per scheduled pull
/// the pull, the update and its drift monitor; one per SSH job; one for the
/// versions admins pinned.
fn expected_boxes(f: &deployer_examples::deployer::spec::Flavour, expanded: bool) -> usize {
    let mut n = 1;
    for r in &f.repos {
        let archs: usize = r.images.iter().map(|d| d.archs.len()).sum();
        // Collapsed, the check's refs and one `+` box.
        n += if expanded { 1 + 4 + archs + r.unikernels.len() } else { 1 + 2 };
        n += 3 * r.deploy_branches().len();
        for d in &r.images {
            n += d.extra_args.len();
            for x in &d.deployments {
                n += d.archs.len() + 1 + 4 * x.services.len();
            }
        }
        n += r.unikernels.iter().map(|u| 5 * u.deployments.len()).sum::<usize>();
    }
    // The versions admins pinned ("deploy this version again"): one box.
    let pins = f.repos.iter().flat_map(|r| &r.images).flat_map(|d| &d.deployments).any(|x| !x.services.is_empty());
    n + 3 * f.pulls.len() + f.ssh_jobs.len() + usize::from(pins)
}

#[tokio::test]
async fn bad_flags_are_one_clear_line_each() {
    let dir = work("bad-flags");
    let state = format!("--state-dir={}", dir.join("state").display());
    let cases: [(&[&str], &str); 7] = [
        (&["--confirm=sometimes"], "--confirm \"sometimes\": not a level"),
        (&["--listen=localhost"], "--listen \"localhost\": not an address"),
        (&["--github-app-id=12"], "--github-app-id needs --github-private-key-file"),
        (&["--github-app-id=x", "--github-private-key-file=/nonexistent"], "--github-app-id \"x\": not a number"),
        (&["--slack=/nonexistent/slack"], "--slack /nonexistent/slack: No such file"),
        (&["--registry-auth=docker.io"], "expected REGISTRY=USER:FILE"),
        (&["--albatross-server-ca=/etc/hostname"], "--albatross-client-ca and --albatross-client-ca-key go together"),
    ];
    for (flags, expected) in cases {
        let mut args = vec!["deployer", "--flavour=tarides", &state, "--docker=unix:///nonexistent.sock"];
        args.extend_from_slice(flags);
        let m = command(Mode::Full).try_get_matches_from(&args).unwrap();
        let err = build(Mode::Full, &m).err().unwrap_or_else(|| panic!("{flags:?} was accepted"));
        assert!(err.message().contains(expected), "{flags:?}: {}", err.message());
        assert!(!err.message().contains('\n'), "{flags:?}: one line: {}", err.message());
    }
    // An unknown flavour is refused by the parser, naming the choices.
    let e = command(Mode::Full).try_get_matches_from(["deployer", "--flavour=acme"]).unwrap_err().to_string();
    assert!(e.contains("acme") && e.contains("tarides"), "{e}");
    // deployer-local: an unknown repository of the flavour.
    let m = command(Mode::Local)
        .try_get_matches_from(["deployer-local", "--flavour=ocaml", &state, "--docker=unix:///x.sock", "acme/widget"])
        .unwrap();
    let err = build(Mode::Local, &m).err().expect("refused");
    assert!(err.message().contains("acme/widget is not a repository of the ocaml flavour"), "{}", err.message());
}

#[test]
fn the_services_list_is_the_table() {
    let md = deployer_examples::deployer::services::markdown(&flavours::ocaml());
    assert!(md.contains(
        "| ocaml/ocaml.org | `main` | `ocurrent/v3.ocaml.org-server:live` | `infra_www1` | v3b.ocaml.org | ocaml.org |"
    ));
    assert!(md.contains("`chocobozzz/peertube:production-bookworm` | `infra_peertube` | watch.ocaml.org"));
    assert!(md.contains("`tarsnap` on root@watch.ocaml.org every 30 days"));
    let md = deployer_examples::deployer::services::markdown(&flavours::mirage());
    assert!(
        md.contains("| mirage/mirage-www | `master` | hvt | `www` |") && md.contains("| xen | (build only) |"),
        "{md}"
    );
    for name in flavours::NAMES {
        flavours::by_name(name).unwrap().check().unwrap_or_else(|e| panic!("{name}: {}", e.message()));
    }
}

/// Security issue 6: a deployer served under `--web-url`'s name answers to
/// that name (webhooks included), not only to the flavour's default; and
/// without a login nobody acts by being local (the admin token does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_site_answers_to_the_web_url_and_needs_the_admin_token() {
    use tower::ServiceExt;
    let (_listener, silent) = silent_api();
    let dir = work("web-url");
    let (_, webhook, _) = secrets(&dir);
    let args = vec![
        "deployer".to_owned(),
        "--flavour=tarides".into(),
        format!("--state-dir={}", dir.join("state").display()),
        "--docker=unix:///nonexistent/docker.sock".into(),
        format!("--github-api={silent}"),
        format!("--github-webhook-secret-file={}", webhook.display()),
        "--web-url=https://deployer.internal.example:8443/".into(),
        "--trust-proxy=127.0.0.1=x-real-ip".into(),
    ];
    let m = command(Mode::Full).try_get_matches_from(args).unwrap();
    let deployer = build(Mode::Full, &m).unwrap_or_else(|e| panic!("{}", e.message()));
    let engine = Engine::new(deployer.pipeline.clone());
    let app = deployer.site(engine.handle()).router();
    let peer: std::net::SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let send = |method: &str, path: &str, host: &str| {
        let mut req = axum::http::Request::builder().method(method).uri(path).header("host", host);
        if method == "POST" {
            req = req.header("x-hub-signature-256", format!("sha256={}", "0".repeat(64))).header("content-length", "2");
        }
        let mut req = req.body(axum::body::Body::from(if method == "POST" { "{}" } else { "" })).unwrap();
        req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
        let app = app.clone();
        async move { app.oneshot(req).await.unwrap().status().as_u16() }
    };
    assert_eq!(send("GET", "/", "deployer.internal.example:8443").await, 200);
    // A webhook reaches its handler (401: the signature is wrong), not 421.
    assert_eq!(send("POST", "/webhooks/github", "deployer.internal.example").await, 401);
    assert_eq!(send("GET", "/", "evil.example").await, 421);
    // The confirmation form is refused to a loopback client without the token.
    assert_eq!(send("POST", "/set/confirm", "127.0.0.1:8080").await, 403);
    assert!(dir.join("state/web-admin-token").exists(), "the token file is made");
    // A bad --web-url or --trust-proxy is one clear line.
    for (flag, want) in [("--web-url=deployer.example", "--web-url"), ("--trust-proxy=1.2.3.4", "--trust-proxy")] {
        let args = vec![
            "deployer".to_owned(),
            "--flavour=tarides".into(),
            flag.into(),
            format!("--state-dir={}", dir.join("state2").display()),
            "--docker=unix:///nonexistent/docker.sock".into(),
            format!("--github-api={silent}"),
        ];
        let m = command(Mode::Full).try_get_matches_from(args).unwrap();
        let e = build(Mode::Full, &m).err().unwrap_or_else(|| panic!("{flag} accepted"));
        assert!(e.message().contains(want), "{flag}: {}", e.message());
    }
}

/// Flavours issue 5: services of one name on two hosts (`infra_opam_live`
/// on two opam hosts) or sharing one URI (`infra_www1`/`infra_www2` on
/// `ocaml.org`) must not put two values on one key in one step: each
/// service's Slack notice and GitHub deployment record has a key of its own.
#[test]
fn every_service_notice_and_deployment_record_has_its_own_key() {
    use deployer_examples::deployer::pipeline::{environments, notice_key};
    for name in flavours::NAMES {
        let flavour = flavours::by_name(name).unwrap();
        let services: Vec<(String, String)> = flavour
            .repos
            .iter()
            .flat_map(|r| r.images.iter())
            .flat_map(|d| d.deployments.iter())
            .flat_map(|x| x.services.iter())
            .map(|s| (s.host.clone(), s.name.clone()))
            .collect();
        let envs = environments(&flavour);
        let mut seen_env = std::collections::BTreeSet::new();
        let mut seen_notice = std::collections::BTreeSet::new();
        for (host, service) in &services {
            let env = &envs[&(host.clone(), service.clone())];
            assert!(seen_env.insert(env.clone()), "{name}: two services record deployments to {env:?}");
            let key = notice_key(host, service);
            assert!(seen_notice.insert(key.clone()), "{name}: two services post Slack notices as {key:?}");
        }
    }
    let ocaml = environments(&flavours::by_name("ocaml").unwrap());
    let www1 = &ocaml[&("v3b.ocaml.org".to_owned(), "infra_www1".to_owned())];
    assert_eq!(www1, "ocaml.org (infra_www1 on v3b.ocaml.org)");
    let check = &ocaml[&("check.ci.ocaml.org".to_owned(), "infra_opam-health-check".to_owned())];
    assert_eq!(check, "check.ci.ocaml.org", "a URI of one service stays as it is");
}

/// Flavours issue 9 (in part): no box of a flavour's diagram is labelled
/// with an internal name (`map`, `pair`, `+ +`): every box says what it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_box_is_labelled_with_an_internal_name() {
    let (_listener, silent) = silent_api();
    for name in flavours::NAMES {
        let args = full_args(name, &work(&format!("labels-{name}")), &silent);
        let m = command(Mode::Full).try_get_matches_from(args).unwrap();
        let deployer = build(Mode::Full, &m).unwrap_or_else(|e| panic!("{name}: {}", e.message()));
        let engine = Engine::new(deployer.pipeline.clone());
        engine.step();
        let all =
            Expanded::from_pairs(deployer.flavour.repos.iter().map(|r| ("repo", format!("{}-builds", r.full_name()))));
        let diagram = engine.diagram(&all);
        let internal: Vec<&str> = diagram
            .boxes
            .iter()
            .map(|b| b.label.as_str())
            .filter(|l| ["map", "pair", "bind", "+ +", "+", "all", "list_map", "try_map"].contains(l) || l.is_empty())
            .collect();
        assert!(internal.is_empty(), "{name}: boxes labelled {internal:?}");
    }
}

/// Flavours issue 8 (in part): the seed README's `ocurrent-deployer-local`
/// command line works with `deployer-local` (webhooks in local mode, `-v`),
/// and `--confirm none` and `--confirm-auto-release` are read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployer_local_takes_upstreams_command_line() {
    use tower::ServiceExt;
    let (_listener, silent) = silent_api();
    let dir = work("upstream-cli");
    let (_, webhook, _) = secrets(&dir);
    let args = vec![
        "deployer-local".to_owned(),
        "--confirm=harmless".into(),
        "--github-webhook-secret-file".into(),
        webhook.display().to_string(),
        "--flavour".into(),
        "tarides".into(),
        "-v".into(),
        "ocurrent/ocaml-ci".into(),
        format!("--state-dir={}", dir.join("state").display()),
        "--docker=unix:///nonexistent/docker.sock".into(),
        format!("--github-api={silent}"),
        "--confirm-auto-release=90".into(),
    ];
    let m = command(Mode::Local).try_get_matches_from(args).unwrap_or_else(|e| panic!("{e}"));
    let deployer = build(Mode::Local, &m).unwrap_or_else(|e| panic!("{}", e.message()));
    assert_eq!(deployer.ctx.config().confirm(), Some(deployer_core::Level::Harmless));
    assert_eq!(deployer.auto_release, Some(std::time::Duration::from_secs(90)));
    // Its webhook endpoint is there (an unsigned delivery is refused, not 404).
    let engine = Engine::new(deployer.pipeline.clone());
    let app = deployer.site(engine.handle()).router();
    let mut req = axum::http::Request::post("/webhooks/github")
        .header("host", "127.0.0.1:8080")
        .body(axum::body::Body::from("{}"))
        .unwrap();
    req.extensions_mut().insert(axum::extract::ConnectInfo("127.0.0.1:1".parse::<std::net::SocketAddr>().unwrap()));
    assert_eq!(app.oneshot(req).await.unwrap().status().as_u16(), 401);
    let args = vec![
        "deployer-local".to_owned(),
        "--confirm".into(),
        "none".into(),
        "--flavour=tarides".into(),
        format!("--state-dir={}", dir.join("state2").display()),
        "--docker=unix:///nonexistent/docker.sock".into(),
        format!("--github-api={silent}"),
    ];
    let m = command(Mode::Local).try_get_matches_from(args).unwrap();
    let deployer = build(Mode::Local, &m).unwrap_or_else(|e| panic!("{}", e.message()));
    assert_eq!(deployer.ctx.config().confirm(), None);
}

/// Flavours issue 9: with GitHub unreachable (connections refused), the
/// App-access box fails itself (it is green only for a reading that found
/// every repository), each deploy branch's "requires deployability" box
/// fails saying its protection could not be read, and no unnamed box fails
/// in their place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_github_unreachable_the_access_and_protection_boxes_fail_themselves() {
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    }; // closed: every connection is refused
    let args = full_args("tarides", &work("unreachable"), &refused);
    let m = command(Mode::Full).try_get_matches_from(args).unwrap();
    let deployer = build(Mode::Full, &m).unwrap_or_else(|e| panic!("{}", e.message()));
    let engine = Engine::new(deployer.pipeline.clone());
    let failed = |label: &str| {
        let d = engine.diagram(&Expanded::none());
        let b: Vec<_> = d.boxes.iter().filter(|b| b.label == label).cloned().collect();
        (!b.is_empty() && b.iter().all(|b| b.state == Some(deployer_core::NodeState::Failed))).then_some(b)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let access = loop {
        engine.step();
        if let (Some(a), Some(_)) = (failed("GitHub App repository access"), failed("live requires deployability")) {
            break a;
        }
        assert!(std::time::Instant::now() < deadline, "{}", engine.diagram(&Expanded::none()).summary());
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(access[0].message.is_some(), "{access:?}");
    let d = engine.diagram(&Expanded::none());
    let live = d.boxes.iter().find(|b| b.label == "live requires deployability").unwrap();
    let why = live.message.clone().unwrap_or_default();
    assert!(why.contains("could not be read") || why.contains("GitHub"), "{why}");
    let unnamed: Vec<String> = d
        .boxes
        .iter()
        .filter(|b| b.state == Some(deployer_core::NodeState::Failed))
        .filter(|b| ["map", "try_map", "pair", ""].contains(&b.label.as_str()))
        .map(|b| format!("{b:?}"))
        .collect();
    assert!(unnamed.is_empty(), "{unnamed:?}");
    // Every deploy branch has its box.
    for r in &deployer.flavour.repos {
        for branch in r.deploy_branches() {
            let label = format!("{branch} requires deployability");
            assert!(d.boxes.iter().any(|b| b.label == label), "{}: {label}", r.full_name());
        }
    }
}
