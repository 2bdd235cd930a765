//! `chadthrottled`'s library: the kernel data path, the backends and the
//! throttle manager, usable without D-Bus (tests and benchmarks drive it).
pub mod backend;
pub mod config;
pub mod dbus;
pub mod kernel;
pub mod logging;
pub mod manager;
pub mod metrics;
pub mod notify;
pub mod state;
pub mod statefs;
pub mod target;
pub mod testing;

pub use throttle_common::rate::{Rate, RateError};
