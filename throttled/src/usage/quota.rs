//! Quota usage per throttle, kept with the history so that a restart or a
//! `kill -9` does not reset a data cap. Like counts, a change is buffered
//! and written by the next `flush`, in the same transaction.
use std::collections::HashMap;

use rusqlite::{params, OptionalExtension, Transaction};

use super::{write::sql, UnixTime, UsageError, UsageStore};

/// How much of a throttle's quota its current period has used. `period` is
/// the caller's name for the period ("month"); a stored usage whose period
/// or start differs from the throttle's current one is stale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaUsage {
    pub period: String,
    pub period_start: UnixTime,
    pub used: u64,
}

impl UsageStore {
    /// The last usage set for `throttle`, flushed or not.
    pub fn quota(&self, throttle: u32) -> Result<Option<QuotaUsage>, UsageError> {
        if let Some(pending) = self.quotas.get(&throttle) {
            return Ok(pending.clone());
        }
        let row = self
            .conn
            .prepare_cached("SELECT period, period_start, used FROM quota WHERE throttle = ?1")?
            .query_row([throttle], |r| {
                Ok(QuotaUsage { period: r.get(0)?, period_start: r.get(1)?, used: r.get::<_, i64>(2)?.max(0) as u64 })
            })
            .optional()?;
        Ok(row)
    }

    /// Sets `throttle`'s usage; written by the next `flush`.
    pub fn set_quota(&mut self, throttle: u32, usage: QuotaUsage) {
        self.quotas.insert(throttle, Some(usage));
    }

    /// Every saved usage, flushed or not.
    pub fn quotas(&self) -> Result<Vec<(u32, QuotaUsage)>, UsageError> {
        let mut stmt = self.conn.prepare_cached("SELECT throttle, period, period_start, used FROM quota")?;
        let rows = stmt.query_map([], |r| {
            let usage =
                QuotaUsage { period: r.get(1)?, period_start: r.get(2)?, used: r.get::<_, i64>(3)?.max(0) as u64 };
            Ok((r.get::<_, u32>(0)?, usage))
        })?;
        let mut all: HashMap<u32, Option<QuotaUsage>> =
            rows.collect::<Result<Vec<_>, _>>()?.into_iter().map(|(id, u)| (id, Some(u))).collect();
        all.extend(self.quotas.iter().map(|(id, q)| (*id, q.clone())));
        Ok(all.into_iter().filter_map(|(id, q)| Some((id, q?))).collect())
    }

    /// The quotas as they are now: `current` is set, every other one is
    /// forgotten (its throttle or its quota is gone); written by the next `flush`.
    pub fn keep_quotas(&mut self, current: Vec<(u32, QuotaUsage)>) -> Result<(), UsageError> {
        let stale: Vec<u32> =
            self.quotas()?.into_iter().map(|(id, _)| id).filter(|id| !current.iter().any(|(c, _)| c == id)).collect();
        stale.into_iter().for_each(|id| self.remove_quota(id));
        current.into_iter().for_each(|(id, q)| self.set_quota(id, q));
        Ok(())
    }

    /// Forgets `throttle`'s usage (its throttle or its quota is gone);
    /// written by the next `flush`.
    pub fn remove_quota(&mut self, throttle: u32) {
        self.quotas.insert(throttle, None);
    }
}

pub(super) fn write(tx: &Transaction, quotas: &HashMap<u32, Option<QuotaUsage>>) -> rusqlite::Result<()> {
    let mut set = tx.prepare_cached(
        "INSERT INTO quota (throttle, period, period_start, used) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (throttle) DO UPDATE SET
           period = excluded.period, period_start = excluded.period_start, used = excluded.used",
    )?;
    let mut del = tx.prepare_cached("DELETE FROM quota WHERE throttle = ?1")?;
    for (&id, q) in quotas {
        match q {
            Some(q) => set.execute(params![id, q.period, q.period_start, sql(q.used)])?,
            None => del.execute([id])?,
        };
    }
    Ok(())
}
