//! GitHub's "Re-run" on a commit's check runs every job of that commit
//! again: each architecture's build, not only the last one recorded (the
//! bug of ocurrent-deployer's index), and nothing of other commits, nor of
//! another owner's same-named repository or a commit sharing a prefix.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use deployer_core::cache::{BuildCache, Builder};
use deployer_core::{Config, Context, Current, Engine, Error, Job, Output};
use deployer_examples::deployer::pipeline::rerun_commit;
use deployer_git::CommitId;
use deployer_github::Repo;

/// Counts its builds, by key.
struct Counting(Arc<Mutex<BTreeMap<String, usize>>>);

#[async_trait]
impl Builder for Counting {
    const ID: &'static str = "counting-build";
    type Key = (CommitId, String);
    type Value = String;
    fn describe(&self, (commit, arch): &(CommitId, String)) -> Option<String> {
        Some(format!("docker build {commit} on {arch}"))
    }
    async fn build(&self, _job: &Job, key: &(CommitId, String)) -> Result<String, Error> {
        let name = format!("{} {} {}", key.0.repo, key.0.hash, key.1);
        *self.0.lock().unwrap().entry(name.clone()).or_default() += 1;
        Ok(format!("built {name}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_rebuilds_every_job_of_that_commit_and_only_those() {
    let dir = std::env::temp_dir().join(format!("deployer-rerun-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ctx = Context::open(&dir, Config::default()).unwrap();
    let counts: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let cache = BuildCache::new(&ctx, Counting(counts.clone()));
    let a = "4f2a9c1d00000000000000000000000000000000";
    let prefix_twin = "4f2a9c1e00000000000000000000000000000000";
    let b = "9b1e0aa000000000000000000000000000000000";
    let ours = "https://github.com/Codertocat/app.git";
    let theirs = "https://github.com/mallory/app.git";
    let keys: Vec<(CommitId, String)> = [
        (ours, a, "amd64"),
        (ours, a, "arm64"),
        (ours, b, "amd64"),
        (theirs, a, "amd64"),
        (ours, prefix_twin, "amd64"),
    ]
    .iter()
    .map(|(repo, hash, arch)| (CommitId::new(repo, "refs/heads/main", hash).unwrap(), arch.to_string()))
    .collect();
    let names: Vec<String> = keys.iter().map(|k| format!("{} {} {}", k.0.repo, k.0.hash, k.1)).collect();
    let builds: Vec<Current<String>> =
        keys.iter().enumerate().map(|(i, k)| cache.get(&format!("build {i}"), Current::constant(k.clone()))).collect();
    let engine = Engine::new(Current::all(builds));
    let settle = |want: usize| {
        let (engine, counts) = (&engine, counts.clone());
        async move {
            engine.step();
            tokio::time::timeout(Duration::from_secs(20), async {
                loop {
                    if matches!(engine.output(), Output::Ok(_))
                        && counts.lock().unwrap().values().sum::<usize>() == want
                    {
                        return;
                    }
                    engine.next().await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("{want} builds: {:?}, {:?}", counts.lock().unwrap(), engine.output()));
        }
    };
    settle(5).await;
    let repo = Repo::parse("codertocat/app").unwrap();
    assert_eq!(rerun_commit(&ctx, &repo, &a[..7]).await, 0, "a prefix names no commit");
    assert_eq!(rerun_commit(&ctx, &repo, a).await, 2, "both architectures of 4f2a9c1d");
    settle(7).await;
    let counts = counts.lock().unwrap().clone();
    assert_eq!(counts[&names[0]], 2);
    assert_eq!(counts[&names[1]], 2);
    assert_eq!(counts[&names[2]], 1, "another commit's build is left alone");
    assert_eq!(counts[&names[3]], 1, "another owner's same-named repository is left alone");
    assert_eq!(counts[&names[4]], 1, "a commit with the same 7-hex prefix is left alone");
}
