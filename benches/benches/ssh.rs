//! SSH benchmark, against a real OpenSSH server on loopback: 100
//! sequential runs of `true` on one host with deployer-ssh (one connection,
//! reused; a channel and a terminal per run, as `Ssh::run` does), against
//! 100 runs of the OpenSSH client (`ssh host true`, a connection each), in
//! the same run. Target: at least 20 times faster.
//!
//! Both log in as a user whose shell is `/bin/sh`: when run as root, the
//! benchmark adds the system user `deployer-ssh-bench` for the run (and
//! removes it after), so that what is measured is SSH, not the start-up
//! files of this machine's login shell (root's `.bashrc` here runs
//! `pyenv init`, 100 ms per shell, for either client). Otherwise it logs
//! in as the current user.
//!
//! Run with `cargo bench -p deployer-benches --bench ssh`. In quick mode
//! (`cargo test --benches`) each side runs 5 times, as the current user,
//! and the ratio is not checked.

#[path = "../../deployer-ssh/tests/support/sshd.rs"]
mod sshd;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use criterion::{criterion_group, Criterion};
use deployer_benches::quick;
use deployer_core::{Config, Context, Level};
use deployer_ssh::{Host, Ssh};

fn work() -> PathBuf {
    let base = std::env::var_os("DEPLOYER_TEST_WORK").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("bench-ssh-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a work directory");
    dir
}

fn compare(c: &mut Criterion) {
    let runs = if quick() { 5 } else { 100 };
    let dir = work();
    let server = sshd::Sshd::start(&dir.join("sshd"));
    let known = server.known_hosts("known_hosts", server.port);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    let ctx = Context::open(&dir.join("state"), Config::default()).expect("a context");
    let ssh = Ssh::new(&ctx);
    let user = bench_user().unwrap_or_else(|| server.user.clone());
    let host = Host::new(&format!("{user}@127.0.0.1:{}", server.port))
        .expect("a host")
        .key_file(&server.client_key)
        .known_hosts(&known);
    let true_ = vec!["true".to_string()];

    let ours = rt.block_on(async {
        let job = ctx.jobs.create("bench", "bench").expect("a job");
        job.start(Level::Harmless, None, None).await.expect("start");
        // The first run connects; it is timed too.
        let start = Instant::now();
        for _ in 0..runs {
            ssh.exec(&job, &host, &true_).await.expect("true runs");
        }
        let elapsed = start.elapsed();
        job.finish();
        elapsed
    });

    let openssh = {
        let start = Instant::now();
        for _ in 0..runs {
            let status = Command::new("ssh")
                .args(["-q", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-F", "/dev/null"])
                .arg("-o")
                .arg(format!("UserKnownHostsFile={}", known.display()))
                .arg("-i")
                .arg(&server.client_key)
                .arg("-p")
                .arg(server.port.to_string())
                .arg(format!("{user}@127.0.0.1"))
                .arg("true")
                .stdin(Stdio::null())
                .status()
                .expect("the OpenSSH client runs (Debian's openssh-client)");
            assert!(status.success(), "ssh … true failed");
        }
        start.elapsed()
    };
    let ratio = openssh.as_secs_f64() / ours.as_secs_f64();
    eprintln!(
        "ssh: {runs} sequential runs of `true`: deployer-ssh {:.1} ms ({:.2} ms each, one connection); \
         OpenSSH client {:.1} ms ({:.1} ms each); {ratio:.1}x faster",
        ours.as_secs_f64() * 1e3,
        ours.as_secs_f64() * 1e3 / runs as f64,
        openssh.as_secs_f64() * 1e3,
        openssh.as_secs_f64() * 1e3 / runs as f64,
    );
    if !quick() {
        assert!(ratio >= 20.0, "deployer-ssh is only {ratio:.1}x faster than the OpenSSH client (target 20x)");
        let job = rt.block_on(async {
            let job = ctx.jobs.create("bench", "bench").expect("a job");
            job.start(Level::Harmless, None, None).await.expect("start");
            job
        });
        c.bench_function("ssh: true on one host, connection reused", |b| {
            b.iter(|| rt.block_on(ssh.exec(&job, &host, &true_)).expect("true runs"))
        });
        job.finish();
    }
    drop(ssh); // closes the connection
    drop(rt);
    drop(server);
    if user == BENCH_USER {
        // Forced: the server's process for the closed connection may not
        // have exited yet.
        sshd::run(Command::new("userdel").args(["--force", BENCH_USER]));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The user the measured benchmark logs in as, when it may add one.
const BENCH_USER: &str = "deployer-ssh-bench";

/// Adds [`BENCH_USER`] (shell `/bin/sh`, home `/`) when measuring as root.
fn bench_user() -> Option<String> {
    let root = sshd::run(Command::new("id").arg("-u")).trim() == "0";
    if quick() || !root {
        return None;
    }
    let exists = Command::new("id").arg(BENCH_USER).stdout(Stdio::null()).stderr(Stdio::null()).status();
    if !exists.is_ok_and(|s| s.success()) {
        sshd::run(
            Command::new("useradd")
                .args(["--system", "--no-create-home", "--home-dir", "/", "--password", "*"])
                .args(["--shell", "/bin/sh", BENCH_USER]),
        );
    }
    Some(BENCH_USER.to_owned())
}

criterion_group!(benches, compare);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
