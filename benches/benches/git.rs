//! Git benchmark, against real git.
//!
//! 1. Change detection: a watched local branch (`deployer_git::local_branch`
//!    in a running engine) is moved 200 times: 100 times by `git update-ref`
//!    (a loose ref), then, once the refs are packed, 100 times by rewriting
//!    `packed-refs` only (as `git pack-refs` and some servers do). Each latency runs from just before the
//!    update starts to the moment an observer of the head stage sees the new
//!    commit; the p99 must be under 50 ms.
//! 2. Build contexts: a commit of 10,000 files (100 directories of 100
//!    files), fetched into a mirror, streamed as a tar context
//!    (`Git::tar_context`), against `git archive` of the same commit in the
//!    original repository; the same files as the submodule of a small
//!    repository (two archives joined into one context); and checked out
//!    into a directory.
//!
//! Run with `cargo bench -p deployer-benches --bench git`. In quick mode
//! (`cargo test --benches`) it moves the branch 20 times, the repository has
//! 500 files, and only the answers are checked.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use deployer_benches::quick;
use deployer_core::{Config, Context, Engine, Level, Output};
use deployer_git::{local_branch, Commit, Git};
use tokio::io::AsyncReadExt;

/// Nothing here may take longer than this.
const PATIENCE: Duration = Duration::from_secs(30);

fn work(name: &str) -> PathBuf {
    let base = std::env::var_os("DEPLOYER_TEST_WORK").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("bench-git-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a work directory");
    dir
}

/// Runs git in `dir`; panics with its stderr if it fails.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=bench", "-c", "user.email=bench@localhost"])
        .args(args)
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Moves `refs/heads/live` to `hash` by rewriting `packed-refs` only, the
/// way git does: a lock file renamed into place (no loose ref exists).
fn move_packed(git_dir: &Path, hash: &str) {
    let lock = git_dir.join("packed-refs.lock");
    std::fs::write(&lock, format!("# pack-refs with: peeled fully-peeled sorted \n{hash} refs/heads/live\n"))
        .expect("write packed-refs.lock");
    std::fs::rename(&lock, git_dir.join("packed-refs")).expect("rename packed-refs");
}

/// p50, p99 and max of `samples` (milliseconds).
fn percentiles(mut samples: Vec<f64>) -> (f64, f64, f64) {
    samples.sort_by(f64::total_cmp);
    let at = |p: f64| samples[((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1];
    (at(0.50), at(0.99), samples[samples.len() - 1])
}

fn detection(rt: &tokio::runtime::Runtime) {
    let moves = if quick() { 20 } else { 200 };
    let dir = work("watch");
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "live"]);
    git(&repo, &["commit", "-q", "--allow-empty", "-m", "a"]);
    let a = git(&repo, &["rev-parse", "HEAD"]);
    git(&repo, &["commit", "-q", "--allow-empty", "-m", "b"]);
    let b = git(&repo, &["rev-parse", "HEAD"]);
    let git_dir = repo.join(".git");

    let head = local_branch(&repo, "live").expect("a local branch");
    let stage = head.current();
    let engine = Arc::new(Engine::new(stage.clone()));
    let mut seen = engine.watch(&stage);
    let (loose, packed) = rt.block_on(async {
        tokio::spawn({
            let engine = engine.clone();
            async move { engine.run().await }
        });
        let wait_for = |seen: &mut tokio::sync::watch::Receiver<_>, hash: String| {
            let mut seen = seen.clone();
            async move {
                tokio::time::timeout(
                    PATIENCE,
                    seen.wait_for(
                        |o: &Output<deployer_git::CommitId>| matches!(o, Output::Ok(id) if id.hash.as_str() == hash),
                    ),
                )
                .await
                .expect("the head is seen within 30 s")
                .expect("the engine runs")
                .is_ok()
            }
        };
        assert!(wait_for(&mut seen, b.clone()).await);
        let (mut loose, mut packed) = (Vec::new(), Vec::new());
        // Half by a loose ref, written by git itself (its start-up is
        // counted too).
        for i in 0..moves / 2 {
            let target = if i % 2 == 0 { &a } else { &b };
            let start = Instant::now();
            git(&repo, &["update-ref", "refs/heads/live", target]);
            assert!(wait_for(&mut seen, target.clone()).await);
            loose.push(start.elapsed().as_secs_f64() * 1e3);
        }
        // Then pack the refs (no loose ref is left), and move the branch
        // in packed-refs alone.
        git(&repo, &["pack-refs", "--all", "--prune"]);
        assert!(!git_dir.join("refs/heads/live").exists(), "pack-refs --prune removed the loose ref");
        for i in 0..moves / 2 {
            let target = if i % 2 == 0 { &a } else { &b };
            let start = Instant::now();
            move_packed(&git_dir, target);
            assert!(wait_for(&mut seen, target.clone()).await);
            packed.push(start.elapsed().as_secs_f64() * 1e3);
        }
        (loose, packed)
    });
    let all: Vec<f64> = loose.iter().chain(&packed).copied().collect();
    let (p50, p99, max) = percentiles(all);
    let (l50, l99, _) = percentiles(loose);
    let (k50, k99, _) = percentiles(packed);
    eprintln!(
        "git: new commit on a watched local branch seen after p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms \
         over {moves} moves (update-ref: p50 {l50:.2} / p99 {l99:.2} ms; packed-refs only: p50 {k50:.2} / p99 {k99:.2} ms)"
    );
    if !quick() {
        assert!(p99 < 50.0, "p99 detection latency {p99:.1} ms is over 50 ms");
    }
    drop(seen);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A repository with `files` files in directories of 100, committed on
/// `live`.
fn big_repo(dir: &Path, files: usize) -> PathBuf {
    let repo = dir.join("big");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "live"]);
    for n in 0..files {
        let sub = repo.join(format!("d{:03}", n / 100));
        if n % 100 == 0 {
            std::fs::create_dir_all(&sub).unwrap();
        }
        // About 1 KiB each, all different.
        let line = format!("file {n} of the benchmark repository; {}\n", "x".repeat(n % 50));
        std::fs::write(sub.join(format!("f{n:05}.txt")), line.repeat(1024 / line.len() + 1)).unwrap();
    }
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "many files"]);
    repo
}

/// The head of `live` in `repo`, fetched into a mirror.
async fn fetched(git_: &Git, repo: &Path) -> Commit {
    let head = local_branch(repo, "live").expect("a local branch");
    let engine = Engine::new(git_.fetch("fetch", &head.current()));
    engine.step();
    tokio::time::timeout(PATIENCE, async {
        loop {
            if let Output::Ok(commit) = engine.output() {
                return commit;
            }
            assert!(engine.output().err().is_none(), "fetch failed: {:?}", engine.output());
            engine.next().await;
        }
    })
    .await
    .expect("the fetch finishes within 30 s")
}

/// Reads a whole stream; returns its length.
fn drain(mut r: impl Read) -> u64 {
    std::io::copy(&mut r, &mut std::io::sink()).expect("read")
}

fn contexts(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let files = if quick() { 500 } else { 10_000 };
    let dir = work("tar");
    let repo = big_repo(&dir, files);
    let ctx = Context::open(&dir.join("state"), Config::default()).expect("a context");
    let git_ = Git::new(&ctx);
    let commit: Commit = rt.block_on(fetched(&git_, &repo));
    let job = rt.block_on(async {
        let job = ctx.jobs.create("bench", "bench").expect("a job");
        job.start(Level::Harmless, None, None).await.expect("start the job");
        job
    });
    let hash = commit.id.hash.as_str().to_owned();

    // Both produce the same files: the context is git archive's tar.
    let archive = || {
        let mut child = Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(["archive", "--format=tar", &hash])
            .stdout(Stdio::piped())
            .spawn()
            .expect("git archive");
        let n = drain(child.stdout.take().unwrap());
        assert!(child.wait().expect("wait").success());
        n
    };
    let context = || {
        rt.block_on(async {
            let mut tar = git_.tar_context(&job, &commit).await.expect("a tar context");
            let mut n = 0u64;
            let mut buf = vec![0; 64 << 10];
            loop {
                let read = tar.read(&mut buf).await.expect("read the context");
                if read == 0 {
                    break;
                }
                n += read as u64;
            }
            tar.finish().await.expect("git archive succeeded");
            n
        })
    };
    let size = archive();
    assert_eq!(context(), size, "the context is the same tar as git archive's");
    let checkout = rt.block_on(git_.checkout(&job, &commit)).expect("a checkout");
    let count = walk(checkout.path());
    assert_eq!(count, files, "the checkout has every file");
    drop(checkout);

    let time = |f: &dyn Fn() -> u64, n: usize| {
        let start = Instant::now();
        for _ in 0..n {
            std::hint::black_box(f());
        }
        start.elapsed().as_secs_f64() * 1e3 / n as f64
    };
    // The same files as a submodule of a small repository: its context
    // joins two archives.
    let app = dir.join("app");
    std::fs::create_dir_all(&app).unwrap();
    git(&app, &["init", "-q", "-b", "live"]);
    std::fs::write(app.join("Dockerfile"), "FROM scratch\nCOPY big /big\n").unwrap();
    let gitmodules = format!("[submodule \"big\"]\n\tpath = big\n\turl = {}\n", repo.display());
    std::fs::write(app.join(".gitmodules"), gitmodules).unwrap();
    git(&app, &["add", "Dockerfile", ".gitmodules"]);
    git(&app, &["update-index", "--add", "--cacheinfo", &format!("160000,{hash},big")]);
    git(&app, &["commit", "-q", "-m", "app"]);
    let with_sub: Commit = rt.block_on(fetched(&git_, &app));
    assert_eq!(with_sub.submodules.len(), 1, "the submodule was found");
    let joined = || {
        rt.block_on(async {
            let mut tar = git_.tar_context(&job, &with_sub).await.expect("a tar context");
            let n = tokio::io::copy(&mut tar, &mut tokio::io::sink()).await.expect("read the context");
            tar.finish().await.expect("the archives succeeded");
            n
        })
    };
    let listing = rt.block_on(async {
        let mut tar = git_.tar_context(&job, &with_sub).await.expect("a tar context");
        let mut bytes = Vec::new();
        tar.read_to_end(&mut bytes).await.expect("read the context");
        tar.finish().await.expect("the archives succeeded");
        tar_files(&bytes)
    });
    assert_eq!(listing, files + 2, "the joined context has the app's two files and the submodule's {files}");

    let rounds = if quick() { 1 } else { 20 };
    let (t_archive, t_context) = (time(&archive, rounds), time(&context, rounds));
    let t_joined = time(&joined, rounds);
    let t_checkout = time(
        &|| {
            let c = rt.block_on(git_.checkout(&job, &commit)).expect("a checkout");
            drop(c);
            0
        },
        // Writing 10,000 files is slow on some filesystems: a few rounds.
        rounds.min(3),
    );
    eprintln!(
        "git: {files} files ({} KiB of tar): git archive {t_archive:.1} ms; tar context {t_context:.1} ms \
         ({:.2}x); the same files as a submodule, joined into one context {t_joined:.1} ms ({:.2}x); \
         checkout into a directory {t_checkout:.1} ms ({:.2}x)",
        size >> 10,
        t_context / t_archive,
        t_joined / t_archive,
        t_checkout / t_archive
    );
    job.finish();
    if quick() {
        return;
    }
    let mut group = c.benchmark_group("git");
    group.sample_size(20).throughput(Throughput::Elements(files as u64));
    group.bench_function("git archive, 10,000 files", |b| b.iter(archive));
    group.bench_function("tar context, 10,000 files", |b| b.iter(context));
    group.bench_function("tar context, 10,000 files in a submodule", |b| b.iter(joined));
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The number of files (not directories) in a tar archive, by GNU tar
/// (which stops at the first end marker, as Docker's reader does).
fn tar_files(bytes: &[u8]) -> usize {
    use std::io::Write;
    let mut child =
        Command::new("tar").arg("-t").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("tar runs");
    let mut stdin = child.stdin.take().unwrap();
    let bytes = bytes.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&bytes));
    let out = child.wait_with_output().expect("tar -t");
    writer.join().unwrap().expect("write to tar");
    assert!(out.status.success(), "tar -t failed");
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.ends_with('/')).count()
}

/// Files below `dir`.
fn walk(dir: &Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("read a checkout") {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            n += walk(&entry.path());
        } else {
            n += 1;
        }
    }
    n
}

fn git_benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    detection(&rt);
    contexts(c, &rt);
}

criterion_group!(benches, git_benches);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
