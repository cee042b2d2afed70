//! Pools: a limited number of slots, handed out high priority first.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// Which queue of a pool a job waits in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Served before any low-priority waiter (new work).
    High,
    /// Served when no high-priority job waits (background refreshes).
    Low,
}

struct State {
    in_use: usize,
    high: VecDeque<oneshot::Sender<PoolGuard>>,
    low: VecDeque<oneshot::Sender<PoolGuard>>,
    total_wait: Duration,
    served: u64,
}

struct Inner {
    label: String,
    capacity: usize,
    state: Mutex<State>,
}

/// A pool of `capacity` slots (for example, concurrent builds on one host).
/// Cloning gives another handle on the same pool.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pool({}, {})", self.inner.label, self.inner.capacity)
    }
}

/// A slot of a pool; dropping it frees the slot for the next waiter.
pub struct PoolGuard {
    pool: Option<Arc<Inner>>,
}

impl fmt::Debug for PoolGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PoolGuard({})", self.pool.as_ref().map_or("", |p| p.label.as_str()))
    }
}

impl Drop for PoolGuard {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            release(&pool);
        }
    }
}

fn release(pool: &Arc<Inner>) {
    let mut state = pool.state.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let next = state.high.pop_front().or_else(|| state.low.pop_front());
        match next {
            // The slot passes to the waiter (in_use is unchanged). If the
            // waiter has gone, the guard comes back and we try the next one.
            Some(waiter) => match waiter.send(PoolGuard { pool: Some(pool.clone()) }) {
                Ok(()) => return,
                Err(mut unwanted) => {
                    unwanted.pool = None; // not a slot of its own: don't release again
                }
            },
            None => {
                state.in_use -= 1;
                return;
            }
        }
    }
}

impl Pool {
    /// A pool named `label` with `capacity` slots.
    pub fn new(label: &str, capacity: usize) -> Pool {
        Pool {
            inner: Arc::new(Inner {
                label: label.to_owned(),
                capacity,
                state: Mutex::new(State {
                    in_use: 0,
                    high: VecDeque::new(),
                    low: VecDeque::new(),
                    total_wait: Duration::ZERO,
                    served: 0,
                }),
            }),
        }
    }

    /// The pool's name.
    pub fn label(&self) -> &str {
        &self.inner.label
    }

    /// The number of slots.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Slots in use now.
    pub fn in_use(&self) -> usize {
        self.lock().in_use
    }

    /// Jobs waiting now (high, low).
    pub fn queue_lengths(&self) -> (usize, usize) {
        let s = self.lock();
        (s.high.iter().filter(|w| !w.is_closed()).count(), s.low.iter().filter(|w| !w.is_closed()).count())
    }

    /// Total time jobs waited for a slot, and how many were served.
    pub fn wait_time(&self) -> (Duration, u64) {
        let s = self.lock();
        (s.total_wait, s.served)
    }

    /// Whether an `acquire` now would have to wait.
    pub fn would_wait(&self) -> bool {
        let s = self.lock();
        s.in_use >= self.inner.capacity || !s.high.is_empty() || !s.low.is_empty()
    }

    /// A slot now, if one is free and nobody is waiting for one.
    pub fn try_acquire(&self) -> Option<PoolGuard> {
        let mut s = self.lock();
        if s.in_use < self.inner.capacity && s.high.iter().all(|w| w.is_closed()) && s.low.iter().all(|w| w.is_closed())
        {
            s.in_use += 1;
            s.served += 1;
            return Some(PoolGuard { pool: Some(self.inner.clone()) });
        }
        None
    }

    /// Waits for a slot. Dropping the future before it completes leaves the
    /// queue (a cancelled job gives up its place).
    pub async fn acquire(&self, priority: Priority) -> PoolGuard {
        let start = Instant::now();
        let rx = {
            let mut s = self.lock();
            if s.in_use < self.inner.capacity && s.high.is_empty() && s.low.is_empty() {
                s.in_use += 1;
                s.served += 1;
                return PoolGuard { pool: Some(self.inner.clone()) };
            }
            let (tx, rx) = oneshot::channel();
            match priority {
                Priority::High => s.high.push_back(tx),
                Priority::Low => s.low.push_back(tx),
            }
            rx
        };
        let guard = rx.await.expect("a pool never drops a waiter's sender without sending");
        let mut s = self.lock();
        s.total_wait += start.elapsed();
        s.served += 1;
        guard
    }
}
