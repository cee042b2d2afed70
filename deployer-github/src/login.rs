//! Logging in to the web UI with GitHub (OAuth): users are keyed by
//! GitHub's numeric user id (`github:583231`; a login name can be renamed
//! and then registered by someone else) and shown by login, with the role
//! the configuration gives them (admins, builders; everyone else views).
//!
//! An entry of the admin and builder lists is a numeric id (`583231`), a
//! login with its id (`octocat=583231`), or a bare login (`octocat`). A bare
//! login is pinned to the id of the first user who logs in with it (kept in
//! [`GitHubLogin::pin_file`], so it survives restarts): afterwards that id
//! has the role whatever it is called, and another account that takes the
//! name gets nothing from it.
//!
//! `GET /login` sends the browser to GitHub with a random `state`, also put
//! in an `HttpOnly` cookie; `GET /login/callback` accepts GitHub's answer
//! only if its `state` is the cookie's and was issued here in the last ten
//! minutes, exchanges the code for a token, asks GitHub who the user is,
//! and starts a session (an `HttpOnly`, `SameSite=Lax` cookie, a week).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use deployer_core::Secret;
use deployer_web::{ClientAddr, Login, Logout, Role, User};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

const SESSION: &str = "deployer_session";
const STATE: &str = "deployer_oauth_state";
const SESSION_FOR: Duration = Duration::from_secs(7 * 24 * 3600);
const STATE_FOR: Duration = Duration::from_secs(600);

struct Inner {
    client_id: String,
    client_secret: Secret<String>,
    web: String,
    api: String,
    admins: Vec<Entry>,
    builders: Vec<Entry>,
    secure_cookies: bool,
    sessions: Mutex<HashMap<String, (User, Instant)>>,
    states: Mutex<HashMap<String, (Instant, Client)>>,
    /// Bare logins of the lists (lower case) → the id they were pinned to.
    pins: Mutex<HashMap<String, u64>>,
    pin_file: Option<PathBuf>,
}

/// One entry of an admin or builder list.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    /// A numeric user id.
    Id(u64),
    /// A login (lower case), pinned to an id at its first login.
    Name(String),
}

impl Entry {
    /// `583231` or `octocat=583231` is an id; `octocat` a login.
    fn parse(text: &str) -> Entry {
        let text = text.trim();
        let id = text.rsplit_once('=').map_or(text, |(_, id)| id);
        match id.parse::<u64>() {
            Ok(id) => Entry::Id(id),
            Err(_) => Entry::Name(text.trim_start_matches('@').to_ascii_lowercase()),
        }
    }
}

/// Who started a login, for the per-client bound: an IPv4 address, or
/// the /64 of an IPv6 one (one machine often holds a whole /64).
type Client = Option<[u8; 8]>;

fn client_key(ip: Option<IpAddr>) -> Client {
    match ip? {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            Some([0, 0, 0, 0, o[0], o[1], o[2], o[3]])
        }
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let mut k = [0u8; 8];
            k.copy_from_slice(&o[..8]);
            k[0] |= 0x80; // never equal to an IPv4 key
            Some(k)
        }
    }
}

/// Logins one client may have started and not finished; its next one
/// replaces its own oldest, never another client's.
const PENDING_PER_CLIENT: usize = 8;

/// GitHub OAuth for the web UI: a [`Login`] for `Site::login`, and its
/// routes for `Site::mount`. Cloning gives another handle on the same
/// sessions.
#[derive(Clone)]
pub struct GitHubLogin {
    inner: Arc<Inner>,
}

/// Logins started and not finished, kept at most. When this many are
/// pending (from many clients), new logins are refused for a while
/// rather than pushing out logins of others.
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
    /// GitHub users in `admins` the admin role (entries as in the
    /// [module docs](self): `583231`, `octocat=583231` or `octocat`).
    pub fn new(client_id: &str, client_secret: Secret<String>, admins: &[&str]) -> GitHubLogin {
        deployer_core::register_secret(client_secret.expose());
        GitHubLogin {
            inner: Arc::new(Inner {
                client_id: client_id.to_owned(),
                client_secret,
                web: "https://github.com".into(),
                api: crate::API.into(),
                admins: admins.iter().map(|a| Entry::parse(a)).collect(),
                builders: Vec::new(),
                secure_cookies: true,
                sessions: Mutex::default(),
                states: Mutex::default(),
                pins: Mutex::default(),
                pin_file: None,
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
        self.with(|i| i.builders = builders.iter().map(|b| Entry::parse(b)).collect())
    }

    /// Keeps the ids that bare logins of the lists were pinned to in `path`
    /// (JSON, read now; without it, pins last until the process ends).
    pub fn pin_file(self, path: impl Into<PathBuf>) -> GitHubLogin {
        let path = path.into();
        let pins: HashMap<String, u64> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::error!("{} is not a pin file ({e}); no login is pinned", path.display());
                HashMap::new()
            }),
            Err(_) => HashMap::new(),
        };
        self.with(|i| {
            i.pins = Mutex::new(pins);
            i.pin_file = Some(path);
        })
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

    /// The role of user `id`, who logs in as `login`: pins a bare login of
    /// the lists to `id` the first time it is seen.
    fn role(&self, login: &str, id: u64) -> Role {
        let login = login.to_ascii_lowercase();
        let mut pins = self.inner.pins.lock().unwrap_or_else(|e| e.into_inner());
        let mut pinned = false;
        let mut holds = |entries: &[Entry]| {
            entries.iter().any(|e| match e {
                Entry::Id(i) => *i == id,
                Entry::Name(name) => match pins.get(name) {
                    Some(pin) => *pin == id,
                    None if *name == login => {
                        pins.insert(name.clone(), id);
                        pinned = true;
                        true
                    }
                    None => false,
                },
            })
        };
        let role = if holds(&self.inner.admins) {
            Role::Admin
        } else if holds(&self.inner.builders) {
            Role::Builder
        } else {
            Role::Viewer
        };
        if pinned {
            tracing::info!("the login {login} is now pinned to GitHub user id {id}");
            if let Some(path) = &self.inner.pin_file {
                let text = serde_json::to_vec_pretty(&*pins).unwrap_or_default();
                let tmp = path.with_extension("tmp");
                if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path)) {
                    tracing::error!("cannot keep the pinned logins in {}: {e}", path.display());
                }
            }
        } else if role == Role::Viewer {
            let taken = [&self.inner.admins, &self.inner.builders]
                .iter()
                .any(|l| l.iter().any(|e| matches!(e, Entry::Name(n) if *n == login)));
            if taken {
                tracing::warn!(
                    "GitHub user id {id} logged in as {login}, a login pinned to another id: \
                     given no role (renamed and registered again?)"
                );
            }
        }
        role
    }

    fn cookie_attrs(&self, path: &str, max_age: Duration) -> String {
        let secure = if self.inner.secure_cookies { "; Secure" } else { "" };
        format!("; Path={path}; Max-Age={}; HttpOnly; SameSite=Lax{secure}", max_age.as_secs())
    }

    /// The routes: `/login`, `/login/callback`, `POST /logout`.
    pub fn routes(&self) -> Router {
        Router::new()
            .route("/login", get(start))
            .route("/login/callback", get(callback))
            .route("/logout", post(logout))
            .layer(axum::extract::DefaultBodyLimit::max(4096))
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
        let id = v.get("id").and_then(Value::as_u64).ok_or("GitHub gave no numeric id for the user")?;
        Ok(User { id: format!("github:{id}"), name: format!("github:{login}"), role: self.role(login, id) })
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

    fn logout(&self, headers: &HeaderMap) -> Option<Logout> {
        let id = cookie(headers, SESSION)?;
        Some(Logout { url: "/logout".into(), token: logout_token(&id) })
    }
}

/// The token the logout form carries: bound to the session, which only
/// its browser knows (the cookie is `HttpOnly`).
fn logout_token(session: &str) -> String {
    hex::encode(Sha256::digest(format!("deployer logout\0{session}").as_bytes()))
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

/// Notes a login started by `client`: its own oldest pending login goes
/// when it has [`PENDING_PER_CLIENT`]; another client's never does. False
/// (refused) when [`MAX_PENDING`] logins of many clients are pending.
fn admit_login(states: &mut HashMap<String, (Instant, Client)>, state: String, client: Client, now: Instant) -> bool {
    states.retain(|_, (until, _)| *until > now);
    let mut own: Vec<(String, Instant)> =
        states.iter().filter(|(_, (_, c))| *c == client).map(|(k, (u, _))| (k.clone(), *u)).collect();
    if own.len() >= PENDING_PER_CLIENT {
        own.sort_by_key(|(_, until)| *until);
        for (key, _) in &own[..own.len() + 1 - PENDING_PER_CLIENT] {
            states.remove(key);
        }
    }
    if states.len() >= MAX_PENDING {
        return false;
    }
    states.insert(state, (now + STATE_FOR, client));
    true
}

async fn start(State(login): State<GitHubLogin>, ClientAddr(client): ClientAddr) -> Response {
    let Some(state) = random_token() else { return no_randomness() };
    let client = client_key(client);
    {
        let mut states = login.inner.states.lock().unwrap_or_else(|e| e.into_inner());
        if !admit_login(&mut states, state.clone(), client, Instant::now()) {
            let mut r = (StatusCode::SERVICE_UNAVAILABLE, "too many logins are in progress: try again in a minute\n")
                .into_response();
            r.headers_mut().insert(header::RETRY_AFTER, axum::http::HeaderValue::from_static("60"));
            return r;
        }
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
    let issued = if bound {
        login.inner.states.lock().unwrap_or_else(|e| e.into_inner()).remove(&q.state).map(|(until, _)| until)
    } else {
        None
    };
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
            tracing::info!("{} ({}) logged in ({:?})", user.name, user.id, user.role);
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

/// `POST /logout`: only from this site's own page (its `Origin`, or
/// `Sec-Fetch-Site: same-origin`), with the session's token.
async fn logout(
    State(login): State<GitHubLogin>,
    headers: HeaderMap,
    form: Result<axum::extract::Form<Vec<(String, String)>>, axum::extract::rejection::FormRejection>,
) -> Response {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let origin_ok = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .and_then(|o| o.split_once("://"))
        .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host));
    let fetch_ok = headers.get("sec-fetch-site").is_some_and(|v| v == "same-origin");
    let fetch_refuses = headers.get("sec-fetch-site").is_some_and(|v| v != "same-origin" && v != "none");
    if !(origin_ok || fetch_ok) || fetch_refuses {
        return (StatusCode::FORBIDDEN, "logging out is only done from this site's own page\n").into_response();
    }
    let Some(id) = cookie(&headers, SESSION) else { return redirect("/", Vec::new()) };
    let token = form.ok().and_then(|f| f.0.into_iter().find(|(k, _)| k == "token").map(|(_, v)| v));
    if !token.is_some_and(|t| deployer_web::access::same_token(&t, &logout_token(&id))) {
        return (StatusCode::FORBIDDEN, "the logout form's token is missing or wrong: reload the page\n")
            .into_response();
    }
    login.inner.sessions.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    redirect("/", vec![format!("{SESSION}={}", login.cookie_attrs("/", Duration::ZERO))])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_client_cannot_push_out_another_clients_login() {
        let mut states = HashMap::new();
        let now = Instant::now();
        let victim = client_key(Some("198.51.100.1".parse().unwrap()));
        assert!(admit_login(&mut states, "victim".into(), victim, now));
        // One address calling /login 20,000 times (twice the table).
        let attacker = client_key(Some("203.0.113.9".parse().unwrap()));
        for i in 0..20_000 {
            assert!(admit_login(&mut states, format!("a{i}"), attacker, now + Duration::from_millis(i)));
        }
        assert!(states.contains_key("victim"), "the victim's login was pushed out");
        assert_eq!(states.len(), 1 + PENDING_PER_CLIENT, "the attacker keeps only its own newest");
        // Addresses of one IPv6 /64 count as one client.
        let a = client_key(Some("2001:db8:1:2::1".parse().unwrap()));
        let b = client_key(Some("2001:db8:1:2:ffff::9".parse().unwrap()));
        assert_eq!(a, b);
        assert_ne!(a, client_key(Some("2001:db8:1:3::1".parse().unwrap())));
        // Many clients filling the table: new logins are refused, none evicted.
        let mut full = HashMap::new();
        for i in 0..MAX_PENDING as u32 {
            let c = client_key(Some(std::net::IpAddr::V4(i.into())));
            assert!(admit_login(&mut full, format!("c{i}"), c, now));
        }
        assert!(!admit_login(&mut full, "late".into(), victim, now));
        assert_eq!(full.len(), MAX_PENDING);
    }

    #[test]
    fn list_entries_are_ids_or_logins() {
        assert_eq!(Entry::parse("583231"), Entry::Id(583231));
        assert_eq!(Entry::parse("octocat=583231"), Entry::Id(583231));
        assert_eq!(Entry::parse(" OctoCat "), Entry::Name("octocat".into()));
    }

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
