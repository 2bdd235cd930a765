//! What the daemon learned about its callers (their uids, and polkit's
//! recent yes answers), valid only on the bus connection it was learned
//! on. A unique name such as `:1.4` is never reused on one bus, but a new
//! bus (dbus-daemon restarted) hands the same names out again, ours
//! included: so every entry belongs to one connection, everything goes when
//! the daemon connects again, and a caller's entries go when the bus says
//! its name is gone (as systemd's bus-polkit does).
use std::{
    collections::HashMap,
    sync::{LazyLock, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use zbus::Connection;

/// How long a yes from polkit stands for the same caller and action
/// (polkit's own temporary authorizations last minutes; this only spares
/// polkitd a burst of identical questions).
pub const GRANT_TTL: Duration = Duration::from_secs(5);
/// Entries kept per kind before the oldest answers are dropped.
const MAX_ENTRIES: usize = 4096;

/// One bus connection: the bus's id (dbus-daemon makes a new random one
/// each time it starts) and our unique name on it.
#[derive(Clone, PartialEq, Eq, Debug)]
struct BusId(String, String);

impl BusId {
    fn of(conn: &Connection) -> BusId {
        let ours = conn.unique_name().map(|n| n.to_string()).unwrap_or_default();
        BusId(conn.server_guid().to_string(), ours)
    }
}

#[derive(Default)]
struct Callers {
    /// The connection the entries belong to; `None` before the first.
    bus: Option<BusId>,
    uids: HashMap<String, u32>,
    /// (caller, action) → when polkit said yes.
    grants: HashMap<(String, String), Instant>,
}

static CALLERS: LazyLock<Mutex<Callers>> = LazyLock::new(Mutex::default);

/// The table, if `conn` is the connection it belongs to.
fn on(conn: &Connection) -> Option<MutexGuard<'static, Callers>> {
    let id = BusId::of(conn);
    let c = CALLERS.lock().unwrap_or_else(|p| p.into_inner());
    (c.bus.as_ref() == Some(&id)).then_some(c)
}

/// A new connection to the bus: forget everything learned on the old one.
pub fn connected(conn: &Connection) {
    let mut c = CALLERS.lock().unwrap_or_else(|p| p.into_inner());
    *c = Callers { bus: Some(BusId::of(conn)), ..Callers::default() };
}

pub fn uid(conn: &Connection, sender: &str) -> Option<u32> {
    on(conn)?.uids.get(sender).copied()
}

pub fn remember_uid(conn: &Connection, sender: &str, uid: u32) {
    if let Some(mut c) = on(conn) {
        if c.uids.len() >= MAX_ENTRIES {
            c.uids.clear();
        }
        c.uids.insert(sender.to_string(), uid);
    }
}

/// Whether polkit said yes to `sender` for `action` less than
/// [`GRANT_TTL`] ago, on this connection.
pub fn granted(conn: &Connection, sender: &str, action: &str) -> bool {
    let Some(c) = on(conn) else { return false };
    c.grants.get(&(sender.to_string(), action.to_string())).is_some_and(|at| at.elapsed() < GRANT_TTL)
}

pub fn remember_grant(conn: &Connection, sender: &str, action: &str) {
    if let Some(mut c) = on(conn) {
        if c.grants.len() >= MAX_ENTRIES {
            c.grants.retain(|_, at| at.elapsed() < GRANT_TTL);
            if c.grants.len() >= MAX_ENTRIES {
                c.grants.clear();
            }
        }
        c.grants.insert((sender.to_string(), action.to_string()), Instant::now());
    }
}

/// `name` left the bus `conn` is on: nothing learned about it stands.
pub fn gone(conn: &Connection, name: &str) {
    if let Some(mut c) = on(conn) {
        c.uids.remove(name);
        c.grants.retain(|(who, _), _| who != name);
    }
}

/// Drops callers' entries as their names leave the bus, until the
/// connection closes. Subscribed before the connection serves anyone
/// (see `serve`), so no name can leave unseen.
pub async fn watch(
    conn: Connection,
    on_gone: impl Fn(&str) + Send + 'static,
) -> zbus::Result<impl std::future::Future<Output = ()>> {
    let dbus = zbus::fdo::DBusProxy::new(&conn).await?;
    let mut changes = dbus.receive_name_owner_changed().await?;
    Ok(async move {
        while let Some(change) = changes.next().await {
            let Ok(args) = change.args() else { continue };
            if args.new_owner().is_none() && args.name().as_str().starts_with(':') {
                gone(&conn, args.name().as_str());
                on_gone(args.name().as_str());
            }
        }
    })
}
