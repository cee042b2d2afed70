//! The deployer's web UI and HTTP API.
//!
//! A [`Site`] turns a running engine (its [`EngineHandle`]) and the shared
//! [`Context`] (store and jobs) into an axum [`Router`]:
//!
//! | route | role | what |
//! |---|---|---|
//! | `GET /` | viewer | the pipeline diagram (SVG), overall result, confirmation level |
//! | `GET /pipeline.svg` | viewer | the diagram alone |
//! | `GET /jobs` | viewer | active and queued jobs, pools |
//! | `GET /job/<id>` | viewer | a job's log, streamed live, its builds, actions |
//! | `GET /job/<id>/events` | viewer | the log as server-sent events |
//! | `POST /job/<id>/rebuild`, `/cancel` | builder | run again / cancel |
//! | `POST /job/<id>/start` | admin | start a job waiting for confirmation |
//! | `GET /query`, `POST /query` | viewer / builder | history with filters and paging; rebuild selected |
//! | `POST /set/confirm` | admin | the confirmation level |
//! | `GET /metrics` | viewer | Prometheus text format |
//! | `GET /api/…` | viewer | JSON: `pipeline`, `stats`, `jobs`, `job/<id>/log`, `history` |
//!
//! It shows the engine's graph, never plugin internals. Plugins add routes
//! (webhooks, login) with [`Site::mount`]. Who may do what, and how the site
//! defends itself (host names, origins, CSRF tokens, proxies, limits), is in
//! [`access`], [`Limits`] and the repository's `SECURITY.md`.
//!
//! ```no_run
//! use deployer_core::{Config, Context, Current, Engine};
//! use deployer_web::Site;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let ctx = Context::open(std::path::Path::new("/var/lib/deployer"), Config::new(None))?;
//! let engine = Engine::new(Current::constant_labelled("hello", ()));
//! let site = Site::new("deployer", engine.handle(), ctx).allow_host("deployer.example.org");
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! tokio::select! {
//!     _ = engine.run() => {}
//!     r = site.serve(listener) => r?,
//! }
//! # Ok(())
//! # }
//! ```

pub mod access;
mod api;
pub mod extension;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod html;
mod limits;
mod metrics;
mod pages;
pub mod svg;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, MatchedPath, Request, State as AxState};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use deployer_core::{Context, EngineHandle};

pub use access::{ClientHeader, LocalAdmin, Login, Logout, Requester, Role, User};
pub use extension::{ActionRequest, Page, PageRequest, Refused};
pub use limits::Limits;

/// Shared by every handler.
pub(crate) struct AppState {
    pub(crate) name: String,
    pub(crate) engine: EngineHandle,
    pub(crate) ctx: Context,
    pub(crate) access: access::Access,
    pub(crate) nav: Vec<(String, String)>,
    pub(crate) streams: limits::StreamGate,
    pub(crate) metrics: metrics::Http,
    pub(crate) counters: Vec<metrics::Extra>,
}

pub(crate) type State = Arc<AppState>;

/// The web UI of one engine. Build it, mount plugin routes, then
/// [`serve`](Site::serve) it or take its [`router`](Site::router).
pub struct Site {
    name: String,
    engine: EngineHandle,
    ctx: Context,
    login: Option<Box<dyn Login>>,
    nav: Vec<(String, String)>,
    mounted: Vec<Router>,
    pages: Vec<(String, extension::PageFn)>,
    actions: Vec<(String, Role, extension::ActionFn)>,
    hosts: Vec<String>,
    proxy: Option<(IpAddr, ClientHeader)>,
    local: Option<LocalAdmin>,
    limits: Limits,
    listen: Option<SocketAddr>,
    counters: Vec<metrics::Extra>,
}

/// One sample of a counter added with [`Site::counter`]: its labels
/// (`[("service", "ocaml/ocaml.org")]`) and its value.
pub type CounterSample = (Vec<(String, String)>, u64);

impl Site {
    /// A site called `name` (shown in the header) for `engine`, reading jobs
    /// and history from `ctx`. Without a login, only whoever shows the admin
    /// token acts (see [`LocalAdmin`]; by default the token is in
    /// `<state dir>/web-admin-token`).
    /// It answers to `localhost`, `127.0.0.1`, `[::1]` and the address it
    /// listens on; add public names with [`Site::allow_host`].
    pub fn new(name: &str, engine: EngineHandle, ctx: Context) -> Site {
        Site {
            name: name.to_owned(),
            engine,
            ctx,
            login: None,
            nav: Vec::new(),
            mounted: Vec::new(),
            pages: Vec::new(),
            actions: Vec::new(),
            hosts: Vec::new(),
            proxy: None,
            local: None,
            limits: Limits::default(),
            listen: None,
            counters: Vec::new(),
        }
    }

    /// Uses `login` to find users and their roles; anonymous users can then
    /// only view.
    pub fn login(mut self, login: impl Login) -> Site {
        self.login = Some(Box::new(login));
        self
    }

    /// Also answers to the host name `name` (`deployer.example.org`, as
    /// clients write it in their `Host` header, without a port).
    pub fn allow_host(mut self, name: &str) -> Site {
        self.hosts.push(access::host_name(name));
        self
    }

    /// Believes the client address that the reverse proxy at `proxy` puts in
    /// `header` (its last hop, over every line of it; other forwarding
    /// headers are ignored), for requests whose TCP peer is that proxy. The
    /// address counts for per-client limits, and, with
    /// [`LocalAdmin::Loopback`], for who is local. Without this, any request
    /// carrying a forwarding header is remote.
    pub fn trust_proxy(mut self, proxy: IpAddr, header: ClientHeader) -> Site {
        self.proxy = Some((proxy, header));
        self
    }

    /// Who acts when there is no login (default:
    /// [`LocalAdmin::TokenFile`] in the state directory).
    pub fn local_admin(mut self, local: LocalAdmin) -> Site {
        self.local = Some(local);
        self
    }

    /// Replaces the default [`Limits`].
    pub fn limits(mut self, limits: Limits) -> Site {
        self.limits = limits;
        self
    }

    /// Adds `routes` (a plugin's webhook endpoint, an OAuth callback). They
    /// get the host check and security headers of the rest of the site; they
    /// check their own authentication (a webhook's signature, say) and set
    /// their own body limits.
    pub fn mount(mut self, routes: Router) -> Site {
        self.mounted.push(routes);
        self
    }

    /// Adds the page at `path` (an axum route: `/services/{name}`), drawn in
    /// the site's layout: `render` gets the request (who asks, the path's
    /// parameters, the query) and returns the title and body. Viewers may
    /// see it. See [`extension`].
    pub fn page<F, Fut>(mut self, path: &str, render: F) -> Site
    where
        F: Fn(PageRequest) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Page, Refused>> + Send + 'static,
    {
        self.pages.push((path.to_owned(), extension::page_fn(render)));
        self
    }

    /// Adds the form action `POST path`, for users with `role`, checked as
    /// the site's own actions are (same site; role before the body is read;
    /// body limit; CSRF token). `act` returns the site path to send the
    /// browser to (a `303`). See [`extension`].
    pub fn action<F, Fut>(mut self, path: &str, role: Role, act: F) -> Site
    where
        F: Fn(ActionRequest) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<String, Refused>> + Send + 'static,
    {
        self.actions.push((path.to_owned(), role, extension::action_fn(act)));
        self
    }

    /// Adds the counter `deployer_<name>` (a Prometheus counter family) to
    /// `/metrics`: `read` gives its samples each time the page is read.
    /// For what a program counts beyond the engine (builds and deploys per
    /// repository, as upstream's `deployer_build_builds_total`).
    pub fn counter(
        mut self,
        name: &str,
        help: &str,
        read: impl Fn() -> Vec<CounterSample> + Send + Sync + 'static,
    ) -> Site {
        self.counters.push(metrics::Extra { name: name.to_owned(), help: help.to_owned(), read: Box::new(read) });
        self
    }

    /// Adds a link to the navigation bar.
    pub fn nav_link(mut self, label: &str, href: &str) -> Site {
        self.nav.push((label.to_owned(), href.to_owned()));
        self
    }

    /// The site's routes. Serve them with
    /// `into_make_service_with_connect_info::<SocketAddr>()` so that the
    /// loopback rule can see client addresses (without it, nobody may act),
    /// or use [`Site::serve`], which also applies the connection [`Limits`].
    pub fn router(self) -> Router {
        let mut hosts = access::default_hosts(self.listen);
        hosts.extend(self.hosts);
        let local = self.local.unwrap_or_else(|| LocalAdmin::TokenFile(self.ctx.state_dir().join("web-admin-token")));
        let state: State = Arc::new(AppState {
            name: self.name,
            engine: self.engine,
            ctx: self.ctx,
            access: access::Access::new(self.login, local, hosts, self.proxy),
            nav: self.nav,
            streams: limits::StreamGate::new(self.limits),
            metrics: metrics::Http::default(),
            counters: self.counters,
        });
        let mut router = Router::new()
            .route("/", get(pages::index))
            .route("/index.html", get(pages::index))
            .route("/pipeline.svg", get(pages::pipeline_svg))
            .route("/jobs", get(pages::jobs))
            .route("/job/{date}/{file}", get(pages::job))
            .route("/job/{date}/{file}/events", get(api::log_events))
            .route("/job/{date}/{file}/{action}", post(pages::job_action))
            .route("/query", get(pages::query).post(pages::rebuild_selected))
            .route("/set/confirm", post(pages::set_confirm))
            .route("/metrics", get(metrics::metrics))
            .route("/api/pipeline", get(api::pipeline))
            .route("/api/stats", get(api::stats))
            .route("/api/jobs", get(api::jobs))
            .route("/api/job/{date}/{file}/log", get(api::log))
            .route("/api/history", get(api::history));
        for (path, f) in self.pages {
            router = router.route(
                &path,
                get(move |state, who, raw, query| extension::serve_page(f.clone(), state, who, raw, query)),
            );
        }
        for (path, role, f) in self.actions {
            router = router.route(
                &path,
                post(move |state, headers, who, raw, fields| {
                    extension::run_action(f.clone(), role, state, headers, who, raw, fields)
                }),
            );
        }
        let mut router = router
            .route_layer(middleware::from_fn_with_state(state.clone(), timing))
            .fallback(pages::not_found)
            .layer(DefaultBodyLimit::max(self.limits.form_bytes))
            .layer(middleware::from_fn_with_state(state.clone(), guard))
            .route("/static/style.css", get(|| static_file("text/css", include_str!("../static/style.css"))))
            .route("/static/log.js", get(|| static_file("text/javascript", include_str!("../static/log.js"))))
            .with_state(state.clone());
        router = router.merge(pages::admin_login_routes(state.clone(), self.limits.form_bytes));
        for routes in self.mounted {
            router = router.merge(routes);
        }
        router.layer(middleware::from_fn_with_state(state, host_check)).layer(middleware::from_fn(security_headers))
    }

    /// Serves the site on `listener` until the future is dropped: it also
    /// answers to the listening address, and applies the connection limits
    /// (a client must send its headers in time, and one that stops reading a
    /// response is dropped).
    pub async fn serve(mut self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        use hyper_util::rt::{TokioIo, TokioTimer};
        use tower::ServiceExt;
        self.listen = Some(listener.local_addr()?);
        let limits = self.limits;
        let router = self.router();
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors, say: wait a little, go on.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let router = router.clone();
            tokio::spawn(async move {
                let io = TokioIo::new(limits::WriteStall::new(stream, limits.write_stall));
                let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let mut req = req.map(axum::body::Body::new);
                    req.extensions_mut().insert(ConnectInfo(peer));
                    router.clone().oneshot(req)
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_read)
                    .serve_connection(io, service);
                if let Err(e) = connection.await {
                    tracing::debug!(%peer, "connection ended: {e}");
                }
            });
        }
    }
}

async fn static_file(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "max-age=86400")], body).into_response()
}

/// Refuses requests naming a host the site does not answer to (DNS
/// rebinding: a page on evil.example resolving to 127.0.0.1).
/// Also notes the client's address for every route ([`ClientAddr`]).
async fn host_check(AxState(state): AxState<State>, mut request: Request, next: Next) -> Response {
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let client = state.access.client(request.headers(), peer);
    request.extensions_mut().insert(ClientAddr(client));
    match state.access.check_host(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(access::Refusal::Host(msg) | access::Refusal::CrossSite(msg)) => {
            Failure::new(StatusCode::MISDIRECTED_REQUEST, msg).into_response()
        }
    }
}

/// For the site's own routes: a well-formed query string; the requester
/// (role, CSRF token); and for a request that changes state, a same-site
/// origin and a role above viewer, checked before the body is read.
async fn guard(AxState(state): AxState<State>, mut request: Request, next: Next) -> Response {
    if let Some(q) = request.uri().query() {
        if let Err(e) = check_percent_encoding(q) {
            return Failure::new(StatusCode::BAD_REQUEST, e).into_response();
        }
    }
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let who = state.access.requester(request.headers(), peer);
    if let Err(refusal) = state.access.check_origin(request.method(), request.headers()) {
        let (access::Refusal::CrossSite(msg) | access::Refusal::Host(msg)) = refusal;
        return pages::error_page(&state, &who, StatusCode::FORBIDDEN, &format!("Refused: {msg}."));
    }
    let safe = matches!(*request.method(), axum::http::Method::GET | axum::http::Method::HEAD);
    if !safe && !who.can(Role::Builder) {
        return pages::forbidden(&state, &who, Role::Builder);
    }
    let cookie = who.new_cookie.clone();
    request.extensions_mut().insert(who);
    let mut response = next.run(request).await;
    if let Some(value) = cookie {
        if let Ok(v) = HeaderValue::from_str(&access::csrf_cookie(&value)) {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    response
}

/// Times each request, by route, for `/metrics`.
async fn timing(AxState(state): AxState<State>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or("other", |p| p.as_str()).to_owned();
    let start = Instant::now();
    let response = next.run(request).await;
    state.metrics.observe(&route, response.status(), start.elapsed());
    response
}

/// What to say about input that was refused: at most 120 characters of
/// the parser's message, so that a link cannot put a paragraph of its own
/// words on an error page.
pub(crate) fn refused_input(message: &str) -> String {
    let mut short: String = message.chars().take(120).collect();
    if short.len() < message.len() {
        short.push('…');
    }
    short
}

/// A value from a request, quoted for an error message: at most 32
/// characters of it.
pub(crate) fn quoted(value: &str) -> String {
    let short: String = value.chars().take(32).collect();
    if short.len() < value.len() {
        format!("{short:?}…")
    } else {
        format!("{short:?}")
    }
}

/// Checks that every `%` in `query` starts a two-digit hex escape.
fn check_percent_encoding(query: &str) -> Result<(), String> {
    let b = query.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let ok = b.len() > i + 2 && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit();
            if !ok {
                let bad: String = query[i..].chars().take(3).collect();
                return Err(format!("malformed percent-encoding {bad:?} in the query string"));
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    Ok(())
}

/// No framing, a strict content policy (no inline scripts), no sniffing,
/// and no caching of anything but the static files.
async fn security_headers(request: Request, next: Next) -> Response {
    let is_static = request.uri().path().starts_with("/static/");
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
             frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    if !is_static {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// The requester of a request that went through the site's guard.
pub(crate) struct Who(pub(crate) Requester);

impl<S: Send + Sync> FromRequestParts<S> for Who {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Who, Failure> {
        parts
            .extensions
            .get::<Requester>()
            .cloned()
            .map(Who)
            .ok_or_else(|| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "the request was not checked"))
    }
}

/// The address of a request's client, for routes mounted on a [`Site`]
/// (per-client limits): the TCP peer, or, for requests from the trusted
/// proxy, the client it names ([`Site::trust_proxy`]). `None` when the
/// server gives no peer addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<ClientAddr, Self::Rejection> {
        Ok(parts.extensions.get::<ClientAddr>().copied().unwrap_or(ClientAddr(None)))
    }
}

/// The client's address, when the server was started with connect info.
pub(crate) struct Peer(pub(crate) Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Peer, Self::Rejection> {
        Ok(Peer(parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| *addr)))
    }
}

/// An error as plain text (for the API), with a status.
pub(crate) struct Failure {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Failure {
        Failure { status, message: message.into() }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], self.message + "\n").into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_escapes_are_checked() {
        assert!(check_percent_encoding("a=%20b&c=%2F").is_ok());
        assert!(check_percent_encoding("offset=%zz").unwrap_err().contains("%zz"));
        assert!(check_percent_encoding("a=%2").is_err());
    }
}
