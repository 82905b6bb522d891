//! The `mito` binary as a user runs it.

use std::process::{Command, Stdio};

const MITO: &str = env!("CARGO_BIN_EXE_mito");

fn mito(args: &[&str]) -> std::process::Output {
    Command::new(MITO).args(args).stdin(Stdio::null()).output().expect("mito runs")
}

#[test]
fn run_streams_output_and_propagates_exit_code() {
    let out = mito(&["run", "local", "--", "sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "to-stdout\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("to-stderr"));
    let out = mito(&["run", "local", "--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(out.status.code(), Some(128 + 15), "killed by a signal: 128 + N");
}

#[test]
fn run_forwards_stdin() {
    let mut child = Command::new(MITO)
        .args(["run", "local", "--", "tr", "a-z", "A-Z"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    use std::io::Write;
    child.stdin.take().expect("stdin").write_all(b"hello mito\n").expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "HELLO MITO\n");
}

#[test]
fn info_json_and_ping() {
    let out = mito(&["info", "local", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["context"], "local");
    assert_eq!(v["arch"], std::env::consts::ARCH);
    assert!(v["pid"].as_u64().is_some_and(|p| p > 1));
    let out = mito(&["ping", "local", "-c", "50"]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("49 round trips"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn errors_are_for_people() {
    let out = mito(&["run", "nowhere", "--", "true"]);
    assert_eq!(out.status.code(), Some(255));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown target \"nowhere\""), "{err}");
    let out = mito(&["run", "local", "--", "/no/such/cmd"]);
    assert_eq!(out.status.code(), Some(255));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("on local") && err.contains("/no/such/cmd") && err.contains("No such file"), "{err}");
}

#[test]
fn verbose_shows_bootstrap_and_agent_logs() {
    let out = mito(&["-v", "run", "local", "--", "true"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("agent bytes sent"), "{err}");
}
