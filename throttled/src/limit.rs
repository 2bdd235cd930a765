//! What a throttle enforces: a rate per direction and, optionally, the
//! backends. API calls, rules and saved throttles all carry this one type.
use serde::{Deserialize, Serialize};
use throttle_common::Direction;

use crate::{
    quota::{Quota, Then},
    schedule::Schedule,
    Rate,
};

/// Limits and backend choices for one throttle. `None` leaves a direction
/// as it is (unlimited for a new throttle). Serialized flat, as the rules
/// files and the saved state spell it (`down`, `up`, `down_backend`, ...).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitSpec {
    pub down: Option<Rate>,
    pub up: Option<Rate>,
    /// Backend for both directions; `None` picks the default per direction.
    /// Saved throttles never have it (they name each direction's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(default)]
    pub down_backend: Option<String>,
    #[serde(default)]
    pub up_backend: Option<String>,
    /// Block the target's traffic outright instead of limiting it: no rates
    /// and no backends with it (its slots are the `block` backend's).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub block: bool,
    /// A data cap, and what applies once it is used (both or neither).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quota>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub then: Option<Then>,
    /// The windows in which the limits apply, and the rate outside them
    /// (none: nothing applies outside).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<Schedule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otherwise: Option<Rate>,
    /// How it shares a link capacity with the others (`None`: as it is,
    /// normal for a new throttle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
}

/// A throttle's share of a contended capacity, by weight: low 1, normal 2,
/// high 4, critical 8.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
    Critical,
}

const PRIORITIES: [(&str, Priority); 4] =
    [("low", Priority::Low), ("normal", Priority::Normal), ("high", Priority::High), ("critical", Priority::Critical)];

impl Priority {
    pub fn weight(self) -> u64 {
        match self {
            Priority::Low => 1,
            Priority::Normal => 2,
            Priority::High => 4,
            Priority::Critical => 8,
        }
    }

    /// HTB's prio for it: who borrows first (0) what others leave.
    pub fn htb_prio(self) -> u32 {
        match self {
            Priority::Critical => 0,
            Priority::High => 1,
            Priority::Normal => 2,
            Priority::Low => 3,
        }
    }

    pub fn name(self) -> &'static str {
        PRIORITIES.iter().find(|(_, p)| *p == self).map_or("normal", |(n, _)| n)
    }

    /// The next one up, critical wrapping to low (the TUI's `p`).
    pub fn next(self) -> Priority {
        PRIORITIES[(PRIORITIES.iter().position(|(_, p)| *p == self).unwrap_or(1) + 1) % 4].1
    }
}

impl std::str::FromStr for Priority {
    type Err = InvalidLimit;
    fn from_str(s: &str) -> Result<Self, InvalidLimit> {
        let found = PRIORITIES.iter().find(|(n, _)| n.eq_ignore_ascii_case(s)).map(|(_, p)| *p);
        found.ok_or(InvalidLimit("priority is low, normal, high or critical"))
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Priority {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Priority {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// The backend that holds blocks; chosen by `block`, never by name.
pub const BLOCK_BACKEND: &str = "block";
/// The backend that holds a priority alone (no rate): its buckets are set by `share`.
pub const EBPF_BACKEND: &str = "ebpf";
/// The backend of a quota's directions that have no rate: it only counts.
pub const COUNT_BACKEND: &str = "count";
/// The backends the manager picks and users never name.
pub const MARKS: [&str; 2] = [BLOCK_BACKEND, COUNT_BACKEND];

/// Where a cap may run: `ebpf` (its bucket in every packet's chain) and
/// the marks; the `all` cap also on an HTB backend (the top class of its
/// trees). A user cap cannot be an HTB class: HTB is a tree, and one
/// throttle's processes may belong to several users.
pub fn cap_runs_on(all: bool, backend: &str) -> Result<(), InvalidLimit> {
    let htb = all && crate::backend::NAMES.contains(&backend);
    match backend == EBPF_BACKEND || MARKS.contains(&backend) || htb {
        true => Ok(()),
        false if all => Err(InvalidLimit("the all cap runs on ebpf, tc_htb or ifb_tc")),
        false => Err(InvalidLimit(
            "a user cap runs on the ebpf backend only: HTB is a tree, and a throttle's processes may belong to several users",
        )),
    }
}

/// A limit as reports show it, in bytes/s: 0 for a priority alone (its
/// bucket holds the largest rate, for `share` to lower).
pub fn shown(r: Rate) -> u64 {
    if r == Rate::MAX {
        0
    } else {
        r.bytes_per_sec()
    }
}

/// Limits that contradict themselves or say nothing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct InvalidLimit(pub &'static str);

impl LimitSpec {
    /// A block weighs as the strictest rate wherever limits are compared
    /// (which throttle wins a process, whether a change lowers a limit).
    pub fn rate(&self, dir: Direction) -> Option<Rate> {
        if self.block {
            return Some(Rate::MIN);
        }
        match dir {
            Direction::Up => self.up,
            Direction::Down => self.down,
        }
    }

    /// The one validation of limits, for API calls, rules and saved state
    /// alike: at least one rate; `backend` or per-direction backends, not
    /// both; a direction's backend only with that direction's rate
    /// (nothing given is silently ignored).
    pub fn check(&self) -> Result<(), InvalidLimit> {
        self.check_plan()?;
        let named = [&self.backend, &self.down_backend, &self.up_backend];
        if self.block {
            return match self.down.is_none() && self.up.is_none() && named.iter().all(|b| b.is_none()) {
                true => Ok(()),
                false => Err(InvalidLimit("block takes no limits and no backend")),
            };
        }
        if named.into_iter().flatten().any(|b| MARKS.contains(&b.as_str())) {
            return Err(InvalidLimit("backends \"block\" and \"count\" are never named"));
        }
        if self.down.is_none() && self.up.is_none() && self.quota.is_none() && self.priority.is_none() {
            return Err(InvalidLimit("give a download or an upload limit, a quota, a priority, or block"));
        }
        if self.backend.is_some() && (self.up_backend.is_some() || self.down_backend.is_some()) {
            return Err(InvalidLimit("backend and up_backend/down_backend exclude each other"));
        }
        if self.down_backend.is_some() && self.down.is_none() {
            return Err(InvalidLimit("down_backend given without a down limit"));
        }
        if self.up_backend.is_some() && self.up.is_none() {
            return Err(InvalidLimit("up_backend given without an up limit"));
        }
        Ok(())
    }

    /// Quota and schedule: `then` with `quota`, `otherwise` with `when`,
    /// and no quota on a block (it passes nothing to count).
    fn check_plan(&self) -> Result<(), InvalidLimit> {
        if self.quota.is_some() != self.then.is_some() {
            return Err(InvalidLimit("a quota needs then (a rate or block), and then needs a quota"));
        }
        if self.otherwise.is_some() && self.when.is_none() {
            return Err(InvalidLimit("otherwise needs when"));
        }
        if self.block && (self.quota.is_some() || self.priority.is_some()) {
            return Err(InvalidLimit("a block passes nothing: it takes no quota and no priority"));
        }
        Ok(())
    }

    /// Whether it changes over time (a quota or a schedule).
    pub fn is_planned(&self) -> bool {
        self.quota.is_some() || self.when.is_some()
    }

    pub fn backend_for(&self, dir: Direction) -> Option<&str> {
        if self.block {
            return Some(BLOCK_BACKEND);
        }
        match dir {
            Direction::Up => self.up_backend.as_deref(),
            Direction::Down => self.down_backend.as_deref(),
        }
        .or(self.backend.as_deref())
    }

    /// The spec of a cap (a `user` or `all` target, `all` saying which): its
    /// buckets stack on the throttles' in the cgroup programs, so it runs on
    /// `ebpf` whatever the defaults say, unless the `all` cap names an HTB
    /// backend (see [`cap_runs_on`]). It takes no priority (priorities
    /// share a cap).
    pub fn for_cap(&self, all: bool) -> Result<LimitSpec, InvalidLimit> {
        let named = [&self.backend, &self.down_backend, &self.up_backend];
        named.into_iter().flatten().try_for_each(|b| cap_runs_on(all, b))?;
        if self.priority.is_some() {
            return Err(InvalidLimit("a cap (user, all) takes no priority: the throttles inside it do"));
        }
        if self.backend.is_some() {
            return Ok(self.clone());
        }
        if self.names_backend() {
            let pin = |named: &Option<String>, rate: Option<Rate>| {
                named.clone().or_else(|| rate.map(|_| EBPF_BACKEND.to_string()))
            };
            let (down_backend, up_backend) = (pin(&self.down_backend, self.down), pin(&self.up_backend, self.up));
            return Ok(LimitSpec { down_backend, up_backend, ..self.clone() });
        }
        let backend = (!self.block).then(|| EBPF_BACKEND.to_string());
        Ok(LimitSpec { backend, down_backend: None, up_backend: None, ..self.clone() })
    }

    /// Whether any backend is named.
    pub fn names_backend(&self) -> bool {
        self.backend.is_some() || self.down_backend.is_some() || self.up_backend.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_runs_on_ebpf_without_a_priority() {
        let up = LimitSpec { up: Some(Rate::MIN), ..Default::default() };
        for all in [false, true] {
            assert_eq!(up.for_cap(all).unwrap().backend_for(Direction::Up), Some(EBPF_BACKEND));
            let named = LimitSpec { up_backend: Some("ebpf".into()), ..up.clone() };
            assert_eq!(named.for_cap(all).unwrap().backend_for(Direction::Up), Some(EBPF_BACKEND));
            assert!(LimitSpec { priority: Some(Priority::High), ..up.clone() }.for_cap(all).is_err());
            let block = LimitSpec { block: true, ..Default::default() };
            assert_eq!(block.for_cap(all).unwrap(), block);
        }
    }

    #[test]
    fn only_the_all_cap_runs_on_htb() {
        let both = LimitSpec { up: Some(Rate::MIN), down: Some(Rate::MIN), ..Default::default() };
        let htb = LimitSpec { up_backend: Some("tc_htb".into()), ..both.clone() };
        assert!(htb.for_cap(false).is_err(), "a user cap is not an HTB class");
        let all = htb.for_cap(true).unwrap();
        assert_eq!(all.backend_for(Direction::Up), Some("tc_htb"));
        assert_eq!(all.backend_for(Direction::Down), Some(EBPF_BACKEND), "the other direction stays on ebpf");
        assert!(LimitSpec { backend: Some("nope".into()), ..both }.for_cap(true).is_err());
        assert!(cap_runs_on(false, "ifb_tc").is_err() && cap_runs_on(true, "ifb_tc").is_ok());
    }

    #[test]
    fn block_stands_alone() {
        let block = LimitSpec { block: true, ..Default::default() };
        assert_eq!(block.check(), Ok(()));
        assert_eq!(block.rate(Direction::Up), Some(Rate::MIN));
        assert_eq!(block.backend_for(Direction::Down), Some(BLOCK_BACKEND));
        let with_rate = LimitSpec { down: Some(Rate::MIN), ..block.clone() };
        assert!(with_rate.check().is_err());
        let with_backend = LimitSpec { backend: Some("ebpf".into()), ..block };
        assert!(with_backend.check().is_err());
        let named = LimitSpec { down: Some(Rate::MIN), down_backend: Some("block".into()), ..Default::default() };
        assert!(named.check().is_err(), "block is not a backend to name");
    }

    #[test]
    fn block_round_trips_flat() {
        let block = LimitSpec { block: true, ..Default::default() };
        let json = serde_json::to_string(&block).unwrap();
        assert!(json.contains("\"block\":true"), "{json}");
        assert_eq!(serde_json::from_str::<LimitSpec>(&json).unwrap(), block);
        let plain = serde_json::to_string(&LimitSpec::default()).unwrap();
        assert!(!plain.contains("block"), "{plain}");
    }
}
