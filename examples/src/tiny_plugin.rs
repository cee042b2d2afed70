//! A complete small plugin, the one ARCHITECTURE.md's "Writing a plugin"
//! walks through. It releases a directory: a monitor watches its `VERSION`
//! file, a builder packs it into a tarball (on a pool of packers), and a
//! latched publisher installs the tarball as the live release, with an API
//! token kept secret. A web route lets a hook ask the monitor to look again.
//!
//! ```no_run
//! use deployer_examples::tiny_plugin::Releases;
//! # fn demo(ctx: &deployer_core::Context) {
//! let releases = Releases::new(ctx, "/srv/releases".into(), "s3cr3t-token".into(), 2);
//! let version = Releases::monitor("/src/app".into());
//! let tarball = releases.pack("pack app", &version.current());
//! let live = releases.install("install app", "app", &tarball);
//! # let _ = live;
//! # }
//! ```

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use deployer_core::cache::{BuildCache, Builder, OutputCache, Publisher};
use deployer_core::monitor::Monitor;
use deployer_core::{Context, Current, Error, Job, Level, Pool, ResultExt, Secret};
use serde::{Deserialize, Serialize};
use tokio::process::Command;

/// What the monitor reads: the directory and the version it says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// The directory.
    pub dir: PathBuf,
    /// The contents of its `VERSION` file.
    pub version: String,
}

/// Packs a source directory into a tarball (a builder: once per source).
struct Pack {
    out: PathBuf,
    pool: Pool,
}

#[async_trait]
impl Builder for Pack {
    const ID: &'static str = "tiny-pack";
    type Key = Source;
    type Value = PathBuf;

    fn describe(&self, key: &Source) -> Option<String> {
        Some(format!("pack {} {}", key.dir.display(), key.version))
    }
    fn pool(&self) -> Option<Pool> {
        Some(self.pool.clone())
    }
    async fn build(&self, job: &Job, key: &Source) -> Result<PathBuf, Error> {
        let tarball = self.out.join(format!("release-{}.tar", key.version));
        // The process's output goes to the job's log; cancelling the job
        // stops it.
        job.exec(Command::new("tar").arg("-cf").arg(&tarball).arg("-C").arg(&key.dir).arg(".")).await?;
        Ok(tarball)
    }
}

/// Installs a tarball as a service's live release (a publisher: once per
/// new tarball). Latched: the old release stays shown while the new one
/// goes in. Idempotent: installing the same tarball twice is harmless.
struct Install {
    live: PathBuf,
    token: Secret<String>,
}

#[async_trait]
impl Publisher for Install {
    const ID: &'static str = "tiny-install";
    type Key = String;
    type Value = PathBuf;
    type Outcome = String;

    fn describe(&self, service: &String, tarball: &PathBuf) -> Option<String> {
        Some(format!("install {} as {service}", tarball.display()))
    }
    fn level(&self) -> Level {
        Level::Dangerous
    }
    fn latched(&self) -> bool {
        true
    }
    fn idempotent(&self) -> bool {
        true
    }
    async fn publish(&self, job: &Job, service: &String, tarball: &PathBuf) -> Result<String, Error> {
        // The token reaches the process, never the log: registered with
        // the context, it is scrubbed from every line.
        job.exec(
            Command::new("sh").arg("-c").arg("echo \"authenticating with $TOKEN\"").env("TOKEN", self.token.expose()),
        )
        .await?;
        let target = self.live.join(format!("{service}.tar"));
        tokio::fs::copy(tarball, &target).await.context(format!("installing {}", target.display()))?;
        Ok(format!("{service} runs {}", tarball.display()))
    }
}

/// The plugin: its caches and settings. Cloning is cheap.
#[derive(Clone)]
pub struct Releases {
    packs: BuildCache<Pack>,
    installs: OutputCache<Install>,
}

impl Releases {
    /// Releases under `root` (tarballs in `root/builds`, live ones in
    /// `root/live`), installed with `token`, packing `packers` at a time.
    pub fn new(ctx: &Context, root: PathBuf, token: String, packers: usize) -> Releases {
        let (builds, live) = (root.join("builds"), root.join("live"));
        for dir in [&builds, &live] {
            if let Err(e) = std::fs::create_dir_all(dir) {
                tracing::error!("creating {}: {e}", dir.display());
            }
        }
        let token = ctx.secret(token);
        Releases {
            packs: BuildCache::new(ctx, Pack { out: builds, pool: Pool::new("packers", packers) }),
            installs: OutputCache::new(ctx, Install { live, token }),
        }
    }

    /// A monitor of `dir`'s `VERSION` file, read every minute and whenever
    /// [`hook`] (a web route) is called.
    pub fn monitor(dir: PathBuf) -> Monitor<Source> {
        Monitor::poll(&format!("{} version", dir.display()), Duration::from_secs(60), move || async move {
            let version = tokio::fs::read_to_string(dir.join("VERSION")).await.context("reading VERSION")?;
            Ok(Source { dir, version: version.trim().to_owned() })
        })
    }

    /// A stage labelled `label` packing each new version.
    pub fn pack(&self, label: &str, source: &Current<Source>) -> Current<PathBuf> {
        self.packs.get(label, source)
    }

    /// A stage labelled `label` installing each new tarball as `service`.
    pub fn install(&self, label: &str, service: &str, tarball: &Current<PathBuf>) -> Current<String> {
        self.installs.set(label, service.to_owned(), tarball)
    }
}

/// A web route for `deployer_web::Site::mount`: `POST /hooks/tiny` with the
/// header `x-tiny-token: <token>` makes `monitor` read again.
pub fn hook(monitor: Monitor<Source>, token: Secret<String>) -> axum::Router {
    use axum::http::{HeaderMap, StatusCode};
    let handler = move |headers: HeaderMap| {
        let (monitor, token) = (monitor.clone(), token.clone());
        async move {
            let given = headers.get("x-tiny-token").and_then(|v| v.to_str().ok()).unwrap_or("");
            // Constant time: compare every byte whatever the first mismatch.
            let expected = token.expose().as_bytes();
            let same = given.len() == expected.len()
                && given.bytes().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
            if !same {
                return (StatusCode::FORBIDDEN, "bad token");
            }
            monitor.refresh();
            (StatusCode::ACCEPTED, "refreshing")
        }
    };
    axum::Router::new().route("/hooks/tiny", axum::routing::post(handler))
}
