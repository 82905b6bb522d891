//! Ansible inventories: the INI and YAML formats Ansible's `ini` and `yaml`
//! inventory plugins read, and a comma list (`-i 'h1,h2,'`).
//!
//! What is kept is what Ansible documents ("How to build your inventory"):
//! groups, `[g:children]`, `[g:vars]`, host ranges (`web[01:20]`,
//! `db-[a:c]`, `[0:10:2]`), `host:port`, host and group variables, the
//! implicit groups `all` and `ungrouped`, and variable precedence: `all`,
//! then parent groups before child groups (by depth, then
//! `ansible_group_priority`, then name, as Ansible sorts them), then the
//! host's own. Values are kept as text: mito only reads the connection
//! variables ([`HostSpec`]), whose meaning does not need Python types.
//!
//! Errors name the file and line ([`InventoryError`]).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// At most this many hosts from one range (`web[1:100000000]` is a typo,
/// not a fleet): the expansion is refused, not attempted.
const MAX_RANGE_HOSTS: usize = 100_000;

/// Why an inventory could not be read: the file, the line (from 1; 0 when
/// the whole file), and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryError {
    /// The file (or the `-I` argument for a comma list).
    pub file: String,
    /// The line, from 1; 0 when it is about the whole file.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for InventoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "inventory {}: {}", self.file, self.message)
        } else {
            write!(f, "inventory {}:{}: {}", self.file, self.line, self.message)
        }
    }
}

impl std::error::Error for InventoryError {}

/// Where something was written: for errors about a value found later
/// (a bad `ansible_port`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Origin {
    /// The file.
    pub file: String,
    /// The line, from 1.
    pub line: usize,
}

impl Origin {
    fn error(&self, message: impl Into<String>) -> InventoryError {
        InventoryError { file: self.file.clone(), line: self.line, message: message.into() }
    }
}

/// One variable's value, as text, and where it was set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Var {
    /// The value (YAML scalars as written: `true`, `22`; lists and maps as JSON).
    pub value: String,
    /// Where it was set.
    pub origin: Origin,
}

/// Variables by name, in the order first set.
pub type Vars = Vec<(String, Var)>;

fn set_var(vars: &mut Vars, name: &str, var: Var) {
    match vars.iter_mut().find(|(n, _)| n == name) {
        Some((_, v)) => *v = var,
        None => vars.push((name.to_string(), var)),
    }
}

/// A group: its own hosts, child groups and variables.
#[derive(Debug, Default)]
struct Group {
    name: String,
    hosts: Vec<String>,
    children: Vec<String>,
    vars: Vars,
}

/// A host: its own variables and where it was first named.
#[derive(Debug)]
struct Host {
    name: String,
    vars: Vars,
    origin: Origin,
    /// The groups that list it, by index (kept here so that a group of
    /// thousands of hosts is not searched for each).
    groups: Vec<usize>,
}

/// Hosts and groups read from one or more sources (later sources add to
/// and override earlier ones, as with several `ansible -i`).
#[derive(Debug)]
pub struct Inventory {
    hosts: Vec<Host>,
    host_index: HashMap<String, usize>,
    groups: Vec<Group>,
    group_index: HashMap<String, usize>,
}

impl Default for Inventory {
    fn default() -> Self {
        Self::new()
    }
}

impl Inventory {
    /// An inventory with only the groups every inventory has.
    pub fn new() -> Inventory {
        let mut inv = Inventory {
            hosts: Vec::new(),
            host_index: HashMap::new(),
            groups: Vec::new(),
            group_index: HashMap::new(),
        };
        inv.group("all");
        inv.group("ungrouped");
        inv
    }

    /// No hosts at all.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Reads one `-I` argument: an existing file (YAML by extension
    /// `.yml`/`.yaml`/`.json` or by its first line, INI otherwise), a
    /// directory (each file in it, by name, as Ansible does: hidden files
    /// and backups skipped), else a comma list of hosts (`h1,h2,` or `h1,`).
    pub fn add_source(&mut self, source: &str) -> Result<(), InventoryError> {
        let path = Path::new(source);
        if path.is_dir() {
            self.add_dir(path)?;
            return self.add_var_dirs(path);
        }
        if path.exists() {
            self.add_file(path)?;
            let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            return self.add_var_dirs(dir);
        }
        if source.contains(',') {
            return self.add_list(source);
        }
        Err(InventoryError {
            file: source.to_string(),
            line: 0,
            message: "no such file or directory (a list of hosts needs a comma: 'h1,h2,' or 'h1,')".into(),
        })
    }

    fn add_dir(&mut self, dir: &Path) -> Result<(), InventoryError> {
        let err =
            |e: std::io::Error| InventoryError { file: dir.display().to_string(), line: 0, message: e.to_string() };
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(dir).map_err(err)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for f in files {
            let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            // Ansible's INVENTORY_IGNORE_EXTS and its variable directories.
            let skip = name.starts_with('.')
                || [".orig", ".ini~", "~", ".cfg", ".retry", ".pyc", ".pyo", ".md", ".txt", ".rst"]
                    .iter()
                    .any(|ext| name.ends_with(ext))
                || name == "group_vars"
                || name == "host_vars";
            if !skip && f.is_file() {
                self.add_file(&f)?;
            }
        }
        Ok(())
    }

    /// `group_vars/` and `host_vars/` beside an inventory (Ansible's
    /// `host_group_vars`): for each group and host of the inventory, the
    /// file named after it (no extension, `.yml`, `.yaml` or `.json`) or the
    /// files of the directory so named, in name order. Their variables
    /// override the inventory file's, as in Ansible. A file encrypted with
    /// ansible-vault is skipped with a warning (mito cannot decrypt it).
    fn add_var_dirs(&mut self, dir: &Path) -> Result<(), InventoryError> {
        for (sub, is_group) in [("group_vars", true), ("host_vars", false)] {
            let base = dir.join(sub);
            if !base.is_dir() {
                continue;
            }
            let names: Vec<String> = if is_group {
                self.groups.iter().map(|g| g.name.clone()).collect()
            } else {
                self.hosts.iter().map(|h| h.name.clone()).collect()
            };
            for name in names {
                for file in var_files(&base, &name) {
                    for (var, value, origin) in self.read_var_file(&file)? {
                        if is_group {
                            self.set_group_var(&name, &var, &value, &origin);
                        } else {
                            self.set_host_var(&name, &var, &value, &origin);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn read_var_file(&self, file: &Path) -> Result<Vec<(String, String, Origin)>, InventoryError> {
        use saphyr::{LoadableYamlNode, MarkedYaml};
        let name = file.display().to_string();
        let err = |line: usize, message: String| InventoryError { file: name.clone(), line, message };
        let text = std::fs::read_to_string(file).map_err(|e| err(0, e.to_string()))?;
        if text.starts_with("$ANSIBLE_VAULT;") {
            log::warn!("{name}: encrypted with ansible-vault, which mito cannot read: skipped");
            return Ok(Vec::new());
        }
        let docs = MarkedYaml::load_from_str(&text).map_err(|e| err(e.marker().line(), e.info().to_string()))?;
        match docs.first() {
            Some(root) => yaml_vars(root, &name, "variables"),
            None => Ok(Vec::new()),
        }
    }

    /// Reads one inventory file.
    pub fn add_file(&mut self, path: &Path) -> Result<(), InventoryError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| InventoryError {
            file: file.clone(),
            line: 0,
            message: e.to_string(),
        })?;
        if looks_like_yaml(path, &text) {
            self.add_yaml(&text, &file)
        } else {
            self.add_ini(&text, &file)
        }
    }

    /// A comma list of hosts (`h1,h2:2222,`): each in `ungrouped`.
    pub fn add_list(&mut self, list: &str) -> Result<(), InventoryError> {
        let origin = Origin { file: list.to_string(), line: 0 };
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, port) = split_port(item);
            for host in expand_ranges(name).map_err(|m| origin.error(m))? {
                self.add_host(&host, &origin);
                if let Some(p) = port {
                    self.set_host_var(&host, "ansible_port", p, &origin);
                }
            }
        }
        Ok(())
    }

    fn group(&mut self, name: &str) -> usize {
        if let Some(&i) = self.group_index.get(name) {
            return i;
        }
        self.groups.push(Group { name: name.to_string(), ..Group::default() });
        self.group_index.insert(name.to_string(), self.groups.len() - 1);
        self.groups.len() - 1
    }

    fn add_host(&mut self, name: &str, origin: &Origin) {
        if !self.host_index.contains_key(name) {
            self.hosts.push(Host {
                name: name.to_string(),
                vars: Vars::new(),
                origin: origin.clone(),
                groups: Vec::new(),
            });
            self.host_index.insert(name.to_string(), self.hosts.len() - 1);
        }
    }

    fn add_host_to(&mut self, group: &str, host: &str) {
        let g = self.group(group);
        let Some(&h) = self.host_index.get(host) else { return };
        if !self.hosts[h].groups.contains(&g) {
            self.hosts[h].groups.push(g);
            self.groups[g].hosts.push(host.to_string());
        }
    }

    fn add_child(&mut self, parent: &str, child: &str) {
        self.group(child);
        let p = self.group(parent);
        if !self.groups[p].children.iter().any(|c| c == child) {
            self.groups[p].children.push(child.to_string());
        }
    }

    fn set_host_var(&mut self, host: &str, name: &str, value: &str, origin: &Origin) {
        if let Some(&i) = self.host_index.get(host) {
            set_var(&mut self.hosts[i].vars, name, Var { value: value.to_string(), origin: origin.clone() });
        }
    }

    fn set_group_var(&mut self, group: &str, name: &str, value: &str, origin: &Origin) {
        let g = self.group(group);
        set_var(&mut self.groups[g].vars, name, Var { value: value.to_string(), origin: origin.clone() });
    }

    /// Reads an INI inventory (Ansible's `ini` plugin).
    pub fn add_ini(&mut self, text: &str, file: &str) -> Result<(), InventoryError> {
        #[derive(Clone, Copy, PartialEq)]
        enum Section {
            Hosts,
            Vars,
            Children,
        }
        let (mut group, mut section) = ("ungrouped".to_string(), Section::Hosts);
        for (n, raw) in text.lines().enumerate() {
            let origin = Origin { file: file.to_string(), line: n + 1 };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if line.starts_with('[') {
                let (name, kind) = parse_section(line).map_err(|m| origin.error(m))?;
                section = match kind {
                    None | Some("hosts") => Section::Hosts,
                    Some("vars") => Section::Vars,
                    Some("children") => Section::Children,
                    Some(other) => {
                        return Err(origin.error(format!(
                            "section [{name}:{other}]: expected [{name}], [{name}:vars] or [{name}:children]"
                        )))
                    }
                };
                self.group(&name);
                group = name;
                continue;
            }
            match section {
                Section::Hosts => self.ini_host_line(line, &group, &origin)?,
                Section::Vars => {
                    let (k, v) = line.split_once('=').ok_or_else(|| {
                        origin.error(format!("expected NAME=VALUE in [{group}:vars], found {line:?}"))
                    })?;
                    let k = k.trim();
                    check_var_name(k).map_err(|m| origin.error(m))?;
                    self.set_group_var(&group, k, &unquote(v.trim()), &origin);
                }
                Section::Children => {
                    let words = split_words(line).map_err(|m| origin.error(m))?;
                    match words.as_slice() {
                        [child] => {
                            if child == &group || child == "all" {
                                return Err(origin.error(format!("group {group} cannot have {child} as a child")));
                            }
                            self.add_child(&group, child);
                        }
                        _ => {
                            return Err(
                                origin.error(format!("expected one group name in [{group}:children], found {line:?}"))
                            )
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// `host[:port] [var=value ...]` in a hosts section.
    fn ini_host_line(&mut self, line: &str, group: &str, origin: &Origin) -> Result<(), InventoryError> {
        let words = split_words(line).map_err(|m| origin.error(m))?;
        let Some((pattern, vars)) = words.split_first() else { return Ok(()) };
        let mut parsed = Vec::new();
        for w in vars {
            let (k, v) = w
                .split_once('=')
                .ok_or_else(|| origin.error(format!("expected NAME=VALUE after the host {pattern}, found {w:?}")))?;
            check_var_name(k).map_err(|m| origin.error(m))?;
            parsed.push((k.to_string(), v.to_string()));
        }
        self.add_host_pattern(pattern, group, &parsed, origin)
    }

    /// Adds the hosts `pattern` expands to (`web[01:03]:2222`) to `group`
    /// with `vars`.
    fn add_host_pattern(
        &mut self,
        pattern: &str,
        group: &str,
        vars: &[(String, String)],
        origin: &Origin,
    ) -> Result<(), InventoryError> {
        let (name, port) = split_port(pattern);
        for host in expand_ranges(name).map_err(|m| origin.error(m))? {
            self.add_host(&host, origin);
            self.add_host_to(group, &host);
            if let Some(p) = port {
                self.set_host_var(&host, "ansible_port", p, origin);
            }
            for (k, v) in vars {
                self.set_host_var(&host, k, v, origin);
            }
        }
        Ok(())
    }

    /// Reads a YAML inventory (Ansible's `yaml` plugin): top-level keys are
    /// groups, each a mapping of `hosts`, `vars` and `children`.
    pub fn add_yaml(&mut self, text: &str, file: &str) -> Result<(), InventoryError> {
        use saphyr::{LoadableYamlNode, MarkedYaml};
        let docs = MarkedYaml::load_from_str(text).map_err(|e| InventoryError {
            file: file.to_string(),
            line: e.marker().line(),
            message: e.info().to_string(),
        })?;
        let Some(root) = docs.first() else { return Ok(()) };
        let origin = |n: &MarkedYaml<'_>| Origin { file: file.to_string(), line: n.span.start.line() };
        if is_null(root) {
            return Ok(());
        }
        let map = mapping(root).ok_or_else(|| origin(root).error("expected a mapping of group names at the top"))?;
        for (k, v) in map {
            let name = scalar_text(k).ok_or_else(|| origin(k).error("a group name must be a plain value"))?;
            if name == "plugin" {
                return Err(origin(k).error("inventory plugins are not supported: list the hosts in the file"));
            }
            self.yaml_group(&name, v, None, file)?;
        }
        Ok(())
    }

    fn yaml_group(
        &mut self,
        name: &str,
        node: &saphyr::MarkedYaml<'_>,
        parent: Option<&str>,
        file: &str,
    ) -> Result<(), InventoryError> {
        let origin = |n: &saphyr::MarkedYaml<'_>| Origin { file: file.to_string(), line: n.span.start.line() };
        check_group_name(name).map_err(|m| origin(node).error(m))?;
        match parent {
            Some(p) if name == "all" || name == p => {
                return Err(origin(node).error(format!("group {p} cannot have {name} as a child")))
            }
            Some(p) => self.add_child(p, name),
            None => {
                self.group(name);
            }
        }
        if is_null(node) {
            return Ok(());
        }
        let map = mapping(node).ok_or_else(|| {
            origin(node).error(format!("group {name}: expected a mapping of hosts, vars and children"))
        })?;
        for (k, v) in map {
            let key = scalar_text(k).unwrap_or_default();
            match key.as_str() {
                "hosts" => self.yaml_hosts(name, v, file)?,
                "vars" => {
                    for (var, value, o) in yaml_vars(v, file, &format!("group {name}'s vars"))? {
                        self.set_group_var(name, &var, &value, &o);
                    }
                }
                "children" if is_null(v) => {}
                "children" => {
                    let children = mapping(v).ok_or_else(|| {
                        origin(v).error(format!("group {name}: children must be a mapping of groups"))
                    })?;
                    for (ck, cv) in children {
                        let child =
                            scalar_text(ck).ok_or_else(|| origin(ck).error("a group name must be a plain value"))?;
                        self.yaml_group(&child, cv, Some(name), file)?;
                    }
                }
                // As Ansible: a warning, not an error.
                other => log::warn!(
                    "{}:{}: group {name}: skipping unexpected key {other:?} (expected hosts, vars, children)",
                    file,
                    k.span.start.line()
                ),
            }
        }
        Ok(())
    }

    fn yaml_hosts(&mut self, group: &str, node: &saphyr::MarkedYaml<'_>, file: &str) -> Result<(), InventoryError> {
        let origin = |n: &saphyr::MarkedYaml<'_>| Origin { file: file.to_string(), line: n.span.start.line() };
        if is_null(node) {
            return Ok(());
        }
        let map = mapping(node)
            .ok_or_else(|| origin(node).error(format!("group {group}: hosts must be a mapping of host names")))?;
        for (k, v) in map {
            let pattern = scalar_text(k).ok_or_else(|| origin(k).error("a host name must be a plain value"))?;
            let vars: Vec<(String, String)> = yaml_vars(v, file, &format!("host {pattern}"))?
                .into_iter()
                .map(|(name, value, _)| (name, value))
                .collect();
            self.add_host_pattern(&pattern, group, &vars, &origin(k))?;
        }
        Ok(())
    }

    /// Every host, in the order first read.
    pub fn host_names(&self) -> impl Iterator<Item = &str> {
        self.hosts.iter().map(|h| h.name.as_str())
    }

    /// Is there a host of this name?
    pub fn has_host(&self, name: &str) -> bool {
        self.host_index.contains_key(name)
    }

    /// Every group's name (`all` and `ungrouped` included).
    pub fn group_names(&self) -> impl Iterator<Item = &str> {
        self.groups.iter().map(|g| g.name.as_str())
    }

    /// The hosts of `group` and of its descendants, in inventory order;
    /// `all` is every host, `ungrouped` those in no group but `all`.
    pub fn group_hosts(&self, group: &str) -> Vec<&str> {
        if group == "all" {
            return self.host_names().collect();
        }
        if group == "ungrouped" {
            return self
                .host_names()
                .filter(|h| self.direct_groups(h).all(|g| g == "all" || g == "ungrouped"))
                .collect();
        }
        let mut members = std::collections::HashSet::new();
        let mut stack = vec![group];
        let mut seen = std::collections::HashSet::new();
        while let Some(g) = stack.pop() {
            if !seen.insert(g) {
                continue;
            }
            if let Some(&i) = self.group_index.get(g) {
                members.extend(self.groups[i].hosts.iter().map(String::as_str));
                stack.extend(self.groups[i].children.iter().map(String::as_str));
            }
        }
        self.host_names().filter(|h| members.contains(h)).collect()
    }

    /// The groups that list `host` directly.
    fn direct_groups<'s>(&'s self, host: &'s str) -> impl Iterator<Item = &'s str> + 's {
        let groups = self.host_index.get(host).map_or(&[][..], |&h| &self.hosts[h].groups[..]);
        groups.iter().map(|&g| self.groups[g].name.as_str())
    }

    /// The parents of each group (`all` the parent of every group that has
    /// no other, as Ansible makes it).
    fn parents(&self, group: &str) -> Vec<&str> {
        let p: Vec<&str> =
            self.groups.iter().filter(|g| g.children.iter().any(|c| c == group)).map(|g| g.name.as_str()).collect();
        if p.is_empty() && group != "all" {
            vec!["all"]
        } else {
            p
        }
    }

    /// A group's depth: `all` 0, each level of children one more (the
    /// longest way down, as Ansible counts it). A cycle is an error.
    fn depth(&self, group: &str, path: &mut Vec<String>) -> Result<usize, InventoryError> {
        if group == "all" {
            return Ok(0);
        }
        if path.iter().any(|g| g == group) {
            return Err(InventoryError {
                file: String::new(),
                line: 0,
                message: format!("the groups {} and {group} are each other's ancestors", path.join(" → ")),
            });
        }
        path.push(group.to_string());
        let mut d = 0;
        for p in self.parents(group) {
            d = d.max(self.depth(p, path)? + 1);
        }
        path.pop();
        Ok(d)
    }

    /// Every group `host` is in, directly or through children, `all` included.
    fn groups_of<'s>(&'s self, host: &'s str) -> Vec<&'s str> {
        let mut out: Vec<&str> = Vec::new();
        let mut stack: Vec<&str> = self.direct_groups(host).collect();
        stack.push("all");
        while let Some(g) = stack.pop() {
            if out.contains(&g) {
                continue;
            }
            out.push(g);
            stack.extend(self.parents(g));
        }
        out
    }

    /// `host`'s variables, merged as Ansible merges them: groups from
    /// the shallowest (`all`) to the deepest, same depth by
    /// `ansible_group_priority` then name, later overriding earlier; the
    /// host's own last.
    pub fn host_vars(&self, host: &str) -> Result<Vars, InventoryError> {
        let Some(&hi) = self.host_index.get(host) else { return Ok(Vars::new()) };
        let mut ranked = Vec::new();
        for g in self.groups_of(host) {
            let Some(&gi) = self.group_index.get(g) else { continue };
            let group = &self.groups[gi];
            let priority = match group.vars.iter().find(|(n, _)| n == "ansible_group_priority") {
                Some((_, v)) => v.value.trim().parse::<i64>().map_err(|_| {
                    v.origin.error(format!("ansible_group_priority of {g}: {:?} is not a number", v.value))
                })?,
                None => 1,
            };
            let depth = self.depth(g, &mut Vec::new()).map_err(|mut e| {
                e.file = self.hosts[hi].origin.file.clone();
                e
            })?;
            ranked.push((depth, priority, g, gi));
        }
        ranked.sort();
        let mut vars = Vars::new();
        for (_, _, _, gi) in ranked {
            for (n, v) in &self.groups[gi].vars {
                set_var(&mut vars, n, v.clone());
            }
        }
        for (n, v) in &self.hosts[hi].vars {
            set_var(&mut vars, n, v.clone());
        }
        Ok(vars)
    }

    /// Where `host` was first named.
    pub fn host_origin(&self, host: &str) -> Origin {
        self.host_index.get(host).map(|&i| self.hosts[i].origin.clone()).unwrap_or_default()
    }
}

/// YAML by extension (as Ansible's `yaml` plugin) or, for a file without
/// one (`./inventory`), by a first line that is `---` or a lone `key:`.
fn looks_like_yaml(path: &Path, text: &str) -> bool {
    match path.extension().and_then(|e| e.to_str()) {
        Some("yml" | "yaml" | "json") => return true,
        Some("ini" | "cfg") => return false,
        _ => {}
    }
    let first = text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#'));
    match first {
        Some(l) => l == "---" || (l.ends_with(':') && !l.starts_with('[') && !l.contains(char::is_whitespace)),
        None => false,
    }
}

/// `[name]` or `[name:kind]`, a comment allowed after.
fn parse_section(line: &str) -> Result<(String, Option<&str>), String> {
    let end = line.find(']').ok_or_else(|| format!("{line:?}: a section header needs a closing ]"))?;
    let rest = line[end + 1..].trim();
    if !(rest.is_empty() || rest.starts_with('#') || rest.starts_with(';')) {
        return Err(format!("{line:?}: text after the section header"));
    }
    let inner = &line[1..end];
    let (name, kind) = match inner.split_once(':') {
        Some((n, k)) => (n, Some(k)),
        None => (inner, None),
    };
    check_group_name(name)?;
    Ok((name.to_string(), kind))
}

fn check_group_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == ':' || c == ',') {
        return Err(format!("{name:?} is not a group name (no spaces, colons or commas)"));
    }
    Ok(())
}

fn check_var_name(name: &str) -> Result<(), String> {
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a variable name"))
    }
}

/// A value with one pair of surrounding quotes removed (`[g:vars]` values).
fn unquote(v: &str) -> String {
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return v[1..v.len() - 1].to_string();
        }
    }
    v.to_string()
}

/// Splits a line into words as Python's `shlex.split(line, comments=True)`,
/// which Ansible's INI plugin uses for host lines: whitespace separates,
/// quotes group, a backslash escapes, `#` at the start of a word begins a
/// comment.
pub fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if let Some(w) = cur.take() {
                    words.push(w);
                }
            }
            '#' if cur.is_none() => break,
            '\\' => {
                let next = chars.next().ok_or_else(|| format!("{line:?}: a backslash at the end"))?;
                cur.get_or_insert_with(String::new).push(next);
            }
            '\'' => {
                let w = cur.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err(format!("{line:?}: no closing quote")),
                    }
                }
            }
            '"' => {
                let w = cur.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => w.push(c),
                            Some(c) => {
                                w.push('\\');
                                w.push(c);
                            }
                            None => return Err(format!("{line:?}: no closing quote")),
                        },
                        Some(c) => w.push(c),
                        None => return Err(format!("{line:?}: no closing quote")),
                    }
                }
            }
            c => cur.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(cur);
    Ok(words)
}

/// `host:port` → (`host`, `port`); a colon inside brackets (a range, an
/// IPv6 address) is not a port's.
fn split_port(pattern: &str) -> (&str, Option<&str>) {
    if let Some(rest) = pattern.strip_prefix('[') {
        // [::1]:22, or a range at the start ([a:c]web).
        if let Some(end) = rest.find("]:") {
            let port = &rest[end + 2..];
            if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && rest[..end].matches(':').count() > 1 {
                return (&rest[..end], Some(port));
            }
        }
    }
    let mut depth = 0i32;
    let mut colons = Vec::new();
    for (i, c) in pattern.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ':' if depth == 0 => colons.push(i),
            _ => {}
        }
    }
    if let [i] = colons.as_slice() {
        let port = &pattern[i + 1..];
        if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
            return (&pattern[..*i], Some(port));
        }
    }
    (pattern, None)
}

/// Expands Ansible host ranges: `web[01:03]` → web01, web02, web03 (a
/// leading zero fixes the width), `db-[a:c]` → db-a, db-b, db-c,
/// `[0:10:2]` a stride; several ranges multiply.
pub fn expand_ranges(pattern: &str) -> Result<Vec<String>, String> {
    let Some(open) = pattern.find('[') else { return Ok(vec![pattern.to_string()]) };
    let Some(len) = pattern[open..].find(']') else {
        return Err(format!("{pattern}: a host range needs a closing ]"));
    };
    let inner = &pattern[open + 1..open + len];
    if !inner.contains(':') {
        // Not a range (an IPv6 address is one word with colons: not here).
        return Err(format!("{pattern}: [{inner}] is not a host range (expected [START:END] or [START:END:STEP])"));
    }
    let (head, tail) = (&pattern[..open], &pattern[open + len + 1..]);
    let parts: Vec<&str> = inner.split(':').collect();
    let (beg, end, step) = match parts.as_slice() {
        [b, e] => (*b, *e, 1usize),
        [b, e, s] => (*b, *e, s.parse::<usize>().map_err(|_| format!("{pattern}: bad range step {s:?}"))?),
        _ => return Err(format!("{pattern}: bad host range [{inner}]")),
    };
    if step == 0 {
        return Err(format!("{pattern}: a range step of 0"));
    }
    let items = range_items(pattern, beg, end, step)?;
    let tails = expand_ranges(tail)?;
    if items.len().saturating_mul(tails.len()) > MAX_RANGE_HOSTS {
        return Err(format!("{pattern}: expands to more than {MAX_RANGE_HOSTS} hosts"));
    }
    let mut out = Vec::with_capacity(items.len() * tails.len());
    for i in &items {
        for t in &tails {
            out.push(format!("{head}{i}{t}"));
        }
    }
    Ok(out)
}

/// The values of one range: numbers (zero-padded when `beg` has a
/// leading zero) or single letters.
fn range_items(pattern: &str, beg: &str, end: &str, step: usize) -> Result<Vec<String>, String> {
    let beg = if beg.is_empty() { "0" } else { beg };
    if let (Ok(b), Ok(e)) = (beg.parse::<u64>(), end.parse::<u64>()) {
        if b > e {
            return Err(format!("{pattern}: the range starts after it ends"));
        }
        if (e - b) / step as u64 >= MAX_RANGE_HOSTS as u64 {
            return Err(format!("{pattern}: expands to more than {MAX_RANGE_HOSTS} hosts"));
        }
        let width = if beg.len() > 1 && beg.starts_with('0') {
            if beg.len() != end.len() {
                return Err(format!("{pattern}: a zero-padded range needs a start and an end of the same width"));
            }
            beg.len()
        } else {
            0
        };
        return Ok((b..=e).step_by(step).map(|i| format!("{i:0width$}")).collect());
    }
    let (mut bc, mut ec) = (beg.chars(), end.chars());
    match (bc.next(), bc.next(), ec.next(), ec.next()) {
        (Some(b), None, Some(e), None) if b.is_ascii_alphabetic() && e.is_ascii_alphabetic() => {
            if b > e {
                return Err(format!("{pattern}: the range starts after it ends"));
            }
            Ok((b..=e).step_by(step).filter(char::is_ascii_alphabetic).map(String::from).collect())
        }
        _ => Err(format!("{pattern}: a range is of numbers or of single letters")),
    }
}

fn is_null(n: &saphyr::MarkedYaml<'_>) -> bool {
    matches!(n.data, saphyr::YamlData::Value(saphyr::Scalar::Null))
}

fn mapping<'a, 'i>(n: &'a saphyr::MarkedYaml<'i>) -> Option<&'a saphyr::AnnotatedMapping<'i, saphyr::MarkedYaml<'i>>> {
    match &n.data {
        saphyr::YamlData::Mapping(m) => Some(m),
        _ => None,
    }
}

/// A scalar as text: strings as they are, booleans `true`/`false`,
/// numbers as written by Rust, null empty; None for a list or mapping.
fn scalar_text(n: &saphyr::MarkedYaml<'_>) -> Option<String> {
    use saphyr::{Scalar, YamlData};
    match &n.data {
        YamlData::Value(Scalar::String(s)) => Some(s.to_string()),
        YamlData::Value(Scalar::Boolean(b)) => Some(b.to_string()),
        YamlData::Value(Scalar::Integer(i)) => Some(i.to_string()),
        YamlData::Value(Scalar::FloatingPoint(f)) => Some(f.to_string()),
        YamlData::Value(Scalar::Null) => Some(String::new()),
        YamlData::Representation(s, _, _) => Some(s.to_string()),
        YamlData::Tagged(_, inner) => scalar_text(inner),
        _ => None,
    }
}

/// A list or mapping as JSON text (a variable mito does not read, kept
/// whole).
fn json_of(n: &saphyr::MarkedYaml<'_>) -> serde_json::Value {
    use saphyr::YamlData;
    match &n.data {
        YamlData::Sequence(s) => serde_json::Value::Array(s.iter().map(json_of).collect()),
        YamlData::Mapping(m) => {
            serde_json::Value::Object(m.iter().map(|(k, v)| (scalar_text(k).unwrap_or_default(), json_of(v))).collect())
        }
        YamlData::Tagged(_, inner) => json_of(inner),
        _ => serde_json::Value::String(scalar_text(n).unwrap_or_default()),
    }
}

/// The files of `name` in a `group_vars/` or `host_vars/` directory.
fn var_files(base: &Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for ext in ["", ".yml", ".yaml", ".json"] {
        let p = base.join(format!("{name}{ext}"));
        if p.is_file() {
            out.push(p);
        }
    }
    let d = base.join(name);
    if d.is_dir() {
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(&d).map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default();
        files.retain(|f| {
            let n = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            f.is_file()
                && !n.starts_with('.')
                && (!n.contains('.') || [".yml", ".yaml", ".json"].iter().any(|e| n.ends_with(e)))
        });
        files.sort();
        out.extend(files);
    }
    out
}

/// Is this node an `!vault` value (ansible-vault ciphertext)?
fn is_vault(n: &saphyr::MarkedYaml<'_>) -> bool {
    match &n.data {
        saphyr::YamlData::Tagged(tag, _) => tag.suffix == "vault",
        saphyr::YamlData::Representation(_, _, Some(tag)) => tag.suffix == "vault",
        _ => false,
    }
}

/// The variables of a `vars:` mapping or a host's mapping (null: none).
fn yaml_vars(
    node: &saphyr::MarkedYaml<'_>,
    file: &str,
    what: &str,
) -> Result<Vec<(String, String, Origin)>, InventoryError> {
    let origin = |n: &saphyr::MarkedYaml<'_>| Origin { file: file.to_string(), line: n.span.start.line() };
    if is_null(node) {
        return Ok(Vec::new());
    }
    let map = mapping(node).ok_or_else(|| origin(node).error(format!("{what}: expected a mapping of variables")))?;
    let mut out = Vec::new();
    for (k, v) in map {
        let name = scalar_text(k).ok_or_else(|| origin(k).error(format!("{what}: a variable name must be plain")))?;
        check_var_name(&name).map_err(|m| origin(k).error(m))?;
        if is_vault(v) {
            // Its ciphertext is no password: left unset, so the usual
            // flags or prompts give it.
            log::warn!(
                "{file}:{}: {what}: {name} is encrypted with ansible-vault, which mito cannot read: skipped",
                k.span.start.line()
            );
            continue;
        }
        let value = scalar_text(v).unwrap_or_else(|| json_of(v).to_string());
        out.push((name, value, origin(k)));
    }
    Ok(out)
}

/// A password from the inventory: shown nowhere, not even in `{:?}`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<hidden>")
    }
}

/// How mito reaches one inventory host, read from its variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    /// The inventory name.
    pub name: String,
    /// `mito_via`: the inventory host whose context this one is reached
    /// through.
    pub via: Option<String>,
    /// `ansible_connection`.
    pub connection: Connection,
    /// `ansible_become` and its user, method and password.
    pub become_: Option<BecomeSpec>,
}

/// `ansible_connection`: the first hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connection {
    /// `local`: an agent on this machine (or on the `mito_via` host).
    Local,
    /// `ssh` (the default; `smart` and `paramiko` too).
    Ssh(SshSpec),
}

/// The ssh hop of a host.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SshSpec {
    /// `ansible_host`, else the inventory name.
    pub host: String,
    /// `ansible_port`.
    pub port: Option<u16>,
    /// `ansible_user`.
    pub user: Option<String>,
    /// `ansible_ssh_private_key_file`.
    pub key: Option<PathBuf>,
    /// `-o` options from `ansible_ssh_common_args` and
    /// `ansible_ssh_extra_args`, in that order.
    pub options: Vec<String>,
    /// `-C` in those arguments.
    pub compression: bool,
    /// `ansible_password`.
    pub password: Option<Secret>,
}

/// sudo, su or doas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BecomeMethod {
    /// `sudo`.
    Sudo,
    /// `su`.
    Su,
    /// `doas`.
    Doas,
}

impl BecomeMethod {
    /// The method's name, as in a target (`sudo:root`).
    pub fn name(self) -> &'static str {
        match self {
            BecomeMethod::Sudo => "sudo",
            BecomeMethod::Su => "su",
            BecomeMethod::Doas => "doas",
        }
    }

    /// `sudo`, `su` or `doas`.
    pub fn parse(s: &str) -> Result<BecomeMethod, String> {
        match s {
            "sudo" => Ok(BecomeMethod::Sudo),
            "su" => Ok(BecomeMethod::Su),
            "doas" => Ok(BecomeMethod::Doas),
            other => Err(format!("become method {other:?} is not supported (sudo, su or doas)")),
        }
    }
}

/// The become hop after the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BecomeSpec {
    /// `ansible_become_method` (default sudo).
    pub method: BecomeMethod,
    /// `ansible_become_user` (default root).
    pub user: String,
    /// `ansible_become_password`.
    pub password: Option<Secret>,
}

/// Finds the first of several variable names (an option and its old
/// spellings) among a host's variables.
type Lookup<'v> = dyn Fn(&[&str]) -> Result<Option<&'v Var>, InventoryError> + 'v;

/// The same, as non-empty text.
type TextLookup<'a> = dyn Fn(&[&str]) -> Result<Option<String>, InventoryError> + 'a;

/// Ansible's booleans: yes/no, true/false, on/off, 1/0, y/n, t/f, any case.
pub fn ansible_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "yes" | "y" | "true" | "t" | "on" | "1" => Some(true),
        "no" | "n" | "false" | "f" | "off" | "0" | "" => Some(false),
        _ => None,
    }
}

impl Inventory {
    /// How to reach `host`, from its merged variables. Unknown `ansible_*`
    /// variables (and `ansible_python_interpreter`: the agent needs no
    /// Python) are ignored; a value mito would have to template
    /// (`{{ ... }}`) is an error, as is one it cannot honour.
    pub fn host_spec(&self, host: &str) -> Result<HostSpec, InventoryError> {
        let vars = self.host_vars(host)?;
        let get = |names: &[&str]| -> Result<Option<&Var>, InventoryError> {
            let Some(v) = names.iter().find_map(|n| vars.iter().find(|(k, _)| k == n).map(|(_, v)| v)) else {
                return Ok(None);
            };
            if v.value.contains("{{") || v.value.contains("{%") {
                return Err(v.origin.error(format!(
                    "{} of {host}: {:?} is a Jinja template, which mito does not expand",
                    names[0], v.value
                )));
            }
            Ok(Some(v))
        };
        let text = |names: &[&str]| -> Result<Option<String>, InventoryError> {
            Ok(get(names)?.map(|v| v.value.clone()).filter(|v| !v.is_empty()))
        };
        let connection = match text(&["ansible_connection"])?.as_deref() {
            Some("local") => Connection::Local,
            None | Some("ssh" | "smart" | "paramiko") => Connection::Ssh(self.ssh_spec(host, &get, &text)?),
            Some(other) => {
                let v = get(&["ansible_connection"])?.map(|v| v.origin.clone()).unwrap_or_default();
                return Err(v.error(format!("ansible_connection={other} of {host}: mito connects with ssh or local")));
            }
        };
        let become_ = match get(&["ansible_become", "ansible_sudo"])? {
            Some(v) => ansible_bool(&v.value)
                .ok_or_else(|| v.origin.error(format!("ansible_become of {host}: {:?} is not a boolean", v.value)))?,
            None => false,
        };
        let become_ = if become_ {
            let method = match get(&["ansible_become_method"])? {
                Some(v) => BecomeMethod::parse(&v.value)
                    .map_err(|m| v.origin.error(format!("ansible_become_method of {host}: {m}")))?,
                None => BecomeMethod::Sudo,
            };
            Some(BecomeSpec {
                method,
                user: text(&["ansible_become_user", "ansible_sudo_user"])?.unwrap_or_else(|| "root".into()),
                password: text(&["ansible_become_password", "ansible_become_pass", "ansible_sudo_pass"])?.map(Secret),
            })
        } else {
            None
        };
        let via = text(&["mito_via"])?;
        if via.as_deref() == Some(host) {
            let o = get(&["mito_via"])?.map(|v| v.origin.clone()).unwrap_or_default();
            return Err(o.error(format!("mito_via of {host} is {host} itself")));
        }
        Ok(HostSpec { name: host.to_string(), via, connection, become_ })
    }

    fn ssh_spec<'v>(&self, host: &str, get: &Lookup<'v>, text: &TextLookup) -> Result<SshSpec, InventoryError> {
        let port = match get(&["ansible_port", "ansible_ssh_port"])? {
            Some(v) if !v.value.is_empty() => Some(
                v.value
                    .trim()
                    .parse::<u16>()
                    .map_err(|_| v.origin.error(format!("ansible_port of {host}: {:?} is not a port", v.value)))?,
            ),
            _ => None,
        };
        let mut spec = SshSpec {
            host: text(&["ansible_host", "ansible_ssh_host"])?.unwrap_or_else(|| host.to_string()),
            port,
            user: text(&["ansible_user", "ansible_ssh_user"])?,
            key: text(&["ansible_ssh_private_key_file", "ansible_private_key_file"])?.map(|k| expand_home(&k)),
            password: text(&["ansible_password", "ansible_ssh_pass", "ansible_ssh_password"])?.map(Secret),
            ..SshSpec::default()
        };
        for name in ["ansible_ssh_common_args", "ansible_ssh_extra_args"] {
            if let Some(v) = get(&[name])? {
                apply_ssh_args(&mut spec, &v.value).map_err(|m| v.origin.error(format!("{name} of {host}: {m}")))?;
            }
        }
        Ok(spec)
    }
}

/// `~/x` → `$HOME/x`, as ssh and Ansible read a key path.
fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => Path::new(&home).join(rest),
        _ => PathBuf::from(path),
    }
}

/// Reads the ssh arguments an inventory may pass (`-o K=V`, `-oK=V`,
/// `-o 'K V'`, `-J`, `-p`, `-l`, `-i`, `-C`, `-A`, `-4`, `-6`, `-q`) into
/// `spec`. mito builds ssh's command line itself, so anything else is an
/// error rather than silently dropped.
pub fn apply_ssh_args(spec: &mut SshSpec, args: &str) -> Result<(), String> {
    let words = split_words(args)?;
    let mut it = words.iter();
    while let Some(w) = it.next() {
        let (flag, attached) = match w.strip_prefix('-') {
            Some(f) if !f.is_empty() => f.split_at(1),
            _ => return Err(format!("{w:?} is not an ssh option")),
        };
        let mut value = |what: &str| -> Result<String, String> {
            if !attached.is_empty() {
                return Ok(attached.to_string());
            }
            it.next().cloned().ok_or_else(|| format!("-{flag} needs {what}"))
        };
        match flag {
            "o" => {
                let o = value("KEY=VALUE")?;
                // ssh takes `Key Value` as well as `Key=Value`.
                let o = match o.split_once('=') {
                    Some(_) => o,
                    None => o.trim().replacen(char::is_whitespace, "=", 1),
                };
                spec.options.push(o);
            }
            "J" => spec.options.push(format!("ProxyJump={}", value("a jump host")?)),
            "p" => spec.port = Some(value("a port")?.parse().map_err(|_| "-p: not a port".to_string())?),
            "l" => spec.user = Some(value("a user")?),
            "i" => spec.key = Some(expand_home(&value("a key file")?)),
            "C" if attached.is_empty() => spec.compression = true,
            "A" if attached.is_empty() => spec.options.push("ForwardAgent=yes".into()),
            "4" if attached.is_empty() => spec.options.push("AddressFamily=inet".into()),
            "6" if attached.is_empty() => spec.options.push("AddressFamily=inet6".into()),
            "q" if attached.is_empty() => spec.options.push("LogLevel=QUIET".into()),
            _ => return Err(format!("ssh option {w} is not supported by mito (use -o Key=Value)")),
        }
    }
    Ok(())
}

/// The inventory of this run: every `-I` source in order; without one
/// `$MITO_INVENTORY` (one source, as one `-I`); without that `./inventory`
/// if it exists. None when there is none. An error in an inventory named
/// by `-I` or `$MITO_INVENTORY` ends the run; one in an `./inventory` that
/// nothing named is a warning (it may be some other program's file), and
/// targets are then plain ones, as without an inventory.
pub fn load(sources: &[String]) -> Result<Option<Inventory>, String> {
    let mut inv = Inventory::new();
    if !sources.is_empty() {
        for s in sources {
            inv.add_source(s).map_err(|e| e.to_string())?;
        }
        return Ok(Some(inv));
    }
    if let Some(s) = std::env::var_os("MITO_INVENTORY").filter(|s| !s.is_empty()) {
        inv.add_source(&s.to_string_lossy()).map_err(|e| format!("{e} (from $MITO_INVENTORY)"))?;
        return Ok(Some(inv));
    }
    let default = Path::new("inventory");
    if !default.exists() {
        return Ok(None);
    }
    match inv.add_source("inventory") {
        Ok(()) => Ok(Some(inv)),
        Err(e) => {
            eprintln!("mito: warning: ignoring ./inventory: {e}");
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ini(text: &str) -> Inventory {
        let mut inv = Inventory::new();
        inv.add_ini(text, "test.ini").expect("parses");
        inv
    }

    fn yaml(text: &str) -> Inventory {
        let mut inv = Inventory::new();
        inv.add_yaml(text, "test.yml").expect("parses");
        inv
    }

    fn var(inv: &Inventory, host: &str, name: &str) -> Option<String> {
        let vars = inv.host_vars(host).expect("vars");
        vars.into_iter().find(|(n, _)| n == name).map(|(_, v)| v.value)
    }

    /// The INI example of Ansible's "How to build your inventory", with
    /// `:children`, `:vars`, a range and host variables.
    #[test]
    fn ini_groups_children_vars_and_ranges() {
        let inv = ini("mail.example.com\n\
             \n\
             [webservers]\n\
             foo.example.com http_port=80\n\
             bar.example.com:2222\n\
             www[01:03].example.com\n\
             \n\
             [dbservers]\n\
             one.example.com ansible_host=192.0.2.50 # a comment\n\
             db-[a:c]\n\
             \n\
             [atlanta]\n\
             foo.example.com\n\
             \n\
             [southeast:children]\n\
             atlanta\n\
             \n\
             [southeast:vars]\n\
             ntp_server = ntp.southeast.example.com\n\
             http_port=8080\n\
             \n\
             [webservers:vars]\n\
             http_port='81'\n\
             [all:vars]\n\
             ntp_server=ntp.example.com\n\
             proxy=proxy.example.com\n");
        let all: Vec<&str> = inv.host_names().collect();
        assert_eq!(
            all,
            [
                "mail.example.com",
                "foo.example.com",
                "bar.example.com",
                "www01.example.com",
                "www02.example.com",
                "www03.example.com",
                "one.example.com",
                "db-a",
                "db-b",
                "db-c"
            ]
        );
        assert_eq!(inv.group_hosts("ungrouped"), ["mail.example.com"]);
        assert_eq!(inv.group_hosts("southeast"), ["foo.example.com"]);
        assert_eq!(var(&inv, "bar.example.com", "ansible_port").as_deref(), Some("2222"));
        // host > child group (atlanta has none) > parent group southeast
        // (depth 1, as webservers: by name, webservers after southeast) > all.
        assert_eq!(var(&inv, "foo.example.com", "http_port").as_deref(), Some("80"));
        assert_eq!(var(&inv, "www01.example.com", "http_port").as_deref(), Some("81"));
        assert_eq!(var(&inv, "foo.example.com", "ntp_server").as_deref(), Some("ntp.southeast.example.com"));
        assert_eq!(var(&inv, "db-b", "ntp_server").as_deref(), Some("ntp.example.com"));
        assert_eq!(var(&inv, "one.example.com", "ansible_host").as_deref(), Some("192.0.2.50"));
    }

    /// A deeper group's variables beat a shallower one's, whatever the
    /// names; the host's own beat both.
    #[test]
    fn child_groups_override_parents_and_hosts_override_groups() {
        let inv = ini("[a_parent:children]\nz_child\n[z_child]\nh1\nh2 v=host\n[a_parent:vars]\nv=parent\n[z_child:vars]\nv=child\n[all:vars]\nv=all\n");
        assert_eq!(var(&inv, "h1", "v").as_deref(), Some("child"));
        assert_eq!(var(&inv, "h2", "v").as_deref(), Some("host"));
        let inv = ini("[p:children]\nc\n[c]\nh1\n[p:vars]\nv=parent\n");
        assert_eq!(var(&inv, "h1", "v").as_deref(), Some("parent"));
    }

    /// The YAML example of the Ansible docs: nested children, host vars
    /// overriding group vars, a range.
    #[test]
    fn yaml_nested_children_and_vars() {
        let inv = yaml(
            "all:\n  hosts:\n    mail.example.com:\n  vars:\n    ntp: all.example.com\n  children:\n    webservers:\n      hosts:\n        foo.example.com:\n          http_port: 80\n        www[01:02].example.com:\n      vars:\n        http_port: 8080\n        become: true\n    dbservers:\n      hosts:\n        one.example.com:\n          ansible_port: 2222\n      children:\n        east:\n          hosts:\n            db-[a:b]:\n          vars:\n            ntp: east.example.com\n    empty:\n",
        );
        let all: Vec<&str> = inv.host_names().collect();
        assert_eq!(
            all,
            [
                "mail.example.com",
                "foo.example.com",
                "www01.example.com",
                "www02.example.com",
                "one.example.com",
                "db-a",
                "db-b"
            ]
        );
        assert_eq!(inv.group_hosts("dbservers"), ["one.example.com", "db-a", "db-b"]);
        assert_eq!(inv.group_hosts("ungrouped"), ["mail.example.com"]);
        assert_eq!(var(&inv, "foo.example.com", "http_port").as_deref(), Some("80"));
        assert_eq!(var(&inv, "www02.example.com", "http_port").as_deref(), Some("8080"));
        assert_eq!(var(&inv, "www02.example.com", "become").as_deref(), Some("true"));
        assert_eq!(var(&inv, "db-a", "ntp").as_deref(), Some("east.example.com"));
        assert_eq!(var(&inv, "one.example.com", "ntp").as_deref(), Some("all.example.com"));
        let spec = inv.host_spec("one.example.com").expect("spec");
        assert!(matches!(spec.connection, Connection::Ssh(SshSpec { port: Some(2222), .. })));
    }

    #[test]
    fn ranges_expand_as_ansible_does() {
        assert_eq!(expand_ranges("web[01:03]").expect("r"), ["web01", "web02", "web03"]);
        assert_eq!(expand_ranges("web[8:10]").expect("r"), ["web8", "web9", "web10"]);
        assert_eq!(expand_ranges("db-[a:c]").expect("r"), ["db-a", "db-b", "db-c"]);
        assert_eq!(expand_ranges("h[0:6:3]").expect("r"), ["h0", "h3", "h6"]);
        assert_eq!(expand_ranges("r[1:2]c[a:b]").expect("r"), ["r1ca", "r1cb", "r2ca", "r2cb"]);
        assert!(expand_ranges("web[3:1]").is_err());
        assert!(expand_ranges("web[01:100]").is_err(), "widths differ");
        assert!(expand_ranges("web[1:99999999]").is_err(), "too many");
        assert!(expand_ranges("web[1:2").is_err());
    }

    /// Errors name the file and the line.
    #[test]
    fn bad_inventories_name_file_and_line() {
        let mut inv = Inventory::new();
        let e = inv.add_ini("[web]\nh1\n[web:bogus]\n", "x.ini").expect_err("bad section");
        assert_eq!((e.file.as_str(), e.line), ("x.ini", 3));
        let e = inv.add_ini("[web]\nh1 novalue\n", "x.ini").expect_err("bad var");
        assert_eq!(e.line, 2);
        assert!(e.to_string().starts_with("inventory x.ini:2: "), "{e}");
        let e = inv.add_ini("[web]\nh1 a='open\n", "x.ini").expect_err("quote");
        assert_eq!(e.line, 2);
        let e = inv.add_yaml("all:\n  hosts:\n    - h1\n", "y.yml").expect_err("list");
        assert_eq!((e.file.as_str(), e.line), ("y.yml", 3));
        let e = inv.add_yaml("all: [unclosed\n", "y.yml").expect_err("syntax");
        assert_eq!(e.file, "y.yml");
        let inv = ini("[web]\nh1 ansible_port=http\n");
        let e = inv.host_spec("h1").expect_err("port");
        assert_eq!(e.line, 2);
        let inv = ini("[a:children]\nb\n[b:children]\na\n[b]\nh\n");
        assert!(inv.host_vars("h").is_err(), "a cycle");
    }

    /// The connection variables become a spec: ssh with its options, become,
    /// local, via; passwords never shown by `{:?}`.
    #[test]
    fn connection_variables_map_to_hops() {
        let inv = ini("[web]\nw1 ansible_host=10.0.0.1 ansible_port=2222 ansible_user=deploy ansible_ssh_private_key_file=/k ansible_password=pw1\n\
             w2 ansible_connection=local ansible_become=yes ansible_become_user=app ansible_become_method=su ansible_become_password=pw2 mito_via=w1\n\
             w3 ansible_ssh_common_args='-o ProxyJump=bastion -C' ansible_ssh_extra_args='-oServerAliveInterval=5 -o \"Compression no\"' ansible_python_interpreter=/usr/bin/python3\n\
             w4 ansible_connection=docker\n\
             w5 ansible_become_method=runas ansible_become=true\n\
             w6 ansible_ssh_common_args='-R 80:localhost:80'\n");
        let w1 = inv.host_spec("w1").expect("w1");
        let Connection::Ssh(s) = &w1.connection else { panic!("ssh") };
        assert_eq!(
            (s.host.as_str(), s.port, s.user.as_deref(), s.key.as_deref()),
            ("10.0.0.1", Some(2222), Some("deploy"), Some(Path::new("/k")))
        );
        assert_eq!(s.password, Some(Secret("pw1".into())));
        assert!(!format!("{w1:?}").contains("pw1"));
        let w2 = inv.host_spec("w2").expect("w2");
        assert_eq!(w2.connection, Connection::Local);
        assert_eq!(w2.via.as_deref(), Some("w1"));
        assert_eq!(
            w2.become_,
            Some(BecomeSpec { method: BecomeMethod::Su, user: "app".into(), password: Some(Secret("pw2".into())) })
        );
        let Connection::Ssh(s) = inv.host_spec("w3").expect("w3").connection else { panic!("ssh") };
        assert_eq!(s.options, ["ProxyJump=bastion", "ServerAliveInterval=5", "Compression=no"]);
        assert!(s.compression);
        assert!(inv.host_spec("w4").expect_err("docker").to_string().contains("ansible_connection=docker"));
        assert!(inv.host_spec("w5").is_err());
        assert!(inv.host_spec("w6").expect_err("-R").to_string().contains("-R"));
    }

    /// group_vars/ and host_vars/ beside the inventory override its
    /// variables; vault-encrypted files and values are skipped.
    #[test]
    fn group_vars_and_host_vars_directories() {
        let dir = std::env::temp_dir().join(format!("mito-inv-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("group_vars/web")).expect("mkdir");
        std::fs::create_dir_all(dir.join("host_vars")).expect("mkdir");
        let write = |p: &str, t: &str| std::fs::write(dir.join(p), t).expect("write");
        write("hosts", "[web]\nw1 v=inline\nw2\n[web:vars]\ng=ini\n");
        write("group_vars/all.yml", "a: from-all\n");
        write("group_vars/web/main.yml", "g: from-dir\nsecret: !vault |\n  $ANSIBLE_VAULT;1.1;AES256\n  6162\n");
        write("group_vars/web/vault", "$ANSIBLE_VAULT;1.1;AES256\n6162\n");
        write("host_vars/w1", "---\nv: from-host-vars\n");
        let mut inv = Inventory::new();
        inv.add_source(&dir.join("hosts").display().to_string()).expect("loads");
        assert_eq!(var(&inv, "w1", "v").as_deref(), Some("from-host-vars"));
        assert_eq!(var(&inv, "w2", "g").as_deref(), Some("from-dir"));
        assert_eq!(var(&inv, "w2", "a").as_deref(), Some("from-all"));
        assert_eq!(var(&inv, "w2", "secret"), None);
        write("host_vars/w2.yml", "v: [unclosed\n");
        let e = Inventory::new().add_source(&dir.join("hosts").display().to_string()).expect_err("bad yaml");
        assert!(e.file.ends_with("host_vars/w2.yml"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn comma_lists_and_yaml_detection() {
        let mut inv = Inventory::new();
        inv.add_source("h1,h2:2200,").expect("list");
        assert_eq!(inv.host_names().collect::<Vec<_>>(), ["h1", "h2"]);
        assert_eq!(var(&inv, "h2", "ansible_port").as_deref(), Some("2200"));
        assert!(inv.add_source("/nonexistent/inventory").is_err());
        assert!(looks_like_yaml(Path::new("inventory"), "# x\nall:\n  hosts:\n"));
        assert!(!looks_like_yaml(Path::new("inventory"), "[web]\nh1\n"));
        assert!(!looks_like_yaml(Path::new("hosts"), "h1 a=b\n"));
    }
}
