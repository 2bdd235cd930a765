//! Buffering deltas in memory and writing them in one transaction per
//! flush; pruning old rows.
use std::collections::BTreeMap;

use rusqlite::{params, OptionalExtension, Transaction};
use tracing::warn;

use super::{recover::is_corrupt, Counts, Delta, Key, UnixTime, UsageError, UsageStore, MINUTE_RETENTION};

/// Minutes kept in memory when flushes keep failing (the disk is full,
/// say): the oldest go first, so memory stays bounded.
const MAX_PENDING_MINUTES: usize = 60;

const UPSERT_MINUTE: &str = "INSERT INTO minute (minute, key, down_inet, up_inet, down_local, up_local)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
     ON CONFLICT (minute, key) DO UPDATE SET
       down_inet = down_inet + excluded.down_inet, up_inet = up_inet + excluded.up_inet,
       down_local = down_local + excluded.down_local, up_local = up_local + excluded.up_local";

const UPSERT_HOUR: &str = "INSERT INTO hour (hour, key, down_inet, up_inet, down_local, up_local)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
     ON CONFLICT (hour, key) DO UPDATE SET
       down_inet = down_inet + excluded.down_inet, up_inet = up_inet + excluded.up_inet,
       down_local = down_local + excluded.down_local, up_local = up_local + excluded.up_local";

/// SQLite integers are signed; no counter gets near 2^63 bytes.
pub(super) fn sql(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl UsageStore {
    /// Adds deltas counted at `now` to the buffer; nothing is written.
    pub fn record(&mut self, now: UnixTime, deltas: &[Delta]) {
        let mut nonzero = deltas.iter().filter(|d| !d.counts.is_zero()).peekable();
        if nonzero.peek().is_none() {
            return;
        }
        let bucket = self.pending.entry(now.div_euclid(60)).or_default();
        for d in nonzero {
            match bucket.get_mut(&d.key) {
                Some(c) => c.add(&d.counts),
                None => {
                    bucket.insert(d.key.clone(), d.counts);
                }
            }
        }
        while self.pending.len() > MAX_PENDING_MINUTES {
            if let Some((minute, lost)) = self.pending.pop_first() {
                warn!(minute, keys = lost.len(), "usage history: unflushed counts dropped");
            }
        }
    }

    /// Writes everything buffered (counts into their minute and hour rows,
    /// quota usage) in one transaction. On failure the buffer is kept for the
    /// next flush; a damaged database is replaced and the write tried again.
    pub fn flush(&mut self) -> Result<(), UsageError> {
        if !self.has_pending() {
            return Ok(());
        }
        if self.broken {
            self.reopen()?;
        }
        match self.write_pending() {
            Err(UsageError::Sqlite(e)) if is_corrupt(&e) => {
                self.replace_corrupt(&e)?;
                self.write_pending()
            }
            other => other,
        }
    }

    fn write_pending(&mut self) -> Result<(), UsageError> {
        let tx = self.conn.transaction()?;
        let mut minutes = Vec::new();
        let mut hours: BTreeMap<(i64, i64), Counts> = BTreeMap::new();
        let mut new_ids = Vec::new();
        for (&minute, keys) in &self.pending {
            for (key, counts) in keys {
                let id = match self.ids.get(key) {
                    Some(&id) => id,
                    None => {
                        let id = key_id(&tx, key)?;
                        new_ids.push((key.clone(), id));
                        id
                    }
                };
                minutes.push((minute, id, *counts));
                hours.entry((minute.div_euclid(60), id)).or_default().add(counts);
            }
        }
        // In key order, so rows are appended to the b-tree's right edge.
        minutes.sort_unstable_by_key(|&(m, id, _)| (m, id));
        upsert(&tx, UPSERT_MINUTE, minutes.into_iter())?;
        upsert(&tx, UPSERT_HOUR, hours.into_iter().map(|((h, id), c)| (h, id, c)))?;
        super::quota::write(&tx, &self.quotas)?;
        tx.commit()?;
        // Only now is it on disk: a failed commit keeps everything.
        self.ids.extend(new_ids);
        self.pending.clear();
        self.quotas.clear();
        Ok(())
    }

    /// Deletes minute rows older than 24 hours and hour rows older than the
    /// retention, then keys and names no row uses. Call it now and then (an
    /// hour apart is plenty): it scans the tables.
    pub fn prune(&mut self, now: UnixTime) -> Result<(), UsageError> {
        let minute_cut = (now - MINUTE_RETENTION.as_secs() as i64).div_euclid(60);
        let hour_cut = (now - self.retention.as_secs() as i64).div_euclid(3600);
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM minute WHERE minute < ?1", [minute_cut])?;
        let hours = tx.execute("DELETE FROM hour WHERE hour < ?1", [hour_cut])?;
        let mut keys = 0;
        if hours > 0 {
            keys = tx.execute(
                "DELETE FROM keys WHERE id NOT IN (SELECT DISTINCT key FROM hour)
                   AND id NOT IN (SELECT DISTINCT key FROM minute)",
                [],
            )?;
            tx.execute(
                "DELETE FROM strings WHERE id NOT IN
                   (SELECT name FROM keys UNION SELECT exe FROM keys UNION SELECT unit FROM keys)",
                [],
            )?;
        }
        tx.commit()?;
        if keys > 0 {
            // Some cached ids are gone; the next flush looks keys up again.
            self.ids.clear();
        }
        Ok(())
    }
}

fn upsert(tx: &Transaction, sql_text: &str, rows: impl Iterator<Item = (i64, i64, Counts)>) -> rusqlite::Result<()> {
    let mut st = tx.prepare_cached(sql_text)?;
    for (bucket, id, c) in rows {
        st.execute(params![bucket, id, sql(c.down_inet), sql(c.up_inet), sql(c.down_local), sql(c.up_local)])?;
    }
    Ok(())
}

fn string_id(tx: &Transaction, text: &str) -> rusqlite::Result<i64> {
    let found =
        tx.prepare_cached("SELECT id FROM strings WHERE text = ?1")?.query_row([text], |r| r.get(0)).optional()?;
    match found {
        Some(id) => Ok(id),
        None => {
            tx.prepare_cached("INSERT INTO strings (text) VALUES (?1)")?.execute([text])?;
            Ok(tx.last_insert_rowid())
        }
    }
}

fn key_id(tx: &Transaction, key: &Key) -> rusqlite::Result<i64> {
    let parts = [string_id(tx, &key.name)?, string_id(tx, &key.exe)?, string_id(tx, &key.unit)?, key.uid as i64];
    let found = tx
        .prepare_cached("SELECT id FROM keys WHERE name = ?1 AND exe = ?2 AND unit = ?3 AND uid = ?4")?
        .query_row(parts, |r| r.get(0))
        .optional()?;
    match found {
        Some(id) => Ok(id),
        None => {
            tx.prepare_cached("INSERT INTO keys (name, exe, unit, uid) VALUES (?1, ?2, ?3, ?4)")?.execute(parts)?;
            Ok(tx.last_insert_rowid())
        }
    }
}
