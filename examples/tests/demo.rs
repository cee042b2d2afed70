//! `demo --once` end to end, against the test Docker Engine and registry
//! (the deployer-docker harness): three commits, a build, push and service
//! update each, the broken one rolled back, and the summary printed.

#[path = "../../deployer-docker/tests/support/docker.rs"]
mod support;

use std::process::Command;

#[test]
fn the_demo_deploys_twice_and_rolls_a_broken_version_back() {
    let s = support::services();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let name = format!("demo-{}", std::process::id());
    let out = Command::new(env!("CARGO_BIN_EXE_demo"))
        .args(["--once", "--listen", "127.0.0.1:0", "--port", &port.to_string(), "--name", &name])
        .arg("--docker")
        .arg(format!("unix://{}", s.socket.display()))
        .args(["--registry", &s.registry])
        .env("TMPDIR", &s.work)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the demo runs");
    let files = s.work.join(format!("deployer-demo-{}", out.id()));
    let out = out.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the demo failed:\n{stdout}\n{stderr}");
    for expected in
        ["v1 deployed and serving", "v2 deployed and serving", "was rolled back", "v2 still serving", "as expected"]
    {
        assert!(stdout.contains(expected), "{expected:?} is missing from:\n{stdout}");
    }
    // The UI is view-only but for its operator, who is given the link that
    // logs in with the site's admin token.
    assert!(stdout.contains("/admin-login?token="), "no admin link in:\n{stdout}");
    for phase in ["detect", "fetch", "build", "push", "update", "converge", "confirm"] {
        assert!(stdout.contains(&format!("{phase} ")), "no {phase} phase in:\n{stdout}");
    }
    // Issue 23: the demo leaves nothing behind.
    assert!(!files.exists(), "{} is left behind", files.display());
    eprintln!("{stdout}");
}
