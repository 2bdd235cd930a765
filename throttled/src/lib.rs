//! `chadthrottled`'s library: the kernel data path, the backends and the
//! throttle manager, usable without D-Bus (tests and benchmarks drive it; the `testing`
//! feature adds the methods only they use).
pub mod backend;
pub mod config;
pub mod dbus;
pub mod kernel;
pub mod limit;
pub mod logging;
pub mod manager;
pub mod metrics;
pub mod notify;
pub mod persist;
pub mod quota;
pub mod schedule;
pub mod target;
pub mod usage;

pub use throttle_common::rate::{Rate, RateError};
