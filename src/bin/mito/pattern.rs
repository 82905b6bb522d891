//! Ansible host patterns over an [`Inventory`]: `all` or `*`, group and
//! host names, globs (`web*`, `db-?`, `[ab]*`), subscripts
//! (`webservers[0]`, `webservers[1:3]`, `webservers[-1]`), and lists of
//! them joined by `:` or `,` where `&x` intersects and `!x` excludes.
//!
//! Evaluated in Ansible's order: the plain terms first (their union, in
//! order), then every `&` term, then every `!` term, whatever order they
//! were written in; with only `&`/`!` terms the plain part is `all`.
//! Within a term, groups match first; host names are tried when no group
//! matched or the term is a glob.

use std::collections::HashSet;

use super::inventory::Inventory;

/// The hosts `pattern` selects, in order, each once, and the terms that
/// matched nothing (Ansible warns about them and goes on).
pub fn select<'a>(inv: &'a Inventory, pattern: &str) -> Result<(Vec<&'a str>, Vec<String>), String> {
    let terms = split(pattern);
    if terms.is_empty() {
        return Err(format!("empty host pattern {pattern:?}"));
    }
    let mut plain: Vec<&str> = terms.iter().map(String::as_str).filter(|t| !t.starts_with(['&', '!'])).collect();
    if plain.is_empty() {
        plain.push("all");
    }
    let mut unmatched = Vec::new();
    let mut matched = |term: &str| -> Result<Vec<&'a str>, String> {
        let hosts = match_term(inv, term)?;
        if hosts.is_empty() {
            unmatched.push(term.to_string());
        }
        Ok(hosts)
    };
    // Sets beside the lists: inventories of thousands of hosts.
    let mut hosts: Vec<&'a str> = Vec::new();
    let mut seen = HashSet::new();
    for t in plain {
        for h in matched(t)? {
            if seen.insert(h) {
                hosts.push(h);
            }
        }
    }
    for t in terms.iter().filter_map(|t| t.strip_prefix('&')) {
        let that: HashSet<&str> = matched(t)?.into_iter().collect();
        hosts.retain(|h| that.contains(h));
    }
    for t in terms.iter().filter_map(|t| t.strip_prefix('!')) {
        let that: HashSet<&str> = matched(t)?.into_iter().collect();
        hosts.retain(|h| !that.contains(h));
    }
    Ok((hosts, unmatched))
}

/// `--limit`: `hosts` kept only where `limit` (a pattern, or `@FILE` of
/// host names, one a line) selects them.
pub fn limit<'a>(inv: &'a Inventory, hosts: Vec<&'a str>, limit: &str) -> Result<Vec<&'a str>, String> {
    let allowed: Vec<String> = match limit.strip_prefix('@') {
        Some(file) => std::fs::read_to_string(file)
            .map_err(|e| format!("--limit @{file}: {e}"))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect(),
        None => select(inv, limit)?.0.into_iter().map(String::from).collect(),
    };
    let allowed: HashSet<&str> = allowed.iter().map(String::as_str).collect();
    Ok(hosts.into_iter().filter(|h| allowed.contains(h)).collect())
}

/// Splits at commas if there is one, else at colons outside brackets (a
/// range or subscript keeps its colon), as Ansible's `split_host_pattern`.
pub fn split(pattern: &str) -> Vec<String> {
    let parts: Vec<String> = if pattern.contains(',') {
        pattern.split(',').map(String::from).collect()
    } else {
        let mut parts = vec![String::new()];
        let mut depth = 0i32;
        for c in pattern.chars() {
            match c {
                '[' => depth += 1,
                ']' => depth -= 1,
                _ => {}
            }
            match parts.last_mut() {
                Some(cur) if c != ':' || depth > 0 => cur.push(c),
                _ => parts.push(String::new()),
            }
        }
        parts
    };
    parts.into_iter().map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect()
}

/// The hosts of one term (no `&`/`!`).
fn match_term<'a>(inv: &'a Inventory, term: &str) -> Result<Vec<&'a str>, String> {
    if term.starts_with('~') {
        return Err(format!("host pattern {term}: regular expressions are not supported (use a glob: web*)"));
    }
    let (base, sub) = split_subscript(term)?;
    if base == "all" || base == "*" {
        return Ok(subscript(inv.host_names().collect(), sub));
    }
    let mut hosts: Vec<&'a str> = Vec::new();
    let mut seen = HashSet::new();
    let mut add = |hs: Vec<&'a str>| {
        for h in hs {
            if seen.insert(h) {
                hosts.push(h);
            }
        }
    };
    let groups: Vec<&str> = inv.group_names().filter(|g| glob(base, g)).collect();
    for g in &groups {
        add(inv.group_hosts(g));
    }
    if groups.is_empty() || base.contains(['*', '?', '[', '.']) {
        add(inv.host_names().filter(|h| glob(base, h)).collect());
    }
    Ok(subscript(hosts, sub))
}

/// A subscript: one index (negative from the end) or a range, both ends in.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Sub {
    One(i64),
    Range(Option<usize>, Option<usize>),
}

/// `name[1]`, `name[-1]`, `name[0:2]`, `name[:2]` → (name, subscript). A
/// bracket that is not one of these is a glob's character class.
fn split_subscript(term: &str) -> Result<(&str, Option<Sub>), String> {
    let Some(inner) = term.strip_suffix(']') else { return Ok((term, None)) };
    let Some(open) = inner.rfind('[') else { return Ok((term, None)) };
    let (base, spec) = (&inner[..open], &inner[open + 1..]);
    if base.is_empty() {
        return Ok((term, None));
    }
    let num = |s: &str| s.trim().parse::<usize>();
    if let Ok(i) = spec.trim().parse::<i64>() {
        return Ok((base, Some(Sub::One(i))));
    }
    if let Some((a, b)) = spec.split_once(':') {
        let a = if a.trim().is_empty() { None } else { Some(num(a).map_err(|_| format!("bad subscript in {term}"))?) };
        let b = if b.trim().is_empty() { None } else { Some(num(b).map_err(|_| format!("bad subscript in {term}"))?) };
        return Ok((base, Some(Sub::Range(a, b))));
    }
    Ok((term, None))
}

fn subscript(hosts: Vec<&str>, sub: Option<Sub>) -> Vec<&str> {
    match sub {
        None => hosts,
        Some(Sub::One(i)) => {
            let idx = if i < 0 { hosts.len() as i64 + i } else { i };
            usize::try_from(idx).ok().and_then(|i| hosts.get(i).copied()).into_iter().collect()
        }
        Some(Sub::Range(a, b)) => {
            let a = a.unwrap_or(0);
            let b = b.unwrap_or(usize::MAX);
            hosts.into_iter().enumerate().filter(|(i, _)| *i >= a && *i <= b).map(|(_, h)| h).collect()
        }
    }
}

/// fnmatch: `*`, `?`, `[abc]`, `[a-z]`, `[!a]`; everything else literal.
pub fn glob(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    glob_at(&p, &n)
}

fn glob_at(p: &[char], n: &[char]) -> bool {
    match p.first() {
        None => n.is_empty(),
        Some('*') => (0..=n.len()).any(|i| glob_at(&p[1..], &n[i..])),
        Some('?') => !n.is_empty() && glob_at(&p[1..], &n[1..]),
        Some('[') => match (class(&p[1..], n.first().copied()), n.is_empty()) {
            (Some((true, used)), false) => glob_at(&p[1 + used..], &n[1..]),
            (Some(_), _) => false,
            // No closing bracket: a literal '['.
            (None, _) => n.first() == Some(&'[') && glob_at(&p[1..], &n[1..]),
        },
        Some(c) => n.first() == Some(c) && glob_at(&p[1..], &n[1..]),
    }
}

/// A character class after its `[`: (does `c` match, chars used up to
/// and with the `]`), or None if it never closes.
fn class(p: &[char], c: Option<char>) -> Option<(bool, usize)> {
    let negate = matches!(p.first(), Some('!' | '^'));
    let mut i = usize::from(negate);
    let mut hit = false;
    let mut first = true;
    while i < p.len() {
        if p[i] == ']' && !first {
            return Some((hit != negate, i + 1));
        }
        first = false;
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            hit |= c.is_some_and(|c| p[i] <= c && c <= p[i + 2]);
            i += 3;
        } else {
            hit |= c == Some(p[i]);
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv() -> Inventory {
        let mut inv = Inventory::new();
        inv.add_ini(
            "[web]\nweb[1:4]\n[db]\ndb1\ndb2\n[prod]\nweb1\nweb2\ndb1\n[staging]\nweb3\n[eu:children]\nprod\n",
            "t.ini",
        )
        .expect("parses");
        inv
    }

    fn hosts(p: &str) -> Vec<String> {
        let inv = inv();
        select(&inv, p).expect("pattern").0.into_iter().map(String::from).collect()
    }

    #[test]
    fn patterns_select_as_ansible() {
        assert_eq!(hosts("all"), ["web1", "web2", "web3", "web4", "db1", "db2"]);
        assert_eq!(hosts("*"), hosts("all"));
        assert_eq!(hosts("db"), ["db1", "db2"]);
        assert_eq!(hosts("web3"), ["web3"]);
        assert_eq!(hosts("web*"), ["web1", "web2", "web3", "web4"]);
        assert_eq!(hosts("db:staging"), ["db1", "db2", "web3"]);
        assert_eq!(hosts("db,staging"), ["db1", "db2", "web3"]);
        assert_eq!(hosts("web:&prod"), ["web1", "web2"]);
        assert_eq!(hosts("web:!prod"), ["web3", "web4"]);
        // Exclusions and intersections come last, wherever written.
        assert_eq!(hosts("!prod:web"), ["web3", "web4"]);
        assert_eq!(hosts("!web"), ["db1", "db2"]);
        assert_eq!(hosts("eu:&db"), ["db1"]);
        assert_eq!(hosts("web[0]"), ["web1"]);
        assert_eq!(hosts("web[-1]"), ["web4"]);
        assert_eq!(hosts("web[1:2]"), ["web2", "web3"]);
        assert_eq!(hosts("db[12]"), Vec::<String>::new());
        assert_eq!(hosts("web[3-4]"), ["web3", "web4"], "a glob class");
        assert_eq!(hosts("web[34]"), Vec::<String>::new(), "a subscript, as in Ansible");
        assert_eq!(hosts("ssh://web1"), Vec::<String>::new());
        let inv = inv();
        let (h, unmatched) = select(&inv, "db:nope").expect("p");
        assert_eq!((h, unmatched), (vec!["db1", "db2"], vec!["nope".to_string()]));
        assert!(select(&inv, "~web.*").is_err());
        let all = select(&inv, "all").expect("p").0;
        assert_eq!(limit(&inv, all, "prod:!db1").expect("l"), ["web1", "web2"]);
    }

    #[test]
    fn globs() {
        assert!(glob("web*", "web12"));
        assert!(glob("w?b", "web"));
        assert!(glob("[a-c]x", "bx"));
        assert!(!glob("[!a-c]x", "bx"));
        assert!(glob("a[", "a["));
        assert!(!glob("web", "web1"));
    }
}
