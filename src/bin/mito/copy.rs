//! `mito put` and `mito get`: files and (`-r`) trees, with a progress bar
//! (bytes, rate, time left) when stderr is a terminal, and a one-line
//! summary either way.

use std::io::IsTerminal;
use std::path::Path;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mito::{Context, GetOptions};

/// Which way the bytes go.
#[derive(Clone, Copy, Debug)]
pub enum Direction {
    /// Local → context.
    Put,
    /// Context → local.
    Get,
}

fn bar(total: u64) -> ProgressBar {
    let target =
        if std::io::stderr().is_terminal() { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
    let pb = ProgressBar::with_draw_target(Some(total), target);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
    ) {
        pb.set_style(style);
    }
    pb
}

/// Copies `local` ⇄ `remote` in `ctx`; `recursive` allows directories.
pub fn copy(ctx: &Context, dir: Direction, local: &Path, remote: &str, recursive: bool) -> Result<(), String> {
    copy_with(ctx, dir, local, remote, recursive, &GetOptions::default())
}

/// [`copy`]; `opts` says how a `get` treats the target's owners.
fn copy_with(
    ctx: &Context,
    dir: Direction,
    local: &Path,
    remote: &str,
    recursive: bool,
    opts: &GetOptions,
) -> Result<(), String> {
    let is_dir = source_is_dir(ctx, dir, local, remote)?;
    if is_dir && !recursive {
        let src = match dir {
            Direction::Put => local.display().to_string(),
            Direction::Get => format!("{}:{remote}", ctx.name()),
        };
        return Err(format!("{src} is a directory (use -r)"));
    }
    let plan = match dir {
        Direction::Put => ctx.plan_local_tree(local),
        Direction::Get => ctx.plan_remote_tree(remote),
    }
    .map_err(|e| e.to_string())?;
    // A file copied onto an existing directory goes inside it, as with cp and scp.
    let (local, remote) =
        if is_dir { (local.to_path_buf(), remote.to_string()) } else { into_dir(ctx, dir, local, remote) };
    let (local, remote) = (local.as_path(), remote.as_str());
    let what = match dir {
        Direction::Put => format!("put {} -> {}:{remote}", local.display(), ctx.name()),
        Direction::Get => format!("get {}:{remote} -> {}", ctx.name(), local.display()),
    };
    let pb = bar(plan.total_bytes());
    let tick = |n: u64| pb.inc(n);
    let summary = if is_dir {
        let s = match dir {
            Direction::Put => ctx.put_tree(local, remote, &plan, &tick),
            Direction::Get => ctx.get_tree_with(remote, local, &plan, opts, &tick),
        };
        pb.finish_and_clear();
        let s = s.map_err(|e| e.to_string())?;
        let secs = s.elapsed.as_secs_f64().max(1e-9);
        format!(
            "{} files, {} dirs, {} symlinks{}: {} bytes in {:.2} s ({:.1} MB/s), sha256 verified",
            s.files,
            s.dirs,
            s.symlinks,
            if s.skipped > 0 { format!(", {} skipped (not file/dir/symlink)", s.skipped) } else { String::new() },
            s.bytes,
            secs,
            s.bytes as f64 / 1e6 / secs
        )
    } else {
        let s = match dir {
            Direction::Put => ctx.put_with_progress(local, remote, &tick),
            Direction::Get => ctx.get_with(remote, local, opts, &tick),
        };
        pb.finish_and_clear();
        let s = s.map_err(|e| e.to_string())?;
        let secs = s.elapsed.as_secs_f64().max(1e-9);
        format!("{} bytes in {:.2} s ({:.1} MB/s), sha256 verified", s.bytes, secs, s.bytes as f64 / 1e6 / secs)
    };
    eprintln!("{what}: {summary}");
    Ok(())
}

/// `mito get`: [`copy`] from `remote` in `ctx` to `local`; with
/// `preserve_owner` the target's owners (and setuid/setgid) are kept.
pub fn get(ctx: &Context, local: &Path, remote: &str, recursive: bool, preserve_owner: bool) -> Result<(), String> {
    copy_with(ctx, Direction::Get, local, remote, recursive, &GetOptions { preserve_owner })
}

fn into_dir(ctx: &Context, dir: Direction, local: &Path, remote: &str) -> (std::path::PathBuf, String) {
    let name = |p: &Path| p.file_name().map(|n| n.to_os_string());
    match dir {
        Direction::Put => match (ctx.stat(remote), name(local)) {
            (Ok(st), Some(n)) if st.kind == mito::functions::FileKind::Dir => {
                (local.to_path_buf(), Path::new(remote).join(n).to_string_lossy().into_owned())
            }
            _ => (local.to_path_buf(), remote.to_string()),
        },
        Direction::Get => match name(Path::new(remote)) {
            Some(n) if local.is_dir() => (local.join(n), remote.to_string()),
            _ => (local.to_path_buf(), remote.to_string()),
        },
    }
}

fn source_is_dir(ctx: &Context, dir: Direction, local: &Path, remote: &str) -> Result<bool, String> {
    Ok(match dir {
        Direction::Put => std::fs::symlink_metadata(local).map_err(|e| format!("{}: {e}", local.display()))?.is_dir(),
        Direction::Get => ctx.lstat(remote).map_err(|e| e.to_string())?.kind == mito::functions::FileKind::Dir,
    })
}

/// Copies the local file `local` to `remote` in every context of `ctxs`,
/// sent once per link (see `mito::put_many`); a line per target, and an
/// error naming the targets that failed.
pub fn put_many(ctxs: &[Context], local: &Path, remote: &str) -> Result<(), String> {
    let meta = std::fs::metadata(local).map_err(|e| format!("{}: {e}", local.display()))?;
    if meta.is_dir() {
        return Err(format!("{} is a directory (use -r)", local.display()));
    }
    let pb = bar(meta.len());
    let tick = |n: u64| pb.inc(n);
    let results = mito::put_many(ctxs, local, remote, &tick);
    pb.finish_and_clear();
    let mut failed = Vec::new();
    for (ctx, r) in ctxs.iter().zip(results) {
        match r {
            Ok(s) => {
                let secs = s.elapsed.as_secs_f64().max(1e-9);
                eprintln!(
                    "put {} -> {}:{remote}: {} bytes in {:.2} s ({:.1} MB/s), sha256 verified",
                    local.display(),
                    ctx.name(),
                    s.bytes,
                    secs,
                    s.bytes as f64 / 1e6 / secs
                );
            }
            Err(e) => failed.push(e.to_string()),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("\n"))
    }
}
