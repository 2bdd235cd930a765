//! Start: clean up after a crashed run, load the data path, restore the
//! saved runtime throttles (each validated as an API call would be), and
//! retry saved throttles that could not be applied.
use std::collections::BTreeSet;
use throttle_common::Direction;

use throttle_common::text::quote;

use super::{
    core::{Core, Origin, Pending},
    events::{Event, RemovalReason},
    policy::Made,
    reload::{effective_defaults, resolve_rules},
    LimitSpec, ManagerError, ManagerOptions, ThrottleId,
};
use crate::{
    backend::leftovers,
    config::Defaults,
    kernel::{
        bpf::{Programs, ProgramsOptions},
        netlink::Netlink,
    },
    persist::{self, InstanceLock, PersistedThrottle, State, StateStore, Unusable},
};

impl Core {
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
        if core.programs.monitoring() {
            let t = std::time::Instant::now();
            core.seed_all_sockets();
            tracing::debug!(took = ?t.elapsed(), "owners recorded for existing sockets");
        }
        match saved {
            Ok(Some(state)) => {
                core.saving.saver.resume(&state);
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
    pub(super) fn restore(&mut self, state: State) {
        self.next_id = state.next_id.clamp(1, u32::MAX - 1);
        self.runtime_defaults = self.checked_defaults(state.defaults);
        self.pool.set_preferences(effective_defaults(&self.config.defaults, &self.runtime_defaults));
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
            self.next_id = self.next_id.max(p.id + 1);
            if let Err(e) = self.apply_saved(&p) {
                tracing::warn!(throttle_id = p.id, target = %p.target, error = %e,
                    "saved throttle not applied now: kept, reported as failed, retried when slots free up or on reload");
                self.pending.insert(p.id, Pending { record: p, why: e.to_string() });
            } else {
                tracing::info!(throttle_id = p.id, target = %p.target, "restored");
            }
        }
        persist::set_aside(&self.config.state_dir, &rejected);
    }

    /// Applies a saved throttle on its saved backends, or on the defaults.
    pub(super) fn apply_saved(&mut self, p: &PersistedThrottle) -> Result<(), ManagerError> {
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
                self.pending.insert(id, old);
                Err(e)
            }
        }
    }

    /// Saved default backends must be known backends.
    pub(super) fn checked_defaults(&self, d: Defaults) -> Defaults {
        let known = |name: Option<String>, dir: &str| match name {
            Some(n) if self.pool.index(&n).is_err() => {
                tracing::warn!(direction = dir, backend = %quote(&n), "saved default backend set aside: unknown");
                None
            }
            other => other,
        };
        Defaults { up: known(d.up, "up"), down: known(d.down, "down") }
    }
}
