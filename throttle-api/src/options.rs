//! The `a{sv}` options of `Manager.Limit` and `Throttle.SetLimits`.
//!
//! The daemon reads the dict entry by entry (it refuses a repeated or
//! unknown key, and takes a rate as t or as a string such as "1M"); a
//! client sends a [`LimitOptions`].
use serde::Serialize;
use zbus::zvariant::{as_value, Type};

/// Bytes per second (t), or a rate string (s).
pub const DOWN: &str = "down";
pub const UP: &str = "up";
/// The backend for both directions (s).
pub const BACKEND: &str = "backend";
pub const UP_BACKEND: &str = "up_backend";
pub const DOWN_BACKEND: &str = "down_backend";
/// `Manager.Limit` only (b): the throttle ends when the caller's bus
/// connection does, and is never saved; only for a target without one.
pub const HOLD: &str = "hold";
/// (b) Block the target's traffic outright: new connections fail with
/// EPERM and running ones stop. Not a rate of 0; no rates or backends with it.
pub const BLOCK: &str = "block";
/// (s) A data cap, `SIZE/PERIOD` ("5G/month"; hour, day, week or month,
/// resetting at local midnight, Monday, the 1st); needs `then`.
pub const QUOTA: &str = "quota";
/// (s) What applies once the quota is used: a rate ("256K") or "block".
pub const THEN: &str = "then";
/// (s) The windows in which the limits apply, in local time
/// ("Mon-Fri 09:00-17:00, Sat 10:00-12:00"; `*` is every day).
pub const WHEN: &str = "when";
/// (t or s) The rate outside the windows (none: nothing applies outside).
pub const OTHERWISE: &str = "otherwise";
/// (s) Its share of a contended link capacity: low, normal (a new
/// throttle's), high or critical (weights 1, 2, 4, 8). Alone, it makes a
/// throttle with no rate of its own.
pub const PRIORITY: &str = "priority";
/// Every key, in the order error messages list them.
pub const KEYS: [&str; 12] =
    [DOWN, UP, BACKEND, UP_BACKEND, DOWN_BACKEND, HOLD, BLOCK, QUOTA, THEN, WHEN, OTHERWISE, PRIORITY];

/// Options as a client sends them: only the given ones go on the wire.
/// The field names are the keys above (a test holds them equal).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Type)]
#[zvariant(signature = "a{sv}")]
pub struct LimitOptions {
    /// Bytes per second.
    #[serde(with = "as_value::optional", skip_serializing_if = "Option::is_none")]
    pub down: Option<u64>,
    #[serde(with = "as_value::optional", skip_serializing_if = "Option::is_none")]
    pub up: Option<u64>,
    #[serde(with = "as_value::optional", skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(with = "as_value::optional", skip_serializing_if = "Option::is_none")]
    pub up_backend: Option<String>,
    #[serde(with = "as_value::optional", skip_serializing_if = "Option::is_none")]
    pub down_backend: Option<String>,
    #[serde(with = "as_value::optional", skip_serializing_if = "Option::is_none")]
    pub hold: Option<bool>,
    #[serde(with = "as_value::optional", skip_serializing_if = "Option::is_none")]
    pub block: Option<bool>,
    #[serde(with = "as_value::optional", skip_serializing_if = "Option::is_none")]
    pub quota: Option<String>,
    #[serde(with = "as_value::optional", skip_serializing_if = "Option::is_none")]
    pub then: Option<String>,
    #[serde(with = "as_value::optional", skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// Bytes per second.
    #[serde(with = "as_value::optional", skip_serializing_if = "Option::is_none")]
    pub otherwise: Option<u64>,
    #[serde(with = "as_value::optional", skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use zbus::zvariant::{serialized::Context, to_bytes, OwnedValue, Value, LE};

    use super::*;

    fn decode(o: &LimitOptions) -> HashMap<String, OwnedValue> {
        let bytes = to_bytes(Context::new_dbus(LE, 0), o).unwrap();
        bytes.deserialize().unwrap().0
    }

    #[test]
    fn field_names_are_the_keys() {
        let all = LimitOptions {
            down: Some(1),
            up: Some(2),
            backend: Some("ebpf".into()),
            up_backend: Some("tc_htb".into()),
            down_backend: Some("ifb_tc".into()),
            hold: Some(true),
            block: Some(true),
            quota: Some("5G/month".into()),
            then: Some("block".into()),
            when: Some("* 09:00-17:00".into()),
            otherwise: Some(1),
            priority: Some("high".into()),
        };
        let mut keys: Vec<String> = decode(&all).into_keys().collect();
        keys.sort();
        let mut want = KEYS.map(String::from).to_vec();
        want.sort();
        assert_eq!(keys, want);
    }

    #[test]
    fn only_given_options_are_sent_with_their_types() {
        let o = LimitOptions { down: Some(2048), backend: Some("ebpf".into()), ..Default::default() };
        let d = decode(&o);
        assert_eq!(d.len(), 2);
        assert_eq!(&*d[DOWN], &Value::U64(2048));
        assert_eq!(&*d[BACKEND], &Value::from("ebpf"));
        // Byte for byte what a HashMap of the same entries sends.
        let one = LimitOptions { up: Some(7), ..Default::default() };
        let map: HashMap<&str, Value<'_>> = HashMap::from([(UP, Value::U64(7))]);
        let ctx = Context::new_dbus(LE, 0);
        assert_eq!(to_bytes(ctx, &one).unwrap().bytes(), to_bytes(ctx, &map).unwrap().bytes());
        assert!(decode(&LimitOptions::default()).is_empty());
    }
}
