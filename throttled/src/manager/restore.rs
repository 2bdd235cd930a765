//! Start, persistence and reload: clean up after a crashed run, restore the
//! persisted runtime throttles, apply the rules, and on reload apply only
//! what changed in the config and the rules.
use std::collections::BTreeSet;

use throttle_common::{text::quote, Direction};

use super::{
    core::{Core, Origin, Pending},
    policy::Made,
    BackendInfo, Event, LimitSpec, ManagerError, ManagerOptions, RemovalReason, ThrottleId,
};
use crate::{
    backend::{leftovers, Context, Health},
    config::{self, Config, Defaults, Rule},
    kernel::{
        bpf::{Datapath, DatapathOptions},
        netlink::Netlink,
    },
    state::{Change, InstanceLock, PersistedThrottle, State, StateStore, VERSION},
};

impl Core {
    pub fn start(opts: &ManagerOptions) -> Result<Core, ManagerError> {
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
        let datapath = Datapath::load(&DatapathOptions {
            exempt_loopback: config.exempt_loopback,
            monitor: config.monitor.enabled,
        })?;
        let store = StateStore::new(&config.state_dir);
        let saved = store.load();
        let mut core = Core::new(datapath, config, store, lock).map_err(ManagerError::Io)?;
        core.config_path = opts.config_path.clone();
        core.overrides = opts.overrides.clone();
        if core.datapath.monitoring() {
            let t = std::time::Instant::now();
            core.seed_all_sockets();
            tracing::debug!(took = ?t.elapsed(), "owners recorded for existing sockets");
        }
        match saved {
            Ok(Some(state)) => {
                core.saver.resume(&state);
                core.restore(state);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "ignoring the saved throttles; the rules still apply"),
        }
        for rule in &opts.loaded.rules {
            if let Err(e) = core.apply_rule(rule) {
                tracing::error!(rule = %rule.source.display(), target = %rule.target, error = %e, "rule not applied");
            }
        }
        core.persist();
        Ok(core)
    }

    /// Saved state is input too: every entry is validated exactly as an
    /// API call is (`check_saved`), and an invalid one is set aside with a
    /// warning, never applied. Pid targets come back only if the same
    /// process is still alive; a backend that is no longer usable falls
    /// back to the default. A valid throttle that cannot be applied now
    /// stays saved as failed (see `Pending`).
    fn restore(&mut self, state: State) {
        self.next_id = state.next_id.clamp(1, u32::MAX - 1);
        self.runtime_defaults = self.checked_defaults(state.defaults);
        self.pool.set_preferences(effective_defaults(&self.config.defaults, &self.runtime_defaults));
        let mut seen = BTreeSet::new();
        let mut rejected = Vec::new();
        for p in state.throttles {
            if let Err(why) = check_saved(&p, &mut seen) {
                match why {
                    ManagerError::NoSuchProcess(_) => {
                        tracing::info!(throttle_id = p.id, target = %p.target, "not restored: the process is gone")
                    }
                    why => {
                        tracing::warn!(throttle_id = p.id, error = %why, "invalid saved throttle set aside, not applied");
                        rejected.push(serde_json::json!({ "reason": why.to_string(), "entry": p }));
                    }
                }
                continue;
            }
            self.next_id = self.next_id.max(p.id + 1);
            if let Err(e) = self.apply_saved(&p) {
                tracing::warn!(throttle_id = p.id, target = %p.target, error = %e,
                    "saved throttle not applied now: kept, reported as failed, retried when slots free up or on reload");
                self.pending.insert(p.id, Pending { record: p, why: e.to_string() });
            } else {
                tracing::info!(throttle_id = p.id, target = %p.target, "restored");
            }
        }
        self.set_aside(&rejected);
    }

    /// Applies a saved throttle on its saved backends, or on the defaults.
    fn apply_saved(&mut self, p: &PersistedThrottle) -> Result<(), ManagerError> {
        let (spec, made) = (saved_spec(p), Made { admin: p.admin, creator: p.creator });
        self.create(p.id, p.target.clone(), &spec, Origin::Runtime, made).or_else(|e| {
            if matches!(e, ManagerError::SlotsExhausted | ManagerError::NoSuchProcess(_)) {
                return Err(e); // the defaults would fail the same way
            }
            tracing::warn!(throttle_id = p.id, error = %e, "saved backend unusable; using the defaults");
            let defaults = LimitSpec { down: p.down, up: p.up, ..Default::default() };
            self.create(p.id, p.target.clone(), &defaults, Origin::Runtime, made)
        })
    }

    /// Tries every failed throttle again, oldest first (when slots free up,
    /// and on reload). One that applies is reported as changed.
    pub fn retry_pending(&mut self) {
        if self.pending.is_empty() || self.free_slots.is_empty() {
            return;
        }
        let ids: Vec<ThrottleId> = self.pending.keys().copied().collect();
        for id in ids {
            if self.free_slots.is_empty() {
                break;
            }
            let Some(p) = self.pending.remove(&id) else { continue };
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
                Err(e) => drop(self.pending.insert(id, Pending { record: p.record, why: e.to_string() })),
            }
        }
    }

    /// New limits for a failed throttle: it is tried again with them; if it
    /// still cannot apply, nothing changes.
    pub fn change_pending(&mut self, id: ThrottleId, spec: &LimitSpec) -> Result<(), ManagerError> {
        let Some(old) = self.pending.remove(&id) else { return Err(ManagerError::NoSuchThrottle(id)) };
        let mut record = old.record.clone();
        record.down = spec.down.or(record.down);
        record.up = spec.up.or(record.up);
        if spec.backend.is_some() || spec.down_backend.is_some() || spec.up_backend.is_some() {
            record.down_backend = record.down.and(spec.backend_for(Direction::Down).map(String::from));
            record.up_backend = record.up.and(spec.backend_for(Direction::Up).map(String::from));
        }
        let made = Made { admin: record.admin, creator: record.creator };
        match self.create(id, record.target.clone(), &saved_spec(&record), Origin::Runtime, made) {
            Ok(()) => {
                self.emit(Event::ThrottleChanged { id });
                self.save_throttle(id);
                Ok(())
            }
            Err(e) => {
                self.pending.insert(id, old);
                Err(e)
            }
        }
    }

    /// Saved default backends must be known backends.
    fn checked_defaults(&self, d: Defaults) -> Defaults {
        let known = |name: Option<String>, dir: &str| match name {
            Some(n) if self.pool.index(&n).is_err() => {
                tracing::warn!(direction = dir, backend = %quote(&n), "saved default backend set aside: unknown");
                None
            }
            other => other,
        };
        Defaults { up: known(d.up, "up"), down: known(d.down, "down") }
    }

    /// Invalid saved entries go to `throttles.rejected.json` (one JSON line
    /// each, with the reason), so the evidence outlives the next snapshot.
    fn set_aside(&self, rejected: &[serde_json::Value]) {
        if rejected.is_empty() {
            return;
        }
        let path = self.config.state_dir.join(REJECTED);
        let res = (|| {
            use std::io::Write;
            let mut f = crate::statefs::open_append(&path)?;
            rejected.iter().try_for_each(|r| writeln!(f, "{r}"))
        })();
        match res {
            Ok(()) => {
                tracing::warn!(entries = rejected.len(), path = %path.display(), "invalid saved throttles set aside")
            }
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "could not set invalid saved throttles aside"),
        }
    }

    /// Every runtime throttle as it is now (failed ones as saved), and the
    /// runtime defaults.
    fn saved_state(&self) -> State {
        let mut throttles: Vec<PersistedThrottle> = self
            .throttles
            .iter()
            .filter(|(_, t)| t.origin == Origin::Runtime)
            .map(|(&id, _)| self.record(id))
            .chain(self.pending.values().map(|p| p.record.clone()))
            .collect();
        throttles.sort_by_key(|t| t.id);
        State { version: VERSION, seq: 0, next_id: self.next_id, defaults: self.runtime_defaults.clone(), throttles }
    }

    fn record(&self, id: ThrottleId) -> PersistedThrottle {
        let t = &self.throttles[&id];
        let rate = |d| t.limits.get(&d).map(|l| l.rate);
        let backend = |d| t.limits.get(&d).map(|l| self.pool.name(l.backend).to_string());
        PersistedThrottle {
            id,
            target: t.target.clone(),
            down: rate(Direction::Down),
            up: rate(Direction::Up),
            down_backend: backend(Direction::Down),
            up_backend: backend(Direction::Up),
            admin: t.made.admin,
            creator: t.made.creator,
        }
    }

    /// Saves everything as a new snapshot: after a start, a reload, or
    /// changes to many throttles at once.
    pub fn persist(&mut self) {
        let state = self.saved_state();
        let result = self.saver.snapshot(state);
        self.note_saved(result);
    }

    /// Saves throttle `id` as it is now: a runtime throttle's limits and
    /// backends, or, once it is gone (or a rule's), that it is.
    pub fn save_throttle(&mut self, id: ThrottleId) {
        let change = match (self.throttles.get(&id), self.pending.get(&id)) {
            (Some(t), _) if t.origin == Origin::Runtime => Change::Put(self.record(id)),
            (None, Some(p)) => Change::Put(p.record.clone()),
            _ => Change::Delete(id),
        };
        self.save(change);
    }

    /// One change, appended to the journal; a snapshot instead when there
    /// is no journal to append to, or when it is time to fold it.
    fn save(&mut self, change: Change) {
        let result = match self.saver.record(self.next_id, change) {
            Ok(true) if self.saver.wants_snapshot() => {
                if let Err(e) = self.saver.snapshot(self.saved_state()) {
                    tracing::warn!(error = %e, "could not fold the journal into a snapshot; it keeps growing");
                }
                Ok(())
            }
            Ok(true) => Ok(()),
            Ok(false) | Err(_) => self.saver.snapshot(self.saved_state()),
        };
        self.note_saved(result);
    }

    fn apply_rule(&mut self, rule: &Rule) -> Result<ThrottleId, ManagerError> {
        let id = self.limit(rule.target.clone(), &rule_spec(rule), Origin::Rule(rule.source.clone()))?;
        if let Some(t) = self.throttles.get_mut(&id) {
            t.origin = Origin::Rule(rule.source.clone());
        }
        Ok(id)
    }

    /// Every backend a rule names must be usable, checked before any change.
    fn validate_rules(&self, rules: &[Rule]) -> Result<(), ManagerError> {
        for r in rules {
            let spec = rule_spec(r);
            spec.check().map_err(|e| {
                ManagerError::InvalidArgument(format!("{}: rule for {}: {e}", r.source.display(), r.target))
            })?;
            for dir in Direction::BOTH.into_iter().filter(|d| spec.rate(*d).is_some()) {
                self.pool.resolve(spec.backend_for(dir), dir).map_err(|e| {
                    ManagerError::InvalidArgument(format!("{}: rule for {}: {e}", r.source.display(), r.target))
                })?;
            }
        }
        Ok(())
    }

    /// Re-reads the config and rules; applies only the difference.
    pub fn reload(&mut self) -> Result<(), ManagerError> {
        let path = self.config_path.clone().unwrap_or_else(|| config::DEFAULT_CONFIG.into());
        let mut loaded = config::load(&path)?;
        self.overrides.apply(&mut loaded.config);
        self.validate_rules(&loaded.rules)?;
        let old = std::mem::replace(&mut self.config, loaded.config);
        self.apply_config_change(&old);
        self.sync_rules(&loaded.rules);
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
        if old.interfaces != self.config.interfaces {
            let policy = crate::backend::interfaces::InterfacePolicy { names: self.config.interfaces.clone() };
            self.pool.backends.iter_mut().for_each(|b| b.set_interface_policy(policy.clone()));
            self.refresh_interfaces();
        }
        if old.exempt_loopback != self.config.exempt_loopback || old.state_dir != self.config.state_dir {
            tracing::warn!("exempt_loopback and state_dir take effect at the next start");
        }
    }

    /// Rule throttles whose rule is gone are removed; unchanged ones are not
    /// touched; changed ones change in place.
    fn sync_rules(&mut self, rules: &[Rule]) {
        let stale: Vec<ThrottleId> = self
            .throttles
            .iter()
            .filter(|(_, t)| matches!(t.origin, Origin::Rule(_)) && !rules.iter().any(|r| r.target == t.target))
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            let _ = self.remove(id, RemovalReason::Reload);
        }
        for rule in rules {
            if self.find(&rule.target).is_some_and(|id| self.rule_unchanged(id, rule)) {
                continue;
            }
            if let Some(id) = self.find(&rule.target).filter(|id| self.drops_direction(*id, rule)) {
                let _ = self.remove(id, RemovalReason::Reload);
            }
            if let Err(e) = self.apply_rule(rule) {
                tracing::error!(rule = %rule.source.display(), target = %rule.target, error = %e, "rule not applied");
            }
        }
    }

    fn rule_unchanged(&self, id: ThrottleId, rule: &Rule) -> bool {
        let Some(t) = self.throttles.get(&id) else { return false }; // pending
        let spec = rule_spec(rule);
        let same_origin = t.origin == Origin::Rule(rule.source.clone());
        same_origin
            && Direction::BOTH.into_iter().all(|d| {
                let l = t.limits.get(&d);
                l.map(|l| l.rate) == spec.rate(d)
                    && spec.backend_for(d).is_none_or(|b| l.is_some_and(|l| self.pool.name(l.backend) == b))
            })
    }

    /// A limit the rule no longer has (changes cannot remove a direction).
    fn drops_direction(&self, id: ThrottleId, rule: &Rule) -> bool {
        let spec = rule_spec(rule);
        self.throttles.get(&id).is_some_and(|t| t.limits.keys().any(|d| spec.rate(*d).is_none()))
    }

    pub fn set_default(&mut self, dir: Direction, name: &str) -> Result<(), ManagerError> {
        let i = self.pool.index(name)?;
        self.pool.usable(i, dir)?;
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
        let before = Direction::BOTH.map(|d| self.pool.default_index(d).ok());
        self.pool.set_preferences(effective_defaults(&self.config.defaults, &self.runtime_defaults));
        for (k, dir) in Direction::BOTH.into_iter().enumerate() {
            match self.pool.default_index(dir) {
                Ok(i) if Some(i) != before[k] => {
                    self.emit(Event::DefaultChanged { direction: dir, backend: self.pool.name(i) })
                }
                _ => {}
            }
        }
    }

    pub fn default_backend(&self, dir: Direction) -> Result<&'static str, ManagerError> {
        Ok(self.pool.name(self.pool.default_index(dir)?))
    }

    pub fn backend_infos(&mut self) -> Vec<BackendInfo> {
        (0..self.pool.backends.len()).map(|i| self.backend_info(i)).collect()
    }

    fn backend_info(&mut self, i: usize) -> BackendInfo {
        let mut pids: Vec<u32> = self.limits_on(i).into_iter().flat_map(|(id, d)| self.covered_in(id, d)).collect();
        pids.sort_unstable();
        pids.dedup();
        let default_for = Direction::BOTH.into_iter().filter(|d| self.pool.default_index(*d).ok() == Some(i)).collect();
        let b = &self.pool.backends[i];
        let health =
            if b.is_initialized() { b.health(&Context { datapath: &mut self.datapath }) } else { Health::Idle };
        BackendInfo {
            name: b.name(),
            directions: b.capabilities().directions,
            priority: b.priority(),
            availability: b.availability(),
            default_for,
            active: b.active(),
            pids,
            health,
        }
    }
}

/// Where invalid saved entries are set aside, in the state directory.
pub const REJECTED: &str = "throttles.rejected.json";

/// A saved throttle's limits, as an API call would give them.
fn saved_spec(p: &PersistedThrottle) -> LimitSpec {
    LimitSpec {
        down: p.down,
        up: p.up,
        up_backend: p.up_backend.clone(),
        down_backend: p.down_backend.clone(),
        backend: None,
    }
}

/// The validation of a saved entry: the API's own (`Target::revalidate`,
/// `LimitSpec::check`), plus a usable, unique id. A gone process is
/// `NoSuchProcess`; anything else is invalid.
fn check_saved(p: &PersistedThrottle, seen: &mut BTreeSet<ThrottleId>) -> Result<(), ManagerError> {
    if p.id == 0 || p.id == u32::MAX || !seen.insert(p.id) {
        return Err(ManagerError::InvalidArgument(format!("id {} is out of range or saved twice", p.id)));
    }
    p.target.revalidate()?;
    saved_spec(p).check()?;
    for b in [&p.down_backend, &p.up_backend].into_iter().flatten() {
        if b.len() > 64 {
            return Err(ManagerError::InvalidArgument(format!("backend {} is not a backend", quote(b))));
        }
    }
    Ok(())
}

fn rule_spec(r: &Rule) -> LimitSpec {
    LimitSpec {
        down: r.down,
        up: r.up,
        backend: r.backend.clone(),
        up_backend: r.up_backend.clone(),
        down_backend: r.down_backend.clone(),
    }
}

/// Runtime choices override the config, per direction.
fn effective_defaults(config: &Defaults, runtime: &Defaults) -> Defaults {
    Defaults { up: runtime.up.clone().or(config.up.clone()), down: runtime.down.clone().or(config.down.clone()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::Target;

    fn saved(id: ThrottleId, target: Target) -> PersistedThrottle {
        PersistedThrottle {
            id,
            target,
            down: Some("1M".parse().unwrap()),
            up: None,
            down_backend: None,
            up_backend: None,
            admin: true,
            creator: None,
        }
    }

    #[test]
    fn saved_entries_are_checked_like_api_calls() {
        let mut seen = BTreeSet::new();
        let ok = saved(1, Target::name("firefox").unwrap());
        assert!(check_saved(&ok, &mut seen).is_ok());
        assert!(check_saved(&ok, &mut seen).is_err(), "an id saved twice");
        for id in [0, u32::MAX] {
            assert!(check_saved(&saved(id, Target::name("x").unwrap()), &mut seen).is_err(), "id {id}");
        }
        let mut ignored = saved(5, Target::name("x").unwrap());
        ignored.up_backend = Some("tc_htb".into());
        assert!(check_saved(&ignored, &mut seen).is_err(), "a backend for a direction without a limit");
        let mut none = saved(6, Target::name("x").unwrap());
        none.down = None;
        assert!(check_saved(&none, &mut seen).is_err(), "no limit at all");
        let mut long = saved(7, Target::name("x").unwrap());
        long.down_backend = Some("b".repeat(100_000));
        let e = check_saved(&long, &mut seen).unwrap_err().to_string();
        assert!(e.len() < 200, "{e}");
        let bad = saved(8, Target::Name { name: "a/b".into() });
        assert!(matches!(check_saved(&bad, &mut seen), Err(ManagerError::InvalidArgument(_))));
    }
}
