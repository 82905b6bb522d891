//! The agents a master uploads: the ones build.rs embedded, or a user's
//! own ([`Agent`], given in `RouterOptions::agents`), one per
//! architecture.
//!
//! A custom agent is a static musl binary that links mito's agent runtime
//! and adds the user's functions (`mito::agent::serve`). The master
//! uploads it exactly as it uploads the embedded one: stage0 looks for
//! `agent-<sha256>` in the target's cache and asks for the bytes only when
//! it is missing, so agents with different hashes live side by side there.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use super::embedded::{self, EmbeddedAgent};
use super::stage0::AgentSpec;

/// An agent binary the master uploads instead of the embedded one of its
/// architecture (read from its ELF header). Cheap to clone.
#[derive(Clone)]
pub struct Agent(Arc<Inner>);

struct Inner {
    arch: &'static str,
    sha256: String,
    raw: Vec<u8>,
    gz: Vec<u8>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("arch", &self.0.arch)
            .field("sha256", &self.0.sha256)
            .field("len", &self.0.raw.len())
            .finish()
    }
}

impl Agent {
    /// The agent in `raw`: a static ELF executable for x86_64 or aarch64.
    /// Its hash (sha256) names it in the target's cache.
    pub fn from_bytes(raw: Vec<u8>) -> std::io::Result<Agent> {
        let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not an agent: {what}"));
        if raw.len() < 20 || &raw[..4] != b"\x7fELF" {
            return Err(bad("no ELF header"));
        }
        if raw[4] != 2 || raw[5] != 1 {
            return Err(bad("not a 64-bit little-endian ELF file"));
        }
        let arch = match u16::from_le_bytes([raw[18], raw[19]]) {
            62 => "x86_64",
            183 => "aarch64",
            m => return Err(bad(&format!("ELF machine {m} is neither x86_64 nor aarch64"))),
        };
        if has_interpreter(&raw).ok_or_else(|| bad("truncated ELF program headers"))? {
            return Err(bad(
                "dynamically linked (it names an interpreter); build it static: --target x86_64-unknown-linux-musl",
            ));
        }
        let sha256 = crate::core::sha256::digest(&raw).iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        });
        let gz = gzip(&raw);
        Ok(Agent(Arc::new(Inner { arch, sha256, raw, gz })))
    }

    /// The agent in the file at `path` (read once, now).
    pub fn from_path(path: impl AsRef<Path>) -> std::io::Result<Agent> {
        let path = path.as_ref();
        let raw = std::fs::read(path).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Agent::from_bytes(raw).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    }

    /// This program itself (`/proc/self/exe`), for a master that is its own
    /// agent: a static musl binary whose `main` first calls
    /// `mito::agent::serve_if_agent`, so stage0 runs the very same file on
    /// the target. A dynamically linked build is refused, as by
    /// [`Agent::from_bytes`]; build it with `--target
    /// x86_64-unknown-linux-musl` and the features `master,agent`.
    pub fn this_executable() -> std::io::Result<Agent> {
        let raw = std::fs::read("/proc/self/exe")
            .map_err(|e| std::io::Error::new(e.kind(), format!("this executable (/proc/self/exe): {e}")))?;
        Agent::from_bytes(raw)
            .map_err(|e| std::io::Error::new(e.kind(), format!("this executable (/proc/self/exe) is {e}")))
    }

    /// `uname -m` name of its architecture.
    pub fn arch(&self) -> &str {
        self.0.arch
    }

    /// Hex sha256 of the binary: its name in the target's cache, and the
    /// `agent_hash` its contexts report.
    pub fn sha256(&self) -> &str {
        &self.0.sha256
    }

    /// Size of the binary.
    pub fn len(&self) -> usize {
        self.0.raw.len()
    }

    /// Never true for an agent that [`Agent::from_bytes`] accepted.
    pub fn is_empty(&self) -> bool {
        self.0.raw.is_empty()
    }
}

/// One agent to upload: an embedded one or a custom one.
#[derive(Clone, Debug)]
pub enum Chosen {
    /// Built by build.rs.
    Embedded(&'static EmbeddedAgent),
    /// The user's.
    Custom(Agent),
}

impl Chosen {
    /// What stage0 needs to know.
    pub fn spec(&self) -> AgentSpec<'_> {
        match self {
            Chosen::Embedded(a) => a.spec(),
            Chosen::Custom(a) => {
                AgentSpec { arch: a.0.arch, sha256: &a.0.sha256, raw_len: a.0.raw.len(), gz_len: a.0.gz.len() }
            }
        }
    }

    /// Hex sha256 of the binary.
    pub fn sha256(&self) -> &str {
        match self {
            Chosen::Embedded(a) => a.sha256,
            Chosen::Custom(a) => &a.0.sha256,
        }
    }

    /// The bytes to send: a gzip member or the raw binary.
    pub fn bytes(&self, gzip: bool) -> Vec<u8> {
        match (self, gzip) {
            (Chosen::Embedded(a), true) => a.gz.to_vec(),
            (Chosen::Embedded(a), false) => a.raw(),
            (Chosen::Custom(a), true) => a.0.gz.clone(),
            (Chosen::Custom(a), false) => a.0.raw.clone(),
        }
    }
}

/// The agents a router uploads: its custom ones, else the embedded one of
/// each architecture.
#[derive(Clone, Debug, Default)]
pub struct AgentSet {
    custom: Vec<Agent>,
}

impl AgentSet {
    /// The embedded agents, with `custom` ones in place of those of their
    /// architecture (the last one given for an architecture wins).
    pub fn new(custom: Vec<Agent>) -> AgentSet {
        AgentSet { custom }
    }

    /// The agent for `arch` (`uname -m` spelling; `arm64` is `aarch64`).
    pub fn for_arch(&self, arch: &str) -> Option<Chosen> {
        let arch = if arch == "arm64" { "aarch64" } else { arch };
        match self.custom.iter().rev().find(|a| a.0.arch == arch) {
            Some(a) => Some(Chosen::Custom(a.clone())),
            None => embedded::for_arch(arch).map(Chosen::Embedded),
        }
    }

    /// Every architecture served, one agent each.
    pub fn all(&self) -> Vec<Chosen> {
        let mut archs: Vec<&str> = embedded::AGENTS.iter().map(|a| a.arch).collect();
        for a in &self.custom {
            if !archs.contains(&a.0.arch) {
                archs.push(a.0.arch);
            }
        }
        archs.into_iter().filter_map(|arch| self.for_arch(arch)).collect()
    }

    /// The architectures served, for errors ("x86_64, aarch64").
    pub fn archs(&self) -> String {
        self.all().iter().map(|c| c.spec().arch.to_string()).collect::<Vec<_>>().join(", ")
    }
}

/// Whether the 64-bit little-endian ELF file `raw` has a `PT_INTERP`
/// program header (a dynamic loader it needs on the target); `None` when
/// its program headers lie outside it.
fn has_interpreter(raw: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    // e_phoff (8 bytes at 32), e_phentsize (2 at 54), e_phnum (2 at 56).
    let u16_at = |o: usize| raw.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let phoff = raw.get(32..40)?.iter().rev().fold(0u64, |n, &b| n << 8 | u64::from(b));
    let (entsize, num) = (u16_at(54)?, u16_at(56)?);
    let phoff = usize::try_from(phoff).ok()?;
    (0..num)
        .map(|i| {
            let at = phoff.checked_add(i.checked_mul(entsize)?)?;
            raw.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) == PT_INTERP)
        })
        .try_fold(false, |any, is| Some(any | is?))
}

/// A gzip member (RFC 1952; what the target's `gzip -dc` reads) around
/// miniz_oxide's raw deflate, as build.rs makes the embedded agent's.
fn gzip(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
    out.extend_from_slice(&miniz_oxide::deflate::compress_to_vec(data, 6));
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    out.extend_from_slice(&(!crc).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}
