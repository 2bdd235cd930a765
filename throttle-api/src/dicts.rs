//! The `a{sv}` dicts the daemon answers with. Every field is optional and
//! read leniently: a key that is missing, or has another type, reads as
//! `None`, so a client still shows what an older or newer daemon sends.
//! The daemon fills every field.
use serde::{Deserialize, Serialize};
use zbus::zvariant::Type;

/// Serialized as a variant when `Some`; read as `None` when mistyped.
mod lenient {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use zbus::zvariant::{as_value, OwnedValue, Type};

    pub fn serialize<T: Type + Serialize, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        as_value::optional::serialize(v, s)
    }

    pub fn deserialize<'de, T: TryFrom<OwnedValue>, D: Deserializer<'de>>(d: D) -> Result<Option<T>, D::Error> {
        Ok(T::try_from(OwnedValue::deserialize(d)?).ok())
    }
}

/// `Manager.GetStats`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, Type)]
#[zvariant(signature = "a{sv}")]
#[serde(default)]
pub struct Stats {
    #[serde(with = "lenient", skip_serializing_if = "Option::is_none")]
    pub throttles: Option<u32>,
    /// Processes in the kernel's map.
    #[serde(with = "lenient", skip_serializing_if = "Option::is_none")]
    pub processes: Option<u32>,
    #[serde(with = "lenient", skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Whether throttles can be saved: healthy, degraded or broken.
    #[serde(with = "lenient", skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(with = "lenient", skip_serializing_if = "Option::is_none")]
    pub state_detail: Option<String>,
    #[serde(with = "lenient", skip_serializing_if = "Option::is_none")]
    pub slots: Option<u32>,
    #[serde(with = "lenient", skip_serializing_if = "Option::is_none")]
    pub slots_used: Option<u32>,
    #[serde(with = "lenient", skip_serializing_if = "Option::is_none")]
    pub per_user_throttles: Option<u32>,
}

/// One entry of `Manager.GetTopProcesses`. Rates in bytes/s, totals in
/// bytes, limits in bytes/s (0 = none).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, Type)]
#[zvariant(signature = "a{sv}")]
#[serde(default)]
pub struct TopProcess {
    #[serde(with = "lenient", skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(with = "lenient", skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(with = "lenient", skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(with = "lenient", skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    #[serde(with = "lenient", skip_serializing_if = "Option::is_none")]
    pub down_rate: Option<u64>,
    #[serde(with = "lenient", skip_serializing_if = "Option::is_none")]
    pub up_rate: Option<u64>,
    #[serde(with = "lenient", skip_serializing_if = "Option::is_none")]
    pub down_total: Option<u64>,
    #[serde(with = "lenient", skip_serializing_if = "Option::is_none")]
    pub up_total: Option<u64>,
    #[serde(with = "lenient", skip_serializing_if = "Option::is_none")]
    pub throttled: Option<bool>,
    #[serde(with = "lenient", skip_serializing_if = "Option::is_none")]
    pub throttle_ids: Option<Vec<u32>>,
    #[serde(with = "lenient", skip_serializing_if = "Option::is_none")]
    pub backends: Option<Vec<String>>,
    #[serde(with = "lenient", skip_serializing_if = "Option::is_none")]
    pub down_limit: Option<u64>,
    #[serde(with = "lenient", skip_serializing_if = "Option::is_none")]
    pub up_limit: Option<u64>,
}

/// One entry of `Manager.ListBackends`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, Type)]
#[zvariant(signature = "a{sv}")]
#[serde(default)]
pub struct BackendStatus {
    #[serde(with = "lenient", skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// "up" and/or "down".
    #[serde(with = "lenient", skip_serializing_if = "Option::is_none")]
    pub directions: Option<Vec<String>>,
    #[serde(with = "lenient", skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    #[serde(with = "lenient", skip_serializing_if = "Option::is_none")]
    pub available: Option<bool>,
    /// Why it is not available ("" if it is).
    #[serde(with = "lenient", skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(with = "lenient", skip_serializing_if = "Option::is_none")]
    pub default_for: Option<Vec<String>>,
    /// Throttle directions it holds.
    #[serde(with = "lenient", skip_serializing_if = "Option::is_none")]
    pub active: Option<u32>,
    #[serde(with = "lenient", skip_serializing_if = "Option::is_none")]
    pub pids: Option<Vec<u32>>,
    /// healthy, idle, degraded or broken.
    #[serde(with = "lenient", skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    #[serde(with = "lenient", skip_serializing_if = "Option::is_none")]
    pub health_detail: Option<String>,
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use zbus::zvariant::{serialized::Context, to_bytes, OwnedValue, Value, LE};

    use super::*;

    fn wire<T: Serialize + Type>(v: &T) -> zbus::zvariant::serialized::Data<'static, 'static> {
        to_bytes(Context::new_dbus(LE, 0), v).unwrap()
    }

    fn dict(pairs: Vec<(&str, Value<'_>)>) -> HashMap<String, OwnedValue> {
        pairs.into_iter().map(|(k, v)| (k.to_string(), OwnedValue::try_from(v).unwrap())).collect()
    }

    #[test]
    fn a_full_dict_round_trips_with_the_types_of_the_contract() {
        let p = TopProcess {
            pid: Some(42),
            uid: Some(1000),
            name: Some("curl".into()),
            exe: Some("/usr/bin/curl".into()),
            down_rate: Some(1),
            up_rate: Some(2),
            down_total: Some(3),
            up_total: Some(4),
            throttled: Some(true),
            throttle_ids: Some(vec![3]),
            backends: Some(vec!["ebpf".into()]),
            down_limit: Some(5),
            up_limit: Some(6),
        };
        let data = wire(&p);
        assert_eq!(data.deserialize::<TopProcess>().unwrap().0, p);
        let d: HashMap<String, OwnedValue> = data.deserialize().unwrap().0;
        assert_eq!(d.len(), 13);
        let sig = |k: &str| d[k].value_signature().to_string();
        let types = [("pid", "u"), ("name", "s"), ("down_rate", "t"), ("throttled", "b")];
        for (k, s) in types.into_iter().chain([("throttle_ids", "au"), ("backends", "as")]) {
            assert_eq!(sig(k), s, "{k}");
        }
    }

    #[test]
    fn missing_mistyped_and_unknown_keys_read_leniently() {
        let d = dict(vec![
            ("pid", Value::U32(42)),
            ("name", Value::from("curl")),
            ("exe", Value::U32(7)),
            ("future_key", Value::from(vec![1u8, 2])),
        ]);
        let p: TopProcess = wire(&d).deserialize().unwrap().0;
        assert_eq!((p.pid, p.name.as_deref()), (Some(42), Some("curl")));
        assert_eq!((p.exe, p.up_rate), (None, None), "mistyped and missing read as None");
    }

    #[test]
    fn every_dict_has_the_a_sv_signature() {
        for s in [Stats::SIGNATURE, TopProcess::SIGNATURE, BackendStatus::SIGNATURE] {
            assert_eq!(s.to_string(), "a{sv}");
        }
        let stats = Stats { throttles: Some(1), state: Some("broken".into()), ..Default::default() };
        let back: Stats = wire(&stats).deserialize().unwrap().0;
        assert_eq!(back, stats);
        let b = BackendStatus { directions: Some(vec!["up".into(), "down".into()]), ..Default::default() };
        assert_eq!(wire(&b).deserialize::<BackendStatus>().unwrap().0, b);
    }
}

/// One entry of `Manager.GetUsage`: a name's (exe's, unit's, or uid's, in
/// decimal) bytes over the range, and its bytes per day.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, Type)]
#[zvariant(signature = "a{sv}")]
#[serde(default)]
pub struct UsageEntry {
    #[serde(with = "lenient", skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(with = "lenient", skip_serializing_if = "Option::is_none")]
    pub down_internet: Option<u64>,
    #[serde(with = "lenient", skip_serializing_if = "Option::is_none")]
    pub up_internet: Option<u64>,
    #[serde(with = "lenient", skip_serializing_if = "Option::is_none")]
    pub down_local: Option<u64>,
    #[serde(with = "lenient", skip_serializing_if = "Option::is_none")]
    pub up_local: Option<u64>,
    /// Where each day starts (unix seconds, local midnight), oldest first.
    #[serde(with = "lenient", skip_serializing_if = "Option::is_none")]
    pub day_starts: Option<Vec<i64>>,
    /// Bytes (both directions, both scopes) of each day in `day_starts`.
    #[serde(with = "lenient", skip_serializing_if = "Option::is_none")]
    pub day_bytes: Option<Vec<u64>>,
}
