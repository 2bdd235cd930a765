//! Fills a `MetricsSnapshot` from the manager's public API. The one place
//! that knows both sides: when the manager's API changes, only this file
//! follows.
use std::{collections::HashMap, sync::Arc};

use super::{
    calls::CallStats,
    snapshot::{
        BackendHealth, BackendMetrics, DaemonMetrics, DirectionMetrics, MetricsSnapshot, NameMetrics, Source,
        ThrottleMetrics,
    },
};
use throttle_common::Direction;

use crate::{
    backend::Health,
    manager::{
        traffic::{Scope, SortBy},
        BackendInfo, DirectionStats, Manager, ThrottleInfo,
    },
};

/// Processes read from the monitor to sum by name (a bound, not a target).
const MAX_PROCESSES: usize = 100_000;

pub struct ManagerSource {
    manager: Arc<Manager>,
    calls: CallStats,
    top_names: usize,
}

impl ManagerSource {
    pub fn new(manager: Arc<Manager>, calls: CallStats, top_names: usize) -> ManagerSource {
        ManagerSource { manager, calls, top_names }
    }
}

impl Source for ManagerSource {
    fn snapshot(&self) -> MetricsSnapshot {
        // One short lock per throttle (the last sample's numbers), so that
        // D-Bus calls and the data path's bookkeeping interleave.
        let throttles = self.manager.ids().into_iter().filter_map(|id| self.manager.summary(id).ok());
        let names = if self.top_names == 0 { Vec::new() } else { self.names() };
        MetricsSnapshot {
            throttles: throttles.map(|t| throttle(&t)).collect(),
            backends: self.manager.backends().iter().map(backend).collect(),
            names,
            daemon: DaemonMetrics {
                version: env!("CARGO_PKG_VERSION").to_string(),
                resident_memory_bytes: resident_memory_bytes(),
                calls: self.calls.calls(),
                latency: self.calls.latency(),
            },
        }
    }
}

impl ManagerSource {
    /// The `top_names` names with the most bytes, their processes summed.
    fn names(&self) -> Vec<NameMetrics> {
        let mut by_name: HashMap<String, NameMetrics> = HashMap::new();
        for p in self.manager.top(MAX_PROCESSES, SortBy::Total, Scope::All, None) {
            let e = by_name
                .entry(p.traffic.name.clone())
                .or_insert_with(|| NameMetrics { name: p.traffic.name.clone(), ..Default::default() });
            e.bytes_down += p.traffic.down_total;
            e.bytes_up += p.traffic.up_total;
        }
        top_names(by_name.into_values().collect(), self.top_names)
    }
}

/// The `n` names with the most bytes, by name on ties (stable output).
pub fn top_names(mut names: Vec<NameMetrics>, n: usize) -> Vec<NameMetrics> {
    names.sort_by(|a, b| (b.bytes_down + b.bytes_up).cmp(&(a.bytes_down + a.bytes_up)).then(a.name.cmp(&b.name)));
    names.truncate(n);
    names
}

fn throttle(t: &ThrottleInfo) -> ThrottleMetrics {
    let (kind, value) = t.target.parts();
    // Never a pid in a label: the id already names a pid throttle.
    let target = if t.target.is_pid() { String::new() } else { value };
    let directions = t.directions.iter().map(|(dir, s)| direction(*dir, s)).collect();
    let quota_used_bytes = t.plan.as_ref().filter(|p| p.quota.is_some()).map(|p| p.used);
    ThrottleMetrics { id: t.id, kind: kind.to_string(), target, directions, quota_used_bytes }
}

fn direction(dir: Direction, s: &DirectionStats) -> DirectionMetrics {
    DirectionMetrics {
        direction: match dir {
            Direction::Up => "up",
            Direction::Down => "down",
        },
        backend: s.backend.to_string(),
        limit_bytes_per_second: crate::limit::shown(s.rate),
        bytes: s.counters.pass_bytes,
        dropped_packets: s.counters.drop_pkts,
        rate_bytes_per_second: s.current,
        accuracy: s.accuracy,
    }
}

fn backend(b: &BackendInfo) -> BackendMetrics {
    let health = match b.health {
        Health::Healthy => BackendHealth::Healthy,
        Health::Idle => BackendHealth::Idle,
        Health::Degraded(_) => BackendHealth::Degraded,
        Health::Broken(_) => BackendHealth::Broken,
    };
    BackendMetrics { name: b.name.to_string(), health, active: b.active as u64 }
}

/// From /proc/self/statm (resident pages times the page size).
pub fn resident_memory_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_busiest_names() {
        let n = |name: &str, d, u| NameMetrics { name: name.into(), bytes_down: d, bytes_up: u };
        let top = top_names(vec![n("a", 1, 1), n("b", 10, 0), n("c", 0, 5), n("d", 2, 0)], 2);
        assert_eq!(top, vec![n("b", 10, 0), n("c", 0, 5)]);
        assert!(resident_memory_bytes() > 0);
    }
}
