//! Client proxies of `org.chadthrottle.Manager` and `org.chadthrottle.Throttle`.
//! Changes may wait for a polkit agent (`allow_interactive_auth`).
use std::collections::HashMap;

use zbus::zvariant::{ObjectPath, OwnedObjectPath, OwnedValue};

use crate::{BackendStatus, LimitOptions, Stats, TopProcess, UsageEntry};

#[zbus::proxy(
    interface = "org.chadthrottle.Manager",
    default_service = "org.chadthrottle",
    default_path = "/org/chadthrottle"
)]
pub trait Manager {
    /// kind: pid, tree, name, exe, cgroup or unit.
    #[zbus(allow_interactive_auth)]
    fn limit(&self, kind: &str, target: &str, options: &LimitOptions) -> zbus::Result<OwnedObjectPath>;
    #[zbus(allow_interactive_auth)]
    fn remove(&self, throttle: &ObjectPath<'_>) -> zbus::Result<()>;
    fn list_throttles(&self) -> zbus::Result<Vec<OwnedObjectPath>>;
    fn list_backends(&self) -> zbus::Result<Vec<BackendStatus>>;
    /// direction: up or down.
    #[zbus(allow_interactive_auth)]
    fn set_default_backend(&self, direction: &str, backend: &str) -> zbus::Result<()>;
    /// direction: up, down, or "" for both.
    #[zbus(allow_interactive_auth)]
    fn migrate(&self, throttle: &ObjectPath<'_>, direction: &str, backend: &str) -> zbus::Result<()>;
    #[zbus(allow_interactive_auth)]
    fn migrate_backend(&self, from: &str, to: &str) -> zbus::Result<u32>;
    fn get_stats(&self) -> zbus::Result<Stats>;
    /// sort: down, up or total; scope: all, internet or local.
    fn get_top_processes(&self, count: u32, sort: &str, scope: &str) -> zbus::Result<Vec<TopProcess>>;
    /// kind: process (id = pid) or throttle; (up, down) bytes/s, one a second, oldest first.
    fn get_history(&self, kind: &str, id: u32) -> zbus::Result<Vec<(u64, u64)>>;
    /// by: name, exe, unit or user; [since, until) in unix seconds (until 0 = now).
    fn get_usage(&self, by: &str, since: i64, until: i64) -> zbus::Result<Vec<UsageEntry>>;
    #[zbus(allow_interactive_auth)]
    fn reload(&self) -> zbus::Result<()>;

    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn features(&self) -> zbus::Result<Vec<String>>;
    #[zbus(property)]
    fn monitor_enabled(&self) -> zbus::Result<bool>;
    #[zbus(property)]
    fn default_upload_backend(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn default_download_backend(&self) -> zbus::Result<String>;
    /// (down, up) bytes per second that throttles share by priority; 0: not set.
    #[zbus(property)]
    fn link_capacity(&self) -> zbus::Result<(u64, u64)>;
    /// Needs org.chadthrottle.configure.
    #[zbus(property)]
    fn set_link_capacity(&self, value: (u64, u64)) -> zbus::Result<()>;

    #[zbus(signal)]
    fn throttle_added(&self, throttle: ObjectPath<'_>) -> zbus::Result<()>;
    /// reason: requested, process-exited or reload.
    #[zbus(signal)]
    fn throttle_removed(&self, throttle: ObjectPath<'_>, reason: &str) -> zbus::Result<()>;
    #[zbus(signal)]
    fn default_backend_changed(&self, direction: &str, backend: &str) -> zbus::Result<()>;
    #[zbus(signal)]
    fn backend_health_changed(&self, backend: &str, health: &str, detail: &str) -> zbus::Result<()>;
    #[zbus(signal)]
    fn throttle_migrated(&self, throttle: ObjectPath<'_>, direction: &str, from: &str, to: &str) -> zbus::Result<()>;
    /// A throttle's quota is used up: its `then` applies until QuotaResetsAt.
    #[zbus(signal)]
    fn quota_exceeded(&self, throttle: ObjectPath<'_>) -> zbus::Result<()>;
    /// A throttle's schedule window opened (active) or closed.
    #[zbus(signal)]
    fn schedule_changed(&self, throttle: ObjectPath<'_>, active: bool) -> zbus::Result<()>;
}

#[zbus::proxy(interface = "org.chadthrottle.Throttle", default_service = "org.chadthrottle")]
pub trait Throttle {
    #[zbus(allow_interactive_auth)]
    fn remove(&self) -> zbus::Result<()>;
    #[zbus(allow_interactive_auth)]
    fn set_limits(&self, options: &LimitOptions) -> zbus::Result<()>;

    #[zbus(property)]
    fn id(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn kind(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn target(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn origin(&self) -> zbus::Result<String>;
    /// Blocks its processes' traffic outright (limits then read 0).
    #[zbus(property)]
    fn blocked(&self) -> zbus::Result<bool>;
    /// Bytes per second; 0 = unlimited (or blocked).
    #[zbus(property)]
    fn down_limit(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn up_limit(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn down_backend(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn up_backend(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn down_rate(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn up_rate(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn down_accuracy(&self) -> zbus::Result<f64>;
    #[zbus(property)]
    fn up_accuracy(&self) -> zbus::Result<f64>;
    #[zbus(property)]
    fn pids(&self) -> zbus::Result<Vec<u32>>;
    #[zbus(property)]
    fn excluded(&self) -> zbus::Result<Vec<u32>>;
    /// "active", or "failed" (see StatusDetail).
    #[zbus(property)]
    fn status(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn status_detail(&self) -> zbus::Result<String>;
    /// {down,up}_{bytes,packets,dropped_bytes,dropped_packets}.
    #[zbus(property)]
    fn counters(&self) -> zbus::Result<HashMap<String, OwnedValue>>;
    /// The quota ("5G/month"), "" without one.
    #[zbus(property)]
    fn quota(&self) -> zbus::Result<String>;
    /// Bytes per period; 0 without a quota.
    #[zbus(property)]
    fn quota_bytes(&self) -> zbus::Result<u64>;
    /// Bytes used this period (both directions, at the IP layer).
    #[zbus(property)]
    fn quota_used(&self) -> zbus::Result<u64>;
    /// Unix time of the next reset; 0 without a quota.
    #[zbus(property)]
    fn quota_resets_at(&self) -> zbus::Result<i64>;
    #[zbus(property)]
    fn quota_exceeded(&self) -> zbus::Result<bool>;
    /// What applies once the quota is used ("256K", "block"), "" without one.
    #[zbus(property)]
    fn quota_then(&self) -> zbus::Result<String>;
    /// The schedule's windows, "" without one.
    #[zbus(property)]
    fn schedule(&self) -> zbus::Result<String>;
    /// Inside a window (true without a schedule).
    #[zbus(property)]
    fn schedule_active(&self) -> zbus::Result<bool>;
    /// Bytes per second outside the windows; 0: nothing applies there.
    #[zbus(property)]
    fn otherwise(&self) -> zbus::Result<u64>;
    /// low, normal, high or critical: its share of a contended link.
    #[zbus(property)]
    fn priority(&self) -> zbus::Result<String>;
    /// The caps (`user`, `all` throttles) over its processes.
    #[zbus(property)]
    fn caps(&self) -> zbus::Result<Vec<zbus::zvariant::OwnedObjectPath>>;
}
