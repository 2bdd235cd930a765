//! Sampling and reporting: every limit's counters into its rolling window
//! (once a second, in chunks), every process's traffic, and what the API
//! reports: a throttle's info, the list, the status line, backends, `top`.
use std::collections::BTreeMap;
use throttle_common::Direction;

use throttle_common::{rate::Rate, Counters};

use super::{
    core::{Core, Origin, Pending},
    traffic::{ProcessTraffic, Scope, SortBy},
    ManagerError, ThrottleId,
};
use crate::{
    backend::{Availability, Context, Health, Priority},
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
    pub directions: std::collections::BTreeMap<Direction, DirectionStats>,
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

impl Core {
    /// Reads every limit's byte counter into its rolling window.
    pub fn top(&self, count: usize, sort: SortBy, scope: Scope, owner: Option<u32>) -> Vec<TopEntry> {
        self.accounting.top(count, sort, scope, owner).into_iter().map(|t| self.top_entry(t)).collect()
    }

    pub(super) fn top_entry(&self, traffic: ProcessTraffic) -> TopEntry {
        let assigned = self.procs.get(&traffic.pid).map(|e| e.assigned).unwrap_or_default();
        let mut e = TopEntry { traffic, ..Default::default() };
        for dir in Direction::BOTH {
            let Some(id) = assigned.get(dir) else { continue };
            let Some(l) = self.throttles.get(&id).and_then(|t| t.limits.get(&dir)) else { continue };
            if !e.throttles.contains(&id) {
                e.throttles.push(id);
            }
            let name = self.pool.name(l.backend);
            if !e.backends.contains(&name) {
                e.backends.push(name);
            }
            match dir {
                Direction::Up => e.up_limit = l.rate.bytes_per_sec(),
                Direction::Down => e.down_limit = l.rate.bytes_per_sec(),
            }
        }
        e
    }

    /// (up, down) per second, oldest first; a direction without a limit is 0.
    pub fn throttle_history(&self, id: ThrottleId) -> Result<Vec<(u64, u64)>, ManagerError> {
        if !self.throttles.contains_key(&id) {
            return Err(ManagerError::NoSuchThrottle(id));
        }
        let rates = |dir| -> Vec<u64> {
            self.rates.get(&(id, dir)).map(|s| s.history.iter().map(|x| x.rate).collect()).unwrap_or_default()
        };
        let (up, down) = (rates(Direction::Up), rates(Direction::Down));
        let n = up.len().max(down.len());
        // Newest seconds line up: pad the shorter series at the front.
        let at = |v: &[u64], i: usize| (i + v.len()).checked_sub(n).map_or(0, |j| v[j]);
        Ok((0..n).map(|i| (at(&up, i), at(&down, i))).collect())
    }

    /// Every throttle's counters, and every process's.
    pub fn sample_rates(&mut self) {
        self.sample_throttles(None, usize::MAX);
        self.sample_monitor();
    }

    /// The counters of up to `n` throttles with ids above `after`; returns
    /// the last id sampled, or `None` when there were none left. In chunks,
    /// calls wait behind the once-a-second sampling for a moment only.
    pub fn sample_throttles(&mut self, after: Option<ThrottleId>, n: usize) -> Option<ThrottleId> {
        let now = std::time::Instant::now();
        let span = (self.config.monitor.window, self.config.monitor.history);
        let ctx = Context { programs: &mut self.programs };
        let from = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        let mut last = None;
        for (&id, t) in self.throttles.range((from, std::ops::Bound::Unbounded)).take(n) {
            for (&dir, l) in &t.limits {
                if let Ok(c) = self.pool.backends[l.backend].stats(&ctx, l.slot, dir) {
                    let series = self.rates.entry((id, dir)).or_default();
                    series.push(now, c.pass_bytes, c.drop_pkts, l.rate.bytes_per_sec(), span);
                    series.counters = c;
                }
            }
            last = Some(id);
        }
        last
    }

    /// Every process's traffic, from the monitor's kernel map.
    pub fn sample_monitor(&mut self) {
        let now = std::time::Instant::now();
        if self.programs.monitoring() {
            let readings = self.programs.proc_traffic();
            for pid in self.accounting.sample(now, &readings) {
                self.programs.forget_traffic(pid);
            }
        }
    }

    pub fn info(&mut self, id: ThrottleId) -> Result<ThrottleInfo, ManagerError> {
        self.info_with(id, true)
    }

    /// `live`: read the backends' counters now (netlink for HTB classes);
    /// otherwise they are the last sample's (once a second) and nothing
    /// touches the kernel.
    pub fn info_with(&mut self, id: ThrottleId, live: bool) -> Result<ThrottleInfo, ManagerError> {
        if let Some(p) = self.pending.get(&id) {
            return Ok(self.pending_info(id, p));
        }
        let t = self.throttles.get(&id).ok_or(ManagerError::NoSuchThrottle(id))?;
        let ctx = Context { programs: &mut self.programs };
        let mut directions = BTreeMap::new();
        for (&dir, l) in &t.limits {
            let b = &self.pool.backends[l.backend];
            let series = self.rates.get(&(id, dir));
            let counters =
                if live { b.stats(&ctx, l.slot, dir)? } else { series.map(|s| s.counters).unwrap_or_default() };
            let current = series.map_or(0, |s| s.rate());
            let accuracy = series.and_then(|s| s.accuracy(l.rate.bytes_per_sec()));
            directions.insert(dir, DirectionStats { backend: b.name(), rate: l.rate, counters, current, accuracy });
        }
        let covered = t.covered.iter().copied().collect();
        let excluded = t.excluded.iter().copied().collect();
        let (target, origin) = (t.target.clone(), t.origin.clone());
        Ok(ThrottleInfo { id, target, origin, covered, excluded, failed: None, directions })
    }

    /// A failed throttle as saved: its limits, on no backend.
    pub(super) fn pending_info(&self, id: ThrottleId, p: &Pending) -> ThrottleInfo {
        let r = &p.record;
        let mut directions = BTreeMap::new();
        // A saved block reads as a block on no kernel slot.
        let backend = if r.spec.block { crate::limit::BLOCK_BACKEND } else { "" };
        for dir in [Direction::Down, Direction::Up] {
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
        }
    }

    pub fn list(&mut self) -> Vec<ThrottleInfo> {
        let ids: Vec<ThrottleId> = self.throttles.keys().chain(self.pending.keys()).copied().collect();
        ids.into_iter().filter_map(|id| self.info(id).ok()).collect()
    }

    pub fn status(&self) -> String {
        let mut used: Vec<&str> =
            self.throttles.values().flat_map(|t| t.limits.values()).map(|l| self.pool.name(l.backend)).collect();
        used.sort();
        used.dedup();
        let applied = match self.throttles.len() {
            0 => "no throttles".into(),
            n => format!("{n} throttle{} on {}", if n == 1 { "" } else { "s" }, used.join(", ")),
        };
        match self.pending.len() {
            0 => applied,
            n => format!("{applied}; {n} saved throttle{} not applied (failed)", if n == 1 { "" } else { "s" }),
        }
    }
}

impl Core {
    pub fn default_backend(&self, dir: Direction) -> Result<&'static str, ManagerError> {
        Ok(self.pool.name(self.pool.default_index(dir)?))
    }

    /// Every backend, its health checked now (the kernel is asked).
    pub fn backend_infos(&mut self) -> Vec<BackendInfo> {
        self.listed().map(|i| self.backend_info(i)).collect::<Vec<_>>()
    }

    /// Every backend, with the health its last check found: nothing asks
    /// the kernel, for what is read after every event.
    pub fn backend_infos_known(&self) -> Vec<BackendInfo> {
        self.listed().map(|i| self.backend_info_with(i, self.known_health(i))).collect()
    }

    /// The backends users choose from: `block` is not one of them.
    fn listed(&self) -> impl Iterator<Item = usize> + use<> {
        let automatic: Vec<bool> = self.pool.backends.iter().map(|b| b.automatic()).collect();
        (0..automatic.len()).filter(move |&i| automatic[i])
    }

    fn known_health(&self, i: usize) -> Health {
        match self.pool.backends[i].is_initialized() {
            true => self.pool.health.get(i).cloned().unwrap_or(Health::Healthy),
            false => Health::Idle,
        }
    }

    pub(super) fn backend_info(&mut self, i: usize) -> BackendInfo {
        let b = &self.pool.backends[i];
        let health =
            if b.is_initialized() { b.health(&Context { programs: &mut self.programs }) } else { Health::Idle };
        self.backend_info_with(i, health)
    }

    fn backend_info_with(&self, i: usize, health: Health) -> BackendInfo {
        let mut pids: Vec<u32> = self.limits_on(i).into_iter().flat_map(|(id, d)| self.covered_in(id, d)).collect();
        pids.sort_unstable();
        pids.dedup();
        let default_for = Direction::BOTH.into_iter().filter(|d| self.pool.default_index(*d).ok() == Some(i)).collect();
        let b = &self.pool.backends[i];
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
