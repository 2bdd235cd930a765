//! `org.chadthrottle.Throttle`, one object per throttle under
//! `/org/chadthrottle/throttles/<id>`. Properties come from the manager's
//! bookkeeping, never from the kernel: serving an object (InterfacesAdded
//! reads every property) must not wait. Counters and rates are pull-only.
use std::{
    borrow::Cow,
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use throttle_common::Direction;
use zbus::{
    interface, message::Header, object_server::SignalEmitter, zvariant::OwnedValue, zvariant::Value, Connection,
};

use super::{
    args,
    authorize::{authorize_target, authorize_traffic, blocking, read},
    convert::dict,
    errors::{Error, Result},
};
use crate::{
    backend::mark,
    limit::BLOCK_BACKEND,
    manager::{DirectionStats, Manager, Origin, PlanInfo, Request, ThrottleId, ThrottleInfo},
};

pub struct ThrottleIface {
    pub mgr: Arc<Manager>,
    pub id: ThrottleId,
    /// The last summary read: one GetAll (or InterfacesAdded) reads a dozen
    /// properties, and each would otherwise queue for the core's lock.
    cached: Mutex<Option<(Instant, ThrottleInfo)>>,
    /// The limit properties as clients last heard them (InterfacesAdded or
    /// PropertiesChanged): a change signals only what differs.
    told: Mutex<Vec<(&'static str, OwnedValue)>>,
}

/// Pull-only properties may be this stale; changed limits and backends
/// drop the cache before their PropertiesChanged goes out.
const CACHE_TTL: Duration = Duration::from_millis(200);

impl ThrottleIface {
    /// `info`: the throttle as the caller just read it, if it did.
    pub fn new(mgr: Arc<Manager>, id: ThrottleId, info: Option<ThrottleInfo>) -> Self {
        let told = Mutex::new(info.as_ref().map(limit_props).unwrap_or_default());
        let cached = Mutex::new(info.map(|i| (Instant::now(), i)));
        ThrottleIface { mgr, id, cached, told }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Option<(Instant, ThrottleInfo)>> {
        self.cached.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Limits, backends or status changed: one PropertiesChanged with the
    /// values that differ from what clients last heard (none: no signal),
    /// from `info` (the throttle just after the change) if given.
    pub async fn limits_changed(&self, emitter: &SignalEmitter<'_>, info: Option<ThrottleInfo>) -> zbus::Result<()> {
        *self.cache() = info.map(|i| (Instant::now(), i));
        let now = limit_props(&self.info().await.map_err(|e| zbus::Error::Failure(e.to_string()))?);
        let changed: HashMap<&str, Value<'_>> = {
            let mut told = self.told.lock().unwrap_or_else(|p| p.into_inner());
            let fresh = now.iter().filter(|(k, v)| !told.iter().any(|(tk, tv)| tk == k && tv == v));
            let changed = fresh.filter_map(|(k, v)| Some((*k, Value::from(v.try_clone().ok()?)))).collect();
            *told = now;
            changed
        };
        if changed.is_empty() {
            return Ok(());
        }
        let name = <Self as zbus::object_server::Interface>::name();
        zbus::fdo::Properties::properties_changed(emitter, name, changed, Cow::Borrowed(&[])).await
    }

    /// Without counters: every property but Counters.
    async fn info(&self) -> Result<ThrottleInfo> {
        if let Some((_, info)) = self.cache().as_ref().filter(|(at, _)| at.elapsed() < CACHE_TTL) {
            return Ok(info.clone());
        }
        let id = self.id;
        let info = read(&self.mgr, move |r| r.summary(id)).await?;
        *self.cache() = Some((Instant::now(), info.clone()));
        Ok(info)
    }

    async fn current(&self, d: Direction) -> zbus::fdo::Result<u64> {
        Ok(self.info().await.map_err(fdo)?.directions.get(&d).map_or(0, |s| s.current))
    }

    async fn accuracy(&self, d: Direction) -> zbus::fdo::Result<f64> {
        Ok(self.info().await.map_err(fdo)?.directions.get(&d).and_then(|s| s.accuracy).unwrap_or(0.0))
    }

    async fn status_parts(&self) -> zbus::fdo::Result<(&'static str, String)> {
        Ok(status_of(&self.info().await.map_err(fdo)?))
    }

    async fn direction(&self, d: Direction) -> zbus::fdo::Result<(u64, String)> {
        Ok(direction_of(&self.info().await.map_err(fdo)?, d))
    }

    /// One of the properties `limit_props` computes, by name.
    async fn prop<T: TryFrom<OwnedValue>>(&self, name: &str) -> zbus::fdo::Result<T> {
        let props = limit_props(&self.info().await.map_err(fdo)?);
        let v = props.into_iter().find(|(k, _)| *k == name).map(|(_, v)| v);
        v.and_then(|v| T::try_from(v).ok()).ok_or_else(|| zbus::fdo::Error::Failed(format!("no property {name}")))
    }
}

impl ThrottleIface {
    /// Rates, accuracy and counters are the covered processes' traffic:
    /// shown only to a caller allowed to see it (`authorize_traffic`), so
    /// never in InterfacesAdded or GetManagedObjects, which have no caller
    /// to ask about (GetAll leaves them out for callers lacking the right).
    async fn may_see_traffic(&self, conn: &Connection, hdr: Option<&Header<'_>>) -> zbus::fdo::Result<()> {
        let Some(hdr) = hdr else {
            return Err(zbus::fdo::Error::AccessDenied("traffic is shown only to callers: use Get or GetAll".into()));
        };
        let info = self.info().await.map_err(fdo)?;
        authorize_traffic(&self.mgr, conn, hdr, &info).await.map_err(|e| match e {
            Error::NotAuthorized(m) => zbus::fdo::Error::AccessDenied(m),
            Error::Busy(m) => zbus::fdo::Error::LimitsExceeded(m),
            e => fdo(e),
        })
    }
}

/// The properties a change of limits, backends or status touches, as
/// clients see them.
fn limit_props(info: &ThrottleInfo) -> Vec<(&'static str, OwnedValue)> {
    let ((down, down_backend), (up, up_backend)) =
        (direction_of(info, Direction::Down), direction_of(info, Direction::Up));
    let (status, detail) = status_of(info);
    let props = [
        ("DownLimit", Value::from(down)),
        ("UpLimit", Value::from(up)),
        ("DownBackend", Value::from(down_backend)),
        ("UpBackend", Value::from(up_backend)),
        ("Status", Value::from(status)),
        ("StatusDetail", Value::from(detail)),
        ("Blocked", Value::from(mark::blocks(info))),
        ("QuotaExceeded", Value::from(info.plan.as_ref().is_some_and(|p| p.exceeded))),
        ("QuotaResetsAt", Value::from(info.plan.as_ref().map_or(0, |p| p.resets_at))),
        ("ScheduleActive", Value::from(info.plan.as_ref().is_none_or(|p| p.active))),
        ("Quota", Value::from(plan_text(info, |p| p.quota.map(|q| q.to_string())))),
        ("QuotaBytes", Value::from(info.plan.as_ref().and_then(|p| p.quota).map_or(0, |q| q.bytes))),
        ("QuotaThen", Value::from(plan_text(info, |p| p.then.map(|t| t.to_string())))),
        ("Schedule", Value::from(plan_text(info, |p| p.schedule.as_ref().map(|s| s.to_string())))),
        ("Otherwise", Value::from(info.plan.as_ref().and_then(|p| p.otherwise).map_or(0, |r| r.bytes_per_sec()))),
        ("Priority", Value::from(info.priority.name())),
    ];
    props.into_iter().filter_map(|(k, v)| Some((k, OwnedValue::try_from(v).ok()?))).collect()
}

/// A part of the plan as text, "" where there is none.
fn plan_text(info: &ThrottleInfo, part: impl Fn(&PlanInfo) -> Option<String>) -> String {
    info.plan.as_ref().and_then(part).unwrap_or_default()
}

/// A direction's limit (0: none, or blocked) and backend ("" for none).
fn direction_of(info: &ThrottleInfo, d: Direction) -> (u64, String) {
    // A block, or a priority alone (the largest rate), limits nothing to show.
    let limit = |s: &DirectionStats| if s.backend == BLOCK_BACKEND { 0 } else { crate::limit::shown(s.rate) };
    info.directions.get(&d).map_or((0, String::new()), |s| (limit(s), s.backend.to_string()))
}

fn status_of(info: &ThrottleInfo) -> (&'static str, String) {
    match &info.failed {
        None => ("active", String::new()),
        Some(why) => ("failed", why.clone()),
    }
}

fn fdo(e: Error) -> zbus::fdo::Error {
    zbus::fdo::Error::Failed(format!("{e:?}"))
}

#[interface(name = "org.chadthrottle.Throttle")]
impl ThrottleIface {
    /// Removes this throttle.
    async fn remove(&self, #[zbus(header)] hdr: Header<'_>, #[zbus(connection)] conn: &Connection) -> Result<()> {
        let id = self.id;
        let actor = authorize_target(&self.mgr, conn, &hdr, Request::Remove(id)).await?;
        blocking(&self.mgr, move |m| m.remove_as(actor, id)).await
    }

    /// Changes limits in place (the same options as Manager.Limit, and
    /// the same validation: at least one limit, nothing ignored).
    async fn set_limits(
        &self,
        options: args::Options<'_>,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<()> {
        let (spec, id) = (args::limits(&options)?, self.id);
        let actor = authorize_target(&self.mgr, conn, &hdr, Request::Change(id, spec.clone())).await?;
        blocking(&self.mgr, move |m| m.change_as(actor, id, &spec)).await
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn id(&self) -> u32 {
        self.id
    }

    /// pid, tree, name, exe, cgroup or unit.
    #[zbus(property(emits_changed_signal = "const"))]
    async fn kind(&self) -> zbus::fdo::Result<String> {
        Ok(self.info().await.map_err(fdo)?.target.parts().0.into())
    }

    #[zbus(property(emits_changed_signal = "const"))]
    async fn target(&self) -> zbus::fdo::Result<String> {
        Ok(self.info().await.map_err(fdo)?.target.parts().1)
    }

    /// "runtime", "held" (it ends with the client that made it with
    /// `hold`), or the rules file it came from.
    #[zbus(property(emits_changed_signal = "const"))]
    async fn origin(&self) -> zbus::fdo::Result<String> {
        Ok(match self.info().await.map_err(fdo)?.origin {
            Origin::Runtime => "runtime".into(),
            Origin::Held(_) => "held".into(),
            Origin::Rule(p) => p.display().to_string(),
        })
    }

    /// Whether this throttle blocks its processes' traffic outright (its
    /// limits then read 0 and its backends "block").
    #[zbus(property)]
    async fn blocked(&self) -> zbus::fdo::Result<bool> {
        Ok(mark::blocks(&self.info().await.map_err(fdo)?))
    }

    /// Bytes per second at the IP layer; 0 means unlimited (or blocked).
    #[zbus(property)]
    async fn down_limit(&self) -> zbus::fdo::Result<u64> {
        Ok(self.direction(Direction::Down).await?.0)
    }

    #[zbus(property)]
    async fn up_limit(&self) -> zbus::fdo::Result<u64> {
        Ok(self.direction(Direction::Up).await?.0)
    }

    /// The backend holding the download limit ("" if none).
    #[zbus(property)]
    async fn down_backend(&self) -> zbus::fdo::Result<String> {
        Ok(self.direction(Direction::Down).await?.1)
    }

    #[zbus(property)]
    async fn up_backend(&self) -> zbus::fdo::Result<String> {
        Ok(self.direction(Direction::Up).await?.1)
    }

    /// Bytes per second passed for download over the last 5 s (pull-only:
    /// read it when you need it; no PropertiesChanged). Like the accuracy
    /// and Counters, only for a caller who may see the traffic: one with
    /// org.chadthrottle.observe-all, or the owner of a pid or tree
    /// throttle's processes (AccessDenied otherwise, and GetAll leaves it out).
    #[zbus(property(emits_changed_signal = "false"))]
    async fn down_rate(
        &self,
        #[zbus(header)] hdr: Option<Header<'_>>,
        #[zbus(connection)] conn: &Connection,
    ) -> zbus::fdo::Result<u64> {
        self.may_see_traffic(conn, hdr.as_ref()).await?;
        self.current(Direction::Down).await
    }

    /// As DownRate, for upload.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn up_rate(
        &self,
        #[zbus(header)] hdr: Option<Header<'_>>,
        #[zbus(connection)] conn: &Connection,
    ) -> zbus::fdo::Result<u64> {
        self.may_see_traffic(conn, hdr.as_ref()).await?;
        self.current(Direction::Up).await
    }

    /// Achieved download rate over the limit, averaged over the seconds in
    /// which the limit was binding (drops, or at least 90% of the limit),
    /// across the monitor's history; 0 until it has bound. Pull-only.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn down_accuracy(
        &self,
        #[zbus(header)] hdr: Option<Header<'_>>,
        #[zbus(connection)] conn: &Connection,
    ) -> zbus::fdo::Result<f64> {
        self.may_see_traffic(conn, hdr.as_ref()).await?;
        self.accuracy(Direction::Down).await
    }

    /// As DownAccuracy, for upload.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn up_accuracy(
        &self,
        #[zbus(header)] hdr: Option<Header<'_>>,
        #[zbus(connection)] conn: &Connection,
    ) -> zbus::fdo::Result<f64> {
        self.may_see_traffic(conn, hdr.as_ref()).await?;
        self.accuracy(Direction::Up).await
    }

    /// Processes this throttle limits now. Never init, the daemon, the
    /// bus or polkitd: those are in Excluded.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn pids(&self) -> zbus::fdo::Result<Vec<u32>> {
        Ok(self.info().await.map_err(fdo)?.covered)
    }

    /// The caps over this throttle's processes (`user` and `all`
    /// throttles): their packets pass these too. Changes as processes come
    /// and go, so it is pull-only, like Pids.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn caps(&self) -> zbus::fdo::Result<Vec<zbus::zvariant::OwnedObjectPath>> {
        let caps = self.info().await.map_err(fdo)?.caps;
        Ok(caps
            .into_iter()
            .filter_map(|id| zbus::zvariant::OwnedObjectPath::try_from(throttle_api::throttle_path(id)).ok())
            .collect())
    }

    /// Processes the target matches that are never limited: init, the
    /// daemon itself, the system bus (dbus-daemon) and polkitd.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn excluded(&self) -> zbus::fdo::Result<Vec<u32>> {
        Ok(self.info().await.map_err(fdo)?.excluded)
    }

    /// "active", or "failed": a saved throttle that cannot be applied now
    /// (no free slot, no usable backend). It stays saved and is retried
    /// when slots free up and on reload.
    #[zbus(property)]
    async fn status(&self) -> zbus::fdo::Result<String> {
        Ok(self.status_parts().await?.0.into())
    }

    /// Why the throttle failed ("" while active).
    #[zbus(property)]
    async fn status_detail(&self) -> zbus::fdo::Result<String> {
        Ok(self.status_parts().await?.1)
    }

    /// The data cap, as "5G/month" ("" without one).
    #[zbus(property)]
    async fn quota(&self) -> zbus::fdo::Result<String> {
        self.prop("Quota").await
    }

    /// Bytes per period (0 without a quota).
    #[zbus(property)]
    async fn quota_bytes(&self) -> zbus::fdo::Result<u64> {
        self.prop("QuotaBytes").await
    }

    /// Bytes used this period, both directions at the IP layer (pull-only,
    /// and only for a caller who may see the traffic, like Counters).
    #[zbus(property(emits_changed_signal = "false"))]
    async fn quota_used(
        &self,
        #[zbus(header)] hdr: Option<Header<'_>>,
        #[zbus(connection)] conn: &Connection,
    ) -> zbus::fdo::Result<u64> {
        self.may_see_traffic(conn, hdr.as_ref()).await?;
        Ok(self.info().await.map_err(fdo)?.plan.map_or(0, |p| p.used))
    }

    /// Unix time the quota's period resets (0 without a quota).
    #[zbus(property)]
    async fn quota_resets_at(&self) -> zbus::fdo::Result<i64> {
        self.prop("QuotaResetsAt").await
    }

    /// The quota is used up: `QuotaThen` applies until the reset.
    #[zbus(property)]
    async fn quota_exceeded(&self) -> zbus::fdo::Result<bool> {
        self.prop("QuotaExceeded").await
    }

    /// What applies once the quota is used: a rate ("256K") or "block".
    #[zbus(property)]
    async fn quota_then(&self) -> zbus::fdo::Result<String> {
        self.prop("QuotaThen").await
    }

    /// The windows its limits apply in, local time ("" without a schedule).
    #[zbus(property)]
    async fn schedule(&self) -> zbus::fdo::Result<String> {
        self.prop("Schedule").await
    }

    /// Inside a window now (true without a schedule).
    #[zbus(property)]
    async fn schedule_active(&self) -> zbus::fdo::Result<bool> {
        self.prop("ScheduleActive").await
    }

    /// Bytes per second outside the windows (0: nothing applies there).
    #[zbus(property)]
    async fn otherwise(&self) -> zbus::fdo::Result<u64> {
        self.prop("Otherwise").await
    }

    /// Its share of a contended link: low, normal, high or critical
    /// (weights 1, 2, 4, 8; see the Manager's LinkCapacity).
    #[zbus(property)]
    async fn priority(&self) -> zbus::fdo::Result<String> {
        self.prop("Priority").await
    }

    /// Per direction: {down,up}_{bytes,packets,dropped_bytes,dropped_packets},
    /// as the once-a-second sample read them (pull-only, like the rates).
    #[zbus(property(emits_changed_signal = "false"))]
    async fn counters(
        &self,
        #[zbus(header)] hdr: Option<Header<'_>>,
        #[zbus(connection)] conn: &Connection,
    ) -> zbus::fdo::Result<HashMap<String, OwnedValue>> {
        self.may_see_traffic(conn, hdr.as_ref()).await?;
        let info = self.info().await.map_err(fdo)?;
        let mut pairs = Vec::new();
        for (d, s) in &info.directions {
            let p = super::convert::direction_name(*d);
            let c = &s.counters;
            pairs.extend([
                (format!("{p}_bytes"), c.pass_bytes),
                (format!("{p}_packets"), c.pass_pkts),
                (format!("{p}_dropped_bytes"), c.drop_bytes),
                (format!("{p}_dropped_packets"), c.drop_pkts),
            ]);
        }
        dict(pairs.iter().map(|(k, v)| (k.as_str(), Value::from(*v)))).map_err(fdo)
    }
}
