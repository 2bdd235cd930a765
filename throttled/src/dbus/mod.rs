//! The D-Bus API on the system bus: `org.chadthrottle.Manager` at
//! `/org/chadthrottle` (with ObjectManager), one `org.chadthrottle.Throttle`
//! object per throttle, and the manager's events as signals. A thin layer:
//! it translates and authorizes; the manager does the work.
pub mod args;
pub mod authorize;
pub mod callers;
pub mod convert;
pub mod errors;
pub mod gate;
pub mod objects;
pub mod polkit;
pub mod service;
pub mod strict;
pub mod throttle;
pub mod usage;

use std::{sync::Arc, time::Duration};

use zbus::{
    fdo::{DBusProxy, RequestNameFlags},
    names::BusName,
    object_server::SignalEmitter,
    zvariant::ObjectPath,
    Connection,
};

use self::{
    convert::{direction_name, health_parts},
    service::{ManagerIface, ManagerIfaceSignals},
    strict::Strict,
    throttle::ThrottleIface,
};
use crate::{
    manager::{Event, Manager, Notice, Protected, ThrottleId, ThrottleInfo},
    metrics::CallStats,
};

pub use throttle_api::{BUS_NAME, MANAGER_PATH};

/// The API on one bus connection. Dropping it stops its signals.
pub struct Served {
    pub conn: Connection,
    signals: tokio::task::JoinHandle<()>,
    /// Forgets callers as their names leave the bus.
    _names: Task,
    /// Follows the bus's and polkitd's pids, which are never limited.
    _guards: Task,
}

/// A task that ends with its owner (also when `serve` fails half-way).
struct Task(tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.signals.abort();
    }
}

const POLKIT: &str = "org.freedesktop.PolicyKit1";

/// The bus's own process and polkitd, as the bus names them (never by
/// process name): no throttle may limit them.
async fn protect_from_bus(dbus: &zbus::fdo::DBusProxy<'_>, mgr: &Arc<Manager>, polkit_only: bool) {
    let pid = |name: &'static str| async move {
        dbus.get_connection_unix_process_id(zbus::names::BusName::from_static_str(name).ok()?).await.ok()
    };
    let mut roles = vec![(Protected::Polkit, pid(POLKIT).await)];
    if !polkit_only {
        roles.push((Protected::Bus, pid("org.freedesktop.DBus").await));
    }
    let _ = authorize::blocking(mgr, move |m| {
        roles.into_iter().for_each(|(role, pid)| m.protect(role, pid));
        Ok(())
    })
    .await;
}

/// Protects the bus and polkitd now, then follows polkitd's restarts.
async fn guard_control_path(conn: &Connection, mgr: &Arc<Manager>) -> zbus::Result<tokio::task::JoinHandle<()>> {
    let dbus = zbus::fdo::DBusProxy::new(conn).await?;
    let mut owners = dbus.receive_name_owner_changed_with_args(&[(0, POLKIT)]).await?;
    protect_from_bus(&dbus, mgr, false).await;
    let mgr = mgr.clone();
    Ok(tokio::spawn(async move {
        use futures_util::StreamExt;
        while owners.next().await.is_some() {
            protect_from_bus(&dbus, &mgr, true).await;
        }
    }))
}

const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// What the API serves besides the manager.
#[derive(Clone, Default)]
pub struct Context {
    /// Each call's count, result and latency, for the metrics.
    pub calls: CallStats,
    /// The usage history (`None` when it is off).
    pub usage: Option<Arc<crate::usage::Recorder>>,
}

/// Keeps the API on the bus for as long as the daemon runs: when the
/// connection drops (dbus-daemon restarted), it connects again, serves every
/// object again and re-claims the name. Throttles are untouched throughout.
pub async fn keep_serving(mgr: Arc<Manager>, cx: Context, mut served: Option<Served>) {
    let mut delay = RETRY_MIN;
    let mut told_taken = false;
    loop {
        if let Some(s) = served.take() {
            s.conn.closed().await;
            tracing::warn!("lost the system bus; reconnecting");
            delay = RETRY_MIN;
        }
        tokio::time::sleep(delay).await;
        match serve(mgr.clone(), cx.clone()).await {
            Ok(s) => {
                tracing::info!(name = BUS_NAME, "serving the D-Bus API");
                served = Some(s);
                told_taken = false;
            }
            Err(zbus::Error::NameTaken) => {
                // Never taken from its owner: served again once it is free.
                if !std::mem::replace(&mut told_taken, true) {
                    tracing::warn!(name = BUS_NAME, "another process owns the name on the bus; not taking it");
                }
                delay = (delay * 2).min(RETRY_MAX);
            }
            Err(e) => {
                tracing::debug!(error = %e, "the system bus is not back yet");
                delay = (delay * 2).min(RETRY_MAX);
            }
        }
    }
}

/// A message may be as big as the bus allows (tens of MB). Oversized
/// arguments are refused at once, but malloc would keep such buffers in its
/// heap for good (its mmap threshold grows with them): allocations of
/// 1 MiB and more are mmapped, so they go back to the kernel when freed.
fn return_big_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // SAFETY: mallopt only tunes the allocator; any value is valid.
        ONCE.call_once(|| unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        });
    }
}

/// Who owns the name on the system bus, if anyone: `Err` when there is no
/// bus to ask. Asked before the daemon builds anything, so that a second
/// daemon goes away without touching the first one's kernel objects.
pub async fn name_owner() -> zbus::Result<Option<String>> {
    let conn = zbus::connection::Builder::system()?.build().await?;
    let bus = DBusProxy::new(&conn).await?;
    let name = BusName::try_from(BUS_NAME)?;
    if !bus.name_has_owner(name.clone()).await? {
        return Ok(None);
    }
    let owner = match bus.get_name_owner(name.clone()).await {
        Ok(o) => o.to_string(),
        Err(_) => return Ok(Some("a process that just left".into())),
    };
    Ok(Some(match bus.get_connection_unix_process_id(name).await {
        Ok(pid) => format!("pid {pid} ({owner})"),
        Err(_) => owner,
    }))
}

/// Serves every object, then owns the name (so no client sees a half-served
/// daemon), then turns events into signals until the connection drops. The
/// name is never taken from an owner, nor given up to a later claimant:
/// `zbus::Error::NameTaken` when someone else has it.
pub async fn serve(mgr: Arc<Manager>, cx: Context) -> zbus::Result<Served> {
    return_big_buffers();
    let mut events = mgr.subscribe(); // before listing, so nothing falls between
    let conn = zbus::connection::Builder::system()?
        .serve_at(MANAGER_PATH, Strict::new(ManagerIface::new(mgr.clone(), cx)))?
        .serve_at(MANAGER_PATH, objects::Objects { mgr: mgr.clone() })?
        .build()
        .await?;
    // A new bus reuses unique names: nothing learned on the old one stands.
    callers::connected(&conn);
    // Held throttles belonged to connections on the old bus: all gone now.
    release(&mgr, None).await;
    let m = mgr.clone();
    let on_gone = move |name: &str| drop(tokio::spawn(release(&m, Some(name.to_string()))));
    let names = Task(tokio::spawn(callers::watch(conn.clone(), on_gone).await?));
    let ids = authorize::read(&mgr, |r| Ok(r.ids())).await.map_err(|e| zbus::Error::Failure(e.to_string()))?;
    for id in ids {
        add_throttle(&conn, &mgr, id, None).await?;
    }
    let guards = Task(guard_control_path(&conn, &mgr).await?);
    conn.request_name_with_flags(BUS_NAME, RequestNameFlags::DoNotQueue.into()).await?;
    let c = conn.clone();
    let signals = tokio::spawn(async move {
        while let Some(n) = events.recv().await {
            if let Err(e) = signal(&c, &mgr, n).await {
                tracing::warn!(error = %e, "could not emit a signal");
            }
        }
    });
    Ok(Served { conn, signals, _names: names, _guards: guards })
}

/// Ends the throttles `holder` held (`None`: every held throttle).
pub(crate) fn release(
    mgr: &Arc<Manager>,
    holder: Option<String>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let m = mgr.clone();
    async move {
        let _ = tokio::task::spawn_blocking(move || m.release_held(holder.as_deref())).await;
    }
}

/// Serves a throttle's object, its properties read once for InterfacesAdded
/// (or taken from `info`).
pub(crate) async fn add_throttle(
    conn: &Connection,
    mgr: &Arc<Manager>,
    id: ThrottleId,
    info: Option<ThrottleInfo>,
) -> zbus::Result<bool> {
    let info = match info {
        Some(i) => Some(i),
        None => authorize::read(mgr, move |r| r.summary(id)).await.ok(),
    };
    let iface = Strict::new(ThrottleIface::new(mgr.clone(), id, info));
    conn.object_server().at(args::throttle_path(id), iface).await
}

/// How long events are gathered before `Backends` is re-read and, if it
/// changed, announced: under a burst of calls one signal, not one per event
/// (a signal per event outran what the bus took under load).
const BACKENDS_COALESCE: Duration = Duration::from_millis(250);

/// The event's own signal, then, soon, `Backends` if the event changed it
/// (a backend's throttles, health or default role).
async fn signal(conn: &Connection, mgr: &Arc<Manager>, notice: Notice) -> zbus::Result<()> {
    event_signal(conn, mgr, notice).await?;
    let iface = conn.object_server().interface::<_, Strict<ManagerIface>>(MANAGER_PATH).await?;
    let schedule = iface.get().await.schedule_backends();
    if schedule {
        tokio::spawn(async move {
            tokio::time::sleep(BACKENDS_COALESCE).await;
            let sent = iface.get().await.announce_backends(iface.signal_emitter()).await;
            if let Err(e) = sent {
                tracing::debug!(error = %e, "Backends change not sent");
            }
        });
    }
    Ok(())
}

async fn event_signal(conn: &Connection, mgr: &Arc<Manager>, Notice { event: ev, info }: Notice) -> zbus::Result<()> {
    let emitter = SignalEmitter::new(conn, MANAGER_PATH)?;
    let path = |id| ObjectPath::try_from(args::throttle_path(id)).map(|p| p.into_owned());
    match ev {
        Event::ThrottleAdded { id } => {
            // Usually served already by the Limit call that made it.
            if info.is_some() {
                add_throttle(conn, mgr, id, info).await?;
            }
            emitter.throttle_added(path(id)?).await
        }
        Event::ThrottleRemoved { id, reason: r } => {
            // Already gone if a Limit call took it down itself.
            match conn.object_server().remove::<Strict<ThrottleIface>, _>(args::throttle_path(id)).await {
                Ok(_) | Err(zbus::Error::InterfaceNotFound) => {}
                Err(e) => return Err(e),
            }
            emitter.throttle_removed(path(id)?, r.as_str()).await
        }
        Event::ThrottleChanged { id } => throttle_changed(conn, id, info).await,
        Event::ThrottleMigrated { id, direction, from, to } => {
            emitter.throttle_migrated(path(id)?, direction_name(direction), from, to).await?;
            throttle_changed(conn, id, info).await
        }
        Event::DefaultChanged { direction, backend } => {
            let iface = conn.object_server().interface::<_, Strict<ManagerIface>>(MANAGER_PATH).await?;
            let m = iface.get().await;
            m.default_upload_backend_changed(&emitter).await?;
            m.default_download_backend_changed(&emitter).await?;
            emitter.default_backend_changed(direction_name(direction), backend).await
        }
        // The properties change with it: ThrottleChanged follows.
        Event::QuotaExceeded { id } => emitter.quota_exceeded(path(id)?).await,
        Event::ScheduleChanged { id, active } => emitter.schedule_changed(path(id)?, active).await,
        Event::HealthChanged { component, health } => {
            let (h, detail) = health_parts(&health);
            emitter.backend_health_changed(component, h, &detail).await
        }
    }
}

/// Limits or backends changed: tell watchers of the throttle's properties.
/// The throttle may be gone by now (its process exited): then there is
/// nothing left to tell, and that is not an error.
async fn throttle_changed(conn: &Connection, id: ThrottleId, info: Option<ThrottleInfo>) -> zbus::Result<()> {
    let Ok(iface) = conn.object_server().interface::<_, Strict<ThrottleIface>>(args::throttle_path(id)).await else {
        return Ok(());
    };
    if let Err(err) = iface.get().await.limits_changed(iface.signal_emitter(), info).await {
        tracing::debug!(throttle_id = id, error = %err, "property change not sent");
    }
    Ok(())
}
