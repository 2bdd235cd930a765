//! Turns D-Bus arguments into the manager's types. Pure, so every bad input
//! is unit-tested without a bus. Strings are borrowed from the message and
//! bounded before any work: an oversized one is refused without a copy and
//! without being quoted back.
use std::{collections::HashMap, marker::PhantomData};

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use throttle_api::options as opt;
use throttle_common::{text::quote, Direction};
use zbus::zvariant::{Signature, Type, Value};

use super::errors::{Error, Result};
use crate::{
    manager::{LimitSpec, ThrottleId},
    target::{Target, TargetSpec},
    Rate,
};

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

/// The longest string argument taken: far above any name, path (PATH_MAX)
/// or rate, far below what the bus lets through (tens of MB).
pub const MAX_ARG: usize = 4096;

/// Refuses any string over `MAX_ARG` bytes: the first check of a call,
/// before authorization and before anything is copied or quoted.
pub fn bounded(args: &[&str]) -> Result<()> {
    match args.iter().find(|a| a.len() > MAX_ARG) {
        Some(a) => Err(invalid(format!("an argument of {} bytes is too long (at most {MAX_ARG})", a.len()))),
        None => Ok(()),
    }
}

/// `kind` is pid, tree, name, exe, cgroup or unit; a pid is decimal.
pub fn target(kind: &str, value: &str) -> Result<Target> {
    bounded(&[kind, value])?;
    TargetSpec::parse(kind, value)
        .and_then(TargetSpec::resolve)
        .map_err(|e| crate::manager::ManagerError::from(e).into())
}

/// An `a{sv}` as the caller sent it, every entry in order and borrowed
/// from the message: a key given twice is seen (a map would keep one).
#[derive(Debug, Default)]
pub struct Options<'a>(pub Vec<(&'a str, Value<'a>)>);

impl Type for Options<'_> {
    const SIGNATURE: &'static Signature = <HashMap<&str, Value<'_>> as Type>::SIGNATURE;
}

impl<'de: 'a, 'a> Deserialize<'de> for Options<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Entries<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for Entries<'a> {
            type Value = Options<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a{sv}")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> std::result::Result<Options<'a>, M::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = m.next_entry::<&'de str, Value<'de>>()? {
                    entries.push(entry);
                }
                Ok(Options(entries))
            }
        }
        d.deserialize_map(Entries(PhantomData))
    }
}

/// Most entries an options dict may have (five keys are known).
const MAX_OPTIONS: usize = 16;

/// Options (`throttle_api::options`): `down`/`up` (bytes per second as t,
/// or a rate string as s), `backend`, `up_backend`, `down_backend` (s),
/// `block` (b: block outright, alone), `quota`, `then`, `when` (s) and
/// `otherwise` (a rate).
/// Unknown or repeated keys, and options that would be ignored, are errors;
/// so is `hold` (see `limit_options`).
pub fn limits(options: &Options<'_>) -> Result<LimitSpec> {
    match limit_options(options)? {
        (spec, false) => Ok(spec),
        (_, true) => Err(invalid("hold is an option of Manager.Limit only".to_string())),
    }
}

/// As `limits`, with `hold` (b) too: whether the throttle lasts only while
/// the caller's connection does.
pub fn limit_options(options: &Options<'_>) -> Result<(LimitSpec, bool)> {
    if options.0.len() > MAX_OPTIONS {
        return Err(invalid(format!("{} options is too many (at most {MAX_OPTIONS})", options.0.len())));
    }
    for (key, value) in &options.0 {
        bounded(&[*key])?;
        if let Value::Str(v) = value {
            bounded(&[v.as_str()])?;
        }
    }
    let mut spec = LimitSpec::default();
    let mut hold = false;
    let mut seen: Vec<&str> = Vec::new();
    for (key, value) in &options.0 {
        if seen.contains(key) {
            return Err(invalid(format!("option {} is given twice", quote(key))));
        }
        seen.push(key);
        match *key {
            opt::DOWN => spec.down = Some(rate(key, value)?),
            opt::UP => spec.up = Some(rate(key, value)?),
            opt::BACKEND => spec.backend = Some(string(key, value)?),
            opt::UP_BACKEND => spec.up_backend = Some(string(key, value)?),
            opt::DOWN_BACKEND => spec.down_backend = Some(string(key, value)?),
            opt::HOLD => hold = boolean(key, value)?,
            opt::BLOCK => spec.block = boolean(key, value)?,
            opt::QUOTA => spec.quota = Some(parsed(key, value)?),
            opt::THEN => spec.then = Some(parsed(key, value)?),
            opt::WHEN => spec.when = Some(parsed(key, value)?),
            opt::OTHERWISE => spec.otherwise = Some(rate(key, value)?),
            opt::PRIORITY => spec.priority = Some(parsed(key, value)?),
            other => return Err(invalid(format!("unknown option {} ({})", quote(other), opt::KEYS.join(", ")))),
        }
    }
    spec.check().map_err(|e| Error::from(crate::manager::ManagerError::from(e)))?;
    Ok((spec, hold))
}

fn boolean(key: &str, v: &Value<'_>) -> Result<bool> {
    match v {
        Value::Bool(b) => Ok(*b),
        other => Err(invalid(format!("{key}: expected b, got {}", other.value_signature()))),
    }
}

fn rate(key: &str, v: &Value<'_>) -> Result<Rate> {
    let parsed = match v {
        Value::U64(b) => Rate::from_bytes(*b),
        Value::U32(b) => Rate::from_bytes(u64::from(*b)),
        Value::Str(s) => s.as_str().parse(),
        other => {
            return Err(invalid(format!("{key}: expected t (bytes/s) or s (\"1M\"), got {}", other.value_signature())))
        }
    };
    parsed.map_err(|e| invalid(format!("{key}: {e}")))
}

/// A string option in the form its type parses (its error names the option).
fn parsed<T: std::str::FromStr<Err: std::fmt::Display>>(key: &str, v: &Value<'_>) -> Result<T> {
    string(key, v)?.parse().map_err(|e| invalid(format!("{e}")))
}

fn string(key: &str, v: &Value<'_>) -> Result<String> {
    match v {
        Value::Str(s) => Ok(s.to_string()),
        other => Err(invalid(format!("{key}: expected a string, got {}", other.value_signature()))),
    }
}

/// "up", "down", or "" for both.
pub fn direction(s: &str) -> Result<Option<Direction>> {
    match s {
        "up" | "upload" => Ok(Some(Direction::Up)),
        "down" | "download" => Ok(Some(Direction::Down)),
        "" | "both" => Ok(None),
        other => Err(invalid(format!("direction {} must be up, down or empty for both", quote(other)))),
    }
}

pub use throttle_api::throttle_path;

pub fn throttle_id(path: &str) -> Result<ThrottleId> {
    throttle_api::throttle_id(path).ok_or_else(|| Error::NoSuchThrottle(format!("{} is not a throttle", quote(path))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&'static str, Value<'static>)]) -> Options<'static> {
        Options(pairs.to_vec())
    }

    #[test]
    fn limits_accept_numbers_and_strings() {
        let s =
            limits(&opts(&[("down", Value::U64(2048)), ("up", Value::from("1M")), ("backend", Value::from("ebpf"))]))
                .unwrap();
        assert_eq!(s.down.unwrap().bytes_per_sec(), 2048);
        assert_eq!(s.up.unwrap().bytes_per_sec(), 1 << 20);
        assert_eq!(s.backend.as_deref(), Some("ebpf"));
    }

    #[test]
    fn bad_limits_are_invalid_arguments() {
        for (k, v) in [
            ("down", Value::U64(0)),
            ("down", Value::from("-1")),
            ("down", Value::from("1Q")),
            ("down", Value::from("99999999999G")),
            ("down", Value::from("")),
            ("down", Value::Bool(true)),
            ("backend", Value::U32(3)),
            ("speed", Value::from("1M")),
            ("down", Value::from(" 1M ")),
            ("down", Value::from("+1M")),
            ("backend", Value::from("ebpf")),
            ("down_backend", Value::from("ebpf")),
        ] {
            assert!(matches!(limits(&opts(&[(k, v.clone())])), Err(Error::InvalidArgument(_))), "{k}={v:?}");
        }
    }

    #[test]
    fn options_that_would_be_ignored_or_repeated_are_refused() {
        let m = Value::from("1M");
        let bad: [&[(&'static str, Value<'static>)]; 5] = [
            &[],
            &[("down", m.clone()), ("down", Value::from("2M"))],
            &[("down", m.clone()), ("backend", Value::from("ebpf")), ("down_backend", Value::from("ebpf"))],
            &[("up", m.clone()), ("down_backend", Value::from("ifb_tc"))],
            &[("down", m.clone()), ("up_backend", Value::from("tc_htb"))],
        ];
        for o in bad {
            let e = limits(&opts(o)).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{o:?}: {e:?}");
        }
        assert!(limits(&opts(&[("down", m.clone()), ("down_backend", Value::from("ebpf"))])).is_ok());
    }

    #[test]
    fn oversized_arguments_are_refused_unquoted() {
        let huge: &'static str = Box::leak("Q".repeat(30 << 20).into_boxed_str());
        let msg = |e: Error| match e {
            Error::InvalidArgument(m) | Error::NoSuchThrottle(m) => m,
            other => panic!("{other:?}"),
        };
        for e in [
            target("name", huge).unwrap_err(),
            target(huge, "x").unwrap_err(),
            target("pid", huge).unwrap_err(),
            limits(&opts(&[("down", Value::from(huge))])).unwrap_err(),
            limits(&opts(&[(huge, Value::from("1M"))])).unwrap_err(),
            limits(&opts(&[("backend", Value::from(huge))])).unwrap_err(),
            bounded(&[huge]).unwrap_err(),
        ] {
            let m = msg(e);
            assert!(m.len() < 200 && !m.contains("QQQQ"), "{}", &m[..m.len().min(200)]);
        }
        // Under the bound, quotes stay short and escaped.
        for e in [
            target("name", &format!("a/{}", "b".repeat(4000))).unwrap_err(),
            target("planet\n", "x").unwrap_err(),
            target("pid", "12\n34").unwrap_err(),
            limits(&opts(&[("down", Value::from("1Q\nFAKE LOG LINE"))])).unwrap_err(),
            direction(&"d".repeat(4000)).unwrap_err(),
            throttle_id(&format!("/x/{}", "y".repeat(4000))).unwrap_err(),
        ] {
            let m = msg(e);
            assert!(m.chars().count() < 200 && !m.contains('\n'), "{m}");
        }
    }

    #[test]
    fn pids_are_plain_decimal() {
        let me = std::process::id().to_string();
        assert!(target("pid", &me).is_ok());
        for bad in [format!("+{me}"), format!("0{me}"), format!(" {me}"), format!("{me} "), "-1".into(), "".into()] {
            assert!(matches!(target("pid", &bad), Err(Error::InvalidArgument(_))), "{bad:?}");
            assert!(matches!(target("tree", &bad), Err(Error::InvalidArgument(_))), "{bad:?}");
        }
    }

    #[test]
    fn the_root_cgroup_is_refused_like_pid_1() {
        let pid1 = format!("{:?}", target("pid", "1").unwrap_err());
        assert!(pid1.contains("would limit the system"), "{pid1}");
        let mut roots = vec!["/".to_string(), "//".into(), "///".into()];
        if let Ok(m) = crate::kernel::cgroup::cgroup2_mount() {
            roots.push(m.display().to_string());
            roots.push(format!("{}/", m.display()));
        }
        for r in &roots {
            let e = format!("{:?}", target("cgroup", r).unwrap_err());
            assert!(e.contains("InvalidArgument") && e.contains("would limit the system"), "{r}: {e}");
        }
        assert!(target("unit", "-.slice").is_err());
        assert!(target("cgroup", "/system.slice").is_ok());
    }

    #[test]
    fn targets_and_paths() {
        assert!(matches!(target("name", ""), Err(Error::InvalidArgument(_))));
        assert!(matches!(target("name", &"x".repeat(10_000)), Err(Error::InvalidArgument(_))));
        assert!(matches!(target("name", "a/b"), Err(Error::InvalidArgument(_))));
        assert!(matches!(target("pid", "0"), Err(Error::InvalidArgument(_))));
        assert!(matches!(target("pid", "x"), Err(Error::InvalidArgument(_))));
        assert!(matches!(target("pid", "4294967295"), Err(Error::NoSuchProcess(_))));
        assert!(matches!(target("planet", "x"), Err(Error::InvalidArgument(_))));
        assert_eq!(throttle_id(&throttle_path(17)).unwrap(), 17);
        assert!(throttle_id("/org/chadthrottle/throttles/x").is_err());
        assert!(throttle_id("/org/chadthrottle").is_err());
        assert_eq!(direction("").unwrap(), None);
        assert!(direction("sideways").is_err());
    }

    fn value() -> impl proptest::strategy::Strategy<Value = Value<'static>> {
        use proptest::prelude::*;
        prop_oneof![
            any::<u64>().prop_map(Value::U64),
            any::<u32>().prop_map(Value::U32),
            any::<i64>().prop_map(Value::I64),
            any::<f64>().prop_map(Value::F64),
            any::<bool>().prop_map(Value::Bool),
            "\\PC{0,16}".prop_map(Value::from),
            "[0-9.]{0,6}(K|M|G|kbit|mbit|KiB|MB)?".prop_map(Value::from),
            proptest::collection::vec(any::<u32>(), 0..3).prop_map(Value::from),
        ]
    }

    // Decoding never panics: every input is accepted or an InvalidArgument
    // (or, for a well-formed pid, NoSuchProcess).
    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(throttle_testkit::fuzz_cases(5_000)))]
        #[test]
        fn limits_decoding_never_panics(
            pairs in proptest::collection::vec(
                ("(down|up|backend|up_backend|down_backend|[a-z]{0,8})", value()), 0..5)
        ) {
            let options = Options(pairs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect());
            match limits(&options) {
                Ok(_) | Err(Error::InvalidArgument(_)) => {}
                Err(e) => proptest::prop_assert!(false, "unexpected error {e:?}"),
            }
        }

        #[test]
        fn target_and_path_decoding_never_panics(
            kind in "(pid|tree|name|exe|cgroup|unit|\\PC{0,6})",
            target_text in "\\PC{0,40}",
            path in "(/org/chadthrottle/throttles/)?\\PC{0,12}",
            dir in "\\PC{0,6}",
        ) {
            match target(&kind, &target_text) {
                Ok(_) | Err(Error::InvalidArgument(_)) | Err(Error::NoSuchProcess(_)) => {}
                Err(e) => proptest::prop_assert!(false, "unexpected error {e:?}"),
            }
            let _ = throttle_id(&path);
            let _ = direction(&dir);
        }
    }
}
