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
//! (webhooks, login) with [`Site::mount`]. Every POST needs the page's CSRF
//! token and a role; see [`access`] for who gets which role.
//!
//! ```no_run
//! use deployer_core::{Config, Context, Current, Engine};
//! use deployer_web::Site;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let ctx = Context::open(std::path::Path::new("/var/lib/deployer"), Config::new(None))?;
//! let engine = Engine::new(Current::constant_labelled("hello", ()));
//! let site = Site::new("deployer", engine.handle(), ctx);
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
pub mod html;
mod pages;
pub mod svg;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use deployer_core::{Context, EngineHandle};

pub use access::{Login, Role, User};

/// Shared by every handler.
pub(crate) struct AppState {
    pub(crate) name: String,
    pub(crate) engine: EngineHandle,
    pub(crate) ctx: Context,
    pub(crate) access: access::Access,
    pub(crate) nav: Vec<(String, String)>,
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
}

impl Site {
    /// A site called `name` (shown in the header) for `engine`, reading jobs
    /// and history from `ctx`. Without a login, only loopback clients act.
    pub fn new(name: &str, engine: EngineHandle, ctx: Context) -> Site {
        Site { name: name.to_owned(), engine, ctx, login: None, nav: Vec::new(), mounted: Vec::new() }
    }

    /// Uses `login` to find users and their roles; anonymous users can then
    /// only view.
    pub fn login(mut self, login: impl Login) -> Site {
        self.login = Some(Box::new(login));
        self
    }

    /// Adds `routes` (a plugin's webhook endpoint, an OAuth callback). They
    /// get the same security headers as the rest of the site; they check
    /// their own authentication (a webhook's signature, say).
    pub fn mount(mut self, routes: Router) -> Site {
        self.mounted.push(routes);
        self
    }

    /// Adds a link to the navigation bar.
    pub fn nav_link(mut self, label: &str, href: &str) -> Site {
        self.nav.push((label.to_owned(), href.to_owned()));
        self
    }

    /// The site's routes. Serve them with
    /// `into_make_service_with_connect_info::<SocketAddr>()` so that the
    /// loopback rule can see client addresses (without it, nobody may act).
    pub fn router(self) -> Router {
        let state: State = Arc::new(AppState {
            name: self.name,
            engine: self.engine,
            ctx: self.ctx,
            access: access::Access::new(self.login),
            nav: self.nav,
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
            .route("/metrics", get(api::metrics))
            .route("/api/pipeline", get(api::pipeline))
            .route("/api/stats", get(api::stats))
            .route("/api/jobs", get(api::jobs))
            .route("/api/job/{date}/{file}/log", get(api::log))
            .route("/api/history", get(api::history))
            .route("/static/style.css", get(|| static_file("text/css", include_str!("../static/style.css"))))
            .route("/static/log.js", get(|| static_file("text/javascript", include_str!("../static/log.js"))))
            .fallback(pages::not_found)
            .with_state(state);
        for routes in self.mounted {
            router = router.merge(routes);
        }
        router.layer(middleware::from_fn(security_headers))
    }

    /// Serves the site on `listener` until the task is dropped.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        let app = self.router().into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(listener, app).await
    }
}

async fn static_file(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "max-age=86400")], body).into_response()
}

/// No framing, a strict content policy (no inline scripts), no sniffing.
async fn security_headers(request: Request, next: Next) -> Response {
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
    response
}

/// The client's address, when the server was started with connect info.
pub(crate) struct Peer(pub(crate) Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Peer, Self::Rejection> {
        Ok(Peer(parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| *addr)))
    }
}

/// An error page (or plain text for the API) with a status.
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
