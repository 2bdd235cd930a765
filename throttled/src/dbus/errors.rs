//! Named D-Bus errors (`org.chadthrottle.Error.*`), each with a message a
//! person understands, mapped from the manager's typed errors.
use crate::{backend::BackendError, manager::ManagerError};

#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.chadthrottle.Error")]
pub enum Error {
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
    /// Something the daemon could not do for a reason not listed above.
    Internal(String),
}

impl From<ManagerError> for Error {
    fn from(e: ManagerError) -> Self {
        let msg = e.to_string();
        match e {
            ManagerError::InvalidArgument(_) | ManagerError::Config(_) => Error::InvalidArgument(msg),
            ManagerError::NoSuchProcess(_) => Error::NoSuchProcess(msg),
            ManagerError::NoSuchThrottle(_) => Error::NoSuchThrottle(msg),
            ManagerError::NotPermitted(_) => Error::NotAuthorized(msg),
            ManagerError::QuotaExceeded { .. } => Error::QuotaExceeded(msg),
            ManagerError::UnknownBackend(_) => Error::UnknownBackend(msg),
            ManagerError::NoBackend(_) | ManagerError::SlotsExhausted => Error::BackendUnavailable(msg),
            ManagerError::Backend(b) => match b {
                BackendError::Unavailable { .. } | BackendError::WrongDirection { .. } => {
                    Error::BackendUnavailable(msg)
                }
                _ => Error::BackendFailed(msg),
            },
            ManagerError::Bpf(_) | ManagerError::Netlink(_) => Error::BackendFailed(msg),
            ManagerError::ProcMonitor(_) | ManagerError::State(_) | ManagerError::Io(_) => Error::Internal(msg),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

impl From<zbus::fdo::Error> for Error {
    fn from(e: zbus::fdo::Error) -> Self {
        Error::ZBus(e.into())
    }
}
