//! Health: the shared programs and every running backend are checked
//! periodically and after interface events. A broken backend is repaired,
//! failed over to the next backend by priority, or only reported, as the
//! config says; every change of health becomes an event. The health thread
//! also takes in the saver's reports on flushing (the "state" component).
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use super::{core::Core, Event};
use crate::{
    backend::{Context, Health},
    config::FailurePolicy,
    kernel::netlink::Netlink,
};

const TICK: Duration = Duration::from_millis(200);

impl Core {
    pub fn check_health(&mut self) {
        self.check_programs();
        for i in 0..self.pool.backends.len() {
            if !self.pool.backends[i].is_initialized() {
                continue;
            }
            let h = self.backend_health(i);
            self.note_health(i, h.clone());
            if let Health::Broken(why) = h {
                tracing::warn!(backend = self.pool.name(i), reason = why, policy = %self.config.health.policy, "backend broken");
                match self.config.health.policy {
                    FailurePolicy::None => {}
                    FailurePolicy::Repair => self.repair(i),
                    FailurePolicy::Failover => self.failover(i),
                }
            }
        }
    }

    fn backend_health(&mut self, i: usize) -> Health {
        self.pool.backends[i].health(&Context { programs: &mut self.programs })
    }

    fn note_health(&mut self, i: usize, h: Health) {
        if self.pool.health[i] != h {
            tracing::info!(backend = self.pool.name(i), health = %h, "backend health changed");
            self.pool.health[i] = h.clone();
            self.emit(Event::HealthChanged { component: self.pool.name(i), health: h });
        }
    }

    /// The attribution programs serve every backend: always re-attached.
    fn check_programs(&mut self) {
        let Err(why) = self.programs.check() else { return };
        tracing::warn!(reason = why, "attribution programs broken; re-attaching");
        self.emit(Event::HealthChanged { component: "datapath", health: Health::Broken(why) });
        match self.programs.repair() {
            Ok(()) => self.emit(Event::HealthChanged { component: "datapath", health: Health::Healthy }),
            Err(e) => tracing::error!(error = %e, "could not re-attach the attribution programs"),
        }
    }

    fn repair(&mut self, i: usize) {
        if let Err(e) = self.pool.backends[i].repair(&mut Context { programs: &mut self.programs }) {
            tracing::error!(backend = self.pool.name(i), error = %e, "repair failed");
        }
        let h = self.backend_health(i);
        self.note_health(i, h);
    }

    /// Moves every throttle off a broken backend, each to the best other
    /// backend for its direction; whatever cannot move is repaired in place.
    fn failover(&mut self, i: usize) {
        for (id, dir) in self.limits_on(i) {
            let Some(to) = self.pool.best(dir, Some(i)) else { continue };
            if let Err(e) = self.migrate_limit(id, dir, to, None) {
                tracing::error!(throttle_id = id, to = self.pool.name(to), error = %e, "failover failed");
            }
        }
        self.persist();
        if self.pool.backends[i].is_initialized() {
            self.repair(i);
        } else {
            self.note_health(i, Health::Idle);
        }
    }

    /// Interface backends follow interfaces that appear, vanish or change
    /// routes; health is checked right after.
    pub fn refresh_interfaces(&mut self) {
        for b in self.pool.backends.iter_mut().filter(|b| b.is_initialized()) {
            if let Err(e) = b.refresh_interfaces(&mut Context { programs: &mut self.programs }) {
                tracing::warn!(backend = b.name(), error = %e, "could not follow interfaces");
            }
        }
        self.check_health();
    }

    /// Periodic work: health, then pattern matches (cgroup moves have no event).
    fn periodic(&mut self) {
        self.check_health();
        if self.has_pattern_targets() {
            self.rescan();
        }
    }
}

fn lock(core: &Mutex<Core>) -> std::sync::MutexGuard<'_, Core> {
    core.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn run_checks(core: &Mutex<Core>, stop: &AtomicBool) {
    let (mut last, mut sampled) = (Instant::now(), Instant::now());
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(TICK);
        if sampled.elapsed() >= Duration::from_secs(1) {
            sample_in_chunks(core);
            sampled = Instant::now();
        }
        let interval = {
            let mut c = lock(core);
            c.note_sync(); // whether the saved state reaches the disk
            c.config.health.interval
        };
        if last.elapsed() >= interval {
            lock(core).periodic();
            last = Instant::now();
        }
    }
}

/// Throttles sampled per turn of the lock (~0.1 ms of counter reads).
const SAMPLE_CHUNK: usize = 64;

fn sample_in_chunks(core: &Mutex<Core>) {
    let mut after = None;
    while let Some(last) = lock(core).sample_throttles(after, SAMPLE_CHUNK) {
        after = Some(last);
    }
    lock(core).sample_monitor();
}

/// Interface backends follow interfaces that appear, vanish or change
/// routes; health is checked right after.
pub fn follow_links(core: &Mutex<Core>, stop: &AtomicBool) {
    let mut events = match Netlink::new().and_then(|nl| nl.subscribe_links()) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "cannot follow interfaces");
            return;
        }
    };
    while !stop.load(Ordering::Relaxed) {
        match events.next(TICK) {
            Ok(Some(ev)) => {
                tracing::debug!(?ev, "link event");
                lock(core).refresh_interfaces();
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "interface events failed");
                return;
            }
        }
    }
}
