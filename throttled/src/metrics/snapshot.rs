//! What the exporter shows: plain data the daemon fills, so that the
//! encoder and the server never touch the manager (see `adapter.rs`).

/// Everything one scrape shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsSnapshot {
    pub throttles: Vec<ThrottleMetrics>,
    pub backends: Vec<BackendMetrics>,
    /// The busiest process names only (`top_names`), to bound cardinality.
    pub names: Vec<NameMetrics>,
    pub daemon: DaemonMetrics,
}

/// One throttle, one direction per entry in `directions`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ThrottleMetrics {
    pub id: u32,
    /// The target's kind as the API spells it: pid, tree, name, exe, cgroup, unit.
    pub kind: String,
    /// The target's value; empty for pid and tree targets (no pid labels).
    pub target: String,
    pub directions: Vec<DirectionMetrics>,
    /// Bytes of its quota used this period (both directions), if it has one.
    pub quota_used_bytes: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct DirectionMetrics {
    /// "up" or "down".
    pub direction: &'static str,
    pub backend: String,
    pub limit_bytes_per_second: u64,
    /// Bytes passed since the throttle was made.
    pub bytes: u64,
    pub dropped_packets: u64,
    /// Bytes per second over the daemon's rolling window.
    pub rate_bytes_per_second: u64,
    /// Achieved rate over the limit while it was binding; `None` until then.
    pub accuracy: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendMetrics {
    pub name: String,
    pub health: BackendHealth,
    /// Throttle directions it enforces.
    pub active: u64,
}

/// A backend's health, one of a fixed set (a state label, not free text).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendHealth {
    #[default]
    Healthy,
    Idle,
    Degraded,
    Broken,
}

impl BackendHealth {
    pub const ALL: [BackendHealth; 4] =
        [BackendHealth::Healthy, BackendHealth::Idle, BackendHealth::Degraded, BackendHealth::Broken];

    pub fn label(self) -> &'static str {
        match self {
            BackendHealth::Healthy => "healthy",
            BackendHealth::Idle => "idle",
            BackendHealth::Degraded => "degraded",
            BackendHealth::Broken => "broken",
        }
    }
}

/// Traffic of every live process with this name, summed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NameMetrics {
    pub name: String,
    pub bytes_down: u64,
    pub bytes_up: u64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct DaemonMetrics {
    pub version: String,
    pub resident_memory_bytes: u64,
    pub calls: Vec<CallCount>,
    pub latency: Vec<LatencyHistogram>,
}

/// D-Bus calls of one method that ended with one result.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallCount {
    pub method: String,
    pub result: String,
    pub count: u64,
}

/// One method's call durations: cumulative counts per upper bound
/// (seconds, ascending, without +Inf: `count` is +Inf's).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LatencyHistogram {
    pub method: String,
    pub buckets: Vec<(f64, u64)>,
    pub sum_seconds: f64,
    pub count: u64,
}

/// What the daemon implements to feed the exporter. Called on a blocking
/// thread, at most once per scrape interval (see `server.rs`).
pub trait Source: Send + Sync + 'static {
    fn snapshot(&self) -> MetricsSnapshot;
}

impl<F: Fn() -> MetricsSnapshot + Send + Sync + 'static> Source for F {
    fn snapshot(&self) -> MetricsSnapshot {
        self()
    }
}
