//! Running one command on a host as part of a job: output streamed into
//! the job's log as it arrives, the exit status as the result, and a
//! hang-up when the job is cancelled.

use std::time::Duration;

use deployer_core::{Error, ErrorKind, Job};
use russh::{ChannelMsg, Pty, Sig};

use crate::connection::{describe, Pool};
use crate::error::SshError;
use crate::host::Host;

/// How long a cancelled command may take to go after its hang-up.
const GRACE: Duration = Duration::from_secs(5);

/// `args` as one command line for the remote shell: each argument quoted
/// unless it is plain (letters, digits and `-_./=:@%+,`), so that the
/// remote command receives exactly these arguments.
///
/// ```
/// let line = deployer_ssh::command_line(&["./backup.sh".into(), "it's".into(), "a b".into()]);
/// assert_eq!(line, r#"./backup.sh 'it'\''s' 'a b'"#);
/// ```
pub fn command_line(args: &[String]) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:@%+,".contains(c);
    args.iter()
        .map(
            |a| {
                if !a.is_empty() && a.chars().all(plain) {
                    a.clone()
                } else {
                    format!("'{}'", a.replace('\'', r"'\''"))
                }
            },
        )
        .collect::<Vec<_>>()
        .join(" ")
}

/// The number of a signal SSH names.
fn signal_number(sig: &Sig) -> Option<i32> {
    Some(match sig {
        Sig::HUP => 1,
        Sig::INT => 2,
        Sig::QUIT => 3,
        Sig::ILL => 4,
        Sig::ABRT => 6,
        Sig::FPE => 8,
        Sig::KILL => 9,
        Sig::USR1 => 10,
        Sig::SEGV => 11,
        Sig::PIPE => 13,
        Sig::ALRM => 14,
        Sig::TERM => 15,
        Sig::Custom(_) => return None,
    })
}

fn signal_text(sig: &Sig) -> String {
    match sig {
        Sig::Custom(name) => format!("SIG{name}"),
        other => format!("SIG{other:?}"),
    }
}

/// Runs `args` on `host`, logging to `job`. `Ok` if it exits with status
/// 0; otherwise an error of kind [`ErrorKind::Exit`] naming the status or
/// the signal. When `job` is cancelled the channel is closed (and a SIGHUP
/// request sent, which OpenSSH refuses in many setups); with `pty`, the
/// closing terminal hangs up on the command, as with `ssh -t`. The error is
/// then the cancellation's.
pub(crate) async fn exec(pool: &Pool, job: &Job, host: &Host, args: &[String], pty: bool) -> Result<(), Error> {
    if args.is_empty() {
        return Err(Error::msg(format!("no command to run on {}", host.name())));
    }
    let line = command_line(args);
    let what = format!("`{line}` on {}", host.name());
    if let Some(e) = job.cancellation_error() {
        return Err(e);
    }
    let log = |m: &str| job.log(m);
    let mut channel =
        pool.with_channel(host, &log, |session| async move { session.channel_open_session().await }).await?;
    job.log(&format!("Exec on {}: {line}", host.destination()));
    let session_error =
        |e: russh::Error| Error::from(SshError::Session { host: host.destination(), why: describe(&e) });
    if pty {
        // A terminal for the command, so that closing the channel hangs up
        // on it; no echo and no CR before LF, so the log reads as without.
        let modes = [(Pty::ECHO, 0), (Pty::ONLCR, 0)];
        channel.request_pty(false, "dumb", 200, 50, 0, 0, &modes).await.map_err(session_error)?;
    }
    channel.exec(true, line.as_bytes()).await.map_err(session_error)?;
    let (mut stdout, mut stderr) = (job.lines(), job.lines());
    let (mut status, mut signal) = (None, None);
    let cancelled = job.cancelled();
    tokio::pin!(cancelled);
    loop {
        tokio::select! {
            msg = channel.wait() => match msg {
                Some(ChannelMsg::Data { data }) => stdout.push(&data),
                Some(ChannelMsg::ExtendedData { data, .. }) => stderr.push(&data),
                Some(ChannelMsg::ExitStatus { exit_status }) => status = Some(exit_status),
                Some(ChannelMsg::ExitSignal { signal_name, .. }) => signal = Some(signal_name),
                Some(ChannelMsg::Failure) => {
                    return Err(Error::msg(format!("{} refused to run {what}", host.destination())));
                }
                Some(ChannelMsg::Close) | None => break,
                Some(_) => {}
            },
            reason = &mut cancelled => {
                job.log(&format!("Hanging up on {what} ({reason})"));
                // SIGHUP for the command, then the channel closes: the
                // server hangs up on what is left.
                let _ = channel.signal(Sig::HUP).await;
                let _ = channel.eof().await;
                let _ = channel.close().await;
                let drain = async {
                    while let Some(msg) = channel.wait().await {
                        match msg {
                            ChannelMsg::Data { data } => stdout.push(&data),
                            ChannelMsg::ExtendedData { data, .. } => stderr.push(&data),
                            ChannelMsg::Close => break,
                            _ => {}
                        }
                    }
                };
                let _ = tokio::time::timeout(GRACE, drain).await;
                stdout.finish();
                stderr.finish();
                let error = job.cancellation_error().unwrap_or_else(|| Error::new(ErrorKind::Cancelled, "Cancelled"));
                return Err(error);
            }
        }
    }
    stdout.finish();
    stderr.finish();
    let error = match (status, signal) {
        (Some(0), _) => return Ok(()),
        (Some(code), _) => {
            let code = i32::try_from(code).unwrap_or(i32::MAX);
            let hint = if code == 127 { " (is it installed there?)" } else { "" };
            Error::new(
                ErrorKind::Exit { code: Some(code), signal: None },
                format!("Command {what} exited with status {code}{hint}"),
            )
        }
        (None, Some(sig)) => Error::new(
            ErrorKind::Exit { code: None, signal: signal_number(&sig) },
            format!("Command {what} was killed by {}", signal_text(&sig)),
        ),
        (None, None) => Error::msg(format!("the connection to {} closed before {what} finished", host.destination())),
    };
    job.log(error.message());
    Err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_reach_the_remote_shell_intact() {
        let args: Vec<String> = ["echo", "", "$HOME", "a;b", "plain-1.0/x=y"].iter().map(|s| s.to_string()).collect();
        assert_eq!(command_line(&args), r"echo '' '$HOME' 'a;b' plain-1.0/x=y");
    }
}
