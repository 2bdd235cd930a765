//! Processes joining and leaving throttles: a new throttle's members, forks
//! joining their parent's tree throttles, new names and executables
//! starting or ending pattern matches, exits, protected roles, and a
//! rescan after lost events or for cgroup moves. On `Core` because an exit
//! can end a pid throttle (an event, a save, a retry of the failed ones);
//! the bookkeeping itself is `Processes`'s.
use super::{core::Core, events::RemovalReason, ThrottleId};
use crate::{
    kernel::{
        procfs::{self, ProcIdent},
        procmon::ProcEvent,
    },
    target::{ProcFacts, Target},
};

impl Core {
    pub fn on_event(&mut self, ev: ProcEvent) {
        match ev {
            ProcEvent::Fork { parent_tgid, child_tgid } => self.process_forked(parent_tgid, child_tgid),
            ProcEvent::Exec { tgid } | ProcEvent::Comm { tgid } | ProcEvent::Uid { tgid } => self.process_renamed(tgid),
            ProcEvent::Exit { tgid } => self.process_exited(tgid),
            ProcEvent::Overrun => self.rescan(),
        }
    }

    /// Every process throttle `id`'s target covers joins it.
    pub(super) fn add_members(&mut self, id: ThrottleId) {
        let target = self.table.throttles[&id].target.clone();
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

    fn add_descendants(&mut self, id: ThrottleId) {
        let Some(root) = self.table.throttles.get(&id).and_then(|t| t.target.root()) else { return };
        for pid in procfs::tree(root.pid).into_iter().skip(1) {
            if let Ok(ident) = procfs::ident(pid) {
                self.add_member(id, ident);
            }
        }
    }

    /// `ident` joins throttle `id`, unless it is protected (then it is
    /// only reported as excluded).
    fn add_member(&mut self, id: ThrottleId, ident: ProcIdent) {
        if self.procs.is_protected(&ident) {
            self.table.exclude(id, ident.pid);
            return;
        }
        if self.procs.is_reused(&ident) {
            self.process_exited(ident.pid); // a reused pid: the exit event was lost
        }
        self.procs.join(id, ident, &mut self.table, &mut self.datapath);
    }

    fn drop_member(&mut self, id: ThrottleId, tgid: u32) {
        self.procs.leave(id, tgid, &mut self.table, &mut self.datapath);
    }

    /// `limit --tree` on a process already limited without it (or the
    /// reverse) changes the target in place.
    pub(super) fn set_tree(&mut self, id: ThrottleId, target: &Target) {
        let Some(t) = self.table.throttles.get_mut(&id) else { return };
        if t.target == *target {
            return;
        }
        t.target = target.clone();
        if target.is_tree() {
            self.add_descendants(id);
        }
    }

    /// Sets the process in `role`: it leaves every throttle now, and is
    /// reported in their `excluded` from then on.
    pub fn protect(&mut self, role: super::Protected, pid: Option<u32>) {
        let ident = pid.and_then(|p| procfs::ident(p).ok());
        let old = self.procs.set_protected(role, ident);
        if let Some(old) = old.filter(|o| Some(*o) != ident) {
            // Its successor may be another process: the old one is no longer excluded.
            self.table.unexclude(old.pid);
        }
        let Some(ident) = ident else { return };
        for id in self.table.holding(ident.pid) {
            self.drop_member(id, ident.pid);
            self.table.exclude(id, ident.pid);
        }
        tracing::info!(pid = ident.pid, role = role.describe(), "never limited");
    }

    fn process_forked(&mut self, parent: u32, child: u32) {
        let table = &self.table;
        let trees: Vec<ThrottleId> =
            self.procs.matches(parent).iter().copied().filter(|id| table.throttles[id].target.is_tree()).collect();
        if trees.is_empty() && !self.table.has_pattern_targets() {
            return;
        }
        let Ok(ident) = procfs::ident(child) else { return };
        trees.into_iter().for_each(|id| self.add_member(id, ident));
        self.match_patterns(ident);
    }

    /// A new name, executable, user or cgroup can start or end pattern matches.
    fn process_renamed(&mut self, tgid: u32) {
        if !self.table.has_pattern_targets() {
            return;
        }
        if let Ok(ident) = procfs::ident(tgid) {
            self.match_patterns(ident);
        }
    }

    /// Re-evaluates every name/exe/cgroup/unit target against one process.
    fn match_patterns(&mut self, ident: ProcIdent) {
        let Some(facts) = ProcFacts::read(ident.pid) else { return };
        let verdicts: Vec<(ThrottleId, bool, bool)> = self
            .table
            .throttles
            .iter()
            .filter(|(_, t)| !t.target.is_pid())
            .map(|(id, t)| (*id, t.target.matches(&facts), t.members.contains(&ident.pid)))
            .collect();
        for (id, matches, member) in verdicts {
            match (matches, member) {
                (true, false) => self.add_member(id, ident),
                (false, true) => self.drop_member(id, ident.pid),
                (false, false) => {
                    if let Some(t) = self.table.throttles.get_mut(&id) {
                        t.excluded.remove(&ident.pid);
                    }
                }
                _ => {}
            }
        }
    }

    pub fn process_exited(&mut self, tgid: u32) {
        // The bytes since the last sample still count for the usage history.
        let programs = &self.datapath.programs;
        let last = programs.monitoring().then(|| programs.proc_traffic_of(tgid)).flatten();
        self.sampling.accounting.exited(tgid, last);
        self.datapath.programs.forget_traffic(tgid);
        if self.procs.is_protected_pid(tgid) {
            self.table.unexclude(tgid);
        }
        let Some(e) = self.procs.remove(tgid) else { return };
        if let Err(err) = self.datapath.programs.remove_proc(tgid) {
            tracing::warn!(pid = tgid, error = %err, "could not remove a process entry");
        }
        for id in e.matches {
            let Some(t) = self.table.throttles.get_mut(&id) else { continue };
            t.members.remove(&tgid);
            t.covered.remove(&tgid);
            // At the exit event the process may still be a zombie with its
            // identity intact: membership, not /proc, says it is gone.
            if t.target.is_pid() && t.members.is_empty() {
                let _ = self.remove(id, RemovalReason::ProcessExited);
                self.save_throttle(id);
                self.retry_pending();
            }
        }
    }

    /// After lost events, and periodically for cgroup moves (which have no
    /// event): drop dead processes, then match every live one again.
    pub fn rescan(&mut self) {
        self.procs.dead().into_iter().for_each(|p| self.process_exited(p));
        self.table.trees().into_iter().for_each(|id| self.add_descendants(id));
        if self.table.has_pattern_targets() {
            for pid in procfs::all_pids() {
                if procfs::is_kernel_thread(pid).unwrap_or(true) {
                    continue;
                }
                if let Ok(ident) = procfs::ident(pid) {
                    self.match_patterns(ident);
                }
            }
        }
    }
}
