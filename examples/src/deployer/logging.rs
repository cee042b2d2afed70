//! What the binaries print as they run: `tracing` events on stderr, in a
//! human format (coloured on a terminal) or as JSON lines, filtered by
//! `-v`/`--verbosity` or `RUST_LOG`, with every registered secret scrubbed
//! from every line before it is written.

use std::io::{IsTerminal, Write};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// How lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `2026-12-03T07:00:00Z  INFO target: message`, for people.
    Human,
    /// One JSON object per line, for a log collector.
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "human" => Ok(Format::Human),
            "json" => Ok(Format::Json),
            other => Err(format!("{other:?} is not a log format (human or json)")),
        }
    }
}

/// The filter: `RUST_LOG` when set, else `level` for every target
/// (`info`, `debug` with `-v`, `trace` with `-vv`), with the noisy HTTP
/// and TLS libraries one level quieter.
pub fn filter(level: &str) -> Result<EnvFilter, String> {
    if let Ok(spec) = std::env::var("RUST_LOG") {
        if !spec.is_empty() {
            return EnvFilter::try_new(&spec).map_err(|e| format!("RUST_LOG={spec:?}: {e}"));
        }
    }
    let quiet = match level {
        "trace" => "debug",
        "debug" => "info",
        other => other,
    };
    EnvFilter::try_new(format!("{level},hyper={quiet},hyper_util={quiet},rustls={quiet},h2={quiet},russh={quiet}"))
        .map_err(|e| format!("--verbosity {level:?}: {e}"))
}

/// Installs the subscriber for the process (once; later calls do nothing).
pub fn init(level: &str, format: Format) -> Result<(), String> {
    let filter = filter(level)?;
    let ansi = std::io::stderr().is_terminal() && format == Format::Human;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(Scrubbed).with_ansi(ansi);
    let result = match format {
        Format::Human => builder.try_init(),
        Format::Json => builder.json().flatten_event(true).try_init(),
    };
    // A subscriber installed already (a test, an embedding program) stays.
    let _ = result;
    Ok(())
}

/// Writes to stderr, one scrubbed line at a time.
#[derive(Clone, Copy)]
struct Scrubbed;

/// One event's text, scrubbed and written when it is complete.
struct ScrubbedLine(Vec<u8>);

impl<'a> MakeWriter<'a> for Scrubbed {
    type Writer = ScrubbedLine;

    fn make_writer(&'a self) -> ScrubbedLine {
        ScrubbedLine(Vec::with_capacity(256))
    }
}

impl Write for ScrubbedLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for ScrubbedLine {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let text = deployer_core::scrub_secrets(&String::from_utf8_lossy(&self.0));
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_scrubbed_before_it_is_written() {
        deployer_core::register_secret("logging-secret-4fa9c2e1");
        let mut line = Scrubbed.make_writer();
        line.write_all(b"token=logging-secret-4fa9c2e1\n").unwrap();
        assert_eq!(deployer_core::scrub_secrets(&String::from_utf8_lossy(&line.0)), "token=[redacted]\n");
        line.0.clear();
    }

    #[test]
    fn levels_and_formats() {
        assert!(filter("debug").is_ok());
        assert_eq!("json".parse::<Format>(), Ok(Format::Json));
        assert!("xml".parse::<Format>().unwrap_err().contains("human or json"));
    }
}
