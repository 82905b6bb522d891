//! The `mito` binary as a user runs it.

mod common;

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

/// `mito` run in `dir`, for relative paths.
fn mito_in(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(MITO).args(args).current_dir(dir).stdin(Stdio::null()).output().expect("mito runs")
}

fn ok(out: &std::process::Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "exit {:?}: {err}", out.status.code());
    err
}

#[test]
fn put_a_single_file_to_a_path_into_a_directory_and_to_several_paths() {
    let d = common::TempDir::new("cli-put1");
    let dir = d.path();
    std::fs::write(dir.join("a"), b"one file\n").expect("write");
    let at = |p: &str| format!("local:{}", dir.join(p).display());

    // The README's first form: SRC TARGET:/PATH, absolute and relative SRC.
    let err = ok(&mito_in(dir, &["put", dir.join("a").to_str().expect("utf8"), &at("b")]));
    assert!(err.contains("9 bytes") && err.contains("sha256 verified"), "{err}");
    assert_eq!(std::fs::read(dir.join("b")).expect("b"), b"one file\n");
    ok(&mito_in(dir, &["put", "a", &at("c")]));
    assert_eq!(std::fs::read(dir.join("c")).expect("c"), b"one file\n");

    // Onto an existing directory: lands inside it, under the source's name.
    std::fs::create_dir(dir.join("into")).expect("mkdir");
    ok(&mito_in(dir, &["put", "a", &at("into")]));
    assert_eq!(std::fs::read(dir.join("into/a")).expect("into/a"), b"one file\n");

    // Several targets, each with its own path (one of them behind a hop).
    std::fs::create_dir(dir.join("x")).expect("mkdir");
    std::fs::create_dir(dir.join("y")).expect("mkdir");
    let hop = format!("local,local:{}", dir.join("y/other-name").display());
    let err = ok(&mito_in(dir, &["put", "a", &at("x/a"), &hop]));
    assert_eq!(err.matches("sha256 verified").count(), 2, "{err}");
    assert_eq!(std::fs::read(dir.join("x/a")).expect("x/a"), b"one file\n");
    assert_eq!(std::fs::read(dir.join("y/other-name")).expect("y/other-name"), b"one file\n");

    // A missing source is an error naming it, and nothing is written.
    let out = mito_in(dir, &["put", "missing", &at("m")]);
    assert_eq!(out.status.code(), Some(255));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!dir.join("m").exists());
}

#[test]
fn get_a_file_to_a_relative_path_a_target_with_colons_and_a_tree() {
    let d = common::TempDir::new("cli-get1");
    let dir = d.path();
    std::fs::write(dir.join("src"), b"remote bytes").expect("write");
    // `local:NAME` has a colon of its own: the split is at the last ":/".
    let spec = format!("local:named:{}", dir.join("src").display());
    let err = ok(&mito_in(dir, &["get", &spec, "./copy"]));
    assert!(err.contains("get named:") && err.contains("sha256 verified"), "{err}");
    assert_eq!(std::fs::read(dir.join("copy")).expect("copy"), b"remote bytes");

    // A path without ":/" is refused with the expected form.
    let out = mito_in(dir, &["get", "local", "./x"]);
    assert_eq!(out.status.code(), Some(255));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected TARGET:/absolute/path"));

    // get -r: the destination becomes the copy of the remote tree.
    std::fs::create_dir_all(dir.join("tree/sub")).expect("mkdir");
    std::fs::write(dir.join("tree/sub/f"), b"deep").expect("write");
    std::os::unix::fs::symlink("sub/f", dir.join("tree/link")).expect("symlink");
    let out = mito_in(dir, &["get", &format!("local:{}", dir.join("tree").display()), "./plain"]);
    assert_eq!(out.status.code(), Some(255), "a directory needs -r");
    let err = ok(&mito_in(dir, &["get", "-r", &format!("local:{}", dir.join("tree").display()), "./back"]));
    assert!(err.contains("1 files, 2 dirs, 1 symlinks"), "{err}");
    assert_eq!(std::fs::read(dir.join("back/sub/f")).expect("back/sub/f"), b"deep");
    assert_eq!(std::fs::read_link(dir.join("back/link")).expect("link"), std::path::Path::new("sub/f"));
}
