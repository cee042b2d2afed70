//! Registry credentials from a docker credential helper named in
//! `config.json` (`credHelpers`), against a registry that asks for a
//! password. Its own test binary: the helper is found on `PATH`, which the
//! test sets before anything else runs.

mod support {
    pub mod docker;
}

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use deployer_core::{Config, Context, Current, Engine, Output};
use deployer_docker::{BuildOptions, BuildSource, Docker};
use support::docker::{busybox_context, registry_with_password, services, SERVE};

const PASSWORD: &str = "helper-given-7731";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_helper_gives_the_password() {
    // The helper: `docker-credential-deployertest get`, the server on stdin.
    let s = services();
    let bin = s.work.join("helper-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let helper = bin.join("docker-credential-deployertest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\nread server\n[ \"$1\" = get ] || exit 1\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"bob\",\"Secret\":\"{PASSWORD}\"}}' \"$server\"\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    std::env::set_var("PATH", path); // alone in this binary
    let registry = registry_with_password("bob", PASSWORD);
    let d = s.work.join("helper");
    std::fs::create_dir_all(d.join("config")).unwrap();
    std::fs::write(d.join("config/config.json"), format!(r#"{{"credHelpers":{{"{registry}":"deployertest"}}}}"#))
        .unwrap();
    let ctx = Context::open(&d.join("state"), Config::default()).unwrap();
    let docker = Docker::new(&ctx).config_dir(&d.join("config"));
    let host = docker.unix("test", &s.socket).unwrap();
    busybox_context(&d.join("ctx"), "helped", SERVE);
    let image =
        docker.build("build", &host, &Current::constant(BuildSource::Dir(d.join("ctx"))), BuildOptions::default());
    let pushed = docker.push(&host, &format!("{registry}/helped:live"), &image).unwrap();
    let engine = Engine::new(pushed);
    engine.step();
    let out = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            if !matches!(engine.output(), Output::Active(_)) {
                return engine.output();
            }
            engine.next().await;
        }
    })
    .await
    .expect("the push ends within 120 s");
    assert!(matches!(out, Output::Ok(_)), "{out:?}");
    for row in ctx.store.history(Default::default()).await.unwrap().rows {
        let log = String::from_utf8(ctx.jobs.read_log(&row.job_id, 0, 1 << 20).unwrap().0).unwrap();
        assert!(!log.contains(PASSWORD) && !row.outcome.contains(PASSWORD), "{log}");
    }
}
