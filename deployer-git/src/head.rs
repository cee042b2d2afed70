//! Branch heads as monitors: a local repository's branch, watched with
//! filesystem notifications (loose refs, `packed-refs` and `HEAD`), and a
//! remote's branch, polled with `git ls-remote`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use deployer_core::monitor::{BoxFuture, Unwatch};
use deployer_core::{Error, Monitor, ResultExt};
use notify::{RecursiveMode, Watcher};
use tokio::process::Command;

use crate::commit::{CommitId, GitError, Hash, RefName, Remote};
use crate::mirror::Mirrors;

/// The commit `gref` points at in the local repository `repo`.
async fn read_local(repo: &Path, remote: &Remote, gref: &RefName) -> Result<CommitId, Error> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["rev-parse", "--verify", "-q"])
        .arg(format!("{}^{{commit}}", gref.full()))
        .output()
        .await
        .context(format!("reading {gref} in {} (is git installed?)", repo.display()))?;
    if !out.status.success() {
        return Err(Error::msg(format!("{} has no branch {gref}", repo.display())));
    }
    let hash = Hash::new(&String::from_utf8_lossy(&out.stdout))?;
    Ok(CommitId { repo: remote.clone(), gref: gref.clone(), hash })
}

/// The git directory of the repository at `repo`.
async fn git_dir(repo: &Path) -> Result<PathBuf, Error> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["rev-parse", "--absolute-git-dir"])
        .output()
        .await
        .context(format!("finding the git directory of {}", repo.display()))?;
    if !out.status.success() {
        return Err(Error::msg(format!("{} is not a git repository", repo.display())));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Watches `git_dir` for ref changes: the directory itself (`packed-refs`,
/// `HEAD`) and `refs/` below it. Each change calls `changed` (and a read of
/// an unchanged head changes nothing). Accesses are not changes: reading the
/// head opens these files, and counting that would make every read ask for
/// another.
fn watch_refs(
    git_dir: &Path,
    changed: impl Fn(&notify::Event) + Send + 'static,
) -> Result<notify::RecommendedWatcher, Error> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
        Ok(event) if event.kind.is_access() => {}
        Ok(event) => changed(&event),
        // The queue overflowed or the watch broke: look again to be safe.
        Err(e) => {
            tracing::warn!("watching refs: {e}");
            changed(&notify::Event::new(notify::EventKind::Other))
        }
    })
    .map_err(|e| Error::msg(format!("watching {}: {e}", git_dir.display())))?;
    watcher
        .watch(git_dir, RecursiveMode::NonRecursive)
        .and_then(|()| watcher.watch(&git_dir.join("refs"), RecursiveMode::Recursive))
        .map_err(|e| Error::msg(format!("watching {}: {e}", git_dir.display())))?;
    Ok(watcher)
}

/// The head of `branch` in the local repository at `repo` (an absolute
/// path), read again whenever a ref of the repository changes on disk —
/// including updates that only rewrite `packed-refs`.
///
/// ```no_run
/// # fn demo() -> Result<(), deployer_git::GitError> {
/// let head = deployer_git::local_branch("/srv/app".as_ref(), "live")?;
/// let stage = head.current(); // a Current<CommitId>
/// # Ok(()) }
/// ```
pub fn local_branch(repo: &Path, branch: &str) -> Result<Monitor<CommitId>, GitError> {
    let remote = Remote::local(repo)?;
    let gref = RefName::new(branch)?;
    let (read_repo, watch_repo) = (Arc::new(repo.to_owned()), Arc::new(repo.to_owned()));
    let name = format!("{} {}", remote.short_name(), gref);
    Ok(Monitor::new(
        &name,
        move || -> BoxFuture<Result<CommitId, Error>> {
            let (repo, remote, gref) = (read_repo.clone(), remote.clone(), gref.clone());
            Box::pin(async move { read_local(&repo, &remote, &gref).await })
        },
        move |refresh| -> BoxFuture<Result<Unwatch, Error>> {
            let repo = watch_repo.clone();
            Box::pin(async move {
                let dir = git_dir(&repo).await?;
                Ok(Unwatch::on_drop(watch_refs(&dir, move |_| refresh.refresh())?))
            })
        },
    ))
}

impl Mirrors {
    /// The commit `gref` points at on `remote`, by `git ls-remote`.
    pub(crate) async fn ls_remote(&self, remote: &Remote, gref: &RefName) -> Result<CommitId, Error> {
        let full = gref.full();
        let out = self
            .git(Some(remote))
            .args(["ls-remote", "--"])
            .arg(remote.as_str())
            .arg(&full)
            .kill_on_drop(true)
            .output()
            .await
            .context("running git ls-remote (is git installed?)")?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let why = self.ctx.jobs.scrub(stderr.trim());
            return Err(Error::msg(format!("cannot list the refs of {remote}: {why}")));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let hash = stdout
            .lines()
            .find_map(|l| l.split_once('\t').filter(|(_, name)| *name == full).map(|(h, _)| h))
            .ok_or_else(|| Error::msg(format!("{remote} has no {full}")))?;
        Ok(CommitId { repo: remote.clone(), gref: gref.clone(), hash: Hash::new(hash)? })
    }
}

/// The head of `branch` on `remote`, polled every `every` (and on
/// [`Monitor::refresh`], from a webhook handler).
pub(crate) fn remote_branch(
    mirrors: Arc<Mirrors>,
    remote: Remote,
    gref: RefName,
    every: Duration,
) -> Monitor<CommitId> {
    let name = format!("{} {}", remote.short_name(), gref);
    Monitor::poll(&name, every, move || async move { mirrors.ls_remote(&remote, &gref).await })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@localhost"])
            .args(args)
            .output()
            .expect("git runs");
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Reading the head must not count as a change (or each read would ask
    /// for the next, forever): only the marker written after many reads is
    /// reported, and it is the first event.
    #[tokio::test]
    async fn reads_are_not_changes() {
        let tmp = std::env::temp_dir().join(format!("deployer-git-reads-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).unwrap();
        git(&tmp, &["init", "-q", "-b", "live"]);
        git(&tmp, &["commit", "-q", "--allow-empty", "-m", "one"]);
        git(&tmp, &["pack-refs", "--all"]);
        let dir = git_dir(&tmp).await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let _watcher = watch_refs(&dir, {
            let seen = seen.clone();
            move |event| {
                seen.lock().unwrap().push(event.paths.clone());
                let _ = tx.send(());
            }
        })
        .unwrap();
        let remote = Remote::local(&tmp).unwrap();
        let gref = RefName::new("live").unwrap();
        for _ in 0..20 {
            read_local(&tmp, &remote, &gref).await.unwrap();
        }
        let marker = dir.join("refs").join("marker");
        std::fs::write(&marker, "x").unwrap();
        tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("the marker is seen").unwrap();
        let first = seen.lock().unwrap()[0].clone();
        assert_eq!(first, vec![marker], "reads were reported as changes: {:?}", seen.lock().unwrap());
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
