//! stage0: the few lines of POSIX sh that every method runs on the target
//! (`sh -c '<stage0>'`) to get the agent running.
//!
//! What it does, in order (the README's "Bootstrap" section says the same):
//! 1. **Warm:** the shell reads the architecture from
//!    `/proc/sys/kernel/arch` (no fork), and if
//!    `$XDG_CACHE_HOME/mito/agent-<sha256>` of that architecture's agent
//!    (else `~/.cache/mito/…`) is in a directory that is ours (below), is
//!    itself ours and its sha256 matches, exec it. One `sh`, one `ls`, one
//!    hash, no `uname`, zero bytes of agent sent. Only this architecture's
//!    agent is tried: a cache directory shared by hosts of several
//!    architectures (an NFS home) may hold another's, whose `exec` would
//!    end the shell ("Exec format error"). A kernel without that file
//!    (older than 6.1, or no /proc) skips to the cold path when several
//!    agents are embedded (which finds the cached file without an upload);
//!    with one agent it tries that one.
//! 2. **Cold:** `uname -m` picks the agent; look for a cached copy in the
//!    fallback directories (`$XDG_RUNTIME_DIR/mito`, `/dev/shm/mito-<uid>`,
//!    `/var/tmp/mito-<uid>`, `/tmp/mito-<uid>`), and pick the first of all
//!    these directories that is ours, writable and not mounted noexec (an
//!    empty +x probe file and `test -x`, which checks the mount flag).
//! 3. Print `MITO0 need <arch> <gz|raw> <dir>`; the master sends exactly the
//!    agent's bytes (gzip when the target has `gzip`), stage0 stores exactly
//!    that many with `head -c` into a temp file, inflates, verifies the
//!    sha256, renames it into place and execs it.
//! 4. No usable directory: `perl` (Essential on Debian/Ubuntu) copies the
//!    raw agent into a memfd and execs it from there (`MITO0 need … memfd`).
//! 5. Otherwise `MITOERR noexec`: the master reports which hop and why.
//!
//! # Only directories that are ours
//!
//! Another user on the target may pre-create `/dev/shm/mito-<our uid>` (or
//! the `/var/tmp`, `/tmp` ones): open to all, their own, or a symlink to a
//! directory of theirs, with a file of the right hash or size in it, which
//! they can swap between the hash check and the `exec`. So every candidate
//! directory, the warm one included, is checked before stage0 execs from
//! it or writes to it; one that fails is skipped entirely (the next
//! candidate, then the memfd, is used), never repaired:
//! - **The directory:** one `ls -ldn` (a single `lstat`, so type, mode and
//!   owner are of the same object at the same instant) must show a real
//!   directory (not a symlink) owned by our effective uid, mode 0700
//!   (`drwx------`; `drwx--S---` under a setgid parent; an ACL `+` or
//!   SELinux `.` suffix is fine: with group bits `---` the ACL mask grants
//!   nothing). stage0 creates its directories that way (`mkdir -m 700`);
//!   it does not `chmod` one it finds looser, because a file planted in it
//!   while it was open, or a descriptor opened then, would survive that.
//! - **The file:** the same `ls` shows `agent-<sha256>` as a regular file
//!   of ours, mode 0700 (`-rwx------`): not a symlink, not another user's,
//!   not group/other-writable. Otherwise it is not run; the upload replaces
//!   it (`mv -f` within our directory).
//! - **Its ancestors:** the same `ls` shows every directory from `/` down
//!   to the candidate as a real directory (not a symlink) owned by root or
//!   by us, and not writable by group or others unless sticky (`/tmp`,
//!   `/dev/shm`, `/var/tmp`). A home or `$XDG_CACHE_HOME` below a
//!   directory another user owns or may write (a service account whose
//!   home belongs to a deploy user, a group-writable `/srv`) is skipped:
//!   that user could rename our directory away between the check and the
//!   `exec` and put theirs in its place. (A candidate below a symlink is
//!   skipped too, even a root-owned one: where it points was not checked.)
//! - **Then the hash**, and `exec`.
//!
//! Why nothing can change between the checks and the `exec`: once `ls` has
//! seen a real directory of ours under a chain of directories that only
//! root or we may change (or, if sticky, in which only an entry's owner may
//! rename it), nobody else can rename or replace it, and, being 0700,
//! nobody else can add, rename or open anything inside. Only root can, who
//! owns the machine anyway. Our uid comes from `/proc/self/status` (no
//! fork; `id -u` without /proc), never from `$USER`, which `su` leaves as
//! the caller's.
//!
//! # Hash tools
//!
//! `sha256sum`, else `shasum -a 256`, else `openssl dgst -sha256 -r`, else
//! `busybox sha256sum`. Without any of them a **cached** file is never
//! trusted: stage0 uploads again and replaces it on every connect (so such a
//! target costs one upload per connect, as the memfd path does). The
//! **fresh** upload, written by this stage0 into our 0700 directory just
//! now from the master's bytes, is checked by its size (a short transfer
//! fails it): nobody else could have written it. (The alternative, the
//! memfd path, needs perl, which the minimal systems that lack every hash
//! tool often lack too.)
//!
//! A corrupted or truncated cached file fails the sha256 check and is
//! replaced, never executed.
//!
//! The master writes nothing after the agent bytes until the agent's hello,
//! so readers that over-read a pipe (busybox `head -c`) lose nothing.
//!
//! Written against `alloc` only, so an agent can later bootstrap the next hop.

use alloc::string::String;

/// What stage0 needs to know about one embedded agent.
#[derive(Clone, Copy, Debug)]
pub struct AgentSpec<'a> {
    /// `uname -m` name.
    pub arch: &'a str,
    /// Hex sha256 of the raw binary.
    pub sha256: &'a str,
    /// Raw size in bytes.
    pub raw_len: usize,
    /// Gzip size in bytes.
    pub gz_len: usize,
}

/// Marker printed before the master must send the agent.
pub const NEED: &str = "MITO0";
/// Marker printed by stage0 when it gives up.
pub const ERR: &str = "MITOERR";
/// Marker the agent prints right before its first frame.
pub const READY: &str = "MITO2";

/// `memfd_create` system call number per architecture (for the perl loader).
fn memfd_syscall(arch: &str) -> &'static str {
    match arch {
        "aarch64" | "riscv64" => "279",
        "armv7l" | "armv6l" => "385",
        "i686" | "i386" => "356",
        _ => "319",
    }
}

/// Perl loader: copy exactly N bytes of stdin into a memfd (MFD_EXEC where
/// the kernel knows it, for `vm.memfd_noexec`), then exec it. `sysread`
/// never reads past what it is asked for. Free of `'` (it sits inside
/// single quotes) and of `!` (csh history expansion).
const PERL_LOADER: &str = concat!(
    r#"($n,$s)=splice(@ARGV,0,2);$nm="mito-agent";$fd=syscall($s,$nm,17);$fd=syscall($s,$nm,1) if $fd<0;"#,
    r#"die "memfd_create: $^E" if $fd<0;open($m,">&=",$fd) or die "fdopen: $^E";binmode $m;"#,
    r#"while($n>0){$r=sysread(STDIN,$b,$n<65536?$n:65536);die "short read" unless $r;syswrite($m,$b)==$r or die "write: $^E";$n-=$r}"#,
    r#"exec {"/proc/self/fd/$fd"} "mito-agent",@ARGV or die "exec: $^E""#
);

fn push_num(s: &mut String, n: usize) {
    let mut v = alloc::vec::Vec::new();
    crate::core::num::push_decimal(&mut v, n as u64);
    s.push_str(core::str::from_utf8(&v).unwrap_or("0"));
}

/// The stage0 script for context `context_id` with these agents: one line,
/// POSIX sh, no `!` (it passes through the target's login shell, which
/// may be csh), single quotes only around the perl loader.
pub fn script(agents: &[AgentSpec<'_>], context_id: u32) -> String {
    script_preferring_raw(agents, context_id, None)
}

/// [`script`], asking for the raw agent of architecture `raw_arch` even
/// where gzip exists: behind a hop of that architecture the hop sends its
/// own executable, so the bytes cross only the last link.
pub fn script_preferring_raw(agents: &[AgentSpec<'_>], context_id: u32, raw_arch: Option<&str>) -> String {
    let mut s = String::with_capacity(2560);
    // No umask change: the agent and its commands keep the user's. The
    // directories stage0 creates are 0700, which keeps what is inside private.
    s.push_str("I=");
    push_num(&mut s, context_id as usize);
    s.push_str(concat!(
        // u: our effective uid, from /proc without a fork (`id -u` where
        // there is no /proc). Reset first: nothing from the environment.
        // (A missing /proc is a failed redirection: the loop is skipped.)
        ";u=;while read k r e x;do [ \"$k\" = Uid: ]&&u=$e&&break;done 2>/dev/null </proc/self/status",
        ";u=${u:-$(id -u)}",
        // v FILE: a real sha256 of FILE (the first tool that works) equals
        // $H. Without a hash tool, c is empty and v fails.
        ";v(){ c=$({ sha256sum \"$1\"||shasum -a 256 \"$1\"||openssl dgst -sha256 -r \"$1\"||busybox sha256sum \"$1\";} 2>/dev/null)",
        "&&[ \"${c%% *}\" = \"$H\" ];}",
        // o: is $d ours? One `ls -ldn` (an lstat each) of every ancestor of
        // the absolute path $d, of $d and of f=$d/agent-$H, read line by
        // line (mode, links, uid, …, name): 1 when an ancestor is not a
        // real directory of root or $u, or is group/other-writable without
        // the sticky bit (someone else could rename $d away and put theirs
        // in its place), or $d is not a real directory of $u with mode 0700
        // (2700 under a setgid parent); 2 when $f is not a regular file of
        // $u with mode 0700; else 0. LC_ALL=C spares ls a locale. The lines
        // are split in this shell, not in a piped loop (a fork less on every
        // connect): IFS becomes a lone newline, taken from the default IFS
        // (space, tab, newline) since the script is one line, with globbing
        // off; a line too short to hold a name, or any surprise, fails safe.
        ";o(){ f=\"$d/agent-$H\";case $d in /*);;*)return 1;esac;p=$d;set --",
        ";while case $p in /*/*)p=${p%/*};;*)false;;esac;do set -- \"$p\" \"$@\";done",
        ";c=$(LC_ALL=C ls -ldn / \"$@\" \"$d\" \"$f\" 2>/dev/null);k=1;j=2;a=0;g=$IFS;IFS=${g#??};set -f",
        ";for l in $c;do IFS=$g;set -- $l;[ $# -gt 8 ]||{ a=1;continue;};m=$1;w=$3;shift 8;case \"$*\" in",
        " \"$f\"*)case \"$m $w\" in -rwx------*\" $u\")j=0;;esac;;",
        " \"$d\")case \"$m $w\" in drwx--[-S]---*\" $u\")k=0;;esac;;",
        " *)case \"$w\" in 0|\"$u\");;*)a=1;esac;case $m in d????-??-?*|d????????[tT]*);;*)a=1;esac;;",
        "esac;done;IFS=$g;set +f;[ $a$k = 00 ]||return 1;return $j;}",
        ";C=\"${XDG_CACHE_HOME:-$HOME/.cache}/mito\";d=$C",
    ));
    // s ARCH: the agent for ARCH (H, sizes, memfd syscall), else false.
    // Each hash is spelled once, here.
    s.push_str(";s(){ P=;case $1 in ");
    for a in agents {
        s.push_str(a.arch);
        s.push_str(")H=");
        s.push_str(a.sha256);
        s.push_str(";N=");
        push_num(&mut s, a.raw_len);
        s.push_str(";Z=");
        push_num(&mut s, a.gz_len);
        s.push_str(";S=");
        s.push_str(memfd_syscall(a.arch));
        if raw_arch == Some(a.arch) {
            s.push_str(";P=1");
        }
        s.push_str(";;");
    }
    s.push_str("*)return 1;;esac;}");
    // Warm path: no fork for the architecture (the kernel's name for it,
    // read by the shell), one ls and one hash. Only this architecture's
    // agent is tried: a cache shared by hosts of several architectures (an
    // NFS home) may hold another's, and exec'ing that would end the shell.
    // Without /proc/sys/kernel/arch (before Linux 6.1, or no /proc) and a
    // single agent, it is that agent's (a wrong one fails its exec, and the
    // cold path's `uname` names the architecture); with several, the cold
    // path decides. `[ -x ]` first, as before every exec of a cached file:
    // it is false on a noexec mount (a home shared over NFS may be one on
    // this host), where `exec` would fail and end the shell.
    s.push_str(";A=;read A 2>/dev/null </proc/sys/kernel/arch");
    if let [one] = agents {
        s.push_str(";A=${A:-");
        s.push_str(one.arch);
        s.push('}');
    }
    s.push_str(";s \"$A\"&&[ -x \"$d/agent-$H\" ]&&o&&v \"$f\"&&exec \"$f\" \"$H\" \"$I\"");
    // Cold path: `uname -m` is the authority (a test puts a wrapper first
    // in the PATH to play another architecture).
    s.push_str(concat!(
        ";A=$(uname -m);s \"$A\"||{ echo \"MITOERR arch $A\";exit 1;}",
        ";D=;for d in \"$C\" ${XDG_RUNTIME_DIR:+\"$XDG_RUNTIME_DIR/mito\"} \"/dev/shm/mito-$u\" \"/var/tmp/mito-$u\" \"/tmp/mito-$u\";do ",
        "[ \"$D\" ]||mkdir -p -m 700 \"$d\" 2>/dev/null",
        ";o;case $? in 0)[ -x \"$f\" ]&&v \"$f\"&&exec \"$f\" \"$H\" \"$I\";;1)continue;esac",
        ";[ \"$D\" ]||{ t=\"$d/.probe.$$\";: >\"$t\" 2>/dev/null&&chmod 700 \"$t\"&&[ -x \"$t\" ]&&D=$d;rm -f \"$t\";};done",
        ";if [ -n \"$D\" ];then f=\"$D/agent-$H\";t=\"$D/.agent-$H.$$\"",
        ";if [ -z \"$P\" ]&&command -v gzip >/dev/null 2>&1;then echo \"MITO0 need $A gz $D\"",
        ";head -c \"$Z\" >\"$t.gz\"&&gzip -dc <\"$t.gz\" >\"$t\";e=$?;rm -f \"$t.gz\"",
        ";else echo \"MITO0 need $A raw $D\";head -c \"$N\" >\"$t\";e=$?;fi",
        ";[ $e = 0 ]||{ rm -f \"$t\";echo \"MITOERR write $D\";exit 1;}",
        // Our fresh file in our private directory: the hash, or (no hash
        // tool at all) the size, which catches a short transfer.
        ";if v \"$t\"||{ [ -z \"$c\" ]&&[ \"$(wc -c <\"$t\")\" -eq \"$N\" ];};then chmod 700 \"$t\"&&mv -f \"$t\" \"$f\"&&exec \"$f\" \"$H\" \"$I\";fi",
        ";rm -f \"$t\";echo \"MITOERR verify $D\";exit 1;fi",
        ";if command -v perl >/dev/null 2>&1;then echo \"MITO0 need $A raw memfd\";exec perl -e '",
    ));
    s.push_str(PERL_LOADER);
    s.push_str("' \"$N\" \"$S\" \"$H\" \"$I\";fi;echo \"MITOERR noexec\";exit 1");
    s
}

/// Quotes `s` for a POSIX shell: `'…'`, with each `'` as `'\''`.
pub fn sh_quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('\'');
    for c in s.chars() {
        if c == '\'' {
            q.push_str("'\\''");
        } else {
            q.push(c);
        }
    }
    q.push('\'');
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_without_bang() {
        let a = AgentSpec { arch: "x86_64", sha256: "ab", raw_len: 10, gz_len: 5 };
        let s = script(&[a], 7);
        assert!(!s.contains('\n') && !s.contains('!'), "{s}");
        assert_eq!(s.matches('\'').count(), 2, "only the perl loader is quoted");
        assert!(!s.contains("P=1"));
        assert!(script_preferring_raw(&[a], 7, Some("x86_64")).contains("P=1"));
        assert_eq!(sh_quote("a'b"), "'a'\\''b'");
    }

    /// Every byte crosses the wire on every connect: the two embedded
    /// agents (x86_64 and aarch64) with real hash lengths stay within budget.
    /// One agent: 1803 bytes before the ownership checks, 2112 with them,
    /// 2482 with the ancestors', read without a fork, 2427 with each hash
    /// spelled once; the aarch64 agent adds its warm-path line and its
    /// `case` arm (164 bytes): 2591, so the budget went from 2500 to 2600;
    /// the warm path reading the kernel's architecture (one `case`, in a
    /// function both paths call): 2593.
    #[test]
    fn stays_small() {
        let (h1, h2) = ("0".repeat(64), "1".repeat(64));
        let x86 = AgentSpec { arch: "x86_64", sha256: &h1, raw_len: 181_976, gz_len: 94_537 };
        let arm = AgentSpec { arch: "aarch64", sha256: &h2, raw_len: 150_944, gz_len: 91_159 };
        let n = script(&[x86, arm], 1).len();
        assert!(n <= 2600, "stage0 grew to {n} bytes");
    }
}
