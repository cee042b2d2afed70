//! Git sources for the deployer: commits, mirrors, checkouts and branch
//! heads.
//!
//! - Values: [`CommitId`] (a remote, a ref and a hash, checked so that
//!   nothing reaches git that it could take for an option) and [`Commit`] (a
//!   commit fetched into a local mirror, with its submodules).
//! - Heads are [`Monitor`]s: [`local_branch`] watches a repository on this
//!   machine with filesystem notifications (including `packed-refs`-only
//!   updates); [`Git::remote_branch`] polls `git ls-remote`, and a webhook
//!   handler calls `refresh()` on it.
//! - [`Git::fetch`] is a cached operation (a job per commit, labelled per
//!   use) that fetches a commit into the remote's mirror — a bare
//!   repository under the state directory, one lock per remote — pins it
//!   against garbage collection, and fetches its submodules into their own
//!   mirrors. Tokens for HTTPS remotes ([`Git::token`]) reach git only
//!   through its environment and never appear in a log.
//! - [`Git::checkout`] materialises a fetched commit in a temporary
//!   directory; [`Git::tar_context`] streams it as a tar build context.
//!
//! Git runs as the `git` command, through the job's process helpers, so its
//! output is in the job's log (ARCHITECTURE.md says why the CLI).
//!
//! ```no_run
//! use std::time::Duration;
//! use deployer_core::{Config, Context, Engine};
//! use deployer_git::{Git, Remote};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let ctx = Context::open("/var/lib/deployer".as_ref(), Config::default())?;
//! let git = Git::new(&ctx);
//! let repo = Remote::new("https://github.com/ocurrent/ocurrent.git")?;
//! let head = git.remote_branch(&repo, "master", Duration::from_secs(600))?;
//! let commit = git.fetch("fetch ocurrent", &head.current());
//! let engine = Engine::new(commit);
//! engine.run().await;
//! # Ok(()) }
//! ```

mod checkout;
mod commit;
mod head;
mod mirror;
mod tar;

/// Entry points for the fuzz targets in `fuzz/` (the `fuzzing` feature).
/// Not part of the API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    /// The tar stream joiner: the entries of the archive `from`, without
    /// its end marker, and the bytes it says it wrote.
    pub async fn copy_tar_entries(mut from: &[u8]) -> std::io::Result<(Vec<u8>, u64)> {
        let mut out = Vec::new();
        let n = crate::tar::copy_entries(&mut from, &mut out).await?;
        Ok((out, n))
    }
}

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deployer_core::cache::{BuildCache, Builder};
use deployer_core::{Context, Current, Error, Job, Level, Monitor, Secret};

pub use checkout::{Checkout, TarContext};
pub use commit::{Commit, CommitId, GitError, Hash, RefName, Remote};
pub use head::local_branch;

use mirror::Mirrors;

/// How long a failed fetch (an unreachable remote, a commit not there yet)
/// waits before it is tried again.
pub const RETRY_FAILED_FETCH: Duration = Duration::from_secs(60);

/// Whose code a commit is, which decides where its submodules may come
/// from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Trust {
    /// The operator's own (a deploy branch): submodules from anywhere its
    /// `.gitmodules` says, with the deployer's tokens and keys.
    Operator,
    /// From outside (a pull request, a fork): submodules only over https
    /// from the superproject's own host, without any token, at most
    /// [`MAX_UNTRUSTED_SUBMODULES`] of them and [`MAX_UNTRUSTED_DEPTH`]
    /// deep; any other is refused and the fetch fails.
    Untrusted,
}

/// Submodules an untrusted commit may have, in all.
pub const MAX_UNTRUSTED_SUBMODULES: usize = 16;

/// How deep an untrusted commit's submodules may nest.
pub const MAX_UNTRUSTED_DEPTH: usize = 2;

/// A fetch's key: a trusted one is stored as the bare commit id (as it
/// always was), an untrusted one as `{"untrusted": id}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
enum FetchKey {
    Operator(CommitId),
    Untrusted { untrusted: CommitId },
}

impl FetchKey {
    fn id(&self) -> &CommitId {
        match self {
            FetchKey::Operator(id) | FetchKey::Untrusted { untrusted: id } => id,
        }
    }

    fn trust(&self) -> Trust {
        match self {
            FetchKey::Operator(_) => Trust::Operator,
            FetchKey::Untrusted { .. } => Trust::Untrusted,
        }
    }
}

/// Fetches commits into mirrors (the builder behind [`Git::fetch`]).
struct Fetch {
    mirrors: Arc<Mirrors>,
}

#[async_trait]
impl Builder for Fetch {
    const ID: &'static str = "git-fetch";
    type Key = FetchKey;
    type Value = Commit;

    fn describe(&self, key: &FetchKey) -> Option<String> {
        match key {
            FetchKey::Operator(id) => Some(format!("fetch {id}")),
            FetchKey::Untrusted { untrusted } => Some(format!("fetch {untrusted} (untrusted)")),
        }
    }
    fn level(&self, key: &FetchKey) -> Level {
        if key.id().repo.is_local() {
            Level::Harmless
        } else {
            Level::MostlyHarmless
        }
    }
    fn retry_failures_after(&self) -> Option<Duration> {
        Some(RETRY_FAILED_FETCH)
    }
    async fn build(&self, job: &Job, key: &FetchKey) -> Result<Commit, Error> {
        self.mirrors.fetch(job, key.id(), key.trust()).await
    }
}

/// Git for a deployer: the mirrors under a context's state directory, and
/// the fetch cache. Cloning gives another handle on the same mirrors.
#[derive(Clone)]
pub struct Git {
    mirrors: Arc<Mirrors>,
    fetches: BuildCache<Fetch>,
}

impl Git {
    /// Git with mirrors under `ctx`'s state directory (`git/`), fetch
    /// outcomes in its store, and jobs in its job registry. Every `Git`
    /// made from one context (or its clones) is the same one: one set of
    /// mirrors, locks and tokens per state directory (so `Docker::new`,
    /// which makes one, and the program share it).
    pub fn new(ctx: &Context) -> Git {
        ctx.shared(|| {
            let mirrors = Arc::new(Mirrors::new(ctx));
            Git { fetches: BuildCache::new(ctx, Fetch { mirrors: mirrors.clone() }), mirrors }
        })
    }

    /// Uses `token` (a GitHub token, say) for HTTPS remotes on `host`. It is
    /// passed to git in its environment as an `Authorization` header: never
    /// written to disk, put in a URL, or logged.
    pub fn token(&self, host: &str, token: Secret<String>) {
        self.mirrors.set_token(host, token);
    }

    /// A stage labelled `label` that fetches each commit of `id` (with its
    /// submodules) into the mirror of its remote. A failed fetch is tried
    /// again after [`RETRY_FAILED_FETCH`].
    pub fn fetch(&self, label: &str, id: &Current<CommitId>) -> Current<Commit> {
        self.fetches.get(label, id.map(|id| FetchKey::Operator(id.clone())))
    }

    /// [`Git::fetch`], for commits whose code is trusted as `trust` says:
    /// an untrusted commit's submodules are limited (see [`Trust`]).
    pub fn fetch_with_trust(&self, label: &str, id: &Current<CommitId>, trust: &Current<Trust>) -> Current<Commit> {
        let key = id.pair(trust).map(|(id, trust)| match trust {
            Trust::Operator => FetchKey::Operator(id.clone()),
            Trust::Untrusted => FetchKey::Untrusted { untrusted: id.clone() },
        });
        self.fetches.get(label, key)
    }

    /// The head of `branch` on `remote`, read with `git ls-remote` every
    /// `every`, and at once when [`Monitor::refresh`] is called (by a webhook
    /// handler). A bad branch name is refused here.
    pub fn remote_branch(&self, remote: &Remote, branch: &str, every: Duration) -> Result<Monitor<CommitId>, GitError> {
        let gref = RefName::new(branch)?;
        Ok(head::remote_branch(self.mirrors.clone(), remote.clone(), gref, every))
    }

    /// `commit`'s files (and its submodules') in a temporary directory,
    /// removed when the [`Checkout`] is dropped. The work is logged to `job`.
    pub async fn checkout(&self, job: &Job, commit: &Commit) -> Result<Checkout, Error> {
        self.mirrors.checkout(job, commit).await
    }

    /// `commit`'s files as a tar stream, for a Docker build context:
    /// `git archive` straight from the mirror, joined with the archives of
    /// its submodules under their paths. Nothing is written to disk.
    pub async fn tar_context(&self, job: &Job, commit: &Commit) -> Result<TarContext, Error> {
        self.mirrors.tar_context(job, commit).await
    }

    /// Like [`Git::tar_context`], with a `.git` in it: a clone of the
    /// mirror checked out at `commit` (detached), its `origin` the
    /// repository's URL, so `git rev-parse HEAD` and `git describe` work in
    /// the build. Submodules are included as files. The clone is made in
    /// the state directory (hard links to the mirror) and removed when the
    /// stream is dropped.
    pub async fn tar_context_with_git(&self, job: &Job, commit: &Commit) -> Result<TarContext, Error> {
        self.mirrors.tar_context_with_git(job, commit).await
    }

    /// Where the mirror of `remote` is (whether or not it exists yet).
    pub fn mirror_path(&self, remote: &Remote) -> std::path::PathBuf {
        self.mirrors.path(remote)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 23 (the API): a program that makes a `Git` and a `Docker`
    /// (which makes its own) on one context gets one set of mirrors and
    /// mirror locks, not two.
    #[test]
    fn every_git_of_one_context_shares_the_mirrors() {
        let dir = std::env::temp_dir().join(format!("deployer-git-shared-{}", std::process::id()));
        let ctx = Context::open(&dir, deployer_core::Config::default()).unwrap();
        let (a, b) = (Git::new(&ctx), Git::new(&ctx.clone()));
        assert!(Arc::ptr_eq(&a.mirrors, &b.mirrors));
        let other = Context::open(&dir.join("other"), deployer_core::Config::default()).unwrap();
        assert!(!Arc::ptr_eq(&a.mirrors, &Git::new(&other).mirrors));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
