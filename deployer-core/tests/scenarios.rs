//! OCurrent's pipeline scenarios (test/test.ml), restated: the same
//! pipelines, run through the real engine, caches and store with a plugin of
//! fake jobs (`support`), stepped one evaluation at a time. The diagram is
//! checked after every step and the statistics where OCurrent checks them
//! (and at more steps). Expected diagrams follow OCurrent's golden files
//! (test/expected/*.dot), written in `Diagram::summary` form.

mod support;

use std::sync::Arc;

use deployer_core::{with_context, ActiveState, Config, Current, Level, Output, Source, Var};
use support::{stats, Driver, Fake};

const HEAD: &str = "
    current-test: ok
    choose pipeline: ok
    head: ok
    current-test -> choose pipeline
    choose pipeline -> head";

fn expect(lines: &str) -> String {
    format!("{HEAD}\n{lines}")
}

/// `commit |> fetch |> build |> test`.
fn v1(fake: &Fake) -> Current<()> {
    let head = Var::new("head", "123".to_string());
    fake.test(&fake.build("build", &fake.fetch(&head.current())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_fetch_build_test() {
    let fake = Arc::new(Fake::new("v1", Config::default()));
    let f = fake.clone();
    let mut d = Driver::new(move || v1(&f));
    let edges = "head -> fetch\nfetch -> build\nbuild -> docker run make test";
    d.step_with_stats(
        &expect(&format!("fetch: running\nbuild: blocked\ndocker run make test: blocked\n{edges}")),
        stats(3, 0, 1, 0, 0, 2),
    )
    .await;
    fake.complete("fetch 123", Ok("src-123")).await;
    d.step_with_stats(
        &expect(&format!("fetch: ok\nbuild: running\ndocker run make test: blocked\n{edges}")),
        stats(4, 0, 1, 0, 0, 1),
    )
    .await;
    fake.complete("build src-123", Ok("image-src-123")).await;
    d.step_with_stats(
        &expect(&format!("fetch: ok\nbuild: ok\ndocker run make test: running\n{edges}")),
        stats(5, 0, 1, 0, 0, 0),
    )
    .await;
    fake.complete("docker run make test on image-src-123", Ok("")).await;
    d.step_with_stats(
        &expect(&format!("fetch: ok\nbuild: ok\ndocker run make test: ok\n{edges}")),
        stats(6, 0, 0, 0, 0, 0),
    )
    .await;
    assert_eq!(d.engine.output(), Output::Ok(()));
    // Each job ran once, and left a history row saying what it did.
    assert_eq!(fake.control.runs("fetch 123"), 1);
    let history = fake.ctx.store.history(Default::default()).await.unwrap();
    let mut described: Vec<&str> = history.rows.iter().map(|r| r.description.as_str()).collect();
    described.sort();
    assert_eq!(described, ["build src-123", "docker run make test on image-src-123", "fetch 123"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1c_cancelling_the_test() {
    let fake = Arc::new(Fake::new("v1c", Config::default()));
    let f = fake.clone();
    let mut d = Driver::new(move || v1(&f));
    let edges = "head -> fetch\nfetch -> build\nbuild -> docker run make test";
    d.step(&expect(&format!("fetch: running\nbuild: blocked\ndocker run make test: blocked\n{edges}"))).await;
    fake.complete("fetch 123", Ok("src-123")).await;
    d.step(&expect(&format!("fetch: ok\nbuild: running\ndocker run make test: blocked\n{edges}"))).await;
    fake.complete("build src-123", Ok("image-src-123")).await;
    d.step(&expect(&format!("fetch: ok\nbuild: ok\ndocker run make test: running\n{edges}"))).await;
    fake.cancel("docker run make test on image-src-123");
    d.step_with_stats(
        &expect(&format!("fetch: ok\nbuild: ok\ndocker run make test: failed\n{edges}")),
        stats(5, 0, 0, 0, 1, 0),
    )
    .await;
    // The error reads "Cancelled"; the reason is in the job's log.
    let e = d.engine.output().err().cloned().expect("failed");
    assert_eq!(e.message(), "Cancelled");
    assert_eq!(e.kind(), deployer_core::ErrorKind::Cancelled);
    let row = fake.ctx.store.history(Default::default()).await.unwrap().rows.remove(0);
    assert_eq!(row.outcome, "Cancelled");
    let (log, _) = fake.ctx.jobs.read_log(&row.job_id, 0, 1 << 20).unwrap();
    let log = String::from_utf8(log).unwrap();
    assert!(log.contains("Cancelling: Cancelled by user"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_gate_and_push_held_by_confirmation() {
    let fake = Arc::new(Fake::new("v2", Config::new(Some(Level::Dangerous))));
    let f = fake.clone();
    let mut d = Driver::new(move || {
        let head = Var::new("head", "123".to_string());
        let bin = f.build("build", &f.fetch(&head.current()));
        f.push("foo/bar", &bin.gate(&f.test(&bin)))
    });
    let edges = "
        head -> fetch
        fetch -> build
        build -> docker run make test
        build -> (gate)
        docker run make test -.-> (gate)
        (gate) -> docker push foo/bar";
    let diagram = |fetch, build, test, gate, push| {
        expect(&format!(
            "fetch: {fetch}\nbuild: {build}\ndocker run make test: {test}\n(gate): {gate}\ndocker push foo/bar: {push}\n{edges}"
        ))
    };
    d.step(&diagram("running", "blocked", "blocked", "blocked", "blocked")).await;
    fake.complete("fetch 123", Ok("src-123")).await;
    d.step(&diagram("ok", "running", "blocked", "blocked", "blocked")).await;
    fake.complete("build src-123", Ok("image-src-123")).await;
    d.step(&diagram("ok", "ok", "running", "blocked", "blocked")).await;
    fake.complete("docker run make test on image-src-123", Ok("")).await;
    // The push waits for confirmation from the step that asks for it: it is
    // never shown running before that.
    d.step_with_stats(&diagram("ok", "ok", "ok", "ok", "waiting"), stats(6, 0, 0, 1, 0, 0)).await;
    fake.ctx.config().set_confirm(None);
    d.step_with_stats(&diagram("ok", "ok", "ok", "ok", "running"), stats(6, 0, 1, 0, 0, 0)).await;
    fake.complete("push image-src-123 as foo/bar", Ok("pushed")).await;
    d.step_with_stats(&diagram("ok", "ok", "ok", "ok", "ok"), stats(7, 0, 0, 0, 0, 0)).await;
    assert_eq!(d.engine.output(), Output::Ok("pushed".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_three_platforms_one_failure_blocks_every_deploy() {
    let fake = Arc::new(Fake::new("v3", Config::default()));
    let f = fake.clone();
    let platforms = ["lin", "mac", "win"];
    let mut d = Driver::new(move || {
        let head = Var::new("head", "123".to_string());
        let src = f.fetch(&head.current());
        let binaries: Vec<(&'static str, Current<String>)> = platforms
            .iter()
            .map(|&p| (p, f.build(&format!("build-{p}"), &src.map(move |s| format!("{p}-{s}")))))
            .collect();
        let tests = Current::all(binaries.iter().map(|(_, b)| f.test(b)));
        Current::all(binaries.iter().map(|(p, b)| f.push(&format!("foo/{p}"), &b.gate(&tests.ignore_value()))))
    });
    let mut edges = String::from("head -> fetch\n");
    for p in platforms {
        edges.push_str(&format!("fetch -> build-{p}\nbuild-{p} -> docker run make test\nbuild-{p} -> (gate)\n"));
        edges.push_str("docker run make test -.-> (gate)\n".repeat(3).as_str());
        edges.push_str(&format!("(gate) -> docker push foo/{p}\n"));
    }
    let diagram = |builds: [&str; 3], tests: [&str; 3]| {
        let mut boxes = String::from("fetch: ok\n");
        for (i, p) in platforms.iter().enumerate() {
            boxes.push_str(&format!("build-{p}: {}\ndocker run make test: {}\n", builds[i], tests[i]));
            boxes.push_str(&format!("(gate): blocked\ndocker push foo/{p}: blocked\n"));
        }
        expect(&format!("{boxes}{edges}"))
    };
    d.step(&expect(&format!(
        "fetch: running\n{}{edges}",
        platforms
            .iter()
            .map(|p| format!(
                "build-{p}: blocked\ndocker run make test: blocked\n(gate): blocked\ndocker push foo/{p}: blocked\n"
            ))
            .collect::<String>()
    )))
    .await;
    fake.complete("fetch 123", Ok("src-123")).await;
    d.step_with_stats(&diagram(["running"; 3], ["blocked"; 3]), stats(4, 0, 3, 0, 0, 6)).await;
    for p in platforms {
        fake.complete(&format!("build {p}-src-123"), Ok(&format!("{p}-image-src-123"))).await;
    }
    d.step_with_stats(&diagram(["ok"; 3], ["running"; 3]), stats(7, 0, 3, 0, 0, 3)).await;
    fake.complete("docker run make test on lin-image-src-123", Ok("")).await;
    fake.complete("docker run make test on win-image-src-123", Err("Missing DLL")).await;
    // OCurrent's final statistics for v3.
    d.step_with_stats(&diagram(["ok"; 3], ["ok", "running", "failed"]), stats(8, 0, 1, 0, 1, 3)).await;
    let e = d.engine.output().err().cloned().expect("failed");
    assert_eq!(e.message(), "Missing DLL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_a_named_bind_decides_the_rest() {
    for (commit, good) in [("123", true), ("999", false)] {
        let fake = Arc::new(Fake::new("v4", Config::default()));
        let f = fake.clone();
        let mut d = Driver::new(move || {
            let head = Var::new("head", commit.to_string());
            let src = f.fetch(&head.current());
            let f = f.clone();
            src.bind("custom-build", move |src| {
                if src == "src-123" {
                    f.test(&f.build("build", &Current::constant(src.clone())))
                } else {
                    Current::fail("Wrong hash!")
                }
            })
        });
        // Before the bind runs, only what leads up to it is known.
        let edges = "head -> fetch\nfetch -> custom-build";
        d.step(&expect(&format!("fetch: running\ncustom-build: blocked\n{edges}"))).await;
        fake.complete(&format!("fetch {commit}"), Ok(&format!("src-{commit}"))).await;
        if !good {
            d.step(&expect(&format!("fetch: ok\ncustom-build: ok\n{edges}"))).await;
            assert_eq!(d.engine.output().err().map(|e| e.message().to_owned()).as_deref(), Some("Wrong hash!"));
            continue;
        }
        let edges = format!("{edges}\ncustom-build -> build\nbuild -> docker run make test");
        d.step(&expect(&format!(
            "fetch: ok\ncustom-build: ok\nbuild: running\ndocker run make test: blocked\n{edges}"
        )))
        .await;
        fake.complete("build src-123", Ok("image-src-123")).await;
        d.step(&expect(&format!("fetch: ok\ncustom-build: ok\nbuild: ok\ndocker run make test: running\n{edges}")))
            .await;
        fake.complete("docker run make test on image-src-123", Err("Failed")).await;
        d.step(&expect(&format!("fetch: ok\ncustom-build: ok\nbuild: ok\ndocker run make test: failed\n{edges}")))
            .await;
    }
}

/// opam-repo-ci's shape: build and test, then each rev-dep in a list.
fn v5(fake: &Arc<Fake>, commit: &str) -> Current<()> {
    let head = Var::new("head", commit.to_string());
    let src = fake.fetch(&head.current());
    let ok = fake.test(&fake.build("build", &src));
    let f = fake.clone();
    fake.revdeps(&src).gate(&ok).list_iter(move |dep| f.test(&f.build("build", &f.fetch(&dep))))
}

const V5_EDGES: &str = "
    head -> fetch
    fetch -> build
    build -> docker run make test
    fetch -> get-revdeps
    get-revdeps -> (gate)
    docker run make test -.-> (gate)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_list_iter_over_the_revdeps() {
    let fake = Arc::new(Fake::new("v5", Config::default()));
    let f = fake.clone();
    let mut d = Driver::new(move || v5(&f, "123"));
    let template = |label: &str| {
        format!(
            "{label}: blocked [c0]\nfetch: blocked [c0]\nbuild: blocked [c0]\ndocker run make test: blocked [c0]
            (gate) -> {label}\n{label} -> fetch\nfetch -> build\nbuild -> docker run make test"
        )
    };
    // The list's body is drawn, blocked, before the list is known, and its
    // stages are counted as blocked.
    d.step_with_stats(
        &expect(&format!(
            "fetch: running\nbuild: blocked\ndocker run make test: blocked\nget-revdeps: blocked\n(gate): blocked\n{}{V5_EDGES}",
            template("(each item)")
        )),
        stats(3, 0, 1, 0, 0, 6),
    )
    .await;
    fake.complete("fetch 123", Ok("src-123")).await;
    let list_pending = |build, test, revdeps| {
        expect(&format!(
            "fetch: ok\nbuild: {build}\ndocker run make test: {test}\nget-revdeps: {revdeps}\n(gate): blocked\n{}{V5_EDGES}",
            template("(each item)")
        ))
    };
    d.step(&list_pending("running", "blocked", "running")).await;
    fake.complete("build src-123", Ok("image-src-123")).await;
    d.step(&list_pending("ok", "running", "running")).await;
    fake.complete("docker run make test on image-src-123", Ok("")).await;
    d.step(&list_pending("ok", "ok", "running")).await;
    fake.complete("get-revdeps src-123", Ok("a b")).await;
    let mut branches = String::new();
    for item in ["a", "b"] {
        branches.push_str(&format!(
            "{item}: ok [c0]\nfetch: running [c0]\nbuild: blocked [c0]\ndocker run make test: blocked [c0]
            (gate) -> {item}\n{item} -> fetch\nfetch -> build\nbuild -> docker run make test\n"
        ));
    }
    // OCurrent's final statistics for v5.
    d.step_with_stats(
        &expect(&format!(
            "fetch: ok\nbuild: ok\ndocker run make test: ok\nget-revdeps: ok\n(gate): ok\n{branches}{V5_EDGES}"
        )),
        stats(7, 0, 2, 0, 0, 4),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_nil_the_empty_list_is_blocked() {
    let fake = Arc::new(Fake::new("v5n", Config::default()));
    let f = fake.clone();
    let mut d = Driver::new(move || v5(&f, "456"));
    d.step(&expect(&format!(
        "fetch: running\nbuild: blocked\ndocker run make test: blocked\nget-revdeps: blocked\n(gate): blocked
        (each item): blocked [c0]\nfetch: blocked [c0]\nbuild: blocked [c0]\ndocker run make test: blocked [c0]
        (gate) -> (each item)\n(each item) -> fetch\nfetch -> build\nbuild -> docker run make test{V5_EDGES}"
    )))
    .await;
    let pending = |build, test, revdeps| {
        expect(&format!(
            "fetch: ok\nbuild: {build}\ndocker run make test: {test}\nget-revdeps: {revdeps}\n(gate): blocked
            (each item): blocked [c0]\nfetch: blocked [c0]\nbuild: blocked [c0]\ndocker run make test: blocked [c0]
            (gate) -> (each item)\n(each item) -> fetch\nfetch -> build\nbuild -> docker run make test{V5_EDGES}"
        ))
    };
    fake.complete("fetch 456", Ok("src-456")).await;
    d.step(&pending("running", "blocked", "running")).await;
    fake.complete("build src-456", Ok("image-src-456")).await;
    fake.complete("get-revdeps src-456", Ok("")).await;
    d.step(&pending("ok", "running", "ok")).await;
    fake.complete("docker run make test on image-src-456", Ok("")).await;
    // OCurrent's final statistics for v5-nil: the template's three stages
    // are blocked, and so is the "(empty list)" box.
    d.step_with_stats(
        &expect(&format!(
            "fetch: ok\nbuild: ok\ndocker run make test: ok\nget-revdeps: ok\n(gate): ok
            (empty list): blocked [c0]\nfetch: blocked [c0]\nbuild: blocked [c0]\ndocker run make test: blocked [c0]
            (gate) -> (empty list)\n(empty list) -> fetch\nfetch -> build\nbuild -> docker run make test{V5_EDGES}"
        )),
        stats(7, 0, 0, 0, 0, 3),
    )
    .await;
    assert_eq!(d.engine.output(), Output::Ok(()));
}

fn option_pipeline(fake: &Fake, case: Option<&'static str>) -> Current<()> {
    let head = Var::new("head", "123".to_string());
    let src = fake.fetch(&head.current());
    let analysis = src.bind("analyse", move |_| Current::constant(case.map(str::to_owned)));
    let s = src.clone();
    analysis.option_map(move |linter| s.pair(&linter).bind("lint", |_| Current::constant(()))).ignore_value()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn option_some_and_none() {
    for (case, lint, counts) in
        [(Some("ocamlformat"), "ok", stats(6, 0, 0, 0, 0, 0)), (None, "blocked", stats(5, 0, 0, 0, 0, 1))]
    {
        let fake = Arc::new(Fake::new("option", Config::default()));
        let f = fake.clone();
        let mut d = Driver::new(move || option_pipeline(&f, case));
        // No item box: the body hangs off the option's input, dotted.
        let edges = "head -> fetch\nfetch -> analyse\nanalyse -> lint";
        d.step(&expect(&format!("fetch: running\nanalyse: blocked\nlint: blocked [c0]\n{edges}"))).await;
        assert!(d.engine.diagram(&Default::default()).clusters[0].dotted);
        fake.complete("fetch 123", Ok("src-123")).await;
        d.step_with_stats(&expect(&format!("fetch: ok\nanalyse: ok\nlint: {lint} [c0]\n{edges}")), counts).await;
        assert_eq!(d.engine.output(), Output::Ok(()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_hidden() {
    let mut d = Driver::new(|| {
        Current::<()>::active(ActiveState::Ready).state_hidden().bind("set-status", |s| Current::constant(s.clone()))
    });
    d.step(
        "current-test: ok\nchoose pipeline: ok\nset-status: ok
        current-test -> choose pipeline\nchoose pipeline -> set-status",
    )
    .await;
    assert_eq!(d.engine.output(), Output::Ok(Output::Active(ActiveState::Ready)));
}

/// A box named `label` showing its input's state (OCurrent's `show`).
fn show(label: &str, x: &Current<Vec<()>>) -> Current<()> {
    x.primitive(label, |_, _| Source::new(Output::Ok(())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pair_error_precedence_and_statistics() {
    let mut d = Driver::new(|| {
        let ok = Current::constant(());
        let pending: Current<()> = Current::active(ActiveState::Running);
        let failed: Current<()> = Current::fail("failed");
        let check = |name: &str, expected: Output<()>, x: Current<Vec<()>>| {
            show(name, &x).state().map(move |s| {
                let text = |o: &Output<()>| match o {
                    Output::Err(e) => format!("error {}", e.message()),
                    other => format!("{other:?}"),
                };
                assert_eq!(text(s), text(&expected));
            })
        };
        let blocked = |m: &str| Output::Err(deployer_core::Error::msg(m));
        Current::all([
            check("Blocked-1", blocked("failed"), Current::all([ok.clone(), pending.clone(), failed.clone()])),
            check("Blocked-2", blocked("failed"), Current::all([failed.clone(), pending.clone(), ok.clone()])),
            check("Blocked-3", Output::Active(ActiveState::Running), Current::all([pending.clone(), ok.clone()])),
        ])
    });
    // The visible `state` boxes are drawn but not counted: OCurrent's ok 2.
    d.step_with_stats(
        "current-test: ok\nchoose pipeline: ok
        Blocked-1: blocked\nstate: ok\nBlocked-2: blocked\nstate: ok\nBlocked-3: blocked\nstate: ok
        current-test -> choose pipeline
        choose pipeline -> Blocked-1\nBlocked-1 -> state
        choose pipeline -> Blocked-2\nBlocked-2 -> state
        choose pipeline -> Blocked-3\nBlocked-3 -> state",
        stats(2, 0, 0, 0, 0, 3),
    )
    .await;
    // The checks inside ran without panicking (a panic would be an error).
    assert!(d.engine.output().is_ok(), "{:?}", d.engine.output());
}

fn label(l: &str) -> Current<()> {
    Current::constant(()).primitive(l, |_, _| Source::new(Output::Ok(())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_boxes_are_drawn_and_evaluated() {
    // As in OCurrent, a and b are built outside the pipeline and are used
    // only as contexts; they must still run and show their state.
    let (a, b) = (label("a"), label("b"));
    let mut d = Driver::new(move || with_context(&a, || with_context(&b, || label("c"))));
    d.step_with_stats(
        "current-test: ok\nchoose pipeline: ok\na: ok\nb: ok\nc: ok
        current-test -> choose pipeline
        choose pipeline -> c\na -> c\nb -> c",
        stats(5, 0, 0, 0, 0, 0),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latch_a_background_pull_keeps_the_old_image_shown() {
    let fake = Arc::new(Fake::new("latch", Config::default()));
    let f = fake.clone();
    let mut d = Driver::new(move || {
        let head = Var::new("head", "123".to_string());
        let base = f.pull("alpine");
        let src = f.fetch(&head.current());
        base.pair(&src).primitive("test", |_, _| Source::new(Output::Ok(())))
    });
    let diagram = |fetch, pull, test| {
        expect(&format!(
            "fetch: {fetch}\ndocker pull alpine: {pull}\ntest: {test}
            head -> fetch\nchoose pipeline -> docker pull alpine\ndocker pull alpine -> test\nfetch -> test"
        ))
    };
    let pull_update = |d: &Driver<()>| {
        let diagram = d.engine.diagram(&Default::default());
        diagram.boxes.iter().find(|b| b.label == "docker pull alpine").unwrap().update
    };
    d.step(&diagram("running", "running", "blocked")).await;
    fake.complete("fetch 123", Ok("src-123")).await;
    fake.complete("docker pull alpine", Ok("alpine:3.10")).await;
    d.step(&diagram("ok", "ok", "ok")).await;
    assert_eq!(pull_update(&d), None);
    // The pull expires: it runs again in the background while the image
    // already pulled stays shown, and "test" keeps using it.
    fake.clock.advance(std::time::Duration::from_secs(2 * 3600));
    d.step(&diagram("ok", "ok", "ok")).await;
    assert_eq!(pull_update(&d), Some(ActiveState::Running));
    fake.complete("docker pull alpine", Ok("alpine:3.11")).await;
    d.step(&diagram("ok", "ok", "ok")).await;
    assert_eq!(pull_update(&d), None);
    assert_eq!(fake.control.runs("docker pull alpine"), 2);
}

#[tokio::test]
async fn all_labelled_messages() {
    let run = |items: Vec<(&str, Current<()>)>| {
        let e = deployer_core::Engine::new(Current::all_labelled(items));
        e.step();
        e.output().err().map(|e| e.message().to_owned())
    };
    let ok = || Current::constant(());
    assert_eq!(run(vec![("Alpine", ok()), ("Debian", ok())]), None);
    assert_eq!(run(vec![("Alpine", Current::fail("apk")), ("Debian", ok())]).as_deref(), Some("Alpine failed: apk"));
    assert_eq!(run(vec![("Alpine", ok()), ("Debian", Current::fail("apt"))]).as_deref(), Some("Debian failed: apt"));
    assert_eq!(
        run(vec![("Alpine", Current::fail("apk")), ("Debian", Current::fail("apt"))]).as_deref(),
        Some("Alpine, Debian failed")
    );
    assert_eq!(
        run(vec![("Alpine", Current::fail("ENOSPACE")), ("Debian", Current::fail("ENOSPACE"))]).as_deref(),
        Some("Alpine, Debian failed: ENOSPACE")
    );
    // Issue 23: `&str` labels and stages of any value type.
    let image = Current::constant("app@sha256:1".to_string());
    let e = deployer_core::Engine::new(Current::all_labelled([("app", image)]));
    e.step();
    assert_eq!(e.output(), deployer_core::Output::Ok(()));
}
