//! `throttlectl usage`: the usage history's totals, sorted, with a bar per
//! day. The daemon keeps and sums the history; this parses `--since` and
//! prints.
use std::collections::BTreeMap;

use throttle_api::UsageEntry;
pub use throttle_common::clock::{local_utc_offset, now};

use crate::{
    output::{json, Style},
    top::human::bytes,
};

/// `--since`: a span back from now (`90m`, `1h`, `24h`, `7d`, `2w`) or a
/// local date (`2026-11-01`, from its midnight). Returns unix seconds.
pub fn since(text: &str, now: i64, utc_offset: i64) -> Result<i64, String> {
    let bad = || format!("invalid --since '{text}' (e.g. 1h, 24h, 7d, 30d or 2026-11-01)");
    if let Some((y, rest)) = text.split_once('-') {
        let (m, d) = rest.split_once('-').ok_or_else(bad)?;
        let [y, m, d] = [y, m, d].map(|s| s.parse::<i64>().ok());
        let (Some(y), Some(m), Some(d)) = (y, m, d) else { return Err(bad()) };
        if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
            return Err(bad());
        }
        return Ok(days_from_civil(y, m, d) * 86400 - utc_offset);
    }
    let unit = text.chars().last().ok_or_else(bad)?;
    let n: i64 = text[..text.len() - unit.len_utf8()].parse().map_err(|_| bad())?;
    let secs = match unit {
        'm' => 60,
        'h' => 3600,
        'd' => 86400,
        'w' => 7 * 86400,
        _ => return Err(bad()),
    };
    if !(1..=3650 * 86400).contains(&(n.saturating_mul(secs))) {
        return Err(bad());
    }
    Ok(now - n * secs)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// The date (y, m, d) of a day number, for the bars' labels.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 }, m, d)
}

fn as_json(e: &UsageEntry) -> serde_json::Value {
    let starts = e.day_starts.as_deref().unwrap_or_default();
    let days: Vec<serde_json::Value> = starts
        .iter()
        .zip(e.day_bytes.as_deref().unwrap_or_default())
        .map(|(day, bytes)| serde_json::json!({ "day": day, "bytes": bytes }))
        .collect();
    serde_json::json!({
        "key": e.key,
        "down_internet": e.down_internet,
        "up_internet": e.up_internet,
        "down_local": e.down_local,
        "up_local": e.up_local,
        "days": days,
    })
}

fn down(e: &UsageEntry) -> u64 {
    e.down_internet.unwrap_or(0) + e.down_local.unwrap_or(0)
}

fn up(e: &UsageEntry) -> u64 {
    e.up_internet.unwrap_or(0) + e.up_local.unwrap_or(0)
}

pub fn print(by: &str, entries: &[UsageEntry], utc_offset: i64, st: &Style) {
    if st.json {
        json(&entries.iter().map(as_json).collect::<Vec<_>>());
        return;
    }
    if entries.is_empty() {
        if st.legend {
            println!("no traffic recorded in this range");
        }
        return;
    }
    if st.legend {
        println!("{:<28} {:>11} {:>11} {:>11} {:>11}", by.to_uppercase(), "DOWN", "UP", "TOTAL", "LOCAL");
    }
    for e in entries {
        let key = throttle_common::text::escape(e.key.as_deref().unwrap_or(""), 28);
        let local = e.down_local.unwrap_or(0) + e.up_local.unwrap_or(0);
        let total = down(e) + up(e);
        println!("{key:<28} {:>11} {:>11} {:>11} {:>11}", bytes(down(e)), bytes(up(e)), bytes(total), bytes(local));
    }
    days(entries, utc_offset, st);
}

/// One bar per day, all rows together, scaled to the busiest day.
fn days(entries: &[UsageEntry], utc_offset: i64, st: &Style) {
    let mut by_day: BTreeMap<i64, u64> = BTreeMap::new();
    for e in entries {
        let starts = e.day_starts.as_deref().unwrap_or_default();
        for (day, b) in starts.iter().zip(e.day_bytes.as_deref().unwrap_or_default()) {
            *by_day.entry(*day).or_default() += b;
        }
    }
    let Some(&max) = by_day.values().max().filter(|m| **m > 0) else { return };
    println!();
    const WIDTH: u64 = 40;
    for (day, b) in by_day {
        let (y, m, d) = civil_from_days((day + utc_offset).div_euclid(86400));
        let n = (b * WIDTH).div_ceil(max) as usize;
        let bar = st.sym("█", "#").repeat(n);
        println!("{y:04}-{m:02}-{d:02}  {bar:<w$}  {}", bytes(b), w = WIDTH as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_and_dates() {
        let now = 1_800_000_000;
        assert_eq!(since("1h", now, 0), Ok(now - 3600));
        assert_eq!(since("7d", now, 0), Ok(now - 7 * 86400));
        assert_eq!(since("90m", now, 0), Ok(now - 5400));
        assert_eq!(since("1970-01-02", now, 0), Ok(86400));
        assert_eq!(since("2026-12-03", now, 3600), Ok(days_from_civil(2026, 12, 3) * 86400 - 3600));
        for bad in ["", "h", "1y", "-1h", "0d", "2026-13-01", "2026-1", "x-y-z", "99999d"] {
            assert!(since(bad, now, 0).is_err(), "{bad}");
        }
    }

    #[test]
    fn dates_round_trip() {
        for (y, m, d) in [(1970, 1, 1), (2000, 2, 29), (2026, 12, 3), (2100, 3, 1)] {
            assert_eq!(civil_from_days(days_from_civil(y, m, d)), (y, m, d));
        }
    }
}
