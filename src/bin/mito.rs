//! `mito`: the command-line master. Thin: parse, connect, call, print.
//!
//! Exit codes: a command's own exit code for `run` (128 + N when killed by
//! signal N), 0 for success otherwise, 255 when mito itself failed
//! (connect, call, lost context) — as ssh does; 141 when the reader of
//! its stdout went away (as SIGPIPE ends any program in a pipeline; `run`
//! passes the SIGPIPE on to the command). On a host pattern (`fleet`): 0
//! when every host is ok, 3 when some command failed, 4 when some host
//! was unreachable; 2 is clap's for a bad command line.
//!
//! Where things are (`src/bin/mito/`): `cli` is the command line as clap
//! parses it; `settings` and `secrets` turn it into hop options, command
//! arguments and passwords; `target` connects targets (chains of hops);
//! one module per verb does the work (`run`, `copy` for put and get, `sync`,
//! `inspect` for ping, facts and info; `mux` for ssh-close; `build_agent` builds a custom agent
//! with cargo); `render` prints the answers, as text or JSON. `inventory`
//! reads Ansible inventories, `pattern` selects hosts from them, and
//! `fleet` runs a verb on every host a pattern selects.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use mito::Router;

#[path = "mito/build_agent.rs"]
mod build_agent;
#[path = "mito/cli.rs"]
mod cli;
#[path = "mito/copy.rs"]
mod copy;
#[path = "mito/fleet.rs"]
mod fleet;
#[path = "mito/inspect.rs"]
mod inspect;
#[path = "mito/inventory.rs"]
mod inventory;
#[path = "mito/mux.rs"]
mod mux;
#[path = "mito/pattern.rs"]
mod pattern;
#[path = "mito/render.rs"]
mod render;
#[path = "mito/run.rs"]
mod run;
#[path = "mito/secrets.rs"]
mod secrets;
#[path = "mito/settings.rs"]
mod settings;
#[path = "mito/sync.rs"]
mod sync;
#[path = "mito/target.rs"]
mod target;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // First, while this is the only thread: the password variables leave
    // the environment, so no child (a local agent, `sudo -E`) inherits them.
    let secrets = match secrets::Secrets::take(&cli) {
        Ok(s) => s,
        Err(msg) => {
            eprintln!("mito: error: {msg}");
            return ExitCode::from(255);
        }
    };
    init_logging(cli.verbose);
    // A pattern of hundreds of hosts holds a few descriptors per host; the
    // soft limit (often 1024) is lifted to the hard one, as ssh and
    // Ansible's forks would need too.
    if let Err(e) = mito::master::limits::raise_fd_limit() {
        log::debug!("cannot raise RLIMIT_NOFILE: {e}");
    }
    // Builds locally: no broker, no context.
    if let Command::BuildAgent(a) = &cli.command {
        return build_agent::run(a);
    }
    if let Command::Completions(a) = &cli.command {
        return completions(a);
    }
    match start(cli, secrets) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("mito: error: {msg}");
            ExitCode::from(255)
        }
    }
}

/// `mito completions SHELL`: the script clap writes from [`Cli`] itself,
/// so it knows every verb and option there is.
fn completions(a: &cli::CompletionsArgs) -> ExitCode {
    use clap::CommandFactory;
    let mut out = Vec::new();
    clap_complete::generate(a.shell, &mut Cli::command(), "mito", &mut out);
    match std::io::stdout().lock().write_all(&out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::from(141),
        Err(e) => {
            eprintln!("mito: error: writing the completion script: {e}");
            ExitCode::from(255)
        }
    }
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

/// Starts the broker, runs the verb, shuts every context down. A target
/// that is a host pattern of the inventory runs on each of its hosts
/// (`fleet`); any other target as it always has.
fn start(cli: Cli, secrets: secrets::Secrets) -> Result<ExitCode, String> {
    let inventory = match &cli.command {
        Command::Run(_)
        | Command::Ping(_)
        | Command::Facts(_)
        | Command::Put(_)
        | Command::Get(_)
        | Command::SshClose(_) => inventory::load(&cli.inventory)?,
        _ => None,
    }
    .unwrap_or_default();
    // Talks to local control sockets only: no broker, no context.
    if let Command::SshClose(a) = &cli.command {
        return mux::close(a, &settings::Settings::new(&cli), &inventory);
    }
    if let Some(job) = fleet::job(&cli, &inventory)? {
        return fleet::run(job, &inventory, &cli, secrets);
    }
    // Before any thread exists (the broker's included), so all inherit the mask.
    let signals = matches!(cli.command, Command::Run(_)).then(run::Signals::start);
    let router = Router::new().map_err(|e| format!("cannot start the broker: {e}"))?;
    let mut targets = target::Targets::new(&router, settings::Settings::new(&cli), secrets);
    let code = match &cli.command {
        Command::Run(a) => run::command(a, &mut targets, signals),
        Command::Ping(a) => inspect::ping(a, &mut targets),
        Command::Put(a) => copy::put(a, &mut targets),
        Command::Get(a) => copy::get(a, &mut targets),
        Command::Sync(a) => sync::command(a, &mut targets),
        Command::Facts(a) => inspect::facts(a, &mut targets),
        Command::Info(a) => inspect::info(a, &mut targets),
        // Returned above; here for completeness.
        Command::SshClose(a) => mux::close(a, &settings::Settings::new(&cli), &inventory),
        // main runs these before the broker starts; here for completeness.
        Command::BuildAgent(a) => Ok(build_agent::run(a)),
        Command::Completions(a) => Ok(completions(a)),
    };
    targets.shutdown();
    code
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::cli::Cli;

    /// Each shell's script names the verbs and options, and the shells
    /// that are installed accept its syntax.
    #[test]
    fn completion_scripts() {
        for (shell, check) in [
            (clap_complete::Shell::Bash, ["bash", "-n"]),
            (clap_complete::Shell::Zsh, ["zsh", "-n"]),
            (clap_complete::Shell::Fish, ["fish", "-n"]),
        ] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "mito", &mut out);
            let text = String::from_utf8(out).expect("UTF-8");
            for word in ["ssh-close", "private-key", "inventory", "control-persist"] {
                assert!(text.contains(word), "{shell}: no {word}");
            }
            let dir = std::env::temp_dir().join(format!("mito-completions-{}-{shell}", std::process::id()));
            std::fs::write(&dir, &text).expect("write");
            match std::process::Command::new(check[0]).arg(check[1]).arg(&dir).output() {
                Ok(o) => assert!(o.status.success(), "{shell}: {}", String::from_utf8_lossy(&o.stderr)),
                Err(e) => eprintln!("{}: not checked ({e})", check[0]),
            }
            let _ = std::fs::remove_file(&dir);
        }
    }
}
