//! The manager's values as the API's dicts, names and paths (the
//! `throttle-api` types), for the Manager and Throttle interfaces.
use std::collections::HashMap;

use throttle_api::{BackendStatus, TopProcess};
use throttle_common::Direction;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};

use super::{
    args,
    errors::{Error, Result},
};
use crate::{
    backend::{Availability, Health},
    manager::{BackendInfo, ThrottleId, TopEntry},
};

pub fn path(id: ThrottleId) -> Result<OwnedObjectPath> {
    OwnedObjectPath::try_from(args::throttle_path(id)).map_err(|e| Error::Internal(e.to_string()))
}

pub fn dict<'a>(pairs: impl IntoIterator<Item = (&'a str, Value<'a>)>) -> Result<HashMap<String, OwnedValue>> {
    pairs
        .into_iter()
        .map(|(k, v)| OwnedValue::try_from(v).map(|v| (k.to_string(), v)).map_err(|e| Error::Internal(e.to_string())))
        .collect()
}

pub fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::Up => "up",
        Direction::Down => "down",
    }
}

pub fn health_parts(h: &Health) -> (&'static str, String) {
    match h {
        Health::Healthy => ("healthy", String::new()),
        Health::Idle => ("idle", String::new()),
        Health::Degraded(why) => ("degraded", why.clone()),
        Health::Broken(why) => ("broken", why.clone()),
    }
}

pub fn top_process(e: &TopEntry) -> TopProcess {
    let t = &e.traffic;
    TopProcess {
        pid: Some(t.pid),
        uid: Some(t.uid),
        name: Some(t.name.clone()),
        exe: Some(t.exe.clone()),
        down_rate: Some(t.down_rate),
        up_rate: Some(t.up_rate),
        down_total: Some(t.down_total),
        up_total: Some(t.up_total),
        throttled: Some(!e.throttles.is_empty()),
        throttle_ids: Some(e.throttles.clone()),
        backends: Some(e.backends.iter().map(|b| b.to_string()).collect()),
        down_limit: Some(e.down_limit),
        up_limit: Some(e.up_limit),
    }
}

/// A result dict as the `a{sv}` a property holds (zbus wants a `Value`):
/// the same bytes a method returning it sends.
pub fn as_dict<T: serde::Serialize + zbus::zvariant::Type>(t: &T) -> zbus::fdo::Result<HashMap<String, OwnedValue>> {
    let ctx = zbus::zvariant::serialized::Context::new_dbus(zbus::zvariant::LE, 0);
    let failed = |e: zbus::zvariant::Error| zbus::fdo::Error::Failed(e.to_string());
    zbus::zvariant::to_bytes(ctx, t).map_err(failed)?.deserialize().map(|(d, _)| d).map_err(failed)
}

pub fn backend_status(b: &BackendInfo) -> BackendStatus {
    let names = |d: &[Direction]| d.iter().map(|d| direction_name(*d).to_string()).collect::<Vec<_>>();
    let (available, reason) = match &b.availability {
        Availability::Available => (true, String::new()),
        Availability::Unavailable(r) => (false, r.clone()),
    };
    let (health, detail) = health_parts(&b.health);
    BackendStatus {
        name: Some(b.name.into()),
        directions: Some(names(&b.directions)),
        priority: Some(format!("{:?}", b.priority)),
        available: Some(available),
        reason: Some(reason),
        default_for: Some(names(&b.default_for)),
        active: Some(b.active as u32),
        pids: Some(b.pids.clone()),
        health: Some(health.into()),
        health_detail: Some(detail),
    }
}
