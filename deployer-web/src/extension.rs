//! Pages and form actions a program adds to the site (a deployer's
//! services overview, say), drawn in the site's layout and guarded exactly
//! as the site's own: host check, same-site check and role before a POST's
//! body is read, body limit, then the action's role and its CSRF token.
//!
//! A page gets who asks ([`Requester`]), so it shows forms (with
//! [`PageRequest::csrf_input`]) only to those who may use them.

use std::future::Future;
use std::sync::Arc;

use axum::extract::{Query, RawPathParams, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use deployer_core::BoxFuture;

use crate::access::{Requester, Role};
use crate::pages::{check_post, error_page, extension_page, Fields};
use crate::{State, Who};

/// What a page shows: its title and its body, HTML the page made (escape
/// what it did not write with [`crate::html::escape`]).
pub struct Page {
    /// The page's title.
    pub title: String,
    /// The page's HTML, put inside the site's layout.
    pub body: String,
}

/// Why a page or an action cannot answer; shown on the site's error page.
#[derive(Debug)]
pub enum Refused {
    /// 404: what is not there.
    NotFound(String),
    /// 400: what is wrong with the request.
    BadRequest(String),
    /// 409: why it cannot be done now.
    Conflict(String),
}

impl Refused {
    fn parts(&self) -> (StatusCode, &str) {
        match self {
            Refused::NotFound(m) => (StatusCode::NOT_FOUND, m),
            Refused::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            Refused::Conflict(m) => (StatusCode::CONFLICT, m),
        }
    }
}

/// A request for a page.
pub struct PageRequest {
    /// Who asks, with what role.
    pub who: Requester,
    /// The path's parameters (`{name}` in the route), in order.
    pub params: Vec<(String, String)>,
    /// The query string's pairs.
    pub query: Vec<(String, String)>,
}

impl PageRequest {
    /// The path parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The hidden CSRF field for a form, or "" for a client that may not act
    /// (then show it no form).
    pub fn csrf_input(&self) -> String {
        match &self.who.csrf {
            Some(t) => format!(r#"<input type="hidden" name="csrf" value="{}">"#, crate::html::escape(t)),
            None => String::new(),
        }
    }
}

/// A form posted to an action, after its checks.
pub struct ActionRequest {
    /// Who acts.
    pub who: Requester,
    /// The path's parameters.
    pub params: Vec<(String, String)>,
    /// The form's fields (the CSRF token removed).
    pub fields: Vec<(String, String)>,
}

impl ActionRequest {
    /// The path parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The form field `name`.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

pub(crate) type PageFn = Arc<dyn Fn(PageRequest) -> BoxFuture<Result<Page, Refused>> + Send + Sync>;
pub(crate) type ActionFn = Arc<dyn Fn(ActionRequest) -> BoxFuture<Result<String, Refused>> + Send + Sync>;

pub(crate) fn page_fn<F, Fut>(f: F) -> PageFn
where
    F: Fn(PageRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Page, Refused>> + Send + 'static,
{
    Arc::new(move |r| Box::pin(f(r)))
}

pub(crate) fn action_fn<F, Fut>(f: F) -> ActionFn
where
    F: Fn(ActionRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, Refused>> + Send + 'static,
{
    Arc::new(move |r| Box::pin(f(r)))
}

fn params(raw: &RawPathParams) -> Vec<(String, String)> {
    raw.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

/// Serves a page.
pub(crate) async fn serve_page(
    f: PageFn,
    AxState(state): AxState<State>,
    Who(who): Who,
    raw: RawPathParams,
    query: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let query = match query {
        Ok(Query(q)) => q,
        Err(e) => return error_page(&state, &who, StatusCode::BAD_REQUEST, &crate::refused_input(&e.body_text())),
    };
    let request = PageRequest { who: who.clone(), params: params(&raw), query };
    match f(request).await {
        Ok(page) => extension_page(&state, &who, page.title, page.body),
        Err(r) => {
            let (status, message) = r.parts();
            error_page(&state, &who, status, message)
        }
    }
}

/// Whether `next` is a path on this site as a browser reads it: browsers
/// drop tabs and newlines from URLs and read `\` as `/`, so `/\t/evil.example`
/// is `//evil.example`, another site. Only a path of printable ASCII (no
/// backslash) that starts with one `/` is accepted.
pub(crate) fn is_site_path(next: &str) -> bool {
    let printable = next.bytes().all(|b| (0x21..0x7f).contains(&b) && b != b'\\');
    printable && next.starts_with('/') && !next.starts_with("//")
}

/// Runs an action after the site's checks; redirects (303) where it says.
pub(crate) async fn run_action(
    f: ActionFn,
    role: Role,
    AxState(state): AxState<State>,
    headers: HeaderMap,
    Who(who): Who,
    raw: RawPathParams,
    fields: Fields,
) -> Response {
    let fields = match check_post(&state, &headers, &who, fields, role) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let fields = fields.into_iter().filter(|(k, _)| k != "csrf").collect();
    let request = ActionRequest { who: who.clone(), params: params(&raw), fields };
    match f(request).await {
        Ok(next) if is_site_path(&next) => Redirect::to(&next).into_response(),
        Ok(_) => error_page(&state, &who, StatusCode::INTERNAL_SERVER_ERROR, "The action redirected off the site."),
        Err(r) => {
            let (status, message) = r.parts();
            error_page(&state, &who, status, message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_site_path;

    #[test]
    fn only_paths_a_browser_reads_as_this_site_are_redirect_targets() {
        for ok in ["/", "/services", "/services/a/b?x=1#top", "/a//b"] {
            assert!(is_site_path(ok), "{ok}");
        }
        for bad in [
            "//evil.example/",
            "/\\evil.example/",
            "/\t/evil.example/",
            "/\n/evil.example/",
            "/\r/evil.example",
            "\t//evil.example",
            " /x",
            "https://evil.example/",
            "evil",
            "",
        ] {
            assert!(!is_site_path(bad), "{bad:?}");
        }
    }
}
