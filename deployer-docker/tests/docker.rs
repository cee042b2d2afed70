//! deployer-docker against a real Docker Engine in swarm mode and a real
//! registry on loopback (see `support/docker.rs`), with the real engine,
//! caches and store.

mod support {
    pub mod docker;
    pub mod pipeline;
}

#[path = "../../deployer-ssh/tests/support/sshd.rs"]
mod sshd;

use std::path::{Path, PathBuf};
use std::time::Duration;

use deployer_core::cache::Schedule;
use deployer_core::{Config, Context, Current, Engine, ManualClock, Output, Secret, Var};
use deployer_docker::{BuildOptions, BuildSource, Credentials, Docker, Endpoint, Image, ServiceOptions};
use support::docker::{busybox_context, docker_cli, registry_with_password, run, served_by, services, SERVE};
use support::pipeline::{dir, docker, log, quick_options, settle, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_push_deploy_then_a_broken_image_is_rolled_back_and_drift_is_seen() {
    let s = services();
    let d = dir("deploy");
    let ctx = Context::open(&d.join("state"), Config::default()).unwrap();
    let (docker, host) = docker(&ctx, &d);
    let name = unique("web");
    let source = Var::new("source", BuildSource::Dir(busybox_context(&d.join("v1"), "v1", SERVE)));
    let image = docker.build("build web", &host, &source.current(), BuildOptions::default());
    let tag = format!("{}/{}:live", s.registry, unique("web"));
    let pushed = docker.push(&host, &tag, &image).unwrap();
    let deployed = docker.service(&host, &name, &pushed, quick_options());
    let engine = Engine::new(deployed);
    // v1: built, pushed, and the service created on it.
    let out = settle(&engine, "v1 deployed", 120, |o| matches!(o, Output::Ok(_))).await;
    let Output::Ok(v1) = out else { unreachable!() };
    assert!(v1.image.as_str().starts_with(&format!("{}/{}@sha256:", s.registry, unique("web"))), "{v1:?}");
    assert_eq!(served_by(s, &name), "v1");
    // v2: the service is updated and converges.
    source.set(BuildSource::Dir(busybox_context(&d.join("v2"), "v2", SERVE)));
    let out = settle(&engine, "v2 deployed", 120, |o| matches!(o, Output::Ok(d) if d.image != v1.image)).await;
    let Output::Ok(v2) = out else { unreachable!() };
    assert_eq!(served_by(s, &name), "v2");
    // A broken image (exits at once): rolled back, v2 still serving.
    source.set(BuildSource::Dir(busybox_context(&d.join("v3"), "v3", "echo broken; exit 3")));
    let out = settle(&engine, "the broken image's failure", 180, |o| o.err().is_some()).await;
    let message = out.err().unwrap().message().to_owned();
    assert!(message.contains("rolled back"), "{message}");
    let spec_image = run(docker_cli(s).args([
        "service",
        "inspect",
        &name,
        "--format",
        "{{.Spec.TaskTemplate.ContainerSpec.Image}}",
    ]));
    assert!(spec_image.ends_with(v2.image.digest()), "the service is back on v2: {spec_image}");
    assert_eq!(served_by(s, &name), "v2", "the previous version keeps serving");
    let history = ctx.store.history(Default::default()).await.unwrap();
    let failed = history.rows.iter().find(|r| !r.ok && r.op == "docker-service").expect("a failed deploy row");
    assert!(log(&ctx, &failed.job_id).contains("Rolling"), "{}", log(&ctx, &failed.job_id));
    // Back to v2's source: the deploy is good again. Then someone changes
    // the service by hand: drift shows on the service's check.
    source.set(BuildSource::Dir(d.join("v2")));
    settle(&engine, "v2 again", 120, |o| matches!(o, Output::Ok(d) if d.image == v2.image)).await;
    run(docker_cli(s).args(["service", "update", "--detach", "--image", v1.image.as_str(), &name]));
    let out = settle(&engine, "drift", 120, |o| o.err().is_some_and(|e| e.message().contains("drift"))).await;
    assert!(out.err().unwrap().message().contains(v1.image.as_str()), "{out:?}");
    run(docker_cli(s).args(["service", "rm", &name]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_asks_the_registry_first_and_pulls_only_a_new_digest() {
    let s = services();
    let d = dir("pull");
    let clock = ManualClock::new(1_764_000_000_000);
    let ctx = Context::open_with_clock(&d.join("state"), Config::default(), clock.clock()).unwrap();
    let (docker, host) = docker(&ctx, &d);
    let tag = format!("{}/{}:weekly", s.registry, unique("pulled"));
    busybox_context(&d.join("ctx"), "p1", SERVE);
    run(docker_cli(s).args(["build", "-q", "-t", &tag]).arg(d.join("ctx")));
    run(docker_cli(s).args(["push", "-q", &tag]));
    run(docker_cli(s).args(["rmi", &tag]));
    let weekly = Schedule::every(Duration::from_secs(7 * 86_400));
    let engine = Engine::new(docker.pull(&host, &tag, weekly).unwrap());
    let out = settle(&engine, "the first pull", 60, |o| matches!(o, Output::Ok(_))).await;
    let Output::Ok(first) = out else { unreachable!() };
    assert!(first.as_str().starts_with(&format!("{}/{}@sha256:", s.registry, unique("pulled"))), "{first:?}");
    // A week later: the registry has the same digest; nothing is pulled.
    clock.advance(Duration::from_secs(7 * 86_400));
    engine.step();
    let history = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let history = ctx.store.history(Default::default()).await.unwrap();
            if history.rows.len() == 2 {
                return history;
            }
            engine.next().await;
        }
    })
    .await
    .expect("the weekly check ran within 60 s");
    assert!(log(&ctx, &history.rows[1].job_id).contains(&format!("Pulling {first}")), "the first run pulled");
    let second = log(&ctx, &history.rows[0].job_id);
    assert!(second.contains("not pulling") && !second.contains("Pulling"), "{second}");
    assert_eq!(engine.output(), Output::Ok(first));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_arch_manifest_list_is_pushed_and_read_back() {
    let s = services();
    let d = dir("manifest");
    let ctx = Context::open(&d.join("state"), Config::default()).unwrap();
    let (docker, host) = docker(&ctx, &d);
    let repo = format!("{}/{}", s.registry, unique("multi"));
    // The arm64 image is pushed to a staging repository: the list mounts it.
    let staging = format!("{}/{}", s.registry, unique("staging"));
    let mut images = Vec::new();
    for arch in ["amd64", "arm64"] {
        busybox_context(&d.join(arch), arch, SERVE);
        let tag = if arch == "arm64" { format!("{staging}:{arch}") } else { format!("{repo}:{arch}") };
        run(docker_cli(s)
            .args(["build", "-q", "--no-cache", "--platform", &format!("linux/{arch}"), "-t", &tag])
            .arg(d.join(arch)));
        run(docker_cli(s).args(["push", "-q", &tag]));
        let digest = run(docker_cli(s).args(["image", "inspect", &tag, "--format", "{{index .RepoDigests 0}}"]));
        images.push(Image(digest));
    }
    let list = format!("{repo}:live");
    let pushed = docker.push_manifest(&list, &Current::constant(images.clone())).unwrap();
    // Read back (by the list's digest, once it is pushed): the arm64 entry.
    let arm = pushed.bind("pull arm64", {
        let (docker, host) = (docker.clone(), host.clone());
        move |list: &Image| docker.pull_arch(&host, list.as_str(), "arm64", Schedule::never()).unwrap()
    });
    let engine = Engine::new(pushed.pair(&arm));
    let out = settle(&engine, "the manifest list", 60, |o| matches!(o, Output::Ok(_))).await;
    let Output::Ok((list_image, arm_image)) = out else { unreachable!() };
    assert!(list_image.as_str().starts_with(&format!("{repo}@sha256:")), "{list_image:?}");
    assert_eq!(arm_image.digest(), images[1].digest(), "the arm64 entry is the arm64 image");
    // The docker CLI reads it back as a two-platform list.
    let inspect = run(docker_cli(s).args(["manifest", "inspect", "--insecure", &list]));
    assert!(
        inspect.contains("\"architecture\": \"amd64\"") && inspect.contains("\"architecture\": \"arm64\""),
        "{inspect}"
    );
    assert!(inspect.contains(images[0].digest()) && inspect.contains(images[1].digest()), "{inspect}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_flow_through_ssh_and_a_context_folder() {
    let s = services();
    let d = dir("ssh");
    let ctx = Context::open(&d.join("state"), Config::default()).unwrap();
    let server = sshd::Sshd::start(&d.join("sshd"));
    let known = server.known_hosts("known_hosts", server.port);
    // A context folder made by the docker CLI, as ocurrent-deployer's is.
    let config = d.join("config");
    let remote = format!("ssh://{}@127.0.0.1:{}", server.user, server.port);
    let cli = |args: &[&str]| run(std::process::Command::new("docker").arg("--config").arg(&config).args(args));
    cli(&["context", "create", "remote", "--docker", &format!("host={remote}")]);
    cli(&["context", "create", "local", "--docker", &format!("host=unix://{}", s.socket.display())]);
    let docker = Docker::new(&ctx).config_dir(&config);
    docker.ssh_identity(Some(&server.client_key), Some(&known));
    let local = docker.context("local").unwrap();
    assert_eq!(local.endpoint(), &Endpoint::Unix(s.socket.clone()));
    let via_context = docker.context("remote").unwrap();
    assert!(
        matches!(via_context.endpoint(), Endpoint::Ssh { destination, .. } if destination.ends_with(&format!("127.0.0.1:{}", server.port)))
    );
    let e = docker.context("nope").unwrap_err().to_string();
    assert!(e.contains("unknown Docker context \"nope\""), "{e}");
    // The test daemon's socket is not /var/run/docker.sock: name it.
    let ssh_host = deployer_ssh::Host::new(&format!("{}@127.0.0.1:{}", server.user, server.port))
        .unwrap()
        .key_file(&server.client_key)
        .known_hosts(&known);
    let remote_host = docker.ssh("over-ssh", ssh_host, &s.socket.to_string_lossy()).unwrap();
    let name = unique("ssh-web");
    let source = Current::constant(BuildSource::Dir(busybox_context(&d.join("v1"), "over ssh", SERVE)));
    let image = docker.build("build", &remote_host, &source, BuildOptions::default());
    let pushed = docker.push(&remote_host, &format!("{}/{}:live", s.registry, unique("ssh-web")), &image).unwrap();
    let deployed = docker.service(&remote_host, &name, &pushed, quick_options());
    let said = docker.pread(
        "hello",
        &local,
        &image,
        vec!["/bin/busybox".into(), "echo".into(), "hello from the context".into()],
    );
    let engine = Engine::new(deployed.pair(&said));
    let out = settle(&engine, "the deploy over SSH", 180, |o| matches!(o, Output::Ok(_))).await;
    let Output::Ok((_, said)) = out else { unreachable!() };
    assert_eq!(said.trim(), "hello from the context");
    assert_eq!(served_by(s, &name), "over ssh");
    assert!(server.log().contains("Accepted publickey"), "the daemon was reached through sshd");
    run(docker_cli(s).args(["service", "rm", &name]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_fails_clearly_and_changes_nothing() {
    let s = services();
    let d = dir("bad");
    let ctx = Context::open(&d.join("state"), Config::default()).unwrap();
    let (docker, host) = docker(&ctx, &d);
    // No Dockerfile in the context.
    let empty = d.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("README"), "no Dockerfile here").unwrap();
    let no_dockerfile =
        docker.build("build", &host, &Current::constant(BuildSource::Dir(empty)), BuildOptions::default());
    // A failing build step.
    let failing = d.join("failing");
    std::fs::create_dir_all(&failing).unwrap();
    std::fs::write(failing.join("Dockerfile"), "FROM scratch\nCOPY missing-file /\n").unwrap();
    let build_fails =
        docker.build("build 2", &host, &Current::constant(BuildSource::Dir(failing)), BuildOptions::default());
    // A registry that is down.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    busybox_context(&d.join("ok"), "ok", SERVE);
    let image =
        docker.build("build 3", &host, &Current::constant(BuildSource::Dir(d.join("ok"))), BuildOptions::default());
    let push_down = docker.push(&host, &format!("127.0.0.1:{closed}/x:y"), &image).unwrap();
    // A service that does not exist (and no spec to create it).
    let absent = docker.service(
        &host,
        &unique("absent"),
        &Current::constant(Image(format!("{}/x@sha256:{}", s.registry, "0".repeat(64)))),
        ServiceOptions::default(),
    );
    let all = [
        no_dockerfile.ignore_value().catch(),
        build_fails.ignore_value().catch(),
        push_down.ignore_value().catch(),
        absent.ignore_value().catch(),
    ];
    let engine = Engine::new(Current::all(all));
    let out =
        settle(&engine, "all four failures", 120, |o| matches!(o, Output::Ok(v) if v.iter().all(|r| r.is_err()))).await;
    let Output::Ok(results) = out else { unreachable!() };
    let messages: Vec<String> = results.iter().map(|r| r.as_ref().unwrap_err().message().to_owned()).collect();
    assert!(messages[0].contains("has no Dockerfile"), "{}", messages[0]);
    assert!(messages[1].contains("docker build on test") && messages[1].contains("missing-file"), "{}", messages[1]);
    assert!(messages[2].contains(&format!("127.0.0.1:{closed}")), "{}", messages[2]);
    assert!(
        messages[3].contains("there is no service") && messages[3].contains("docker stack deploy"),
        "{}",
        messages[3]
    );
    // Unknown hosts and references are refused when the pipeline is made.
    assert!(docker.pull(&host, "Not/A:Valid:Ref", Schedule::never()).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_for_an_architecture_share_a_pool_of_hosts() {
    let s = services();
    let d = dir("pool");
    let ctx = Context::open(&d.join("state"), Config::default()).unwrap();
    let (docker, _) = docker(&ctx, &d);
    // Two hosts (the same daemon under two names): two builds at once use both.
    let hosts = vec![docker.unix("builder-1", &s.socket).unwrap(), docker.unix("builder-2", &s.socket).unwrap()];
    let pool = docker.pool("amd64", hosts);
    // An arm64 build of the same context first; the pool's builds are still
    // for its own platform, and say so.
    busybox_context(&d.join("a"), "a", SERVE);
    run(docker_cli(s).args(["build", "-q", "--no-cache", "--platform", "linux/arm64"]).arg(d.join("a")));
    let builds: Vec<Current<Image>> = ["a", "b"]
        .iter()
        .map(|v| {
            let source = Current::constant(BuildSource::Dir(busybox_context(&d.join(v), v, SERVE)));
            docker.build_on_pool(&format!("build {v}"), &pool, &source, BuildOptions::default())
        })
        .collect();
    let engine = Engine::new(Current::all(builds));
    let out = settle(&engine, "both builds", 120, |o| matches!(o, Output::Ok(_))).await;
    for image in out.ok().unwrap() {
        let arch = run(docker_cli(s).args(["image", "inspect", "--format", "{{.Architecture}}", image.as_str()]));
        assert_eq!(arch, "amd64", "the pool's platform, not a cached arm64 build's");
    }
    let history = ctx.store.history(Default::default()).await.unwrap();
    let mut used: Vec<String> = history
        .rows
        .iter()
        .map(|r| log(&ctx, &r.job_id))
        .filter_map(|l| {
            l.lines()
                .find_map(|line| line.split("Building on ").nth(1).map(|h| h.split(' ').next().unwrap().to_owned()))
        })
        .collect();
    used.sort();
    assert_eq!(used, ["builder-1", "builder-2"], "each build took a free host of the pool");
    let for_amd64 =
        history.rows.iter().filter(|r| log(&ctx, &r.job_id).contains(") for linux/amd64 on builder-")).count();
    assert_eq!(for_amd64, 2, "pool builds name the pool's platform");
    // Built and pushed in one job, from whichever host built it.
    let staging = format!("{}/{}:staging-amd64", s.registry, unique("pool"));
    let source = Current::constant(BuildSource::Dir(busybox_context(&d.join("c"), "c", SERVE)));
    let pushed = docker.build_and_push_on_pool("build c", &pool, &source, BuildOptions::default(), &staging).unwrap();
    let engine = Engine::new(pushed);
    let out = settle(&engine, "built and pushed", 120, |o| !matches!(o, Output::Active(_))).await;
    let image = out.ok().expect("the build and push");
    assert!(image.as_str().starts_with(&format!("{}/{}@sha256:", s.registry, unique("pool"))), "{image:?}");
    let job = ctx
        .store
        .history(Default::default())
        .await
        .unwrap()
        .rows
        .into_iter()
        .find(|r| log(&ctx, &r.job_id).contains("Pushed "))
        .expect("the job");
    let text = log(&ctx, &job.job_id);
    assert!(text.contains("Building on builder-") && text.contains(&format!("Pushed {}", image.as_str())), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_credentials_from_config_json_and_wrong_ones_fail_without_showing_them() {
    let d = dir("credentials");
    let password = "correct-horse-4421";
    let registry = registry_with_password("alice", password);
    busybox_context(&d.join("ctx"), "private", SERVE);
    let source = Current::constant(BuildSource::Dir(d.join("ctx")));
    // From config.json's "auths", as `docker login` writes it.
    let config = d.join("with-login");
    std::fs::create_dir_all(&config).unwrap();
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("alice:{password}"));
    std::fs::write(config.join("config.json"), format!(r#"{{"auths":{{"{registry}":{{"auth":"{auth}"}}}}}}"#)).unwrap();
    let ctx = Context::open(&d.join("state"), Config::default()).unwrap();
    let docker = Docker::new(&ctx).config_dir(&config);
    let host = docker.unix("test", &services().socket).unwrap();
    let image = docker.build("build", &host, &source, BuildOptions::default());
    let tag = format!("{registry}/private:live");
    let pushed = docker.push(&host, &tag, &image).unwrap();
    let manifest = docker.push_manifest(&format!("{registry}/private:list"), &pushed.map(|i| vec![i.clone()])).unwrap();
    let engine = Engine::new(manifest);
    let out = settle(&engine, "the authenticated push and manifest", 120, |o| !matches!(o, Output::Active(_))).await;
    assert!(matches!(out, Output::Ok(_)), "{out:?}");
    // Security issue 8: a build of untrusted code (a fork's PR) whose
    // Dockerfile names the private image gets no credentials: the daemon's
    // pull is refused. The same build for the operator's branch pulls it.
    let fork = d.join("fork");
    std::fs::create_dir_all(&fork).unwrap();
    std::fs::write(fork.join("Dockerfile"), format!("FROM {tag}\nCMD [\"/bin/busybox\", \"true\"]\n")).unwrap();
    let fork_source = Current::constant(BuildSource::Dir(fork.clone()));
    let pulling = BuildOptions { pull: true, ..BuildOptions::default() };
    let ctx3 = Context::open(&d.join("state3"), Config::default()).unwrap();
    let docker = Docker::new(&ctx3).config_dir(&d.join("no-config"));
    docker.credentials(&registry, Credentials { username: "alice".into(), password: Secret::new(password.into()) });
    let host = docker.unix("test", &services().socket).unwrap();
    let untrusted = docker.build("build the fork's PR", &host, &fork_source, pulling.clone().untrusted());
    let engine = Engine::new(untrusted);
    let out = settle(&engine, "the untrusted build", 120, |o| !matches!(o, Output::Active(_))).await;
    let message = out.err().unwrap_or_else(|| panic!("the fork's build pulled the private image")).message().to_owned();
    assert!(
        message.contains("unauthorized")
            || message.contains("authentication required")
            || message.contains("no basic auth"),
        "{message}"
    );
    let trusted = docker.build("build the live branch", &host, &fork_source, pulling);
    let engine = Engine::new(trusted);
    let out = settle(&engine, "the trusted build", 120, |o| !matches!(o, Output::Active(_))).await;
    assert!(matches!(out, Output::Ok(_)), "{out:?}");
    // Wrong credentials, given as a secret: a clear failure, no password.
    let ctx2 = Context::open(&d.join("state2"), Config::default()).unwrap();
    let wrong = Docker::new(&ctx2).config_dir(&d.join("no-config"));
    wrong.credentials(
        &registry,
        Credentials { username: "alice".into(), password: Secret::new("not-the-password".into()) },
    );
    let host2 = wrong.unix("test", &services().socket).unwrap();
    let image2 = wrong.build("build", &host2, &source, BuildOptions::default());
    let refused = wrong.push(&host2, &format!("{registry}/private:other"), &image2).unwrap();
    let engine = Engine::new(refused);
    let out = settle(&engine, "the refused push", 120, |o| o.err().is_some()).await;
    let message = out.err().unwrap().message().to_owned();
    assert!(
        message.contains("pushing")
            && (message.contains("unauthorized") || message.contains("authentication required")),
        "{message}"
    );
    // Flavours issue 8: credentials for one repository (upstream pushes
    // staging images as another Docker Hub user): a push under it uses
    // them, while other repositories keep the registry's (wrong) ones.
    let right = || Credentials { username: "alice".into(), password: Secret::new(password.into()) };
    wrong.credentials_for_repository(&format!("{registry}/staging"), right()).unwrap();
    assert!(wrong.credentials_for_repository(&format!("{registry}/staging:live"), right()).is_err());
    let staged = wrong.push(&host2, &format!("{registry}/staging/app:live"), &image2).unwrap();
    let still_refused = wrong.push(&host2, &format!("{registry}/stagingx:live"), &image2).unwrap();
    let engine = Engine::new(staged.pair(&still_refused.catch()));
    let out = settle(&engine, "the per-repository pushes", 120, |o| !matches!(o, Output::Active(_))).await;
    let Output::Ok((_, other)) = out else { panic!("the staging push failed: {out:?}") };
    let message = other.unwrap_err().message().to_owned();
    assert!(message.contains("unauthorized") || message.contains("authentication required"), "{message}");
    for c in [&ctx, &ctx2, &ctx3] {
        for row in c.store.history(Default::default()).await.unwrap().rows {
            let text = format!("{}{}", log(c, &row.job_id), row.outcome);
            assert!(!text.contains(password) && !text.contains("not-the-password") && !text.contains(&auth), "{text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_context_with_client_certificates() {
    let s = services();
    let d = dir("tls");
    let ctx = Context::open(&d.join("state"), Config::default()).unwrap();
    // A context made by the docker CLI with TLS material, as for a remote
    // daemon reached over TCP.
    let config = d.join("config");
    let tls = |f: &str| s.tls.join(f).display().to_string();
    run(std::process::Command::new("docker").arg("--config").arg(&config).args([
        "context",
        "create",
        "secure",
        "--docker",
        &format!("host=tcp://{},ca={},cert={},key={}", s.tcp, tls("ca.pem"), tls("cert.pem"), tls("key.pem")),
    ]));
    let docker = Docker::new(&ctx).config_dir(&config);
    let secure = docker.context("secure").unwrap();
    assert!(matches!(secure.endpoint(), Endpoint::Tcp { tls: Some(_), .. }), "{:?}", secure.endpoint());
    let local = docker.unix("local", &s.socket).unwrap();
    busybox_context(&d.join("ctx"), "tls", SERVE);
    let image =
        docker.build("build", &local, &Current::constant(BuildSource::Dir(d.join("ctx"))), BuildOptions::default());
    let said = docker.pread("over TLS", &secure, &image, vec!["/bin/busybox".into(), "echo".into(), "over TLS".into()]);
    let engine = Engine::new(said);
    let out = settle(&engine, "a run over TLS", 60, |o| !matches!(o, Output::Active(_))).await;
    assert_eq!(out, Output::Ok("over TLS\n".to_owned()));
    // Without a client certificate the daemon refuses the connection.
    let plain = docker.host("plain", Endpoint::Tcp { address: s.tcp.clone(), tls: None }).unwrap();
    let e = plain.client().await.unwrap_err().to_string();
    assert!(e.contains("cannot reach the Docker daemon of plain"), "{e}");
    // Security issue 16: plain TCP to another machine is refused unless
    // asked for; a name that merely starts with 127. is another machine.
    for address in ["10.9.8.7:2375", "127.example.com:2375", "deployer-builder:2375"] {
        let e = docker.host("remote", Endpoint::Tcp { address: address.into(), tls: None }).unwrap_err().to_string();
        assert!(e.contains("without TLS") && e.contains(address), "{address}: {e}");
    }
    docker.allow_plain_tcp(true);
    assert!(docker.host("remote", Endpoint::Tcp { address: "10.9.8.7:2375".into(), tls: None }).is_ok());
    docker.allow_plain_tcp(false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_is_copied_out_of_an_image() {
    let s = services();
    let d = dir("extract");
    let ctx = Context::open(&d.join("state"), Config::default()).unwrap();
    let (docker, host) = docker(&ctx, &d);
    busybox_context(&d.join("ctx"), "x", SERVE);
    let image =
        docker.build("build", &host, &Current::constant(BuildSource::Dir(d.join("ctx"))), BuildOptions::default());
    let found = docker.extract("copy busybox", &host, &image, "/bin/busybox");
    let missing = docker.extract("copy nothing", &host, &image, "/unikernel.hvt");
    let engine = Engine::new(found.pair(&missing.catch()));
    let out = settle(&engine, "both copies", 60, |o| !matches!(o, Output::Active(_))).await;
    let Output::Ok((path, missing)) = out else { panic!("{out:?}") };
    assert_eq!(std::fs::read(&path).unwrap(), std::fs::read("/bin/busybox").unwrap());
    let e = missing.unwrap_err().message().to_owned();
    assert!(e.contains("/unikernel.hvt"), "{e}");
    // No container of the image is left behind.
    let Some(Output::Ok(id)) = engine.output_of(&image) else { panic!("the image") };
    let left = run(docker_cli(s).args(["ps", "-aq", "--filter"]).arg(format!("ancestor={}", id.as_str())));
    assert!(left.is_empty(), "containers left: {left}");
}

/// `git` and the libraries it loads, under `root` at their own paths, so a
/// `FROM scratch` image can run it.
fn git_rootfs(root: &Path) {
    let git = ["/usr/bin/git", "/usr/local/bin/git"].into_iter().find(|p| Path::new(p).exists()).expect("git");
    let ldd = run(std::process::Command::new("ldd").arg(git));
    let mut files = vec![PathBuf::from(git)];
    for line in ldd.lines() {
        // `libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x…)` or `/lib64/ld-linux-x86-64.so.2 (0x…)`
        let path = line.split("=>").last().unwrap().split_whitespace().next().unwrap_or("");
        if path.starts_with('/') {
            files.push(PathBuf::from(path));
        }
    }
    for file in files {
        let to = root.join(file.strip_prefix("/").unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&file, &to).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    }
}

/// A git repository for a build: busybox, git, and `dockerfile`. Its hash.
fn build_repo(repo: &Path, dockerfile: &str) -> String {
    let git = |args: &[&str]| run(std::process::Command::new("git").arg("-C").arg(repo).args(args));
    std::fs::create_dir_all(repo).unwrap();
    git(&["init", "-q", "-b", "main"]);
    git(&["config", "user.email", "test@example.com"]);
    git(&["config", "user.name", "test"]);
    std::fs::copy("/bin/busybox", repo.join("busybox")).unwrap();
    git_rootfs(&repo.join("rootfs"));
    std::fs::write(repo.join("Dockerfile"), dockerfile).unwrap();
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "a build"]);
    git(&["rev-parse", "HEAD"])
}

/// Flavours issue 1 and 3: a Dockerfile shaped like upstream's own
/// (multi-stage, `RUN --mount=type=cache`, `--mount=type=secret`) builds
/// with BuildKit from a commit; the cache mount persists from one build to
/// the next; the secret reaches the build but not the log; the log reads
/// as `--progress=plain`; `include_git` gives a usable repository at the
/// commit (`git rev-parse HEAD`, `git status` clean). An untrusted build
/// gets no secret, and the legacy builder refuses secrets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buildkit_builds_with_cache_and_secret_mounts_and_include_git_gives_a_repository() {
    let d = dir("buildkit");
    let ctx = Context::open(&d.join("state"), Config::default()).unwrap();
    let (docker, host) = docker(&ctx, &d);
    let cache = unique("deployer-cache");
    let dockerfile = format!(
        "FROM scratch AS base\n\
         COPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
         FROM base AS build\n\
         ARG N\n\
         COPY rootfs/ /\n\
         COPY . /src\n\
         RUN --mount=type=cache,id={cache},target=/cache echo \"build $N\" >> /cache/runs && wc -l < /cache/runs > /runs\n\
         RUN --mount=type=secret,id=token cat /run/secrets/token > /dev/null && md5sum < /run/secrets/token | cut -c1-32 > /token.md5 && echo \"the token: $(cat /run/secrets/token)\"\n\
         RUN cd /src && git -c safe.directory='*' rev-parse HEAD > /rev && git -c safe.directory='*' status --porcelain | wc -l > /dirty \
             && git -c safe.directory='*' remote get-url origin > /origin\n\
         FROM base\n\
         COPY --from=build /runs /token.md5 /rev /dirty /origin /\n"
    );
    let repo = d.join("repo");
    let hash = build_repo(&repo, &dockerfile);
    let token = format!("bk-token-{}", std::process::id());
    docker.build_secret("token", &token);
    let git = deployer_git::Git::new(&ctx);
    let id = deployer_git::CommitId::new(repo.to_str().unwrap(), "main", &hash).unwrap();
    // A fetched commit goes straight into a build (issue 23).
    let source = git.fetch("fetch", &Current::constant(id));
    let options = |n: &str| {
        let mut o = BuildOptions::default().buildkit();
        o.build_args.insert("N".into(), n.into());
        o.secrets = vec!["token".into()];
        o.include_git = true;
        o
    };
    let read = |image: &Current<Image>, label: &str| {
        let cmd = ["/bin/busybox", "sh", "-c", "cat /runs /token.md5 /rev /dirty /origin"];
        docker.pread(label, &host, image, cmd.iter().map(|s| s.to_string()).collect())
    };
    let first = docker.build("build 1", &host, &source, options("1"));
    let engine = Engine::new(read(&first, "read 1"));
    let out = settle(&engine, "the first BuildKit build", 120, |o| !matches!(o, Output::Active(_))).await;
    let md5 = run(std::process::Command::new("sh").arg("-c").arg(format!("printf %s {token} | md5sum | cut -c1-32")));
    let want = |runs: u32| format!("{runs}\n{md5}\n{hash}\n0\n{}\n", repo.display());
    assert_eq!(out, Output::Ok(want(1)));
    // The log: BuildKit's steps, the secret scrubbed.
    let history = ctx.store.history(Default::default()).await.unwrap();
    let build = history.rows.iter().find(|r| r.ok && r.op == "docker-build").expect("the build's record");
    let text = log(&ctx, &build.job_id);
    assert!(text.contains("with BuildKit"), "{text}");
    assert!(text.contains("[build 3/5] RUN --mount=type=cache") && text.contains(" DONE "), "{text}");
    assert!(text.contains("the token: [redacted]") && !text.contains(&token), "{text}");
    drop(engine);

    // A second build (another build arg) finds the cache mount's file.
    let second = docker.build("build 2", &host, &source, options("2"));
    let engine = Engine::new(read(&second, "read 2"));
    let out = settle(&engine, "the second BuildKit build", 120, |o| !matches!(o, Output::Active(_))).await;
    assert_eq!(out, Output::Ok(want(2)));
    drop(engine);

    // Untrusted code gets no secret: the mount fails the build.
    let untrusted = docker.build("untrusted", &host, &source, options("3").untrusted());
    let engine = Engine::new(untrusted);
    let out = settle(&engine, "the untrusted build", 120, |o| o.err().is_some()).await;
    let e = out.err().unwrap().message().to_owned();
    assert!(e.contains("/run/secrets/token") && !e.contains(&token), "{e}");
    drop(engine);

    // The legacy builder cannot mount secrets: a clear error, no build.
    let mut legacy = options("4");
    legacy.buildkit = false;
    let engine = Engine::new(docker.build("legacy", &host, &source, legacy));
    let out = settle(&engine, "the legacy build with secrets", 60, |o| o.err().is_some()).await;
    let e = out.err().unwrap().message().to_owned();
    assert!(e.contains("build secrets (token) need BuildKit"), "{e}");
}

/// Flavours issue 11: the ocaml.org seed's stack (`caddy` global with
/// host-mode ports, a bind mount read-only and named volumes; `www` with a
/// sysctl), deployed for the first time from its compose file with test
/// images, as `docker stack deploy` would create it: `<stack>_<service>`
/// names, the `<stack>_default` network on which caddy reaches `www` by
/// that name, the stack's named volumes, the sysctl inside the task, the
/// host-mode port on the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_deploy_from_the_seeds_compose_file_creates_the_stack_as_docker_would() {
    let s = services();
    let d = dir("compose");
    let ctx = Context::open(&d.join("state"), Config::default()).unwrap();
    let (docker, host) = docker(&ctx, &d);
    let stack_name = unique("infra");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let etc = d.join("etc-caddy");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("Caddyfile"), "reverse_proxy www:8080\n").unwrap();
    let compose = format!(
        r#"version: "3.7"
services:
  caddy:
    deploy:
      mode: global
    ports:
      - target: 8080
        published: {port}
        protocol: tcp
        mode: host
    image: caddy
    volumes:
      - {etc}:/etc/caddy:ro
      - caddy_data:/data
      - caddy_config:/config
  www:
    image: ocurrent/v3.ocaml.org-server:live
    sysctls:
      - 'net.ipv4.tcp_keepalive_time=60'
volumes:
  caddy_data:
  caddy_config:
"#,
        etc = etc.display()
    );
    let stack = deployer_docker::Stack::parse(&stack_name, &compose).unwrap();
    busybox_context(&d.join("caddy"), "caddy", SERVE);
    busybox_context(&d.join("www"), "www", SERVE);
    let mut parts = Vec::new();
    for service in ["caddy", "www"] {
        let image = docker.build(
            &format!("build {service}"),
            &host,
            &Current::constant(BuildSource::Dir(d.join(service))),
            BuildOptions::default(),
        );
        let mut options = stack.options(service).unwrap();
        options.monitor = Duration::from_secs(2);
        let name = stack.service_name(service).unwrap();
        parts.push(docker.service(&host, &name, &image, options).ignore_value());
    }
    let engine = Engine::new(Current::all(parts));
    let out = settle(&engine, "the stack's first deploy", 180, |o| !matches!(o, Output::Active(_))).await;
    assert!(matches!(out, Output::Ok(_)), "{out:?}");
    let (caddy, www) = (format!("{stack_name}_caddy"), format!("{stack_name}_www"));
    let inspect =
        |service: &str, format: &str| run(docker_cli(s).args(["service", "inspect", service, "--format", format]));
    assert_eq!(inspect(&caddy, "{{if .Spec.Mode.Global}}global{{end}}"), "global");
    assert_eq!(
        inspect(&caddy, "{{range .Spec.EndpointSpec.Ports}}{{.PublishMode}} {{.PublishedPort}}{{end}}"),
        format!("host {port}")
    );
    assert_eq!(inspect(&www, "{{index .Spec.Labels \"com.docker.stack.namespace\"}}"), stack_name);
    // The named volume is the stack's, labelled as docker labels it.
    let volume = run(docker_cli(s).args([
        "volume",
        "inspect",
        &format!("{stack_name}_caddy_data"),
        "--format",
        "{{index .Labels \"com.docker.stack.namespace\"}}",
    ]));
    assert_eq!(volume, stack_name);
    let container = |service: &str| {
        let ids = run(docker_cli(s)
            .args(["ps", "-q", "--filter"])
            .arg(format!("label=com.docker.swarm.service.name={service}")));
        ids.lines().next().unwrap_or_else(|| panic!("no container of {service}")).to_owned()
    };
    let exec = |service: &str, cmd: &[&str]| run(docker_cli(s).arg("exec").arg(container(service)).args(cmd));
    // The sysctl is set inside www's task; the bind mount is read-only.
    assert_eq!(exec(&www, &["/bin/busybox", "cat", "/proc/sys/net/ipv4/tcp_keepalive_time"]), "60");
    assert_eq!(exec(&caddy, &["/bin/busybox", "cat", "/etc/caddy/Caddyfile"]), "reverse_proxy www:8080");
    let write = docker_cli(s)
        .arg("exec")
        .arg(container(&caddy))
        .args(["/bin/busybox", "touch", "/etc/caddy/x"])
        .output()
        .unwrap();
    assert!(!write.status.success(), "the bind mount is writable");
    // caddy finds www by its name in the stack, on the stack's network
    // (`www`: the service's virtual IP; `tasks.www`: its tasks). The request
    // goes to the task: the virtual IP needs the kernel's IPVS, which these
    // machines do not have.
    // (Names appear in the stack's DNS shortly after the tasks start.)
    let script = "for i in $(seq 50); do /bin/busybox nslookup -type=a www 127.0.0.11 | /bin/busybox grep -q '^Address: 10\\.' \
                  && exec /bin/busybox wget -qO- http://tasks.www:8080/index.html; /bin/busybox sleep 0.2; done; exit 1";
    assert_eq!(exec(&caddy, &["/bin/busybox", "sh", "-c", script]), "www");
    // The host-mode port is published on the node.
    let served = run(std::process::Command::new("sh").env_remove("http_proxy").env_remove("HTTP_PROXY").arg("-c").arg(format!(
        "for i in $(seq 50); do /bin/busybox wget -qO- http://127.0.0.1:{port}/index.html && exit 0; sleep 0.2; done; exit 1"
    )));
    assert_eq!(served, "caddy");
    for service in [&caddy, &www] {
        let _ = docker_cli(s).args(["service", "rm", service]).output();
    }
    let _ = docker_cli(s).args(["network", "rm", &format!("{stack_name}_default")]).output();
}

/// Runs a build of `RUN sleep <marker>` on a pool with a 3 s limit: it must
/// fail "Timed out (after 3 s)" well before the sleep ends, and no process
/// of it may be left on the machine soon after (the daemon, or BuildKit,
/// stopped it). Returns the marker.
async fn a_build_past_its_limit(name: &str, options: BuildOptions, marker_prefix: char) -> String {
    let s = services();
    let d = dir(name);
    let ctx = Context::open(&d.join("state"), Config::default()).unwrap();
    let (docker, _) = docker(&ctx, &d);
    let pool = docker.pool("amd64", vec![docker.unix(name, &s.socket).unwrap()]).build_timeout(Duration::from_secs(3));
    let context = d.join("slow");
    busybox_context(&context, "slow", SERVE);
    let marker = format!("{marker_prefix}{}.5", std::process::id() % 1000);
    std::fs::write(
        context.join("Dockerfile"),
        format!("FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"sleep\", \"{marker}\"]\n"),
    )
    .unwrap();
    let source = Current::constant(BuildSource::Dir(context));
    let started = std::time::Instant::now();
    let engine = Engine::new(docker.build_on_pool("slow build", &pool, &source, options));
    let out = settle(&engine, "the timed-out build", 60, |o| o.err().is_some()).await;
    let message = out.err().unwrap().message().to_owned();
    assert!(message.contains("Timed out (after 3 s)"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(30), "it took {:?}", started.elapsed());
    let sleeping = || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|p| {
            let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).contains(&marker)
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while sleeping() {
        assert!(std::time::Instant::now() < deadline, "the build still runs sleep {marker} after 20 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    marker
}

/// Flavours issue 2: a build on a pool with a time limit that runs past it
/// fails clearly and is stopped on the daemon: no process sleeps on, and
/// no build container is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_past_its_pools_time_limit_fails_and_stops_on_the_daemon() {
    let marker = a_build_past_its_limit("timeout", BuildOptions::default(), '3').await;
    // The daemon removes the stopped build's container by itself, soon
    // after (not always before the job's failure is seen).
    let left = || {
        let ps = docker_cli(services()).args(["ps", "-a", "--no-trunc", "--format", "{{.Command}}"]).output().unwrap();
        String::from_utf8_lossy(&ps.stdout)
            .lines()
            .filter(|l| l.contains(&marker))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !left().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(left().is_empty(), "build containers left after 15 s: {:?}", left());
}

/// The same with BuildKit (flavours issues 1 and 2): BuildKit stops the
/// build when its connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buildkit_build_past_its_time_limit_is_stopped() {
    a_build_past_its_limit("buildkit-timeout", BuildOptions::default().buildkit(), '4').await;
}
