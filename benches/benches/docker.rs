//! Docker benchmark, against a real Docker Engine in swarm mode and a real
//! registry on loopback (the deployer-docker test harness, included):
//!
//! 1. Updating 20 services to a new image through the Engine API
//!    (`Docker::set_service_image`: inspect + update, as one request each),
//!    against the same updates with the docker CLI the way OCurrent makes
//!    them (`docker service update --detach --image …`). Target: at least
//!    3 times faster. The services have 0 replicas, so that what is
//!    measured is the update, not the containers.
//! 2. A scheduled check of an unchanged image (`Docker::pull_now`: ask the
//!    registry for the digest, see it is here) against `docker pull` of the
//!    same tag (the CLI's "Image is up to date"), and against a pull that
//!    downloads it.
//!
//! Run with `cargo bench -p deployer-benches --bench docker`. In quick mode
//! (`cargo test --benches`) each side runs 3 times and the ratios are not
//! checked.

#[path = "../../deployer-docker/tests/support/docker.rs"]
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use deployer_benches::quick;
use deployer_core::{Config, Context, Level};
use deployer_docker::{Docker, Image};
use support::{busybox_context, docker_cli, run, services, SERVE};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let n = if quick() { 3 } else { 20 };
    let s = services();
    let dir = s.work.join("bench");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let repo = format!("{}/bench-{}", s.registry, std::process::id());
    // Two images in the registry.
    let mut digests = Vec::new();
    for v in ["one", "two"] {
        busybox_context(&dir.join(v), v, SERVE);
        let tag = format!("{repo}:{v}");
        run(docker_cli(s).args(["build", "-q", "-t", &tag]).arg(dir.join(v)));
        run(docker_cli(s).args(["push", "-q", &tag]));
        digests.push(run(docker_cli(s).args(["image", "inspect", &tag, "--format", "{{index .RepoDigests 0}}"])));
    }
    let names: Vec<String> = (0..n).map(|i| format!("bench-{}-{i}", std::process::id())).collect();
    for name in &names {
        run(docker_cli(s).args([
            "service",
            "create",
            "--detach",
            "--quiet",
            "--replicas",
            "0",
            "--name",
            name,
            &digests[0],
        ]));
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let ctx = Context::open(&dir.join("state"), Config::default()).unwrap();
    let config = dir.join("docker-config");
    std::fs::create_dir_all(&config).unwrap();
    let docker = Docker::new(&ctx).config_dir(&config);
    let host = docker.unix("bench", &s.socket).unwrap();

    // 1. Service updates.
    let api = rt.block_on(async {
        host.client().await.expect("the daemon"); // connect before timing
        let image = Image(digests[1].clone());
        let start = Instant::now();
        for name in &names {
            docker.set_service_image(&host, name, &image).await.expect("an update");
        }
        start.elapsed()
    });
    let cli = {
        let start = Instant::now();
        for name in &names {
            run(docker_cli(s).args(["service", "update", "--detach", "--quiet", "--image", &digests[0], name]));
        }
        start.elapsed()
    };
    for name in &names {
        let image = run(docker_cli(s).args([
            "service",
            "inspect",
            name,
            "--format",
            "{{.Spec.TaskTemplate.ContainerSpec.Image}}",
        ]));
        assert!(image.starts_with(&digests[0]), "the CLI's update of {name} took: {image}");
    }
    let ratio = cli.as_secs_f64() / api.as_secs_f64();
    eprintln!(
        "docker: {n} service updates: API {:.1} ms ({:.2} ms each), docker CLI {:.1} ms ({:.1} ms each): {ratio:.1}x faster",
        ms(api),
        ms(api) / n as f64,
        ms(cli),
        ms(cli) / n as f64
    );

    // 2. An unchanged image's scheduled check.
    let tag = format!("{repo}:one");
    let rounds = if quick() { 3 } else { 20 };
    let check = rt.block_on(async {
        let job = ctx.jobs.create("bench", "bench").unwrap();
        job.start(Level::Harmless, None, None).await.unwrap();
        docker.pull_now(&job, &host, &tag).await.expect("the first check");
        let start = Instant::now();
        for _ in 0..rounds {
            let image = docker.pull_now(&job, &host, &tag).await.expect("a check");
            assert_eq!(image.as_str(), digests[0]);
        }
        let elapsed = start.elapsed();
        let (log, _) = ctx.jobs.read_log(job.id(), 0, 1 << 20).unwrap();
        let log = String::from_utf8_lossy(&log);
        assert_eq!(log.matches("not pulling").count(), rounds + 1, "every check found the image here");
        job.finish();
        elapsed
    });
    let cli_pull = {
        let start = Instant::now();
        for _ in 0..rounds {
            run(docker_cli(s).args(["pull", "-q", &tag]));
        }
        start.elapsed()
    };
    let full_rounds = if quick() { 1 } else { 5 };
    let mut full = Duration::ZERO;
    for _ in 0..full_rounds {
        run(docker_cli(s).args(["rmi", "-f", &tag, &digests[0]]));
        let start = Instant::now();
        run(docker_cli(s).args(["pull", "-q", &tag]));
        full += start.elapsed();
    }
    let per = |d: Duration, k: usize| ms(d) / k as f64;
    eprintln!(
        "docker: unchanged-image check {:.2} ms; `docker pull` (up to date) {:.1} ms ({:.1}x); a pull that downloads {:.1} ms ({:.1}x)",
        per(check, rounds),
        per(cli_pull, rounds),
        per(cli_pull, rounds) / per(check, rounds),
        per(full, full_rounds),
        per(full, full_rounds) / per(check, rounds),
    );
    for name in &names {
        let _ = Command::new("docker")
            .env("DOCKER_HOST", format!("unix://{}", s.socket.display()))
            .args(["service", "rm", name])
            .output();
    }
    if !quick() {
        assert!(ratio >= 3.0, "service updates through the API are only {ratio:.1}x faster than the CLI (target 3x)");
    }
}
