//! Idempotent copies: a put or get whose destination already holds the
//! same file (size, mtime, mode, digest: XXH3-128, or SHA-256 when asked) sends nothing and says
//! `changed: false`; anything else, or `force`, is sent.
//!
//! "Nothing sent" is measured, not inferred from the stats: for a put,
//! the bytes the master wrote to the context (`Context::bytes_sent`); for
//! both, the destination's inode (a copy renames a new file into place, so
//! an unchanged one keeps its inode).

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::TempDir;
use mito::{CopyOptions, Digest, GetOptions, HashKind, LocalOptions, Router};

const SIZE: usize = 3 << 20;

fn random(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n).map(|_| rng.u8(..)).collect()
}

/// The XXH3-128 digest a transfer of `data` reports by default.
fn xxh3(data: &[u8]) -> Digest {
    Digest::Xxh3_128(mito::core::xxh3::xxh3_128(data).to_be_bytes())
}

fn set_mtime(path: &Path, secs: u64, nsec: u32) {
    let t = SystemTime::UNIX_EPOCH + Duration::new(secs, nsec);
    std::fs::File::options().write(true).open(path).expect("open").set_modified(t).expect("mtime");
}

fn write(path: &Path, data: &[u8], mode: u32) {
    std::fs::write(path, data).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    set_mtime(path, 1_600_000_000, 123_456_789);
}

fn ino(path: &Path) -> u64 {
    std::fs::metadata(path).expect("meta").ino()
}

const FORCE: CopyOptions = CopyOptions { force: true, compress: false, checksum: HashKind::Xxh3_128 };

#[test]
fn an_unchanged_put_sends_no_file_bytes_and_says_so() {
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    let d = TempDir::new("idem-put");
    let (src, dest) = (d.path().join("src"), d.path().join("dest"));
    write(&src, &random(SIZE, 1), 0o640);

    let first = ctx.put(&src, &dest).expect("put");
    assert!(first.changed, "{first:?}");
    let inode = ino(&dest);
    let before = ctx.bytes_sent();
    let moved = std::cell::Cell::new(0u64);
    let again = ctx.put_with_progress(&src, &dest, &|n| moved.set(moved.get() + n)).expect("put again");
    let sent = ctx.bytes_sent() - before;
    assert!(!again.changed, "{again:?}");
    assert_eq!((again.bytes, again.checksum), (first.bytes, first.checksum));
    assert!(sent < 4096, "an unchanged put sent {sent} bytes");
    assert_eq!(ino(&dest), inode, "the destination was not replaced");
    assert_eq!(moved.get(), SIZE as u64, "progress still adds up to the file");

    // --force sends it all the same.
    let before = ctx.bytes_sent();
    let forced = ctx.put_with_options(&src, &dest, &FORCE, &|_| {}).expect("forced put");
    assert!(forced.changed, "{forced:?}");
    assert!(ctx.bytes_sent() - before > SIZE as u64, "a forced put sends the file");
    assert_ne!(ino(&dest), inode);
}

#[test]
fn same_size_and_mtime_but_other_content_is_still_sent() {
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    let d = TempDir::new("idem-content");
    let (src, dest) = (d.path().join("src"), d.path().join("dest"));
    let data = random(SIZE, 2);
    write(&src, &data, 0o644);
    ctx.put(&src, &dest).expect("put");

    // One byte changed at the destination, its size, mode and mtime kept:
    // only the hashes tell them apart.
    let mut other = data.clone();
    other[SIZE / 2] ^= 1;
    write(&dest, &other, 0o644);
    let (a, b) = (std::fs::metadata(&src).expect("meta"), std::fs::metadata(&dest).expect("meta"));
    assert_eq!((a.len(), a.mtime(), a.mtime_nsec()), (b.len(), b.mtime(), b.mtime_nsec()));
    let st = ctx.put(&src, &dest).expect("put over a changed file");
    assert!(st.changed, "{st:?}");
    assert_eq!(std::fs::read(&dest).expect("read"), data);

    // Same content, another mtime: sent (the copy sets the mtime).
    set_mtime(&dest, 1_700_000_000, 0);
    assert!(ctx.put(&src, &dest).expect("put").changed, "another mtime");
    assert_eq!(std::fs::metadata(&dest).expect("meta").mtime(), 1_600_000_000);
    // Same content and mtime, another mode: sent.
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    assert!(ctx.put(&src, &dest).expect("put").changed, "another mode");
    assert_eq!(std::fs::metadata(&dest).expect("meta").mode() & 0o7777, 0o644);
    // Another size: sent.
    write(&dest, &data[..SIZE - 1], 0o644);
    assert!(ctx.put(&src, &dest).expect("put").changed, "another size");
    assert_eq!(std::fs::read(&dest).expect("read"), data);
    // A symlink to an equal file is not that file: replaced by one.
    let twin = d.path().join("twin");
    ctx.put(&src, &twin).expect("put twin");
    std::fs::remove_file(&dest).expect("rm");
    std::os::unix::fs::symlink(&twin, &dest).expect("symlink");
    assert!(ctx.put(&src, &dest).expect("put over a symlink").changed);
    assert!(std::fs::symlink_metadata(&dest).expect("meta").is_file());
    // Now equal: unchanged.
    assert!(!ctx.put(&src, &dest).expect("put").changed);
}

#[test]
fn an_unchanged_get_writes_nothing() {
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    let d = TempDir::new("idem-get");
    let (remote, dest) = (d.path().join("remote"), d.path().join("dest"));
    let data = random(SIZE, 3);
    write(&remote, &data, 0o640);

    let first = ctx.get(&remote, &dest).expect("get");
    assert!(first.changed, "{first:?}");
    let inode = ino(&dest);
    let again = ctx.get(&remote, &dest).expect("get again");
    assert!(!again.changed, "{again:?}");
    assert_eq!((again.bytes, again.checksum), (first.bytes, first.checksum));
    assert_eq!(ino(&dest), inode, "the destination was not replaced");

    let forced = ctx.get_with_options(&remote, &dest, &GetOptions::default(), &FORCE, &|_| {}).expect("forced get");
    assert!(forced.changed);
    assert_ne!(ino(&dest), inode, "a forced get writes the file again");

    // Same size, mode and mtime, other content: fetched again.
    let mut other = data.clone();
    other[7] ^= 0x80;
    write(&dest, &other, 0o640);
    let st = ctx.get(&remote, &dest).expect("get over a changed file");
    assert!(st.changed, "{st:?}");
    assert_eq!(std::fs::read(&dest).expect("read"), data);
}

#[test]
fn trees_are_compared_file_by_file() {
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    let d = TempDir::new("idem-tree");
    let src = d.path().join("src");
    std::fs::create_dir_all(src.join("sub")).expect("mkdir");
    for (i, name) in ["a", "b", "sub/c"].iter().enumerate() {
        write(&src.join(name), &random(SIZE, 10 + i as u64), 0o644);
    }
    let remote = d.path().join("remote");
    let plan = ctx.plan_local_tree(&src).expect("plan");
    let st = ctx.put_tree(&src, &remote, &plan, &|_| {}).expect("put -r");
    assert_eq!((st.files, st.unchanged), (3, 0), "{st:?}");

    let before = ctx.bytes_sent();
    let st = ctx.put_tree(&src, &remote, &plan, &|_| {}).expect("put -r again");
    assert_eq!((st.files, st.unchanged), (3, 3), "{st:?}");
    assert!(ctx.bytes_sent() - before < 16 * 1024, "an unchanged tree sent {} bytes", ctx.bytes_sent() - before);

    // One file changed: only it goes.
    write(&src.join("sub/c"), &random(SIZE, 99), 0o644);
    let before = ctx.bytes_sent();
    let st = ctx.put_tree(&src, &remote, &plan, &|_| {}).expect("put -r one changed");
    assert_eq!((st.files, st.unchanged), (3, 2), "{st:?}");
    let sent = ctx.bytes_sent() - before;
    assert!(sent > SIZE as u64 && sent < 2 * SIZE as u64, "one changed file, {sent} bytes sent");
    assert_eq!(std::fs::read(remote.join("sub/c")).expect("read"), std::fs::read(src.join("sub/c")).expect("read"));

    let st = ctx.put_tree_with_options(&src, &remote, &plan, &FORCE, &|_| {}).expect("put -r --force");
    assert_eq!((st.files, st.unchanged), (3, 0), "{st:?}");

    // get -r: the second time nothing is written.
    let back = d.path().join("back");
    let rplan = ctx.plan_remote_tree(&remote).expect("plan");
    let st = ctx.get_tree(&remote, &back, &rplan, &|_| {}).expect("get -r");
    assert_eq!((st.files, st.unchanged), (3, 0), "{st:?}");
    let inode = ino(&back.join("a"));
    let st = ctx.get_tree(&remote, &back, &rplan, &|_| {}).expect("get -r again");
    assert_eq!((st.files, st.unchanged), (3, 3), "{st:?}");
    assert_eq!(ino(&back.join("a")), inode);
}

#[test]
fn put_many_sends_only_to_the_targets_that_differ() {
    let router = Router::new().expect("router");
    let a = router.local(LocalOptions::default()).expect("connect");
    let b = router.local(LocalOptions::default()).expect("connect");
    let d = TempDir::new("idem-many");
    let (src, dest) = (d.path().join("src"), d.path().join("dest"));
    write(&src, &random(SIZE, 4), 0o644);
    let ctxs = [a.clone(), b.clone()];
    for r in mito::put_many(&ctxs, &src, &dest, &|_| {}) {
        assert!(r.expect("put_many").changed);
    }
    let before = (a.bytes_sent(), b.bytes_sent());
    for r in mito::put_many(&ctxs, &src, &dest, &|_| {}) {
        assert!(!r.expect("put_many again").changed);
    }
    let sent = (a.bytes_sent() - before.0, b.bytes_sent() - before.1);
    assert!(sent.0 < 4096 && sent.1 < 4096, "unchanged targets were sent {sent:?} bytes");

    let before = (a.bytes_sent(), b.bytes_sent());
    for r in mito::put_many_with_options(&ctxs, &src, &dest, &FORCE, &|_| {}) {
        assert!(r.expect("forced put_many").changed);
    }
    assert!(a.bytes_sent() - before.0 > SIZE as u64 && b.bytes_sent() - before.1 > SIZE as u64);
}

#[test]
fn the_cli_says_unchanged_and_force_sends() {
    let d = TempDir::new("idem-cli");
    let (src, dest) = (d.path().join("src"), d.path().join("dest"));
    write(&src, b"config\n", 0o644);
    let mito = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_mito")).args(args).output().expect("run mito");
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let (s, at) = (src.to_str().expect("utf8"), format!("local:{}", dest.display()));
    let first = mito(&["put", s, &at]);
    assert!(!first.contains("unchanged") && first.contains("7 bytes"), "{first}");
    let again = mito(&["put", s, &at]);
    assert!(again.contains("unchanged"), "{again}");
    let forced = mito(&["put", "--force", s, &at]);
    assert!(!forced.contains("unchanged"), "{forced}");
    let back = d.path().join("back");
    let b = back.to_str().expect("utf8");
    assert!(!mito(&["get", &at, b]).contains("unchanged"));
    assert!(mito(&["get", &at, b]).contains("unchanged"));
    assert!(!mito(&["get", "--force", &at, b]).contains("unchanged"));
}

#[test]
fn compress_deflates_the_chunks_that_shrink() {
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    let d = TempDir::new("compress");
    let zip = CopyOptions { force: true, compress: true, ..CopyOptions::default() };
    // Text: a tenth or less on the wire, the same file at the end.
    let text: Vec<u8> = (0..SIZE).map(|i| b"mito sends files\n"[i % 17]).collect();
    let (src, dest) = (d.path().join("text"), d.path().join("text.copy"));
    write(&src, &text, 0o644);
    let before = ctx.bytes_sent();
    let st = ctx.put_with_options(&src, &dest, &zip, &|_| {}).expect("put --compress");
    let sent = ctx.bytes_sent() - before;
    assert!(sent < SIZE as u64 / 10, "{sent} bytes sent for {SIZE} compressible bytes");
    assert_eq!(std::fs::read(&dest).expect("read"), text);
    assert_eq!(st.checksum, xxh3(&text));
    // Random bytes do not shrink: sent as they are, still right.
    let (src, dest) = (d.path().join("random"), d.path().join("random.copy"));
    let data = random(SIZE, 5);
    write(&src, &data, 0o644);
    let before = ctx.bytes_sent();
    ctx.put_with_options(&src, &dest, &zip, &|_| {}).expect("put --compress");
    assert!(ctx.bytes_sent() - before > SIZE as u64);
    assert_eq!(std::fs::read(&dest).expect("read"), data);
}

#[test]
fn the_comparison_uses_the_digest_asked_for() {
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    let d = TempDir::new("idem-kind");
    let (src, dest) = (d.path().join("src"), d.path().join("dest"));
    let data = random(SIZE, 11);
    write(&src, &data, 0o644);
    let first = ctx.put(&src, &dest).expect("put");
    assert_eq!((first.changed, first.checksum), (true, xxh3(&data)), "XXH3-128 by default");
    // Unchanged by either digest: nothing sent, the digest named.
    let sha = CopyOptions { checksum: HashKind::Sha256, ..CopyOptions::default() };
    for (opts, want) in
        [(CopyOptions::default(), xxh3(&data)), (sha, Digest::Sha256(mito::core::sha256::digest(&data)))]
    {
        let before = ctx.bytes_sent();
        let again = ctx.put_with_options(&src, &dest, &opts, &|_| {}).expect("put again");
        assert!(ctx.bytes_sent() - before < 4096, "{:?}: an unchanged put sent bytes", opts.checksum);
        assert_eq!((again.changed, again.checksum), (false, want));
        let back = ctx.get_with_options(&dest, &src, &GetOptions::default(), &opts, &|_| {}).expect("get again");
        assert_eq!((back.changed, back.checksum), (false, want));
    }
    // Same size, mtime and mode, one byte different: both digests see it.
    for opts in [CopyOptions::default(), sha] {
        let mut other = data.clone();
        other[SIZE / 2] ^= 1;
        write(&dest, &other, 0o644);
        let st = ctx.put_with_options(&src, &dest, &opts, &|_| {}).expect("put");
        assert!(st.changed, "{:?}: a changed byte was missed", opts.checksum);
        assert_eq!(std::fs::read(&dest).expect("read"), data);
    }
}
