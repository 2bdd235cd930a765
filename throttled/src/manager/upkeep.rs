//! Work on many throttles at once: start (restoring the saved throttles
//! and applying the rules), retrying failed ones, reload, default
//! backends, migration between backends, and health with failover. On
//! `Core` because each goes through `core.rs`'s create, remove, events and
//! saves; the pieces that need one part only live with that part
//! (`rules`, `Datapath`, `Pool`, `ThrottleTable`).
use std::collections::BTreeSet;

use throttle_common::{rate::Rate, Direction};

use super::{
    core::Core,
    events::{Event, RemovalReason},
    policy::Made,
    rules::{self, effective_defaults, resolve_rules, Resolved},
    table::{Limit, Origin, Pending},
    LimitSpec, ManagerError, ManagerOptions, ThrottleId,
};
use crate::{
    backend::{leftovers, Health},
    config::{self, Config, Defaults, FailurePolicy},
    kernel::{
        bpf::{Programs, ProgramsOptions},
        netlink::Netlink,
    },
    limit::cap_runs_on,
    persist::{self, Change, InstanceLock, PersistedThrottle, State, StateStore, Unusable},
    target::Target,
};

impl Core {
    /// Cleans up after a crashed run, loads the data path, restores the
    /// saved runtime throttles and applies the rules.
    pub fn start(opts: &ManagerOptions) -> Result<Core, ManagerError> {
        let rules = resolve_rules(&opts.loaded.rules)?;
        let mut config = opts.loaded.config.clone();
        opts.overrides.apply(&mut config);
        let lock = InstanceLock::acquire(&config.state_dir)?;
        match leftovers::sweep(&Netlink::new()?, &config.state_dir) {
            Ok(s) if !(s.ifbs.is_empty() && s.qdiscs.is_empty()) => {
                tracing::warn!(ifbs = ?s.ifbs, qdiscs = ?s.qdiscs, "removed what a previous run left behind")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not look for a previous run's leftovers"),
        }
        let programs = Programs::load(&ProgramsOptions {
            exempt_loopback: config.exempt_loopback,
            monitor: config.monitor.enabled,
        })?;
        let store = StateStore::new(&config.state_dir);
        let saved = store.load();
        let mut core = Core::new(programs, config, store, lock).map_err(ManagerError::Io)?;
        core.config_path = opts.config_path.clone();
        core.overrides = opts.overrides.clone();
        if core.datapath.programs.monitoring() {
            let t = std::time::Instant::now();
            core.datapath.seed_all_sockets();
            tracing::debug!(took = ?t.elapsed(), "owners recorded for existing sockets");
        }
        match saved {
            Ok(Some(state)) => {
                core.saving.resume(&state);
                core.restore(state);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "ignoring the saved throttles; the rules still apply"),
        }
        for r in &rules {
            if let Err(e) = core.apply_rule(r) {
                tracing::error!(rule = %r.rule.source.display(), target = %r.target, error = %e, "rule not applied");
            }
        }
        core.persist();
        Ok(core)
    }

    /// Saved state is input too: every entry is validated exactly as an
    /// API call is (`PersistedThrottle::check`), and an invalid one is set aside with a
    /// warning, never applied. Pid targets come back only if the same
    /// process is still alive; a backend that is no longer usable falls
    /// back to the default. A valid throttle that cannot be applied now
    /// stays saved as failed (see `Pending`).
    fn restore(&mut self, state: State) {
        self.table.next_id = state.next_id.clamp(1, u32::MAX - 1);
        self.runtime_defaults = self.datapath.pool.known_defaults(state.defaults);
        self.runtime_link = state.link;
        self.datapath.pool.set_preferences(effective_defaults(&self.config.defaults, &self.runtime_defaults));
        let mut seen = BTreeSet::new();
        let mut rejected = Vec::new();
        for p in state.throttles {
            if let Err(why) = p.check(&mut seen) {
                match why {
                    Unusable::Gone(_) => {
                        tracing::info!(throttle_id = p.id, target = %p.target, "not restored: the process is gone")
                    }
                    why => {
                        tracing::warn!(throttle_id = p.id, error = %why, "invalid saved throttle set aside, not applied");
                        rejected.push(serde_json::json!({ "reason": why.to_string(), "entry": p }));
                    }
                }
                continue;
            }
            self.table.next_id = self.table.next_id.max(p.id + 1);
            if let Err(e) = self.apply_saved(&p) {
                tracing::warn!(throttle_id = p.id, target = %p.target, error = %e,
                    "saved throttle not applied now: kept, reported as failed, retried when slots free up or on reload");
                self.table.pending.insert(p.id, Pending { record: p, why: e.to_string() });
            } else {
                tracing::info!(throttle_id = p.id, target = %p.target, "restored");
            }
        }
        persist::set_aside(&self.config.state_dir, &rejected);
    }

    /// Applies a saved throttle on its saved backends, or on the defaults.
    fn apply_saved(&mut self, p: &PersistedThrottle) -> Result<(), ManagerError> {
        let made = Made { admin: p.admin, creator: p.creator };
        self.create(p.id, p.target.clone(), &p.spec, Origin::Runtime, made).or_else(|e| {
            if matches!(e, ManagerError::SlotsExhausted | ManagerError::NoSuchProcess(_)) {
                return Err(e); // the defaults would fail the same way
            }
            tracing::warn!(throttle_id = p.id, error = %e, "saved backend unusable; using the defaults");
            let defaults = LimitSpec { down: p.spec.down, up: p.spec.up, ..Default::default() };
            self.create(p.id, p.target.clone(), &defaults, Origin::Runtime, made)
        })
    }

    /// Tries every failed throttle again, oldest first (when slots free up,
    /// and on reload). One that applies is reported as changed.
    pub fn retry_pending(&mut self) {
        if self.table.pending.is_empty() || !self.datapath.has_free_slot() {
            return;
        }
        let ids: Vec<ThrottleId> = self.table.pending.keys().copied().collect();
        for id in ids {
            if !self.datapath.has_free_slot() {
                break;
            }
            let Some(p) = self.table.pending.remove(&id) else { continue };
            match self.apply_saved(&p.record) {
                Ok(()) => {
                    tracing::info!(throttle_id = id, target = %p.record.target, "failed throttle applied on retry");
                    self.emit(Event::ThrottleChanged { id });
                    self.save_throttle(id);
                }
                Err(ManagerError::NoSuchProcess(_)) => {
                    tracing::info!(throttle_id = id, "failed throttle dropped: its process is gone");
                    self.emit(Event::ThrottleRemoved { id, reason: RemovalReason::ProcessExited });
                    self.save_throttle(id);
                }
                Err(e) => drop(self.table.pending.insert(id, Pending { record: p.record, why: e.to_string() })),
            }
        }
    }

    /// New limits for a failed throttle: it is tried again with them; if it
    /// still cannot apply, nothing changes.
    pub fn change_pending(&mut self, id: ThrottleId, spec: &LimitSpec) -> Result<(), ManagerError> {
        let Some(old) = self.table.pending.remove(&id) else { return Err(ManagerError::NoSuchThrottle(id)) };
        let mut record = old.record.clone();
        let saved = &mut record.spec;
        saved.down = spec.down.or(saved.down);
        saved.up = spec.up.or(saved.up);
        if spec.names_backend() {
            saved.down_backend = saved.down.and(spec.backend_for(Direction::Down).map(String::from));
            saved.up_backend = saved.up.and(spec.backend_for(Direction::Up).map(String::from));
        }
        let made = Made { admin: record.admin, creator: record.creator };
        match self.create(id, record.target.clone(), &record.spec, Origin::Runtime, made) {
            Ok(()) => {
                self.emit(Event::ThrottleChanged { id });
                self.save_throttle(id);
                Ok(())
            }
            Err(e) => {
                self.table.pending.insert(id, old);
                Err(e)
            }
        }
    }

    fn apply_rule(&mut self, r: &Resolved<'_>) -> Result<ThrottleId, ManagerError> {
        let rule = r.rule;
        let id = self.limit(r.target.clone(), &rule.spec, Origin::Rule(rule.source.clone()))?;
        if let Some(t) = self.table.throttles.get_mut(&id) {
            t.origin = Origin::Rule(rule.source.clone());
        }
        Ok(id)
    }

    /// Re-reads the config and rules; applies only the difference.
    pub fn reload(&mut self) -> Result<(), ManagerError> {
        let path = self.config_path.clone().unwrap_or_else(|| config::DEFAULT_CONFIG.into());
        let mut loaded = config::load(&path)?;
        self.overrides.apply(&mut loaded.config);
        let rules = resolve_rules(&loaded.rules)?;
        rules::validate_rules(&self.datapath.pool, &rules)?;
        let old = std::mem::replace(&mut self.config, loaded.config);
        self.apply_config_change(&old);
        self.sync_rules(&rules);
        self.retry_pending();
        self.persist();
        tracing::info!(config = %path.display(), rules = loaded.rules.len(), "reloaded");
        Ok(())
    }

    fn apply_config_change(&mut self, old: &Config) {
        if old.defaults != self.config.defaults {
            // The file is the newer intent: it replaces runtime choices.
            self.runtime_defaults = Defaults::default();
            self.refresh_preference();
        }
        if old.link != self.config.link {
            self.runtime_link = None;
        }
        if old.interfaces != self.config.interfaces {
            let policy = crate::backend::interfaces::InterfacePolicy { names: self.config.interfaces.clone() };
            self.datapath.pool.backends.iter_mut().for_each(|b| b.set_interface_policy(policy.clone()));
            self.refresh_interfaces();
        }
        if old.exempt_loopback != self.config.exempt_loopback || old.state_dir != self.config.state_dir {
            tracing::warn!("exempt_loopback and state_dir take effect at the next start");
        }
    }

    /// Rule throttles whose rule is gone are removed; unchanged ones are not
    /// touched; changed ones change in place.
    fn sync_rules(&mut self, rules: &[Resolved<'_>]) {
        let stale: Vec<ThrottleId> = self
            .table
            .throttles
            .iter()
            .filter(|(_, t)| matches!(t.origin, Origin::Rule(_)) && !rules.iter().any(|r| r.target == t.target))
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            let _ = self.remove(id, RemovalReason::Reload);
        }
        for r in rules {
            let rule = r.rule;
            let id = self.table.find(&r.target);
            let t = id.and_then(|id| self.table.throttles.get(&id)); // None: pending
            if rules::rule_unchanged(t, rule, &self.datapath.pool) {
                continue;
            }
            if let Some(id) = id.filter(|_| rules::drops_direction(t, rule)) {
                let _ = self.remove(id, RemovalReason::Reload);
            }
            if let Err(e) = self.apply_rule(r) {
                tracing::error!(rule = %rule.source.display(), target = %rule.target, error = %e, "rule not applied");
            }
        }
    }

    pub fn set_default(&mut self, dir: Direction, name: &str) -> Result<(), ManagerError> {
        let i = self.datapath.pool.index(name)?;
        self.datapath.pool.usable(i, dir)?;
        match dir {
            Direction::Up => self.runtime_defaults.up = Some(name.into()),
            Direction::Down => self.runtime_defaults.down = Some(name.into()),
        }
        self.refresh_preference();
        self.save(Change::Defaults(self.runtime_defaults.clone()));
        tracing::info!(direction = %dir, backend = name, "default backend set (new throttles only)");
        Ok(())
    }

    /// Applies the effective preference, reporting each direction whose
    /// resulting default backend changed.
    fn refresh_preference(&mut self) {
        let pool = &mut self.datapath.pool;
        let before = Direction::BOTH.map(|d| pool.default_index(d).ok());
        pool.set_preferences(effective_defaults(&self.config.defaults, &self.runtime_defaults));
        for (k, dir) in Direction::BOTH.into_iter().enumerate() {
            match self.datapath.pool.default_index(dir) {
                Ok(i) if Some(i) != before[k] => {
                    self.emit(Event::DefaultChanged { direction: dir, backend: self.datapath.pool.name(i) })
                }
                _ => {}
            }
        }
    }

    /// Moves one direction of a throttle to `to`, make-before-break, and
    /// announces it (see `move_limit`).
    pub fn migrate_limit(
        &mut self,
        id: ThrottleId,
        dir: Direction,
        to: usize,
        rate: Option<Rate>,
    ) -> Result<(), ManagerError> {
        let rate = match (rate, self.table.limit(id, dir)) {
            (Some(r), _) => r,
            (None, Some(l)) => l.rate,
            (None, None) => {
                return Err(ManagerError::InvalidArgument(format!("throttle {id} has no {dir} limit to migrate")))
            }
        };
        if let Some((from, to)) = self.move_limit(id, dir, to, rate)? {
            let (from, to) = (self.datapath.pool.name(from), self.datapath.pool.name(to));
            self.pin_plan(id, dir, to);
            tracing::info!(throttle_id = id, direction = %dir, from, to, "throttle migrated");
            self.emit(Event::ThrottleMigrated { id, direction: dir, from, to });
        }
        Ok(())
    }

    /// Moves one direction of a throttle to `to` at `rate`, make-before-break:
    /// the new backend enforces the limit before the processes switch to
    /// it, and the old one lets go last. If `to` fails, nothing changed.
    /// Returns (from, to) when it moved (not for a new rate in place).
    pub(super) fn move_limit(
        &mut self,
        id: ThrottleId,
        dir: Direction,
        to: usize,
        rate: Rate,
    ) -> Result<Option<(usize, usize)>, ManagerError> {
        let l = self.table.limit(id, dir).ok_or(ManagerError::NoSuchThrottle(id))?;
        let (old_slot, from) = (l.slot, l.backend);
        if from == to {
            return self.change_rate(id, dir, from, old_slot, rate).map(|_| None);
        }
        let name = self.datapath.pool.name(to);
        let target = &self.table.throttles[&id].target;
        if target.is_cap() {
            cap_runs_on(*target == Target::All, name)?;
        }
        self.datapath.pool.usable(to, dir)?;
        let slot = self.datapath.apply(to, dir, rate, target.is_cap())?;
        if let Err(e) = self.datapath.prime(to, slot, dir) {
            tracing::debug!(error = %e, "could not prime the new bucket");
        }
        let covered = self.procs.covered_in(&self.table, id, dir);
        let tuned = self.procs.tuned_in(&self.table, id, dir);
        if let Some(l) = self.table.throttles.get_mut(&id).and_then(|t| t.limits.get_mut(&dir)) {
            *l = Limit { slot, rate, backend: to };
        }
        self.publish_all_cap();
        for &tgid in &tuned {
            self.datapath.cover(to, slot, dir, tgid, Some(rate));
        }
        for &tgid in &covered {
            let slots = self.table.slots(self.procs.assigned(tgid));
            if let Err(e) = self.datapath.programs.set_proc(tgid, slots) {
                tracing::warn!(pid = tgid, error = %e, "could not move a process to the new slot");
            }
        }
        for &tgid in &tuned {
            self.datapath.cover(from, old_slot, dir, tgid, None);
        }
        if let Err(e) = self.datapath.release(from, old_slot, dir) {
            let backend = self.datapath.pool.name(from);
            tracing::warn!(throttle_id = id, backend, error = %e, "old backend did not let go");
        }
        Ok(Some((from, to)))
    }

    /// Everything is checked first; only a move that happened is saved.
    pub fn migrate(&mut self, id: ThrottleId, dir: Option<Direction>, to: &str) -> Result<(), ManagerError> {
        let to = self.datapath.pool.index(to)?;
        if self.table.pending.contains_key(&id) {
            return Err(ManagerError::InvalidArgument(format!("throttle {id} is not applied now: nothing to migrate")));
        }
        let t = self.table.throttles.get(&id).ok_or(ManagerError::NoSuchThrottle(id))?;
        let dirs: Vec<Direction> = match dir {
            Some(d) if !t.limits.contains_key(&d) => {
                return Err(ManagerError::InvalidArgument(format!("throttle {id} has no {d} limit to migrate")))
            }
            Some(d) => vec![d],
            None => t.limits.keys().copied().collect(),
        };
        let dirs: Vec<Direction> = dirs.into_iter().filter(|d| t.limits[d].backend != to).collect();
        for d in &dirs {
            self.datapath.pool.movable(t.limits[d].backend)?;
            self.datapath.pool.usable(to, *d)?;
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
        let pool = &self.datapath.pool;
        let (from, to) = (pool.index(from)?, pool.index(to)?);
        if from == to {
            let (from, to) = (pool.name(from), pool.name(to));
            return Err(ManagerError::InvalidArgument(format!("{from} to {to}: a backend cannot migrate to itself")));
        }
        let moves = self.table.limits_on(from);
        for (_, dir) in &moves {
            pool.usable(to, *dir)?;
        }
        for (id, dir) in &moves {
            self.migrate_limit(*id, *dir, to, None)?;
        }
        self.persist();
        Ok(moves.len())
    }

    /// The shared programs, then every running backend; a broken backend
    /// is repaired, failed over or only reported, as the config says.
    pub fn check_health(&mut self) {
        for ev in self.datapath.check_programs() {
            self.emit(ev);
        }
        for i in 0..self.datapath.pool.backends.len() {
            if !self.datapath.is_running(i) {
                continue;
            }
            let h = self.datapath.backend_health(i);
            let changed = self.datapath.note_health(i, h.clone());
            self.note(changed);
            if let Health::Broken(why) = h {
                let (backend, policy) = (self.datapath.pool.name(i), self.config.health.policy);
                tracing::warn!(backend, reason = why, policy = %policy, "backend broken");
                match policy {
                    FailurePolicy::None => {}
                    FailurePolicy::Repair => {
                        let changed = self.datapath.repair(i);
                        self.note(changed);
                    }
                    FailurePolicy::Failover => self.failover(i),
                }
            }
        }
    }

    /// Emits a health change, if there was one.
    fn note(&mut self, changed: Option<Event>) {
        if let Some(ev) = changed {
            self.emit(ev);
        }
    }

    /// Moves every throttle off a broken backend, each to the best other
    /// backend for its direction; whatever cannot move is repaired in place.
    fn failover(&mut self, i: usize) {
        for (id, dir) in self.table.limits_on(i) {
            let Some(to) = self.datapath.pool.best(dir, Some(i)) else { continue };
            if let Err(e) = self.migrate_limit(id, dir, to, None) {
                tracing::error!(throttle_id = id, to = self.datapath.pool.name(to), error = %e, "failover failed");
            }
        }
        self.persist();
        let changed = match self.datapath.is_running(i) {
            true => self.datapath.repair(i),
            false => self.datapath.note_health(i, Health::Idle),
        };
        self.note(changed);
    }

    /// Interface backends follow interfaces that appear, vanish or change
    /// routes; health is checked right after.
    pub fn refresh_interfaces(&mut self) {
        self.datapath.refresh_interfaces();
        self.check_health();
    }

    /// Periodic work: health, then pattern matches (cgroup moves have no event).
    pub fn periodic(&mut self) {
        self.check_health();
        if self.table.has_pattern_targets() {
            self.rescan();
        }
    }
}
