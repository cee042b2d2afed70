//! A fully local deployer: watches a git repository on this machine, builds
//! and tests each new commit of its `live` branch, and deploys it to a local
//! directory once the tests pass.
//!
//! `cargo run -p deployer-examples --bin local-demo` creates a repository in a
//! temporary directory, makes three commits (the second one breaks the tests),
//! and prints the pipeline's diagram and statistics after each evaluation
//! step. A failed commit leaves the previous deployment in place. Every stage
//! is a job with a log and a history row, shown by the web UI.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use deployer_core::{
    Config, Context, Current, Engine, Error, Expanded, Job, Level, Output, OutputCache, Publisher, ResultExt,
};
use deployer_git::{local_branch, Commit, Git};
use deployer_web::Site;
use tokio::process::Command;

/// How long the demo waits for anything before giving up.
const PATIENCE: Duration = Duration::from_secs(60);

async fn git(repo: &Path, args: &[&str]) -> Result<String, Error> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .output()
        .await
        .context(format!("git {} (is git installed?)", args.join(" ")))?;
    if !out.status.success() {
        return Err(Error::msg(format!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Copies a build into place as the live deployment.
struct DeployToDir {
    out: PathBuf,
}

#[async_trait]
impl Publisher for DeployToDir {
    const ID: &'static str = "deploy-to-dir";
    type Key = String;
    type Value = String;
    type Outcome = String;

    fn describe(&self, key: &String, artefact: &String) -> Option<String> {
        Some(format!("deploy {artefact} as {key}"))
    }
    fn latched(&self) -> bool {
        true // the deployed version stays shown while the next one goes live
    }
    fn idempotent(&self) -> bool {
        true // copying the same file again is harmless
    }
    async fn publish(&self, job: &Job, key: &String, artefact: &String) -> Result<String, Error> {
        let live = self.out.join(format!("{key}.tar"));
        job.log(&format!("copying {artefact} to {}", live.display()));
        tokio::fs::copy(artefact, &live).await.context(format!("deploying to {}", live.display()))?;
        Ok(artefact.clone())
    }
}

fn pipeline(ctx: &Context, repo: &Path, out: &Path) -> Result<Current<String>, Error> {
    // The head of `live`, seen as soon as the branch moves (filesystem
    // notifications on the repository), fetched into a mirror.
    let git = Git::new(ctx);
    let head = local_branch(repo, "live")?.current();
    let commit = git.fetch("fetch live", &head);
    let out = out.to_owned();
    let build = commit.run(ctx, "build", Level::Average, {
        let out = out.clone();
        move |job, commit: Commit| async move {
            let artefact = out.join(format!("build-{}.tar", commit.id.hash.short()));
            let mut context = git.tar_context(&job, &commit).await?;
            let mut file =
                tokio::fs::File::create(&artefact).await.context(format!("creating {}", artefact.display()))?;
            tokio::io::copy(&mut context, &mut file).await.context(format!("writing {}", artefact.display()))?;
            context.finish().await?;
            Ok(artefact.to_string_lossy().into_owned())
        }
    });
    let tests = build
        .run(ctx, "test", Level::Average, |job, artefact: String| async move {
            let version = job.check_output(Command::new("tar").arg("-xOf").arg(&artefact).arg("VERSION")).await?;
            if version.contains("broken") {
                return Err(Error::msg("VERSION says the build is broken"));
            }
            Ok(())
        })
        .ignore_value();
    let deploys = OutputCache::new(ctx, DeployToDir { out });
    Ok(deploys.set("deploy live", "live".to_string(), build.gate(&tests)))
}

/// Commits `version` and moves `live` to it; returns the short hash.
async fn commit(repo: &Path, version: &str) -> Result<String, Error> {
    tokio::fs::write(repo.join("VERSION"), version).await?;
    git(repo, &["add", "VERSION"]).await?;
    git(repo, &["-c", "user.name=demo", "-c", "user.email=demo@localhost", "commit", "-qm", version]).await?;
    git(repo, &["branch", "-f", "live", "HEAD"]).await?;
    git(repo, &["rev-parse", "--short=7", "HEAD"]).await
}

/// Whether the deploy stage shows the build of `hash` as live.
fn deployed(hash: &str) -> impl Fn(&Output<String>) -> bool + '_ {
    move |o| matches!(o, Output::Ok(artefact) if artefact.contains(hash))
}

/// The VERSION file inside the deployed archive.
async fn live_version(out: &Path) -> Result<String, Error> {
    let o = Command::new("tar").arg("-xOf").arg(out.join("live.tar")).arg("VERSION").output().await.context("tar")?;
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

/// Steps until `done` holds, printing each step; gives up after a minute.
async fn settle(engine: &Engine<String>, what: &str, done: impl Fn(&Output<String>) -> bool) -> Result<(), Error> {
    let wait = async {
        loop {
            let report = engine.next().await;
            let out = engine.output();
            println!(
                "step {} ({} nodes recomputed in {:?}): {:?}",
                report.step, report.recomputed, report.duration, out
            );
            if done(&out) {
                println!("{}", engine.diagram(&Expanded::none()).summary());
                println!("stats: {:?}\n", engine.stats());
                return;
            }
        }
    };
    tokio::time::timeout(PATIENCE, wait)
        .await
        .map_err(|_| Error::msg(format!("the demo waited {} s for {what}", PATIENCE.as_secs())))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("deployer-demo-{}", std::process::id()));
    let (repo, out) = (dir.join("repo"), dir.join("out"));
    tokio::fs::create_dir_all(&repo).await?;
    tokio::fs::create_dir_all(&out).await?;
    git(&repo, &["init", "-q", "-b", "main"]).await?;
    let v1 = commit(&repo, "v1").await?;

    let ctx = Context::open(&dir.join("state"), Config::new(None))?;
    let engine = Engine::new(pipeline(&ctx, &repo, &out)?);
    println!("The pipeline before it runs:\n{}", engine.diagram(&Expanded::none()).summary());

    // The web UI, on 127.0.0.1:8080 (or any free port if that is taken).
    let listener = match tokio::net::TcpListener::bind("127.0.0.1:8080").await {
        Ok(l) => l,
        Err(_) => tokio::net::TcpListener::bind("127.0.0.1:0").await?,
    };
    let addr = listener.local_addr()?;
    tokio::spawn(Site::new("local demo", engine.handle(), ctx.clone()).serve(listener));
    println!("web UI: http://{addr}/\n");
    engine.step();
    settle(&engine, "v1 to deploy", deployed(&v1)).await?;
    println!("deployed v1 to {}\n", out.join("live.tar").display());

    commit(&repo, "v2 broken").await?;
    settle(&engine, "v2's tests to fail", |o| o.err().is_some()).await?;
    let live = live_version(&out).await?;
    assert_eq!(live, "v1", "a failed commit must leave the previous deployment in place");
    println!("v2 failed its tests; live.tar still holds {live}\n");

    let v3 = commit(&repo, "v3").await?;
    settle(&engine, "v3 to deploy", deployed(&v3)).await?;
    assert_eq!(live_version(&out).await?, "v3");
    let page = tokio::time::timeout(PATIENCE, http_get(addr, "/")).await??;
    assert!(page.contains("Success!") && page.contains("<svg"), "the web UI shows the deployed pipeline");
    let history = ctx.store.history(Default::default()).await?;
    println!("history (newest first):");
    for row in &history.rows {
        println!("  {} {} {}", row.job_id, if row.ok { "ok    " } else { "failed" }, row.description);
    }
    println!("\ndeployed v3; the web UI at http://{addr}/ shows it (files in {})", dir.display());
    if std::env::args().any(|a| a == "--serve") {
        println!("serving the web UI until Ctrl-C");
        tokio::select! {
            _ = engine.run() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    Ok(())
}

/// A plain HTTP/1.1 GET, enough to check the demo's own web UI.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}
