//! The process table: every process some throttle's target matches, which
//! throttle limits it per direction (the winner is `coverage`'s), and the
//! protected processes, which are never members. Applying an assignment
//! writes the kernel's process map and tells the backends, so the methods
//! that change one take the table and the data path as arguments.
use std::collections::{BTreeMap, HashMap};

use throttle_common::Direction;

use super::{
    coverage::{self, Assignment},
    datapath::Datapath,
    table::ThrottleTable,
    Protected, ThrottleId,
};
use crate::kernel::procfs::{self, ProcIdent};

/// A process some throttle's target matches.
pub struct ProcEntry {
    pub ident: ProcIdent,
    /// Throttles whose target matches this process.
    pub matches: Vec<ThrottleId>,
    pub assigned: Assignment,
}

pub struct Processes {
    entries: HashMap<u32, ProcEntry>,
    /// Processes no throttle may limit, by role.
    protected: BTreeMap<Protected, ProcIdent>,
}

impl Processes {
    /// Init and the daemon are protected from the start.
    pub fn new() -> Processes {
        let protected = [(Protected::Init, 1), (Protected::Daemon, std::process::id())]
            .into_iter()
            .filter_map(|(role, pid)| Some((role, procfs::ident(pid).ok()?)))
            .collect();
        Processes { entries: HashMap::new(), protected }
    }

    /// A protected process, if `pid` is one now: why it is never limited.
    pub fn protected_role(&self, pid: u32) -> Option<Protected> {
        self.protected.iter().find(|(_, i)| i.pid == pid && procfs::is_alive(i)).map(|(r, _)| *r)
    }

    pub fn is_protected(&self, ident: &ProcIdent) -> bool {
        self.protected.values().any(|i| i == ident)
    }

    /// Whether `pid` is (or was, by pid) in a protected role.
    pub fn is_protected_pid(&self, pid: u32) -> bool {
        self.protected.values().any(|i| i.pid == pid)
    }

    /// Puts `ident` in `role` (`None`: nobody); returns who was in it.
    pub fn set_protected(&mut self, role: Protected, ident: Option<ProcIdent>) -> Option<ProcIdent> {
        match ident {
            Some(i) => self.protected.insert(role, i),
            None => self.protected.remove(&role),
        }
    }

    pub fn assigned(&self, pid: u32) -> Assignment {
        self.entries.get(&pid).map(|e| e.assigned).unwrap_or_default()
    }

    /// The throttles whose target matches `pid`.
    pub fn matches(&self, pid: u32) -> &[ThrottleId] {
        self.entries.get(&pid).map_or(&[], |e| &e.matches)
    }

    /// A process known under `ident.pid` that is not `ident`: the pid was reused.
    pub fn is_reused(&self, ident: &ProcIdent) -> bool {
        self.entries.get(&ident.pid).is_some_and(|e| e.ident != *ident)
    }

    /// Known processes that are gone.
    pub fn dead(&self) -> Vec<u32> {
        self.entries.iter().filter(|(_, e)| !procfs::is_alive(&e.ident)).map(|(p, _)| *p).collect()
    }

    /// Forgets a process; its entry, if it had one.
    pub fn remove(&mut self, pid: u32) -> Option<ProcEntry> {
        self.entries.remove(&pid)
    }

    /// Processes whose `dir` traffic throttle `id` limits.
    pub fn covered_in(&self, table: &ThrottleTable, id: ThrottleId, dir: Direction) -> Vec<u32> {
        let Some(t) = table.throttles.get(&id) else { return Vec::new() };
        t.covered.iter().copied().filter(|p| self.assigned(*p).limits(id, dir)).collect()
    }

    /// Processes whose sockets throttle `id` tunes in direction `dir`
    /// (pacing, windows): those it limits as their own throttle. A cap's
    /// pacing would override a tighter throttle's, so caps tune none.
    pub fn tuned_in(&self, table: &ThrottleTable, id: ThrottleId, dir: Direction) -> Vec<u32> {
        let own = |p: &u32| self.assigned(*p).get(dir) == Some(id);
        self.covered_in(table, id, dir).into_iter().filter(own).collect()
    }

    /// `ident` becomes a member of throttle `id` (it must not be protected).
    pub fn join(&mut self, id: ThrottleId, ident: ProcIdent, table: &mut ThrottleTable, dp: &mut Datapath) {
        let e = self.entries.entry(ident.pid).or_insert_with(|| ProcEntry {
            ident,
            matches: Vec::new(),
            assigned: Assignment::default(),
        });
        if !e.matches.contains(&id) {
            e.matches.push(id);
        }
        if let Some(t) = table.throttles.get_mut(&id) {
            t.members.insert(ident.pid);
        }
        self.reassign(ident.pid, table, dp);
    }

    /// `tgid` is no longer a member of throttle `id`.
    pub fn leave(&mut self, id: ThrottleId, tgid: u32, table: &mut ThrottleTable, dp: &mut Datapath) {
        if let Some(e) = self.entries.get_mut(&tgid) {
            e.matches.retain(|m| *m != id);
        }
        if let Some(t) = table.throttles.get_mut(&id) {
            t.members.remove(&tgid);
        }
        self.reassign(tgid, table, dp);
    }

    /// Recomputes which throttle limits `tgid` per direction, and applies the
    /// difference: the kernel entry first, then per-socket backend work.
    pub fn reassign(&mut self, tgid: u32, table: &mut ThrottleTable, dp: &mut Datapath) {
        let Some(e) = self.entries.get(&tgid) else { return };
        let (old, new) = (e.assigned, coverage::choose(table.candidates(tgid, &e.matches)));
        let done = e.matches.is_empty();
        if old != new {
            apply(tgid, old, new, table, dp);
        }
        if done {
            self.entries.remove(&tgid);
        } else if let Some(e) = self.entries.get_mut(&tgid) {
            e.assigned = new;
        }
    }
}

/// Moves `tgid` from the `old` assignment to the `new` one.
fn apply(tgid: u32, old: Assignment, new: Assignment, table: &mut ThrottleTable, dp: &mut Datapath) {
    let res = if new.is_empty() {
        dp.programs.remove_proc(tgid)
    } else {
        if old.is_empty() {
            dp.seed_sockets(tgid);
        }
        dp.programs.set_proc(tgid, table.slots(new))
    };
    if let Err(e) = res {
        tracing::warn!(pid = tgid, error = %e, "could not update the process map");
    }
    if new.caps != old.caps && new.caps.iter().any(Option::is_some) {
        dp.tune_for_caps(tgid);
    }
    for dir in Direction::BOTH.into_iter().filter(|d| old.get(*d) != new.get(*d)) {
        cover(table, dp, old.get(dir), dir, tgid, false);
        cover(table, dp, new.get(dir), dir, tgid, true);
    }
    table.set_covered(tgid, old, new);
}

/// Per-socket backend work for one process joining or leaving a limit.
fn cover(table: &ThrottleTable, dp: &mut Datapath, id: Option<ThrottleId>, dir: Direction, tgid: u32, joins: bool) {
    let Some(l) = id.and_then(|id| table.limit(id, dir)) else { return };
    let (slot, b, rate) = (l.slot, l.backend, joins.then_some(l.rate));
    let what = if joins { "process covered" } else { "process released" };
    tracing::debug!(throttle_id = id, pid = tgid, backend = dp.pool.name(b), direction = %dir, "{what}");
    dp.cover(b, slot, dir, tgid, rate);
}
