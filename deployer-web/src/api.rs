//! JSON API, the raw log, and the live log stream.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State as AxState};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use deployer_core::analysis::Expanded;
use deployer_core::Jobs;
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::html::AnsiToHtml;
use crate::limits::StreamPermit;
use crate::pages::{job_id, Expansions, Filter, FilterParams};
use crate::{Failure, State};

/// Bytes of log read (and at most sent as one piece of a line) per event.
/// Small when fuzzing, so that short inputs reach the pieces of long lines.
pub(crate) const CHUNK: usize = if cfg!(feature = "fuzzing") { 64 } else { 64 * 1024 };

/// Log chunks turned into HTML at once, over all streams: the work runs on
/// blocking threads, and this keeps it from taking every core.
static DECODERS: Semaphore = Semaphore::const_new(2);

pub(crate) async fn pipeline(AxState(state): AxState<State>, expanded: Expansions) -> Response {
    match expanded {
        Ok(Query(e)) => Json(state.engine.diagram(&Expanded::from_pairs(e))).into_response(),
        Err(e) => Failure::new(StatusCode::BAD_REQUEST, crate::refused_input(&e.body_text())).into_response(),
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

pub(crate) async fn stats(AxState(state): AxState<State>) -> Response {
    let deployer_core::Timings { steps, last_step: last, .. } = state.engine.timings();
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
    Json(body).into_response()
}

pub(crate) async fn jobs(AxState(state): AxState<State>) -> Json<Vec<deployer_core::job::JobInfo>> {
    Json(state.ctx.jobs.active())
}

pub(crate) async fn history(
    AxState(state): AxState<State>,
    params: Result<Query<FilterParams>, QueryRejection>,
) -> Response {
    let filter = match params.map_err(|e| crate::refused_input(&e.body_text())).and_then(|Query(p)| Filter::parse(p)) {
        Ok(f) => f,
        Err(e) => return Failure::new(StatusCode::BAD_REQUEST, crate::refused_input(&e)).into_response(),
    };
    match state.ctx.store.history(filter.query(100)).await {
        Ok(page) => Json(page).into_response(),
        Err(e) => Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// `?from=<event id>`: where the job page's own copy of the log ended.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventParams {
    from: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogParams {
    offset: Option<u64>,
}

/// `GET /api/job/<id>/log?offset=N`: up to 1 MiB of the raw log from
/// `offset`; the `x-log-next` header gives the next offset and
/// `x-log-complete` whether the job has finished. An offset past the end is
/// answered 416.
pub(crate) async fn log(
    AxState(state): AxState<State>,
    Path((date, file)): Path<(String, String)>,
    params: Result<Query<LogParams>, QueryRejection>,
) -> Response {
    let id = match job_id(&state, &date, &file) {
        Ok(id) => id,
        Err((status, msg)) => return Failure::new(status, msg).into_response(),
    };
    let offset = match params {
        Ok(Query(p)) => p.offset.unwrap_or(0),
        Err(e) => return Failure::new(StatusCode::BAD_REQUEST, crate::refused_input(&e.body_text())).into_response(),
    };
    let jobs = state.ctx.jobs.clone();
    let read = tokio::task::spawn_blocking(move || {
        let len = std::fs::metadata(jobs.log_file(&id).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?.len();
        if offset > len {
            return Ok(Err(len));
        }
        jobs.read_log(&id, offset, 1 << 20).map(Ok).map_err(|e| e.message().to_owned())
    })
    .await;
    match read {
        Ok(Ok(Ok((bytes, complete)))) => {
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
        Ok(Ok(Err(len))) => (
            StatusCode::RANGE_NOT_SATISFIABLE,
            [(header::CONTENT_RANGE, format!("bytes */{len}"))],
            format!("offset {offset} is past the end of the log ({len} bytes)\n"),
        )
            .into_response(),
        Ok(Err(e)) => Failure::new(StatusCode::NOT_FOUND, e).into_response(),
        Err(_) => Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "reading the log failed").into_response(),
    }
}

/// A log followed as it grows, turned into HTML lines.
///
/// Event ids are the offsets of what has been *sent*: whole lines, or, for
/// a line longer than a chunk, the pieces of it sent so far; a client that
/// reconnects with the last id it saw gets exactly the rest.
pub(crate) struct Follow {
    jobs: Jobs,
    id: String,
    /// Bytes of the log read so far.
    read: u64,
    /// Bytes sent so far (the event id).
    sent: u64,
    /// The number of the line last started.
    line: u64,
    /// Whether the next byte sent begins a line.
    at_line_start: bool,
    ansi: AnsiToHtml,
    /// Read, not yet sent: the start of a line.
    partial: Vec<u8>,
    done: bool,
    _permit: Option<StreamPermit>,
}

/// What a step of a stream produced.
pub(crate) enum Step {
    /// Lines of the log as HTML, sent as a `log` event with the id
    /// [`Follow::event_id`] gives after the step.
    Log(String),
    /// The stream ends with an `end` event saying why.
    Ended(String),
    /// Nothing new yet: wait for the log to grow.
    Wait,
    /// The `end` event has been sent.
    End,
}

impl Follow {
    /// Follows job `id`'s log from `offset` (a position given by an event
    /// id), where `lines` lines have been sent already.
    pub(crate) fn new(jobs: Jobs, id: String, offset: u64, lines: u64, at_line_start: bool) -> Follow {
        Follow {
            jobs,
            id,
            read: offset,
            sent: offset,
            line: lines,
            at_line_start,
            ansi: AnsiToHtml::new(),
            partial: Vec::new(),
            done: false,
            _permit: None,
        }
    }

    /// Turns what was read into HTML: every complete line, and, once the
    /// unfinished line is longer than a chunk (or `flush`), the unfinished
    /// line so far. Returns the HTML; `sent` moves past what it covers.
    fn convert(&mut self, bytes: &[u8], flush: bool) -> String {
        let scanned = self.partial.len();
        self.partial.extend_from_slice(bytes);
        // Only the new bytes can hold a newline: what was kept had none.
        let mut cut = self.partial[scanned..].iter().rposition(|&b| b == b'\n').map_or(0, |i| scanned + i + 1);
        let mut piece = false;
        if cut == 0 && (flush || self.partial.len() >= CHUNK) && !self.partial.is_empty() {
            // A long line: send what there is, cut at a character boundary.
            cut = self.partial.len();
            if !flush {
                while cut > 0 && (self.partial[cut - 1] & 0b1100_0000) == 0b1000_0000 {
                    cut -= 1;
                }
                if cut > 0 && self.partial[cut - 1] >= 0b1100_0000 {
                    cut -= 1; // the lead byte of a character cut short
                }
                if cut == 0 {
                    cut = self.partial.len();
                }
            }
            piece = true;
        }
        let ready: Vec<u8> = self.partial.drain(..cut).collect();
        self.sent += ready.len() as u64;
        let text = String::from_utf8_lossy(&ready);
        let mut html = String::with_capacity(ready.len() * 2);
        for l in text.split_inclusive('\n') {
            let complete = l.ends_with('\n');
            let body = self.ansi.line(l.trim_end_matches('\n'));
            if self.at_line_start {
                self.line += 1;
                let n = self.line;
                // No newline between lines: each is a block, and `pre` would
                // show the newline as an empty line.
                let _ = write!(html, r##"<span class="line" id="L{n}"><a href="#L{n}">{n}</a>{body}</span>"##);
            } else {
                let _ = write!(html, r#"<span class="line cont">{body}</span>"#);
            }
            self.at_line_start = complete;
        }
        debug_assert!(piece || self.at_line_start || ready.is_empty());
        html
    }

    /// The log from its start as HTML, up to about `limit` bytes of it, for
    /// the job page itself (readable without JavaScript): the HTML, the
    /// event id a stream resumes from to get the rest, and whether that was
    /// the whole log of a finished job.
    pub(crate) fn prefix(jobs: Jobs, id: String, limit: u64) -> (String, String, bool) {
        let mut f = Follow::new(jobs, id, 0, 0, true);
        let mut html = String::new();
        loop {
            let Ok((bytes, complete)) = f.jobs.read_log(&f.id, f.read, CHUNK) else { break };
            if bytes.is_empty() {
                if complete {
                    html.push_str(&f.convert(&[], true));
                    return (html, f.event_id(), true);
                }
                break;
            }
            f.read += bytes.len() as u64;
            html.push_str(&f.convert(&bytes, false));
            if f.read >= limit {
                break;
            }
        }
        (html, f.event_id(), false)
    }

    /// The id of the event just made: where a reconnecting client resumes,
    /// `<offset sent>.<lines started>.<1 if at a line start, else 0>`, so
    /// resuming costs nothing (no count of the lines before it).
    pub(crate) fn event_id(&self) -> String {
        format!("{}.{}.{}", self.sent, self.line, u8::from(self.at_line_start))
    }

    /// Reads the next chunk and converts it (blocking: file I/O and work).
    pub(crate) fn step_blocking(&mut self) -> Step {
        if self.done {
            return Step::End;
        }
        let (bytes, complete) = match self.jobs.read_log(&self.id, self.read, CHUNK) {
            Ok(r) => r,
            Err(e) => {
                self.done = true;
                return Step::Ended(e.message().to_owned());
            }
        };
        if !bytes.is_empty() {
            self.read += bytes.len() as u64;
            let html = self.convert(&bytes, false);
            if html.is_empty() {
                return self.step_blocking(); // the middle of a line: read on
            }
            return Step::Log(html);
        }
        if complete {
            // A last line without its newline is sent first; the `end`
            // event follows on the next step (found by the `log_view` fuzz
            // target: the stream used to close without it, so a browser
            // reconnected to learn that the job had finished).
            let rest = self.convert(&[], true);
            if !rest.is_empty() {
                return Step::Log(rest);
            }
            self.done = true;
            return Step::Ended("finished".to_owned());
        }
        Step::Wait
    }

    /// The next event, waiting for the log to grow when it must.
    pub(crate) async fn next_event(mut self) -> Option<(Event, Follow)> {
        loop {
            let permit = DECODERS.acquire().await.ok();
            let (back, step) = tokio::task::spawn_blocking(move || {
                let step = self.step_blocking();
                (self, step)
            })
            .await
            .ok()?;
            drop(permit);
            self = back;
            match step {
                Step::Log(html) => return Some((Event::default().event("log").id(self.event_id()).data(html), self)),
                Step::Ended(why) => return Some((Event::default().event("end").data(why), self)),
                Step::End => return None,
                Step::Wait => self.jobs.wait_for_log_data(&self.id, self.read).await,
            }
        }
    }
}

/// Where a reconnecting client stopped: its `Last-Event-ID` (an id this
/// site made, see [`Follow::event_id`]) gives the offset, the lines started
/// before it and whether it begins a line. Nothing is read to find it; an
/// id that is malformed or past the end of the log starts from the top.
pub(crate) fn resume_point(jobs: &Jobs, id: &str, headers: &HeaderMap, from: Option<&str>) -> (u64, u64, bool) {
    let from_top = (0, 0, true);
    // A reconnecting stream's own position wins over where the page began.
    let last = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let Some(text) = last.or(from) else { return from_top };
    let mut parts = text.split('.');
    let (Some(offset), Some(lines), Some(start), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return from_top;
    };
    let (Ok(offset), Ok(lines), Ok(start)) = (offset.parse::<u64>(), lines.parse::<u64>(), start.parse::<u8>()) else {
        return from_top;
    };
    if start > 1
        || lines > offset.saturating_add(1)
        || jobs.log_file(id).ok().and_then(|p| std::fs::metadata(p).ok()).is_none_or(|m| offset > m.len())
    {
        return from_top;
    }
    (offset, lines, start == 1)
}

/// `GET /job/<id>/events`: the log as server-sent events, from the start
/// (or where a reconnecting client stopped) to the end of the job. The log
/// is read in chunks, never held whole, and turned into HTML off the async
/// threads. Streams are capped (in all, per job, per client): past the cap
/// the answer is 429.
pub(crate) async fn log_events(
    AxState(state): AxState<State>,
    crate::Who(who): crate::Who,
    headers: HeaderMap,
    Path((date, file)): Path<(String, String)>,
    params: Result<Query<EventParams>, QueryRejection>,
) -> Response {
    let id = match job_id(&state, &date, &file) {
        Ok(id) => id,
        Err((status, msg)) => return Failure::new(status, msg).into_response(),
    };
    let from = match params {
        Ok(Query(p)) => p.from,
        Err(e) => return Failure::new(StatusCode::BAD_REQUEST, crate::refused_input(&e.body_text())).into_response(),
    };
    let permit = match state.streams.admit(&id, who.client) {
        Ok(p) => p,
        Err(why) => {
            let mut r =
                Failure::new(StatusCode::TOO_MANY_REQUESTS, format!("Too many log streams: {why}.")).into_response();
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
            return r;
        }
    };
    let jobs = state.ctx.jobs.clone();
    let resume = {
        let (jobs, id, headers) = (jobs.clone(), id.clone(), Arc::new(headers));
        tokio::task::spawn_blocking(move || resume_point(&jobs, &id, &headers, from.as_deref())).await
    };
    let Ok((offset, lines, at_line_start)) = resume else {
        return Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "reading the log failed").into_response();
    };
    let mut follow = Follow::new(jobs, id, offset, lines, at_line_start);
    follow._permit = Some(permit);
    let stream = futures_util::stream::unfold(follow, |f| async move {
        let (event, f) = f.next_event().await?;
        Some((Ok::<_, Infallible>(event), f))
    });
    let mut response = Sse::new(stream).keep_alive(KeepAlive::default()).into_response();
    response.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}
