//! The throttle manager: owns the data path and the backend pool, maps
//! processes to throttles, follows processes and interfaces, checks health,
//! saves runtime throttles and applies the declarative rules. The D-Bus
//! layer and the CLI are thin clients of this. `Manager` is the facade: it
//! takes the core's lock and runs its background threads.
mod assign;
mod core;
mod coverage;
mod datapath;
mod events;
mod lifecycle;
mod plan;
pub mod policy;
mod pool;
mod rates;
mod reader;
mod report;
mod rules;
mod sampling;
mod saving;
mod share;
mod table;
mod threads;
mod timed;
pub mod traffic;
mod upkeep;

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    thread::JoinHandle,
    time::Duration,
};

use throttle_common::{Direction, MAX_SLOTS};

use self::core::Core;
pub use self::{
    events::{Event, Notice, RemovalReason},
    policy::{Actor, Grant, Need, Ownership, Request},
    reader::Reader,
    report::{BackendInfo, DirectionStats, PlanInfo, Stats, ThrottleInfo, TopEntry},
    table::Origin,
};
pub use crate::limit::LimitSpec;
use crate::usage::quota::QuotaUsage;
use crate::{
    backend::BackendError,
    config::{ConfigError, Loaded},
    kernel::{bpf::BpfError, procmon::ProcMonitor},
    limit::InvalidLimit,
    persist::StateError,
    target::{Target, TargetError},
};

pub type ThrottleId = u32;

/// Processes no target may limit: limiting them would limit the system or
/// cut off the daemon's own control path. Init and the daemon are known at
/// start; the bus and polkitd are learned from the bus itself
/// (`GetConnectionUnixProcessID`), never by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protected {
    Init,
    Daemon,
    Bus,
    Polkit,
}

impl Protected {
    pub fn describe(self) -> &'static str {
        match self {
            Protected::Init => "init",
            Protected::Daemon => "chadthrottled itself",
            Protected::Bus => "the system bus (dbus-daemon)",
            Protected::Polkit => "polkitd",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("no such process: {0}")]
    NoSuchProcess(u32),
    #[error("no such throttle: {0}")]
    NoSuchThrottle(ThrottleId),
    #[error("unknown backend '{0}' (known: ebpf, tc_htb, ifb_tc)")]
    UnknownBackend(String),
    #[error("no {0} backend is available")]
    NoBackend(Direction),
    #[error("all {} throttle slots are in use", MAX_SLOTS - 1)]
    SlotsExhausted,
    /// A limit-own caller asked for what needs limit-any (see `policy`).
    #[error("{0}; that needs org.chadthrottle.limit-any")]
    NotPermitted(String),
    #[error("uid {uid} already has {per_user} throttles, its share (limits.per_user); remove one first")]
    QuotaExceeded { uid: u32, per_user: u32 },
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error("proc connector: {0}")]
    ProcMonitor(#[source] std::io::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("netlink: {0}")]
    Netlink(#[from] crate::kernel::netlink::NetlinkError),
    #[error("{0}")]
    Io(#[source] std::io::Error),
}

impl From<TargetError> for ManagerError {
    fn from(e: TargetError) -> Self {
        match e {
            TargetError::Invalid(m) => ManagerError::InvalidArgument(m),
            TargetError::NoSuchProcess(p) => ManagerError::NoSuchProcess(p),
        }
    }
}

impl From<InvalidLimit> for ManagerError {
    fn from(e: InvalidLimit) -> Self {
        ManagerError::InvalidArgument(e.to_string())
    }
}

#[derive(Clone, Debug)]
pub struct ManagerOptions {
    pub loaded: Loaded,
    /// Where the config was read from (reload reads it again).
    pub config_path: Option<PathBuf>,
    /// Command-line settings that win over the file, also after reloads.
    pub overrides: Overrides,
}

impl Default for ManagerOptions {
    fn default() -> Self {
        let loaded = Loaded { config: Default::default(), rules: Vec::new() };
        ManagerOptions { loaded, config_path: None, overrides: Overrides::default() }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    pub state_dir: Option<PathBuf>,
    pub interfaces: Option<Vec<String>>,
    pub exempt_loopback: Option<bool>,
}

impl Overrides {
    pub fn apply(&self, c: &mut crate::config::Config) {
        if let Some(d) = &self.state_dir {
            c.state_dir = d.clone();
        }
        if let Some(i) = &self.interfaces {
            c.interfaces = Some(i.clone());
        }
        if let Some(e) = self.exempt_loopback {
            c.exempt_loopback = e;
        }
    }
}

pub struct Manager {
    core: Arc<Mutex<Core>>,
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Manager {
    /// Cleans up after a crashed run, loads the data path, restores the
    /// persisted throttles and applies the rules.
    pub fn start(opts: &ManagerOptions) -> Result<Self, ManagerError> {
        let monitor = ProcMonitor::open(Duration::from_millis(200)).map_err(ManagerError::ProcMonitor)?;
        let core = Arc::new(Mutex::new(Core::start(opts)?));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let (c, s) = (core.clone(), stop.clone());
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new().name(name.into()).spawn(f).map_err(ManagerError::Io)
        };
        threads.push(spawn("procmon", Box::new(move || threads::follow_processes(monitor, &c, &s)))?);
        let (c, s) = (core.clone(), stop.clone());
        threads.push(spawn("linkmon", Box::new(move || threads::follow_links(&c, &s)))?);
        let (c, s) = (core.clone(), stop.clone());
        threads.push(spawn("health", Box::new(move || threads::run_checks(&c, &s)))?);
        Ok(Manager { core, stop, threads: Mutex::new(threads) })
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A change, under the core's lock. The core saves each change itself
    /// (a journal entry, or a snapshot) before it returns, so a caller
    /// answered has its change saved.
    fn mutate<T>(&self, f: impl FnOnce(&mut Core) -> T) -> T {
        f(&mut self.lock())
    }

    /// Limits a target. A target that already has a throttle keeps it: its
    /// limits (and backends, by migration) change in place.
    pub fn limit(&self, target: Target, spec: &LimitSpec) -> Result<ThrottleId, ManagerError> {
        self.mutate(|c| c.limit(target, spec, Origin::Runtime))
    }

    /// Limits one process (a thread id resolves to its process).
    pub fn limit_pid(&self, pid: u32, spec: &LimitSpec) -> Result<ThrottleId, ManagerError> {
        self.limit(Target::pid(pid, false)?, spec)
    }

    pub fn change(&self, id: ThrottleId, spec: &LimitSpec) -> Result<(), ManagerError> {
        self.mutate(|c| c.change(id, spec))
    }

    pub fn remove(&self, id: ThrottleId) -> Result<(), ManagerError> {
        self.mutate(|c| c.remove_persisting(id))
    }

    /// As `limit`, for a caller authorized as `actor`: the policy is
    /// checked again under the lock, and the throttle records who made it
    /// (its per-user share) and whether it is admin-set.
    pub fn limit_as(&self, actor: Actor, target: Target, spec: &LimitSpec) -> Result<ThrottleId, ManagerError> {
        self.mutate(|c| c.limit_by(target, spec, Origin::Runtime, Some(actor)))
    }

    /// As `limit_as`, for a throttle that ends with `holder` (see
    /// `Core::limit_held`).
    pub fn limit_held(
        &self,
        actor: Actor,
        target: Target,
        spec: &LimitSpec,
        holder: &str,
    ) -> Result<ThrottleId, ManagerError> {
        self.mutate(|c| c.limit_held(target, spec, holder, actor))
    }

    /// Ends the throttles `holder` held (`None`: all held throttles).
    pub fn release_held(&self, holder: Option<&str>) -> Vec<ThrottleId> {
        self.mutate(|c| c.release_held(holder))
    }

    /// As `change`, for a caller authorized as `actor`.
    pub fn change_as(&self, actor: Actor, id: ThrottleId, spec: &LimitSpec) -> Result<(), ManagerError> {
        self.mutate(|c| {
            c.permit(actor, &Request::Change(id, spec.clone()))?;
            c.change_by(id, spec, Some(actor))
        })
    }

    /// As `remove`, for a caller authorized as `actor`.
    pub fn remove_as(&self, actor: Actor, id: ThrottleId) -> Result<(), ManagerError> {
        self.mutate(|c| {
            c.permit(actor, &Request::Remove(id))?;
            c.remove_persisting(id)
        })
    }

    pub fn info(&self, id: ThrottleId) -> Result<ThrottleInfo, ManagerError> {
        self.lock().info(id)
    }

    /// As `info`, from the daemon's bookkeeping alone: counters and rates
    /// are the last sample's (once a second). Cheap enough for every
    /// property read.
    pub fn summary(&self, id: ThrottleId) -> Result<ThrottleInfo, ManagerError> {
        self.reader().summary(id)
    }

    pub fn list(&self) -> Vec<ThrottleInfo> {
        self.lock().list()
    }

    pub fn exists(&self, id: ThrottleId) -> bool {
        self.reader().exists(id)
    }

    /// Every throttle's id, without reading counters.
    pub fn ids(&self) -> Vec<ThrottleId> {
        self.reader().ids()
    }

    /// From the daemon's own bookkeeping: cheap enough to poll.
    pub fn stats(&self) -> Stats {
        self.reader().stats()
    }

    pub fn find(&self, target: &Target) -> Option<ThrottleId> {
        self.lock().table.find(target)
    }

    /// Reads of the daemon's bookkeeping, waiting for the core if it is busy.
    pub fn reader(&self) -> Reader<'_> {
        Reader(self.lock())
    }

    /// As `reader`, but `None` instead of waiting: a caller on an async
    /// thread reads at once when the core is free (the common case), and
    /// otherwise waits elsewhere, since the core may be busy with the
    /// kernel for milliseconds.
    pub fn try_reader(&self) -> Option<Reader<'_>> {
        self.core.try_lock().ok().map(Reader)
    }

    /// Every backend with its state, for `backends` listings.
    pub fn backends(&self) -> Vec<BackendInfo> {
        self.lock().backend_infos()
    }

    /// Sets the default backend for new throttles in `dir`; existing
    /// throttles stay where they are.
    pub fn set_default(&self, dir: Direction, backend: &str) -> Result<(), ManagerError> {
        self.mutate(|c| c.set_default(dir, backend))
    }

    /// Sets the link capacity that priorities share, at runtime (saved).
    pub fn set_link_capacity(&self, link: crate::config::LinkCapacity) {
        self.lock().set_link(link);
    }

    /// The backend new throttles get in `dir`, after fallbacks.
    pub fn default_backend(&self, dir: Direction) -> Result<&'static str, ManagerError> {
        self.reader().default_backend(dir)
    }

    /// Moves a throttle (one direction, or both) to `to`, make-before-break.
    pub fn migrate(&self, id: ThrottleId, dir: Option<Direction>, to: &str) -> Result<(), ManagerError> {
        self.mutate(|c| c.migrate(id, dir, to))
    }

    /// Moves every throttle of `from` to `to`; returns how many moved.
    pub fn migrate_backend(&self, from: &str, to: &str) -> Result<usize, ManagerError> {
        self.mutate(|c| c.migrate_backend(from, to))
    }

    /// Sets (or, with `None`, forgets) the process in a protected role: it
    /// leaves every throttle at once and is never matched again.
    pub fn protect(&self, role: Protected, pid: Option<u32>) {
        self.lock().protect(role, pid)
    }

    /// Runs the health checks now (they also run periodically).
    pub fn check_health(&self) {
        self.lock().check_health();
    }

    #[cfg(feature = "testing")]
    pub fn set_failure_policy(&self, policy: crate::config::FailurePolicy) {
        self.lock().config.health.policy = policy;
    }

    /// Re-reads the config and rules and applies the difference. On any
    /// error the running configuration is kept untouched.
    pub fn reload(&self) -> Result<(), ManagerError> {
        self.mutate(|c| c.reload())
    }

    /// The `count` busiest processes, throttled or not; with `owner`, only
    /// that user's.
    pub fn top(&self, count: usize, sort: traffic::SortBy, scope: traffic::Scope, owner: Option<u32>) -> Vec<TopEntry> {
        self.lock().view().top(count, sort, scope, owner)
    }

    /// Where the daemon keeps its state (the config's `state_dir`).
    pub fn state_dir(&self) -> PathBuf {
        self.lock().config.state_dir.clone()
    }

    /// The bytes counted since the last call, by who sent them: the usage
    /// history's input.
    pub fn take_usage(&self) -> Vec<crate::usage::Delta> {
        self.lock().sampling.accounting.take_usage()
    }

    /// Every quota's usage now, to save with the usage history.
    pub fn quota_usages(&self) -> Vec<(ThrottleId, QuotaUsage)> {
        let usages = self.lock().quota_usages();
        let saved = |(id, period, u): (ThrottleId, &str, plan::Usage)| {
            (id, QuotaUsage { period: period.to_string(), period_start: u.start, used: u.used })
        };
        usages.into_iter().map(saved).collect()
    }

    /// Saved quota usages: a throttle takes its own if it is of the period
    /// it counts now (a restart or a `kill -9` does not reset a quota).
    pub fn restore_quotas(&self, saved: Vec<(ThrottleId, QuotaUsage)>) {
        let usage = |q: QuotaUsage| (q.period, plan::Usage { used: q.used, start: q.period_start, resets_at: 0 });
        self.lock().restore_quotas(saved.into_iter().map(|(id, q)| (id, usage(q))).collect());
    }

    /// Whether `pids` are `uid`'s processes: each one's uid as the monitor
    /// knows it, else from /proc. The D-Bus layer's only question about
    /// who owns a process.
    pub fn ownership(&self, uid: u32, pids: &[u32]) -> Ownership {
        let known: Vec<Option<u32>> = {
            let core = self.lock();
            pids.iter().map(|p| core.sampling.accounting.owner(*p)).collect()
        };
        let owner = |(pid, known): (&u32, Option<u32>)| known.or_else(|| crate::kernel::procfs::uid(*pid).ok());
        Ownership::of(uid, pids.iter().zip(known).map(owner))
    }

    /// A process's (up, down) bytes/s, one per second, oldest first; empty
    /// for a live process that has sent nothing yet.
    pub fn process_history(&self, pid: u32) -> Result<Vec<(u64, u64)>, ManagerError> {
        match self.lock().sampling.accounting.history(pid) {
            Some(h) => Ok(h),
            None if crate::kernel::procfs::comm(pid).is_ok() => Ok(Vec::new()),
            None => Err(ManagerError::NoSuchProcess(pid)),
        }
    }

    /// A throttle's (up, down) bytes/s, one per second, oldest first.
    pub fn throttle_history(&self, id: ThrottleId) -> Result<Vec<(u64, u64)>, ManagerError> {
        self.reader().throttle_history(id)
    }

    /// Whether the kernel counts every process's traffic.
    pub fn monitoring(&self) -> bool {
        self.reader().monitoring()
    }

    /// Samples rates now (they are also sampled every second).
    pub fn sample_rates(&self) {
        self.lock().sample_rates();
    }

    /// Every event from now on, in order, each with the throttle it is
    /// about as it was right then: a listener never needs the lock.
    pub fn subscribe(&self) -> tokio::sync::mpsc::UnboundedReceiver<Notice> {
        self.lock().events.subscribe()
    }

    #[cfg(feature = "testing")]
    pub fn take_events(&self) -> Vec<Event> {
        self.lock().events.take()
    }

    /// Number of processes in the kernel's process map (for leak checks).
    #[cfg(feature = "testing")]
    pub fn kernel_proc_entries(&self) -> usize {
        self.lock().datapath.programs.proc_count()
    }

    /// The kernel's slots for a process (tests check precedence with this).
    #[cfg(feature = "testing")]
    pub fn kernel_proc(&self, tgid: u32) -> Option<throttle_common::ProcSlots> {
        self.lock().datapath.programs.proc(tgid)
    }

    /// One line for status displays: "3 throttles on ebpf, tc_htb".
    pub fn status(&self) -> String {
        self.lock().view().status()
    }

    /// Removes every throttle and restores what the backends replaced; the
    /// programs detach when `self` drops. The saved state is kept.
    /// Idempotent, and callable on a shared manager.
    pub fn shutdown(&self) -> Result<(), ManagerError> {
        self.stop.store(true, Ordering::Relaxed);
        let threads: Vec<_> = self.threads.lock().unwrap_or_else(|p| p.into_inner()).drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
        self.lock().shutdown()
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
