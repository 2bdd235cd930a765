//! Priorities: the throttles under a contended capacity (the link, `[link]
//! down/up`) share it by weight (low 1, normal 2, high 4, critical 8). Every
//! 100 ms each throttle's measured rate says whether it wants more (its
//! bucket binds) or less (it uses under its share); capacity is divided by
//! weighted water-filling, so a throttle that uses less than its share
//! leaves the rest to the others and nothing starves. Pure: the counters
//! and the clock come in as arguments.
use std::{collections::HashMap, time::Instant};

use throttle_common::Direction;

use super::ThrottleId;
use crate::backend::SlotId;

/// What a throttle asks of a capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    pub weight: u64,
    /// Its own limit: never more than this.
    pub ceiling: u64,
    /// What it uses, with headroom to grow; `None`: it wants all it can get.
    pub demand: Option<u64>,
}

/// Weighted water-filling: claims whose demand is under their weighted
/// share get their demand, the rest split what is left by weight.
pub fn divide(capacity: u64, claims: &[Claim]) -> Vec<u64> {
    let mut alloc = vec![0u64; claims.len()];
    let mut open: Vec<usize> = (0..claims.len()).collect();
    let mut left = capacity;
    while !open.is_empty() {
        let weights: u64 = open.iter().map(|&i| claims[i].weight.max(1)).sum();
        let share = |i: usize| (left as u128 * claims[i].weight.max(1) as u128 / weights as u128) as u64;
        let want = |i: usize| claims[i].demand.unwrap_or(u64::MAX).min(claims[i].ceiling);
        let (met, unmet): (Vec<usize>, Vec<usize>) = open.iter().partition(|&&i| want(i) <= share(i));
        if met.is_empty() {
            unmet.iter().for_each(|&i| alloc[i] = share(i));
            break;
        }
        for i in met {
            alloc[i] = want(i);
            left = left.saturating_sub(alloc[i]);
        }
        open = unmet;
    }
    alloc
}

/// A throttle that uses at least 70% of what it was given (or of its
/// weighted fair share, if that is less) wants more: window control holds a
/// saturating download at 90-100% of its bucket. One that uses less asks
/// for half again what it uses (at least `FLOOR`), so it can grow and a
/// flow held back elsewhere settles, but its share shrinks by at most a
/// fifth a round: TCP takes a few round trips to fill a larger share, and
/// a flow still ramping up must keep it meanwhile.
const BINDS: f64 = 0.7;
const HEADROOM: f64 = 1.5;
const DECAY: f64 = 0.8;
const FLOOR: u64 = 32 << 10;

/// One throttle direction under a capacity: its counter's last reading,
/// its measured rate and its allocation.
#[derive(Clone, Copy, Debug)]
struct Entry {
    slot: SlotId,
    bytes: u64,
    at: Instant,
    rate: f64,
    alloc: u64,
}

/// The sharing state of every throttle direction under a capacity.
#[derive(Default)]
pub struct Sharing {
    entries: HashMap<(ThrottleId, Direction), Entry>,
    /// Backends (by index) that hold a shared capacity natively (HTB): the
    /// next division must lift it if the capacity goes.
    pub native: std::collections::BTreeSet<usize>,
}

impl Sharing {
    /// Takes a reading of a throttle direction's passed bytes; returns its
    /// claim. `fair` is its weighted share of the whole capacity.
    #[allow(clippy::too_many_arguments)]
    pub fn observe(
        &mut self,
        key: (ThrottleId, Direction),
        slot: SlotId,
        bytes: u64,
        now: Instant,
        weight: u64,
        ceiling: u64,
        fair: u64,
    ) -> Claim {
        let e = self.entries.entry(key).or_insert(Entry { slot, bytes, at: now, rate: 0.0, alloc: ceiling });
        if e.slot != slot {
            *e = Entry { slot, bytes, at: now, rate: 0.0, alloc: ceiling };
        }
        let dt = now.duration_since(e.at).as_secs_f64();
        if dt > 0.0 {
            let rate = bytes.saturating_sub(e.bytes) as f64 / dt;
            // Smoothed over about two readings: one 100 ms reading of GSO aggregates is lumpy.
            e.rate = if e.rate == 0.0 { rate } else { 0.5 * e.rate + 0.5 * rate };
        }
        (e.bytes, e.at) = (bytes, now);
        let demand = match e.rate >= BINDS * e.alloc.min(fair) as f64 {
            true => None,
            false => Some(((e.rate * HEADROOM).max(e.alloc.min(fair) as f64 * DECAY) as u64).max(FLOOR)),
        };
        Claim { weight, ceiling, demand }
    }

    /// Records an allocation; whether it differs enough from the last one
    /// (2%) to be written to the kernel.
    pub fn allot(&mut self, key: (ThrottleId, Direction), alloc: u64) -> bool {
        let Some(e) = self.entries.get_mut(&key) else { return false };
        let moved = alloc.abs_diff(e.alloc) * 50 > e.alloc.max(1);
        if moved {
            e.alloc = alloc;
        }
        moved
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.native.is_empty()
    }

    /// Forgets every entry not in `live`; returns them (their buckets go
    /// back to their own limits).
    pub fn retain(&mut self, live: &[(ThrottleId, Direction)]) -> Vec<(ThrottleId, Direction)> {
        let gone: Vec<_> = self.entries.keys().filter(|k| !live.contains(k)).copied().collect();
        gone.iter().for_each(|k| {
            self.entries.remove(k);
        });
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 1 << 20;

    fn claim(weight: u64, demand: Option<u64>) -> Claim {
        Claim { weight, ceiling: u64::MAX, demand }
    }

    #[test]
    fn saturated_claims_split_by_weight() {
        assert_eq!(divide(6 * M, &[claim(4, None), claim(1, None)]), [6 * M * 4 / 5, 6 * M / 5]);
        let all = divide(10 * M, &[claim(1, None), claim(2, None), claim(4, None), claim(8, None)]);
        assert!(all.iter().sum::<u64>() >= 10 * M - 4, "rounding loses at most a byte each");
    }

    #[test]
    fn what_one_leaves_goes_to_the_others() {
        // The high flow uses 0.5M: the low one gets the rest, not its 1/5.
        assert_eq!(divide(6 * M, &[claim(4, Some(M / 2)), claim(1, None)]), [M / 2, 6 * M - M / 2]);
        // A ceiling is a demand that never grows.
        let capped = Claim { weight: 8, ceiling: M, demand: None };
        assert_eq!(divide(6 * M, &[capped, claim(1, None)]), [M, 5 * M]);
        assert!(divide(6 * M, &[]).is_empty());
    }

    #[test]
    fn a_binding_bucket_asks_for_more_and_an_idle_one_for_less() {
        let mut s = Sharing::default();
        let t = Instant::now();
        let ms = |n| t + std::time::Duration::from_millis(n);
        let k = (1, Direction::Down);
        let fair = 4 * M;
        let first = s.observe(k, 3, 0, t, 4, 6 * M, fair).demand;
        assert_eq!(first, Some(fair * 4 / 5), "nothing measured yet: its fair share, less a fifth");
        assert!(s.allot(k, M));
        // 80 KiB in 100 ms at 1 MiB/s allotted: it binds.
        assert_eq!(s.observe(k, 3, 80 << 10, ms(100), 4, 6 * M, fair).demand, None);
        // It nearly stops: it asks for half again what it uses.
        let c = s.observe(k, 3, (80 << 10) + 1000, ms(200), 4, 6 * M, fair);
        assert_eq!(c.demand, Some(M * 4 / 5), "its share shrinks by a fifth a round");
        assert!(!s.allot(k, M + 1000), "under 2% is not worth a write");
        assert_eq!(s.retain(&[]), [k]);
    }
}
