//! Turns D-Bus arguments into the manager's types. Pure, so every bad input
//! is unit-tested without a bus.
use std::collections::HashMap;

use zbus::zvariant::{OwnedValue, Value};

use super::errors::{Error, Result};
use crate::{
    backend::Direction,
    manager::{LimitSpec, ThrottleId},
    target::Target,
    Rate,
};

pub const THROTTLES_PATH: &str = "/org/chadthrottle/throttles";

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

/// `kind` is pid, tree, name, exe, cgroup or unit; a pid is decimal.
pub fn target(kind: &str, value: &str) -> Result<Target> {
    let pid = || value.parse::<u32>().map_err(|_| invalid(format!("pid {value:?} is not a number")));
    let t = match kind {
        "pid" => Target::pid(pid()?, false),
        "tree" => Target::pid(pid()?, true),
        "name" => Target::name(value),
        "exe" => Target::exe(value),
        "cgroup" => Target::cgroup(value),
        "unit" => Target::unit(value),
        other => return Err(invalid(format!("unknown target kind {other:?} (pid, tree, name, exe, cgroup, unit)"))),
    };
    t.map_err(|e| crate::manager::ManagerError::from(e).into())
}

/// Options: `down`/`up` (bytes per second as t, or a rate string as s),
/// `backend`, `up_backend`, `down_backend` (s). Unknown keys are errors.
pub fn limits(options: &HashMap<String, OwnedValue>) -> Result<LimitSpec> {
    let mut spec = LimitSpec::default();
    for (key, value) in options {
        match key.as_str() {
            "down" => spec.down = Some(rate(key, value)?),
            "up" => spec.up = Some(rate(key, value)?),
            "backend" => spec.backend = Some(string(key, value)?),
            "up_backend" => spec.up_backend = Some(string(key, value)?),
            "down_backend" => spec.down_backend = Some(string(key, value)?),
            other => {
                return Err(invalid(format!("unknown option {other:?} (down, up, backend, up_backend, down_backend)")))
            }
        }
    }
    Ok(spec)
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
        other => Err(invalid(format!("direction {other:?} must be up, down or empty for both"))),
    }
}

pub fn throttle_path(id: ThrottleId) -> String {
    format!("{THROTTLES_PATH}/{id}")
}

pub fn throttle_id(path: &str) -> Result<ThrottleId> {
    path.strip_prefix(THROTTLES_PATH)
        .and_then(|r| r.strip_prefix('/'))
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| Error::NoSuchThrottle(format!("{path} is not a throttle")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, Value<'static>)]) -> HashMap<String, OwnedValue> {
        pairs.iter().map(|(k, v)| (k.to_string(), OwnedValue::try_from(v.clone()).unwrap())).collect()
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
        ] {
            assert!(matches!(limits(&opts(&[(k, v.clone())])), Err(Error::InvalidArgument(_))), "{k}={v:?}");
        }
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
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(crate::testing::fuzz_cases(5_000)))]
        #[test]
        fn limits_decoding_never_panics(
            pairs in proptest::collection::vec(
                ("(down|up|backend|up_backend|down_backend|[a-z]{0,8})", value()), 0..5)
        ) {
            let options: HashMap<String, OwnedValue> =
                pairs.into_iter().filter_map(|(k, v)| Some((k, OwnedValue::try_from(v).ok()?))).collect();
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
