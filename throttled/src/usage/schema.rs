//! The usage database's schema, versioned by `PRAGMA user_version` and
//! migrated forward at open, one transaction per step.
//!
//! Names, executables and units are interned (`strings`), and each
//! (name, exe, unit, uid) tuple once more (`keys`), so a counter row holds two
//! small integers and four counters: that is what keeps 90 days of hourly rows
//! for 500 names under 50 MB. Buckets are unix minutes (`minute`) and unix
//! hours (`hour`), not seconds, which saves a byte or two per row.
use rusqlite::{Connection, Transaction};

/// Each entry takes the schema from version `index` to `index + 1`.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: the counters.
    "CREATE TABLE strings (id INTEGER PRIMARY KEY, text TEXT NOT NULL UNIQUE);
     CREATE TABLE keys (
         id INTEGER PRIMARY KEY,
         name INTEGER NOT NULL, exe INTEGER NOT NULL, unit INTEGER NOT NULL,
         uid INTEGER NOT NULL,
         UNIQUE (name, exe, unit, uid));
     CREATE TABLE minute (
         minute INTEGER NOT NULL, key INTEGER NOT NULL,
         down_inet INTEGER NOT NULL, up_inet INTEGER NOT NULL,
         down_local INTEGER NOT NULL, up_local INTEGER NOT NULL,
         PRIMARY KEY (minute, key)) WITHOUT ROWID;
     CREATE TABLE hour (
         hour INTEGER NOT NULL, key INTEGER NOT NULL,
         down_inet INTEGER NOT NULL, up_inet INTEGER NOT NULL,
         down_local INTEGER NOT NULL, up_local INTEGER NOT NULL,
         PRIMARY KEY (hour, key)) WITHOUT ROWID;",
    // 2: quota usage, so a restart does not reset a data cap.
    "CREATE TABLE quota (
         throttle INTEGER PRIMARY KEY,
         period TEXT NOT NULL, period_start INTEGER NOT NULL, used INTEGER NOT NULL);",
];

/// The version this build writes.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

/// What a database's version says about it.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Now at `VERSION`; `from` is where it started.
    Migrated { from: i64 },
    /// Written by a newer build: left untouched.
    Newer(i64),
}

pub(super) fn version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
}

/// Brings the database to `target` (at most `VERSION`).
pub(super) fn migrate_to(conn: &mut Connection, target: i64) -> rusqlite::Result<Outcome> {
    let from = version(conn)?;
    if from > VERSION {
        return Ok(Outcome::Newer(from));
    }
    for v in from..target.min(VERSION) {
        let tx = conn.transaction()?;
        step(&tx, v)?;
        tx.commit()?;
    }
    Ok(Outcome::Migrated { from })
}

fn step(tx: &Transaction, v: i64) -> rusqlite::Result<()> {
    tx.execute_batch(MIGRATIONS[v as usize])?;
    // A pragma takes no bound parameter; `v + 1` is our own integer.
    tx.execute_batch(&format!("PRAGMA user_version = {}", v + 1))
}

pub(super) fn migrate(conn: &mut Connection) -> rusqlite::Result<Outcome> {
    migrate_to(conn, VERSION)
}
