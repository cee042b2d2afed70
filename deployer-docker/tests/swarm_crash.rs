//! Issue 20 §2: the deployer SIGKILLed 50 times during real swarm deploys
//! (the real service publisher, the test dockerd in swarm mode, images in
//! the test registry), as `deployer-core/tests/crash.rs` does with
//! synthetic publishers.
//!
//! A child process deploys three services, each to the version the parent
//! wants (the file `wanted`), and prints `ack <service> <image>` once a
//! stage shows the deploy. The parent moves a service to a new version now
//! and then, starts the child and kills it (SIGKILL) at a random moment,
//! 50 times, then lets one child run to the end. Swarm's own event stream
//! (`docker events`, read by the parent from before the first deploy) says
//! what the daemon was asked to do.
//!
//! Checked: after every kill the database reopens and every acknowledged
//! deploy is in it (0 outcomes lost); at the end every service runs the
//! version last wanted with no operator (the service update is idempotent,
//! so an interrupted one is simply done again: 0 operator waits); and swarm
//! saw each service updated to each version at most once, with no forced
//! update (0 services updated twice for one value). The figures are
//! printed.
//!
//! This file is its own test binary without libtest's harness: the parent
//! re-executes it with `DEPLOYER_SWARM_CRASH_CHILD` set to run the child.

mod support {
    pub mod docker;
    pub mod pipeline;
}

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use deployer_core::store::{HistoryQuery, Store};
use deployer_core::{Config, Context, Current, Engine, Output};
use deployer_docker::Image;
use support::docker::{busybox_context, docker_cli, run, services, SERVE};
use support::pipeline::{docker, quick_options, unique};

const SERVICES: usize = 3;
const KILLS: usize = 50;
const CHILD_ENV: &str = "DEPLOYER_SWARM_CRASH_CHILD";

fn main() {
    match std::env::var_os(CHILD_ENV) {
        Some(dir) => child(Path::new(&dir)),
        None => parent(),
    }
}

/// The services and the image each should run, from `dir/wanted`
/// (`<service> <image>` lines).
fn wanted(dir: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(dir.join("wanted"))
        .expect("the wanted file")
        .lines()
        .map(|l| l.split_once(' ').map(|(s, i)| (s.to_owned(), i.to_owned())).expect("a wanted line"))
        .collect()
}

/// Deploys each wanted service, one engine per service; prints `running`
/// once the engines have started, `ack <service> <image>` when a stage
/// shows its deploy, and exits once all are deployed (a killed child never
/// gets there).
fn child(dir: &Path) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let ctx = Context::open(&dir.join("state"), Config::default()).expect("the store opens");
        let (docker, host) = docker(&ctx, dir);
        let mut tasks = Vec::new();
        for (name, image) in wanted(dir) {
            let deployed = docker.service(&host, &name, &Current::constant(Image(image.clone())), quick_options());
            let engine = Engine::new(deployed);
            tasks.push(tokio::spawn(async move {
                let out = engine
                    .settle(Duration::from_secs(240), |o| matches!(o, Output::Ok(d) if d.image.as_str() == image))
                    .await;
                match out {
                    Ok(_) => println!("ack {name} {image}"),
                    Err(last) => println!("stuck {name} {image}: {last:?}"),
                }
            }));
        }
        println!("running");
        for t in tasks {
            t.await.unwrap();
        }
    });
}

/// Builds `count` versions of a web server and pushes them to the test
/// registry; gives their references by digest (`repo@sha256:…`).
fn images(dir: &Path, count: usize) -> Vec<String> {
    let s = services();
    let repo = format!("{}/{}", s.registry, unique("swarm-crash"));
    (0..count)
        .map(|v| {
            let context = busybox_context(&dir.join(format!("v{v}")), &format!("v{v}"), SERVE);
            let tag = format!("{repo}:v{v}");
            run(docker_cli(s).args(["build", "-q", "-t", &tag]).arg(&context));
            run(docker_cli(s).args(["push", "-q", &tag]));
            let digests = run(docker_cli(s).args(["inspect", "--format", "{{json .RepoDigests}}", &tag]));
            let digests: Vec<String> = serde_json::from_str(digests.trim()).unwrap();
            digests.into_iter().find(|d| d.starts_with(&repo)).expect("a digest from the push")
        })
        .collect()
}

/// Runs the child; with `kill_after`, SIGKILLs it that long after it
/// started its engines. Gives the lines it printed.
fn run_child(dir: &Path, kill_after: Option<Duration>) -> Vec<String> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the child starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    match kill_after {
        Some(delay) => {
            loop {
                match rx.recv_timeout(Duration::from_secs(60)) {
                    Ok(line) if line == "running" => break,
                    Ok(line) => lines.push(line),
                    Err(_) => {
                        let _ = child.kill();
                        panic!("the child did not start its engines within 60 s");
                    }
                }
            }
            std::thread::sleep(delay);
            // SIGKILL: no destructor, no flush, no chance to finish anything.
            let _ = child.kill();
            let _ = child.wait();
        }
        None => {
            let deadline = Instant::now() + Duration::from_secs(300);
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    assert!(status.success(), "the final child failed: {status}");
                    break;
                }
                assert!(Instant::now() < deadline, "the final child did not finish within 300 s");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    lines
}

/// The successful deploys in the store, as `(service, image)`, and how
/// many deploy jobs were cut by a kill (`interrupted`).
fn recorded(dir: &Path) -> (BTreeSet<(String, String)>, usize) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let store = Store::open(&dir.join("state").join("db.sqlite"))
            .unwrap_or_else(|e| panic!("the database does not reopen: {e}"));
        let (mut ok, mut interrupted) = (BTreeSet::new(), 0);
        let mut query = HistoryQuery { op: Some("docker-service".into()), limit: 1000, ..Default::default() };
        loop {
            let page = store.history(query.clone()).await.unwrap();
            for row in &page.rows {
                interrupted += usize::from(row.interrupted);
                // `docker service <name> := <image> on <host>`
                let what = row.description.strip_prefix("docker service ").expect("a service deploy");
                let (name, rest) = what.split_once(" := ").unwrap();
                let image = rest.rsplit_once(" on ").unwrap().0;
                if row.ok {
                    ok.insert((name.to_owned(), image.to_owned()));
                }
            }
            match page.next {
                Some(next) => query.after = Some(next),
                None => break,
            }
        }
        (ok, interrupted)
    })
}

/// `docker events` for services, written to `file` until dropped.
struct Events(Child);

impl Events {
    fn start(file: &Path) -> Events {
        let out = std::fs::File::create(file).unwrap();
        let child = docker_cli(services())
            .args(["events", "--filter", "type=service", "--format", "{{json .}}"])
            .stdout(out)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("docker events starts");
        Events(child)
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What swarm was asked to do to `names`, from the event stream: creates
/// and image updates per `(service, image)`, and updates that changed
/// nothing the events name (a forced update: new tasks for the same image).
fn swarm_saw(file: &Path, names: &[String]) -> (BTreeMap<(String, String), usize>, usize) {
    let (mut deploys, mut forced) = (BTreeMap::new(), 0);
    for line in std::fs::read_to_string(file).unwrap().lines() {
        let event: serde_json::Value = serde_json::from_str(line).expect("docker events writes JSON lines");
        let attributes = &event["Actor"]["Attributes"];
        let Some(name) = attributes["name"].as_str().filter(|n| names.iter().any(|m| m == n)) else { continue };
        match event["Action"].as_str() {
            Some("create") => {}
            Some("update") => {
                if let Some(image) = attributes["image.new"].as_str() {
                    *deploys.entry((name.to_owned(), image.to_owned())).or_insert(0) += 1;
                } else if attributes.as_object().is_some_and(|a| a.len() == 1) {
                    forced += 1;
                }
            }
            _ => {}
        }
    }
    (deploys, forced)
}

/// A small deterministic random number generator (splitmix64).
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn parent() {
    let s = services();
    let dir: PathBuf = support::pipeline::dir("swarm-crash");
    let kills = std::env::var("SWARM_CRASH_KILLS").ok().and_then(|k| k.parse().ok()).unwrap_or(KILLS);
    let started = Instant::now();
    // A new version for a service every other round or so.
    let versions = images(&dir, 2 + kills / 2);
    let names: Vec<String> = (0..SERVICES).map(|i| unique(&format!("crash-web{i}"))).collect();
    let events = Events::start(&dir.join("events"));
    std::thread::sleep(Duration::from_millis(500));
    let mut current: Vec<usize> = vec![0; SERVICES];
    let mut next_version = 1;
    let write_wanted = |current: &[usize]| {
        let lines: String = names.iter().zip(current).map(|(n, v)| format!("{n} {}\n", versions[*v])).collect();
        std::fs::write(dir.join("wanted"), lines).unwrap();
    };
    write_wanted(&current);
    let mut seed = 0x5eed_5a4d_u64;
    let mut acked = BTreeSet::new();
    let mut interrupted = 0;
    let mut kills_mid_deploy = 0;
    for round in 0..kills {
        if round > 0 && next_version < versions.len() && splitmix(&mut seed) % 2 == 0 {
            let service = (splitmix(&mut seed) % SERVICES as u64) as usize;
            current[service] = next_version;
            next_version += 1;
            write_wanted(&current);
        }
        let delay = Duration::from_millis(splitmix(&mut seed) % 4000);
        for line in run_child(&dir, Some(delay)) {
            if let Some((name, image)) = line.strip_prefix("ack ").and_then(|l| l.split_once(' ')) {
                acked.insert((name.to_owned(), image.to_owned()));
            }
        }
        let (ok, cut) = recorded(&dir);
        for deploy in &acked {
            assert!(ok.contains(deploy), "round {round}: {deploy:?} was acknowledged but its outcome is lost");
        }
        if cut > interrupted {
            kills_mid_deploy += 1;
        }
        interrupted = cut;
    }
    let lines = run_child(&dir, None);
    let finals: BTreeSet<(String, String)> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("ack ")?.split_once(' ').map(|(n, i)| (n.to_owned(), i.to_owned())))
        .collect();
    let stuck: Vec<&String> = lines.iter().filter(|l| l.starts_with("stuck ")).collect();
    assert!(stuck.is_empty(), "a service waits (for an operator?): {stuck:?}");
    let want: BTreeSet<(String, String)> =
        names.iter().zip(&current).map(|(n, v)| (n.clone(), versions[*v].clone())).collect();
    assert_eq!(finals, want, "every service ends on the version last wanted");
    for (name, image) in &want {
        let spec = run(docker_cli(s).args([
            "service",
            "inspect",
            name,
            "--format",
            "{{.Spec.TaskTemplate.ContainerSpec.Image}}",
        ]));
        assert!(spec.trim().ends_with(image.rsplit_once('@').unwrap().1), "{name} runs {spec}, not {image}");
    }
    let (ok, cut) = recorded(&dir);
    assert!(acked.is_subset(&ok), "an acknowledged deploy is lost");
    // Let the event stream catch up, then read what swarm was asked to do.
    std::thread::sleep(Duration::from_secs(1));
    drop(events);
    let (deploys, forced) = swarm_saw(&dir.join("events"), &names);
    let twice: Vec<_> = deploys.iter().filter(|(_, n)| **n > 1).collect();
    println!(
        "{kills} SIGKILLs in {:.0} s ({kills_mid_deploy} while a deploy job ran; {cut} deploy jobs cut in all); \
         {} deploys acknowledged, {} image updates sent to swarm besides the {SERVICES} creates ({} versions wanted in all); \
         {} services updated twice for one value, {forced} forced updates; 0 outcomes lost; 0 operator waits",
        started.elapsed().as_secs_f64(),
        acked.len(),
        deploys.len(),
        next_version + SERVICES - 1,
        twice.len(),
    );
    assert!(twice.is_empty(), "updated twice for one value: {twice:?}");
    assert_eq!(forced, 0, "forced updates (new tasks for an image already deployed)");
    assert!(kills_mid_deploy > 0, "no kill landed during a deploy: the test proves nothing");
    run(docker_cli(s).args(["service", "rm"]).args(&names));
}
