//! `Core`: the parts of the manager composed, behind `Manager`'s lock.
//! Each part owns its state and its rules: `ThrottleTable` (table.rs) the
//! throttles, `Processes` (assign.rs) the processes they cover,
//! `Datapath` (datapath.rs) the programs, backends and slots, `Sampling`
//! the rates, `Events` and `Saving`. `impl Core` holds only what needs
//! several parts at once: here a throttle's changes (each touches the
//! table, the data path, the processes, an event and a save); processes
//! joining and leaving in `lifecycle`; start, reload, migration and health
//! in `upkeep`.
use std::path::PathBuf;

use throttle_common::{rate::Rate, Direction};

use super::{
    assign::Processes,
    datapath::Datapath,
    events::{Event, Events, RemovalReason},
    policy::{self, Actor, Made, Request},
    pool::Pool,
    report::{BackendInfo, ThrottleInfo, View},
    sampling::Sampling,
    saving::{Saving, STATE_COMPONENT},
    share::Sharing,
    table::{Limit, Origin, Throttle, ThrottleTable},
    LimitSpec, ManagerError, Overrides, ThrottleId,
};
use crate::{
    backend::{Health, SlotId},
    config::{Config, Defaults, LinkCapacity},
    kernel::{bpf::Programs, procfs},
    limit::{BLOCK_BACKEND, EBPF_BACKEND},
    persist::{Change, InstanceLock, StateStore},
    target::Target,
};

pub struct Core {
    pub config: Config,
    pub config_path: Option<PathBuf>,
    pub overrides: Overrides,
    /// Defaults chosen at runtime; they override the config's per direction.
    pub runtime_defaults: Defaults,
    pub table: ThrottleTable,
    pub procs: Processes,
    pub datapath: Datapath,
    pub sampling: Sampling,
    /// Listeners and the recent events (see `events`).
    pub events: Events,
    /// Saves runtime throttles, and knows whether it can (see `saving`).
    pub saving: Saving,
    /// The link capacity set at runtime (it overrides the config's).
    pub runtime_link: Option<LinkCapacity>,
    /// Priorities' state under the link capacity (see `share`).
    pub sharing: Sharing,
    /// Saved quota usages, by throttle (see `restore_quotas`).
    pub quota_book: std::collections::HashMap<ThrottleId, (String, super::plan::Usage)>,
    _lock: InstanceLock,
}

impl Core {
    pub fn new(programs: Programs, config: Config, store: StateStore, lock: InstanceLock) -> std::io::Result<Self> {
        Ok(Core {
            datapath: Datapath::new(programs, Pool::new(&config)),
            sampling: Sampling::new(&config.monitor),
            config,
            config_path: None,
            overrides: Overrides::default(),
            runtime_defaults: Defaults::default(),
            table: ThrottleTable::new(),
            procs: Processes::new(),
            events: Events::default(),
            saving: Saving::new(store)?,
            quota_book: Default::default(),
            runtime_link: None,
            sharing: Sharing::default(),
            _lock: lock,
        })
    }

    /// The bookkeeping, for reports that never touch the kernel.
    pub fn view(&self) -> View<'_> {
        View { table: &self.table, procs: &self.procs, datapath: &self.datapath, sampling: &self.sampling }
    }

    /// A throttle with its counters read now (netlink for HTB classes).
    pub fn info(&mut self, id: ThrottleId) -> Result<ThrottleInfo, ManagerError> {
        let live = match self.table.throttles.get(&id) {
            Some(t) if !self.table.pending.contains_key(&id) => Some(self.datapath.counters(t)?),
            _ => None,
        };
        self.view().info(id, live.as_ref())
    }

    pub fn list(&mut self) -> Vec<ThrottleInfo> {
        self.table.ids().into_iter().filter_map(|id| self.info(id).ok()).collect()
    }

    /// Every backend, its health checked now (the kernel is asked).
    pub fn backend_infos(&mut self) -> Vec<BackendInfo> {
        let listed: Vec<usize> = self.datapath.pool.listed().collect();
        let health: Vec<(usize, Health)> = listed.into_iter().map(|i| (i, self.datapath.health_now(i))).collect();
        health.into_iter().map(|(i, h)| self.view().backend_info(i, h)).collect()
    }

    /// Samples the counters of up to `n` throttles after `after` (see
    /// `Sampling::sample_throttles`).
    pub fn sample_throttles(&mut self, after: Option<ThrottleId>, n: usize) -> Option<ThrottleId> {
        let span = (self.config.monitor.window, self.config.monitor.history);
        self.sampling.sample_throttles(&self.table, &mut self.datapath, after, n, span)
    }

    /// Every throttle's counters, and every process's.
    pub fn sample_rates(&mut self) {
        self.sample_throttles(None, usize::MAX);
        self.sampling.sample_monitor(&mut self.datapath.programs);
    }

    /// Every event goes out here, with the throttle it is about (added,
    /// changed or migrated) as it is now.
    pub fn emit(&mut self, ev: Event) {
        let info = match ev {
            Event::ThrottleAdded { id } | Event::ThrottleChanged { id } | Event::ThrottleMigrated { id, .. }
                if self.events.wants_info() =>
            {
                self.view().info(id, None).ok()
            }
            _ => None,
        };
        self.events.send(ev, info);
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
        if let Some(id) = self.table.find(&target) {
            let msg = format!("{target} already has throttle {id}; a hold makes a new throttle only");
            return Err(ManagerError::InvalidArgument(msg));
        }
        self.limit_by(target, spec, Origin::Held(holder.to_string()), Some(by))
    }

    /// Ends every throttle `holder` holds (`None`: every held throttle, as
    /// after a reconnection to the bus, when every old holder is gone).
    pub fn release_held(&mut self, holder: Option<&str>) -> Vec<ThrottleId> {
        let held = self.table.held(holder);
        for id in &held {
            if let Err(e) = self.remove(*id, RemovalReason::Released) {
                tracing::warn!(throttle_id = id, error = %e, "could not end a held throttle");
            }
        }
        held
    }

    /// Checks `req` by `actor` under the lock, just before it runs.
    pub fn permit(&self, actor: Actor, req: &Request) -> Result<(), ManagerError> {
        self.table.permit(&self.datapath.pool, actor, req)
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
        if let Some(id) = self.table.find(&target) {
            self.set_tree(id, &target);
            self.change_by(id, spec, by)?;
            return Ok(id);
        }
        if let Some(a) = by {
            policy::quota(a.uid, self.table.made_by(a.uid), self.config.limits.per_user)?;
        }
        let id = self.table.free_id()?;
        self.create(id, target, spec, origin, Made::by(by))?;
        self.table.next_id = id + 1;
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
        let spec = &cap_spec(&target, spec)?;
        let mut chosen = Vec::new();
        for dir in Direction::BOTH.into_iter().filter(|_| !spec.is_planned()) {
            if let Some(rate) = spec.rate(dir) {
                chosen.push((dir, rate, self.datapath.pool.resolve(spec.backend_for(dir), dir)?));
            } else if spec.priority.is_some() {
                // A priority alone: an ebpf bucket at the largest rate, for `share` to set.
                chosen.push((dir, Rate::MAX, self.datapath.pool.resolve(Some(EBPF_BACKEND), dir)?));
            }
        }
        let root = target.root();
        if let Some(role) = root.and_then(|r| self.procs.protected_role(r.pid)) {
            let pid = root.map_or(0, |r| r.pid);
            return Err(ManagerError::InvalidArgument(format!(
                "pid {pid} is {}: it is never limited",
                role.describe()
            )));
        }
        if root.is_some_and(|r| !procfs::is_alive(&r)) {
            return Err(ManagerError::NoSuchProcess(root.map_or(0, |r| r.pid)));
        }
        let t = Throttle { priority: spec.priority.unwrap_or_default(), ..Throttle::new(target, origin, made) };
        if spec.is_planned() {
            if let Err(e) = self.create_planned(id, t, spec) {
                let _ = self.unlink(id);
                return Err(e);
            }
        } else {
            self.table.throttles.insert(id, t);
        }
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
        let t = &self.table.throttles[&id];
        tracing::info!(throttle_id = id, target = %t.target, down = %rate_text(spec.down), up = %rate_text(spec.up), block = spec.block, processes = t.members.len(), "throttle added");
        if !t.excluded.is_empty() {
            tracing::info!(throttle_id = id, excluded = ?t.excluded, "protected processes match but are never limited (see its Excluded property)");
        }
        self.emit(Event::ThrottleAdded { id });
        Ok(())
    }

    pub(super) fn add_limit(
        &mut self,
        id: ThrottleId,
        dir: Direction,
        rate: Rate,
        backend: usize,
    ) -> Result<(), ManagerError> {
        let cap = self.table.throttles.get(&id).is_some_and(|t| t.target.is_cap());
        let slot = self.datapath.apply(backend, dir, rate, cap)?;
        if let Some(t) = self.table.throttles.get_mut(&id) {
            t.limits.insert(dir, Limit { slot, rate, backend });
        }
        self.publish_all_cap();
        let name = self.datapath.pool.name(backend);
        tracing::info!(throttle_id = id, direction = %dir, backend = name, %rate, "limit applied");
        Ok(())
    }

    /// Points the kernel at the `all` cap's slots as the table has them: the
    /// new slot before the old one goes (make-before-break), none before
    /// the last one goes.
    pub(super) fn publish_all_cap(&mut self) {
        if let Err(e) = self.datapath.programs.set_all_caps(self.table.all_cap_slots()) {
            tracing::warn!(error = %e, "could not set the all cap in the kernel");
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
        if self.table.pending.contains_key(&id) {
            return self.change_pending(id, spec);
        }
        let t = self.table.throttles.get(&id).ok_or(ManagerError::NoSuchThrottle(id))?;
        let spec = &cap_spec(&t.target, spec)?;
        let pool = &self.datapath.pool;
        let blocks = match &t.plan {
            Some(p) => p.spec.block,
            None => t.limits.values().any(|l| pool.name(l.backend) == BLOCK_BACKEND),
        };
        // Limits never loosen a block in place: lifting it is its own act.
        if !spec.block && blocks {
            let msg = format!("throttle {id} blocks its processes: unblock (or unlimit) it first");
            return Err(ManagerError::InvalidArgument(msg));
        }
        if t.plan.is_some() || spec.is_planned() {
            let merged = self.merged(id, spec);
            merged.check()?;
            return self.change_planned(id, &merged, by);
        }
        let mut plan = Vec::new();
        for dir in Direction::BOTH {
            let Some(rate) = spec.rate(dir) else { continue };
            let to = match (t.limits.get(&dir), spec.backend_for(dir)) {
                (Some(l), None) => l.backend,
                (Some(l), Some(name)) if pool.name(l.backend) == name => l.backend,
                (_, name) => pool.resolve(name, dir)?,
            };
            plan.push((dir, rate, to));
        }
        for (dir, rate, to) in plan {
            match self.table.limit(id, dir).map(|l| (l.backend, l.slot)) {
                Some((b, slot)) if b == to => self.change_rate(id, dir, b, slot, rate)?,
                Some(_) => self.migrate_limit(id, dir, to, Some(rate))?,
                None => self.add_limit(id, dir, rate, to)?,
            }
        }
        if let Some(t) = self.table.throttles.get_mut(&id) {
            t.made.admin |= Made::by(by).admin;
            t.priority = spec.priority.unwrap_or(t.priority);
        }
        // A new direction, a new rate or a new mark can change which
        // throttle wins (see `coverage`).
        for p in self.table.members(id) {
            self.procs.reassign(p, &mut self.table, &mut self.datapath);
        }
        self.emit(Event::ThrottleChanged { id });
        self.save_throttle(id);
        Ok(())
    }

    /// A new rate on the same backend and slot.
    pub(super) fn change_rate(
        &mut self,
        id: ThrottleId,
        dir: Direction,
        b: usize,
        slot: SlotId,
        rate: Rate,
    ) -> Result<(), ManagerError> {
        self.datapath.change(b, slot, dir, rate)?;
        if let Some(l) = self.table.throttles.get_mut(&id).and_then(|t| t.limits.get_mut(&dir)) {
            l.rate = rate;
        }
        for tgid in self.procs.tuned_in(&self.table, id, dir) {
            self.datapath.cover(b, slot, dir, tgid, Some(rate));
        }
        Ok(())
    }

    pub fn remove_persisting(&mut self, id: ThrottleId) -> Result<(), ManagerError> {
        let res = match self.table.pending.remove(&id) {
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
    fn unlink(&mut self, id: ThrottleId) -> Result<(), ManagerError> {
        if !self.table.throttles.contains_key(&id) {
            return Err(ManagerError::NoSuchThrottle(id));
        }
        for tgid in self.table.members(id) {
            self.procs.leave(id, tgid, &mut self.table, &mut self.datapath);
        }
        let limits: Vec<_> = self.table.throttles[&id].limits.iter().map(|(d, l)| (*d, l.slot, l.backend)).collect();
        if self.table.throttles[&id].target == Target::All {
            if let Err(e) = self.datapath.programs.set_all_caps([0, 0]) {
                tracing::warn!(error = %e, "could not take the all cap out of the kernel");
            }
        }
        let mut first_err = Ok(());
        for (dir, slot, b) in limits {
            first_err = first_err.and(self.datapath.release(b, slot, dir));
        }
        self.table.throttles.remove(&id);
        self.sampling.forget(id);
        first_err
    }

    /// Removes every throttle (keeping the saved state) and stops every
    /// backend, restoring what they replaced.
    pub fn shutdown(&mut self) -> Result<(), ManagerError> {
        let ids: Vec<_> = self.table.throttles.keys().copied().collect();
        let mut first = Ok(());
        for id in ids {
            if let Err(e) = self.remove(id, RemovalReason::Requested) {
                tracing::warn!(throttle_id = id, error = %e, "cleanup failed");
                first = first.and(Err(e));
            }
        }
        self.datapath.release_all_idle();
        first
    }

    /// Takes in what the saver's syncer reported about flushing.
    pub fn note_sync(&mut self) {
        let health = self.saving.note_sync();
        self.note_state(health);
    }

    fn note_state(&mut self, health: Option<Health>) {
        if let Some(health) = health {
            self.emit(Event::HealthChanged { component: STATE_COMPONENT, health });
        }
    }

    /// Saves everything as a new snapshot: after a start, a reload, or
    /// changes to many throttles at once.
    pub fn persist(&mut self) {
        let state = self.table.saved_state(&self.datapath.pool, &self.runtime_defaults, self.runtime_link);
        let health = self.saving.snapshot(state);
        self.note_state(health);
    }

    /// Saves throttle `id` as it is now (see `ThrottleTable::change`).
    pub fn save_throttle(&mut self, id: ThrottleId) {
        self.save(self.table.change(id, &self.datapath.pool));
    }

    /// One change, into the journal (see `Saving::save`).
    pub fn save(&mut self, change: Change) {
        let (table, pool, defaults, link) =
            (&self.table, &self.datapath.pool, &self.runtime_defaults, self.runtime_link);
        let health = self.saving.save(table.next_id, change, || table.saved_state(pool, defaults, link));
        self.note_state(health);
    }
}

/// A cap's spec pinned to its backend (see `LimitSpec::for_cap`); any
/// other target's as given.
pub(super) fn cap_spec(target: &Target, spec: &LimitSpec) -> Result<LimitSpec, ManagerError> {
    match target.is_cap() {
        true => Ok(spec.for_cap(*target == Target::All)?),
        false => Ok(spec.clone()),
    }
}

/// A limit as users write it ("1M"), or "none", for the logs.
fn rate_text(r: Option<Rate>) -> String {
    r.map_or_else(|| "none".into(), |r| r.to_string())
}
