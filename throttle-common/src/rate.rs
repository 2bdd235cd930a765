//! The rate syntax shared by `chadthrottled` and `throttlectl`.
//!
//! Rates are bytes per second at the IP layer. `K`, `M`, `G` (optionally with
//! `B` or `iB`) are binary multiples; `kbit`, `mbit`, `gbit` are SI bits, as in
//! tc. A bare number is bytes. Decimals are allowed; zero and overflow are not.

use core::fmt;

use crate::text::{escape, QUOTE_MAX};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    #[error("empty rate")]
    Empty,
    #[error("'{0}' is not a number followed by a unit (examples: 512K, 1.5M, 2G, 100mbit)")]
    Syntax(String),
    #[error("unknown unit '{0}' (use K, M, G, KiB, MB, kbit, mbit or gbit)")]
    Unit(String),
    #[error("rate must be greater than zero")]
    Zero,
    #[error("rate '{0}' is too large (the maximum is {max} B/s)", max = MAX_RATE)]
    TooLarge(String),
}

/// 1 TiB/s: far above any NIC, low enough that every backend's arithmetic is safe.
pub const MAX_RATE: u64 = 1 << 40;

/// A limit in bytes per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rate(u64);

impl Rate {
    /// The smallest rate, 1 B/s.
    pub const MIN: Rate = Rate(1);
    /// The largest rate: what a direction that only counts weighs as.
    pub const MAX: Rate = Rate(MAX_RATE);

    pub fn from_bytes(b: u64) -> Result<Self, RateError> {
        match b {
            0 => Err(RateError::Zero),
            b if b > MAX_RATE => Err(RateError::TooLarge(b.to_string())),
            b => Ok(Rate(b)),
        }
    }
    pub fn bytes_per_sec(self) -> u64 {
        self.0
    }
}

fn multiplier(unit: &str) -> Option<f64> {
    let u = unit.to_ascii_lowercase();
    let u = u.strip_suffix("/s").unwrap_or(&u);
    Some(match u {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1048576.0,
        "g" | "gb" | "gib" => 1073741824.0,
        "bit" => 1.0 / 8.0,
        "kbit" => 1e3 / 8.0,
        "mbit" => 1e6 / 8.0,
        "gbit" => 1e9 / 8.0,
        _ => return None,
    })
}

impl core::str::FromStr for Rate {
    type Err = RateError;

    /// Strict: no blanks, no sign, no exponent; errors quote at most
    /// `QUOTE_MAX` characters of the input.
    fn from_str(s: &str) -> Result<Self, RateError> {
        if s.is_empty() {
            return Err(RateError::Empty);
        }
        let syntax = || RateError::Syntax(escape(s, QUOTE_MAX));
        let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        if num.is_empty() || num.starts_with('.') || num.ends_with('.') || unit.contains(char::is_whitespace) {
            return Err(syntax());
        }
        let n: f64 = num.parse().map_err(|_| syntax())?;
        let m = multiplier(unit).ok_or_else(|| RateError::Unit(escape(unit, QUOTE_MAX)))?;
        let bytes = (n * m).round();
        if bytes > MAX_RATE as f64 {
            return Err(RateError::TooLarge(escape(s, QUOTE_MAX)));
        }
        Rate::from_bytes(bytes as u64)
    }
}

impl fmt::Display for Rate {
    /// The shortest exact form in binary units, so that it parses back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 3] = [(1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")];
        for (m, u) in UNITS {
            if self.0 >= m && self.0.is_multiple_of(m) {
                return write!(f, "{}{}", self.0 / m, u);
            }
        }
        write!(f, "{}", self.0)
    }
}

/// Serialized as bytes per second; read from a number of bytes per second
/// or from the rate syntax (`down = "1M"` in TOML).
#[cfg(feature = "user")]
impl serde::Serialize for Rate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

#[cfg(feature = "user")]
impl<'de> serde::Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Rate;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a rate such as \"1M\" or a number of bytes per second")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Rate, E> {
                Rate::from_bytes(v).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Rate, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom("rate must be greater than zero"))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Rate, E> {
                v.to_string().parse().map_err(E::custom)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Rate, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> Result<u64, RateError> {
        s.parse::<Rate>().map(Rate::bytes_per_sec)
    }

    #[test]
    fn units() {
        assert_eq!(p("1M"), Ok(1 << 20));
        assert_eq!(p("1MiB"), Ok(1 << 20));
        assert_eq!(p("1MB"), Ok(1 << 20));
        assert_eq!(p("256K"), Ok(256 << 10));
        assert_eq!(p("1.5M"), Ok(1572864));
        assert_eq!(p("2g"), Ok(2 << 30));
        assert_eq!(p("1500"), Ok(1500));
        assert_eq!(p("8mbit"), Ok(1_000_000));
        assert_eq!(p("100kbit"), Ok(12500));
        assert_eq!(p("10M/s"), Ok(10 << 20));
    }

    #[test]
    fn rejects() {
        assert_eq!(p(""), Err(RateError::Empty));
        assert_eq!(p("0"), Err(RateError::Zero));
        assert_eq!(p("0.1"), Err(RateError::Zero));
        assert!(matches!(p("-1"), Err(RateError::Syntax(_))));
        assert!(matches!(p("1Q"), Err(RateError::Unit(_))));
        assert!(matches!(p("99999999999G"), Err(RateError::TooLarge(_))));
        assert!(matches!(p("1..5M"), Err(RateError::Syntax(_))));
        assert!(matches!(p("M"), Err(RateError::Syntax(_))));
        assert!(matches!(p(".5M"), Err(RateError::Syntax(_))));
        for blank in [" 1M ", " 1M", "1M ", "1 M", "1\tM", "1M\n", "+1M", "1e3"] {
            assert!(p(blank).is_err(), "{blank:?} was accepted");
        }
        let huge = format!("1{}", "Q".repeat(1 << 20));
        assert!(RateError::Unit(String::new()).to_string().len() < 100);
        assert!(p(&huge).unwrap_err().to_string().len() < 200, "errors quote at most 64 characters");
        assert!(p(&"9".repeat(1 << 20)).unwrap_err().to_string().len() < 200);
    }

    proptest! {
        // CT_FUZZ_CASES scales every fuzz test up (scripts/fuzz.sh).
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("CT_FUZZ_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(20_000)
        ))]
        #[test]
        fn never_panics(s in "\\PC{0,24}") {
            let _ = p(&s);
        }

        #[test]
        fn display_round_trips(b in 1u64..=MAX_RATE) {
            let r = Rate::from_bytes(b).unwrap();
            prop_assert_eq!(r.to_string().parse::<Rate>(), Ok(r));
        }

        #[test]
        fn accepted_rates_are_in_range(n in 0f64..1e7, u in prop::sample::select(vec!["", "K", "M", "G", "kbit", "mbit"])) {
            if let Ok(r) = p(&format!("{n}{u}")) {
                prop_assert!(r > 0 && r <= MAX_RATE);
            }
        }
    }

    #[cfg(feature = "user")]
    #[test]
    fn serde_reads_numbers_and_strings() {
        let r: Rate = serde_json::from_str("\"1.5M\"").unwrap();
        assert_eq!(r.bytes_per_sec(), 1572864);
        assert_eq!(serde_json::to_string(&r).unwrap(), "1572864");
        assert_eq!(serde_json::from_str::<Rate>("2048").unwrap().bytes_per_sec(), 2048);
        for bad in ["0", "-5", "\"1Q\"", "\"\"", "true"] {
            let e = serde_json::from_str::<Rate>(bad).unwrap_err().to_string();
            assert!(!e.is_empty(), "{bad}");
        }
        let e = serde_json::from_str::<Rate>("\"1Q\"").unwrap_err().to_string();
        assert!(e.contains("unknown unit"), "{e}");
    }
}
