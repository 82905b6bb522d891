//! Built-in functions: one type per function, naming it and fixing its
//! argument and reply types for both halves.
//!
//! The master calls them through `Context::call::<F>` (or the typed helpers
//! on `Context`); the agent's dispatcher matches [`Function::NAME`].
//! Paths and command lines are bytes: Unix paths need not be UTF-8.

use alloc::string::String;
use alloc::vec::Vec;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// A function a context can run.
pub trait Function {
    /// Name on the wire.
    const NAME: &'static str;
    /// Argument type, postcard-encoded after the name.
    type Args: Serialize + DeserializeOwned;
    /// Reply type.
    type Reply: Serialize + DeserializeOwned;
    /// The most a reply may take once inflated: a compressed reply of a
    /// few KiB must not make the caller allocate the whole frame limit
    /// when the reply is a `()` or a stat (ARCHITECTURE.md, "Security").
    const MAX_REPLY: u32 = crate::proto::MAX_MESSAGE_SIZE;
    /// A user function's declaration hash
    /// ([`declare_function!`](crate::declare_function) sets it), sent with
    /// each call and checked by the agent; `None` (built-ins): not sent.
    const SIGNATURE: Option<u64> = None;
}

/// [`Function::MAX_REPLY`] of the functions whose replies have a small,
/// fixed shape (a unit, a number, a stat, a path).
pub const SMALL_REPLY: u32 = 64 * 1024;

macro_rules! function {
    ($(#[$doc:meta])* $ty:ident, $name:literal, $args:ty, $reply:ty) => {
        function!($(#[$doc])* $ty, $name, $args, $reply, max = crate::proto::MAX_MESSAGE_SIZE);
    };
    ($(#[$doc:meta])* $ty:ident, $name:literal, $args:ty, $reply:ty, small) => {
        function!($(#[$doc])* $ty, $name, $args, $reply, max = SMALL_REPLY);
    };
    ($(#[$doc:meta])* $ty:ident, $name:literal, $args:ty, $reply:ty, max = $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug)]
        pub struct $ty;
        impl Function for $ty {
            const NAME: &'static str = $name;
            type Args = $args;
            type Reply = $reply;
            const MAX_REPLY: u32 = $max;
        }
    };
}
/// For the built-ins declared beside their own types (`proto::sync`).
pub(crate) use function;

function!(
    /// Does nothing and replies: a round trip.
    Ping, "ping", (), (), small
);
function!(
    /// Who and where the agent is.
    Info, "info", (), InfoReply, small
);
function!(
    /// Runs a command to completion (output captured, or streamed when
    /// `stream_to` is set).
    Exec, "exec", ExecArgs, ExecReply
);
function!(
    /// Reads a whole file (bounded by the maximum message size).
    ReadFile, "read_file", PathArgs, ByteBuf
);
function!(
    /// Writes a whole file atomically (temp file + rename).
    WriteFile, "write_file", WriteFileArgs, (), small
);
function!(
    /// `lstat`/`stat` of a path.
    Stat, "stat", StatArgs, StatReply, small
);
function!(
    /// Removes a file, symlink or empty directory.
    Remove, "remove", PathArgs, (), small
);

/// Reply of [`Info`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InfoReply {
    /// Process id.
    pub pid: u32,
    /// Parent process id.
    pub ppid: u32,
    /// Real user id.
    pub uid: u32,
    /// Real group id.
    pub gid: u32,
    /// Effective user id.
    pub euid: u32,
    /// Effective group id.
    pub egid: u32,
    /// User name of the effective uid (from /etc/passwd, else `$USER`, else empty).
    pub user: String,
    /// Host name (uname nodename).
    pub hostname: String,
    /// Machine architecture (uname machine).
    pub arch: String,
    /// Kernel release (uname release).
    pub kernel: String,
    /// Version of the mito crate the agent was built from.
    pub agent_version: String,
    /// The agent's hash (hex sha256) as verified by stage0.
    pub agent_hash: String,
    /// Where the agent runs from (`/proc/self/exe`).
    pub exe: String,
    /// The agent's current directory.
    pub cwd: String,
}

/// What happens to a child's stdout and stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stdio {
    /// Collected and returned in the reply (or streamed, see `stream_to`).
    #[default]
    Capture,
    /// The child writes to the agent's own fd 1/2, whose lines reach the
    /// master as log records (mitogen's IoLogger behaviour for `os.system`).
    Log,
}

/// Arguments of [`Exec`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecArgs {
    /// Program and arguments; `argv[0]` is looked up in `PATH` when it has no `/`.
    pub argv: Vec<ByteBuf>,
    /// Variables to set (after `env_clear`).
    pub env: Vec<(ByteBuf, ByteBuf)>,
    /// Start from an empty environment instead of the agent's.
    pub env_clear: bool,
    /// Working directory; the agent's when `None`.
    pub cwd: Option<ByteBuf>,
    /// Bytes written to the child's stdin, which is then closed.
    pub stdin: ByteBuf,
    /// Where output goes.
    pub stdio: Stdio,
    /// When set, output chunks go as [`ExecOutput`] messages to this handle
    /// in the caller as they arrive, instead of into the reply. It also
    /// names the process for [`ExecControl`] messages.
    pub stream_to: Option<u32>,
    /// Output credit in bytes when streaming: the agent stops reading the
    /// command's output while this many streamed bytes are unacknowledged
    /// ([`ExecOp::Ack`]), so a slow reader holds the command back instead
    /// of filling memory on every hop. Each frame costs
    /// [`OUTPUT_FRAME_COST`] more than its bytes. 0: no limit. The master
    /// holds an agent to it (output beyond it is a protocol violation).
    pub window: u32,
    /// When set, stdin stays open after `stdin` for [`ExecOp::Stdin`] chunks,
    /// and the agent reports each batch it wrote to the command as a `u32`
    /// byte count to this handle (the sender's credit).
    pub stdin_acks_to: Option<u32>,
    /// Run on a new pseudo-terminal of `(rows, cols)` (stdin, stdout and
    /// stderr all on it; output arrives as fd 1). The command is a session
    /// leader with the terminal as its controlling tty.
    pub pty: Option<(u16, u16)>,
    /// Kill the command's process group after this long: SIGTERM, then
    /// SIGKILL 5 s later. The reply says `timed_out`.
    pub timeout_ms: Option<u64>,
    /// mitogen's hybrid tty: stdin and stdout stay pipes, stderr is a new
    /// pty that is also the command's controlling terminal (a new session),
    /// so a password prompt (sudo, su, doas) appears there, as fd 2 output,
    /// and [`ExecOp::Answer`] types into it. Ignored with `pty`.
    pub tty: bool,
    /// Start this agent's own executable (copied into a memfd) inside a
    /// container or a chroot instead of `argv[0]` (which is then only the
    /// new process's name): the setns and chroot methods behind a hop.
    /// `argv` is the new agent's (`mito-agent HASH ID`); stdin, stdout and
    /// stderr are pipes as with `Stdio::Capture`; `pty`, `tty` and `cwd`
    /// do not apply. The environment is the target process's (setns) or
    /// the agent's (chroot), with `env` set on top.
    pub enter: Option<Enter>,
}

/// Where [`ExecArgs::enter`] starts the agent (`core::nsenter`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enter {
    /// Enter this process's namespaces (those that differ from ours), its
    /// root and working directory, and take its uid, gid, groups,
    /// capabilities, environment and cgroup.
    pub pid: Option<u32>,
    /// Without `pid`: chroot to this directory (and `/` as the working
    /// directory).
    pub root: Option<ByteBuf>,
    /// With `root`: run as this user (the master resolved a name in the
    /// root's `/etc/passwd` and `/etc/group`); else as the caller.
    pub user: Option<Ids>,
}

/// A uid, gid and supplementary groups.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ids {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

/// A message to a running streamed command, sent to
/// [`crate::proto::handles::EXEC_CONTROL`] of its context.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecControl {
    /// The command's `stream_to` handle.
    pub stream: u32,
    /// What to do.
    pub op: ExecOp,
}

/// What an [`ExecControl`] asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecOp {
    /// More bytes for stdin (needs `stdin_acks_to`).
    Stdin(ByteBuf),
    /// End of stdin (on a pty: the EOF character).
    CloseStdin,
    /// Send this signal to the command's process group.
    Signal(i32),
    /// The caller consumed this many streamed output bytes.
    Ack(u32),
    /// New pty size `(rows, cols)`.
    Resize(u16, u16),
    /// Type these bytes (a password and newline) into the command's tty
    /// (`tty` or `pty`), once the program reading it has turned echo off.
    Answer(ByteBuf),
    /// Append this agent's own executable (`/proc/self/exe`) to the
    /// command's stdin: stage0 of a context behind this one asked for the
    /// raw agent of this agent's architecture and hash.
    SendSelf,
    /// The command is a bootstrapped agent: its stdin/stdout become the
    /// stream to child context `id` of this one, routed from now on; stderr
    /// and the exit are still reported as for any streamed command.
    Adopt(u32),
    /// Type a password (and newline) into the prompt of the tool the
    /// command runs (sudo, su, doas), only if that tool is still at its
    /// prompt: the agent reads the command's process in /proc right before
    /// typing (`core::tool_process`, rule 3 of `connect::prompt`) and types
    /// nothing once it has a child, has exited or goes on reaping. This
    /// is how the master answers a tool behind a hop (`master::via`).
    /// The agent replies a [`ToolState`] to the message's `reply_to`.
    /// Added after `Adopt`, so every other message keeps its bytes; still
    /// `PROTOCOL_VERSION` went to 5 with it, because a custom agent built
    /// from an older mito would drop it as malformed (nothing typed, the
    /// connect failing only at its deadline): the master refuses such an
    /// agent at its hello instead, with an error naming both versions.
    AnswerTool {
        /// The password and a newline.
        data: ByteBuf,
        /// Where the tool reads it: its stdin (su: PAM's conversation)
        /// instead of its tty (as [`ExecOp::Answer`], once echo is off).
        stdin: bool,
        /// Type it also when /proc does not show the process
        /// ([`ToolState::Unseen`]; `hidepid`): for a tool whose prompt
        /// only it can print (sudo's secret), not for su's public text.
        if_unseen: bool,
    },
    /// Append the resource `sha256` (`size` bytes) to the command's stdin:
    /// stage0 of a context behind this one asked for an agent this agent
    /// is not (another architecture, or the gz form). The master granted
    /// it to this agent; it comes from this agent's importer cache, else
    /// from `parent` (which caches it in turn), so it crosses each link
    /// once whatever the number of such contexts (ARCHITECTURE.md, "The
    /// importer"). Added last, so every other message keeps its bytes.
    SendResource {
        /// The resource's hash.
        sha256: ByteBuf,
        /// Its size.
        size: u64,
        /// This agent's parent (a hop's id, or the master's).
        parent: u32,
    },
}

/// What the agent saw of a tool's process right before it would type an
/// [`ExecOp::AnswerTool`] (and what the master sees of a tool it runs
/// itself): the tools start the target's side in a child only once
/// authenticated, so anything but `AtItsPrompt` means the prompt on the
/// tty is not the tool's own. The answer was typed for `AtItsPrompt`, and
/// for `Unseen` when `if_unseen` allowed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToolState {
    /// Alive, no child, and it has reaped nothing, or nothing more while
    /// watched: not yet authenticated.
    AtItsPrompt,
    /// Some thread of it has a child.
    HasChild,
    /// It has exited (or the command has ended).
    Exited,
    /// It had reaped a process and reaped, started or exited again while
    /// watched.
    Reaping,
    /// /proc does not show it (not mounted, `hidepid`).
    Unseen,
}

/// Output credit a streamed frame costs beyond its bytes: the agent counts
/// `bytes + OUTPUT_FRAME_COST` against a command's window and the master
/// acknowledges the same, so a window bounds the frames as well as the
/// bytes: a command that writes a byte at a time is held back after
/// window / 65 frames, not after `window` of them (each costs the master a
/// queue slot and an allocation, far more than its byte).
pub const OUTPUT_FRAME_COST: u32 = 64;

/// Most output the agent reads from a command at once (one frame's data).
/// It reads only while the credit lasts, so what a command has in flight
/// exceeds its window by less than one read (plus its frame cost).
pub const OUTPUT_READ_MAX: usize = 64 * 1024;

/// One chunk of streamed output of [`Exec`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecOutput {
    /// 1 for stdout, 2 for stderr.
    pub fd: u8,
    /// The bytes, as read.
    pub data: ByteBuf,
}

/// Reply of [`Exec`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecReply {
    /// How the command ended (on the wire: its two fields, as they were
    /// before this was a type of its own).
    pub status: super::ExitStatus,
    /// The command outlived `timeout_ms` and was killed.
    pub timed_out: bool,
    /// Captured stdout (empty when streamed or logged).
    pub stdout: ByteBuf,
    /// Captured stderr (empty when streamed or logged).
    pub stderr: ByteBuf,
}

/// A single path argument.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathArgs {
    /// The path (bytes).
    pub path: ByteBuf,
}

/// Arguments of [`WriteFile`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteFileArgs {
    /// Destination path.
    pub path: ByteBuf,
    /// Whole content.
    pub data: ByteBuf,
    /// Permission bits; 0o644 (minus umask) when `None`, or the existing
    /// file's mode when it exists.
    pub mode: Option<u32>,
}

/// Arguments of [`Stat`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatArgs {
    /// The path.
    pub path: ByteBuf,
    /// Follow a final symlink (`stat`) or not (`lstat`).
    pub follow: bool,
}

/// Type of a file system object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Anything else (device, fifo, socket).
    Other,
}

/// Reply of [`Stat`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatReply {
    /// Object type.
    pub kind: FileKind,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Size in bytes.
    pub size: u64,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Nanoseconds part of the modification time.
    pub mtime_nsec: u32,
}

// ---- streamed file transfer ------------------------------------------------
//
// No streaming protocol of its own: a transfer is a sequence of pipelined
// calls on a file the agent holds open. The master keeps a window of chunk
// calls in flight; that is the flow control. Both ends hash what passes and
// the writer commits (rename into place) only when the digests agree.

function!(
    /// Opens a file for a streamed read; chunks with [`FileRead`].
    FileOpenRead, "file_open_read", OpenReadArgs, FileOpened, small
);
function!(
    /// Reads the next chunk (fewer bytes at end of file, none after it).
    FileRead, "file_read", FileReadArgs, ByteBuf, max = MAX_FILE_READ
);
function!(
    /// Creates a temp file beside `path` for a streamed write.
    FileOpenWrite, "file_open_write", OpenWriteArgs, FileOpened, small
);
function!(
    /// Appends a chunk to a file opened for writing.
    FileWrite, "file_write", FileWriteArgs, (), small
);
function!(
    /// Ends a transfer: a write commits (checksum, mode, mtime, rename) or is
    /// discarded; a read reports what it read.
    FileClose, "file_close", FileCloseArgs, FileClosed, small
);
function!(
    /// SHA-256 of a file.
    Sha256, "sha256", PathArgs, ByteBuf
);
function!(
    /// A file's digest by the algorithm asked (the idempotent copy's
    /// comparison: the same hash as the transfer would use).
    FileHash, "file_hash", HashArgs, ByteBuf
);

/// The digest both ends of a transfer compute and compare. XXH3-128 by
/// default (integrity against corruption and change, several times the
/// speed of SHA-256); SHA-256 where a user asks for a cryptographic one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HashKind {
    /// XXH3-128 (xxHash), 16 bytes.
    #[default]
    Xxh3_128,
    /// SHA-256, 32 bytes.
    Sha256,
}

/// Arguments of [`FileOpenRead`]: the file, and what its reads hash
/// ([`FileClosed::digest`]); the same as [`FileHash`]'s.
pub type OpenReadArgs = HashArgs;

/// Arguments of [`FileHash`] and [`FileOpenRead`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashArgs {
    /// The file.
    pub path: ByteBuf,
    /// The algorithm.
    pub hash: HashKind,
}

/// Reply of [`FileOpenRead`] and [`FileOpenWrite`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileOpened {
    /// Handle for the following calls.
    pub id: u32,
    /// Size at open (reads), 0 for writes.
    pub size: u64,
    /// Permission bits (reads).
    pub mode: u32,
    /// Modification time, seconds (reads).
    pub mtime: i64,
    /// Nanoseconds of the modification time (reads).
    pub mtime_nsec: u32,
    /// Owner and group (reads).
    pub owner: (u32, u32),
}

/// Arguments of [`FileOpenWrite`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenWriteArgs {
    /// Destination.
    pub path: ByteBuf,
    /// The transfer's id, chosen by the caller so that one relayed
    /// [`FileWrite`] fits every receiver (see `handles::RELAY`), or 0 for
    /// one the agent picks. Caller ids have the top bit set.
    pub id: u32,
    /// What the writes hash ([`Commit::digest`]).
    pub hash: HashKind,
}

/// [`Function::MAX_REPLY`] of [`FileRead`]: a chunk of at most 1 MiB
/// (the most a transfer asks for) and its length prefix. A compressed
/// reply inflates no further, so a hostile target's small "bomb" costs the
/// master a chunk, not the frame limit.
pub const MAX_FILE_READ: u32 = (1 << 20) + 16;

/// Arguments of [`FileRead`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileReadArgs {
    /// From [`FileOpened::id`].
    pub id: u32,
    /// Largest chunk wanted (at most 1 MiB: see [`MAX_FILE_READ`]).
    pub len: u32,
    /// Deflate the reply when that saves an eighth (`get --compress`): the
    /// reply frame is then flagged [`crate::proto::FLAG_COMPRESSED`].
    pub compress: bool,
}

/// Arguments of [`FileWrite`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileWriteArgs {
    /// From [`FileOpened::id`].
    pub id: u32,
    /// The next bytes.
    pub data: ByteBuf,
}

/// [`FileWriteArgs`] borrowing its bytes from the received message (the
/// same wire form): the agent writes a chunk without copying it first.
#[derive(Debug, Deserialize)]
pub struct FileWriteRef<'a> {
    /// From [`FileOpened::id`].
    pub id: u32,
    /// The next bytes.
    pub data: &'a [u8],
}

/// How a written file is put in place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    /// Digest of everything sent (the algorithm the transfer was opened
    /// with); the file is renamed into place only if the agent hashed the
    /// same.
    pub digest: ByteBuf,
    /// Permission bits (default 0o644).
    pub mode: Option<u32>,
    /// Modification time (seconds, nanoseconds).
    pub mtime: Option<(i64, u32)>,
    /// Owner and group, applied only where the agent runs as root (as
    /// `rsync -a` and `cp -p` do).
    pub owner: Option<(u32, u32)>,
}

/// Arguments of [`FileClose`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileCloseArgs {
    /// From [`FileOpened::id`].
    pub id: u32,
    /// For a write: commit it (`Some`) or throw it away (`None`).
    pub commit: Option<Commit>,
}

/// Reply of [`FileClose`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileClosed {
    /// Bytes that passed.
    pub size: u64,
    /// Their digest (the algorithm the transfer was opened with).
    pub digest: ByteBuf,
}

// ---- file system functions -------------------------------------------------

function!(
    /// Lists a directory: each entry with its `lstat`.
    ListDir, "list_dir", PathArgs, Vec<DirEntry>
);
function!(
    /// `mkdir -p` with a mode for the directories it creates.
    MakeDirs, "make_dirs", ModeArgs, (), small
);
function!(
    /// `chmod`.
    Chmod, "chmod", ModeArgs, (), small
);
function!(
    /// `chown` (`lchown` when `follow` is false); `None` keeps that id.
    Chown, "chown", ChownArgs, (), small
);
function!(
    /// Creates a symlink `path` pointing at `target`.
    Symlink, "symlink", SymlinkArgs, (), small
);
function!(
    /// Reads a symlink.
    ReadLink, "read_link", PathArgs, ByteBuf, small
);
function!(
    /// `rename`, atomic within a file system.
    Rename, "rename", RenameArgs, (), small
);
function!(
    /// `rm -rf`: removes a tree without following symlinks; replies how
    /// many entries went. A missing path is not an error.
    RemoveTree, "remove_tree", PathArgs, u64, small
);
function!(
    /// `du`: allocated bytes, files and directories under a path (symlinks
    /// not followed, one file system).
    DiskUsage, "disk_usage", PathArgs, DiskUsageReply, small
);

/// One entry of [`ListDir`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    /// File name (bytes).
    pub name: ByteBuf,
    /// Its `lstat`.
    pub stat: StatReply,
}

/// A path and a mode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModeArgs {
    /// The path.
    pub path: ByteBuf,
    /// Permission bits.
    pub mode: u32,
}

/// Arguments of [`Chown`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChownArgs {
    /// The path.
    pub path: ByteBuf,
    /// New owner, or keep.
    pub uid: Option<u32>,
    /// New group, or keep.
    pub gid: Option<u32>,
    /// Follow a final symlink.
    pub follow: bool,
}

/// Arguments of [`Symlink`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SymlinkArgs {
    /// What the link points at.
    pub target: ByteBuf,
    /// The link to create.
    pub path: ByteBuf,
}

/// Arguments of [`Rename`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenameArgs {
    /// Old path.
    pub from: ByteBuf,
    /// New path.
    pub to: ByteBuf,
}

/// Reply of [`DiskUsage`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskUsageReply {
    /// Allocated bytes (`st_blocks * 512`).
    pub bytes: u64,
    /// Non-directories.
    pub files: u64,
    /// Directories (the root included).
    pub dirs: u64,
}

// ---- facts -------------------------------------------------------------------

function!(
    /// What Ansible's `setup` gathers most often, in one call.
    Facts, "facts", (), FactsReply
);

/// Reply of [`Facts`]. Raw values (the agent formats nothing): addresses
/// as bytes, sizes in bytes or KiB as named.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FactsReply {
    /// `/etc/os-release` as (key, value) pairs, quotes removed.
    pub os_release: Vec<(String, String)>,
    /// uname: the kernel and the machine.
    pub kernel: KernelFact,
    /// Host name.
    pub hostname: String,
    /// Fully qualified name from /etc/hosts (no DNS), else the host name.
    pub fqdn: String,
    /// CPUs this process may run on.
    pub cpus: u32,
    /// First "model name" of /proc/cpuinfo.
    pub cpu_model: String,
    /// Memory and swap from /proc/meminfo, in KiB.
    pub memory_kib: MemoryFact,
    /// Mounted file systems with storage.
    pub mounts: Vec<MountFact>,
    /// Network interfaces.
    pub interfaces: Vec<InterfaceFact>,
    /// Accounts from /etc/passwd.
    pub users: Vec<UserFact>,
    /// Boot time, seconds since the epoch.
    pub boot_time: u64,
    /// Container runtime, if inside one (docker, podman, lxc, kubernetes, systemd-nspawn, container).
    pub container: Option<String>,
    /// Hypervisor or machine vendor hint (DMI product / CPU flag).
    pub virtualization: Option<String>,
}

// The structs below replace tuples of the same fields in the same order:
// postcard writes a struct as its fields one after another, exactly as it
// writes a tuple, so the wire encoding did not change.

/// The kernel and machine, as uname(2) gives them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelFact {
    /// Operating system name (`sysname`: "Linux").
    pub name: String,
    /// Kernel release (`release`, e.g. "6.1.0-18-amd64").
    pub release: String,
    /// Kernel build (`version`, e.g. "#1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1").
    pub version: String,
    /// Hardware name (`machine`, e.g. "x86_64").
    pub machine: String,
}

/// Memory and swap in KiB, from /proc/meminfo (0 when a line is missing).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryFact {
    /// `MemTotal`: usable RAM.
    pub total: u64,
    /// `MemAvailable`: what new programs could get without swapping.
    pub available: u64,
    /// `SwapTotal`.
    pub swap_total: u64,
    /// `SwapFree`.
    pub swap_free: u64,
}

/// One mount.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountFact {
    /// Source device.
    pub device: String,
    /// Mount point.
    pub mount_point: String,
    /// File system type.
    pub fstype: String,
    /// Mount options.
    pub options: String,
    /// Size in bytes (`f_blocks * f_frsize`).
    pub size_bytes: u64,
    /// Free bytes, those reserved for root included (`f_bfree`).
    pub free_bytes: u64,
    /// Bytes free for unprivileged users (`f_bavail`).
    pub available_bytes: u64,
}

/// One network interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceFact {
    /// Name.
    pub name: String,
    /// Up?
    pub up: bool,
    /// Link-layer address.
    pub mac: Option<[u8; 6]>,
    /// IPv4 addresses.
    pub ipv4: Vec<[u8; 4]>,
    /// IPv6 addresses.
    pub ipv6: Vec<[u8; 16]>,
}

/// One account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserFact {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Home directory.
    pub home: String,
    /// Login shell.
    pub shell: String,
}
