//! The `chroot` method: an agent whose root is a directory tree (an image
//! being built, a rescue system), executed from a memfd and started
//! directly, like [`super::setns`] without the namespaces. Needs root
//! (`CAP_SYS_CHROOT`) where it runs.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// Options of [`crate::Router::chroot`].
#[derive(Clone, Debug)]
pub struct ChrootOptions {
    /// The new root (on the host that starts the agent: the master's, or
    /// the hop's).
    pub path: PathBuf,
    /// Run as this user: a name in the tree's `/etc/passwd`, or a number
    /// (groups from its `/etc/group`). Default: the caller's (root).
    pub user: Option<String>,
    /// Name in logs and errors (default `chroot:<path>`).
    pub name: Option<String>,
    /// Variables set on top of the starting agent's environment.
    pub env: Vec<(OsString, OsString)>,
    /// Limit for the whole start, fork to hello.
    pub connect_timeout: Duration,
}

impl ChrootOptions {
    /// Options to start an agent with `path` as its root.
    pub fn new(path: impl Into<PathBuf>) -> ChrootOptions {
        ChrootOptions {
            path: path.into(),
            user: None,
            name: None,
            env: Vec::new(),
            connect_timeout: Duration::from_secs(30),
        }
    }
}

/// `user` (a name, or a number) in a tree's `passwd` text, with the groups
/// its `group` text lists it in. A number missing from passwd is taken as
/// is (gid the same). Resolved by the master (reading the tree's files
/// here, or through the hop), so the agent carries no passwd parser.
pub(crate) fn resolve_user(passwd: &[u8], group: &[u8], user: &str) -> Option<crate::proto::functions::Ids> {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let (passwd, group) = (text(passwd), text(group));
    let number: Option<u32> = user.parse().ok();
    let entry = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        let (name, uid, gid) = (*f.first()?, f.get(2)?.parse::<u32>().ok()?, f.get(3)?.parse::<u32>().ok()?);
        (name == user || number == Some(uid)).then(|| (name.to_string(), uid, gid))
    });
    let (name, uid, gid) = match (entry, number) {
        (Some(e), _) => e,
        (None, Some(n)) => (String::new(), n, n),
        (None, None) => return None,
    };
    let mut groups = vec![gid];
    for l in group.lines() {
        let f: Vec<&str> = l.split(':').collect();
        let (Some(g), Some(members)) = (f.get(2).and_then(|g| g.parse::<u32>().ok()), f.get(3)) else { continue };
        if !name.is_empty() && members.split(',').any(|m| m == name) && !groups.contains(&g) {
            groups.push(g);
        }
    }
    Some(crate::proto::functions::Ids { uid, gid, groups })
}

#[cfg(test)]
mod tests {
    #[test]
    fn users_resolve_by_name_or_number_with_their_groups() {
        let passwd = b"root:x:0:0::/:/bin/sh\napp:x:1234:2345::/:/none\n";
        let group = b"app:x:2345:\nextra:x:3456:other,app\nnot:x:9:other\n";
        let ids = super::resolve_user(passwd, group, "app").expect("app");
        assert_eq!((ids.uid, ids.gid, ids.groups), (1234, 2345, vec![2345, 3456]));
        assert_eq!(super::resolve_user(passwd, group, "1234").map(|i| i.uid), Some(1234));
        assert_eq!(super::resolve_user(passwd, group, "777").map(|i| (i.uid, i.gid)), Some((777, 777)));
        assert!(super::resolve_user(passwd, group, "nobody-here").is_none());
    }
}
