//! Writes the saved state off the core's lock, with group commit: callers
//! hand over the newest state and wait until a write at least that new has
//! replaced the file, so a burst of changes costs one write, not one each,
//! and a slow disk never stalls calls that read. The file is then synced
//! before the next write: an answered change survives a crash of the daemon
//! at once, and a power loss once synced (the next few milliseconds).
use std::{
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread::JoinHandle,
};

use crate::state::{State, StateStore};

/// Told when saving starts failing (`Some(reason)`, again if the reason
/// changes) and when it works again (`None`); the daemon turns that into
/// the health of its saved state.
pub type OnChange = Box<dyn Fn(Option<String>) + Send + Sync>;

type Written = tokio::sync::watch::Sender<u64>;

#[derive(Default)]
struct Shared {
    latest: Option<(u64, State)>,
    submitted: u64,
    /// Every state up to this sequence number is on disk (or failed).
    done: u64,
    stop: bool,
}

pub struct Persister {
    shared: Arc<(Mutex<Shared>, Condvar)>,
    /// `done`, for waiters on async threads.
    written: tokio::sync::watch::Receiver<u64>,
    thread: Option<JoinHandle<()>>,
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Persister {
    pub fn new(store: StateStore, on_change: OnChange) -> std::io::Result<Persister> {
        let shared = Arc::new((Mutex::new(Shared::default()), Condvar::new()));
        let s = shared.clone();
        let (tx, written) = tokio::sync::watch::channel(0);
        let thread =
            std::thread::Builder::new().name("persist".into()).spawn(move || run(&s, &store, &on_change, &tx))?;
        Ok(Persister { shared, written, thread: Some(thread) })
    }

    /// Queues `state` (replacing any older one not yet written); returns
    /// its sequence number for `wait`.
    pub fn submit(&self, state: State) -> u64 {
        let (m, cv) = &*self.shared;
        let mut s = lock(m);
        s.submitted += 1;
        let seq = s.submitted;
        s.latest = Some((seq, state));
        cv.notify_all();
        seq
    }

    /// A handle to wait on writes without holding whatever owns `self`.
    pub fn waiter(&self) -> Waiter {
        Waiter { shared: self.shared.clone(), written: self.written.clone() }
    }
}

#[derive(Clone)]
pub struct Waiter {
    shared: Arc<(Mutex<Shared>, Condvar)>,
    written: tokio::sync::watch::Receiver<u64>,
}

impl Waiter {
    pub fn submitted(&self) -> u64 {
        lock(&self.shared.0).submitted
    }

    /// Returns once everything up to `seq` has been written (or failed).
    pub fn wait(&self, seq: u64) {
        let (m, cv) = &*self.shared;
        let mut s = lock(m);
        while s.done < seq && !s.stop {
            s = cv.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// As `wait`, without holding a thread (or after the persister stopped).
    pub async fn written(&self, seq: u64) {
        let _ = self.written.clone().wait_for(|done| *done >= seq).await;
    }
}

fn run(shared: &(Mutex<Shared>, Condvar), store: &StateStore, on_change: &OnChange, written: &Written) {
    let (m, cv) = shared;
    let mut failing: Option<String> = None;
    loop {
        let (seq, state) = {
            let mut s = lock(m);
            while s.latest.is_none() && !s.stop {
                s = cv.wait(s).unwrap_or_else(|p| p.into_inner());
            }
            match s.latest.take() {
                Some(job) => job,
                None => return, // stopping, nothing left to write
            }
        };
        let mut report = |now: Option<String>| {
            if let Some(e) = &now {
                tracing::error!(error = e, "throttles apply but were not saved for the next start");
            }
            if now != failing {
                on_change(now.clone());
                failing = now;
            }
        };
        let wrote = store.write(&state).err().map(|e| e.to_string());
        if wrote.is_some() {
            report(wrote.clone()); // before the waiters go: they may ask at once
        }
        lock(m).done = seq;
        cv.notify_all();
        written.send_replace(seq);
        if wrote.is_none() {
            report(store.sync().err().map(|e| e.to_string()));
        }
    }
}

impl Drop for Persister {
    /// Writes what is pending, then stops.
    fn drop(&mut self) {
        let (m, cv) = &*self.shared;
        lock(m).stop = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(next_id: u32) -> State {
        State { version: 1, next_id, defaults: Default::default(), throttles: vec![] }
    }

    #[test]
    fn the_newest_state_wins_and_waiters_return() {
        let dir = std::env::temp_dir().join(format!("ct-persist-{}", std::process::id()));
        let p = Persister::new(StateStore::new(&dir), Box::new(|_| {})).unwrap();
        let mut last = 0;
        for i in 1..=50 {
            last = p.submit(state(i));
        }
        p.waiter().wait(last);
        assert_eq!(StateStore::new(&dir).load().unwrap().unwrap().next_id, 50);
        drop(p);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn failures_are_reported_once_and_do_not_block() {
        let changes = Arc::new(Mutex::new(Vec::new()));
        let c = changes.clone();
        // A state directory under a file cannot be created.
        let p = Persister::new(
            StateStore::new(std::path::Path::new("/proc/version/x")),
            Box::new(move |m| c.lock().unwrap().push(m)),
        )
        .unwrap();
        for i in 1..=3 {
            let seq = p.submit(state(i));
            p.waiter().wait(seq);
        }
        let changes = changes.lock().unwrap();
        assert_eq!(changes.len(), 1, "one failure, reported once: {changes:?}");
        assert!(changes[0].as_deref().is_some_and(|r| r.contains("/proc/version/x")), "{changes:?}");
    }

    #[test]
    fn recovery_is_reported() {
        let dir = std::env::temp_dir().join(format!("ct-persist-ok-{}", std::process::id()));
        let changes = Arc::new(Mutex::new(Vec::new()));
        let c = changes.clone();
        let p = Persister::new(StateStore::new(&dir), Box::new(move |m| c.lock().unwrap().push(m))).unwrap();
        let seq = p.submit(state(1));
        p.waiter().wait(seq);
        assert!(changes.lock().unwrap().is_empty(), "a working save is no change");
        drop(p);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
