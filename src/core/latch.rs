//! [`Latch`]: a queue one thread fills and another waits on, with deadlines.
//!
//! Every blocking wait in the master goes through here, so every one of them
//! has a deadline and wakes at once when the latch is closed (the stream
//! died): no call can hang on a dead context.

use std::collections::VecDeque;
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

#[derive(Debug)]
struct State<T> {
    items: VecDeque<T>,
    closed: bool,
}

/// A multi-producer queue with blocking, deadline-bounded `get`.
#[derive(Debug)]
pub struct Latch<T> {
    state: Mutex<State<T>>,
    cond: Condvar,
}

impl<T> Default for Latch<T> {
    fn default() -> Self {
        Latch { state: Mutex::new(State { items: VecDeque::new(), closed: false }), cond: Condvar::new() }
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
        drop(s);
        self.cond.notify_one();
        true
    }

    /// Closes the latch: waiters get what is queued, then [`WaitError::Closed`].
    pub fn close(&self) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).closed = true;
        self.cond.notify_all();
    }

    /// True once closed.
    pub fn is_closed(&self) -> bool {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).closed
    }

    /// Takes an item if one is queued.
    pub fn try_get(&self) -> Option<T> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).items.pop_front()
    }

    /// Waits for an item until `deadline` (`None`: no deadline; use sparingly).
    pub fn get(&self, deadline: Option<Instant>) -> Result<T, WaitError> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(item) = s.items.pop_front() {
                return Ok(item);
            }
            if s.closed {
                return Err(WaitError::Closed);
            }
            match deadline {
                None => s = self.cond.wait(s).unwrap_or_else(PoisonError::into_inner),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Err(WaitError::Timeout);
                    }
                    s = self.cond.wait_timeout(s, d - now).unwrap_or_else(PoisonError::into_inner).0;
                }
            }
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
