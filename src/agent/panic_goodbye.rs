//! The goodbye a panic says: what the panic handler (in
//! `bin/mito-agent.rs`) can tell the parent, and the little state it needs
//! to do so without the loop, without allocating and without `core::fmt`.
//!
//! The loop keeps three things current here: the parent fd while no frame
//! is half written to it ([`set_parent_fd`], from the outbox's flush), this
//! agent's context id ([`set_self_id`]) and the call it is running
//! ([`doing`]). [`panic_goodbye`] builds a [`Goodbye::Panic`] frame from
//! them and writes it straight to the fd. Reading the `PanicInfo` instead
//! would cost a sixth of the agent (see `bin/mito-agent.rs`).
//!
//! One thread writes these, the same thread reads them from the panic
//! handler: relaxed atomics are enough.

use core::sync::atomic::Ordering::Relaxed;
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU8, AtomicUsize};

use rustix::fd::BorrowedFd;

use crate::proto::message::{goodbye_frame, Goodbye};

/// The parent fd while no frame is half written to it (-1 otherwise), and
/// this agent's context id: what the panic handler needs to say goodbye.
static PARENT_FD: AtomicI32 = AtomicI32::new(-1);
static SELF_ID: AtomicU32 = AtomicU32::new(0);
static PANICKING: AtomicBool = AtomicBool::new(false);

/// The call this agent is running ("in call file_write"), empty between
/// calls: what the panic handler can say about where a panic happened.
static DOING: [AtomicU8; 48] = [const { AtomicU8::new(0) }; 48];
static DOING_LEN: AtomicUsize = AtomicUsize::new(0);

/// Records this agent's context id, the `src` of its goodbye.
pub fn set_self_id(id: u32) {
    SELF_ID.store(id, Relaxed);
}

/// Records the parent fd as free for a whole frame (`-1`: a frame is half
/// written there, a goodbye now would corrupt the stream).
pub fn set_parent_fd(fd: i32) {
    PARENT_FD.store(fd, Relaxed);
}

/// Records that the call `name` starts (`""`: it ended), for
/// [`panic_goodbye`].
pub fn doing(name: &str) {
    const PREFIX: &[u8] = b"in call ";
    if name.is_empty() {
        return DOING_LEN.store(0, Relaxed);
    }
    let text = PREFIX.iter().chain(name.as_bytes()).take(DOING.len());
    let mut n = 0;
    for (slot, &b) in DOING.iter().zip(text) {
        slot.store(b, Relaxed);
        n += 1;
    }
    DOING_LEN.store(n, Relaxed);
}

/// Best effort from the panic handler: a [`Goodbye::Panic`] frame written
/// straight to the parent fd (no allocation, no formatting), if no frame is
/// half written there and the panic is not a panic inside this one.
/// The frame names the call that was running, if any, after `message`.
pub fn panic_goodbye(message: &str) {
    let fd = PARENT_FD.load(Relaxed);
    if fd < 0 || PANICKING.swap(true, Relaxed) {
        return;
    }
    // "<message> in call <name>", either half possibly empty.
    let mut text = [0u8; 96];
    let mut n = 0;
    let doing_len = DOING_LEN.load(Relaxed).min(DOING.len());
    let sep: &[u8] = if message.is_empty() || doing_len == 0 { b"" } else { b" " };
    let doing = DOING[..doing_len].iter().map(|b| b.load(Relaxed));
    for (slot, b) in text.iter_mut().zip(message.bytes().chain(sep.iter().copied()).chain(doing)) {
        *slot = b;
        n += 1;
    }
    // A name cut inside a UTF-8 sequence keeps its valid prefix.
    let text = match core::str::from_utf8(&text[..n]) {
        Ok(s) => s,
        Err(e) => core::str::from_utf8(&text[..e.valid_up_to()]).unwrap_or(""),
    };
    let bye = Goodbye::Panic(text);
    let mut buf = [0u8; 128];
    let Some(n) = goodbye_frame(SELF_ID.load(Relaxed), &bye, &mut buf) else { return };
    // SAFETY: `fd` is the parent stream's fd, open for the agent's life.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    // The fd is non-blocking: wait for room, 1 s at most. A write this
    // small (under PIPE_BUF) goes whole or not at all.
    let mut fds = [rustix::event::PollFd::new(&fd, rustix::event::PollFlags::OUT)];
    let _ = rustix::event::poll(&mut fds, Some(&rustix::event::Timespec { tv_sec: 1, tv_nsec: 0 }));
    let _ = rustix::io::write(fd, &buf[..n]);
}
