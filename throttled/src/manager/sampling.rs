//! Sampling: every limit's counters into its rolling series (once a
//! second, in chunks), and every process's traffic (`traffic`).
use std::{
    collections::HashMap,
    ops::Bound,
    time::{Duration, Instant},
};

use throttle_common::Direction;

use super::{datapath::Datapath, rates::LimitSeries, table::ThrottleTable, traffic::Accounting, ThrottleId};
use crate::{config::MonitorConfig, kernel::bpf::Programs};

pub struct Sampling {
    /// Rolling rate and history per throttle and direction.
    rates: HashMap<(ThrottleId, Direction), LimitSeries>,
    /// Every process's traffic (empty when the kernel does not count it).
    pub accounting: Accounting,
}

impl Sampling {
    pub fn new(cfg: &MonitorConfig) -> Sampling {
        Sampling { rates: HashMap::new(), accounting: Accounting::new(cfg) }
    }

    /// The counters of up to `n` throttles with ids above `after`; returns
    /// the last id sampled, or `None` when there were none left. `span`:
    /// the rate window and the seconds of history kept.
    pub fn sample_throttles(
        &mut self,
        table: &ThrottleTable,
        datapath: &mut Datapath,
        after: Option<ThrottleId>,
        n: usize,
        span: (Duration, usize),
    ) -> Option<ThrottleId> {
        let now = Instant::now();
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut last = None;
        for (&id, t) in table.throttles.range((from, Bound::Unbounded)).take(n) {
            for (&dir, l) in &t.limits {
                if let Ok(c) = datapath.stats(l.backend, l.slot, dir) {
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
    pub fn sample_monitor(&mut self, programs: &mut Programs) {
        let now = Instant::now();
        if programs.monitoring() {
            let readings = programs.proc_traffic();
            for pid in self.accounting.sample(now, &readings) {
                programs.forget_traffic(pid);
            }
        }
    }

    pub fn series(&self, id: ThrottleId, dir: Direction) -> Option<&LimitSeries> {
        self.rates.get(&(id, dir))
    }

    /// A removed throttle's series go with it.
    pub fn forget(&mut self, id: ThrottleId) {
        self.rates.retain(|(t, _), _| *t != id);
    }

    /// (up, down) per second, oldest first; a direction without a limit is 0.
    pub fn history(&self, id: ThrottleId) -> Vec<(u64, u64)> {
        let rates = |dir| -> Vec<u64> {
            self.series(id, dir).map(|s| s.history.iter().map(|x| x.rate).collect()).unwrap_or_default()
        };
        let (up, down) = (rates(Direction::Up), rates(Direction::Down));
        let n = up.len().max(down.len());
        // Newest seconds line up: pad the shorter series at the front.
        let at = |v: &[u64], i: usize| (i + v.len()).checked_sub(n).map_or(0, |j| v[j]);
        (0..n).map(|i| (at(&up, i), at(&down, i))).collect()
    }
}
