//! The named errors (`org.chadthrottle.Error.*`). The daemon replies with
//! them; a client turns a `zbus::Error` back into one with `Error::from`.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.chadthrottle.Error")]
pub enum Error {
    /// Anything that is not one of ours (a transport error, or another
    /// service's named error such as `org.freedesktop.DBus.Error.*`).
    #[zbus(error)]
    ZBus(zbus::Error),
    NotAuthorized(String),
    /// Not a refusal: the daemon (or polkit) has too much to do right now,
    /// e.g. too many checks in flight for this caller's user. Try again.
    Busy(String),
    InvalidArgument(String),
    NoSuchProcess(String),
    NoSuchThrottle(String),
    UnknownBackend(String),
    BackendUnavailable(String),
    BackendFailed(String),
    /// The caller already has their share of throttles (`limits.per_user`).
    QuotaExceeded(String),
    /// A feature this daemon has turned off (in its config) or cannot offer
    /// on this kernel, e.g. the usage history without the monitor.
    NotSupported(String),
    /// Something the daemon could not do for a reason not listed above.
    Internal(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl From<zbus::fdo::Error> for Error {
    fn from(e: zbus::fdo::Error) -> Self {
        Error::ZBus(e.into())
    }
}

#[cfg(test)]
mod tests {
    use zbus::DBusError;

    use super::*;

    fn reply(name: &str) -> zbus::Error {
        let msg = zbus::message::Message::method_call("/", "Ping").unwrap().build(&()).unwrap();
        let name = zbus::names::OwnedErrorName::try_from(name).unwrap();
        zbus::Error::MethodError(name, Some("why".into()), msg)
    }

    #[test]
    fn named_errors_round_trip() {
        for e in [
            Error::NotAuthorized("why".into()),
            Error::Busy("why".into()),
            Error::InvalidArgument("why".into()),
            Error::NoSuchProcess("why".into()),
            Error::NoSuchThrottle("why".into()),
            Error::UnknownBackend("why".into()),
            Error::BackendUnavailable("why".into()),
            Error::BackendFailed("why".into()),
            Error::QuotaExceeded("why".into()),
            Error::NotSupported("why".into()),
            Error::Internal("why".into()),
        ] {
            let name = e.name().to_string();
            assert!(name.starts_with(&format!("{}.", crate::ERROR_PREFIX)), "{name}");
            let back = Error::from(reply(&name));
            assert_eq!((back.name().to_string(), back.description()), (name, Some("why")));
        }
    }

    #[test]
    fn other_errors_stay_as_they_came() {
        let e = Error::from(reply("org.freedesktop.DBus.Error.InvalidArgs"));
        assert!(
            matches!(&e, Error::ZBus(zbus::Error::MethodError(n, ..)) if n.as_str() == "org.freedesktop.DBus.Error.InvalidArgs")
        );
    }
}
