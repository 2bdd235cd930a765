//! Synchronous, typed rtnetlink access for the traffic-control backends:
//! links, default routes, qdiscs, HTB classes and link/route events.
//!
//! Everything goes over NETLINK_ROUTE; nothing here runs `tc` or `ip`.
//! [`Netlink`] is one blocking socket (see `transport.rs`): each call sends
//! one request and reads its replies, so do not call it from inside an async
//! runtime (use `spawn_blocking`).
//!
//! Units: rates are bytes per second, bursts are bytes, tc handles and class
//! ids are `major << 16 | minor` as in the kernel (see [`tc_handle`]).
mod events;
mod htb;
mod links;
mod qdiscs;
mod transport;

use std::io;

pub use events::{LinkEvent, LinkEvents};
pub use htb::{ClassInfo, ClassStats, HtbClass};
pub use links::LinkInfo;
pub use qdiscs::QdiscInfo;
pub use transport::Netlink;

/// Parent of a device's root qdisc.
pub const TC_H_ROOT: u32 = 0xFFFF_FFFF;
/// Parent of the clsact (and ingress) qdisc.
pub const TC_H_CLSACT: u32 = 0xFFFF_FFF1;
/// Handle of the clsact qdisc, `ffff:`.
pub const CLSACT_HANDLE: u32 = 0xFFFF_0000;

/// `major:minor` as one tc handle.
pub const fn tc_handle(major: u16, minor: u16) -> u32 {
    (major as u32) << 16 | minor as u32
}

pub type Result<T> = std::result::Result<T, NetlinkError>;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The kernel refused `op`; `msg` has strerror and the kernel's own text.
    #[error("{op}: {msg}")]
    Kernel { op: &'static str, errno: i32, msg: String },
    #[error("not found: {0}")]
    NotFound(String),
    /// Rejected before reaching the kernel.
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("netlink: {0}")]
    Io(#[from] io::Error),
    /// Something that is not ours is in the way; we leave it alone.
    #[error("{0}")]
    Foreign(String),
}

impl NetlinkError {
    /// The errno behind the error (ENOENT for `NotFound`, EINVAL for `Invalid`).
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Kernel { errno, .. } => Some(*errno),
            Self::NotFound(_) => Some(libc::ENOENT),
            Self::Invalid(_) => Some(libc::EINVAL),
            Self::Io(e) => e.raw_os_error(),
            Self::Foreign(_) => Some(libc::EEXIST),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles() {
        assert_eq!(tc_handle(1, 0x10), 0x0001_0010);
        assert_eq!(tc_handle(0xc7, 0xffff), 0x00c7_ffff);
    }
}
