//! The D-Bus contract of chadthrottled, written once: the daemon serves it,
//! `throttlectl` and the load tools call it. Names and paths, the named
//! errors, the `a{sv}` option keys and result dicts, and the proxies.
//! `dbus/*.xml` stays generated from the live daemon (tests/dbus.rs).
pub mod dicts;
pub mod error;
pub mod options;
pub mod proxy;

pub use dicts::{BackendStatus, Stats, TopProcess, UsageEntry};
pub use error::{Error, Result};
pub use options::LimitOptions;
pub use proxy::{ManagerProxy, ThrottleProxy};

/// The daemon's well-known name on the system bus.
pub const BUS_NAME: &str = "org.chadthrottle";
/// The manager object (with ObjectManager).
pub const MANAGER_PATH: &str = "/org/chadthrottle";
/// Throttle objects live under this path, one per id.
pub const THROTTLES_PATH: &str = "/org/chadthrottle/throttles";
pub const MANAGER_INTERFACE: &str = "org.chadthrottle.Manager";
pub const THROTTLE_INTERFACE: &str = "org.chadthrottle.Throttle";
/// Every named error is `ERROR_PREFIX.<Name>` (see [`Error`]).
pub const ERROR_PREFIX: &str = "org.chadthrottle.Error";

/// The object path of throttle `id`.
pub fn throttle_path(id: u32) -> String {
    format!("{THROTTLES_PATH}/{id}")
}

/// The id in a throttle's object path; `None` for any other path.
pub fn throttle_id(path: &str) -> Option<u32> {
    path.strip_prefix(THROTTLES_PATH)?.strip_prefix('/')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_paths_round_trip() {
        assert_eq!(throttle_path(17), "/org/chadthrottle/throttles/17");
        assert_eq!(throttle_id(&throttle_path(17)), Some(17));
        for bad in ["/org/chadthrottle/throttles/x", "/org/chadthrottle", "/org/chadthrottle/throttles17", ""] {
            assert_eq!(throttle_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn names_are_valid_on_the_bus() {
        use zbus::names::{InterfaceName, WellKnownName};
        use zbus::zvariant::ObjectPath;
        assert!(WellKnownName::try_from(BUS_NAME).is_ok());
        assert!(ObjectPath::try_from(MANAGER_PATH).is_ok());
        assert!(ObjectPath::try_from(throttle_path(u32::MAX)).is_ok());
        assert!(InterfaceName::try_from(MANAGER_INTERFACE).is_ok());
        assert!(InterfaceName::try_from(THROTTLE_INTERFACE).is_ok());
        assert!(THROTTLES_PATH.starts_with(MANAGER_PATH) && MANAGER_INTERFACE.starts_with(BUS_NAME));
    }
}
