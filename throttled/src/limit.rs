//! What a throttle enforces: a rate per direction and, optionally, the
//! backends. API calls, rules and saved throttles all carry this one type.
use serde::{Deserialize, Serialize};
use throttle_common::Direction;

use crate::Rate;

/// Limits and backend choices for one throttle. `None` leaves a direction
/// as it is (unlimited for a new throttle). Serialized flat, as the rules
/// files and the saved state spell it (`down`, `up`, `down_backend`, ...).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitSpec {
    pub down: Option<Rate>,
    pub up: Option<Rate>,
    /// Backend for both directions; `None` picks the default per direction.
    /// Saved throttles never have it (they name each direction's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(default)]
    pub down_backend: Option<String>,
    #[serde(default)]
    pub up_backend: Option<String>,
}

/// Limits that contradict themselves or say nothing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct InvalidLimit(pub &'static str);

impl LimitSpec {
    pub fn rate(&self, dir: Direction) -> Option<Rate> {
        match dir {
            Direction::Up => self.up,
            Direction::Down => self.down,
        }
    }

    /// The one validation of limits, for API calls, rules and saved state
    /// alike: at least one rate; `backend` or per-direction backends, not
    /// both; a direction's backend only with that direction's rate
    /// (nothing given is silently ignored).
    pub fn check(&self) -> Result<(), InvalidLimit> {
        if self.down.is_none() && self.up.is_none() {
            return Err(InvalidLimit("give a download or an upload limit"));
        }
        if self.backend.is_some() && (self.up_backend.is_some() || self.down_backend.is_some()) {
            return Err(InvalidLimit("backend and up_backend/down_backend exclude each other"));
        }
        if self.down_backend.is_some() && self.down.is_none() {
            return Err(InvalidLimit("down_backend given without a down limit"));
        }
        if self.up_backend.is_some() && self.up.is_none() {
            return Err(InvalidLimit("up_backend given without an up limit"));
        }
        Ok(())
    }

    pub fn backend_for(&self, dir: Direction) -> Option<&str> {
        match dir {
            Direction::Up => self.up_backend.as_deref(),
            Direction::Down => self.down_backend.as_deref(),
        }
        .or(self.backend.as_deref())
    }

    /// Whether any backend is named.
    pub fn names_backend(&self) -> bool {
        self.backend.is_some() || self.down_backend.is_some() || self.up_backend.is_some()
    }
}
