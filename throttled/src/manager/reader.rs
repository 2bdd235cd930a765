//! `Reader`: the core, locked for reads that touch only the daemon's
//! bookkeeping, never the kernel: microseconds each.
use std::sync::MutexGuard;

use throttle_common::{Direction, MAX_SLOTS};

use super::{core::Core, BackendInfo, ManagerError, Need, Request, Stats, ThrottleId, ThrottleInfo};

pub struct Reader<'a>(pub(super) MutexGuard<'a, Core>);

impl Reader<'_> {
    /// A throttle, with the counters of the last sample (once a second).
    pub fn summary(&mut self, id: ThrottleId) -> Result<ThrottleInfo, ManagerError> {
        self.0.view().info(id, None)
    }

    /// Every backend with the health its last check found (no kernel call).
    pub fn backends_known(&self) -> Vec<BackendInfo> {
        self.0.view().backends_known()
    }

    /// Applied, or saved and not applied now (failed).
    pub fn exists(&self, id: ThrottleId) -> bool {
        self.0.table.exists(id)
    }

    pub fn ids(&self) -> Vec<ThrottleId> {
        let mut ids = self.0.table.ids();
        ids.sort_unstable();
        ids
    }

    pub fn stats(&self) -> Stats {
        let c = &self.0;
        Stats {
            throttles: c.table.throttles.len(),
            processes: c.datapath.programs.tracked_procs(),
            status: c.view().status(),
            state: c.saving.health.clone(),
            slots: MAX_SLOTS as usize - 1,
            slots_used: MAX_SLOTS as usize - 1 - c.datapath.free_slot_count(),
            per_user: c.config.limits.per_user,
        }
    }

    pub fn default_backend(&self, dir: Direction) -> Result<&'static str, ManagerError> {
        self.0.view().default_backend(dir)
    }

    /// The link capacity priorities share (see `Core::link`).
    pub fn link_capacity(&self) -> crate::config::LinkCapacity {
        self.0.link()
    }

    /// Which authority `req` by `uid` needs (see `policy`).
    pub fn need(&self, uid: u32, req: &Request) -> Result<Need, ManagerError> {
        self.0.table.need(&self.0.datapath.pool, uid, req)
    }

    pub fn throttle_history(&self, id: ThrottleId) -> Result<Vec<(u64, u64)>, ManagerError> {
        self.0.view().throttle_history(id)
    }

    pub fn monitoring(&self) -> bool {
        self.0.datapath.programs.monitoring()
    }

    /// Whether a block refuses new connections at once (else it only drops).
    pub fn connect_guard(&self) -> bool {
        self.0.datapath.programs.connect_guard().is_ok()
    }
}
