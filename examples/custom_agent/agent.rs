//! A custom agent: mito's runtime and built-ins plus this program's own
//! functions. It is a static musl `std` binary; the master uploads it
//! instead of the embedded agent (see `master.rs`). Build it with:
//!
//! ```sh
//! cargo build --release --example custom_agent --no-default-features --features agent,std \
//!     --target x86_64-unknown-linux-musl
//! ```
//!
//! In your own crate: depend on `mito` with `default-features = false,
//! features = ["agent", "std"]` for this binary (and the default features
//! for the master), and build it the same way with `--bin`.

#[path = "functions.rs"]
mod functions;

use std::fs;
use std::io::{BufRead, BufReader};

use functions::{DiskUsage, Grep, GrepArgs, Pattern, Usage};
use mito::agent::{function, serve};

/// [`DiskUsage`]: a walk of the tree. An error names the path; it reaches
/// the caller as a `RemoteError` of kind `User` with this text.
fn disk_usage(path: String) -> Result<Usage, String> {
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

/// [`Grep`]: an `io::Error` converts to a `RemoteError` of kind `Os` with
/// its errno.
fn grep(a: GrepArgs) -> std::io::Result<Vec<(u64, String)>> {
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

fn main() {
    // One call: the agent loop, serving the built-ins and these.
    serve(vec![function::<DiskUsage, _>(disk_usage), function::<Grep, _>(grep)])
}
