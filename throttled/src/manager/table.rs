//! The throttle table: every throttle, applied or saved and pending, and
//! the next id. Plain bookkeeping: nothing here touches the kernel.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

use throttle_common::{rate::Rate, Direction, ProcSlots};

use super::{
    coverage::{Assignment, Candidate},
    plan::Plan,
    policy::{self, Actor, Existing, Grant, Made, Need, Request},
    pool::Pool,
    LimitSpec, ManagerError, ThrottleId,
};
use crate::{
    backend::SlotId,
    config::Defaults,
    config::LinkCapacity,
    limit::{Priority, BLOCK_BACKEND},
    persist::{Change, PersistedThrottle, State, VERSION},
    target::Target,
};

/// Where a throttle came from: the API, or a file in `rules.d`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Runtime,
    Rule(PathBuf),
    /// Made for a client that holds it (`hold`): it ends when that client's
    /// bus connection does, and is never saved. The string names the
    /// holder (its unique bus name).
    Held(String),
}

pub struct Limit {
    pub slot: SlotId,
    pub rate: Rate,
    pub backend: usize,
}

pub struct Throttle {
    pub target: Target,
    pub origin: Origin,
    pub limits: BTreeMap<Direction, Limit>,
    /// Live processes the target matches.
    pub members: BTreeSet<u32>,
    /// Members this throttle limits in at least one direction.
    pub covered: BTreeSet<u32>,
    /// Protected processes the target matches: never members.
    pub excluded: BTreeSet<u32>,
    /// Whether it is admin-set, and whose share it counts against.
    pub made: Made,
    /// A quota or a schedule, for a throttle that changes over time.
    pub plan: Option<Plan>,
    /// Its weight where it shares a contended capacity (see `share`).
    pub priority: Priority,
}

impl Throttle {
    /// A throttle with no limits and no processes yet.
    pub fn new(target: Target, origin: Origin, made: Made) -> Throttle {
        let (limits, members, covered, excluded) = (BTreeMap::new(), BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
        Throttle { target, origin, limits, members, covered, excluded, made, plan: None, priority: Priority::Normal }
    }
}

/// A saved throttle that cannot be applied now (no free slot, no usable
/// backend): it stays saved, is reported as failed, and is retried when
/// slots free up and on reload.
pub struct Pending {
    pub record: PersistedThrottle,
    pub why: String,
}

pub struct ThrottleTable {
    pub throttles: BTreeMap<ThrottleId, Throttle>,
    /// Saved throttles not applied now (see `Pending`).
    pub pending: BTreeMap<ThrottleId, Pending>,
    pub next_id: ThrottleId,
}

impl ThrottleTable {
    pub fn new() -> ThrottleTable {
        ThrottleTable { throttles: BTreeMap::new(), pending: BTreeMap::new(), next_id: 1 }
    }

    /// The throttle of `target`, applied or pending.
    pub fn find(&self, target: &Target) -> Option<ThrottleId> {
        let applied = self.throttles.iter().find(|(_, t)| same_target(&t.target, target)).map(|(id, _)| *id);
        applied.or_else(|| self.pending.iter().find(|(_, p)| same_target(&p.record.target, target)).map(|(id, _)| *id))
    }

    /// Applied, or saved and not applied now (failed).
    pub fn exists(&self, id: ThrottleId) -> bool {
        self.throttles.contains_key(&id) || self.pending.contains_key(&id)
    }

    /// Every id: the applied ones, then the pending ones.
    pub fn ids(&self) -> Vec<ThrottleId> {
        self.throttles.keys().chain(self.pending.keys()).copied().collect()
    }

    /// The id the next new throttle gets, if one is left.
    pub fn free_id(&self) -> Result<ThrottleId, ManagerError> {
        let id = self.next_id;
        match id.checked_add(1) {
            Some(_) => Ok(id),
            None => Err(ManagerError::InvalidArgument("no throttle ids are left".into())),
        }
    }

    /// The throttles `holder` holds (`None`: every held throttle).
    pub fn held(&self, holder: Option<&str>) -> Vec<ThrottleId> {
        let holds = |t: &Throttle| matches!(&t.origin, Origin::Held(h) if holder.is_none_or(|want| want == h));
        self.throttles.iter().filter(|(_, t)| holds(t)).map(|(id, _)| *id).collect()
    }

    pub fn members(&self, id: ThrottleId) -> Vec<u32> {
        self.throttles.get(&id).map(|t| t.members.iter().copied().collect()).unwrap_or_default()
    }

    /// Throttles `uid` created that still exist.
    pub fn made_by(&self, uid: u32) -> usize {
        self.throttles.values().filter(|t| t.made.creator == Some(uid)).count()
    }

    pub fn has_pattern_targets(&self) -> bool {
        self.throttles.values().any(|t| !t.target.is_pid())
    }

    /// Throttles whose target takes in descendants.
    pub fn trees(&self) -> Vec<ThrottleId> {
        self.throttles.iter().filter(|(_, t)| t.target.is_tree()).map(|(id, _)| *id).collect()
    }

    /// Throttles with `pid` as a member.
    pub fn holding(&self, pid: u32) -> Vec<ThrottleId> {
        self.throttles.iter().filter(|(_, t)| t.members.contains(&pid)).map(|(id, _)| *id).collect()
    }

    /// Every (throttle, direction) held by `backend`.
    pub fn limits_on(&self, backend: usize) -> Vec<(ThrottleId, Direction)> {
        let on = |(id, t): (&ThrottleId, &Throttle)| {
            t.limits.iter().filter(|(_, l)| l.backend == backend).map(|(d, _)| (*id, *d)).collect::<Vec<_>>()
        };
        self.throttles.iter().flat_map(on).collect()
    }

    pub fn limit(&self, id: ThrottleId, dir: Direction) -> Option<&Limit> {
        self.throttles.get(&id)?.limits.get(&dir)
    }

    pub fn exclude(&mut self, id: ThrottleId, pid: u32) {
        if let Some(t) = self.throttles.get_mut(&id) {
            t.excluded.insert(pid);
        }
    }

    /// `pid` is no longer excluded anywhere (it left its protected role).
    pub fn unexclude(&mut self, pid: u32) {
        self.throttles.values_mut().for_each(|t| {
            t.excluded.remove(&pid);
        });
    }

    /// The kernel's slots for an assignment.
    pub fn slots(&self, a: Assignment) -> ProcSlots {
        let s = |id: Option<ThrottleId>, d| id.and_then(|id| self.limit(id, d)).map_or(0, |l| l.slot);
        let (up, down) = (Direction::Up, Direction::Down);
        ProcSlots {
            up: s(a.get(up), up),
            down: s(a.get(down), down),
            up_cap: s(a.cap(up), up),
            down_cap: s(a.cap(down), down),
        }
    }

    /// The `all` cap's slots, `[up, down]` (0: none).
    pub fn all_cap_slots(&self) -> [SlotId; 2] {
        let all = self.throttles.values().find(|t| t.target == Target::All);
        let s = |d| all.and_then(|t| t.limits.get(&d)).map_or(0, |l| l.slot);
        [s(Direction::Up), s(Direction::Down)]
    }

    /// The throttles of `matches` that exist, as `coverage` weighs them for `tgid`.
    pub fn candidates(&self, tgid: u32, matches: &[ThrottleId]) -> Vec<Candidate> {
        let candidate = |&id: &ThrottleId| {
            let t = self.throttles.get(&id)?;
            let rate = |d| t.limits.get(&d).map(|l| l.rate.bytes_per_sec());
            let rates = [rate(Direction::Up), rate(Direction::Down)];
            Some(Candidate { id, rank: t.target.rank(tgid), rates, admin: t.made.admin, cap: t.target.is_cap() })
        };
        matches.iter().filter_map(candidate).collect()
    }

    /// Records which throttles cover `tgid` after its assignment changed.
    pub fn set_covered(&mut self, tgid: u32, old: Assignment, new: Assignment) {
        for id in old.ids().filter(|id| !new.holds(*id)) {
            if let Some(t) = self.throttles.get_mut(&id) {
                t.covered.remove(&tgid);
            }
        }
        for id in new.ids() {
            if let Some(t) = self.throttles.get_mut(&id) {
                t.covered.insert(tgid);
            }
        }
    }

    fn existing(&self, pool: &Pool, id: ThrottleId) -> Result<Existing, ManagerError> {
        let t = self.throttles.get(&id).ok_or(ManagerError::NoSuchThrottle(id))?;
        let limits = t.limits.iter().map(|(d, l)| (*d, (l.rate, pool.name(l.backend)))).collect();
        Ok(Existing { id, admin: t.made.admin, tree: t.target.is_tree(), limits })
    }

    /// What `req` by `uid` needs (see `policy`). Root needs nothing more than it has.
    pub fn need(&self, pool: &Pool, uid: u32, req: &Request) -> Result<Need, ManagerError> {
        if uid == 0 {
            return Ok(Need::Own);
        }
        let default = |d: &Direction| pool.default_index(*d).ok().map(|i| pool.name(i));
        let defaults: Vec<&str> = Direction::BOTH.iter().filter_map(default).collect();
        Ok(match req {
            Request::Limit(target, spec) => {
                let existing = self.find(target).map(|id| self.existing(pool, id)).transpose()?;
                policy::for_limit(policy::owns(uid, target), target.is_tree(), existing.as_ref(), spec, &defaults)
            }
            Request::Change(id, spec) => {
                let e = self.existing(pool, *id)?;
                let owns = policy::owns(uid, &self.throttles[id].target);
                policy::for_limit(owns, e.tree, Some(&e), spec, &defaults)
            }
            Request::Remove(id) => {
                let e = self.existing(pool, *id)?;
                policy::for_remove(policy::owns(uid, &self.throttles[id].target), &e)
            }
        })
    }

    /// Checks `req` again under the lock, just before it runs: the
    /// throttle may have changed since the caller was authorized.
    pub fn permit(&self, pool: &Pool, actor: Actor, req: &Request) -> Result<(), ManagerError> {
        if actor.grant == Grant::Any {
            return Ok(());
        }
        match self.need(pool, actor.uid, req)? {
            Need::Any(why) => Err(ManagerError::NotPermitted(why)),
            Need::Own => Ok(()),
        }
    }

    /// One line: "3 throttles on ebpf, tc_htb".
    pub fn status(&self, pool: &Pool) -> String {
        let mut used: Vec<&str> =
            self.throttles.values().flat_map(|t| t.limits.values()).map(|l| pool.name(l.backend)).collect();
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

    /// An applied throttle as saved: each limited direction's rate and
    /// backend, or a planned one's spec as asked.
    pub(super) fn record(&self, id: ThrottleId, pool: &Pool) -> PersistedThrottle {
        let t = &self.throttles[&id];
        let (admin, creator) = (t.made.admin, t.made.creator);
        if let Some(p) = &t.plan {
            return PersistedThrottle { id, target: t.target.clone(), spec: p.spec.clone(), admin, creator };
        }
        // A priority alone holds its directions at the largest rate: no limit to save.
        let limit = |d| t.limits.get(&d).filter(|l| l.rate != Rate::MAX);
        let rate = |d| limit(d).map(|l| l.rate);
        let backend = |d| limit(d).map(|l| pool.name(l.backend).to_string());
        let block = t.limits.values().any(|l| pool.name(l.backend) == BLOCK_BACKEND);
        let spec = match block {
            true => LimitSpec { block, ..Default::default() },
            false => LimitSpec {
                down: rate(Direction::Down),
                up: rate(Direction::Up),
                backend: None,
                down_backend: backend(Direction::Down),
                up_backend: backend(Direction::Up),
                priority: (t.priority != Priority::Normal).then_some(t.priority),
                ..Default::default()
            },
        };
        PersistedThrottle { id, target: t.target.clone(), spec, admin, creator }
    }

    /// Throttle `id` as it is now, to save: a runtime throttle's limits and
    /// backends, or, once it is gone (or a rule's), that it is.
    pub fn change(&self, id: ThrottleId, pool: &Pool) -> Change {
        match (self.throttles.get(&id), self.pending.get(&id)) {
            (Some(t), _) if t.origin == Origin::Runtime => Change::Put(self.record(id, pool)),
            (None, Some(p)) => Change::Put(p.record.clone()),
            _ => Change::Delete(id),
        }
    }

    /// Every runtime throttle as it is now (failed ones as saved), and the
    /// runtime defaults.
    pub fn saved_state(&self, pool: &Pool, defaults: &Defaults, link: Option<LinkCapacity>) -> State {
        let mut throttles: Vec<PersistedThrottle> = self
            .throttles
            .iter()
            .filter(|(_, t)| t.origin == Origin::Runtime)
            .map(|(&id, _)| self.record(id, pool))
            .chain(self.pending.values().map(|p| p.record.clone()))
            .collect();
        throttles.sort_by_key(|t| t.id);
        State { version: VERSION, seq: 0, next_id: self.next_id, defaults: defaults.clone(), link, throttles }
    }
}

/// Pid targets are the same throttle with or without `tree`.
fn same_target(a: &Target, b: &Target) -> bool {
    match (a, b) {
        (Target::Pid { ident: x, .. }, Target::Pid { ident: y, .. }) => x == y,
        _ => a == b,
    }
}
