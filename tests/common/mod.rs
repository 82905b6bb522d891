//! Helpers shared by the integration tests: temp dirs, root checks, a log
//! capture, process probes.
#![allow(dead_code)]

pub mod sshd;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "mito-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        // The sibling `local_in` makes for XDG_RUNTIME_DIR.
        let mut run = self.0.clone().into_os_string();
        run.push("-run");
        let _ = std::fs::remove_dir_all(run);
    }
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Tests that need root say so loudly when they cannot run.
pub fn skip_loudly(test: &str, why: &str) {
    eprintln!("\n*** SKIPPED {test}: {why} ***\n*** (CI runs as root, where this test runs) ***\n");
}

/// Is a process with this pid still there (and not a zombie)?
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with('Z')).unwrap_or(false),
        Err(_) => false,
    }
}

/// The parent pid of `pid`.
pub fn parent_of(pid: u32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// `kill -9 pid`.
pub fn kill9(pid: u32) {
    let p = rustix::process::Pid::from_raw(pid as i32).expect("a real pid");
    rustix::process::kill_process(p, rustix::process::Signal::KILL).expect("kill -9");
}

/// Starts the `mito` CLI with `args`, whose command prints its pid as its
/// first line (`sh -c 'echo $$; exec …'`); returns the CLI and that pid.
pub fn mito_printing_pid(args: &[&str]) -> (std::process::Child, u32) {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_mito"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mito");
    let mut out = child.stdout.take().expect("stdout");
    let (mut line, mut b) = (Vec::new(), [0u8; 1]);
    while out.read(&mut b).map(|n| n == 1).unwrap_or(false) && b[0] != b'\n' {
        line.push(b[0]);
    }
    let pid = String::from_utf8_lossy(&line).trim().parse().expect("the command printed its pid");
    (child, pid)
}

/// Starts `sleep 30` in `ctx` and returns the pending reply.
pub fn pending_sleep(ctx: &mito::Context) -> mito::Pending<mito::functions::ExecReply> {
    let argv = ["sleep", "30"].iter().map(|a| serde_bytes::ByteBuf::from(a.as_bytes())).collect();
    ctx.call_async::<mito::functions::Exec>(&mito::functions::ExecArgs { argv, ..Default::default() }).expect("send")
}

/// Waits until `pid` is gone; returns how long it took, or None after `limit`.
pub fn wait_gone(pid: u32, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if !alive(pid) {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// Log records captured from the `log` facade (target, level, message).
pub static LOGS: Mutex<Vec<(String, log::Level, String)>> = Mutex::new(Vec::new());

struct Capture;
impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        if let Ok(mut l) = LOGS.lock() {
            l.push((r.target().to_string(), r.level(), r.args().to_string()));
        }
    }
    fn flush(&self) {}
}

/// Installs the capturing logger once per test binary.
pub fn capture_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = log::set_boxed_logger(Box::new(Capture));
        log::set_max_level(log::LevelFilter::Debug);
    });
}

/// Captured messages containing `needle`.
pub fn logs_containing(needle: &str) -> Vec<String> {
    LOGS.lock()
        .map(|l| l.iter().filter(|(_, _, m)| m.contains(needle)).map(|(_, _, m)| m.clone()).collect())
        .unwrap_or_default()
}

/// Options for a local context with its own cache directory, and its own
/// `XDG_RUNTIME_DIR` (`<cache>/../run`) so that the first fallback stays
/// inside the test's directories instead of /dev/shm.
pub fn local_in(cache: &Path) -> mito::LocalOptions {
    let run = cache
        .parent()
        .unwrap_or(cache)
        .join(format!("{}-run", cache.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()));
    let _ = std::fs::create_dir_all(&run);
    mito::LocalOptions {
        env: vec![
            ("XDG_CACHE_HOME".into(), cache.as_os_str().to_owned()),
            ("XDG_RUNTIME_DIR".into(), run.into_os_string()),
        ],
        ..Default::default()
    }
}

/// Creates the sudo/su/doas test users and policies once per test binary
/// (scripts/test-become); false (with a loud skip) when not root.
pub fn become_users(test: &str) -> bool {
    if !is_root() {
        skip_loudly(test, "switching users with real sudo/su/doas needs root to create the test users");
        return false;
    }
    static USERS: Once = Once::new();
    USERS.call_once(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test-become");
        let st = std::process::Command::new(script).env("MITO_TEST_PASSWORD", sshd::PASSWORD).status();
        assert!(st.is_ok_and(|s| s.success()), "scripts/test-become failed");
    });
    true
}
