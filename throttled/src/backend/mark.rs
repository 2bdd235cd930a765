//! The backends of slots that the cgroup programs handle alone, with no
//! rate: `block` and `count`. A blocked slot makes the programs drop every
//! packet of its processes (but loopback, when exempt) and refuse their
//! `connect()` and UDP `sendmsg()` to other hosts with EPERM. A counting
//! slot only counts, for a quota's direction that has no rate. Both are
//! chosen by the manager only: never as a default, never named by a user,
//! never a migration or failover target.
use std::collections::BTreeSet;

use throttle_common::{rate::Rate, Counters, Slot};

use super::{Availability, Backend, BackendError, Capabilities, Context, Direction, Health, Priority, SlotId};
use crate::limit::{BLOCK_BACKEND, COUNT_BACKEND};

pub struct MarkBackend {
    name: &'static str,
    slot: fn() -> Slot,
    slots: BTreeSet<(SlotId, Direction)>,
    initialized: bool,
}

impl MarkBackend {
    pub fn block() -> Self {
        MarkBackend { name: BLOCK_BACKEND, slot: Slot::block, slots: BTreeSet::new(), initialized: false }
    }

    pub fn count() -> Self {
        MarkBackend { name: COUNT_BACKEND, slot: Slot::count, slots: BTreeSet::new(), initialized: false }
    }
}

impl Backend for MarkBackend {
    fn name(&self) -> &'static str {
        self.name
    }
    fn priority(&self) -> Priority {
        Priority::Fallback
    }
    fn automatic(&self) -> bool {
        false
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            directions: Direction::BOTH.to_vec(),
            change_in_place: true,
            all_interfaces: true,
            shaping: false,
        }
    }
    /// Dropping packets needs only the cgroup programs, which are loaded
    /// before any backend exists.
    fn availability(&self) -> Availability {
        Availability::Available
    }
    fn init(&mut self, _ctx: &mut Context<'_>) -> Result<(), BackendError> {
        self.initialized = true;
        Ok(())
    }
    fn is_initialized(&self) -> bool {
        self.initialized
    }
    fn apply(&mut self, ctx: &mut Context<'_>, slot: SlotId, dir: Direction, _: Rate) -> Result<(), BackendError> {
        ctx.programs.clear_slot(slot)?;
        ctx.programs.set_slot(slot, &(self.slot)())?;
        self.slots.insert((slot, dir));
        Ok(())
    }
    /// There is no rate to change.
    fn change(&mut self, _ctx: &mut Context<'_>, slot: SlotId, dir: Direction, _: Rate) -> Result<(), BackendError> {
        match self.slots.contains(&(slot, dir)) {
            true => Ok(()),
            false => Err(BackendError::NoSuchSlot { name: self.name, slot }),
        }
    }
    fn remove(&mut self, ctx: &mut Context<'_>, slot: SlotId, dir: Direction) -> Result<(), BackendError> {
        if !self.slots.remove(&(slot, dir)) {
            return Err(BackendError::NoSuchSlot { name: self.name, slot });
        }
        ctx.programs.clear_slot(slot)?;
        Ok(())
    }
    fn stats(&self, ctx: &Context<'_>, slot: SlotId, _dir: Direction) -> Result<Counters, BackendError> {
        Ok(ctx.programs.counters(slot)?)
    }
    fn active(&self) -> usize {
        self.slots.len()
    }
    /// Degraded, not broken, without the connect guard: packets are still
    /// dropped, only new connections time out instead of failing at once.
    fn health(&self, ctx: &Context<'_>) -> Health {
        if self.name != BLOCK_BACKEND {
            return Health::Healthy;
        }
        match ctx.programs.connect_guard() {
            Ok(()) => Health::Healthy,
            Err(why) => Health::Degraded(format!("connect() is not refused ({why}); packets are dropped")),
        }
    }
    /// The slots live in the shared maps, which the data path repairs.
    fn repair(&mut self, _ctx: &mut Context<'_>) -> Result<(), BackendError> {
        Ok(())
    }
    fn cleanup(&mut self, ctx: &mut Context<'_>) -> Result<(), BackendError> {
        for (slot, _) in std::mem::take(&mut self.slots) {
            ctx.programs.clear_slot(slot)?;
        }
        self.initialized = false;
        Ok(())
    }
}

/// Whether a throttle blocks: its limits are on the `block` backend.
pub fn blocks(info: &crate::manager::ThrottleInfo) -> bool {
    !info.directions.is_empty() && info.directions.values().all(|d| d.backend == BLOCK_BACKEND)
}
