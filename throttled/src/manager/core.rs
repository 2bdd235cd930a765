//! The throttle table and its changes: throttles and their limits on the
//! backends' slots, created, changed and removed all or nothing. Which
//! process a throttle covers is `assign`, moving between backends
//! `migrate`, following processes `lifecycle`, counters and reports
//! `report`, saving `saving`, start and reload `start` and `reload`.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::PathBuf,
};

use throttle_common::{rate::Rate, Direction};

use super::{
    assign::ProcEntry,
    events::{Event, Events, RemovalReason},
    policy::{self, Actor, Made, Request},
    pool::Pool,
    saving::Saving,
    traffic::Accounting,
    LimitSpec, ManagerError, Protected, ThrottleId,
};
use crate::{
    backend::{Context, Health, SlotId},
    config::{Config, Defaults},
    kernel::{bpf::Programs, procfs},
    persist::{InstanceLock, PersistedThrottle, StateStore},
    target::Target,
};

/// Where a throttle came from: the API, or a file in `rules.d`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Runtime,
    Rule(PathBuf),
    /// Made for a client that holds it (`hold`): it ends when that client's
    /// bus connection does, and is never saved. The string names the
    /// holder (its unique bus name).
    Held(String),
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

pub struct Core {
    pub programs: Programs,
    pub pool: Pool,
    pub config: Config,
    pub config_path: Option<PathBuf>,
    pub throttles: BTreeMap<ThrottleId, Throttle>,
    /// Saved throttles not applied now (see `Pending`).
    pub pending: BTreeMap<ThrottleId, Pending>,
    /// Processes no throttle may limit, by role.
    pub protected: BTreeMap<Protected, procfs::ProcIdent>,
    /// Every process some throttle's target matches (see `assign`).
    pub(super) procs: HashMap<u32, ProcEntry>,
    pub free_slots: Vec<SlotId>,
    pub next_id: ThrottleId,
    /// Listeners and the recent events (see `events`).
    pub events: Events,
    /// Saves runtime throttles, and knows whether it can (see `saving`).
    pub saving: Saving,
    /// Defaults chosen at runtime; they override the config's per direction.
    pub runtime_defaults: Defaults,
    pub overrides: super::Overrides,
    /// Rolling rate and history per throttle and direction.
    pub rates: HashMap<(ThrottleId, Direction), super::rates::LimitSeries>,
    /// Every process's traffic (empty when the kernel does not count it).
    pub accounting: Accounting,
    pub _lock: InstanceLock,
}

impl Core {
    pub fn new(programs: Programs, config: Config, store: StateStore, lock: InstanceLock) -> std::io::Result<Self> {
        Ok(Core {
            programs,
            pool: Pool::new(&config),
            accounting: Accounting::new(&config.monitor),
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
            events: Events::default(),
            saving: Saving::new(store)?,
            runtime_defaults: Defaults::default(),
            overrides: Default::default(),
            rates: HashMap::new(),
            _lock: lock,
        })
    }

    /// Every event goes out here, with the throttle it is about (added,
    /// changed or migrated) as it is now.
    pub fn emit(&mut self, ev: Event) {
        let info = match ev {
            Event::ThrottleAdded { id } | Event::ThrottleChanged { id } | Event::ThrottleMigrated { id, .. }
                if self.events.wants_info() =>
            {
                self.info_with(id, false).ok()
            }
            _ => None,
        };
        self.events.send(ev, info);
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

    /// A new throttle on `target` that lasts while `holder` does. A target
    /// that already has a throttle is refused: a hold never takes over a
    /// saved or rule-made throttle.
    pub fn limit_held(
        &mut self,
        target: Target,
        spec: &LimitSpec,
        holder: &str,
        by: Actor,
    ) -> Result<ThrottleId, ManagerError> {
        if let Some(id) = self.find(&target) {
            let msg = format!("{target} already has throttle {id}; a hold makes a new throttle only");
            return Err(ManagerError::InvalidArgument(msg));
        }
        self.limit_by(target, spec, Origin::Held(holder.to_string()), Some(by))
    }

    /// Ends every throttle `holder` holds (`None`: every held throttle, as
    /// after a reconnection to the bus, when every old holder is gone).
    pub fn release_held(&mut self, holder: Option<&str>) -> Vec<ThrottleId> {
        let held: Vec<ThrottleId> = self
            .throttles
            .iter()
            .filter(|(_, t)| matches!(&t.origin, Origin::Held(h) if holder.is_none_or(|want| want == h)))
            .map(|(id, _)| *id)
            .collect();
        for id in &held {
            if let Err(e) = self.remove(*id, RemovalReason::Released) {
                tracing::warn!(throttle_id = id, error = %e, "could not end a held throttle");
            }
        }
        held
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
        tracing::info!(throttle_id = id, target = %t.target, down = %rate_text(spec.down), up = %rate_text(spec.up), block = spec.block, processes = t.members.len(), "throttle added");
        if !t.excluded.is_empty() {
            tracing::info!(throttle_id = id, excluded = ?t.excluded, "protected processes match but are never limited (see its Excluded property)");
        }
        self.emit(Event::ThrottleAdded { id });
        Ok(())
    }

    /// Puts `rate` on `backend` in a fresh slot (starting the backend if it
    /// is idle). On failure nothing is left behind.
    pub(super) fn apply_on(&mut self, backend: usize, dir: Direction, rate: Rate) -> Result<SlotId, ManagerError> {
        let slot = self.free_slots.pop().ok_or(ManagerError::SlotsExhausted)?;
        let b = &mut self.pool.backends[backend];
        let ctx = &mut Context { programs: &mut self.programs };
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

    pub(super) fn add_limit(
        &mut self,
        id: ThrottleId,
        dir: Direction,
        rate: Rate,
        backend: usize,
    ) -> Result<(), ManagerError> {
        let slot = self.apply_on(backend, dir, rate)?;
        if let Some(t) = self.throttles.get_mut(&id) {
            t.limits.insert(dir, Limit { slot, rate, backend });
        }
        tracing::info!(throttle_id = id, direction = %dir, backend = self.pool.name(backend), %rate, "limit applied");
        Ok(())
    }

    /// Lets go of a slot on its backend; the backend stops when idle.
    pub(super) fn release(&mut self, backend: usize, slot: SlotId, dir: Direction) -> Result<(), ManagerError> {
        let ctx = &mut Context { programs: &mut self.programs };
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
            if let Err(e) = b.cleanup(&mut Context { programs: &mut self.programs }) {
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
        // Limits never loosen a block in place: lifting it is its own act.
        if !spec.block && t.limits.values().any(|l| !self.pool.backends[l.backend].automatic()) {
            let msg = format!("throttle {id} blocks its processes: unblock (or unlimit) it first");
            return Err(ManagerError::InvalidArgument(msg));
        }
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

    pub(super) fn change_rate(
        &mut self,
        id: ThrottleId,
        dir: Direction,
        b: usize,
        slot: SlotId,
        rate: Rate,
    ) -> Result<(), ManagerError> {
        self.pool.backends[b].change(&mut Context { programs: &mut self.programs }, slot, dir, rate)?;
        if let Some(l) = self.throttles.get_mut(&id).and_then(|t| t.limits.get_mut(&dir)) {
            l.rate = rate;
        }
        for tgid in self.covered_in(id, dir) {
            self.pool.backends[b].cover(&mut Context { programs: &mut self.programs }, slot, dir, tgid, Some(rate));
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
            tracing::info!(throttle_id = id, %reason, "throttle removed");
        }
        res
    }

    /// Takes a throttle out of the kernel and the bookkeeping, silently
    /// (`remove` reports it; a throttle that was never added is not).
    pub(super) fn unlink(&mut self, id: ThrottleId) -> Result<(), ManagerError> {
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

    /// Removes every throttle (keeping the saved state) and stops every
    /// backend, restoring what they replaced.
    pub fn shutdown(&mut self) -> Result<(), ManagerError> {
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
}

/// Pid targets are the same throttle with or without `tree`.
pub(super) fn same_target(a: &Target, b: &Target) -> bool {
    match (a, b) {
        (Target::Pid { ident: x, .. }, Target::Pid { ident: y, .. }) => x == y,
        _ => a == b,
    }
}

/// A limit as users write it ("1M"), or "none", for the logs.
fn rate_text(r: Option<Rate>) -> String {
    r.map_or_else(|| "none".into(), |r| r.to_string())
}
