//! Logging in to the web UI with GitHub (OAuth): users are
//! `github:<login>`, with the role the configuration gives their login
//! (admins, builders; everyone else views).
//!
//! `GET /login` sends the browser to GitHub with a random `state`, also put
//! in an `HttpOnly` cookie; `GET /login/callback` accepts GitHub's answer
//! only if its `state` is the cookie's and was issued here in the last ten
//! minutes, exchanges the code for a token, asks GitHub who the user is,
//! and starts a session (an `HttpOnly`, `SameSite=Lax` cookie, a week).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use deployer_core::Secret;
use deployer_web::{Login, Role, User};
use serde::Deserialize;
use serde_json::Value;

const SESSION: &str = "deployer_session";
const STATE: &str = "deployer_oauth_state";
const SESSION_FOR: Duration = Duration::from_secs(7 * 24 * 3600);
const STATE_FOR: Duration = Duration::from_secs(600);

struct Inner {
    client_id: String,
    client_secret: Secret<String>,
    web: String,
    api: String,
    admins: Vec<String>,
    builders: Vec<String>,
    secure_cookies: bool,
    sessions: Mutex<HashMap<String, (User, Instant)>>,
    states: Mutex<HashMap<String, Instant>>,
}

/// GitHub OAuth for the web UI: a [`Login`] for `Site::login`, and its
/// routes for `Site::mount`. Cloning gives another handle on the same
/// sessions.
#[derive(Clone)]
pub struct GitHubLogin {
    inner: Arc<Inner>,
}

/// Logins started and not finished, kept at most: a client asking for
/// `/login` in a loop cannot grow the table past this (the oldest go).
const MAX_PENDING: usize = 10_000;

/// Sessions kept at most (the ones nearest their end go first).
const MAX_SESSIONS: usize = 100_000;

fn random_token() -> Option<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).ok()?;
    Some(hex::encode(bytes))
}

/// Inserts `key` until `until` into `table`: expired entries dropped first,
/// then, while it is full, the one that ends soonest.
fn insert_bounded<V>(table: &mut HashMap<String, V>, key: String, value: V, max: usize, until: impl Fn(&V) -> Instant) {
    let now = Instant::now();
    table.retain(|_, v| until(v) > now);
    while table.len() >= max {
        let Some(oldest) = table.iter().min_by_key(|(_, v)| until(v)).map(|(k, _)| k.clone()) else { break };
        table.remove(&oldest);
    }
    table.insert(key, value);
}

fn no_randomness() -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, "the system gave no random numbers for a login: try again\n").into_response()
}

/// The value of cookie `name` in `headers`.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == name).then(|| v.to_owned())
    })
}

impl GitHubLogin {
    /// A login for the OAuth App `client_id` (its secret), giving the
    /// GitHub users in `admins` the admin role.
    pub fn new(client_id: &str, client_secret: Secret<String>, admins: &[&str]) -> GitHubLogin {
        GitHubLogin {
            inner: Arc::new(Inner {
                client_id: client_id.to_owned(),
                client_secret,
                web: "https://github.com".into(),
                api: crate::API.into(),
                admins: admins.iter().map(|a| a.to_ascii_lowercase()).collect(),
                builders: Vec::new(),
                secure_cookies: true,
                sessions: Mutex::default(),
                states: Mutex::default(),
            }),
        }
    }

    fn with(self, f: impl FnOnce(&mut Inner)) -> GitHubLogin {
        let mut inner =
            Arc::try_unwrap(self.inner).unwrap_or_else(|_| panic!("configure a GitHubLogin before sharing it"));
        f(&mut inner);
        GitHubLogin { inner: Arc::new(inner) }
    }

    /// Also gives these users the builder role (rebuild and cancel jobs).
    pub fn builders(self, builders: &[&str]) -> GitHubLogin {
        self.with(|i| i.builders = builders.iter().map(|b| b.to_ascii_lowercase()).collect())
    }

    /// GitHub's web and API addresses (GitHub Enterprise, tests).
    pub fn urls(self, web: &str, api: &str) -> GitHubLogin {
        self.with(|i| {
            i.web = web.trim_end_matches('/').to_owned();
            i.api = api.trim_end_matches('/').to_owned();
        })
    }

    /// Whether cookies are `Secure` (on by default; off only for a site
    /// served over plain HTTP on loopback).
    pub fn secure_cookies(self, secure: bool) -> GitHubLogin {
        self.with(|i| i.secure_cookies = secure)
    }

    fn role(&self, login: &str) -> Role {
        let login = login.to_ascii_lowercase();
        if self.inner.admins.contains(&login) {
            Role::Admin
        } else if self.inner.builders.contains(&login) {
            Role::Builder
        } else {
            Role::Viewer
        }
    }

    fn cookie_attrs(&self, path: &str, max_age: Duration) -> String {
        let secure = if self.inner.secure_cookies { "; Secure" } else { "" };
        format!("; Path={path}; Max-Age={}; HttpOnly; SameSite=Lax{secure}", max_age.as_secs())
    }

    /// The routes: `/login`, `/login/callback`, `/logout`.
    pub fn routes(&self) -> Router {
        Router::new()
            .route("/login", get(start))
            .route("/login/callback", get(callback))
            .route("/logout", get(logout))
            .with_state(self.clone())
    }

    /// The user for a GitHub access token (GET /user).
    async fn user_for(&self, token: &str) -> Result<User, String> {
        let client = octocrab::Octocrab::builder()
            .base_uri(self.inner.api.as_str())
            .map_err(|e| e.to_string())?
            .personal_token(token.to_owned())
            .build()
            .map_err(|e| e.to_string())?;
        let response = client._get("/user").await.map_err(|e| e.to_string())?;
        let status = response.status();
        let text = client.body_to_string(response).await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("GitHub answered {status} for the user"));
        }
        let v: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        let login = v.get("login").and_then(Value::as_str).ok_or("GitHub named no user")?;
        Ok(User { id: format!("github:{login}"), role: self.role(login) })
    }

    /// Exchanges an OAuth `code` for an access token.
    async fn token_for(&self, code: &str) -> Result<Secret<String>, String> {
        let client = octocrab::Octocrab::builder()
            .base_uri(self.inner.web.as_str())
            .map_err(|e| e.to_string())?
            .build()
            .map_err(|e| e.to_string())?;
        let body = serde_json::json!({
            "client_id": self.inner.client_id,
            "client_secret": self.inner.client_secret.expose(),
            "code": code,
        });
        let url = format!("{}/login/oauth/access_token", self.inner.web);
        let response = client._post(url.as_str(), Some(&body)).await.map_err(|e| e.to_string())?;
        let text = client.body_to_string(response).await.map_err(|e| e.to_string())?;
        // JSON, or (without an Accept: application/json) a form.
        let token = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("access_token").and_then(Value::as_str).map(str::to_owned))
            .or_else(|| text.split('&').find_map(|kv| kv.strip_prefix("access_token=").map(str::to_owned)));
        token.map(Secret::new).ok_or_else(|| "GitHub gave no access token (an expired or reused code?)".to_owned())
    }
}

impl Login for GitHubLogin {
    fn user(&self, headers: &HeaderMap) -> Option<User> {
        let id = cookie(headers, SESSION)?;
        let mut sessions = self.inner.sessions.lock().unwrap_or_else(|e| e.into_inner());
        match sessions.get(&id) {
            Some((user, until)) if *until > Instant::now() => Some(user.clone()),
            Some(_) => {
                sessions.remove(&id);
                None
            }
            None => None,
        }
    }

    fn login_url(&self) -> String {
        "/login".into()
    }
}

fn redirect(to: &str, cookies: Vec<String>) -> Response {
    let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_owned())]).into_response();
    for c in cookies {
        if let Ok(v) = c.parse() {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    response
}

async fn start(State(login): State<GitHubLogin>) -> Response {
    let Some(state) = random_token() else { return no_randomness() };
    {
        let mut states = login.inner.states.lock().unwrap_or_else(|e| e.into_inner());
        insert_bounded(&mut states, state.clone(), Instant::now() + STATE_FOR, MAX_PENDING, |until| *until);
    }
    let url = format!(
        "{}/login/oauth/authorize?client_id={}&scope=read:user&state={state}",
        login.inner.web, login.inner.client_id
    );
    redirect(&url, vec![format!("{STATE}={state}{}", login.cookie_attrs("/login", STATE_FOR))])
}

#[derive(Deserialize)]
struct Callback {
    code: String,
    state: String,
}

async fn callback(State(login): State<GitHubLogin>, headers: HeaderMap, Query(q): Query<Callback>) -> Response {
    // The state must be this browser's (its cookie) and issued here; it is
    // used up only then.
    let bound = cookie(&headers, STATE).is_some_and(|c| c == q.state);
    let issued =
        if bound { login.inner.states.lock().unwrap_or_else(|e| e.into_inner()).remove(&q.state) } else { None };
    if issued.is_none_or(|until| until <= Instant::now()) {
        return (StatusCode::FORBIDDEN, "this login was not started here (or took too long): try again\n")
            .into_response();
    }
    let user = match login.token_for(&q.code).await {
        Ok(token) => login.user_for(token.expose()).await,
        Err(e) => Err(e),
    };
    match user {
        Ok(user) => {
            tracing::info!("{} logged in ({:?})", user.id, user.role);
            let Some(id) = random_token() else { return no_randomness() };
            let mut sessions = login.inner.sessions.lock().unwrap_or_else(|e| e.into_inner());
            let session = (user, Instant::now() + SESSION_FOR);
            insert_bounded(&mut sessions, id.clone(), session, MAX_SESSIONS, |(_, until)| *until);
            drop(sessions);
            redirect(
                "/",
                vec![
                    format!("{SESSION}={id}{}", login.cookie_attrs("/", SESSION_FOR)),
                    format!("{STATE}={}", login.cookie_attrs("/login", Duration::ZERO)),
                ],
            )
        }
        Err(e) => (StatusCode::BAD_GATEWAY, format!("logging in with GitHub failed: {e}\n")).into_response(),
    }
}

async fn logout(State(login): State<GitHubLogin>, headers: HeaderMap) -> Response {
    if let Some(id) = cookie(&headers, SESSION) {
        login.inner.sessions.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    }
    redirect("/", vec![format!("{SESSION}={}", login.cookie_attrs("/", Duration::ZERO))])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_logins_and_sessions_are_bounded() {
        let mut table = HashMap::new();
        let now = Instant::now();
        table.insert("expired".to_owned(), now - Duration::from_secs(1));
        for i in 0..5u64 {
            insert_bounded(&mut table, format!("k{i}"), now + Duration::from_secs(60 + i), 3, |t| *t);
        }
        let mut keys: Vec<_> = table.keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["k2", "k3", "k4"], "the expired one and those nearest their end went");
    }
}
