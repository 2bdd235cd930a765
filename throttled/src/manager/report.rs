//! What the API reports: a throttle's info, backends, `top`. `View` reads
//! the parts of the core it borrows and never the kernel; what must be read
//! live (counters, health) is read by the caller and passed in.
use std::collections::BTreeMap;

use throttle_common::{rate::Rate, Counters, Direction};

use super::{
    assign::Processes,
    datapath::Datapath,
    plan::Plan,
    sampling::Sampling,
    table::{Origin, Pending, ThrottleTable},
    traffic::{ProcessTraffic, Scope, SortBy},
    ManagerError, ThrottleId,
};
use crate::{
    backend::{Availability, Health, Priority},
    limit::COUNT_BACKEND,
    quota::{Quota, Then},
    schedule::Schedule,
    target::Target,
};

#[derive(Clone, Debug, PartialEq)]
pub struct DirectionStats {
    pub backend: &'static str,
    pub rate: Rate,
    pub counters: Counters,
    /// Bytes per second passed over the last few seconds (rolling window).
    pub current: u64,
    /// Achieved rate over the limit while the limit was binding (`None`
    /// until it has been).
    pub accuracy: Option<f64>,
}

/// A process in the monitor, with what limits it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopEntry {
    pub traffic: ProcessTraffic,
    pub throttles: Vec<ThrottleId>,
    pub backends: Vec<&'static str>,
    /// Bytes/s, 0 when that direction is not limited.
    pub down_limit: u64,
    pub up_limit: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ThrottleInfo {
    pub id: ThrottleId,
    pub target: Target,
    pub origin: Origin,
    /// Processes this throttle limits in at least one direction.
    pub covered: Vec<u32>,
    /// Processes the target matches that are never limited (init, the
    /// daemon, the bus, polkitd: see `Protected`).
    pub excluded: Vec<u32>,
    /// Why a saved throttle is not applied now (it stays saved and is
    /// retried); `None` while it is applied.
    pub failed: Option<String>,
    /// Limited directions (a quota's counting-only ones are not limits).
    pub directions: std::collections::BTreeMap<Direction, DirectionStats>,
    /// Its quota and schedule, if it has either.
    pub plan: Option<PlanInfo>,
    /// Its share of a contended link, by weight.
    pub priority: crate::limit::Priority,
    /// The caps (`user`, `all` throttles) over its processes: every packet
    /// of theirs must pass these too.
    pub caps: Vec<ThrottleId>,
}

/// A throttle's quota and schedule as they stand.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanInfo {
    pub quota: Option<Quota>,
    pub then: Option<Then>,
    /// Bytes used this period, and the unix time of the next reset.
    pub used: u64,
    pub resets_at: i64,
    pub exceeded: bool,
    pub schedule: Option<Schedule>,
    pub otherwise: Option<Rate>,
    /// Inside a window (always, without a schedule).
    pub active: bool,
}

impl PlanInfo {
    fn of(p: &Plan) -> PlanInfo {
        let s = &p.spec;
        PlanInfo {
            quota: s.quota,
            then: s.then,
            used: p.usage.used,
            resets_at: p.usage.resets_at,
            exceeded: p.exceeded,
            schedule: s.when.clone(),
            otherwise: s.otherwise,
            active: p.active,
        }
    }

    /// A saved spec's, not applied: nothing used, no window known.
    fn of_spec(s: &crate::limit::LimitSpec) -> Option<PlanInfo> {
        s.is_planned().then(|| PlanInfo {
            quota: s.quota,
            then: s.then,
            used: 0,
            resets_at: 0,
            exceeded: false,
            schedule: s.when.clone(),
            otherwise: s.otherwise,
            active: false,
        })
    }
}

/// Daemon-wide numbers for `GetStats`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    pub throttles: usize,
    /// Processes in the kernel's map.
    pub processes: usize,
    /// One line: "3 throttles on ebpf, tc_htb".
    pub status: String,
    /// Whether the saved state can be written.
    pub state: Health,
    /// The kernel's throttle slots (one per limited direction), and how
    /// many are taken.
    pub slots: usize,
    pub slots_used: usize,
    /// Throttles each non-root user may have made (`limits.per_user`).
    pub per_user: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendInfo {
    pub name: &'static str,
    pub directions: Vec<Direction>,
    pub priority: Priority,
    pub availability: Availability,
    /// The directions for which this is the default for new throttles.
    pub default_for: Vec<Direction>,
    pub active: usize,
    pub pids: Vec<u32>,
    pub health: Health,
}

/// The core's bookkeeping, borrowed for a report.
pub struct View<'a> {
    pub table: &'a ThrottleTable,
    pub procs: &'a Processes,
    pub datapath: &'a Datapath,
    pub sampling: &'a Sampling,
}

impl View<'_> {
    /// The `count` busiest processes, with what limits each.
    pub fn top(&self, count: usize, sort: SortBy, scope: Scope, owner: Option<u32>) -> Vec<TopEntry> {
        self.sampling.accounting.top(count, sort, scope, owner).into_iter().map(|t| self.top_entry(t)).collect()
    }

    fn top_entry(&self, traffic: ProcessTraffic) -> TopEntry {
        let assigned = self.procs.assigned(traffic.pid);
        let mut e = TopEntry { traffic, ..Default::default() };
        for dir in Direction::BOTH {
            let Some(id) = assigned.get(dir) else { continue };
            let Some(l) = self.table.limit(id, dir) else { continue };
            if !e.throttles.contains(&id) {
                e.throttles.push(id);
            }
            let name = self.datapath.pool.name(l.backend);
            if !e.backends.contains(&name) {
                e.backends.push(name);
            }
            match dir {
                Direction::Up => e.up_limit = crate::limit::shown(l.rate),
                Direction::Down => e.down_limit = crate::limit::shown(l.rate),
            }
        }
        e
    }

    /// (up, down) per second, oldest first; a direction without a limit is 0.
    pub fn throttle_history(&self, id: ThrottleId) -> Result<Vec<(u64, u64)>, ManagerError> {
        match self.table.throttles.contains_key(&id) {
            true => Ok(self.sampling.history(id)),
            false => Err(ManagerError::NoSuchThrottle(id)),
        }
    }

    /// A throttle as it is now. `live`: counters just read (see
    /// `Datapath::counters`); otherwise the last sample's (once a second).
    pub fn info(
        &self,
        id: ThrottleId,
        live: Option<&BTreeMap<Direction, Counters>>,
    ) -> Result<ThrottleInfo, ManagerError> {
        if let Some(p) = self.table.pending.get(&id) {
            return Ok(pending_info(id, p));
        }
        let t = self.table.throttles.get(&id).ok_or(ManagerError::NoSuchThrottle(id))?;
        let mut directions = BTreeMap::new();
        for (&dir, l) in &t.limits {
            let backend = self.datapath.pool.name(l.backend);
            if backend == COUNT_BACKEND {
                continue;
            }
            let series = self.sampling.series(id, dir);
            let counters = match live {
                Some(live) => live.get(&dir).copied().unwrap_or_default(),
                None => series.map(|s| s.counters).unwrap_or_default(),
            };
            let current = series.map_or(0, |s| s.rate());
            let accuracy = series.and_then(|s| s.accuracy(l.rate.bytes_per_sec()));
            directions.insert(dir, DirectionStats { backend, rate: l.rate, counters, current, accuracy });
        }
        let covered = t.covered.iter().copied().collect();
        let excluded = t.excluded.iter().copied().collect();
        let (target, origin) = (t.target.clone(), t.origin.clone());
        let (plan, priority, caps) = (t.plan.as_ref().map(PlanInfo::of), t.priority, self.caps_over(id));
        Ok(ThrottleInfo { id, target, origin, covered, excluded, failed: None, directions, plan, priority, caps })
    }

    /// The caps over throttle `id`'s processes: their user caps, and the
    /// `all` cap (over everything but itself).
    fn caps_over(&self, id: ThrottleId) -> Vec<ThrottleId> {
        let Some(t) = self.table.throttles.get(&id) else { return Vec::new() };
        let users = t.covered.iter().flat_map(|p| self.procs.assigned(*p).caps).flatten().filter(|c| *c != id);
        let all = self.table.throttles.iter().filter(|(_, a)| a.target == Target::All && !a.limits.is_empty());
        let mut caps: Vec<ThrottleId> = users.chain(all.map(|(a, _)| *a).filter(|a| *a != id)).collect();
        caps.sort_unstable();
        caps.dedup();
        caps
    }

    /// One line: "3 throttles on ebpf, tc_htb".
    pub fn status(&self) -> String {
        self.table.status(&self.datapath.pool)
    }

    pub fn default_backend(&self, dir: Direction) -> Result<&'static str, ManagerError> {
        let pool = &self.datapath.pool;
        Ok(pool.name(pool.default_index(dir)?))
    }

    /// Every backend, with the health its last check found: nothing asks
    /// the kernel, for what is read after every event.
    pub fn backends_known(&self) -> Vec<BackendInfo> {
        let dp = self.datapath;
        dp.pool.listed().map(|i| self.backend_info(i, dp.known_health(i))).collect()
    }

    /// Backend `i`, with `health` as the caller found it.
    pub fn backend_info(&self, i: usize, health: Health) -> BackendInfo {
        let on = self.table.limits_on(i);
        let mut pids: Vec<u32> = on.into_iter().flat_map(|(id, d)| self.procs.covered_in(self.table, id, d)).collect();
        pids.sort_unstable();
        pids.dedup();
        let pool = &self.datapath.pool;
        let default_for = Direction::BOTH.into_iter().filter(|d| pool.default_index(*d).ok() == Some(i)).collect();
        let b = &pool.backends[i];
        BackendInfo {
            name: b.name(),
            directions: b.capabilities().directions,
            priority: b.priority(),
            availability: b.availability(),
            default_for,
            active: b.active(),
            pids,
            health,
        }
    }
}

/// A failed throttle as saved: its limits, on no backend.
fn pending_info(id: ThrottleId, p: &Pending) -> ThrottleInfo {
    let r = &p.record;
    let mut directions = BTreeMap::new();
    // A saved block reads as a block on no kernel slot.
    let backend = if r.spec.block { crate::limit::BLOCK_BACKEND } else { "" };
    for dir in Direction::BOTH {
        let Some(rate) = r.spec.rate(dir) else { continue };
        let stats = DirectionStats { backend, rate, counters: Default::default(), current: 0, accuracy: None };
        directions.insert(dir, stats);
    }
    ThrottleInfo {
        id,
        target: r.target.clone(),
        origin: Origin::Runtime,
        covered: Vec::new(),
        excluded: Vec::new(),
        failed: Some(p.why.clone()),
        directions,
        plan: PlanInfo::of_spec(&r.spec),
        priority: r.spec.priority.unwrap_or_default(),
        caps: Vec::new(),
    }
}
