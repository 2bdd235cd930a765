//! `GetUsage`: the usage history's reports over D-Bus. Parses the
//! question, asks the history off the async threads, and turns the report
//! into `UsageEntry` dicts.
use std::{
    collections::HashSet,
    sync::{Arc, LazyLock, Mutex},
};

use throttle_api::UsageEntry;

use super::errors::{Error, Result};
use crate::usage::{local_utc_offset, now, By, Recorder, UsageQuery, UsageReport};

/// Reports reach back at most this far (the hour rows' longest retention).
const MAX_SPAN: i64 = 3650 * 86400;

/// The question, checked: `until` 0 means now, `since` 0 as far back as
/// anything is kept; `owner` limits it to one uid's traffic.
pub fn query(by: &str, since: i64, until: i64, owner: Option<u32>) -> Result<UsageQuery> {
    let by: By = by.parse().map_err(Error::InvalidArgument)?;
    let until = if until == 0 { now() } else { until };
    if since < 0 || since >= until {
        return Err(Error::InvalidArgument(format!(
            "since must be before until, both unix seconds (got {since}, {until})"
        )));
    }
    let since = since.max(until - MAX_SPAN);
    Ok(UsageQuery { by, since, until, uids: owner.map(|u| vec![u]), utc_offset: local_utc_offset() })
}

/// One report at a time per user: a report over months reads a million
/// rows under the history's lock, so a user who asks for many at once is
/// told `Busy` rather than making everyone else (and the flush) wait.
pub struct Turn(u32);

static RUNNING: LazyLock<Mutex<HashSet<u32>>> = LazyLock::new(Mutex::default);

impl Turn {
    pub fn take(uid: u32) -> Result<Turn> {
        let fresh = RUNNING.lock().unwrap_or_else(|p| p.into_inner()).insert(uid);
        match fresh {
            true => Ok(Turn(uid)),
            false => Err(Error::Busy("a usage report of yours is still being computed; try again".into())),
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        RUNNING.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.0);
    }
}

pub async fn report(history: Option<Arc<Recorder>>, q: UsageQuery) -> Result<Vec<UsageEntry>> {
    let history = history.ok_or_else(|| {
        Error::NotSupported("the usage history is off (see [usage] and [monitor] in the config)".into())
    })?;
    let report = tokio::task::spawn_blocking(move || history.query(&q))
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
        .map_err(|e| Error::Internal(e.to_string()))?;
    Ok(entries(&report))
}

fn entries(report: &UsageReport) -> Vec<UsageEntry> {
    report
        .rows
        .iter()
        .map(|r| UsageEntry {
            key: Some(r.key.clone()),
            down_internet: Some(r.counts.down_inet),
            up_internet: Some(r.counts.up_inet),
            down_local: Some(r.counts.down_local),
            up_local: Some(r.counts.up_local),
            day_starts: Some(r.days.iter().map(|d| d.day).collect()),
            day_bytes: Some(r.days.iter().map(|d| d.counts.total()).collect()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_questions_are_named() {
        assert!(matches!(query("planet", 0, 10, None), Err(Error::InvalidArgument(_))));
        assert!(matches!(query("name", 10, 5, None), Err(Error::InvalidArgument(_))));
        assert!(matches!(query("name", -1, 5, None), Err(Error::InvalidArgument(_))));
        let q = query("user", 0, 0, Some(1000)).unwrap();
        assert_eq!((q.by, q.uids), (By::User, Some(vec![1000])));
        assert!(q.until >= now() - 1 && q.since == q.until - MAX_SPAN, "since 0: as far back as kept");
    }

    #[test]
    fn one_report_at_a_time_per_user() {
        let first = Turn::take(4_000_001).unwrap();
        assert!(matches!(Turn::take(4_000_001), Err(Error::Busy(_))), "the same user waits");
        let other = Turn::take(4_000_002);
        assert!(other.is_ok(), "another user does not");
        drop(first);
        assert!(Turn::take(4_000_001).is_ok(), "free again once done");
    }
}
