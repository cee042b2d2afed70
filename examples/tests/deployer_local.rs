//! `deployer-local` end to end on one repository of the tarides flavour
//! (ocurrent/ocurrent-deployer: branch `live-ci3` →
//! `ocurrent/ci.ocamllabs.io-deployer:live-ci3` → the Swarm service
//! `infra_tarides-deployer`, built with BuildKit), against local stand-ins:
//! GitHub's API (the deployer-github test fake, read anonymously), a git
//! repository over `file://`, and the test Docker Engine in swarm mode
//! with its registry. The binary runs as users run it.

#[path = "../../deployer-web/tests/browser/mod.rs"]
#[allow(dead_code)] // shared with deployer-web's tests, which use all of it
mod browser;
#[path = "../../deployer-github/tests/support/fake_github.rs"]
mod fake_github;
#[path = "../../deployer-docker/tests/support/docker.rs"]
mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{busybox_context, docker_cli, run, services, SERVE};

/// Kills the deployer when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
    run(Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=test", "-c", "user.email=test@example.org"])
        .args(args))
}

/// Waits up to `secs` for `check` to give `Some`, failing with `what` and
/// every job log under `state` (what the deployer was doing).
fn wait<T>(secs: u64, what: &str, state: &Path, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() > deadline {
            let mut logs = String::new();
            for day in std::fs::read_dir(state.join("job")).into_iter().flatten().flatten() {
                for log in std::fs::read_dir(day.path()).into_iter().flatten().flatten() {
                    logs += &format!(
                        "== {}\n{}\n",
                        log.path().display(),
                        std::fs::read_to_string(log.path()).unwrap_or_default()
                    );
                }
            }
            // And what Docker says of the services and their tasks.
            let docker = |args: &[&str]| {
                let out = docker_cli(services()).args(args).output();
                out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr))
                    .unwrap_or_default()
            };
            let tasks = docker(&["service", "ps", "--no-trunc", "infra_tarides-deployer"]);
            let containers = docker(&["ps", "-a", "--no-trunc"]);
            panic!("{what}: not within {secs} s\n{logs}\n== tasks\n{tasks}\n== containers\n{containers}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A busybox web server context saying `version`, whose Dockerfile's first
/// step is this test's own: the daemon is shared with other tests, and the
/// legacy builder would otherwise take their cached layers (an arm64
/// build's, say) for this image's.
fn context(dir: &Path, version: &str) -> std::path::PathBuf {
    let dir = busybox_context(dir, version, SERVE);
    let file = dir.join("Dockerfile");
    let text = std::fs::read_to_string(&file).unwrap();
    let text = text.replacen(
        "FROM scratch\n",
        &format!("FROM scratch\nLABEL test=deployer-local-{}\n", std::process::id()),
        1,
    );
    std::fs::write(&file, text).unwrap();
    dir
}

/// Starts `deployer-local` on the tarides flavour's own repository.
fn start(
    s: &support::Services,
    work: &Path,
    gh: &fake_github::FakeGitHub,
    listen: std::net::SocketAddr,
    n: u32,
) -> Running {
    let child = Command::new(env!("CARGO_BIN_EXE_deployer-local"))
        .args(["--flavour", "tarides", "ocurrent/ocurrent-deployer"])
        .arg(format!("--state-dir={}", work.join("state").display()))
        .arg(format!("--listen={listen}"))
        .arg(format!("--docker=unix://{}", s.socket.display()))
        .arg(format!("--registry={}", s.registry))
        .arg(format!("--github-api={}", gh.url))
        .arg(format!("--git-base=file://{}", work.join("git").display()))
        .arg("--poll-every=2")
        .env("DOCKER_CONFIG", s.work.join("cli-config"))
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(work.join(format!("deployer-{n}.log"))).unwrap()))
        .spawn()
        .expect("deployer-local starts");
    Running(child)
}

/// The job logs of `op` (`docker-service`) under `state`, oldest first.
fn job_logs(state: &Path, op: &str) -> Vec<String> {
    let mut paths: Vec<_> = std::fs::read_dir(state.join("job"))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|day| std::fs::read_dir(day.path()).into_iter().flatten().flatten().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().contains(op)))
        .collect();
    paths.sort();
    paths.iter().map(|p| std::fs::read_to_string(p).unwrap_or_default()).collect()
}

/// The deployer deploys itself (tarides: `live-ci3` → `infra_tarides-deployer`).
/// Updating its own service restarts it in the middle of that publish (here:
/// killed with SIGKILL while the update is being health-checked); started
/// again on the same state, it finishes the update without an operator.
#[test]
fn deployer_local_deploys_itself_and_finishes_after_being_killed_mid_update() {
    let s = services();
    let work = s.work.join(format!("deployer-local-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let state = work.join("state");
    const SERVICE: &str = "infra_tarides-deployer";

    // The repository: a busybox web server saying "v1" on `live-ci3`, in a
    // bare repository where --git-base says GitHub's would be.
    let src = context(&work.join("src"), "v1");
    git(&src, &["init", "-q", "-b", "live-ci3"]);
    git(&src, &["add", "."]);
    git(&src, &["commit", "-q", "-m", "v1"]);
    let hash = git(&src, &["rev-parse", "HEAD"]);
    let bare = work.join("git/ocurrent/ocurrent-deployer.git");
    std::fs::create_dir_all(bare.parent().unwrap()).unwrap();
    run(Command::new("git").args(["clone", "-q", "--bare"]).arg(&src).arg(&bare));

    // The service exists (as Ansible creates it in production), running v0.
    let v0_dir = context(&work.join("v0"), "v0");
    let v0 = format!("{}/deployer-v0:{}", s.registry, std::process::id());
    run(docker_cli(s).args(["build", "-q", "-t", &v0]).arg(&v0_dir));
    run(docker_cli(s).args(["push", "-q", &v0]));
    let _ = docker_cli(s).args(["service", "rm", SERVICE]).output();
    run(docker_cli(s).args(["service", "create", "-q", "--detach", "--name", SERVICE, &v0]));
    wait(60, "v0 serving", &state, || (served_by_opt(s, SERVICE).as_deref() == Some("v0")).then_some(()));

    // GitHub: the branch's head.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let gh = rt.block_on(fake_github::FakeGitHub::start(&work));
    gh.set_branch("ocurrent/ocurrent-deployer", "live-ci3", &hash);
    let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();

    // First run: killed while its service update is in progress.
    let first = start(s, &work, &gh, listen, 1);
    wait(240, "the service update in progress", &state, || {
        job_logs(&state, "docker-service")
            .first()
            .is_some_and(|l| l.contains("Updating") || l.contains("update"))
            .then_some(())
    });
    drop(first); // SIGKILL
    let cut = job_logs(&state, "docker-service");
    assert_eq!(cut.len(), 1, "one update started");
    assert!(!cut[0].contains("Job succeeded"), "killed mid-update:\n{}", cut[0]);

    // Second run, same state: the interrupted update runs again and ends.
    let _second = start(s, &work, &gh, listen, 2);
    let target = format!("{}/ocurrent/ci.ocamllabs.io-deployer", s.registry);
    let image = wait(240, "the service updated to the target's digest", &state, || {
        let image = run(docker_cli(s).args([
            "service",
            "inspect",
            "--format",
            "{{.Spec.TaskTemplate.ContainerSpec.Image}}",
            SERVICE,
        ]));
        image.starts_with(&format!("{target}@sha256:")).then_some(image)
    });
    wait(120, "the re-run update finished", &state, || {
        // (Job ids start with the second they were made in: both logs may
        // share it, so they are told apart by content, not order.)
        let logs = job_logs(&state, "docker-service");
        let ended = |l: &String| l.contains("Job succeeded") || l.contains("Job failed");
        let succeeded = logs.iter().filter(|l| l.contains("Job succeeded")).count();
        (logs.len() == 2 && succeeded == 1 && logs.iter().filter(|l| !ended(l)).count() == 1).then_some(())
    });
    wait(60, "v1 serving", &state, || (served_by_opt(s, SERVICE).as_deref() == Some("v1")).then_some(()));
    // The registry's `live-ci3` tag is that digest (a manifest list).
    let digest = image.rsplit_once('@').unwrap().1;
    let head = http(
        &s.registry,
        "HEAD",
        "/v2/ocurrent/ci.ocamllabs.io-deployer/manifests/live-ci3",
        "Accept: application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json\r\n",
    );
    assert!(head.to_ascii_lowercase().contains(&format!("docker-content-digest: {digest}")), "{head}");
    // The web UI shows the pipeline.
    let page = http(&listen.to_string(), "GET", "/", "");
    assert!(
        page.contains("ocurrent/ocurrent-deployer") && page.contains(&format!("docker service {SERVICE}")),
        "{page}"
    );
    let log = std::fs::read_to_string(work.join("deployer-2.log")).unwrap_or_default();
    assert!(log.contains("web UI on http://"), "{log}");
    // Flavours issue 8: upstream's per-repository counters in /metrics
    // (v1's build and deploy, as this process saw them after its restart).
    let metrics = http(&listen.to_string(), "GET", "/metrics", "");
    for want in [
        "deployer_build_builds_total{type=\"docker\",service=\"ocurrent/ocurrent-deployer\"} ",
        "deployer_build_deployments_total{type=\"docker\",service=\"ocurrent/ci.ocamllabs.io-deployer\"} ",
    ] {
        assert!(metrics.contains(want), "{want} in {metrics}");
    }

    // v2 lands on the branch; GitHub is read again (every 2 s here).
    std::fs::write(src.join("index.html"), "v2\n").unwrap();
    git(&src, &["commit", "-q", "-am", "v2"]);
    let hash2 = git(&src, &["rev-parse", "HEAD"]);
    git(&src, &["push", "-q", bare.to_str().unwrap(), "live-ci3"]);
    gh.set_branch("ocurrent/ocurrent-deployer", "live-ci3", &hash2);
    let spec_image = || {
        run(docker_cli(s).args([
            "service",
            "inspect",
            "--format",
            "{{.Spec.TaskTemplate.ContainerSpec.Image}}",
            SERVICE,
        ]))
    };
    let image2 = wait(240, "v2 deployed", &state, || Some(spec_image()).filter(|i| *i != image));
    wait(60, "v2 serving", &state, || (served_by_opt(s, SERVICE).as_deref() == Some("v2")).then_some(()));

    // The services overview and rolling back from the UI, in Chromium.
    rt.block_on(async {
        let mut chrome = browser::Chromium::launch().await;
        let base = format!("http://{listen}");
        // No login configured: the operator logs in with the admin token
        // the deployer made in its state directory (nobody else may act).
        let token = std::fs::read_to_string(work.join("state/web-admin-token")).expect("the admin token file");
        chrome.navigate(&format!("{base}/admin-login")).await;
        chrome.eval(&format!("location.href = '/admin-login?token={}'", token.trim())).await;
        chrome.wait_for("(document.readyState === 'complete' && location.pathname === '/') || null").await;
        let text = service_row(&mut chrome, &format!("{base}/services"), SERVICE, &["converged", &hash2[..8]]).await;
        assert!(text.contains("chives.caelum.ci.dev") && text.contains("deploy.ci.dev"), "{text}");
        assert!(text.contains(&short(&image2)), "the running image's digest: {text}");
        chrome.screenshot(&work.join("services.png")).await;
        // The service's page: both versions, v1 with "deploy this version again".
        chrome
            .eval(&format!("document.querySelector('a[href=\"/services/chives.caelum.ci.dev/{SERVICE}\"]').click()"))
            .await;
        chrome.wait_for("document.querySelectorAll('tr.version').length >= 2 || null").await;
        let versions =
            chrome.eval("[...document.querySelectorAll('tr.version')].map(r => r.innerText).join('\\n')").await;
        assert!(versions.contains(&hash[..8]) && versions.contains(&hash2[..8]), "{versions}");
        assert!(versions.contains("running now"), "{versions}");
        let forms = chrome.eval("document.querySelectorAll('tr.version form button').length").await;
        assert_eq!(forms, "1", "one earlier version to deploy again:\n{versions}");
        chrome.eval("document.querySelector('tr.version form button').click()").await;
        chrome
            .wait_for("document.querySelector('p.notice') && location.search.includes('notice=pinned') || null")
            .await;
    });
    // The service goes back to v1, deployed by the pipeline's own job.
    wait(240, "v1 deployed again", &state, || Some(spec_image()).filter(|i| *i == image));
    wait(60, "v1 serving again", &state, || (served_by_opt(s, SERVICE).as_deref() == Some("v1")).then_some(()));
    wait(60, "the rollback job recorded", &state, || {
        let logs = job_logs(&state, "docker-service");
        logs.iter()
            .any(|l| {
                l.contains(&format!(":= {image}"))
                    && l.contains("Job succeeded")
                    && l.contains(&format!("from {image2}"))
            })
            .then_some(())
    });
    rt.block_on(async {
        let mut chrome = browser::Chromium::launch().await;
        service_row(&mut chrome, &format!("http://{listen}/services"), SERVICE, &["converged", &hash[..8]]).await;
    });
    let _ = docker_cli(s).args(["service", "rm", SERVICE]).output();
}

/// The text of `service`'s row on the overview at `url`, once it contains
/// every one of `must` (the page is loaded again until then, 60 s at most).
async fn service_row(chrome: &mut browser::Chromium, url: &str, service: &str, must: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    let find = format!(
        "[...document.querySelectorAll('tr.service')].map(r => r.innerText).find(t => t.includes('{service}')) || ''"
    );
    loop {
        chrome.navigate(url).await;
        let text = chrome.eval(&find).await;
        if must.iter().all(|m| text.contains(m)) {
            return text;
        }
        assert!(Instant::now() < deadline, "the overview's row for {service} never showed {must:?}: {text:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `sha256:` and the first 12 hex digits of an image's digest.
fn short(image: &str) -> String {
    let hex = image.rsplit_once("sha256:").map_or(image, |(_, h)| h);
    format!("sha256:{}", &hex[..12])
}

/// What `GET /index.html` answers inside a running task of `service`, if
/// one runs.
fn served_by_opt(s: &support::Services, service: &str) -> Option<String> {
    let ids = docker_cli(s)
        .args(["ps", "-q", "--filter"])
        .arg(format!("label=com.docker.swarm.service.name={service}"))
        .output()
        .ok()?;
    let ids = String::from_utf8_lossy(&ids.stdout).into_owned();
    let id = ids.lines().next()?;
    let out = docker_cli(s)
        .args(["exec", id, "/bin/busybox", "wget", "-qO-", "http://127.0.0.1:8080/index.html"])
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// An HTTP/1.1 request to `addr` (`host:port`); the whole response.
fn http(addr: &str, method: &str, path: &str, headers: &str) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    write!(c, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    out
}
