//! The remote functions, declared once: both halves compile this file (the
//! master, which calls them, and the custom agent, which runs them), so
//! they agree on each function's wire name and its argument and reply
//! types. Any serde types work (postcard on the wire).

use serde::{Deserialize, Serialize};

/// What [`DiskUsage`] found under a path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Regular files (and other non-directories).
    pub files: u64,
    /// Directories, the path itself included.
    pub dirs: u64,
    /// Their apparent sizes, summed.
    pub bytes: u64,
}

mito::declare_function!(
    /// Files, directories and bytes under a path (`du -s --apparent-size`;
    /// symlinks are not followed).
    pub DiskUsage, "example.disk_usage", String, Usage
);

/// Which lines [`Grep`] keeps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Pattern {
    /// Lines containing this text.
    Contains(String),
    /// Lines starting with this text.
    Prefix(String),
}

/// Arguments of [`Grep`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrepArgs {
    /// The file to read.
    pub path: String,
    /// What a line must match.
    pub pattern: Pattern,
    /// At most this many lines.
    pub max: u32,
}

mito::declare_function!(
    /// Matching lines of a text file, with their numbers (from 1).
    pub Grep, "example.grep", GrepArgs, Vec<(u64, String)>
);
