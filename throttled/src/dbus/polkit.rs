//! Authorization: every mutating call asks polkit about the caller's bus
//! name (never about our own pid) before any state changes. Root is always
//! allowed; without polkit, only root is.
use std::{
    collections::HashMap,
    sync::{LazyLock, Mutex},
};

use zbus::{
    message::{Flags, Header},
    zvariant::Value,
    Connection,
};

use super::errors::{Error, Result};

pub const OBSERVE: &str = "org.chadthrottle.observe";
/// Other users' processes in the monitor (their traffic, like their
/// /proc/PID/io, is theirs to see).
pub const OBSERVE_ALL: &str = "org.chadthrottle.observe-all";
pub const LIMIT_OWN: &str = "org.chadthrottle.limit-own";
pub const LIMIT_ANY: &str = "org.chadthrottle.limit-any";
pub const CONFIGURE: &str = "org.chadthrottle.configure";
/// Every action the daemon asks about (a test checks the .policy has each).
pub const ACTIONS: [&str; 5] = [OBSERVE, OBSERVE_ALL, LIMIT_OWN, LIMIT_ANY, CONFIGURE];

const ALLOW_USER_INTERACTION: u32 = 1;

#[zbus::proxy(
    interface = "org.freedesktop.PolicyKit1.Authority",
    default_service = "org.freedesktop.PolicyKit1",
    default_path = "/org/freedesktop/PolicyKit1/Authority"
)]
trait Authority {
    #[allow(clippy::type_complexity)]
    fn check_authorization(
        &self,
        subject: &(&str, HashMap<&str, Value<'_>>),
        action_id: &str,
        details: HashMap<&str, &str>,
        flags: u32,
        cancellation_id: &str,
    ) -> zbus::Result<(bool, bool, HashMap<String, String>)>;
}

/// Callers' uids by (our unique name, theirs). A unique name is never
/// reused on a bus and a connection's uid never changes, so an answer stays
/// true; our own name changes with every bus (re)connection.
type UidCache = HashMap<(String, String), u32>;
static UIDS: LazyLock<Mutex<UidCache>> = LazyLock::new(Mutex::default);
const UID_CACHE_MAX: usize = 4096;

/// The caller's uid, from the bus (not from anything the caller says).
pub async fn caller_uid(conn: &Connection, hdr: &Header<'_>) -> Result<u32> {
    let sender = hdr.sender().ok_or_else(|| Error::NotAuthorized("the call has no sender".into()))?;
    let key = (conn.unique_name().map(|n| n.to_string()).unwrap_or_default(), sender.to_string());
    let uids = || UIDS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(uid) = uids().get(&key) {
        return Ok(*uid);
    }
    let dbus = zbus::fdo::DBusProxy::new(conn).await?;
    let uid = dbus.get_connection_unix_user(sender.clone().into()).await?;
    let mut cache = uids();
    if cache.len() >= UID_CACHE_MAX {
        cache.clear();
    }
    cache.insert(key, uid);
    Ok(uid)
}

/// Ok if the caller may perform `action`; it may ask the caller to
/// authenticate if the call allows interactive authorization.
pub async fn authorize(conn: &Connection, hdr: &Header<'_>, action: &str) -> Result<()> {
    let interactive = hdr.primary().flags().contains(Flags::AllowInteractiveAuth);
    check(conn, hdr, action, interactive).await
}

/// Whether the caller may perform `action`, never asking for a password:
/// for what only widens a reply.
pub async fn allowed(conn: &Connection, hdr: &Header<'_>, action: &str) -> Result<bool> {
    match check(conn, hdr, action, false).await {
        Ok(()) => Ok(true),
        Err(Error::NotAuthorized(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

async fn check(conn: &Connection, hdr: &Header<'_>, action: &str, interactive: bool) -> Result<()> {
    if caller_uid(conn, hdr).await? == 0 {
        return Ok(());
    }
    let sender = hdr.sender().map(|s| s.to_string()).unwrap_or_default();
    let dbus = zbus::fdo::DBusProxy::new(conn).await?;
    let polkit_name = zbus::names::BusName::try_from("org.freedesktop.PolicyKit1").map_err(zbus::Error::from)?;
    if !dbus.name_has_owner(polkit_name).await? {
        return Err(Error::NotAuthorized(format!("{action}: polkit is unavailable, so only root is allowed")));
    }
    let subject = ("system-bus-name", HashMap::from([("name", Value::from(sender.as_str()))]));
    let flags = if interactive { ALLOW_USER_INTERACTION } else { 0 };
    let authority = AuthorityProxy::new(conn).await?;
    let (ok, challenge, _) = authority
        .check_authorization(&subject, action, HashMap::new(), flags, "")
        .await
        .map_err(|e| Error::NotAuthorized(format!("{action}: polkit failed: {e}")))?;
    match (ok, challenge) {
        (true, _) => Ok(()),
        (false, true) if interactive => Err(Error::NotAuthorized(format!(
            "{action} needs authentication, and no polkit authentication agent answered"
        ))),
        (false, true) => Err(Error::NotAuthorized(format!(
            "{action} needs authentication; call again allowing interactive authorization"
        ))),
        (false, false) => Err(Error::NotAuthorized(format!("not authorized for {action}"))),
    }
}
