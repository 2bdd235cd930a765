//! Assigning processes to throttles: which processes a throttle's target
//! covers (members), which throttle wins per direction when several match
//! (`coverage`), and applying that to the kernel's process map and the
//! backends; protected processes are never members.
use throttle_common::Direction;
use throttle_common::ProcSlots;

use super::{
    core::Core,
    coverage::{self, Assignment, Candidate},
    Protected, ThrottleId,
};
use crate::{
    backend::Context,
    kernel::{
        procfs::{self, ProcIdent},
        sockets,
    },
    target::{ProcFacts, Target},
};

/// A process some throttle's target matches.
pub struct ProcEntry {
    pub ident: ProcIdent,
    /// Throttles whose target matches this process.
    pub matches: Vec<ThrottleId>,
    pub assigned: Assignment,
}

impl Core {
    /// A protected process, if `pid` is one now: why it is never limited.
    pub fn protected_role(&self, pid: u32) -> Option<Protected> {
        self.protected.iter().find(|(_, i)| i.pid == pid && procfs::is_alive(i)).map(|(r, _)| *r)
    }

    pub(super) fn is_protected(&self, ident: &ProcIdent) -> bool {
        self.protected.values().any(|i| i == ident)
    }

    /// Sets the process in `role`: it leaves every throttle now, and is
    /// reported in their `excluded` from then on.
    pub fn protect(&mut self, role: Protected, pid: Option<u32>) {
        let ident = pid.and_then(|p| procfs::ident(p).ok());
        let old = match ident {
            Some(i) => self.protected.insert(role, i),
            None => self.protected.remove(&role),
        };
        if let Some(old) = old.filter(|o| Some(*o) != ident) {
            // Its successor may be another process: the old one is no longer excluded.
            self.throttles.values_mut().for_each(|t| {
                t.excluded.remove(&old.pid);
            });
        }
        let Some(ident) = ident else { return };
        let holding: Vec<ThrottleId> =
            self.throttles.iter().filter(|(_, t)| t.members.contains(&ident.pid)).map(|(id, _)| *id).collect();
        for id in holding {
            self.drop_member(id, ident.pid);
            if let Some(t) = self.throttles.get_mut(&id) {
                t.excluded.insert(ident.pid);
            }
        }
        tracing::info!(pid = ident.pid, role = role.describe(), "never limited");
    }

    /// `limit --tree` on a process already limited without it (or the
    /// reverse) changes the target in place.
    pub(super) fn set_tree(&mut self, id: ThrottleId, target: &Target) {
        let Some(t) = self.throttles.get_mut(&id) else { return };
        if t.target == *target {
            return;
        }
        t.target = target.clone();
        if target.is_tree() {
            self.add_descendants(id);
        }
    }

    pub(super) fn members(&self, id: ThrottleId) -> Vec<u32> {
        self.throttles.get(&id).map(|t| t.members.iter().copied().collect()).unwrap_or_default()
    }

    /// Processes whose `dir` traffic this throttle limits.
    pub fn covered_in(&self, id: ThrottleId, dir: Direction) -> Vec<u32> {
        let Some(t) = self.throttles.get(&id) else { return Vec::new() };
        t.covered
            .iter()
            .copied()
            .filter(|p| self.procs.get(p).is_some_and(|e| e.assigned.get(dir) == Some(id)))
            .collect()
    }

    pub(super) fn add_members(&mut self, id: ThrottleId) {
        let target = self.throttles[&id].target.clone();
        match target {
            Target::Pid { ident, tree } => {
                self.add_member(id, ident);
                if tree {
                    self.add_descendants(id);
                }
            }
            _ => {
                for pid in procfs::all_pids() {
                    if procfs::is_kernel_thread(pid).unwrap_or(true) {
                        continue;
                    }
                    if let (Some(f), Ok(ident)) = (ProcFacts::read(pid), procfs::ident(pid)) {
                        if target.matches(&f) {
                            self.add_member(id, ident);
                        }
                    }
                }
            }
        }
    }

    pub(super) fn add_descendants(&mut self, id: ThrottleId) {
        let Some(root) = self.throttles.get(&id).and_then(|t| t.target.root()) else { return };
        for pid in procfs::tree(root.pid).into_iter().skip(1) {
            if let Ok(ident) = procfs::ident(pid) {
                self.add_member(id, ident);
            }
        }
    }

    pub(super) fn add_member(&mut self, id: ThrottleId, ident: ProcIdent) {
        if self.is_protected(&ident) {
            if let Some(t) = self.throttles.get_mut(&id) {
                t.excluded.insert(ident.pid);
            }
            return;
        }
        if self.procs.get(&ident.pid).is_some_and(|e| e.ident != ident) {
            self.process_exited(ident.pid); // a reused pid: the exit event was lost
        }
        let e = self.procs.entry(ident.pid).or_insert_with(|| ProcEntry {
            ident,
            matches: Vec::new(),
            assigned: Assignment::default(),
        });
        if !e.matches.contains(&id) {
            e.matches.push(id);
        }
        if let Some(t) = self.throttles.get_mut(&id) {
            t.members.insert(ident.pid);
        }
        self.reassign(ident.pid);
    }

    pub(super) fn drop_member(&mut self, id: ThrottleId, tgid: u32) {
        if let Some(e) = self.procs.get_mut(&tgid) {
            e.matches.retain(|m| *m != id);
        }
        if let Some(t) = self.throttles.get_mut(&id) {
            t.members.remove(&tgid);
        }
        self.reassign(tgid);
    }

    pub(super) fn slots(&self, a: Assignment) -> ProcSlots {
        let s = |d| a.get(d).and_then(|id| self.throttles.get(&id)?.limits.get(&d)).map_or(0, |l| l.slot);
        ProcSlots { up: s(Direction::Up), down: s(Direction::Down) }
    }

    /// Recomputes which throttle limits `tgid` per direction, and applies the
    /// difference: the kernel entry first, then per-socket backend work.
    pub(super) fn reassign(&mut self, tgid: u32) {
        let Some(e) = self.procs.get(&tgid) else { return };
        let cands: Vec<Candidate> = e
            .matches
            .iter()
            .filter_map(|&id| {
                let t = self.throttles.get(&id)?;
                let rate = |d| t.limits.get(&d).map(|l| l.rate.bytes_per_sec());
                let rates = [rate(Direction::Up), rate(Direction::Down)];
                Some(Candidate { id, rank: t.target.rank(tgid), rates, admin: t.made.admin })
            })
            .collect();
        let (old, new) = (e.assigned, coverage::choose(cands));
        let done = e.matches.is_empty();
        if old != new {
            self.apply_assignment(tgid, old, new);
        }
        if done {
            self.procs.remove(&tgid);
        } else if let Some(e) = self.procs.get_mut(&tgid) {
            e.assigned = new;
        }
    }

    pub(super) fn apply_assignment(&mut self, tgid: u32, old: Assignment, new: Assignment) {
        let res = if new.is_empty() {
            self.programs.remove_proc(tgid)
        } else {
            if old.is_empty() {
                self.seed_sockets(tgid);
            }
            self.programs.set_proc(tgid, self.slots(new))
        };
        if let Err(e) = res {
            tracing::warn!(pid = tgid, error = %e, "could not update the process map");
        }
        for dir in Direction::BOTH.into_iter().filter(|d| old.get(*d) != new.get(*d)) {
            self.cover(old.get(dir), dir, tgid, false);
            self.cover(new.get(dir), dir, tgid, true);
        }
        for id in old.0.into_iter().flatten().filter(|id| !new.holds(*id)) {
            if let Some(t) = self.throttles.get_mut(&id) {
                t.covered.remove(&tgid);
            }
        }
        for id in new.0.into_iter().flatten() {
            if let Some(t) = self.throttles.get_mut(&id) {
                t.covered.insert(tgid);
            }
        }
    }

    /// Per-socket backend work for one process joining or leaving a limit.
    pub(super) fn cover(&mut self, id: Option<ThrottleId>, dir: Direction, tgid: u32, joins: bool) {
        let Some(l) = id.and_then(|id| self.throttles.get(&id)?.limits.get(&dir)) else { return };
        let (slot, b, rate) = (l.slot, l.backend, joins.then_some(l.rate));
        let what = if joins { "process covered" } else { "process released" };
        tracing::debug!(throttle_id = id, pid = tgid, backend = self.pool.name(b), direction = %dir, "{what}");
        self.pool.backends[b].cover(&mut Context { programs: &mut self.programs }, slot, dir, tgid, rate);
    }

    /// With the monitor on, every process's older sockets get their owner
    /// too, so their traffic counts from the start.
    pub fn seed_all_sockets(&mut self) {
        for pid in procfs::all_pids() {
            if !procfs::is_kernel_thread(pid).unwrap_or(true) {
                self.seed_sockets(pid);
            }
        }
    }

    /// Sockets opened before our programs were attached get their owner.
    pub(super) fn seed_sockets(&mut self, tgid: u32) {
        let dp = &mut self.programs;
        let _ = sockets::for_each_inet_socket(tgid, |s| {
            let _ = dp.seed_owner(&s.fd, tgid);
        });
    }
}
