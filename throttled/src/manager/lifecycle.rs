//! The process lifecycle: forks join their parent's tree throttles, new
//! names and executables start or end pattern matches, exits leave every
//! throttle (a pid throttle goes with its process), and a rescan after
//! lost events or for cgroup moves.
use std::sync::{
    atomic::{AtomicBool, Ordering},
    Mutex,
};

use super::{core::Core, events::RemovalReason, ThrottleId};
use crate::{
    kernel::{
        procfs::{self, ProcIdent},
        procmon::{ProcEvent, ProcMonitor},
    },
    target::ProcFacts,
};

impl Core {
    pub fn on_event(&mut self, ev: ProcEvent) {
        match ev {
            ProcEvent::Fork { parent_tgid, child_tgid } => self.process_forked(parent_tgid, child_tgid),
            ProcEvent::Exec { tgid } | ProcEvent::Comm { tgid } => self.process_renamed(tgid),
            ProcEvent::Exit { tgid } => self.process_exited(tgid),
            ProcEvent::Overrun => self.rescan(),
        }
    }

    pub fn has_pattern_targets(&self) -> bool {
        self.throttles.values().any(|t| !t.target.is_pid())
    }

    pub(super) fn process_forked(&mut self, parent: u32, child: u32) {
        let trees: Vec<ThrottleId> = match self.procs.get(&parent) {
            Some(e) => e.matches.iter().copied().filter(|id| self.throttles[id].target.is_tree()).collect(),
            None => Vec::new(),
        };
        if trees.is_empty() && !self.has_pattern_targets() {
            return;
        }
        let Ok(ident) = procfs::ident(child) else { return };
        trees.into_iter().for_each(|id| self.add_member(id, ident));
        self.match_patterns(ident);
    }

    /// A new name, executable or cgroup can start or end pattern matches.
    pub(super) fn process_renamed(&mut self, tgid: u32) {
        if !self.has_pattern_targets() {
            return;
        }
        if let Ok(ident) = procfs::ident(tgid) {
            self.match_patterns(ident);
        }
    }

    /// Re-evaluates every name/exe/cgroup/unit target against one process.
    pub(super) fn match_patterns(&mut self, ident: ProcIdent) {
        let Some(facts) = ProcFacts::read(ident.pid) else { return };
        let verdicts: Vec<(ThrottleId, bool, bool)> = self
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
                    if let Some(t) = self.throttles.get_mut(&id) {
                        t.excluded.remove(&ident.pid);
                    }
                }
                _ => {}
            }
        }
    }

    pub fn process_exited(&mut self, tgid: u32) {
        // The bytes since the last sample still count for the usage history.
        let last = self.programs.monitoring().then(|| self.programs.proc_traffic_of(tgid)).flatten();
        self.accounting.exited(tgid, last);
        self.programs.forget_traffic(tgid);
        if self.protected.values().any(|i| i.pid == tgid) {
            self.throttles.values_mut().for_each(|t| {
                t.excluded.remove(&tgid);
            });
        }
        let Some(e) = self.procs.remove(&tgid) else { return };
        if let Err(err) = self.programs.remove_proc(tgid) {
            tracing::warn!(pid = tgid, error = %err, "could not remove a process entry");
        }
        for id in e.matches {
            let Some(t) = self.throttles.get_mut(&id) else { continue };
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
        let dead: Vec<u32> = self.procs.iter().filter(|(_, e)| !procfs::is_alive(&e.ident)).map(|(p, _)| *p).collect();
        dead.into_iter().for_each(|p| self.process_exited(p));
        let trees: Vec<ThrottleId> =
            self.throttles.iter().filter(|(_, t)| t.target.is_tree()).map(|(id, _)| *id).collect();
        trees.into_iter().for_each(|id| self.add_descendants(id));
        if self.has_pattern_targets() {
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

pub fn follow_processes(monitor: ProcMonitor, core: &Mutex<Core>, stop: &AtomicBool) {
    let mut buf = vec![0u8; 64 << 10];
    while !stop.load(Ordering::Relaxed) {
        match monitor.recv(&mut buf) {
            Ok(Some(events)) => {
                let mut core = core.lock().unwrap_or_else(|p| p.into_inner());
                events.into_iter().for_each(|ev| core.on_event(ev));
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "proc connector failed; process tracking stopped");
                return;
            }
        }
    }
}
