//! Saving runtime throttles. Each change is appended to the journal on the
//! thread that made it, before its answer: one small write, so an answered
//! change survives a crash of the daemon at once. A syncer thread flushes
//! the journal to the disk within `FLUSH_EVERY`, so a power loss loses at
//! most the changes of that moment, and nobody waits for the disk. Every
//! so often, and whenever an append fails, the whole state becomes a new
//! snapshot and a new journal starts; the old journals go once the snapshot
//! is on the disk. The syncer reports whether flushing works over a
//! channel; the saver's owner reads it (`sync_failure`), so nothing on the
//! syncer's thread ever calls back into the manager.
use std::{
    collections::BTreeSet,
    fs::File,
    sync::{
        mpsc::{self, Receiver, Sender},
        Arc, Condvar, Mutex, MutexGuard,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{Change, Journal, State, StateError, StateStore};

/// Sent when flushing to the disk starts failing (`Some(reason)`) and when
/// it works again (`None`).
type SyncReport = Option<String>;

/// The journal is folded into a snapshot after this many entries, or four
/// per saved throttle if that is more: a snapshot costs about as much as
/// that many appends, and a start replays at most that many.
const FOLD_AFTER: usize = 256;

/// Journal flushes are at least this far apart: under load one flush
/// covers many changes, instead of a disk write each.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

pub struct Saver {
    store: StateStore,
    journal: Option<Journal>,
    /// The last change numbered.
    seq: u64,
    /// Entries in the journal since its snapshot.
    entries: usize,
    /// The throttles the saved state holds.
    saved: BTreeSet<u32>,
    syncer: Syncer,
    reports: Receiver<SyncReport>,
}

impl Saver {
    pub fn new(store: StateStore) -> std::io::Result<Saver> {
        let (tx, reports) = mpsc::channel();
        let syncer = Syncer::start(store.clone(), tx)?;
        Ok(Saver { store, journal: None, seq: 0, entries: 0, saved: BTreeSet::new(), syncer, reports })
    }

    /// What the syncer reported since the last call, if anything: the
    /// latest word on flushing (`Some(None)`: it works again).
    pub fn sync_failure(&self) -> Option<Option<String>> {
        self.reports.try_iter().last()
    }

    /// Numbers changes on from a loaded state, so that the old journals
    /// are recognised as folded once the next snapshot is written.
    pub fn resume(&mut self, loaded: &State) {
        self.seq = self.seq.max(loaded.seq);
    }

    /// Appends one change (a deletion of what was never saved is nothing
    /// to append). `Ok(false)`: there is no journal to append to, so only a
    /// snapshot can save it.
    pub fn record(&mut self, next_id: u32, change: Change) -> Result<bool, StateError> {
        match &change {
            Change::Put(p) => drop(self.saved.insert(p.id)),
            Change::Delete(id) if !self.saved.remove(id) => return Ok(true), // never saved
            _ => {}
        }
        self.seq += 1;
        let Some(j) = &mut self.journal else { return Ok(false) };
        match j.append(self.seq, next_id, change) {
            Ok(()) => {
                self.entries += 1;
                self.syncer.journal_written();
                Ok(true)
            }
            Err(e) => {
                self.journal = None; // possibly cut short: never append after it
                Err(e)
            }
        }
    }

    /// Whether the next change should be saved by a snapshot.
    pub fn wants_snapshot(&self) -> bool {
        self.journal.is_none() || self.entries >= FOLD_AFTER.max(4 * self.saved.len())
    }

    /// Writes `state`, which includes every change recorded so far, as the
    /// snapshot, and starts a new journal after it. If the snapshot cannot
    /// be written, a working journal is kept.
    pub fn snapshot(&mut self, mut state: State) -> Result<(), StateError> {
        state.seq = self.seq;
        self.store.write(&state)?;
        self.saved = state.throttles.iter().map(|t| t.id).collect();
        self.entries = 0;
        // The old journal must not grow once the syncer may delete it.
        self.journal = None;
        let journal = self.store.open_journal(self.seq + 1)?;
        self.syncer.snapshot_written(self.seq, &journal);
        self.journal = Some(journal);
        Ok(())
    }
}

#[derive(Default)]
struct Work {
    journal: Option<Arc<File>>,
    journal_dirty: bool,
    /// A snapshot at this sequence number to flush, and the journals it
    /// includes to delete.
    snapshot: Option<u64>,
    stop: bool,
}

struct Syncer {
    shared: Arc<(Mutex<Work>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

fn lock(m: &Mutex<Work>) -> MutexGuard<'_, Work> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Syncer {
    fn start(store: StateStore, reports: Sender<SyncReport>) -> std::io::Result<Syncer> {
        let shared = Arc::new((Mutex::new(Work::default()), Condvar::new()));
        let s = shared.clone();
        let thread = std::thread::Builder::new().name("persist".into()).spawn(move || run(&s, &store, &reports))?;
        Ok(Syncer { shared, thread: Some(thread) })
    }

    /// Wakes the thread only if it has nothing queued yet: under load,
    /// appends share a flush.
    fn journal_written(&self) {
        let (m, cv) = &*self.shared;
        let mut w = lock(m);
        if !w.journal_dirty {
            w.journal_dirty = true;
            cv.notify_one();
        }
    }

    fn snapshot_written(&self, seq: u64, journal: &Journal) {
        let (m, cv) = &*self.shared;
        let mut w = lock(m);
        w.snapshot = Some(seq);
        w.journal = journal.handle().ok().map(Arc::new);
        w.journal_dirty = false; // empty; the directory flush covers it
        cv.notify_one();
    }
}

fn run(shared: &(Mutex<Work>, Condvar), store: &StateStore, reports: &Sender<SyncReport>) {
    let (m, cv) = shared;
    let mut failing: Option<String> = None;
    let mut flushed = Instant::now() - FLUSH_EVERY;
    loop {
        let (snapshot, journal) = {
            let mut w = lock(m);
            loop {
                let flush_at = flushed + FLUSH_EVERY;
                let now = Instant::now();
                if w.snapshot.is_some() || (w.journal_dirty && (now >= flush_at || w.stop)) {
                    break;
                }
                if w.stop {
                    return; // everything flushed
                }
                w = match w.journal_dirty {
                    true => cv.wait_timeout(w, flush_at - now).unwrap_or_else(|p| p.into_inner()).0,
                    false => cv.wait(w).unwrap_or_else(|p| p.into_inner()),
                };
            }
            let journal = std::mem::take(&mut w.journal_dirty).then(|| w.journal.clone()).flatten();
            (w.snapshot.take(), journal)
        };
        let mut result = Ok(());
        if let Some(seq) = snapshot {
            result = store.sync().and_then(|_| store.drop_journals_through(seq)).map_err(|e| e.to_string());
        }
        if let Some(j) = journal {
            result = result.and(j.sync_data().map_err(|e| format!("cannot flush the journal: {e}")));
            flushed = Instant::now();
        }
        let now = result.err();
        if let Some(e) = &now {
            tracing::error!(error = e, "saved throttles may not survive a power loss");
        }
        if now != failing {
            let _ = reports.send(now.clone()); // the saver may be gone
            failing = now;
        }
    }
}

impl Drop for Syncer {
    /// Flushes what is pending, then stops.
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
    use crate::{limit::LimitSpec, persist::PersistedThrottle, target::Target};

    struct Dir(std::path::PathBuf);

    impl Dir {
        fn new(tag: &str) -> Dir {
            let p = std::env::temp_dir().join(format!("ct-persist-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            Dir(p)
        }

        fn files(&self) -> Vec<String> {
            let mut f: Vec<String> = std::fs::read_dir(&self.0)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            f.sort();
            f
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn throttle(id: u32) -> PersistedThrottle {
        let spec = LimitSpec { down: Some("1M".parse().unwrap()), ..Default::default() };
        PersistedThrottle { id, target: Target::name(&format!("p{id}")).unwrap(), spec, admin: true, creator: None }
    }

    fn state(ids: impl IntoIterator<Item = u32>, next_id: u32) -> State {
        State { version: 1, next_id, throttles: ids.into_iter().map(throttle).collect(), ..Default::default() }
    }

    #[test]
    fn changes_are_journaled_then_folded() {
        let d = Dir::new("fold");
        let store = StateStore::new(&d.0);
        let mut s = Saver::new(store.clone()).unwrap();
        s.snapshot(state([], 1)).unwrap();
        for id in 1..=10 {
            assert!(s.record(id + 1, Change::Put(throttle(id))).unwrap());
        }
        for _ in 10..FOLD_AFTER - 1 {
            s.record(11, Change::Put(throttle(1))).unwrap();
        }
        assert!(!s.wants_snapshot());
        assert!(s.record(11, Change::Delete(10)).unwrap());
        assert!(s.wants_snapshot(), "time to fold");
        let want = state(1..=9, 11);
        let loaded = store.load().unwrap().unwrap();
        assert_eq!((loaded.seq, &loaded.throttles), (FOLD_AFTER as u64, &want.throttles));
        s.snapshot(want.clone()).unwrap();
        assert!(!s.wants_snapshot());
        assert!(s.record(11, Change::Delete(999)).unwrap(), "deleting what was never saved is a no-op");
        drop(s); // flushes, and deletes the folded journal
        assert_eq!(d.files(), [format!("throttles.journal.{}", FOLD_AFTER + 1), "throttles.json".into()]);
        let loaded = store.load().unwrap().unwrap();
        assert_eq!(loaded.throttles, want.throttles);
    }

    #[test]
    fn a_restart_resumes_numbering_and_drops_old_journals() {
        let d = Dir::new("resume");
        let store = StateStore::new(&d.0);
        let mut s = Saver::new(store.clone()).unwrap();
        s.snapshot(state([], 1)).unwrap();
        s.record(2, Change::Put(throttle(1))).unwrap();
        s.record(3, Change::Put(throttle(2))).unwrap();
        drop(s);
        let loaded = store.load().unwrap().unwrap();
        assert_eq!(loaded.seq, 2);
        let mut s = Saver::new(store.clone()).unwrap();
        s.resume(&loaded);
        s.snapshot(loaded.clone()).unwrap();
        s.record(3, Change::Delete(1)).unwrap();
        drop(s);
        assert_eq!(d.files(), ["throttles.journal.3", "throttles.json"]);
        assert_eq!(store.load().unwrap().unwrap().throttles, vec![throttle(2)]);
    }

    #[test]
    fn failures_need_a_snapshot_and_recover() {
        let d = Dir::new("fail");
        // The state directory is a file: nothing can be written.
        std::fs::write(&d.0, b"").unwrap();
        let store = StateStore::new(&d.0);
        let mut s = Saver::new(store.clone()).unwrap();
        let e = s.snapshot(state([], 1)).unwrap_err();
        assert!(e.to_string().contains("throttles.json"), "{e}");
        assert!(s.wants_snapshot());
        assert!(!s.record(2, Change::Put(throttle(1))).unwrap(), "no journal to append to");
        assert!(!s.record(3, Change::Put(throttle(2))).unwrap());
        std::fs::remove_file(&d.0).unwrap();
        s.snapshot(state([1, 2], 3)).unwrap();
        assert!(!s.wants_snapshot());
        assert!(s.record(3, Change::Delete(1)).unwrap());
        drop(s);
        assert_eq!(d.files(), ["throttles.journal.3", "throttles.json"]);
        assert_eq!(store.load().unwrap().unwrap().throttles, vec![throttle(2)]);
    }

    #[test]
    fn sync_failures_are_reported_once() {
        let (tx, rx) = mpsc::channel();
        // A state directory under a file: its snapshot cannot be flushed.
        let store = StateStore::new(std::path::Path::new("/proc/version/x"));
        let syncer = Syncer::start(store, tx).unwrap();
        for seq in 1..=3 {
            let (m, cv) = &*syncer.shared;
            lock(m).snapshot = Some(seq);
            cv.notify_one();
        }
        drop(syncer);
        let changes: Vec<SyncReport> = rx.try_iter().collect();
        assert_eq!(changes.len(), 1, "one failure, reported once: {changes:?}");
        assert!(changes[0].as_deref().is_some_and(|r| r.contains("/proc/version/x")), "{changes:?}");
    }
}
