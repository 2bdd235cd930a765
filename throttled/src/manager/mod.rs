//! The throttle manager: owns the data path and the backend pool, maps
//! processes to throttles, follows processes and interfaces, checks health,
//! persists runtime throttles and applies the declarative rules. The D-Bus
//! layer and the CLI are thin clients of this.
mod core;
mod coverage;
mod health;
pub mod monitor;
mod persist;
pub mod policy;
mod pool;
mod rates;
mod restore;

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    thread::JoinHandle,
    time::Duration,
};

use throttle_common::{rate::Rate, Counters, MAX_SLOTS};

use self::core::Core;
pub use self::{
    core::Origin,
    policy::{Actor, Grant, Need, Request},
};
use crate::{
    backend::{Availability, BackendError, Direction, Health, Priority},
    config::{ConfigError, Loaded},
    kernel::{bpf::BpfError, procmon::ProcMonitor},
    state::StateError,
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

/// Limits and backend choices for one throttle. `None` leaves a direction
/// as it is (unlimited for a new throttle).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LimitSpec {
    pub down: Option<Rate>,
    pub up: Option<Rate>,
    /// Backend for both directions; `None` picks the default per direction.
    pub backend: Option<String>,
    pub up_backend: Option<String>,
    pub down_backend: Option<String>,
}

impl LimitSpec {
    pub fn rate(&self, dir: Direction) -> Option<Rate> {
        match dir {
            Direction::Up => self.up,
            Direction::Down => self.down,
        }
    }

    /// The one validation of limits, for API calls and saved state alike:
    /// at least one rate; `backend` or per-direction backends, not both;
    /// a direction's backend only with that direction's rate (nothing given
    /// is silently ignored).
    pub fn check(&self) -> Result<(), ManagerError> {
        let invalid = |m: &str| Err(ManagerError::InvalidArgument(m.into()));
        if self.down.is_none() && self.up.is_none() {
            return invalid("give a download or an upload limit");
        }
        if self.backend.is_some() && (self.up_backend.is_some() || self.down_backend.is_some()) {
            return invalid("backend and up_backend/down_backend exclude each other");
        }
        if self.down_backend.is_some() && self.down.is_none() {
            return invalid("down_backend given without a down limit");
        }
        if self.up_backend.is_some() && self.up.is_none() {
            return invalid("up_backend given without an up limit");
        }
        Ok(())
    }

    pub fn backend_for(&self, dir: Direction) -> Option<&str> {
        match dir {
            Direction::Up => self.up_backend.as_deref(),
            Direction::Down => self.down_backend.as_deref(),
        }
        .or(self.backend.as_deref())
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

/// Why a throttle went away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemovalReason {
    Requested,
    ProcessExited,
    /// Its rule left `rules.d` (or changed target) on reload.
    Reload,
}

/// What happened, in order, for the API's signals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    ThrottleAdded {
        id: ThrottleId,
    },
    ThrottleChanged {
        id: ThrottleId,
    },
    ThrottleRemoved {
        id: ThrottleId,
        reason: RemovalReason,
    },
    ThrottleMigrated {
        id: ThrottleId,
        direction: Direction,
        from: &'static str,
        to: &'static str,
    },
    DefaultChanged {
        direction: Direction,
        backend: &'static str,
    },
    /// `component` is a backend name, "datapath" for the shared programs,
    /// or "state" for the saved throttles (broken while they cannot be
    /// written: the limits apply, but a restart would lose them).
    HealthChanged {
        component: &'static str,
        health: Health,
    },
}

/// An event for listeners, with the throttle it is about (added, changed
/// or migrated) as it was right after.
#[derive(Clone, Debug)]
pub struct Notice {
    pub event: Event,
    pub info: Option<ThrottleInfo>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DirectionStats {
    pub backend: &'static str,
    pub rate: Rate,
    pub counters: Counters,
    /// Bytes per second passed over the last few seconds (rolling window).
    pub current: u64,
    /// Achieved rate over the limit while the limit was binding (`None`
    /// until it has been).
    pub accuracy: Option<f64>,
}

/// A process in the monitor, with what limits it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopEntry {
    pub traffic: monitor::ProcessTraffic,
    pub throttles: Vec<ThrottleId>,
    pub backends: Vec<&'static str>,
    /// Bytes/s, 0 when that direction is not limited.
    pub down_limit: u64,
    pub up_limit: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ThrottleInfo {
    pub id: ThrottleId,
    pub target: Target,
    pub origin: Origin,
    /// Processes this throttle limits in at least one direction.
    pub covered: Vec<u32>,
    /// Processes the target matches that are never limited (init, the
    /// daemon, the bus, polkitd: see `Protected`).
    pub excluded: Vec<u32>,
    /// Why a saved throttle is not applied now (it stays saved and is
    /// retried); `None` while it is applied.
    pub failed: Option<String>,
    pub directions: std::collections::BTreeMap<Direction, DirectionStats>,
}

/// Daemon-wide numbers for `GetStats`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    pub throttles: usize,
    /// Processes in the kernel's map.
    pub processes: usize,
    /// One line: "3 throttles on ebpf, tc_htb".
    pub status: String,
    /// Whether the saved state can be written.
    pub state: Health,
    /// The kernel's throttle slots (one per limited direction), and how
    /// many are taken.
    pub slots: usize,
    pub slots_used: usize,
    /// Throttles each non-root user may have made (`limits.per_user`).
    pub per_user: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendInfo {
    pub name: &'static str,
    pub directions: Vec<Direction>,
    pub priority: Priority,
    pub availability: Availability,
    /// The directions for which this is the default for new throttles.
    pub default_for: Vec<Direction>,
    pub active: usize,
    pub pids: Vec<u32>,
    pub health: Health,
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
        let self_ref = core.lock().unwrap_or_else(|p| p.into_inner()).self_ref.clone();
        let _ = self_ref.set(Arc::downgrade(&core));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let (c, s) = (core.clone(), stop.clone());
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new().name(name.into()).spawn(f).map_err(ManagerError::Io)
        };
        threads.push(spawn("procmon", Box::new(move || core::follow_processes(monitor, &c, &s)))?);
        let (c, s) = (core.clone(), stop.clone());
        threads.push(spawn("linkmon", Box::new(move || health::follow_links(&c, &s)))?);
        let (c, s) = (core.clone(), stop.clone());
        threads.push(spawn("health", Box::new(move || health::run_checks(&c, &s)))?);
        Ok(Manager { core, stop, threads: Mutex::new(threads) })
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A change: runs under the lock, which it leaves saved (journaled)
    /// for the next start.
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
        self.lock().find(target)
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
    pub fn top(&self, count: usize, sort: monitor::SortBy, scope: monitor::Scope, owner: Option<u32>) -> Vec<TopEntry> {
        self.lock().top(count, sort, scope, owner)
    }

    /// The uid of a process the monitor knows, else from /proc.
    pub fn process_owner(&self, pid: u32) -> Option<u32> {
        let known = self.lock().monitor.owner(pid);
        known.or_else(|| crate::kernel::procfs::uid(pid).ok())
    }

    /// A process's (up, down) bytes/s, one per second, oldest first; empty
    /// for a live process that has sent nothing yet.
    pub fn process_history(&self, pid: u32) -> Result<Vec<(u64, u64)>, ManagerError> {
        match self.lock().monitor.history(pid) {
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
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.lock().subscribers.push(tx);
        rx
    }

    #[cfg(feature = "testing")]
    pub fn take_events(&self) -> Vec<Event> {
        self.lock().events.drain(..).collect()
    }

    /// Number of processes in the kernel's process map (for leak checks).
    #[cfg(feature = "testing")]
    pub fn kernel_proc_entries(&self) -> usize {
        self.lock().datapath.proc_count()
    }

    /// The kernel's slots for a process (tests check precedence with this).
    #[cfg(feature = "testing")]
    pub fn kernel_proc(&self, tgid: u32) -> Option<throttle_common::ProcSlots> {
        self.lock().datapath.proc(tgid)
    }

    /// One line for status displays: "3 throttles on ebpf, tc_htb".
    pub fn status(&self) -> String {
        self.lock().status()
    }

    /// Removes every throttle and restores what the backends replaced; the
    /// programs detach when `self` drops. Persisted state is kept.
    pub fn shutdown(self) -> Result<(), ManagerError> {
        self.teardown()
    }

    /// As `shutdown`, for a manager that is shared; idempotent.
    pub fn teardown(&self) -> Result<(), ManagerError> {
        self.stop.store(true, Ordering::Relaxed);
        let threads: Vec<_> = self.threads.lock().unwrap_or_else(|p| p.into_inner()).drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
        self.lock().teardown()
    }
}

/// The core, locked for reads that touch only the daemon's bookkeeping,
/// never the kernel: microseconds each.
pub struct Reader<'a>(MutexGuard<'a, Core>);

impl Reader<'_> {
    pub fn summary(&mut self, id: ThrottleId) -> Result<ThrottleInfo, ManagerError> {
        self.0.info_with(id, false)
    }

    /// Applied, or saved and not applied now (failed).
    pub fn exists(&self, id: ThrottleId) -> bool {
        self.0.throttles.contains_key(&id) || self.0.pending.contains_key(&id)
    }

    pub fn ids(&self) -> Vec<ThrottleId> {
        let mut ids: Vec<ThrottleId> = self.0.throttles.keys().chain(self.0.pending.keys()).copied().collect();
        ids.sort_unstable();
        ids
    }

    pub fn stats(&self) -> Stats {
        let c = &self.0;
        Stats {
            throttles: c.throttles.len(),
            processes: c.datapath.tracked_procs(),
            status: c.status(),
            state: c.state_health.clone(),
            slots: MAX_SLOTS as usize - 1,
            slots_used: MAX_SLOTS as usize - 1 - c.free_slots.len(),
            per_user: c.config.limits.per_user,
        }
    }

    pub fn default_backend(&self, dir: Direction) -> Result<&'static str, ManagerError> {
        self.0.default_backend(dir)
    }

    /// Which authority `req` by `uid` needs (see `policy`).
    pub fn need(&self, uid: u32, req: &Request) -> Result<Need, ManagerError> {
        self.0.need(uid, req)
    }

    pub fn throttle_history(&self, id: ThrottleId) -> Result<Vec<(u64, u64)>, ManagerError> {
        self.0.throttle_history(id)
    }

    pub fn monitoring(&self) -> bool {
        self.0.datapath.monitoring()
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}
