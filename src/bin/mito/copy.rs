//! `mito put` and `mito get`: files and (`-r`) trees, with a progress bar
//! (bytes, rate, time left) when stderr is a terminal, and a one-line
//! summary either way.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mito::functions::FileKind;
use mito::{Context, CopyOptions, GetOptions, HashKind, TransferStats, TreeStats};

use super::cli::{GetArgs, PutArgs};
use super::render;
use super::target::{split_remote, Targets};

/// `--checksum`: the digest both ends of a put or get compare.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Checksum {
    /// XXH3-128: catches corruption and a file changed during the copy,
    /// several times faster than SHA-256.
    #[default]
    #[value(name = "xxh3-128", alias = "xxh3")]
    Xxh3,
    /// SHA-256: a cryptographic digest.
    Sha256,
}

impl From<Checksum> for HashKind {
    fn from(c: Checksum) -> HashKind {
        match c {
            Checksum::Xxh3 => HashKind::Xxh3_128,
            Checksum::Sha256 => HashKind::Sha256,
        }
    }
}

/// Which way the bytes go.
#[derive(Clone, Copy, Debug)]
enum Direction {
    /// Local → context.
    Put,
    /// Context → local.
    Get,
}

/// `mito put`: connects every destination first, then copies; one file
/// to the same path everywhere goes out once per link ([`put_many`]).
pub fn put(a: &PutArgs, targets: &mut Targets<'_>) -> Result<ExitCode, String> {
    let mut to = Vec::new();
    for d in &a.dest {
        let (target, path) = split_remote(d)?;
        to.push((targets.connect(target)?, path));
    }
    let force = a.copy.options();
    match &to[..] {
        [(ctx, path)] => copy(ctx, Direction::Put, &a.src, path, a.recursive, &GetOptions::default(), &force)?,
        [(_, first), ..] if !a.recursive && to.iter().all(|(_, p)| p == first) => {
            let ctxs: Vec<Context> = to.iter().map(|(c, _)| c.clone()).collect();
            put_many(&ctxs, &a.src, first, &force)?;
        }
        _ => {
            for (ctx, path) in &to {
                copy(ctx, Direction::Put, &a.src, path, a.recursive, &GetOptions::default(), &force)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `mito get`; with `--preserve-owner` the target's owners (and
/// setuid/setgid) are kept.
pub fn get(a: &GetArgs, targets: &mut Targets<'_>) -> Result<ExitCode, String> {
    let (target, path) = split_remote(&a.src)?;
    let ctx = targets.connect(target)?;
    let opts = GetOptions { preserve_owner: a.preserve_owner };
    copy(&ctx, Direction::Get, &a.dest, path, a.recursive, &opts, &a.copy.options())?;
    Ok(ExitCode::SUCCESS)
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

/// Copies `local` ⇄ `remote` in `ctx` with a progress bar; `recursive`
/// allows directories; `opts` says how a `get` treats the target's owners,
/// `force` whether to send what the destination already holds.
/// A line on stderr says what was copied.
fn copy(
    ctx: &Context,
    dir: Direction,
    local: &Path,
    remote: &str,
    recursive: bool,
    opts: &GetOptions,
    force: &CopyOptions,
) -> Result<(), String> {
    let pb = bar(0);
    let r = transfer(ctx, dir, local, remote, recursive, opts, force, &pb);
    pb.finish_and_clear();
    let (what, copied) = r?;
    eprintln!("{what}: {}", copied.summary());
    Ok(())
}

/// What a copy did: a file's stats or a tree's (with the digest its
/// files were compared by).
enum Copied {
    File(TransferStats),
    Tree(TreeStats, HashKind),
}

impl Copied {
    /// With time and rate, for one target.
    fn summary(&self) -> String {
        match self {
            // Ansible's `changed: false`.
            Copied::File(s) if !s.changed => format!("unchanged ({} bytes, {} verified)", s.bytes, s.checksum.name()),
            Copied::File(s) => render::transfer(s),
            Copied::Tree(s, kind) => render::tree(s, *kind) + &unchanged_files(s),
        }
    }

    /// Without time and rate, so that hosts that got the same fold into
    /// one line of a pattern's output.
    fn plain(&self) -> String {
        match self {
            Copied::File(s) if !s.changed => format!("unchanged ({} bytes, {} verified)", s.bytes, s.checksum.name()),
            Copied::File(s) => format!("{} bytes, {} verified", s.bytes, s.checksum.name()),
            Copied::Tree(s, kind) => format!(
                "{} files, {} dirs, {} symlinks: {} bytes, {} verified{}",
                s.files,
                s.dirs,
                s.symlinks,
                s.bytes,
                kind.name(),
                unchanged_files(s)
            ),
        }
    }
}

/// How many of a tree's files were left alone, when any were.
fn unchanged_files(s: &TreeStats) -> String {
    match s.unchanged {
        0 => String::new(),
        n if n == s.files => "; all files unchanged".into(),
        n => format!("; {n} files unchanged"),
    }
}

/// `mito put SRC PATTERN:/PATH` on one host of the pattern, with the
/// command line's `--force`/`--compress`/`--checksum` as for one target:
/// what was copied, without time or rate (see [`Copied::plain`]).
pub fn put_on_host(
    ctx: &Context,
    src: &Path,
    remote: &str,
    recursive: bool,
    force: &CopyOptions,
) -> Result<String, String> {
    let pb = ProgressBar::hidden();
    let (_, copied) = transfer(ctx, Direction::Put, src, remote, recursive, &GetOptions::default(), force, &pb)?;
    Ok(format!("put {} -> {remote}: {}\n", src.display(), copied.plain()))
}

/// `mito get PATTERN:/PATH DIR` on one host of the pattern: into
/// `DIR/<host>/<the source's name>` (a file or, with `-r`, a tree).
/// `host` is the inventory's name (the operator's, not the target's);
/// still, one that is not a single file name is refused.
pub fn get_on_host(
    ctx: &Context,
    host: &str,
    remote: &str,
    dir: &Path,
    recursive: bool,
    opts: &GetOptions,
    force: &CopyOptions,
) -> Result<String, String> {
    if host.is_empty() || host == "." || host == ".." || host.contains(['/', '\0']) {
        return Err(format!("the host name {host:?} cannot be a directory name"));
    }
    let into = dir.join(host);
    std::fs::create_dir_all(&into).map_err(|e| format!("{}: {e}", into.display()))?;
    let local = match Path::new(remote).file_name() {
        Some(name) => into.join(name),
        None => into,
    };
    let pb = ProgressBar::hidden();
    let (_, copied) = transfer(ctx, Direction::Get, &local, remote, recursive, opts, force, &pb)?;
    Ok(format!("get {remote} -> {}: {}\n", local.display(), copied.plain()))
}

/// The copy itself; `pb` gets the total and the progress. Returns what
/// was copied (`put A -> host:B`) and its stats.
#[allow(clippy::too_many_arguments)]
fn transfer(
    ctx: &Context,
    dir: Direction,
    local: &Path,
    remote: &str,
    recursive: bool,
    opts: &GetOptions,
    force: &CopyOptions,
    pb: &ProgressBar,
) -> Result<(String, Copied), String> {
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
    pb.set_length(plan.total_bytes());
    let tick = |n: u64| pb.inc(n);
    let copied = if is_dir {
        let s = match dir {
            Direction::Put => ctx.put_tree_with_options(local, remote, &plan, force, &tick),
            Direction::Get => ctx.get_tree_with_options(remote, local, &plan, opts, force, &tick),
        };
        Copied::Tree(s.map_err(|e| e.to_string())?, force.checksum)
    } else {
        let s = match dir {
            Direction::Put => ctx.put_with_options(local, remote, force, &tick),
            Direction::Get => ctx.get_with_options(remote, local, opts, force, &tick),
        };
        Copied::File(s.map_err(|e| e.to_string())?)
    };
    Ok((what, copied))
}

fn into_dir(ctx: &Context, dir: Direction, local: &Path, remote: &str) -> (PathBuf, String) {
    let name = |p: &Path| p.file_name().map(|n| n.to_os_string());
    match dir {
        Direction::Put => match (ctx.stat(remote), name(local)) {
            (Ok(st), Some(n)) if st.kind == FileKind::Dir => {
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
        Direction::Get => ctx.lstat(remote).map_err(|e| e.to_string())?.kind == FileKind::Dir,
    })
}

/// Copies the local file `local` to `remote` in every context of `ctxs`,
/// sent once per link (see `mito::put_many`); a line per target, and an
/// error naming the targets that failed.
fn put_many(ctxs: &[Context], local: &Path, remote: &str, force: &CopyOptions) -> Result<(), String> {
    let meta = std::fs::metadata(local).map_err(|e| format!("{}: {e}", local.display()))?;
    if meta.is_dir() {
        return Err(format!("{} is a directory (use -r)", local.display()));
    }
    let pb = bar(meta.len());
    let tick = |n: u64| pb.inc(n);
    let results = mito::put_many_with_options(ctxs, local, remote, force, &tick);
    pb.finish_and_clear();
    let mut failed = Vec::new();
    for (ctx, r) in ctxs.iter().zip(results) {
        match r {
            Ok(s) => eprintln!("put {} -> {}:{remote}: {}", local.display(), ctx.name(), Copied::File(s).summary()),
            Err(e) => failed.push(e.to_string()),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("\n"))
    }
}
