//! Saving runtime throttles: the manager's side of `persist`. Each change
//! becomes one journal entry, many at once a snapshot (what is saved is
//! `ThrottleTable::change` and `saved_state`). Whether the state can be
//! saved is the health component "state": broken while a change cannot be
//! saved or flushed (the limits still apply; only the next start would
//! lose them). Each method returns the new health when it changed.
use super::ThrottleId;
use crate::{
    backend::Health,
    persist::{Change, Saver, State, StateError, StateStore},
};

/// The health component of the saved state.
pub const STATE_COMPONENT: &str = "state";

/// The saver, and what is known about whether saving works.
pub struct Saving {
    saver: Saver,
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

    /// Continues the journal of the state the daemon started from.
    pub fn resume(&mut self, state: &State) {
        self.saver.resume(state);
    }

    /// Records whether the last change was saved.
    fn note_saved(&mut self, result: Result<(), StateError>) -> Option<Health> {
        self.save_error = result.err().map(|e| e.to_string());
        self.health_now()
    }

    /// Takes in what the saver's syncer reported about flushing.
    pub fn note_sync(&mut self) -> Option<Health> {
        let failing = self.saver.sync_failure()?;
        self.sync_error = failing;
        self.health_now()
    }

    /// Saves everything as a new snapshot.
    pub fn snapshot(&mut self, state: State) -> Option<Health> {
        let result = self.saver.snapshot(state);
        self.note_saved(result)
    }

    /// One change, appended to the journal; a snapshot of `state()` instead
    /// when there is no journal to append to, or when it is time to fold it.
    pub fn save(&mut self, next_id: ThrottleId, change: Change, state: impl Fn() -> State) -> Option<Health> {
        let result = match self.saver.record(next_id, change) {
            Ok(true) if self.saver.wants_snapshot() => {
                if let Err(e) = self.saver.snapshot(state()) {
                    tracing::warn!(error = %e, "could not fold the journal into a snapshot; it keeps growing");
                }
                Ok(())
            }
            Ok(true) => Ok(()),
            Ok(false) | Err(_) => self.saver.snapshot(state()),
        };
        self.note_saved(result)
    }
}
