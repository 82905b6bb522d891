//! Trees fetched with `get -r` (issue 13): a hostile target
//! (`examples/hostile_agent.rs`) describing a tree that never ends, or one
//! with more entries or more bytes of names than the master plans, gets a
//! typed error while planning: nothing is created under the destination,
//! the master's memory and fds stay bounded. And a real tree's directories
//! and symlinks arrive with their own mtimes.
//!
//! Peak RSS and fds are this process's (the master's): the tests here take
//! turns ([`serial`]) and no other test shares the binary.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use common::hostile_harness as harness;
use common::TempDir;
use mito::master::tree::{MAX_TREE_DEPTH, MAX_TREE_ENTRIES, MAX_TREE_NAME_BYTES};
use mito::{Context, GetOptions, LocalOptions, Router, TransferError};

/// One test at a time: the peak RSS and fds measured are that test's.
fn serial() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A field of /proc/self/status, in KiB.
fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").expect("status");
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// Resets the high-water mark of RSS to the current RSS (after handing
/// memory an earlier test freed back to the kernel) and returns it.
fn reset_peak() -> u64 {
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe { libc::malloc_trim(0) };
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM");
    status_kib("VmHWM:")
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd").count()
}

/// What the master's process did while a plan ran.
#[derive(Debug)]
struct Watched {
    /// Growth of the peak RSS, KiB.
    rss_kib: u64,
    /// Most fds open beyond those open before.
    fds: usize,
    /// The watchdog killed the harness (the master's memory grew past
    /// `KILL_KIB`, or the plan took longer than `KILL_AFTER`).
    killed: bool,
}

/// Past this growth of RSS a plan is stopped (by killing the harness):
/// enough to fail a master without limits quickly, before it takes the
/// machine's memory.
const KILL_KIB: u64 = 512 << 10;
/// And past this time.
const KILL_AFTER: Duration = Duration::from_secs(60);

/// Runs `plan` while a watchdog samples this process's RSS and fds, and
/// kills the harness behind `ctx` when the plan runs away.
fn watched<T>(ctx: &Context, plan: impl FnOnce() -> T) -> (T, Watched) {
    let pid = ctx.connect_info().pid;
    let (rss0, fds0) = (reset_peak(), open_fds());
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            let (t0, mut fds, mut killed) = (Instant::now(), 0, false);
            while !done.load(Ordering::Relaxed) {
                fds = fds.max(open_fds().saturating_sub(fds0));
                let grown = status_kib("VmRSS:").saturating_sub(rss0);
                if !killed && (grown > KILL_KIB || t0.elapsed() > KILL_AFTER) {
                    eprintln!("watchdog: RSS grew by {grown} KiB in {:?}: killing the harness", t0.elapsed());
                    common::kill9(pid);
                    killed = true;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (fds, killed)
        })
    };
    let r = plan();
    done.store(true, Ordering::Relaxed);
    let (fds, killed) = watchdog.join().expect("watchdog");
    (r, Watched { rss_kib: status_kib("VmHWM:").saturating_sub(rss0), fds, killed })
}

/// A place for one test: the destination goes in `work/`, which must stay
/// empty when a plan is refused.
struct Site {
    dir: TempDir,
}

impl Site {
    fn new(tag: &str) -> Site {
        let dir = TempDir::new(tag);
        std::fs::create_dir(dir.path().join("work")).expect("mkdir work");
        Site { dir }
    }
    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }
    fn dest(&self) -> PathBuf {
        self.work().join("dest")
    }
    fn assert_untouched(&self) {
        let left: Vec<_> = std::fs::read_dir(self.work()).expect("ls work").flatten().map(|e| e.path()).collect();
        assert!(left.is_empty(), "written under the destination's directory: {left:?}");
    }
}

/// A context whose "agent" is the harness playing `scenario`.
fn hostile(router: &Router, scenario: &str, site: &Site) -> Context {
    router
        .local(LocalOptions {
            name: Some(format!("hostile-{scenario}")),
            sh: harness(),
            env: vec![("MITO_HOSTILE".into(), scenario.into()), ("MITO_HOSTILE_OUTSIDE".into(), site.work().into())],
            connect_timeout: Duration::from_secs(10),
        })
        .expect("the harness says hello")
}

/// `get -r /t` into the site's destination, as the CLI does it: the plan,
/// then (only if it was made) the copy.
fn get_tree(ctx: &Context, site: &Site) -> Result<mito::TreeStats, TransferError> {
    let plan = ctx.plan_remote_tree("/t")?;
    ctx.get_tree_with("/t", site.dest(), &plan, &GetOptions::default(), &|_| {})
}

/// A tree that never ends (every directory lists a directory `d`) is
/// refused with `TreeTooDeep` at the first level past `MAX_TREE_DEPTH`,
/// naming the context and the path, before anything is created; the
/// master's memory and fds hardly move. A master without the limit plans
/// on forever, its memory growing with the square of the depth (the
/// watchdog stops it), and a tree that does end past ~1000 levels kills
/// the copy with EMFILE after creating those directories.
#[test]
fn an_endless_tree_is_refused_at_the_depth_limit() {
    let _turn = serial();
    let router = Router::new().expect("router");
    let site = Site::new("deep");
    let ctx = hostile(&router, "deep", &site);
    let t0 = Instant::now();
    let (r, seen) = watched(&ctx, || get_tree(&ctx, &site));
    eprintln!("deep tree: {:?}, {seen:?}", t0.elapsed());
    let want = format!("/t{}", "/d".repeat(MAX_TREE_DEPTH + 1));
    match &r {
        Err(e @ TransferError::TreeTooDeep { context, path, limit }) => {
            assert_eq!((context.as_str(), *limit), (ctx.name(), MAX_TREE_DEPTH));
            assert_eq!(path, Path::new(&want));
            let text = e.to_string();
            assert!(text.contains(ctx.name()) && text.contains("deeper than 256 levels at /t/d/d/"), "{text}");
        }
        other => panic!("wanted TreeTooDeep, got {other:?} ({seen:?})"),
    }
    assert!(!seen.killed, "the plan ran away: {seen:?}");
    site.assert_untouched();
    assert!(seen.fds < 16, "the master opened {} more fds", seen.fds);
    assert!(seen.rss_kib < 32 << 10, "the master's peak RSS grew by {} KiB", seen.rss_kib);
    ctx.ping().expect("the context still answers");
}

/// `/t` lists 1000 directories of 1000 files: one entry more than
/// `MAX_TREE_ENTRIES` in all (no single listing is large). Refused with
/// `TreeTooManyEntries` while planning, nothing created; the plan's memory
/// stays within the bound the module docs give. A master without the
/// limit plans all of it, then creates the destination and fails on the
/// first file.
#[test]
fn a_tree_with_too_many_entries_is_refused() {
    let _turn = serial();
    let router = Router::new().expect("router");
    let site = Site::new("wide");
    let ctx = hostile(&router, "wide", &site);
    let t0 = Instant::now();
    let (r, seen) = watched(&ctx, || get_tree(&ctx, &site));
    eprintln!("wide tree: {:?}, {seen:?}", t0.elapsed());
    match &r {
        Err(e @ TransferError::TreeTooManyEntries { context, path, limit }) => {
            assert_eq!((context.as_str(), *limit), (ctx.name(), MAX_TREE_ENTRIES));
            assert!(path.starts_with("/t") && path != Path::new("/t"), "{}", path.display());
            let text = e.to_string();
            assert!(text.contains(ctx.name()) && text.contains("more than 1000000 entries (at /t/"), "{text}");
        }
        other => panic!("wanted TreeTooManyEntries, got {other:?} ({seen:?})"),
    }
    assert!(!seen.killed, "the plan ran away: {seen:?}");
    site.assert_untouched();
    assert!(seen.rss_kib < 256 << 10, "the master's peak RSS grew by {} KiB", seen.rss_kib);
    ctx.ping().expect("the context still answers");
}

/// Directories of 1000 files with 250-byte names, until the names add up
/// to more than `MAX_TREE_NAME_BYTES` (about 270 000 entries, well under
/// `MAX_TREE_ENTRIES`): `TreeNamesTooLong`, nothing created. A master
/// without the limit plans it all and creates the destination.
#[test]
fn a_tree_whose_names_add_up_past_the_limit_is_refused() {
    let _turn = serial();
    let router = Router::new().expect("router");
    let site = Site::new("long-names");
    let ctx = hostile(&router, "wide-long-names", &site);
    let t0 = Instant::now();
    let (r, seen) = watched(&ctx, || get_tree(&ctx, &site));
    eprintln!("long names: {:?}, {seen:?}", t0.elapsed());
    match &r {
        Err(e @ TransferError::TreeNamesTooLong { context, path, limit }) => {
            assert_eq!((context.as_str(), *limit), (ctx.name(), MAX_TREE_NAME_BYTES));
            assert!(path.starts_with("/t") && path != Path::new("/t"), "{}", path.display());
            assert!(e.to_string().contains(&format!("more than {MAX_TREE_NAME_BYTES} bytes of names")), "{e}");
        }
        other => panic!("wanted TreeNamesTooLong, got {other:?} ({seen:?})"),
    }
    assert!(!seen.killed, "the plan ran away: {seen:?}");
    site.assert_untouched();
    assert!(seen.rss_kib < 256 << 10, "the master's peak RSS grew by {} KiB", seen.rss_kib);
}

/// A real tree exactly `MAX_TREE_DEPTH` directories deep is fetched (the
/// copy holds a directory fd per level, within the limit); one file more
/// at the bottom makes it one level too deep: `TreeTooDeep` naming that
/// file, and nothing created.
#[test]
fn a_real_tree_at_the_depth_limit_is_copied_and_one_level_more_is_refused() {
    let _turn = serial();
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    let site = Site::new("depth-limit");
    let src = site.dir.path().join("src");
    let bottom = (0..MAX_TREE_DEPTH).fold(src.clone(), |p, _| p.join("d"));
    std::fs::create_dir_all(&bottom).expect("mkdir -p");
    let plan = ctx.plan_remote_tree(&src).expect("plan");
    let st = ctx.get_tree(&src, site.dest(), &plan, &|_| {}).expect("get -r");
    assert_eq!(st.dirs, MAX_TREE_DEPTH as u64 + 1);
    let copied = (0..MAX_TREE_DEPTH).fold(site.dest(), |p, _| p.join("d"));
    assert!(copied.is_dir(), "the bottom arrived");
    std::fs::remove_dir_all(site.dest()).expect("rm -r dest");

    std::fs::write(bottom.join("f"), b"one level too deep\n").expect("write");
    match ctx.plan_remote_tree(&src) {
        Err(TransferError::TreeTooDeep { path, limit, .. }) => {
            assert_eq!((path, limit), (bottom.join("f"), MAX_TREE_DEPTH));
        }
        other => panic!("wanted TreeTooDeep, got {:?}", other.map(|_| "a plan")),
    }
    site.assert_untouched();
}

/// `(mtime, mtime_nsec)` of `p`, not following a symlink.
fn mtime_of(p: &Path) -> (i64, i64) {
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.mtime(), m.mtime_nsec())
}

/// Sets the mtime of `p` itself (a symlink's own, not its target's).
fn set_mtime(p: &Path, secs: i64, nsec: i64) {
    use rustix::fs::{AtFlags, Timespec, Timestamps, CWD, UTIME_OMIT};
    let times = Timestamps {
        last_access: Timespec { tv_sec: 0, tv_nsec: UTIME_OMIT },
        last_modification: Timespec { tv_sec: secs, tv_nsec: nsec as _ },
    };
    rustix::fs::utimensat(CWD, p, &times, AtFlags::SYMLINK_NOFOLLOW).expect("utimensat");
}

/// `get -r` of a real tree keeps every directory's mtime (the top's, a
/// nested one's, a read-only one's: set after their contents are in) and
/// every symlink's own mtime (one to a file, one dangling), to the
/// nanosecond, as it already did for files. Before, directories and
/// symlinks had the time of the copy.
#[test]
fn get_r_keeps_directory_and_symlink_mtimes() {
    let _turn = serial();
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    let site = Site::new("mtimes");
    let src = site.dir.path().join("src");
    std::fs::create_dir_all(src.join("a/b")).expect("mkdir");
    std::fs::create_dir(src.join("ro")).expect("mkdir");
    std::fs::write(src.join("a/f"), b"file\n").expect("write");
    std::fs::write(src.join("a/b/g"), b"deeper\n").expect("write");
    std::fs::write(src.join("ro/h"), b"read-only dir\n").expect("write");
    std::os::unix::fs::symlink("f", src.join("a/link")).expect("symlink");
    std::os::unix::fs::symlink("nowhere", src.join("dangling")).expect("symlink");
    // Contents first, then each object's time (children before parents:
    // creating an entry sets its directory's mtime).
    let times: Vec<(&str, i64, i64)> = vec![
        ("a/f", 1_500_000_000, 1),
        ("a/b/g", 1_500_000_001, 2),
        ("ro/h", 1_500_000_002, 3),
        ("a/link", 1_400_000_000, 123_456_789),
        ("dangling", 1_400_000_001, 987_654_321),
        ("a/b", 1_300_000_000, 111_111_111),
        ("a", 1_300_000_001, 222_222_222),
        ("ro", 1_300_000_002, 333_333_333),
        ("", 1_200_000_000, 444_444_444),
    ];
    for (rel, secs, nsec) in &times {
        set_mtime(&src.join(rel), *secs, *nsec);
    }
    std::fs::set_permissions(src.join("ro"), std::os::unix::fs::PermissionsExt::from_mode(0o555)).expect("chmod");
    let plan = ctx.plan_remote_tree(&src).expect("plan");
    let st = ctx.get_tree(&src, site.dest(), &plan, &|_| {}).expect("get -r");
    assert_eq!((st.files, st.dirs, st.symlinks), (3, 4, 2), "{st:?}");
    let wrong: Vec<String> = times
        .iter()
        .filter_map(|(rel, secs, nsec)| {
            let got = mtime_of(&site.dest().join(rel));
            (got != (*secs, *nsec)).then(|| format!("{rel:?}: {got:?}, wanted {:?}", (secs, nsec)))
        })
        .collect();
    assert!(wrong.is_empty(), "mtimes not kept:\n{}", wrong.join("\n"));
    assert_eq!(std::fs::read_link(site.dest().join("a/link")).expect("readlink"), Path::new("f"));
    for ro in [src.join("ro"), site.dest().join("ro")] {
        std::fs::set_permissions(ro, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    }
}
