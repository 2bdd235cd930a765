//! Every process's traffic, throttled or not, from the kernel's per-process
//! counters: rolling rates per scope, totals, and a per-second history.
use std::{
    collections::{HashMap, HashSet},
    str::FromStr,
    time::{Duration, Instant},
};

use throttle_common::{ProcTraffic, Traffic};

use super::rates::{History, RateWindow};
use crate::config::MonitorConfig;
use crate::usage::{Counts, Delta};

/// Which traffic counts: local is loopback and link-local peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    All,
    Internet,
    Local,
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "all" | "" => Ok(Scope::All),
            "internet" => Ok(Scope::Internet),
            "local" => Ok(Scope::Local),
            _ => Err(format!("unknown scope {} (all, internet or local)", throttle_common::text::quote(s))),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortBy {
    Down,
    Up,
    Total,
}

impl FromStr for SortBy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "down" => Ok(SortBy::Down),
            "up" => Ok(SortBy::Up),
            "total" | "" => Ok(SortBy::Total),
            _ => Err(format!("unknown sort {} (down, up or total)", throttle_common::text::quote(s))),
        }
    }
}

/// One process as traffic accounting reports it; rates in bytes/s, totals in bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessTraffic {
    pub pid: u32,
    /// The process's real uid when first seen.
    pub uid: u32,
    pub name: String,
    pub exe: String,
    pub up_rate: u64,
    pub down_rate: u64,
    pub up_total: u64,
    pub down_total: u64,
}

/// (up, down) rolling windows of one scope.
#[derive(Debug, Default)]
struct ScopeRates {
    up: RateWindow,
    down: RateWindow,
}

#[derive(Debug)]
struct Series {
    id: ProcName,
    last: Option<(Instant, Traffic)>,
    rates: [ScopeRates; 3],
    totals: [Traffic; 3],
    /// The totals already handed to the usage history.
    counted: [Traffic; 3],
    history: History<(u64, u64)>,
}

fn scoped(t: &ProcTraffic) -> [Traffic; 3] {
    let mut all = t.internet;
    all.add(&t.local);
    [all, t.internet, t.local]
}

fn index(scope: Scope) -> usize {
    match scope {
        Scope::All => 0,
        Scope::Internet => 1,
        Scope::Local => 2,
    }
}

impl Series {
    fn new(id: ProcName) -> Series {
        Series {
            id,
            last: None,
            rates: Default::default(),
            totals: Default::default(),
            counted: Default::default(),
            history: History::default(),
        }
    }

    fn push(&mut self, at: Instant, t: &ProcTraffic, window: Duration, cap: usize) {
        let scopes = scoped(t);
        for (r, s) in self.rates.iter_mut().zip(&scopes) {
            r.up.push(at, s.up_bytes, window);
            r.down.push(at, s.down_bytes, window);
        }
        if let Some((t0, prev)) = self.last {
            let secs = at.duration_since(t0).as_secs_f64().max(1e-3);
            let per_sec = |now: u64, then: u64| (now.saturating_sub(then) as f64 / secs).round() as u64;
            let all = &scopes[0];
            self.history.push((per_sec(all.up_bytes, prev.up_bytes), per_sec(all.down_bytes, prev.down_bytes)), cap);
        }
        self.last = Some((at, scopes[0]));
        self.totals = scopes;
    }

    /// Bytes since the last call: (down, up) internet, then (down, up) local.
    fn uncounted(&mut self) -> Counts {
        let d = |i: usize| {
            let (now, then) = (&self.totals[i], &self.counted[i]);
            (now.down_bytes.saturating_sub(then.down_bytes), now.up_bytes.saturating_sub(then.up_bytes))
        };
        let ((down_inet, up_inet), (down_local, up_local)) = (d(1), d(2));
        self.counted = self.totals;
        Counts { down_inet, up_inet, down_local, up_local }
    }

    fn report(&self, pid: u32, scope: Scope) -> ProcessTraffic {
        let (r, t) = (&self.rates[index(scope)], &self.totals[index(scope)]);
        ProcessTraffic {
            pid,
            uid: self.id.uid,
            name: self.id.name.clone(),
            exe: self.id.exe.clone(),
            up_rate: r.up.rate(),
            down_rate: r.down.rate(),
            up_total: t.up_bytes,
            down_total: t.down_bytes,
        }
    }
}

/// Who a process is, read once when it is first seen: the usage
/// history's key (name, exe, systemd unit or "", uid).
pub type ProcName = crate::usage::Key;

/// Who a process is, or `None` when it is gone.
pub type Namer = fn(u32) -> Option<ProcName>;

pub struct Accounting {
    window: Duration,
    history: usize,
    series: HashMap<u32, Series>,
    namer: Namer,
    /// Bytes not yet taken by the usage history, by who sent them; exited
    /// processes' last bytes stay here until taken.
    usage: HashMap<ProcName, Counts>,
}

fn proc_names(pid: u32) -> Option<ProcName> {
    let uid = crate::kernel::procfs::uid(pid).ok()?;
    let f = crate::target::ProcFacts::read(pid)?;
    let unit = f.cgroup.as_deref().and_then(unit_of).unwrap_or_default().to_string();
    Some(ProcName { name: f.comm, exe: f.exe.unwrap_or_default(), uid, unit })
}

/// The innermost service or scope in a cgroup path: the unit a process
/// runs in (slices only group units).
pub fn unit_of(cgroup: &str) -> Option<&str> {
    cgroup.rsplit('/').find(|c| c.ends_with(".service") || c.ends_with(".scope"))
}

impl Accounting {
    pub fn new(cfg: &MonitorConfig) -> Accounting {
        Accounting::with_namer(cfg, proc_names)
    }

    pub fn with_namer(cfg: &MonitorConfig, namer: Namer) -> Accounting {
        Accounting { window: cfg.window, history: cfg.history, series: HashMap::new(), namer, usage: HashMap::new() }
    }

    /// One reading of the kernel's counters. Returns the pids whose process
    /// is gone (late packets after the exit), for the caller to forget.
    pub fn sample(&mut self, at: Instant, readings: &[(u32, ProcTraffic)]) -> Vec<u32> {
        let mut gone = Vec::new();
        for (pid, t) in readings {
            if !self.series.contains_key(pid) {
                match (self.namer)(*pid) {
                    Some(id) => {
                        self.series.insert(*pid, Series::new(id));
                    }
                    None => {
                        gone.push(*pid);
                        continue;
                    }
                }
            }
            if let Some(s) = self.series.get_mut(pid) {
                s.push(at, t, self.window, self.history);
                let bytes = s.uncounted();
                self.count(pid, bytes);
            }
        }
        // Evicted from the kernel's LRU map: nothing more will come.
        let seen: HashSet<u32> = readings.iter().map(|(p, _)| *p).collect();
        self.series.retain(|p, _| seen.contains(p));
        gone
    }

    /// A process is gone: `last` is its final reading, if the kernel still
    /// had one, so that the bytes since the last sample are counted too.
    pub fn exited(&mut self, pid: u32, last: Option<ProcTraffic>) {
        let Some(mut s) = self.series.remove(&pid) else { return };
        if let Some(t) = last {
            s.totals = scoped(&t);
            let bytes = s.uncounted();
            self.usage.entry(s.id).or_default().add(&bytes);
        }
    }

    fn count(&mut self, pid: &u32, bytes: Counts) {
        if bytes.is_zero() {
            return;
        }
        if let Some(s) = self.series.get(pid) {
            match self.usage.get_mut(&s.id) {
                Some(u) => u.add(&bytes),
                None => {
                    self.usage.insert(s.id.clone(), bytes);
                }
            }
        }
    }

    /// The bytes counted since the last call, by who sent them.
    pub fn take_usage(&mut self) -> Vec<Delta> {
        self.usage.drain().map(|(key, counts)| Delta { key, counts }).collect()
    }

    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// The `count` busiest processes in `scope` (of user `owner` only, if
    /// given), busiest first; ties by pid.
    pub fn top(&self, count: usize, sort: SortBy, scope: Scope, owner: Option<u32>) -> Vec<ProcessTraffic> {
        let mine = |s: &&Series| owner.is_none_or(|uid| s.id.uid == uid);
        let mut all: Vec<ProcessTraffic> =
            self.series.iter().filter(|(_, s)| mine(s)).map(|(pid, s)| s.report(*pid, scope)).collect();
        let key = |p: &ProcessTraffic| match sort {
            SortBy::Down => (p.down_rate, p.down_total),
            SortBy::Up => (p.up_rate, p.up_total),
            SortBy::Total => (p.up_rate + p.down_rate, p.up_total + p.down_total),
        };
        all.sort_by(|a, b| key(b).cmp(&key(a)).then(a.pid.cmp(&b.pid)));
        all.truncate(count);
        all
    }

    pub fn process(&self, pid: u32, scope: Scope) -> Option<ProcessTraffic> {
        self.series.get(&pid).map(|s| s.report(pid, scope))
    }

    /// The uid a process had when first seen.
    pub fn owner(&self, pid: u32) -> Option<u32> {
        self.series.get(&pid).map(|s| s.id.uid)
    }

    /// (up, down) bytes/s, one per second, oldest first.
    pub fn history(&self, pid: u32) -> Option<Vec<(u64, u64)>> {
        self.series.get(&pid).map(|s| s.history.iter().copied().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Odd pids belong to uid 1000, even ones to root.
    fn named(pid: u32) -> Option<ProcName> {
        (pid < 1000).then(|| ProcName {
            name: format!("p{pid}"),
            exe: format!("/bin/p{pid}"),
            uid: (pid % 2) * 1000,
            unit: String::new(),
        })
    }

    fn reading(pid: u32, up: u64, down: u64, local_down: u64) -> (u32, ProcTraffic) {
        let mut t = ProcTraffic::default();
        t.internet.up_bytes = up;
        t.internet.down_bytes = down;
        t.local.down_bytes = local_down;
        (pid, t)
    }

    fn accounting() -> Accounting {
        Accounting::with_namer(&MonitorConfig { enabled: true, window: Duration::from_secs(5), history: 60 }, named)
    }

    #[test]
    fn rates_totals_scopes_and_order() {
        let mut m = accounting();
        let t = Instant::now();
        for s in 0..=10u64 {
            let at = t + Duration::from_secs(s);
            m.sample(at, &[reading(1, s * 100, s * 1000, s * 50), reading(2, s * 5000, 0, 0)]);
        }
        let top = m.top(10, SortBy::Down, Scope::All, None);
        assert_eq!(top.iter().map(|p| p.pid).collect::<Vec<_>>(), [1, 2]);
        assert_eq!((top[0].down_rate, top[0].up_rate, top[0].down_total), (1050, 100, 10_500));
        assert_eq!((top[0].name.as_str(), top[0].uid), ("p1", 1000));
        assert_eq!(m.top(1, SortBy::Up, Scope::All, None)[0].pid, 2);
        let mine: Vec<u32> = m.top(10, SortBy::Up, Scope::All, Some(1000)).iter().map(|p| p.pid).collect();
        assert_eq!(mine, [1], "only uid 1000's processes");
        assert_eq!((m.owner(1), m.owner(2), m.owner(7)), (Some(1000), Some(0), None));
        assert_eq!(m.process(1, Scope::Local).unwrap().down_rate, 50);
        assert_eq!(m.process(1, Scope::Internet).unwrap().down_rate, 1000);
        let h = m.history(1).unwrap();
        assert_eq!(h.len(), 10);
        assert!(h.iter().all(|&(u, d)| u == 100 && d == 1050));
    }

    #[test]
    fn history_is_capped() {
        let mut m = accounting();
        let t = Instant::now();
        for s in 0..200u64 {
            m.sample(t + Duration::from_secs(s), &[reading(1, s, s, 0)]);
        }
        assert_eq!(m.history(1).unwrap().len(), 60);
    }

    #[test]
    fn gone_and_evicted_processes_leave() {
        let mut m = accounting();
        let t = Instant::now();
        // pid 5000 has no /proc entry: reported back to be forgotten.
        let gone = m.sample(t, &[reading(1, 1, 1, 0), reading(5000, 1, 1, 0)]);
        assert_eq!(gone, [5000]);
        assert_eq!(m.len(), 1);
        m.sample(t + Duration::from_secs(1), &[]);
        assert!(m.is_empty());
        m.sample(t + Duration::from_secs(2), &[reading(3, 1, 1, 0)]);
        m.exited(3, None);
        assert!(m.history(3).is_none());
    }

    #[test]
    fn bad_sort_and_scope_are_named() {
        assert!("sideways".parse::<SortBy>().unwrap_err().contains("sideways"));
        assert!("lan".parse::<Scope>().unwrap_err().contains("internet"));
        assert_eq!("".parse::<Scope>(), Ok(Scope::All));
    }
}
