//! The agents built by build.rs, embedded in the master.

use std::sync::OnceLock;

use crate::connect::stage0::AgentSpec;

/// One embedded agent binary.
#[derive(Debug)]
pub struct EmbeddedAgent {
    /// `uname -m` name of its architecture.
    pub arch: &'static str,
    /// Hex sha256 of the raw binary (also its cache file name).
    pub sha256: &'static str,
    /// Raw size.
    pub raw_len: usize,
    /// A gzip member (what `gzip -dc` on the target understands).
    pub gz: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/agents.rs"));

impl EmbeddedAgent {
    /// The raw binary (inflated once, then kept), for targets without gzip.
    pub fn raw(&self) -> Vec<u8> {
        static RAW: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
        let all = RAW.get_or_init(|| {
            AGENTS
                .iter()
                .map(|a| {
                    // A gzip member: 10-byte header, raw deflate, 8-byte trailer.
                    let body = a.gz.get(10..a.gz.len().saturating_sub(8)).unwrap_or(&[]);
                    miniz_oxide::inflate::decompress_to_vec(body).unwrap_or_default()
                })
                .collect()
        });
        AGENTS.iter().position(|a| a.sha256 == self.sha256).and_then(|i| all.get(i)).cloned().unwrap_or_default()
    }

    /// What stage0 needs to know.
    pub fn spec(&self) -> AgentSpec<'static> {
        AgentSpec { arch: self.arch, sha256: self.sha256, raw_len: self.raw_len, gz_len: self.gz.len() }
    }
}

/// The agent for `arch` (`uname -m` spelling; `arm64` is `aarch64`).
pub fn for_arch(arch: &str) -> Option<&'static EmbeddedAgent> {
    let arch = if arch == "arm64" { "aarch64" } else { arch };
    AGENTS.iter().find(|a| a.arch == arch)
}

/// Stage0 specs of every embedded agent.
pub fn specs() -> Vec<AgentSpec<'static>> {
    AGENTS.iter().map(EmbeddedAgent::spec).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn embedded_agent_inflates_to_its_hash_and_size() {
        use sha2_free_check::sha256_hex;
        for a in super::AGENTS {
            let raw = a.raw();
            assert_eq!(raw.len(), a.raw_len);
            assert_eq!(sha256_hex(&raw), a.sha256);
            assert_eq!(&raw[..4], b"\x7fELF");
        }
    }

    /// Both architectures are embedded, each agent an ELF file of its own
    /// machine (what the kernel, or qemu, will run), found by either
    /// `uname -m` spelling.
    #[test]
    fn x86_64_and_aarch64_are_embedded_for_their_machines() {
        let machine = |arch: &str| {
            let raw = super::for_arch(arch).unwrap_or_else(|| panic!("no {arch} agent")).raw();
            u16::from_le_bytes([raw[18], raw[19]])
        };
        assert_eq!(machine("x86_64"), 62);
        assert_eq!(machine("aarch64"), 183);
        assert_eq!(super::for_arch("arm64").map(|a| a.arch), Some("aarch64"));
        assert_eq!(super::specs().len(), super::AGENTS.len());
        assert!(super::for_arch("riscv64").is_none());
    }

    /// `sha256sum` from coreutils as the independent check.
    mod sha2_free_check {
        pub fn sha256_hex(data: &[u8]) -> String {
            use std::io::Write;
            let mut c = std::process::Command::new("sha256sum")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("sha256sum runs");
            c.stdin.take().expect("stdin").write_all(data).expect("write");
            let out = c.wait_with_output().expect("output");
            String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or("").to_string()
        }
    }
}
