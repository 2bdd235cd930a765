//! The manager's background threads, each taking the core's lock for one
//! step at a time: health checks and sampling, interface events, and
//! process events.
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use super::core::Core;
use crate::kernel::{netlink::Netlink, procmon::ProcMonitor};

/// Priorities re-divide the link every tick, quotas are counted every tick.
const TICK: Duration = Duration::from_millis(100);

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
            if c.has_plans() {
                c.tick_plans(jiff::Timestamp::now(), &jiff::tz::TimeZone::system());
            }
            if c.sharing() {
                c.share(Instant::now());
            }
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
    let c = &mut *lock(core);
    c.sampling.sample_monitor(&mut c.datapath.programs);
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

pub fn follow_processes(monitor: ProcMonitor, core: &Mutex<Core>, stop: &AtomicBool) {
    let mut buf = vec![0u8; 64 << 10];
    while !stop.load(Ordering::Relaxed) {
        match monitor.recv(&mut buf) {
            Ok(Some(events)) => {
                let mut core = lock(core);
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
