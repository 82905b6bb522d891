//! `mito run` as the README describes it: `-e`, `--cwd`, `-n`, signals
//! forwarded to the command's process group (its children included), the
//! third ^C that gives up, and `-t` sized like the local terminal, resized
//! with it, raw while it runs.

mod common;
mod tty;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const MITO: &str = env!("CARGO_BIN_EXE_mito");

/// `mito` with SIGINT and SIGQUIT at their defaults, whatever this test
/// inherited (a test run started as a background job of a script has them
/// ignored, and a program started with a signal ignored keeps ignoring it,
/// as a shell does): these tests send them on purpose.
fn mito() -> Command {
    let mut c = Command::new(MITO);
    c.current_dir("/");
    // SAFETY: signal(2) is async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGQUIT, libc::SIG_DFL);
            Ok(())
        });
    }
    c
}

/// A command gets every signal at its default action even when mito (and
/// so a local agent) was started with SIGINT ignored, as a background job
/// of a script is: its `trap` works, as it would over ssh.
#[test]
fn commands_get_default_signal_actions_whatever_mito_inherited() {
    let mut c = Command::new(MITO);
    c.current_dir("/").args(["run", "local", "--", "sh", "-c", "trap 'echo trapped' INT; kill -INT $$; echo after"]);
    // SAFETY: signal(2) is async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_IGN);
            Ok(())
        });
    }
    let out = c.output().expect("mito");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "trapped\nafter\n", "{}", String::from_utf8_lossy(&out.stderr));
}

/// Waits up to `limit` for `child`; kills it and panics after that.
fn wait_limit(child: &mut Child, limit: Duration) -> ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mito still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads lines until one equals `want`; panics at EOF.
fn read_until_line(out: &mut impl BufRead, want: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let mut line = String::new();
        let n = out.read_line(&mut line).expect("read");
        assert!(n > 0, "EOF before {want:?}; saw {seen:?}");
        let line = line.trim_end().to_string();
        seen.push(line.clone());
        if line == want {
            return seen;
        }
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a child we started.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0, "kill {pid} {sig}");
}

/// `-e VAR=VALUE` (repeatable; the value may hold '=') and `--cwd DIR`.
#[test]
fn env_and_cwd_reach_the_command() {
    let dir = common::TempDir::new("run-cwd");
    let cwd = dir.path().canonicalize().expect("canonical");
    let o = mito()
        .args(["run", "-e", "MITO_A=one", "-e", "MITO_B=x=y z", "--cwd"])
        .arg(&cwd)
        .args(["local", "--", "sh", "-c", "printf '%s|%s|%s\\n' \"$MITO_A\" \"$MITO_B\" \"$(pwd)\""])
        .stdin(Stdio::null())
        .output()
        .expect("mito");
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), format!("one|x=y z|{}\n", cwd.display()));

    // Without them: neither variable, and not that directory.
    let o = mito()
        .args(["run", "local", "--", "sh", "-c", "printf '%s|%s|%s\\n' \"$MITO_A\" \"$MITO_B\" \"$(pwd)\""])
        .env_remove("MITO_A")
        .env_remove("MITO_B")
        .stdin(Stdio::null())
        .output()
        .expect("mito");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with("||") && !out.contains(&*cwd.to_string_lossy()), "{out}");

    let o = mito().args(["run", "-e", "NOEQUALS", "local", "--", "true"]).stdin(Stdio::null()).output().expect("mito");
    assert_eq!(o.status.code(), Some(255));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--env NOEQUALS: expected VAR=VALUE"));
}

/// `-n`: the command's stdin is at EOF at once although mito's stdin is an
/// open pipe with data in it; without `-n` the same pipe reaches it.
#[test]
fn no_stdin_means_eof_even_with_an_open_stdin() {
    let script = "if read l; then echo \"got $l\"; else echo eof; fi";
    for (flag, want) in [(Some("-n"), "eof\n"), (None, "got data\n")] {
        let mut c = mito();
        c.arg("run");
        if let Some(f) = flag {
            c.arg(f);
        }
        let mut child = c
            .args(["local", "--", "sh", "-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("mito");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"data\n").expect("write");
        stdin.flush().expect("flush");
        // stdin stays open while the command runs and exits.
        let st = wait_limit(&mut child, Duration::from_secs(10));
        let mut out = String::new();
        child.stdout.take().expect("stdout").read_to_string(&mut out).expect("read");
        drop(stdin);
        assert_eq!((st.code(), out.as_str()), (Some(0), want), "mito run {flag:?}");
    }
}

/// SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to mito reach the command's
/// whole process group: the command's own child traps it too, and mito
/// exits with the command's status.
#[test]
fn signals_reach_the_commands_process_group() {
    for (sig, name) in [(libc::SIGINT, "INT"), (libc::SIGTERM, "TERM"), (libc::SIGHUP, "HUP"), (libc::SIGQUIT, "QUIT")]
    {
        // The child runs in the foreground of the command's shell, so only
        // a signal to the group (not to the shell's pid) reaches it.
        let script = format!(
            "trap 'echo parent-got-{name}' {name}; \
             sh -c 'trap \"echo child-got-{name}; exit 3\" {name}; echo ready; while :; do sleep 0.05; done'; \
             echo child-exited-$?; exit 7"
        );
        let mut child = mito()
            .args(["run", "local", "--", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("mito");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        read_until_line(&mut out, "ready");
        signal(child.id(), sig);
        let st = wait_limit(&mut child, Duration::from_secs(10));
        let mut rest = String::new();
        out.read_to_string(&mut rest).expect("read");
        for want in [format!("child-got-{name}"), format!("parent-got-{name}"), "child-exited-3".into()] {
            assert!(rest.lines().any(|l| l == want), "SIG{name}: {want:?} missing from {rest:?}");
        }
        assert_eq!(st.code(), Some(7), "SIG{name}: mito exits with the command's status");
    }
}

/// A command that shrugs off ^C: the first two are forwarded (it says so
/// and keeps running), the third makes mito give up with 130, and the
/// command does not outlive it.
#[test]
fn a_third_ctrl_c_gives_up_and_exits_130() {
    let script = "trap 'echo got-INT' INT; echo $$; while :; do sleep 0.05; done";
    let mut child = mito()
        .args(["run", "local", "--", "sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mito");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("read");
    let cmd: u32 = line.trim().parse().expect("the command's pid");
    for _ in 0..2 {
        signal(child.id(), libc::SIGINT);
        read_until_line(&mut out, "got-INT");
        assert!(common::alive(cmd), "the command survives a trapped ^C");
        assert!(child.try_wait().expect("try_wait").is_none(), "mito keeps waiting for the command");
    }
    signal(child.id(), libc::SIGINT);
    let st = wait_limit(&mut child, Duration::from_secs(5));
    assert_eq!(st.code(), Some(130));
    let mut err = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut err).expect("read");
    assert!(err.contains("interrupted three times"), "{err}");
    assert!(common::wait_gone(cmd, Duration::from_secs(5)).is_some(), "the command {cmd} outlived mito");
}

/// `-t` on a terminal of 37×123: the command sees that size, a resize of
/// the terminal reaches it, the terminal is raw while mito runs (so ^C is a
/// byte that the remote pty turns into SIGINT) and cooked again after.
#[test]
fn tty_has_the_terminal_size_follows_resizes_and_passes_ctrl_c() {
    let mut c = mito();
    c.args(["run", "-t", "local", "--", "sh", "-c", "stty size; while read l; do stty size; done"]);
    let mut p = tty::OnPty::spawn(&mut c, 37, 123);
    let at = p.wait_for("37 123", Duration::from_secs(10));
    assert!(!p.is_cooked(), "the local terminal is raw while the command runs");
    p.resize(50, 140);
    // The resize travels on its own (SIGWINCH → mito → the agent's pty);
    // each Enter makes the command print its size again until it shows.
    let t0 = Instant::now();
    loop {
        p.type_in(b"\r");
        std::thread::sleep(Duration::from_millis(100));
        if p.text()[at..].contains("50 140") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "the resize never arrived: {:?}", p.text());
    }
    // ^C as a byte: the remote terminal signals the command (128 + 2).
    let t0 = Instant::now();
    let st = loop {
        if let Some(st) = p.child.try_wait().expect("try_wait") {
            break st;
        }
        // (The terminal may close under a late one.)
        p.try_type_in(&[3]);
        std::thread::sleep(Duration::from_millis(300));
        assert!(t0.elapsed() < Duration::from_secs(10), "^C did not stop the command: {:?}", p.text());
    };
    assert_eq!(st.code(), Some(130), "{:?}", p.text());
    assert!(p.is_cooked(), "the terminal is restored when mito exits");
}
