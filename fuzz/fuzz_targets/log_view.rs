//! A job's log as the web UI shows it: the job page renders the start of
//! the log (ANSI colours to HTML) and the live stream resumes where the
//! page ended, or where a reconnecting client's `Last-Event-ID` says. For
//! any log bytes, page limit and resumption id: nothing panics or hangs;
//! the page and the stream together number the log's lines 1, 2, 3, …
//! exactly as one uninterrupted rendering does, with the same text (long
//! lines' pieces joined) when the log is UTF-8 and no colour or carriage
//! return crosses the break; and a hostile
//! `Last-Event-ID` resumes somewhere in the log or from its top.
#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use deployer_core::{Config, Context};
use deployer_fuzz::scratch;
use deployer_web::fuzzing::view_log;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    limit: u16,
    last_event_id: Option<Vec<u8>>,
    log: Vec<u8>,
}

struct Target {
    ctx: Context,
    id: String,
    path: std::path::PathBuf,
}

fn target() -> &'static Target {
    static T: OnceLock<Target> = OnceLock::new();
    T.get_or_init(|| {
        let ctx = Context::open(&scratch("log-view"), Config::default()).expect("a store");
        let job = ctx.jobs.create("fuzz", "a log").expect("a job");
        job.finish();
        Target { id: job.id().to_owned(), path: job.log_path().to_owned(), ctx }
    })
}

/// The line numbers of rendered HTML, in order.
fn line_numbers(html: &str) -> Vec<u64> {
    html.match_indices(r#"<span class="line" id="L"#)
        .map(|(i, m)| {
            let rest = &html[i + m.len()..];
            rest[..rest.find('"').expect("a closing quote")].parse().expect("a number")
        })
        .collect()
}

fuzz_target!(|input: Input| {
    let t = target();
    std::fs::write(&t.path, &input.log).expect("the log written");
    let steps = 4 * input.log.len() + 16;
    let whole = view_log(&t.ctx.jobs, &t.id, u64::MAX, None, steps);
    assert!(whole.page_complete && whole.stream.is_empty(), "{whole:?}");
    assert_eq!(whole.end, "finished");
    let numbers = line_numbers(&whole.page);
    assert!(numbers.iter().copied().eq(1..=numbers.len() as u64), "lines numbered {numbers:?}");

    let split = view_log(&t.ctx.jobs, &t.id, u64::from(input.limit), None, steps);
    let stitched = format!("{}{}", split.page, split.stream.concat());
    assert_eq!(line_numbers(&stitched), numbers, "the page and the stream number the lines otherwise");
    // A line longer than a chunk is sent in pieces (`line cont` spans),
    // cut where the reads fell, which differs between the two readings:
    // joined, the lines are the same.
    let joined = |html: &str| html.replace(r#"</span><span class="line cont">"#, "");
    let plain = !input.log.contains(&b'\r') && !input.log.contains(&0x1b) && std::str::from_utf8(&input.log).is_ok();
    if plain {
        assert_eq!(joined(&stitched), joined(&whole.page), "the page and the stream show the log otherwise");
    }

    if let Some(id) = &input.last_event_id {
        let resumed = view_log(&t.ctx.jobs, &t.id, u64::from(input.limit), Some(id), steps);
        let rest = resumed.stream.concat();
        let numbers = line_numbers(&rest);
        // Consecutive, from wherever it resumed.
        if let Some(&first) = numbers.first() {
            assert!(numbers.iter().copied().eq(first..first + numbers.len() as u64), "{numbers:?}");
        }
        assert_eq!(resumed.end, "finished");
    }
});
