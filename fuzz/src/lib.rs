//! What the fuzz targets share: a runtime, scratch directories, and the
//! text form of a request the targets read their input as.

use std::path::PathBuf;

/// A current-thread runtime for the targets that drive async code.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime")
}

/// A fresh directory for target `name`: under `$DEPLOYER_FUZZ_SCRATCH`
/// (which `fuzz/run` sets, and removes after), else in `/dev/shm` when
/// there is one (the targets write files on every input).
pub fn scratch(name: &str) -> PathBuf {
    let base = match std::env::var_os("DEPLOYER_FUZZ_SCRATCH") {
        Some(dir) => PathBuf::from(dir),
        None if std::path::Path::new("/dev/shm").is_dir() => PathBuf::from("/dev/shm"),
        None => std::env::temp_dir(),
    };
    let dir = base.join(format!("deployer-fuzz-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

/// A request as the targets read it: header lines (`name: value`), an
/// empty line, then the body. Lines that are no valid header are skipped.
pub struct RawRequest {
    /// The headers, in order.
    pub headers: Vec<(axum::http::HeaderName, axum::http::HeaderValue)>,
    /// The body.
    pub body: Vec<u8>,
}

impl RawRequest {
    /// Splits `input` at its first empty line.
    pub fn parse(input: &[u8]) -> RawRequest {
        let (head, body) = match find(input, b"\n\n") {
            Some(i) => (&input[..i], &input[i + 2..]),
            None => (input, &[][..]),
        };
        let mut headers = Vec::new();
        for line in head.split(|&b| b == b'\n') {
            let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
            let value = line[colon + 1..].strip_prefix(b" ").unwrap_or(&line[colon + 1..]);
            if let (Ok(n), Ok(v)) =
                (axum::http::HeaderName::from_bytes(&line[..colon]), axum::http::HeaderValue::from_bytes(value))
            {
                headers.push((n, v));
            }
        }
        RawRequest { headers, body: body.to_vec() }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
