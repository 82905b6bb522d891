//! `mito build-agent`: builds the user's custom agent (a static musl `std`
//! binary that calls `mito::agent::serve`) the way the README says, then
//! checks the file as the master will when it uploads it
//! (`mito::Agent::from_path`: static ELF of the right architecture) and
//! prints its path, sha256 and sizes.
//!
//! cargo does the build; this adds what people get wrong: the musl target
//! and `--release`, the aarch64 linker (`rust-lld`: no gcc cross toolchain
//! needed), a missing target said as the `rustup` line that installs it,
//! and finding the built file (cargo's JSON messages name it; its path
//! depends on `--target-dir`, the profile and the example/bin split).

use std::ffi::OsString;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};

use mito::connect::agents::{Agent, Chosen};

use crate::cli::{AgentTarget, BuildAgentArgs};

/// Why no agent came out of `mito build-agent`.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// cargo could not be started.
    #[error("cannot run {program:?} ({why}): install Rust (https://rustup.rs) or set $CARGO to cargo's path")]
    NoCargo {
        /// What was run (`$CARGO` or `cargo`).
        program: OsString,
        /// The OS error.
        why: std::io::Error,
    },
    /// The toolchain has no standard library for the target.
    #[error("the target {triple} is not installed in {sysroot}: rustup target add {triple}")]
    TargetMissing {
        /// The target triple.
        triple: &'static str,
        /// The toolchain's sysroot (`rustc --print sysroot`).
        sysroot: String,
    },
    /// cargo ran and failed (its errors are on stderr above).
    #[error("cargo build failed ({status}); its errors are above")]
    BuildFailed {
        /// cargo's exit status.
        status: ExitStatus,
    },
    /// cargo succeeded but named no executable of that name.
    #[error("cargo built no executable named {name:?} (is it a [[bin]] or [[example]] of that package?)")]
    NoExecutable {
        /// The `--bin` or `--example` asked for.
        name: String,
    },
    /// The file built is not something the master can upload.
    #[error("{0}")]
    NotAnAgent(std::io::Error),
    /// The file built is for another architecture than asked.
    #[error("{path}: built for {found}, not {wanted}")]
    WrongArch {
        /// The file.
        path: PathBuf,
        /// Its ELF machine.
        found: String,
        /// The target's.
        wanted: &'static str,
    },
    /// Reading cargo's messages failed.
    #[error("reading cargo's output: {0}")]
    Io(std::io::Error),
}

/// What was built: the file and its facts, printed as text or JSON.
#[derive(serde::Serialize)]
struct Built {
    path: PathBuf,
    arch: String,
    sha256: String,
    size: usize,
    gzip_size: usize,
}

/// Runs the verb: 0 and the agent's facts on stdout, or 255 and why on
/// stderr.
pub fn run(a: &BuildAgentArgs) -> ExitCode {
    match build(a) {
        Ok(b) if a.json => match serde_json::to_string_pretty(&b) {
            Ok(s) => {
                println!("{s}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("mito: error: {e}");
                ExitCode::from(255)
            }
        },
        Ok(b) => {
            println!("agent: {}", b.path.display());
            println!("arch: {}", b.arch);
            println!("sha256: {}", b.sha256);
            println!("size: {} bytes, {} bytes gzip", b.size, b.gzip_size);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mito: error: build-agent: {e}");
            ExitCode::from(255)
        }
    }
}

fn build(a: &BuildAgentArgs) -> Result<Built, BuildError> {
    let triple = a.target.triple();
    // Where cargo will run: the manifest's directory decides the toolchain
    // (a rust-toolchain.toml there), so rustc is asked from there too.
    let dir = a.manifest_path.as_deref().and_then(Path::parent).filter(|d| !d.as_os_str().is_empty());
    check_target(triple, dir)?;

    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&program);
    cmd.args(["build", "--release", "--target", triple, "--message-format=json-render-diagnostics"]);
    if let Some(m) = &a.manifest_path {
        cmd.arg("--manifest-path").arg(m);
    }
    if let Some(d) = &a.target_dir {
        cmd.arg("--target-dir").arg(d);
    }
    let name = match (&a.bin, &a.example) {
        (Some(b), _) => {
            cmd.args(["--bin", b]);
            b
        }
        (None, Some(e)) => {
            cmd.args(["--example", e]);
            e
        }
        // clap requires one of the two.
        (None, None) => return Err(BuildError::NoExecutable { name: String::new() }),
    };
    if let Some(f) = &a.features {
        cmd.args(["--features", f]);
    }
    if a.no_default_features {
        cmd.arg("--no-default-features");
    }
    // aarch64 links with the linker rustup ships: no cross gcc needed for a
    // pure-Rust static binary. A linker the user chose wins.
    if a.target == AgentTarget::Aarch64 && std::env::var_os("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER").is_none()
    {
        cmd.env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER", "rust-lld");
    }
    // cargo's progress and errors go to the user as they come; its stdout
    // carries the JSON messages that name the file built.
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = cmd.spawn().map_err(|why| BuildError::NoCargo { program, why })?;
    let mut exe = None;
    if let Some(out) = child.stdout.take() {
        for line in std::io::BufReader::new(out).lines() {
            let line = line.map_err(BuildError::Io)?;
            if let Some(p) = executable_of(&line, name) {
                exe = Some(p);
            }
        }
    }
    let status = child.wait().map_err(BuildError::Io)?;
    if !status.success() {
        return Err(BuildError::BuildFailed { status });
    }
    let path = exe.ok_or_else(|| BuildError::NoExecutable { name: name.clone() })?;
    let agent = Agent::from_path(&path).map_err(BuildError::NotAnAgent)?;
    if agent.arch() != a.target.arch() {
        return Err(BuildError::WrongArch { path, found: agent.arch().into(), wanted: a.target.arch() });
    }
    // The gzip member the bootstrap sends, made as the router makes it.
    let gzip_size = Chosen::Custom(agent.clone()).spec().gz_len;
    Ok(Built { path, arch: agent.arch().into(), sha256: agent.sha256().into(), size: agent.len(), gzip_size })
}

/// The executable a line of cargo's JSON messages names, if it is the
/// artifact of the bin or example `name`.
fn executable_of(line: &str, name: &str) -> Option<PathBuf> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v["reason"] != "compiler-artifact" || v["target"]["name"] != name {
        return None;
    }
    let kinds = v["target"]["kind"].as_array()?;
    if !kinds.iter().any(|k| k == "bin" || k == "example") {
        return None;
    }
    v["executable"].as_str().map(PathBuf::from)
}

/// Whether the toolchain cargo will use has the target's standard library
/// (`<sysroot>/lib/rustlib/<triple>/lib`), so a missing one is the
/// `rustup target add` line rather than cargo's "can't find crate for
/// `std`". When rustc cannot be asked, cargo will say what is wrong.
fn check_target(triple: &'static str, dir: Option<&Path>) -> Result<(), BuildError> {
    let mut cmd = Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()));
    cmd.args(["--print", "sysroot"]).stdin(Stdio::null()).stderr(Stdio::null());
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    let Ok(out) = cmd.output() else { return Ok(()) };
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || sysroot.is_empty() {
        return Ok(());
    }
    if Path::new(&sysroot).join("lib/rustlib").join(triple).join("lib").is_dir() {
        Ok(())
    } else {
        Err(BuildError::TargetMissing { triple, sysroot })
    }
}

#[cfg(test)]
mod tests {
    use super::executable_of;

    #[test]
    fn the_artifact_named_is_the_executable() {
        let bin = r#"{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"agent"},"executable":"/t/agent"}"#;
        assert_eq!(executable_of(bin, "agent").as_deref(), Some(std::path::Path::new("/t/agent")));
        assert_eq!(executable_of(bin, "other"), None);
        let build_script =
            r#"{"reason":"compiler-artifact","target":{"kind":["custom-build"],"name":"agent"},"executable":"/b"}"#;
        assert_eq!(executable_of(build_script, "agent"), None);
        let lib = r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"agent"},"executable":null}"#;
        assert_eq!(executable_of(lib, "agent"), None);
        assert_eq!(executable_of("not json", "agent"), None);
    }
}
