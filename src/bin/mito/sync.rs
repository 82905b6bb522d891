//! `mito sync [-r] SRC TARGET:/DST [--delete]`: push a file or tree,
//! sending only what changed (`Context::sync_with_report`). One line per
//! file on stdout (`changed PATH` / `unchanged PATH`, `deleted PATH`,
//! `symlink PATH`), a summary on stderr: files checked, changed, bytes
//! sent on the wire against the bytes of the changed files.
//!
//! A file that fails (`failed PATH: reason` on stderr, after the
//! per-file lines: its `changed` line was printed when it was sent) does
//! not stop the others, as with rsync: the exit status is then [`PARTIAL`] (rsync's
//! 23, "partial transfer due to error"); a sync that could not go on
//! (the target lost, a bad source or destination root) is 255.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;

use mito::core::text::printable;
use mito::master::sync::{SyncEvent, SyncOptions, SyncStats};

use super::cli::SyncArgs;
use super::target::{split_remote, Targets};

/// Exit status of a sync where some files failed and the rest was done
/// (rsync's code for a partial transfer).
pub const PARTIAL: u8 = 23;

/// `mito sync`.
pub fn command(a: &SyncArgs, targets: &mut Targets<'_>) -> Result<ExitCode, String> {
    let (target, path) = split_remote(&a.dest)?;
    let ctx = targets.connect(target)?;
    let opts = SyncOptions { recursive: a.recursive, delete: a.delete };
    let out = std::io::stdout();
    let mut out = out.lock();
    let mut report = |e: &SyncEvent| {
        if a.quiet {
            return;
        }
        let (word, p) = match e {
            SyncEvent::File { path, changed: true, .. } => ("changed", path),
            SyncEvent::File { path, .. } => ("unchanged", path),
            SyncEvent::Deleted { path } => ("deleted", path),
            SyncEvent::Symlink { path } => ("symlink", path),
        };
        // A broken stdout must not stop the sync half way; the summary says the rest.
        let _ = writeln!(out, "{word} {}", printable(p.as_os_str().as_bytes(), 4096));
    };
    let stats = ctx
        .sync_with_report(&a.src, path, &opts, &mut report)
        .map_err(|e| format!("sync {} to {}: {e}", a.src.display(), a.dest))?;
    let _ = out.flush();
    for f in &stats.failed {
        eprintln!(
            "failed {}: {}",
            printable(f.path.as_os_str().as_bytes(), 4096),
            printable(f.reason.to_string().as_bytes(), 4096)
        );
    }
    eprintln!("{}: {}", a.dest, summary(&stats));
    Ok(if stats.failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(PARTIAL) })
}

/// The summary line.
fn summary(s: &SyncStats) -> String {
    let mut line = format!(
        "{} file{} checked, {} changed ({} as deltas), {} bytes sent on the wire for {} bytes of changed files \
         ({} literal), {:.3} s",
        s.files,
        if s.files == 1 { "" } else { "s" },
        s.changed,
        s.deltas,
        s.wire_bytes,
        s.file_bytes,
        s.literal_bytes,
        s.elapsed.as_secs_f64()
    );
    if !s.listed.is_zero() {
        line += &format!(" (listing {:.3} s)", s.listed.as_secs_f64());
    }
    if s.deleted > 0 {
        line += &format!(", {} deleted", s.deleted);
    }
    if s.symlinks > 0 {
        line += &format!(", {} symlinks", s.symlinks);
    }
    if s.skipped > 0 {
        line += &format!(", {} special files skipped", s.skipped);
    }
    if !s.failed.is_empty() {
        line += &format!(", {} failed", s.failed.len());
    }
    line
}
