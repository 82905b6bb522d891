//! [`Latch`]: a queue one thread fills and another waits on, with deadlines.
//!
//! Every blocking wait in the master goes through here, so every one of them
//! has a deadline and wakes at once when the latch is closed (the stream
//! died): no call can hang on a dead context.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Instant;

/// Why a wait ended without an item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitError {
    /// The deadline passed.
    Timeout,
    /// The latch was closed and is empty.
    Closed,
}

/// How long a waiter spins before sleeping on the condvar. A reply from a
/// local agent arrives in about 10 µs; being woken from a futex sleep costs
/// 20–40 µs more on a VM (the idle vCPU must be kicked awake). Measured with
/// `mito ping local`: median 35 µs without the spin, 9 µs with it (together
/// with the agent's own poll window, see `agent::external_context`). Past
/// this, the waiter sleeps and costs nothing.
pub const SPIN: std::time::Duration = std::time::Duration::from_micros(50);

#[derive(Debug)]
struct State<T> {
    items: VecDeque<T>,
    closed: bool,
    /// Threads asleep on the condvar: `put` skips the wake-up syscall when 0.
    sleepers: usize,
}

/// A multi-producer queue with blocking, deadline-bounded `get`.
#[derive(Debug)]
pub struct Latch<T> {
    state: Mutex<State<T>>,
    cond: Condvar,
    /// Items queued or closed, readable without the lock (for spinning).
    signalled: AtomicBool,
}

impl<T> Default for Latch<T> {
    fn default() -> Self {
        Latch {
            state: Mutex::new(State { items: VecDeque::new(), closed: false, sleepers: 0 }),
            cond: Condvar::new(),
            signalled: AtomicBool::new(false),
        }
    }
}

impl<T> Latch<T> {
    /// An empty, open latch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an item and wakes a waiter; returns false if closed (item dropped).
    pub fn put(&self, item: T) -> bool {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if s.closed {
            return false;
        }
        s.items.push_back(item);
        self.signalled.store(true, Ordering::Release);
        let sleepers = s.sleepers;
        drop(s);
        if sleepers > 0 {
            self.cond.notify_one();
        }
        true
    }

    /// Closes the latch: waiters get what is queued, then [`WaitError::Closed`].
    pub fn close(&self) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).closed = true;
        self.signalled.store(true, Ordering::Release);
        self.cond.notify_all();
    }

    /// True when an item is queued or the latch is closed (no lock taken).
    pub fn is_ready(&self) -> bool {
        self.signalled.load(Ordering::Acquire)
    }

    /// True once closed.
    pub fn is_closed(&self) -> bool {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).closed
    }

    /// Takes an item if one is queued.
    pub fn try_get(&self) -> Option<T> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let item = s.items.pop_front();
        if s.items.is_empty() && !s.closed {
            self.signalled.store(false, Ordering::Relaxed);
        }
        item
    }

    /// Spins (without taking the lock) until something is queued, the latch
    /// is closed, or `limit` has passed.
    fn spin(&self, limit: std::time::Duration) {
        if self.signalled.load(Ordering::Acquire) {
            return;
        }
        let start = Instant::now();
        loop {
            for _ in 0..64 {
                if self.signalled.load(Ordering::Acquire) {
                    return;
                }
            }
            if start.elapsed() >= limit {
                return;
            }
        }
    }

    /// Waits for an item until `deadline` (`None`: no deadline; use sparingly).
    pub fn get(&self, deadline: Option<Instant>) -> Result<T, WaitError> {
        self.get_spinning(deadline, false)
    }

    /// Like [`Latch::get`], but first spins up to [`SPIN`] when `spin` is
    /// set: worth it only when the item is expected within that time.
    pub fn get_spinning(&self, deadline: Option<Instant>, spin: bool) -> Result<T, WaitError> {
        if spin {
            self.spin(SPIN);
        }
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(item) = s.items.pop_front() {
                if s.items.is_empty() && !s.closed {
                    self.signalled.store(false, Ordering::Relaxed);
                }
                return Ok(item);
            }
            if s.closed {
                return Err(WaitError::Closed);
            }
            s.sleepers += 1;
            match deadline {
                None => s = self.cond.wait(s).unwrap_or_else(PoisonError::into_inner),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        s.sleepers -= 1;
                        return Err(WaitError::Timeout);
                    }
                    s = self.cond.wait_timeout(s, d - now).unwrap_or_else(PoisonError::into_inner).0;
                }
            }
            s.sleepers -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn deadline_and_close() {
        let l = Arc::new(Latch::<u32>::new());
        let t0 = Instant::now();
        assert_eq!(l.get(Some(t0 + Duration::from_millis(50))), Err(WaitError::Timeout));
        assert!(t0.elapsed() >= Duration::from_millis(50));
        let l2 = l.clone();
        let h = std::thread::spawn(move || l2.get(Some(Instant::now() + Duration::from_secs(10))));
        std::thread::sleep(Duration::from_millis(20));
        l.put(7);
        assert_eq!(h.join().ok(), Some(Ok(7)));
        l.put(8);
        l.close();
        assert_eq!(l.get(None), Ok(8));
        assert_eq!(l.get(None), Err(WaitError::Closed));
        assert!(!l.put(9));
    }
}
