//! `mito`: the command-line master. Thin: parse, connect, call, print.
//!
//! Exit codes: a command's own exit code for `run` (128 + N when killed by
//! signal N), 0 for success otherwise, 255 when mito itself failed
//! (connect, call, lost context) — as ssh does.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use mito::functions::ExecArgs;
use mito::{Context, LocalOptions, Router};
use serde_bytes::ByteBuf;

#[derive(Parser, Debug)]
#[command(
    name = "mito",
    version,
    about = "Run commands and code in contexts (local today; ssh, sudo, containers next) without installing anything there"
)]
struct Cli {
    /// More output: -v debug, -vv trace.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Connect timeout in seconds.
    #[arg(long, default_value_t = 30.0, global = true)]
    connect_timeout: f64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a command in a context, streaming its output; exits with its code.
    Run {
        /// Where: `local`.
        target: String,
        /// Do not forward this process's stdin to the command.
        #[arg(long)]
        no_stdin: bool,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        argv: Vec<String>,
    },
    /// Connect and measure round trips.
    Ping {
        /// Where: `local`.
        target: String,
        /// Number of round trips.
        #[arg(short, long, default_value_t = 1)]
        count: u32,
    },
    /// Who and where the agent is.
    Info {
        /// Where: `local`.
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

fn connect(router: &Router, target: &str, timeout: Duration) -> Result<Context, String> {
    let (method, name) = target.split_once(':').map_or((target, None), |(m, n)| (m, Some(n.to_string())));
    match method {
        "local" => router
            .local(LocalOptions {
                name: name.or_else(|| Some("local".into())),
                connect_timeout: timeout,
                ..LocalOptions::default()
            })
            .map_err(|e| e.to_string()),
        _ => {
            Err(format!("unknown target {target:?}: supported today: local (ssh, sudo and containers are on the way)"))
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("mito: error: {msg}");
            ExitCode::from(255)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    let router = Router::new().map_err(|e| format!("cannot start the broker: {e}"))?;
    let timeout = Duration::from_secs_f64(cli.connect_timeout.max(0.001));
    match cli.command {
        Command::Run { target, no_stdin, argv } => {
            let mut stdin = Vec::new();
            if !no_stdin && !std::io::stdin().is_terminal() {
                std::io::stdin().read_to_end(&mut stdin).map_err(|e| format!("reading stdin: {e}"))?;
            }
            let ctx = connect(&router, &target, timeout)?;
            let args = ExecArgs {
                argv: argv.iter().map(|a| ByteBuf::from(a.as_bytes())).collect(),
                stdin: ByteBuf::from(stdin),
                ..ExecArgs::default()
            };
            let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr());
            let reply = ctx
                .exec_streaming(&args, |fd, data| {
                    // A closed terminal is not an error worth dying for mid-stream.
                    let _ = if fd == 1 { out.write_all(data).and_then(|()| out.flush()) } else { err.write_all(data) };
                })
                .map_err(|e| e.to_string())?;
            let _ = ctx.shutdown();
            Ok(match (reply.code, reply.signal) {
                (Some(c), _) => ExitCode::from(c.clamp(0, 255) as u8),
                (None, Some(s)) => ExitCode::from((128 + s).clamp(0, 255) as u8),
                _ => ExitCode::from(255),
            })
        }
        Command::Ping { target, count } => {
            let t0 = Instant::now();
            let ctx = connect(&router, &target, timeout)?;
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
            for _ in 1..count {
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
            let _ = ctx.shutdown();
            Ok(ExitCode::SUCCESS)
        }
        Command::Info { target, json } => {
            let ctx = connect(&router, &target, timeout)?;
            let info = ctx.info().map_err(|e| e.to_string())?;
            if json {
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
            let _ = ctx.shutdown();
            Ok(ExitCode::SUCCESS)
        }
    }
}
