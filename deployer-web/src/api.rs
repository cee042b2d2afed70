//! JSON API, Prometheus metrics, and the live log stream.

use std::convert::Infallible;
use std::fmt::Write as _;

use axum::extract::{Path, RawQuery, State as AxState};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use deployer_core::analysis::Expanded;
use deployer_core::Jobs;
use futures_util::Stream;

use crate::html::AnsiToHtml;
use crate::pages::{expanded_from, job_id, status_text, Filter};
use crate::{Failure, State};

/// Bytes of log read per event.
const CHUNK: usize = 256 * 1024;

pub(crate) async fn pipeline(AxState(state): AxState<State>, RawQuery(query): RawQuery) -> Response {
    match expanded_from(query.as_deref()) {
        Ok(e) => Json(state.engine.diagram(&Expanded::from_pairs(e))).into_response(),
        Err(e) => Failure::new(StatusCode::BAD_REQUEST, e).into_response(),
    }
}

#[derive(serde::Serialize)]
struct StatsBody {
    result: &'static str,
    error: Option<String>,
    stats: deployer_core::Stats,
    steps: u64,
    last_step_seconds: f64,
    nodes: usize,
}

pub(crate) async fn stats(AxState(state): AxState<State>) -> Json<serde_json::Value> {
    let (steps, last, _) = state.engine.timings();
    let (result, error) = match state.engine.result() {
        None => ("starting", None),
        Some((s, e)) => (s.name(), e.map(|e| e.message().to_owned())),
    };
    let body = StatsBody {
        result,
        error,
        stats: state.engine.stats(),
        steps,
        last_step_seconds: last.as_secs_f64(),
        nodes: state.engine.node_count(),
    };
    Json(serde_json::to_value(body).unwrap_or_default())
}

pub(crate) async fn jobs(AxState(state): AxState<State>) -> Json<Vec<deployer_core::job::JobInfo>> {
    Json(state.ctx.jobs.active())
}

pub(crate) async fn history(AxState(state): AxState<State>, RawQuery(query): RawQuery) -> Response {
    let limit = crate::pages::parse_pairs(query.as_deref().unwrap_or(""))
        .ok()
        .and_then(|p| p.into_iter().find(|(k, _)| k == "limit").and_then(|(_, v)| v.parse().ok()))
        .unwrap_or(100);
    let filter = match Filter::parse(query.as_deref()) {
        Ok(f) => f,
        Err(e) => return Failure::new(StatusCode::BAD_REQUEST, e).into_response(),
    };
    match state.ctx.store.history(filter.query(limit)).await {
        Ok(page) => Json(page).into_response(),
        Err(e) => Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// `GET /api/job/<id>/log?offset=N`: up to 1 MiB of the raw log from
/// `offset`; the `x-log-next` header gives the next offset and
/// `x-log-complete` whether the job has finished.
pub(crate) async fn log(
    AxState(state): AxState<State>,
    Path((date, file)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let id = match job_id(&state, &date, &file) {
        Ok(id) => id,
        Err((status, msg)) => return Failure::new(status, msg).into_response(),
    };
    let mut offset = 0u64;
    for (k, v) in crate::pages::parse_pairs(query.as_deref().unwrap_or("")).unwrap_or_default() {
        if k == "offset" {
            match v.parse() {
                Ok(o) => offset = o,
                Err(_) => {
                    return Failure::new(StatusCode::BAD_REQUEST, format!("offset must be a number, not {v:?}"))
                        .into_response()
                }
            }
        }
    }
    match state.ctx.jobs.read_log(&id, offset, 1 << 20) {
        Ok((bytes, complete)) => {
            let next = offset + bytes.len() as u64;
            (
                [
                    (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
                    (header::HeaderName::from_static("x-log-next"), next.to_string()),
                    (header::HeaderName::from_static("x-log-complete"), complete.to_string()),
                ],
                bytes,
            )
                .into_response()
        }
        Err(e) => Failure::new(StatusCode::NOT_FOUND, e.message().to_owned()).into_response(),
    }
}

struct Follow {
    jobs: Jobs,
    id: String,
    offset: u64,
    line: u64,
    ansi: AnsiToHtml,
    partial: Vec<u8>,
    done: bool,
}

impl Follow {
    /// Complete lines of `bytes` (plus what was left over) as HTML.
    fn lines(&mut self, bytes: &[u8], flush: bool) -> String {
        self.partial.extend_from_slice(bytes);
        let cut = if flush {
            self.partial.len()
        } else {
            self.partial.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)
        };
        let ready: Vec<u8> = self.partial.drain(..cut).collect();
        let text = String::from_utf8_lossy(&ready);
        let mut html = String::with_capacity(ready.len() * 2);
        for l in text.split_inclusive('\n') {
            self.line += 1;
            let n = self.line;
            let body = self.ansi.line(l.trim_end_matches('\n'));
            // No newline between lines: each is a block, and `pre` would
            // show the newline as an empty line.
            let _ = write!(html, r##"<span class="line" id="L{n}"><a href="#L{n}">{n}</a>{body}</span>"##);
        }
        html
    }

    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if self.done {
                return None;
            }
            let (bytes, complete) = match self.jobs.read_log(&self.id, self.offset, CHUNK) {
                Ok(r) => r,
                Err(e) => {
                    self.done = true;
                    return Some(Event::default().event("end").data(e.message()));
                }
            };
            if !bytes.is_empty() {
                self.offset += bytes.len() as u64;
                let html = self.lines(&bytes, false);
                if !html.is_empty() {
                    return Some(Event::default().event("log").id(self.offset.to_string()).data(html));
                }
                continue;
            }
            if complete {
                self.done = true;
                let rest = self.lines(&[], true);
                if !rest.is_empty() {
                    return Some(Event::default().event("log").data(rest).id(self.offset.to_string()));
                }
                return Some(Event::default().event("end").data("finished"));
            }
            self.jobs.wait_for_log_data(&self.id, self.offset).await;
        }
    }
}

/// Where a reconnecting client stopped (`Last-Event-ID`), and the number of
/// lines before that point (counted by reading the log, chunk by chunk).
fn resume_point(jobs: &Jobs, id: &str, headers: &HeaderMap) -> (u64, u64) {
    let Some(offset) = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok())
    else {
        return (0, 0);
    };
    let (mut at, mut lines) = (0u64, 0u64);
    while at < offset {
        let Ok((bytes, _)) = jobs.read_log(id, at, CHUNK.min((offset - at) as usize)) else { break };
        if bytes.is_empty() {
            break;
        }
        lines += bytes.iter().filter(|&&b| b == b'\n').count() as u64;
        at += bytes.len() as u64;
    }
    (at, lines)
}

/// `GET /job/<id>/events`: the log as server-sent events, from the start
/// (or where a reconnecting client stopped) to the end of the job. The log
/// is read in chunks, never held whole.
pub(crate) async fn log_events(
    AxState(state): AxState<State>,
    headers: HeaderMap,
    Path((date, file)): Path<(String, String)>,
) -> Response {
    let id = match job_id(&state, &date, &file) {
        Ok(id) => id,
        Err((status, msg)) => return Failure::new(status, msg).into_response(),
    };
    let (offset, line) = resume_point(&state.ctx.jobs, &id, &headers);
    let follow = Follow {
        jobs: state.ctx.jobs.clone(),
        id,
        offset,
        line,
        ansi: AnsiToHtml::new(),
        partial: Vec::new(),
        done: false,
    };
    let stream = futures_util::stream::unfold(follow, |mut f| async move {
        let event = f.next_event().await?;
        Some((Ok::<_, Infallible>(event), f))
    });
    let mut response = sse(stream).into_response();
    response.headers_mut().insert("x-accel-buffering", header::HeaderValue::from_static("no"));
    response
}

fn sse(stream: impl Stream<Item = Result<Event, Infallible>> + Send + 'static) -> impl IntoResponse {
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// `GET /metrics`: Prometheus text format 0.0.4.
pub(crate) async fn metrics(AxState(state): AxState<State>) -> Response {
    let mut out = String::new();
    let s = state.engine.stats();
    out.push_str("# HELP deployer_pipeline_stages Pipeline stages by state.\n# TYPE deployer_pipeline_stages gauge\n");
    for (name, n) in [
        ("ok", s.ok),
        ("ready", s.ready),
        ("running", s.running),
        ("waiting_for_confirmation", s.waiting_for_confirmation),
        ("failed", s.failed),
        ("blocked", s.blocked),
    ] {
        let _ = writeln!(out, "deployer_pipeline_stages{{state=\"{name}\"}} {n}");
    }
    let active = state.ctx.jobs.active();
    out.push_str("# HELP deployer_jobs Active jobs by status.\n# TYPE deployer_jobs gauge\n");
    for status in ["ready", "waiting for confirmation", "queued for a pool", "running", "cancelling"] {
        let n = active.iter().filter(|j| status_text(j.status, j.cancelled.is_some()).0 == status).count();
        let _ = writeln!(out, "deployer_jobs{{status=\"{}\"}} {n}", status.replace(' ', "_"));
    }
    out.push_str("# HELP deployer_pool_in_use Pool slots in use.\n# TYPE deployer_pool_in_use gauge\n");
    let pools = state.ctx.jobs.pools();
    for p in &pools {
        let _ = writeln!(out, "deployer_pool_in_use{{pool=\"{}\"}} {}", label_escape(p.label()), p.in_use());
    }
    out.push_str("# HELP deployer_pool_queued Jobs waiting for a pool slot.\n# TYPE deployer_pool_queued gauge\n");
    for p in &pools {
        let (high, low) = p.queue_lengths();
        let l = label_escape(p.label());
        let _ = writeln!(out, "deployer_pool_queued{{pool=\"{l}\",priority=\"high\"}} {high}");
        let _ = writeln!(out, "deployer_pool_queued{{pool=\"{l}\",priority=\"low\"}} {low}");
    }
    out.push_str(
        "# HELP deployer_pool_wait_seconds Time jobs waited for pool slots.\n# TYPE deployer_pool_wait_seconds summary\n",
    );
    for p in &pools {
        let (waited, served) = p.wait_time();
        let l = label_escape(p.label());
        let _ = writeln!(out, "deployer_pool_wait_seconds_sum{{pool=\"{l}\"}} {}", waited.as_secs_f64());
        let _ = writeln!(out, "deployer_pool_wait_seconds_count{{pool=\"{l}\"}} {served}");
    }
    let rows = state.ctx.store.count().await.unwrap_or(-1);
    out.push_str("# HELP deployer_history_rows Builds and publishes recorded in the store.\n# TYPE deployer_history_rows gauge\n");
    let _ = writeln!(out, "deployer_history_rows {rows}");
    let (steps, last, total) = state.engine.timings();
    out.push_str("# HELP deployer_engine_nodes Live runtime nodes.\n# TYPE deployer_engine_nodes gauge\n");
    let _ = writeln!(out, "deployer_engine_nodes {}", state.engine.node_count());
    out.push_str("# HELP deployer_evaluation_seconds Time spent evaluating the pipeline.\n# TYPE deployer_evaluation_seconds summary\n");
    let _ = writeln!(out, "deployer_evaluation_seconds_sum {}", total.as_secs_f64());
    let _ = writeln!(out, "deployer_evaluation_seconds_count {steps}");
    out.push_str("# HELP deployer_last_evaluation_seconds Duration of the last evaluation step.\n# TYPE deployer_last_evaluation_seconds gauge\n");
    let _ = writeln!(out, "deployer_last_evaluation_seconds {}", last.as_secs_f64());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out).into_response()
}

fn label_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
