//! `ssh <host>: <key>` stages: a command run on a host when it changes or
//! its schedule expires.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use deployer_core::cache::Publisher;
use deployer_core::{Error, Job, Level};
use serde::{Deserialize, Serialize};

use crate::connection::Pool;
use crate::host::Host;

/// What a run is for: a host (by destination, `user@host:port`, so that two
/// aliases of one host share their keys) and the user's key (`tarsnap`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RunKey {
    /// `user@host:port`.
    pub host: String,
    /// The user's name for the job.
    pub key: String,
}

/// The publisher behind [`Ssh::run`](crate::Ssh::run).
pub(crate) struct SshRun {
    pub(crate) pool: Arc<Pool>,
    /// The hosts in use, by destination.
    pub(crate) hosts: Arc<RwLock<HashMap<String, Host>>>,
    pub(crate) level: Level,
    pub(crate) timeout: Option<Duration>,
    pub(crate) pty: bool,
}

#[async_trait]
impl Publisher for SshRun {
    const ID: &'static str = "ssh-run";
    type Key = RunKey;
    type Value = Vec<String>;
    type Outcome = ();

    fn describe(&self, key: &RunKey, command: &Vec<String>) -> Option<String> {
        // Named as the pipeline names the host (its alias), like the stage's
        // label; the address is in the log ("Exec on user@host:port: …").
        let hosts = self.hosts.read().unwrap_or_else(|e| e.into_inner());
        let name = hosts.get(&key.host).map_or(key.host.as_str(), |h| h.name());
        Some(format!("ssh {name}: {}: {}", key.key, crate::command_line(command)))
    }
    fn level(&self) -> Level {
        self.level
    }
    fn timeout(&self) -> Option<Duration> {
        self.timeout
    }
    async fn publish(&self, job: &Job, key: &RunKey, command: &Vec<String>) -> Result<(), Error> {
        let host = self.hosts.read().unwrap_or_else(|e| e.into_inner()).get(&key.host).cloned();
        let host = host.ok_or_else(|| Error::msg(format!("no configuration for the host {}", key.host)))?;
        crate::exec::exec(&self.pool, job, &host, command, self.pty).await
    }
}
