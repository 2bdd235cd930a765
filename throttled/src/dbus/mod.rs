//! The D-Bus API on the system bus: `org.chadthrottle.Manager` at
//! `/org/chadthrottle` (with ObjectManager), one `org.chadthrottle.Throttle`
//! object per throttle, and the manager's events as signals. A thin layer:
//! it translates and authorizes; the manager does the work.
pub mod args;
pub mod errors;
pub mod polkit;
pub mod service;
pub mod throttle;

use std::{sync::Arc, time::Duration};

use zbus::{
    fdo::{DBusProxy, ObjectManager, RequestNameFlags},
    names::BusName,
    object_server::SignalEmitter,
    zvariant::ObjectPath,
    Connection,
};

use self::{
    service::{direction_name, health_parts, ManagerIface, ManagerIfaceSignals, MANAGER_PATH},
    throttle::ThrottleIface,
};
use crate::manager::{Event, Manager, Notice, RemovalReason, ThrottleId, ThrottleInfo};

pub const BUS_NAME: &str = "org.chadthrottle";

/// The API on one bus connection. Dropping it stops its signals.
pub struct Served {
    pub conn: Connection,
    signals: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.signals.abort();
    }
}

const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Keeps the API on the bus for as long as the daemon runs: when the
/// connection drops (dbus-daemon restarted), it connects again, serves every
/// object again and re-claims the name. Throttles are untouched throughout.
pub async fn keep_serving(mgr: Arc<Manager>, mut served: Option<Served>) {
    let mut delay = RETRY_MIN;
    let mut told_taken = false;
    loop {
        if let Some(s) = served.take() {
            s.conn.closed().await;
            tracing::warn!("lost the system bus; reconnecting");
            delay = RETRY_MIN;
        }
        tokio::time::sleep(delay).await;
        match serve(mgr.clone()).await {
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
pub async fn serve(mgr: Arc<Manager>) -> zbus::Result<Served> {
    let mut events = mgr.subscribe(); // before listing, so nothing falls between
    let conn = zbus::connection::Builder::system()?
        .serve_at(MANAGER_PATH, ManagerIface { mgr: mgr.clone() })?
        .serve_at(MANAGER_PATH, ObjectManager)?
        .build()
        .await?;
    let ids = service::read(&mgr, |r| Ok(r.ids())).await.map_err(|e| zbus::Error::Failure(e.to_string()))?;
    for id in ids {
        add_throttle(&conn, &mgr, id, None).await?;
    }
    conn.request_name_with_flags(BUS_NAME, RequestNameFlags::DoNotQueue.into()).await?;
    let c = conn.clone();
    let signals = tokio::spawn(async move {
        while let Some(n) = events.recv().await {
            if let Err(e) = signal(&c, &mgr, n).await {
                tracing::warn!(error = %e, "could not emit a signal");
            }
        }
    });
    Ok(Served { conn, signals })
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
        None => service::read(mgr, move |r| r.summary(id)).await.ok(),
    };
    conn.object_server().at(args::throttle_path(id), ThrottleIface::new(mgr.clone(), id, info)).await
}

fn reason(r: RemovalReason) -> &'static str {
    match r {
        RemovalReason::Requested => "requested",
        RemovalReason::ProcessExited => "process-exited",
        RemovalReason::Reload => "reload",
    }
}

async fn signal(conn: &Connection, mgr: &Arc<Manager>, Notice { event: ev, info }: Notice) -> zbus::Result<()> {
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
            match conn.object_server().remove::<ThrottleIface, _>(args::throttle_path(id)).await {
                Ok(_) | Err(zbus::Error::InterfaceNotFound) => {}
                Err(e) => return Err(e),
            }
            emitter.throttle_removed(path(id)?, reason(r)).await
        }
        Event::ThrottleChanged { id } => throttle_changed(conn, id, info).await,
        Event::ThrottleMigrated { id, direction, from, to } => {
            emitter.throttle_migrated(path(id)?, direction_name(direction), from, to).await?;
            throttle_changed(conn, id, info).await
        }
        Event::DefaultChanged { direction, backend } => {
            let iface = conn.object_server().interface::<_, ManagerIface>(MANAGER_PATH).await?;
            let m = iface.get().await;
            m.default_upload_backend_changed(&emitter).await?;
            m.default_download_backend_changed(&emitter).await?;
            emitter.default_backend_changed(direction_name(direction), backend).await
        }
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
    let Ok(iface) = conn.object_server().interface::<_, ThrottleIface>(args::throttle_path(id)).await else {
        return Ok(());
    };
    if let Err(err) = iface.get().await.limits_changed(iface.signal_emitter(), info).await {
        tracing::debug!(throttle_id = id, error = %err, "property change not sent");
    }
    Ok(())
}
