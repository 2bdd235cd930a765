//! Authorization: every mutating call asks polkit about the caller's bus
//! name (never about our own pid) before any state changes. Root is always
//! allowed; without polkit, only root is, except for `observe` (reading
//! limits and one's own traffic), which the shipped policy gives everyone. What is learned about a caller
//! is kept per connection (`callers`), and each uid gets only a few
//! questions at polkitd at a time (`gate`).
use std::{collections::HashMap, time::Duration};

use zbus::{
    message::{Flags, Header},
    zvariant::Value,
    Connection,
};

use super::{
    callers,
    errors::{Error, Result},
    gate,
};

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

/// The caller's uid, from the bus (not from anything the caller says),
/// remembered for this connection only (see `callers`).
pub async fn caller_uid(conn: &Connection, hdr: &Header<'_>) -> Result<u32> {
    let sender = hdr.sender().ok_or_else(|| Error::NotAuthorized("the call has no sender".into()))?;
    if let Some(uid) = callers::uid(conn, sender) {
        return Ok(uid);
    }
    let dbus = zbus::fdo::DBusProxy::new(conn).await?;
    let uid = dbus.get_connection_unix_user(sender.clone().into()).await?;
    callers::remember_uid(conn, sender, uid);
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
    let uid = caller_uid(conn, hdr).await?;
    if uid == 0 {
        return Ok(());
    }
    let sender = hdr.sender().map(|s| s.to_string()).unwrap_or_default();
    if callers::granted(conn, &sender, action) {
        return Ok(());
    }
    let _turn = gate::enter(uid).await?;
    if callers::granted(conn, &sender, action) {
        return Ok(()); // answered while this call waited for its turn
    }
    let dbus = zbus::fdo::DBusProxy::new(conn).await?;
    let polkit_name = zbus::names::BusName::try_from("org.freedesktop.PolicyKit1").map_err(zbus::Error::from)?;
    if !dbus.name_has_owner(polkit_name).await? {
        // Reading one's own (`observe`, which every user has by the shipped
        // policy) needs no polkitd, as NetworkManager's reads do not.
        if action == OBSERVE {
            return Ok(());
        }
        return Err(Error::NotAuthorized(format!("{action}: polkit is unavailable, so only root is allowed")));
    }
    let subject = ("system-bus-name", HashMap::from([("name", Value::from(sender.as_str()))]));
    let flags = if interactive { ALLOW_USER_INTERACTION } else { 0 };
    let authority = AuthorityProxy::new(conn).await?;
    let ask = authority.check_authorization(&subject, action, HashMap::new(), flags, "");
    // An agent may take its time over a password; polkitd itself may not.
    let limit = if interactive { INTERACTIVE_TIMEOUT } else { POLKIT_TIMEOUT };
    let (ok, challenge, _) = match tokio::time::timeout(limit, ask).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) if resource_error(&e) => return Err(Error::Busy(format!("{action}: polkit is overloaded: {e}"))),
        Ok(Err(e)) => return Err(Error::NotAuthorized(format!("{action}: polkit failed: {e}"))),
        Err(_) => return Err(Error::Busy(format!("{action}: polkit did not answer within {}s", limit.as_secs()))),
    };
    match (ok, challenge) {
        (true, _) => {
            callers::remember_grant(conn, &sender, action);
            Ok(())
        }
        (false, true) if interactive => Err(Error::NotAuthorized(format!(
            "{action} needs authentication, and no polkit authentication agent answered"
        ))),
        (false, true) => Err(Error::NotAuthorized(format!(
            "{action} needs authentication; call again allowing interactive authorization"
        ))),
        (false, false) => Err(Error::NotAuthorized(format!("not authorized for {action}"))),
    }
}

const POLKIT_TIMEOUT: Duration = Duration::from_secs(20);
const INTERACTIVE_TIMEOUT: Duration = Duration::from_secs(120);

/// polkit (or the bus) could not answer for lack of resources: not a no.
fn resource_error(e: &zbus::Error) -> bool {
    let zbus::Error::MethodError(name, _, _) = e else { return false };
    matches!(
        name.as_str(),
        "org.freedesktop.DBus.Error.LimitsExceeded"
            | "org.freedesktop.DBus.Error.NoMemory"
            | "org.freedesktop.DBus.Error.NoReply"
            | "org.freedesktop.DBus.Error.Timeout"
            | "org.freedesktop.DBus.Error.TimedOut"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn method_error(name: &str) -> zbus::Error {
        let msg = zbus::message::Message::method_call("/", "Ping").unwrap().build(&()).unwrap();
        zbus::Error::MethodError(zbus::names::OwnedErrorName::try_from(name).unwrap(), None, msg)
    }

    #[test]
    fn resource_errors_are_busy_not_refusals() {
        assert!(resource_error(&method_error("org.freedesktop.DBus.Error.LimitsExceeded")));
        assert!(resource_error(&method_error("org.freedesktop.DBus.Error.NoReply")));
        // Anything else from polkit fails closed (NotAuthorized).
        assert!(!resource_error(&method_error("org.freedesktop.PolicyKit1.Error.Failed")));
        assert!(!resource_error(&method_error("org.freedesktop.DBus.Error.AccessDenied")));
        assert!(!resource_error(&zbus::Error::InvalidReply));
    }
}
