//! OCurrent's pipeline scenarios (test/test.ml), with the diagram checked at
//! each step and the final statistics checked where OCurrent checks them.

mod support;

use deployer_core::{with_context, ActiveState, Config, Current, Engine, Error, Level, NodeState, Output, Stats, Var};
use support::{check_diagram, Fake};

fn head() -> Var<String> {
    Var::new("head", Output::Ok("123".to_string()))
}

fn build(fake: &Fake, src: &Current<String>) -> Current<String> {
    fake.op("build", Level::Average, src).map(|s| s.replace("build ", "image-"))
}

fn test(fake: &Fake, image: &Current<String>) -> Current<()> {
    fake.op("test", Level::Average, image).ignore_value()
}

fn stats(ok: u64, ready: u64, running: u64, waiting: u64, failed: u64, blocked: u64) -> Stats {
    Stats { ok, ready, running, waiting_for_confirmation: waiting, failed, blocked }
}

const V1_EDGES: &str = "
    head -> fetch
    fetch -> build
    build -> test";

const V2_EDGES: &str = "
    head -> fetch
    fetch -> build
    build -> test
    build -> (gate)
    test -.-> (gate)
    (gate) -> push";

#[test]
fn v1_linear_fetch_build_test() {
    let fake = Fake::new(Config::default());
    let head = head();
    let pipeline = test(&fake, &build(&fake, &fake.fetch(&head.current())));
    let engine = Engine::new(pipeline);
    engine.step();
    check_diagram(
        &engine,
        "
        head: ok
        fetch: running
        build: blocked
        test: blocked
        head -> fetch
        fetch -> build
        build -> test",
    );
    fake.complete("fetch 123", Ok("fetch 123"));
    engine.step();
    check_diagram(
        &engine,
        "
        head: ok
        fetch: ok
        build: running
        test: blocked
        head -> fetch
        fetch -> build
        build -> test",
    );
    fake.complete("build src-123", Ok("build src-123"));
    engine.step();
    assert_eq!(fake.pending(), vec!["test image-src-123"]);
    check_diagram(&engine, &format!("head: ok\nfetch: ok\nbuild: ok\ntest: running{V1_EDGES}"));
    fake.complete("test image-src-123", Ok(""));
    engine.step();
    check_diagram(&engine, &format!("head: ok\nfetch: ok\nbuild: ok\ntest: ok{V1_EDGES}"));
    assert_eq!(engine.output(), Output::Ok(()));
    assert_eq!(engine.stats(), stats(4, 0, 0, 0, 0, 0));
    // A new commit re-runs the chain; the old jobs are not started again.
    head.set("456".into());
    engine.step();
    assert_eq!(fake.pending(), vec!["fetch 456"]);
    assert_eq!(fake.starts("fetch 123"), 1);
}

#[test]
fn v2_gate_and_push_held_by_confirmation() {
    let fake = Fake::new(Config::new(Some(Level::Dangerous)));
    let head = head();
    let bin = build(&fake, &fake.fetch(&head.current()));
    let pushed = fake.op("push", Level::Dangerous, &bin.gate(&test(&fake, &bin)));
    let engine = Engine::new(pushed);
    engine.step();
    check_diagram(
        &engine,
        "
        head: ok
        fetch: running
        build: blocked
        test: blocked
        (gate): blocked
        push: blocked
        head -> fetch
        fetch -> build
        build -> test
        build -> (gate)
        test -.-> (gate)
        (gate) -> push",
    );
    fake.complete("fetch 123", Ok("fetch 123"));
    engine.step();
    check_diagram(
        &engine,
        &format!("head: ok\nfetch: ok\nbuild: running\ntest: blocked\n(gate): blocked\npush: blocked{V2_EDGES}"),
    );
    fake.complete("build src-123", Ok("build src-123"));
    engine.step();
    check_diagram(
        &engine,
        &format!("head: ok\nfetch: ok\nbuild: ok\ntest: running\n(gate): blocked\npush: blocked{V2_EDGES}"),
    );
    fake.complete("test image-src-123", Ok(""));
    engine.step();
    check_diagram(
        &engine,
        "
        head: ok
        fetch: ok
        build: ok
        test: ok
        (gate): ok
        push: waiting
        head -> fetch
        fetch -> build
        build -> test
        build -> (gate)
        test -.-> (gate)
        (gate) -> push",
    );
    assert_eq!(engine.stats(), stats(4, 0, 0, 1, 0, 0));
    fake.config.set_confirm(None);
    fake.recheck();
    engine.step();
    assert_eq!(engine.stats(), stats(4, 0, 1, 0, 0, 0));
    check_diagram(&engine, &format!("head: ok\nfetch: ok\nbuild: ok\ntest: ok\n(gate): ok\npush: running{V2_EDGES}"));
    fake.complete("push image-src-123", Ok("pushed"));
    engine.step();
    check_diagram(&engine, &format!("head: ok\nfetch: ok\nbuild: ok\ntest: ok\n(gate): ok\npush: ok{V2_EDGES}"));
    assert_eq!(engine.output(), Output::Ok("pushed".to_string()));
}

#[test]
fn v3_three_platforms_one_failure_blocks_every_deploy() {
    let fake = Fake::new(Config::default());
    let head = head();
    let dockerfile = Current::constant_labelled("Dockerfile", "FROM scratch".to_string());
    let command = Current::constant_labelled("make test", "make test".to_string());
    let src = fake.fetch(&head.current());
    let platforms = ["lin", "mac", "win"];
    // One build per platform, one test per build.
    let builds: Vec<Current<String>> = platforms
        .iter()
        .map(|p| {
            let p = p.to_string();
            let input = src.pair(&dockerfile).map(move |(s, _)| format!("{p}-{s}"));
            fake.op("build", Level::Average, &input).map(|s| s.replace("build ", "image-"))
        })
        .collect();
    let tests = Current::all(
        builds
            .iter()
            .map(|b| fake.op("test", Level::Average, &b.pair(&command).map(|(b, _)| b.clone())).ignore_value()),
    );
    let deploys = Current::all(platforms.iter().zip(&builds).map(|(p, b)| {
        let tag = format!("foo/{p}");
        fake.op("push", Level::Dangerous, &b.gate(&tests.ignore_value()).map(move |i| format!("{i} as {tag}")))
    }));
    let engine = Engine::new(deploys);
    engine.step();
    assert_eq!(engine.stats(), stats(3, 0, 1, 0, 0, 9));
    fake.complete("fetch 123", Ok("fetch 123"));
    engine.step();
    assert_eq!(engine.stats(), stats(4, 0, 3, 0, 0, 6));
    for p in platforms {
        fake.complete(&format!("build {p}-src-123"), Ok(&format!("build {p}-src-123")));
    }
    engine.step();
    assert_eq!(engine.stats(), stats(7, 0, 3, 0, 0, 3));
    fake.complete("test image-lin-src-123", Ok(""));
    fake.complete("test image-win-src-123", Err("Missing DLL"));
    engine.step();
    check_diagram(
        &engine,
        "
        head: ok
        fetch: ok
        Dockerfile: ok
        build: ok
        make test: ok
        test: ok
        build: ok
        test: running
        build: ok
        test: failed
        (gate): blocked
        push: blocked
        (gate): blocked
        push: blocked
        (gate): blocked
        push: blocked
        head -> fetch
        fetch -> build
        Dockerfile -> build
        build -> test
        make test -> test
        fetch -> build
        Dockerfile -> build
        build -> test
        make test -> test
        fetch -> build
        Dockerfile -> build
        build -> test
        make test -> test
        build -> (gate)
        test -.-> (gate)
        test -.-> (gate)
        test -.-> (gate)
        (gate) -> push
        build -> (gate)
        test -.-> (gate)
        test -.-> (gate)
        test -.-> (gate)
        (gate) -> push
        build -> (gate)
        test -.-> (gate)
        test -.-> (gate)
        test -.-> (gate)
        (gate) -> push",
    );
    assert_eq!(engine.stats(), stats(8, 0, 1, 0, 1, 3));
    match engine.output() {
        Output::Err(e) => assert_eq!(e.message(), "Missing DLL"),
        other => panic!("expected the test failure, got {other:?}"),
    }
}

#[test]
fn v4_a_named_bind_decides_the_rest() {
    for (commit, expected) in [("123", "image-src-123"), ("999", "")] {
        let fake = Fake::new(Config::default());
        let head = Var::new("head", Output::Ok(commit.to_string()));
        let src = fake.fetch(&head.current());
        let f = fake.clone();
        let pipeline = src.bind("custom-build", move |src| {
            if src == "src-123" {
                build(&f, &Current::constant(src.clone()))
            } else {
                Current::fail("Wrong hash!")
            }
        });
        let engine = Engine::new(pipeline);
        engine.step();
        // Before the bind runs, only what leads up to it is known.
        check_diagram(
            &engine,
            "
            head: ok
            fetch: running
            custom-build: blocked
            head -> fetch
            fetch -> custom-build",
        );
        fake.complete(&format!("fetch {commit}"), Ok(&format!("fetch {commit}")));
        engine.step();
        if expected.is_empty() {
            check_diagram(
                &engine,
                "
                head: ok
                fetch: ok
                custom-build: ok
                head -> fetch
                fetch -> custom-build",
            );
            let e = engine.output().err().cloned().expect("failed");
            assert_eq!(e.message(), "Wrong hash!");
        } else {
            check_diagram(
                &engine,
                "
                head: ok
                fetch: ok
                custom-build: ok
                build: running
                head -> fetch
                fetch -> custom-build
                custom-build -> build",
            );
            fake.complete("build src-123", Ok("build src-123"));
            engine.step();
            assert_eq!(engine.output(), Output::Ok(expected.to_string()));
        }
    }
}

#[test]
fn v5_list_iter_over_a_changing_list() {
    let fake = Fake::new(Config::default());
    let head = head();
    let revdeps = Var::new("revdeps", Output::Active(ActiveState::Running));
    let src = fake.fetch(&head.current());
    let ok = test(&fake, &build(&fake, &src));
    let f = fake.clone();
    let pipeline = revdeps.current().gate(&ok).list_iter(move |dep| test(&f, &build(&f, &f.fetch(&dep))));
    let engine = Engine::new(pipeline);
    engine.step();
    check_diagram(
        &engine,
        "
        head: ok
        fetch: running
        build: blocked
        test: blocked
        revdeps: running
        (gate): blocked
        (each item): blocked [c0]
        fetch: - [c0]
        build: - [c0]
        test: - [c0]
        head -> fetch
        fetch -> build
        build -> test
        revdeps -> (gate)
        test -.-> (gate)
        (gate) -> (each item)
        (each item) -> fetch
        fetch -> build
        build -> test",
    );
    fake.complete("fetch 123", Ok("fetch 123"));
    engine.step();
    fake.complete("build src-123", Ok("build src-123"));
    engine.step();
    fake.complete("test image-src-123", Ok(""));
    revdeps.set(vec!["a".to_string(), "b".to_string()]);
    engine.step();
    check_diagram(
        &engine,
        "
        head: ok
        fetch: ok
        build: ok
        test: ok
        revdeps: ok
        (gate): ok
        a: ok [c0]
        fetch: running [c0]
        build: blocked [c0]
        test: blocked [c0]
        b: ok [c0]
        fetch: running [c0]
        build: blocked [c0]
        test: blocked [c0]
        head -> fetch
        fetch -> build
        build -> test
        revdeps -> (gate)
        test -.-> (gate)
        (gate) -> a
        a -> fetch
        fetch -> build
        build -> test
        (gate) -> b
        b -> fetch
        fetch -> build
        build -> test",
    );
    assert_eq!(fake.pending(), vec!["fetch a", "fetch b"]);
    // Adding a key starts only that branch; removing one releases only it.
    revdeps.set(vec!["b".to_string(), "c".to_string()]);
    let report = engine.step();
    assert_eq!(fake.pending(), vec!["fetch a", "fetch b", "fetch c"]);
    assert_eq!(fake.starts("fetch b"), 1, "b's branch was not rebuilt");
    // revdeps, the gate, the list node, c's seven new nodes (item, three jobs,
    // three maps) and the list's output: b's branch is not touched.
    assert_eq!(report.recomputed, 11);
    // The empty list.
    revdeps.set(vec![]);
    engine.step();
    check_diagram(
        &engine,
        "
        head: ok
        fetch: ok
        build: ok
        test: ok
        revdeps: ok
        (gate): ok
        (empty list): ok [c0]
        fetch: - [c0]
        build: - [c0]
        test: - [c0]
        head -> fetch
        fetch -> build
        build -> test
        revdeps -> (gate)
        test -.-> (gate)
        (gate) -> (empty list)
        (empty list) -> fetch
        fetch -> build
        build -> test",
    );
    assert_eq!(engine.output(), Output::Ok(()));
    assert_eq!(engine.handle().stats(), stats(5, 0, 0, 0, 0, 0));
}

fn option_pipeline(case: Option<&str>) -> (Fake, Engine<()>) {
    let fake = Fake::new(Config::default());
    let head = head();
    let src = fake.fetch(&head.current());
    let case = case.map(str::to_owned);
    let analysis = src.bind("analyse", move |_| Current::constant(case.clone()));
    let s = src.clone();
    let pipeline =
        analysis.option_map(move |linter| s.pair(&linter).bind("lint", |_| Current::constant(()))).ignore_value();
    (fake, Engine::new(pipeline))
}

#[test]
fn option_some_and_none() {
    let (fake, engine) = option_pipeline(Some("ocamlformat"));
    engine.step();
    fake.complete("fetch 123", Ok("fetch 123"));
    engine.step();
    check_diagram(
        &engine,
        "
        head: ok
        fetch: ok
        analyse: ok
        some: ok [c0]
        lint: ok [c0]
        head -> fetch
        fetch -> analyse
        analyse -> some
        some -> lint",
    );
    assert_eq!(engine.output(), Output::Ok(()));

    let (fake, engine) = option_pipeline(None);
    engine.step();
    fake.complete("fetch 123", Ok("fetch 123"));
    engine.step();
    check_diagram(
        &engine,
        "
        head: ok
        fetch: ok
        analyse: ok
        (empty list): ok [c0]
        lint: - [c0]
        head -> fetch
        fetch -> analyse
        analyse -> (empty list)
        (empty list) -> lint",
    );
    assert!(engine.diagram(&Default::default()).clusters[0].dotted);
    assert_eq!(engine.output(), Output::Ok(()));
}

#[test]
fn state_is_always_ok_and_can_be_hidden() {
    let pending: Current<()> = Current::active(ActiveState::Ready);
    let seen = pending.state_hidden().bind("set-status", |s| Current::constant(s.clone()));
    let engine = Engine::new(seen);
    engine.step();
    assert_eq!(engine.output(), Output::Ok(Output::Active(ActiveState::Ready)));
    check_diagram(&engine, "set-status: ok");

    let failed: Current<u8> = Current::fail("boom");
    let engine = Engine::new(failed.state());
    engine.step();
    match engine.output() {
        Output::Ok(Output::Err(e)) => assert_eq!(e.message(), "boom"),
        other => panic!("unexpected {other:?}"),
    }
    check_diagram(&engine, "state: ok");
}

#[test]
fn pair_error_precedence() {
    let ok = Current::constant(());
    let pending: Current<()> = Current::active(ActiveState::Running);
    let failed: Current<()> = Current::fail("failed");
    let msg = |c: Current<Vec<()>>| {
        let e = Engine::new(c);
        e.step();
        e.output()
    };
    assert_eq!(
        msg(Current::all([ok.clone(), pending.clone(), failed.clone()])).err().map(|e| e.message().to_owned()),
        Some("failed".into())
    );
    assert_eq!(
        msg(Current::all([failed.clone(), pending.clone(), ok.clone()])).err().map(|e| e.message().to_owned()),
        Some("failed".into())
    );
    assert_eq!(msg(Current::all([pending.clone(), ok.clone()])), Output::Active(ActiveState::Running));
    assert_eq!(msg(Current::all([])), Output::Ok(vec![]));
    let e = Engine::new(pending.pair(&failed));
    e.step();
    assert_eq!(e.output().err().map(|e| e.message().to_owned()), Some("failed".into()));
    let e = Engine::new(pending.pair(&Current::<()>::active(ActiveState::Ready)));
    e.step();
    assert_eq!(e.output(), Output::Active(ActiveState::Running));
}

#[test]
fn all_labelled_messages() {
    let run = |items: Vec<(&str, Current<()>)>| {
        let e = Engine::new(Current::all_labelled(items.into_iter().map(|(l, c)| (l.to_string(), c))));
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
}

#[test]
fn with_context_draws_the_context_as_an_input() {
    let fake = Fake::new(Config::default());
    let commit = Var::new("commit", Output::Ok("abc".to_string()));
    let platform = Current::constant_labelled("platform", "x86_64".to_string());
    let pipeline = with_context(&commit.current(), || {
        with_context(&platform, || fake.op("build", Level::Average, &Current::constant("src".to_string())))
    })
    .pair(&commit.current());
    let engine = Engine::new(pipeline);
    engine.step();
    check_diagram(
        &engine,
        "
        commit: ok
        platform: ok
        build: running
        commit -> build
        platform -> build",
    );
}

#[test]
fn a_panic_in_user_code_is_an_error_on_that_node() {
    let input = Var::new("n", Output::Ok(1u32));
    let boom = input.current().map(|n| if *n == 2 { panic!("bad input {n}") } else { *n });
    let shown = boom.map(|n| n + 1);
    let engine = Engine::new(shown);
    engine.step();
    assert_eq!(engine.output(), Output::Ok(2));
    input.set(2);
    engine.step();
    let err = engine.output().err().cloned().expect("an error");
    assert_eq!(err.message(), "panic: bad input 2");
    assert_eq!(err.origin(), Some(boom.id()));
    // The failed map is drawn, as in OCurrent.
    check_diagram(
        &engine,
        "
        n: ok
        map: failed
        n -> map",
    );
    // And the engine carries on.
    input.set(3);
    engine.step();
    assert_eq!(engine.output(), Output::Ok(4));
    let bind_panic = input.current().and_then(|_| -> Current<u32> { panic!("in bind") });
    let engine = Engine::new(bind_panic);
    engine.step();
    assert_eq!(engine.output().err().map(|e| e.message().to_owned()), Some("panic: in bind".into()));
}

#[test]
fn duplicate_keys_in_list_map_are_an_error_on_that_node() {
    let items = Var::new("items", Output::Ok(vec!["a".to_string(), "b".to_string(), "a".to_string()]));
    let mapped = items.current().list_map(|x| x.map(|s| s.to_uppercase()));
    let engine = Engine::new(mapped);
    engine.step();
    let err = engine.output().err().cloned().expect("an error");
    assert_eq!(err.message(), "duplicate key \"a\" in list_map input");
    items.set(vec!["a".to_string(), "b".to_string()]);
    engine.step();
    assert_eq!(engine.output(), Output::Ok(vec!["A".to_string(), "B".to_string()]));
}

#[test]
fn collapse_hides_a_group_until_expanded() {
    let fake = Fake::new(Config::default());
    let head = head();
    let src = fake.fetch(&head.current());
    let tested = test(&fake, &build(&fake, &src));
    let pipeline = tested.collapse("repo", "app", &src);
    let engine = Engine::new(pipeline);
    engine.step();
    check_diagram(
        &engine,
        "
        head: ok
        fetch: running
        (+): blocked
        head -> fetch
        fetch -> (+)",
    );
    let open = engine.diagram(&deployer_core::Expanded::from_pairs([("repo", "app")]));
    support::check_text(
        &open.summary(),
        "
        head: ok
        fetch: running
        build: blocked
        test: blocked
        head -> fetch
        fetch -> build
        build -> test",
    );
    let dot = engine.diagram(&Default::default()).to_dot();
    assert!(dot.contains("URL=\"?repo=app\""), "{dot}");
}

#[test]
fn errors_record_their_origin() {
    let failing: Current<u8> = Current::fail("broken");
    let downstream = failing.map(|x| x + 1);
    let engine = Engine::new(downstream.clone());
    engine.step();
    let e: Error = engine.output().err().cloned().unwrap();
    assert_eq!(e.origin(), Some(failing.id()));
    assert_eq!(Output::<u8>::Err(e.clone()).state(failing.id()), NodeState::Failed);
    assert_eq!(Output::<u8>::Err(e).state(downstream.id()), NodeState::Blocked);
}
