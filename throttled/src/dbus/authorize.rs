//! What the D-Bus layer asks before it acts: whose traffic a caller may
//! see, and which polkit action a change needs (the manager decides which,
//! polkit whether). Also the two ways a call reaches the manager: off the
//! async threads, or right here for a quick read.
use std::sync::Arc;

use zbus::{message::Header, Connection};

use super::{
    errors::{Error, Result},
    polkit::{self, LIMIT_ANY, LIMIT_OWN, OBSERVE, OBSERVE_ALL},
};
use crate::manager::{Actor, Grant, Manager, ManagerError, Need, Ownership, Reader, Request, ThrottleInfo};

/// Runs a manager call off the async threads (it takes a mutex and may
/// talk to the kernel).
pub async fn blocking<T: Send + 'static>(
    mgr: &Arc<Manager>,
    f: impl FnOnce(&Manager) -> std::result::Result<T, ManagerError> + Send + 'static,
) -> Result<T> {
    let m = mgr.clone();
    tokio::task::spawn_blocking(move || f(&m)).await.map_err(|e| Error::Internal(e.to_string()))?.map_err(Error::from)
}

/// A read of the daemon's bookkeeping: right here when the core is free,
/// else off the async threads, behind whatever holds it.
pub async fn read<T: Send + 'static>(
    mgr: &Arc<Manager>,
    f: impl FnOnce(&mut Reader<'_>) -> std::result::Result<T, ManagerError> + Send + 'static,
) -> Result<T> {
    if let Some(mut r) = mgr.try_reader() {
        return f(&mut r).map_err(Error::from);
    }
    blocking(mgr, move |m| f(&mut m.reader())).await
}

/// Whose processes the monitor shows the caller: everyone's with
/// `observe-all`, otherwise only the caller's own.
pub async fn visible_owner(conn: &Connection, hdr: &Header<'_>) -> Result<Option<u32>> {
    polkit::authorize(conn, hdr, OBSERVE).await?;
    match polkit::allowed(conn, hdr, OBSERVE_ALL).await? {
        true => Ok(None),
        false => Ok(Some(polkit::caller_uid(conn, hdr).await?)),
    }
}

/// Whether the caller may see a throttle's traffic (its history, rates
/// and counters): with `observe-all`, any throttle's. Without it, only a
/// pid or tree throttle whose process, and every process it covers now,
/// are the caller's (a tree's child may have changed user). A name, exe,
/// cgroup or unit throttle can catch anyone's processes, so it needs
/// `observe-all` even while it covers only the caller's.
pub async fn authorize_traffic(
    mgr: &Arc<Manager>,
    conn: &Connection,
    hdr: &Header<'_>,
    info: &ThrottleInfo,
) -> Result<()> {
    polkit::authorize(conn, hdr, OBSERVE).await?;
    let me = polkit::caller_uid(conn, hdr).await?;
    let own = match info.target.root() {
        _ if me == 0 => true,
        Some(root) => {
            let pids: Vec<u32> = std::iter::once(root.pid).chain(info.covered.iter().copied()).collect();
            blocking(mgr, move |m| Ok(m.ownership(me, &pids))).await? == Ownership::Own
        }
        None => false,
    };
    if own || polkit::allowed(conn, hdr, OBSERVE_ALL).await? {
        return Ok(());
    }
    Err(Error::NotAuthorized(format!(
        "throttle {} covers other users' processes: seeing its traffic needs {OBSERVE_ALL}",
        info.id
    )))
}

/// Asks polkit for what the manager says `req` needs (`limit-own` or
/// `limit-any`, see `manager::policy`); returns the caller as authorized,
/// for the manager to check again under its lock.
pub async fn authorize_target(mgr: &Arc<Manager>, conn: &Connection, hdr: &Header<'_>, req: Request) -> Result<Actor> {
    let uid = polkit::caller_uid(conn, hdr).await?;
    if uid == 0 {
        return Ok(Actor::ROOT); // root may do anything: no need to look
    }
    match read(mgr, move |r| r.need(uid, &req)).await? {
        Need::Own => polkit::authorize(conn, hdr, LIMIT_OWN).await.map(|()| Actor { uid, grant: Grant::Own }),
        Need::Any(why) => match polkit::authorize(conn, hdr, LIMIT_ANY).await {
            Ok(()) => Ok(Actor { uid, grant: Grant::Any }),
            Err(Error::NotAuthorized(msg)) => Err(Error::NotAuthorized(format!("{msg} ({why})"))),
            Err(e) => Err(e),
        },
    }
}
