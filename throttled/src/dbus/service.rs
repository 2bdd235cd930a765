//! `org.chadthrottle.Manager` at `/org/chadthrottle`: translates calls,
//! authorizes them with polkit before anything changes, and hands them to
//! the manager. No logic of its own.
use std::{collections::HashMap, future::Future, sync::Arc, time::Instant};

use throttle_api::{BackendStatus, Stats, TopProcess, UsageEntry};
use throttle_common::Direction;
use zbus::{
    interface,
    message::Header,
    object_server::SignalEmitter,
    zvariant::{ObjectPath, OwnedObjectPath, OwnedValue},
    Connection,
};

use super::{
    args,
    authorize::{authorize_target, authorize_traffic, blocking, read, visible_owner},
    convert::{as_dict, backend_status, health_parts, path, top_process},
    errors::{self, Error, Result},
    polkit::{self, CONFIGURE, OBSERVE, OBSERVE_ALL},
    throttle::ThrottleIface,
    usage, Context,
};
use crate::{
    manager::{
        traffic::{Scope, SortBy},
        Manager, Ownership, Request, ThrottleId, ThrottleInfo,
    },
    metrics::CallStats,
};

pub struct ManagerIface {
    pub mgr: Arc<Manager>,
    /// Each method's count, result and latency, for the metrics.
    pub calls: CallStats,
    /// The usage history (`None` when it is off).
    pub usage: Option<Arc<crate::usage::Recorder>>,
    /// `Backends` as clients last heard it: a change is signalled once.
    told_backends: std::sync::Mutex<Vec<BackendStatus>>,
    /// An announcement of `Backends` is scheduled (see `backends_maybe_changed`).
    backends_pending: std::sync::atomic::AtomicBool,
}

/// Times one call into `calls`, labelled by method and result (never by
/// anything the caller chose).
async fn timed<T>(calls: &CallStats, method: &'static str, call: impl Future<Output = Result<T>>) -> Result<T> {
    let start = Instant::now();
    let r = call.await;
    calls.observe(method, errors::result_name(&r), start.elapsed());
    r
}

impl ManagerIface {
    pub fn new(mgr: Arc<Manager>, cx: Context) -> Self {
        let (calls, usage) = (cx.calls, cx.usage);
        ManagerIface { mgr, calls, usage, told_backends: Default::default(), backends_pending: Default::default() }
    }

    /// With the health the last check found: read after every event, so
    /// it never asks the kernel (ListBackends does).
    /// Without `pids`: they change with every process that comes or goes,
    /// and a property re-sent on each would flood applets (ListBackends has
    /// them).
    async fn backends_known(&self) -> Result<Vec<BackendStatus>> {
        let infos = read(&self.mgr, |r| Ok(r.backends_known())).await?;
        Ok(infos.iter().map(|b| BackendStatus { pids: None, ..backend_status(b) }).collect())
    }

    /// Whether this call should schedule an announcement: false while one is
    /// already pending, so a burst of events sends at most one signal.
    pub fn schedule_backends(&self) -> bool {
        !self.backends_pending.swap(true, std::sync::atomic::Ordering::AcqRel)
    }

    /// After an event that may have changed a backend (its throttles, its
    /// health, the defaults): PropertiesChanged for `Backends`,
    /// only if it differs from what clients last heard.
    pub async fn announce_backends(&self, emitter: &SignalEmitter<'_>) -> zbus::Result<()> {
        // Events after this point schedule the next announcement.
        self.backends_pending.store(false, std::sync::atomic::Ordering::Release);
        let now = self.backends_known().await.map_err(|e| zbus::Error::Failure(e.to_string()))?;
        {
            let mut told = self.told_backends.lock().unwrap_or_else(|p| p.into_inner());
            if *told == now {
                return Ok(());
            }
            *told = now;
        }
        self.backends_changed(emitter).await
    }

    /// A client may use the returned path at once: serve the object now
    /// rather than when the event queue gets to it, and take it down again
    /// if the throttle went meanwhile (its process exited).
    async fn serve_now(&self, conn: &Connection, id: ThrottleId, info: Option<ThrottleInfo>) -> Result<()> {
        if super::add_throttle(conn, &self.mgr, id, info).await? && !read(&self.mgr, move |r| Ok(r.exists(id))).await? {
            let _ =
                conn.object_server().remove::<super::strict::Strict<ThrottleIface>, _>(args::throttle_path(id)).await;
        }
        Ok(())
    }
}

#[interface(name = "org.chadthrottle.Manager")]
impl ManagerIface {
    /// Limits a target; returns the throttle's object path. A target that
    /// already has a throttle changes in place (same path). Options: down,
    /// up (t bytes/s, or s such as "1M"), backend, up_backend, down_backend
    /// (s), hold (b: the throttle ends when this caller's connection does,
    /// and is never saved; only for a target without a throttle), block
    /// (b: block the target's traffic outright, without rates or backends:
    /// new connections fail with EPERM, running ones stop; loopback stays
    /// exempt; a block is lifted by Remove, never loosened by a new Limit).
    async fn limit(
        &self,
        kind: &str,
        target: &str,
        options: args::Options<'_>,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath> {
        timed(&self.calls, "Limit", async move {
            let (target, (spec, hold)) = (args::target(kind, target)?, args::limit_options(&options)?);
            let actor = authorize_target(&self.mgr, conn, &hdr, Request::Limit(target.clone(), spec.clone())).await?;
            // A held throttle is the caller's connection's: its unique name.
            let holder = hold.then(|| hdr.sender().map(|s| s.to_string())).flatten();
            let held = holder.clone();
            let limit = move |m: &Manager| {
                match &held {
                    Some(h) => m.limit_held(actor, target, &spec, h),
                    None => m.limit_as(actor, target, &spec),
                }
                .map(|id| (id, m.summary(id).ok()))
            };
            let (id, info) = blocking(&self.mgr, limit).await?;
            // A holder that left before its throttle existed was not seen
            // leaving by the name watch: end its throttle now.
            if let Some(h) = holder {
                let name = zbus::names::BusName::try_from(h.as_str()).map_err(zbus::Error::from)?;
                if !zbus::fdo::DBusProxy::new(conn).await?.name_has_owner(name).await? {
                    super::release(&self.mgr, Some(h)).await;
                }
            }
            self.serve_now(conn, id, info).await?;
            path(id)
        })
        .await
    }

    /// Removes a throttle.
    async fn remove(
        &self,
        throttle: ObjectPath<'_>,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<()> {
        timed(&self.calls, "Remove", async move {
            args::bounded(&[throttle.as_str()])?;
            let id = args::throttle_id(throttle.as_str())?;
            let actor = authorize_target(&self.mgr, conn, &hdr, Request::Remove(id)).await?;
            blocking(&self.mgr, move |m| m.remove_as(actor, id)).await
        })
        .await
    }

    /// Object paths of every throttle.
    async fn list_throttles(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<OwnedObjectPath>> {
        timed(&self.calls, "ListThrottles", async move {
            polkit::authorize(conn, &hdr, OBSERVE).await?;
            let ids = read(&self.mgr, |r| Ok(r.ids())).await?;
            ids.into_iter().map(path).collect()
        })
        .await
    }

    /// Every backend: name, directions, priority, available, reason,
    /// default_for, active, pids, health, health_detail.
    async fn list_backends(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<BackendStatus>> {
        timed(&self.calls, "ListBackends", async move {
            polkit::authorize(conn, &hdr, OBSERVE).await?;
            let infos = blocking(&self.mgr, |m| Ok(m.backends())).await?;
            Ok(infos.iter().map(backend_status).collect())
        })
        .await
    }

    /// Sets the backend for new throttles in a direction ("up" or "down").
    async fn set_default_backend(
        &self,
        direction: &str,
        backend: String,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<()> {
        timed(&self.calls, "SetDefaultBackend", async move {
            args::bounded(&[direction, &backend])?;
            let dir = args::direction(direction)?
                .ok_or_else(|| Error::InvalidArgument("direction must be up or down".into()))?;
            polkit::authorize(conn, &hdr, CONFIGURE).await?;
            blocking(&self.mgr, move |m| m.set_default(dir, &backend)).await
        })
        .await
    }

    /// Moves a throttle (one direction, or both with "") to a backend.
    async fn migrate(
        &self,
        throttle: ObjectPath<'_>,
        direction: &str,
        backend: String,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<()> {
        timed(&self.calls, "Migrate", async move {
            args::bounded(&[throttle.as_str(), direction, &backend])?;
            let (id, dir) = (args::throttle_id(throttle.as_str())?, args::direction(direction)?);
            polkit::authorize(conn, &hdr, CONFIGURE).await?;
            blocking(&self.mgr, move |m| m.migrate(id, dir, &backend)).await
        })
        .await
    }

    /// Moves every throttle of one backend to another; returns how many moved.
    async fn migrate_backend(
        &self,
        from: String,
        to: String,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<u32> {
        timed(&self.calls, "MigrateBackend", async move {
            args::bounded(&[&from, &to])?;
            polkit::authorize(conn, &hdr, CONFIGURE).await?;
            Ok(blocking(&self.mgr, move |m| m.migrate_backend(&from, &to)).await? as u32)
        })
        .await
    }

    /// Daemon-wide numbers: throttles, processes (kernel map entries),
    /// status, and state / state_detail: whether the throttles can be saved
    /// for the next start ("broken" while the disk refuses; they still apply);
    /// slots and slots_used: the kernel's throttle slots (one per limited
    /// direction) and those taken; per_user_throttles: how many throttles
    /// each user but root may have made (config limits.per_user).
    async fn get_stats(&self, #[zbus(header)] hdr: Header<'_>, #[zbus(connection)] conn: &Connection) -> Result<Stats> {
        timed(&self.calls, "GetStats", async move {
            polkit::authorize(conn, &hdr, OBSERVE).await?;
            let s = read(&self.mgr, |r| Ok(r.stats())).await?;
            let (state, detail) = health_parts(&s.state);
            Ok(Stats {
                throttles: Some(s.throttles as u32),
                processes: Some(s.processes as u32),
                status: Some(s.status),
                state: Some(state.into()),
                state_detail: Some(detail),
                slots: Some(s.slots as u32),
                slots_used: Some(s.slots_used as u32),
                per_user_throttles: Some(s.per_user),
            })
        })
        .await
    }

    /// The busiest processes, throttled or not, busiest first: every
    /// user's with org.chadthrottle.observe-all, otherwise the caller's own.
    /// `sort`: down, up or total; `scope`: all, internet or local (loopback
    /// and link-local). Each: pid, uid, name, exe, down_rate, up_rate
    /// (bytes/s over the monitor's window), down_total, up_total (bytes),
    /// throttled, throttle_ids, backends, down_limit, up_limit (bytes/s, 0 =
    /// none).
    async fn get_top_processes(
        &self,
        count: u32,
        sort: &str,
        scope: &str,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<TopProcess>> {
        timed(&self.calls, "GetTopProcesses", async move {
            args::bounded(&[sort, scope])?;
            let sort: SortBy = sort.parse().map_err(Error::InvalidArgument)?;
            let scope: Scope = scope.parse().map_err(Error::InvalidArgument)?;
            let owner = visible_owner(conn, &hdr).await?;
            let count = count.min(MAX_TOP) as usize;
            let top = blocking(&self.mgr, move |m| Ok(m.top(count, sort, scope, owner))).await?;
            Ok(top.iter().map(top_process).collect())
        })
        .await
    }

    /// Bytes per name, exe, unit or user (`by`: name, exe, unit, user)
    /// over [since, until) (unix seconds; until 0 = now), most first, from
    /// the usage history (written once a flush interval). Each: key,
    /// down_internet, up_internet, down_local, up_local (bytes), day_starts
    /// (local midnights) and day_bytes. Every user's traffic with
    /// org.chadthrottle.observe-all, otherwise the caller's own.
    async fn get_usage(
        &self,
        by: &str,
        since: i64,
        until: i64,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<UsageEntry>> {
        timed(&self.calls, "GetUsage", async move {
            args::bounded(&[by])?;
            let owner = visible_owner(conn, &hdr).await?;
            let q = usage::query(by, since, until, owner)?;
            let _turn = usage::Turn::take(polkit::caller_uid(conn, &hdr).await?)?;
            usage::report(self.usage.clone(), q).await
        })
        .await
    }

    /// (up, down) bytes/s, one entry per second, oldest first. `kind`:
    /// process (`id` is a pid; another user's needs observe-all) or
    /// throttle (`id` is a throttle id; without observe-all, only a pid or
    /// tree throttle on the caller's own processes).
    async fn get_history(
        &self,
        kind: &str,
        id: u32,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<(u64, u64)>> {
        timed(&self.calls, "GetHistory", async move {
            let process = match kind {
                "process" => true,
                "throttle" => false,
                _ => {
                    let kind = throttle_common::text::quote(kind);
                    return Err(Error::InvalidArgument(format!("unknown history kind {kind} (process or throttle)")));
                }
            };
            if !process {
                let info = read(&self.mgr, move |r| r.summary(id)).await?;
                authorize_traffic(&self.mgr, conn, &hdr, &info).await?;
                return read(&self.mgr, move |r| r.throttle_history(id)).await;
            }
            if let Some(me) = visible_owner(conn, &hdr).await? {
                if blocking(&self.mgr, move |m| Ok(m.ownership(me, &[id]))).await? == Ownership::Other {
                    return Err(Error::NotAuthorized(format!(
                        "pid {id} belongs to another user: seeing its traffic needs {OBSERVE_ALL}"
                    )));
                }
            }
            blocking(&self.mgr, move |m| m.process_history(id)).await
        })
        .await
    }

    /// Re-reads the config and rules; on error nothing changes.
    async fn reload(&self, #[zbus(header)] hdr: Header<'_>, #[zbus(connection)] conn: &Connection) -> Result<()> {
        timed(&self.calls, "Reload", async move {
            polkit::authorize(conn, &hdr, CONFIGURE).await?;
            blocking(&self.mgr, |m| m.reload()).await
        })
        .await
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").into()
    }

    /// Target kinds and abilities this daemon has: "block" (the `block`
    /// option), and "block-connect" where a block also makes new
    /// connections fail at once (the kernel took the connect programs).
    #[zbus(property(emits_changed_signal = "const"))]
    async fn features(&self) -> Vec<String> {
        let mut f: Vec<String> = [
            "target-pid",
            "target-tree",
            "target-name",
            "target-exe",
            "target-cgroup",
            "target-unit",
            "migrate",
            "reload",
            "monitor",
            "block",
        ]
        .map(String::from)
        .to_vec();
        if read(&self.mgr, |r| Ok(r.connect_guard())).await.unwrap_or(false) {
            f.push("block-connect".into());
        }
        f
    }

    /// (down, up) bytes per second of the user's link (or just below it),
    /// which throttles on ebpf share by priority when it is contended; 0:
    /// not set. Setting it needs org.chadthrottle.configure, and is saved.
    #[zbus(property)]
    async fn link_capacity(&self) -> (u64, u64) {
        let link = read(&self.mgr, |r| Ok(r.link_capacity())).await.unwrap_or_default();
        let bytes = |r: Option<crate::Rate>| r.map_or(0, |r| r.bytes_per_sec());
        (bytes(link.down), bytes(link.up))
    }

    #[zbus(property)]
    async fn set_link_capacity(
        &self,
        value: (u64, u64),
        #[zbus(header)] hdr: Option<Header<'_>>,
        #[zbus(connection)] conn: &Connection,
    ) -> zbus::fdo::Result<()> {
        let rate = |b: u64| match b {
            0 => Ok(None),
            b => crate::Rate::from_bytes(b).map(Some).map_err(|e| zbus::fdo::Error::InvalidArgs(e.to_string())),
        };
        let link = crate::config::LinkCapacity { down: rate(value.0)?, up: rate(value.1)? };
        let hdr = hdr.ok_or_else(|| zbus::fdo::Error::AccessDenied("no caller to authorize".into()))?;
        polkit::authorize(conn, &hdr, CONFIGURE).await.map_err(|e| zbus::fdo::Error::AccessDenied(e.to_string()))?;
        blocking(&self.mgr, move |m| {
            m.set_link_capacity(link);
            Ok(())
        })
        .await
        .map_err(|e| zbus::fdo::Error::Failed(e.to_string()))
    }

    /// Whether every process's traffic is counted (config `monitor.enabled`).
    #[zbus(property(emits_changed_signal = "const"))]
    async fn monitor_enabled(&self) -> bool {
        read(&self.mgr, |r| Ok(r.monitoring())).await.unwrap_or(false)
    }

    /// What `ListBackends` returns but the pids, as a property an applet can bind:
    /// PropertiesChanged when a backend's throttles, health or default role
    /// change.
    #[zbus(property)]
    async fn backends(&self) -> zbus::fdo::Result<Vec<HashMap<String, OwnedValue>>> {
        let now = self.backends_known().await.map_err(|e| zbus::fdo::Error::Failed(e.to_string()))?;
        now.iter().map(as_dict).collect()
    }

    #[zbus(property)]
    async fn default_upload_backend(&self) -> String {
        default_backend(&self.mgr, Direction::Up).await
    }

    #[zbus(property)]
    async fn default_download_backend(&self) -> String {
        default_backend(&self.mgr, Direction::Down).await
    }

    #[zbus(signal)]
    pub async fn throttle_added(emitter: &SignalEmitter<'_>, throttle: ObjectPath<'_>) -> zbus::Result<()>;

    /// `reason`: requested, process-exited, reload, or released (the client
    /// that held it with `hold` left the bus).
    #[zbus(signal)]
    pub async fn throttle_removed(
        emitter: &SignalEmitter<'_>,
        throttle: ObjectPath<'_>,
        reason: &str,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    pub async fn default_backend_changed(
        emitter: &SignalEmitter<'_>,
        direction: &str,
        backend: &str,
    ) -> zbus::Result<()>;

    /// `health`: healthy, idle, degraded (intact but unable to act, e.g. an
    /// interface is down) or broken, with the reason in `detail`.
    #[zbus(signal)]
    pub async fn backend_health_changed(
        emitter: &SignalEmitter<'_>,
        backend: &str,
        health: &str,
        detail: &str,
    ) -> zbus::Result<()>;

    /// A throttle's quota is used up: its QuotaThen applies until QuotaResetsAt.
    #[zbus(signal)]
    pub async fn quota_exceeded(emitter: &SignalEmitter<'_>, throttle: ObjectPath<'_>) -> zbus::Result<()>;

    /// A throttle's schedule window opened (`active`) or closed.
    #[zbus(signal)]
    pub async fn schedule_changed(
        emitter: &SignalEmitter<'_>,
        throttle: ObjectPath<'_>,
        active: bool,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    pub async fn throttle_migrated(
        emitter: &SignalEmitter<'_>,
        throttle: ObjectPath<'_>,
        direction: &str,
        from: &str,
        to: &str,
    ) -> zbus::Result<()>;
}

async fn default_backend(mgr: &Arc<Manager>, dir: Direction) -> String {
    read(mgr, move |r| r.default_backend(dir)).await.map(String::from).unwrap_or_default()
}

/// Longest answer GetTopProcesses gives.
const MAX_TOP: u32 = 1000;
