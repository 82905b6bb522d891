//! Streamed commands (`Context::spawn`): stdin streamed in, output streamed
//! out with credit, signals, timeouts, ptys, many at once; and the CLI's
//! `mito run` on top (stdin, ^C, -t, --timeout).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use mito::functions::ExecArgs;
use mito::{Context, LocalOptions, Process, ProcessEvent, Router};
use serde_bytes::ByteBuf;

fn args(argv: &[&str]) -> ExecArgs {
    ExecArgs { argv: argv.iter().map(|a| ByteBuf::from(a.as_bytes())).collect(), ..ExecArgs::default() }
}

fn local() -> (Router, Context) {
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    (router, ctx)
}

/// Output until `needle` has been seen on fd 1 (deadline 10 s).
fn read_until(p: &mut Process, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains(needle) {
        match p.next(Some(deadline)) {
            Ok(ProcessEvent::Output { data, .. }) => seen.extend_from_slice(&data),
            Ok(ProcessEvent::Exit(r)) => {
                panic!("exited ({r:?}) before {needle:?}; saw {:?}", String::from_utf8_lossy(&seen))
            }
            Err(e) => panic!("waiting for {needle:?}: {e}; saw {:?}", String::from_utf8_lossy(&seen)),
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[test]
fn stdin_streams_in_and_output_streams_out_while_running() {
    let (_r, ctx) = local();
    let mut p = ctx.spawn(&args(&["sh", "-c", "while read l; do echo \"got $l\"; done; echo bye"])).expect("spawn");
    let input = p.take_input().expect("input");
    // Each answer arrives while stdin is still open: nothing waits for EOF.
    input.write(b"one\n").expect("write");
    read_until(&mut p, "got one");
    input.write(b"two\n").expect("write");
    read_until(&mut p, "got two");
    drop(input); // the last handle: EOF
    let out = read_until(&mut p, "bye");
    assert!(out.contains("bye"));
    assert_eq!(p.wait().expect("exit").status.code, Some(0));
}

#[test]
fn large_stdin_round_trips_through_cat_with_a_bounded_window() {
    let (_r, ctx) = local();
    let data: Vec<u8> = (0..24 << 20).map(|_| fastrand::u8(..)).collect();
    let mut p = ctx.spawn(&args(&["cat"])).expect("spawn");
    let input = p.take_input().expect("input");
    let feed = data.clone();
    let writer = std::thread::spawn(move || {
        // Odd sizes: chunking must not depend on the caller's.
        for c in feed.chunks(777_777) {
            input.write(c).expect("write");
        }
        input.close().expect("close");
    });
    let mut out = Vec::new();
    loop {
        match p.next(None).expect("next") {
            ProcessEvent::Output { fd: 1, data } => out.extend_from_slice(&data),
            ProcessEvent::Output { fd, data } => panic!("fd {fd}: {:?}", String::from_utf8_lossy(&data)),
            ProcessEvent::Exit(r) => {
                assert_eq!(r.status.code, Some(0));
                break;
            }
        }
    }
    writer.join().expect("writer");
    assert!(out == data, "cat echoed {} of {} bytes, or not the same ones", out.len(), data.len());
}

#[test]
fn writing_to_an_exited_command_is_a_typed_error_not_a_hang() {
    let (_r, ctx) = local();
    let mut p = ctx.spawn(&args(&["true"])).expect("spawn");
    let input = p.take_input().expect("input");
    assert_eq!(p.wait().expect("exit").status.code, Some(0));
    let big = vec![b'x'; 4 << 20];
    let t = Instant::now();
    let e = input.write(&big).expect_err("the command has exited");
    assert!(matches!(e, mito::CallError::InputClosed { .. }), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5));
    ctx.ping().expect("the context still works");
}

/// A signal goes to the command's process group: the command's child gets
/// it too, while the command still runs (so not from a clean-up after the
/// command's exit).
#[test]
fn signals_reach_the_command_and_its_children() {
    let (_r, ctx) = local();
    // The child traps TERM and says so; the command, on TERM, waits for
    // that child and exits 7. Were only the command's pid signalled, its
    // `wait` would never return (the child loops until it gets TERM).
    let script = "trap 'echo parent got TERM; wait; exit 7' TERM; \
                  sh -c 'trap \"echo child got TERM; exit 5\" TERM; echo child armed; while :; do sleep 0.05; done' & \
                  echo \"child pid $!\"; echo ready; while :; do sleep 0.05; done";
    let mut p = ctx.spawn(&args(&["sh", "-c", script])).expect("spawn");
    let mut out = read_until(&mut p, "ready");
    if !out.contains("child armed") {
        out += &read_until(&mut p, "child armed");
    }
    let child: u32 = out
        .lines()
        .find_map(|l| l.strip_prefix("child pid "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("the command printed its child's pid: {out:?}"));
    assert!(common::alive(child), "the command's child {child} runs");
    p.signal(libc::SIGTERM).expect("signal");
    let out = read_until(&mut p, "child got TERM");
    let out = if out.contains("parent got TERM") { out } else { read_until(&mut p, "parent got TERM") };
    assert!(out.contains("parent got TERM"), "{out:?}");
    assert!(common::wait_gone(child, Duration::from_secs(2)).is_some(), "the command's child {child} outlived TERM");
    let r = p.wait().expect("exit");
    assert_eq!((r.status.code, r.status.signal, r.timed_out), (Some(7), None, false));

    let mut p = ctx.spawn(&args(&["sleep", "30"])).expect("spawn");
    p.signal(libc::SIGKILL).expect("signal");
    assert_eq!(p.wait().expect("exit").status.signal, Some(libc::SIGKILL));
}

#[test]
fn timeout_terminates_then_kills() {
    let (_r, ctx) = local();
    let t = Instant::now();
    let r = ctx.exec_with(&ExecArgs { timeout_ms: Some(300), ..args(&["sleep", "30"]) }).expect("exec");
    assert!(r.timed_out);
    assert_eq!(r.status.signal, Some(libc::SIGTERM));
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());

    // A command that ignores SIGTERM gets SIGKILL after the grace period,
    // and so does its child (which ignores TERM too): the process group.
    let t = Instant::now();
    let script = "trap '' TERM; sleep 30 >/dev/null & echo $!; wait";
    let r = ctx.exec_with(&ExecArgs { timeout_ms: Some(200), ..args(&["sh", "-c", script]) }).expect("exec");
    assert!(r.timed_out);
    assert_eq!(r.status.signal, Some(libc::SIGKILL));
    assert!(t.elapsed() >= Duration::from_secs(5) && t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    let child: u32 = String::from_utf8_lossy(&r.stdout).trim().parse().expect("the command printed its child's pid");
    assert!(
        common::wait_gone(child, Duration::from_secs(2)).is_some(),
        "the command's child {child} outlived the timeout"
    );

    // Finishing in time is not a timeout.
    let r = ctx.exec_with(&ExecArgs { timeout_ms: Some(10_000), ..args(&["true"]) }).expect("exec");
    assert_eq!((r.status.code, r.timed_out), (Some(0), false));
}

#[test]
fn pty_is_a_controlling_terminal_with_size_resize_and_ctrl_c() {
    let (_r, ctx) = local();
    let script = "test -t 0 && test -t 1 && test -t 2 && echo is-a-tty; stty size; read l; stty size; \
                  echo armed; sleep 30";
    let mut p = ctx.spawn(&ExecArgs { pty: Some((33, 111)), ..args(&["sh", "-c", script]) }).expect("spawn");
    let out = read_until(&mut p, "33 111");
    assert!(out.contains("is-a-tty"), "{out:?}");
    let input = p.take_input().expect("input");
    input.resize(40, 100).expect("resize");
    input.write(b"go\r").expect("write");
    // One read: "40 100" and "armed" may arrive in the same chunk.
    let out = read_until(&mut p, "armed");
    assert!(out.contains("40 100"), "{out:?}");
    // ^C is a byte on a pty: the terminal's line discipline signals the job.
    // (Again every 200 ms: one that lands while sh is forking sleep is held
    // by sh until sleep ends, as on any terminal.)
    let r = loop {
        input.write(&[3]).expect("write ^C");
        match p.next(Some(Instant::now() + Duration::from_millis(200))) {
            Ok(ProcessEvent::Exit(r)) => break r,
            Ok(ProcessEvent::Output { .. }) | Err(mito::CallError::Timeout { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(r.status.signal, Some(libc::SIGINT), "{r:?}");
}

#[test]
fn fifty_commands_at_once_on_one_context() {
    let (_r, ctx) = local();
    let mut procs: Vec<(usize, Process)> = (0..50)
        .map(|i| (i, ctx.spawn(&args(&["sh", "-c", &format!("seq {i} 20000; echo done-{i} >&2")])).expect("spawn")))
        .collect();
    for (i, p) in &mut procs {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        loop {
            match p.next(None).expect("next") {
                ProcessEvent::Output { fd: 1, data } => out.extend_from_slice(&data),
                ProcessEvent::Output { data, .. } => err.extend_from_slice(&data),
                ProcessEvent::Exit(r) => {
                    assert_eq!(r.status.code, Some(0));
                    break;
                }
            }
        }
        let want: String = (*i..=20000).map(|n| format!("{n}\n")).collect();
        assert!(out == want.as_bytes(), "command {i}: {} bytes of output, want {}", out.len(), want.len());
        assert_eq!(String::from_utf8_lossy(&err), format!("done-{i}\n"));
    }
}

// ---- the CLI -----------------------------------------------------------------

fn mito() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_mito"))
}

#[test]
fn cli_run_streams_stdin_both_ways() {
    let mut child = mito()
        .args(["run", "local", "--", "sh", "-c", "while read l; do echo \"got $l\"; done; exit 4"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("mito");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    for word in ["alpha", "beta"] {
        writeln!(stdin, "{word}").expect("write");
        stdin.flush().expect("flush");
        line.clear();
        out.read_line(&mut line).expect("read");
        assert_eq!(line, format!("got {word}\n"), "answered while stdin is still open");
    }
    drop(stdin);
    assert_eq!(child.wait().expect("wait").code(), Some(4));
}

#[test]
fn cli_ctrl_c_reaches_the_remote_command() {
    let script = "trap 'echo got INT; exit 9' INT; echo ready; while :; do sleep 0.05; done";
    let mut child = mito()
        .args(["run", "local", "--", "sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("mito");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("read");
    assert_eq!(line, "ready\n");
    // As a terminal's ^C does: SIGINT to mito.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let mut rest = String::new();
    out.read_to_string(&mut rest).expect("read");
    assert_eq!(rest, "got INT\n", "the remote trap ran");
    assert_eq!(child.wait().expect("wait").code(), Some(9), "mito exits with the command's status");
}

#[test]
fn cli_timeout_and_tty() {
    let o = mito().args(["run", "--timeout", "0.3", "local", "--", "sleep", "30"]).output().expect("mito");
    assert_eq!(o.status.code(), Some(124));
    assert!(String::from_utf8_lossy(&o.stderr).contains("timed out"), "{}", String::from_utf8_lossy(&o.stderr));

    let o = mito().args(["run", "-t", "local", "--", "sh", "-c", "tty; exit 3"]).output().expect("mito");
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("/dev/pts/"), "{}", String::from_utf8_lossy(&o.stdout));
}
