//! `impl Core` for throttles that change over time (a quota, a schedule):
//! their creation and changes, and the tick that counts their quota, turns
//! their windows and applies what their `Plan` wants. Each switch is a
//! change of the throttle's limits in place: a rate changes, a direction
//! moves make-before-break to `block` or `count`, or it goes.
use std::time::Instant;

use jiff::{tz::TimeZone, Timestamp};
use throttle_common::{rate::Rate, Direction};

use super::{
    core::Core,
    events::Event,
    plan::{Plan, Turn, Usage, Want},
    policy::{Actor, Made},
    share,
    table::Throttle,
    LimitSpec, ManagerError, ThrottleId,
};
use crate::{
    backend::SlotId,
    config::LinkCapacity,
    limit::{Priority, BLOCK_BACKEND, COUNT_BACKEND, EBPF_BACKEND, MARKS},
    persist::Change,
    target::Target,
};

impl Core {
    /// The spec a plan keeps: every rated direction's backend named, so
    /// that a default changed later moves nothing (as for plain throttles).
    fn pin_backends(&self, spec: &LimitSpec) -> Result<LimitSpec, ManagerError> {
        let mut s = spec.clone();
        s.backend = None;
        for dir in Direction::BOTH {
            if s.block || spec.rate(dir).is_none() {
                continue;
            }
            let name = self.datapath.pool.name(self.datapath.pool.resolve(spec.backend_for(dir), dir)?).to_string();
            match dir {
                Direction::Up => s.up_backend = Some(name),
                Direction::Down => s.down_backend = Some(name),
            }
        }
        Ok(s)
    }

    /// A planned throttle's direction moved to `backend` (a migration, a
    /// failover): its plan names that backend from now on.
    pub(super) fn pin_plan(&mut self, id: ThrottleId, dir: Direction, backend: &str) {
        let Some(p) = self.table.throttles.get_mut(&id).and_then(|t| t.plan.as_mut()) else { return };
        if p.spec.block || p.spec.rate(dir).is_none() || MARKS.contains(&backend) {
            return;
        }
        match dir {
            Direction::Up => p.spec.up_backend = Some(backend.to_string()),
            Direction::Down => p.spec.down_backend = Some(backend.to_string()),
        }
    }

    /// Adds planned throttle `id` to the table and applies what it wants now.
    pub(super) fn create_planned(&mut self, id: ThrottleId, t: Throttle, spec: &LimitSpec) -> Result<(), ManagerError> {
        let spec = self.pin_backends(spec)?;
        let mut plan = Plan::new(spec, Timestamp::now(), &TimeZone::system());
        if let Some((period, saved)) = self.quota_book.get(&id) {
            plan.restore(period, *saved);
            plan.tick(Timestamp::now(), &TimeZone::system());
        }
        self.table.throttles.insert(id, Throttle { plan: Some(plan), ..t });
        self.enforce(id)
    }

    /// The spec a change makes of throttle `id`'s: what `spec` gives
    /// replaces, what it leaves out stays.
    pub(super) fn merged(&self, id: ThrottleId, spec: &LimitSpec) -> LimitSpec {
        let old = match self.table.throttles.get(&id).and_then(|t| t.plan.as_ref()) {
            Some(p) => p.spec.clone(),
            None => self.table.record(id, &self.datapath.pool).spec,
        };
        if spec.block {
            let (when, otherwise) = (spec.when.clone().or(old.when), spec.otherwise.or(old.otherwise));
            return LimitSpec { block: true, when, otherwise, ..Default::default() };
        }
        let pick = |new: &Option<String>, old: &Option<String>, rate_given: bool| match rate_given {
            true => new.clone().or(spec.backend.clone()),
            false => old.clone(),
        };
        LimitSpec {
            down: spec.down.or(old.down),
            up: spec.up.or(old.up),
            backend: None,
            down_backend: pick(&spec.down_backend, &old.down_backend, spec.down.is_some()),
            up_backend: pick(&spec.up_backend, &old.up_backend, spec.up.is_some()),
            block: false,
            quota: spec.quota.or(old.quota),
            then: spec.then.or(old.then),
            when: spec.when.clone().or(old.when),
            otherwise: spec.otherwise.or(old.otherwise),
            priority: spec.priority.or(old.priority),
        }
    }

    /// Changes throttle `id` to the planned `spec` (already merged and checked).
    pub(super) fn change_planned(
        &mut self,
        id: ThrottleId,
        spec: &LimitSpec,
        by: Option<Actor>,
    ) -> Result<(), ManagerError> {
        let spec = self.pin_backends(spec)?;
        self.count_quota(id);
        let (now, tz) = (Timestamp::now(), TimeZone::system());
        let t = self.table.throttles.get_mut(&id).ok_or(ManagerError::NoSuchThrottle(id))?;
        let mut plan = Plan::new(spec, now, &tz);
        if let Some(old) = t.plan.take().filter(|o| o.spec.quota.map(|q| q.period) == plan.spec.quota.map(|q| q.period))
        {
            plan.restore(old.spec.quota.map_or("", |q| q.period.name()), old.usage);
        }
        plan.tick(now, &tz);
        t.priority = plan.spec.priority.unwrap_or(t.priority);
        t.plan = Some(plan);
        t.made.admin |= Made::by(by).admin;
        self.enforce(id)?;
        self.emit(Event::ThrottleChanged { id });
        self.save_throttle(id);
        Ok(())
    }

    /// Brings throttle `id`'s limits to what its plan wants now.
    pub(super) fn enforce(&mut self, id: ThrottleId) -> Result<(), ManagerError> {
        let Some(wants) = self.table.throttles.get(&id).and_then(|t| t.plan.as_ref()).map(Plan::wants) else {
            return Ok(());
        };
        let mut first = Ok(());
        for (dir, want) in wants {
            if let Err(e) = self.steer(id, dir, want) {
                tracing::warn!(throttle_id = id, direction = %dir, error = %e, "could not apply the throttle's plan");
                first = first.and(Err(e));
            }
        }
        for p in self.table.members(id) {
            self.procs.reassign(p, &mut self.table, &mut self.datapath);
        }
        first
    }

    fn steer(&mut self, id: ThrottleId, dir: Direction, want: Want) -> Result<(), ManagerError> {
        let pool = &self.datapath.pool;
        let now = self.table.limit(id, dir).map(|l| (l.backend, l.slot, l.rate));
        let target = match want {
            Want::Nothing => None,
            Want::Count => Some((pool.resolve(Some(COUNT_BACKEND), dir)?, Rate::MAX)),
            Want::Block => Some((pool.resolve(Some(BLOCK_BACKEND), dir)?, Rate::MIN)),
            Want::Rate(r, name) => match (now, name) {
                (Some((b, ..)), None) if pool.backends[b].automatic() => Some((b, r)),
                (_, name) => Some((pool.resolve(name.as_deref(), dir)?, r)),
            },
        };
        match (now, target) {
            (None, None) => Ok(()),
            (Some(_), None) => self.drop_limit(id, dir),
            (None, Some((b, r))) => self.add_limit(id, dir, r, b),
            (Some((b0, slot, r0)), Some((b, r))) if b0 == b => match r0 == r {
                true => Ok(()),
                false => self.change_rate(id, dir, b, slot, r),
            },
            (Some(_), Some((b, r))) => self.move_limit(id, dir, b, r).map(|_| ()),
        }
    }

    /// Ends one direction of a throttle: its processes let go of the slot
    /// (to the next matching throttle, or none) before it is released.
    fn drop_limit(&mut self, id: ThrottleId, dir: Direction) -> Result<(), ManagerError> {
        let Some(l) = self.table.limit(id, dir) else { return Ok(()) };
        let (b, slot) = (l.backend, l.slot);
        for tgid in self.procs.tuned_in(&self.table, id, dir) {
            self.datapath.cover(b, slot, dir, tgid, None);
        }
        if let Some(t) = self.table.throttles.get_mut(&id) {
            t.limits.remove(&dir);
        }
        self.publish_all_cap();
        for p in self.table.members(id) {
            self.procs.reassign(p, &mut self.table, &mut self.datapath);
        }
        self.datapath.release(b, slot, dir)
    }

    /// Adds what each planned throttle's slots passed to its quota.
    fn count_quota(&mut self, id: ThrottleId) {
        let Some(t) = self.table.throttles.get(&id).filter(|t| t.plan.as_ref().is_some_and(|p| p.spec.quota.is_some()))
        else {
            return;
        };
        let limits: Vec<_> = t.limits.iter().map(|(d, l)| (*d, l.backend, l.slot)).collect();
        let readings: Vec<_> = limits
            .into_iter()
            .filter_map(|(d, b, s)| self.datapath.stats(b, s, d).ok().map(|c| (d, (b, s), c.pass_bytes)))
            .collect();
        if let Some(plan) = self.table.throttles.get_mut(&id).and_then(|t| t.plan.as_mut()) {
            for (d, slot, passed) in readings {
                plan.count(d, slot, passed);
            }
        }
    }

    /// Whether any throttle changes over time (the tick has work).
    pub fn has_plans(&self) -> bool {
        self.table.throttles.values().any(|t| t.plan.is_some())
    }

    /// Every planned throttle at `now`: its quota counted, its period
    /// reset, its windows turned; what changed is applied and announced.
    pub fn tick_plans(&mut self, now: Timestamp, tz: &TimeZone) {
        let ids: Vec<ThrottleId> =
            self.table.throttles.iter().filter(|(_, t)| t.plan.is_some()).map(|(id, _)| *id).collect();
        for id in ids {
            self.count_quota(id);
            let Some(turn) = self.table.throttles.get_mut(&id).and_then(|t| t.plan.as_mut()).map(|p| p.tick(now, tz))
            else {
                continue;
            };
            if turn.any() {
                self.turned(id, turn);
            }
        }
    }

    fn turned(&mut self, id: ThrottleId, turn: Turn) {
        let _ = self.enforce(id);
        if let Some(exceeded) = turn.exceeded {
            tracing::info!(throttle_id = id, exceeded, "quota {}", if exceeded { "used up" } else { "reset" });
            if exceeded {
                self.emit(Event::QuotaExceeded { id });
            }
        }
        if let Some(active) = turn.active {
            tracing::info!(throttle_id = id, active, "schedule window {}", if active { "opened" } else { "closed" });
            self.emit(Event::ScheduleChanged { id, active });
        }
        self.emit(Event::ThrottleChanged { id });
    }

    /// Every quota's usage now, to save with the usage history.
    pub fn quota_usages(&mut self) -> Vec<(ThrottleId, &'static str, Usage)> {
        let ids: Vec<ThrottleId> = self.table.throttles.keys().copied().collect();
        ids.iter().for_each(|id| self.count_quota(*id));
        let usage = |(id, t): (&ThrottleId, &Throttle)| {
            let p = t.plan.as_ref()?;
            Some((*id, p.spec.quota?.period.name(), p.usage))
        };
        self.table.throttles.iter().filter_map(usage).collect()
    }

    /// Saved usages, by throttle: taken now by the planned throttles that
    /// have a quota, and by those created later (a restore, a reload).
    pub fn restore_quotas(&mut self, saved: std::collections::HashMap<ThrottleId, (String, Usage)>) {
        let (now, tz) = (Timestamp::now(), TimeZone::system());
        self.quota_book = saved;
        let ids: Vec<ThrottleId> = self.table.throttles.keys().copied().collect();
        for id in ids {
            let Some((period, saved)) = self.quota_book.get(&id).cloned() else { continue };
            let Some(plan) = self.table.throttles.get_mut(&id).and_then(|t| t.plan.as_mut()) else { continue };
            plan.restore(&period, saved);
            let turn = plan.tick(now, &tz);
            if turn.any() {
                self.turned(id, turn);
            }
        }
    }
}

impl Core {
    /// The link capacity in effect: the one set at runtime, or the config's.
    pub fn link(&self) -> LinkCapacity {
        self.runtime_link.unwrap_or(self.config.link)
    }

    /// Sets the link capacity at runtime (saved; `share` applies it).
    pub fn set_link(&mut self, link: LinkCapacity) {
        self.runtime_link = Some(link);
        self.save(Change::Link(link));
        tracing::info!(down = ?link.down.map(|r| r.to_string()), up = ?link.up.map(|r| r.to_string()), "link capacity set");
    }

    /// Whether `share` has work: a capacity to share, or buckets to give back.
    pub fn sharing(&self) -> bool {
        self.link().is_set() || self.table.all_cap_slots() != [0, 0] || !self.sharing.is_empty()
    }

    /// The capacity throttles share in `dir`: the link's, or the `all`
    /// cap's where that is lower (a cap with a rate of its own, not a mark).
    fn capacity(&self, dir: Direction) -> Option<Rate> {
        let all = self.table.throttles.values().find(|t| t.target == Target::All);
        let rated = |b: usize| !MARKS.contains(&self.datapath.pool.name(b));
        let cap = all.and_then(|t| t.limits.get(&dir)).filter(|l| rated(l.backend)).map(|l| l.rate);
        match (self.link().get(dir), cap) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Divides the capacity of each direction that has one (the link's, or
    /// the `all` cap's) among the throttles limiting that direction on
    /// `ebpf`, by priority, from what each used since the last call;
    /// writes the buckets whose share moved. Caps are not divided.
    pub fn share(&mut self, now: Instant) {
        let mut live = Vec::new();
        for dir in Direction::BOTH {
            let Some(cap) = self.capacity(dir) else { continue };
            let ebpf = |b: usize| self.datapath.pool.name(b) == EBPF_BACKEND;
            let under: Vec<(ThrottleId, SlotId, Rate, Priority)> = self
                .table
                .throttles
                .iter()
                .filter(|(_, t)| !t.target.is_cap())
                .filter_map(|(id, t)| {
                    t.limits.get(&dir).filter(|l| ebpf(l.backend)).map(|l| (*id, l.slot, l.rate, t.priority))
                })
                .collect();
            let mut claims = Vec::with_capacity(under.len());
            let mut shared = Vec::with_capacity(under.len());
            let weights: u64 = under.iter().map(|u| u.3.weight()).sum();
            for (id, slot, rate, prio) in under {
                let Ok(c) = self.datapath.programs.counters(slot) else { continue };
                let fair = (cap.bytes_per_sec() as u128 * prio.weight() as u128 / weights.max(1) as u128) as u64;
                let (w, ceiling) = (prio.weight(), rate.bytes_per_sec());
                claims.push(self.sharing.observe((id, dir), slot, c.pass_bytes, now, w, ceiling, fair));
                shared.push(id);
            }
            let allocs = share::divide(cap.bytes_per_sec(), &claims);
            tracing::trace!(direction = %dir, ?claims, ?allocs, "link shared");
            for (id, alloc) in shared.into_iter().zip(allocs) {
                live.push((id, dir));
                if self.sharing.allot((id, dir), alloc) {
                    self.set_share(id, dir, Rate::from_bytes(alloc.max(1)).ok());
                }
            }
        }
        for (id, dir) in self.sharing.retain(&live) {
            self.set_share(id, dir, None);
        }
        self.share_natively();
    }

    /// The shaping backends (HTB) share the capacity themselves, by their
    /// own rate, ceil and prio: each gets its throttles' weights.
    fn share_natively(&mut self) {
        let backends = &self.datapath.pool.backends;
        let shapers: Vec<(usize, Direction)> = (0..backends.len())
            .filter(|&b| backends[b].capabilities().shaping)
            .flat_map(|b| Direction::BOTH.into_iter().filter(move |d| backends[b].supports(*d)).map(move |d| (b, d)))
            .collect();
        for (b, dir) in shapers {
            let capacity = self.capacity(dir);
            let weights: Vec<(SlotId, u64, u32)> = self
                .table
                .throttles
                .values()
                .filter(|t| !t.target.is_cap())
                .filter_map(|t| t.limits.get(&dir).filter(|l| l.backend == b).map(|l| (l.slot, t.priority)))
                .map(|(slot, p)| (slot, p.weight(), p.htb_prio()))
                .collect();
            match self.datapath.share_capacity(b, capacity, &weights) {
                Ok(()) if capacity.is_some() => {
                    self.sharing.native.insert(b);
                }
                Ok(()) => {
                    self.sharing.native.remove(&b);
                }
                Err(e) => tracing::debug!(error = %e, "could not share the capacity on a shaper"),
            }
        }
    }

    /// Runs a throttle direction at its share of the link, or back at its
    /// own limit (`None`). An upload's running connections are re-paced
    /// too: a policer alone drops what TCP sends, and a flow that loses its
    /// packets at the sender never fills a larger share. New connections
    /// are paced by sock_ops from the bucket.
    fn set_share(&mut self, id: ThrottleId, dir: Direction, share: Option<Rate>) {
        let Some(l) = self.table.limit(id, dir) else { return };
        let (b, slot, pace) = (l.backend, l.slot, share.unwrap_or(l.rate));
        if let Err(e) = self.datapath.share(b, slot, dir, share) {
            tracing::debug!(throttle_id = id, error = %e, "could not set a bucket's share");
        }
        if dir == Direction::Up {
            for tgid in self.procs.tuned_in(&self.table, id, dir) {
                self.datapath.cover(b, slot, dir, tgid, Some(pace));
            }
        }
    }
}
