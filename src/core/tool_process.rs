//! Rule 3 of `connect::prompt` ("while the tool has started nothing"):
//! whether a tool's process (sudo, su, doas) may still be at its own
//! password prompt, read in /proc right before a password is typed. One
//! implementation for both sides: the master looks at a tool it started
//! (`prompt::Responder`), a hop's agent at a tool it started for the
//! master (`ExecOp::AnswerTool`, see `master::via`). `no_std`: it builds
//! into the agent.
//!
//! sudo, su and doas authenticate, then start the target's side in a
//! child and wait for it; none of them has a child while it prompts
//! (checked with sudo 1.9 with and without `use_pty`, util-linux su, and
//! OpenDoas with PAM). So a child means the prompt is not the tool's. A
//! tool whose child already ended has reaped it, which its counters of
//! reaped children show ([`Look::reaped`]); that alone is not enough to
//! refuse, as PAM may have run a helper before the prompt (pam_unix runs
//! unix_chkpwd under SELinux), but such a tool then sits still at its
//! prompt, while one that reaped the target's side ends within
//! milliseconds: it is watched for [`SETTLE_MS`] and refused if it exits,
//! starts a process or reaps another meanwhile.
//!
//! The tool is the caller's child, not reaped while it is looked at, so
//! its pid names it throughout.

use alloc::vec::Vec;

use rustix::fs::{openat, Dir, Mode, OFlags, CWD};
use rustix::io::Errno;

use crate::core::num::{parse_decimal, push_decimal};
use crate::proto::functions::ToolState;

/// How long a tool that has reaped a process before is watched.
pub const SETTLE_MS: u64 = 200;

/// One look at a process in /proc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Look {
    /// Not a zombie.
    pub alive: bool,
    /// Some thread of it has a child (a zombie child too).
    pub children: bool,
    /// What its reaped children left in its counters: minor and major
    /// faults and cpu ticks. 0 for a process that never reaped one (they
    /// survive exec, start at 0 on fork and only grow).
    pub reaped: u64,
}

/// `/proc/PID` followed by `tail`.
fn proc_path(pid: u64, tail: &[u8]) -> Vec<u8> {
    let mut p = b"/proc/".to_vec();
    push_decimal(&mut p, pid);
    p.extend_from_slice(tail);
    p
}

/// The start of file `path` (one read: /proc hands a small file whole).
fn read<'b>(path: &[u8], buf: &'b mut [u8]) -> Result<&'b [u8], Errno> {
    let fd = openat(CWD, path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
    let n = rustix::io::read(&fd, &mut *buf)?;
    Ok(&buf[..n])
}

/// What `/proc/PID/stat` says.
struct Stat {
    /// The state letter (`R`, `S`, `Z`, …).
    state: u8,
    /// The parent's pid.
    ppid: u64,
    /// The sum of the counters of reaped children ([`Look::reaped`]).
    reaped: u64,
    /// How many threads it has.
    threads: u64,
}

/// Reads `/proc/PID/stat`.
fn stat(pid: u64) -> Option<Stat> {
    // The name is at most 64 bytes and the 18 fields wanted numbers of at
    // most 20 digits: 512 bytes hold them.
    let mut buf = [0u8; 512];
    let s = read(&proc_path(pid, b"/stat"), &mut buf).ok()?;
    // After the name, which may hold spaces and parentheses: " S 1 …",
    // fields 3 and on of proc(5); `f[i]` is field i + 3 (digits only: the
    // state letter and a negative number come out as garbage, unused).
    let after = &s[s.iter().rposition(|&c| c == b')')? + 1..];
    let mut f = [0u64; 18];
    let mut i = 0;
    for &c in after.get(1..)? {
        if c == b' ' {
            i += 1;
            if i == f.len() {
                break;
            }
        } else {
            f[i] = f[i].wrapping_mul(10).wrapping_add(u64::from(c.wrapping_sub(b'0')));
        }
    }
    // cminflt, cmajflt, cutime, cstime; num_threads.
    let reaped = f[8] + f[10] + f[13] + f[14];
    (i == f.len()).then_some(Stat { state: *after.get(1)?, ppid: f[1], reaped, threads: f[17] })
}

/// One look at process `pid`.
pub fn look(pid: u32) -> Option<Look> {
    let st = stat(pid.into())?;
    let alive = !matches!(st.state, b'Z' | b'X' | b'x');
    // A zombie's children are its parent's now.
    let children = alive && has_children(pid, st.threads)?;
    Some(Look { alive, children, reaped: st.reaped })
}

/// Whether process `pid` with `threads` threads has a child: for one
/// thread, `/proc/PID/task/PID/children` (readable by everyone, also for
/// a setuid tool), else (or on a kernel without that file) a scan of
/// every process's parent.
pub fn has_children(pid: u32, threads: u64) -> Option<bool> {
    let mut buf = [0u8; 32];
    let mut path = proc_path(pid.into(), b"/task/");
    push_decimal(&mut path, pid.into());
    path.extend_from_slice(b"/children");
    match read(&path, &mut buf) {
        Ok(list) if threads == 1 => Some(list.iter().any(u8::is_ascii_digit)),
        Ok(_) | Err(Errno::NOENT) => any_child_in_proc(pid),
        Err(_) => None,
    }
}

/// Whether some process in /proc has `pid` as its parent.
pub fn any_child_in_proc(pid: u32) -> Option<bool> {
    let dir = openat(CWD, "/proc", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).ok()?;
    for e in Dir::read_from(&dir).ok()? {
        let e = e.ok()?;
        if parse_decimal(e.file_name().to_bytes()).and_then(stat).is_some_and(|st| st.ppid == u64::from(pid)) {
            return Some(true);
        }
    }
    Some(false)
}

/// Whether tool process `pid` (a child of the caller, not reaped) may
/// still be at its own prompt; see the module documentation. Blocks for
/// up to [`SETTLE_MS`] when it has reaped a process before.
pub fn tool_process(pid: u32) -> ToolState {
    let Some(first) = look(pid) else { return ToolState::Unseen };
    let verdict = |l: &Look| {
        if !l.alive {
            ToolState::Exited
        } else if l.children {
            ToolState::HasChild
        } else if l.reaped != first.reaped {
            ToolState::Reaping
        } else {
            ToolState::AtItsPrompt
        }
    };
    let now = verdict(&first);
    if now != ToolState::AtItsPrompt || first.reaped == 0 {
        return now;
    }
    for _ in 0..SETTLE_MS / 10 {
        let _ = rustix::thread::nanosleep(&rustix::thread::Timespec { tv_sec: 0, tv_nsec: 10_000_000 });
        // Seen once, then gone: it cannot have been reaped (nobody waits
        // for it while it prompts), so it is not there as a tool.
        let Some(l) = look(pid) else { return ToolState::Exited };
        let now = verdict(&l);
        if now != ToolState::AtItsPrompt {
            return now;
        }
    }
    ToolState::AtItsPrompt
}

/// Why a tool in `state` is not believed to be at its prompt, for
/// `BecomeFailure::UnexpectedPrompt`.
pub fn why(state: ToolState) -> &'static str {
    match state {
        ToolState::AtItsPrompt => "the tool was at its prompt",
        ToolState::HasChild => "the tool had started a process, which it does only once authenticated",
        ToolState::Exited => "the tool's process had exited",
        ToolState::Reaping => "the tool had reaped a process and was still changing or ending",
        ToolState::Unseen => "/proc does not show the tool's process (hidepid?), so it may be past its authentication",
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::Tool;
    use super::*;

    #[test]
    fn the_tools_process_says_whether_it_is_past_its_prompt() {
        let settle = std::time::Duration::from_millis(SETTLE_MS);
        // Alive, no child, never reaped one: at its prompt, at once.
        let t = Tool::start("exec sleep 5");
        t.comm_is("sleep");
        let t0 = std::time::Instant::now();
        assert_eq!(tool_process(t.pid()), ToolState::AtItsPrompt);
        assert!(t0.elapsed() < settle, "not watched: {:?}", t0.elapsed());

        // A child (sh waits for sleep): past it.
        let t = Tool::start("sleep 3; :");
        t.until("a child", |pid| look(pid).is_some_and(|l| l.children));
        assert_eq!(tool_process(t.pid()), ToolState::HasChild);
        assert_eq!(any_child_in_proc(t.pid()), Some(true), "the scan finds it too");
        drop(t);

        // Reaped a helper (as PAM's unix_chkpwd), then sits at its prompt:
        // watched, then believed.
        let t = Tool::start("/bin/true; exec sleep 5");
        t.comm_is("sleep");
        assert!(look(t.pid()).expect("look").reaped > 0, "true's faults count as reaped");
        assert_eq!(any_child_in_proc(t.pid()), Some(false));
        let t0 = std::time::Instant::now();
        assert_eq!(tool_process(t.pid()), ToolState::AtItsPrompt);
        assert!(t0.elapsed() >= settle);

        // Reaped its child (the target's side) and is ending: refused.
        let t = Tool::start("/bin/true; exec sleep 0.05");
        t.comm_is("sleep");
        assert_eq!(tool_process(t.pid()), ToolState::Exited);

        // Exited (a zombie of ours), or not in /proc at all.
        let t = Tool::start("exit 0");
        t.until("a zombie", |pid| look(pid).is_some_and(|l| !l.alive));
        assert_eq!(tool_process(t.pid()), ToolState::Exited);
        assert_eq!(tool_process(u32::MAX), ToolState::Unseen);
    }

    /// The agent sends a state as its index, a `u32` (one serialiser
    /// fewer in the agent): postcard encodes a unit variant the same way.
    #[test]
    fn a_state_on_the_wire_is_its_index() {
        for s in [ToolState::AtItsPrompt, ToolState::HasChild, ToolState::Exited, ToolState::Reaping, ToolState::Unseen]
        {
            let want = postcard::to_allocvec(&s).expect("encode");
            assert_eq!(postcard::to_allocvec(&(s as u32)).expect("encode"), want, "{s:?}");
            assert_eq!(postcard::from_bytes::<ToolState>(&want).expect("decode"), s);
        }
    }

    /// A command name with spaces and parentheses does not shift the
    /// fields.
    #[test]
    fn a_name_with_parentheses() {
        let dir = std::env::temp_dir().join(format!("mito-tool-process-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let exe = dir.join("a) (b");
        let _ = std::fs::remove_file(&exe);
        // Its name (comm) is the link's.
        std::os::unix::fs::symlink("/bin/sleep", &exe).expect("symlink");
        let mut c = std::process::Command::new(&exe).arg("5").spawn().expect("spawn");
        let pid = c.id();
        let t0 = std::time::Instant::now();
        while std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim() != "a) (b" {
            assert!(t0.elapsed() < std::time::Duration::from_secs(5));
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(look(pid), Some(Look { alive: true, children: false, reaped: 0 }));
        assert_eq!(tool_process(pid), ToolState::AtItsPrompt);
        let _ = c.kill();
        let _ = c.wait();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A process standing in for a tool, for the tests here and in
/// `connect::prompt`.
#[cfg(test)]
pub(crate) mod fixture {
    /// Our child, not reaped until dropped (as a tool during a bootstrap).
    pub(crate) struct Tool(std::process::Child);

    impl Tool {
        pub(crate) fn start(script: &str) -> Tool {
            Tool(std::process::Command::new("sh").args(["-c", script]).spawn().expect("sh"))
        }

        pub(crate) fn pid(&self) -> u32 {
            self.0.id()
        }

        /// Waits (up to 5 s) until `f` holds of its /proc entries.
        pub(crate) fn until(&self, what: &str, f: impl Fn(u32) -> bool) {
            let t0 = std::time::Instant::now();
            while !f(self.pid()) {
                assert!(t0.elapsed() < std::time::Duration::from_secs(5), "never: {what}");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }

        pub(crate) fn comm_is(&self, name: &str) {
            let comm = |pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            self.until(name, |pid| comm(pid).trim() == name);
        }

        /// Waits until some thread of it has a child.
        pub(crate) fn until_child(&self) {
            self.until("a child", |pid| super::look(pid).is_some_and(|l| l.children));
        }
    }

    impl Drop for Tool {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
