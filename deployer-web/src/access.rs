//! Who may do what: roles, logins, host and origin checks, CSRF tokens.
//!
//! - With a [`Login`] configured (GitHub OAuth comes with the GitHub
//!   plugin), a request's role is what the login says, and anonymous users
//!   can only view.
//! - With no login, only the machine itself acts: a loopback client that
//!   sent no proxy header (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`) is an
//!   admin; anyone else only views. Behind a reverse proxy, name it with
//!   [`Site::trust_proxy`](crate::Site::trust_proxy): its requests are then
//!   judged by the client address it forwards.
//! - Every request must name one of the site's host names in `Host`
//!   (defeats DNS rebinding); a request that changes state must not come
//!   from another site (`Origin`, `Sec-Fetch-Site`), needs a role above
//!   viewer before its body is read, and must carry a CSRF token bound to
//!   the browser (a random `SameSite=Strict` cookie) and the user. Pages give
//!   the token only to clients that may act.

use std::net::{IpAddr, SocketAddr};

use axum::http::{header, HeaderMap, Method};
use sha2::{Digest, Sha256};

/// What a user may do; each role includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// See the pipeline, jobs, logs and history.
    Viewer,
    /// Also rebuild and cancel jobs.
    Builder,
    /// Also start waiting jobs early and change the confirmation level.
    Admin,
}

/// A logged-in user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// A stable id, such as `github:alice`.
    pub id: String,
    /// What they may do.
    pub role: Role,
}

/// A login system (mounted by a plugin): finds the user of a request.
pub trait Login: Send + Sync + 'static {
    /// The user a request comes from (from its session cookie), if any.
    fn user(&self, headers: &HeaderMap) -> Option<User>;

    /// Where to send people to log in.
    fn login_url(&self) -> String;
}

/// The user and role of one request.
#[derive(Clone, Debug)]
pub struct Requester {
    /// The logged-in user, if any.
    pub user: Option<User>,
    /// What this request may do.
    pub role: Role,
    /// The CSRF token forms must carry; only for clients that may act.
    pub csrf: Option<String>,
    /// A CSRF cookie to set on the response (the browser had none).
    pub(crate) new_cookie: Option<String>,
}

impl Requester {
    /// Whether the request may do what needs `role`.
    pub fn can(&self, role: Role) -> bool {
        self.role >= role
    }

    /// The token for forms ("" for a client that may not act: it gets no forms).
    pub(crate) fn token(&self) -> String {
        self.csrf.clone().unwrap_or_default()
    }
}

/// The name of the cookie that binds CSRF tokens to a browser.
pub(crate) const CSRF_COOKIE: &str = "deployer-csrf";

/// Headers a reverse proxy adds; without a trusted proxy, a request
/// carrying any of them is treated as remote.
const PROXY_HEADERS: [&str; 5] = ["forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-real-ip"];

/// Decides roles, checks hosts and origins, and makes CSRF tokens for a site.
pub(crate) struct Access {
    login: Option<Box<dyn Login>>,
    secret: [u8; 32],
    /// Accepted host names (lower case, without port; IPv6 in brackets).
    hosts: Vec<String>,
    /// A reverse proxy whose forwarded client addresses are believed.
    proxy: Option<IpAddr>,
}

/// Why a request is refused before it reaches its handler.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No `Host`, or one the site does not answer to.
    Host(String),
    /// A state-changing request from another site.
    CrossSite(String),
}

impl Access {
    pub(crate) fn new(login: Option<Box<dyn Login>>, hosts: Vec<String>, proxy: Option<IpAddr>) -> Access {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).expect("the operating system provides random bytes");
        Access { login, secret, hosts, proxy }
    }

    pub(crate) fn login_url(&self) -> Option<String> {
        self.login.as_ref().map(|l| l.login_url())
    }

    pub(crate) fn has_login(&self) -> bool {
        self.login.is_some()
    }

    /// Checks the `Host` header against the site's names.
    pub(crate) fn check_host(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let host = match headers.get(header::HOST).map(|h| h.to_str()) {
            Some(Ok(h)) => h,
            _ => return Err(Refusal::Host("the request has no valid Host header".into())),
        };
        let name = host_name(host);
        if self.hosts.contains(&name) {
            Ok(())
        } else {
            Err(Refusal::Host(format!("this site does not answer to the host name {name:?}")))
        }
    }

    /// For a request that changes state: refuses it if it comes from another
    /// site (its `Origin` names another host, or `Sec-Fetch-Site` says so).
    pub(crate) fn check_origin(&self, method: &Method, headers: &HeaderMap) -> Result<(), Refusal> {
        if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            return Ok(());
        }
        if let Some(site) = headers.get("sec-fetch-site") {
            let site = site.to_str().unwrap_or("");
            if site != "same-origin" && site != "none" {
                return Err(Refusal::CrossSite(format!("the browser says this request comes from a {site} page")));
            }
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
            let authority = origin.split_once("://").map(|(_, a)| a).unwrap_or("");
            if origin == "null" || !authority.eq_ignore_ascii_case(host) {
                return Err(Refusal::CrossSite(format!("the request comes from {origin:?}, not from this site")));
            }
        }
        Ok(())
    }

    /// The user and role of a request from `peer` (the TCP client).
    pub(crate) fn requester(&self, headers: &HeaderMap, peer: Option<SocketAddr>) -> Requester {
        let (user, role) = match &self.login {
            Some(login) => match login.user(headers) {
                Some(user) => {
                    let role = user.role;
                    (Some(user), role)
                }
                None => (None, Role::Viewer),
            },
            // No login: only the machine itself may act.
            None => (None, if self.is_local(headers, peer) { Role::Admin } else { Role::Viewer }),
        };
        let (csrf, new_cookie) = if role > Role::Viewer {
            let (cookie, new) = match cookie_value(headers, CSRF_COOKIE).filter(|c| valid_cookie(c)) {
                Some(c) => (c.to_owned(), None),
                None => {
                    let c = random_hex();
                    (c.clone(), Some(c))
                }
            };
            (Some(self.token(&cookie, user.as_ref())), new)
        } else {
            (None, None)
        };
        Requester { user, role, csrf, new_cookie }
    }

    /// Whether a request comes from this machine: a loopback client with no
    /// proxy header, or, through the trusted proxy, a loopback client.
    fn is_local(&self, headers: &HeaderMap, peer: Option<SocketAddr>) -> bool {
        let Some(peer) = peer else { return false };
        let proxied = PROXY_HEADERS.iter().any(|h| headers.contains_key(*h));
        match self.proxy {
            Some(proxy) if peer.ip() == proxy => forwarded_client(headers).is_some_and(|ip| ip.is_loopback()),
            _ => peer.ip().is_loopback() && !proxied,
        }
    }

    /// The token for a browser's cookie and user.
    fn token(&self, cookie: &str, user: Option<&User>) -> String {
        let mut h = Sha256::new();
        h.update(self.secret);
        h.update(b"csrf\0");
        h.update(cookie.as_bytes());
        h.update(b"\0");
        h.update(user.map_or("", |u| u.id.as_str()).as_bytes());
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Whether `token` is the right one for this request (its cookie and
    /// user). A request with no cookie has no right token.
    pub(crate) fn check_token(&self, headers: &HeaderMap, who: &Requester, token: &str) -> bool {
        match cookie_value(headers, CSRF_COOKIE).filter(|c| valid_cookie(c)) {
            Some(cookie) => same_token(token, &self.token(cookie, who.user.as_ref())),
            None => false,
        }
    }
}

/// The `Set-Cookie` value for a new CSRF cookie.
pub(crate) fn csrf_cookie(value: &str) -> String {
    format!("{CSRF_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict")
}

/// The host name of a `Host` header value, lower case, without the port.
pub(crate) fn host_name(host: &str) -> String {
    let host = host.trim().to_ascii_lowercase();
    if host.starts_with('[') {
        // [::1]:8080
        return host.split_once(']').map_or(host.clone(), |(ip, _)| format!("{ip}]"));
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name.to_owned(),
        _ => host,
    }
}

/// The host names a site answers to by default: the loopback names, and
/// the address it listens on.
pub(crate) fn default_hosts(listen: Option<SocketAddr>) -> Vec<String> {
    let mut hosts = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "[::1]".to_owned()];
    if let Some(addr) = listen {
        let name = match addr.ip() {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        if !hosts.contains(&name) && !addr.ip().is_unspecified() {
            hosts.push(name);
        }
    }
    hosts
}

/// The client address a proxy forwarded: the last `X-Forwarded-For` entry
/// (the one the trusted proxy added), or `Forwarded: for=`, or `X-Real-IP`.
fn forwarded_client(headers: &HeaderMap) -> Option<IpAddr> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(xff) = text("x-forwarded-for") {
        return xff.rsplit(',').next().and_then(|ip| ip.trim().parse().ok());
    }
    if let Some(fwd) = text("forwarded") {
        let last = fwd.rsplit(',').next().unwrap_or("");
        for part in last.split(';') {
            if let Some(v) = part.trim().strip_prefix("for=").or_else(|| part.trim().strip_prefix("For=")) {
                let v = v.trim_matches('"');
                let v = v.strip_prefix('[').map_or(v, |v| v.split(']').next().unwrap_or(v));
                let v = if v.matches(':').count() == 1 { v.split(':').next().unwrap_or(v) } else { v };
                return v.parse().ok();
            }
        }
    }
    text("x-real-ip").and_then(|ip| ip.trim().parse().ok())
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub(crate) fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn valid_cookie(value: &str) -> bool {
    value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit())
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system provides random bytes");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares two tokens in time independent of where they differ.
pub(crate) fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    struct HeaderLogin;
    impl Login for HeaderLogin {
        fn user(&self, headers: &HeaderMap) -> Option<User> {
            let id = headers.get("x-test-user")?.to_str().ok()?;
            Some(User { id: id.into(), role: if id == "boss" { Role::Admin } else { Role::Builder } })
        }
        fn login_url(&self) -> String {
            "/login".into()
        }
    }

    fn access(login: Option<Box<dyn Login>>) -> Access {
        Access::new(login, default_hosts(None), None)
    }

    #[test]
    fn without_login_only_unproxied_loopback_clients_act() {
        let access = access(None);
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let remote: SocketAddr = "203.0.113.9:5000".parse().unwrap();
        assert_eq!(access.requester(&HeaderMap::new(), Some(local)).role, Role::Admin);
        assert_eq!(access.requester(&HeaderMap::new(), Some(remote)).role, Role::Viewer);
        for (name, value) in [
            ("x-forwarded-for", "203.0.113.9"),
            ("forwarded", "for=203.0.113.9"),
            ("x-real-ip", "203.0.113.9"),
            ("x-forwarded-host", "deployer.example.org"),
        ] {
            let mut proxied = HeaderMap::new();
            proxied.insert(name, value.parse().unwrap());
            assert_eq!(access.requester(&proxied, Some(local)).role, Role::Viewer, "{name}");
        }
        // A viewer gets no token and no cookie.
        let viewer = access.requester(&HeaderMap::new(), Some(remote));
        assert!(viewer.csrf.is_none() && viewer.new_cookie.is_none());
    }

    #[test]
    fn a_trusted_proxy_is_judged_by_the_client_it_forwards() {
        let access = Access::new(None, default_hosts(None), Some("10.0.0.2".parse().unwrap()));
        let proxy: SocketAddr = "10.0.0.2:40000".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.9, 127.0.0.1".parse().unwrap());
        assert_eq!(access.requester(&h, Some(proxy)).role, Role::Admin, "the last entry is the proxy's");
        h.insert("x-forwarded-for", "127.0.0.1, 203.0.113.9".parse().unwrap());
        assert_eq!(access.requester(&h, Some(proxy)).role, Role::Viewer, "a client-supplied entry is not believed");
        assert_eq!(access.requester(&HeaderMap::new(), Some(proxy)).role, Role::Viewer);
    }

    #[test]
    fn with_login_anonymous_users_only_view_even_locally() {
        let access = access(Some(Box::new(HeaderLogin)));
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert_eq!(access.requester(&HeaderMap::new(), Some(local)).role, Role::Viewer);
        let mut h = HeaderMap::new();
        h.insert("x-test-user", "alice".parse().unwrap());
        h.insert(header::COOKIE, format!("{CSRF_COOKIE}={}", "a".repeat(64)).parse().unwrap());
        let alice = access.requester(&h, Some(local));
        assert_eq!(alice.role, Role::Builder);
        h.insert("x-test-user", "boss".parse().unwrap());
        let boss = access.requester(&h, Some(local));
        assert_ne!(alice.csrf, boss.csrf, "tokens are per user");
        assert!(access.check_token(&h, &boss, boss.csrf.as_deref().unwrap()));
        assert!(!access.check_token(&h, &boss, alice.csrf.as_deref().unwrap()));
        // Another browser (another cookie): another token.
        h.insert(header::COOKIE, format!("{CSRF_COOKIE}={}", "b".repeat(64)).parse().unwrap());
        assert!(!access.check_token(&h, &boss, boss.csrf.as_deref().unwrap()));
    }

    #[test]
    fn hosts_and_origins() {
        let access = access(None);
        let with = |pairs: &[(&'static str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, v.parse().unwrap());
            }
            h
        };
        assert!(access.check_host(&with(&[("host", "localhost:8080")])).is_ok());
        assert!(access.check_host(&with(&[("host", "[::1]:8080")])).is_ok());
        assert!(access.check_host(&with(&[("host", "127.0.0.1")])).is_ok());
        assert!(access.check_host(&with(&[("host", "evil.example:8080")])).is_err());
        assert!(access.check_host(&HeaderMap::new()).is_err());
        let post = Method::POST;
        let same = with(&[("host", "127.0.0.1:8080"), ("origin", "http://127.0.0.1:8080")]);
        assert!(access.check_origin(&post, &same).is_ok());
        let other = with(&[("host", "127.0.0.1:8080"), ("origin", "http://evil.example")]);
        assert!(access.check_origin(&post, &other).is_err());
        let fetch = with(&[("host", "127.0.0.1:8080"), ("sec-fetch-site", "cross-site")]);
        assert!(access.check_origin(&post, &fetch).is_err());
        assert!(access.check_origin(&Method::GET, &fetch).is_ok());
        assert_eq!(host_name("Deployer.Example.org:443"), "deployer.example.org");
    }
}
