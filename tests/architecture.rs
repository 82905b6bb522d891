//! The code map's invariants (ARCHITECTURE.md, "Folders"), checked on the
//! source text: layers point one way — `proto` ← `core` ← `connect` ←
//! `master`, and `agent` ← `core`/`proto` — and what builds into the
//! `no_std` agent uses no `std`. A `use` that breaks one fails here, naming
//! the file and line, before it becomes a knot. Also what build.rs promises
//! of the agents it embeds (no unwind tables).

use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Every `.rs` file under `src/<dir>`.
fn files(dir: &str) -> Vec<PathBuf> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&Path::new(ROOT).join("src").join(dir), &mut out);
    assert!(!out.is_empty(), "no sources under src/{dir}");
    out
}

/// Lines of `file` outside `#[cfg(test)]` modules (tests may reach across).
fn code_lines(file: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let end = text.find("#[cfg(test)]\nmod tests").unwrap_or(text.len());
    text[..end].lines().enumerate().map(|(i, l)| (i + 1, l.to_string())).collect()
}

/// Places under `src/<dir>` whose code names one of `forbidden`.
fn offenders(dir: &str, forbidden: &[&str], only: Option<&[&str]>, skip_gated: bool) -> Vec<String> {
    let mut bad = Vec::new();
    for f in files(dir) {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if only.is_some_and(|o| !o.contains(&name.as_str())) {
            continue;
        }
        let lines = code_lines(&f);
        // A module gated as a whole (`#![cfg(feature = "std")]`, like the
        // custom agent's `agent/user.rs`) is not linked by the no_std agent.
        let file_gated = lines.iter().any(|(_, l)| l.trim() == "#![cfg(feature = \"std\")]");
        if skip_gated && file_gated {
            continue;
        }
        for (i, (n, line)) in lines.iter().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            // For the no_std check: code gated to the master's build (a `std`
            // or `master` feature attribute just above it) is not linked by
            // the agent. Layering holds for gated code too.
            let gated = lines[i.saturating_sub(3)..i]
                .iter()
                .any(|(_, l)| l.contains("cfg(feature = \"std\")") || l.contains("cfg(feature = \"master\")"));
            if skip_gated && gated {
                continue;
            }
            if let Some(word) = forbidden.iter().find(|w| code.contains(*w)) {
                bad.push(format!("{}:{n}: {word}: {}", f.strip_prefix(ROOT).unwrap_or(&f).display(), line.trim()));
            }
        }
    }
    bad
}

#[test]
fn layers_point_one_way() {
    let mut bad = Vec::new();
    bad.extend(offenders("proto", &["crate::core", "crate::connect", "crate::master", "crate::agent"], None, false));
    bad.extend(offenders("core", &["crate::connect", "crate::master", "crate::agent"], None, false));
    bad.extend(offenders("connect", &["crate::master", "crate::agent"], None, false));
    bad.extend(offenders(
        "agent",
        &["crate::master", "crate::connect::bootstrap", "crate::connect::local"],
        None,
        false,
    ));
    assert!(bad.is_empty(), "imports against the layering (ARCHITECTURE.md, \"Folders\"):\n{}", bad.join("\n"));
}

#[test]
fn what_the_agent_links_needs_no_std() {
    // The agent builds `proto`, `agent` and these `core` modules without std.
    let core_no_std: &[&str] = &[
        "side.rs",
        "stream.rs",
        "poller.rs",
        "waker.rs",
        "num.rs",
        "sha256.rs",
        "text.rs",
        "lines.rs",
        "tty.rs",
        "wait.rs",
        "tool_process.rs",
    ];
    let mut bad = Vec::new();
    bad.extend(offenders("proto", &["std::"], None, true));
    bad.extend(offenders("agent", &["std::"], None, true));
    bad.extend(offenders("core", &["std::"], Some(core_no_std), true));
    assert!(bad.is_empty(), "std in what the no_std agent links:\n{}", bad.join("\n"));
}

/// The embedded agents carry no unwind tables (`build.rs`,
/// `blank_unwind_tables`): `panic = "abort"` never reads them and they
/// were ~13 KiB of every compressed upload. Their sections stay where the
/// linker put them, zeroed, and no `PT_GNU_EH_FRAME` header points at them.
#[test]
fn embedded_agents_ship_without_unwind_tables() {
    fn num(b: &[u8], at: usize, len: usize) -> u64 {
        b[at..at + len].iter().rev().fold(0u64, |n, &x| (n << 8) | u64::from(x))
    }
    for agent in mito::connect::embedded::AGENTS {
        let elf = agent.raw();
        let (phoff, phentsize, phnum) = (num(&elf, 0x20, 8), num(&elf, 0x36, 2), num(&elf, 0x38, 2));
        for i in 0..phnum {
            assert_ne!(num(&elf, (phoff + i * phentsize) as usize, 4), 0x6474_e550, "{}: PT_GNU_EH_FRAME", agent.arch);
        }
        let (shoff, shentsize, shnum, shstrndx) =
            (num(&elf, 0x28, 8), num(&elf, 0x3a, 2), num(&elf, 0x3c, 2), num(&elf, 0x3e, 2));
        let sh = |i: u64, field: usize, len: usize| num(&elf, (shoff + i * shentsize) as usize + field, len);
        let strtab = sh(shstrndx, 24, 8) as usize;
        let mut seen = 0;
        for i in 0..shnum {
            let name = &elf[strtab + sh(i, 0, 4) as usize..];
            let name = &name[..name.iter().position(|&b| b == 0).expect("NUL-terminated name")];
            if name == b".eh_frame" || name == b".eh_frame_hdr" {
                let (off, size) = (sh(i, 24, 8) as usize, sh(i, 32, 8) as usize);
                assert!(
                    elf[off..off + size].iter().all(|&b| b == 0),
                    "{}: {} not zeroed",
                    agent.arch,
                    String::from_utf8_lossy(name)
                );
                seen += size;
            }
        }
        assert!(seen > 0, "{}: no unwind sections found: did the layout change?", agent.arch);
    }
}
