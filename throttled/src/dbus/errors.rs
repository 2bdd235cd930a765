//! Named D-Bus errors (`org.chadthrottle.Error.*`, defined in
//! `throttle-api`), each with a message a person understands, mapped from
//! the manager's typed errors.
pub use throttle_api::{Error, Result};

use crate::{backend::BackendError, manager::ManagerError};

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

/// A call's outcome as a metrics label: "ok", or the D-Bus error's name.
pub fn result_name<T>(r: &Result<T>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(e) => match e {
            Error::ZBus(_) => "org.freedesktop.zbus.Error",
            Error::NotAuthorized(_) => "org.chadthrottle.Error.NotAuthorized",
            Error::Busy(_) => "org.chadthrottle.Error.Busy",
            Error::InvalidArgument(_) => "org.chadthrottle.Error.InvalidArgument",
            Error::NoSuchProcess(_) => "org.chadthrottle.Error.NoSuchProcess",
            Error::NoSuchThrottle(_) => "org.chadthrottle.Error.NoSuchThrottle",
            Error::UnknownBackend(_) => "org.chadthrottle.Error.UnknownBackend",
            Error::BackendUnavailable(_) => "org.chadthrottle.Error.BackendUnavailable",
            Error::BackendFailed(_) => "org.chadthrottle.Error.BackendFailed",
            Error::QuotaExceeded(_) => "org.chadthrottle.Error.QuotaExceeded",
            Error::NotSupported(_) => "org.chadthrottle.Error.NotSupported",
            Error::Internal(_) => "org.chadthrottle.Error.Internal",
        },
    }
}
