//! Running processes as part of a job: output goes to the job's log, and
//! cancelling the job kills the process.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;

use super::Job;
use crate::output::Error;

fn describe(cmd: &Command) -> String {
    let std = cmd.as_std();
    let mut parts = vec![std.get_program().to_string_lossy().into_owned()];
    parts.extend(std.get_args().map(|a| format!("{:?}", a.to_string_lossy())));
    parts.join(" ")
}

async fn pump(job: Job, stream: impl AsyncRead + Unpin, capture: bool) -> String {
    let mut lines = BufReader::new(stream).lines();
    let mut captured = String::new();
    while let Ok(Some(line)) = lines.next_line().await {
        if capture {
            captured.push_str(&line);
            captured.push('\n');
        } else {
            job.log(&line);
        }
    }
    captured
}

impl Job {
    /// Runs `cmd`, logging "Exec: …" and its output (stdout and stderr) to the
    /// job's log. Fails if it exits with a non-zero status or a signal, or if
    /// the job is cancelled (the process is killed).
    pub async fn exec(&self, cmd: &mut Command) -> Result<(), Error> {
        self.run_process(cmd, false).await.map(|_| ())
    }

    /// Like [`Job::exec`], but returns stdout instead of logging it (stderr
    /// is still logged).
    pub async fn check_output(&self, cmd: &mut Command) -> Result<String, Error> {
        self.run_process(cmd, true).await
    }

    async fn run_process(&self, cmd: &mut Command, capture: bool) -> Result<String, Error> {
        let what = describe(cmd);
        self.log(&format!("Exec: {what}"));
        if let Some(reason) = self.cancelled_reason() {
            return Err(Error::msg(format!("Cancelled: {reason}")));
        }
        let program = cmd.as_std().get_program().to_string_lossy().into_owned();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::msg(format!("cannot run {program}: {e} (is {program} installed?)")))?;
        let out = tokio::spawn(pump(self.clone(), child.stdout.take().expect("piped"), capture));
        let err = tokio::spawn(pump(self.clone(), child.stderr.take().expect("piped"), false));
        let status = tokio::select! {
            status = child.wait() => status.map_err(|e| Error::msg(format!("{program}: {e}")))?,
            reason = self.cancelled() => {
                let _ = child.kill().await;
                let _ = err.await;
                return Err(Error::msg(format!("Cancelled: {reason}")));
            }
        };
        let stdout = out.await.unwrap_or_default();
        let _ = err.await;
        if status.success() {
            return Ok(stdout);
        }
        use std::os::unix::process::ExitStatusExt;
        let msg = match (status.code(), status.signal()) {
            (Some(127), _) => format!("Command {what} exited with status 127 (is {program} installed?)"),
            (Some(code), _) => format!("Command {what} exited with status {code}"),
            (None, Some(sig)) => format!("Command {what} failed with signal {sig}"),
            (None, None) => format!("Command {what} failed"),
        };
        self.log(&msg);
        Err(Error::msg(msg))
    }
}
