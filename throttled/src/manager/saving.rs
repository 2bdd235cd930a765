//! Saving runtime throttles: the table's side of `persist`. Each change
//! becomes one journal entry (`save_throttle`), many at once a snapshot
//! (`persist`). Whether the state can be saved is the health component
//! "state": broken while a change cannot be saved or flushed (the limits
//! still apply; only the next start would lose them).
use super::{
    core::{Core, Origin},
    events::Event,
    ThrottleId,
};
use crate::{
    backend::Health,
    limit::LimitSpec,
    persist::{Change, PersistedThrottle, Saver, State, StateError, StateStore, VERSION},
};
use throttle_common::Direction;

/// The health component of the saved state.
pub const STATE_COMPONENT: &str = "state";

/// The saver, and what is known about whether saving works.
pub struct Saving {
    pub saver: Saver,
    pub health: Health,
    /// Why the last change could not be saved, if it could not.
    save_error: Option<String>,
    /// Why saved changes cannot be flushed to the disk, if they cannot.
    sync_error: Option<String>,
}

impl Saving {
    pub fn new(store: StateStore) -> std::io::Result<Saving> {
        Ok(Saving { saver: Saver::new(store)?, health: Health::Healthy, save_error: None, sync_error: None })
    }

    /// The new health, if it changed.
    fn health_now(&mut self) -> Option<Health> {
        let health = match self.save_error.as_ref().or(self.sync_error.as_ref()) {
            Some(why) => Health::Broken(format!("throttles apply but are not saved: {why}")),
            None => Health::Healthy,
        };
        (health != self.health).then(|| {
            self.health = health.clone();
            health
        })
    }
}

impl Core {
    /// Records whether the last change was saved.
    fn note_saved(&mut self, result: Result<(), StateError>) {
        self.saving.save_error = result.err().map(|e| e.to_string());
        self.note_state_health();
    }

    /// Takes in what the saver's syncer reported about flushing.
    pub fn note_sync(&mut self) {
        if let Some(failing) = self.saving.saver.sync_failure() {
            self.saving.sync_error = failing;
            self.note_state_health();
        }
    }

    fn note_state_health(&mut self) {
        if let Some(health) = self.saving.health_now() {
            self.emit(Event::HealthChanged { component: STATE_COMPONENT, health });
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

    /// An applied throttle as saved: each limited direction's rate and backend.
    fn record(&self, id: ThrottleId) -> PersistedThrottle {
        let t = &self.throttles[&id];
        let rate = |d| t.limits.get(&d).map(|l| l.rate);
        let backend = |d| t.limits.get(&d).map(|l| self.pool.name(l.backend).to_string());
        let block = t.limits.values().any(|l| !self.pool.backends[l.backend].automatic());
        let spec = match block {
            true => LimitSpec { block, ..Default::default() },
            false => LimitSpec {
                down: rate(Direction::Down),
                up: rate(Direction::Up),
                backend: None,
                down_backend: backend(Direction::Down),
                up_backend: backend(Direction::Up),
                block,
            },
        };
        PersistedThrottle { id, target: t.target.clone(), spec, admin: t.made.admin, creator: t.made.creator }
    }

    /// Saves everything as a new snapshot: after a start, a reload, or
    /// changes to many throttles at once.
    pub fn persist(&mut self) {
        let state = self.saved_state();
        let result = self.saving.saver.snapshot(state);
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
    pub(super) fn save(&mut self, change: Change) {
        let result = match self.saving.saver.record(self.next_id, change) {
            Ok(true) if self.saving.saver.wants_snapshot() => {
                let state = self.saved_state();
                if let Err(e) = self.saving.saver.snapshot(state) {
                    tracing::warn!(error = %e, "could not fold the journal into a snapshot; it keeps growing");
                }
                Ok(())
            }
            Ok(true) => Ok(()),
            Ok(false) | Err(_) => {
                let state = self.saved_state();
                self.saving.saver.snapshot(state)
            }
        };
        self.note_saved(result);
    }
}
