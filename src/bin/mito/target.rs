//! Targets: where a command runs. One hop is `local`, `ssh://[user@]host[:port]`,
//! `sudo:USER`, `su:USER`, `doas:USER`, `setns:PID` or `setns:CONTAINER`
//! (inside the container of that process, or of that name for podman or
//! docker), `chroot:/PATH`, or a container through its engine's CLI
//! (`docker:NAME`, `podman:NAME`, `nerdctl:NAME`,
//! `kubectl:[NS/]POD[/CONTAINER]`, `lxc:NAME`, `incus:NAME`); a chain is hops joined by commas
//! (`ssh://web1,sudo:root`, `ssh://web1,sudo:root,setns:1234`), each
//! connected through the one before it.
//! [`Targets`] connects each distinct prefix once, so
//! `ssh://web1,sudo:a` and `ssh://web1,sudo:b` share one ssh connection.
//! The options of each hop come from `settings`, its password from `secrets`.

use mito::{ChrootOptions, Connector, Context, Engine, EngineOptions, Router, SetnsOptions};

use super::secrets::Secrets;
use super::settings::{Hop, Settings};

/// The contexts made so far, by target prefix, and passwords read once.
pub struct Targets<'a> {
    router: &'a Router,
    settings: Settings,
    made: Vec<(String, Context)>,
    secrets: Secrets,
}

impl<'a> Targets<'a> {
    /// No connections yet.
    pub fn new(router: &'a Router, settings: Settings, secrets: Secrets) -> Self {
        Targets { router, settings, made: Vec::new(), secrets }
    }

    /// The context for `target`, connecting the hops not connected yet.
    pub fn connect(&mut self, target: &str) -> Result<Context, String> {
        let mut prev: Option<Context> = None;
        let mut prefix = String::new();
        let mut becomes = 0;
        for (i, hop) in target.split(',').enumerate() {
            if i > 0 {
                prefix.push(',');
            }
            prefix.push_str(hop);
            let become_index = is_become(hop).then(|| {
                becomes += 1;
                becomes - 1
            });
            if let Some((_, c)) = self.made.iter().find(|(p, _)| *p == prefix) {
                prev = Some(c.clone());
                continue;
            }
            let from = prev.as_ref().map_or_else(|| self.router.connector(), Context::connector);
            let become_pass = match become_index {
                Some(k) => self.secrets.become_password(&prefix, k)?,
                None => None,
            };
            let c = self.connect_hop(from, hop, become_pass)?;
            self.made.push((prefix.clone(), c.clone()));
            prev = Some(c);
        }
        prev.ok_or_else(|| format!("empty target {target:?}"))
    }

    /// Shuts every context down, deepest first.
    pub fn shutdown(self) {
        for (_, c) in self.made.iter().rev() {
            let _ = c.shutdown();
        }
    }

    fn connect_hop(&mut self, from: Connector<'_>, hop: &str, become_pass: Option<String>) -> Result<Context, String> {
        if let Some(made) = self.container_hop(from, hop) {
            return made;
        }
        let made = match self.settings.hop(hop, become_pass).map_err(with_engine_forms)? {
            Hop::Ssh(mut o) => {
                o.password = self.secrets.ssh_password()?;
                from.ssh(o)
            }
            Hop::Sudo(o) => from.sudo(o),
            Hop::Su(o) => from.su(o),
            Hop::Doas(o) => from.doas(o),
            Hop::Local(mut o) => {
                // At the top a plain "local"; behind a hop the library
                // names it after the hop.
                if o.name.is_none() && from.is_from_master() {
                    o.name = Some("local".into());
                }
                from.local(o)
            }
        };
        made.map_err(|e| e.to_string())
    }
}

impl Targets<'_> {
    /// `setns:PID`, `setns:CONTAINER`, `chroot:/PATH` or an engine's
    /// `docker:NAME`, `kubectl:NS/POD/CT`, … (None for any other hop).
    fn container_hop(&self, from: Connector<'_>, hop: &str) -> Option<Result<Context, String>> {
        let (method, arg) = hop.split_once(':')?;
        // The global --connect-timeout, as every hop gets it.
        let timeout = match self.settings.hop("local", None) {
            Ok(Hop::Local(o)) => o.connect_timeout,
            _ => std::time::Duration::from_secs(30),
        };
        let made = match method {
            "setns" => {
                // A pid, else a container name for podman or docker.
                let mut o = match arg.parse::<u32>() {
                    Ok(pid) => SetnsOptions::new(pid),
                    Err(_) if !arg.is_empty() => SetnsOptions::container(arg),
                    Err(_) => return Some(Err(format!("{hop:?}: expected setns:PID or setns:CONTAINER"))),
                };
                o.connect_timeout = timeout;
                from.setns(o)
            }
            "chroot" => {
                if !arg.starts_with('/') {
                    return Some(Err(format!("{hop:?}: expected chroot:/absolute/path")));
                }
                let mut o = ChrootOptions::new(arg);
                o.connect_timeout = timeout;
                from.chroot(o)
            }
            "kubectl" => {
                let Some(mut o) = EngineOptions::kubectl(arg) else {
                    return Some(Err(format!("{hop:?}: expected kubectl:[NAMESPACE/]POD[/CONTAINER]")));
                };
                o.connect_timeout = timeout;
                from.engine(o)
            }
            _ => {
                let engine = Engine::from_name(method)?;
                if arg.is_empty() || arg.contains('/') {
                    return Some(Err(format!("{hop:?}: expected {method}:CONTAINER (a name or id)")));
                }
                let mut o = EngineOptions::new(engine, arg);
                o.connect_timeout = timeout;
                from.engine(o)
            }
        };
        Some(made.map_err(|e| e.to_string()))
    }
}

/// The settings' unknown-target message, with the engines' forms that
/// [`Targets::container_hop`] connects (it saw none of them in `hop`).
fn with_engine_forms(e: String) -> String {
    if !e.starts_with("unknown target") {
        return e;
    }
    let forms =
        "chroot:/PATH, docker:NAME, podman:NAME, nerdctl:NAME, kubectl:[NS/]POD[/CONTAINER], lxc:NAME, incus:NAME,";
    e.replacen("chroot:/PATH,", forms, 1)
}

/// `sudo`, `su` or `doas`, with or without a user.
pub fn is_become(hop: &str) -> bool {
    matches!(hop.split_once(':').map_or(hop, |(m, _)| m), "sudo" | "su" | "doas")
}

/// Splits `TARGET:/PATH` at the last `:/` (targets may contain colons).
pub fn split_remote(spec: &str) -> Result<(&str, &str), String> {
    spec.rfind(":/")
        .map(|i| (&spec[..i], &spec[i + 1..]))
        .ok_or_else(|| format!("{spec:?}: expected TARGET:/absolute/path (e.g. local:/tmp/x, ssh://host:/etc/motd)"))
}
