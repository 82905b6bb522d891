//! Delta sync (`Context::sync`, `mito sync`): only changed blocks cross
//! the wire, trees are compared by one listing, `--delete` stays inside
//! the destination, and a sync cut short leaves old or new files, never
//! partial ones. Local contexts and the test sshd.

mod common;

use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::sshd::Sshd;
use common::TempDir;
use mito::master::sync::{FailReason, SyncError, SyncOptions, SyncStats};
use mito::{Context, LocalOptions, Router};

fn random(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v = vec![0u8; n];
    rng.fill(&mut v);
    v
}

fn set_mtime(p: &Path, secs: u64) {
    let t = SystemTime::UNIX_EPOCH + Duration::new(secs, 123_456_789);
    std::fs::File::options().write(true).open(p).expect("open").set_modified(t).expect("mtime");
}

fn tree() -> SyncOptions {
    SyncOptions { recursive: true, delete: false }
}

/// A directory both the master and an ssh test user can write.
fn shared_dir(tag: &str) -> TempDir {
    let d = TempDir::new(tag);
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    d
}

/// 100 MiB synced once, one byte changed: the second sync sends under
/// 1 MiB and the result is the new file, byte for byte, with its mtime.
fn one_byte_change(ctx: &Context, d: &Path) {
    let src = d.join("big.src");
    let dst = d.join("big.dst");
    let mut data = random(100 << 20, 7);
    std::fs::write(&src, &data).expect("write");
    set_mtime(&src, 1_600_000_000);
    let first = ctx.sync(&src, &dst, &SyncOptions::default()).expect("first sync");
    assert_eq!((first.changed, first.deltas), (1, 0), "{first:?}");
    assert!(first.wire_bytes > 100 << 20, "the first sync sends the file: {first:?}");

    data[55_555_555] ^= 0x5a;
    std::fs::write(&src, &data).expect("write");
    set_mtime(&src, 1_600_000_100);
    let second = ctx.sync(&src, &dst, &SyncOptions::default()).expect("second sync");
    eprintln!("one byte changed in 100 MiB: {second:?}");
    assert_eq!((second.changed, second.deltas), (1, 1), "{second:?}");
    assert!(second.wire_bytes < 1 << 20, "one changed byte sent {} bytes", second.wire_bytes);
    assert!(second.literal_bytes <= 2 * 10240, "{second:?}");
    assert!(std::fs::read(&dst).expect("read") == data, "the destination is not the new file");
    let m = std::fs::metadata(&dst).expect("meta");
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_600_000_100, 123_456_789));

    // Unchanged: only the stat crosses.
    let third = ctx.sync(&src, &dst, &SyncOptions::default()).expect("third sync");
    assert_eq!(third.changed, 0, "{third:?}");
    assert!(third.wire_bytes < 1024, "{third:?}");
}

#[test]
fn one_byte_change_in_100_mib_sends_under_1_mib_locally() {
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    let d = TempDir::new("sync-1b");
    one_byte_change(&ctx, d.path());
}

#[test]
fn one_byte_change_in_100_mib_sends_under_1_mib_over_ssh() {
    let Some(sshd) = Sshd::start("one_byte_change_in_100_mib_sends_under_1_mib_over_ssh") else { return };
    let router = Router::new().expect("router");
    let ctx = router.ssh(sshd.opts("mito-user")).expect("connect");
    let d = shared_dir("sync-1b-ssh");
    one_byte_change(&ctx, d.path());
}

/// The rolling checksum finds blocks at any offset: 100 bytes inserted
/// at the start cost about 100 literal bytes, not the file; appended
/// data costs itself plus the old file's last partial block.
#[test]
fn insertion_and_append_send_only_the_new_bytes() {
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    let d = TempDir::new("sync-shift");
    let (src, dst) = (d.path().join("f.src"), d.path().join("f.dst"));
    let old = random(8 << 20, 1);
    std::fs::write(&src, &old).expect("write");
    ctx.sync(&src, &dst, &SyncOptions::default()).expect("first");

    let mut new = random(100, 2);
    new.extend_from_slice(&old);
    std::fs::write(&src, &new).expect("write");
    let s = ctx.sync(&src, &dst, &SyncOptions::default()).expect("insert");
    eprintln!("100 bytes inserted at the start of 8 MiB: {s:?}");
    assert_eq!(s.deltas, 1);
    assert_eq!(s.literal_bytes, 100, "{s:?}");
    assert!(s.wire_bytes < 64 * 1024, "{s:?}");
    assert!(std::fs::read(&dst).expect("read") == new);

    new.extend_from_slice(&random(5000, 3));
    std::fs::write(&src, &new).expect("write");
    let s = ctx.sync(&src, &dst, &SyncOptions::default()).expect("append");
    eprintln!("5000 bytes appended to 8 MiB: {s:?}");
    assert!(s.literal_bytes < 5000 + 4096, "{s:?}");
    assert!(std::fs::read(&dst).expect("read") == new);
}

fn write(p: &Path, data: &[u8], mtime: u64) {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    std::fs::write(p, data).expect("write");
    set_mtime(p, mtime);
}

fn assert_same_tree(a: &Path, b: &Path) {
    let out = Command::new("diff").arg("-r").arg("--no-dereference").arg(a).arg(b).output().expect("diff");
    assert!(out.status.success(), "trees differ: {}", String::from_utf8_lossy(&out.stdout));
}

/// `owner`: the ssh user, who must own what the test plants at the destination.
fn sync_tree_changes(ctx: &Context, d: &Path, owner: Option<&str>) {
    let (src, dst) = (d.join("src"), d.join("dst"));
    for i in 0..20 {
        write(&src.join(format!("d{}/f{i}", i % 4)), &random(1000 + i * 100, i as u64), 1_500_000_000);
    }
    write(&src.join("big"), &random(300_000, 99), 1_500_000_000);
    symlink("d0/f0", src.join("link")).expect("symlink");
    std::fs::set_permissions(src.join("d1/f1"), std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let s = ctx.sync(&src, &dst, &tree()).expect("first");
    assert_eq!((s.files, s.changed, s.symlinks), (21, 21, 1), "{s:?}");
    assert_same_tree(&src, &dst);
    assert_eq!(std::fs::metadata(dst.join("d1/f1")).expect("meta").mode() & 0o777, 0o600);

    // Change two files (one big: a delta), add one, remove one.
    write(&src.join("d0/f4"), b"changed", 1_500_000_100);
    let mut big = std::fs::read(src.join("big")).expect("read");
    big[1000] ^= 1;
    write(&src.join("big"), &big, 1_500_000_100);
    write(&src.join("d2/new"), b"new file", 1_500_000_100);
    std::fs::remove_file(src.join("d3/f3")).expect("rm");
    let s = ctx.sync(&src, &dst, &tree()).expect("second");
    assert_eq!((s.files, s.changed, s.deltas, s.deleted), (21, 3, 1, 0), "{s:?}");
    assert!(dst.join("d3/f3").exists(), "without --delete nothing is removed");
    std::fs::remove_file(dst.join("d3/f3")).expect("rm");
    assert_same_tree(&src, &dst);

    // With --delete: what the source lacks goes, nothing else.
    write(&dst.join("extra/deep/file"), b"x", 1);
    write(&dst.join("d1/stray"), b"x", 1);
    if let Some(user) = owner {
        assert!(Command::new("chown").arg("-R").arg(user).arg(&dst).status().expect("chown").success());
    }
    let s = ctx.sync(&src, &dst, &SyncOptions { recursive: true, delete: true }).expect("delete");
    assert_eq!((s.changed, s.deleted), (0, 2), "{s:?}");
    assert_same_tree(&src, &dst);
    let m = (std::fs::metadata(src.join("d2")).expect("m"), std::fs::metadata(dst.join("d2")).expect("m"));
    assert_eq!((m.0.mtime(), m.0.mode()), (m.1.mtime(), m.1.mode()), "directory mtime and mode");
}

#[test]
fn a_tree_with_changed_added_and_removed_files_locally() {
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    let d = TempDir::new("sync-tree");
    sync_tree_changes(&ctx, d.path(), None);
}

#[test]
fn a_tree_with_changed_added_and_removed_files_over_ssh() {
    let Some(sshd) = Sshd::start("a_tree_with_changed_added_and_removed_files_over_ssh") else { return };
    let router = Router::new().expect("router");
    let ctx = router.ssh(sshd.opts("mito-user")).expect("connect");
    // The ssh user creates the destination (and so may set its mode and mtime).
    let d = shared_dir("sync-tree-ssh");
    sync_tree_changes(&ctx, d.path(), Some("mito-user"));
}

/// An unchanged tree costs one listing call and nothing else.
#[test]
fn an_unchanged_tree_sends_only_the_listing() {
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    let d = TempDir::new("sync-same");
    let (src, dst) = (d.path().join("src"), d.path().join("dst"));
    for i in 0..500 {
        write(&src.join(format!("d{}/f{i}", i % 10)), format!("file {i}").as_bytes(), 1_500_000_000);
    }
    ctx.sync(&src, &dst, &tree()).expect("first");
    let s = ctx.sync(&src, &dst, &tree()).expect("second");
    eprintln!("unchanged tree of 500 files: {s:?}");
    assert_eq!((s.files, s.changed), (500, 0), "{s:?}");
    // One call: its frame header and name, the path and a number.
    assert!(s.wire_bytes < 200, "an unchanged tree sent {} bytes", s.wire_bytes);
}

/// `--delete` removes a symlink at the destination as a link, never
/// what it points to, and a symlink where the source has a directory is
/// replaced, not written through.
#[test]
fn delete_removes_symlinks_as_links_and_never_follows_them() {
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    let d = TempDir::new("sync-delete");
    let (src, dst, outside) = (d.path().join("src"), d.path().join("dst"), d.path().join("outside"));
    write(&outside.join("canary"), b"alive", 1);
    write(&outside.join("sub/canary2"), b"alive", 1);
    write(&src.join("keep"), b"keep", 1_500_000_000);
    write(&src.join("dir/file"), b"in dir", 1_500_000_000);
    std::fs::create_dir_all(&dst).expect("mkdir");
    // Not in the source: a link to a directory outside, with a canary.
    symlink(&outside, dst.join("escape")).expect("symlink");
    // In the source as a directory: a link to outside at the destination.
    symlink(&outside, dst.join("dir")).expect("symlink");
    // Deeper: a directory the source lacks holding a link out.
    std::fs::create_dir_all(dst.join("gone")).expect("mkdir");
    symlink(outside.join("sub"), dst.join("gone/link")).expect("symlink");

    let s = ctx.sync(&src, &dst, &SyncOptions { recursive: true, delete: true }).expect("sync");
    eprintln!("{s:?}");
    assert_eq!(std::fs::read(outside.join("canary")).expect("canary"), b"alive");
    assert_eq!(std::fs::read(outside.join("sub/canary2")).expect("canary2"), b"alive");
    assert!(!outside.join("file").exists(), "written through the symlink");
    let mut names: Vec<_> = std::fs::read_dir(&outside).expect("ls").map(|e| e.expect("e").file_name()).collect();
    names.sort();
    assert_eq!(names, ["canary", "sub"], "outside changed");
    assert!(std::fs::symlink_metadata(dst.join("escape")).is_err(), "the link stayed");
    assert!(std::fs::symlink_metadata(dst.join("dir")).expect("dir").is_dir());
    assert!(!dst.join("gone").exists());
    assert_same_tree(&src, &dst);
}

fn tmp_files(dir: &Path) -> Vec<String> {
    let out = Command::new("find").arg(dir).arg("-name").arg("*.mito-tmp.*").output().expect("find");
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

/// The agent killed in the middle of a sync of many changed files: each
/// destination file is its old or its new content, never a mix or a
/// part. SIGTERM lets the agent remove its temp files; SIGKILL cannot,
/// and still no final name holds a partial file.
#[test]
fn an_agent_killed_mid_sync_leaves_old_or_new_files_only() {
    for signal in ["-TERM", "-KILL"] {
        let router = Router::new().expect("router");
        let ctx = router.local(LocalOptions::default()).expect("connect");
        let d = TempDir::new("sync-kill");
        let (src, dst) = (d.path().join("src"), d.path().join("dst"));
        let n = 24;
        let size = 4 << 20;
        for i in 0..n {
            write(&src.join(format!("f{i:02}")), &random(size, i), 1_500_000_000);
        }
        ctx.sync(&src, &dst, &tree()).expect("first");
        // New content everywhere: every block differs, so every byte is literal.
        for i in 0..n {
            write(&src.join(format!("f{i:02}")), &random(size, 1000 + i), 1_500_000_100);
        }
        let pid = ctx.info().expect("info").pid;
        let result = std::thread::scope(|s| {
            let t = s.spawn(|| ctx.sync(&src, &dst, &tree()));
            let start = ctx.bytes_sent();
            let t0 = std::time::Instant::now();
            while ctx.bytes_sent() < start + (size as u64) * 3 && t0.elapsed() < Duration::from_secs(60) {
                std::thread::sleep(Duration::from_millis(1));
            }
            let st = Command::new("kill").arg(signal).arg(pid.to_string()).status().expect("kill");
            assert!(st.success());
            t.join().expect("sync thread")
        });
        assert!(matches!(result, Err(SyncError::Remote(_))), "{signal}: {result:?}");
        let (mut old, mut new) = (0, 0);
        for i in 0..n {
            let got = std::fs::read(dst.join(format!("f{i:02}"))).expect("read");
            if got == random(size, i) {
                old += 1;
            } else if got == random(size, 1000 + i) {
                new += 1;
            } else {
                panic!("{signal}: f{i:02} is neither old nor new ({} bytes)", got.len());
            }
        }
        eprintln!("{signal}: {new} files new, {old} old");
        assert!(old > 0, "{signal}: the kill came after the sync");
        if signal == "-TERM" {
            assert_eq!(tmp_files(&dst), Vec::<String>::new(), "temp files left by an agent that exited");
        }
    }
}

/// The CLI: per-file lines, a summary, exit codes, help.
#[test]
fn the_cli_reports_changed_and_unchanged_files() {
    let d = TempDir::new("sync-cli");
    let (src, dst) = (d.path().join("src"), d.path().join("dst"));
    write(&src.join("a"), b"a", 1_500_000_000);
    write(&src.join("b/c"), b"c", 1_500_000_000);
    let mito = env!("CARGO_BIN_EXE_mito");
    let run = |args: &[&str]| Command::new(mito).args(args).output().expect("mito");
    let dest = format!("local:{}", dst.display());
    let s = src.to_str().expect("utf-8");
    let o = run(&["sync", "-r", s, &dest]);
    let (out, err) = common::output_text(&o);
    assert!(o.status.success(), "{err}");
    assert_eq!(out, "changed a\nchanged b/c\n");
    assert!(err.contains("2 files checked, 2 changed"), "{err}");
    write(&src.join("a"), b"A", 1_500_000_001);
    let o = run(&["sync", "-r", s, &dest]);
    let (out, err) = common::output_text(&o);
    assert_eq!(out, "changed a\nunchanged b/c\n", "{err}");
    assert!(err.contains("2 files checked, 1 changed"), "{err}");
    // One file: "1 file checked".
    let one = d.path().join("one");
    let o = run(&["sync", src.join("a").to_str().expect("utf-8"), &format!("local:{}", one.display())]);
    let (out, err) = common::output_text(&o);
    assert_eq!(out, "changed one\n", "{err}");
    assert!(err.contains(": 1 file checked, 1 changed"), "{err}");

    let o = run(&["sync", "-r", "/nonexistent/src", &dest]);
    assert_eq!(o.status.code(), Some(255), "{o:?}");
    let o = run(&["sync", s, &dest]);
    assert_eq!(o.status.code(), Some(255), "a directory without -r: {o:?}");
    let o = run(&["sync", "--help"]);
    let (out, _) = common::output_text(&o);
    assert!(o.status.success() && out.contains("--delete") && out.contains("quick"), "{out}");
}

/// Hostile names in a listing are refused before anything is written
/// (the validation itself is unit-tested in `master::sync`); here a real
/// destination with odd but legal names (bytes that are not UTF-8, a
/// leading dash, spaces) syncs and deletes fine.
#[test]
fn odd_but_legal_names_round_trip() {
    use std::os::unix::ffi::OsStrExt;
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    let d = TempDir::new("sync-names");
    let (src, dst) = (d.path().join("src"), d.path().join("dst"));
    let odd = std::ffi::OsStr::from_bytes(b"\xff\xfe -x \n");
    write(&src.join(odd), b"odd", 1_500_000_000);
    write(&dst.join(std::ffi::OsStr::from_bytes(b"stale\xff")), b"x", 1);
    let s: SyncStats = ctx.sync(&src, &dst, &SyncOptions { recursive: true, delete: true }).expect("sync");
    assert_eq!((s.changed, s.deleted), (1, 1), "{s:?}");
    assert_eq!(std::fs::read(dst.join(odd)).expect("read"), b"odd");
    assert_same_tree(&src, &dst);
}

/// Sizes around the edges (empty, one byte, the delta threshold, whole
/// blocks with no short tail, a file shrinking or growing past a block):
/// each sync leaves exactly the new file.
#[test]
fn edge_sizes_round_trip() {
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    let d = TempDir::new("sync-edges");
    let (src, dst) = (d.path().join("f.src"), d.path().join("f.dst"));
    let cases: [(usize, usize); 9] = [
        (0, 1),
        (1, 0),
        (100_000, 0),
        (0, 100_000),
        (65_536, 65_536),
        (7 * 3072, 7 * 3072),
        (200_000, 70_000),
        (70_000, 200_000),
        (1 << 20, (1 << 20) + 1),
    ];
    for (i, (old, new)) in cases.into_iter().enumerate() {
        let old_data = random(old, i as u64);
        write(&src, &old_data, 1_500_000_000);
        ctx.sync(&src, &dst, &SyncOptions::default()).expect("old");
        assert!(std::fs::read(&dst).expect("read") == old_data, "case {i}: old");
        // The new file shares the old one's start and end where it can.
        let mut new_data = random(new, 100 + i as u64);
        let keep = old.min(new) / 2;
        new_data[..keep].copy_from_slice(&old_data[..keep]);
        if new > 0 {
            let last = new_data.len() - 1;
            new_data[last] ^= 1;
        }
        write(&src, &new_data, 1_500_000_100 + i as u64);
        let s = ctx.sync(&src, &dst, &SyncOptions::default()).expect("new");
        assert_eq!(s.changed, 1, "case {i}: {s:?}");
        assert!(std::fs::read(&dst).expect("read") == new_data, "case {i} ({old} -> {new} bytes): {s:?}");
        assert!(tmp_files(d.path()).is_empty(), "case {i}: temp files left");
    }
}

fn failed_paths(s: &SyncStats) -> Vec<String> {
    let mut v: Vec<String> = s.failed.iter().map(|f| f.path.display().to_string()).collect();
    v.sort();
    v
}

/// A non-empty directory where the source has a file is kept without
/// `--delete` (rsync's rule): that file fails, typed, and every other
/// file is synced; with `--delete` the directory is replaced. Fails for
/// root too, so it runs everywhere.
#[test]
fn a_directory_in_the_way_fails_that_file_only() {
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    let d = TempDir::new("sync-in-the-way");
    let (src, dst) = (d.path().join("src"), d.path().join("dst"));
    for name in ["a", "b", "c", "sub/d"] {
        write(&src.join(name), name.as_bytes(), 1_500_000_000);
    }
    write(&dst.join("b/keep"), b"keep", 1);
    let s = ctx.sync(&src, &dst, &tree()).expect("a sync with one failed file is not an error");
    eprintln!("{s:?}");
    assert_eq!(failed_paths(&s), ["b"], "{s:?}");
    assert_eq!(s.failed[0].reason, FailReason::DirectoryInTheWay);
    assert_eq!((s.files, s.changed), (3, 3), "{s:?}");
    for name in ["a", "c", "sub/d"] {
        assert_eq!(std::fs::read(dst.join(name)).expect("synced"), name.as_bytes(), "{name}");
    }
    assert_eq!(std::fs::read(dst.join("b/keep")).expect("kept"), b"keep");

    let s = ctx.sync(&src, &dst, &SyncOptions { recursive: true, delete: true }).expect("with --delete");
    assert!(s.failed.is_empty(), "{s:?}");
    assert_same_tree(&src, &dst);
}

/// A source file that cannot be read (here /proc/self/mem: EIO at
/// offset 0, even for root) fails with its reason, nothing is put in
/// place and no temp file is left; the sync itself returns its stats.
#[test]
fn an_unreadable_source_file_is_a_failure_not_an_error() {
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    let d = TempDir::new("sync-unreadable");
    let dst = d.path().join("mem");
    let s = ctx.sync("/proc/self/mem", &dst, &SyncOptions::default()).expect("stats, not an error");
    eprintln!("{s:?}");
    assert_eq!(failed_paths(&s), ["mem"], "{s:?}");
    assert!(
        matches!(s.failed[0].reason, FailReason::Source { errno: Some(5), .. }),
        "EIO expected: {:?}",
        s.failed[0].reason
    );
    assert_eq!(s.changed, 0, "{s:?}");
    assert!(!dst.exists(), "a file was put in place");
    assert!(tmp_files(d.path()).is_empty(), "temp files left: {:?}", tmp_files(d.path()));
}

/// Over ssh as a user who may not write one destination directory: the
/// files in it fail with the target's reason (permission denied), each
/// once, though their calls were pipelined among the others' (100 files
/// each side, dozens of calls in flight); the others are synced, and no
/// temp file is left.
#[test]
fn an_unwritable_destination_directory_fails_its_files_only_over_ssh() {
    let Some(sshd) = Sshd::start("an_unwritable_destination_directory_fails_its_files_only_over_ssh") else { return };
    let router = Router::new().expect("router");
    let ctx = router.ssh(sshd.opts("mito-user")).expect("connect");
    let d = shared_dir("sync-eacces");
    let (src, dst) = (d.path().join("src"), d.path().join("dst"));
    for name in ["a", "locked/f1", "locked/f2", "open/g", "z"] {
        write(&src.join(name), name.as_bytes(), 1_500_000_000);
    }
    for i in 0..100 {
        for dir in ["locked", "open"] {
            let name = format!("{dir}/n{i:03}");
            write(&src.join(&name), name.as_bytes(), 1_500_000_000);
        }
    }
    // A changed big file there too: a delta, whose begin fails at once.
    write(&src.join("locked/big"), &random(100_000, 1), 1_500_000_000);
    // The destination is mito-user's, but for `locked` (root's, 0755).
    write(&dst.join("locked/big"), &random(100_000, 2), 1);
    assert!(Command::new("chown").arg("mito-user").arg(&dst).status().expect("chown").success());
    let s = ctx.sync(&src, &dst, &tree()).expect("a sync with failed files is not an error");
    eprintln!("{s:?}");
    let failed = failed_paths(&s);
    assert!(failed.contains(&"locked/f1".to_string()) && failed.contains(&"locked/f2".to_string()), "{s:?}");
    assert!(failed.iter().all(|p| p.starts_with("locked")), "only locked/ fails: {failed:?}");
    let files_failed = s.failed.iter().filter(|f| f.path != Path::new("locked")).count();
    assert_eq!(files_failed, 103, "each of locked/'s files once: {failed:?}");
    for f in s.failed.iter().filter(|f| f.path != Path::new("locked")) {
        assert!(matches!(&f.reason, FailReason::Target(e) if e.errno == 13), "EACCES expected: {f:?}");
    }
    assert_eq!((s.files, s.changed, s.deltas), (206, 103, 0), "{s:?}");
    for i in 0..100 {
        let name = format!("open/n{i:03}");
        assert_eq!(std::fs::read(dst.join(&name)).expect("synced"), name.as_bytes());
    }
    for name in ["a", "open/g", "z"] {
        assert_eq!(std::fs::read(dst.join(name)).expect("synced"), name.as_bytes(), "{name}");
    }
    assert!(tmp_files(&dst).is_empty(), "temp files left");
}

/// The CLI: each failed file on stderr as `failed PATH: reason`, the
/// others synced, exit status 23 (rsync's partial transfer).
#[test]
fn the_cli_prints_failed_files_and_exits_23() {
    let d = TempDir::new("sync-cli-partial");
    let (src, dst) = (d.path().join("src"), d.path().join("dst"));
    write(&src.join("a"), b"a", 1_500_000_000);
    write(&src.join("b"), b"b", 1_500_000_000);
    write(&dst.join("b/keep"), b"keep", 1);
    let o = Command::new(env!("CARGO_BIN_EXE_mito"))
        .args(["sync", "-r", src.to_str().expect("utf-8"), &format!("local:{}", dst.display())])
        .output()
        .expect("mito");
    let (out, err) = common::output_text(&o);
    assert_eq!(o.status.code(), Some(23), "{out}{err}");
    assert!(err.contains("failed b: a non-empty directory is in the way"), "{err}");
    assert!(err.contains("1 failed"), "{err}");
    assert!(out.contains("changed a"), "{out}");
    assert_eq!(std::fs::read(dst.join("a")).expect("a"), b"a");
}
