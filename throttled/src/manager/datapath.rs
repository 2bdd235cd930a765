//! The kernel side of the manager: the loaded programs, the backend pool
//! and the slots they share. A limit is a slot on a backend; this type
//! takes and gives back slots, keeps backends started only while they hold
//! one, and watches their health. It knows nothing of processes.
use std::collections::BTreeMap;

use throttle_common::{rate::Rate, Counters, Direction};

use super::{events::Event, pool::Pool, table::Throttle, ManagerError};
use crate::{
    backend::{BackendError, Context, Health, SlotId},
    kernel::{bpf::Programs, procfs, sockets},
};

pub struct Datapath {
    pub programs: Programs,
    pub pool: Pool,
    /// Slots no limit holds (slot 0 means "not limited" in the kernel).
    free_slots: Vec<SlotId>,
}

impl Datapath {
    pub fn new(programs: Programs, pool: Pool) -> Datapath {
        Datapath { programs, pool, free_slots: (1..throttle_common::MAX_SLOTS).rev().collect() }
    }

    pub fn has_free_slot(&self) -> bool {
        !self.free_slots.is_empty()
    }

    pub fn free_slot_count(&self) -> usize {
        self.free_slots.len()
    }

    /// Puts `rate` on `backend` in a fresh slot (starting the backend if it
    /// is idle), shaped for many flows if it is a `cap` (see
    /// `Backend::widen`). On failure nothing is left behind.
    pub fn apply(&mut self, backend: usize, dir: Direction, rate: Rate, cap: bool) -> Result<SlotId, ManagerError> {
        let slot = self.free_slots.pop().ok_or(ManagerError::SlotsExhausted)?;
        let b = &mut self.pool.backends[backend];
        let ctx = &mut Context { programs: &mut self.programs };
        let res = (|| {
            if !b.is_initialized() {
                b.init(ctx)?;
            }
            b.apply(ctx, slot, dir, rate)?;
            let widened = if cap { b.widen(ctx, slot, dir) } else { Ok(()) };
            if widened.is_err() {
                let _ = b.remove(ctx, slot, dir);
            }
            widened
        })();
        if let Err(e) = res {
            self.free_slots.push(slot);
            self.release_if_idle(backend);
            return Err(e.into());
        }
        Ok(slot)
    }

    /// Lets go of a slot on its backend; the backend stops when idle.
    pub fn release(&mut self, backend: usize, slot: SlotId, dir: Direction) -> Result<(), ManagerError> {
        let ctx = &mut Context { programs: &mut self.programs };
        let res = self.pool.backends[backend].remove(ctx, slot, dir);
        if res.is_ok() {
            self.free_slots.push(slot);
        }
        self.release_if_idle(backend);
        Ok(res?)
    }

    pub fn release_if_idle(&mut self, backend: usize) {
        let b = &mut self.pool.backends[backend];
        if b.is_initialized() && b.active() == 0 {
            if let Err(e) = b.cleanup(&mut Context { programs: &mut self.programs }) {
                tracing::warn!(backend = b.name(), error = %e, "could not release an idle backend");
            }
            self.pool.health[backend] = Health::Idle;
        }
    }

    /// Stops every idle backend, restoring what it replaced.
    pub fn release_all_idle(&mut self) {
        (0..self.pool.backends.len()).for_each(|i| self.release_if_idle(i));
    }

    pub fn change(&mut self, backend: usize, slot: SlotId, dir: Direction, rate: Rate) -> Result<(), BackendError> {
        self.pool.backends[backend].change(&mut Context { programs: &mut self.programs }, slot, dir, rate)
    }

    /// Runs a slot at a share of a link, or at its own limit (`None`).
    pub fn share(
        &mut self,
        backend: usize,
        slot: SlotId,
        dir: Direction,
        share: Option<Rate>,
    ) -> Result<(), BackendError> {
        self.pool.backends[backend].share(&mut Context { programs: &mut self.programs }, slot, dir, share)
    }

    /// Shares a capacity natively, on a started backend (see
    /// `Backend::share_capacity`).
    pub fn share_capacity(
        &mut self,
        backend: usize,
        capacity: Option<Rate>,
        weights: &[(SlotId, u64, u32)],
    ) -> Result<(), BackendError> {
        let b = &mut self.pool.backends[backend];
        match b.is_initialized() {
            true => b.share_capacity(&mut Context { programs: &mut self.programs }, capacity, weights),
            false => Ok(()),
        }
    }

    /// Per-socket backend work for one process joining (`Some(rate)`) or
    /// leaving (`None`) a slot.
    pub fn cover(&mut self, backend: usize, slot: SlotId, dir: Direction, tgid: u32, rate: Option<Rate>) {
        self.pool.backends[backend].cover(&mut Context { programs: &mut self.programs }, slot, dir, tgid, rate);
    }

    /// Fills a new bucket before processes switch to it.
    pub fn prime(&mut self, backend: usize, slot: SlotId, dir: Direction) -> Result<(), BackendError> {
        self.pool.backends[backend].prime(&mut Context { programs: &mut self.programs }, slot, dir)
    }

    pub fn stats(&mut self, backend: usize, slot: SlotId, dir: Direction) -> Result<Counters, BackendError> {
        self.pool.backends[backend].stats(&Context { programs: &mut self.programs }, slot, dir)
    }

    /// A throttle's counters per direction, read now.
    pub fn counters(&mut self, t: &Throttle) -> Result<BTreeMap<Direction, Counters>, ManagerError> {
        let mut out = BTreeMap::new();
        for (&dir, l) in &t.limits {
            out.insert(dir, self.stats(l.backend, l.slot, dir)?);
        }
        Ok(out)
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
    pub fn seed_sockets(&mut self, tgid: u32) {
        let dp = &mut self.programs;
        let _ = sockets::for_each_inet_socket(tgid, |s| {
            let _ = dp.seed_owner(&s.fd, tgid);
        });
    }

    /// A process came under a cap: its running TCP connections get the
    /// per-segment callback that paces uploads and sizes download windows
    /// by the cap (new ones get it from `sock_ops`).
    pub fn tune_for_caps(&mut self, tgid: u32) {
        let exempt = self.programs.exempt_loopback();
        let res = sockets::for_each_inet_socket(tgid, |s| {
            if s.tcp && !(s.local && exempt) {
                if let Err(e) = sockets::set_window_control(s, true) {
                    tracing::debug!(pid = tgid, error = %e, "no cap pacing for an existing socket");
                }
            }
        });
        if let Err(e) = res {
            tracing::debug!(pid = tgid, error = %e, "could not reach existing sockets");
        }
    }

    /// Whether a backend is started (it holds slots, or just did).
    pub fn is_running(&self, i: usize) -> bool {
        self.pool.backends[i].is_initialized()
    }

    /// A running backend's health, checked now (the kernel is asked).
    pub fn backend_health(&mut self, i: usize) -> Health {
        self.pool.backends[i].health(&Context { programs: &mut self.programs })
    }

    /// Any backend's health now: idle unless running.
    pub fn health_now(&mut self, i: usize) -> Health {
        match self.is_running(i) {
            true => self.backend_health(i),
            false => Health::Idle,
        }
    }

    /// The health the last check found: nothing asks the kernel.
    pub fn known_health(&self, i: usize) -> Health {
        match self.is_running(i) {
            true => self.pool.health.get(i).cloned().unwrap_or(Health::Healthy),
            false => Health::Idle,
        }
    }

    /// Records a backend's health; the event, if it changed.
    pub fn note_health(&mut self, i: usize, h: Health) -> Option<Event> {
        if self.pool.health[i] == h {
            return None;
        }
        tracing::info!(backend = self.pool.name(i), health = %h, "backend health changed");
        self.pool.health[i] = h.clone();
        Some(Event::HealthChanged { component: self.pool.name(i), health: h })
    }

    /// The attribution programs serve every backend: always re-attached.
    pub fn check_programs(&mut self) -> Vec<Event> {
        let Err(why) = self.programs.check() else { return Vec::new() };
        tracing::warn!(reason = why, "attribution programs broken; re-attaching");
        let mut events = vec![Event::HealthChanged { component: "datapath", health: Health::Broken(why) }];
        match self.programs.repair() {
            Ok(()) => events.push(Event::HealthChanged { component: "datapath", health: Health::Healthy }),
            Err(e) => tracing::error!(error = %e, "could not re-attach the attribution programs"),
        }
        events
    }

    /// Repairs a backend in place; the health event, if it changed.
    pub fn repair(&mut self, i: usize) -> Option<Event> {
        if let Err(e) = self.pool.backends[i].repair(&mut Context { programs: &mut self.programs }) {
            tracing::error!(backend = self.pool.name(i), error = %e, "repair failed");
        }
        let h = self.backend_health(i);
        self.note_health(i, h)
    }

    /// Interface backends follow interfaces that appear, vanish or change routes.
    pub fn refresh_interfaces(&mut self) {
        for b in self.pool.backends.iter_mut().filter(|b| b.is_initialized()) {
            if let Err(e) = b.refresh_interfaces(&mut Context { programs: &mut self.programs }) {
                tracing::warn!(backend = b.name(), error = %e, "could not follow interfaces");
            }
        }
    }
}
