//! Mirrors: one bare repository per remote under the state directory, one
//! lock per mirror. Fetching a commit pins it against garbage collection
//! and fetches its submodules' commits into their own mirrors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use base64::Engine as _;
use deployer_core::{Context, Error, Job, ResultExt, Secret};
use sha2::{Digest, Sha256};
use tokio::process::Command;

use crate::commit::{Commit, CommitId, Hash, RefName, Remote};
use crate::{Trust, MAX_UNTRUSTED_DEPTH, MAX_UNTRUSTED_SUBMODULES};

/// Submodules nested deeper than this are refused (a cycle, say).
const MAX_DEPTH: usize = 8;

pub(crate) struct Mirrors {
    pub(crate) ctx: Context,
    root: PathBuf,
    locks: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
    /// Tokens for HTTPS remotes, by host.
    tokens: RwLock<HashMap<String, Secret<String>>>,
}

impl Mirrors {
    pub(crate) fn new(ctx: &Context) -> Mirrors {
        Mirrors {
            ctx: ctx.clone(),
            root: ctx.state_dir().join("git"),
            locks: Mutex::default(),
            tokens: RwLock::default(),
        }
    }

    /// Uses `token` for HTTPS fetches from `host`. The token reaches git
    /// only through its environment (an `Authorization` header), and is
    /// scrubbed from every log.
    pub(crate) fn set_token(&self, host: &str, token: Secret<String>) {
        let header = self.header(&token);
        self.ctx.jobs.register_secret(token.expose());
        self.ctx.jobs.register_secret(&header);
        self.tokens.write().unwrap_or_else(|e| e.into_inner()).insert(host.to_ascii_lowercase(), token);
    }

    fn header(&self, token: &Secret<String>) -> String {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{}", token.expose()));
        format!("Authorization: Basic {basic}")
    }

    /// Where the mirror of `remote` lives: `git/<name>-<digest>.git`.
    pub(crate) fn path(&self, remote: &Remote) -> PathBuf {
        let digest: String =
            Sha256::digest(remote.as_str().as_bytes()).iter().take(8).map(|b| format!("{b:02x}")).collect();
        let name: String = remote
            .short_name()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
            .take(40)
            .collect();
        self.root.join(format!("{name}-{digest}.git"))
    }

    fn lock(&self, mirror: &Path) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.lock().unwrap_or_else(|e| e.into_inner()).entry(mirror.to_owned()).or_default().clone()
    }

    /// A `git` command for `remote`: no prompts, file submodules allowed, and
    /// the remote's token (if any) in the environment.
    pub(crate) fn git(&self, remote: Option<&Remote>) -> Command {
        let mut cmd = Command::new("git");
        cmd.env("GIT_TERMINAL_PROMPT", "0").arg("-c").arg("protocol.file.allow=always");
        let token = remote
            .filter(|r| r.as_str().starts_with("https://"))
            .and_then(|r| r.host())
            .and_then(|h| self.tokens.read().unwrap_or_else(|e| e.into_inner()).get(&h.to_ascii_lowercase()).cloned());
        if let Some(token) = token {
            cmd.env("GIT_CONFIG_COUNT", "1")
                .env("GIT_CONFIG_KEY_0", "http.extraHeader")
                .env("GIT_CONFIG_VALUE_0", self.header(&token));
        }
        cmd
    }

    /// Whether `git <args>` succeeds in `mirror`, quietly (a check).
    async fn probe(&self, mirror: &Path, args: &[&str]) -> bool {
        let out = self.git(None).arg("-C").arg(mirror).args(args).output().await;
        out.is_ok_and(|o| o.status.success())
    }

    /// Makes sure the mirror of `remote` exists and is a repository;
    /// re-creates a corrupt one, saying so.
    async fn ensure(&self, job: &Job, remote: &Remote, mirror: &Path) -> Result<(), Error> {
        if mirror.exists() {
            if self.probe(mirror, &["rev-parse", "--is-bare-repository"]).await
                && self.probe(mirror, &["count-objects"]).await
            {
                return Ok(());
            }
            job.log(&format!("The mirror of {remote} at {} is corrupt: re-cloning it", mirror.display()));
            tokio::fs::remove_dir_all(mirror).await.context(format!("removing {}", mirror.display()))?;
        }
        if let Some(parent) = mirror.parent() {
            tokio::fs::create_dir_all(parent).await.context(format!("creating {}", parent.display()))?;
        }
        job.exec(self.git(None).args(["init", "--bare", "-q"]).arg(mirror)).await
    }

    /// Whether `hash` is a commit in `mirror`.
    async fn has(&self, mirror: &Path, hash: &Hash) -> bool {
        self.probe(mirror, &["cat-file", "-e", &format!("{hash}^{{commit}}")]).await
    }

    /// Fetches `id` into its remote's mirror, pins it, and fetches its
    /// submodules likewise.
    pub(crate) async fn fetch(&self, job: &Job, id: &CommitId, trust: Trust) -> Result<Commit, Error> {
        let mut count = 0;
        let policy = match trust {
            Trust::Operator => None,
            Trust::Untrusted => {
                job.log("Untrusted code: submodules only over https from the same host, without credentials");
                Some(Untrusted { host: id.repo.host().map(str::to_ascii_lowercase), count: &mut count })
            }
        };
        self.fetch_at(job, id, 0, policy, false).await
    }

    /// `as_submodule_of_untrusted`: this commit is an untrusted commit's
    /// submodule, fetched without any token.
    fn fetch_at<'a>(
        &'a self,
        job: &'a Job,
        id: &'a CommitId,
        depth: usize,
        mut policy: Option<Untrusted<'a>>,
        as_submodule_of_untrusted: bool,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Commit, Error>> + Send + 'a>> {
        Box::pin(async move {
            if depth > MAX_DEPTH {
                return Err(Error::msg(format!("submodules nested more than {MAX_DEPTH} deep at {id}")));
            }
            let mirror = self.path(&id.repo);
            let submodules = {
                let lock = self.lock(&mirror);
                let _held = lock.lock().await;
                self.fetch_one(job, id, &mirror, as_submodule_of_untrusted).await?;
                self.submodules(job, id, &mirror).await?
            };
            if let Some(p) = policy.as_mut() {
                p.check(id, &submodules, depth)?;
            }
            let mut fetched = Vec::new();
            for (path, sub) in submodules {
                job.log(&format!("Submodule {path}: {}", sub.hash));
                let untrusted = policy.is_some();
                let inner = policy.as_mut().map(|p| Untrusted { host: p.host.clone(), count: &mut *p.count });
                fetched.push((path, self.fetch_at(job, &sub, depth + 1, inner, untrusted).await?));
            }
            Ok(Commit { id: id.clone(), mirror, submodules: fetched })
        })
    }

    /// Under the mirror's lock: the commit in the mirror, pinned. Without
    /// `token`, no token goes with the fetch.
    async fn fetch_one(&self, job: &Job, id: &CommitId, mirror: &Path, no_token: bool) -> Result<(), Error> {
        self.ensure(job, &id.repo, mirror).await?;
        if self.has(mirror, &id.hash).await {
            job.log(&format!("{} is already in the mirror", id.hash));
        } else {
            // The ref it was found on; a submodule's commit may be on any branch.
            let refspec = if id.gref.as_str() == "HEAD" {
                "+refs/heads/*:refs/deployer/remote/*".to_owned()
            } else {
                let full = id.gref.full();
                format!("+{full}:refs/deployer/remote/{}", full.trim_start_matches("refs/"))
            };
            let credentials = if no_token { None } else { Some(&id.repo) };
            let mut fetch = self.git(credentials);
            if no_token {
                // No credential helper, and no protocol but https.
                fetch.args(["-c", "credential.helper=", "-c", "protocol.allow=never"]);
                fetch.args(["-c", "protocol.file.allow=never", "-c", "protocol.https.allow=always"]);
            }
            fetch.arg("-C").arg(mirror).args(["fetch", "--no-tags", "--no-recurse-submodules", "-f", "--"]);
            fetch.arg(id.repo.as_str()).arg(&refspec);
            job.exec(&mut fetch).await.map_err(|e| e.context(format!("fetching {} from {}", id.gref, id.repo)))?;
            if !self.has(mirror, &id.hash).await {
                // Servers may give a commit by hash if it is reachable.
                let mut by_hash = self.git(credentials);
                by_hash.arg("-C").arg(mirror).args(["fetch", "--no-tags", "-q", "--"]).arg(id.repo.as_str());
                by_hash.arg(id.hash.as_str());
                let _ = job.exec(&mut by_hash).await;
            }
            if !self.has(mirror, &id.hash).await {
                return Err(Error::msg(format!(
                    "commit {} is not in {} (not on {}: force-pushed away, or never there)",
                    id.hash, id.repo, id.gref
                )));
            }
        }
        // Pinned: a ref keeps the commit when branches move or are deleted.
        let pin = format!("refs/deployer/commits/{}", id.hash);
        job.exec(self.git(None).arg("-C").arg(mirror).args(["update-ref", &pin, id.hash.as_str()])).await
    }
}

/// The limits on an untrusted commit's submodules, while it is fetched.
struct Untrusted<'a> {
    /// The superproject's host: submodules come from there.
    host: Option<String>,
    /// Submodules so far, over every level.
    count: &'a mut usize,
}

impl Untrusted<'_> {
    /// Refuses submodules of an untrusted commit that are not https URLs
    /// on the superproject's host, or too many, or too deep.
    fn check(&mut self, id: &CommitId, subs: &[(String, CommitId)], depth: usize) -> Result<(), Error> {
        if subs.is_empty() {
            return Ok(());
        }
        if depth >= MAX_UNTRUSTED_DEPTH {
            return Err(Error::msg(format!(
                "{id} is untrusted code with submodules nested more than {MAX_UNTRUSTED_DEPTH} deep: refused"
            )));
        }
        *self.count += subs.len();
        if *self.count > MAX_UNTRUSTED_SUBMODULES {
            return Err(Error::msg(format!(
                "{id} is untrusted code with more than {MAX_UNTRUSTED_SUBMODULES} submodules: refused"
            )));
        }
        for (path, sub) in subs {
            let url = sub.repo.as_str();
            let same_host =
                sub.repo.host().map(str::to_ascii_lowercase).is_some_and(|h| Some(&h) == self.host.as_ref());
            if !url.starts_with("https://") || !same_host {
                let host = self.host.as_deref().unwrap_or("the superproject's host");
                return Err(Error::msg(format!(
                    "submodule {path} of {id} (untrusted code) is at {url:?}: only https:// on {host} is fetched \
                     for untrusted code; nothing was fetched from it"
                )));
            }
        }
        Ok(())
    }
}

impl Mirrors {
    /// The submodules of `id`: (path, commit id), from its `.gitmodules` and
    /// tree. Paths must stay inside the checkout.
    async fn submodules(&self, job: &Job, id: &CommitId, mirror: &Path) -> Result<Vec<(String, CommitId)>, Error> {
        let blob = format!("{}:.gitmodules", id.hash);
        if !self.probe(mirror, &["cat-file", "-e", &blob]).await {
            return Ok(Vec::new());
        }
        let listing =
            job.check_output(self.git(None).arg("-C").arg(mirror).args(["config", "--blob", &blob, "--list"])).await?;
        let mut paths: HashMap<String, String> = HashMap::new();
        let mut urls: HashMap<String, String> = HashMap::new();
        for line in listing.lines() {
            let Some((key, value)) = line.split_once('=') else { continue };
            let Some(rest) = key.strip_prefix("submodule.") else { continue };
            if let Some(name) = rest.strip_suffix(".path") {
                paths.insert(name.to_owned(), value.to_owned());
            } else if let Some(name) = rest.strip_suffix(".url") {
                urls.insert(name.to_owned(), value.to_owned());
            }
        }
        let mut subs = Vec::new();
        let mut names: Vec<&String> = paths.keys().collect();
        names.sort();
        for name in names {
            let path = &paths[name];
            if path.starts_with('/') || path.split('/').any(|c| c == ".." || c.is_empty()) || path.starts_with('-') {
                return Err(Error::msg(format!("submodule {name} has a path outside the repository: {path:?}")));
            }
            let url = urls.get(name).ok_or_else(|| Error::msg(format!("submodule {name} has no url")))?;
            let tree = job
                .check_output(self.git(None).arg("-C").arg(mirror).args(["ls-tree", id.hash.as_str(), "--"]).arg(path))
                .await?;
            // "160000 commit <hash>\t<path>"; no entry: removed from the tree.
            let Some(hash) = tree.split_whitespace().nth(2) else { continue };
            if !tree.starts_with("160000 commit ") {
                continue;
            }
            let remote = id.repo.join(url)?;
            subs.push((path.clone(), CommitId { repo: remote, gref: RefName::new("HEAD")?, hash: Hash::new(hash)? }));
        }
        Ok(subs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(url: &str, n: u32) -> (String, CommitId) {
        let id = CommitId::new(url, "HEAD", &format!("{n:040x}")).unwrap();
        (format!("deps/s{n}"), id)
    }

    #[test]
    fn an_untrusted_commit_has_few_shallow_same_forge_https_submodules() {
        let parent = CommitId::new("https://github.com/o/app.git", "refs/pull/1/head", &"a".repeat(40)).unwrap();
        let mut count = 0;
        let mut policy = Untrusted { host: Some("github.com".into()), count: &mut count };
        let ok: Vec<_> = (0..MAX_UNTRUSTED_SUBMODULES as u32).map(|n| sub("https://github.com/o/lib.git", n)).collect();
        assert!(policy.check(&parent, &ok, 0).is_ok());
        let e = policy.check(&parent, &[sub("https://github.com/o/one-more.git", 99)], 1).unwrap_err();
        assert!(e.message().contains("more than 16 submodules"), "{}", e.message());
        let mut count = 0;
        let mut policy = Untrusted { host: Some("github.com".into()), count: &mut count };
        let e = policy.check(&parent, &[sub("https://github.com/o/deep.git", 1)], MAX_UNTRUSTED_DEPTH).unwrap_err();
        assert!(e.message().contains("nested more than 2 deep"), "{}", e.message());
        for url in ["https://gitlab.com/o/lib.git", "http://github.com/o/lib.git", "git://github.com/o/lib.git"] {
            let e = policy.check(&parent, &[sub(url, 2)], 0).unwrap_err();
            assert!(e.message().contains("only https:// on github.com"), "{url}: {}", e.message());
        }
    }
}
