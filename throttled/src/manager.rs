//! The throttle manager: owns the data path and the backends, maps
//! processes to throttle slots, and follows processes through the proc
//! connector. The D-Bus layer and the CLI are thin clients of this.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    thread::JoinHandle,
    time::Duration,
};

use throttle_common::{rate::Rate, Counters, ProcSlots, MAX_SLOTS};

use crate::{
    backend::{
        ebpf::EbpfBackend, ifb_tc::IfbTcBackend, interfaces::InterfacePolicy, tc_htb::TcHtbBackend, Availability,
        Backend, BackendError, Context, Direction, Health, SlotId,
    },
    kernel::{
        bpf::{BpfError, Datapath, DatapathOptions},
        procfs::{self, ProcIdent},
        procmon::{ProcEvent, ProcMonitor},
        sockets,
    },
};

pub type ThrottleId = u32;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LimitSpec {
    pub down: Option<Rate>,
    pub up: Option<Rate>,
    /// Cover the process's descendants, present and future.
    pub tree: bool,
    /// Backend for both directions; `None` picks the default per direction.
    pub backend: Option<String>,
    pub up_backend: Option<String>,
    pub down_backend: Option<String>,
}

impl LimitSpec {
    fn backend_for(&self, dir: Direction) -> Option<&str> {
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
    #[error("unknown backend '{0}'")]
    UnknownBackend(String),
    #[error("all {MAX_SLOTS} throttle slots are in use")]
    SlotsExhausted,
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error("proc connector: {0}")]
    ProcMonitor(#[source] std::io::Error),
}

/// Why a throttle went away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemovalReason {
    Requested,
    ProcessExited,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    ThrottleRemoved { id: ThrottleId, reason: RemovalReason },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectionStats {
    pub backend: &'static str,
    pub rate: Rate,
    pub counters: Counters,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThrottleInfo {
    pub id: ThrottleId,
    pub root: ProcIdent,
    pub tree: bool,
    pub covered: Vec<u32>,
    pub directions: BTreeMap<Direction, DirectionStats>,
}

struct Limit {
    slot: SlotId,
    rate: Rate,
    backend: usize,
}

struct Throttle {
    root: ProcIdent,
    tree: bool,
    limits: BTreeMap<Direction, Limit>,
    covered: BTreeSet<u32>,
}

impl Throttle {
    fn slots(&self) -> ProcSlots {
        let s = |d| self.limits.get(&d).map_or(0, |l: &Limit| l.slot);
        ProcSlots { up: s(Direction::Up), down: s(Direction::Down) }
    }
}

struct Inner {
    datapath: Datapath,
    backends: Vec<Box<dyn Backend>>,
    throttles: BTreeMap<ThrottleId, Throttle>,
    by_tgid: HashMap<u32, ThrottleId>,
    free_slots: Vec<SlotId>,
    next_id: ThrottleId,
    events: Vec<Event>,
}

pub struct Manager {
    inner: Arc<Mutex<Inner>>,
    stop: Arc<AtomicBool>,
    monitors: Vec<JoinHandle<()>>,
}

#[derive(Clone, Debug)]
pub struct ManagerOptions {
    pub datapath: DatapathOptions,
    /// Interfaces the interface backends (tc_htb, ifb_tc) manage.
    pub interfaces: InterfacePolicy,
    /// Where the original root qdiscs are saved (crash recovery).
    pub state_dir: std::path::PathBuf,
}

impl Default for ManagerOptions {
    fn default() -> Self {
        ManagerOptions {
            datapath: DatapathOptions::default(),
            interfaces: InterfacePolicy::default(),
            state_dir: "/var/lib/chadthrottle".into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendInfo {
    pub name: &'static str,
    pub directions: Vec<Direction>,
    pub priority: crate::backend::Priority,
    pub availability: Availability,
    pub active: usize,
    pub health: Health,
}

impl Manager {
    pub fn start(opts: &ManagerOptions) -> Result<Self, ManagerError> {
        let monitor = ProcMonitor::open(Duration::from_millis(200)).map_err(ManagerError::ProcMonitor)?;
        let inner = Inner {
            datapath: Datapath::load(&opts.datapath)?,
            backends: vec![
                Box::new(EbpfBackend::new()),
                Box::new(TcHtbBackend::new(opts.interfaces.clone(), opts.state_dir.clone())),
                Box::new(IfbTcBackend::new(opts.interfaces.clone(), opts.state_dir.clone())),
            ],
            throttles: BTreeMap::new(),
            by_tgid: HashMap::new(),
            free_slots: (1..MAX_SLOTS).rev().collect(),
            next_id: 1,
            events: Vec::new(),
        };
        let inner = Arc::new(Mutex::new(inner));
        let stop = Arc::new(AtomicBool::new(false));
        let procs = {
            let (inner, stop) = (inner.clone(), stop.clone());
            std::thread::Builder::new()
                .name("procmon".into())
                .spawn(move || follow_processes(monitor, &inner, &stop))
                .map_err(ManagerError::ProcMonitor)?
        };
        let links = {
            let (inner, stop) = (inner.clone(), stop.clone());
            std::thread::Builder::new()
                .name("linkmon".into())
                .spawn(move || follow_links(&inner, &stop))
                .map_err(ManagerError::ProcMonitor)?
        };
        Ok(Manager { inner, stop, monitors: vec![procs, links] })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Limits `pid` (a thread id resolves to its process). Limiting a process
    /// that already has its own throttle changes that throttle in place.
    pub fn limit_pid(&self, pid: u32, spec: &LimitSpec) -> Result<ThrottleId, ManagerError> {
        if spec.down.is_none() && spec.up.is_none() {
            return Err(ManagerError::InvalidArgument("give a download or an upload limit".into()));
        }
        let tgid = resolve_pid(pid)?;
        let root = procfs::ident(tgid).map_err(|_| ManagerError::NoSuchProcess(pid))?;
        let mut inner = self.lock();
        if let Some(id) = inner.throttles.iter().find(|(_, t)| t.root == root).map(|(id, _)| *id) {
            inner.change(id, spec)?;
            return Ok(id);
        }
        let id = inner.create(root, spec)?;
        if !procfs::is_alive(&root) {
            inner.remove(id, RemovalReason::ProcessExited)?;
            return Err(ManagerError::NoSuchProcess(pid));
        }
        Ok(id)
    }

    pub fn change(&self, id: ThrottleId, spec: &LimitSpec) -> Result<(), ManagerError> {
        self.lock().change(id, spec)
    }

    pub fn remove(&self, id: ThrottleId) -> Result<(), ManagerError> {
        self.lock().remove(id, RemovalReason::Requested)
    }

    pub fn info(&self, id: ThrottleId) -> Result<ThrottleInfo, ManagerError> {
        self.lock().info(id)
    }

    pub fn list(&self) -> Vec<ThrottleInfo> {
        let mut inner = self.lock();
        let ids: Vec<ThrottleId> = inner.throttles.keys().copied().collect();
        ids.into_iter().filter_map(|id| inner.info(id).ok()).collect()
    }

    pub fn take_events(&self) -> Vec<Event> {
        std::mem::take(&mut self.lock().events)
    }

    /// Number of processes in the kernel's process map (for leak checks).
    pub fn kernel_proc_entries(&self) -> usize {
        self.lock().datapath.proc_count()
    }

    /// Removes every throttle, reporting the first failure; the programs
    /// detach when `self` drops.
    pub fn shutdown(mut self) -> Result<(), ManagerError> {
        self.remove_all()
    }

    fn remove_all(&mut self) -> Result<(), ManagerError> {
        self.stop_monitor();
        let mut inner = self.lock();
        let ids: Vec<_> = inner.throttles.keys().copied().collect();
        let mut first = Ok(());
        for id in ids {
            if let Err(e) = inner.remove(id, RemovalReason::Requested) {
                tracing::warn!(throttle = id, error = %e, "cleanup failed");
                first = first.and(Err(e));
            }
        }
        first
    }

    /// Every backend with its state, for `backends` listings and health.
    pub fn backends(&self) -> Vec<BackendInfo> {
        let mut inner = self.lock();
        let (ctx, backends) = inner.ctx();
        backends
            .iter()
            .map(|b| BackendInfo {
                name: b.name(),
                directions: b.capabilities().directions,
                priority: b.priority(),
                availability: b.availability(),
                active: b.active(),
                health: b.health(&ctx),
            })
            .collect()
    }

    fn stop_monitor(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.monitors.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = self.remove_all();
    }
}

fn resolve_pid(pid: u32) -> Result<u32, ManagerError> {
    if pid == 0 {
        return Err(ManagerError::InvalidArgument("pid 0 is not a process".into()));
    }
    let tgid = procfs::tgid(pid).map_err(|_| ManagerError::NoSuchProcess(pid))?;
    if procfs::is_kernel_thread(tgid).unwrap_or(false) {
        return Err(ManagerError::InvalidArgument(format!("pid {pid} is a kernel thread")));
    }
    Ok(tgid)
}

impl Inner {
    fn ctx(&mut self) -> (Context<'_>, &mut Vec<Box<dyn Backend>>) {
        (Context { datapath: &mut self.datapath }, &mut self.backends)
    }

    /// The named backend, or the highest-priority available one for `dir`.
    /// An unavailable backend is refused with its reason.
    fn backend_index(&self, name: Option<&str>, dir: Direction) -> Result<usize, ManagerError> {
        let idx = match name {
            Some(n) => self
                .backends
                .iter()
                .position(|b| b.name() == n)
                .ok_or_else(|| ManagerError::UnknownBackend(n.into()))?,
            None => (0..self.backends.len())
                .filter(|&i| self.backends[i].supports(dir) && self.backends[i].availability().is_available())
                .max_by_key(|&i| (self.backends[i].priority(), std::cmp::Reverse(i)))
                .ok_or_else(|| ManagerError::UnknownBackend(format!("(no available {dir} backend)")))?,
        };
        let b = &self.backends[idx];
        if !b.supports(dir) {
            return Err(BackendError::WrongDirection { name: b.name(), direction: dir }.into());
        }
        if let Availability::Unavailable(reason) = b.availability() {
            return Err(BackendError::Unavailable { name: b.name(), reason }.into());
        }
        Ok(idx)
    }

    fn create(&mut self, root: ProcIdent, spec: &LimitSpec) -> Result<ThrottleId, ManagerError> {
        let mut chosen = BTreeMap::new();
        for (dir, rate) in [(Direction::Down, spec.down), (Direction::Up, spec.up)] {
            if rate.is_some() {
                chosen.insert(dir, self.backend_index(spec.backend_for(dir), dir)?);
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let t = Throttle { root, tree: spec.tree, limits: BTreeMap::new(), covered: BTreeSet::new() };
        self.throttles.insert(id, t);
        let wanted = [(Direction::Down, spec.down), (Direction::Up, spec.up)];
        for (dir, rate) in wanted.into_iter().filter_map(|(d, r)| r.map(|r| (d, r))) {
            if let Err(e) = self.add_limit(id, dir, rate, chosen[&dir]) {
                let _ = self.remove(id, RemovalReason::Requested);
                return Err(e);
            }
        }
        let pids = if spec.tree { procfs::tree(root.pid) } else { vec![root.pid] };
        for pid in pids {
            self.cover(id, pid)?;
        }
        tracing::info!(throttle = id, pid = root.pid, down = ?spec.down, up = ?spec.up, tree = spec.tree, "throttle added");
        Ok(id)
    }

    fn add_limit(&mut self, id: ThrottleId, dir: Direction, rate: Rate, backend: usize) -> Result<(), ManagerError> {
        let slot = self.free_slots.pop().ok_or(ManagerError::SlotsExhausted)?;
        let (mut ctx, backends) = self.ctx();
        let b = &mut backends[backend];
        let res = (|| {
            if !b.supports(dir) {
                return Err(BackendError::WrongDirection { name: b.name(), direction: dir });
            }
            if !b.is_initialized() {
                b.init(&mut ctx)?;
            }
            b.apply(&mut ctx, slot, dir, rate)
        })();
        if let Err(e) = res {
            self.free_slots.push(slot);
            return Err(e.into());
        }
        if let Some(t) = self.throttles.get_mut(&id) {
            t.limits.insert(dir, Limit { slot, rate, backend });
        }
        Ok(())
    }

    fn change(&mut self, id: ThrottleId, spec: &LimitSpec) -> Result<(), ManagerError> {
        self.throttles.get(&id).ok_or(ManagerError::NoSuchThrottle(id))?;
        for (dir, rate) in [(Direction::Down, spec.down), (Direction::Up, spec.up)] {
            let existing = self.throttles[&id].limits.get(&dir).map(|l| (l.slot, l.backend));
            match (existing, rate) {
                (Some((slot, b)), Some(rate)) => {
                    let (mut ctx, backends) = self.ctx();
                    backends[b].change(&mut ctx, slot, dir, rate)?;
                    if let Some(l) = self.throttles.get_mut(&id).and_then(|t| t.limits.get_mut(&dir)) {
                        l.rate = rate;
                    }
                }
                (None, Some(rate)) => {
                    let backend = self.backend_index(spec.backend_for(dir), dir)?;
                    self.add_limit(id, dir, rate, backend)?
                }
                (_, None) => continue,
            }
            self.retune(id, dir, rate);
        }
        let covered: Vec<u32> = self.throttles[&id].covered.iter().copied().collect();
        let slots = self.throttles[&id].slots();
        for tgid in covered {
            self.datapath.set_proc(tgid, slots)?;
        }
        Ok(())
    }

    /// Re-runs per-process backend work (pacing) for every covered process.
    fn retune(&mut self, id: ThrottleId, dir: Direction, rate: Option<Rate>) {
        let Some(t) = self.throttles.get(&id) else {
            return;
        };
        let Some(l) = t.limits.get(&dir) else { return };
        let (slot, b) = (l.slot, l.backend);
        let covered: Vec<u32> = t.covered.iter().copied().collect();
        let (mut ctx, backends) = self.ctx();
        for tgid in covered {
            backends[b].cover(&mut ctx, slot, dir, tgid, rate);
        }
    }

    fn cover(&mut self, id: ThrottleId, tgid: u32) -> Result<(), ManagerError> {
        if self.by_tgid.get(&tgid).is_some_and(|other| *other != id) {
            return Ok(()); // first throttle wins; the core issue defines precedence
        }
        let Some(t) = self.throttles.get_mut(&id) else {
            return Ok(());
        };
        t.covered.insert(tgid);
        let slots = t.slots();
        let limits: Vec<_> = t.limits.iter().map(|(d, l)| (*d, l.slot, l.backend, l.rate)).collect();
        self.by_tgid.insert(tgid, id);
        self.datapath.set_proc(tgid, slots)?;
        let dp = &mut self.datapath;
        let _ = sockets::for_each_inet_socket(tgid, |s| {
            let _ = dp.seed_owner(&s.fd, tgid);
        });
        let (mut ctx, backends) = self.ctx();
        for (dir, slot, b, rate) in limits {
            backends[b].cover(&mut ctx, slot, dir, tgid, Some(rate));
        }
        Ok(())
    }

    fn uncover(&mut self, tgid: u32) -> Option<ThrottleId> {
        let id = self.by_tgid.remove(&tgid)?;
        if let Err(e) = self.datapath.remove_proc(tgid) {
            tracing::warn!(tgid, error = %e, "could not remove process entry");
        }
        let t = self.throttles.get_mut(&id)?;
        t.covered.remove(&tgid);
        Some(id)
    }

    fn remove(&mut self, id: ThrottleId, reason: RemovalReason) -> Result<(), ManagerError> {
        let t = self.throttles.get(&id).ok_or(ManagerError::NoSuchThrottle(id))?;
        let covered: Vec<u32> = t.covered.iter().copied().collect();
        let limits: Vec<_> = t.limits.iter().map(|(d, l)| (*d, l.slot, l.backend)).collect();
        for tgid in covered {
            self.uncover(tgid);
            let (mut ctx, backends) = self.ctx();
            for &(dir, slot, b) in &limits {
                backends[b].cover(&mut ctx, slot, dir, tgid, None);
            }
        }
        let mut first_err = None;
        for (dir, slot, b) in limits {
            let (mut ctx, backends) = self.ctx();
            match backends[b].remove(&mut ctx, slot, dir) {
                Ok(()) => self.free_slots.push(slot),
                Err(e) => first_err = first_err.or(Some(e)),
            }
            let (mut ctx, backends) = self.ctx();
            if backends[b].active() == 0 {
                let _ = backends[b].cleanup(&mut ctx);
            }
        }
        self.throttles.remove(&id);
        self.events.push(Event::ThrottleRemoved { id, reason });
        tracing::info!(throttle = id, ?reason, "throttle removed");
        first_err.map_or(Ok(()), |e| Err(e.into()))
    }

    /// A throttle with its counters, as its backends read them from the kernel.
    fn info(&mut self, id: ThrottleId) -> Result<ThrottleInfo, ManagerError> {
        let t = self.throttles.get(&id).ok_or(ManagerError::NoSuchThrottle(id))?;
        let limits: Vec<_> = t.limits.iter().map(|(d, l)| (*d, l.slot, l.rate, l.backend)).collect();
        let (root, tree, covered) = (t.root, t.tree, t.covered.iter().copied().collect());
        let (ctx, backends) = self.ctx();
        let mut directions = BTreeMap::new();
        for (dir, slot, rate, b) in limits {
            let counters = backends[b].stats(&ctx, slot, dir)?;
            directions.insert(dir, DirectionStats { backend: backends[b].name(), rate, counters });
        }
        Ok(ThrottleInfo { id, root, tree, covered, directions })
    }

    fn on_event(&mut self, ev: ProcEvent) {
        match ev {
            ProcEvent::Fork { parent_tgid, child_tgid } => {
                let Some(&id) = self.by_tgid.get(&parent_tgid) else {
                    return;
                };
                if self.throttles.get(&id).is_some_and(|t| t.tree) {
                    if let Err(e) = self.cover(id, child_tgid) {
                        tracing::warn!(throttle = id, pid = child_tgid, error = %e, "could not cover child");
                    }
                }
            }
            ProcEvent::Exit { tgid } => self.process_gone(tgid),
            ProcEvent::Overrun => self.rescan(),
            ProcEvent::Exec { .. } | ProcEvent::Comm { .. } => {}
        }
    }

    fn process_gone(&mut self, tgid: u32) {
        let Some(id) = self.uncover(tgid) else { return };
        let orphaned = self.throttles.get(&id).is_some_and(|t| t.covered.is_empty() && !procfs::is_alive(&t.root));
        if orphaned {
            let _ = self.remove(id, RemovalReason::ProcessExited);
        }
    }

    /// After lost events: drop dead processes and pick up missed children.
    fn rescan(&mut self) {
        let dead: Vec<u32> = self.by_tgid.keys().copied().filter(|p| procfs::ident(*p).is_err()).collect();
        dead.into_iter().for_each(|p| self.process_gone(p));
        let trees: Vec<_> = self.throttles.iter().filter(|(_, t)| t.tree).map(|(id, t)| (*id, t.root.pid)).collect();
        for (id, root) in trees {
            for pid in procfs::tree(root) {
                let _ = self.cover(id, pid);
            }
        }
    }
}

/// Interface backends follow interfaces that appear, vanish or change routes.
fn follow_links(inner: &Mutex<Inner>, stop: &AtomicBool) {
    let events = crate::kernel::netlink::Netlink::new().and_then(|nl| nl.subscribe_links());
    let mut events = match events {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "cannot follow interfaces");
            return;
        }
    };
    while !stop.load(Ordering::Relaxed) {
        match events.next(Duration::from_millis(200)) {
            Ok(Some(ev)) => {
                tracing::debug!(?ev, "link event");
                let mut inner = inner.lock().unwrap_or_else(|p| p.into_inner());
                let (mut ctx, backends) = inner.ctx();
                for b in backends.iter_mut().filter(|b| b.is_initialized()) {
                    if let Err(e) = b.refresh_interfaces(&mut ctx) {
                        tracing::warn!(backend = b.name(), error = %e, "could not follow interfaces");
                    }
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "interface events failed");
                return;
            }
        }
    }
}

fn follow_processes(monitor: ProcMonitor, inner: &Mutex<Inner>, stop: &AtomicBool) {
    let mut buf = vec![0u8; 64 << 10];
    while !stop.load(Ordering::Relaxed) {
        match monitor.recv(&mut buf) {
            Ok(Some(events)) => {
                let mut inner = inner.lock().unwrap_or_else(|p| p.into_inner());
                events.into_iter().for_each(|ev| inner.on_event(ev));
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "proc connector failed; process tracking stopped");
                return;
            }
        }
    }
}
