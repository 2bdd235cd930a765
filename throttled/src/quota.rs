//! Data caps: `5G/month` of traffic (both directions, at the IP layer),
//! then an action (`256K` or `block`) until the period resets at local
//! midnight (on Monday for weeks, on the 1st for months).
use std::{fmt, str::FromStr};

use jiff::{tz::TimeZone, Timestamp, ToSpan, Zoned};
use serde::{Deserialize, Serialize};
use throttle_common::text::quote;

use crate::Rate;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    Hour,
    Day,
    Week,
    Month,
}

const PERIODS: [(&str, Period); 4] =
    [("hour", Period::Hour), ("day", Period::Day), ("week", Period::Week), ("month", Period::Month)];

impl Period {
    pub fn name(self) -> &'static str {
        PERIODS.iter().find(|(_, p)| *p == self).map_or("", |(n, _)| n)
    }

    /// The start of the period that holds `at`, and the start of the next.
    pub fn bounds(self, at: Timestamp, tz: &TimeZone) -> Option<(Timestamp, Timestamp)> {
        let z = at.to_zoned(tz.clone());
        let start: Zoned = match self {
            Period::Hour => z.with().minute(0).second(0).subsec_nanosecond(0).build().ok()?,
            Period::Day => z.start_of_day().ok()?,
            Period::Week => {
                let back = i64::from(z.weekday().to_monday_zero_offset());
                z.checked_sub(back.days()).ok()?.start_of_day().ok()?
            }
            Period::Month => z.first_of_month().ok()?.start_of_day().ok()?,
        };
        let next = match self {
            Period::Hour => start.checked_add(1.hour()).ok()?,
            Period::Day => start.checked_add(1.day()).ok()?.start_of_day().ok()?,
            Period::Week => start.checked_add(1.week()).ok()?.start_of_day().ok()?,
            Period::Month => start.checked_add(1.month()).ok()?.start_of_day().ok()?,
        };
        Some((start.timestamp(), next.timestamp()))
    }
}

/// How much traffic a throttle may pass in each period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub bytes: u64,
    pub period: Period,
}

/// What applies once a quota is used up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    Rate(Rate),
    Block,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct BadQuota(String);

/// 1 PiB: no period of any link reaches it; the arithmetic stays far from overflow.
const MAX_BYTES: u64 = 1 << 50;

/// `5G`, `700M`, `1.5T`, `123456` (binary multiples, as rates are).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("bad size {}", quote(s)))?;
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1u64,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(format!("bad size {} (a number with K, M, G or T)", quote(s))),
    };
    let bytes = n * mult as f64;
    match bytes {
        b if !(1.0..=MAX_BYTES as f64).contains(&b) => Err(format!("size {} is out of range (1 byte to 1P)", quote(s))),
        b => Ok(b.round() as u64),
    }
}

/// The largest unit that states `b` exactly.
pub fn bytes_text(b: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if b >= 1 << shift && b.is_multiple_of(1 << shift) {
            return format!("{}{unit}", b >> shift);
        }
    }
    b.to_string()
}

impl FromStr for Quota {
    type Err = BadQuota;
    fn from_str(s: &str) -> Result<Self, BadQuota> {
        let bad = |why: String| BadQuota(format!("quota {}: {why}", quote(s)));
        let (size, period) = s.split_once('/').ok_or_else(|| bad("a quota is SIZE/PERIOD, as 5G/month".into()))?;
        let period = PERIODS
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(period.trim()))
            .map(|(_, p)| *p)
            .ok_or_else(|| bad("the period is hour, day, week or month".into()))?;
        Ok(Quota { bytes: parse_bytes(size.trim()).map_err(bad)?, period })
    }
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", bytes_text(self.bytes), self.period.name())
    }
}

impl FromStr for Then {
    type Err = BadQuota;
    fn from_str(s: &str) -> Result<Self, BadQuota> {
        if s.eq_ignore_ascii_case("block") {
            return Ok(Then::Block);
        }
        s.parse().map(Then::Rate).map_err(|e| BadQuota(format!("then {}: a rate or \"block\" ({e})", quote(s))))
    }
}

impl fmt::Display for Then {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Then::Rate(r) => write!(f, "{r}"),
            Then::Block => f.write_str("block"),
        }
    }
}

/// Serialized as the text users write (`"5G/month"`, `"block"`).
macro_rules! as_text {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
as_text!(Quota, Then);

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_prints() {
        let q: Quota = "5G/month".parse().unwrap();
        assert_eq!(q, Quota { bytes: 5 << 30, period: Period::Month });
        assert_eq!(q.to_string(), "5G/month");
        assert_eq!("1.5G/Day".parse::<Quota>().unwrap().to_string(), "1536M/day");
        assert_eq!("block".parse::<Then>(), Ok(Then::Block));
        assert_eq!("256K".parse::<Then>().unwrap().to_string(), "256K");
        for bad in ["5G", "5G/year", "0/day", "-1G/day", "5X/day", "2048T/day"] {
            assert!(bad.parse::<Quota>().unwrap_err().0.starts_with("quota "), "{bad}");
        }
        assert!("never".parse::<Then>().is_err());
    }

    #[test]
    fn periods_start_at_local_midnight() {
        let tz = TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0/3").unwrap();
        // Wednesday 2026-12-02 15:30 CET.
        let at = utc("2026-12-02T14:30:00Z");
        let b = |p: Period| p.bounds(at, &tz).unwrap();
        assert_eq!(b(Period::Hour), (utc("2026-12-02T14:00:00Z"), utc("2026-12-02T15:00:00Z")));
        assert_eq!(b(Period::Day), (utc("2026-12-01T23:00:00Z"), utc("2026-12-02T23:00:00Z")));
        assert_eq!(b(Period::Week), (utc("2026-11-29T23:00:00Z"), utc("2026-12-06T23:00:00Z")), "Monday");
        assert_eq!(b(Period::Month), (utc("2026-11-30T23:00:00Z"), utc("2026-12-31T23:00:00Z")), "the 1st");
        // The day the clocks go back is 25 hours long.
        let fall = Period::Day.bounds(utc("2026-10-25T12:00:00Z"), &tz).unwrap();
        assert_eq!(fall, (utc("2026-10-24T22:00:00Z"), utc("2026-10-25T23:00:00Z")));
        // March's month starts in CET and ends in CEST.
        let march = Period::Month.bounds(utc("2026-03-15T12:00:00Z"), &tz).unwrap();
        assert_eq!(march, (utc("2026-02-28T23:00:00Z"), utc("2026-03-31T22:00:00Z")));
    }
}
