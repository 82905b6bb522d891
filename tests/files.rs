//! Streamed get/put: round trips, metadata, and failures that must leave no
//! file under the final name.

mod common;

use std::cell::Cell;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{is_root, skip_loudly, TempDir};
use mito::functions::{self as f, Commit, FileCloseArgs, FileWriteArgs, HashKind, OpenWriteArgs};
use mito::master::transfer::CHUNK;
use mito::{Context, CopyOptions, Digest, GetOptions, LocalOptions, Router, TransferError};

fn random(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n).map(|_| rng.u8(..)).collect()
}

/// What a transfer of `data` reports by default: its XXH3-128.
fn xxh3(data: &[u8]) -> Digest {
    Digest::Xxh3_128(mito::core::xxh3::xxh3_128(data).to_be_bytes())
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn put_get_round_trips_with_mode_and_mtime() {
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    let d = TempDir::new("xfer");
    for (name, size) in [("empty", 0usize), ("two-chunks", 2 << 20), ("odd", 20_000_017)] {
        let src = d.path().join(format!("{name}.src"));
        let data = random(size, size as u64);
        std::fs::write(&src, &data).expect("write");
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let mtime = std::time::SystemTime::UNIX_EPOCH + Duration::new(1_600_000_000, 123_456_789);
        std::fs::File::options().write(true).open(&src).expect("open").set_modified(mtime).expect("mtime");

        let remote = d.path().join(format!("{name}.remote"));
        let put = ctx.put(&src, &remote).expect("put");
        assert_eq!(put.bytes, size as u64);
        assert_eq!(std::fs::read(&remote).expect("read"), data, "{name}: put content");
        let m = std::fs::metadata(&remote).expect("meta");
        assert_eq!((m.mode() & 0o7777, m.mtime(), m.mtime_nsec()), (0o640, 1_600_000_000, 123_456_789), "{name}");
        assert_eq!(put.checksum, xxh3(&data), "{name}: the digest of the bytes, XXH3-128 by default");

        let back = d.path().join(format!("{name}.back"));
        let got = ctx.get(&remote, &back).expect("get");
        assert_eq!(got.checksum, put.checksum);
        assert_eq!(std::fs::read(&back).expect("read"), data, "{name}: get content");
        let m = std::fs::metadata(&back).expect("meta");
        assert_eq!((m.mode() & 0o7777, m.mtime()), (0o640, 1_600_000_000), "{name}");
    }
    // Overwrite: the old content stays until the new one is complete.
    let target = d.path().join("odd.remote");
    ctx.put(d.path().join("empty.src"), &target).expect("overwrite");
    assert_eq!(std::fs::metadata(&target).expect("meta").len(), 0);
    assert!(names(d.path()).iter().all(|n| !n.contains("mito-tmp")), "temp files left: {:?}", names(d.path()));
}

#[test]
fn missing_directories_are_typed_errors_naming_the_path() {
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions { name: Some("files".into()), ..LocalOptions::default() }).expect("connect");
    let d = TempDir::new("xfer-missing");
    let src = d.path().join("f");
    std::fs::write(&src, b"data").expect("write");
    let e = ctx.put(&src, d.path().join("no/such/dir/f")).expect_err("remote dir missing");
    let msg = e.to_string();
    assert!(matches!(&e, TransferError::Remote(c) if c.remote().map(|r| r.errno) == Some(libc::ENOENT)), "{msg}");
    assert!(msg.contains("files") && msg.contains("no/such/dir/f"), "names context and path: {msg}");
    let e = ctx.get(&src, d.path().join("no/such/dir/f")).expect_err("local dir missing");
    assert!(matches!(e, TransferError::Local { .. }), "{e}");
    let e = ctx.get(d.path().join("absent"), d.path().join("x")).expect_err("source missing");
    assert!(e.to_string().contains("absent"), "{e}");
    ctx.ping().expect("the context keeps working");
    assert_eq!(names(d.path()), vec!["f".to_string()], "nothing left behind");
}

#[test]
fn disk_full_leaves_no_partial_file() {
    if !is_root() {
        return skip_loudly("disk_full_leaves_no_partial_file", "mounting a small tmpfs needs root");
    }
    let d = TempDir::new("xfer-full");
    let mnt = d.path().join("small");
    std::fs::create_dir(&mnt).expect("mkdir");
    let st = Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"]).arg(&mnt).status().expect("mount");
    assert!(st.success());
    let src = d.path().join("big");
    std::fs::write(&src, random(3 << 20, 7)).expect("write");
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    let e = ctx.put(&src, mnt.join("big")).expect_err("disk full");
    let left = names(&mnt);
    let _ = Command::new("umount").arg("-l").arg(&mnt).status();
    assert!(matches!(&e, TransferError::Remote(c) if c.remote().map(|r| r.errno) == Some(libc::ENOSPC)), "{e}");
    assert!(e.to_string().contains("big"), "{e}");
    assert!(left.is_empty(), "left on the full disk: {left:?}");
    ctx.ping().expect("the context keeps working");
}

#[test]
fn killed_agent_mid_transfer_leaves_no_file_under_the_final_name() {
    let d = TempDir::new("xfer-kill");
    let src = d.path().join("src");
    std::fs::write(&src, random(96 << 20, 9)).expect("write");
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    let agent = ctx.connect_info().pid;
    let dest = d.path().join("dest");
    // Killed once the agent has acknowledged a chunk (progress counts acked
    // chunks), so it dies mid-transfer whatever the machine's speed; the
    // temp file's size then is the proof that bytes had moved.
    let (moved, temp_at_kill) = (Cell::new(0u64), Cell::new(None));
    let e = ctx
        .put_with_progress(&src, &dest, &|n| {
            moved.set(moved.get() + n);
            if temp_at_kill.get().is_none() {
                let temp = std::fs::read_dir(d.path())
                    .expect("ls")
                    .filter_map(Result::ok)
                    .find(|e| e.file_name().to_string_lossy().starts_with(".dest.mito-tmp"))
                    .and_then(|e| e.metadata().ok())
                    .map_or(0, |m| m.len());
                temp_at_kill.set(Some(temp));
                common::kill9(agent);
            }
        })
        .expect_err("agent died mid-transfer");
    assert!(matches!(&e, TransferError::Remote(c) if c.is_disconnected()), "{e}");
    let temp = temp_at_kill.get().expect("a chunk was acknowledged before the kill");
    eprintln!("killed after {} bytes acknowledged, temp file {temp} bytes", moved.get());
    assert!(temp > 0, "the temp file held no bytes when the agent was killed");
    assert!(moved.get() < 96 << 20, "the transfer stopped early: {} bytes acknowledged", moved.get());
    assert!(!dest.exists(), "a partial file appeared under the final name");
}

#[test]
fn fs_functions() {
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    let d = TempDir::new("fsfn");
    let deep = d.path().join("a/b/c");
    // Every missing component gets exactly the mode asked for, not reduced by
    // the umask the agent keeps from us: 0o777, which mkdir alone gives under
    // no umask but 000 (0o755 under the usual 022).
    ctx.make_dirs(&deep, 0o777).expect("mkdir -p");
    for dir in ["a", "a/b", "a/b/c"] {
        assert_eq!(std::fs::metadata(d.path().join(dir)).expect("meta").mode() & 0o7777, 0o777, "{dir}");
    }
    // Existing directories are left as they are.
    ctx.make_dirs(&deep, 0o700).expect("mkdir -p is idempotent");
    assert_eq!(std::fs::metadata(&deep).expect("meta").mode() & 0o7777, 0o777);
    std::fs::write(deep.join("f"), vec![1u8; 10_000]).expect("write");
    let e = ctx.make_dirs(deep.join("f/x"), 0o755).expect_err("a file in the way");
    assert_eq!(e.remote().map(|r| r.errno), Some(libc::ENOTDIR), "{e}");

    ctx.chmod(deep.join("f"), 0o600).expect("chmod");
    assert_eq!(std::fs::metadata(deep.join("f")).expect("meta").mode() & 0o777, 0o600);
    let ids = |p: &Path| {
        let m = std::fs::metadata(p).expect("meta");
        (m.uid(), m.gid())
    };
    let me = ids(&deep.join("f"));
    if is_root() {
        // To ids that are not ours, then one id at a time (None keeps it).
        ctx.chown(deep.join("f"), Some(65534), Some(65533)).expect("chown");
        assert_eq!(ids(&deep.join("f")), (65534, 65533));
        ctx.chown(deep.join("f"), None, Some(me.1)).expect("chgrp");
        assert_eq!(ids(&deep.join("f")), (65534, me.1));
        ctx.chown(deep.join("f"), Some(me.0), None).expect("chown back");
        assert_eq!(ids(&deep.join("f")), me);
    } else {
        // Without root the kernel refuses, and the error says so.
        let e = ctx.chown(deep.join("f"), Some(65534), None).expect_err("chown to another user needs root");
        assert_eq!(e.remote().map(|r| r.errno), Some(libc::EPERM), "{e}");
        assert_eq!(ids(&deep.join("f")), me);
    }

    ctx.symlink("c/f", d.path().join("a/b/link")).expect("symlink");
    assert_eq!(ctx.read_link(d.path().join("a/b/link")).expect("readlink"), b"c/f");
    let list = ctx.list_dir(d.path().join("a/b")).expect("list");
    let names: Vec<_> = list.iter().map(|e| String::from_utf8_lossy(&e.name).into_owned()).collect();
    assert_eq!(names, vec!["c", "link"]);
    assert_eq!(list[1].stat.kind, mito::functions::FileKind::Symlink);

    ctx.rename(deep.join("f"), deep.join("g")).expect("rename");
    let du = ctx.disk_usage(d.path().join("a")).expect("du");
    assert_eq!((du.dirs, du.files), (3, 2), "a, b, c; g and link");
    assert!(du.bytes >= 10_000, "{du:?}");

    // rm -rf removes the link, not what it points at.
    let outside = TempDir::new("fsfn-outside");
    std::fs::write(outside.path().join("keep"), b"x").expect("write");
    ctx.symlink(outside.path(), d.path().join("a/out")).expect("symlink");
    assert_eq!(ctx.remove_tree(d.path().join("a")).expect("rm -rf"), 6, "a, b, c, g, link, out");
    assert!(!d.path().join("a").exists());
    assert!(outside.path().join("keep").exists(), "followed a symlink out of the tree");
    assert_eq!(ctx.remove_tree(d.path().join("a")).expect("missing is fine"), 0);
}

#[test]
fn facts_describe_this_host() {
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    let f = ctx.facts().expect("facts");
    let uts = rustix::system::uname();
    assert_eq!(f.hostname, uts.nodename().to_string_lossy());
    assert_eq!(f.kernel.release, uts.release().to_string_lossy());
    assert_eq!(f.cpus as usize, std::thread::available_parallelism().map_or(0, |n| n.get()));
    assert!(f.memory_kib.total > 0 && f.memory_kib.available <= f.memory_kib.total);
    assert!(f.mounts.iter().any(|m| m.mount_point == "/" && m.size_bytes > 0), "{:?}", f.mounts);
    let lo = f.interfaces.iter().find(|i| i.name == "lo").expect("lo");
    assert!(lo.ipv4.contains(&[127, 0, 0, 1]));
    assert!(f.users.iter().any(|u| u.name == "root" && u.uid == 0));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("now").as_secs();
    assert!(f.boot_time > 0 && f.boot_time < now);
    if std::path::Path::new("/etc/os-release").exists() {
        assert!(f.os_release.iter().any(|(k, _)| k == "ID"));
    }
    let out = Command::new(env!("CARGO_BIN_EXE_mito")).args(["facts", "local", "--json"]).output().expect("mito facts");
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(v["interfaces"].as_array().expect("array").iter().any(|i| i["ipv4"][0] == "127.0.0.1"), "{v}");
}

/// Every object under `root` (relative path, kind, mode, size, link target, content hash).
fn inventory(root: &Path) -> Vec<(String, String, u32, u64, String)> {
    fn walk(root: &Path, rel: &Path, out: &mut Vec<(String, String, u32, u64, String)>) {
        let p = root.join(rel);
        let m = std::fs::symlink_metadata(&p).expect("lstat");
        let ft = m.file_type();
        let (kind, extra) = if ft.is_symlink() {
            ("link", std::fs::read_link(&p).expect("readlink").to_string_lossy().into_owned())
        } else if ft.is_dir() {
            ("dir", String::new())
        } else if ft.is_file() {
            ("file", format!("{:x}", fastrand_hash(&std::fs::read(&p).expect("read"))))
        } else {
            ("other", String::new())
        };
        let size = if ft.is_file() { m.len() } else { 0 };
        let mode = if ft.is_symlink() { 0 } else { m.mode() & 0o7777 };
        out.push((rel.to_string_lossy().into_owned(), kind.into(), mode, size, extra));
        if ft.is_dir() {
            let mut names: Vec<_> = std::fs::read_dir(&p).expect("ls").map(|e| e.expect("e").file_name()).collect();
            names.sort();
            for n in names {
                walk(root, &rel.join(n), out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, Path::new(""), &mut out);
    out
}

fn fastrand_hash(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325u64, |h, &x| (h ^ u64::from(x)).wrapping_mul(0x100000001b3))
}

#[test]
fn trees_round_trip_with_modes_links_and_read_only_dirs() {
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    let d = TempDir::new("tree");
    let src = d.path().join("src");
    std::fs::create_dir_all(src.join("a/deep/er")).expect("mkdir");
    std::fs::create_dir_all(src.join("empty")).expect("mkdir");
    std::fs::write(src.join("top.txt"), b"top\n").expect("write");
    std::fs::write(src.join("a/deep/er/big.bin"), random(3 << 20, 7)).expect("write");
    std::fs::write(src.join("a/exec.sh"), b"#!/bin/sh\necho hi\n").expect("write");
    std::fs::set_permissions(src.join("a/exec.sh"), std::fs::Permissions::from_mode(0o751)).expect("chmod");
    std::os::unix::fs::symlink("deep/er/big.bin", src.join("a/link")).expect("symlink");
    std::os::unix::fs::symlink("/nonexistent/target", src.join("dangling")).expect("symlink");
    Command::new("mkfifo").arg(src.join("fifo")).status().expect("mkfifo");
    // A read-only directory must still be filled, then get its mode.
    std::fs::set_permissions(src.join("a/deep"), std::fs::Permissions::from_mode(0o555)).expect("chmod");

    let remote = d.path().join("remote");
    let plan = ctx.plan_local_tree(&src).expect("plan");
    assert_eq!(plan.total_bytes(), 4 + (3 << 20) + 18);
    let moved = std::cell::Cell::new(0u64);
    let st = ctx.put_tree(&src, &remote, &plan, &|n| moved.set(moved.get() + n)).expect("put -r");
    assert_eq!((st.files, st.dirs, st.symlinks, st.skipped), (3, 5, 2, 1), "{st:?}");
    assert_eq!(moved.get(), plan.total_bytes(), "progress adds up to the plan");
    let mut want = inventory(&src);
    want.retain(|e| e.0 != "fifo");
    assert_eq!(inventory(&remote), want);

    let back = d.path().join("back");
    let plan = ctx.plan_remote_tree(&remote).expect("plan");
    let st = ctx.get_tree(&remote, &back, &plan, &|_| {}).expect("get -r");
    assert_eq!((st.files, st.dirs, st.symlinks, st.skipped), (3, 5, 2, 0), "{st:?}");
    assert_eq!(inventory(&back), want);

    // Again onto the existing copy: merged, same result.
    let plan = ctx.plan_local_tree(&src).expect("plan");
    ctx.put_tree(&src, &remote, &plan, &|_| {}).expect("put -r again");
    assert_eq!(inventory(&remote), want);
    for p in [&src, &remote, &back] {
        let _ = std::fs::set_permissions(p.join("a/deep"), std::fs::Permissions::from_mode(0o755));
    }
}

#[test]
fn cli_put_get_recursive_and_into_directories() {
    let d = TempDir::new("cli-tree");
    let src = d.path().join("src");
    std::fs::create_dir_all(src.join("sub")).expect("mkdir");
    std::fs::write(src.join("sub/f"), b"content").expect("write");
    let mito = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_mito")).args(args).output().expect("mito");
    let remote = format!("local:{}", d.path().join("remote").display());
    let o = mito(&["put", src.to_str().expect("utf8"), &remote]);
    assert_eq!(o.status.code(), Some(255));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is a directory (use -r)"));
    let o = mito(&["put", "-r", src.to_str().expect("utf8"), &remote]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("1 files, 2 dirs"), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(d.path().join("remote/sub/f")).expect("read"), b"content");
    // A file onto an existing directory lands inside it (cp, scp).
    let o = mito(&["get", &format!("{remote}/sub/f"), d.path().to_str().expect("utf8")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(d.path().join("f")).expect("read"), b"content");
}

/// A file of `size` bytes, sparse but for data at the start, across the
/// 4 GiB line and in its last bytes, put to `ctx` and fetched back: same
/// length, the holes kept on both ends, the same digest both ways. False
/// (after a loud skip) where the file system does not make holes.
fn sparse_round_trip(ctx: &Context, dir: &Path, test: &str) -> bool {
    let src = dir.join("big.sparse");
    let size: u64 = (4 << 30) + (3 << 20) + 4097;
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(&src).expect("create");
        f.set_len(size).expect("truncate");
        // Data at the start, across the 4 GiB line, and in the last bytes.
        f.write_all_at(b"start", 0).expect("write");
        f.write_all_at(&random(3 << 20, 3), (4 << 30) - (1 << 20)).expect("write");
        f.write_all_at(b"end", size - 3).expect("write");
    }
    let allocated = |p: &Path| std::fs::metadata(p).expect("meta").blocks() * 512;
    if allocated(&src) > 64 << 20 {
        skip_loudly(test, "this file system does not make holes");
        return false;
    }
    let remote = dir.join("remote.sparse");
    let put = ctx.put(&src, &remote).expect("put");
    assert_eq!(put.bytes, size);
    assert_eq!(std::fs::metadata(&remote).expect("meta").len(), size);
    assert!(allocated(&remote) < 64 << 20, "put wrote the holes: {} bytes allocated", allocated(&remote));
    let back = dir.join("back.sparse");
    let got = ctx.get(&remote, &back).expect("get");
    assert_eq!(got.checksum, put.checksum, "same bytes both ways (hashed on both ends of each transfer)");
    assert_eq!(got.checksum, file_xxh3(&src), "and they are the source's");
    assert_eq!(std::fs::metadata(&back).expect("meta").len(), size);
    assert!(allocated(&back) < 64 << 20, "get wrote the holes: {} bytes allocated", allocated(&back));
    let tail = |p: &Path| {
        use std::os::unix::fs::FileExt;
        let mut b = [0u8; 3];
        std::fs::File::open(p).expect("open").read_exact_at(&mut b, size - 3).expect("read");
        b
    };
    assert_eq!(&tail(&back), b"end");
    for f in [src, remote, back] {
        std::fs::remove_file(f).expect("remove");
    }
    true
}

/// The XXH3-128 digest of a file, read here in 1 MiB pieces.
fn file_xxh3(path: &Path) -> Digest {
    use std::io::Read;
    let mut f = std::fs::File::open(path).expect("open");
    let mut h = mito::core::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            return Digest::Xxh3_128(h.finish());
        }
        h.update(&buf[..n]);
    }
}

#[test]
fn sparse_file_over_4_gib_round_trips_and_stays_sparse() {
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    let d = TempDir::new("sparse");
    sparse_round_trip(&ctx, d.path(), "sparse_file_over_4_gib_round_trips_and_stays_sparse");
}

#[test]
fn sparse_file_over_4_gib_round_trips_over_ssh() {
    let test = "sparse_file_over_4_gib_round_trips_over_ssh";
    let Some(sshd) = common::sshd::Sshd::start(test) else { return };
    let router = Router::new().expect("router");
    let ctx = router.ssh(sshd.opts("mito-user")).expect("connect");
    let d = TempDir::new("sparse-ssh");
    // The agent runs as mito-user: it writes here too.
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    sparse_round_trip(&ctx, d.path(), test);
}

#[test]
fn one_gib_round_trips_locally_and_over_ssh() {
    use std::io::Write;
    let test = "one_gib_round_trips_locally_and_over_ssh";
    let Some(sshd) = common::sshd::Sshd::start(test) else { return };
    let d = TempDir::new("gib");
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    // 1 GiB that nothing compresses, with its digest computed as it is
    // written (xorshift: fast enough that making it is not the test).
    let src = d.path().join("gib.src");
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&src).expect("create"));
    let mut h = mito::core::xxh3::Xxh3::new();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..1024 {
        for w in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        h.update(&block);
        out.write_all(&block).expect("write");
    }
    drop(out);
    let want = Digest::Xxh3_128(h.finish());
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let mtime = std::time::SystemTime::UNIX_EPOCH + Duration::new(1_600_000_000, 123_456_789);
    std::fs::File::options().write(true).open(&src).expect("open").set_modified(mtime).expect("mtime");
    let router = Router::new().expect("router");
    let contexts =
        [router.local(LocalOptions::default()).expect("local"), router.ssh(sshd.opts("mito-user")).expect("ssh")];
    for ctx in &contexts {
        let remote = d.path().join("gib.remote");
        let put = ctx.put(&src, &remote).expect("put");
        assert_eq!((put.bytes, put.checksum, put.changed), (1 << 30, want, true), "{}: put", ctx.name());
        let m = std::fs::metadata(&remote).expect("meta");
        assert_eq!(
            (m.len(), m.mode() & 0o777, m.mtime(), m.mtime_nsec()),
            (1 << 30, 0o640, 1_600_000_000, 123_456_789)
        );
        let back = d.path().join("gib.back");
        let got = ctx.get(&remote, &back).expect("get");
        assert_eq!((got.bytes, got.checksum), (1 << 30, want), "{}: get", ctx.name());
        assert_eq!(file_xxh3(&back), want, "{}: the fetched file, hashed here", ctx.name());
        assert_eq!(file_xxh3(&remote), want, "{}: the put file, hashed here", ctx.name());
        let m = std::fs::metadata(&back).expect("meta");
        assert_eq!((m.len(), m.mtime(), m.mtime_nsec()), (1 << 30, 1_600_000_000, 123_456_789));
        std::fs::remove_file(&remote).expect("remove");
        std::fs::remove_file(&back).expect("remove");
    }
}

#[test]
fn source_changing_mid_transfer_is_an_error_and_leaves_nothing() {
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    let d = TempDir::new("vanish");
    let src = d.path().join("src");
    std::fs::write(&src, random(64 << 20, 5)).expect("write");
    // Truncated (as a log rotation does) after the first chunk has moved.
    let cut = || {
        let _ = std::fs::File::options().write(true).open(&src).and_then(|f| f.set_len(1 << 20));
    };
    let dest = d.path().join("put-dest");
    match ctx.put_with_progress(&src, &dest, &|_| cut()) {
        Err(TransferError::SourceChanged { expected, read, .. }) => assert!(read < expected),
        other => panic!("expected SourceChanged, got {other:?}"),
    }
    assert!(!dest.exists());
    std::fs::write(&src, random(64 << 20, 6)).expect("write");
    let dest = d.path().join("get-dest");
    match ctx.get_with_progress(&src, &dest, &|_| cut()) {
        Err(e @ TransferError::SourceChanged { .. }) => {
            assert!(e.to_string().contains("changed during the transfer"), "{e}");
        }
        other => panic!("expected SourceChanged, got {other:?}"),
    }
    assert!(!dest.exists());
    assert!(names(d.path()).iter().all(|n| !n.contains("mito-tmp")), "temp files left: {:?}", names(d.path()));
    ctx.ping().expect("the context still works");
}

#[test]
fn owner_is_kept_where_the_receiver_is_root() {
    if !is_root() {
        skip_loudly("owner_is_kept_where_the_receiver_is_root", "chown to another user needs root");
        return;
    }
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    let d = TempDir::new("owner");
    let src = d.path().join("src");
    std::fs::write(&src, b"owned").expect("write");
    std::os::unix::fs::chown(&src, Some(12345), Some(23456)).expect("chown");
    let remote = d.path().join("remote");
    ctx.put(&src, &remote).expect("put");
    let m = std::fs::metadata(&remote).expect("meta");
    assert_eq!((m.uid(), m.gid()), (12345, 23456));
    // A get keeps the target's owner only when asked (issue 13).
    let back = d.path().join("back");
    ctx.get_with(&remote, &back, &mito::GetOptions { preserve_owner: true }, &|_| {}).expect("get");
    let m = std::fs::metadata(&back).expect("meta");
    assert_eq!((m.uid(), m.gid()), (12345, 23456));
    let plain = d.path().join("plain");
    ctx.get(&remote, &plain).expect("get");
    let m = std::fs::metadata(&plain).expect("meta");
    assert_eq!((m.uid(), m.gid()), (0, 0), "without preserve_owner the copy is ours");
}

/// Puts and gets `sizes` through `ctx` (files under `dir`, which the
/// context can write), checking bytes, mode, mtime and the digest.
fn round_trips(ctx: &Context, dir: &Path, sizes: &[usize], opts: &CopyOptions) {
    for &size in sizes {
        let data = random(size, size as u64 + 7);
        let src = dir.join(format!("{size}.src"));
        std::fs::write(&src, &data).expect("write");
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let mtime = std::time::SystemTime::UNIX_EPOCH + Duration::new(1_500_000_000, 5);
        std::fs::File::options().write(true).open(&src).expect("open").set_modified(mtime).expect("mtime");
        let want = match opts.checksum {
            HashKind::Xxh3_128 => xxh3(&data),
            HashKind::Sha256 => Digest::Sha256(mito::core::sha256::digest(&data)),
        };
        let remote = dir.join(format!("{size}.remote"));
        let put = ctx.put_with_options(&src, &remote, opts, &|_| {}).expect("put");
        assert_eq!((put.bytes, put.checksum, put.changed), (size as u64, want, true), "put of {size} bytes");
        assert!(std::fs::read(&remote).expect("read") == data, "put of {size} bytes: content");
        let m = std::fs::metadata(&remote).expect("meta");
        assert_eq!((m.mode() & 0o777, m.mtime(), m.mtime_nsec()), (0o644, 1_500_000_000, 5), "put of {size}");
        let back = dir.join(format!("{size}.back"));
        let got = ctx.get_with_options(&remote, &back, &GetOptions::default(), opts, &|_| {}).expect("get");
        assert_eq!((got.bytes, got.checksum, got.changed), (size as u64, want, true), "get of {size} bytes");
        assert!(std::fs::read(&back).expect("read") == data, "get of {size} bytes: content");
        assert_eq!(std::fs::metadata(&back).expect("meta").mtime(), 1_500_000_000, "get of {size}");
    }
}

/// Sizes where a transfer's chunking changes: none, one byte, a chunk
/// short by one, a chunk, a chunk and a byte.
const EDGES: [usize; 5] = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1];

#[test]
fn round_trips_at_the_chunk_edges_with_either_digest() {
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    let d = TempDir::new("edges");
    round_trips(&ctx, d.path(), &EDGES, &CopyOptions::default());
    let sha = CopyOptions { checksum: HashKind::Sha256, ..CopyOptions::default() };
    let d = TempDir::new("edges-sha");
    round_trips(&ctx, d.path(), &EDGES, &sha);
}

#[test]
fn round_trips_at_the_chunk_edges_over_ssh() {
    let Some(sshd) = common::sshd::Sshd::start("round_trips_at_the_chunk_edges_over_ssh") else { return };
    let router = Router::new().expect("router");
    let ctx = router.ssh(sshd.opts("mito-user")).expect("connect");
    let d = TempDir::new("edges-ssh");
    // The agent runs as mito-user: it writes here too.
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    round_trips(&ctx, d.path(), &EDGES, &CopyOptions::default());
    let sha = CopyOptions { checksum: HashKind::Sha256, ..CopyOptions::default() };
    let again = d.path().join("sha256");
    std::fs::create_dir(&again).expect("mkdir");
    std::fs::set_permissions(&again, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    round_trips(&ctx, &again, &[CHUNK + 1], &sha);
}

/// `file_open_write`, one chunk, and a commit claiming `digest`.
fn write_and_commit(ctx: &Context, dest: &Path, hash: HashKind, data: &[u8], digest: &[u8]) -> Result<(), String> {
    let path = serde_bytes::ByteBuf::from(dest.as_os_str().as_encoded_bytes());
    let id = ctx.call::<f::FileOpenWrite>(&OpenWriteArgs { path, id: 0, hash }).expect("open").id;
    ctx.call::<f::FileWrite>(&FileWriteArgs { id, data: serde_bytes::ByteBuf::from(data) }).expect("write");
    let commit = Commit { digest: serde_bytes::ByteBuf::from(digest), mode: None, mtime: None, owner: None };
    ctx.call::<f::FileClose>(&FileCloseArgs { id, commit: Some(commit) }).map(drop).map_err(|e| e.to_string())
}

#[test]
fn a_chunk_that_differs_from_what_was_hashed_is_refused() {
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    let d = TempDir::new("corrupt");
    let dest = d.path().join("dest");
    let data = random(100_000, 9);
    let mut corrupt = data.clone();
    corrupt[54_321] ^= 0x10;
    // The agent hashes what arrived; a commit whose digest is of other
    // bytes (one bit flipped on the way) is refused and leaves nothing.
    let x = |b: &[u8]| mito::core::xxh3::xxh3_128(b).to_be_bytes();
    let s = |b: &[u8]| mito::core::sha256::digest(b);
    for (hash, claimed) in [
        (HashKind::Xxh3_128, x(&data).to_vec()),
        (HashKind::Sha256, s(&data).to_vec()),
        // The right bytes by the other algorithm are no match either.
        (HashKind::Xxh3_128, s(&corrupt).to_vec()),
        (HashKind::Sha256, x(&corrupt).to_vec()),
    ] {
        let err = write_and_commit(&ctx, &dest, hash, &corrupt, &claimed).expect_err("a corrupted chunk committed");
        assert!(err.contains("checksum mismatch"), "{hash:?}: {err}");
        assert!(names(d.path()).is_empty(), "{hash:?}: left {:?}", names(d.path()));
    }
    // The same calls with the digest of what was sent go through.
    write_and_commit(&ctx, &dest, HashKind::Xxh3_128, &corrupt, &x(&corrupt)).expect("commit");
    assert!(std::fs::read(&dest).expect("read") == corrupt);
}

#[test]
fn cli_checksum_sha256_is_used_when_asked() {
    let d = TempDir::new("cli-checksum");
    std::fs::write(d.path().join("a"), b"some bytes\n").expect("write");
    let at = |p: &str| format!("local:{}", d.path().join(p).display());
    let a = d.path().join("a");
    let a = a.to_str().expect("utf8");
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_mito")).args(args).output().expect("mito");
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    assert!(run(&["put", a, &at("b")]).contains("11 bytes in"), "put");
    assert!(run(&["put", "--force", a, &at("b")]).contains("xxh3-128 verified"), "the default");
    assert!(run(&["put", "--force", "--checksum", "sha256", a, &at("b")]).contains("sha256 verified"));
    assert!(run(&["put", "--checksum", "sha256", a, &at("b")]).contains("unchanged (11 bytes, sha256 verified)"));
    let back = d.path().join("back");
    let back = back.to_str().expect("utf8");
    assert!(run(&["get", "--checksum", "sha256", &at("b"), back]).contains("sha256 verified"));
    assert!(run(&["get", "--checksum", "xxh3", &at("b"), back]).contains("unchanged (11 bytes, xxh3-128 verified)"));
    assert_eq!(std::fs::read(back).expect("read"), b"some bytes\n");
    // `get --compress` parses and fetches (that it compresses: get_compress_*).
    assert!(run(&["get", "--force", "--compress", &at("b"), back]).contains("xxh3-128 verified"));
    assert_eq!(std::fs::read(back).expect("read"), b"some bytes\n");
}

/// Bytes the process `pid` has written (`wchar` of `/proc/PID/io`): for
/// an agent, what it sent its parent. `None` when this user may not read it.
fn written(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines().find_map(|l| l.strip_prefix("wchar:")).and_then(|v| v.trim().parse().ok())
}

/// 8 MiB of log lines: compressible (deflate takes it to a few percent).
fn log_text() -> Vec<u8> {
    let mut data = Vec::with_capacity(8 << 20);
    let mut i = 0u64;
    while data.len() < 8 << 20 {
        data.extend_from_slice(
            format!("2026-11-28 12:00:{:02} host{} GET /index.html 200 {}\n", i % 60, i % 7, i % 997).as_bytes(),
        );
        i += 1;
    }
    data.truncate(8 << 20);
    data
}

/// `get --compress` in `ctx` (whose agent is `pid`, writing in `dir`): a
/// compressible 8 MiB file comes back byte for byte while the agent
/// writes under a quarter of it (and all of it without `--compress`); an
/// incompressible file still round-trips; a tree get compresses too.
fn get_compressed(ctx: &Context, pid: u32, dir: &Path, test: &str) {
    if written(pid).is_none() {
        return skip_loudly(test, "this user cannot read the agent's /proc/PID/io");
    }
    let text = log_text();
    let tree = dir.join("tree");
    std::fs::create_dir(&tree).expect("mkdir");
    let src = tree.join("log");
    std::fs::write(&src, &text).expect("write");
    let noise = random(3 << 20, 11);
    std::fs::write(tree.join("noise"), &noise).expect("write");
    let force = |compress| CopyOptions { force: true, compress, ..CopyOptions::default() };
    let get = |compress: bool, name: &str| {
        let before = written(pid).expect("wchar");
        let back = dir.join(name);
        let st = ctx.get_with_options(&src, &back, &GetOptions::default(), &force(compress), &|_| {}).expect("get");
        let sent = written(pid).expect("wchar") - before;
        assert_eq!(st.bytes, text.len() as u64);
        assert!(std::fs::read(&back).expect("read") == text, "get (compress: {compress}): content");
        sent
    };
    let plain = get(false, "plain");
    let deflated = get(true, "deflated");
    eprintln!("{test}: 8 MiB of text: the agent wrote {plain} bytes plain, {deflated} with --compress");
    assert!(plain >= text.len() as u64, "plain: {plain}");
    assert!(deflated < text.len() as u64 / 4, "compressed: {deflated}");
    // Incompressible: sent as it is, still whole.
    let back = dir.join("noise.back");
    ctx.get_with_options(tree.join("noise"), &back, &GetOptions::default(), &force(true), &|_| {}).expect("get");
    assert!(std::fs::read(&back).expect("read") == noise, "incompressible get: content");
    // A tree (`get -r --compress`) takes the same options.
    let plan = ctx.plan_remote_tree(&tree).expect("plan");
    let before = written(pid).expect("wchar");
    let copy = dir.join("tree.back");
    ctx.get_tree_with_options(&tree, &copy, &plan, &GetOptions::default(), &force(true), &|_| {}).expect("tree");
    let sent = written(pid).expect("wchar") - before;
    assert!(std::fs::read(copy.join("log")).expect("read") == text, "tree get: content");
    assert!(std::fs::read(copy.join("noise")).expect("read") == noise, "tree get: content");
    assert!(sent < (text.len() / 4 + noise.len() + (1 << 20)) as u64, "tree get wrote {sent}");
}

#[test]
fn get_compress_sends_less_and_round_trips() {
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    let pid = ctx.info().expect("info").pid;
    let d = TempDir::new("get-compress");
    get_compressed(&ctx, pid, d.path(), "get_compress_sends_less_and_round_trips");
}

#[test]
fn get_compress_over_ssh() {
    let Some(sshd) = common::sshd::Sshd::start("get_compress_over_ssh") else { return };
    let router = Router::new().expect("router");
    let ctx = router.ssh(sshd.opts("mito-user")).expect("connect");
    let pid = ctx.info().expect("info").pid;
    let d = TempDir::new("get-compress-ssh");
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    get_compressed(&ctx, pid, d.path(), "get_compress_over_ssh");
}

/// A hostile target's compressed `file_read` reply of ~64 KiB that would
/// inflate to 64 MiB: the master stops inflating at a chunk
/// (`MAX_FILE_READ`), a typed decode error, and no file is left.
#[test]
fn a_compressed_chunk_bomb_is_refused() {
    let router = Router::new().expect("router");
    let d = TempDir::new("read-bomb");
    let ctx = router
        .local(LocalOptions {
            name: Some("hostile-read-bomb".into()),
            sh: common::hostile_harness(),
            env: vec![("MITO_HOSTILE".into(), "read-bomb".into()), ("MITO_HOSTILE_OUTSIDE".into(), d.path().into())],
            connect_timeout: Duration::from_secs(10),
        })
        .expect("the harness says hello");
    let dest = d.path().join("bomb");
    let copy = CopyOptions { force: true, compress: true, ..CopyOptions::default() };
    match ctx.get_with_options("/t/bomb", &dest, &GetOptions::default(), &copy, &|_| {}) {
        Err(TransferError::Remote(mito::CallError::Decode { function, detail, .. })) => {
            assert_eq!(function, "file_read");
            assert!(detail.contains("decompress"), "{detail}");
        }
        other => panic!("wanted a decode error, got {other:?}"),
    }
    assert!(!dest.exists());
    assert_eq!(names(d.path()), Vec::<String>::new());
}

/// A directory larger than one `getdents` buffer of the agent's (32 KiB:
/// 3,000 entries of ~40 bytes each take several reads): `list_dir` names
/// every entry once, and `remove_tree` removes them all.
#[test]
fn list_dir_and_remove_tree_read_a_directory_of_many_reads() {
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    let d = TempDir::new("bigdir");
    let big = d.path().join("big");
    std::fs::create_dir(&big).expect("mkdir");
    let mut want: Vec<String> = (0..3000).map(|i| format!("entry-number-{i:06}")).collect();
    for n in &want {
        std::fs::write(big.join(n), b"x").expect("write");
    }
    std::fs::create_dir(big.join("sub")).expect("mkdir sub");
    std::fs::write(big.join("sub/inner"), b"y").expect("write");
    want.push("sub".into());
    want.sort();
    let got: Vec<String> = ctx
        .list_dir(&big)
        .expect("list_dir")
        .into_iter()
        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
        .collect();
    assert_eq!(got, want, "every entry once, sorted by name");
    ctx.remove_tree(&big).expect("remove_tree");
    assert!(!big.exists(), "removed with everything in it");
}
