//! Repositories and the refs a deployer cares about.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a repository name was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRepo(pub String);

impl fmt::Display for BadRepo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} is not a GitHub repository (owner/name)", self.0)
    }
}

impl std::error::Error for BadRepo {}

/// A GitHub repository, `owner/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Repo {
    /// The owner (a user or an organisation).
    pub owner: String,
    /// The repository's name.
    pub name: String,
}

fn valid(part: &str) -> bool {
    !part.is_empty()
        && part.len() <= 100
        && !part.starts_with(['.', '-'])
        && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl Repo {
    /// Parses `owner/name`.
    pub fn parse(full: &str) -> Result<Repo, BadRepo> {
        match full.split_once('/') {
            Some((owner, name)) if valid(owner) && valid(name) => Ok(Repo { owner: owner.into(), name: name.into() }),
            _ => Err(BadRepo(full.to_owned())),
        }
    }

    /// `owner/name`, lower case: how GitHub compares names.
    pub fn key(&self) -> String {
        format!("{}/{}", self.owner, self.name).to_ascii_lowercase()
    }

    /// The clone URL (`https://github.com/owner/name.git`).
    pub fn clone_url(&self) -> String {
        format!("https://github.com/{}/{}.git", self.owner, self.name)
    }
}

impl fmt::Display for Repo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.owner, self.name)
    }
}

/// A branch or an open pull request, at a commit.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CiRef {
    /// The repository.
    pub repo: Repo,
    /// `refs/heads/<branch>` or `refs/pull/<n>/head`.
    pub gref: String,
    /// The commit.
    pub hash: String,
    /// For a pull request: its title.
    pub title: Option<String>,
}

impl CiRef {
    /// The commit as a git commit id (to fetch it).
    pub fn commit_id(&self) -> Result<deployer_git::CommitId, deployer_git::GitError> {
        deployer_git::CommitId::new(&self.repo.clone_url(), &self.gref, &self.hash)
    }

    /// A short name for labels: the branch, or `PR #n`.
    pub fn label(&self) -> String {
        if let Some(branch) = self.gref.strip_prefix("refs/heads/") {
            branch.to_owned()
        } else if let Some(pr) = self.gref.strip_prefix("refs/pull/").and_then(|r| r.strip_suffix("/head")) {
            format!("PR #{pr}")
        } else {
            self.gref.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let r = Repo::parse("ocurrent/ocaml-ci").unwrap();
        assert_eq!(
            (r.key(), r.clone_url()),
            ("ocurrent/ocaml-ci".into(), "https://github.com/ocurrent/ocaml-ci.git".into())
        );
        for bad in ["", "x", "a/b/c", "-a/b", "a/.b", "a b/c", "a/$(id)"] {
            assert!(Repo::parse(bad).is_err(), "{bad}");
        }
        let pr = CiRef { repo: r, gref: "refs/pull/12/head".into(), hash: "a".repeat(40), title: None };
        assert_eq!(pr.label(), "PR #12");
        assert_eq!(pr.commit_id().unwrap().gref.as_str(), "refs/pull/12/head");
    }
}
