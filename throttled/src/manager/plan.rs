//! A planned throttle's state over time (its quota's usage, its schedule's
//! windows) and what it enforces because of it. Pure: the clock and the
//! counters come in as arguments, so the rules are unit-tested without a
//! kernel or a real day (`timed.rs` applies them to the core).
use std::collections::BTreeMap;

use jiff::{tz::TimeZone, Timestamp};
use throttle_common::{rate::Rate, Direction};

use crate::{
    backend::SlotId,
    limit::{LimitSpec, EBPF_BACKEND},
    quota::{Quota, Then},
};

/// What a direction enforces now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Want {
    /// A rate, on the named backend (`None`: the one it has, or the default).
    Rate(Rate, Option<String>),
    Block,
    /// No rate, but a quota counts it.
    Count,
    Nothing,
}

/// Usage of a quota's current period, in bytes at the IP layer, both directions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub used: u64,
    /// Unix seconds: the period's start and the next period's.
    pub start: i64,
    pub resets_at: i64,
}

pub struct Plan {
    /// What was asked, each rated direction's backend named.
    pub spec: LimitSpec,
    pub usage: Usage,
    pub exceeded: bool,
    /// Inside a schedule window (always, without a schedule).
    pub active: bool,
    /// Per direction: the (backend, slot) counted last, and its passed bytes then.
    seen: BTreeMap<Direction, ((usize, SlotId), u64)>,
    /// The wall-clock second the windows were last checked: once a second
    /// is enough (a set clock changes the second too), and a schedule of
    /// many windows costs a few dozen time zone conversions.
    checked: i64,
}

/// What changed at a tick.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Turn {
    pub exceeded: Option<bool>,
    pub active: Option<bool>,
}

impl Turn {
    pub fn any(self) -> bool {
        self.exceeded.is_some() || self.active.is_some()
    }
}

impl Plan {
    /// A new plan at `now`: its quota unused, its schedule as `now` finds it.
    pub fn new(spec: LimitSpec, now: Timestamp, tz: &TimeZone) -> Plan {
        let (usage, seen, checked) = (Usage::default(), BTreeMap::new(), now.as_second());
        let mut p = Plan { spec, usage, exceeded: false, active: true, seen, checked };
        p.usage = p.fresh_usage(now, tz);
        p.active = p.spec.when.as_ref().is_none_or(|w| w.active_at(now, tz));
        p
    }

    fn quota(&self) -> Option<Quota> {
        self.spec.quota
    }

    fn fresh_usage(&self, now: Timestamp, tz: &TimeZone) -> Usage {
        let bounds = self.quota().and_then(|q| q.period.bounds(now, tz));
        bounds.map_or_else(Usage::default, |(s, e)| Usage { used: 0, start: s.as_second(), resets_at: e.as_second() })
    }

    /// Takes a saved usage if it is of the current period (the same kind,
    /// not one reset since).
    pub fn restore(&mut self, period: &str, saved: Usage) {
        let same = self.quota().is_some_and(|q| q.period.name() == period);
        if same && saved.start == self.usage.start {
            self.usage.used = self.usage.used.max(saved.used);
        }
    }

    /// Adds what a direction's slot passed since the last reading. A new
    /// slot (a move, a change of action) counts from zero: slots start empty.
    pub fn count(&mut self, dir: Direction, slot: (usize, SlotId), passed: u64) {
        let before = match self.seen.get(&dir) {
            Some((s, b)) if *s == slot => *b,
            _ => 0,
        };
        self.usage.used = self.usage.used.saturating_add(passed.saturating_sub(before));
        self.seen.insert(dir, (slot, passed));
    }

    /// Moves the plan to `now`: a new period, a used-up quota, a window
    /// opening or closing. Returns what changed.
    pub fn tick(&mut self, now: Timestamp, tz: &TimeZone) -> Turn {
        let mut turn = Turn::default();
        if self.quota().is_some() && now.as_second() >= self.usage.resets_at {
            self.usage = self.fresh_usage(now, tz);
        }
        let exceeded = self.quota().is_some_and(|q| self.usage.used >= q.bytes);
        if exceeded != self.exceeded {
            self.exceeded = exceeded;
            turn.exceeded = Some(exceeded);
        }
        if self.checked == now.as_second() {
            return turn;
        }
        self.checked = now.as_second();
        let active = self.spec.when.as_ref().is_none_or(|w| w.active_at(now, tz));
        if active != self.active {
            self.active = active;
            turn.active = Some(active);
        }
        turn
    }

    /// What each direction enforces now.
    pub fn wants(&self) -> [(Direction, Want); 2] {
        Direction::BOTH.map(|d| (d, self.want(d)))
    }

    fn want(&self, dir: Direction) -> Want {
        let s = &self.spec;
        let own = s.rate(dir).filter(|_| !s.block);
        let named = || s.backend_for(dir).map(str::to_string);
        let want = match (self.exceeded, s.then, self.active) {
            // A used-up quota applies all day, window or not, and never loosens a limit.
            (true, Some(Then::Block), _) => Want::Block,
            (true, Some(Then::Rate(r)), active) => {
                let own = own.filter(|_| active);
                Want::Rate(own.map_or(r, |o| o.min(r)), own.and(named()))
            }
            (_, _, true) if s.block => Want::Block,
            (_, _, true) => own.map_or(Want::Nothing, |r| Want::Rate(r, named())),
            // Outside the windows: `otherwise` on the directions it limits (both, if none).
            (_, _, false) => match s.otherwise {
                Some(r) if own.is_some() || (s.down.is_none() && s.up.is_none()) => Want::Rate(r, named()),
                _ => Want::Nothing,
            },
        };
        match want {
            // A priority alone holds a bucket for `share` to set.
            Want::Nothing if s.priority.is_some() => Want::Rate(Rate::MAX, Some(EBPF_BACKEND.into())),
            Want::Nothing if s.quota.is_some() => Want::Count,
            w => w,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{quota::Period, schedule::Schedule};

    fn rate(s: &str) -> Rate {
        s.parse().unwrap()
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn spec(down: Option<&str>, quota: Option<(&str, &str)>, when: Option<&str>, otherwise: Option<&str>) -> LimitSpec {
        LimitSpec {
            down: down.map(rate),
            down_backend: down.map(|_| "ebpf".into()),
            quota: quota.map(|(q, _)| q.parse().unwrap()),
            then: quota.map(|(_, t)| t.parse().unwrap()),
            when: when.map(|w| w.parse::<Schedule>().unwrap()),
            otherwise: otherwise.map(rate),
            ..Default::default()
        }
    }

    fn wants(p: &Plan) -> (Want, Want) {
        let [(_, up), (_, down)] = p.wants();
        (up, down)
    }

    #[test]
    fn a_quota_counts_then_acts_until_the_period_resets() {
        let tz = TimeZone::UTC;
        let mut p = Plan::new(spec(Some("2M"), Some(("10M/day", "256K")), None, None), at("2026-12-02T10:00:00Z"), &tz);
        assert_eq!(p.usage.resets_at, at("2026-12-03T00:00:00Z").as_second());
        assert_eq!(wants(&p), (Want::Count, Want::Rate(rate("2M"), Some("ebpf".into()))));
        p.count(Direction::Down, (0, 5), 6 << 20);
        p.count(Direction::Up, (4, 6), 1 << 20);
        assert_eq!(p.tick(at("2026-12-02T10:00:01Z"), &tz), Turn::default());
        p.count(Direction::Down, (0, 5), 9 << 20);
        assert_eq!(p.usage.used, 10 << 20, "only what each slot passed since its last reading");
        assert_eq!(p.tick(at("2026-12-02T10:00:02Z"), &tz), Turn { exceeded: Some(true), active: None });
        let r256 = Want::Rate(rate("256K"), None);
        assert_eq!(wants(&p), (r256.clone(), Want::Rate(rate("256K"), Some("ebpf".into()))));
        // A new slot counts from zero.
        p.count(Direction::Up, (0, 7), 100);
        assert_eq!(p.usage.used, (10 << 20) + 100);
        assert_eq!(p.tick(at("2026-12-03T00:00:00Z"), &tz), Turn { exceeded: Some(false), active: None });
        assert_eq!(p.usage.used, 0);
        // A saved usage of this period is taken, one of another is not.
        p.restore("day", Usage { used: 5, start: at("2026-12-02T00:00:00Z").as_second(), resets_at: 0 });
        assert_eq!(p.usage.used, 0);
        p.restore("week", Usage { used: 5, start: p.usage.start, resets_at: 0 });
        assert_eq!(p.usage.used, 0, "another period");
        p.restore("day", Usage { used: 5, start: p.usage.start, resets_at: 0 });
        assert_eq!(p.usage.used, 5);
    }

    #[test]
    fn then_never_loosens_and_block_blocks_both() {
        let tz = TimeZone::UTC;
        let mut p =
            Plan::new(spec(Some("100K"), Some(("1K/hour", "256K")), None, None), at("2026-12-02T10:00:00Z"), &tz);
        p.count(Direction::Down, (0, 1), 2048);
        p.tick(at("2026-12-02T10:00:01Z"), &tz);
        assert_eq!(wants(&p).1, Want::Rate(rate("100K"), Some("ebpf".into())));
        let mut b = Plan::new(spec(None, Some(("1K/hour", "block")), None, None), at("2026-12-02T10:00:00Z"), &tz);
        assert_eq!(wants(&b), (Want::Count, Want::Count));
        b.count(Direction::Up, (4, 1), 4096);
        b.tick(at("2026-12-02T10:00:01Z"), &tz);
        assert_eq!(wants(&b), (Want::Block, Want::Block));
        assert_eq!(b.spec.quota.unwrap().period, Period::Hour);
    }

    #[test]
    fn a_schedule_switches_between_limits_and_otherwise() {
        let tz = TimeZone::UTC;
        let work = spec(Some("256K"), None, Some("* 09:00-17:00"), None);
        let mut p = Plan::new(work, at("2026-12-02T08:59:59Z"), &tz);
        assert!(!p.active);
        assert_eq!(wants(&p), (Want::Nothing, Want::Nothing));
        assert_eq!(p.tick(at("2026-12-02T09:00:00Z"), &tz), Turn { exceeded: None, active: Some(true) });
        assert_eq!(wants(&p).1, Want::Rate(rate("256K"), Some("ebpf".into())));
        let slow = spec(Some("256K"), None, Some("* 09:00-17:00"), Some("5M"));
        let p = Plan::new(slow, at("2026-12-02T18:00:00Z"), &tz);
        assert_eq!(
            wants(&p),
            (Want::Nothing, Want::Rate(rate("5M"), Some("ebpf".into()))),
            "otherwise on its directions"
        );
        // A clock set back is a tick like any other.
        let mut p = Plan::new(spec(Some("1M"), None, Some("* 09:00-17:00"), None), at("2026-12-02T10:00:00Z"), &tz);
        assert_eq!(p.tick(at("2026-12-01T20:00:00Z"), &tz).active, Some(false));
    }
}
