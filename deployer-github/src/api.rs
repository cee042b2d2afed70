//! Talking to GitHub's REST API: as a GitHub App (a JWT, then installation
//! tokens that octocrab caches and refreshes before they expire), with a
//! plain token, or anonymously; every page of a list (`Link: rel="next"`);
//! and GitHub's rate limits respected (no request until the reset time
//! after a 403/429 that says the limit is reached).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deployer_core::{Error, Secret};
use octocrab::models::{AppId, InstallationId};
use octocrab::Octocrab;
use serde_json::Value;

use crate::repo::Repo;

/// How the deployer authenticates to GitHub.
#[derive(Clone)]
pub enum Auth {
    /// As a GitHub App: its id, its private key (RSA PEM), and the accounts
    /// whose installations it serves (empty: all).
    App {
        /// The App's id.
        app_id: u64,
        /// Its private key, in PEM.
        private_key: Secret<String>,
        /// Accounts (users, organisations) to serve, case-insensitive.
        accounts: Vec<String>,
    },
    /// With a personal or OAuth token.
    Token(Secret<String>),
    /// Without credentials (public repositories, low rate limits).
    Anonymous,
}

/// An installation of the App: its id, account and repositories.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installation {
    /// Its id.
    pub id: u64,
    /// The account it is installed on.
    pub account: String,
    /// The repositories it can see (lower-case `owner/name`).
    pub repositories: Vec<String>,
}

struct State {
    /// Clients per installation id.
    installations: HashMap<u64, Octocrab>,
    /// Which installation serves a repository (lower-case `owner/name`).
    repo_installation: HashMap<String, u64>,
    /// The installations found last.
    known: Vec<Installation>,
    /// No request before this time (Unix seconds): the rate limit's reset.
    backoff_until: u64,
}

/// A GitHub API client. Cloning gives another handle on the same one.
#[derive(Clone)]
pub struct Api {
    base: String,
    auth: Auth,
    root: Octocrab,
    state: Arc<Mutex<State>>,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The `rel="next"` URL of a `Link` header.
pub(crate) fn next_link(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (url, rel) = part.split_once(';')?;
        rel.contains("rel=\"next\"").then(|| url.trim().trim_start_matches('<').trim_end_matches('>').to_owned())
    })
}

impl Api {
    /// A client for the API at `base` (`https://api.github.com`).
    pub fn new(base: &str, auth: Auth) -> Result<Api, Error> {
        let mut builder = Octocrab::builder()
            .base_uri(base)
            .map_err(|e| Error::msg(format!("the GitHub API address {base:?}: {e}")))?;
        builder = match &auth {
            Auth::App { app_id, private_key, .. } => {
                let key = octocrab::jsonwebtoken::EncodingKey::from_rsa_pem(private_key.expose().as_bytes())
                    .map_err(|e| Error::msg(format!("the GitHub App's private key is not an RSA PEM key: {e}")))?;
                builder.app(AppId(*app_id), key)
            }
            Auth::Token(token) => builder.personal_token(token.expose().clone()),
            Auth::Anonymous => builder,
        };
        let root = builder.build().map_err(|e| Error::msg(format!("a GitHub client: {e}")))?;
        Ok(Api {
            base: base.trim_end_matches('/').to_owned(),
            auth,
            root,
            state: Arc::new(Mutex::new(State {
                installations: HashMap::new(),
                repo_installation: HashMap::new(),
                known: Vec::new(),
                backoff_until: 0,
            })),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The installations found at the last refresh.
    pub fn installations(&self) -> Vec<Installation> {
        self.lock().known.clone()
    }

    /// Whether requests are held back by the rate limit, and until when.
    pub fn rate_limited_until(&self) -> Option<u64> {
        let until = self.lock().backoff_until;
        (until > now_secs()).then_some(until)
    }

    /// One request: `GET`, `POST` or `PATCH` of `path` (relative to the
    /// base, or a full URL from a `Link` header) with `client`. The JSON
    /// body and the `Link` header of a success.
    async fn request(
        &self,
        client: &Octocrab,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(Value, Option<String>), Error> {
        self.exchange(client, method, path, body).await?.map_err(|r| Error::msg(r.message))
    }

    /// [`Api::request`], but a response GitHub refused (not for its rate
    /// limit) is returned as such, with its status.
    async fn exchange(
        &self,
        client: &Octocrab,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Result<(Value, Option<String>), Refused>, Error> {
        if let Some(until) = self.rate_limited_until() {
            return Err(Error::msg(format!(
                "GitHub's rate limit is reached: no requests for {} s more",
                until.saturating_sub(now_secs())
            )));
        }
        // Relative to the base: octocrab sends credentials only with those
        // (and with api.github.com), never to another host.
        let uri = path.strip_prefix(self.base.as_str()).unwrap_or(path).to_owned();
        let response = match method {
            "GET" => client._get(uri.as_str()).await,
            "POST" => client._post(uri.as_str(), body).await,
            "PATCH" => client._patch(uri.as_str(), body).await,
            other => return Err(Error::msg(format!("unsupported method {other}"))),
        }
        .map_err(|e| {
            let refused = token_refused(&e);
            let e = Error::msg(format!("{method} {path} on GitHub: {}", octocrab_message(&e)));
            if refused {
                e.context(TOKEN_REFUSED)
            } else {
                e
            }
        })?;
        let status = response.status();
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let link = header("link");
        let (remaining, reset, retry_after) =
            (header("x-ratelimit-remaining"), header("x-ratelimit-reset"), header("retry-after"));
        let text = client.body_to_string(response).await.map_err(|e| Error::msg(format!("reading {path}: {e}")))?;
        if status.as_u16() == 403 || status.as_u16() == 429 {
            let limited = remaining.as_deref() == Some("0") || retry_after.is_some() || text.contains("rate limit");
            if limited {
                let until = match (
                    retry_after.and_then(|s| s.parse::<u64>().ok()),
                    reset.and_then(|s| s.parse::<u64>().ok()),
                ) {
                    (Some(after), _) => now_secs() + after,
                    (None, Some(reset)) => reset,
                    (None, None) => now_secs() + 60,
                };
                self.lock().backoff_until = until;
                return Err(Error::msg(format!(
                    "GitHub's rate limit is reached ({method} {path}): waiting {} s until it resets",
                    until.saturating_sub(now_secs())
                )));
            }
        }
        if !status.is_success() {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_else(|| text.clone());
            let message = without_tokens(&message);
            return Ok(Err(Refused {
                status: status.as_u16(),
                message: format!("{method} {path} on GitHub: {status}: {message}"),
            }));
        }
        let value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .map_err(|e| Error::msg(format!("{path}: GitHub sent JSON that does not parse: {e}")))?
        };
        Ok(Ok((value, link)))
    }

    /// Every item of a list endpoint, following `Link: rel="next"`.
    async fn all_pages(&self, client: &Octocrab, path: &str, field: Option<&str>) -> Result<Vec<Value>, Error> {
        let mut out = Vec::new();
        let mut next = Some(path.to_owned());
        let mut pages = 0;
        while let Some(url) = next.take() {
            let (value, link) = self.request(client, "GET", &url, None).await?;
            let items = match field {
                Some(f) => value.get(f).cloned().unwrap_or(Value::Null),
                None => value,
            };
            match items {
                Value::Array(list) => out.extend(list),
                other => return Err(Error::msg(format!("{path}: expected a list, got {}", short(&other)))),
            }
            pages += 1;
            if pages > 1000 {
                return Err(Error::msg(format!("{path}: more than 1000 pages")));
            }
            next = link.as_deref().and_then(next_link);
            if let Some(url) = &next {
                if url.contains("://") && !url.starts_with(&format!("{}/", self.base)) {
                    return Err(Error::msg(format!("{path}: GitHub's next page is on another host ({url})")));
                }
            }
        }
        Ok(out)
    }

    /// Finds the App's installations (allowed accounts only) and their
    /// repositories, replacing what was known: a removed installation's
    /// repositories are no longer served. An installation whose repositories
    /// cannot be read (suspended, revoked meanwhile) is skipped with a
    /// warning, so the others carry on. A no-op for token and anonymous
    /// clients.
    pub async fn refresh_installations(&self) -> Result<Vec<Installation>, Error> {
        let Auth::App { accounts, .. } = &self.auth else { return Ok(Vec::new()) };
        let installs = self.all_pages(&self.root, "/app/installations?per_page=100", None).await?;
        let mut found = Vec::new();
        let mut clients = HashMap::new();
        let mut repo_installation = HashMap::new();
        for install in installs {
            let id =
                install.get("id").and_then(Value::as_u64).ok_or_else(|| Error::msg("an installation without an id"))?;
            let account = install.pointer("/account/login").and_then(Value::as_str).unwrap_or_default().to_owned();
            if !accounts.is_empty() && !accounts.iter().any(|a| a.eq_ignore_ascii_case(&account)) {
                tracing::info!("skipping the GitHub App installation on {account} (not in the allow-list)");
                continue;
            }
            if install.get("suspended_at").is_some_and(|v| !v.is_null()) {
                tracing::warn!("the GitHub App installation on {account} is suspended: its repositories are not read");
                continue;
            }
            // Keep the client (and its cached token) of a known installation.
            let known = self.lock().installations.get(&id).cloned();
            let client = match known {
                Some(c) => c,
                None => self
                    .root
                    .installation(InstallationId(id))
                    .map_err(|e| Error::msg(format!("a client for installation {id}: {e}")))?,
            };
            let repos =
                match self.all_pages(&client, "/installation/repositories?per_page=100", Some("repositories")).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!("the GitHub App installation on {account}: {}", e.message());
                        continue;
                    }
                };
            let repositories: Vec<String> = repos
                .iter()
                .filter(|r| !r.get("archived").and_then(Value::as_bool).unwrap_or(false))
                .filter_map(|r| r.get("full_name").and_then(Value::as_str).map(str::to_ascii_lowercase))
                .collect();
            for r in &repositories {
                repo_installation.insert(r.clone(), id);
            }
            clients.insert(id, client);
            found.push(Installation { id, account, repositories });
        }
        let mut state = self.lock();
        state.installations = clients;
        state.repo_installation = repo_installation;
        state.known = found.clone();
        Ok(found)
    }

    /// Whether this client is a GitHub App (installations and their tokens).
    pub(crate) fn is_app(&self) -> bool {
        matches!(self.auth, Auth::App { .. })
    }

    /// The installation that serves `repo`, as last listed.
    pub(crate) fn installation_of(&self, repo: &Repo) -> Option<u64> {
        self.lock().repo_installation.get(&repo.key()).copied()
    }

    /// The client for `repo`: its installation's (finding installations
    /// first if needed), or the token or anonymous one.
    pub(crate) async fn client_for(&self, repo: &Repo) -> Result<Octocrab, Error> {
        if !matches!(self.auth, Auth::App { .. }) {
            return Ok(self.root.clone());
        }
        let lookup = |state: &State| {
            state.repo_installation.get(&repo.key()).and_then(|id| state.installations.get(id)).cloned()
        };
        if let Some(client) = lookup(&self.lock()) {
            return Ok(client);
        }
        self.refresh_installations().await?;
        lookup(&self.lock()).ok_or_else(|| {
            Error::msg(format!(
                "the GitHub App cannot see {repo}: add it in the App's installation settings \
                 (Repository access), or install the App on {}",
                repo.owner
            ))
        })
    }

    /// Whether `status` says the installation token of `repo` is refused
    /// (the App was uninstalled or the repository removed from it, and no
    /// webhook said so): then what is known of the installations is
    /// dropped, so the next client is found by listing them again.
    /// The installation's client (and its cached token) is dropped too, so
    /// the retry mints a new token rather than sending the refused one again.
    fn revoked(&self, repo: &Repo, status: Option<u16>) -> bool {
        if status != Some(401) || !matches!(self.auth, Auth::App { .. }) {
            return false;
        }
        tracing::warn!("GitHub refused the installation token for {repo}: listing the App's installations again");
        let mut state = self.lock();
        if let Some(id) = state.repo_installation.get(&repo.key()).copied() {
            state.installations.remove(&id);
        }
        state.repo_installation.clear();
        true
    }

    /// `exchange` with `repo`'s client; once more with a fresh one if the
    /// token was refused or could not be had (see [`Api::revoked`]).
    async fn exchange_for(
        &self,
        repo: &Repo,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Result<(Value, Option<String>), Refused>, Error> {
        let client = self.client_for(repo).await?;
        match self.exchange(&client, method, path, body).await {
            Ok(Ok(answer)) => return Ok(Ok(answer)),
            Ok(Err(refused)) if !self.revoked(repo, Some(refused.status)) => return Ok(Err(refused)),
            // Not an answer. Only GitHub refusing to mint the token (an
            // installation that is gone) means the token is revoked; a
            // transport error is just an error, retried on the next read.
            Err(e) if !(e.message().contains(TOKEN_REFUSED) && self.revoked(repo, Some(401))) => return Err(e),
            _ => {}
        }
        let client = self.client_for(repo).await?;
        self.exchange(&client, method, path, body).await
    }

    /// GET `path` for `repo`.
    pub(crate) async fn get(&self, repo: &Repo, path: &str) -> Result<Value, Error> {
        Ok(self.exchange_for(repo, "GET", path, None).await?.map_err(|r| Error::msg(r.message))?.0)
    }

    /// GET `path` for `repo`; a refusal (404, 403 …) is returned with its
    /// status rather than as an error.
    pub(crate) async fn get_or_refused(&self, repo: &Repo, path: &str) -> Result<Result<Value, Refused>, Error> {
        Ok(self.exchange_for(repo, "GET", path, None).await?.map(|(v, _)| v))
    }

    /// Every item of a list for `repo`.
    pub(crate) async fn list(&self, repo: &Repo, path: &str) -> Result<Vec<Value>, Error> {
        let client = self.client_for(repo).await?;
        match self.all_pages(&client, path, None).await {
            Err(e)
                if (e.message().contains(" 401 Unauthorized") || e.message().contains(TOKEN_REFUSED))
                    && self.revoked(repo, Some(401)) =>
            {
                let client = self.client_for(repo).await?;
                self.all_pages(&client, path, None).await
            }
            other => other,
        }
    }

    /// POST or PATCH `body` to `path` for `repo`.
    pub(crate) async fn send(&self, repo: &Repo, method: &str, path: &str, body: &Value) -> Result<Value, Error> {
        Ok(self.exchange_for(repo, method, path, Some(body)).await?.map_err(|r| Error::msg(r.message))?.0)
    }
}

/// `text` (what a server answered) made safe to show: at most 300
/// characters, with anything shaped like a credential GitHub uses — a JWT
/// (`eyJ….….…`), a `gh?_` or `github_pat_` token, a `Bearer`/`token`
/// value — replaced by `[redacted]`. A broken or hostile server may echo
/// the request's `Authorization` header back in its error.
pub(crate) fn without_tokens(text: &str) -> String {
    let short: String = text.chars().take(300).collect();
    let mut out = String::with_capacity(short.len());
    let mut after_scheme = false;
    for word in short.split_inclusive(|c: char| c.is_whitespace() || c == '"' || c == ',') {
        let bare = word.trim_end_matches(|c: char| c.is_whitespace() || c == '"' || c == ',');
        let tail = &word[bare.len()..];
        let jwt = bare.starts_with("eyJ") && bare.matches('.').count() >= 2;
        let token = ["ghp_", "gho_", "ghs_", "ghu_", "ghr_", "github_pat_", "v1."].iter().any(|p| bare.starts_with(p));
        if (jwt || token || after_scheme) && bare.len() >= 8 {
            out.push_str("[redacted]");
            out.push_str(tail);
        } else {
            out.push_str(word);
        }
        after_scheme = bare.eq_ignore_ascii_case("bearer")
            || bare.eq_ignore_ascii_case("token")
            || bare.eq_ignore_ascii_case("basic");
    }
    if short.len() < text.len() {
        out.push('…');
    }
    out
}

/// What an error says when GitHub refused to mint an installation token.
const TOKEN_REFUSED: &str = "GitHub refused the App's installation token";

/// Whether octocrab failed because GitHub refused the installation token
/// (401, 403 or 404 from minting it), not because of the transport.
fn token_refused(e: &octocrab::Error) -> bool {
    matches!(e, octocrab::Error::GitHub { source, .. } if matches!(source.status_code.as_u16(), 401 | 403 | 404))
}

/// What octocrab's error says: GitHub's status and message when it carries
/// one (minting an installation token, say), else its own text.
fn octocrab_message(e: &octocrab::Error) -> String {
    match e {
        octocrab::Error::GitHub { source, .. } => {
            format!("{}: {}", source.status_code, without_tokens(&source.message))
        }
        other => without_tokens(&other.to_string()),
    }
}

/// A response GitHub refused: its status and a message naming the request.
#[derive(Debug)]
pub(crate) struct Refused {
    pub status: u16,
    pub message: String,
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    s.chars().take(80).collect()
}

/// How long a webhook-less repository waits between reads (the fallback).
pub const FALLBACK_POLL: Duration = Duration::from_secs(600);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_a_server_echoes_are_not_repeated() {
        let echoed = "GET /app/installations HTTP/1.1\r\nauthorization: Bearer eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOjF9.c2lnbmF0dXJl\r\n\
                      x-token: ghs_16C7e42F292c6912E7710c838347Ae178B4a token abcdefghijklmnop";
        let safe = without_tokens(echoed);
        for leaked in ["eyJhbGciOiJSUzI1NiJ9", "ghs_16C7e42F", "abcdefghijklmnop"] {
            assert!(!safe.contains(leaked), "{safe}");
        }
        assert!(safe.contains("GET /app/installations"), "{safe}");
        assert!(without_tokens(&"x".repeat(1000)).chars().count() <= 301);
    }

    #[test]
    fn link_headers() {
        let link = r#"<https://api.github.com/x?page=2>; rel="next", <https://api.github.com/x?page=5>; rel="last""#;
        assert_eq!(next_link(link).as_deref(), Some("https://api.github.com/x?page=2"));
        assert_eq!(next_link(r#"<https://api.github.com/x?page=1>; rel="prev""#), None);
    }
}
