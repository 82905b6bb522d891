//! A program run on a pseudo-terminal of a known size, as a person at a
//! terminal runs it: the pty is its stdin, stdout, stderr and controlling
//! terminal (a new session), so `/dev/tty` prompts, raw mode and SIGWINCH
//! all behave as they do for a user. The test reads what the program
//! writes and types into it.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A child process on a pty.
pub struct OnPty {
    pub child: Child,
    master: File,
    seen: Arc<Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl OnPty {
    /// Starts `cmd` on a new pty of `rows` × `cols`.
    pub fn spawn(cmd: &mut Command, rows: u16, cols: u16) -> OnPty {
        let ws = nix::pty::Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        let pty = nix::pty::openpty(Some(&ws), None).expect("openpty");
        let slave: OwnedFd = pty.slave;
        let io = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup pty"));
        cmd.stdin(io(&slave)).stdout(io(&slave)).stderr(io(&slave));
        // SAFETY: setsid and ioctl are async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn on a pty");
        // The Command holds its copies of the slave until told otherwise;
        // only when every copy is closed does the reader see the end.
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        drop(slave);
        let master = File::from(pty.master);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (mut r, s) = (master.try_clone().expect("dup master"), seen.clone());
        let reader = std::thread::spawn(move || {
            let mut b = [0u8; 4096];
            // EIO once every slave fd is closed: the program is gone.
            while let Ok(n @ 1..) = r.read(&mut b) {
                s.lock().expect("lock").extend_from_slice(&b[..n]);
            }
        });
        OnPty { child, master, seen, reader: Some(reader) }
    }

    /// Everything the program wrote to the terminal so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().expect("lock")).into_owned()
    }

    /// Waits until the terminal shows `needle` (after byte offset `from`);
    /// returns the offset just past it. Panics with what was seen.
    pub fn wait_for_from(&self, from: usize, needle: &str, limit: Duration) -> usize {
        let t0 = Instant::now();
        loop {
            {
                let seen = self.seen.lock().expect("lock");
                let tail = String::from_utf8_lossy(&seen[from.min(seen.len())..]).into_owned();
                if let Some(i) = tail.find(needle) {
                    return from + i + needle.len();
                }
            }
            assert!(t0.elapsed() < limit, "waited {limit:?} for {needle:?}; the terminal shows {:?}", self.text());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until the terminal shows `needle`.
    pub fn wait_for(&self, needle: &str, limit: Duration) -> usize {
        self.wait_for_from(0, needle, limit)
    }

    /// Types `bytes`.
    pub fn type_in(&self, bytes: &[u8]) {
        (&self.master).write_all(bytes).expect("type into the pty");
    }

    /// Types `bytes` if the terminal still takes them.
    pub fn try_type_in(&self, bytes: &[u8]) -> bool {
        (&self.master).write_all(bytes).is_ok()
    }

    /// Sets the terminal's size, as a terminal emulator does when its
    /// window changes (the kernel sends SIGWINCH to the foreground group).
    pub fn resize(&self, rows: u16, cols: u16) {
        let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ reads one winsize from the pointer.
        let r = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        assert_eq!(r, 0, "TIOCSWINSZ");
    }

    /// Whether the terminal is in canonical (cooked) mode with echo, as a
    /// shell leaves it; false once a program has made it raw.
    pub fn is_cooked(&self) -> bool {
        let t = nix::sys::termios::tcgetattr(&self.master).expect("tcgetattr");
        use nix::sys::termios::LocalFlags;
        t.local_flags.contains(LocalFlags::ICANON | LocalFlags::ECHO)
    }

    /// Answers a prompt as a person does: waits (up to `ask_within`) for
    /// `prompt`, types `answer` and Enter, then waits up to 30 s for the
    /// program to end. Returns its status and the whole screen.
    pub fn answer(&mut self, prompt: &str, ask_within: Duration, answer: &str) -> (ExitStatus, String) {
        self.wait_for(prompt, ask_within);
        self.type_in(format!("{answer}\n").as_bytes());
        let st = self.wait(Duration::from_secs(30));
        (st, self.text())
    }

    /// Waits for the program to exit (killing it after `limit`), then for
    /// the rest of its output.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let t0 = Instant::now();
        let st = loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                break st;
            }
            if t0.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("still running after {limit:?}; the terminal shows {:?}", self.text());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // Grandchildren may hold the slave a little longer; do not hang on them.
        let t1 = Instant::now();
        while self.reader.as_ref().is_some_and(|r| !r.is_finished()) && t1.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        if self.reader.as_ref().is_some_and(|r| r.is_finished()) {
            let _ = self.reader.take().map(std::thread::JoinHandle::join);
        }
        st
    }
}

impl Drop for OnPty {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
