//! Usage history: bytes per process name, executable, systemd unit and uid,
//! by minute (the last 24 hours) and by hour (the retention, 90 days by
//! default), split into internet and local, in a SQLite database in the
//! state directory. Quota usage per throttle is kept there too, so a data cap
//! survives a restart.
//!
//! The daemon `record`s deltas as it counts them (memory only), and
//! `flush`es at most once a minute and at shutdown: one transaction per
//! flush, so `kill -9` loses at most the last minute. `prune` deletes minute
//! rows older than 24 hours and hour rows older than the retention (deleted,
//! not rolled up: the file stays bounded). A damaged database is moved aside
//! and a new one started (`recover.rs`); the store keeps working.
//!
//! Jobs: `schema.rs` (tables, migrations), `recover.rs` (safe open, bad
//! files), `write.rs` (buffer, flush, prune), `query.rs` (reports),
//! `quota.rs` (quota usage), `recorder.rs` (the daemon's flush thread).
use std::{
    collections::{BTreeMap, HashMap},
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use rusqlite::Connection;

mod query;
pub mod quota;
mod recorder;
mod recover;
mod schema;
mod write;

#[cfg(test)]
mod cost;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_recover;

pub use query::{By, DayTotal, UsageQuery, UsageReport, UsageRow};
pub use quota::QuotaUsage;
pub use recorder::{local_utc_offset, now, Recorder, FILE};
pub use schema::VERSION as SCHEMA_VERSION;

/// Unix time in seconds.
pub type UnixTime = i64;

/// How long per-minute rows are kept.
pub const MINUTE_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// How long per-hour rows are kept unless configured otherwise.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);

/// Whose traffic a row counts. `unit` is "" outside a systemd unit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub name: String,
    pub exe: String,
    pub unit: String,
    pub uid: u32,
}

/// Bytes, each direction split into internet and local.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub down_inet: u64,
    pub up_inet: u64,
    pub down_local: u64,
    pub up_local: u64,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        self.down_inet = self.down_inet.saturating_add(o.down_inet);
        self.up_inet = self.up_inet.saturating_add(o.up_inet);
        self.down_local = self.down_local.saturating_add(o.down_local);
        self.up_local = self.up_local.saturating_add(o.up_local);
    }

    pub fn total(&self) -> u64 {
        self.down_inet.saturating_add(self.up_inet).saturating_add(self.down_local).saturating_add(self.up_local)
    }

    pub fn is_zero(&self) -> bool {
        self.total() == 0
    }
}

/// New bytes of one key since the last `record`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    pub key: Key,
    pub counts: Counts,
}

#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("usage database {path}: {source}")]
    File { path: PathBuf, source: io::Error },
    #[error("usage database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("usage database: a new database is not usable either: {0}")]
    Unusable(String),
}

/// The history and quota store; one per daemon, used from one task.
pub struct UsageStore {
    path: PathBuf,
    conn: Connection,
    retention: Duration,
    /// Unflushed bytes per unix minute.
    pending: BTreeMap<i64, HashMap<Key, Counts>>,
    /// Unflushed quota usage (`None`: remove).
    quotas: HashMap<u32, Option<QuotaUsage>>,
    /// Interned key ids, so a flush needs no lookups for known keys.
    ids: HashMap<Key, i64>,
    /// A damaged file could not be replaced: `conn` is a placeholder, and
    /// the next flush tries again.
    broken: bool,
}

impl UsageStore {
    /// Opens (creating, migrating, or replacing a damaged one) the database
    /// at `path`, whose directory the caller has prepared. `retention` is
    /// how long hour rows are kept ([`DEFAULT_RETENTION`]).
    pub fn open(path: &Path, retention: Duration) -> Result<UsageStore, UsageError> {
        let conn = recover::open(path)?;
        Ok(UsageStore {
            path: path.to_owned(),
            conn,
            retention,
            pending: BTreeMap::new(),
            quotas: HashMap::new(),
            ids: HashMap::new(),
            broken: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether anything waits for a `flush`.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty() || !self.quotas.is_empty()
    }

    /// After SQLite called the open file damaged: moves it aside and starts
    /// a new one (buffered counts stay buffered).
    fn replace_corrupt(&mut self, why: &rusqlite::Error) -> Result<(), UsageError> {
        // Close first, so SQLite lets go of the file and its -wal.
        let placeholder = Connection::open_in_memory()?;
        drop(std::mem::replace(&mut self.conn, placeholder));
        self.broken = true;
        self.ids.clear();
        recover::move_aside(&self.path, &recover::Bad::Corrupt(why.to_string()))?;
        self.reopen()
    }

    fn reopen(&mut self) -> Result<(), UsageError> {
        self.conn = recover::open(&self.path)?;
        self.broken = false;
        Ok(())
    }
}
