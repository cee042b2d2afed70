//! Heads as monitors: a branch's head, and every branch and open pull
//! request of a repository (all pages). Read when a webhook says the
//! repository changed, and every ten minutes as a fallback.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deployer_core::{Error, Monitor};
use serde_json::Value;

use crate::api::Api;
use crate::repo::{CiRef, Repo};

/// The monitors of each repository (lower-case `owner/name`), to refresh
/// them when a webhook names it.
/// Branch monitors keyed by (repository, branch).
type BranchMonitors = HashMap<(String, String), Monitor<CiRef>>;

#[derive(Clone, Default)]
pub(crate) struct Heads {
    heads: Arc<Mutex<BranchMonitors>>,
    refs: Arc<Mutex<HashMap<String, Monitor<Vec<CiRef>>>>>,
}

fn sha(v: &Value, pointer: &str, what: &str) -> Result<String, Error> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| Error::msg(format!("GitHub sent {what} without {pointer}")))
}

/// The head of `branch`.
async fn read_head(api: &Api, repo: &Repo, branch: &str) -> Result<CiRef, Error> {
    let v = api.get(repo, &format!("/repos/{}/{}/branches/{branch}", repo.owner, repo.name)).await?;
    Ok(CiRef {
        repo: repo.clone(),
        gref: format!("refs/heads/{branch}"),
        hash: sha(&v, "/commit/sha", "a branch")?,
        title: None,
    })
}

/// Every branch (but `gh-pages`) and every open pull request.
async fn read_refs(api: &Api, repo: &Repo) -> Result<Vec<CiRef>, Error> {
    let mut out = Vec::new();
    for b in api.list(repo, &format!("/repos/{}/{}/branches?per_page=100", repo.owner, repo.name)).await? {
        let name = b.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
        if name.is_empty() || name == "gh-pages" {
            continue;
        }
        out.push(CiRef {
            repo: repo.clone(),
            gref: format!("refs/heads/{name}"),
            hash: sha(&b, "/commit/sha", "a branch")?,
            title: None,
        });
    }
    for pr in api.list(repo, &format!("/repos/{}/{}/pulls?state=open&per_page=100", repo.owner, repo.name)).await? {
        let number =
            pr.get("number").and_then(Value::as_u64).ok_or_else(|| Error::msg("a pull request without a number"))?;
        out.push(CiRef {
            repo: repo.clone(),
            gref: format!("refs/pull/{number}/head"),
            hash: sha(&pr, "/head/sha", "a pull request")?,
            title: pr.get("title").and_then(Value::as_str).map(str::to_owned),
        });
    }
    out.sort();
    Ok(out)
}

impl Heads {
    /// The monitor of `branch` of `repo` (one per branch).
    pub(crate) fn head(&self, api: &Api, repo: &Repo, branch: &str, every: Duration) -> Monitor<CiRef> {
        let key = (repo.key(), branch.to_owned());
        let mut heads = self.heads.lock().unwrap_or_else(|e| e.into_inner());
        heads
            .entry(key)
            .or_insert_with(|| {
                let (api, repo, branch) = (api.clone(), repo.clone(), branch.to_owned());
                Monitor::poll(&format!("{repo} {branch}"), every, move || {
                    let (api, repo, branch) = (api.clone(), repo.clone(), branch.clone());
                    async move { read_head(&api, &repo, &branch).await }
                })
            })
            .clone()
    }

    /// The monitor of `repo`'s branches and open pull requests.
    pub(crate) fn refs(&self, api: &Api, repo: &Repo, every: Duration) -> Monitor<Vec<CiRef>> {
        let mut refs = self.refs.lock().unwrap_or_else(|e| e.into_inner());
        refs.entry(repo.key())
            .or_insert_with(|| {
                let (api, repo) = (api.clone(), repo.clone());
                Monitor::poll(&format!("{repo} refs"), every, move || {
                    let (api, repo) = (api.clone(), repo.clone());
                    async move { read_refs(&api, &repo).await }
                })
            })
            .clone()
    }

    /// Reads `repo`'s heads again (a webhook said it changed). Returns how
    /// many monitors were refreshed.
    /// Reads every repository's heads again.
    pub(crate) fn changed_all(&self) {
        for m in self.heads.lock().unwrap_or_else(|e| e.into_inner()).values() {
            m.refresh();
        }
        for m in self.refs.lock().unwrap_or_else(|e| e.into_inner()).values() {
            m.refresh();
        }
    }

    pub(crate) fn changed(&self, repo_key: &str) -> usize {
        let mut n = 0;
        for ((r, _), m) in self.heads.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            if r == repo_key {
                m.refresh();
                n += 1;
            }
        }
        if let Some(m) = self.refs.lock().unwrap_or_else(|e| e.into_inner()).get(repo_key) {
            m.refresh();
            n += 1;
        }
        n
    }
}
