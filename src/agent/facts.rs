//! `facts`: a quick inventory of the host from /proc, /etc and a few
//! syscalls (no commands run, no DNS), raw for the master to format.
//!
//! Whitespace is ASCII's (`trim_ascii`, `split_ascii_whitespace`): these
//! files are ASCII, and the Unicode whitespace table was 1 KB of the agent.

use alloc::string::String;
use alloc::vec::Vec;

use super::builtins::read_all;
use crate::core::num::parse_decimal;
use crate::proto::functions::{FactsReply, InterfaceFact, KernelFact, MemoryFact, MountFact, UserFact};

fn text(path: &[u8]) -> String {
    read_all(path, 4 << 20).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

fn unquote(v: &str) -> String {
    String::from(v.trim_ascii().trim_matches('"').trim_matches('\''))
}

/// `/proc/mounts` escapes spaces and friends as `\040`.
fn unescape(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

const PSEUDO_FS: &[&str] = &[
    "proc",
    "sysfs",
    "devpts",
    "mqueue",
    "debugfs",
    "tracefs",
    "securityfs",
    "pstore",
    "bpf",
    "configfs",
    "fusectl",
    "autofs",
    "binfmt_misc",
    "hugetlbfs",
    "nsfs",
    "cgroup",
    "cgroup2",
    "rpc_pipefs",
    "efivarfs",
];

/// Gathers the facts.
pub fn gather() -> FactsReply {
    let mut f = FactsReply::default();
    let os = text(b"/etc/os-release");
    let os = if os.is_empty() { text(b"/usr/lib/os-release") } else { os };
    f.os_release = os
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| !k.trim_ascii_start().starts_with('#'))
        .map(|(k, v)| (String::from(k.trim_ascii()), unquote(v)))
        .collect();
    let u = rustix::system::uname();
    let s = |c: &core::ffi::CStr| String::from_utf8_lossy(c.to_bytes()).into_owned();
    f.kernel =
        KernelFact { name: s(u.sysname()), release: s(u.release()), version: s(u.version()), machine: s(u.machine()) };
    f.hostname = s(u.nodename());
    f.fqdn = text(b"/etc/hosts")
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .find_map(|l| {
            let names: Vec<&str> = l.split_ascii_whitespace().skip(1).collect();
            names
                .contains(&f.hostname.as_str())
                .then(|| names.iter().find(|n| n.contains('.')).map(|n| String::from(*n)))?
        })
        .unwrap_or_else(|| f.hostname.clone());
    f.cpus = rustix::thread::sched_getaffinity(None).map_or(0, |set| set.count());
    let cpuinfo = text(b"/proc/cpuinfo");
    f.cpu_model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| String::from(v.trim_ascii()))
        })
        .unwrap_or_default();
    let meminfo = text(b"/proc/meminfo");
    let mem = |key: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| parse_decimal(v.trim_ascii().trim_end_matches("kB").trim_ascii().as_bytes()))
            .unwrap_or(0)
    };
    f.memory_kib = MemoryFact {
        total: mem("MemTotal"),
        available: mem("MemAvailable"),
        swap_total: mem("SwapTotal"),
        swap_free: mem("SwapFree"),
    };
    for l in text(b"/proc/self/mounts").lines() {
        let p: Vec<&str> = l.split(' ').collect();
        if p.len() < 4 || PSEUDO_FS.contains(&p[2]) {
            continue;
        }
        let point = unescape(p[1]);
        let Ok(st) = rustix::fs::statvfs(point.as_str()) else { continue };
        if st.f_blocks == 0 {
            continue;
        }
        let bs = st.f_frsize;
        f.mounts.push(MountFact {
            device: unescape(p[0]),
            mount_point: point,
            fstype: String::from(p[2]),
            options: String::from(p[3]),
            size_bytes: st.f_blocks * bs,
            free_bytes: st.f_bfree * bs,
            available_bytes: st.f_bavail * bs,
        });
    }
    f.interfaces = interfaces();
    for l in text(b"/etc/passwd").lines() {
        let p: Vec<&str> = l.split(':').collect();
        if p.len() >= 7 {
            let (Some(uid), Some(gid)) = (parse_decimal(p[2].as_bytes()), parse_decimal(p[3].as_bytes())) else {
                continue;
            };
            f.users.push(UserFact {
                name: String::from(p[0]),
                uid: uid as u32,
                gid: gid as u32,
                home: String::from(p[5]),
                shell: String::from(p[6]),
            });
        }
    }
    f.boot_time = text(b"/proc/stat")
        .lines()
        .find_map(|l| l.strip_prefix("btime ").and_then(|v| parse_decimal(v.trim_ascii().as_bytes())))
        .unwrap_or(0);
    f.container = container();
    let product = text(b"/sys/class/dmi/id/product_name");
    f.virtualization = if !product.trim_ascii().is_empty() {
        Some(String::from(product.trim_ascii()))
    } else if cpuinfo.lines().any(|l| l.starts_with("flags") && l.split_ascii_whitespace().any(|w| w == "hypervisor")) {
        Some(String::from("hypervisor"))
    } else {
        None
    };
    f
}

fn container() -> Option<String> {
    let exists = |p: &[u8]| rustix::fs::access(p, rustix::fs::Access::EXISTS).is_ok();
    if exists(b"/.dockerenv") {
        return Some(String::from("docker"));
    }
    if exists(b"/run/.containerenv") {
        return Some(String::from("podman"));
    }
    if super::util::env_var(b"KUBERNETES_SERVICE_HOST").is_some() {
        return Some(String::from("kubernetes"));
    }
    let env1 = read_all(b"/proc/1/environ", 1 << 20).unwrap_or_default();
    if let Some(v) = env1.split(|&c| c == 0).find_map(|e| e.strip_prefix(b"container=")) {
        return Some(String::from_utf8_lossy(v).into_owned());
    }
    let cg = text(b"/proc/1/cgroup");
    // A byte window search, not `str::contains`: its two-way searcher is
    // 4 KB of the agent for four short words in a small file.
    let has = |w: &str| cg.as_bytes().windows(w.len()).any(|x| x == w.as_bytes());
    ["docker", "lxc", "kubepods", "libpod"].iter().find(|w| has(w)).map(|w| String::from(*w))
}

fn interfaces() -> Vec<InterfaceFact> {
    let mut out: Vec<InterfaceFact> = Vec::new();
    let mut head: *mut libc::ifaddrs = core::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we walk read-only and free once.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut p = head;
        while !p.is_null() {
            let ifa = &*p;
            p = ifa.ifa_next;
            if ifa.ifa_name.is_null() {
                continue;
            }
            let name = String::from_utf8_lossy(core::ffi::CStr::from_ptr(ifa.ifa_name).to_bytes()).into_owned();
            let i = match out.iter().position(|x| x.name == name) {
                Some(i) => i,
                None => {
                    out.push(InterfaceFact { name, up: false, mac: None, ipv4: Vec::new(), ipv6: Vec::new() });
                    out.len() - 1
                }
            };
            let e = &mut out[i];
            e.up |= ifa.ifa_flags & libc::IFF_UP as u32 != 0;
            if ifa.ifa_addr.is_null() {
                continue;
            }
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let a = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    e.ipv4.push(a.sin_addr.s_addr.to_ne_bytes());
                }
                libc::AF_INET6 => {
                    let a = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    e.ipv6.push(a.sin6_addr.s6_addr);
                }
                libc::AF_PACKET => {
                    let a = &*(ifa.ifa_addr as *const libc::sockaddr_ll);
                    if a.sll_halen == 6 {
                        let mut m = [0u8; 6];
                        m.copy_from_slice(&a.sll_addr[..6]);
                        e.mac = Some(m);
                    }
                }
                _ => {}
            }
        }
        libc::freeifaddrs(head);
    }
    out
}
