//! Moving limits between backends, make-before-break: one throttle's
//! direction, one throttle, or everything on a backend.
use throttle_common::rate::Rate;
use throttle_common::Direction;

use super::{
    core::{Core, Limit, Throttle},
    events::Event,
    ManagerError, ThrottleId,
};
use crate::backend::Context;

impl Core {
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
        if let Err(e) = self.pool.backends[to].prime(&mut Context { programs: &mut self.programs }, slot, dir) {
            tracing::debug!(error = %e, "could not prime the new bucket");
        }
        let covered = self.covered_in(id, dir);
        if let Some(l) = self.throttles.get_mut(&id).and_then(|t| t.limits.get_mut(&dir)) {
            *l = Limit { slot, rate, backend: to };
        }
        for &tgid in &covered {
            self.pool.backends[to].cover(&mut Context { programs: &mut self.programs }, slot, dir, tgid, Some(rate));
            let slots = self.procs.get(&tgid).map(|e| self.slots(e.assigned)).unwrap_or_default();
            if let Err(e) = self.programs.set_proc(tgid, slots) {
                tracing::warn!(pid = tgid, error = %e, "could not move a process to the new slot");
            }
        }
        for &tgid in &covered {
            self.pool.backends[from].cover(&mut Context { programs: &mut self.programs }, old_slot, dir, tgid, None);
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
            self.pool.movable(t.limits[d].backend)?;
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
}
