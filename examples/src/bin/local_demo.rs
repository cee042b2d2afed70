//! A fully local deployer: watches a git repository on this machine, builds
//! and tests each new commit of its `live` branch, and deploys it to a local
//! directory once the tests pass.
//!
//! `cargo run -p deployer-examples --bin local-demo` creates a repository in a
//! temporary directory, makes three commits (the second one breaks the tests),
//! and prints the pipeline's diagram and statistics after each evaluation
//! step. A failed commit leaves the previous deployment in place.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use deployer_core::monitor::BoxFuture;
use deployer_core::{Config, Context, Current, Engine, Error, Expanded, Monitor, Output};
use deployer_web::Site;
use tokio::process::Command;

async fn git(repo: &Path, args: &[&str]) -> Result<String, Error> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .output()
        .await
        .map_err(|e| Error::msg(format!("git {}: {e} (is git installed?)", args.join(" "))))?;
    if !out.status.success() {
        return Err(Error::msg(format!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The head of `branch` in `repo`, re-read every 200 ms while someone uses it.
fn branch_head(repo: PathBuf, branch: &'static str) -> Monitor<String> {
    let read_repo = repo.clone();
    Monitor::new(
        &format!("{branch} head"),
        move || -> BoxFuture<Result<String, Error>> {
            let repo = read_repo.clone();
            Box::pin(async move { git(&repo, &["rev-parse", branch]).await })
        },
        move |refresh| -> BoxFuture<Result<Box<dyn Send>, Error>> {
            Box::pin(async move {
                let ticker = tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        refresh.refresh();
                    }
                });
                // Dropping the guard stops the ticker.
                struct Stop(tokio::task::JoinHandle<()>);
                impl Drop for Stop {
                    fn drop(&mut self) {
                        self.0.abort();
                    }
                }
                Ok(Box::new(Stop(ticker)) as Box<dyn Send>)
            })
        },
    )
}

fn pipeline(repo: &Path, out: &Path) -> Current<String> {
    let head = branch_head(repo.to_owned(), "live").current();
    let (r, o) = (Arc::new(repo.to_owned()), Arc::new(out.to_owned()));
    let build = head.run("build", {
        let (r, o) = (r.clone(), o.clone());
        move |commit: String| {
            let (r, o) = (r.clone(), o.clone());
            async move {
                let artefact = o.join(format!("build-{}.tar", &commit[..12]));
                git(&r, &["archive", "-o", &artefact.to_string_lossy(), &commit]).await?;
                Ok(artefact.to_string_lossy().into_owned())
            }
        }
    });
    let tests = build
        .run("test", |artefact: String| async move {
            let listing = Command::new("tar").arg("-xOf").arg(&artefact).arg("VERSION").output().await;
            match listing {
                Ok(o) if o.status.success() && !String::from_utf8_lossy(&o.stdout).contains("broken") => Ok(()),
                Ok(_) => Err(Error::msg("VERSION says the build is broken")),
                Err(e) => Err(Error::msg(format!("tar: {e}"))),
            }
        })
        .ignore_value();
    build.gate(&tests).run("deploy", move |artefact: String| {
        let o = o.clone();
        async move {
            let live = o.join("live.tar");
            tokio::fs::copy(&artefact, &live).await.map_err(|e| Error::msg(format!("deploy: {e}")))?;
            Ok(artefact)
        }
    })
}

async fn commit(repo: &Path, version: &str) -> Result<(), Error> {
    tokio::fs::write(repo.join("VERSION"), version).await.map_err(|e| Error::msg(e.to_string()))?;
    git(repo, &["add", "VERSION"]).await?;
    git(repo, &["-c", "user.name=demo", "-c", "user.email=demo@localhost", "commit", "-qm", version]).await?;
    git(repo, &["branch", "-f", "live", "HEAD"]).await?;
    Ok(())
}

/// The VERSION file inside the deployed archive.
async fn live_version(out: &Path) -> Result<String, Error> {
    let o = Command::new("tar").arg("-xOf").arg(out.join("live.tar")).arg("VERSION").output().await;
    o.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).map_err(|e| Error::msg(format!("tar: {e}")))
}

async fn settle(engine: &Engine<String>, done: impl Fn(&Output<String>) -> bool) {
    loop {
        let report = engine.next().await;
        let out = engine.output();
        println!("step {} ({} nodes recomputed in {:?}): {:?}", report.step, report.recomputed, report.duration, out);
        if done(&out) {
            println!("{}", engine.diagram(&Expanded::none()).summary());
            println!("stats: {:?}\n", engine.stats());
            return;
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("deployer-demo-{}", std::process::id()));
    let (repo, out) = (dir.join("repo"), dir.join("out"));
    tokio::fs::create_dir_all(&repo).await?;
    tokio::fs::create_dir_all(&out).await?;
    git(&repo, &["init", "-q", "-b", "main"]).await?;
    commit(&repo, "v1").await?;

    let engine = Engine::new(pipeline(&repo, &out));
    println!("The pipeline before it runs:\n{}", engine.diagram(&Expanded::none()).summary());

    // The web UI, on 127.0.0.1:8080 (or any free port if that is taken).
    let ctx = Context::open(&dir.join("state"), Config::new(None))?;
    let listener = match tokio::net::TcpListener::bind("127.0.0.1:8080").await {
        Ok(l) => l,
        Err(_) => tokio::net::TcpListener::bind("127.0.0.1:0").await?,
    };
    let addr = listener.local_addr()?;
    tokio::spawn(Site::new("local demo", engine.handle(), ctx).serve(listener));
    println!("web UI: http://{addr}/\n");
    engine.step();
    settle(&engine, |o| o.is_ok()).await;
    println!("deployed v1 to {}\n", out.join("live.tar").display());

    commit(&repo, "v2 broken").await?;
    settle(&engine, |o| o.err().is_some()).await;
    let live = live_version(&out).await?;
    assert_eq!(live, "v1", "a failed commit must leave the previous deployment in place");
    println!("v2 failed its tests; live.tar still holds {live}\n");

    commit(&repo, "v3").await?;
    settle(&engine, |o| matches!(o, Output::Ok(a) if a.contains("build-"))).await;
    assert_eq!(live_version(&out).await?, "v3");
    let page = http_get(addr, "/").await?;
    assert!(page.contains("Success!") && page.contains("<svg"), "the web UI shows the deployed pipeline");
    println!("deployed v3; the web UI at http://{addr}/ shows it (files in {})", dir.display());
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
