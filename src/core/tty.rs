//! The password side of the hybrid tty (ARCHITECTURE.md, "How a context
//! starts"): typing an answer where the tool will read it, and never where
//! it would be echoed back.

use rustix::fd::BorrowedFd;
use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};

/// Before typing a password into a tty: waits (up to 1 s) until the tool
/// has turned echo off. Tools do that right before reading, and some (PAM's
/// conversation in su) only after printing the prompt, with TCSAFLUSH,
/// which would discard an answer typed earlier. If echo is still on after
/// the wait, turns it off itself so the password is never echoed back into
/// output we keep. Not a tty (no termios): nothing to wait for.
///
/// Blocks the caller for that long at most: prompts are rare, and answered
/// within milliseconds.
pub fn wait_for_echo_off(fd: BorrowedFd<'_>) {
    for waited_ms in 0..=1000 {
        let Ok(mut t) = tcgetattr(fd) else { return };
        if !t.local_modes.contains(LocalModes::ECHO) {
            return;
        }
        if waited_ms == 1000 {
            t.local_modes.remove(LocalModes::ECHO);
            let _ = tcsetattr(fd, OptionalActions::Now, &t);
            return;
        }
        let _ = rustix::thread::nanosleep(&rustix::thread::Timespec { tv_sec: 0, tv_nsec: 1_000_000 });
    }
}
