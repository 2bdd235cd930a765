//! Reports: totals per name, executable, unit or user over a time range,
//! sorted by bytes, with per-day totals for a bar view.
//!
//! Inside the last 24 hours the minute rows answer, so `--since 1h` means
//! one hour to the minute; before that, whole hour rows do (a range that
//! starts at 10:20 two days ago counts from 10:00). Only flushed counts are
//! seen: the daemon flushes every minute.
use std::{collections::BTreeMap, fmt, str::FromStr};

use super::{Counts, UnixTime, UsageError, UsageStore, MINUTE_RETENTION};

/// What rows are grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum By {
    Name,
    Exe,
    Unit,
    User,
}

impl By {
    pub fn as_str(self) -> &'static str {
        match self {
            By::Name => "name",
            By::Exe => "exe",
            By::Unit => "unit",
            By::User => "user",
        }
    }

    fn column(self) -> &'static str {
        match self {
            By::Name => "k.name",
            By::Exe => "k.exe",
            By::Unit => "k.unit",
            By::User => "k.uid",
        }
    }
}

impl fmt::Display for By {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for By {
    type Err = String;
    fn from_str(s: &str) -> Result<By, String> {
        match s {
            "name" => Ok(By::Name),
            "exe" => Ok(By::Exe),
            "unit" => Ok(By::Unit),
            "user" => Ok(By::User),
            _ => Err(format!("unknown grouping {s:?} (name, exe, unit or user)")),
        }
    }
}

/// A report's question: `[since, until)` in unix seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    pub by: By,
    pub since: UnixTime,
    pub until: UnixTime,
    /// Only these uids' traffic (a caller without observe-all sees its own).
    pub uids: Option<Vec<u32>>,
    /// Seconds east of UTC where days begin (the caller's local offset).
    pub utc_offset: i64,
}

/// Bytes of one day, which starts at `day` (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayTotal {
    pub day: UnixTime,
    pub counts: Counts,
}

/// One name's (exe's, unit's, or uid's, in decimal) totals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    pub key: String,
    pub counts: Counts,
    pub days: Vec<DayTotal>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageReport {
    /// Sorted by total bytes, most first.
    pub rows: Vec<UsageRow>,
    /// All rows' bytes per day, oldest first.
    pub days: Vec<DayTotal>,
    pub total: Counts,
}

/// The buckets a range reads: hour rows before `split`, minute rows after.
#[derive(Debug, PartialEq, Eq)]
struct Ranges {
    hours: (i64, i64),
    minutes: (i64, i64),
}

fn ranges(since: UnixTime, until: UnixTime, now: UnixTime) -> Ranges {
    // The first whole hour whose minutes are all still kept.
    let split = (now - MINUTE_RETENTION.as_secs() as i64).div_euclid(3600) * 3600 + 3600;
    let ceil = |t: i64, unit: i64| -(-t).div_euclid(unit);
    Ranges {
        hours: (since.div_euclid(3600), split.min(ceil(until, 3600) * 3600) / 3600),
        minutes: (since.max(split).div_euclid(60), ceil(until, 60)),
    }
}

impl UsageStore {
    /// Totals over `q`'s range as of `now` (which says which minute rows
    /// are still kept).
    pub fn query(&self, q: &UsageQuery, now: UnixTime) -> Result<UsageReport, UsageError> {
        let r = ranges(q.since, q.until, now);
        let uids = q.uids.as_ref().map(|u| format!("[{}]", u.iter().map(u32::to_string).collect::<Vec<_>>().join(",")));
        let sql_text = format!(
            "WITH r (key, t, di, ui, dl, ul) AS (
               SELECT key, hour * 3600, down_inet, up_inet, down_local, up_local
                 FROM hour WHERE hour >= ?1 AND hour < ?2
               UNION ALL
               SELECT key, minute * 60, down_inet, up_inet, down_local, up_local
                 FROM minute WHERE minute >= ?3 AND minute < ?4)
             SELECT {col}, (r.t + ?5) / 86400, SUM(di), SUM(ui), SUM(dl), SUM(ul)
               FROM r JOIN keys k ON k.id = r.key
              WHERE ?6 IS NULL OR k.uid IN (SELECT value FROM json_each(?6))
              GROUP BY 1, 2",
            col = q.by.column()
        );
        let mut st = self.conn.prepare_cached(&sql_text)?;
        let mut groups: BTreeMap<i64, BTreeMap<i64, Counts>> = BTreeMap::new();
        let params = rusqlite::params![r.hours.0, r.hours.1, r.minutes.0, r.minutes.1, q.utc_offset, uids];
        let mut rows = st.query(params)?;
        while let Some(row) = rows.next()? {
            let n = |i: usize| row.get::<_, i64>(i).map(|v| v.max(0) as u64);
            let counts = Counts { down_inet: n(2)?, up_inet: n(3)?, down_local: n(4)?, up_local: n(5)? };
            groups.entry(row.get(0)?).or_default().insert(row.get(1)?, counts);
        }
        drop(rows);
        self.report(q, groups)
    }

    fn report(&self, q: &UsageQuery, groups: BTreeMap<i64, BTreeMap<i64, Counts>>) -> Result<UsageReport, UsageError> {
        let mut text = self.conn.prepare_cached("SELECT text FROM strings WHERE id = ?1")?;
        let mut all_days: BTreeMap<i64, Counts> = BTreeMap::new();
        let mut report = UsageReport::default();
        for (g, days) in groups {
            let key = match q.by {
                By::User => g.to_string(),
                _ => text.query_row([g], |r| r.get(0))?,
            };
            let mut counts = Counts::default();
            let days = days
                .into_iter()
                .map(|(day, c)| {
                    counts.add(&c);
                    all_days.entry(day).or_default().add(&c);
                    DayTotal { day: day * 86400 - q.utc_offset, counts: c }
                })
                .collect();
            report.total.add(&counts);
            report.rows.push(UsageRow { key, counts, days });
        }
        report.rows.sort_by(|a, b| b.counts.total().cmp(&a.counts.total()).then_with(|| a.key.cmp(&b.key)));
        report.days =
            all_days.into_iter().map(|(day, counts)| DayTotal { day: day * 86400 - q.utc_offset, counts }).collect();
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_ranges_read_minutes_and_older_ones_hours() {
        let now = 100 * 86400 + 12 * 3600 + 37 * 60; // 12:37 on day 100
                                                     // The last hour: minutes only.
        let r = ranges(now - 3600, now, now);
        assert_eq!(r.minutes, ((now - 3600) / 60, now / 60));
        assert!(r.hours.0 >= r.hours.1, "{r:?}");
        // A week: hours up to 13:00 yesterday, minutes after.
        let r = ranges(now - 7 * 86400, now, now);
        let split = (now - 86400) / 3600 + 1;
        assert_eq!(r.hours, ((now - 7 * 86400) / 3600, split));
        assert_eq!(r.minutes, (split * 60, now / 60));
        // Entirely old: hours only, the last one partial counted whole.
        let r = ranges(now - 10 * 86400, now - 9 * 86400 + 60, now);
        assert_eq!(r.hours, ((now - 10 * 86400) / 3600, (now - 9 * 86400 + 60) / 3600 + 1));
        assert!(r.minutes.0 >= r.minutes.1, "{r:?}");
    }
}
