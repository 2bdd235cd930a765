//! The daemon's side of the usage history: every `flush_interval` it takes
//! the bytes the manager counted, writes them in one transaction, and
//! prunes old rows once an hour; a last flush when it stops. Reports are
//! read under the same lock, on the caller's thread.
use std::{
    path::Path,
    sync::{
        mpsc::{self, RecvTimeoutError},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

pub use throttle_common::clock::{local_utc_offset, now};

use super::{UsageError, UsageQuery, UsageReport, UsageStore};
use crate::{config::UsageConfig, manager::Manager};

/// The database file in the state directory.
pub const FILE: &str = "usage.sqlite";
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

pub struct Recorder {
    store: Arc<Mutex<UsageStore>>,
    /// Dropped to stop the thread, which then flushes one last time.
    running: Mutex<Option<(mpsc::Sender<()>, JoinHandle<()>)>>,
}

impl Recorder {
    /// Opens the history in `state_dir` and starts writing to it.
    pub fn start(state_dir: &Path, cfg: &UsageConfig, manager: Arc<Manager>) -> Result<Recorder, UsageError> {
        let store = UsageStore::open(&state_dir.join(FILE), cfg.retention)?;
        match store.quotas() {
            Ok(saved) => manager.restore_quotas(saved),
            Err(e) => tracing::warn!(error = %e, "usage history: saved quota usage unreadable; quotas count from zero"),
        }
        let store = Arc::new(Mutex::new(store));
        let (stop, stopped) = mpsc::channel();
        let (s, every) = (store.clone(), cfg.flush_interval);
        let thread = std::thread::Builder::new()
            .name("usage".into())
            .spawn(move || run(&s, &manager, every, &stopped))
            .map_err(|e| UsageError::Unusable(format!("no usage thread: {e}")))?;
        Ok(Recorder { store, running: Mutex::new(Some((stop, thread))) })
    }

    /// Stops writing, after a last flush of what was counted until now.
    pub fn stop(&self) {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((stop, thread)) = running {
            drop(stop);
            let _ = thread.join();
        }
    }

    /// A report of what has been written (at most one flush interval old).
    pub fn query(&self, q: &UsageQuery) -> Result<UsageReport, UsageError> {
        lock(&self.store).query(q, now())
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock(store: &Mutex<UsageStore>) -> std::sync::MutexGuard<'_, UsageStore> {
    store.lock().unwrap_or_else(|p| p.into_inner())
}

fn run(store: &Mutex<UsageStore>, manager: &Manager, every: Duration, stopped: &mpsc::Receiver<()>) {
    let mut pruned = Instant::now() - PRUNE_EVERY;
    loop {
        let stop = !matches!(stopped.recv_timeout(every), Err(RecvTimeoutError::Timeout));
        let deltas = manager.take_usage();
        let quotas = manager.quota_usages();
        let mut s = lock(store);
        let now = now();
        s.record(now, &deltas);
        if let Err(e) = s.keep_quotas(quotas) {
            tracing::warn!(error = %e, "usage history: quota usage not saved");
        }
        if let Err(e) = s.flush() {
            tracing::warn!(error = %e, "usage history: counts kept in memory for the next flush");
        }
        if pruned.elapsed() >= PRUNE_EVERY {
            pruned = Instant::now();
            if let Err(e) = s.prune(now) {
                tracing::warn!(error = %e, "usage history: old rows not pruned");
            }
        }
        if stop {
            return;
        }
    }
}
