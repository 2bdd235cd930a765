//! The declarative side: rules applied at start, and on reload the config
//! and rules read again with only the difference applied; default backends
//! chosen at runtime.
use super::{
    core::{Core, Origin},
    events::{Event, RemovalReason},
    ManagerError, ThrottleId,
};
use crate::{
    config::{self, Config, Defaults, Rule},
    persist::Change,
    target::Target,
};
use throttle_common::Direction;

/// A rule with its target resolved for the table (a cgroup path given
/// with the mount point in front loses it).
pub(super) struct Resolved<'a> {
    pub rule: &'a Rule,
    pub target: Target,
}

/// Every rule's target resolved, all or nothing; two rules that resolve to
/// the same target are refused, as the same target written twice is.
pub(super) fn resolve_rules(rules: &[Rule]) -> Result<Vec<Resolved<'_>>, ManagerError> {
    let mut out: Vec<Resolved<'_>> = Vec::with_capacity(rules.len());
    for rule in rules {
        let at = |e: String| {
            ManagerError::InvalidArgument(format!("{}: rule for {}: {e}", rule.source.display(), rule.target))
        };
        let target = rule.target.clone().resolve().map_err(|e| at(e.to_string()))?;
        if let Some(first) = out.iter().find(|r| r.target == target) {
            return Err(at(format!("{target} is already limited by a rule in {}", first.rule.source.display())));
        }
        out.push(Resolved { rule, target });
    }
    Ok(out)
}

impl Core {
    pub(super) fn apply_rule(&mut self, r: &Resolved<'_>) -> Result<ThrottleId, ManagerError> {
        let rule = r.rule;
        let id = self.limit(r.target.clone(), &rule.spec, Origin::Rule(rule.source.clone()))?;
        if let Some(t) = self.throttles.get_mut(&id) {
            t.origin = Origin::Rule(rule.source.clone());
        }
        Ok(id)
    }

    /// Every backend a rule names must be usable, checked before any change.
    pub(super) fn validate_rules(&self, rules: &[Resolved<'_>]) -> Result<(), ManagerError> {
        for Resolved { rule: r, .. } in rules {
            let spec = &r.spec;
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
        let rules = resolve_rules(&loaded.rules)?;
        self.validate_rules(&rules)?;
        let old = std::mem::replace(&mut self.config, loaded.config);
        self.apply_config_change(&old);
        self.sync_rules(&rules);
        self.retry_pending();
        self.persist();
        tracing::info!(config = %path.display(), rules = loaded.rules.len(), "reloaded");
        Ok(())
    }

    pub(super) fn apply_config_change(&mut self, old: &Config) {
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
    pub(super) fn sync_rules(&mut self, rules: &[Resolved<'_>]) {
        let stale: Vec<ThrottleId> = self
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
            if self.find(&r.target).is_some_and(|id| self.rule_unchanged(id, rule)) {
                continue;
            }
            if let Some(id) = self.find(&r.target).filter(|id| self.drops_direction(*id, rule)) {
                let _ = self.remove(id, RemovalReason::Reload);
            }
            if let Err(e) = self.apply_rule(r) {
                tracing::error!(rule = %rule.source.display(), target = %rule.target, error = %e, "rule not applied");
            }
        }
    }

    pub(super) fn rule_unchanged(&self, id: ThrottleId, rule: &Rule) -> bool {
        let Some(t) = self.throttles.get(&id) else { return false }; // pending
        let spec = &rule.spec;
        let same_origin = t.origin == Origin::Rule(rule.source.clone());
        same_origin
            && Direction::BOTH.into_iter().all(|d| {
                let l = t.limits.get(&d);
                l.map(|l| l.rate) == spec.rate(d)
                    && spec.backend_for(d).is_none_or(|b| l.is_some_and(|l| self.pool.name(l.backend) == b))
            })
    }

    /// A limit the rule no longer has (changes cannot remove a direction).
    pub(super) fn drops_direction(&self, id: ThrottleId, rule: &Rule) -> bool {
        let spec = &rule.spec;
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
    pub(super) fn refresh_preference(&mut self) {
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
}

/// Runtime choices override the config, per direction.
pub(super) fn effective_defaults(config: &Defaults, runtime: &Defaults) -> Defaults {
    Defaults { up: runtime.up.clone().or(config.up.clone()), down: runtime.down.clone().or(config.down.clone()) }
}
