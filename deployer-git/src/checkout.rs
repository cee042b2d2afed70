//! Checkouts: a fetched commit (with its submodules) materialised in a
//! temporary directory, or streamed as a tar build context.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use deployer_core::job::OutputStream;
use deployer_core::{Error, Job, ResultExt};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::process::Command;

use crate::commit::Commit;
use crate::mirror::Mirrors;

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
/// that made it. A checkout it was made from is removed when it is dropped.
pub struct TarContext {
    stream: OutputStream,
    _checkout: Option<Checkout>,
}

impl AsyncRead for TarContext {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl TarContext {
    /// Waits for the archiver: `Ok` if the whole context was produced.
    pub async fn finish(self) -> Result<(), Error> {
        self.stream.finish().await
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
        let mut archive = mirrors.git(None);
        archive.arg("-C").arg(&commit.mirror).args(["archive", "--format=tar", commit.id.hash.as_str()]);
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
            let mut archive = self.git(None);
            archive.arg("-C").arg(&commit.mirror).args(["archive", "--format=tar", commit.id.hash.as_str()]);
            return Ok(TarContext { stream: job.stream_output(&mut archive)?, _checkout: None });
        }
        let checkout = self.checkout(job, commit).await?;
        let stream = job.stream_output(Command::new("tar").arg("-c").arg("-C").arg(checkout.path()).arg("."))?;
        Ok(TarContext { stream, _checkout: Some(checkout) })
    }
}
