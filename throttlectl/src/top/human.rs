//! Numbers for people: binary units, one decimal.
use throttle_common::rate::Rate;

const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];

/// 1536 -> "1.5 KiB"; bytes stay whole. From 1000 of a unit on, the next
/// unit is used ("1.0 MiB", not "1017.2 KiB"), so a value never needs more
/// than three digits before the point and fits its column.
pub fn bytes(b: u64) -> String {
    let mut v = b as f64;
    let mut unit = 0;
    while (v >= 1024.0 || (unit > 0 && v >= 999.95)) && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

pub fn rate(b: u64) -> String {
    format!("{}/s", bytes(b))
}

/// A limit in the CLI's syntax, "-" for none.
pub fn limit(b: u64) -> String {
    Rate::from_bytes(b).map_or("-".into(), |r| r.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readable() {
        assert_eq!(rate(0), "0 B/s");
        assert_eq!(rate(1023), "1023 B/s");
        assert_eq!(rate(1536), "1.5 KiB/s");
        assert_eq!(rate(1_258_291), "1.2 MiB/s");
        // 1017.2 KiB/s would not fit the 11-wide rate column.
        assert_eq!(rate(1_041_613), "1.0 MiB/s");
        assert_eq!(rate(1_023_948), "999.9 KiB/s");
        assert_eq!(bytes(1_048_575), "1.0 MiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
        assert_eq!(bytes(u64::MAX), "16777216.0 TiB");
        assert_eq!(limit(0), "-");
        assert_eq!(limit(1 << 20), "1M");
    }
}
