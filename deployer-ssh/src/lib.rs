//! SSH for the deployer: commands run on hosts on a schedule, and tunnels
//! to sockets on hosts, over connections made once and reused — with russh,
//! no `ssh` binary needed.
//!
//! - [`Host`]: where and as whom (a destination or an `ssh_config` alias),
//!   with a key file (optionally encrypted, its passphrase a `Secret`) or
//!   an SSH agent; the server's key checked against a `known_hosts` file
//!   (plain and hashed entries) or a pinned key. An unknown or changed key
//!   is refused; learning unknown hosts is only done when asked for.
//! - [`Ssh::run`]: the stage `ssh <host>: <key>`, a cached operation that
//!   runs a command when it changes or its schedule expires (a failure is
//!   tried again on the schedule); output streams into the job's log, exit
//!   status 0 is success; one run at a time per key; cancelling hangs up.
//! - [`Ssh::exec`]: one command inside another operation's job (a deploy
//!   script), the same way.
//! - [`Ssh::tunnel`]: a local Unix socket (or TCP port) forwarded to a Unix
//!   socket on the host, such as `/var/run/docker.sock`.
//!
//! ```no_run
//! use std::time::Duration;
//! use deployer_core::cache::Schedule;
//! use deployer_core::{Config, Context, Current, Engine};
//! use deployer_ssh::{Host, Ssh};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let ctx = Context::open("/var/lib/deployer".as_ref(), Config::default())?;
//! let ssh = Ssh::new(&ctx);
//! // watch.ocaml.org's backups: once a month.
//! let host = Host::from_user_config("watch.ocaml.org")?;
//! let monthly = Schedule::every(Duration::from_secs(30 * 24 * 3600));
//! let backup = ssh.run(&host, "tarsnap", Current::constant(vec!["./tarsnap-backup.sh".to_string()]), monthly);
//! Engine::new(backup).run().await;
//! # Ok(()) }
//! ```

mod config;
mod connection;
mod error;
mod exec;
mod host;
mod known_hosts;
mod pattern;
mod run;
mod tunnel;

/// Entry points for the fuzz targets in `fuzz/` (the `fuzzing` feature).
/// Not part of the API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    use russh::keys::ssh_key::PublicKey;

    /// What the `known_hosts` text says of `key` for `host:port`, as
    /// text: `known`, `changed <line>`, `revoked <line>` or `unknown`.
    pub fn known_hosts_check(text: &str, host: &str, port: u16, key: &PublicKey) -> String {
        match crate::known_hosts::check(text, host, port, key) {
            crate::known_hosts::Verdict::Known => "known".to_owned(),
            crate::known_hosts::Verdict::Changed(l) => format!("changed {l}"),
            crate::known_hosts::Verdict::Revoked(l) => format!("revoked {l}"),
            crate::known_hosts::Verdict::Unknown => "unknown".to_owned(),
        }
    }

    /// The first line listing a key for `host:port`, and the key types
    /// listed for it.
    pub fn known_hosts_listed(text: &str, host: &str, port: u16) -> (Option<usize>, usize) {
        (
            crate::known_hosts::first_listed(text, host, port),
            crate::known_hosts::known_algorithms(text, host, port).len(),
        )
    }

    /// The line that would list `key` for `host:port`.
    pub fn known_hosts_line(host: &str, port: u16, key: &PublicKey) -> Option<String> {
        crate::known_hosts::line_for(host, port, key).ok()
    }

    /// OpenSSH's wildcard match (`*`, `?`), with letters folded or not.
    pub fn wildcard(pattern: &[u8], name: &[u8], fold: bool) -> bool {
        if fold {
            crate::pattern::wildcard(pattern, name)
        } else {
            crate::pattern::wildcard_exact(pattern, name)
        }
    }
}

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use deployer_core::cache::{OutputCache, Schedule};
use deployer_core::{Context, Current, Error, Job, Level};

pub use error::SshError;
pub use exec::command_line;
pub use host::{Host, Identity};
pub use known_hosts::HostKeyPolicy;
pub use run::RunKey;
pub use tunnel::{LocalEnd, Tunnel};

use connection::Pool;
use run::SshRun;

/// SSH for a deployer: the connections (one per host, reused), and the
/// cache of scheduled runs. Cloning gives another handle on the same ones.
#[derive(Clone)]
pub struct Ssh {
    pool: Arc<Pool>,
    hosts: Arc<RwLock<HashMap<String, Host>>>,
    runs: OutputCache<SshRun>,
    options: RunOptions,
}

/// Options for [`Ssh::with`]: the confirmation level and time limit of
/// runs, and whether commands get a terminal.
#[derive(Clone, Copy, Debug)]
pub struct RunOptions {
    /// How risky a run is (`AboveAverage` by default, as in OCurrent).
    pub level: Level,
    /// A run still going after this long is hung up on (none by default).
    pub timeout: Option<Duration>,
    /// Run commands with a pseudo-terminal (on by default), as `ssh -t`
    /// does: a cancelled or timed-out command then gets SIGHUP when its
    /// channel closes. Standard error arrives merged with standard output
    /// (both go to the job's log anyway). Without one, a cancelled command
    /// is only signalled where the server accepts signal requests, and
    /// may keep running.
    pub pty: bool,
}

impl Default for RunOptions {
    fn default() -> RunOptions {
        RunOptions { level: Level::AboveAverage, timeout: None, pty: true }
    }
}

/// What every `Ssh` of one context shares (kept with
/// [`Context::shared`]).
#[derive(Clone)]
struct SharedConnections(Arc<Pool>, Arc<RwLock<HashMap<String, Host>>>);

impl Ssh {
    /// SSH with runs at level `AboveAverage` and no time limit, recorded
    /// in `ctx`'s store.
    pub fn new(ctx: &Context) -> Ssh {
        Ssh::with(ctx, RunOptions::default())
    }

    /// SSH whose runs have these options. Every `Ssh` made from one
    /// context (or its clones) shares one connection pool and one table of
    /// hosts, whatever its options: one connection per destination.
    pub fn with(ctx: &Context, options: RunOptions) -> Ssh {
        let SharedConnections(pool, hosts) =
            ctx.shared(|| SharedConnections(Arc::new(Pool::default()), Arc::new(RwLock::new(HashMap::new()))));
        let publisher = SshRun {
            pool: pool.clone(),
            hosts: hosts.clone(),
            level: options.level,
            timeout: options.timeout,
            pty: options.pty,
        };
        Ssh { pool, hosts, runs: OutputCache::new(ctx, publisher), options }
    }

    /// The stage `ssh <host>: <key>`: runs `command` (its arguments, quoted
    /// for the remote shell) on `host` when it changes, and again when
    /// `schedule` expires. Runs are keyed by the host's destination and
    /// `key`: one at a time per key. A failed run is tried again on its
    /// schedule, or sooner if the schedule says so
    /// ([`Schedule::retry_failures_after`]: a monthly backup retried after
    /// an hour).
    pub fn run(
        &self,
        host: &Host,
        key: &str,
        command: impl Into<Current<Vec<String>>>,
        schedule: Schedule,
    ) -> Current<()> {
        let destination = host.destination();
        self.hosts.write().unwrap_or_else(|e| e.into_inner()).insert(destination.clone(), host.clone());
        let label = format!("ssh {}: {key}", host.name());
        self.runs.set_scheduled(&label, RunKey { host: destination, key: key.to_owned() }, command, schedule)
    }

    /// Runs `args` on `host` as part of `job` (another operation's), the
    /// way [`Ssh::run`] does: output in the job's log, `Ok` on status 0,
    /// a hang-up if the job is cancelled.
    pub async fn exec(&self, job: &Job, host: &Host, args: &[String]) -> Result<(), Error> {
        exec::exec(&self.pool, job, host, args, self.options.pty).await
    }

    /// Forwards the Unix socket `local` (created with mode 0600; it must not
    /// exist) to the Unix socket `remote` on `host`. Fails now if the host
    /// cannot be reached.
    pub async fn tunnel(&self, host: &Host, local: &Path, remote: &str) -> Result<Tunnel, SshError> {
        tunnel::unix(self.pool.clone(), host.clone(), local, remote).await
    }

    /// Forwards a free port on 127.0.0.1 to the Unix socket `remote` on
    /// `host`. Any local user can connect to it: prefer [`Ssh::tunnel`]
    /// for sockets that grant power (Docker's).
    pub async fn tunnel_tcp(&self, host: &Host, remote: &str) -> Result<Tunnel, SshError> {
        tunnel::tcp(self.pool.clone(), host.clone(), remote).await
    }
}

#[cfg(test)]
mod shared_tests {
    use super::*;

    /// Issue 23 (the API): every `Ssh` of one context, whatever its run
    /// options, shares one connection pool and host table.
    #[test]
    fn every_ssh_of_one_context_shares_its_connections() {
        let dir = std::env::temp_dir().join(format!("deployer-ssh-shared-{}", std::process::id()));
        let ctx = Context::open(&dir, deployer_core::Config::default()).unwrap();
        let a = Ssh::new(&ctx);
        let b = Ssh::with(&ctx, RunOptions { timeout: Some(Duration::from_secs(5)), ..RunOptions::default() });
        assert!(Arc::ptr_eq(&a.pool, &b.pool) && Arc::ptr_eq(&a.hosts, &b.hosts));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
