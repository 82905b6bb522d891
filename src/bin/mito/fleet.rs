//! Runs on many hosts: `mito run|ping|facts PATTERN`, `mito put SRC
//! PATTERN:/PATH` and `mito get PATTERN:/PATH DIR` (into `DIR/<host>/`),
//! where PATTERN is a host pattern of the inventory (`pattern`, `inventory`).
//!
//! Each host becomes a [`Plan`]: the chain of hops `target` would connect
//! for it, made by `settings` from the host's variables (its `mito_via`
//! host's chain first, then its connection, then its become hop). Hops
//! with the same key (a via host's) are one [`Slot`], connected once and
//! shared, as `Targets` shares chain prefixes.
//!
//! The first hop of every plan (a shared one once) is connected by
//! `Router::connect_many`: up to `--forks` connects in flight, all driven
//! by one `poll` on the main thread (no thread per host; each keeps its
//! own connect timeout). A plan whose first hop is up goes to a worker
//! for the rest of its chain (become and `mito_via` hops, connected
//! through the hop's agent) and the verb, which are blocking calls:
//! workers start only when none is idle, at most `--forks` of them. A host
//! that cannot be reached is reported and the others go on. The results are printed at the end, grouped by
//! host with identical outputs folded (`web[01:03] (3 hosts): ok`), or with
//! `--json` one object a line per host; then a summary line.
//!
//! Exit status: 0 every host ok; [`EXIT_FAILED`] some command failed (a
//! non-zero exit, a signal, a timeout, an error running it) and every host
//! was reached; [`EXIT_UNREACHABLE`] some host could not be reached (or
//! was lost), whatever the others did; 255 mito itself failed (a bad
//! inventory); 141 the reader of stdout went away.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use mito::functions::ExecArgs;
use mito::master::ConnectSpec;
use mito::{CallError, ConnectError, Context, CopyOptions, GetOptions, ProcessEvent, Router, SshFailure};
use serde::Serialize;

use super::cli::{Cli, Command, FleetArgs};
use super::inventory::{BecomeMethod, BecomeSpec, Connection, HostSpec, Inventory};
use super::secrets::Secrets;
use super::settings::{exec_args, Hop, Settings};
use super::target::split_remote;
use super::{copy, pattern, render};

/// Exit status when some command failed and every host was reached.
pub const EXIT_FAILED: u8 = 3;
/// Exit status when some host could not be reached.
pub const EXIT_UNREACHABLE: u8 = 4;

/// What to do on each host.
enum Verb {
    Run(Box<ExecArgs>),
    /// `run --stream`.
    Stream(Box<ExecArgs>),
    Ping,
    Facts,
    /// `put SRC PATTERN:/PATH`.
    Put(Box<Copy>),
    /// `get PATTERN:/PATH DIR`.
    Get(Box<Copy>),
}

/// A copy on each host: `local` (the source of a put, the directory of a
/// get) and the path there.
struct Copy {
    local: std::path::PathBuf,
    remote: String,
    recursive: bool,
    preserve_owner: bool,
    /// `--force`, `--compress`, `--checksum`: as for one target.
    opts: CopyOptions,
}

/// A run on the hosts a pattern matched.
pub struct Job<'a> {
    hosts: Vec<&'a str>,
    verb: Verb,
    json: bool,
    fleet: FleetArgs,
}

/// The fleet job of `cli`, if its target is a host pattern that matches
/// hosts of `inv` (or `--list-hosts` was asked): None for a plain target.
pub fn job<'a>(cli: &Cli, inv: &'a Inventory) -> Result<Option<Job<'a>>, String> {
    let (target, fleet, json) = match &cli.command {
        Command::Run(a) => (a.target.as_str(), &a.fleet, a.json),
        Command::Ping(a) => (a.target.as_str(), &a.fleet, a.json),
        Command::Facts(a) => (a.target.as_str(), &a.fleet, a.json),
        // One destination may be a pattern; several are plain targets.
        Command::Put(a) if a.dest.len() == 1 => (split_remote(&a.dest[0])?.0, &a.fleet, a.json),
        Command::Get(a) => (split_remote(&a.src)?.0, &a.fleet, a.json),
        _ => return Ok(None),
    };
    let (mut hosts, unmatched) = if inv.is_empty() { (Vec::new(), Vec::new()) } else { pattern::select(inv, target)? };
    if hosts.is_empty() && !fleet.list_hosts {
        if fleet.limit.is_some() || fleet.become_ {
            return Err(format!(
                "{target:?} matches no host of the inventory (-i): --limit and --become are for host patterns"
            ));
        }
        if json && !matches!(cli.command, Command::Facts(_)) {
            return Err(format!("{target:?} matches no host of the inventory (-i): --json is for host patterns"));
        }
        return Ok(None);
    }
    for u in unmatched {
        eprintln!("mito: warning: could not match host pattern {u:?}; ignoring it");
    }
    if let Some(l) = &fleet.limit {
        hosts = pattern::limit(inv, hosts, l)?;
    }
    let verb = match &cli.command {
        Command::Run(a) if a.tty => return Err("-t is for one target, not a host pattern".into()),
        Command::Run(a) if !fleet.list_hosts && a.stream => Verb::Stream(Box::new(exec_args(a)?)),
        Command::Run(a) if !fleet.list_hosts => Verb::Run(Box::new(exec_args(a)?)),
        Command::Facts(_) => Verb::Facts,
        Command::Put(a) => Verb::Put(Box::new(Copy {
            local: a.src.clone(),
            remote: split_remote(&a.dest[0])?.1.to_string(),
            recursive: a.recursive,
            preserve_owner: false,
            opts: a.copy.options(),
        })),
        Command::Get(a) => Verb::Get(Box::new(Copy {
            local: a.dest.clone(),
            remote: split_remote(&a.src)?.1.to_string(),
            recursive: a.recursive,
            preserve_owner: a.preserve_owner,
            opts: a.copy.options(),
        })),
        _ => Verb::Ping,
    };
    Ok(Some(Job { hosts, verb, json, fleet: fleet.clone() }))
}

/// Why a host was not reached: for people, and a kind for scripts.
#[derive(Clone, Debug)]
struct Failure {
    message: String,
    kind: &'static str,
}

/// One hop shared by the plans that go through it: connected by the first
/// that needs it, its result kept for the others.
struct Slot {
    hop: Mutex<Option<PlannedHop>>,
    done: Mutex<Option<Result<Context, Failure>>>,
}

/// A hop and where its password comes from when the inventory gives none.
struct PlannedHop {
    hop: Hop,
    /// An ssh hop without `ansible_password`: the command line's, if any.
    cli_ssh_password: bool,
    /// A become hop without `ansible_become_password`: the command line's
    /// for this chain (its text, and its index among become hops).
    cli_become_password: Option<(String, usize)>,
}

/// The hops of one host, first to last.
pub struct Plan {
    name: String,
    hops: Vec<Arc<Slot>>,
}

/// Makes plans, sharing the slots of `mito_via` hosts.
struct Planner<'a> {
    inv: &'a Inventory,
    settings: &'a Settings,
    fleet: &'a FleetArgs,
    /// Per host planned so far: its slots and their chain texts.
    made: Vec<(String, Vec<Arc<Slot>>, Vec<String>)>,
}

impl Planner<'_> {
    /// The plan of `host`; `stack` the hosts whose `mito_via` led here.
    fn plan(&mut self, host: &str, stack: &mut Vec<String>) -> Result<(Vec<Arc<Slot>>, Vec<String>), String> {
        if let Some((_, slots, labels)) = self.made.iter().find(|(h, _, _)| h == host) {
            return Ok((slots.clone(), labels.clone()));
        }
        let spec = self.inv.host_spec(host).map_err(|e| e.to_string())?;
        let (mut slots, mut labels) = match &spec.via {
            Some(via) if !self.inv.has_host(via) => {
                let o = self.inv.host_origin(host);
                return Err(format!("inventory {}: mito_via of {host}: no host {via:?} in the inventory", o.file));
            }
            Some(via) if stack.iter().any(|h| h == via) => {
                return Err(format!("mito_via: the hosts {} and {via} are each other's hops", stack.join(" → ")));
            }
            Some(via) => {
                stack.push(host.to_string());
                let r = self.plan(via, stack);
                stack.pop();
                r?
            }
            None => (Vec::new(), Vec::new()),
        };
        for (planned, label) in self.own_hops(host, &spec, &labels) {
            labels.push(label);
            slots.push(Arc::new(Slot { hop: Mutex::new(Some(planned)), done: Mutex::new(None) }));
        }
        self.made.push((host.to_string(), slots.clone(), labels.clone()));
        Ok((slots, labels))
    }

    /// The hops of `host` itself, after its via chain (`before`, as chain
    /// texts): its connection, then its become hop, each with its chain
    /// text (what `--become-pass-env HOP=VAR` names).
    fn own_hops(&self, host: &str, spec: &HostSpec, before: &[String]) -> Vec<(PlannedHop, String)> {
        let mut hops = Vec::new();
        match &spec.connection {
            Connection::Local => {
                let hop = self.settings.local(Some(host.into()));
                hops.push((PlannedHop { hop, cli_ssh_password: false, cli_become_password: None }, "local".into()));
            }
            Connection::Ssh(s) => {
                let mut o = self.settings.inventory_ssh(host, s);
                let label = format!("ssh://{}", o.display_host());
                o.password = s.password.as_ref().map(|p| p.0.clone());
                let cli_ssh_password = o.password.is_none();
                hops.push((PlannedHop { hop: Hop::Ssh(o), cli_ssh_password, cli_become_password: None }, label));
            }
        }
        // The inventory's word, else --become's.
        let become_ = spec.become_.clone().or_else(|| {
            self.fleet.become_.then(|| BecomeSpec {
                method: self
                    .fleet
                    .become_method
                    .as_deref()
                    .and_then(|m| BecomeMethod::parse(m).ok())
                    .unwrap_or(BecomeMethod::Sudo),
                user: self.fleet.become_user.clone().unwrap_or_else(|| "root".into()),
                password: None,
            })
        });
        if let Some(b) = become_ {
            let mut chain: Vec<String> = before.iter().chain(hops.iter().map(|(_, l)| l)).cloned().collect();
            let index = chain.iter().filter(|l| super::target::is_become(l)).count();
            chain.push(format!("{}:{}", b.method.name(), b.user));
            let cli = b.password.is_none().then(|| (chain.join(","), index));
            let label = chain.pop().unwrap_or_default();
            let hop = self.settings.become_hop(b.method, b.user, b.password.map(|p| p.0));
            hops.push((PlannedHop { hop, cli_ssh_password: false, cli_become_password: cli }, label));
        }
        hops
    }
}

/// How one host fared.
struct Outcome {
    host: String,
    status: Status,
    exit_code: Option<i32>,
    signal: Option<i32>,
    timed_out: bool,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    duration: Duration,
    error: Option<String>,
    error_kind: Option<&'static str>,
    facts: Option<serde_json::Value>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Ok,
    Failed,
    Unreachable,
}

/// Runs `job`: prints the hosts (`--list-hosts`), or connects, runs the
/// verb on every host and prints the results.
pub fn run(job: Job<'_>, inv: &Inventory, cli: &Cli, secrets: Secrets) -> Result<ExitCode, String> {
    if job.fleet.list_hosts {
        if job.hosts.is_empty() {
            eprintln!("mito: warning: no hosts matched");
        }
        let text: String = job.hosts.iter().map(|h| format!("{h}\n")).collect();
        return Ok(write_out(&text)?.unwrap_or(ExitCode::SUCCESS));
    }
    let settings = Settings::new(cli);
    let mut planner = Planner { inv, settings: &settings, fleet: &job.fleet, made: Vec::new() };
    let mut plans = Vec::new();
    for h in &job.hosts {
        let (hops, _) = planner.plan(h, &mut Vec::new())?;
        plans.push(Plan { name: h.to_string(), hops });
    }
    drop(planner);
    let router = Router::new().map_err(|e| format!("cannot start the broker: {e}"))?;
    let runner = Runner { router: &router, secrets: Mutex::new(secrets) };
    let outcomes = runner.all(&plans, &job.verb, job.fleet.forks as usize);
    // Deepest first across all plans, so a shared hop outlives every
    // context behind it (a slot is shut down once: `take`).
    let mut slots: Vec<(usize, &Arc<Slot>)> = plans.iter().flat_map(|p| p.hops.iter().enumerate()).collect();
    slots.sort_by_key(|(depth, _)| std::cmp::Reverse(*depth));
    for (_, s) in slots {
        if let Some(Ok(c)) = s.done.lock().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = c.shutdown();
        }
    }
    let mut text = if job.json { json_lines(&outcomes)? } else { grouped(&outcomes, colour()) };
    let summary = summary(&outcomes);
    if job.json {
        eprintln!("{summary}");
    } else {
        text.push_str(&summary);
        text.push('\n');
    }
    if let Some(code) = write_out(&text)? {
        return Ok(code);
    }
    Ok(ExitCode::from(exit_status(&outcomes)))
}

/// 0, [`EXIT_FAILED`] or [`EXIT_UNREACHABLE`].
fn exit_status(outcomes: &[Outcome]) -> u8 {
    if outcomes.iter().any(|o| o.status == Status::Unreachable) {
        EXIT_UNREACHABLE
    } else if outcomes.iter().any(|o| o.status == Status::Failed) {
        EXIT_FAILED
    } else {
        0
    }
}

/// Connects plans and runs verbs on them.
struct Runner<'r> {
    router: &'r Router,
    secrets: Mutex<Secrets>,
}

impl Runner<'_> {
    /// Every plan; outcomes in the plans' order. The first hop of every
    /// plan (a shared one once) is connected by `Router::connect_many`,
    /// `forks` in flight, all on this thread; each plan whose first hop is
    /// up goes to [`Workers`] for the rest of its chain and the verb.
    fn all(&self, plans: &[Plan], verb: &Verb, forks: usize) -> Vec<Outcome> {
        let results: Mutex<Vec<Option<Outcome>>> = Mutex::new((0..plans.len()).map(|_| None).collect());
        // Streamed lines would tear a progress line.
        let progress = Progress::new(plans.len(), !matches!(verb, Verb::Stream(_)));
        // The distinct first slots, and the plans behind each.
        let mut firsts: Vec<(Arc<Slot>, Vec<usize>)> = Vec::new();
        for (i, plan) in plans.iter().enumerate() {
            let Some(first) = plan.hops.first() else { continue };
            match firsts.iter_mut().find(|(s, _)| Arc::ptr_eq(s, first)) {
                Some((_, behind)) => behind.push(i),
                None => firsts.push((first.clone(), vec![i])),
            }
        }
        let started = Instant::now();
        let finish = |i: usize, o: Outcome| {
            progress.done(o.status);
            results.lock().unwrap_or_else(PoisonError::into_inner)[i] = Some(o);
        };
        let job = |i: usize| finish(i, self.one(&plans[i], verb));
        let workers = Workers::new(forks);
        std::thread::scope(|s| {
            // A failed first hop fails its plans at once, here: no worker
            // is started for them (a burst of timeouts would start many).
            let go = |k: usize| {
                let failed = matches!(*firsts[k].0.done.lock().unwrap_or_else(PoisonError::into_inner), Some(Err(_)));
                for &i in &firsts[k].1 {
                    if failed {
                        job(i);
                    } else {
                        workers.give(s, i, &job);
                    }
                }
            };
            // Passwords first (a prompt may ask on the terminal), then the
            // connects; a hop that cannot even be specified fails at once.
            let mut specs = Vec::new();
            let mut spec_slot = Vec::new();
            for (k, (slot, _)) in firsts.iter().enumerate() {
                match self.first_spec(slot) {
                    Ok(spec) => {
                        specs.push(spec);
                        spec_slot.push(k);
                    }
                    Err(f) => {
                        *slot.done.lock().unwrap_or_else(PoisonError::into_inner) = Some(Err(f));
                        go(k);
                    }
                }
            }
            for (n, r) in self.router.connect_many(specs, forks) {
                let Some(&k) = spec_slot.get(n) else { continue };
                let r = r.map_err(|e| Failure { kind: connect_kind(&e), message: e.to_string() });
                if let Err(f) = &r {
                    log::debug!("{} (after {:?})", f.message, started.elapsed());
                }
                *firsts[k].0.done.lock().unwrap_or_else(PoisonError::into_inner) = Some(r);
                go(k);
            }
            // Plans without hops (none are made) would be left out.
            for (i, plan) in plans.iter().enumerate() {
                if plan.hops.is_empty() {
                    workers.give(s, i, &job);
                }
            }
            workers.close();
        });
        progress.finish();
        results.into_inner().unwrap_or_else(PoisonError::into_inner).into_iter().flatten().collect()
    }

    /// The spec of a plan's first hop (from the master), its passwords
    /// filled in.
    fn first_spec(&self, slot: &Slot) -> Result<ConnectSpec, Failure> {
        let planned = slot.hop.lock().unwrap_or_else(PoisonError::into_inner).take();
        let p = planned.ok_or_else(|| Failure { message: "hop already tried".into(), kind: "internal" })?;
        Ok(match self.passwords(p)? {
            Hop::Ssh(o) => ConnectSpec::Ssh(o),
            Hop::Sudo(o) => ConnectSpec::Sudo(o),
            Hop::Su(o) => ConnectSpec::Su(o),
            Hop::Doas(o) => ConnectSpec::Doas(o),
            Hop::Local(o) => ConnectSpec::Local(o),
        })
    }

    /// Connects `plan` (its first hop is done by now) and runs `verb`
    /// there.
    fn one(&self, plan: &Plan, verb: &Verb) -> Outcome {
        let t0 = Instant::now();
        let mut o = Outcome {
            host: plan.name.clone(),
            status: Status::Ok,
            exit_code: None,
            signal: None,
            timed_out: false,
            stdout: Vec::new(),
            stderr: Vec::new(),
            duration: Duration::ZERO,
            error: None,
            error_kind: None,
            facts: None,
        };
        // The first hop's connect ran before this (with the others): its
        // time counts, from spawn to hello.
        let mut before = Duration::ZERO;
        match self.connect(plan, &mut before) {
            Ok(ctx) => call(&ctx, verb, &mut o),
            Err(f) => {
                o.status = Status::Unreachable;
                o.error = Some(f.message);
                o.error_kind = Some(f.kind);
            }
        }
        o.duration = before + t0.elapsed();
        o
    }

    /// The context at the end of `plan`, connecting the hops not yet
    /// connected (a shared hop once, whoever needs it first).
    fn connect(&self, plan: &Plan, first_time: &mut Duration) -> Result<Context, Failure> {
        let mut prev: Option<Context> = None;
        if let Some(Some(Ok(c))) =
            plan.hops.first().map(|s| s.done.lock().unwrap_or_else(PoisonError::into_inner).clone())
        {
            *first_time = c.connect_info().bootstrap_time;
        }
        for slot in &plan.hops {
            let mut done = slot.done.lock().unwrap_or_else(PoisonError::into_inner);
            if done.is_none() {
                let planned = slot.hop.lock().unwrap_or_else(PoisonError::into_inner).take();
                *done = Some(match planned {
                    Some(p) => self.connect_hop(prev.as_ref(), p),
                    None => Err(Failure { message: "hop already tried".into(), kind: "internal" }),
                });
            }
            match done.as_ref() {
                Some(Ok(c)) => prev = Some(c.clone()),
                Some(Err(f)) => return Err(f.clone()),
                None => return Err(Failure { message: "hop not connected".into(), kind: "internal" }),
            }
        }
        prev.ok_or(Failure { message: format!("{}: no hops", plan.name), kind: "internal" })
    }

    fn connect_hop(&self, prev: Option<&Context>, p: PlannedHop) -> Result<Context, Failure> {
        let hop = self.passwords(p)?;
        let from = prev.map_or_else(|| self.router.connector(), Context::connector);
        hop.connect(from).map_err(|e| Failure { kind: connect_kind(&e), message: e.to_string() })
    }

    /// The hop of `p` with the command line's passwords where the
    /// inventory gives none (a prompt may ask on the terminal, once).
    fn passwords(&self, mut p: PlannedHop) -> Result<Hop, Failure> {
        let pw_failure = |message: String| Failure { message, kind: "password" };
        if p.cli_ssh_password {
            if let Hop::Ssh(o) = &mut p.hop {
                o.password =
                    self.secrets.lock().unwrap_or_else(PoisonError::into_inner).ssh_password().map_err(pw_failure)?;
            }
        }
        if let Some((prefix, index)) = &p.cli_become_password {
            let pw = self
                .secrets
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .become_password(prefix, *index)
                .map_err(pw_failure)?;
            match &mut p.hop {
                Hop::Sudo(o) => o.password = pw,
                Hop::Su(o) => o.password = pw,
                Hop::Doas(o) => o.password = pw,
                _ => {}
            }
        }
        Ok(p.hop)
    }
}

/// Threads for what follows a plan's first hop (the rest of its chain,
/// then the verb: blocking calls), started only when none is idle, at
/// most `max` (`--forks`). A plan whose first hop failed, or whose verb is
/// a quick call, keeps one busy no longer than that.
struct Workers {
    queue: Mutex<std::collections::VecDeque<usize>>,
    ready: std::sync::Condvar,
    idle: AtomicUsize,
    started: AtomicUsize,
    closed: std::sync::atomic::AtomicBool,
    max: usize,
}

impl Workers {
    fn new(max: usize) -> Workers {
        Workers {
            queue: Mutex::default(),
            ready: std::sync::Condvar::new(),
            idle: AtomicUsize::new(0),
            started: AtomicUsize::new(0),
            closed: std::sync::atomic::AtomicBool::new(false),
            max: max.max(1),
        }
    }

    /// Runs `job(i)` on a worker: an idle one, else a new one while fewer
    /// than `max` run, else the next that is free.
    fn give<'s>(&'s self, s: &'s std::thread::Scope<'s, '_>, i: usize, job: &'s (dyn Fn(usize) + Sync)) {
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        q.push_back(i);
        let waiting = q.len();
        drop(q);
        self.ready.notify_one();
        if self.idle.load(Ordering::SeqCst) < waiting && self.started.load(Ordering::SeqCst) < self.max {
            self.started.fetch_add(1, Ordering::SeqCst);
            s.spawn(move || self.work(job));
        }
    }

    fn work(&self, job: &(dyn Fn(usize) + Sync)) {
        loop {
            let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            let next = loop {
                if let Some(i) = q.pop_front() {
                    break Some(i);
                }
                if self.closed.load(Ordering::SeqCst) {
                    break None;
                }
                self.idle.fetch_add(1, Ordering::SeqCst);
                q = self.ready.wait(q).unwrap_or_else(PoisonError::into_inner);
                self.idle.fetch_sub(1, Ordering::SeqCst);
            };
            drop(q);
            let Some(i) = next else { return };
            job(i);
        }
    }

    /// No more jobs: workers end once the queue is empty.
    fn close(&self) {
        let _q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        self.closed.store(true, Ordering::SeqCst);
        self.ready.notify_all();
    }
}

/// Runs `verb` in `ctx`, filling in `o`.
fn call(ctx: &Context, verb: &Verb, o: &mut Outcome) {
    let copied = match verb {
        Verb::Put(c) => Some(copy::put_on_host(ctx, &c.local, &c.remote, c.recursive, &c.opts)),
        Verb::Get(c) => {
            let opts = GetOptions { preserve_owner: c.preserve_owner };
            Some(copy::get_on_host(ctx, &o.host, &c.remote, &c.local, c.recursive, &opts, &c.opts))
        }
        _ => None,
    };
    match copied {
        Some(Ok(text)) => return o.stdout = text.into_bytes(),
        Some(Err(e)) => {
            o.status = Status::Failed;
            o.error_kind = Some("copy-failed");
            return o.error = Some(e);
        }
        None => {}
    }
    let result = match verb {
        Verb::Run(args) | Verb::Stream(args) => {
            let reply = match verb {
                Verb::Stream(_) => stream(ctx, args, &o.host),
                _ => ctx.exec_with(args),
            };
            reply.map(|r| {
                o.exit_code = r.status.code;
                o.signal = r.status.signal;
                o.timed_out = r.timed_out;
                o.stdout = r.stdout.into_vec();
                o.stderr = r.stderr.into_vec();
                if o.exit_code != Some(0) || o.timed_out {
                    o.status = Status::Failed;
                    o.error_kind = Some(if o.timed_out { "timeout" } else { "exit" });
                }
            })
        }
        Verb::Ping => ctx.ping().map(|()| o.stdout = b"pong\n".to_vec()),
        // Done above.
        Verb::Put(_) | Verb::Get(_) => Ok(()),
        Verb::Facts => ctx.facts().map(|f| {
            let view = render::Facts::new(ctx, &f);
            o.stdout = format!("{}\n", view.text()).into_bytes();
            o.facts = serde_json::to_value(&view).ok();
        }),
    };
    if let Err(e) = result {
        let remote = e.remote().is_some();
        // A context lost mid-call was not reached, as Ansible counts it; an
        // error the agent sent back (no such program) is the command's.
        o.status = if remote { Status::Failed } else { Status::Unreachable };
        o.error_kind = Some(call_kind(&e));
        o.error = Some(e.to_string());
    }
}

/// Longest line kept waiting for its newline in `--stream`; longer is
/// printed as it is (a command printing no newline never grows memory).
const STREAM_LINE_MAX: usize = 64 * 1024;

/// `--stream`: runs `args` in `ctx`, printing its lines as they come,
/// each prefixed by `host`; a last line without a newline is printed at
/// the exit. The reply's captured output is empty.
fn stream(ctx: &Context, args: &ExecArgs, host: &str) -> Result<mito::functions::ExecReply, CallError> {
    let mut p = ctx.spawn(args)?;
    if let Some(input) = p.take_input() {
        let _ = input.close();
    }
    let mut partial: [Vec<u8>; 2] = Default::default();
    loop {
        match p.next(None)? {
            ProcessEvent::Output { fd, data } => {
                let buf = &mut partial[usize::from(fd != 1)];
                buf.extend_from_slice(&data);
                let cut = match buf.iter().rposition(|&b| b == b'\n') {
                    Some(end) => end + 1,
                    None if buf.len() > STREAM_LINE_MAX => buf.len(),
                    None => continue,
                };
                let rest = buf.split_off(cut);
                emit(host, fd, buf);
                *buf = rest;
            }
            ProcessEvent::Exit(r) => {
                for (fd, buf) in [(1, &partial[0]), (2, &partial[1])] {
                    if !buf.is_empty() {
                        emit(host, fd, buf);
                    }
                }
                return Ok(r);
            }
        }
    }
}

/// `HOST | line` for each line of `bytes`, escaped, on stdout (fd 1) or
/// stderr; one write per chunk, so lines of two hosts never mix.
fn emit(host: &str, fd: u8, bytes: &[u8]) {
    let mut text = String::new();
    push_output(&mut text, bytes);
    let text: String = text.lines().map(|l| format!("{host} | {l}\n")).collect();
    // A reader gone from stdout is noticed when the summary is written.
    let _ = if fd == 1 {
        std::io::stdout().lock().write_all(text.as_bytes())
    } else {
        std::io::stderr().lock().write_all(text.as_bytes())
    };
}

/// A connect error's kind, for `--json`'s `error_kind`.
fn connect_kind(e: &ConnectError) -> &'static str {
    match e {
        ConnectError::Timeout { .. } => "timeout",
        ConnectError::Ssh { failure, .. } => match failure {
            SshFailure::HostKeyUnknown => "host-key-unknown",
            SshFailure::HostKeyChanged => "host-key-changed",
            SshFailure::WrongPassword | SshFailure::AuthFailed { .. } => "auth-failed",
            SshFailure::ConnectionRefused => "connection-refused",
            SshFailure::NameNotResolved => "name-not-resolved",
            SshFailure::NoRoute => "no-route",
            SshFailure::ConnectTimedOut => "timeout",
            SshFailure::RemoteShell => "no-shell",
        },
        ConnectError::Become { .. } => "become-failed",
        ConnectError::Hop { .. } => "hop-failed",
        ConnectError::Spawn { .. } => "spawn-failed",
        _ => "connect-failed",
    }
}

fn call_kind(e: &CallError) -> &'static str {
    match e {
        CallError::Remote(_) => "exec-failed",
        CallError::Disconnected { .. } => "lost",
        CallError::Timeout { .. } => "timeout",
        _ => "call-failed",
    }
}

/// `--json`: one object a line per host.
#[derive(Serialize)]
struct JsonOutcome<'a> {
    host: &'a str,
    status: Status,
    exit_code: Option<i32>,
    signal: Option<i32>,
    /// UTF-8 (invalid bytes replaced).
    stdout: String,
    stderr: String,
    duration_ms: u64,
    error: Option<&'a str>,
    error_kind: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    facts: Option<&'a serde_json::Value>,
}

fn json_lines(outcomes: &[Outcome]) -> Result<String, String> {
    let mut out = String::new();
    for o in outcomes {
        let j = JsonOutcome {
            host: &o.host,
            status: o.status,
            exit_code: o.exit_code,
            signal: o.signal,
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            duration_ms: o.duration.as_millis().try_into().unwrap_or(u64::MAX),
            error: o.error.as_deref(),
            error_kind: o.error_kind,
            facts: o.facts.as_ref(),
        };
        out.push_str(&serde_json::to_string(&j).map_err(|e| e.to_string())?);
        out.push('\n');
    }
    Ok(out)
}

/// The text output: hosts with the same result under one heading, in the
/// order of their first host.
fn grouped(outcomes: &[Outcome], colour: bool) -> String {
    let mut groups: Vec<(&Outcome, Vec<&str>)> = Vec::new();
    for o in outcomes {
        match groups.iter_mut().find(|(first, _)| same(first, o)) {
            Some((_, hosts)) => hosts.push(&o.host),
            None => groups.push((o, vec![&o.host])),
        }
    }
    let mut text = String::new();
    for (o, hosts) in groups {
        let names = fold_names(&hosts);
        let count = if hosts.len() > 1 { format!(" ({} hosts)", hosts.len()) } else { String::new() };
        text.push_str(&format!("{names}{count}: {}\n", paint(colour, o.status, status_text(o))));
        push_output(&mut text, &o.stdout);
        if !o.stderr.is_empty() {
            text.push_str("-- stderr --\n");
            push_output(&mut text, &o.stderr);
        }
    }
    text
}

/// Colours for the status of each heading: only when stdout is a
/// terminal and `NO_COLOR` is unset or empty (no-color.org).
fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// `text` in the colour of `status` (green, red, yellow) when `on`.
fn paint(on: bool, status: Status, text: String) -> String {
    if !on {
        return text;
    }
    let code = match status {
        Status::Ok => "32",
        Status::Failed => "31",
        Status::Unreachable => "33",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

/// Same result: status, exit, output and error alike.
fn same(a: &Outcome, b: &Outcome) -> bool {
    (a.status, a.exit_code, a.signal, a.timed_out, &a.stdout, &a.stderr, &a.error)
        == (b.status, b.exit_code, b.signal, b.timed_out, &b.stdout, &b.stderr, &b.error)
}

fn status_text(o: &Outcome) -> String {
    match (o.status, &o.error) {
        (Status::Ok, _) => "ok".into(),
        (Status::Unreachable, e) => {
            format!("unreachable ({}): {}", o.error_kind.unwrap_or("?"), without_host(&o.host, e.as_deref()))
        }
        (Status::Failed, Some(e)) => format!("failed: {}", without_host(&o.host, Some(e))),
        (Status::Failed, None) if o.timed_out => "failed (timed out, killed)".into(),
        (Status::Failed, None) => match (o.exit_code, o.signal) {
            (Some(c), _) => format!("failed (exit {c})"),
            (None, Some(s)) => format!("failed (killed by signal {s})"),
            _ => "failed".into(),
        },
    }
}

/// An error without the `HOST: ` it starts with (the heading names the host).
fn without_host<'e>(host: &str, e: Option<&'e str>) -> &'e str {
    let e = e.unwrap_or("");
    e.strip_prefix(host).and_then(|r| r.strip_prefix(": ")).unwrap_or(e)
}

/// A target's output as it may reach a terminal: each line with control
/// characters escaped (ARCHITECTURE.md, "Security"), a newline at the end.
fn push_output(text: &mut String, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    for line in body.split(|&b| b == b'\n') {
        // The cap only guards printable's own arithmetic: whole lines are kept.
        text.push_str(&mito::core::text::printable(line, 1 << 30));
        text.push('\n');
    }
}

/// Host names folded into ranges: web01, web02, web03, db1 →
/// `web[01:03],db1`. A run is consecutive numbers (the last run of digits
/// in each name) with the same text around them and the same width.
pub fn fold_names(names: &[&str]) -> String {
    /// (before the digits, the digits, after them).
    fn parts(name: &str) -> Option<(&str, &str, &str)> {
        let end = name.rfind(|c: char| c.is_ascii_digit())? + 1;
        let start = name[..end].rfind(|c: char| !c.is_ascii_digit()).map_or(0, |i| i + 1);
        Some((&name[..start], &name[start..end], &name[end..]))
    }
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < names.len() {
        let mut j = i + 1;
        if let Some((pre, digits, post)) = parts(names[i]) {
            let mut last: u64 = digits.parse().unwrap_or(u64::MAX);
            while let Some((p2, d2, s2)) = names.get(j).and_then(|n| parts(n)) {
                let next = d2.parse::<u64>().ok();
                let width_ok = d2.len() == digits.len() || (!d2.starts_with('0') && !digits.starts_with('0'));
                if p2 != pre || s2 != post || !width_ok || next != last.checked_add(1) {
                    break;
                }
                last += 1;
                j += 1;
            }
            if j - i > 1 {
                let d_last = parts(names[j - 1]).map_or("", |p| p.1);
                out.push(format!("{pre}[{digits}:{d_last}]{post}"));
                i = j;
                continue;
            }
        }
        out.push(names[i].to_string());
        i += 1;
    }
    out.join(",")
}

/// `3 ok, 1 failed, 1 unreachable`.
fn summary(outcomes: &[Outcome]) -> String {
    let n = |s: Status| outcomes.iter().filter(|o| o.status == s).count();
    format!("{} ok, {} failed, {} unreachable", n(Status::Ok), n(Status::Failed), n(Status::Unreachable))
}

/// Writes `text` to stdout; `Some(141)` when its reader went away.
fn write_out(text: &str) -> Result<Option<ExitCode>, String> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(Some(ExitCode::from(141))),
        Err(e) => Err(format!("writing to stdout: {e}")),
    }
}

/// A progress line on stderr while hosts run, only when stderr is a
/// terminal (and without colours, so NO_COLOR has nothing to turn off
/// there; the headings' colours follow it).
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    counts: Mutex<[usize; 3]>,
}

impl Progress {
    fn new(hosts: usize, wanted: bool) -> Progress {
        let bar = (wanted && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(hosts as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template("{pos}/{len} hosts [{elapsed}] {msg}") {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress { bar, counts: Mutex::new([0; 3]) }
    }

    fn done(&self, status: Status) {
        let Some(bar) = &self.bar else { return };
        let mut c = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        c[status as usize] += 1;
        bar.inc(1);
        bar.set_message(format!("{} ok, {} failed, {} unreachable", c[0], c[1], c[2]));
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{fold_names, paint, Status};

    #[test]
    fn colours_only_when_asked() {
        assert_eq!(paint(false, Status::Failed, "failed".into()), "failed");
        assert_eq!(paint(true, Status::Ok, "ok".into()), "\x1b[32mok\x1b[0m");
    }

    #[test]
    fn names_fold_into_ranges() {
        assert_eq!(fold_names(&["web01", "web02", "web03"]), "web[01:03]");
        assert_eq!(fold_names(&["web01", "web02", "db1"]), "web[01:02],db1");
        assert_eq!(fold_names(&["a1", "a3"]), "a1,a3");
        assert_eq!(fold_names(&["h9", "h10", "h11"]), "h[9:11]");
        assert_eq!(fold_names(&["x", "y"]), "x,y");
        assert_eq!(fold_names(&["r1.example", "r2.example"]), "r[1:2].example");
        assert_eq!(fold_names(&["web09", "web10"]), "web[09:10]");
    }
}
