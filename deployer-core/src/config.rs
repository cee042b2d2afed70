//! Confirmation levels and the engine-wide configuration operators change at
//! run time.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// How risky an operation is. Operations at or above the configured
/// threshold wait for an operator's confirmation.
///
/// Plugins use: git clone and docker pull `MostlyHarmless`; docker build and
/// run `Average`; GitHub, Slack and SSH `AboveAverage`; docker push and
/// service updates `Dangerous`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Level {
    /// Reads only (a status query).
    Harmless,
    /// Changes only local caches (a clone, a pull).
    MostlyHarmless,
    /// Uses resources, changes nothing outside (a build, a test run).
    Average,
    /// Visible outside, easily undone (a status on GitHub, a Slack post).
    AboveAverage,
    /// Changes what users get (a push, a service update).
    Dangerous,
}

impl Level {
    /// Every level, lowest first.
    pub const ALL: [Level; 5] =
        [Level::Harmless, Level::MostlyHarmless, Level::Average, Level::AboveAverage, Level::Dangerous];

    /// The level's name, as used on the command line and in the web UI.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Harmless => "harmless",
            Level::MostlyHarmless => "mostly-harmless",
            Level::Average => "average",
            Level::AboveAverage => "above-average",
            Level::Dangerous => "dangerous",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown level name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownLevel(pub String);

impl fmt::Display for UnknownLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown confirmation level {:?} (expected one of: none, harmless, mostly-harmless, average, above-average, dangerous)", self.0)
    }
}

impl std::error::Error for UnknownLevel {}

impl FromStr for Level {
    type Err = UnknownLevel;
    fn from_str(s: &str) -> Result<Level, UnknownLevel> {
        Level::ALL.into_iter().find(|l| l.as_str() == s).ok_or_else(|| UnknownLevel(s.to_owned()))
    }
}

/// Engine-wide settings that can change while the deployer runs.
///
/// Cloning gives another handle on the same settings.
#[derive(Clone)]
pub struct Config {
    confirm: Arc<watch::Sender<Option<Level>>>,
}

impl Default for Config {
    fn default() -> Self {
        Config::new(None)
    }
}

impl Config {
    /// A configuration where operations at or above `confirm` need approval
    /// (`None`: nothing does).
    pub fn new(confirm: Option<Level>) -> Config {
        Config { confirm: Arc::new(watch::Sender::new(confirm)) }
    }

    /// The current threshold.
    pub fn confirm(&self) -> Option<Level> {
        *self.confirm.borrow()
    }

    /// Changes the threshold; waiting operations re-check it.
    pub fn set_confirm(&self, level: Option<Level>) {
        self.confirm.send_replace(level);
    }

    /// Whether an operation at `level` may run without approval now.
    pub fn is_confirmed(&self, level: Level) -> bool {
        self.confirm().is_none_or(|threshold| level < threshold)
    }

    /// Waits until an operation at `level` may run.
    pub async fn confirmed(&self, level: Level) {
        let mut rx = self.confirm.subscribe();
        let _ = rx.wait_for(|t| t.is_none_or(|threshold| level < threshold)).await;
    }

    /// A receiver that sees every threshold change.
    pub fn subscribe(&self) -> watch::Receiver<Option<Level>> {
        self.confirm.subscribe()
    }

    /// Clears the threshold after `after`, unless it was changed in between.
    pub fn auto_release(&self, after: Duration) -> tokio::task::JoinHandle<()> {
        let config = self.clone();
        let initial = self.confirm();
        let mut rx = self.confirm.subscribe();
        tokio::spawn(async move {
            rx.mark_unchanged();
            tokio::select! {
                _ = tokio::time::sleep(after) => {
                    if config.confirm() == initial {
                        config.set_confirm(None);
                    }
                }
                _ = rx.changed() => {}
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_is_inclusive() {
        let c = Config::new(Some(Level::Average));
        assert!(c.is_confirmed(Level::MostlyHarmless));
        assert!(!c.is_confirmed(Level::Average));
        assert!(!c.is_confirmed(Level::Dangerous));
        c.set_confirm(None);
        assert!(c.is_confirmed(Level::Dangerous));
    }

    #[test]
    fn level_names_round_trip() {
        for l in Level::ALL {
            assert_eq!(l.as_str().parse::<Level>(), Ok(l));
        }
        let err = "extreme".parse::<Level>().unwrap_err();
        assert!(err.to_string().contains("\"extreme\""));
    }

    #[tokio::test(start_paused = true)]
    async fn auto_release_clears_an_unchanged_threshold() {
        let c = Config::new(Some(Level::Dangerous));
        c.auto_release(Duration::from_secs(60)).await.unwrap();
        assert_eq!(c.confirm(), None);
        let c = Config::new(Some(Level::Dangerous));
        let h = c.auto_release(Duration::from_secs(60));
        c.set_confirm(Some(Level::Average));
        h.await.unwrap();
        assert_eq!(c.confirm(), Some(Level::Average));
    }
}
