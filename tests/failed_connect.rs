//! A connect that fails never waits on a process it may not kill, and
//! leaves nothing behind. Here the tool (doas, via a wrapper first on PATH)
//! runs a root process that never speaks, so the bootstrap times out with
//! a child mito cannot signal; mito must hang it up (close its pipes and
//! its tty) and return. Where doas execs the command in the very pid mito
//! started (opendoas built without PAM), SIGKILL is refused outright and a
//! blocking reap used to hang; Debian's doas forks under PAM, so here the
//! test guards the path rather than reproducing that hang.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn a_failed_doas_connect_returns_although_its_root_child_cannot_be_killed() {
    if !common::become_users("a_failed_doas_connect_returns_although_its_root_child_cannot_be_killed") {
        return;
    }
    if !std::path::Path::new("/usr/bin/doas").exists() {
        return common::skip_loudly("a_failed_doas_connect…", "no /usr/bin/doas (apt-get install opendoas)");
    }
    let dir = common::shared_mito_dir();
    // A `doas` first on PATH that becomes root (mito-nopw: doas nopass)
    // and then never speaks: the bootstrap times out with a root child.
    let wrappers = common::TempDir::new("eperm-doas");
    std::fs::set_permissions(wrappers.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    // A root process that waits for its stdin, told apart from any other
    // by its (valid) byte count. (doas leaves HUP, INT, QUIT and TERM
    // blocked in what it runs, so only the end of its input ends it.)
    let marker = format!("1000{}", std::process::id());
    let doas = wrappers.path().join("doas");
    std::fs::write(&doas, format!("#!/bin/sh\nexec /usr/bin/doas -n -u root /usr/bin/head -c {marker}\n"))
        .expect("write");
    std::fs::set_permissions(&doas, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");

    let path = format!("{}:/usr/bin:/bin:/usr/sbin:/sbin", wrappers.path().display());
    let t0 = Instant::now();
    let mut child = Command::new("runuser")
        .args(["-u", "mito-nopw", "--", "env", "-i", &format!("PATH={path}"), "HOME=/tmp"])
        .arg(dir.join("mito"))
        .args(["--connect-timeout", "2", "run", "doas:root", "--", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runuser");
    let mut status = None;
    while t0.elapsed() < Duration::from_secs(15) {
        if let Some(s) = child.try_wait().expect("wait") {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let elapsed = t0.elapsed();
    // Whatever happened, nothing of ours stays behind: the root child by
    // its unique argument (found through /proc, stopped by pid), then mito.
    let root_children: Vec<u32> = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid: &u32| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(&marker))
        })
        .collect();
    for pid in &root_children {
        common::kill9(*pid);
    }
    if status.is_none() {
        let _ = child.kill();
    }
    let _ = child.wait(); // reaped on every path (a finished one returns its status again)
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let status = status.unwrap_or_else(|| panic!("mito was still connecting after {elapsed:?}: {err}"));
    assert_eq!(status.code(), Some(255), "{err}");
    assert!(err.contains("doas:root") && err.contains("timed out"), "{err}");
    assert!(elapsed < Duration::from_secs(8), "a failed connect took {elapsed:?}");
    assert!(root_children.is_empty(), "the hung-up root child outlived mito: {root_children:?}");
}
