//! Running processes as part of a job: output goes to the job's log in the
//! order the process wrote it, and cancelling the job stops the process
//! (SIGTERM, then SIGKILL after a grace period).

use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt};
use tokio::process::{Child, Command};

use super::{human_duration, Job};
use crate::output::{Error, ErrorKind};

/// How long a process may take to exit after SIGTERM before it gets SIGKILL.
const GRACE: Duration = Duration::from_secs(5);

/// How long to keep reading output after the processes have exited (a
/// background grandchild may hold the pipe open).
const DRAIN: Duration = Duration::from_secs(2);

/// A log line longer than this is logged in pieces.
const MAX_LINE: usize = 64 * 1024;

/// The command line as the log shows it: each argument scrubbed of
/// secrets *before* it is quoted (quoting escapes `"`, `\` and control
/// characters, after which a secret holding them would no longer match).
fn describe(cmd: &Command) -> String {
    let std = cmd.as_std();
    let mut parts = vec![crate::secret::scrub_secrets(&std.get_program().to_string_lossy())];
    parts.extend(std.get_args().map(|a| format!("{:?}", crate::secret::scrub_secrets(&a.to_string_lossy()))));
    parts.join(" ")
}

fn program(cmd: &Command) -> String {
    cmd.as_std().get_program().to_string_lossy().into_owned()
}

fn signal_name(signal: i32) -> String {
    let name = match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        6 => "SIGABRT",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        _ => return format!("signal {signal}"),
    };
    format!("{name} ({signal})")
}

/// A pipe whose write end is given to children and whose read end the job
/// reads: both standard streams of a process written to one pipe keep their
/// order.
fn log_pipe() -> Result<(tokio::net::unix::pipe::Receiver, io::PipeWriter), Error> {
    let (reader, writer) = io::pipe().map_err(|e| Error::from(e).context("creating a pipe"))?;
    let receiver = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(reader))
        .map_err(|e| Error::from(e).context("reading a pipe"))?;
    Ok((receiver, writer))
}

fn writer_stdio(writer: &io::PipeWriter) -> Result<Stdio, Error> {
    Ok(Stdio::from(writer.try_clone().map_err(|e| Error::from(e).context("duplicating a pipe"))?))
}

/// Output arriving in pieces (from a process, a remote command, an API's
/// stream), logged a line at a time as lines complete: a line longer than
/// 64 KiB is logged in pieces, and what is left at the end is logged by
/// [`finish`](LogLines::finish) (or when dropped).
///
/// ```
/// # use deployer_core::{Config, Context};
/// # let dir = std::env::temp_dir().join(format!("log-lines-doc-{}", std::process::id()));
/// # let ctx = Context::open(&dir, Config::default()).unwrap();
/// let job = ctx.jobs.create("demo", "demo").unwrap();
/// let mut out = job.lines();
/// out.push(b"hello, ");
/// out.push(b"world\nand more");
/// out.finish();
/// let (log, _) = ctx.jobs.read_log(job.id(), 0, 1 << 20).unwrap();
/// let log = String::from_utf8(log).unwrap();
/// assert!(log.contains(": hello, world\n") && log.contains(": and more\n"));
/// # job.finish();
/// ```
pub struct LogLines {
    job: Job,
    line: Vec<u8>,
}

impl LogLines {
    /// Adds `bytes`, logging every line they complete.
    pub fn push(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let room = MAX_LINE - self.line.len();
            let end = bytes.iter().take(room).position(|&b| b == b'\n');
            match end {
                Some(i) => {
                    self.line.extend_from_slice(&bytes[..i]);
                    bytes = &bytes[i + 1..];
                    self.flush();
                }
                None => {
                    let n = room.min(bytes.len());
                    self.line.extend_from_slice(&bytes[..n]);
                    bytes = &bytes[n..];
                    if self.line.len() == MAX_LINE {
                        self.flush_piece();
                    }
                }
            }
        }
    }

    /// Logs the unfinished last line, if any.
    pub fn finish(mut self) {
        if !self.line.is_empty() {
            self.flush();
        }
    }

    fn flush(&mut self) {
        let text = String::from_utf8_lossy(&self.line);
        self.job.log(&text);
        self.line.clear();
    }

    /// Logs a piece of a line too long for one: secrets are scrubbed from
    /// the whole piece first, and its last bytes (as many as the longest
    /// secret, less one) are kept for the next piece, so a secret that
    /// straddles the cut is still seen whole. The cut falls between
    /// characters.
    fn flush_piece(&mut self) {
        let scrubbed = crate::secret::scrub_bytes(&self.line);
        let keep = crate::secret::longest_secret().saturating_sub(1).min(scrubbed.len() / 2);
        let mut cut = scrubbed.len() - keep;
        let mut back = 0;
        while cut > 0 && cut < scrubbed.len() && back < 3 && (scrubbed[cut] & 0b1100_0000) == 0b1000_0000 {
            cut -= 1;
            back += 1;
        }
        if cut == 0 {
            cut = scrubbed.len() - keep;
        }
        self.job.log(&String::from_utf8_lossy(&scrubbed[..cut]));
        self.line = scrubbed[cut..].to_vec();
    }
}

impl Drop for LogLines {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.flush();
        }
    }
}

/// Reads `stream`, logging each line, and returns what it read if
/// `capture` (else an empty string).
async fn pump(job: Job, mut stream: impl AsyncRead + Unpin, capture: bool) -> String {
    let mut lines = job.lines();
    let mut captured = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                job.log(&format!("(reading the output failed: {e})"));
                break;
            }
        };
        if capture {
            captured.extend_from_slice(&buf[..n]);
        }
        lines.push(&buf[..n]);
    }
    lines.finish();
    String::from_utf8_lossy(&captured).into_owned()
}

/// A started process and what it is, for messages.
struct Spawned {
    child: Child,
    what: String,
}

impl Job {
    /// A line splitter logging to this job: see [`LogLines`].
    pub fn lines(&self) -> LogLines {
        LogLines { job: self.clone(), line: Vec::new() }
    }

    /// Runs `cmd`, logging "Exec: …" and its output (stdout and stderr, in
    /// the order it wrote them) to the job's log. Fails if it exits with a
    /// non-zero status or a signal ([`ErrorKind::Exit`]), if it cannot be
    /// started ([`ErrorKind::Io`]), or if the job is cancelled: the process
    /// then gets SIGTERM, and SIGKILL 5 s later, and the error says which
    /// signal stopped it after how long.
    pub async fn exec(&self, cmd: &mut Command) -> Result<(), Error> {
        let (log, writer) = log_pipe()?;
        cmd.stdin(Stdio::null()).stdout(writer_stdio(&writer)?).stderr(Stdio::from(writer));
        let spawned = self.spawn(cmd)?;
        self.supervise(vec![spawned], pump(self.clone(), log, false)).await.map(|_| ())
    }

    /// Like [`Job::exec`], with `input` written to the process's standard
    /// input (then closed).
    pub async fn exec_with_input(
        &self,
        cmd: &mut Command,
        mut input: impl AsyncRead + Send + Unpin + 'static,
    ) -> Result<(), Error> {
        let (log, writer) = log_pipe()?;
        cmd.stdin(Stdio::piped()).stdout(writer_stdio(&writer)?).stderr(Stdio::from(writer));
        let mut spawned = self.spawn(cmd)?;
        let mut stdin = spawned.child.stdin.take().expect("stdin is piped");
        let job = self.clone();
        let feed = tokio::spawn(async move {
            if let Err(e) = tokio::io::copy(&mut input, &mut stdin).await {
                // The process may have exited without reading it all.
                if e.kind() != io::ErrorKind::BrokenPipe {
                    job.log(&format!("(writing the input failed: {e})"));
                }
            }
            let _ = stdin.shutdown().await;
        });
        let result = self.supervise(vec![spawned], pump(self.clone(), log, false)).await;
        feed.abort();
        result.map(|_| ())
    }

    /// Runs `producer | consumer`: the producer's standard output is the
    /// consumer's standard input (`git archive … | docker build -`). Both
    /// processes' other output goes to the log, in order. Fails if either
    /// fails, naming it.
    pub async fn exec_pipe(&self, producer: &mut Command, consumer: &mut Command) -> Result<(), Error> {
        let (log, writer) = log_pipe()?;
        let (data_in, data_out) = io::pipe().map_err(|e| Error::from(e).context("creating a pipe"))?;
        producer.stdin(Stdio::null()).stdout(Stdio::from(data_out)).stderr(writer_stdio(&writer)?);
        consumer.stdin(Stdio::from(data_in)).stdout(writer_stdio(&writer)?).stderr(Stdio::from(writer));
        let first = self.spawn(producer)?;
        let second = match self.spawn(consumer) {
            Ok(s) => s,
            Err(e) => {
                let mut first = first;
                let _ = first.child.start_kill();
                return Err(e);
            }
        };
        self.supervise(vec![first, second], pump(self.clone(), log, false)).await.map(|_| ())
    }

    /// Like [`Job::exec`], but also returns what the process wrote to its
    /// standard output (which is logged too, as is its standard error).
    pub async fn check_output(&self, cmd: &mut Command) -> Result<String, Error> {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut spawned = self.spawn(cmd)?;
        let stdout = spawned.child.stdout.take().expect("stdout is piped");
        let stderr = spawned.child.stderr.take().expect("stderr is piped");
        let job = self.clone();
        let output = async move {
            let (out, _) = tokio::join!(pump(job.clone(), stdout, true), pump(job, stderr, false));
            out
        };
        self.supervise(vec![spawned], output).await
    }

    /// Starts `cmd` and hands its standard output over as a stream (a tar
    /// build context for an API, say); its standard error goes to the log.
    /// Read the stream to its end, then call [`OutputStream::finish`] for the
    /// exit status. Dropping the stream kills the process.
    pub fn stream_output(&self, cmd: &mut Command) -> Result<OutputStream, Error> {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut spawned = self.spawn(cmd)?;
        let stdout = spawned.child.stdout.take().expect("stdout is piped");
        let stderr = spawned.child.stderr.take().expect("stderr is piped");
        let errors = tokio::spawn(pump(self.clone(), stderr, false));
        Ok(OutputStream { child: spawned.child, stdout, what: spawned.what, job: self.clone(), errors })
    }

    /// Starts `cmd` after logging it, then drops the command's copies of the
    /// pipe ends (so that reading sees the end of the output).
    fn spawn(&self, cmd: &mut Command) -> Result<Spawned, Error> {
        let what = describe(cmd);
        self.log(&format!("Exec: {what}"));
        if let Some(e) = self.cancellation_error() {
            return Err(e);
        }
        let program = program(cmd);
        let spawned = cmd.kill_on_drop(true).spawn();
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        let child = spawned.map_err(|e| {
            let hint =
                if e.kind() == io::ErrorKind::NotFound { format!(" (is {program} installed?)") } else { String::new() };
            let err = Error::from(e);
            let err = err.with_message(format!("cannot run {program}: {}{hint}", err.message()));
            self.log(err.message());
            err
        })?;
        Ok(Spawned { child, what })
    }

    /// Waits for `children` to exit while `output` is read, stopping them if
    /// the job is cancelled. Returns what `output` captured, or the error of
    /// the first child that failed.
    async fn supervise(
        &self,
        children: Vec<Spawned>,
        output: impl Future<Output = String> + Send + 'static,
    ) -> Result<String, Error> {
        let started = Instant::now();
        let reader = tokio::spawn(output);
        let mut running = Vec::new();
        let mut waits = Vec::new();
        for Spawned { mut child, what } in children {
            let done = Arc::new(AtomicBool::new(false));
            running.push((child.id(), done.clone()));
            waits.push((
                what,
                tokio::spawn(async move {
                    let status = child.wait().await;
                    done.store(true, Ordering::Release);
                    status
                }),
            ));
        }
        let wait_all = async {
            let mut statuses = Vec::new();
            for (what, wait) in &mut waits {
                let status = wait.await.unwrap_or_else(|e| Err(io::Error::other(e)));
                statuses.push((what.clone(), status));
            }
            statuses
        };
        tokio::pin!(wait_all);
        let mut stopped_with = None;
        let statuses = tokio::select! {
            statuses = &mut wait_all => statuses,
            _ = self.cancelled() => {
                signal_all(&running, rustix::process::Signal::TERM);
                stopped_with = Some(("SIGTERM", started.elapsed()));
                match tokio::time::timeout(GRACE, &mut wait_all).await {
                    Ok(statuses) => statuses,
                    Err(_) => {
                        signal_all(&running, rustix::process::Signal::KILL);
                        stopped_with = Some(("SIGKILL", started.elapsed()));
                        wait_all.await
                    }
                }
            }
        };
        let captured = match tokio::time::timeout(DRAIN, reader).await {
            Ok(Ok(captured)) => captured,
            Ok(Err(_)) => String::new(),
            Err(_) => {
                self.log("(stopped reading the output: the pipe is still open after the process exited)");
                String::new()
            }
        };
        for (what, status) in statuses {
            let status = status.map_err(|e| Error::from(e).context(format!("waiting for {what}")))?;
            if status.success() {
                continue;
            }
            let error = match stopped_with {
                Some((signal, after)) => {
                    let cause = self.cancellation_error().expect("stopped because cancelled");
                    let reason = self.cancelled_reason().unwrap_or_default();
                    Error::new(
                        cause.kind(),
                        format!("Command {what} was stopped with {signal} after {}: {reason}", human_duration(after)),
                    )
                }
                None => exit_error(&what, status),
            };
            self.log(error.message());
            return Err(error);
        }
        Ok(captured)
    }
}

/// A running process's standard output, from [`Job::stream_output`].
pub struct OutputStream {
    child: Child,
    stdout: tokio::process::ChildStdout,
    what: String,
    job: Job,
    errors: tokio::task::JoinHandle<String>,
}

impl AsyncRead for OutputStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.stdout).poll_read(cx, buf)
    }
}

impl OutputStream {
    /// Waits for the process to exit: `Ok` if it succeeded, else its exit
    /// status (or "Cancelled" if the job was cancelled; the process is then
    /// killed).
    pub async fn finish(self) -> Result<(), Error> {
        let OutputStream { mut child, stdout, what, job, errors } = self;
        drop(stdout);
        let status = tokio::select! {
            status = child.wait() => status.map_err(|e| Error::from(e).context(format!("waiting for {what}")))?,
            _ = job.cancelled() => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(job.cancellation_error().expect("cancelled"));
            }
        };
        let _ = errors.await;
        if status.success() {
            return Ok(());
        }
        let error = exit_error(&what, status);
        job.log(error.message());
        Err(error)
    }
}

/// Sends `signal` to the processes that have not exited yet.
fn signal_all(running: &[(Option<u32>, Arc<AtomicBool>)], signal: rustix::process::Signal) {
    for (pid, done) in running {
        if done.load(Ordering::Acquire) {
            continue;
        }
        let pid = pid.and_then(|p| i32::try_from(p).ok()).and_then(rustix::process::Pid::from_raw);
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, signal);
        }
    }
}

fn exit_error(what: &str, status: ExitStatus) -> Error {
    use std::os::unix::process::ExitStatusExt;
    let (code, signal) = (status.code(), status.signal());
    let message = match (code, signal) {
        (Some(127), _) => format!("Command {what} exited with status 127 (is it installed?)"),
        (Some(code), _) => format!("Command {what} exited with status {code}"),
        (None, Some(sig)) => format!("Command {what} was killed by {}", signal_name(sig)),
        (None, None) => format!("Command {what} failed"),
    };
    Error::new(ErrorKind::Exit { code, signal }, message)
}
