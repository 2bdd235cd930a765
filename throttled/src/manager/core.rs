//! The manager's state and its operations: throttles and their limits, the
//! per-process map (which throttle limits which process, per direction),
//! process lifecycle, and make-before-break migration between backends.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    path::PathBuf,
    sync::{atomic::AtomicBool, atomic::Ordering, Arc, Mutex, OnceLock, Weak},
};

use throttle_common::{rate::Rate, Direction, ProcSlots};

use super::{
    coverage::{self, Assignment, Candidate},
    monitor::{ProcessTraffic, Scope, SortBy},
    policy::{self, Actor, Made, Request},
    pool::Pool,
    DirectionStats, Event, LimitSpec, ManagerError, Notice, Protected, RemovalReason, ThrottleId, ThrottleInfo,
    TopEntry,
};
use crate::{
    backend::{Context, Health, SlotId},
    config::{Config, Defaults},
    kernel::{
        bpf::Datapath,
        procfs::{self, ProcIdent},
        procmon::{ProcEvent, ProcMonitor},
        sockets,
    },
    state::{InstanceLock, PersistedThrottle, StateStore},
    target::{ProcFacts, Target},
};

/// Events kept for the API when nobody reads them.
const MAX_EVENTS: usize = 4096;

/// Where a throttle came from: the API, or a file in `rules.d`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Runtime,
    Rule(PathBuf),
}

pub struct Limit {
    pub slot: SlotId,
    pub rate: Rate,
    pub backend: usize,
}

pub struct Throttle {
    pub target: Target,
    pub origin: Origin,
    pub limits: BTreeMap<Direction, Limit>,
    /// Live processes the target matches.
    pub members: BTreeSet<u32>,
    /// Members this throttle limits in at least one direction.
    pub covered: BTreeSet<u32>,
    /// Protected processes the target matches: never members.
    pub excluded: BTreeSet<u32>,
    /// Whether it is admin-set, and whose share it counts against.
    pub made: Made,
}

/// A saved throttle that cannot be applied now (no free slot, no usable
/// backend): it stays saved, is reported as failed, and is retried when
/// slots free up and on reload.
pub struct Pending {
    pub record: PersistedThrottle,
    pub why: String,
}

struct ProcEntry {
    ident: ProcIdent,
    /// Throttles whose target matches this process.
    matches: Vec<ThrottleId>,
    assigned: Assignment,
}

pub struct Core {
    pub datapath: Datapath,
    pub pool: Pool,
    pub config: Config,
    pub config_path: Option<PathBuf>,
    pub throttles: BTreeMap<ThrottleId, Throttle>,
    /// Saved throttles not applied now (see `Pending`).
    pub pending: BTreeMap<ThrottleId, Pending>,
    /// Processes no throttle may limit, by role.
    pub protected: BTreeMap<Protected, ProcIdent>,
    procs: HashMap<u32, ProcEntry>,
    pub free_slots: Vec<SlotId>,
    pub next_id: ThrottleId,
    pub events: VecDeque<Event>,
    /// Saves runtime throttles (see `persist`).
    pub saver: super::persist::Saver,
    /// The core itself, for the saver's syncer to report failures as events.
    pub self_ref: Arc<OnceLock<Weak<Mutex<Core>>>>,
    /// Defaults chosen at runtime; they override the config's per direction.
    pub runtime_defaults: Defaults,
    pub overrides: super::Overrides,
    /// Live listeners (the D-Bus layer turns events into signals).
    pub subscribers: Vec<tokio::sync::mpsc::UnboundedSender<Notice>>,
    /// Rolling rate and history per throttle and direction.
    pub rates: HashMap<(ThrottleId, Direction), super::rates::LimitSeries>,
    /// Every process's traffic (empty when the monitor is off).
    pub monitor: super::monitor::Monitor,
    /// Whether the saved state can be written (see `note_saved`).
    pub state_health: Health,
    /// Why the last change could not be saved, if it could not.
    save_error: Option<String>,
    /// Why saved changes cannot be flushed to the disk, if they cannot.
    sync_error: Option<String>,
    pub _lock: InstanceLock,
}

/// The health component of the saved state.
pub const STATE_COMPONENT: &str = "state";

impl Core {
    pub fn new(datapath: Datapath, config: Config, store: StateStore, lock: InstanceLock) -> std::io::Result<Self> {
        let self_ref: Arc<OnceLock<Weak<Mutex<Core>>>> = Arc::default();
        let sink = self_ref.clone();
        let on_sync = Box::new(move |failing: Option<String>| {
            if let Some(core) = sink.get().and_then(Weak::upgrade) {
                let mut core = core.lock().unwrap_or_else(|p| p.into_inner());
                core.sync_error = failing;
                core.note_state_health();
            }
        });
        let saver = super::persist::Saver::new(store, on_sync)?;
        Ok(Core {
            datapath,
            pool: Pool::new(&config),
            monitor: super::monitor::Monitor::new(&config.monitor),
            config,
            config_path: None,
            throttles: BTreeMap::new(),
            pending: BTreeMap::new(),
            protected: [(Protected::Init, 1), (Protected::Daemon, std::process::id())]
                .into_iter()
                .filter_map(|(role, pid)| Some((role, procfs::ident(pid).ok()?)))
                .collect(),
            procs: HashMap::new(),
            free_slots: (1..throttle_common::MAX_SLOTS).rev().collect(),
            next_id: 1,
            events: VecDeque::new(),
            saver,
            self_ref,
            runtime_defaults: Defaults::default(),
            overrides: Default::default(),
            subscribers: Vec::new(),
            rates: HashMap::new(),
            state_health: Health::Healthy,
            save_error: None,
            sync_error: None,
            _lock: lock,
        })
    }

    /// Records whether the last change was saved.
    pub fn note_saved(&mut self, result: Result<(), crate::state::StateError>) {
        self.save_error = result.err().map(|e| e.to_string());
        self.note_state_health();
    }

    /// The saved state's health: broken while changes cannot be saved or
    /// flushed. Limits still apply then; only the next start would lose
    /// them. Reported when it changes.
    fn note_state_health(&mut self) {
        let health = match self.save_error.as_ref().or(self.sync_error.as_ref()) {
            Some(why) => Health::Broken(format!("throttles apply but are not saved: {why}")),
            None => Health::Healthy,
        };
        if health != self.state_health {
            self.state_health = health.clone();
            self.emit(Event::HealthChanged { component: STATE_COMPONENT, health });
        }
    }

    pub fn emit(&mut self, ev: Event) {
        if !self.subscribers.is_empty() {
            let info = match ev {
                Event::ThrottleAdded { id } | Event::ThrottleChanged { id } | Event::ThrottleMigrated { id, .. } => {
                    self.info_with(id, false).ok()
                }
                _ => None,
            };
            let notice = Notice { event: ev.clone(), info };
            self.subscribers.retain(|s| s.send(notice.clone()).is_ok());
        }
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(ev);
    }

    /// The throttle of `target`, applied or pending.
    pub fn find(&self, target: &Target) -> Option<ThrottleId> {
        let applied = self.throttles.iter().find(|(_, t)| same_target(&t.target, target)).map(|(id, _)| *id);
        applied.or_else(|| self.pending.iter().find(|(_, p)| same_target(&p.record.target, target)).map(|(id, _)| *id))
    }

    /// As `limit_by`, for the daemon itself (rules, the command line).
    pub fn limit(&mut self, target: Target, spec: &LimitSpec, origin: Origin) -> Result<ThrottleId, ManagerError> {
        self.limit_by(target, spec, origin, None)
    }

    /// Limits `target` for `by` (`None`: the daemon), if the policy lets
    /// it, checked here under the lock before anything changes.
    pub fn limit_by(
        &mut self,
        target: Target,
        spec: &LimitSpec,
        origin: Origin,
        by: Option<Actor>,
    ) -> Result<ThrottleId, ManagerError> {
        spec.check()?;
        if let Some(a) = by {
            self.permit(a, &Request::Limit(target.clone(), spec.clone()))?;
        }
        if let Some(id) = self.find(&target) {
            self.set_tree(id, &target);
            self.change_by(id, spec, by)?;
            return Ok(id);
        }
        if let Some(a) = by {
            policy::quota(a.uid, self.made_by(a.uid), self.config.limits.per_user)?;
        }
        let id = self.next_id;
        let next = id.checked_add(1).ok_or_else(|| ManagerError::InvalidArgument("no throttle ids are left".into()))?;
        self.create(id, target, spec, origin, Made::by(by))?;
        self.next_id = next;
        self.save_throttle(id);
        Ok(id)
    }

    /// A protected process, if `pid` is one now: why it is never limited.
    pub fn protected_role(&self, pid: u32) -> Option<Protected> {
        self.protected.iter().find(|(_, i)| i.pid == pid && procfs::is_alive(i)).map(|(r, _)| *r)
    }

    fn is_protected(&self, ident: &ProcIdent) -> bool {
        self.protected.values().any(|i| i == ident)
    }

    /// Sets the process in `role`: it leaves every throttle now, and is
    /// reported in their `excluded` from then on.
    pub fn protect(&mut self, role: Protected, pid: Option<u32>) {
        let ident = pid.and_then(|p| procfs::ident(p).ok());
        let old = match ident {
            Some(i) => self.protected.insert(role, i),
            None => self.protected.remove(&role),
        };
        if let Some(old) = old.filter(|o| Some(*o) != ident) {
            // Its successor may be another process: the old one is no longer excluded.
            self.throttles.values_mut().for_each(|t| {
                t.excluded.remove(&old.pid);
            });
        }
        let Some(ident) = ident else { return };
        let holding: Vec<ThrottleId> =
            self.throttles.iter().filter(|(_, t)| t.members.contains(&ident.pid)).map(|(id, _)| *id).collect();
        for id in holding {
            self.drop_member(id, ident.pid);
            if let Some(t) = self.throttles.get_mut(&id) {
                t.excluded.insert(ident.pid);
            }
        }
        tracing::info!(pid = ident.pid, role = role.describe(), "never limited");
    }

    /// `limit --tree` on a process already limited without it (or the
    /// reverse) changes the target in place.
    fn set_tree(&mut self, id: ThrottleId, target: &Target) {
        let Some(t) = self.throttles.get_mut(&id) else { return };
        if t.target == *target {
            return;
        }
        t.target = target.clone();
        if target.is_tree() {
            self.add_descendants(id);
        }
    }

    /// Creates throttle `id`, all or nothing.
    pub fn create(
        &mut self,
        id: ThrottleId,
        target: Target,
        spec: &LimitSpec,
        origin: Origin,
        made: Made,
    ) -> Result<(), ManagerError> {
        spec.check()?;
        let mut chosen = Vec::new();
        for dir in Direction::BOTH {
            if let Some(rate) = spec.rate(dir) {
                chosen.push((dir, rate, self.pool.resolve(spec.backend_for(dir), dir)?));
            }
        }
        let root = target.root();
        if let Some(role) = root.and_then(|r| self.protected_role(r.pid)) {
            let pid = root.map_or(0, |r| r.pid);
            return Err(ManagerError::InvalidArgument(format!(
                "pid {pid} is {}: it is never limited",
                role.describe()
            )));
        }
        if root.is_some_and(|r| !procfs::is_alive(&r)) {
            return Err(ManagerError::NoSuchProcess(root.map_or(0, |r| r.pid)));
        }
        let (limits, members, covered, excluded) = (BTreeMap::new(), BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
        let t = Throttle { target, origin, limits, members, covered, excluded, made };
        self.throttles.insert(id, t);
        for (dir, rate, backend) in chosen {
            if let Err(e) = self.add_limit(id, dir, rate, backend) {
                let _ = self.unlink(id); // never existed: no event, no log
                return Err(e);
            }
        }
        self.add_members(id);
        // Gone (or a zombie) by the time it is committed: nothing stays.
        if root.is_some_and(|r| !procfs::is_alive(&r)) {
            let _ = self.unlink(id);
            return Err(ManagerError::NoSuchProcess(root.map_or(0, |r| r.pid)));
        }
        let t = &self.throttles[&id];
        tracing::info!(throttle_id = id, target = %t.target, down = ?spec.down, up = ?spec.up, processes = t.members.len(), "throttle added");
        if !t.excluded.is_empty() {
            tracing::info!(throttle_id = id, excluded = ?t.excluded, "protected processes match but are never limited (see its Excluded property)");
        }
        self.emit(Event::ThrottleAdded { id });
        Ok(())
    }

    /// Puts `rate` on `backend` in a fresh slot (starting the backend if it
    /// is idle). On failure nothing is left behind.
    fn apply_on(&mut self, backend: usize, dir: Direction, rate: Rate) -> Result<SlotId, ManagerError> {
        let slot = self.free_slots.pop().ok_or(ManagerError::SlotsExhausted)?;
        let b = &mut self.pool.backends[backend];
        let ctx = &mut Context { datapath: &mut self.datapath };
        let res = (|| {
            if !b.is_initialized() {
                b.init(ctx)?;
            }
            b.apply(ctx, slot, dir, rate)
        })();
        if let Err(e) = res {
            self.free_slots.push(slot);
            self.release_if_idle(backend);
            return Err(e.into());
        }
        Ok(slot)
    }

    fn add_limit(&mut self, id: ThrottleId, dir: Direction, rate: Rate, backend: usize) -> Result<(), ManagerError> {
        let slot = self.apply_on(backend, dir, rate)?;
        if let Some(t) = self.throttles.get_mut(&id) {
            t.limits.insert(dir, Limit { slot, rate, backend });
        }
        tracing::info!(throttle_id = id, direction = %dir, backend = self.pool.name(backend), %rate, "limit applied");
        Ok(())
    }

    /// Lets go of a slot on its backend; the backend stops when idle.
    fn release(&mut self, backend: usize, slot: SlotId, dir: Direction) -> Result<(), ManagerError> {
        let ctx = &mut Context { datapath: &mut self.datapath };
        let res = self.pool.backends[backend].remove(ctx, slot, dir);
        if res.is_ok() {
            self.free_slots.push(slot);
        }
        self.release_if_idle(backend);
        Ok(res?)
    }

    pub fn release_if_idle(&mut self, backend: usize) {
        let b = &mut self.pool.backends[backend];
        if b.is_initialized() && b.active() == 0 {
            if let Err(e) = b.cleanup(&mut Context { datapath: &mut self.datapath }) {
                tracing::warn!(backend = b.name(), error = %e, "could not release an idle backend");
            }
            self.pool.health[backend] = Health::Idle;
        }
    }

    /// New limits in place, for the daemon itself (see `change_by`).
    pub fn change(&mut self, id: ThrottleId, spec: &LimitSpec) -> Result<(), ManagerError> {
        self.change_by(id, spec, None)
    }

    /// New limits in place for `by` (checked by the caller). Everything is
    /// validated before anything changes; a backend named for a limited
    /// direction migrates it. A change with more than limit-own makes the
    /// throttle admin-set.
    pub fn change_by(&mut self, id: ThrottleId, spec: &LimitSpec, by: Option<Actor>) -> Result<(), ManagerError> {
        spec.check()?;
        if self.pending.contains_key(&id) {
            return self.change_pending(id, spec);
        }
        let t = self.throttles.get(&id).ok_or(ManagerError::NoSuchThrottle(id))?;
        let mut plan = Vec::new();
        for dir in Direction::BOTH {
            let Some(rate) = spec.rate(dir) else { continue };
            let to = match (t.limits.get(&dir), spec.backend_for(dir)) {
                (Some(l), None) => l.backend,
                (Some(l), Some(name)) if self.pool.name(l.backend) == name => l.backend,
                (_, name) => self.pool.resolve(name, dir)?,
            };
            plan.push((dir, rate, to));
        }
        for (dir, rate, to) in plan {
            match self.throttles[&id].limits.get(&dir).map(|l| (l.backend, l.slot)) {
                Some((b, slot)) if b == to => self.change_rate(id, dir, b, slot, rate)?,
                Some(_) => self.migrate_limit(id, dir, to, Some(rate))?,
                None => self.add_limit(id, dir, rate, to)?,
            }
        }
        if let Some(t) = self.throttles.get_mut(&id) {
            t.made.admin |= Made::by(by).admin;
        }
        // A new direction, a new rate or a new mark can change which
        // throttle wins (see `coverage`).
        self.members(id).into_iter().for_each(|p| self.reassign(p));
        self.emit(Event::ThrottleChanged { id });
        self.save_throttle(id);
        Ok(())
    }

    fn change_rate(
        &mut self,
        id: ThrottleId,
        dir: Direction,
        b: usize,
        slot: SlotId,
        rate: Rate,
    ) -> Result<(), ManagerError> {
        self.pool.backends[b].change(&mut Context { datapath: &mut self.datapath }, slot, dir, rate)?;
        if let Some(l) = self.throttles.get_mut(&id).and_then(|t| t.limits.get_mut(&dir)) {
            l.rate = rate;
        }
        for tgid in self.covered_in(id, dir) {
            self.pool.backends[b].cover(&mut Context { datapath: &mut self.datapath }, slot, dir, tgid, Some(rate));
        }
        Ok(())
    }

    pub fn remove_persisting(&mut self, id: ThrottleId) -> Result<(), ManagerError> {
        let res = match self.pending.remove(&id) {
            Some(_) => {
                self.emit(Event::ThrottleRemoved { id, reason: RemovalReason::Requested });
                tracing::info!(throttle_id = id, "failed throttle removed");
                Ok(())
            }
            None => self.remove(id, RemovalReason::Requested),
        };
        self.save_throttle(id);
        self.retry_pending();
        res
    }

    /// Its processes fall back to the next matching throttle (or none)
    /// before its slots go, so no moment is unthrottled by mistake.
    pub fn remove(&mut self, id: ThrottleId, reason: RemovalReason) -> Result<(), ManagerError> {
        let res = self.unlink(id);
        if !matches!(res, Err(ManagerError::NoSuchThrottle(_))) {
            self.emit(Event::ThrottleRemoved { id, reason });
            tracing::info!(throttle_id = id, ?reason, "throttle removed");
        }
        res
    }

    /// Takes a throttle out of the kernel and the bookkeeping, silently
    /// (`remove` reports it; a throttle that was never added is not).
    fn unlink(&mut self, id: ThrottleId) -> Result<(), ManagerError> {
        if !self.throttles.contains_key(&id) {
            return Err(ManagerError::NoSuchThrottle(id));
        }
        let members = self.members(id);
        for tgid in members {
            if let Some(e) = self.procs.get_mut(&tgid) {
                e.matches.retain(|m| *m != id);
            }
            self.reassign(tgid);
        }
        let limits: Vec<_> = self.throttles[&id].limits.iter().map(|(d, l)| (*d, l.slot, l.backend)).collect();
        let mut first_err = Ok(());
        for (dir, slot, b) in limits {
            first_err = first_err.and(self.release(b, slot, dir));
        }
        self.throttles.remove(&id);
        self.rates.retain(|(t, _), _| *t != id);
        first_err
    }

    fn members(&self, id: ThrottleId) -> Vec<u32> {
        self.throttles.get(&id).map(|t| t.members.iter().copied().collect()).unwrap_or_default()
    }

    /// Processes whose `dir` traffic this throttle limits.
    pub fn covered_in(&self, id: ThrottleId, dir: Direction) -> Vec<u32> {
        let Some(t) = self.throttles.get(&id) else { return Vec::new() };
        t.covered
            .iter()
            .copied()
            .filter(|p| self.procs.get(p).is_some_and(|e| e.assigned.get(dir) == Some(id)))
            .collect()
    }

    fn add_members(&mut self, id: ThrottleId) {
        let target = self.throttles[&id].target.clone();
        match target {
            Target::Pid { ident, tree } => {
                self.add_member(id, ident);
                if tree {
                    self.add_descendants(id);
                }
            }
            _ => {
                for pid in procfs::all_pids() {
                    if procfs::is_kernel_thread(pid).unwrap_or(true) {
                        continue;
                    }
                    if let (Some(f), Ok(ident)) = (ProcFacts::read(pid), procfs::ident(pid)) {
                        if target.matches(&f) {
                            self.add_member(id, ident);
                        }
                    }
                }
            }
        }
    }

    fn add_descendants(&mut self, id: ThrottleId) {
        let Some(root) = self.throttles.get(&id).and_then(|t| t.target.root()) else { return };
        for pid in procfs::tree(root.pid).into_iter().skip(1) {
            if let Ok(ident) = procfs::ident(pid) {
                self.add_member(id, ident);
            }
        }
    }

    fn add_member(&mut self, id: ThrottleId, ident: ProcIdent) {
        if self.is_protected(&ident) {
            if let Some(t) = self.throttles.get_mut(&id) {
                t.excluded.insert(ident.pid);
            }
            return;
        }
        if self.procs.get(&ident.pid).is_some_and(|e| e.ident != ident) {
            self.process_exited(ident.pid); // a reused pid: the exit event was lost
        }
        let e = self.procs.entry(ident.pid).or_insert_with(|| ProcEntry {
            ident,
            matches: Vec::new(),
            assigned: Assignment::default(),
        });
        if !e.matches.contains(&id) {
            e.matches.push(id);
        }
        if let Some(t) = self.throttles.get_mut(&id) {
            t.members.insert(ident.pid);
        }
        self.reassign(ident.pid);
    }

    fn drop_member(&mut self, id: ThrottleId, tgid: u32) {
        if let Some(e) = self.procs.get_mut(&tgid) {
            e.matches.retain(|m| *m != id);
        }
        if let Some(t) = self.throttles.get_mut(&id) {
            t.members.remove(&tgid);
        }
        self.reassign(tgid);
    }

    fn slots(&self, a: Assignment) -> ProcSlots {
        let s = |d| a.get(d).and_then(|id| self.throttles.get(&id)?.limits.get(&d)).map_or(0, |l| l.slot);
        ProcSlots { up: s(Direction::Up), down: s(Direction::Down) }
    }

    /// Recomputes which throttle limits `tgid` per direction, and applies the
    /// difference: the kernel entry first, then per-socket backend work.
    fn reassign(&mut self, tgid: u32) {
        let Some(e) = self.procs.get(&tgid) else { return };
        let cands: Vec<Candidate> = e
            .matches
            .iter()
            .filter_map(|&id| {
                let t = self.throttles.get(&id)?;
                let rate = |d| t.limits.get(&d).map(|l| l.rate.bytes_per_sec());
                let rates = [rate(Direction::Up), rate(Direction::Down)];
                Some(Candidate { id, rank: t.target.rank(tgid), rates, admin: t.made.admin })
            })
            .collect();
        let (old, new) = (e.assigned, coverage::choose(cands));
        let done = e.matches.is_empty();
        if old != new {
            self.apply_assignment(tgid, old, new);
        }
        if done {
            self.procs.remove(&tgid);
        } else if let Some(e) = self.procs.get_mut(&tgid) {
            e.assigned = new;
        }
    }

    fn apply_assignment(&mut self, tgid: u32, old: Assignment, new: Assignment) {
        let res = if new.is_empty() {
            self.datapath.remove_proc(tgid)
        } else {
            if old.is_empty() {
                self.seed_sockets(tgid);
            }
            self.datapath.set_proc(tgid, self.slots(new))
        };
        if let Err(e) = res {
            tracing::warn!(pid = tgid, error = %e, "could not update the process map");
        }
        for dir in Direction::BOTH.into_iter().filter(|d| old.get(*d) != new.get(*d)) {
            self.cover(old.get(dir), dir, tgid, false);
            self.cover(new.get(dir), dir, tgid, true);
        }
        for id in old.0.into_iter().flatten().filter(|id| !new.holds(*id)) {
            if let Some(t) = self.throttles.get_mut(&id) {
                t.covered.remove(&tgid);
            }
        }
        for id in new.0.into_iter().flatten() {
            if let Some(t) = self.throttles.get_mut(&id) {
                t.covered.insert(tgid);
            }
        }
    }

    /// Per-socket backend work for one process joining or leaving a limit.
    fn cover(&mut self, id: Option<ThrottleId>, dir: Direction, tgid: u32, joins: bool) {
        let Some(l) = id.and_then(|id| self.throttles.get(&id)?.limits.get(&dir)) else { return };
        let (slot, b, rate) = (l.slot, l.backend, joins.then_some(l.rate));
        let what = if joins { "process covered" } else { "process released" };
        tracing::debug!(throttle_id = id, pid = tgid, backend = self.pool.name(b), direction = %dir, "{what}");
        self.pool.backends[b].cover(&mut Context { datapath: &mut self.datapath }, slot, dir, tgid, rate);
    }

    /// With the monitor on, every process's older sockets get their owner
    /// too, so their traffic counts from the start.
    pub fn seed_all_sockets(&mut self) {
        for pid in procfs::all_pids() {
            if !procfs::is_kernel_thread(pid).unwrap_or(true) {
                self.seed_sockets(pid);
            }
        }
    }

    /// Sockets opened before our programs were attached get their owner.
    fn seed_sockets(&mut self, tgid: u32) {
        let dp = &mut self.datapath;
        let _ = sockets::for_each_inet_socket(tgid, |s| {
            let _ = dp.seed_owner(&s.fd, tgid);
        });
    }

    /// Moves one direction of a throttle to `to`, make-before-break: the new
    /// backend enforces the limit before the processes switch to it, and the
    /// old one lets go last. If `to` fails, nothing changed.
    pub fn migrate_limit(
        &mut self,
        id: ThrottleId,
        dir: Direction,
        to: usize,
        rate: Option<Rate>,
    ) -> Result<(), ManagerError> {
        let t = self.throttles.get(&id).ok_or(ManagerError::NoSuchThrottle(id))?;
        let l = t
            .limits
            .get(&dir)
            .ok_or_else(|| ManagerError::InvalidArgument(format!("throttle {id} has no {dir} limit to migrate")))?;
        let (old_slot, from, rate) = (l.slot, l.backend, rate.unwrap_or(l.rate));
        if from == to {
            return self.change_rate(id, dir, from, old_slot, rate);
        }
        self.pool.usable(to, dir)?;
        let slot = self.apply_on(to, dir, rate)?;
        if let Err(e) = self.pool.backends[to].prime(&mut Context { datapath: &mut self.datapath }, slot, dir) {
            tracing::debug!(error = %e, "could not prime the new bucket");
        }
        let covered = self.covered_in(id, dir);
        if let Some(l) = self.throttles.get_mut(&id).and_then(|t| t.limits.get_mut(&dir)) {
            *l = Limit { slot, rate, backend: to };
        }
        for &tgid in &covered {
            self.pool.backends[to].cover(&mut Context { datapath: &mut self.datapath }, slot, dir, tgid, Some(rate));
            let slots = self.procs.get(&tgid).map(|e| self.slots(e.assigned)).unwrap_or_default();
            if let Err(e) = self.datapath.set_proc(tgid, slots) {
                tracing::warn!(pid = tgid, error = %e, "could not move a process to the new slot");
            }
        }
        for &tgid in &covered {
            self.pool.backends[from].cover(&mut Context { datapath: &mut self.datapath }, old_slot, dir, tgid, None);
        }
        if let Err(e) = self.release(from, old_slot, dir) {
            tracing::warn!(throttle_id = id, backend = self.pool.name(from), error = %e, "old backend did not let go");
        }
        let (from, to) = (self.pool.name(from), self.pool.name(to));
        tracing::info!(throttle_id = id, direction = %dir, from, to, "throttle migrated");
        self.emit(Event::ThrottleMigrated { id, direction: dir, from, to });
        Ok(())
    }

    /// Everything is checked first; only a move that happened is saved.
    pub fn migrate(&mut self, id: ThrottleId, dir: Option<Direction>, to: &str) -> Result<(), ManagerError> {
        let to = self.pool.index(to)?;
        if self.pending.contains_key(&id) {
            return Err(ManagerError::InvalidArgument(format!("throttle {id} is not applied now: nothing to migrate")));
        }
        let t = self.throttles.get(&id).ok_or(ManagerError::NoSuchThrottle(id))?;
        let dirs: Vec<Direction> = match dir {
            Some(d) if !t.limits.contains_key(&d) => {
                return Err(ManagerError::InvalidArgument(format!("throttle {id} has no {d} limit to migrate")))
            }
            Some(d) => vec![d],
            None => t.limits.keys().copied().collect(),
        };
        let dirs: Vec<Direction> = dirs.into_iter().filter(|d| t.limits[d].backend != to).collect();
        for d in &dirs {
            self.pool.usable(to, *d)?;
        }
        let mut moved = 0;
        let mut res = Ok(());
        for d in dirs {
            match self.migrate_limit(id, d, to, None) {
                Ok(()) => moved += 1,
                Err(e) => {
                    res = Err(e);
                    break;
                }
            }
        }
        if moved > 0 {
            self.save_throttle(id); // a direction may have moved before a failure
        }
        res
    }

    pub fn migrate_backend(&mut self, from: &str, to: &str) -> Result<usize, ManagerError> {
        let (from, to) = (self.pool.index(from)?, self.pool.index(to)?);
        if from == to {
            return Err(ManagerError::InvalidArgument(format!(
                "{} to {}: a backend cannot migrate to itself",
                self.pool.name(from),
                self.pool.name(to)
            )));
        }
        let moves = self.limits_on(from);
        for (_, dir) in &moves {
            self.pool.usable(to, *dir)?;
        }
        for (id, dir) in &moves {
            self.migrate_limit(*id, *dir, to, None)?;
        }
        self.persist();
        Ok(moves.len())
    }

    /// Every (throttle, direction) held by `backend`.
    pub fn limits_on(&self, backend: usize) -> Vec<(ThrottleId, Direction)> {
        let on = |(id, t): (&ThrottleId, &Throttle)| {
            t.limits.iter().filter(|(_, l)| l.backend == backend).map(|(d, _)| (*id, *d)).collect::<Vec<_>>()
        };
        self.throttles.iter().flat_map(on).collect()
    }

    /// Reads every limit's byte counter into its rolling window.
    pub fn top(&self, count: usize, sort: SortBy, scope: Scope, owner: Option<u32>) -> Vec<TopEntry> {
        self.monitor.top(count, sort, scope, owner).into_iter().map(|t| self.top_entry(t)).collect()
    }

    fn top_entry(&self, traffic: ProcessTraffic) -> TopEntry {
        let assigned = self.procs.get(&traffic.pid).map(|e| e.assigned).unwrap_or_default();
        let mut e = TopEntry { traffic, ..Default::default() };
        for dir in Direction::BOTH {
            let Some(id) = assigned.get(dir) else { continue };
            let Some(l) = self.throttles.get(&id).and_then(|t| t.limits.get(&dir)) else { continue };
            if !e.throttles.contains(&id) {
                e.throttles.push(id);
            }
            let name = self.pool.name(l.backend);
            if !e.backends.contains(&name) {
                e.backends.push(name);
            }
            match dir {
                Direction::Up => e.up_limit = l.rate.bytes_per_sec(),
                Direction::Down => e.down_limit = l.rate.bytes_per_sec(),
            }
        }
        e
    }

    /// (up, down) per second, oldest first; a direction without a limit is 0.
    pub fn throttle_history(&self, id: ThrottleId) -> Result<Vec<(u64, u64)>, ManagerError> {
        if !self.throttles.contains_key(&id) {
            return Err(ManagerError::NoSuchThrottle(id));
        }
        let rates = |dir| -> Vec<u64> {
            self.rates.get(&(id, dir)).map(|s| s.history.iter().map(|x| x.rate).collect()).unwrap_or_default()
        };
        let (up, down) = (rates(Direction::Up), rates(Direction::Down));
        let n = up.len().max(down.len());
        // Newest seconds line up: pad the shorter series at the front.
        let at = |v: &[u64], i: usize| (i + v.len()).checked_sub(n).map_or(0, |j| v[j]);
        Ok((0..n).map(|i| (at(&up, i), at(&down, i))).collect())
    }

    /// Every throttle's counters, and every process's.
    pub fn sample_rates(&mut self) {
        self.sample_throttles(None, usize::MAX);
        self.sample_monitor();
    }

    /// The counters of up to `n` throttles with ids above `after`; returns
    /// the last id sampled, or `None` when there were none left. In chunks,
    /// calls wait behind the once-a-second sampling for a moment only.
    pub fn sample_throttles(&mut self, after: Option<ThrottleId>, n: usize) -> Option<ThrottleId> {
        let now = std::time::Instant::now();
        let span = (self.config.monitor.window, self.config.monitor.history);
        let ctx = Context { datapath: &mut self.datapath };
        let from = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        let mut last = None;
        for (&id, t) in self.throttles.range((from, std::ops::Bound::Unbounded)).take(n) {
            for (&dir, l) in &t.limits {
                if let Ok(c) = self.pool.backends[l.backend].stats(&ctx, l.slot, dir) {
                    let series = self.rates.entry((id, dir)).or_default();
                    series.push(now, c.pass_bytes, c.drop_pkts, l.rate.bytes_per_sec(), span);
                    series.counters = c;
                }
            }
            last = Some(id);
        }
        last
    }

    /// Every process's traffic, from the monitor's kernel map.
    pub fn sample_monitor(&mut self) {
        let now = std::time::Instant::now();
        if self.datapath.monitoring() {
            let readings = self.datapath.proc_traffic();
            for pid in self.monitor.sample(now, &readings) {
                self.datapath.forget_traffic(pid);
            }
        }
    }

    pub fn info(&mut self, id: ThrottleId) -> Result<ThrottleInfo, ManagerError> {
        self.info_with(id, true)
    }

    /// `live`: read the backends' counters now (netlink for HTB classes);
    /// otherwise they are the last sample's (once a second) and nothing
    /// touches the kernel.
    pub fn info_with(&mut self, id: ThrottleId, live: bool) -> Result<ThrottleInfo, ManagerError> {
        if let Some(p) = self.pending.get(&id) {
            return Ok(self.pending_info(id, p));
        }
        let t = self.throttles.get(&id).ok_or(ManagerError::NoSuchThrottle(id))?;
        let ctx = Context { datapath: &mut self.datapath };
        let mut directions = BTreeMap::new();
        for (&dir, l) in &t.limits {
            let b = &self.pool.backends[l.backend];
            let series = self.rates.get(&(id, dir));
            let counters =
                if live { b.stats(&ctx, l.slot, dir)? } else { series.map(|s| s.counters).unwrap_or_default() };
            let current = series.map_or(0, |s| s.rate());
            let accuracy = series.and_then(|s| s.accuracy(l.rate.bytes_per_sec()));
            directions.insert(dir, DirectionStats { backend: b.name(), rate: l.rate, counters, current, accuracy });
        }
        let covered = t.covered.iter().copied().collect();
        let excluded = t.excluded.iter().copied().collect();
        let (target, origin) = (t.target.clone(), t.origin.clone());
        Ok(ThrottleInfo { id, target, origin, covered, excluded, failed: None, directions })
    }

    /// A failed throttle as saved: its limits, on no backend.
    fn pending_info(&self, id: ThrottleId, p: &Pending) -> ThrottleInfo {
        let r = &p.record;
        let mut directions = BTreeMap::new();
        for (dir, rate) in [(Direction::Down, r.down), (Direction::Up, r.up)] {
            let Some(rate) = rate else { continue };
            let stats = DirectionStats { backend: "", rate, counters: Default::default(), current: 0, accuracy: None };
            directions.insert(dir, stats);
        }
        ThrottleInfo {
            id,
            target: r.target.clone(),
            origin: Origin::Runtime,
            covered: Vec::new(),
            excluded: Vec::new(),
            failed: Some(p.why.clone()),
            directions,
        }
    }

    pub fn list(&mut self) -> Vec<ThrottleInfo> {
        let ids: Vec<ThrottleId> = self.throttles.keys().chain(self.pending.keys()).copied().collect();
        ids.into_iter().filter_map(|id| self.info(id).ok()).collect()
    }

    pub fn status(&self) -> String {
        let mut used: Vec<&str> =
            self.throttles.values().flat_map(|t| t.limits.values()).map(|l| self.pool.name(l.backend)).collect();
        used.sort();
        used.dedup();
        let applied = match self.throttles.len() {
            0 => "no throttles".into(),
            n => format!("{n} throttle{} on {}", if n == 1 { "" } else { "s" }, used.join(", ")),
        };
        match self.pending.len() {
            0 => applied,
            n => format!("{applied}; {n} saved throttle{} not applied (failed)", if n == 1 { "" } else { "s" }),
        }
    }

    /// Removes every throttle (keeping the persisted state) and stops every
    /// backend, restoring what they replaced.
    pub fn teardown(&mut self) -> Result<(), ManagerError> {
        let ids: Vec<_> = self.throttles.keys().copied().collect();
        let mut first = Ok(());
        for id in ids {
            if let Err(e) = self.remove(id, RemovalReason::Requested) {
                tracing::warn!(throttle_id = id, error = %e, "cleanup failed");
                first = first.and(Err(e));
            }
        }
        (0..self.pool.backends.len()).for_each(|i| self.release_if_idle(i));
        first
    }

    pub fn on_event(&mut self, ev: ProcEvent) {
        match ev {
            ProcEvent::Fork { parent_tgid, child_tgid } => self.process_forked(parent_tgid, child_tgid),
            ProcEvent::Exec { tgid } | ProcEvent::Comm { tgid } => self.process_renamed(tgid),
            ProcEvent::Exit { tgid } => self.process_exited(tgid),
            ProcEvent::Overrun => self.rescan(),
        }
    }

    pub fn has_pattern_targets(&self) -> bool {
        self.throttles.values().any(|t| !t.target.is_pid())
    }

    fn process_forked(&mut self, parent: u32, child: u32) {
        let trees: Vec<ThrottleId> = match self.procs.get(&parent) {
            Some(e) => e.matches.iter().copied().filter(|id| self.throttles[id].target.is_tree()).collect(),
            None => Vec::new(),
        };
        if trees.is_empty() && !self.has_pattern_targets() {
            return;
        }
        let Ok(ident) = procfs::ident(child) else { return };
        trees.into_iter().for_each(|id| self.add_member(id, ident));
        self.match_patterns(ident);
    }

    /// A new name, executable or cgroup can start or end pattern matches.
    fn process_renamed(&mut self, tgid: u32) {
        if !self.has_pattern_targets() {
            return;
        }
        if let Ok(ident) = procfs::ident(tgid) {
            self.match_patterns(ident);
        }
    }

    /// Re-evaluates every name/exe/cgroup/unit target against one process.
    fn match_patterns(&mut self, ident: ProcIdent) {
        let Some(facts) = ProcFacts::read(ident.pid) else { return };
        let verdicts: Vec<(ThrottleId, bool, bool)> = self
            .throttles
            .iter()
            .filter(|(_, t)| !t.target.is_pid())
            .map(|(id, t)| (*id, t.target.matches(&facts), t.members.contains(&ident.pid)))
            .collect();
        for (id, matches, member) in verdicts {
            match (matches, member) {
                (true, false) => self.add_member(id, ident),
                (false, true) => self.drop_member(id, ident.pid),
                (false, false) => {
                    if let Some(t) = self.throttles.get_mut(&id) {
                        t.excluded.remove(&ident.pid);
                    }
                }
                _ => {}
            }
        }
    }

    pub fn process_exited(&mut self, tgid: u32) {
        self.monitor.exited(tgid);
        self.datapath.forget_traffic(tgid);
        if self.protected.values().any(|i| i.pid == tgid) {
            self.throttles.values_mut().for_each(|t| {
                t.excluded.remove(&tgid);
            });
        }
        let Some(e) = self.procs.remove(&tgid) else { return };
        if let Err(err) = self.datapath.remove_proc(tgid) {
            tracing::warn!(pid = tgid, error = %err, "could not remove a process entry");
        }
        for id in e.matches {
            let Some(t) = self.throttles.get_mut(&id) else { continue };
            t.members.remove(&tgid);
            t.covered.remove(&tgid);
            // At the exit event the process may still be a zombie with its
            // identity intact: membership, not /proc, says it is gone.
            if t.target.is_pid() && t.members.is_empty() {
                let _ = self.remove(id, RemovalReason::ProcessExited);
                self.save_throttle(id);
                self.retry_pending();
            }
        }
    }

    /// After lost events, and periodically for cgroup moves (which have no
    /// event): drop dead processes, then match every live one again.
    pub fn rescan(&mut self) {
        let dead: Vec<u32> = self.procs.iter().filter(|(_, e)| !procfs::is_alive(&e.ident)).map(|(p, _)| *p).collect();
        dead.into_iter().for_each(|p| self.process_exited(p));
        let trees: Vec<ThrottleId> =
            self.throttles.iter().filter(|(_, t)| t.target.is_tree()).map(|(id, _)| *id).collect();
        trees.into_iter().for_each(|id| self.add_descendants(id));
        if self.has_pattern_targets() {
            for pid in procfs::all_pids() {
                if procfs::is_kernel_thread(pid).unwrap_or(true) {
                    continue;
                }
                if let Ok(ident) = procfs::ident(pid) {
                    self.match_patterns(ident);
                }
            }
        }
    }
}

/// Pid targets are the same throttle with or without `tree`.
fn same_target(a: &Target, b: &Target) -> bool {
    match (a, b) {
        (Target::Pid { ident: x, .. }, Target::Pid { ident: y, .. }) => x == y,
        _ => a == b,
    }
}

pub fn follow_processes(monitor: ProcMonitor, core: &Mutex<Core>, stop: &AtomicBool) {
    let mut buf = vec![0u8; 64 << 10];
    while !stop.load(Ordering::Relaxed) {
        match monitor.recv(&mut buf) {
            Ok(Some(events)) => {
                let mut core = core.lock().unwrap_or_else(|p| p.into_inner());
                events.into_iter().for_each(|ev| core.on_event(ev));
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "proc connector failed; process tracking stopped");
                return;
            }
        }
    }
}
