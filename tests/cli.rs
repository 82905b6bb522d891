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
    // Seconds that are no duration: a usage error (exit 2), not a panic.
    for bad in [["--connect-timeout", "inf"], ["--connect-timeout", "-1"], ["--timeout", "NaN"]] {
        let out = mito(&["run", bad[0], bad[1], "local", "--", "true"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {err}");
        assert!(err.contains(bad[1]) && !err.contains("panicked"), "{bad:?}: {err}");
    }
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
    assert!(err.contains("9 bytes") && err.contains("xxh3-128 verified"), "{err}");
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
    // (Behind the hop the put goes through the importer, which checks SHA-256.)
    assert_eq!((err.matches("xxh3-128 verified").count(), err.matches("sha256 verified").count()), (1, 1), "{err}");
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
    assert!(err.contains("get named:") && err.contains("xxh3-128 verified"), "{err}");
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

/// The keys of the JSON object `v`, in the order the text `raw` has them
/// (serde_json's `Value` sorts them, so read the raw text).
fn keys_in_order(v: &serde_json::Value, raw: &str, from: usize) -> Vec<String> {
    let mut keys: Vec<(usize, String)> = v
        .as_object()
        .expect("an object")
        .keys()
        .map(|k| (raw[from..].find(&format!("\"{k}\":")).map_or(usize::MAX, |i| i + from), k.clone()))
        .collect();
    keys.sort();
    keys.into_iter().map(|(_, k)| k).collect()
}

#[test]
fn facts_json_names_and_text_lines() {
    let out = mito(&["facts", "local", "--json"]);
    ok(&out);
    let raw = String::from_utf8(out.stdout).expect("utf8");
    let v: serde_json::Value = serde_json::from_str(&raw).expect("json");
    let sorted = |keys: &[&str]| keys.iter().map(|k| k.to_string()).collect::<Vec<_>>();
    // Every object's fields, in this order (alphabetical, as it always was).
    assert_eq!(
        keys_in_order(&v, &raw, 0),
        sorted(&[
            "boot_time",
            "container",
            "context",
            "cpu_model",
            "cpus",
            "fqdn",
            "hostname",
            "interfaces",
            "kernel",
            "memory_kib",
            "mounts",
            "os_release",
            "users",
            "virtualization"
        ])
    );
    let at = |key: &str| raw.find(&format!("\"{key}\":")).expect(key);
    assert_eq!(keys_in_order(&v["kernel"], &raw, at("kernel")), sorted(&["machine", "name", "release", "version"]));
    assert_eq!(
        keys_in_order(&v["memory_kib"], &raw, at("memory_kib")),
        sorted(&["available", "swap_free", "swap_total", "total"])
    );
    let first = |list: &str| v[list].as_array().and_then(|a| a.first()).cloned().expect(list);
    assert_eq!(
        keys_in_order(&first("interfaces"), &raw, at("interfaces")),
        sorted(&["ipv4", "ipv6", "mac", "name", "up"])
    );
    assert_eq!(
        keys_in_order(&first("mounts"), &raw, at("mounts")),
        sorted(&["available_bytes", "device", "free_bytes", "fstype", "mount", "options", "size_bytes"])
    );
    assert_eq!(keys_in_order(&first("users"), &raw, at("users")), sorted(&["gid", "home", "name", "shell", "uid"]));
    assert_eq!(v["context"], "local");
    assert!(v["interfaces"].as_array().expect("interfaces").iter().any(|i| i["ipv4"][0] == "127.0.0.1"), "{v}");
    assert!(v["mounts"].as_array().expect("mounts").iter().any(|m| m["mount"] == "/"), "{v}");

    // The text: the same facts, one line each for the host, CPUs and
    // memory, every mount, every interface, and the rest.
    let out = mito(&["facts", "local"]);
    ok(&out);
    let text = String::from_utf8(out.stdout).expect("utf8");
    let lines: Vec<&str> = text.lines().collect();
    let s = |v: &serde_json::Value| v.as_str().expect("a string").to_string();
    let os = v["os_release"]["PRETTY_NAME"].as_str().unwrap_or("?");
    assert_eq!(
        lines[0],
        format!("{} (local): {os}, {} {}", s(&v["fqdn"]), s(&v["kernel"]["name"]), s(&v["kernel"]["release"]))
    );
    let cpus = format!(
        "cpus {} ({}), memory {} MiB (",
        v["cpus"],
        s(&v["cpu_model"]),
        v["memory_kib"]["total"].as_u64().expect("total") / 1024
    );
    assert!(lines[1].starts_with(&cpus) && lines[1].ends_with(" MiB available)"), "{}", lines[1]);
    let mounts = v["mounts"].as_array().expect("mounts");
    for (m, line) in mounts.iter().zip(&lines[2..]) {
        let head = format!("mount {} {} {}: ", s(&m["mount"]), s(&m["fstype"]), s(&m["device"]));
        let size = format!(" of {} MiB free", m["size_bytes"].as_u64().expect("size") >> 20);
        assert!(line.starts_with(&head) && line.ends_with(&size), "{line}");
    }
    let ifs = v["interfaces"].as_array().expect("interfaces");
    for (i, line) in ifs.iter().zip(&lines[2 + mounts.len()..]) {
        assert_eq!(*line, format!("if {} up={} {} {}", i["name"], i["up"], i["ipv4"], i["ipv6"]));
    }
    let debug = |v: &serde_json::Value| v.as_str().map_or("None".to_string(), |s| format!("Some({s:?})"));
    let users = v["users"].as_array().expect("users").len();
    let rest =
        format!("users {users}, container {}, virtualization {}", debug(&v["container"]), debug(&v["virtualization"]));
    assert_eq!(lines[2 + mounts.len() + ifs.len()..], [rest.as_str()]);
}

/// mito with its stdout a pipe whose reader is already gone, as in
/// `mito … | head` once head has what it wants.
fn mito_into_a_closed_pipe(args: &[&str]) -> (std::process::Output, std::time::Duration) {
    let (rd, wr) = rustix::pipe::pipe().expect("pipe");
    drop(rd);
    let t0 = std::time::Instant::now();
    let out = Command::new(MITO)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(wr))
        .stderr(Stdio::piped())
        .output()
        .expect("mito runs");
    (out, t0.elapsed())
}

/// A reader that went away ends mito quietly with 141 (a program killed by
/// SIGPIPE), not with a panic (`println!` panicked), and `mito run`
/// passes the SIGPIPE on to the command rather than letting it run
/// into the void (`yes` never ends by itself; before: mito ran on).
#[test]
fn a_closed_stdout_ends_mito_like_sigpipe() {
    for args in [&["info", "local"][..], &["facts", "local"], &["ping", "local"]] {
        let (out, _) = mito_into_a_closed_pipe(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(141), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    let (out, took) = mito_into_a_closed_pipe(&["run", "local", "--", "yes"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "killed by SIGPIPE: {err}");
    assert!(took < std::time::Duration::from_secs(20), "took {took:?}");
}
