//! Checkouts: a fetched commit (with its submodules) materialised in a
//! temporary directory, or streamed as a tar build context.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use deployer_core::job::OutputStream;
use deployer_core::{Error, Job, ResultExt};
use tokio::io::{AsyncRead, AsyncWriteExt, BufReader, DuplexStream, ReadBuf};
use tokio::process::Command;
use tokio::task::JoinHandle;

use crate::commit::Commit;
use crate::mirror::Mirrors;
use crate::tar;

/// A commit's files in a temporary directory, removed when dropped.
#[derive(Debug)]
pub struct Checkout {
    dir: PathBuf,
}

impl Checkout {
    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!("removing the checkout {}: {e}", self.dir.display());
        }
    }
}

/// A commit as a tar stream (a Docker build context). Read it to the end,
/// then [`finish`](TarContext::finish) it for the status of the processes
/// that made it: a stream cut short by a failure ends early, and only
/// `finish` tells. Dropping it stops them.
pub struct TarContext {
    source: Source,
}

enum Source {
    /// One `git archive`, read directly.
    Archive(Box<OutputStream>),
    /// The archives of a commit and its submodules, joined by a task.
    Joined { read: DuplexStream, task: JoinHandle<Result<(), Error>> },
    /// `tar` of a checkout with its `.git`, removed when done.
    Dir { stream: Box<OutputStream>, _checkout: Checkout },
    /// Finished.
    Done,
}

impl AsyncRead for TarContext {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match &mut self.source {
            Source::Archive(stream) => Pin::new(stream).poll_read(cx, buf),
            Source::Joined { read, .. } => Pin::new(read).poll_read(cx, buf),
            Source::Dir { stream, .. } => Pin::new(stream).poll_read(cx, buf),
            Source::Done => Poll::Ready(Ok(())),
        }
    }
}

impl TarContext {
    /// Waits for the archivers: `Ok` if the whole context was produced.
    pub async fn finish(mut self) -> Result<(), Error> {
        match std::mem::replace(&mut self.source, Source::Done) {
            Source::Archive(stream) => stream.finish().await,
            Source::Joined { task, .. } => match task.await {
                Ok(result) => result,
                Err(e) => Err(Error::msg(format!("joining the archives failed: {e}"))),
            },
            Source::Dir { stream, .. } => stream.finish().await,
            Source::Done => Ok(()),
        }
    }
}

impl Drop for TarContext {
    fn drop(&mut self) {
        if let Source::Joined { task, .. } = &self.source {
            task.abort(); // and with it the archivers
        }
    }
}

/// A fresh directory for a checkout of `commit`.
fn new_dir(mirrors: &Mirrors, commit: &Commit) -> Result<PathBuf, Error> {
    let base = mirrors.ctx.state_dir().join("checkouts");
    std::fs::create_dir_all(&base).context(format!("creating {}", base.display()))?;
    for n in 0u32.. {
        let dir = base.join(format!("{}-{}-{n}", commit.id.hash.short(), std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::from(e).context(format!("creating {}", dir.display()))),
        }
    }
    unreachable!("u32 ran out of checkout names")
}

/// Extracts `commit` (and its submodules, recursively) into `dir`.
fn extract<'a>(
    mirrors: &'a Mirrors,
    job: &'a Job,
    commit: &'a Commit,
    dir: &'a Path,
) -> Pin<Box<dyn std::future::Future<Output = Result<(), Error>> + Send + 'a>> {
    Box::pin(async move {
        let mut archive = mirrors.archive(commit, "");
        let mut untar = Command::new("tar");
        untar.arg("-x").arg("-C").arg(dir);
        job.exec_pipe(&mut archive, &mut untar).await.map_err(|e| {
            e.context(format!("checking out {} (if it is no longer in the mirror, fetch it again)", commit.id))
        })?;
        for (path, sub) in &commit.submodules {
            let target = dir.join(path);
            tokio::fs::create_dir_all(&target).await.context(format!("creating {}", target.display()))?;
            extract(mirrors, job, sub, &target).await?;
        }
        Ok(())
    })
}

impl Mirrors {
    pub(crate) async fn checkout(&self, job: &Job, commit: &Commit) -> Result<Checkout, Error> {
        let checkout = Checkout { dir: new_dir(self, commit)? };
        job.log(&format!("Checking out {} into {}", commit.id, checkout.dir.display()));
        extract(self, job, commit, &checkout.dir).await?;
        Ok(checkout)
    }

    pub(crate) async fn tar_context(&self, job: &Job, commit: &Commit) -> Result<TarContext, Error> {
        if commit.submodules.is_empty() {
            // Straight from the mirror.
            let stream = job.stream_output(&mut self.archive(commit, ""))?;
            return Ok(TarContext { source: Source::Archive(Box::new(stream)) });
        }
        // The commit's archive, then each submodule's under its path, as
        // one tar stream: nothing is written to disk.
        let mut archives = Vec::new();
        self.archives(commit, "", &mut archives);
        let (mut write, read) = tokio::io::duplex(256 << 10);
        let job = job.clone();
        let task = tokio::spawn(async move {
            for (mut archive, what) in archives {
                let mut stream = BufReader::with_capacity(128 << 10, job.stream_output(&mut archive)?);
                tar::copy_entries(&mut stream, &mut write)
                    .await
                    .map_err(|e| Error::from(e).context(format!("adding {what} to the build context")))?;
                stream.into_inner().finish().await?;
            }
            write.write_all(&tar::END).await.context("ending the build context")?;
            write.shutdown().await.context("ending the build context")
        });
        Ok(TarContext { source: Source::Joined { read, task } })
    }

    pub(crate) async fn tar_context_with_git(&self, job: &Job, commit: &Commit) -> Result<TarContext, Error> {
        let checkout = Checkout { dir: new_dir(self, commit)? };
        job.log(&format!("Checking out {} with its .git into {}", commit.id, checkout.dir.display()));
        let dir = &checkout.dir;
        let failed = |e: Error| e.context(format!("checking out {} with its .git", commit.id));
        // A clone of the mirror (hard links, so cheap), at the commit.
        let mut clone = self.git(None);
        clone.args(["clone", "--quiet", "--no-checkout", "--local"]).arg(&commit.mirror).arg(dir);
        job.exec(&mut clone).await.map_err(failed)?;
        let mut at = self.git(None);
        at.arg("-C").arg(dir).args(["checkout", "--quiet", "--detach", commit.id.hash.as_str()]);
        job.exec(&mut at).await.map_err(failed)?;
        // `origin` is the repository, not the mirror's path on this machine.
        let mut origin = self.git(None);
        origin.arg("-C").arg(dir).args(["remote", "set-url", "origin", commit.id.repo.as_str()]);
        job.exec(&mut origin).await.map_err(failed)?;
        for (path, sub) in &commit.submodules {
            let target = dir.join(path);
            tokio::fs::create_dir_all(&target).await.context(format!("creating {}", target.display()))?;
            extract(self, job, sub, &target).await?;
        }
        let mut tar = Command::new("tar");
        tar.arg("-c").arg("-C").arg(dir).arg(".");
        let stream = Box::new(job.stream_output(&mut tar)?);
        Ok(TarContext { source: Source::Dir { stream, _checkout: checkout } })
    }

    /// `git archive` of `commit`, its paths under `prefix`.
    fn archive(&self, commit: &Commit, prefix: &str) -> Command {
        let mut archive = self.git(None);
        archive.arg("-C").arg(&commit.mirror).args(["archive", "--format=tar"]);
        if !prefix.is_empty() {
            archive.arg(format!("--prefix={prefix}/"));
        }
        archive.arg(commit.id.hash.as_str());
        archive
    }

    /// The archives of `commit` and its submodules (depth first), each
    /// with what it is, for errors.
    fn archives(&self, commit: &Commit, prefix: &str, out: &mut Vec<(Command, String)>) {
        out.push((self.archive(commit, prefix), commit.id.to_string()));
        for (path, sub) in &commit.submodules {
            let prefix = if prefix.is_empty() { path.clone() } else { format!("{prefix}/{path}") };
            self.archives(sub, &prefix, out);
        }
    }
}
