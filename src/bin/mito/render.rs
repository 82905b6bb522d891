//! What mito prints about a context, as text for people and (`--json`) as
//! JSON for scripts: the answers of `ping`, `facts` and `info`, and the
//! summary line of a copy. The JSON is serde's: a view type per reply,
//! its fields in the order the output has always had (alphabetical).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use mito::functions::{FactsReply, InfoReply, InterfaceFact, KernelFact, MemoryFact, MountFact, UserFact};
use mito::{Context, TransferStats, TreeStats};
use serde::Serialize;

/// `mito ping`: how long connecting and the first call took.
pub fn ping_connected(ctx: &Context, connected: Duration, first: Duration) -> String {
    format!(
        "{}: connected in {:.2} ms (agent {}, {} agent bytes sent), first call at {:.2} ms",
        ctx.name(),
        connected.as_secs_f64() * 1e3,
        ctx.connect_info().exe,
        ctx.connect_info().agent_bytes_sent,
        first.as_secs_f64() * 1e3
    )
}

/// `mito ping -c N`: the round trips after the first, sorted.
pub fn ping_round_trips(sorted: &[Duration]) -> String {
    format!(
        "{} round trips: median {:.1} µs, min {:.1} µs",
        sorted.len(),
        sorted[sorted.len() / 2].as_secs_f64() * 1e6,
        sorted[0].as_secs_f64() * 1e6
    )
}

/// `mito info --json`: the reply's fields and how the context was made.
pub fn info_json(ctx: &Context, info: &InfoReply) -> Result<String, String> {
    let mut v = serde_json::to_value(info).map_err(|e| e.to_string())?;
    if let Some(o) = v.as_object_mut() {
        o.insert("context".into(), ctx.name().into());
        o.insert("agent_bytes_sent".into(), ctx.connect_info().agent_bytes_sent.into());
        o.insert("bootstrap_ms".into(), (ctx.connect_info().bootstrap_time.as_secs_f64() * 1e3).into());
    }
    serde_json::to_string_pretty(&v).map_err(|e| e.to_string())
}

/// `mito info`. Every string came from the target: escaped ([`t`]).
pub fn info_text(ctx: &Context, info: &InfoReply) -> String {
    let hash = t(info.agent_hash.get(..16).unwrap_or(&info.agent_hash));
    [
        format!("context:   {}", ctx.name()),
        format!("pid:       {} (ppid {})", info.pid, info.ppid),
        format!(
            "user:      {} (uid {}, gid {}, euid {}, egid {})",
            t(&info.user),
            info.uid,
            info.gid,
            info.euid,
            info.egid
        ),
        format!("host:      {}", t(&info.hostname)),
        format!("kernel:    {} {}", t(&info.arch), t(&info.kernel)),
        format!("agent:     {} {hash} ({})", t(&info.agent_version), t(&info.exe)),
        format!("cwd:       {}", t(&info.cwd)),
    ]
    .join("\n")
}

/// A target's string as it may reach a terminal: control characters
/// escaped, at most 512 characters (ARCHITECTURE.md, "Security").
fn t(s: &str) -> String {
    mito::core::text::printable(s.as_bytes(), 512)
}

/// The facts of one context as `mito facts` shows them: addresses and
/// MACs as text; the JSON of `--json`, and the source of the text lines.
#[derive(Serialize)]
pub struct Facts<'a> {
    boot_time: u64,
    container: Option<&'a str>,
    context: &'a str,
    cpu_model: &'a str,
    cpus: u32,
    fqdn: &'a str,
    hostname: &'a str,
    interfaces: Vec<Interface<'a>>,
    kernel: Kernel<'a>,
    memory_kib: Memory,
    mounts: Vec<Mount<'a>>,
    os_release: BTreeMap<&'a str, &'a str>,
    users: Vec<User<'a>>,
    virtualization: Option<&'a str>,
    /// The first `PRETTY_NAME` of os-release (`os_release` keeps the last).
    #[serde(skip)]
    pretty_name: &'a str,
}

/// uname.
#[derive(Serialize)]
struct Kernel<'a> {
    machine: &'a str,
    name: &'a str,
    release: &'a str,
    version: &'a str,
}

/// KiB.
#[derive(Serialize)]
struct Memory {
    available: u64,
    swap_free: u64,
    swap_total: u64,
    total: u64,
}

#[derive(Serialize)]
struct Mount<'a> {
    available_bytes: u64,
    device: &'a str,
    free_bytes: u64,
    fstype: &'a str,
    mount: &'a str,
    options: &'a str,
    size_bytes: u64,
}

#[derive(Serialize)]
struct Interface<'a> {
    ipv4: Vec<String>,
    ipv6: Vec<String>,
    mac: Option<String>,
    name: &'a str,
    up: bool,
}

#[derive(Serialize)]
struct User<'a> {
    gid: u32,
    home: &'a str,
    name: &'a str,
    shell: &'a str,
    uid: u32,
}

impl<'a> Facts<'a> {
    /// The view of `f`, gathered in `ctx`.
    pub fn new(ctx: &'a Context, f: &'a FactsReply) -> Facts<'a> {
        Facts {
            boot_time: f.boot_time,
            container: f.container.as_deref(),
            context: ctx.name(),
            cpu_model: &f.cpu_model,
            cpus: f.cpus,
            fqdn: &f.fqdn,
            hostname: &f.hostname,
            interfaces: f.interfaces.iter().map(Interface::new).collect(),
            kernel: Kernel::new(&f.kernel),
            memory_kib: Memory::new(&f.memory_kib),
            mounts: f.mounts.iter().map(Mount::new).collect(),
            // A key given twice keeps its last value.
            os_release: f.os_release.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
            users: f.users.iter().map(User::new).collect(),
            virtualization: f.virtualization.as_deref(),
            pretty_name: f.os_release.iter().find(|(k, _)| k == "PRETTY_NAME").map_or("?", |(_, v)| v.as_str()),
        }
    }

    /// `mito facts --json`.
    pub fn json(&self) -> Result<String, String> {
        serde_json::to_string_pretty(self).map_err(|e| e.to_string())
    }

    /// `mito facts`: a line for the host, one per mount and interface, one
    /// for the rest.
    pub fn text(&self) -> String {
        // Every string came from the target: escaped ([`t`]).
        let mut lines = vec![
            format!(
                "{} ({}): {}, {} {}",
                t(self.fqdn),
                self.context,
                t(self.pretty_name),
                t(self.kernel.name),
                t(self.kernel.release)
            ),
            format!(
                "cpus {} ({}), memory {} MiB ({} MiB available)",
                self.cpus,
                t(self.cpu_model),
                self.memory_kib.total / 1024,
                self.memory_kib.available / 1024
            ),
        ];
        for m in &self.mounts {
            let (free, size) = (m.available_bytes >> 20, m.size_bytes >> 20);
            lines.push(format!("mount {} {} {}: {free} of {size} MiB free", t(m.mount), t(m.fstype), t(m.device)));
        }
        for i in &self.interfaces {
            // Name and addresses as JSON text, quotes and brackets included.
            let (name, v4, v6) = (json_text(&i.name), json_text(&i.ipv4), json_text(&i.ipv6));
            lines.push(format!("if {name} up={} {v4} {v6}", i.up));
        }
        lines.push(format!(
            "users {}, container {:?}, virtualization {:?}",
            self.users.len(),
            self.container,
            self.virtualization
        ));
        lines.join("\n")
    }
}

impl<'a> Kernel<'a> {
    fn new(k: &'a KernelFact) -> Self {
        Kernel { machine: &k.machine, name: &k.name, release: &k.release, version: &k.version }
    }
}

impl Memory {
    fn new(m: &MemoryFact) -> Self {
        Memory { available: m.available, swap_free: m.swap_free, swap_total: m.swap_total, total: m.total }
    }
}

impl<'a> Interface<'a> {
    fn new(i: &'a InterfaceFact) -> Self {
        Interface {
            ipv4: i.ipv4.iter().map(|a| Ipv4Addr::from(*a).to_string()).collect(),
            ipv6: i.ipv6.iter().map(|a| Ipv6Addr::from(*a).to_string()).collect(),
            mac: i.mac.map(|m| m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")),
            name: &i.name,
            up: i.up,
        }
    }
}

impl<'a> Mount<'a> {
    fn new(m: &'a MountFact) -> Self {
        Mount {
            available_bytes: m.available_bytes,
            device: &m.device,
            free_bytes: m.free_bytes,
            fstype: &m.fstype,
            mount: &m.mount_point,
            options: &m.options,
            size_bytes: m.size_bytes,
        }
    }
}

impl<'a> User<'a> {
    fn new(u: &'a UserFact) -> Self {
        User { gid: u.gid, home: &u.home, name: &u.name, shell: &u.shell, uid: u.uid }
    }
}

/// `v` as compact JSON.
fn json_text(v: &impl Serialize) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// The end of a copy's line: bytes, time, rate.
pub fn transfer(s: &TransferStats) -> String {
    let secs = s.elapsed.as_secs_f64().max(1e-9);
    let (rate, sum) = (s.bytes as f64 / 1e6 / secs, s.checksum.name());
    format!("{} bytes in {secs:.2} s ({rate:.1} MB/s), {sum} verified", s.bytes)
}

/// The end of a tree copy's line: what was copied, bytes, time, rate, and
/// the digest its files were checked with.
pub fn tree(s: &TreeStats, checksum: mito::HashKind) -> String {
    let secs = s.elapsed.as_secs_f64().max(1e-9);
    let skipped = if s.skipped > 0 { format!(", {} skipped (not file/dir/symlink)", s.skipped) } else { String::new() };
    format!(
        "{} files, {} dirs, {} symlinks{skipped}: {} bytes in {:.2} s ({:.1} MB/s), {} verified",
        s.files,
        s.dirs,
        s.symlinks,
        s.bytes,
        secs,
        s.bytes as f64 / 1e6 / secs,
        checksum.name()
    )
}

#[cfg(test)]
mod tests {
    use super::t;

    /// A target's strings reach the terminal escaped, and a hash that is
    /// not ASCII is cut without a panic.
    #[test]
    fn target_text_is_escaped_and_cut_safely() {
        assert_eq!(t("web1\x1b]0;owned\x07"), "web1\\u{1b}]0;owned\\u{7}");
        let hash = "é".repeat(20);
        let cut = hash.get(..16).unwrap_or(&hash);
        assert_eq!(t(cut), "é".repeat(8));
        let odd = format!("a{}", "é".repeat(20));
        assert_eq!(odd.get(..16).unwrap_or(&odd), odd, "not a char boundary: the whole string");
    }
}
