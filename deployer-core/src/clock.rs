//! The clock: what time it is, and waiting until a time.
//!
//! Everything in the core that reads the time (store timestamps, job ids and
//! log stamps, schedule expiry, job timeouts) asks a [`Clock`], so tests can
//! use a [`ManualClock`] and move time forward instead of sleeping.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

/// A source of time. Cloning gives another handle on the same clock.
///
/// ```
/// use std::time::Duration;
/// use deployer_core::{Clock, ManualClock};
///
/// let manual = ManualClock::new(1_000);
/// let clock: Clock = manual.clock();
/// manual.advance(Duration::from_secs(2));
/// assert_eq!(clock.now_ms(), 3_000);
/// assert!(Clock::system().now_ms() > 1_700_000_000_000);
/// ```
#[derive(Clone)]
pub struct Clock {
    manual: Option<Arc<watch::Sender<i64>>>,
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.manual {
            None => f.write_str("Clock(system)"),
            Some(now) => write!(f, "Clock(manual at {})", *now.borrow()),
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl Clock {
    /// The system's wall clock.
    pub fn system() -> Clock {
        Clock { manual: None }
    }

    /// The current time in Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        match &self.manual {
            None => Utc::now().timestamp_millis(),
            Some(now) => *now.borrow(),
        }
    }

    /// The current time.
    pub fn now(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.now_ms()).unwrap_or_default()
    }

    /// Waits until the clock reads `at_ms` or later.
    pub async fn sleep_until(&self, at_ms: i64) {
        match &self.manual {
            None => {
                let left = at_ms - self.now_ms();
                if left > 0 {
                    tokio::time::sleep(Duration::from_millis(left as u64)).await;
                }
            }
            Some(now) => {
                let mut rx = now.subscribe();
                // The sender lives as long as this clock does.
                let _ = rx.wait_for(|t| *t >= at_ms).await;
            }
        }
    }

    /// Waits for `duration` to pass on this clock.
    pub async fn sleep(&self, duration: Duration) {
        let at = self.now_ms().saturating_add(duration.as_millis().min(i64::MAX as u128) as i64);
        self.sleep_until(at).await;
    }
}

/// A clock that moves only when told to, for tests: expiry and timeouts
/// happen when [`advance`](ManualClock::advance) passes them, without
/// sleeping.
#[derive(Clone, Debug)]
pub struct ManualClock {
    now: Arc<watch::Sender<i64>>,
}

impl ManualClock {
    /// A clock reading `start_ms` (Unix milliseconds).
    pub fn new(start_ms: i64) -> ManualClock {
        ManualClock { now: Arc::new(watch::Sender::new(start_ms)) }
    }

    /// A [`Clock`] reading this manual clock.
    pub fn clock(&self) -> Clock {
        Clock { manual: Some(self.now.clone()) }
    }

    /// Moves time forward by `by`, waking whatever waits for a time now passed.
    pub fn advance(&self, by: Duration) {
        let by = by.as_millis().min(i64::MAX as u128) as i64;
        self.now.send_modify(|t| *t = t.saturating_add(by));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_clock_wakes_sleepers_when_advanced_past_them() {
        use futures_util::FutureExt;
        let manual = ManualClock::new(0);
        let clock = manual.clock();
        manual.advance(Duration::from_secs(59));
        // Polled once: not due yet (the check is immediate, no sleeping).
        assert!(clock.sleep_until(60_000).now_or_never().is_none());
        let sleeper = tokio::spawn({
            let clock = clock.clone();
            async move { clock.sleep_until(60_000).await }
        });
        manual.advance(Duration::from_secs(1));
        assert!(clock.sleep_until(60_000).now_or_never().is_some());
        tokio::time::timeout(Duration::from_secs(5), sleeper).await.unwrap().unwrap();
        assert_eq!(clock.now_ms(), 60_000);
    }
}
