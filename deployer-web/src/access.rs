//! Who may do what: roles, logins, host and origin checks, CSRF tokens.
//!
//! - With a [`Login`] configured (GitHub OAuth comes with the GitHub
//!   plugin), a request's role is what the login says, and anonymous users
//!   can only view.
//! - With no login, acting needs the site's admin token (see [`LocalAdmin`]):
//!   a random token in a file only the operator can read, shown to the site
//!   once at `/admin-login` (which sets an `HttpOnly` cookie) or sent by a
//!   script as `Authorization: Bearer <token>`. Everyone else only views.
//!   Being on the deployer's own machine is not enough: a reverse proxy on
//!   that machine makes every client look local.
//! - Behind a reverse proxy, name it with
//!   [`Site::trust_proxy`](crate::Site::trust_proxy) and the one header it
//!   sets ([`ClientHeader`]): that header's last hop is the client's address
//!   (for per-client limits); anything ambiguous counts as the proxy itself.
//! - Every request must name one of the site's host names in `Host`
//!   (defeats DNS rebinding); a request that changes state must not come
//!   from another site (`Origin`, `Sec-Fetch-Site`), needs a role above
//!   viewer before its body is read, and must carry a CSRF token bound to
//!   the browser (a random `SameSite=Strict` cookie) and the user. Pages give
//!   the token only to clients that may act. A request authenticated by an
//!   `Authorization` header needs no CSRF token: browsers never add that
//!   header by themselves.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

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
    /// A stable id that nobody else can come to own, such as
    /// `github:583231` (GitHub's numeric user id: a login name can be
    /// renamed and registered again by someone else).
    pub id: String,
    /// The name shown for them (`github:octocat`).
    pub name: String,
    /// What they may do.
    pub role: Role,
}

/// A form that logs the user out: where it posts, and the token it carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logout {
    /// The form's action (`/logout`).
    pub url: String,
    /// The value of its `token` field, which the login checks.
    pub token: String,
}

/// A login system (mounted by a plugin): finds the user of a request.
pub trait Login: Send + Sync + 'static {
    /// The user a request comes from (from its session cookie), if any.
    fn user(&self, headers: &HeaderMap) -> Option<User>;

    /// Where to send people to log in.
    fn login_url(&self) -> String;

    /// The logout form for the request's session, if it has one. Logging
    /// out is a `POST` with this token (a link would let any site log users
    /// out).
    fn logout(&self, _headers: &HeaderMap) -> Option<Logout> {
        None
    }
}

/// Who acts on a site with no [`Login`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalAdmin {
    /// Whoever shows the token kept in this file is an admin (the default:
    /// `<state dir>/web-admin-token`, made with 256 random bits and mode
    /// 0600 when it does not exist). Log in with a browser at
    /// `/admin-login`, or send `Authorization: Bearer <token>`.
    TokenFile(PathBuf),
    /// A loopback client that sent no proxy header is an admin. Only for a
    /// single-user machine with no reverse proxy: a plain `proxy_pass` to
    /// the site makes every client of the proxy an admin.
    Loopback,
    /// Nobody acts: everyone views.
    Nobody,
}

/// The header a trusted reverse proxy sets to its client's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientHeader {
    /// `X-Forwarded-For`: the last entry of all its lines (the one the proxy
    /// appended; nginx's `$proxy_add_x_forwarded_for`, HAProxy's `option
    /// forwardfor`).
    XForwardedFor,
    /// `X-Real-IP`, which the proxy sets (replacing what the client sent):
    /// exactly one line with one address.
    XRealIp,
    /// `Forwarded` (RFC 7239): the `for=` of the last element.
    Forwarded,
}

impl ClientHeader {
    fn name(self) -> &'static str {
        match self {
            ClientHeader::XForwardedFor => "x-forwarded-for",
            ClientHeader::XRealIp => "x-real-ip",
            ClientHeader::Forwarded => "forwarded",
        }
    }
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
    /// The client's address: the TCP peer, or what the trusted proxy says.
    pub client: Option<IpAddr>,
    /// A CSRF cookie to set on the response (the browser had none).
    pub(crate) new_cookie: Option<String>,
    /// Authenticated by an `Authorization` header (no CSRF token needed).
    pub(crate) bearer: bool,
    /// The logout form, for a logged-in user.
    pub(crate) logout: Option<Logout>,
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

/// The name of the cookie that holds the admin token of a site without login.
pub(crate) const ADMIN_COOKIE: &str = "deployer-admin";

/// Where a site without login sends people to log in with its token.
pub(crate) const ADMIN_LOGIN: &str = "/admin-login";

/// Headers a reverse proxy adds; without a trusted proxy, a request
/// carrying any of them is treated as remote.
const PROXY_HEADERS: [&str; 5] = ["forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-real-ip"];

/// How a site without login decides who is admin, once set up.
enum Local {
    Token(String),
    Loopback,
    Nobody,
}

/// Decides roles, checks hosts and origins, and makes CSRF tokens for a site.
pub(crate) struct Access {
    login: Option<Box<dyn Login>>,
    local: Local,
    secret: [u8; 32],
    /// Accepted host names (lower case, without port; IPv6 in brackets).
    hosts: Vec<String>,
    /// A reverse proxy whose forwarded client addresses are believed.
    proxy: Option<(IpAddr, ClientHeader)>,
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
    pub(crate) fn new(
        login: Option<Box<dyn Login>>,
        local: LocalAdmin,
        hosts: Vec<String>,
        proxy: Option<(IpAddr, ClientHeader)>,
    ) -> Access {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).expect("the operating system provides random bytes");
        let local = match local {
            _ if login.is_some() => Local::Nobody,
            LocalAdmin::TokenFile(path) => match admin_token(&path) {
                Ok(token) => Local::Token(token),
                Err(e) => {
                    tracing::error!("no admin token, so nobody may act on the web UI: {e}");
                    Local::Nobody
                }
            },
            LocalAdmin::Loopback => Local::Loopback,
            LocalAdmin::Nobody => Local::Nobody,
        };
        Access { login, local, secret, hosts, proxy }
    }

    pub(crate) fn login_url(&self) -> Option<String> {
        match (&self.login, &self.local) {
            (Some(l), _) => Some(l.login_url()),
            (None, Local::Token(_)) => Some(ADMIN_LOGIN.to_owned()),
            _ => None,
        }
    }

    pub(crate) fn has_login(&self) -> bool {
        self.login.is_some()
    }

    /// Whether `token` is this site's admin token (constant time).
    pub(crate) fn is_admin_token(&self, token: &str) -> bool {
        matches!(&self.local, Local::Token(t) if same_token(token.trim(), t))
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
        let client = self.client(headers, peer);
        let mut bearer = false;
        let (user, role) = match &self.login {
            Some(login) => match login.user(headers) {
                Some(user) => {
                    let role = user.role;
                    (Some(user), role)
                }
                None => (None, Role::Viewer),
            },
            None => match &self.local {
                Local::Token(token) => {
                    if bearer_token(headers).is_some_and(|t| same_token(t, token)) {
                        bearer = true;
                        (None, Role::Admin)
                    } else if cookie_value(headers, ADMIN_COOKIE).is_some_and(|t| same_token(t, token)) {
                        (None, Role::Admin)
                    } else {
                        (None, Role::Viewer)
                    }
                }
                Local::Loopback => (None, if self.is_local(headers, peer) { Role::Admin } else { Role::Viewer }),
                Local::Nobody => (None, Role::Viewer),
            },
        };
        let logout = match (&self.login, &user) {
            (Some(login), Some(_)) => login.logout(headers),
            _ => None,
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
        Requester { user, role, csrf, client, new_cookie, bearer, logout }
    }

    /// The client's address: what the trusted proxy says for its own
    /// requests (the proxy's address if what it says is ambiguous), else the
    /// TCP peer.
    pub(crate) fn client(&self, headers: &HeaderMap, peer: Option<SocketAddr>) -> Option<IpAddr> {
        let peer = peer?.ip();
        match self.proxy {
            Some((proxy, which)) if peer == proxy => Some(forwarded_client(headers, which).unwrap_or(peer)),
            _ => Some(peer),
        }
    }

    /// Whether a request comes from this machine: a loopback client with no
    /// proxy header, or, through the trusted proxy, a loopback client by
    /// the proxy's one agreed header.
    fn is_local(&self, headers: &HeaderMap, peer: Option<SocketAddr>) -> bool {
        let Some(peer) = peer else { return false };
        let proxied = PROXY_HEADERS.iter().any(|h| headers.contains_key(*h));
        match self.proxy {
            Some((proxy, which)) if peer.ip() == proxy => {
                forwarded_client(headers, which).is_some_and(|ip| ip.is_loopback())
            }
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
    /// user). A request with no cookie has no right token; one
    /// authenticated by its `Authorization` header needs none.
    pub(crate) fn check_token(&self, headers: &HeaderMap, who: &Requester, token: &str) -> bool {
        if who.bearer {
            return true;
        }
        match cookie_value(headers, CSRF_COOKIE).filter(|c| valid_cookie(c)) {
            Some(cookie) => same_token(token, &self.token(cookie, who.user.as_ref())),
            None => false,
        }
    }
}

/// Reads the admin token from `path`, or makes one there (256 random bits,
/// mode 0600) when there is none.
fn admin_token(path: &Path) -> std::io::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let token = text.trim().to_owned();
            if token.len() < 32 || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(std::io::Error::other(format!(
                    "{} does not hold a token (32 or more printable characters)",
                    path.display()
                )));
            }
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let token = random_hex();
            let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
            file.write_all(format!("{token}\n").as_bytes())?;
            file.sync_all()?;
            Ok(token)
        }
        Err(e) => Err(e),
    }
}

/// The `Set-Cookie` value for a new CSRF cookie.
pub(crate) fn csrf_cookie(value: &str) -> String {
    format!("{CSRF_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict")
}

/// The `Set-Cookie` value that keeps the admin token in a browser.
pub(crate) fn admin_cookie(token: &str) -> String {
    format!("{ADMIN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age=2592000")
}

/// The token of an `Authorization: Bearer <token>` header (one line only).
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let mut lines = headers.get_all(header::AUTHORIZATION).iter();
    let value = lines.next()?.to_str().ok()?;
    if lines.next().is_some() {
        return None;
    }
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
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

/// The client address a trusted proxy forwarded in its one agreed header:
/// the last hop, reading every line of the header. `None` when the header
/// is missing, malformed or (for `X-Real-IP`) given more than once: such a
/// request is not believed to come from anyone but the proxy.
pub(crate) fn forwarded_client(headers: &HeaderMap, which: ClientHeader) -> Option<IpAddr> {
    let mut lines = Vec::new();
    for value in headers.get_all(which.name()) {
        lines.push(value.to_str().ok()?);
    }
    match which {
        ClientHeader::XForwardedFor => {
            let last = lines.last()?.rsplit(',').next()?.trim();
            parse_node(last)
        }
        ClientHeader::XRealIp => match lines.as_slice() {
            [one] => one.trim().parse().ok(),
            _ => None,
        },
        ClientHeader::Forwarded => {
            let last = lines.last()?.rsplit(',').next()?;
            let mut found = None;
            for pair in last.split(';') {
                let (key, value) = pair.trim().split_once('=')?;
                if key.trim().eq_ignore_ascii_case("for") {
                    if found.is_some() {
                        return None; // two `for=` in one element
                    }
                    found = Some(parse_node(value.trim().trim_matches('"'))?);
                }
            }
            found
        }
    }
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`
/// or `[2001:db8::1]:4711`.
fn parse_node(text: &str) -> Option<IpAddr> {
    if let Some(rest) = text.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))) {
            return None;
        }
        return ip.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6);
    }
    if let Ok(ip) = text.parse() {
        return Some(ip);
    }
    let (ip, port) = text.rsplit_once(':')?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    ip.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
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
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    struct HeaderLogin;
    impl Login for HeaderLogin {
        fn user(&self, headers: &HeaderMap) -> Option<User> {
            let id = headers.get("x-test-user")?.to_str().ok()?;
            let role = if id == "boss" { Role::Admin } else { Role::Builder };
            Some(User { id: id.into(), name: id.into(), role })
        }
        fn login_url(&self) -> String {
            "/login".into()
        }
    }

    fn access(login: Option<Box<dyn Login>>) -> Access {
        Access::new(login, LocalAdmin::Loopback, default_hosts(None), None)
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn loopback_mode_lets_only_unproxied_loopback_clients_act() {
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
            assert_eq!(access.requester(&headers(&[(name, value)]), Some(local)).role, Role::Viewer, "{name}");
        }
        // A viewer gets no token and no cookie.
        let viewer = access.requester(&HeaderMap::new(), Some(remote));
        assert!(viewer.csrf.is_none() && viewer.new_cookie.is_none());
    }

    #[test]
    fn by_default_without_login_only_the_token_acts_even_on_loopback() {
        let dir = std::env::temp_dir().join(format!("deployer-web-token-{}", std::process::id()));
        let path = dir.join("web-admin-token");
        let _ = std::fs::remove_dir_all(&dir);
        let access = Access::new(None, LocalAdmin::TokenFile(path.clone()), default_hosts(None), None);
        let token = std::fs::read_to_string(&path).unwrap().trim().to_owned();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(token.len(), 64);
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        // A plain `proxy_pass` from this machine: loopback, no header.
        let plain = access.requester(&HeaderMap::new(), Some(local));
        assert_eq!(plain.role, Role::Viewer);
        assert!(plain.csrf.is_none(), "no CSRF token handed out");
        let cookie = access.requester(&headers(&[("cookie", &format!("{ADMIN_COOKIE}={token}"))]), Some(local));
        assert_eq!(cookie.role, Role::Admin);
        assert!(!cookie.bearer);
        let bearer = access.requester(&headers(&[("authorization", &format!("Bearer {token}"))]), Some(local));
        assert!(bearer.role == Role::Admin && bearer.bearer);
        assert!(access.check_token(&HeaderMap::new(), &bearer, ""), "a bearer needs no CSRF token");
        assert!(!access.check_token(&HeaderMap::new(), &cookie, ""), "a cookie does");
        let wrong = access.requester(&headers(&[("authorization", &format!("Bearer {token}x"))]), Some(local));
        assert_eq!(wrong.role, Role::Viewer);
        // The same file is read again by the next site.
        let again = Access::new(None, LocalAdmin::TokenFile(path.clone()), default_hosts(None), None);
        assert!(again.is_admin_token(&token));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_trusted_proxy_is_believed_only_in_its_one_header_and_its_last_hop() {
        let proxy: SocketAddr = "10.0.0.2:40000".parse().unwrap();
        // The loopback rule, behind the proxy at 10.0.0.2 setting `header`.
        let behind = |header| Access::new(None, LocalAdmin::Loopback, default_hosts(None), Some((proxy.ip(), header)));
        let xff = behind(ClientHeader::XForwardedFor);
        let role = |a: &Access, pairs: &[(&'static str, &str)]| a.requester(&headers(pairs), Some(proxy)).role;
        assert_eq!(role(&xff, &[("x-forwarded-for", "203.0.113.9, 127.0.0.1")]), Role::Admin);
        assert_eq!(role(&xff, &[("x-forwarded-for", "127.0.0.1, 203.0.113.9")]), Role::Viewer);
        // HAProxy's `option forwardfor` adds a second line after the client's.
        assert_eq!(role(&xff, &[("x-forwarded-for", "127.0.0.1"), ("x-forwarded-for", "203.0.113.9")]), Role::Viewer);
        // Another header is not the agreed one.
        assert_eq!(role(&xff, &[("x-real-ip", "127.0.0.1"), ("x-forwarded-for", "203.0.113.9")]), Role::Viewer);
        assert_eq!(role(&xff, &[("x-forwarded-for", "junk")]), Role::Viewer);
        assert_eq!(role(&xff, &[]), Role::Viewer);
        // nginx setting X-Real-IP and passing the client's X-Forwarded-For through.
        let real = behind(ClientHeader::XRealIp);
        assert_eq!(role(&real, &[("x-forwarded-for", "127.0.0.1"), ("x-real-ip", "203.0.113.9")]), Role::Viewer);
        assert_eq!(role(&real, &[("x-real-ip", "127.0.0.1"), ("x-real-ip", "203.0.113.9")]), Role::Viewer);
        assert_eq!(role(&real, &[("x-real-ip", "127.0.0.1")]), Role::Admin);
        let fwd = behind(ClientHeader::Forwarded);
        assert_eq!(role(&fwd, &[("forwarded", "for=127.0.0.1"), ("forwarded", "for=203.0.113.9")]), Role::Viewer);
        assert_eq!(role(&fwd, &[("forwarded", "for=203.0.113.9, For=\"[::1]:4711\"")]), Role::Admin);
        assert_eq!(role(&fwd, &[("x-forwarded-for", "127.0.0.1")]), Role::Viewer);
        // The client address used for per-client limits.
        let h = headers(&[("x-forwarded-for", "198.51.100.7, 203.0.113.9")]);
        assert_eq!(xff.client(&h, Some(proxy)), Some("203.0.113.9".parse().unwrap()));
        assert_eq!(xff.client(&HeaderMap::new(), Some(proxy)), Some(proxy.ip()));
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
        let with = headers;
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
