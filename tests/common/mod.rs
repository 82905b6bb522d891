//! Helpers shared by the integration tests: temp dirs, root checks and
//! loud skips (failures under CI, see [`skip_loudly`]), a log capture,
//! process probes (running, zombie, reaped).
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

/// Is this a run where every test must run? `CI` set to anything but empty,
/// `0` or `false` (`.ci/run` is run with `CI=true`), or
/// `MITO_TEST_REQUIRE_ALL` set likewise.
pub fn require_all() -> bool {
    let set = |v: &str| std::env::var(v).is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false" | "FALSE" | "False"));
    set("CI") || set("MITO_TEST_REQUIRE_ALL")
}

/// The file listing the tests this `cargo test` run skipped (see
/// [`skip_loudly`]): `target/tmp/skipped-tests-<run>.txt`.
pub fn skip_list() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("skipped-tests-{}.txt", run_id()))
}

/// This `cargo test` run: our parent process (cargo, which runs the test
/// binaries one after another), by pid and start time so that a recycled
/// pid is another run.
fn run_id() -> String {
    let ppid = std::os::unix::process::parent_id();
    let start = stat_of(ppid).map(|(_, start)| start).unwrap_or(0);
    format!("{ppid}-{start}")
}

/// A test whose precondition is missing (not root, no sshd, no doas…)
/// calls this and returns. libtest reports such a test as `ok`, so:
///
/// - where every test must run ([`require_all`]: `CI=true`, as `.ci/run`
///   is run, or `MITO_TEST_REQUIRE_ALL=1`) this panics: the test FAILS,
///   saying why;
/// - elsewhere it writes `*** SKIPPED test: why ***` straight to the
///   process's stderr (libtest captures `eprintln!` and shows it only for
///   failing tests; a write to `std::io::stderr()` is not captured), and
///   appends a line to [`skip_list`], one file per `cargo test` run; the
///   message says how many tests the run has skipped so far and names that
///   file, so the last message printed carries the run's total. (The lists
///   stay for reading after the run; `cargo clean` removes them.)
pub fn skip_loudly(test: &str, why: &str) {
    if require_all() {
        panic!(
            "{test} cannot run here: {why}. With CI or MITO_TEST_REQUIRE_ALL set every test must run \
             (.ci/run installs everything and runs as root)"
        );
    }
    use std::io::Write;
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let list = skip_list();
    let bin = std::env::current_exe().ok().and_then(|e| Some(e.file_name()?.to_string_lossy().into_owned()));
    let line = format!("{}: {test}: {why}\n", bin.unwrap_or_default());
    // One O_APPEND write per line: lines from the threads and binaries of a
    // run never mix.
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&list)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    let count = match appended.and_then(|()| std::fs::read_to_string(&list)) {
        Ok(all) => all.lines().count().to_string(),
        Err(e) => format!("? (cannot write the list: {e})"),
    };
    let msg = format!(
        "\n*** SKIPPED {test}: {why} ***\n\
         *** (CI runs as root, where this test runs; with CI=true or MITO_TEST_REQUIRE_ALL=1 a skip fails) ***\n\
         *** tests skipped so far in this run: {count}, listed in {} ***\n\n",
        list.display()
    );
    let _ = std::io::stderr().lock().write_all(msg.as_bytes());
}

/// Is a process with this pid still running? A zombie counts as gone: this
/// is for claims that a process died (reaped by its parent, not us). Where
/// the claim is "reaped, no zombie", use [`wait_reaped`] / [`proc_state`].
pub fn alive(pid: u32) -> bool {
    proc_state(pid) == ProcState::Running
}

/// What /proc says about a pid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcState {
    /// There, and not a zombie.
    Running,
    /// Exited, not reaped by its parent yet (state `Z`).
    Zombie,
    /// No such process: exited and reaped.
    Gone,
}

/// State letter and start time (clock ticks after boot) of `pid`.
fn stat_of(pid: u32) -> Option<(char, u64)> {
    stat_fields(pid).map(|(state, _, start)| (state, start))
}

/// State letter, parent pid and start time of `pid`, from
/// `/proc/<pid>/stat` ("pid (comm) S ppid …": the comm may hold spaces and
/// parentheses, the last ')' ends it).
fn stat_fields(pid: u32) -> Option<(char, u32, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = s.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid, fields.nth(17)?.parse().ok()?))
}

/// The children of `ppid` now, with their state letters (`Z`: a zombie).
pub fn children_of(ppid: u32) -> Vec<(u32, char)> {
    let pids = std::fs::read_dir("/proc").into_iter().flatten().flatten();
    let pids = pids.filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok());
    pids.filter_map(|pid| stat_fields(pid).filter(|&(_, p, _)| p == ppid).map(|(state, _, _)| (pid, state))).collect()
}

/// [`ProcState`] of `pid` now.
pub fn proc_state(pid: u32) -> ProcState {
    match stat_of(pid) {
        None | Some(('X', _)) => ProcState::Gone,
        Some(('Z', _)) => ProcState::Zombie,
        Some(_) => ProcState::Running,
    }
}

/// Waits until `pid` has exited and been reaped: no /proc entry any more,
/// or one with another start time (reaped, and the pid reused). A zombie
/// is not gone. Returns how long it took, or after `limit` the state it was
/// left in (`Running` or `Zombie`).
pub fn wait_reaped(pid: u32, limit: Duration) -> Result<Duration, ProcState> {
    let t0 = Instant::now();
    let first = stat_of(pid).map(|(_, start)| start);
    loop {
        let state = match stat_of(pid) {
            Some((_, start)) if Some(start) != first => ProcState::Gone,
            _ => proc_state(pid),
        };
        if state == ProcState::Gone {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() >= limit {
            return Err(state);
        }
        std::thread::sleep(Duration::from_millis(10));
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

/// Waits until `pid` is not running (a zombie counts as gone, as in
/// [`alive`]); returns how long it took, or None after `limit`.
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

/// stdout and stderr of a finished run, as text.
pub fn output_text(o: &std::process::Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// A failed CLI run: mito's exit code 255, `want` on stderr, and `secret`
/// nowhere in what it printed. Returns stderr.
pub fn assert_cli_fails(o: &std::process::Output, want: &str, secret: &str) -> String {
    let (out, err) = output_text(o);
    assert_eq!(o.status.code(), Some(255), "stdout: {out}\nstderr: {err}");
    assert!(err.contains(want), "wanted {want:?} in: {err}");
    assert!(!err.contains(secret) && !out.contains(secret), "{secret:?} leaked into the output: {err}");
    err
}

/// A directory (0755, once per test binary) holding a copy of the `mito`
/// CLI that every test user can run, with room beside it for PATH
/// wrappers: the build's own copy may sit where other users cannot reach.
pub fn shared_mito_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = TempDir::new("shared-mito");
        let bin = dir.path().join("mito");
        std::fs::copy(env!("CARGO_BIN_EXE_mito"), &bin).expect("copy mito");
        for p in [dir.path(), bin.as_path()] {
            std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        }
        dir
    })
    .path()
}

/// The hostile-agent harness (`examples/hostile_agent.rs`, a program that
/// plays a hostile target), built by cargo beside the test binaries:
/// `target/<profile>/deps/<test>` → `target/<profile>/examples/hostile_agent`.
/// Fails loudly when it is missing or older than its source (`cargo test
/// --test X` alone does not rebuild examples).
pub fn hostile_harness() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let p = exe.parent().and_then(Path::parent).map(|d| d.join("examples").join("hostile_agent"));
    match p {
        Some(p) if p.is_file() => {
            let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hostile_agent.rs");
            let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
            assert!(
                mtime(&src) <= mtime(&p),
                "{} is older than {}: run `cargo build --example hostile_agent`",
                p.display(),
                src.display()
            );
            p
        }
        _ => panic!(
            "the hostile-agent harness is not built (looked for {p:?}): `cargo test` builds it; \
             with a target filter run `cargo build --example hostile_agent` first"
        ),
    }
}

/// Starts the agent binary `exe` by hand, as stage0 would exec it
/// (`agent-<hash> <hash> <context id 9>`), with one end of a socketpair as
/// its stdin and stdout; returns our end and the agent.
pub fn spawn_agent_by_hand(exe: &str, hash: &str) -> (std::os::unix::net::UnixStream, std::process::Child) {
    use std::process::{Command, Stdio};
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    let theirs2 = theirs.try_clone().expect("dup");
    let child = Command::new(exe)
        .args([hash, "9"])
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .stdout(Stdio::from(std::os::fd::OwnedFd::from(theirs2)))
        .stderr(Stdio::null())
        .spawn()
        .expect("agent runs");
    (ours, child)
}

/// A place for one hostile-target test: `outside/` (a victim directory
/// holding `keep`) and `work/`, where destinations go (`work/dest`).
pub struct Site {
    dir: TempDir,
}

impl Site {
    pub fn new(tag: &str) -> Site {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new(tag);
        std::fs::create_dir(dir.path().join("outside")).expect("mkdir outside");
        std::fs::set_permissions(dir.path().join("outside"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::write(dir.path().join("outside/keep"), b"keep\n").expect("write");
        std::fs::create_dir(dir.path().join("work")).expect("mkdir work");
        Site { dir }
    }
    pub fn root(&self) -> &Path {
        self.dir.path()
    }
    pub fn outside(&self) -> PathBuf {
        self.root().join("outside")
    }
    /// The file a target would love to overwrite.
    pub fn victim(&self) -> PathBuf {
        self.outside().join("keep")
    }
    pub fn work(&self) -> PathBuf {
        self.root().join("work")
    }
    pub fn dest(&self) -> PathBuf {
        self.work().join("dest")
    }
}

/// VmHWM (peak RSS) of this process, KiB.
pub fn peak_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").expect("status");
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// Resets the high-water mark to the current RSS (after handing memory an
/// earlier test freed back to the kernel) and returns it.
pub fn reset_peak() -> u64 {
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe { libc::malloc_trim(0) };
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM");
    peak_kib()
}

/// Every path under `root` (itself included), symlinks not followed, each
/// turned into what a test compares by `seen` (given its `lstat`).
pub fn snapshot_tree<T>(
    root: &Path,
    seen: &dyn Fn(&Path, &std::fs::Metadata) -> T,
) -> std::collections::BTreeMap<PathBuf, T> {
    fn walk<T>(
        p: &Path,
        seen: &dyn Fn(&Path, &std::fs::Metadata) -> T,
        out: &mut std::collections::BTreeMap<PathBuf, T>,
    ) {
        let Ok(m) = std::fs::symlink_metadata(p) else { return };
        out.insert(p.to_path_buf(), seen(p, &m));
        if m.is_dir() {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                walk(&e.path(), seen, out);
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(root, seen, &mut out);
    out
}
