//! `mito`: the command-line master. Thin: parse, connect, call, print.
//!
//! Exit codes: a command's own exit code for `run` (128 + N when killed by
//! signal N), 0 for success otherwise, 255 when mito itself failed
//! (connect, call, lost context) — as ssh does.

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use mito::functions::ExecArgs;
use mito::{Context, Router};
use serde_bytes::ByteBuf;

#[derive(Parser, Debug)]
#[command(
    name = "mito",
    version,
    about = "Run commands and copy files in contexts (local, ssh, sudo/su/doas, and chains of them) without installing anything there"
)]
struct Cli {
    /// More output: -v debug, -vv trace.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Connect timeout in seconds.
    #[arg(long, default_value_t = 30.0, global = true)]
    connect_timeout: f64,
    /// ssh: private key file (`ssh -i`).
    #[arg(short = 'i', long, global = true, value_name = "FILE")]
    identity: Option<std::path::PathBuf>,
    /// ssh: extra option, as for `ssh -o` (repeatable).
    #[arg(short = 'o', long = "ssh-option", global = true, value_name = "KEY=VALUE")]
    ssh_options: Vec<String>,
    /// ssh: config file (`ssh -F`).
    #[arg(short = 'F', long, global = true, value_name = "FILE")]
    ssh_config: Option<std::path::PathBuf>,
    /// ssh: host key policy.
    #[arg(long, global = true, value_enum, default_value_t = HostKeys::Enforce)]
    check_host_keys: HostKeys,
    /// ssh: take the login password from this environment variable (which
    /// mito then removes from its environment: nothing it starts inherits it).
    #[arg(long, global = true, value_name = "VAR")]
    password_env: Option<String>,
    /// ssh: take the login password from the first line of this file.
    #[arg(long, global = true, value_name = "FILE")]
    password_file: Option<std::path::PathBuf>,
    /// ssh: ask for the login password on the terminal.
    #[arg(long, global = true)]
    ask_password: bool,
    /// sudo/su/doas: take a password from this environment variable (which
    /// mito then removes from its environment). VAR alone is for the first
    /// sudo/su/doas hop of each target only; HOP=VAR for the hops written
    /// HOP (`sudo:root=ROOT_PW`, `sudo` meaning `sudo:root`) or for the hop
    /// ending that chain (`ssh://web1,sudo:root=PW1`). Repeatable; a hop
    /// nothing names gets no password.
    #[arg(long, global = true, value_name = "[HOP=]VAR")]
    become_pass_env: Vec<String>,
    /// sudo/su/doas: take a password from the first line of this file; which
    /// hops as for --become-pass-env. Repeatable.
    #[arg(long, global = true, value_name = "[HOP=]FILE")]
    become_pass_file: Vec<String>,
    /// sudo/su/doas: ask for a password on the terminal, when that hop is
    /// reached: for the first sudo/su/doas hop of each target, or with
    /// =HOP for the hops so written (as for --become-pass-env). Repeatable.
    #[arg(long, global = true, value_name = "HOP", num_args = 0..=1, require_equals = true, default_missing_value = "")]
    ask_become_pass: Vec<String>,
    /// sudo: keep the environment (`sudo -E`). Not with --login: sudo
    /// refuses `-E` together with `-i`.
    #[arg(long, global = true, conflicts_with = "login")]
    preserve_env: bool,
    /// sudo/su: run through the target user's login shell (`sudo -i`, `su -l`).
    #[arg(long, global = true)]
    login: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum HostKeys {
    /// Unknown or changed host keys fail.
    Enforce,
    /// Unknown keys are recorded, changed keys fail.
    AcceptNew,
    /// No host key checking.
    Ignore,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a command in a context, streaming its output; exits with its code.
    Run {
        /// Where: `local`, `ssh://[user@]host[:port]`, `sudo:USER`, `su:USER`, `doas:USER`, or hops joined by commas (`ssh://web1,sudo:root`).
        target: String,
        /// Do not forward this process's stdin to the command (as `ssh -n`).
        #[arg(short = 'n', long)]
        no_stdin: bool,
        /// Run the command on a pseudo-terminal (as `ssh -t`): one output
        /// stream, ^C and window size go to it, the local terminal is raw.
        #[arg(short = 't', long)]
        tty: bool,
        /// Stop the command after SECS seconds (SIGTERM, SIGKILL 5 s later); exit status 124.
        #[arg(long, value_name = "SECS")]
        timeout: Option<f64>,
        /// Set a variable in the command's environment (repeatable).
        #[arg(short = 'e', long = "env", value_name = "VAR=VALUE")]
        env: Vec<String>,
        /// Working directory of the command.
        #[arg(long, value_name = "DIR")]
        cwd: Option<String>,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        argv: Vec<String>,
    },
    /// Connect and measure round trips.
    Ping {
        /// Where: `local`, `ssh://[user@]host[:port]`, `sudo:USER`, `su:USER`, `doas:USER`, or hops joined by commas (`ssh://web1,sudo:root`).
        target: String,
        /// Number of round trips.
        #[arg(short, long, default_value_t = 1)]
        count: u32,
    },
    /// Copy a local file (or with -r a tree) to contexts: `mito put SRC TARGET:/PATH...`.
    /// One file to several targets with the same path is sent once per
    /// link: targets behind a shared hop get it relayed by that hop.
    Put {
        /// Copy directories recursively (DEST becomes the copy of SRC, as `cp -rT`).
        #[arg(short = 'r', long)]
        recursive: bool,
        /// Local file or directory.
        src: std::path::PathBuf,
        /// `TARGET:/absolute/path`, e.g. `ssh://web1:/etc/motd`, `ssh://web1,sudo:root:/etc/x`.
        #[arg(required = true, num_args = 1..)]
        dest: Vec<String>,
    },
    /// Copy a file (or with -r a tree) from a context: `mito get TARGET:/PATH DST`.
    /// The target is not trusted: a name that is not a single file name is
    /// refused, nothing is written outside DST or through a symlink, and the
    /// copy keeps mode (setuid/setgid dropped) and mtime but is yours.
    Get {
        /// Copy directories recursively (DST becomes the copy of the source, as `cp -rT`).
        #[arg(short = 'r', long)]
        recursive: bool,
        /// Keep the target's owners and setuid/setgid bits (applied only
        /// when mito runs as root), as `rsync -a` as root does.
        #[arg(long)]
        preserve_owner: bool,
        /// `TARGET:/absolute/path`.
        src: String,
        /// Local destination file.
        dest: std::path::PathBuf,
    },
    /// Host facts: OS, kernel, CPUs, memory, mounts, interfaces, users, …
    Facts {
        /// Where (as for `run`).
        target: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Who and where the agent is.
    Info {
        /// Where: `local`, `ssh://[user@]host[:port]`, `sudo:USER`, `su:USER`, `doas:USER`, or hops joined by commas (`ssh://web1,sudo:root`).
        target: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn,mito::remote=info",
        1 => "debug",
        _ => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::default().filter_or("MITO_LOG", default))
        .format(|buf, rec| {
            if rec.target() == "mito::remote" {
                writeln!(buf, "{}", rec.args())
            } else {
                writeln!(buf, "mito: {}: {}", rec.level().as_str().to_lowercase(), rec.args())
            }
        })
        .init();
}

/// Facts as JSON for people and scripts: addresses and MACs as text.
fn facts_json(ctx: &Context, f: &mito::functions::FactsReply) -> serde_json::Value {
    use serde_json::json;
    let ifs: Vec<_> = f
        .interfaces
        .iter()
        .map(|i| {
            json!({
                "name": i.name, "up": i.up,
                "mac": i.mac.map(|m| m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")),
                "ipv4": i.ipv4.iter().map(|a| std::net::Ipv4Addr::from(*a).to_string()).collect::<Vec<_>>(),
                "ipv6": i.ipv6.iter().map(|a| std::net::Ipv6Addr::from(*a).to_string()).collect::<Vec<_>>(),
            })
        })
        .collect();
    let mounts: Vec<_> = f
        .mounts
        .iter()
        .map(|m| {
            json!({"device": m.device, "mount": m.mount_point, "fstype": m.fstype, "options": m.options,
                        "size_bytes": m.bytes.0, "free_bytes": m.bytes.1, "available_bytes": m.bytes.2})
        })
        .collect();
    let users: Vec<_> = f
        .users
        .iter()
        .map(|u| json!({"name": u.name, "uid": u.uid, "gid": u.gid, "home": u.home, "shell": u.shell}))
        .collect();
    json!({
        "context": ctx.name(),
        "os_release": f.os_release.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
        "kernel": {"name": f.kernel.0, "release": f.kernel.1, "version": f.kernel.2, "machine": f.kernel.3},
        "hostname": f.hostname, "fqdn": f.fqdn,
        "cpus": f.cpus, "cpu_model": f.cpu_model,
        "memory_kib": {"total": f.memory_kib.0, "available": f.memory_kib.1, "swap_total": f.memory_kib.2, "swap_free": f.memory_kib.3},
        "mounts": mounts, "interfaces": ifs, "users": users,
        "boot_time": f.boot_time, "container": f.container, "virtualization": f.virtualization,
    })
}

#[path = "mito/copy.rs"]
mod copy;
#[path = "mito/run.rs"]
mod run;
#[path = "mito/target.rs"]
mod target;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // First, while this is the only thread: the password variables leave
    // the environment, so no child (a local agent, `sudo -E`) inherits them.
    let secrets = match target::Secrets::take(&cli) {
        Ok(s) => s,
        Err(msg) => {
            eprintln!("mito: error: {msg}");
            return ExitCode::from(255);
        }
    };
    init_logging(cli.verbose);
    match run(cli, secrets) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("mito: error: {msg}");
            ExitCode::from(255)
        }
    }
}

fn run(cli: Cli, secrets: target::Secrets) -> Result<ExitCode, String> {
    // Before any thread exists (the broker's included), so all inherit the mask.
    let signals = matches!(cli.command, Command::Run { .. }).then(run::Signals::start);
    let router = Router::new().map_err(|e| format!("cannot start the broker: {e}"))?;
    let mut targets = target::Targets::new(&router, &cli, secrets);
    let code = command(&cli, &mut targets, signals);
    targets.shutdown();
    code
}

fn command(cli: &Cli, targets: &mut target::Targets<'_>, signals: Option<run::Signals>) -> Result<ExitCode, String> {
    match &cli.command {
        Command::Run { target, no_stdin, tty, timeout, env, cwd, argv } => {
            let ctx = targets.connect(target)?;
            let mut vars = Vec::new();
            for e in env {
                let (k, v) = e.split_once('=').ok_or_else(|| format!("--env {e}: expected VAR=VALUE"))?;
                vars.push((ByteBuf::from(k.as_bytes()), ByteBuf::from(v.as_bytes())));
            }
            let args = ExecArgs {
                argv: argv.iter().map(|a| ByteBuf::from(a.as_bytes())).collect(),
                env: vars,
                cwd: cwd.as_ref().map(|c| ByteBuf::from(c.as_bytes())),
                pty: tty.then(run::window_size),
                timeout_ms: timeout.map(|t| (t * 1e3).max(1.0) as u64),
                ..ExecArgs::default()
            };
            let code = run::run(&ctx, &args, !*no_stdin, signals)?;
            Ok(code)
        }
        Command::Ping { target, count } => {
            let t0 = Instant::now();
            let ctx = targets.connect(target)?;
            let connected = t0.elapsed();
            ctx.ping().map_err(|e| e.to_string())?;
            let first = t0.elapsed();
            println!(
                "{}: connected in {:.2} ms (agent {}, {} agent bytes sent), first call at {:.2} ms",
                ctx.name(),
                connected.as_secs_f64() * 1e3,
                ctx.connect_info().exe,
                ctx.connect_info().agent_bytes_sent,
                first.as_secs_f64() * 1e3
            );
            let mut rtts = Vec::new();
            for _ in 1..*count {
                let t = Instant::now();
                ctx.ping().map_err(|e| e.to_string())?;
                rtts.push(t.elapsed());
            }
            if !rtts.is_empty() {
                rtts.sort();
                println!(
                    "{} round trips: median {:.1} µs, min {:.1} µs",
                    rtts.len(),
                    rtts[rtts.len() / 2].as_secs_f64() * 1e6,
                    rtts[0].as_secs_f64() * 1e6
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Put { recursive, src, dest } => {
            let mut to = Vec::new();
            for d in dest {
                let (target, path) = target::split_remote(d)?;
                to.push((targets.connect(target)?, path));
            }
            match &to[..] {
                [(ctx, path)] => copy::copy(ctx, copy::Direction::Put, src, path, *recursive)?,
                [(_, first), ..] if !*recursive && to.iter().all(|(_, p)| p == first) => {
                    let ctxs: Vec<Context> = to.iter().map(|(c, _)| c.clone()).collect();
                    copy::put_many(&ctxs, src, first)?;
                }
                _ => {
                    for (ctx, path) in &to {
                        copy::copy(ctx, copy::Direction::Put, src, path, *recursive)?;
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Get { recursive, src, dest, preserve_owner } => {
            let (target, path) = target::split_remote(src)?;
            let ctx = targets.connect(target)?;
            copy::get(&ctx, dest, path, *recursive, *preserve_owner)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Facts { target, json } => {
            let ctx = targets.connect(target)?;
            let f = ctx.facts().map_err(|e| e.to_string())?;
            let v = facts_json(&ctx, &f);
            if *json {
                println!("{}", serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?);
            } else {
                let os = f.os_release.iter().find(|(k, _)| k == "PRETTY_NAME").map_or("?", |(_, v)| v.as_str());
                println!("{} ({}): {os}, {} {}", f.fqdn, ctx.name(), f.kernel.0, f.kernel.1);
                println!(
                    "cpus {} ({}), memory {} MiB ({} MiB available)",
                    f.cpus,
                    f.cpu_model,
                    f.memory_kib.0 / 1024,
                    f.memory_kib.1 / 1024
                );
                for m in &f.mounts {
                    println!(
                        "mount {} {} {}: {} of {} MiB free",
                        m.mount_point,
                        m.fstype,
                        m.device,
                        m.bytes.2 >> 20,
                        m.bytes.0 >> 20
                    );
                }
                for i in v["interfaces"].as_array().into_iter().flatten() {
                    println!("if {} up={} {} {}", i["name"], i["up"], i["ipv4"], i["ipv6"]);
                }
                println!("users {}, container {:?}, virtualization {:?}", f.users.len(), f.container, f.virtualization);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Info { target, json } => {
            let ctx = targets.connect(target)?;
            let info = ctx.info().map_err(|e| e.to_string())?;
            if *json {
                let mut v = serde_json::to_value(&info).map_err(|e| e.to_string())?;
                if let Some(o) = v.as_object_mut() {
                    o.insert("context".into(), ctx.name().into());
                    o.insert("agent_bytes_sent".into(), ctx.connect_info().agent_bytes_sent.into());
                    o.insert("bootstrap_ms".into(), (ctx.connect_info().bootstrap_time.as_secs_f64() * 1e3).into());
                }
                println!("{}", serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?);
            } else {
                println!("context:   {}", ctx.name());
                println!("pid:       {} (ppid {})", info.pid, info.ppid);
                println!(
                    "user:      {} (uid {}, gid {}, euid {}, egid {})",
                    info.user, info.uid, info.gid, info.euid, info.egid
                );
                println!("host:      {}", info.hostname);
                println!("kernel:    {} {}", info.arch, info.kernel);
                println!(
                    "agent:     {} {} ({})",
                    info.agent_version,
                    &info.agent_hash[..info.agent_hash.len().min(16)],
                    info.exe
                );
                println!("cwd:       {}", info.cwd);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
