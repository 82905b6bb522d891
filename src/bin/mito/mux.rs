//! `mito ssh-close`: ends the shared ssh connections (OpenSSH
//! ControlMaster) that mito keeps to hosts for `--control-persist`
//! seconds, through `ssh -O exit` on the same control socket a connect
//! would have used (`mito::connect::ssh::master_control`).

use std::process::ExitCode;

use mito::connect::ssh::{master_control, MasterOp};
use mito::SshOptions;

use super::cli::SshCloseArgs;
use super::inventory::{Connection, Inventory};
use super::pattern;
use super::settings::Settings;

/// Closes the master of every host named: a host pattern of `inv` means
/// its ssh hosts (with their inventory options, which pick the socket),
/// anything else is `ssh://[user@]host[:port]`. One line per host; exit
/// 0 unless a master could not be asked (255).
pub fn close(a: &SshCloseArgs, settings: &Settings, inv: &Inventory) -> Result<ExitCode, String> {
    let mut failed = false;
    for (name, opts) in hosts(a, settings, inv)? {
        match master_control(&opts, MasterOp::Exit) {
            Ok(true) => println!("{name}: closed"),
            Ok(false) => println!("{name}: no shared connection"),
            Err(e) => {
                eprintln!("mito: error: {name}: {e}");
                failed = true;
            }
        }
    }
    Ok(if failed { ExitCode::from(255) } else { ExitCode::SUCCESS })
}

/// The ssh options of each host `a` names, with its display name.
fn hosts(a: &SshCloseArgs, settings: &Settings, inv: &Inventory) -> Result<Vec<(String, SshOptions)>, String> {
    let mut out = Vec::new();
    for h in &a.hosts {
        let matched = if inv.is_empty() { Vec::new() } else { pattern::select(inv, h)?.0 };
        if matched.is_empty() {
            let o = settings.ssh(SshOptions::from_url(h)?);
            out.push((o.display_host(), o));
            continue;
        }
        for host in matched {
            // Local hosts have no ssh connection to close.
            if let Connection::Ssh(s) = &inv.host_spec(host).map_err(|e| e.to_string())?.connection {
                out.push((host.to_string(), settings.inventory_ssh(host, s)));
            }
        }
    }
    Ok(out)
}
