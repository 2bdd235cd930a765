//! Runtime throttles saved under the state directory, and the directory
//! itself: the format (`record`), the snapshot and journal files
//! (`snapshot`, `journal`), the saver that appends each change and flushes
//! it on its own thread (`saver`), the lock that keeps a second daemon off
//! the same state (`lock`), and opening files there safely (`statefs`).
use std::{io, path::PathBuf};

mod journal;
mod lock;
mod record;
mod saver;
mod snapshot;
pub mod statefs;

pub use self::{
    journal::Journal,
    lock::InstanceLock,
    record::{set_aside, Change, PersistedThrottle, State, Unusable, REJECTED, VERSION},
    saver::Saver,
    snapshot::StateStore,
};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("saved state {path} is unreadable ({reason}); it was moved to {moved}")]
    Corrupt { path: PathBuf, reason: String, moved: String },
    #[error("cannot save state to {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("another chadthrottled ({}) is using {path}", pid.map_or("pid unknown".into(), |p| format!("pid {p}")))]
    AlreadyRunning { path: PathBuf, pid: Option<u32> },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("refusing the state directory {path}: {reason}")]
    UnsafeDir { path: PathBuf, reason: String },
}
