//! [`Latch`]: a queue one thread fills and another waits on, with deadlines.
//!
//! Every blocking wait in the master goes through here, so every one of them
//! has a deadline and wakes at once when the latch is closed (the stream
//! died): no call can hang on a dead context.
//!
//! A latch that a peer may fill faster than its reader empties it (a
//! command's output, stdin acknowledgements) has a [`Budget`]: what it
//! holds is bounded where the items arrive ([`Latch::put_charged`], on the
//! broker thread), not where the reader takes them, so the bound holds
//! even when the reader never reads.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
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

/// Called with the news when a budgeted latch refuses an item (see
/// [`Budget::on_overrun`]).
pub type OverrunFn = Arc<dyn Fn(Overrun) + Send + Sync>;

/// A bound on what a latch holds (see [`Latch::set_budget`]). Each item
/// given to [`Latch::put_charged`] costs its size plus `per_item`; the
/// cost is held until the reader takes the item.
pub struct Budget<T> {
    /// Most the held items may cost together.
    pub limit: u64,
    /// What each item costs beyond its size (its queue slot and allocation,
    /// so that many tiny items are bounded too).
    pub per_item: u64,
    /// Folds a new item into the last one queued when it can (two counters
    /// into their sum): the new item then costs nothing.
    pub merge: Option<fn(&mut T, &T) -> bool>,
    /// Told, on the putting thread and outside the lock, of every item the
    /// latch refuses once over its limit (the first one with
    /// `refused == 1`).
    pub on_overrun: Option<OverrunFn>,
}

/// A budgeted latch went over its limit: it dropped what it held, closed,
/// and refuses every charged item from then on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overrun {
    /// The budget's limit.
    pub limit: u64,
    /// How far beyond the limit the charged items went: what was held when
    /// the first one was refused, plus every refused item's cost, minus the
    /// limit.
    pub excess: u64,
    /// Items refused so far (the first one included).
    pub refused: u64,
}

/// What [`Latch::put_charged`] did with an item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Put {
    /// Queued (or merged into the last item).
    Queued,
    /// Dropped: the latch is closed.
    Closed,
    /// Dropped: over the budget (this time or before).
    Refused(Overrun),
}

struct Held<T> {
    budget: Budget<T>,
    /// What the queued charged items cost.
    held: u64,
    overrun: Option<Overrun>,
}

#[derive(Debug)]
struct State<T> {
    /// Items and what each costs against the budget (0 when uncharged).
    items: VecDeque<(T, u64)>,
    closed: bool,
    /// Threads asleep on the condvar: `put` skips the wake-up syscall when 0.
    sleepers: usize,
    budget: Option<Held<T>>,
}

impl<T> std::fmt::Debug for Held<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget")
            .field("limit", &self.budget.limit)
            .field("held", &self.held)
            .field("overrun", &self.overrun)
            .finish()
    }
}

impl<T> State<T> {
    /// Takes the first item, returning what it cost to the budget.
    fn pop(&mut self) -> Option<T> {
        let (item, cost) = self.items.pop_front()?;
        if let Some(b) = &mut self.budget {
            b.held = b.held.saturating_sub(cost);
        }
        Some(item)
    }
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
            state: Mutex::new(State { items: VecDeque::new(), closed: false, sleepers: 0, budget: None }),
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

    /// Bounds what this latch holds from now on (replacing any budget).
    pub fn set_budget(&self, budget: Budget<T>) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.budget = Some(Held { budget, held: 0, overrun: None });
    }

    /// Adds an item and wakes a waiter; returns false if closed (item
    /// dropped). Costs nothing against a budget.
    pub fn put(&self, item: T) -> bool {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if s.closed {
            return false;
        }
        s.items.push_back((item, 0));
        self.wake(s);
        true
    }

    /// Marks the latch ready and wakes a sleeper, releasing the lock.
    fn wake(&self, s: std::sync::MutexGuard<'_, State<T>>) {
        self.signalled.store(true, Ordering::Release);
        let sleepers = s.sleepers;
        drop(s);
        if sleepers > 0 {
            self.cond.notify_one();
        }
    }

    /// Adds an item of `size` bytes against the budget (without one, as
    /// [`Latch::put`]). An item that would take the held cost over the
    /// limit is refused, and so is every later one: the latch drops what
    /// it holds, closes (waiters wake; [`Latch::overrun`] says why) and
    /// tells the budget's `on_overrun`.
    pub fn put_charged(&self, item: T, size: usize) -> Put {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let st = &mut *s;
        let Some(b) = &mut st.budget else {
            drop(s);
            return if self.put(item) { Put::Queued } else { Put::Closed };
        };
        let cost = (size as u64).saturating_add(b.budget.per_item);
        if let Some(o) = &mut b.overrun {
            o.refused += 1;
            o.excess = o.excess.saturating_add(cost);
            let (o, tell) = (*o, b.budget.on_overrun.clone());
            drop(s);
            if let Some(f) = tell {
                f(o);
            }
            return Put::Refused(o);
        }
        if st.closed {
            return Put::Closed;
        }
        if let (Some(merge), Some((last, _))) = (b.budget.merge, st.items.back_mut()) {
            if merge(last, &item) {
                return Put::Queued;
            }
        }
        if b.held.saturating_add(cost) > b.budget.limit {
            let o = Overrun { limit: b.budget.limit, excess: b.held + cost - b.budget.limit, refused: 1 };
            b.overrun = Some(o);
            b.held = 0;
            let tell = b.budget.on_overrun.clone();
            let dropped = std::mem::take(&mut st.items);
            st.closed = true;
            drop(s);
            self.signalled.store(true, Ordering::Release);
            self.cond.notify_all();
            drop(dropped);
            drop(item);
            if let Some(f) = tell {
                f(o);
            }
            return Put::Refused(o);
        }
        b.held += cost;
        st.items.push_back((item, cost));
        self.wake(s);
        Put::Queued
    }

    /// Whether (and how) the budget was exceeded.
    pub fn overrun(&self) -> Option<Overrun> {
        let s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.budget.as_ref().and_then(|b| b.overrun)
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
        let item = s.pop();
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
            if let Some(item) = s.pop() {
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

    #[test]
    fn a_budget_bounds_what_is_held_until_taken_then_refuses_for_good() {
        use std::sync::atomic::AtomicU64;
        let told = Arc::new(AtomicU64::new(0));
        let t2 = told.clone();
        let l = Latch::<u32>::new();
        l.set_budget(Budget {
            limit: 100,
            per_item: 10,
            merge: None,
            on_overrun: Some(Arc::new(move |o: Overrun| t2.store(o.refused * 1000 + o.excess, Ordering::SeqCst))),
        });
        assert_eq!(l.put_charged(1, 30), Put::Queued); // 40
        assert_eq!(l.put_charged(2, 30), Put::Queued); // 80
        assert!(l.put(3)); // uncharged (a reply)
        assert_eq!(l.get(None), Ok(1)); // 40 held
        assert_eq!(l.put_charged(4, 50), Put::Queued); // 100: at the limit
        assert_eq!(l.put_charged(5, 0), Put::Refused(Overrun { limit: 100, excess: 10, refused: 1 }));
        assert_eq!(told.load(Ordering::SeqCst), 1010);
        // What it held is gone, the reader wakes to Closed, later items are refused.
        assert_eq!(l.get(Some(Instant::now())), Err(WaitError::Closed));
        assert_eq!(l.put_charged(6, 5), Put::Refused(Overrun { limit: 100, excess: 25, refused: 2 }));
        assert_eq!(told.load(Ordering::SeqCst), 2025);
        assert!(!l.put(7));
        assert_eq!(l.overrun().map(|o| o.refused), Some(2));
    }

    #[test]
    fn merged_items_cost_nothing_more() {
        let l = Latch::<u32>::new();
        let sum: fn(&mut u32, &u32) -> bool = |a, b| {
            *a += b;
            true
        };
        l.set_budget(Budget { limit: 20, per_item: 10, merge: Some(sum), on_overrun: None });
        for _ in 0..1000 {
            assert_eq!(l.put_charged(1, 0), Put::Queued);
        }
        assert_eq!(l.get(None), Ok(1000));
        assert_eq!(l.put_charged(1, 0), Put::Queued);
        assert_eq!(l.put_charged(1, 0), Put::Queued);
        assert_eq!(l.try_get(), Some(2));
        assert_eq!(l.overrun(), None);
        // Without a budget a charged put is a put.
        let plain = Latch::<u32>::new();
        assert_eq!(plain.put_charged(1, usize::MAX), Put::Queued);
        plain.close();
        assert_eq!(plain.put_charged(1, 0), Put::Closed);
    }
}
