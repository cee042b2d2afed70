//! The HTML pages and their form actions.

use askama::Template;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Form, Path, Query, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use deployer_core::analysis::Expanded;
use deployer_core::job::JobStatus;
use deployer_core::store::{Cursor, HistoryQuery, JobRecord};
use deployer_core::{Level, NodeState, Stats};
use serde::Deserialize;

use crate::access::{Requester, Role};
use crate::{State, Who};

/// The header's contents.
pub(crate) struct Nav {
    site: String,
    links: Vec<(String, String)>,
    user: Option<String>,
    login_url: Option<String>,
    logout: Option<crate::access::Logout>,
    role: &'static str,
}

fn nav(state: &State, who: &Requester) -> Nav {
    Nav {
        site: state.name.clone(),
        links: state.nav.clone(),
        user: who.user.as_ref().map(|u| u.name.clone()),
        logout: who.logout.clone(),
        // Someone who may act already has what a login would give them.
        login_url: if who.role > Role::Viewer { None } else { state.access.login_url() },
        role: match who.role {
            Role::Viewer => "view only",
            Role::Builder => "builder",
            Role::Admin => "admin",
        },
    }
}

fn render(page: impl Template) -> Response {
    match page.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot render the page: {e}")).into_response(),
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    nav: Nav,
    status: String,
    message: String,
    login_url: Option<String>,
}

/// An HTML error page.
pub(crate) fn error_page(state: &State, who: &Requester, status: StatusCode, message: &str) -> Response {
    let login_url = if status == StatusCode::FORBIDDEN { state.access.login_url() } else { None };
    let page = ErrorPage { nav: nav(state, who), status: status.to_string(), message: message.to_owned(), login_url };
    let mut response = render(page);
    *response.status_mut() = status;
    response
}

#[derive(Template)]
#[template(path = "extension.html")]
struct ExtensionPage {
    nav: Nav,
    title: String,
    body: String,
}

/// A page added with `Site::page`, in the site's layout.
pub(crate) fn extension_page(state: &State, who: &Requester, title: String, body: String) -> Response {
    render(ExtensionPage { nav: nav(state, who), title, body })
}

/// A 403 page for a request that needs `role`.
pub(crate) fn forbidden(state: &State, who: &Requester, role: Role) -> Response {
    let msg = if state.access.has_login() {
        format!("This needs the {role:?} role.")
    } else {
        format!("This needs the {role:?} role: without a login, only whoever has the site's admin token may act.")
    };
    error_page(state, who, StatusCode::FORBIDDEN, &msg)
}

/// A form's fields, or the reason it could not be read.
pub(crate) type Fields = Result<Form<Vec<(String, String)>>, FormRejection>;

/// Checks a POST: the role it needs, then its CSRF token. Returns the
/// form's fields. (The guard already refused cross-site requests and
/// viewers, before the body was read.)
pub(crate) fn check_post(
    state: &State,
    headers: &HeaderMap,
    who: &Requester,
    fields: Fields,
    role: Role,
) -> Result<Vec<(String, String)>, Box<Response>> {
    if !who.can(role) {
        return Err(Box::new(forbidden(state, who, role)));
    }
    let Form(fields) =
        fields.map_err(|e| Box::new(error_page(state, who, e.status(), &crate::refused_input(&e.body_text()))))?;
    let token = fields.iter().find(|(k, _)| k == "csrf").map_or("", |(_, v)| v.as_str());
    if !state.access.check_token(headers, who, token) {
        let msg = "The form's CSRF token is missing or wrong; reload the page and try again.";
        return Err(Box::new(error_page(state, who, StatusCode::FORBIDDEN, msg)));
    }
    Ok(fields)
}

#[derive(Template)]
#[template(path = "index.html")]
struct IndexPage {
    nav: Nav,
    result: String,
    result_class: &'static str,
    stats: Stats,
    svg: String,
    expanded: Vec<(String, String)>,
    can_admin: bool,
    csrf: String,
    levels: Vec<(&'static str, String, bool)>,
    confirm: String,
}

/// The overall result, as OCurrent words it.
fn result_text(state: &State) -> (String, &'static str) {
    match state.engine.result() {
        None => ("Starting…".into(), "active"),
        Some((NodeState::Ok, _)) => ("Success!".into(), "ok"),
        Some((_, Some(e))) => (format!("ERROR: {}", e.message()), "failed"),
        // Pending here or upstream.
        Some((_, None)) => ("Running…".into(), "active"),
    }
}

/// The collapse groups to expand, from a query string of `key=value` pairs.
pub(crate) type Expansions = Result<Query<Vec<(String, String)>>, QueryRejection>;

pub(crate) async fn index(AxState(state): AxState<State>, Who(who): Who, expanded: Expansions) -> Response {
    let expanded = match expanded {
        Ok(Query(e)) => e,
        Err(e) => return error_page(&state, &who, StatusCode::BAD_REQUEST, &crate::refused_input(&e.body_text())),
    };
    let diagram = state.engine.diagram(&Expanded::from_pairs(expanded.clone()));
    let svg = crate::svg::render(&diagram, &expanded);
    let (result, result_class) = result_text(&state);
    let confirm = state.ctx.config().confirm();
    let mut levels = vec![("none", "No confirmation needed".to_owned(), confirm.is_none())];
    levels.extend(Level::ALL.iter().map(|l| (l.as_str(), format!("{} and above", l.as_str()), confirm == Some(*l))));
    render(IndexPage {
        nav: nav(&state, &who),
        result,
        result_class,
        stats: state.engine.stats(),
        svg,
        expanded,
        can_admin: who.can(Role::Admin),
        csrf: who.token(),
        levels,
        confirm: confirm.map_or("none".into(), |l| format!("{} and above", l.as_str())),
    })
}

pub(crate) async fn pipeline_svg(AxState(state): AxState<State>, expanded: Expansions) -> Response {
    let expanded = match expanded {
        Ok(Query(e)) => e,
        Err(e) => {
            return crate::Failure::new(StatusCode::BAD_REQUEST, crate::refused_input(&e.body_text())).into_response()
        }
    };
    let diagram = state.engine.diagram(&Expanded::from_pairs(expanded.clone()));
    ([(axum::http::header::CONTENT_TYPE, "image/svg+xml")], crate::svg::render(&diagram, &expanded)).into_response()
}

pub(crate) async fn set_confirm(
    AxState(state): AxState<State>,
    headers: HeaderMap,
    Who(who): Who,
    fields: Fields,
) -> Response {
    let fields = match check_post(&state, &headers, &who, fields, Role::Admin) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let value = fields.iter().find(|(k, _)| k == "level").map_or("", |(_, v)| v.as_str());
    let level = match value {
        "none" => None,
        other => match other.parse::<Level>() {
            Ok(l) => Some(l),
            Err(e) => return error_page(&state, &who, StatusCode::BAD_REQUEST, &e.to_string()),
        },
    };
    state.ctx.config().set_confirm(level);
    state.engine.wake();
    Redirect::to("/").into_response()
}

struct JobRow {
    id: String,
    state: &'static str,
    state_class: &'static str,
    since: String,
}

#[derive(Template)]
#[template(path = "jobs.html")]
struct JobsPage {
    nav: Nav,
    jobs: Vec<JobRow>,
    pools: Vec<(String, usize, usize, usize, usize)>,
}

pub(crate) fn status_text(status: JobStatus, cancelled: bool) -> (&'static str, &'static str) {
    match (status, cancelled) {
        (JobStatus::Finished, _) => ("finished", "none"),
        (_, true) => ("cancelling", "failed"),
        (JobStatus::Ready, _) => ("ready to start", "ready"),
        (JobStatus::WaitingForConfirmation, _) => ("waiting for confirmation", "waiting"),
        (JobStatus::Queued, _) => ("queued for a pool", "ready"),
        (JobStatus::Running, _) => ("running", "running"),
    }
}

pub(crate) async fn jobs(AxState(state): AxState<State>, Who(who): Who) -> Response {
    let jobs = state
        .ctx
        .jobs
        .active()
        .into_iter()
        .map(|j| {
            let (s, class) = status_text(j.status, j.cancelled.is_some());
            let since = match j.started {
                Some(t) => format!("started {}", crate::html::time_text(t)),
                None => format!("created {}", crate::html::time_text(j.created)),
            };
            JobRow { id: j.id, state: s, state_class: class, since }
        })
        .collect();
    let pools = state
        .ctx
        .jobs
        .pools()
        .iter()
        .map(|p| {
            let (high, low) = p.queue_lengths();
            (p.label().to_owned(), p.in_use(), p.capacity(), high, low)
        })
        .collect();
    render(JobsPage { nav: nav(&state, &who), jobs, pools })
}

struct HistoryRow {
    build: i64,
    job_id: String,
    current: bool,
    result: String,
    result_class: &'static str,
    finished: String,
}

fn result_of(r: &JobRecord) -> (String, &'static str) {
    match (r.ok, r.interrupted) {
        (true, _) => ("passed".into(), "ok"),
        (false, true) => ("interrupted".into(), "failed"),
        (false, false) => ("failed".into(), "failed"),
    }
}

#[derive(Template)]
#[template(path = "job.html")]
struct JobPage {
    nav: Nav,
    id: String,
    state: String,
    state_class: &'static str,
    description: Option<String>,
    notice: Option<String>,
    history: Vec<HistoryRow>,
    can_rebuild: bool,
    can_cancel: bool,
    can_start: bool,
    csrf: String,
    finished: bool,
    /// The log so far, as HTML lines (escaped already).
    log: String,
    /// Where the live stream resumes (`?from=`).
    resume: String,
    /// Whether `log` is the whole log of a finished job.
    whole: bool,
}

/// How much of a log the job page holds itself (the rest streams, or is
/// read raw).
pub(crate) const PAGE_LOG: u64 = 1 << 20;

/// The job id of a `/job/<date>/<file>` path, if it names an existing log.
pub(crate) fn job_id(state: &State, date: &str, file: &str) -> Result<String, (StatusCode, String)> {
    let id = format!("{date}/{file}");
    let path = state.ctx.jobs.log_file(&id).map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    if !path.exists() {
        return Err((StatusCode::NOT_FOUND, format!("There is no job {id}.")));
    }
    Ok(id)
}

/// What a job page can say after an action, by code: fixed texts, so a
/// link cannot put words on the page.
fn notice_text(code: &str) -> Option<&'static str> {
    match code {
        "rebuild-requested" => Some("Rebuild requested."),
        _ => None,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JobParams {
    notice: Option<String>,
}

pub(crate) async fn job(
    AxState(state): AxState<State>,
    Who(who): Who,
    Path((date, file)): Path<(String, String)>,
    params: Result<Query<JobParams>, QueryRejection>,
) -> Response {
    let id = match job_id(&state, &date, &file) {
        Ok(id) => id,
        Err((status, msg)) => return error_page(&state, &who, status, &msg),
    };
    let notice = match params {
        Ok(Query(JobParams { notice: None })) => None,
        Ok(Query(JobParams { notice: Some(code) })) => match notice_text(&code) {
            Some(text) => Some(text.to_owned()),
            None => return error_page(&state, &who, StatusCode::BAD_REQUEST, "Unknown notice code."),
        },
        Err(e) => return error_page(&state, &who, StatusCode::BAD_REQUEST, &crate::refused_input(&e.body_text())),
    };
    let active = state.ctx.jobs.get(&id);
    let record = state.ctx.store.by_job(&id).await.ok().flatten();
    let (state_text, state_class) = match (&active, &record) {
        (Some(job), _) => {
            let (s, c) = status_text(job.status(), job.cancelled_reason().is_some());
            (s.to_owned(), c)
        }
        (None, Some(r)) => result_of(r),
        (None, None) => ("finished".to_owned(), "none"),
    };
    let mut history = Vec::new();
    let mut description = None;
    if let Some(r) = &record {
        description = Some(format!("{} build #{}", r.op, r.build));
        if let Ok(builds) = state.ctx.store.builds_of(&r.op, &r.key, 10).await {
            history = builds
                .iter()
                .map(|b| {
                    let (result, result_class) = result_of(b);
                    HistoryRow {
                        build: b.build,
                        job_id: b.job_id.clone(),
                        current: b.job_id == id,
                        result,
                        result_class,
                        finished: crate::html::time_text(b.finished),
                    }
                })
                .collect();
        }
    } else if let Some(job) = &active {
        description = Some(job.description().to_owned());
    }
    let running = active.as_ref().is_some_and(|j| j.status() != JobStatus::Finished);
    let (log, resume, whole) = {
        let (jobs, id) = (state.ctx.jobs.clone(), id.clone());
        tokio::task::spawn_blocking(move || crate::api::Follow::prefix(jobs, id, PAGE_LOG))
            .await
            .unwrap_or_else(|_| (String::new(), "0.0.1".to_owned(), false))
    };
    let page = JobPage {
        nav: nav(&state, &who),
        state: state_text,
        state_class,
        description,
        notice,
        history,
        can_rebuild: who.can(Role::Builder) && !running && state.ctx.jobs.actions(&id).is_some(),
        can_cancel: who.can(Role::Builder)
            && running
            && active.as_ref().is_some_and(|j| j.cancelled_reason().is_none()),
        can_start: who.can(Role::Admin)
            && active.as_ref().is_some_and(|j| j.status() == JobStatus::WaitingForConfirmation),
        csrf: who.token(),
        finished: !running,
        id,
        log,
        resume,
        whole,
    };
    render(page)
}

/// `POST /job/<id>/<action>`: `rebuild` and `cancel` (builder), `start`
/// (admin). Checks the role and CSRF token first; redirects to where to go
/// next, or explains why the action no longer applies (409).
pub(crate) async fn job_action(
    AxState(state): AxState<State>,
    headers: HeaderMap,
    Who(who): Who,
    Path((date, file, action)): Path<(String, String, String)>,
    fields: Fields,
) -> Response {
    let role = match action.as_str() {
        "rebuild" | "cancel" => Role::Builder,
        "start" => Role::Admin,
        _ => return error_page(&state, &who, StatusCode::NOT_FOUND, "There is no such job action."),
    };
    if let Err(r) = check_post(&state, &headers, &who, fields, role) {
        return *r;
    }
    let id = match job_id(&state, &date, &file) {
        Ok(id) => id,
        Err((status, msg)) => return error_page(&state, &who, status, &msg),
    };
    let next = match action.as_str() {
        "rebuild" => rebuild(&state, &id).await,
        "cancel" => state.ctx.jobs.get(&id).ok_or("This job has already finished.".to_owned()).map(|job| {
            job.cancel("Cancelled by user");
            format!("/job/{id}")
        }),
        _ => start(&state, &id),
    };
    match next {
        Ok(url) => Redirect::to(&url).into_response(),
        Err(msg) => error_page(&state, &who, StatusCode::CONFLICT, &msg),
    }
}

async fn rebuild(state: &State, id: &str) -> Result<String, String> {
    let actions = state.ctx.jobs.actions(id).ok_or("This job's stage is no longer in the pipeline.")?;
    actions.rebuild().map_err(|e| e.message().to_owned())?;
    // The new job exists as soon as the rebuild is asked for: go to it.
    match actions.latest_job().filter(|j| j != id) {
        Some(new) => Ok(format!("/job/{new}")),
        None => Ok(format!("/job/{id}?notice=rebuild-requested")),
    }
}

fn start(state: &State, id: &str) -> Result<String, String> {
    let job = state.ctx.jobs.get(id).ok_or("This job has already finished.")?;
    if job.status() != JobStatus::WaitingForConfirmation {
        return Err("This job is not waiting for confirmation.".into());
    }
    job.approve_early_start();
    Ok(format!("/job/{id}"))
}

/// The history filters, as given in the query string (empty fields, as
/// forms send them, mean "any").
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FilterParams {
    op: Option<String>,
    result: Option<String>,
    rebuild: Option<String>,
    date: Option<String>,
    prefix: Option<String>,
    after: Option<String>,
    limit: Option<String>,
    /// After "Rebuild selected": how many were started, and not.
    rebuilt: Option<usize>,
    not_rebuilt: Option<usize>,
}

/// The history filters, checked.
#[derive(Debug, Default)]
pub(crate) struct Filter {
    pub(crate) op: Option<String>,
    pub(crate) result: Option<String>,
    pub(crate) rebuild: Option<bool>,
    pub(crate) date: Option<String>,
    pub(crate) prefix: Option<String>,
    pub(crate) after: Option<Cursor>,
    pub(crate) limit: Option<usize>,
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|v| !v.is_empty())
}

impl Filter {
    /// Checks the filters; the error names the bad parameter.
    pub(crate) fn parse(p: FilterParams) -> Result<Filter, String> {
        let mut f = Filter { op: non_empty(p.op), prefix: non_empty(p.prefix), ..Filter::default() };
        if let Some(v) = non_empty(p.result) {
            match v.as_str() {
                "passed" | "failed" => f.result = Some(v),
                _ => return Err(format!("result must be \"passed\" or \"failed\", not {}", crate::quoted(&v))),
            }
        }
        if let Some(v) = non_empty(p.rebuild) {
            f.rebuild =
                Some(v.parse().map_err(|_| format!("rebuild must be true or false, not {}", crate::quoted(&v)))?);
        }
        if let Some(v) = non_empty(p.date) {
            let shaped = v.len() == 10
                && v.bytes().enumerate().all(|(i, b)| if i == 4 || i == 7 { b == b'-' } else { b.is_ascii_digit() });
            if !shaped || chrono::NaiveDate::parse_from_str(&v, "%Y-%m-%d").is_err() {
                return Err(format!("date must look like 2026-11-24, not {}", crate::quoted(&v)));
            }
            f.date = Some(v);
        }
        if let Some(v) = non_empty(p.after) {
            let bad =
                || format!("after must be <finished>.<row> as given by the Older link, not {}", crate::quoted(&v));
            let (a, b) = v.split_once('.').ok_or_else(bad)?;
            f.after = Some(Cursor { finished: a.parse().map_err(|_| bad())?, row: b.parse().map_err(|_| bad())? });
        }
        if let Some(v) = non_empty(p.limit) {
            let n: usize =
                v.parse().map_err(|_| format!("limit must be a number from 1 to 1000, not {}", crate::quoted(&v)))?;
            if !(1..=1000).contains(&n) {
                return Err(format!("limit must be a number from 1 to 1000, not {n}"));
            }
            f.limit = Some(n);
        }
        Ok(f)
    }

    /// The store query, `limit` rows unless the filter says; a date is a
    /// job-id prefix (job ids begin with it).
    pub(crate) fn query(&self, limit: usize) -> HistoryQuery {
        let limit = self.limit.unwrap_or(limit);
        let prefix = match (&self.date, &self.prefix) {
            (Some(d), Some(p)) if p.starts_with(d.as_str()) => Some(p.clone()),
            (Some(d), Some(_)) => Some(format!("{d}/\u{0}")), // contradictory: nothing matches
            (Some(d), None) => Some(format!("{d}/")),
            (None, p) => p.clone(),
        };
        HistoryQuery {
            op: self.op.clone(),
            ok: self.result.as_deref().map(|r| r == "passed"),
            rebuild: self.rebuild,
            job_prefix: prefix,
            after: self.after,
            limit,
            ..HistoryQuery::default()
        }
    }

    fn url_after(&self, cursor: Cursor) -> String {
        let mut parts = Vec::new();
        for (k, v) in [("op", &self.op), ("result", &self.result), ("date", &self.date), ("prefix", &self.prefix)] {
            if let Some(v) = v {
                parts.push(format!("{k}={}", crate::html::url_encode(v)));
            }
        }
        if let Some(r) = self.rebuild {
            parts.push(format!("rebuild={r}"));
        }
        parts.push(format!("after={}.{}", cursor.finished, cursor.row));
        format!("/query?{}", parts.join("&"))
    }
}

struct QueryRow {
    job_id: String,
    description: String,
    build: i64,
    result: String,
    result_class: &'static str,
    rebuild: bool,
    rebuildable: bool,
    finished: String,
    times: String,
}

#[derive(Template)]
#[template(path = "query.html")]
struct QueryPage {
    nav: Nav,
    ops: Vec<String>,
    filter: Filter,
    rows: Vec<QueryRow>,
    next_url: Option<String>,
    can_rebuild: bool,
    csrf: String,
    notice: Option<String>,
}

async fn query_page(state: &State, who: &Requester, filter: Filter, notice: Option<String>) -> Response {
    let page = match state.ctx.store.history(filter.query(50)).await {
        Ok(p) => p,
        Err(e) => return error_page(state, who, StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let ops = state.ctx.store.ops().await.unwrap_or_default();
    let rows = page
        .rows
        .iter()
        .map(|r| {
            let (result, result_class) = result_of(r);
            let secs = |a: i64, b: i64| format!("{:.1} s", (b - a) as f64 / 1000.0);
            let times = match r.running {
                Some(run) => format!("{} / {}", secs(r.ready, run), secs(run, r.finished)),
                None => format!("{} / –", secs(r.ready, r.finished)),
            };
            QueryRow {
                job_id: r.job_id.clone(),
                description: r.description.clone(),
                build: r.build,
                result,
                result_class,
                rebuild: r.rebuild,
                rebuildable: state.ctx.jobs.actions(&r.job_id).is_some(),
                finished: crate::html::time_text(r.finished),
                times,
            }
        })
        .collect();
    let next_url = page.next.map(|c| filter.url_after(c));
    render(QueryPage {
        nav: nav(state, who),
        ops,
        filter,
        rows,
        next_url,
        can_rebuild: who.can(Role::Builder),
        csrf: who.token(),
        notice,
    })
}

pub(crate) async fn query(
    AxState(state): AxState<State>,
    Who(who): Who,
    params: Result<Query<FilterParams>, QueryRejection>,
) -> Response {
    let params = match params {
        Ok(Query(p)) => p,
        Err(e) => return error_page(&state, &who, StatusCode::BAD_REQUEST, &crate::refused_input(&e.body_text())),
    };
    let notice = match (params.rebuilt, params.not_rebuilt) {
        (None, None) => None,
        (started, failed) => {
            let mut text = format!("Rebuilding {} job(s).", started.unwrap_or(0));
            if let Some(n) = failed.filter(|n| *n > 0) {
                text.push_str(&format!(" {n} could not be rebuilt (still running, or no longer in the pipeline)."));
            }
            Some(text)
        }
    };
    match Filter::parse(params) {
        Ok(filter) => query_page(&state, &who, filter, notice).await,
        Err(e) => error_page(&state, &who, StatusCode::BAD_REQUEST, &crate::refused_input(&e)),
    }
}

/// `POST /query`: rebuilds the selected jobs, then redirects (303) to the
/// history, so that reloading the page does not rebuild again.
pub(crate) async fn rebuild_selected(
    AxState(state): AxState<State>,
    headers: HeaderMap,
    Who(who): Who,
    fields: Fields,
) -> Response {
    let fields = match check_post(&state, &headers, &who, fields, Role::Builder) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let (mut started, mut failed) = (0, 0);
    for (_, id) in fields.iter().filter(|(k, _)| k == "job") {
        match state.ctx.jobs.actions(id).map(|a| a.rebuild()) {
            Some(Ok(())) => started += 1,
            Some(Err(e)) => {
                tracing::info!(job = id, "not rebuilt: {}", e.message());
                failed += 1;
            }
            None => failed += 1,
        }
    }
    Redirect::to(&format!("/query?rebuilt={started}&not_rebuilt={failed}")).into_response()
}

/// `GET /admin-login` (a form, or `?token=` from a link the operator
/// made) and `POST /admin-login` for a site without login: the right token
/// sets the `HttpOnly` admin cookie and goes to `/`. Outside the guard (a
/// viewer must be able to post it), so it checks the origin itself.
pub(crate) fn admin_login_routes(state: State, body_limit: usize) -> axum::Router {
    use axum::routing::get;
    axum::Router::new()
        .route(crate::access::ADMIN_LOGIN, get(admin_login_page).post(admin_login_submit))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

async fn admin_login_page(
    AxState(state): AxState<State>,
    crate::Peer(peer): crate::Peer,
    headers: HeaderMap,
    query: Result<Query<TokenQuery>, QueryRejection>,
) -> Response {
    let who = state.access.requester(&headers, peer);
    if state.access.login_url().as_deref() != Some(crate::access::ADMIN_LOGIN) {
        return error_page(&state, &who, StatusCode::NOT_FOUND, "This site does not log in with a token.");
    }
    match query {
        Ok(Query(TokenQuery { token: Some(token) })) => admin_login(&state, &who, &token),
        Ok(_) => {
            let body = r#"<p>Without a login, acting on this site needs its admin token: the file
<code>web-admin-token</code> in the deployer's state directory.</p>
<form method="post" action="/admin-login"><label>Token
<input type="password" name="token" autocomplete="off" required></label>
<button>Log in</button></form>"#;
            extension_page(&state, &who, "Log in".into(), body.into())
        }
        Err(e) => error_page(&state, &who, StatusCode::BAD_REQUEST, &crate::refused_input(&e.body_text())),
    }
}

async fn admin_login_submit(
    AxState(state): AxState<State>,
    crate::Peer(peer): crate::Peer,
    headers: HeaderMap,
    fields: Fields,
) -> Response {
    let who = state.access.requester(&headers, peer);
    if let Err(crate::access::Refusal::CrossSite(msg) | crate::access::Refusal::Host(msg)) =
        state.access.check_origin(&axum::http::Method::POST, &headers)
    {
        return error_page(&state, &who, StatusCode::FORBIDDEN, &format!("Refused: {msg}."));
    }
    let Ok(Form(fields)) = fields else {
        return error_page(&state, &who, StatusCode::BAD_REQUEST, "The form could not be read.");
    };
    let token = fields.iter().find(|(k, _)| k == "token").map_or("", |(_, v)| v.as_str());
    admin_login(&state, &who, token)
}

fn admin_login(state: &State, who: &Requester, token: &str) -> Response {
    if !state.access.is_admin_token(token) {
        return error_page(state, who, StatusCode::FORBIDDEN, "That is not this site's admin token.");
    }
    let mut response = Redirect::to("/").into_response();
    if let Ok(v) = axum::http::HeaderValue::from_str(&crate::access::admin_cookie(token.trim())) {
        response.headers_mut().append(axum::http::header::SET_COOKIE, v);
    }
    response
}

pub(crate) async fn not_found(AxState(state): AxState<State>, Who(who): Who) -> Response {
    error_page(&state, &who, StatusCode::NOT_FOUND, "There is no such page.")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(q: &str) -> FilterParams {
        serde_urlencoded::from_str(q).unwrap()
    }

    #[test]
    fn filters_name_the_bad_parameter() {
        assert!(Filter::parse(params("result=maybe")).unwrap_err().contains("result must be"));
        for bad in ["24/11/2026", "2026-1-1", "2026-13-01"] {
            let e = Filter::parse(params(&format!("date={bad}"))).unwrap_err();
            assert!(e.contains("date must look like"), "{bad}: {e}");
        }
        assert!(Filter::parse(params("after=x")).unwrap_err().contains("after must be"));
        // A long bad value is not quoted whole (security issue 14).
        for key in ["result", "rebuild", "date", "after", "limit"] {
            let e = Filter::parse(params(&format!("{key}={}", "A".repeat(4000)))).unwrap_err();
            assert!(e.chars().count() <= 120, "{key}: {} characters", e.chars().count());
        }
        assert!(serde_urlencoded::from_str::<FilterParams>("colour=red").unwrap_err().to_string().contains("colour"));
        let f = Filter::parse(params("op=docker-build&result=failed&date=2026-11-24&after=5.7")).unwrap();
        let q = f.query(50);
        assert_eq!(q.op.as_deref(), Some("docker-build"));
        assert_eq!(q.ok, Some(false));
        assert_eq!(q.job_prefix.as_deref(), Some("2026-11-24/"));
        assert_eq!(q.after, Some(Cursor { finished: 5, row: 7 }));
        assert_eq!(
            f.url_after(Cursor { finished: 1, row: 2 }),
            "/query?op=docker-build&result=failed&date=2026-11-24&after=1.2"
        );
    }
}
