//! Entry points for the fuzz targets in `fuzz/` (the `fuzzing` feature),
//! reaching code the site otherwise only runs behind its routes. Not part
//! of the API: nothing outside `fuzz/` should use it.

use axum::http::{HeaderMap, HeaderValue};
use deployer_core::job::Jobs;

use crate::api::{resume_point, Follow, Step};

/// What a reader of a job's log saw: the job page's own copy of the log
/// (the first `limit` bytes of it, or so), then the live stream resuming
/// where the page ended, or, given `last_event_id`, where a reconnecting
/// client says it stopped.
#[derive(Debug)]
pub struct LogView {
    /// The page's HTML of the log.
    pub page: String,
    /// The event id the page resumes from.
    pub page_event_id: String,
    /// Whether the page held the whole log of a finished job.
    pub page_complete: bool,
    /// The HTML of every `log` event of the stream, in order.
    pub stream: Vec<String>,
    /// The data of the `end` event.
    pub end: String,
}

/// Reads job `id`'s log (a finished job's) as [`LogView`] says. At most
/// `max_steps` stream steps are taken: a stream that needs more is a hang,
/// and panics.
pub fn view_log(jobs: &Jobs, id: &str, limit: u64, last_event_id: Option<&[u8]>, max_steps: usize) -> LogView {
    let (page, page_event_id, page_complete) = Follow::prefix(jobs.clone(), id.to_owned(), limit);
    let mut headers = HeaderMap::new();
    if let Some(value) = last_event_id.and_then(|v| HeaderValue::from_bytes(v).ok()) {
        headers.insert("last-event-id", value);
    }
    let (offset, lines, at_line_start) = resume_point(jobs, id, &headers, Some(&page_event_id));
    let mut follow = Follow::new(jobs.clone(), id.to_owned(), offset, lines, at_line_start);
    let mut stream = Vec::new();
    for _ in 0..max_steps {
        match follow.step_blocking() {
            Step::Log(html) => stream.push(html),
            Step::Ended(why) => return LogView { page, page_event_id, page_complete, stream, end: why },
            Step::Wait => panic!("the stream of a finished job waits for more"),
            Step::End => panic!("the stream ended without an end event"),
        }
    }
    panic!("the stream took more than {max_steps} steps")
}
