//! The README's sudo/su/doas claims through the `mito` CLI with real tools
//! and the users of scripts/test-become: the password flags
//! (`--become-pass-file`, `--ask-become-pass` on a terminal), `--preserve-env`
//! and `--login`, and the typed refusals (policy, requiretty, an expired
//! account, no such user).

mod common;
mod tty;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::TempDir;

const PASSWORD: &str = common::sshd::PASSWORD;

/// Creates the users once and a copy of mito every user can run (with a
/// directory beside it for PATH wrappers); None (with a loud skip) if not root.
fn setup(test: &str) -> Option<&'static Path> {
    if !common::become_users(test) {
        return None;
    }
    Some(common::shared_mito_dir())
}

/// `runuser -u USER -- env -C /tmp HOME=… [VARS…] DIR/mito --connect-timeout 20 ARGS…`.
fn mito_as(dir: &Path, user: &str, vars: &[&str], args: &[&str]) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", user, "--", "env", "-C", "/tmp"]).arg(format!("HOME=/home/{user}")).args(vars);
    c.arg(dir.join("mito")).args(["--connect-timeout", "20"]).args(args).stdin(Stdio::null());
    c
}

/// mito as root, from /tmp.
fn mito(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mito"));
    c.current_dir("/tmp").args(["--connect-timeout", "20"]).args(args).stdin(Stdio::null());
    c
}

use common::output_text as text;

fn assert_prints(o: &Output, want: &str) {
    let (out, err) = text(o);
    assert_eq!((o.status.code(), out.as_str()), (Some(0), want), "stderr: {err}");
}

/// Exit 255, `want` on stderr, and the password nowhere in the output.
fn assert_fails(o: &Output, want: &str) {
    common::assert_cli_fails(o, want, PASSWORD);
}

/// `--become-pass-file`: the first line of the file answers sudo's prompt
/// (user → root); a wrong one is the typed "wrong password".
#[test]
fn become_pass_file() {
    let Some(dir) = setup("become_pass_file") else { return };
    let files = TempDir::new("become-pw");
    std::fs::set_permissions(files.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/home/mito-sudoer").expect("home"));
    let write = |name: &str, first: &str| -> PathBuf {
        let p = files.path().join(name);
        std::fs::write(&p, format!("{first}\nsecond line, not the password\n")).expect("write");
        std::os::unix::fs::chown(&p, Some(uid), None).expect("chown");
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
        p
    };
    let right = write("right", PASSWORD);
    let wrong = write("wrong", "not-the-password");
    let run = |file: &Path| {
        let f = file.to_string_lossy().into_owned();
        mito_as(dir, "mito-sudoer", &[], &["--become-pass-file", &f, "run", "sudo:root", "--", "id", "-un"])
            .output()
            .expect("runuser")
    };
    assert_prints(&run(&right), "root\n");
    let o = run(&wrong);
    assert_fails(&o, "sudo:root: sudo to root: wrong password");
    assert!(!text(&o).1.contains("not-the-password"), "{}", text(&o).1);
}

/// `--ask-become-pass`: mito asks on the terminal (echo off) before
/// connecting, and types the answer at sudo's prompt; nothing typed shows.
#[test]
fn ask_become_pass_on_a_terminal() {
    let Some(dir) = setup("ask_become_pass_on_a_terminal") else { return };
    let mut c = mito_as(dir, "mito-sudoer", &[], &["--ask-become-pass", "run", "sudo:root", "--", "id", "-un"]);
    let mut p = tty::OnPty::spawn(&mut c, 24, 80);
    let (st, screen) = p.answer("become password: ", Duration::from_secs(10), PASSWORD);
    assert_eq!(st.code(), Some(0), "{screen:?}");
    assert!(screen.contains("root\r\n"), "{screen:?}");
    assert!(!screen.contains(PASSWORD), "the password was echoed: {screen:?}");
}

/// `--preserve-env` is `sudo -E`: a variable of mito's environment reaches
/// the command as the other user; without it sudo's env_reset drops it.
#[test]
fn preserve_env_keeps_a_variable_through_sudo() {
    if setup("preserve_env_keeps_a_variable_through_sudo").is_none() {
        return;
    }
    let show = ["run", "sudo:mito-user", "--", "sh", "-c", "echo \"[$MITO_KEEP] $(id -un)\""];
    let o = mito(&[&["--preserve-env"][..], &show[..]].concat()).env("MITO_KEEP", "kept value").output().expect("mito");
    assert_prints(&o, "[kept value] mito-user\n");
    let o = mito(&show).env("MITO_KEEP", "kept value").output().expect("mito");
    assert_prints(&o, "[] mito-user\n");
}

/// `--login` is `sudo -i` / `su -l`: the command starts in the target
/// user's home with its HOME; without it, in mito's directory (/tmp).
#[test]
fn login_starts_in_the_target_users_home() {
    if setup("login_starts_in_the_target_users_home").is_none() {
        return;
    }
    for tool in ["sudo", "su"] {
        let t = format!("{tool}:mito-user");
        let show = ["run", &t, "--", "sh", "-c", "echo \"$(pwd) $HOME\""];
        let o = mito(&[&["--login"][..], &show[..]].concat()).output().expect("mito");
        assert_prints(&o, "/home/mito-user /home/mito-user\n");
        let o = mito(&show).output().expect("mito");
        let (out, err) = text(&o);
        assert!(out.starts_with("/tmp "), "{tool} without --login stays in mito's directory: {out} {err}");
    }
}

/// Refusals, each typed and naming the tool and user: the policy allows
/// only another command (sudo, doas); no such user (sudo, su, doas); an
/// expired account (as sudo's invoking user, as su's target).
#[test]
fn policy_expiry_and_unknown_users_are_typed_errors() {
    let Some(dir) = setup("policy_expiry_and_unknown_users_are_typed_errors") else { return };
    let pw = format!("MITO_PW={PASSWORD}");
    let limited = |t: &str| {
        mito_as(dir, "mito-limited", &[&pw], &["--become-pass-env", "MITO_PW", "run", t, "--", "true"])
            .output()
            .expect("runuser")
    };
    assert_fails(&limited("sudo:root"), "sudo:root: sudo to root: not allowed by the policy");
    if Path::new("/usr/bin/doas").exists() {
        assert_fails(&limited("doas:root"), "doas:root: doas to root: not allowed by the policy");
    } else {
        common::skip_loudly("policy_expiry_and_unknown_users_are_typed_errors (doas part)", "doas is not installed");
    }

    for tool in ["sudo", "su", "doas"] {
        if tool == "doas" && !Path::new("/usr/bin/doas").exists() {
            continue;
        }
        let t = format!("{tool}:mito-no-such-user");
        assert_fails(
            &mito(&["run", &t, "--", "true"]).output().expect("mito"),
            &format!("{t}: {tool} to mito-no-such-user: no such user"),
        );
    }

    let o = mito_as(dir, "mito-expired", &[], &["run", "sudo:root", "--", "true"]).output().expect("runuser");
    assert_fails(&o, "sudo:root: sudo to root: the account is locked or expired");
    // From root su asks no password; PAM's account check still refuses.
    let o = mito(&["run", "su:mito-expired", "--", "true"]).output().expect("mito");
    assert_fails(&o, "su:mito-expired: su to mito-expired: the account is locked or expired");
}

/// requiretty: the hybrid tty gives sudo a terminal, so a requiretty user
/// just works; where sudo gets no terminal at all (a wrapper that runs it
/// in a new session with stderr on a pipe) the refusal is typed.
#[test]
fn requiretty_is_satisfied_and_its_refusal_is_typed() {
    let Some(dir) = setup("requiretty_is_satisfied_and_its_refusal_is_typed") else { return };
    let o = mito_as(dir, "mito-tty", &[], &["run", "sudo:root", "--", "id", "-un"]).output().expect("runuser");
    assert_prints(&o, "root\n");

    let wrappers = dir.join("no-tty");
    std::fs::create_dir_all(&wrappers).expect("mkdir");
    let sudo = wrappers.join("sudo");
    let tmp = wrappers.join(format!("sudo.{}", std::process::id()));
    std::fs::write(&tmp, "#!/bin/bash\nexec 3>&2\nsetsid -w /usr/bin/sudo \"$@\" 2> >(cat >&3)\n").expect("write");
    for p in [wrappers.as_path(), tmp.as_path()] {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    }
    std::fs::rename(&tmp, &sudo).expect("rename");
    let path = format!("PATH={}:/usr/sbin:/usr/bin:/sbin:/bin", wrappers.display());
    let o = mito_as(dir, "mito-tty", &[&path], &["run", "sudo:root", "--", "true"]).output().expect("runuser");
    assert_fails(&o, "sudo:root: sudo to root: the tool requires a tty");
    // The same wrapper is fine for a user without requiretty: the refusal
    // above was requiretty's.
    let o = mito_as(dir, "mito-nopw", &[&path], &["run", "sudo:root", "--", "id", "-un"]).output().expect("runuser");
    assert_prints(&o, "root\n");
}
