//! When a throttle applies: weekly windows in local time, such as
//! `Mon-Fri 09:00-17:00, Sat 10:00-12:00` (`*` for every day, seconds
//! optional, an end before the start runs past midnight).
//!
//! A window on a day is the span between two instants, each its local time
//! mapped the way `mktime` and RFC 5545 do it: a time a DST change skips
//! counts as that much later, a time it repeats counts once, the first
//! time. So a change of the clocks never skips a window nor repeats one.
use std::{fmt, str::FromStr};

use jiff::{
    civil::{Date, DateTime},
    tz::TimeZone,
    Timestamp,
};
use serde::{Deserialize, Serialize};
use throttle_common::text::quote;

const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const DAY_SECS: u32 = 86_400;
/// More windows than anyone writes, few enough that checking them is free.
const MAX_WINDOWS: usize = 32;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Window {
    /// Bit `i`: the window starts on `DAYS[i]`.
    days: u8,
    /// Seconds after local midnight; `end <= start` ends the next day.
    start: u32,
    end: u32,
}

/// A throttle's time windows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    windows: Vec<Window>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("schedule {0}")]
pub struct BadSchedule(String);

impl Schedule {
    /// Whether `at` falls in a window, in time zone `tz`.
    pub fn active_at(&self, at: Timestamp, tz: &TimeZone) -> bool {
        let today = tz.to_datetime(at).date();
        let days = [today.yesterday().ok(), Some(today)];
        days.into_iter().flatten().any(|day| self.windows.iter().any(|w| w.covers(day, at, tz)))
    }

    /// Whether it is active now, in the system's time zone.
    pub fn active_now(&self) -> bool {
        self.active_at(Timestamp::now(), &TimeZone::system())
    }
}

impl Window {
    /// Whether the window that starts on `day` (if it does) holds `at`.
    fn covers(&self, day: Date, at: Timestamp, tz: &TimeZone) -> bool {
        if self.days & (1 << day.weekday().to_monday_zero_offset()) == 0 {
            return false;
        }
        let end_day = if self.end <= self.start { day.tomorrow().ok() } else { Some(day) };
        let (Some(start), Some(end)) = (instant(day, self.start, tz), end_day.and_then(|d| instant(d, self.end, tz)))
        else {
            return false;
        };
        start <= at && at < end
    }
}

/// The instant of a local time: a skipped time counts as later by the gap,
/// a repeated one as its first occurrence (jiff's "compatible").
fn instant(day: Date, secs: u32, tz: &TimeZone) -> Option<Timestamp> {
    let dt: DateTime = match secs {
        DAY_SECS => day.tomorrow().ok()?.at(0, 0, 0, 0),
        s => day.at((s / 3600) as i8, (s / 60 % 60) as i8, (s % 60) as i8, 0),
    };
    tz.to_ambiguous_timestamp(dt).compatible().ok()
}

impl FromStr for Schedule {
    type Err = BadSchedule;
    fn from_str(s: &str) -> Result<Self, BadSchedule> {
        let bad = |why: &str| BadSchedule(format!("{}: {why}", quote(s)));
        let windows =
            s.split(',').map(|w| parse_window(w.trim()).map_err(|why| bad(&why))).collect::<Result<Vec<_>, _>>()?;
        match windows.len() {
            0 => Err(bad("no windows")),
            n if n > MAX_WINDOWS => Err(bad(&format!("more than {MAX_WINDOWS} windows"))),
            _ => Ok(Schedule { windows }),
        }
    }
}

fn parse_window(w: &str) -> Result<Window, String> {
    let (days, times) = w.split_once(' ').ok_or("a window is DAYS HH:MM-HH:MM")?;
    let (start, end) = times.trim().split_once('-').ok_or("a window's times are HH:MM-HH:MM")?;
    let (start, end) = (clock(start)?, clock(end)?);
    if start == DAY_SECS {
        return Err("a window cannot start at 24:00".into());
    }
    if start == end {
        return Err("a window cannot start and end at the same time".into());
    }
    Ok(Window { days: parse_days(days)?, start, end })
}

fn parse_days(d: &str) -> Result<u8, String> {
    if d == "*" {
        return Ok(0x7f);
    }
    let day = |s: &str| DAYS.iter().position(|n| n.eq_ignore_ascii_case(s)).ok_or(format!("unknown day {}", quote(s)));
    match d.split_once('-') {
        None => Ok(1 << day(d)?),
        Some((a, b)) => {
            let (a, b) = (day(a)?, day(b)?);
            // Fri-Mon wraps around the week.
            Ok((0..7).map(|i| (a + i) % 7).take((b + 7 - a) % 7 + 1).fold(0, |m, i| m | 1 << i))
        }
    }
}

/// `HH:MM` or `HH:MM:SS`, up to `24:00`, as seconds after midnight.
fn clock(t: &str) -> Result<u32, String> {
    let bad = || format!("bad time {} (HH:MM or HH:MM:SS)", quote(t));
    let parts: Vec<u32> = t
        .split(':')
        .map(|p| (p.len() == 2).then(|| p.parse().ok()).flatten())
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    let (h, m, s) = match parts[..] {
        [h, m] => (h, m, 0),
        [h, m, s] => (h, m, s),
        _ => return Err(bad()),
    };
    match h * 3600 + m * 60 + s {
        secs if m < 60 && s < 60 && secs <= DAY_SECS => Ok(secs),
        _ => Err(bad()),
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, w) in self.windows.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{} {}-{}", days_text(w.days), clock_text(w.start), clock_text(w.end))?;
        }
        Ok(())
    }
}

/// `*`, one day, or the shortest range that spells the set (`Mon-Fri`).
fn days_text(days: u8) -> String {
    if days == 0x7f {
        return "*".into();
    }
    for (a, first) in DAYS.iter().enumerate() {
        for len in 1..7 {
            let set = (0..len).fold(0u8, |m, i| m | 1 << ((a + i) % 7));
            if set == days {
                let last = DAYS[(a + len - 1) % 7];
                return if len == 1 { first.to_string() } else { format!("{first}-{last}") };
            }
        }
    }
    unreachable!("every parsed day set is one day, a range or every day")
}

fn clock_text(secs: u32) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match s {
        0 => format!("{h:02}:{m:02}"),
        _ => format!("{h:02}:{m:02}:{s:02}"),
    }
}

impl Serialize for Schedule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Schedule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Central European time: CEST from the last Sunday of March at 02:00
    /// (to 03:00) to the last Sunday of October at 03:00 (back to 02:00).
    fn cet() -> TimeZone {
        TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0/3").unwrap()
    }

    fn utc(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    /// Active minutes from noon (UTC) the day before `day` to noon the day
    /// after, and the first and last: one occurrence of a Sunday window.
    fn active_minutes(s: &Schedule, day: &str) -> (usize, Option<Timestamp>, Option<Timestamp>) {
        let start = utc(&format!("{day}T12:00:00Z")) - jiff::SignedDuration::from_hours(24);
        let on: Vec<Timestamp> = (0..48 * 60)
            .map(|m| start + jiff::SignedDuration::from_mins(m))
            .filter(|t| s.active_at(*t, &cet()))
            .collect();
        (on.len(), on.first().copied(), on.last().copied())
    }

    #[test]
    fn parses_and_prints() {
        let s: Schedule = "Mon-Fri 09:00-17:00, sat 10:00:30-12:00, * 22:00-06:00".parse().unwrap();
        assert_eq!(s.to_string(), "Mon-Fri 09:00-17:00, Sat 10:00:30-12:00, * 22:00-06:00");
        assert_eq!("Fri-Mon 00:00-24:00".parse::<Schedule>().unwrap().to_string(), "Fri-Mon 00:00-24:00");
        for bad in ["", "Mon", "Mon 09:00", "Xyz 09:00-10:00", "Mon 25:00-26:00", "Mon 9:00-10:00", "Mon 10:00-10:00"] {
            let e = bad.parse::<Schedule>().unwrap_err();
            assert!(e.to_string().starts_with("schedule "), "{bad}: {e}");
        }
        let many = vec!["* 01:00-02:00"; 33].join(",");
        assert!(many.parse::<Schedule>().is_err());
    }

    #[test]
    fn weekdays_and_overnight() {
        let s: Schedule = "Mon-Fri 09:00-17:00".parse().unwrap();
        let tz = TimeZone::UTC;
        // 2026-12-04 is a Friday, 2026-12-05 a Saturday.
        assert!(s.active_at(utc("2026-12-04T09:00:00Z"), &tz));
        assert!(!s.active_at(utc("2026-12-04T17:00:00Z"), &tz), "the end is not in the window");
        assert!(!s.active_at(utc("2026-12-05T10:00:00Z"), &tz));
        let night: Schedule = "Fri 22:00-06:00".parse().unwrap();
        assert!(night.active_at(utc("2026-12-05T05:59:59Z"), &tz), "Friday's window runs into Saturday");
        assert!(!night.active_at(utc("2026-12-06T05:00:00Z"), &tz), "but not into Sunday");
    }

    #[test]
    fn spring_forward_neither_skips_nor_stretches() {
        // 2026-03-29: 02:00 CET becomes 03:00 CEST (01:00 UTC).
        let skipped: Schedule = "Sun 02:15-02:45".parse().unwrap();
        let (n, first, last) = active_minutes(&skipped, "2026-03-29");
        assert_eq!(n, 30, "a window inside the gap still lasts its 30 minutes");
        assert_eq!(first, Some(utc("2026-03-29T01:15:00Z")), "at 03:15 CEST");
        assert_eq!(last, Some(utc("2026-03-29T01:44:00Z")));
        let across: Schedule = "Sun 01:30-03:30".parse().unwrap();
        assert_eq!(active_minutes(&across, "2026-03-29").0, 60, "two hours of wall clock, one of them skipped");
    }

    #[test]
    fn fall_back_does_not_repeat() {
        // 2026-10-25: 03:00 CEST becomes 02:00 CET (01:00 UTC); 02:00-03:00 happens twice.
        let repeated: Schedule = "Sun 02:10-02:40".parse().unwrap();
        let (n, first, last) = active_minutes(&repeated, "2026-10-25");
        assert_eq!(n, 30, "once, not twice");
        assert_eq!(first, Some(utc("2026-10-25T00:10:00Z")), "the first 02:10 (CEST)");
        assert_eq!(last, Some(utc("2026-10-25T00:39:00Z")));
        let across: Schedule = "Sun 01:30-03:30".parse().unwrap();
        assert_eq!(active_minutes(&across, "2026-10-25").0, 180, "two hours of wall clock and the repeated one");
    }
}
