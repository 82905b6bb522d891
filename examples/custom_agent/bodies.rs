//! The bodies of the example's functions (`functions.rs` declares them):
//! ordinary `std` Rust, compiled only into a binary that runs them as an
//! agent (`agent.rs`, or `both.rs`, which is its own agent).

use std::fs;
use std::io::{BufRead, BufReader};

use super::functions::{GrepArgs, Pattern, Usage};

/// `DiskUsage`: a walk of the tree. An error names the path; it reaches
/// the caller as a `RemoteError` of kind `User` with this text.
pub fn disk_usage(path: String) -> Result<Usage, String> {
    let mut usage = Usage { files: 0, dirs: 0, bytes: 0 };
    let mut todo = vec![std::path::PathBuf::from(&path)];
    while let Some(p) = todo.pop() {
        let meta = fs::symlink_metadata(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        usage.bytes += meta.len();
        if meta.is_dir() {
            usage.dirs += 1;
            for entry in fs::read_dir(&p).map_err(|e| format!("{}: {e}", p.display()))? {
                todo.push(entry.map_err(|e| format!("{}: {e}", p.display()))?.path());
            }
        } else {
            usage.files += 1;
        }
    }
    Ok(usage)
}

/// `Grep`: an `io::Error` converts to a `RemoteError` of kind `Os` with
/// its errno.
pub fn grep(a: GrepArgs) -> std::io::Result<Vec<(u64, String)>> {
    let mut found = Vec::new();
    for (i, line) in BufReader::new(fs::File::open(&a.path)?).lines().enumerate() {
        let line = line?;
        let hit = match &a.pattern {
            Pattern::Contains(s) => line.contains(s.as_str()),
            Pattern::Prefix(s) => line.starts_with(s.as_str()),
        };
        if hit && found.len() < a.max as usize {
            found.push((i as u64 + 1, line));
        }
    }
    Ok(found)
}
