//! The command line, as clap parses it: global options in [`Cli`], one
//! argument struct per verb. Nothing here reads the environment, a file or
//! the network; `settings` and `secrets` turn these into what connecting
//! needs.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Targets, patterns and exit statuses, after the options in `--help`.
const AFTER_HELP: &str = "\
Targets: local, ssh://[user@]host[:port], sudo[:USER], su[:USER], doas[:USER],
setns:PID|CONTAINER, chroot:/PATH, a container through its engine's CLI
(docker:NAME, podman:NAME, nerdctl:NAME, kubectl:[NS/]POD[/CONTAINER], lxc:NAME,
incus:NAME), or hops joined by commas (ssh://web1,sudo:root).
With an inventory (-i FILE|LIST, $MITO_INVENTORY, ./inventory) a target may
be a host pattern: all, a group or host, a glob (web*), a:b (union), a:&b
(intersection), a:!b (exclusion); run, ping, facts, put (SRC PATTERN:/PATH)
and get (PATTERN:/PATH DIR, into DIR/<host>/) then run on every host it
matches (-f N at a time).

Exit status: one target: run exits with the command's code (128+N if killed
by signal N, 124 after --timeout); 0 for other verbs; 255 mito failed
(connect, call, lost context); 141 stdout's reader went away; 2 a bad
command line. A host pattern: 0 every host ok; 3 some command failed and
every host was reached; 4 some host was unreachable; 255 mito failed (a bad
inventory).";

#[derive(Parser, Debug)]
#[command(
    name = "mito",
    version,
    about = "Run commands and copy files in contexts (local, ssh, sudo/su/doas, and chains of them) without installing anything there",
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// More output: -v debug, -vv trace.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Connect timeout in seconds.
    #[arg(long, default_value_t = 30.0, global = true, value_parser = seconds)]
    pub connect_timeout: f64,
    /// ssh: private key file (`ssh -i`), as Ansible's `--private-key`.
    #[arg(long = "private-key", visible_alias = "key-file", global = true, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// ssh: extra option, as for `ssh -o` (repeatable).
    #[arg(short = 'o', long = "ssh-option", global = true, value_name = "KEY=VALUE")]
    pub ssh_options: Vec<String>,
    /// ssh: config file (`ssh -F`).
    #[arg(short = 'F', long, global = true, value_name = "FILE")]
    pub ssh_config: Option<PathBuf>,
    /// ssh: keep a shared connection (OpenSSH ControlMaster) to each host
    /// for SECS after its last use, so the next mito run to it skips the
    /// handshake; 0 does not share. Your ssh config's ControlMaster or
    /// ControlPath, if it sets one, is used instead. `mito ssh-close HOST`
    /// ends one now.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u32).range(0..=31_536_000))]
    pub control_persist: u32,
    /// ssh: do not share connections (as --control-persist 0).
    #[arg(long, global = true)]
    pub no_control_master: bool,
    /// ssh: the directory of the shared connections' sockets (as
    /// Ansible's control_path_dir; default $XDG_RUNTIME_DIR/mito/ssh, else
    /// ~/.cache/mito/ssh). Created 0700; not used unless it is yours and
    /// private.
    #[arg(long, global = true, value_name = "DIR")]
    pub control_path_dir: Option<PathBuf>,
    /// ssh: host key policy.
    #[arg(long, global = true, value_enum, default_value_t = HostKeys::Enforce)]
    pub check_host_keys: HostKeys,
    /// ssh: take the login password from this environment variable (which
    /// mito then removes from its environment: nothing it starts inherits it).
    #[arg(long, global = true, value_name = "VAR")]
    pub password_env: Option<String>,
    /// ssh: take the login password from the first line of this file.
    #[arg(long, global = true, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// ssh: ask for the login password on the terminal.
    #[arg(long, global = true)]
    pub ask_password: bool,
    /// sudo/su/doas: take a password from this environment variable (which
    /// mito then removes from its environment). VAR alone is for the first
    /// sudo/su/doas hop of each target only; HOP=VAR for the hops written
    /// HOP (`sudo:root=ROOT_PW`, `sudo` meaning `sudo:root`) or for the hop
    /// ending that chain (`ssh://web1,sudo:root=PW1`). Repeatable; a hop
    /// nothing names gets no password.
    #[arg(long, global = true, value_name = "[HOP=]VAR")]
    pub become_pass_env: Vec<String>,
    /// sudo/su/doas: take a password from the first line of this file; which
    /// hops as for --become-pass-env. Repeatable.
    #[arg(long, global = true, value_name = "[HOP=]FILE")]
    pub become_pass_file: Vec<String>,
    /// sudo/su/doas: ask for a password on the terminal, when that hop is
    /// reached: for the first sudo/su/doas hop of each target, or with
    /// =HOP for the hops so written (as for --become-pass-env). Repeatable.
    #[arg(long, global = true, value_name = "HOP", num_args = 0..=1, require_equals = true, default_missing_value = "")]
    pub ask_become_pass: Vec<String>,
    /// sudo: keep the environment (`sudo -E`). Not with --login: sudo
    /// refuses `-E` together with `-i`.
    #[arg(long, global = true, conflicts_with = "login")]
    pub preserve_env: bool,
    /// sudo/su: run through the target user's login shell (`sudo -i`, `su -l`).
    #[arg(long, global = true)]
    pub login: bool,
    /// An Ansible inventory: an INI or YAML file, a directory of them, or
    /// a comma list of hosts (`'web1,web2,'`). Repeatable; default
    /// $MITO_INVENTORY, else ./inventory if it exists. A target that is a
    /// host pattern of the inventory (`all`, `web*`, `web:&prod`) runs on
    /// every host it matches; any other target is a plain one, as without
    /// an inventory. `-i` as in Ansible (`-I` is the same).
    #[arg(short = 'i', visible_short_alias = 'I', long = "inventory", global = true, value_name = "FILE|LIST")]
    pub inventory: Vec<String>,
    #[command(subcommand)]
    pub command: Command,
}

/// What a run on a host pattern takes besides its verb's own options.
#[derive(Args, Debug, Clone)]
pub struct FleetArgs {
    /// Only the hosts this pattern also matches (`@FILE`: the host names
    /// in FILE, one a line).
    #[arg(short = 'l', long, value_name = "PATTERN")]
    pub limit: Option<String>,
    /// Print the hosts the pattern matches, one a line, and exit.
    #[arg(long)]
    pub list_hosts: bool,
    /// How many hosts are connected and run at a time.
    #[arg(short = 'f', long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub forks: u32,
    /// Become on every host whose inventory does not say (as
    /// `ansible_become=true`): a sudo/su/doas hop after its connection.
    #[arg(short = 'b', long = "become")]
    pub become_: bool,
    /// With --become: the user (default root).
    #[arg(long, value_name = "USER", requires = "become_")]
    pub become_user: Option<String>,
    /// With --become: sudo, su or doas (default sudo).
    #[arg(long, value_name = "METHOD", requires = "become_", value_parser = ["sudo", "su", "doas"])]
    pub become_method: Option<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum HostKeys {
    /// Unknown or changed host keys fail.
    Enforce,
    /// Unknown keys are recorded, changed keys fail.
    AcceptNew,
    /// No host key checking.
    Ignore,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a command in a context, streaming its output; exits with its code.
    /// On a host pattern: on every host it matches, output at the end.
    #[command(after_help = AFTER_HELP)]
    Run(RunArgs),
    /// Connect and measure round trips.
    Ping(PingArgs),
    /// Copy a local file (or with -r a tree) to contexts: `mito put SRC TARGET:/PATH...`.
    /// One file to several targets with the same path is sent once per
    /// link: targets behind a shared hop get it relayed by that hop.
    /// `mito put SRC PATTERN:/PATH`: to every host of the pattern.
    Put(PutArgs),
    /// Copy a file (or with -r a tree) from a context: `mito get TARGET:/PATH DST`.
    /// The target is not trusted: a name that is not a single file name is
    /// refused, nothing is written outside DST or through a symlink, and the
    /// copy keeps mode (setuid/setgid dropped) and mtime but is yours.
    /// `mito get PATTERN:/PATH DIR`: from every host of the pattern, each
    /// into DIR/<host>/.
    Get(GetArgs),
    /// Push a local file (or with -r a tree) to a context, sending only
    /// what changed: `mito sync [-r] SRC TARGET:/DST [--delete]`.
    #[command(after_help = SYNC_HELP)]
    Sync(SyncArgs),
    /// Host facts: OS, kernel, CPUs, memory, mounts, interfaces, users, …
    Facts(FactsArgs),
    /// Who and where the agent is.
    Info(InfoArgs),
    /// End the shared ssh connections (ControlMaster) that mito keeps to
    /// these hosts (`ssh -O exit`), their sessions too.
    SshClose(SshCloseArgs),
    /// Print a shell completion script: `mito completions bash >
    /// /etc/bash_completion.d/mito`, `mito completions zsh > ~/.zfunc/_mito`
    /// (with `fpath+=~/.zfunc`), `mito completions fish >
    /// ~/.config/fish/completions/mito.fish`.
    Completions(CompletionsArgs),
    /// Build your own agent (a static musl binary calling
    /// `mito::agent::serve`): `cargo build --release --target
    /// <arch>-unknown-linux-musl` with these options, then check the file
    /// as the master will (static, right architecture) and print its path,
    /// sha256 and sizes.
    BuildAgent(BuildAgentArgs),
}

// The argument structs carry no doc comment of their own: clap would take
// it for the verb's help, which the variant's doc comment above gives.

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Where: `local`, `ssh://[user@]host[:port]`, `sudo:USER`, `su:USER`, `doas:USER`, `setns:PID` or `setns:CONTAINER` (inside that process's container, or a podman/docker container's; root), `chroot:/PATH`, an engine's container (`docker:NAME`, `podman:NAME`, `nerdctl:NAME`, `kubectl:[NS/]POD[/CONTAINER]`, `lxc:NAME`, `incus:NAME`), hops joined by commas (`ssh://web1,sudo:root`), or a host pattern of the inventory (`all`, `web*`, `web:&prod:!web3`).
    pub target: String,
    /// Do not forward this process's stdin to the command (as `ssh -n`).
    #[arg(short = 'n', long)]
    pub no_stdin: bool,
    /// Run the command on a pseudo-terminal (as `ssh -t`): one output
    /// stream, ^C and window size go to it, the local terminal is raw.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Stop the command after SECS seconds (SIGTERM, SIGKILL 5 s later); exit status 124.
    #[arg(long, value_name = "SECS", value_parser = seconds)]
    pub timeout: Option<f64>,
    /// Set a variable in the command's environment (repeatable).
    #[arg(short = 'e', long = "env", value_name = "VAR=VALUE")]
    pub env: Vec<String>,
    /// Working directory of the command.
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,
    /// On a host pattern: one JSON object a line per host (host, status,
    /// exit_code, signal, stdout, stderr, duration_ms, error, error_kind).
    #[arg(long)]
    pub json: bool,
    /// On a host pattern: print the commands' lines as they come, each
    /// prefixed `HOST | ` (stdout's on stdout, stderr's on stderr); the
    /// end gives each host's status only.
    #[arg(long, conflicts_with = "json")]
    pub stream: bool,
    #[command(flatten)]
    pub fleet: FleetArgs,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required_unless_present = "list_hosts")]
    pub argv: Vec<String>,
}

#[derive(Args, Debug)]
pub struct PingArgs {
    /// Where: `local`, `ssh://[user@]host[:port]`, `sudo:USER`, `su:USER`, `doas:USER`, `setns:PID` or `setns:CONTAINER` (inside that process's container, or a podman/docker container's; root), `chroot:/PATH`, an engine's container (`docker:NAME`, `podman:NAME`, `nerdctl:NAME`, `kubectl:[NS/]POD[/CONTAINER]`, `lxc:NAME`, `incus:NAME`), hops joined by commas (`ssh://web1,sudo:root`), or a host pattern of the inventory.
    pub target: String,
    /// Number of round trips.
    #[arg(short, long, default_value_t = 1)]
    pub count: u32,
    /// On a host pattern: one JSON object a line per host.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub fleet: FleetArgs,
}

/// What `put` and `get` share: whether to compare first, compress, and
/// which digest (one target or a pattern alike).
#[derive(Args, Debug)]
pub struct CopyFlags {
    /// Copy even a file the destination already holds (by default one of
    /// the same size, mtime, mode and digest is left alone and reported
    /// `unchanged`, as Ansible's copy says `changed: false`).
    #[arg(long)]
    pub force: bool,
    /// Deflate each chunk that shrinks on its way (slow links,
    /// compressible files; a chunk that does not shrink goes as it is,
    /// and the receiver inflates no more than a chunk).
    #[arg(long)]
    pub compress: bool,
    /// The digest both ends compute and compare (and the unchanged check).
    #[arg(long, value_enum, default_value_t)]
    pub checksum: super::copy::Checksum,
}

impl CopyFlags {
    /// The library's options for these flags.
    pub fn options(&self) -> mito::CopyOptions {
        mito::CopyOptions { force: self.force, compress: self.compress, checksum: self.checksum.into() }
    }
}

#[derive(Args, Debug)]
pub struct PutArgs {
    /// Copy directories recursively (DEST becomes the copy of SRC, as `cp -rT`).
    #[arg(short = 'r', long)]
    pub recursive: bool,
    #[command(flatten)]
    pub copy: CopyFlags,
    /// Local file or directory.
    pub src: PathBuf,
    /// `TARGET:/absolute/path`, e.g. `ssh://web1:/etc/motd`, `ssh://web1,sudo:root:/etc/x`;
    /// or one `PATTERN:/absolute/path`: to every host of the inventory it matches.
    #[arg(required = true, num_args = 1..)]
    pub dest: Vec<String>,
    /// On a host pattern: one JSON object a line per host.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub fleet: FleetArgs,
}

const SYNC_HELP: &str = "\
How: one listing call returns the whole destination tree; a file whose
size and mtime equal the destination's is skipped unread (rsync's quick
check; `put` hashes both ends instead). A changed file of 64 KiB or more
is sent as a delta: the target sends its old file's block signatures
(rolling checksum + XXH3-128), mito sends copy-block ops and the bytes
that differ, the target rebuilds into a temp file, checks the whole
file's XXH3-128 and renames it into place (old or new, never partial).
Modes and mtimes are kept; symlinks are copied as symlinks; devices,
fifos and sockets are skipped. --delete removes only below DST, a
symlink there as a link. Prints `changed`/`unchanged` per file and a
summary (files checked, changed, bytes sent vs file bytes).
Exit status: 0 done; 23 when some files failed (each printed as
`failed PATH: reason` on stderr) and the rest was synced; 255 when the
sync could not go on (the target lost, a hostile listing).";

#[derive(Args, Debug)]
pub struct SyncArgs {
    /// Sync directories recursively (DST becomes the copy of SRC, as
    /// `rsync -a SRC/ DST` or `cp -rT`).
    #[arg(short = 'r', long)]
    pub recursive: bool,
    /// Remove what DST has and SRC lacks (only below DST; a symlink is
    /// removed as a link, never followed).
    #[arg(long)]
    pub delete: bool,
    /// Print the summary only, not a line per file.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Local file or directory.
    pub src: PathBuf,
    /// `TARGET:/absolute/path`, e.g. `local:/srv/www`, `ssh://web1:/srv/www`.
    pub dest: String,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    /// Copy directories recursively (DST becomes the copy of the source, as `cp -rT`).
    #[arg(short = 'r', long)]
    pub recursive: bool,
    /// Keep the target's owners and setuid/setgid bits (applied only
    /// when mito runs as root), as `rsync -a` as root does.
    #[arg(long)]
    pub preserve_owner: bool,
    #[command(flatten)]
    pub copy: CopyFlags,
    /// `TARGET:/absolute/path`, or `PATTERN:/absolute/path`: from every
    /// host of the inventory it matches, each into `DEST/<host>/`.
    pub src: String,
    /// Local destination file (a directory for a host pattern).
    pub dest: PathBuf,
    /// On a host pattern: one JSON object a line per host.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub fleet: FleetArgs,
}

#[derive(Args, Debug)]
pub struct FactsArgs {
    /// Where (as for `run`).
    pub target: String,
    /// Machine-readable output (on a host pattern: one object a line per host).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub fleet: FleetArgs,
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Where: `local`, `ssh://[user@]host[:port]`, `sudo:USER`, `su:USER`, `doas:USER`, `setns:PID` or `setns:CONTAINER` (inside that process's container, or a podman/docker container's; root), `chroot:/PATH`, an engine's container (`docker:NAME`, `podman:NAME`, `nerdctl:NAME`, `kubectl:[NS/]POD[/CONTAINER]`, `lxc:NAME`, `incus:NAME`), or hops joined by commas (`ssh://web1,sudo:root`).
    pub target: String,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub struct SshCloseArgs {
    /// `ssh://[user@]host[:port]` or `[user@]host[:port]`, as they were
    /// connected (or a host pattern of the inventory: its ssh hosts).
    #[arg(required = true, num_args = 1..)]
    pub hosts: Vec<String>,
}

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["bin", "example"]))]
pub struct BuildAgentArgs {
    /// The package's Cargo.toml (as for cargo; default: found from the
    /// current directory).
    #[arg(long, value_name = "PATH")]
    pub manifest_path: Option<PathBuf>,
    /// Build this binary of the package.
    #[arg(long, value_name = "NAME")]
    pub bin: Option<String>,
    /// Build this example of the package.
    #[arg(long, value_name = "NAME")]
    pub example: Option<String>,
    /// Features to enable (as for cargo; the agent needs mito's `agent`
    /// and `std`).
    #[arg(long, value_name = "FEATURES")]
    pub features: Option<String>,
    /// Do not enable the package's default features.
    #[arg(long)]
    pub no_default_features: bool,
    /// The architecture to build for (aarch64 links with rustup's
    /// `rust-lld`).
    #[arg(long, value_enum, default_value_t = AgentTarget::X86_64)]
    pub target: AgentTarget,
    /// cargo's target directory (as `cargo --target-dir`).
    #[arg(long, value_name = "DIR")]
    pub target_dir: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// The targets an agent is built for: static musl, the architectures the
/// master uploads to.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentTarget {
    /// Also spelled x86_64.
    #[value(name = "x86_64-unknown-linux-musl", alias = "x86_64")]
    X86_64,
    /// Also spelled aarch64.
    #[value(name = "aarch64-unknown-linux-musl", alias = "aarch64")]
    Aarch64,
}

impl AgentTarget {
    /// The Rust target triple.
    pub fn triple(self) -> &'static str {
        match self {
            AgentTarget::X86_64 => "x86_64-unknown-linux-musl",
            AgentTarget::Aarch64 => "aarch64-unknown-linux-musl",
        }
    }

    /// Its `uname -m`, as `mito::Agent::arch` says it.
    pub fn arch(self) -> &'static str {
        match self {
            AgentTarget::X86_64 => "x86_64",
            AgentTarget::Aarch64 => "aarch64",
        }
    }
}

/// A number of seconds: finite, 0 or more, at most a year (a `Duration`
/// from `inf`, `NaN` or a negative number would panic).
fn seconds(s: &str) -> Result<f64, String> {
    const YEAR: f64 = 365.0 * 24.0 * 3600.0;
    match s.parse::<f64>() {
        Ok(v) if (0.0..=YEAR).contains(&v) => Ok(v),
        Ok(_) => Err(format!("{s} is not a number of seconds from 0 to a year ({YEAR})")),
        Err(e) => Err(e.to_string()),
    }
}
