//! Values a pipeline passes around: remotes, ref names, commit ids, and
//! fetched commits. Each is checked when made, so that nothing a command
//! line could mistake for an option or a shell construct reaches git.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why a remote, ref or hash was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GitError {
    /// Not a repository address this crate accepts.
    BadRemote {
        /// The address given.
        remote: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Not a valid ref name.
    BadRef {
        /// The name given.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Not a full commit hash.
    BadHash {
        /// The hash given.
        hash: String,
    },
}

impl fmt::Display for GitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GitError::BadRemote { remote, why } => write!(f, "refusing the git remote {remote:?}: {why}"),
            GitError::BadRef { name, why } => write!(f, "refusing the git ref {name:?}: {why}"),
            GitError::BadHash { hash } => {
                write!(f, "refusing the commit hash {hash:?}: expected 40 (or 64) hexadecimal digits")
            }
        }
    }
}

impl std::error::Error for GitError {}

impl From<GitError> for deployer_core::Error {
    fn from(e: GitError) -> deployer_core::Error {
        deployer_core::Error::msg(e.to_string())
    }
}

/// Characters a shell or git's option parser could act on.
fn unsafe_char(c: char) -> bool {
    c.is_control()
        || c.is_whitespace()
        || matches!(c, ';' | '&' | '|' | '`' | '$' | '<' | '>' | '(' | ')' | '{' | '}' | '\'' | '"' | '\\' | '*' | '?')
}

/// A repository's address: an `https://`, `http://`, `git://`, `ssh://` or
/// `file://` URL, an scp-like `[user@]host:path`, or an absolute local path.
/// HTTP(S) URLs may not carry credentials: give a token to
/// [`Git::token`](crate::Git::token) instead, which keeps it out of logs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Remote(String);

impl Remote {
    /// Checks `url`: a known scheme or an absolute path, with no whitespace,
    /// control or shell characters, and not starting with `-`.
    pub fn new(url: &str) -> Result<Remote, GitError> {
        Remote::check(url)?;
        // Trailing slashes name the same repository; they go unless the
        // address would not be one without them (`/`, `host:/`, `file:///`).
        let trimmed = url.trim_end_matches('/');
        if trimmed != url && Remote::check(trimmed).is_ok() {
            return Ok(Remote(trimmed.to_owned()));
        }
        Ok(Remote(url.to_owned()))
    }

    fn check(url: &str) -> Result<(), GitError> {
        let bad = |why| Err(GitError::BadRemote { remote: without_credentials(url), why });
        if url.is_empty() {
            return bad("it is empty");
        }
        if url.starts_with('-') {
            return bad("it starts with '-' (git would read an option)");
        }
        if url.chars().any(unsafe_char) {
            return bad("it contains whitespace, a control character or a shell character");
        }
        let known = ["https://", "http://", "git://", "ssh://", "file://"].iter().any(|s| url.starts_with(s));
        if !known && !url.starts_with('/') && scp_like(url).is_none() {
            return bad(
                "expected an https://, http://, git://, ssh:// or file:// URL, user@host:path, or an absolute path",
            );
        }
        if known && url.split_once("://").is_some_and(|(_, rest)| rest.is_empty() || rest.starts_with('-')) {
            return bad("the URL has no host or path");
        }
        if url.starts_with("http") && url.split_once("://").is_some_and(|(_, rest)| authority(rest).contains('@')) {
            return bad("it has credentials in it (give a token to Git::token, which keeps it out of logs)");
        }
        Ok(())
    }

    /// The local repository at `path` (which must be absolute).
    pub fn local(path: &Path) -> Result<Remote, GitError> {
        Remote::new(&path.to_string_lossy())
    }

    /// The address.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the repository is on this machine (a path or `file://`).
    pub fn is_local(&self) -> bool {
        self.0.starts_with('/') || self.0.starts_with("file://")
    }

    /// The host of a network address (`github.com`), if it has one.
    pub fn host(&self) -> Option<&str> {
        if let Some((host, _)) = scp_like(&self.0) {
            return Some(host);
        }
        let rest = self.0.split_once("://")?.1;
        let host = authority(rest).rsplit('@').next()?;
        let host = match host.strip_prefix('[') {
            // `ssh://[::1]:22/repo`: the address in brackets.
            Some(v6) => v6.split(']').next().unwrap_or(v6),
            None => host.split(':').next().unwrap_or(host),
        };
        Some(host).filter(|h| !h.is_empty())
    }

    /// A short name for labels: the last path component, without `.git`.
    pub fn short_name(&self) -> &str {
        let last = self.0.rsplit('/').next().unwrap_or(&self.0);
        last.strip_suffix(".git").unwrap_or(last)
    }

    /// `relative` (a submodule's `../other.git`) resolved against this
    /// repository's address; an absolute address is returned as it is.
    pub fn join(&self, relative: &str) -> Result<Remote, GitError> {
        if !(relative.starts_with("./") || relative.starts_with("../")) {
            return Remote::new(relative);
        }
        let mut base: Vec<&str> = self.0.split('/').collect();
        for part in relative.split('/') {
            match part {
                "." | "" => {}
                ".." => {
                    base.pop();
                }
                p => base.push(p),
            }
        }
        Remote::new(&base.join("/"))
    }
}

/// The authority part (`user@host:port`) of what follows a URL's `://`.
fn authority(rest: &str) -> &str {
    rest.split('/').next().unwrap_or(rest)
}

/// `url` with the user part of a URL's authority (which may be a token)
/// replaced by `***`, for error messages.
fn without_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let auth = authority(rest);
    match auth.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}{}", &rest[auth.len()..]),
        None => url.to_owned(),
    }
}

/// The host and path of an scp-like address (`git@github.com:o/r.git`): a
/// colon before any slash, as git decides.
fn scp_like(url: &str) -> Option<(&str, &str)> {
    if url.contains("://") || url.starts_with('/') {
        return None;
    }
    // As git's `host_end`: a host in brackets (`[::1]`, `user@[::1]`,
    // `[host:22]`) may hold colons; the separator is the first ':' after it.
    let bracket = url.find("@[").map(|i| i + 1).or_else(|| url.starts_with('[').then_some(0));
    let (before, path) = match bracket {
        Some(open) => {
            let close = open + url[open..].find(']')?;
            let (before, rest) = url.split_at(close + 1);
            (before, rest.strip_prefix(':')?)
        }
        None => url.split_once(':')?,
    };
    if before.contains('/') || path.is_empty() || path.starts_with('-') {
        return None;
    }
    let host = bracketed_host(before.rsplit('@').next()?);
    (!host.is_empty() && !host.starts_with('-')).then_some((host, path))
}

/// The host of `[::1]`, `[host:22]` (git reads a port there) or `host`.
fn bracketed_host(text: &str) -> &str {
    let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) else { return text };
    if inner.parse::<std::net::Ipv6Addr>().is_ok() {
        return inner;
    }
    match inner.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => inner,
    }
}

impl TryFrom<String> for Remote {
    type Error = GitError;
    fn try_from(s: String) -> Result<Remote, GitError> {
        Remote::new(&s)
    }
}

impl From<Remote> for String {
    fn from(r: Remote) -> String {
        r.0
    }
}

impl fmt::Display for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A ref: a branch name (`main`) or a full ref (`refs/pull/12/head`),
/// checked with git's rules (`git check-ref-format`) and this crate's
/// (no shell characters, no leading `-`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RefName(String);

impl RefName {
    /// Checks `name`.
    pub fn new(name: &str) -> Result<RefName, GitError> {
        let bad = |why| Err(GitError::BadRef { name: name.to_owned(), why });
        if name.is_empty() {
            return bad("it is empty");
        }
        if name.starts_with('-') {
            return bad("it starts with '-' (git would read an option)");
        }
        if name.chars().any(|c| unsafe_char(c) || matches!(c, '~' | '^' | ':' | '[')) {
            return bad("it contains whitespace, a control character, a shell character or one of ~ ^ : [");
        }
        if name.starts_with('/') || name.ends_with('/') || name.contains("//") {
            return bad("it has an empty component");
        }
        if name.contains("..") || name.contains("@{") || name == "@" {
            return bad("it contains '..' or '@{'");
        }
        if name.split('/').any(|c| c.starts_with('.') || c.ends_with(".lock")) || name.ends_with('.') {
            return bad("a component starts with '.' or ends with '.lock'");
        }
        Ok(RefName(name.to_owned()))
    }

    /// The full ref: `main` is `refs/heads/main`; `refs/…` and `HEAD` stay.
    pub fn full(&self) -> String {
        if self.0.starts_with("refs/") || self.0 == "HEAD" {
            self.0.clone()
        } else {
            format!("refs/heads/{}", self.0)
        }
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RefName {
    type Error = GitError;
    fn try_from(s: String) -> Result<RefName, GitError> {
        RefName::new(&s)
    }
}

impl From<RefName> for String {
    fn from(r: RefName) -> String {
        r.0
    }
}

impl fmt::Display for RefName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A full commit hash (40 hex digits for SHA-1, 64 for SHA-256), lower case.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Hash(String);

impl Hash {
    /// Checks `hash`.
    pub fn new(hash: &str) -> Result<Hash, GitError> {
        let hash = hash.trim();
        if (hash.len() == 40 || hash.len() == 64) && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Hash(hash.to_ascii_lowercase()))
        } else {
            Err(GitError::BadHash { hash: hash.to_owned() })
        }
    }

    /// The hash.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first seven digits.
    pub fn short(&self) -> &str {
        &self.0[..7]
    }
}

impl TryFrom<String> for Hash {
    type Error = GitError;
    fn try_from(s: String) -> Result<Hash, GitError> {
        Hash::new(&s)
    }
}

impl From<Hash> for String {
    fn from(h: Hash) -> String {
        h.0
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which commit: where it is, the ref it was found on, and its hash.
///
/// ```
/// use deployer_git::CommitId;
///
/// let id = CommitId::new("https://github.com/ocurrent/ocurrent.git", "master", "4f2a9c1e0d5b7a8c9f1e2d3c4b5a69788796a5b4")?;
/// assert_eq!(id.to_string(), "ocurrent#4f2a9c1");
/// assert!(CommitId::new("https://github.com/x/y", "--upload-pack=evil", "4f2a9c1e0d5b7a8c9f1e2d3c4b5a69788796a5b4").is_err());
/// # Ok::<(), deployer_git::GitError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CommitId {
    /// The repository.
    pub repo: Remote,
    /// The ref the commit was found on (fetched if the commit is not there yet).
    pub gref: RefName,
    /// The commit.
    pub hash: Hash,
}

impl CommitId {
    /// Checks and joins the parts.
    pub fn new(repo: &str, gref: &str, hash: &str) -> Result<CommitId, GitError> {
        Ok(CommitId { repo: Remote::new(repo)?, gref: RefName::new(gref)?, hash: Hash::new(hash)? })
    }
}

impl fmt::Display for CommitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.repo.short_name(), self.hash.short())
    }
}

/// A commit fetched into a local mirror, with its submodules' commits:
/// what checkouts are made from. Two commits are equal when their hashes
/// are.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Commit {
    /// Which commit.
    pub id: CommitId,
    /// The mirror (a bare repository) holding it.
    pub mirror: PathBuf,
    /// Its submodules, by path, each fetched into its own mirror.
    pub submodules: Vec<(String, Commit)>,
}

impl PartialEq for Commit {
    fn eq(&self, other: &Commit) -> bool {
        self.id.hash == other.id.hash
    }
}

impl Eq for Commit {}

impl fmt::Display for Commit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.id.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remotes_are_checked_before_any_command_runs() {
        for ok in [
            "https://github.com/o/r.git",
            "git://127.0.0.1:9418/r",
            "file:///srv/r",
            "/srv/repo",
            "ssh://git@h/r",
            "git@github.com:o/r.git",
            "host:r",
        ] {
            assert!(Remote::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "-uevil",
            "https://x/r;rm -rf /",
            "r",
            "https://x/$(id)",
            "ftp://x/r",
            "https://",
            "/a b",
            "",
            "h:-oProxyCommand=x",
            "-h:r",
            "a/b:c",
        ] {
            let e = Remote::new(bad).unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
        for with_token in ["https://x-access-token:ghs_abc@github.com/o/r.git", "https://ghs_abc@github.com/o/$(r)"] {
            let e = Remote::new(with_token).unwrap_err().to_string();
            assert!(!e.contains("ghs_abc") && e.contains("***@github.com/o/"), "the token is in {e}");
        }
        let e = Remote::new("https://ghs_abc@github.com/o/r.git").unwrap_err().to_string();
        assert!(e.contains("credentials") && e.contains("Git::token"), "{e}");
        let r = Remote::new("https://github.com:443/o/app.git").unwrap();
        assert_eq!((r.host(), r.short_name()), (Some("github.com"), "app"));
        assert_eq!(r.join("../lib.git").unwrap().as_str(), "https://github.com:443/o/lib.git");
        let r = Remote::new("git@github.com:o/app.git").unwrap();
        assert_eq!((r.host(), r.short_name(), r.is_local()), (Some("github.com"), "app", false));
        assert_eq!(r.join("../lib.git").unwrap().as_str(), "git@github.com:o/lib.git");
    }

    /// Found by the `git_names` fuzz target: `git@host:/` lost its trailing
    /// slash and became `git@host:`, which is no remote (and `/` became
    /// the empty string). A slash goes only where what is left is one.
    #[test]
    fn trailing_slashes_go_only_where_an_address_is_left() {
        for (given, kept) in [
            ("git@gtsush:/", "git@gtsush:/"),
            ("/", "/"),
            ("file:///", "file:///"),
            ("https://h.example/o/r.git/", "https://h.example/o/r.git"),
            ("/srv/repo//", "/srv/repo"),
        ] {
            let r = Remote::new(given).unwrap_or_else(|e| panic!("{given}: {e}"));
            assert_eq!(r.as_str(), kept);
            assert_eq!(Remote::new(r.as_str()).unwrap(), r, "{given} reads back as itself");
        }
    }

    /// Remotes with IPv6 addresses and bracketed hosts, read for their host
    /// as git's `host_end` reads them (the host decides which token goes
    /// with a fetch and whether an untrusted submodule is on the same forge).
    #[test]
    fn bracketed_hosts_are_read_as_git_reads_them() {
        for (url, host) in [
            ("ssh://[::1]/srv/repo.git", "::1"),
            ("ssh://git@[::1]:2222/srv/repo.git", "::1"),
            ("https://[2001:db8::7]:8443/o/r.git", "2001:db8::7"),
            ("user@[::1]:repo.git", "::1"),
            ("[::1]:repo.git", "::1"),
            ("[host.example:123]:src.git", "host.example"),
            ("git@[forge.example]:o/r.git", "forge.example"),
        ] {
            let r = Remote::new(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(r.host(), Some(host), "{url}");
        }
    }

    #[test]
    fn refs_follow_gits_rules() {
        for ok in ["main", "live-engine", "refs/pull/12/head", "feature/x.y", "HEAD"] {
            assert!(RefName::new(ok).is_ok(), "{ok}");
        }
        for bad in
            ["-f", "a..b", "x.lock", "a b", "a;b", "/x", "x/", "a//b", ".hidden", "a~1", "a^", "a:b", "@{1}", "$(id)"]
        {
            assert!(RefName::new(bad).is_err(), "{bad}");
        }
        assert_eq!(RefName::new("main").unwrap().full(), "refs/heads/main");
        assert_eq!(RefName::new("refs/pull/1/head").unwrap().full(), "refs/pull/1/head");
    }

    #[test]
    fn hashes_are_full_and_lower_case() {
        assert!(Hash::new("4F2A9C1E0D5B7A8C9F1E2D3C4B5A69788796A5B4").is_ok());
        assert!(Hash::new("4f2a9c1").is_err());
        assert!(Hash::new("zz2a9c1e0d5b7a8c9f1e2d3c4b5a69788796a5b4").is_err());
    }
}
