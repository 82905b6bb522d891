//! The aarch64 agent, for real, under qemu-user on this x86_64 machine.
//!
//! build.rs embeds an `aarch64-unknown-linux-musl` agent beside the x86_64
//! one; stage0 picks by `uname -m`. Here a target *reports* aarch64: a
//! `uname` wrapper first in the `PATH` that stage0 sees prints `aarch64`
//! for `-m`, and a fresh cache directory (`XDG_CACHE_HOME`) holds no agent,
//! so stage0 takes the cold path and asks for the aarch64 agent. The kernel
//! runs that file through `qemu-aarch64-static` (binfmt_misc, registered
//! here as root from qemu-user-static's `/usr/lib/binfmt.d/qemu-aarch64.conf`
//! when it is not already, and unregistered at the end by whoever
//! registered it: [`Qemu`]). Then the context works as any other: calls,
//! commands, files, a warm second connect, and behind an x86_64 hop.
//!
//! A user's own agent built for aarch64 too: `mito build-agent --target
//! aarch64` of the example (`examples/custom_agent/`) into the target
//! directory `tests/custom_agent.rs` builds the x86_64 one in (cached
//! across runs), uploaded by a router whose `RouterOptions::agents` name
//! it, its functions called under qemu; and a router holding both builds,
//! which picks each target's by `uname -m`, directly and behind a hop.
//!
//! Without root or without qemu-user-static the tests say so loudly
//! (`skip_loudly`), and fail under `CI=true`.

mod common;
#[path = "../examples/custom_agent/functions.rs"]
mod example;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock, PoisonError};

use common::{local_in, skip_loudly, TempDir};
use example::{DiskUsage, Grep, GrepArgs, Pattern, Usage};
use mito::connect::agents::Chosen;
use mito::{Agent, ErrorKind, LocalOptions, Router, RouterOptions, Upload};

const BINFMT: &str = "/proc/sys/fs/binfmt_misc";
/// qemu-user-static's registration line (name, magic, mask, interpreter).
const CONF: &str = "/usr/lib/binfmt.d/qemu-aarch64.conf";
const QEMU: &str = "/usr/bin/qemu-aarch64-static";
/// `e_machine` of an aarch64 ELF file.
const EM_AARCH64: u16 = 183;

/// What this test binary changed in binfmt_misc, to undo at the end.
#[derive(Default)]
struct Changed {
    mounted: bool,
    /// The entry's file (`/proc/sys/fs/binfmt_misc/qemu-aarch64`), when we
    /// registered it.
    registered: Option<PathBuf>,
    /// The entry existed but was disabled: we enabled it.
    enabled: Option<PathBuf>,
}

impl Changed {
    fn undo(&self) {
        if let Some(entry) = &self.registered {
            let _ = std::fs::write(entry, "-1");
        }
        if let Some(entry) = &self.enabled {
            let _ = std::fs::write(entry, "0");
        }
        if self.mounted {
            let _ = std::process::Command::new("umount").arg(BINFMT).status();
        }
    }
}

/// Makes sure the kernel runs aarch64 ELF files through qemu: mounts
/// binfmt_misc if needed, registers (or enables) the qemu-aarch64 entry if
/// needed, and returns what it changed. Undoes its own steps on failure.
fn setup() -> Result<Changed, String> {
    let mut changed = Changed::default();
    let result = (|| {
        if !Path::new(BINFMT).join("register").exists() {
            let st = std::process::Command::new("mount")
                .args(["-t", "binfmt_misc", "binfmt_misc", BINFMT])
                .status()
                .map_err(|e| format!("mount: {e}"))?;
            if !st.success() {
                return Err(format!("mount -t binfmt_misc binfmt_misc {BINFMT}: {st}"));
            }
            changed.mounted = true;
        }
        let line = std::fs::read_to_string(CONF).map_err(|e| format!("{CONF}: {e}"))?;
        // `:name:type:offset:magic:mask:interpreter:flags`
        let name = line.split(':').nth(1).filter(|n| !n.is_empty()).ok_or(format!("{CONF}: no name"))?;
        let entry = Path::new(BINFMT).join(name);
        match std::fs::read_to_string(&entry) {
            Ok(state) if state.starts_with("enabled") => {}
            Ok(_) => {
                std::fs::write(&entry, "1").map_err(|e| format!("enabling {}: {e}", entry.display()))?;
                changed.enabled = Some(entry);
            }
            Err(_) => {
                std::fs::write(Path::new(BINFMT).join("register"), line.trim_end())
                    .map_err(|e| format!("registering {CONF}: {e}"))?;
                changed.registered = Some(entry);
            }
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(changed),
        Err(e) => {
            changed.undo();
            Err(e)
        }
    }
}

/// Tests using qemu, and what the first of them changed. The tests of this
/// file run in parallel: the first one in sets binfmt_misc up, the last one
/// out puts it back as it was.
static USERS: Mutex<(usize, Option<Changed>)> = Mutex::new((0, None));

/// One test's hold on qemu-run aarch64 executables.
struct Qemu;

impl Qemu {
    /// `None` (after a loud skip) when this machine cannot run aarch64 here.
    fn get(test: &str) -> Option<Qemu> {
        if !common::is_root() {
            skip_loudly(test, "running the aarch64 agent needs binfmt_misc set up for qemu, which needs root");
            return None;
        }
        if !Path::new(QEMU).exists() || !Path::new(CONF).exists() {
            skip_loudly(test, "qemu-user-static is not installed (apt-get install qemu-user-static)");
            return None;
        }
        let mut users = USERS.lock().unwrap_or_else(PoisonError::into_inner);
        if users.0 == 0 {
            match setup() {
                Ok(changed) => users.1 = Some(changed),
                Err(e) => {
                    drop(users);
                    skip_loudly(test, &format!("cannot make the kernel run aarch64 files through qemu: {e}"));
                    return None;
                }
            }
        }
        users.0 += 1;
        Some(Qemu)
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let mut users = USERS.lock().unwrap_or_else(PoisonError::into_inner);
        users.0 -= 1;
        if users.0 == 0 {
            if let Some(changed) = users.1.take() {
                changed.undo();
            }
        }
    }
}

/// A target that reports aarch64: in `dir`, a `bin/uname` that prints
/// `aarch64` for `-m` (and runs the real one otherwise) first in `PATH`,
/// and an empty cache `dir/cache` (with `local_in`'s own runtime dir).
fn reports_aarch64(dir: &Path) -> LocalOptions {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    let real = std::env::split_paths(&path).map(|d| d.join("uname")).find(|p| p.is_file()).expect("uname in PATH");
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    let wrapper = bin.join("uname");
    let script = format!(
        "#!/bin/sh\nif [ \"$1\" = -m ]; then echo aarch64; else exec {} \"$@\"; fi\n",
        mito::connect::stage0::sh_quote(&real.display().to_string())
    );
    std::fs::write(&wrapper, script).expect("write uname wrapper");
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod wrapper");
    let mut opts = local_in(&dir.join("cache"));
    let mut dirs = vec![bin];
    dirs.extend(std::env::split_paths(&path));
    opts.env.push(("PATH".into(), std::env::join_paths(dirs).expect("PATH")));
    opts
}

fn aarch64_agent() -> &'static mito::connect::embedded::EmbeddedAgent {
    mito::connect::embedded::for_arch("aarch64").expect("build.rs embeds an aarch64 agent")
}

/// `e_machine` of the ELF file at `path`.
fn elf_machine(path: &Path) -> u16 {
    let raw = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&raw[..4], b"\x7fELF", "{} is an ELF file", path.display());
    u16::from_le_bytes([raw[18], raw[19]])
}

/// The running agent `pid` is the aarch64 file under qemu: the kernel
/// started the interpreter binfmt_misc names, and that is qemu.
fn assert_runs_under_qemu(pid: u32) {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("agent's /proc/pid/exe");
    assert!(
        exe.to_string_lossy().contains("qemu-aarch64"),
        "agent {pid} runs as {} (want qemu-aarch64)",
        exe.display()
    );
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn aarch64_agent_cold_then_warm_call_exec_put_get() {
    let test = "aarch64_agent_cold_then_warm_call_exec_put_get";
    let Some(_qemu) = Qemu::get(test) else { return };
    let dir = TempDir::new("aarch64");
    let opts = reports_aarch64(dir.path());
    let want = aarch64_agent();
    let router = Router::new().expect("router");

    // Cold: stage0 asked for the aarch64 agent, stored and ran it.
    let ctx = router.local(opts.clone()).expect("connect to a target reporting aarch64");
    let ci = ctx.connect_info().clone();
    assert_eq!(ci.arch, "aarch64", "the hello says aarch64");
    assert_eq!(ci.agent_hash, want.sha256, "the embedded aarch64 agent runs");
    assert!(matches!(ci.upload, Upload::Stored { .. }), "cold path: uploaded and stored ({:?})", ci.upload);
    assert!(
        ci.agent_bytes_sent == want.gz.len() || ci.agent_bytes_sent == want.raw_len,
        "sent the aarch64 agent's bytes: {} (gz {}, raw {})",
        ci.agent_bytes_sent,
        want.gz.len(),
        want.raw_len
    );
    let cached = dir.path().join("cache").join("mito").join(format!("agent-{}", want.sha256));
    assert_eq!(ci.exe, cached.display().to_string());
    assert_eq!(elf_machine(&cached), EM_AARCH64, "the cached agent is an aarch64 ELF file");
    assert_runs_under_qemu(ci.pid);

    ctx.ping().expect("ping");
    let info = ctx.info().expect("info");
    assert_eq!(info.arch, "aarch64", "uname(2) under qemu-aarch64");
    assert_eq!(info.agent_hash, want.sha256);
    assert_eq!(info.pid, ci.pid);

    let r = ctx.exec(&["echo", "hi"]).expect("exec echo");
    assert_eq!((r.status.code, text(&r.stdout)), (Some(0), "hi\n".into()));
    let r = ctx.exec(&["uname", "-m"]).expect("exec uname");
    assert_eq!(text(&r.stdout), "aarch64\n", "commands see the same PATH (the wrapper)");
    let r = ctx.exec(&["sh", "-c", "cat; echo err >&2; exit 3"]).expect("exec sh");
    assert_eq!((r.status.code, text(&r.stderr)), (Some(3), "err\n".into()));

    // Files both ways, SHA-256 checked on both ends (the agent's own
    // SHA-256, compiled for aarch64, run by qemu).
    let data: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let src = dir.path().join("src.bin");
    std::fs::write(&src, &data).expect("write src");
    let remote = dir.path().join("remote.bin");
    let put = ctx.put(&src, &remote).expect("put");
    assert_eq!(put.bytes, data.len() as u64);
    assert_eq!(std::fs::read(&remote).expect("read remote"), data);
    let back = dir.path().join("back.bin");
    let got = ctx.get(&remote, &back).expect("get");
    assert_eq!((got.bytes, got.checksum), (put.bytes, put.checksum));
    assert_eq!(std::fs::read(&back).expect("read back"), data);
    ctx.write_file(dir.path().join("small"), b"small file", None).expect("write_file");
    assert_eq!(ctx.read_file(dir.path().join("small")).expect("read_file"), b"small file");

    // Warm: the same cache, no bytes sent, the same aarch64 agent.
    let warm = router.local(opts).expect("second connect");
    let wi = warm.connect_info();
    assert_eq!((wi.upload.clone(), wi.agent_bytes_sent), (Upload::Cached, 0), "warm path");
    assert_eq!((wi.arch.as_str(), wi.agent_hash.as_str()), ("aarch64", want.sha256));
    assert_eq!(wi.exe, cached.display().to_string());
    assert_runs_under_qemu(wi.pid);
    warm.ping().expect("ping warm");

    let status = warm.shutdown().expect("shutdown warm");
    assert_eq!(status.code, Some(0));
    let status = ctx.shutdown().expect("shutdown");
    assert_eq!(status.code, Some(0), "the aarch64 agent exits cleanly");
}

/// An x86_64 hop and behind it a target reporting aarch64: the master's
/// aarch64 bytes go through the hop's importer into stage0's stdin.
#[test]
fn aarch64_context_behind_an_x86_64_hop() {
    let test = "aarch64_context_behind_an_x86_64_hop";
    let Some(_qemu) = Qemu::get(test) else { return };
    let dir = TempDir::new("aarch64-hop");
    let router = Router::new().expect("router");
    let hop = router.local(local_in(&dir.path().join("hop-cache"))).expect("hop");
    assert_eq!(hop.connect_info().arch, std::env::consts::ARCH);
    assert_ne!(hop.connect_info().arch, "aarch64");

    let want = aarch64_agent();
    let ctx = hop.local(reports_aarch64(dir.path())).expect("connect through the hop");
    let ci = ctx.connect_info().clone();
    assert_eq!((ci.arch.as_str(), ci.agent_hash.as_str()), ("aarch64", want.sha256));
    assert!(matches!(ci.upload, Upload::Stored { .. }), "{:?}", ci.upload);
    // Through the hop's importer, not written by the master into stdin.
    assert_eq!(ci.agent_bytes_sent, 0, "the master wrote the aarch64 agent into stdin");
    let served = router.resource_stats().bytes_served;
    assert!(served > 10_000, "the importer served the aarch64 agent: {served} bytes");
    assert_runs_under_qemu(ci.pid);
    assert_eq!(common::parent_of(ci.pid), Some(hop.connect_info().pid), "the hop's agent started it");

    ctx.ping().expect("ping");
    assert_eq!(ctx.info().expect("info").arch, "aarch64");
    let r = ctx.exec(&["echo", "through the hop"]).expect("exec");
    assert_eq!(text(&r.stdout), "through the hop\n");
    hop.ping().expect("the hop still answers");

    // Warm behind the hop too.
    let again = hop.local(reports_aarch64(dir.path())).expect("second connect through the hop");
    assert_eq!((again.connect_info().upload.clone(), again.connect_info().agent_bytes_sent), (Upload::Cached, 0));
    again.ping().expect("ping");
}

/// A cache directory shared by hosts of two architectures (an NFS home):
/// an aarch64 host stored its agent there, then this x86_64 host connects
/// with the same cache. stage0's warm path tries only this host's agent
/// (the kernel's `/proc/sys/kernel/arch`), so it uploads the x86_64 agent
/// instead of running the aarch64 one it found (which, without qemu,
/// would end the shell with "Exec format error").
#[test]
fn a_cache_shared_with_another_architecture_runs_this_ones_agent() {
    let test = "a_cache_shared_with_another_architecture_runs_this_ones_agent";
    let Some(_qemu) = Qemu::get(test) else { return };
    let dir = TempDir::new("aarch64-shared");
    let router = Router::new().expect("router");
    let arm = router.local(reports_aarch64(dir.path())).expect("connect as aarch64");
    assert_eq!(arm.connect_info().arch, "aarch64");
    arm.shutdown().expect("shutdown");

    let native = router.local(local_in(&dir.path().join("cache"))).expect("connect natively, same cache");
    let ci = native.connect_info().clone();
    assert_eq!(ci.arch, std::env::consts::ARCH, "this host's agent runs, not the cached aarch64 one");
    assert!(matches!(ci.upload, Upload::Stored { .. }), "{:?}", ci.upload);
    assert_eq!(native.info().expect("info").arch, std::env::consts::ARCH);
    // Both agents live side by side in the cache now.
    let again = router.local(local_in(&dir.path().join("cache"))).expect("warm native connect");
    assert_eq!(
        (again.connect_info().arch.as_str(), again.connect_info().agent_bytes_sent),
        (std::env::consts::ARCH, 0)
    );
    // (The played aarch64 host cannot come back warm here: its `uname` is a
    // wrapper, but the kernel's /proc/sys/kernel/arch, which the warm path
    // reads, still says x86_64.)
}

/// Two targets reporting aarch64, each with a cache directory of its own,
/// behind one x86_64 hop: the aarch64 agent goes through the importer (the
/// master registers it and grants it to the hop, which appends it to each
/// stage0's stdin from its cache), so it crosses the first link once.
#[test]
fn two_aarch64_contexts_behind_one_hop_get_the_agent_across_the_first_link_once() {
    let test = "two_aarch64_contexts_behind_one_hop_get_the_agent_across_the_first_link_once";
    let Some(_qemu) = Qemu::get(test) else { return };
    let dir = TempDir::new("aarch64-importer");
    let router = Router::new().expect("router");
    let hop = router.local(local_in(&dir.path().join("hop-cache"))).expect("hop");
    assert_ne!(hop.connect_info().arch, "aarch64");
    let want = aarch64_agent();
    let mut crossed = Vec::new();
    for name in ["first", "second"] {
        let before = hop.bytes_sent();
        let ctx = hop.local(reports_aarch64(&dir.path().join(name))).expect("connect through the hop");
        crossed.push(hop.bytes_sent() - before);
        let ci = ctx.connect_info().clone();
        assert_eq!((ci.arch.as_str(), ci.agent_hash.as_str()), ("aarch64", want.sha256), "{name}");
        assert!(matches!(ci.upload, Upload::Stored { .. }), "{name}: a cold cache, uploaded ({:?})", ci.upload);
        assert_eq!(ci.agent_bytes_sent, 0, "{name}: the master wrote no agent bytes into stage0's stdin");
        assert_runs_under_qemu(ci.pid);
        assert_eq!(ctx.info().expect("info").arch, "aarch64");
        let r = ctx.exec(&["echo", name]).expect("exec");
        assert_eq!(text(&r.stdout), format!("{name}\n"));
    }
    let served = router.resource_stats().bytes_served;
    eprintln!("first link: {crossed:?} bytes for the two connects; the importer served {served} bytes");
    // stage0 asks for the gz form where the target has gzip, else raw.
    assert!(served == want.gz.len() as u64 || served == want.raw_len as u64, "served the agent once: {served}");
    assert!(crossed[0] > served, "the first connect carried the agent: {crossed:?}");
    assert!(crossed[1] < 32 * 1024, "the second connect carried {} bytes: the agent came from the hop", crossed[1]);
    hop.ping().expect("the hop still answers");
}

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// `e_machine` of an x86_64 ELF file.
const EM_X86_64: u16 = 62;

/// The example agent built by `mito build-agent --target <target>` as the
/// README says (release, static musl, `--features agent,std`), into
/// `target/custom-agent-test`: the directory `tests/custom_agent.rs`
/// builds it in, so the x86_64 one is built there already and both stay
/// cached across runs. Returns the agent and the file built.
fn build_example_agent(target: &str) -> (Agent, PathBuf) {
    let manifest = format!("{ROOT}/Cargo.toml");
    let target_dir = format!("{ROOT}/target/custom-agent-test");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mito"));
    cmd.args(["build-agent", "--target", target, "--manifest-path", &manifest, "--target-dir", &target_dir]).args([
        "--example",
        "custom_agent",
        "--no-default-features",
        "--features",
        "agent,std",
        "--json",
    ]);
    // As tests/custom_agent.rs builds it: the outer cargo's settings would
    // change the build (and so its cache key) or its place.
    for var in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_TARGET_DIR", "CARGO_BUILD_TARGET"] {
        cmd.env_remove(var);
    }
    let out = cmd.stdin(Stdio::null()).stderr(Stdio::inherit()).output().expect("run mito build-agent");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "mito build-agent --target {target} failed ({}): {stdout}", out.status);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let path = PathBuf::from(v["path"].as_str().unwrap_or_else(|| panic!("no path in {v}")));
    let agent = Agent::from_path(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((v["arch"].as_str(), v["sha256"].as_str()), (Some(agent.arch()), Some(agent.sha256())), "{v}");
    (agent, path)
}

/// The example agent for x86_64 and for aarch64, built once per test
/// binary.
fn example_agents() -> &'static [(Agent, PathBuf); 2] {
    static BUILT: OnceLock<[(Agent, PathBuf); 2]> = OnceLock::new();
    BUILT.get_or_init(|| [build_example_agent("x86_64"), build_example_agent("aarch64")])
}

/// A small tree: `a` (5 bytes), `sub/b` (3 bytes) and `t` (text for grep).
fn example_tree(dir: &Path) -> String {
    std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
    std::fs::write(dir.join("a"), b"12345").expect("write");
    std::fs::write(dir.join("sub/b"), b"123").expect("write");
    std::fs::write(dir.join("t"), "alpha\nbeta\nalphabet\ngamma alpha\n").expect("write");
    dir.to_string_lossy().into_owned()
}

/// The example's functions on `ctx`, typed replies checked: what its
/// agent computed (under qemu or not) from the tree of [`example_tree`].
fn call_the_examples_functions(ctx: &mito::Context, tree: &str) -> Usage {
    let usage = ctx.call::<DiskUsage>(&tree.to_string()).expect("disk_usage");
    assert_eq!((usage.files, usage.dirs), (3, 2), "{}: {usage:?}", ctx.name());
    assert!(usage.bytes >= 5 + 3 + 32, "{}: {usage:?}", ctx.name());
    let t = format!("{tree}/t");
    let hits = ctx.call::<Grep>(&GrepArgs { path: t.clone(), pattern: Pattern::Prefix("alpha".into()), max: 10 });
    assert_eq!(hits.expect("grep"), vec![(1, "alpha".to_string()), (3, "alphabet".to_string())], "{}", ctx.name());
    let hits = ctx.call::<Grep>(&GrepArgs { path: t, pattern: Pattern::Contains("alpha".into()), max: 2 });
    assert_eq!(hits.expect("grep").len(), 2, "{}", ctx.name());
    usage
}

/// `mito build-agent --target aarch64` of the example, uploaded to a target
/// reporting aarch64 by a router whose agents name it: the aarch64 build
/// runs under qemu, and its functions and the built-ins answer.
#[test]
fn a_custom_agent_built_for_aarch64_answers_its_functions_under_qemu() {
    let test = "a_custom_agent_built_for_aarch64_answers_its_functions_under_qemu";
    let Some(_qemu) = Qemu::get(test) else { return };
    let (arm, arm_path) = &example_agents()[1];
    assert_eq!(arm.arch(), "aarch64");
    assert_eq!(elf_machine(arm_path), EM_AARCH64, "mito build-agent --target aarch64 built an aarch64 file");
    assert_ne!(arm.sha256(), aarch64_agent().sha256, "the custom agent, not the embedded one");
    let dir = TempDir::new("aarch64-custom");
    let router =
        Router::with_options(RouterOptions { agents: vec![arm.clone()], ..Default::default() }).expect("router");

    let ctx = router.local(reports_aarch64(dir.path())).expect("connect to a target reporting aarch64");
    let ci = ctx.connect_info().clone();
    assert_eq!((ci.arch.as_str(), ci.agent_hash.as_str()), ("aarch64", arm.sha256()), "the custom aarch64 agent");
    assert!(matches!(ci.upload, Upload::Stored { .. }), "cold path: uploaded and stored ({:?})", ci.upload);
    let spec = Chosen::Custom(arm.clone());
    let spec = spec.spec();
    assert!(
        ci.agent_bytes_sent == spec.gz_len || ci.agent_bytes_sent == spec.raw_len,
        "sent the custom aarch64 agent's bytes: {} (gz {}, raw {})",
        ci.agent_bytes_sent,
        spec.gz_len,
        spec.raw_len
    );
    let cached = dir.path().join("cache").join("mito").join(format!("agent-{}", arm.sha256()));
    assert_eq!(ci.exe, cached.display().to_string());
    assert_eq!(std::fs::read(&cached).expect("cached agent"), std::fs::read(arm_path).expect("built agent"));
    assert_runs_under_qemu(ci.pid);

    // The built-ins, from mito's agent runtime compiled into the user's
    // aarch64 binary.
    ctx.ping().expect("ping");
    let info = ctx.info().expect("info");
    assert_eq!((info.arch.as_str(), info.agent_hash.as_str(), info.pid), ("aarch64", arm.sha256(), ci.pid));
    assert_eq!(ctx.exec(&["echo", "hi"]).expect("exec").stdout, b"hi\n");

    // The example's own functions, typed replies.
    let tree = TempDir::new("aarch64-custom-tree");
    let tree = example_tree(tree.path());
    call_the_examples_functions(&ctx, &tree);
    // A user error from the aarch64 body arrives typed, and it goes on.
    let e = ctx.call::<DiskUsage>(&format!("{tree}/no/such/dir")).expect_err("no such dir");
    let re = e.remote().unwrap_or_else(|| panic!("not a RemoteError: {e:?}"));
    assert_eq!((re.kind, re.context.as_str()), (ErrorKind::User, ctx.name()), "{e}");
    assert!(re.message.contains("No such file"), "{e}");
    ctx.ping().expect("still serving");

    let status = ctx.shutdown().expect("shutdown");
    assert_eq!(status.code, Some(0), "the custom aarch64 agent exits cleanly");
}

/// One router with the example built for both architectures: each target
/// gets the build of its `uname -m` (x86_64 natively, aarch64 under qemu),
/// directly and behind an x86_64 hop (whose importer serves the aarch64
/// build), and both builds compute the same answers.
#[test]
fn a_router_with_both_custom_builds_picks_each_targets_own() {
    let test = "a_router_with_both_custom_builds_picks_each_targets_own";
    let Some(_qemu) = Qemu::get(test) else { return };
    let [(x86, x86_path), (arm, _)] = example_agents();
    assert_eq!((x86.arch(), elf_machine(x86_path)), ("x86_64", EM_X86_64));
    assert_eq!(std::env::consts::ARCH, "x86_64", "this test plays aarch64 under qemu on an x86_64 host");
    let dir = TempDir::new("aarch64-custom-both");
    let agents = vec![x86.clone(), arm.clone()];
    let router = Router::with_options(RouterOptions { agents, ..Default::default() }).expect("router");
    let tree = TempDir::new("aarch64-custom-both-tree");
    let tree = example_tree(tree.path());

    let native = router.local(local_in(&dir.path().join("native-cache"))).expect("connect natively");
    let ni = native.connect_info().clone();
    assert_eq!((ni.arch.as_str(), ni.agent_hash.as_str()), ("x86_64", x86.sha256()), "the x86_64 build");
    let exe = std::fs::read_link(format!("/proc/{}/exe", ni.pid)).expect("native agent's exe");
    assert_eq!(exe.display().to_string(), ni.exe, "the x86_64 build runs natively, not under qemu");

    let arm_ctx = router.local(reports_aarch64(&dir.path().join("arm"))).expect("connect as aarch64");
    let ai = arm_ctx.connect_info().clone();
    assert_eq!((ai.arch.as_str(), ai.agent_hash.as_str()), ("aarch64", arm.sha256()), "the aarch64 build");
    assert_runs_under_qemu(ai.pid);
    assert_eq!(elf_machine(Path::new(&ai.exe)), EM_AARCH64);

    let by_x86 = call_the_examples_functions(&native, &tree);
    let by_arm = call_the_examples_functions(&arm_ctx, &tree);
    assert_eq!(by_x86, by_arm, "both builds count the same tree alike");
    assert_eq!(native.info().expect("info").agent_hash, x86.sha256());
    assert_eq!(arm_ctx.info().expect("info").agent_hash, arm.sha256());

    // Behind the x86_64 hop (running the x86_64 build), an aarch64 target
    // gets the aarch64 build through the hop's importer: the master writes
    // no agent bytes into its stage0.
    let behind = native.local(reports_aarch64(&dir.path().join("behind"))).expect("aarch64 behind the hop");
    let bi = behind.connect_info().clone();
    assert_eq!((bi.arch.as_str(), bi.agent_hash.as_str()), ("aarch64", arm.sha256()), "behind the hop");
    assert!(matches!(bi.upload, Upload::Stored { .. }), "{:?}", bi.upload);
    assert_eq!(bi.agent_bytes_sent, 0, "the master wrote the agent into stdin: {bi:?}");
    assert_runs_under_qemu(bi.pid);
    assert_eq!(common::parent_of(bi.pid), Some(ni.pid), "the hop's agent started it");
    assert_eq!(call_the_examples_functions(&behind, &tree), by_arm);
    // And an x86_64 target behind the same hop gets the hop's own build.
    let beside = native.local(local_in(&dir.path().join("beside-cache"))).expect("x86_64 behind the hop");
    assert_eq!(beside.connect_info().agent_hash, x86.sha256());
    assert_eq!(call_the_examples_functions(&beside, &tree), by_x86);
    native.ping().expect("the hop still answers");
}
