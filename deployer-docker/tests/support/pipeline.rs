//! Test-only: what the pipeline tests of this crate share (a directory per
//! test, the test daemon as a host, waiting for an engine, a quick service
//! spec).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::models::{ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated, TaskSpec, TaskSpecContainerSpec};
use deployer_core::{Context, Engine, Output, Value};
use deployer_docker::{Docker, DockerHost, ServiceOptions};

use super::docker::services;

/// A directory for one test.
pub fn dir(name: &str) -> PathBuf {
    let d = services().work.join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Docker with the test daemon as the host `test`, credentials from an
/// empty config directory.
pub fn docker(ctx: &Context, d: &Path) -> (Docker, DockerHost) {
    let config = d.join("docker-config");
    std::fs::create_dir_all(&config).unwrap();
    let docker = Docker::new(ctx).config_dir(&config);
    let host = docker.unix("test", &services().socket).unwrap();
    (docker, host)
}

/// A unique name for this process (tests share one daemon).
pub fn unique(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

/// Steps `engine` until `want` holds (`secs` at most).
pub async fn settle<T: Value + std::fmt::Debug>(
    engine: &Engine<T>,
    what: &str,
    secs: u64,
    want: impl Fn(&Output<T>) -> bool,
) -> Output<T> {
    let wait = Duration::from_secs(secs);
    engine.settle(wait, want).await.unwrap_or_else(|last| panic!("{what}: still {last:?} after {secs} s"))
}

/// The log of `job` so far.
pub fn log(ctx: &Context, job: &str) -> String {
    String::from_utf8(ctx.jobs.read_log(job, 0, 1 << 20).unwrap().0).unwrap()
}

/// A spec for a quick-to-update replicated service (`replicas`, 1 s stop
/// grace).
pub fn quick_spec_with(replicas: u64) -> ServiceSpec {
    ServiceSpec {
        mode: Some(ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated { replicas: Some(replicas as i64) }),
            ..Default::default()
        }),
        task_template: Some(TaskSpec {
            container_spec: Some(TaskSpecContainerSpec {
                stop_grace_period: Some(1_000_000_000),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// [`quick_spec_with`] one replica.
pub fn quick_spec() -> ServiceSpec {
    quick_spec_with(1)
}

/// Options for a quick service: a 2 s window, 90 s to converge, created
/// from [`quick_spec`], drift checked every half second.
pub fn quick_options() -> ServiceOptions {
    ServiceOptions {
        monitor: Duration::from_secs(2),
        deadline: Duration::from_secs(90),
        create: Some(quick_spec()),
        drift_check: Duration::from_millis(500),
    }
}
