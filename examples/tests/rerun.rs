//! GitHub's "Re-run" on a commit's check runs every job of that commit
//! again: each architecture's build, not only the last one recorded (the
//! bug of ocurrent-deployer's index), and nothing of other commits.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use deployer_core::cache::{BuildCache, Builder};
use deployer_core::{Config, Context, Current, Engine, Error, Job, Output};
use deployer_examples::deployer::pipeline::rerun_commit;

/// Counts its builds, by key.
struct Counting(Arc<Mutex<BTreeMap<String, usize>>>);

#[async_trait]
impl Builder for Counting {
    const ID: &'static str = "counting-build";
    type Key = String;
    type Value = String;
    fn describe(&self, key: &String) -> Option<String> {
        Some(format!("docker build {key}"))
    }
    async fn build(&self, _job: &Job, key: &String) -> Result<String, Error> {
        *self.0.lock().unwrap().entry(key.clone()).or_default() += 1;
        Ok(format!("built {key}"))
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
    let keys = [
        "app#4f2a9c1 (Dockerfile) on pool:amd64",
        "app#4f2a9c1 (Dockerfile) on pool:arm64",
        "app#9b1e0aa (Dockerfile) on pool:amd64",
    ];
    let builds: Vec<Current<String>> =
        keys.iter().map(|k| cache.get(&format!("build {k}"), Current::constant(k.to_string()))).collect();
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
    settle(3).await;
    assert_eq!(rerun_commit(&ctx, "app", a).await, 2, "both architectures of 4f2a9c1");
    settle(5).await;
    let counts = counts.lock().unwrap().clone();
    assert_eq!(counts[keys[0]], 2);
    assert_eq!(counts[keys[1]], 2);
    assert_eq!(counts[keys[2]], 1, "another commit's build is left alone");
}
