//! Co-tenants: another local user must not get a target's stage0 to run
//! their file (issue 13). The attacker (`mito-user`) pre-creates the
//! fallback directories of the target (`/dev/shm/mito-<uid>`,
//! `/var/tmp/mito-<uid>`, `/tmp/mito-<uid>`): as 0777 directories, as
//! their own 0755 directories, and as symlinks to a directory they own,
//! holding a genuine agent (right hash, their file) or a script of the
//! right size that leaves a mark if it ever runs. The target is
//! `mito-nohome`, whose home is `/nonexistent` (like `www-data` or
//! `nobody`): no `~/.cache`, so stage0 goes straight to the fallbacks.
//!
//! What ran is checked from the outside: the sha256 of
//! `/proc/<agent>/exe` (not what the agent says), its path (a memfd, or a
//! 0700 directory of the target, in a file of the target that no one else
//! may write) and the marks directory (empty).
//!
//! Also here, without other users: where no hash tool exists (`PATH`
//! without sha256sum, shasum, openssl, busybox) a cached agent is never
//! trusted, and every real hash tool is enough for the cache to be used.
//!
//! Every directory a test creates under /dev/shm, /var/tmp and /tmp is
//! removed when the test ends, failed or not ([`Scene`]'s Drop).
//!
//! All but two fail against the stage0 before these checks (it ran what
//! it found in a taken directory, and trusted the size where sha256sum was
//! missing). The two others guard what the checks must not break: every
//! hash tool still lets the cache be used, and a cached copy on a noexec
//! mount is still passed over.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, Once};

use common::{local_in, skip_loudly, TempDir};
use mito::connect::bootstrap::Upload;
use mito::connect::embedded::{self, EmbeddedAgent};
use mito::{Context, LocalOptions, Router, SudoOptions};

/// The target: home `/nonexistent`, so only the fallbacks are left.
const TARGET: &str = "mito-nohome";
/// The other local user.
const ATTACKER: &str = "mito-user";

/// The tests of this file share the target's fallback directories.
static SERIAL: Mutex<()> = Mutex::new(());

fn agent() -> &'static EmbeddedAgent {
    let u = rustix::system::uname();
    let arch = u.machine().to_string_lossy().into_owned();
    embedded::for_arch(&arch).expect("an embedded agent for this machine")
}

fn id(flag: &str, user: &str) -> u32 {
    let o = Command::new("id").args([flag, user]).output().expect("id");
    assert!(o.status.success(), "id {flag} {user}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().parse().expect("a number")
}

/// uid and gid of a user.
fn ids(user: &str) -> (u32, u32) {
    (id("-u", user), id("-g", user))
}

/// Root, the attacker (scripts/test-become) and the target (created here,
/// idempotently); false after a loud skip.
fn setup(test: &str) -> bool {
    if !common::become_users(test) {
        return false;
    }
    static TARGET_USER: Once = Once::new();
    TARGET_USER.call_once(|| {
        let there = Command::new("id").arg(TARGET).output().is_ok_and(|o| o.status.success());
        if !there {
            let st = Command::new("useradd").args(["-M", "-d", "/nonexistent", "-s", "/bin/sh", TARGET]).status();
            assert!(st.is_ok_and(|s| s.success()), "useradd {TARGET}");
        }
    });
    assert!(!Path::new("/nonexistent").exists(), "{TARGET}'s home must not exist");
    true
}

/// Removes a file, symlink (not what it points to) or directory tree.
fn remove_any(p: &Path) {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            let _ = std::fs::remove_dir_all(p);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(p);
        }
        Err(_) => {}
    }
}

fn chown(p: &Path, (uid, gid): (u32, u32)) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).expect("chown");
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// How the attacker takes one of the target's fallback names.
#[derive(Clone, Copy, Debug)]
enum Take {
    /// A directory of theirs, mode 0777.
    OpenDir,
    /// A directory of theirs, mode 0755.
    TheirDir,
    /// A symlink to a 0755 directory of theirs.
    Symlink,
}

/// What the attacker puts there as `agent-<sha256>`.
#[derive(Clone, Copy, Debug)]
enum Payload {
    /// A copy of the real agent (right hash), their file, mode 0755.
    Genuine,
    /// A script of the agent's exact size that marks the marks directory,
    /// then runs the attacker's copy of the real agent (so that a connect
    /// that ran it still succeeds and the test can look at it).
    Trojan,
}

/// The target's fallback directories, the attacker's stash and the marks
/// directory; all removed on drop, whatever the test's outcome.
struct Scene {
    target: (u32, u32),
    attacker: (u32, u32),
    stash: PathBuf,
    marks: PathBuf,
    links: u32,
}

impl Scene {
    fn new() -> Scene {
        let target = ids(TARGET);
        let attacker = ids(ATTACKER);
        let stash = PathBuf::from(format!("/tmp/mito-cotenant-stash-{}", std::process::id()));
        let marks = PathBuf::from(format!("/tmp/mito-cotenant-marks-{}", std::process::id()));
        let s = Scene { target, attacker, stash, marks, links: 0 };
        s.clean();
        for d in [&s.stash, &s.marks] {
            std::fs::create_dir(d).expect("mkdir");
        }
        chown(&s.stash, attacker);
        chmod(&s.stash, 0o755);
        chmod(&s.marks, 0o1777);
        // The attacker's own copy of the real agent, which the trojans run.
        let real = s.stash.join("real-agent");
        std::fs::write(&real, agent().raw()).expect("write");
        chown(&real, attacker);
        chmod(&real, 0o755);
        s
    }

    /// `/dev/shm/mito-<uid>`, `/var/tmp/mito-<uid>`, `/tmp/mito-<uid>`.
    fn fallbacks(&self) -> [PathBuf; 3] {
        let u = self.target.0;
        ["/dev/shm", "/var/tmp", "/tmp"].map(|p| PathBuf::from(format!("{p}/mito-{u}")))
    }

    fn clean(&self) {
        for p in self.fallbacks().iter().chain([&self.stash, &self.marks]) {
            remove_any(p);
        }
    }

    /// Writes `payload` as `dir/agent-<sha256>`, owned by `owner`.
    fn plant(&self, dir: &Path, payload: Payload, owner: (u32, u32), mode: u32) -> PathBuf {
        let a = agent();
        let f = dir.join(format!("agent-{}", a.sha256));
        let bytes = match payload {
            Payload::Genuine => a.raw(),
            Payload::Trojan => {
                let mark = self.marks.join(format!("ran-{}", dir.display().to_string().replace('/', "_")));
                let mut s = format!(
                    "#!/bin/sh\n: >'{}'\nexec '{}' \"$@\"\n",
                    mark.display(),
                    self.stash.join("real-agent").display()
                )
                .into_bytes();
                assert!(s.len() < a.raw_len);
                s.resize(a.raw_len, b'#');
                s
            }
        };
        std::fs::write(&f, bytes).expect("plant");
        chown(&f, owner);
        chmod(&f, mode);
        f
    }

    /// The attacker takes `name` (one of the fallbacks) with `payload` inside.
    fn take(&mut self, name: &Path, how: Take, payload: Payload) {
        let dir = match how {
            Take::OpenDir | Take::TheirDir => name.to_path_buf(),
            Take::Symlink => {
                self.links += 1;
                let d = self.stash.join(format!("linked-{}", self.links));
                std::os::unix::fs::symlink(&d, name).expect("symlink");
                chown(name, self.attacker);
                d
            }
        };
        std::fs::create_dir(&dir).expect("mkdir");
        chown(&dir, self.attacker);
        chmod(&dir, if matches!(how, Take::OpenDir) { 0o777 } else { 0o755 });
        self.plant(&dir, payload, self.attacker, 0o755);
    }

    /// Marks left by trojans that ran.
    fn marks_left(&self) -> Vec<String> {
        std::fs::read_dir(&self.marks)
            .map(|r| r.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    }

    /// What is in each name the attacker took (following their symlinks).
    fn taken_contents(&self) -> Vec<(PathBuf, Vec<String>)> {
        self.fallbacks()
            .iter()
            .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.uid() == self.attacker.0))
            .map(|p| {
                let mut names: Vec<String> = std::fs::read_dir(p)
                    .map(|r| r.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                    .unwrap_or_default();
                names.sort();
                (p.clone(), names)
            })
            .collect()
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        self.clean();
    }
}

/// sha256 of the binary a process runs, read by root from the outside.
fn sha256_of_running(pid: u32) -> String {
    let o = Command::new("sha256sum").arg(format!("/proc/{pid}/exe")).output().expect("sha256sum");
    String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap_or("").to_string()
}

/// The agent that runs in `ctx` is ours: the real agent's bytes (hashed
/// from /proc), run as `uid` from a memfd or from a 0700 directory of
/// `uid` (not a symlink), in a file of `uid` no one else may write.
/// Returns the path it runs from.
fn assert_agent_is_ours(ctx: &Context, uid: u32) -> String {
    let a = agent();
    let info = ctx.info().expect("info");
    assert_eq!(info.uid, uid, "the agent runs as the target");
    assert_eq!(info.agent_hash, a.sha256);
    assert_eq!(sha256_of_running(info.pid), a.sha256, "the binary running is the real agent ({})", info.exe);
    if !info.exe.starts_with("/memfd:") {
        let exe = Path::new(&info.exe);
        let dir = exe.parent().expect("a directory");
        let dm = std::fs::symlink_metadata(dir).expect("stat dir");
        assert!(dm.is_dir(), "{} is a real directory", dir.display());
        assert_eq!(dm.uid(), uid, "{} belongs to the target (agent ran from {})", dir.display(), info.exe);
        assert_eq!(dm.mode() & 0o777, 0o700, "{} is private", dir.display());
        let fm = std::fs::symlink_metadata(exe).expect("stat exe");
        assert!(fm.is_file(), "{} is a regular file", info.exe);
        assert_eq!(fm.uid(), uid, "{} belongs to the target", info.exe);
        assert_eq!(fm.mode() & 0o022, 0, "{} is not group/other-writable", info.exe);
    }
    info.exe
}

/// The attacker takes all three fallbacks `how`, with a genuine agent
/// (right hash, their file) inside; the target connects through sudo. No
/// fallback is usable, so the agent runs from a memfd; the attacker's
/// directories are left as they were.
fn all_fallbacks_taken(test: &str, how: Take) {
    if !setup(test) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut scene = Scene::new();
    for f in scene.fallbacks() {
        scene.take(&f, how, Payload::Genuine);
    }
    let before = scene.taken_contents();
    let router = Router::new().expect("router");
    let ctx = router.sudo(SudoOptions::new(TARGET)).expect("sudo to the target");
    let exe = assert_agent_is_ours(&ctx, scene.target.0);
    assert!(exe.starts_with("/memfd:"), "every fallback is taken, yet the agent ran from {exe}");
    assert_eq!(ctx.connect_info().upload, Upload::Memfd);
    ctx.shutdown();
    assert_eq!(scene.taken_contents(), before, "nothing written into the attacker's directories");
}

#[test]
fn fallbacks_taken_as_open_dirs_are_skipped() {
    all_fallbacks_taken("fallbacks_taken_as_open_dirs_are_skipped", Take::OpenDir);
}

#[test]
fn fallbacks_taken_as_their_dirs_are_skipped() {
    all_fallbacks_taken("fallbacks_taken_as_their_dirs_are_skipped", Take::TheirDir);
}

#[test]
fn fallbacks_taken_as_symlinks_are_skipped() {
    all_fallbacks_taken("fallbacks_taken_as_symlinks_are_skipped", Take::Symlink);
}

/// Only `/dev/shm/mito-<uid>` is taken (`how`): stage0 moves on to
/// `/var/tmp/mito-<uid>`, makes it its own (0700) and the next connect
/// runs the cached copy from there.
fn first_fallback_taken(test: &str, how: Take) {
    if !setup(test) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut scene = Scene::new();
    let [shm, var_tmp, _] = scene.fallbacks();
    scene.take(&shm, how, Payload::Genuine);
    let router = Router::new().expect("router");
    let ctx = router.sudo(SudoOptions::new(TARGET)).expect("sudo to the target");
    let exe = assert_agent_is_ours(&ctx, scene.target.0);
    assert_eq!(Path::new(&exe).parent(), Some(var_tmp.as_path()));
    assert!(matches!(ctx.connect_info().upload, Upload::Stored { .. }));
    ctx.shutdown();
    let again = router.sudo(SudoOptions::new(TARGET)).expect("sudo to the target again");
    assert_eq!(assert_agent_is_ours(&again, scene.target.0), exe);
    assert_eq!(again.connect_info().upload, Upload::Cached);
    again.shutdown();
}

#[test]
fn shm_taken_as_open_dir_moves_on_to_var_tmp() {
    first_fallback_taken("shm_taken_as_open_dir_moves_on_to_var_tmp", Take::OpenDir);
}

#[test]
fn shm_taken_as_their_dir_moves_on_to_var_tmp() {
    first_fallback_taken("shm_taken_as_their_dir_moves_on_to_var_tmp", Take::TheirDir);
}

#[test]
fn shm_taken_as_symlink_moves_on_to_var_tmp() {
    first_fallback_taken("shm_taken_as_symlink_moves_on_to_var_tmp", Take::Symlink);
}

/// `/dev/shm/mito-<uid>` of the target, 0700, holding `payload` as
/// `agent-<sha256>` owned by `owner` with `mode`.
fn own_shm(scene: &Scene, dir_mode: u32, owner: (u32, u32), mode: u32) -> PathBuf {
    let [shm, _, _] = scene.fallbacks();
    std::fs::create_dir(&shm).expect("mkdir");
    chown(&shm, scene.target);
    chmod(&shm, dir_mode);
    scene.plant(&shm, Payload::Genuine, owner, mode)
}

/// The target's own private directory holds another user's file (planted
/// while it was open): it is replaced by an upload, not run, even though
/// its hash is right.
#[test]
fn foreign_file_in_an_own_private_dir_is_replaced() {
    if !setup("foreign_file_in_an_own_private_dir_is_replaced") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let scene = Scene::new();
    let planted = own_shm(&scene, 0o700, scene.attacker, 0o755);
    let router = Router::new().expect("router");
    let ctx = router.sudo(SudoOptions::new(TARGET)).expect("sudo to the target");
    assert_eq!(assert_agent_is_ours(&ctx, scene.target.0), planted.display().to_string());
    assert!(ctx.connect_info().agent_bytes_sent > 0, "uploaded again, not run from the foreign file");
    ctx.shutdown();
    assert_eq!(std::fs::metadata(&planted).expect("replaced").uid(), scene.target.0);
}

/// The target's own file in its own private directory, but writable by
/// group and others: replaced by an upload, not run.
#[test]
fn own_file_writable_by_others_is_replaced() {
    if !setup("own_file_writable_by_others_is_replaced") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let scene = Scene::new();
    let planted = own_shm(&scene, 0o700, scene.target, 0o777);
    let router = Router::new().expect("router");
    let ctx = router.sudo(SudoOptions::new(TARGET)).expect("sudo to the target");
    assert_eq!(assert_agent_is_ours(&ctx, scene.target.0), planted.display().to_string());
    assert!(ctx.connect_info().agent_bytes_sent > 0, "a group/other-writable file is not trusted");
    ctx.shutdown();
}

/// The target's own directory open to all (0777, the target's mistake):
/// skipped whatever it holds, the next fallback is used.
#[test]
fn own_dir_open_to_others_is_skipped() {
    if !setup("own_dir_open_to_others_is_skipped") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let scene = Scene::new();
    own_shm(&scene, 0o777, scene.target, 0o700);
    let router = Router::new().expect("router");
    let ctx = router.sudo(SudoOptions::new(TARGET)).expect("sudo to the target");
    let exe = assert_agent_is_ours(&ctx, scene.target.0);
    assert_eq!(Path::new(&exe).parent(), Some(scene.fallbacks()[1].as_path()));
    ctx.shutdown();
}

/// A directory of symlinks to the tools stage0 and the trojans use; no
/// sha256sum, shasum, openssl or busybox unless named in `hash_tools`.
fn tools_path(dir: &Path, hash_tools: &[&str]) -> PathBuf {
    const TOOLS: &[&str] = &[
        "sh", "dash", "bash", "ls", "id", "uname", "mkdir", "chmod", "rm", "mv", "head", "gzip", "wc", "perl", "cat",
        "env", "touch",
    ];
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir bin");
    chmod(dir, 0o755);
    for t in TOOLS.iter().chain(hash_tools) {
        let found = ["/usr/local/bin", "/usr/bin", "/bin"].iter().map(|d| Path::new(d).join(t)).find(|p| p.exists());
        if let Some(p) = found {
            let _ = std::os::unix::fs::symlink(p, bin.join(t));
        }
    }
    for h in ["sha256sum", "shasum", "openssl", "busybox"] {
        assert_eq!(bin.join(h).exists(), hash_tools.contains(&h), "{h}");
    }
    bin
}

/// A shell for the local method that becomes `user` (setpriv), with `PATH`
/// set to `path`, `HOME=/nonexistent` and no XDG directories.
fn shell_as(dir: &Path, (uid, gid): (u32, u32), path: &Path) -> PathBuf {
    let sh = dir.join("sh-as-target");
    std::fs::write(
        &sh,
        format!(
            "#!/bin/sh\nexec setpriv --reuid={uid} --regid={gid} --clear-groups /usr/bin/env -u XDG_RUNTIME_DIR \
             -u XDG_CACHE_HOME HOME=/nonexistent PATH='{}' /bin/sh \"$@\"\n",
            path.display()
        ),
    )
    .expect("write");
    chmod(&sh, 0o755);
    sh
}

/// No hash tool on the target: a script of the agent's exact size, planted
/// by the attacker in each fallback, taken `how`, never runs.
fn right_sized_plants_without_a_hash_tool(test: &str, how: Take) {
    if !setup(test) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let tmp = TempDir::new("cotenant-nohash");
    let path = tools_path(tmp.path(), &[]);
    let mut scene = Scene::new();
    for f in scene.fallbacks() {
        scene.take(&f, how, Payload::Trojan);
    }
    let opts = LocalOptions { sh: shell_as(tmp.path(), scene.target, &path), ..LocalOptions::default() };
    let router = Router::new().expect("router");
    let ctx = router.local(opts).expect("connect as the target");
    let exe = assert_agent_is_ours(&ctx, scene.target.0);
    assert!(exe.starts_with("/memfd:"), "ran from {exe}");
    assert_eq!(scene.marks_left(), Vec::<String>::new(), "a planted file ran");
    ctx.shutdown();
}

#[test]
fn without_a_hash_tool_right_sized_plants_in_open_dirs_never_run() {
    right_sized_plants_without_a_hash_tool(
        "without_a_hash_tool_right_sized_plants_in_open_dirs_never_run",
        Take::OpenDir,
    );
}

#[test]
fn without_a_hash_tool_right_sized_plants_in_their_dirs_never_run() {
    right_sized_plants_without_a_hash_tool(
        "without_a_hash_tool_right_sized_plants_in_their_dirs_never_run",
        Take::TheirDir,
    );
}

#[test]
fn without_a_hash_tool_right_sized_plants_behind_symlinks_never_run() {
    right_sized_plants_without_a_hash_tool(
        "without_a_hash_tool_right_sized_plants_behind_symlinks_never_run",
        Take::Symlink,
    );
}

/// No hash tool: the first connect stores the agent (a fresh upload into a
/// private directory); a cached copy is never trusted after that, so a
/// same-size file in its place is replaced, not run. Runs as any user.
#[test]
fn without_a_hash_tool_a_cached_agent_is_uploaded_again() {
    let tmp = TempDir::new("nohash-cache");
    let path = tools_path(tmp.path(), &[]);
    let cache = tmp.path().join("cache");
    let mut opts = local_in(&cache);
    opts.env.push(("PATH".into(), path.into_os_string()));
    let router = Router::new().expect("router");
    let ctx = router.local(opts.clone()).expect("connect without a hash tool");
    assert!(matches!(ctx.connect_info().upload, Upload::Stored { .. }), "{:?}", ctx.connect_info().upload);
    let cached = cache.join("mito").join(format!("agent-{}", agent().sha256));
    assert_eq!(ctx.connect_info().exe, cached.display().to_string());
    assert_eq!(sha256_of_running(ctx.connect_info().pid), agent().sha256);
    ctx.shutdown();

    let again = router.local(opts.clone()).expect("connect again");
    assert!(again.connect_info().agent_bytes_sent > 0, "the cached copy was trusted without a hash");
    again.shutdown();

    // A same-size script of ours in its place: not run, replaced.
    let real = tmp.path().join("real-agent");
    std::fs::write(&real, agent().raw()).expect("write");
    chmod(&real, 0o755);
    let mark = tmp.path().join("ran");
    let mut evil = format!("#!/bin/sh\n: >'{}'\nexec '{}' \"$@\"\n", mark.display(), real.display()).into_bytes();
    evil.resize(agent().raw_len, b'#');
    std::fs::write(&cached, &evil).expect("plant");
    chmod(&cached, 0o700);
    let third = router.local(opts).expect("connect a third time");
    assert!(!mark.exists(), "the same-size file ran");
    assert!(third.connect_info().agent_bytes_sent > 0);
    assert_eq!(sha256_of_running(third.connect_info().pid), agent().sha256);
    assert_eq!(std::fs::read(&cached).expect("replaced"), agent().raw());
}

/// Any real hash tool is enough for the cache: sha256sum, `shasum -a 256`,
/// `openssl dgst -sha256`, `busybox sha256sum` (those installed here).
#[test]
fn every_real_hash_tool_lets_the_cache_be_used() {
    let mut tried = Vec::new();
    for tool in ["sha256sum", "shasum", "openssl", "busybox"] {
        let tmp = TempDir::new("hash-tool");
        let path = tools_path(tmp.path(), &[]);
        let Some(p) = ["/usr/bin", "/bin"].iter().map(|d| Path::new(d).join(tool)).find(|p| p.exists()) else {
            continue;
        };
        if tool == "busybox"
            && !Command::new(&p).arg("sha256sum").arg("/dev/null").output().is_ok_and(|o| o.status.success())
        {
            continue;
        }
        std::os::unix::fs::symlink(&p, path.join(tool)).expect("symlink");
        let cache = tmp.path().join("cache");
        let mut opts = local_in(&cache);
        opts.env.push(("PATH".into(), path.into_os_string()));
        let router = Router::new().expect("router");
        // Stored in the cache, or run from a copy of ours in /dev/shm/mito-<uid>
        // that an earlier connect left: either way, a copy to trust next.
        router.local(opts.clone()).expect(tool).shutdown();
        let second = router.local(opts).expect(tool);
        assert_eq!(second.connect_info().upload, Upload::Cached, "{tool}: the cache is used");
        assert_eq!(sha256_of_running(second.connect_info().pid), agent().sha256, "{tool}");
        tried.push(tool);
    }
    assert!(tried.contains(&"sha256sum"), "tried: {tried:?}");
    if tried.len() < 2 {
        skip_loudly("every_real_hash_tool_lets_the_cache_be_used", "only sha256sum is installed here");
    }
}

/// A cached agent of ours in a directory of ours on a noexec mount (a home
/// shared over NFS may be mounted so on one host) is passed over, as the
/// `[ -x ]` before every exec of a cached file makes sure: the connect
/// goes on to the next directory instead of failing at `exec`.
#[test]
fn own_cached_agent_on_a_noexec_mount_is_passed_over() {
    if !common::is_root() {
        return skip_loudly(
            "own_cached_agent_on_a_noexec_mount_is_passed_over",
            "a private mount namespace needs root",
        );
    }
    let tmp = TempDir::new("cotenant-noexec");
    let real = tmp.path().join("agent");
    std::fs::write(&real, agent().raw()).expect("write");
    let cache = tmp.path().join("cache");
    std::fs::create_dir(&cache).expect("mkdir");
    // The next directory: here, not /dev/shm/mito-0 (nothing left behind).
    let run = tmp.path().join("run");
    let script = format!(
        r#"
        set -e
        exec 3<"$0"
        mount -t tmpfs -o noexec,mode=755 tmpfs '{cache}'
        mkdir -m 700 '{cache}/mito'
        cp '{real}' '{cache}/mito/agent-{hash}'
        chmod 700 '{cache}/mito/agent-{hash}'
        export XDG_CACHE_HOME='{cache}' XDG_RUNTIME_DIR='{run}'
        exec /proc/self/fd/3 info local --json
    "#,
        cache = cache.display(),
        real = real.display(),
        run = run.display(),
        hash = agent().sha256,
    );
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", &script, env!("CARGO_BIN_EXE_mito")])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("unshare");
    let (stdout, stderr) = common::output_text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let exe = v["exe"].as_str().unwrap_or("");
    assert_eq!(Path::new(exe).parent(), Some(run.join("mito").as_path()), "passed over to $XDG_RUNTIME_DIR/mito");
}

/// Where another user may reach a cache directory's ancestors, a root
/// target's own private cache with its own genuine agent in it.
#[derive(Clone, Copy, Debug)]
enum Attic {
    /// An ancestor of the attacker's (a service account's home owned by a
    /// deploy user).
    Theirs,
    /// An ancestor of root's, writable by the attacker's group, not sticky.
    GroupWritable,
    /// An ancestor of root's, 0755: nobody else may change it.
    Private,
}

/// Connects to root through the local method with `$XDG_CACHE_HOME` (and
/// `$XDG_RUNTIME_DIR`) below an ancestor set up `how`; returns where the
/// agent ran from, whether it was sent, and the planted cache file.
fn cache_below(how: Attic) -> (String, usize, PathBuf) {
    let scene = Scene::new();
    let attic = PathBuf::from(format!("/tmp/mito-cotenant-attic-{}", std::process::id()));
    struct Gone<'a>(&'a Path);
    impl Drop for Gone<'_> {
        fn drop(&mut self) {
            remove_any(self.0);
        }
    }
    remove_any(&attic);
    let _gone = Gone(&attic);
    std::fs::create_dir(&attic).expect("mkdir");
    match how {
        Attic::Theirs => {
            chown(&attic, scene.attacker);
            chmod(&attic, 0o755);
        }
        Attic::GroupWritable => {
            chown(&attic, (0, scene.attacker.1));
            chmod(&attic, 0o775);
        }
        Attic::Private => chmod(&attic, 0o755),
    }
    let cache = attic.join("cache");
    let dir = cache.join("mito");
    std::fs::create_dir_all(&dir).expect("mkdir");
    chmod(&cache, 0o755);
    chmod(&dir, 0o700);
    let planted = scene.plant(&dir, Payload::Genuine, (0, 0), 0o700);
    // The next candidate: $XDG_RUNTIME_DIR/mito in a private temp
    // directory, so that nothing is left in /dev/shm/mito-0 for other tests.
    let run = TempDir::new("cotenant-attic-run");
    let env = vec![("XDG_CACHE_HOME".into(), cache.clone().into()), ("XDG_RUNTIME_DIR".into(), run.path().into())];
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions { env, ..Default::default() }).expect("connect");
    let exe = assert_agent_is_ours(&ctx, 0);
    let sent = ctx.connect_info().agent_bytes_sent;
    ctx.shutdown();
    (exe, sent, planted)
}

/// A root target's own private cache below a directory another user owns,
/// or may write without the sticky bit: that user could rename the cache
/// away between stage0's check and its `exec` and put theirs in its place,
/// so it is passed over (before: the warm path ran it), while the same
/// cache below root's own 0755 directory is used as it is, nothing sent.
#[test]
fn cache_below_a_directory_others_may_change_is_not_used() {
    if !setup("cache_below_a_directory_others_may_change_is_not_used") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    for how in [Attic::Theirs, Attic::GroupWritable] {
        let (exe, _, planted) = cache_below(how);
        assert_ne!(exe, planted.display().to_string(), "{how:?}: the cache below the attic was used");
        assert!(!exe.contains("mito-cotenant-attic"), "{how:?}: ran from {exe}");
        assert!(exe.contains("cotenant-attic-run"), "{how:?}: the next candidate, $XDG_RUNTIME_DIR, is used: {exe}");
    }
    let (exe, sent, planted) = cache_below(Attic::Private);
    assert_eq!(exe, planted.display().to_string(), "below root's own directory the cache is used");
    assert_eq!(sent, 0, "warm: nothing sent");
}
