//! Typed file system helpers on [`Context`] (see `agent::fs`), and facts.

use std::path::Path;

use serde_bytes::ByteBuf;

use super::context::{path_bytes, Context};
use super::error::CallError;
use crate::proto::functions::{
    self as f, ChownArgs, DirEntry, DiskUsageReply, ModeArgs, PathArgs, RenameArgs, SymlinkArgs,
};

impl Context {
    /// Entries of a directory (sorted by name), each with its `lstat`.
    pub fn list_dir(&self, path: impl AsRef<Path>) -> Result<Vec<DirEntry>, CallError> {
        self.call::<f::ListDir>(&PathArgs { path: path_bytes(path.as_ref()) })
    }

    /// `mkdir -p`, creating missing directories with `mode`.
    pub fn make_dirs(&self, path: impl AsRef<Path>, mode: u32) -> Result<(), CallError> {
        self.call::<f::MakeDirs>(&ModeArgs { path: path_bytes(path.as_ref()), mode })
    }

    /// `chmod`.
    pub fn chmod(&self, path: impl AsRef<Path>, mode: u32) -> Result<(), CallError> {
        self.call::<f::Chmod>(&ModeArgs { path: path_bytes(path.as_ref()), mode })
    }

    /// `chown` (follows a final symlink); `None` keeps that id.
    pub fn chown(&self, path: impl AsRef<Path>, uid: Option<u32>, gid: Option<u32>) -> Result<(), CallError> {
        self.call::<f::Chown>(&ChownArgs { path: path_bytes(path.as_ref()), uid, gid, follow: true })
    }

    /// `lchown`: as [`Context::chown`], but a final symlink itself changes.
    pub fn lchown(&self, path: impl AsRef<Path>, uid: Option<u32>, gid: Option<u32>) -> Result<(), CallError> {
        self.call::<f::Chown>(&ChownArgs { path: path_bytes(path.as_ref()), uid, gid, follow: false })
    }

    /// Creates the symlink `path` → `target`.
    pub fn symlink(&self, target: impl AsRef<Path>, path: impl AsRef<Path>) -> Result<(), CallError> {
        self.call::<f::Symlink>(&SymlinkArgs { target: path_bytes(target.as_ref()), path: path_bytes(path.as_ref()) })
    }

    /// Where a symlink points.
    pub fn read_link(&self, path: impl AsRef<Path>) -> Result<Vec<u8>, CallError> {
        self.call::<f::ReadLink>(&PathArgs { path: path_bytes(path.as_ref()) }).map(ByteBuf::into_vec)
    }

    /// `rename`.
    pub fn rename(&self, from: impl AsRef<Path>, to: impl AsRef<Path>) -> Result<(), CallError> {
        self.call::<f::Rename>(&RenameArgs { from: path_bytes(from.as_ref()), to: path_bytes(to.as_ref()) })
    }

    /// `rm -rf` (symlinks are removed, not followed); returns how many
    /// entries went. A missing path is not an error.
    pub fn remove_tree(&self, path: impl AsRef<Path>) -> Result<u64, CallError> {
        self.call::<f::RemoveTree>(&PathArgs { path: path_bytes(path.as_ref()) })
    }

    /// A quick inventory of the host (see [`f::FactsReply`]).
    pub fn facts(&self) -> Result<f::FactsReply, CallError> {
        self.call::<f::Facts>(&())
    }

    /// `du` of a path (one file system, symlinks not followed).
    pub fn disk_usage(&self, path: impl AsRef<Path>) -> Result<DiskUsageReply, CallError> {
        self.call::<f::DiskUsage>(&PathArgs { path: path_bytes(path.as_ref()) })
    }
}
