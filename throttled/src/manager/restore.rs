//! Start, persistence and reload: clean up after a crashed run, restore the
//! persisted runtime throttles, apply the rules, and on reload apply only
//! what changed in the config and the rules.
use super::{
    core::{Core, Origin},
    policy::Made,
    BackendInfo, Event, LimitSpec, ManagerError, ManagerOptions, RemovalReason, ThrottleId,
};
use crate::{
    backend::{leftovers, Context, Direction, Health},
    config::{self, Config, Defaults, Rule},
    kernel::{
        bpf::{Datapath, DatapathOptions},
        netlink::Netlink,
        procfs,
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

    /// Pid targets come back only if the same process is still alive; a
    /// backend that is no longer usable falls back to the default.
    fn restore(&mut self, state: State) {
        self.next_id = state.next_id.max(1);
        self.runtime_defaults = state.defaults;
        self.pool.set_preferences(effective_defaults(&self.config.defaults, &self.runtime_defaults));
        for p in state.throttles {
            self.next_id = self.next_id.max(p.id + 1);
            if p.target.root().is_some_and(|r| !procfs::is_alive(&r)) {
                tracing::info!(throttle_id = p.id, target = %p.target, "not restored: the process is gone");
                continue;
            }
            let spec = LimitSpec {
                down: p.down,
                up: p.up,
                up_backend: p.up_backend.clone(),
                down_backend: p.down_backend.clone(),
                backend: None,
            };
            let made = Made { admin: p.admin, creator: p.creator };
            let res = self.create(p.id, p.target.clone(), &spec, Origin::Runtime, made).or_else(|e| {
                tracing::warn!(throttle_id = p.id, error = %e, "saved backend unusable; using the defaults");
                self.create(
                    p.id,
                    p.target.clone(),
                    &LimitSpec { down: p.down, up: p.up, ..Default::default() },
                    Origin::Runtime,
                    made,
                )
            });
            match res {
                Ok(()) => tracing::info!(throttle_id = p.id, target = %p.target, "restored"),
                Err(e) => tracing::error!(throttle_id = p.id, target = %p.target, error = %e, "could not restore"),
            }
        }
    }

    /// Every runtime throttle as it is now, and the runtime defaults.
    fn saved_state(&self) -> State {
        let throttles = self
            .throttles
            .iter()
            .filter(|(_, t)| t.origin == Origin::Runtime)
            .map(|(&id, _)| self.record(id))
            .collect();
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
        let change = match self.throttles.get(&id) {
            Some(t) if t.origin == Origin::Runtime => Change::Put(self.record(id)),
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
        let (t, spec) = (&self.throttles[&id], rule_spec(rule));
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
        self.throttles[&id].limits.keys().any(|d| spec.rate(*d).is_none())
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
