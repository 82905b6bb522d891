//! sudo, su and doas with real tools, real users and real passwords
//! (scripts/test-become). The "user → root" cases run the mito CLI as that
//! user through `runuser`, from a copy of the binary every user can run.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use common::{alive, parent_of, skip_loudly, wait_gone, TempDir};
use mito::{BecomeFailure, ConnectError, Router, SuOptions, SudoOptions};

const PASSWORD: &str = common::sshd::PASSWORD;

/// Creates the users and policies once; None (with a loud skip) if not root.
fn setup(test: &str) -> Option<&'static Path> {
    if !common::become_users(test) {
        return None;
    }
    static BIN: OnceLock<(TempDir, PathBuf)> = OnceLock::new();
    let (_, bin) = BIN.get_or_init(|| {
        let dir = TempDir::new("become-bin");
        let bin = dir.path().join("mito");
        std::fs::copy(env!("CARGO_BIN_EXE_mito"), &bin).expect("copy mito");
        for p in [dir.path(), bin.as_path()] {
            std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        }
        (dir, bin)
    });
    Some(bin.as_path())
}

/// Runs `mito ARGS` as `user`, with `MITO_PW` set to `pw` when given.
fn mito_as(bin: &Path, user: &str, pw: Option<&str>, args: &[&str]) -> Output {
    let mut c = Command::new("runuser");
    c.args(["-u", user, "--", "env", "-C", "/tmp"]).arg(format!("HOME=/home/{user}"));
    if let Some(pw) = pw {
        c.arg(format!("MITO_PW={pw}"));
    }
    c.arg(bin).args(["--connect-timeout", "20"]);
    if pw.is_some() {
        c.args(["--become-pass-env", "MITO_PW"]);
    }
    c.args(args).stdin(Stdio::null()).output().expect("runuser")
}

use common::output_text as text;

/// Exit 255, `want` on stderr, and the password nowhere in the output.
fn assert_fails(o: &Output, want: &str) {
    common::assert_cli_fails(o, want, PASSWORD);
}

#[test]
fn sudo_root_to_user_without_password_and_binary_payloads() {
    let Some(_) = setup("sudo_root_to_user_without_password_and_binary_payloads") else { return };
    let router = Router::new().expect("router");
    let ctx = router.sudo(SudoOptions::new("mito-user")).expect("sudo -u mito-user");
    let info = ctx.info().expect("info");
    assert_eq!((info.user.as_str(), info.euid != 0), ("mito-user", true));
    // All 256 byte values, 10 MB, both ways, through a context behind sudo.
    let data: Vec<u8> = (0..10 << 20).map(|i: u32| (i % 256) as u8 ^ (i >> 16) as u8).collect();
    let path = "/home/mito-user/mito-payload.bin";
    ctx.write_file(path, &data, Some(0o600)).expect("write 10 MB");
    assert_eq!(ctx.read_file(path).expect("read back"), data);
    let r = ctx.exec(&["cat", path]).expect("cat");
    assert!(r.stdout == data, "10 MB of binary stdout arrived intact");
    ctx.remove(path).expect("remove");
    // su from root needs no password either.
    let su = router.su(SuOptions::new("mito-user")).expect("su mito-user");
    assert_eq!(su.info().expect("info").user, "mito-user");
}

#[test]
fn sudo_user_to_root_with_password() {
    let Some(bin) = setup("sudo_user_to_root_with_password") else { return };
    let o = mito_as(bin, "mito-sudoer", Some(PASSWORD), &["run", "sudo:root", "--", "id", "-un"]);
    assert_eq!(text(&o).0, "root\n", "{}", text(&o).1);
    let o = mito_as(bin, "mito-nopw", None, &["run", "sudo:root", "--", "id", "-un"]);
    assert_eq!(text(&o).0, "root\n", "NOPASSWD needs no password: {}", text(&o).1);
}

#[test]
fn sudo_wrong_missing_and_refused() {
    let Some(bin) = setup("sudo_wrong_missing_and_refused") else { return };
    assert_fails(
        &mito_as(bin, "mito-sudoer", Some("not-the-password"), &["run", "sudo:root", "--", "true"]),
        "wrong password",
    );
    assert_fails(&mito_as(bin, "mito-sudoer", None, &["run", "sudo:root", "--", "true"]), "a password is required");
    assert_fails(
        &mito_as(bin, "mito-user", Some(PASSWORD), &["run", "sudo:root", "--", "true"]),
        "not in the sudoers file",
    );
}

#[test]
fn su_with_right_and_wrong_password() {
    let Some(bin) = setup("su_with_right_and_wrong_password") else { return };
    let o = mito_as(bin, "mito-sudoer", Some(PASSWORD), &["run", "su:mito-user", "--", "id", "-un"]);
    assert_eq!(text(&o).0, "mito-user\n", "{}", text(&o).1);
    assert_fails(
        &mito_as(bin, "mito-sudoer", Some("not-the-password"), &["run", "su:mito-user", "--", "true"]),
        "wrong password",
    );
    assert_fails(&mito_as(bin, "mito-sudoer", None, &["run", "su:mito-user", "--", "true"]), "a password is required");
}

#[test]
fn doas_with_right_and_wrong_password() {
    let Some(bin) = setup("doas_with_right_and_wrong_password") else { return };
    if !Path::new("/usr/bin/doas").exists() {
        return skip_loudly("doas_with_right_and_wrong_password", "doas is not installed (apt-get install opendoas)");
    }
    let o = mito_as(bin, "mito-sudoer", Some(PASSWORD), &["run", "doas:root", "--", "id", "-un"]);
    assert_eq!(text(&o).0, "root\n", "{}", text(&o).1);
    assert_fails(
        &mito_as(bin, "mito-sudoer", Some("not-the-password"), &["run", "doas:root", "--", "true"]),
        "wrong password",
    );
    let o = mito_as(bin, "mito-nopw", None, &["run", "doas:root", "--", "id", "-un"]);
    assert_eq!(text(&o).0, "root\n", "nopass: {}", text(&o).1);
}

#[test]
fn missing_tool_is_a_typed_error() {
    let Some(_) = setup("missing_tool_is_a_typed_error") else { return };
    let router = Router::new().expect("router");
    let mut o = SudoOptions::new("mito-user");
    o.sudo_path = Some("/nonexistent/sudo".into());
    match router.sudo(o) {
        Err(ConnectError::Become { failure: BecomeFailure::ToolMissing, .. }) => {}
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("connected without sudo"),
    }
}

/// kill -9 of the master: the agent under sudo and its command are gone.
#[test]
fn agent_under_sudo_dies_with_its_master() {
    let Some(_) = setup("agent_under_sudo_dies_with_its_master") else { return };
    let (mut master, cmd) =
        common::mito_printing_pid(&["run", "sudo:mito-user", "--", "sh", "-c", "echo $$; exec sleep 100"]);
    let agent = parent_of(cmd).expect("the command's parent is the agent");
    assert!(alive(agent));
    common::kill9(master.id());
    let _ = master.wait();
    assert!(wait_gone(agent, Duration::from_secs(2)).is_some(), "agent {agent} under sudo outlived its master");
    assert!(wait_gone(cmd, Duration::from_secs(2)).is_some(), "its command {cmd} outlived it");
}

/// put/get where the context's user may not write or read: typed errors
/// naming the context and path, nothing left behind, the context still
/// works; and a root-owned source put by a non-root agent is simply the
/// agent user's file (owner is only kept by a root receiver).
#[test]
fn transfers_denied_by_permissions_are_typed_errors() {
    let Some(_) = setup("transfers_denied_by_permissions_are_typed_errors") else { return };
    let router = Router::new().expect("router");
    let ctx = router.sudo(SudoOptions::new("mito-user")).expect("sudo -u mito-user");
    let d = TempDir::new("perm");
    let src = d.path().join("src");
    std::fs::write(&src, b"secret-free content").expect("write");
    std::fs::set_permissions(&src, std::os::unix::fs::PermissionsExt::from_mode(0o644)).expect("chmod");

    let denied = "/root/mito-denied-put";
    let e = ctx.put(&src, denied).expect_err("mito-user cannot write /root");
    let msg = e.to_string();
    assert!(msg.contains("sudo:mito-user") || msg.contains(ctx.name()), "names the context: {msg}");
    assert!(msg.contains("/root/mito-denied-put") && msg.to_lowercase().contains("permission denied"), "{msg}");
    match &e {
        mito::TransferError::Remote(c) => {
            let r = c.remote().expect("a remote error");
            assert_eq!((r.kind, r.errno), (mito::ErrorKind::Os, libc::EACCES), "{c:?}");
        }
        other => panic!("expected a remote error, got {other:?}"),
    }
    assert!(!Path::new(denied).exists());

    let dest = d.path().join("shadow-copy");
    let e = ctx.get("/etc/shadow", &dest).expect_err("mito-user cannot read /etc/shadow");
    assert!(e.to_string().contains("/etc/shadow"), "{e}");
    assert!(!dest.exists());

    let home = "/home/mito-user/mito-owned";
    ctx.put(&src, home).expect("put into the user's home");
    let m = std::fs::metadata(home).expect("meta");
    let uid = ctx.info().expect("info").uid;
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&m), uid, "a non-root receiver owns what it writes");
    std::fs::remove_file(home).expect("rm");
    ctx.ping().expect("the context still works");
}
