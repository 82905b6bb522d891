//! Your own functions in your own agent (issue 15): the example's custom
//! agent (`examples/custom_agent/`) and a test agent
//! (`tests/custom_agent/test_agent.rs`), built here as a user builds them
//! (static musl, `--features agent,std`), uploaded by a master whose
//! `RouterOptions::agents` names them, on local contexts, over ssh and
//! through ssh → sudo (a private sshd); and a master that is its own agent
//! (`examples/custom_agent/both.rs`).

mod common;
#[path = "../examples/custom_agent/functions.rs"]
mod example;
#[path = "custom_agent/functions.rs"]
mod functions;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use common::{local_in, TempDir};
use example::{DiskUsage, Grep, GrepArgs, Pattern, Usage};
use functions::{Echo, Fail, Panic, ReadText, Sample, Shape};
use mito::connect::bootstrap::Upload;
use mito::{Agent, CallError, ErrorKind, Router, RouterOptions, SudoOptions};
use serde_bytes::ByteBuf;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const TRIPLE: &str = "x86_64-unknown-linux-musl";

/// Builds both agents once per test binary, as the README says (release,
/// static musl, std), in a target directory of their own: the outer
/// `cargo test` may hold the lock of the usual one.
fn agents() -> &'static (PathBuf, PathBuf) {
    static BUILT: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = build_examples(&[
            "--example",
            "custom_agent",
            "--example",
            "test_agent",
            "--no-default-features",
            "--features",
            "agent,std",
        ]);
        (dir.join("custom_agent"), dir.join("test_agent"))
    })
}

/// The example that is both master and agent (`custom_both`), built once
/// as its doc says: static musl, the default features (the master) plus
/// `agent`. A cargo of its own: its features differ from the agents'.
fn both() -> &'static PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| build_examples(&["--example", "custom_both", "--features", "agent"]).join("custom_both"))
}

/// `cargo build --release --target <musl> <args>` into this file's own
/// target directory; returns the directory of the built examples.
fn build_examples(args: &[&str]) -> PathBuf {
    let target_dir = PathBuf::from(ROOT).join("target").join("custom-agent-test");
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args(["build", "--release", "--target", TRIPLE])
        .args(args)
        .arg("--manifest-path")
        .arg(PathBuf::from(ROOT).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    for var in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_TARGET_DIR", "CARGO_BUILD_TARGET"] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("run cargo to build the examples");
    assert!(status.success(), "building {args:?} failed ({status}); is {TRIPLE} installed?");
    target_dir.join(TRIPLE).join("release").join("examples")
}

fn example_agent() -> Agent {
    Agent::from_path(&agents().0).expect("example agent")
}

fn test_agent() -> Agent {
    Agent::from_path(&agents().1).expect("test agent")
}

fn router_with(agent: Agent) -> Router {
    Router::with_options(RouterOptions { agents: vec![agent], ..Default::default() }).expect("router")
}

#[test]
fn the_examples_functions_run_beside_the_built_ins() {
    let agent = example_agent();
    assert_eq!(agent.arch(), "x86_64");
    let cache = TempDir::new("custom-example");
    let router = router_with(agent.clone());
    let ctx = router.local(local_in(cache.path())).expect("connect");
    assert_eq!(ctx.connect_info().agent_hash, agent.sha256());
    assert!(matches!(ctx.connect_info().upload, Upload::Stored { .. }), "{:?}", ctx.connect_info().upload);

    let dir = TempDir::new("custom-du");
    std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
    std::fs::write(dir.path().join("a"), b"12345").expect("write");
    std::fs::write(dir.path().join("sub/b"), b"123").expect("write");
    let path = dir.path().to_string_lossy().into_owned();
    let usage = ctx.call::<DiskUsage>(&path).expect("disk_usage");
    assert_eq!((usage.files, usage.dirs), (2, 2), "{usage:?}");
    assert!(usage.bytes >= 8, "{usage:?}");

    std::fs::write(dir.path().join("t"), "alpha\nbeta\nalphabet\ngamma alpha\n").expect("write");
    let t = dir.path().join("t").to_string_lossy().into_owned();
    let hits = ctx.call::<Grep>(&GrepArgs { path: t.clone(), pattern: Pattern::Prefix("alpha".into()), max: 10 });
    assert_eq!(hits.expect("grep"), vec![(1, "alpha".to_string()), (3, "alphabet".to_string())]);
    let hits = ctx.call::<Grep>(&GrepArgs { path: t, pattern: Pattern::Contains("alpha".into()), max: 2 });
    assert_eq!(hits.expect("grep").len(), 2);

    // The built-ins are all there.
    ctx.ping().expect("ping");
    assert_eq!(ctx.exec(&["echo", "hi"]).expect("exec").stdout, b"hi\n");
}

#[test]
fn arguments_and_replies_round_trip() {
    let cache = TempDir::new("custom-echo");
    let router = router_with(test_agent());
    let ctx = router.local(local_in(cache.path())).expect("connect");
    let sample = Sample {
        name: "ünïcödé\0name".into(),
        shapes: vec![
            Shape::Point,
            Shape::Named("n".into()),
            Shape::Circle { r: 2.5, label: None },
            Shape::Circle { r: -0.0, label: Some("l".into()) },
        ],
        data: ByteBuf::from((0..=255u8).collect::<Vec<_>>()),
        // 2 million numbers of every width: ~10 MB of postcard varints.
        numbers: (0..2_000_000u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).collect(),
    };
    assert_eq!(ctx.call::<Echo>(&sample).expect("echo"), sample);
    let empty = Sample { name: String::new(), shapes: vec![], data: ByteBuf::new(), numbers: vec![] };
    assert_eq!(ctx.call::<Echo>(&empty).expect("echo"), empty);
}

#[test]
fn a_user_error_arrives_typed() {
    let cache = TempDir::new("custom-error");
    let router = router_with(test_agent());
    let ctx = router.local(local_in(cache.path())).expect("connect");
    let e = ctx.call::<Fail>(&"the disk is full".to_string()).expect_err("fails");
    let re = e.remote().unwrap_or_else(|| panic!("not a RemoteError: {e:?}"));
    assert_eq!((re.kind, re.message.as_str(), re.context.as_str()), (ErrorKind::User, "the disk is full", ctx.name()));
    // An io::Error keeps its errno.
    let e = ctx.call::<ReadText>(&"/no/such/file".to_string()).expect_err("fails");
    assert_eq!(e.remote().map(|r| (r.kind, r.errno)), Some((ErrorKind::Os, libc::ENOENT)), "{e}");
    let ok = ctx.call::<ReadText>(&format!("{ROOT}/Cargo.toml")).expect("read");
    assert!(ok.contains("[package]"));
}

#[test]
fn a_panic_is_a_typed_error_and_the_agent_keeps_serving() {
    let cache = TempDir::new("custom-panic");
    let router = router_with(test_agent());
    let ctx = router.local(local_in(cache.path())).expect("connect");
    let pid = ctx.connect_info().pid;
    for i in 0..3 {
        let e = ctx.call::<Panic>(&format!("boom {i}")).expect_err("panics");
        let re = e.remote().unwrap_or_else(|| panic!("not a RemoteError: {e:?}"));
        assert_eq!(re.kind, ErrorKind::Panicked, "{e}");
        assert!(re.message.contains(&format!("boom {i}")) && re.message.contains("test.panic"), "{e}");
        // The same agent answers the next call.
        let s = Sample { name: "after".into(), shapes: vec![], data: ByteBuf::new(), numbers: vec![i] };
        assert_eq!(ctx.call::<Echo>(&s).expect("echo after a panic"), s);
    }
    assert_eq!(ctx.info().expect("info").pid, pid);
    assert!(ctx.disconnected().is_none());
}

/// A bug in a custom agent's runtime (not in a user function, whose panics
/// are caught): the agent says goodbye as the `no_std` agent does, so the
/// call fails with "it panicked" and the panic's text, not a lost link.
/// `MITO_AGENT_TEST_RUNTIME_PANIC` (`mito::agent::user::RUNTIME_PANIC_VAR`,
/// read from the agent's environment at start) makes the runtime panic
/// when the named function is called.
#[test]
fn a_panic_in_a_custom_agents_runtime_says_goodbye() {
    let cache = TempDir::new("custom-runtime-panic");
    let router = router_with(test_agent());
    let mut opts = local_in(cache.path());
    opts.env.push(("MITO_AGENT_TEST_RUNTIME_PANIC".into(), "test.fail".into()));
    let ctx = router.local(opts).expect("connect");
    // Until then it serves, user panics included.
    let s = Sample { name: "before".into(), shapes: vec![], data: ByteBuf::new(), numbers: vec![] };
    assert_eq!(ctx.call::<Echo>(&s).expect("echo"), s);
    let e = ctx.call::<Panic>(&"caught".to_string()).expect_err("panics");
    assert_eq!(e.remote().map(|r| r.kind), Some(ErrorKind::Panicked), "{e}");
    match ctx.call::<Fail>(&"unused".to_string()) {
        Err(CallError::Disconnected { reason, .. }) => {
            assert!(reason.starts_with("the agent crashed: it panicked ("), "{reason}");
            assert!(reason.contains("asked for a runtime panic"), "{reason}");
        }
        other => panic!("not a goodbye: {other:?}"),
    }
    let d = ctx.disconnected().expect("gone");
    assert_eq!(d.kind, mito::EndKind::Crashed, "{d:?}");
}

#[test]
fn a_missing_function_names_the_function_and_the_agent() {
    let cache = TempDir::new("custom-missing");
    // The example agent lacks the test agent's functions.
    let agent = example_agent();
    let router = router_with(agent.clone());
    let ctx = router.local(local_in(cache.path())).expect("connect");
    let s = Sample { name: String::new(), shapes: vec![], data: ByteBuf::new(), numbers: vec![] };
    match ctx.call::<Echo>(&s) {
        Err(CallError::MissingFunction { context, function, agent_hash }) => {
            assert_eq!((context.as_str(), function.as_str()), (ctx.name(), "test.echo"));
            assert_eq!(agent_hash, agent.sha256());
        }
        other => panic!("not MissingFunction: {other:?}"),
    }
    // The embedded agent lacks the example's.
    let plain = Router::new().expect("router");
    let ctx = plain.local(local_in(cache.path())).expect("connect");
    let e = ctx.call::<DiskUsage>(&"/".to_string()).expect_err("missing");
    assert!(matches!(&e, CallError::MissingFunction { function, .. } if function == "example.disk_usage"), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("example.disk_usage") && text.contains(&ctx.connect_info().agent_hash), "{text}");
    assert_ne!(ctx.connect_info().agent_hash, agent.sha256());
}

// The master's side of a changed declaration: the example agent's
// `example.grep` takes `GrepArgs` and replies `Vec<(u64, String)>`; this
// master was built from a version where it took a path and replied line
// numbers. Without the signature the path would decode as a `GrepArgs`
// prefix (BadArgs) or, worse, as a valid one.
mito::declare_function!(
    /// `example.grep` as another version of the program declared it.
    SkewedGrep, "example.grep", String, Vec<u64>
);

#[test]
fn a_function_declared_differently_is_a_typed_error_and_the_agent_keeps_serving() {
    use mito::functions::Function as _;
    assert_ne!(SkewedGrep::SIGNATURE, Grep::SIGNATURE);
    assert!(Grep::SIGNATURE.is_some() && mito::functions::Ping::SIGNATURE.is_none());
    let cache = TempDir::new("custom-skew");
    let agent = example_agent();
    let router = router_with(agent.clone());
    let ctx = router.local(local_in(cache.path())).expect("connect");
    let pid = ctx.connect_info().pid;
    for _ in 0..2 {
        let e = ctx.call::<SkewedGrep>(&"/etc/passwd".to_string()).expect_err("declared differently");
        match &e {
            CallError::SignatureMismatch { context, function, agent_hash, agent_signature, master_signature } => {
                assert_eq!((context.as_str(), function.as_str()), (ctx.name(), "example.grep"));
                assert_eq!(agent_hash, agent.sha256());
                let hex = |s: Option<u64>| format!("{:016x}", s.expect("a declared function has a signature"));
                assert_eq!((agent_signature, master_signature), (&hex(Grep::SIGNATURE), &hex(SkewedGrep::SIGNATURE)));
            }
            other => panic!("not SignatureMismatch: {other:?}"),
        }
        let text = e.to_string();
        assert!(text.contains("another declaration") && text.contains("rebuild the agent"), "{text}");
        // The same agent answers the right declaration next.
        let args = GrepArgs { path: "/etc/passwd".into(), pattern: Pattern::Prefix("root:".into()), max: 1 };
        assert_eq!(ctx.call::<Grep>(&args).expect("grep after a mismatch").len(), 1);
    }
    assert_eq!(ctx.info().expect("info").pid, pid);
    assert!(ctx.disconnected().is_none());
}

#[test]
fn two_agents_live_side_by_side_in_one_cache() {
    let cache = TempDir::new("custom-side-by-side");
    let (a, b) = (example_agent(), test_agent());
    assert_ne!(a.sha256(), b.sha256());
    let (ra, rb) = (router_with(a.clone()), router_with(b.clone()));
    let agent_file = |h: &str| cache.path().join("mito").join(format!("agent-{h}"));
    // Each is uploaded once, then both run from the same cache.
    for round in 0..2 {
        let ca = ra.local(local_in(cache.path())).expect("connect a");
        let cb = rb.local(local_in(cache.path())).expect("connect b");
        assert_eq!(ca.connect_info().agent_hash, a.sha256());
        assert_eq!(cb.connect_info().agent_hash, b.sha256());
        let cached = |c: &mito::Context| c.connect_info().upload == Upload::Cached;
        assert_eq!((cached(&ca), cached(&cb)), (round == 1, round == 1), "round {round}");
        assert!(agent_file(a.sha256()).is_file() && agent_file(b.sha256()).is_file());
        // Same function name, each agent's own body.
        let dir = cache.path().to_string_lossy().into_owned();
        assert_ne!(ca.call::<DiskUsage>(&dir).expect("a").bytes, u64::MAX);
        assert_eq!(cb.call::<DiskUsage>(&dir).expect("b"), Usage { files: 0, dirs: 0, bytes: u64::MAX });
    }
}

#[test]
fn behind_a_hop_the_router_uploads_its_agent_too() {
    let cache = TempDir::new("custom-hop");
    let agent = test_agent();
    let router = router_with(agent.clone());
    let hop = router.local(local_in(cache.path())).expect("hop");
    // A second cache below the hop: the hop sends its own executable (the
    // same custom agent), not the master.
    let below = TempDir::new("custom-hop-below");
    let ctx = hop.local(local_in(below.path())).expect("through the hop");
    assert_eq!(ctx.connect_info().agent_hash, agent.sha256());
    assert_eq!(ctx.connect_info().agent_bytes_sent, 0, "the master sent the agent: {:?}", ctx.connect_info());
    let s =
        Sample { name: "via".into(), shapes: vec![Shape::Point], data: ByteBuf::from(vec![1, 2]), numbers: vec![7] };
    assert_eq!(ctx.call::<Echo>(&s).expect("echo behind a hop"), s);
    let e = ctx.call::<Panic>(&"deep".to_string()).expect_err("panics");
    assert_eq!(e.remote().map(|r| r.kind), Some(ErrorKind::Panicked), "{e}");
    ctx.ping().expect("still serving");
}

#[test]
fn a_file_that_is_not_an_agent_is_refused() {
    let dir = TempDir::new("custom-not-agent");
    let p = dir.path().join("x");
    std::fs::write(&p, b"#!/bin/sh\necho hi\n").expect("write");
    let e = Agent::from_path(&p).expect_err("not ELF");
    assert!(e.to_string().contains("not an agent"), "{e}");
    assert!(Agent::from_path(dir.path().join("missing")).is_err());
    // This test binary is dynamically linked (glibc): it would not run on
    // a target without the same loader.
    let e = Agent::from_path(std::env::current_exe().expect("exe")).expect_err("dynamic");
    assert!(e.to_string().contains("dynamically linked"), "{e}");
    // So this test binary cannot be its own agent either.
    let e = Agent::this_executable().expect_err("dynamic");
    assert!(e.to_string().contains("/proc/self/exe") && e.to_string().contains("dynamically linked"), "{e}");
    // A truncated agent.
    let mut raw = std::fs::read(&agents().0).expect("read");
    raw.truncate(64);
    assert!(Agent::from_bytes(raw).is_err());
}

#[test]
fn a_master_that_is_its_own_agent_runs_itself_there() {
    let exe = both();
    // Its hash: what the master uploads is this very file.
    let hash = Agent::from_path(exe).expect("a static musl master is an agent too").sha256().to_string();
    let cache = TempDir::new("custom-both");
    let run = TempDir::new("custom-both-run");
    let dir = TempDir::new("custom-both-du");
    std::fs::write(dir.path().join("a"), b"12345").expect("write");
    // Run as a person runs it: a master.
    let out = Command::new(exe)
        .arg(dir.path())
        .env("XDG_CACHE_HOME", cache.path())
        .env("XDG_RUNTIME_DIR", run.path())
        .output()
        .expect("run custom_both");
    let (stdout, stderr) = common::output_text(&out);
    assert!(out.status.success(), "custom_both failed: {}\nstdout: {stdout}\nstderr: {stderr}", out.status);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(lines[0].starts_with(&format!("this executable: sha256 {hash}, ")), "{stdout}");
    // A local context, then one behind it: both run the same file and
    // answer the example's functions.
    let d = dir.path().display();
    let from = format!(" from {}/mito/agent-{hash}: ", cache.path().display());
    for (line, name) in lines[1..].iter().zip(["local.1: ", "local.1,local.2: "]) {
        assert!(line.starts_with(&format!("{name}agent {hash} pid ")) && line.contains(&from), "{stdout}");
        assert!(line.contains(&format!(": {d}: 1 files, 1 directories, ")), "{stdout}");
        assert!(line.contains(r#"; /etc/passwd: [(1, "root:"#), "{stdout}");
    }
    // The cache holds it under its hash, byte for byte.
    let cached = cache.path().join("mito").join(format!("agent-{hash}"));
    assert_eq!(std::fs::read(cached).expect("cached agent"), std::fs::read(exe).expect("exe"));
}

/// No directory the agent could run from (every candidate a noexec tmpfs,
/// in a private mount namespace): stage0 runs it from a memfd as
/// `mito-agent <hash> <id>`, which the same file recognises too, directly
/// and behind a hop (which sends its own memfd copy onwards).
#[test]
fn a_master_that_is_its_own_agent_runs_from_a_memfd_too() {
    if !common::is_root() {
        return common::skip_loudly(
            "a_master_that_is_its_own_agent_runs_from_a_memfd_too",
            "a private mount namespace needs root",
        );
    }
    let exe = both();
    let hash = Agent::from_path(exe).expect("agent").sha256().to_string();
    // The binary is opened before the mounts: a checkout under /tmp (CI's
    // clone may be one) is hidden by them.
    let script = r#"
        set -e
        exec 3<"$0"
        for d in /tmp /var/tmp /dev/shm; do mount -t tmpfs -o noexec tmpfs "$d"; done
        mkdir -p /tmp/cache
        export XDG_CACHE_HOME=/tmp/cache; unset XDG_RUNTIME_DIR
        exec /proc/self/fd/3 /etc
    "#;
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", script])
        .arg(exe)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("unshare");
    let (stdout, stderr) = common::output_text(&out);
    assert!(out.status.success(), "custom_both failed: {}\nstdout: {stdout}\nstderr: {stderr}", out.status);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    for line in &lines[1..] {
        assert!(line.contains(&format!(" agent {hash} pid ")) && line.contains(" from /memfd:"), "{stdout}");
        assert!(line.contains(r#"; /etc/passwd: [(1, "root:"#), "{stdout}");
    }
}

#[test]
fn only_stage0s_command_line_makes_the_master_an_agent() {
    use std::os::unix::process::CommandExt as _;
    let exe = both();
    let hash = Agent::from_path(exe).expect("agent").sha256().to_string();
    let cache = TempDir::new("custom-both-argv");
    let run = |argv0: &str| {
        let mut cmd = Command::new(exe);
        cmd.arg0(argv0).args([hash.as_str(), "7"]).stdin(std::process::Stdio::piped());
        cmd.env("XDG_CACHE_HOME", cache.path()).env("XDG_RUNTIME_DIR", cache.path().join("run"));
        let out = cmd.output().expect("run custom_both");
        common::output_text(&out).0
    };
    // A person typing the agent's arguments gets the master (which then
    // fails on the path it was given, after saying what it is).
    for argv0 in [exe.to_str().expect("utf-8 path"), "mito-agent", &format!("agent-{hash}")] {
        let out = run(argv0);
        assert!(out.starts_with("this executable: "), "argv[0] {argv0}: {out:?}");
    }
    // stage0's line (`<dir>/agent-<hash> <hash> <id>`): the agent, whose
    // hello follows its marker; its stdin (a pipe: epoll takes no
    // /dev/null) at EOF ends it.
    let out = run(&format!("/some/cache/mito/agent-{hash}"));
    assert!(out.starts_with("\nMITO2\n"), "{out:?}");
}

/// `mito build-agent` as the README runs it, with the cargo environment of
/// `build_examples` and this file's target directory (the example is built
/// there already: no second cold build).
fn build_agent(args: &[&str], env: &[(&str, &str)]) -> (std::process::Output, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mito"));
    cmd.arg("build-agent").args(args).stdin(std::process::Stdio::null());
    for var in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_TARGET_DIR", "CARGO_BUILD_TARGET"] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().expect("run mito build-agent");
    let (stdout, stderr) = common::output_text(&out);
    (out, stdout, stderr)
}

#[test]
fn mito_build_agent_builds_and_checks_the_example_agent() {
    let expected = example_agent();
    let manifest = format!("{ROOT}/Cargo.toml");
    let target_dir = format!("{ROOT}/target/custom-agent-test");
    let example = [
        "--manifest-path",
        &manifest,
        "--target-dir",
        &target_dir,
        "--example",
        "custom_agent",
        "--no-default-features",
        "--features",
        "agent,std",
    ];
    let (out, stdout, stderr) = build_agent(&example, &[]);
    assert!(out.status.success(), "{}\nstdout: {stdout}\nstderr: {stderr}", out.status);
    let path = agents().0.display().to_string();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[..3], [format!("agent: {path}"), "arch: x86_64".into(), format!("sha256: {}", expected.sha256())]);
    let size =
        lines[3].strip_prefix(&format!("size: {} bytes, ", expected.len())).unwrap_or_else(|| panic!("{stdout}"));
    let gz: usize = size.strip_suffix(" bytes gzip").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{stdout}"));
    assert!(gz > 0 && gz < expected.len(), "{stdout}");

    let (out, stdout, _) = build_agent(&[&example[..], &["--json"]].concat(), &[]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("--json is JSON");
    assert_eq!((v["path"].as_str(), v["sha256"].as_str()), (Some(path.as_str()), Some(expected.sha256())), "{v}");
    assert_eq!(v["gzip_size"].as_u64(), Some(gz as u64), "{v}");

    // Typed failures, each saying what to do.
    let fail = |args: &[&str], env: &[(&str, &str)], says: &str| {
        let (out, stdout, stderr) = build_agent(args, env);
        assert_eq!(out.status.code(), Some(255), "{args:?}\nstdout: {stdout}\nstderr: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {says:?} not in {stderr}");
    };
    let no_such = ["--manifest-path", &manifest, "--target-dir", &target_dir, "--example", "no_such_example"];
    fail(&no_such, &[], "cargo build failed");
    fail(&example, &[("CARGO", "/nonexistent/cargo")], "cannot run \"/nonexistent/cargo\"");
    // A toolchain without the target: a sysroot with no rustlib for it.
    let tc = TempDir::new("build-agent-toolchain");
    let rustc = tc.path().join("rustc");
    std::fs::write(&rustc, format!("#!/bin/sh\necho {}\n", tc.path().display())).expect("write");
    std::fs::set_permissions(&rustc, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let rustc = rustc.to_string_lossy().into_owned();
    fail(
        &[&example[..], &["--target", "aarch64"]].concat(),
        &[("RUSTC", &rustc)],
        "rustup target add aarch64-unknown-linux-musl",
    );
    // Neither --bin nor --example: a usage error (clap's exit status 2).
    let (out, _, stderr) = build_agent(&["--manifest-path", &manifest], &[]);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--bin") && stderr.contains("--example"), "{stderr}");
}

#[test]
fn the_examples_functions_over_ssh_and_through_ssh_then_sudo() {
    let Some(sshd) = common::sshd::Sshd::start("the_examples_functions_over_ssh_and_through_ssh_then_sudo") else {
        return;
    };
    if !common::become_users("the_examples_functions_over_ssh_and_through_ssh_then_sudo") {
        return;
    }
    let agent = example_agent();
    let router = router_with(agent.clone());
    let ssh = router.ssh(sshd.opts("mito-sudoer")).expect("ssh as mito-sudoer");
    let mut o = SudoOptions::new("root");
    o.password = Some(common::sshd::PASSWORD.into());
    let root = ssh.sudo(o).expect("ssh → sudo root");
    assert!(root.name().starts_with(ssh.name()), "{}", root.name());
    for ctx in [&ssh, &root] {
        assert_eq!(ctx.connect_info().agent_hash, agent.sha256(), "{}", ctx.name());
    }

    // A directory only root can read: the ssh user's agent is refused (the
    // body's error, typed), root's behind sudo counts it.
    let dir = TempDir::new("custom-ssh-du");
    std::fs::write(dir.path().join("a"), b"12345").expect("write");
    std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
    std::fs::write(dir.path().join("sub/b"), b"123").expect("write");
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).expect("chmod");
    let path = dir.path().to_string_lossy().into_owned();
    let e = ssh.call::<DiskUsage>(&path).expect_err("mito-sudoer cannot read it");
    let re = e.remote().unwrap_or_else(|| panic!("not a RemoteError: {e:?}"));
    assert_eq!((re.kind, re.context.as_str()), (ErrorKind::User, ssh.name()), "{e}");
    assert!(re.message.contains("Permission denied"), "{e}");
    let usage = root.call::<DiskUsage>(&path).expect("disk_usage as root");
    assert_eq!((usage.files, usage.dirs), (2, 2), "{usage:?}");

    let who = |ctx: &mito::Context, user: &str| {
        let args = GrepArgs { path: "/etc/passwd".into(), pattern: Pattern::Prefix(format!("{user}:")), max: 1 };
        ctx.call::<Grep>(&args).expect("grep")
    };
    assert_eq!(who(&ssh, "mito-sudoer").len(), 1);
    assert_eq!(who(&root, "root").len(), 1);
    // The built-ins answer beside them, as the right users.
    assert_eq!(root.exec(&["id", "-u"]).expect("exec").stdout, b"0\n");
    assert_ne!(ssh.exec(&["id", "-u"]).expect("exec").stdout, b"0\n");
}
