//! The saved state's files: a snapshot (`throttles.json`, replaced by a
//! rename) and the journals of changes made since
//! (`throttles.journal.<first seq>`); loading applies every later journal
//! entry to the snapshot, and every so often the journal is folded into a
//! new snapshot.
use std::{
    fs, io,
    path::{Path, PathBuf},
};

use super::{
    journal::{replay, Damage},
    statefs, Journal, State, StateError, VERSION,
};

const SNAPSHOT: &str = "throttles.json";
/// Journal files are this prefix and the sequence number of their first entry.
const JOURNAL: &str = "throttles.journal.";

#[derive(Clone, Debug)]
pub struct StateStore {
    dir: PathBuf,
    path: PathBuf,
}

impl StateStore {
    pub fn new(state_dir: &Path) -> Self {
        StateStore { dir: state_dir.to_path_buf(), path: state_dir.join(SNAPSHOT) }
    }

    /// The snapshot's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The snapshot with every later journal entry applied; `None` when
    /// nothing was saved. A journal's last line without its newline was cut
    /// short by a crash or a full disk, and is skipped with a warning. Files
    /// that cannot be used are moved aside, so the next save does not
    /// destroy the evidence.
    pub fn load(&self) -> Result<Option<State>, StateError> {
        let journals = self.journals().map_err(|e| self.io_error(&self.dir, e))?;
        match self.read_all(&journals) {
            Ok(state) => Ok(state),
            Err(d) => Err(self.move_aside(&journals, d)),
        }
    }

    fn read_all(&self, journals: &[(u64, PathBuf)]) -> Result<Option<State>, Damage> {
        let mut state = self.read_snapshot()?;
        for (_, path) in journals {
            let text = statefs::read(path).map_err(|e| Damage { path: path.clone(), reason: e.to_string() })?;
            let s = state.get_or_insert_with(|| State { version: VERSION, next_id: 1, ..Default::default() });
            replay(s, path, &text)?;
        }
        if let Some(s) = &mut state {
            s.throttles.sort_by_key(|t| t.id);
        }
        Ok(state)
    }

    fn read_snapshot(&self) -> Result<Option<State>, Damage> {
        let damage = |reason: String| Damage { path: self.path.clone(), reason };
        let bytes = match statefs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(damage(e.to_string())),
        };
        match serde_json::from_slice::<State>(&bytes) {
            Ok(s) if s.version == VERSION => Ok(Some(s)),
            Ok(s) => Err(damage(format!("unknown version {}", s.version))),
            Err(e) => Err(damage(e.to_string())),
        }
    }

    /// Every saved file goes aside: the journals mean nothing without the
    /// snapshot they follow, and the reverse.
    fn move_aside(&self, journals: &[(u64, PathBuf)], d: Damage) -> StateError {
        let aside = |p: &Path| {
            let to = PathBuf::from(format!("{}.corrupt", p.display()));
            fs::rename(p, &to).map(|_| to.display().to_string())
        };
        let moved = match aside(&self.path) {
            Ok(to) => to,
            Err(e) if e.kind() == io::ErrorKind::NotFound => "nowhere (there was no snapshot)".into(),
            Err(e) => format!("nowhere ({e})"),
        };
        journals.iter().for_each(|(_, j)| drop(aside(j)));
        StateError::Corrupt { path: d.path, reason: d.reason, moved }
    }

    /// Journal files, oldest first.
    fn journals(&self) -> io::Result<Vec<(u64, PathBuf)>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut found = Vec::new();
        for e in entries {
            let name = e?.file_name();
            let first = name.to_str().and_then(|n| n.strip_prefix(JOURNAL)).and_then(|n| n.parse::<u64>().ok());
            if let Some(first) = first {
                found.push((first, self.dir.join(name)));
            }
        }
        found.sort();
        Ok(found)
    }

    /// Replaces the snapshot by a rename: the old one stays intact if
    /// anything fails, and the new one survives a crash of the daemon whole;
    /// `sync` makes it survive a power loss too.
    pub fn write(&self, s: &State) -> Result<(), StateError> {
        let res = (|| {
            self.make_dir()?;
            statefs::replace(&self.path, &serde_json::to_vec(s).map_err(io::Error::other)?, false)
        })();
        res.map_err(|source| self.write_error(&self.path, source))
    }

    /// Flushes the snapshot and the directory's entries to the disk.
    pub fn sync(&self) -> Result<(), StateError> {
        statefs::open_read(&self.path).and_then(|f| f.sync_all()).map_err(|e| self.write_error(&self.path, e))?;
        statefs::sync_dir(&self.dir).map_err(|e| self.write_error(&self.dir, e))
    }

    /// A new, empty journal whose first entry will be `first`.
    pub fn open_journal(&self, first: u64) -> Result<Journal, StateError> {
        let path = self.dir.join(format!("{JOURNAL}{first}"));
        let open = || {
            self.make_dir()?;
            // A crashed run's journal of this name held nothing newer.
            statefs::create_new(&path, true)
        };
        match open() {
            Ok(file) => Ok(Journal::new(file, path)),
            Err(e) => Err(self.write_error(&path, e)),
        }
    }

    /// Deletes the journals that a synced snapshot at `seq` includes
    /// whole: those that started at or before it (a journal is started
    /// right after each snapshot).
    pub fn drop_journals_through(&self, seq: u64) -> Result<(), StateError> {
        let journals = self.journals().map_err(|e| self.io_error(&self.dir, e))?;
        for (first, path) in journals.into_iter().filter(|(first, _)| *first <= seq) {
            fs::remove_file(&path).map_err(|e| self.write_error(&path, e))?;
            tracing::trace!(first, "journal folded into the snapshot");
        }
        Ok(())
    }

    /// The directory was checked at start; it may have been removed since.
    fn make_dir(&self) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir)
    }

    fn write_error(&self, path: &Path, source: io::Error) -> StateError {
        StateError::Write { path: path.to_path_buf(), source }
    }

    fn io_error(&self, path: &Path, source: io::Error) -> StateError {
        StateError::Io { path: path.to_path_buf(), source }
    }
}

#[cfg(test)]
mod tests {
    use std::{fs::OpenOptions, io::Write};

    use super::*;
    use crate::{
        config::Defaults,
        limit::LimitSpec,
        persist::{Change, InstanceLock, PersistedThrottle},
        target::Target,
    };

    struct Tmp(PathBuf);

    impl Tmp {
        fn new(tag: &str) -> Tmp {
            let p = std::env::temp_dir().join(format!("ct-state-test-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            Tmp(p)
        }
    }

    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = fs::set_permissions(&self.0, std::os::unix::fs::PermissionsExt::from_mode(0o700));
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn throttle(id: u32, name: &str) -> PersistedThrottle {
        let spec =
            LimitSpec { down: Some("1M".parse().unwrap()), down_backend: Some("ebpf".into()), ..Default::default() };
        PersistedThrottle { id, target: Target::name(name).unwrap(), spec, admin: false, creator: Some(1000) }
    }

    fn up2m(mut t: PersistedThrottle) -> PersistedThrottle {
        t.spec.up = Some("2M".parse().unwrap());
        t
    }

    fn sample() -> State {
        State {
            version: VERSION,
            seq: 0,
            next_id: 7,
            defaults: Defaults { up: Some("tc_htb".into()), down: None },
            link: Some(crate::config::LinkCapacity { down: Some("50M".parse().unwrap()), up: None }),
            throttles: vec![throttle(3, "firefox")],
        }
    }

    fn save(s: &StateStore, state: &State) {
        s.write(state).unwrap();
        s.sync().unwrap();
    }

    #[test]
    fn round_trip() {
        let t = Tmp::new("rt");
        let s = StateStore::new(&t.0);
        assert_eq!(s.load().unwrap(), None);
        save(&s, &sample());
        assert_eq!(s.load().unwrap(), Some(sample()));
        assert!(!t.0.join("throttles.json.tmp").exists());
    }

    #[test]
    fn a_snapshot_from_before_the_journal_loads() {
        let t = Tmp::new("old");
        let s = StateStore::new(&t.0);
        fs::create_dir_all(&t.0).unwrap();
        let old = r#"{"version":1,"next_id":7,"defaults":{"up":"tc_htb","down":null},"throttles":[]}"#;
        fs::write(s.path(), old).unwrap();
        // A file from before the runtime link capacity has none.
        assert_eq!(s.load().unwrap(), Some(State { throttles: vec![], link: None, ..sample() }));
    }

    #[test]
    fn a_throttle_saved_without_its_owner_is_admin_set() {
        let t = Tmp::new("owner");
        let s = StateStore::new(&t.0);
        fs::create_dir_all(&t.0).unwrap();
        let old = r#"{"version":1,"next_id":7,"defaults":{"up":null,"down":null},"throttles":[
            {"id":3,"target":{"kind":"name","name":"firefox"},"down":1048576,"up":null,"down_backend":"ebpf","up_backend":null}]}"#;
        fs::write(s.path(), old).unwrap();
        let loaded = s.load().unwrap().unwrap();
        let want = PersistedThrottle { admin: true, creator: None, ..throttle(3, "firefox") };
        assert_eq!(loaded.throttles, vec![want]);
    }

    #[test]
    fn journal_entries_replay_over_the_snapshot() {
        let t = Tmp::new("journal");
        let s = StateStore::new(&t.0);
        save(&s, &sample());
        let mut j = s.open_journal(1).unwrap();
        j.append(1, 8, Change::Put(throttle(7, "curl"))).unwrap();
        j.append(2, 8, Change::Put(up2m(throttle(3, "firefox")))).unwrap();
        j.append(3, 9, Change::Put(throttle(8, "wget"))).unwrap();
        j.append(4, 9, Change::Delete(7)).unwrap();
        j.append(5, 9, Change::Defaults(Defaults { up: None, down: Some("ifb_tc".into()) })).unwrap();
        let want = State {
            seq: 5,
            next_id: 9,
            defaults: Defaults { up: None, down: Some("ifb_tc".into()) },
            throttles: vec![up2m(throttle(3, "firefox")), throttle(8, "wget")],
            ..sample()
        };
        assert_eq!(s.load().unwrap(), Some(want.clone()));
        // Folded into a snapshot, with a crash before the old journal went:
        // its entries are in the snapshot, and are not applied twice.
        save(&s, &want);
        let mut j = s.open_journal(6).unwrap();
        j.append(6, 9, Change::Delete(8)).unwrap();
        let after = State { seq: 6, throttles: vec![want.throttles[0].clone()], ..want.clone() };
        assert_eq!(s.load().unwrap(), Some(after.clone()));
        s.drop_journals_through(5).unwrap();
        let left: Vec<_> = fs::read_dir(&t.0).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 2, "the snapshot and the newest journal: {left:?}");
        assert_eq!(s.load().unwrap(), Some(after));
    }

    #[test]
    fn a_change_cut_short_is_skipped() {
        let t = Tmp::new("torn");
        let s = StateStore::new(&t.0);
        save(&s, &sample());
        let mut j = s.open_journal(1).unwrap();
        j.append(1, 8, Change::Put(throttle(7, "curl"))).unwrap();
        let mut f = OpenOptions::new().append(true).open(t.0.join("throttles.journal.1")).unwrap();
        f.write_all(br#"{"seq":2,"next_id":9,"put":{"id":8,"#).unwrap();
        let want =
            State { seq: 1, next_id: 8, throttles: vec![throttle(3, "firefox"), throttle(7, "curl")], ..sample() };
        assert_eq!(s.load().unwrap(), Some(want));
    }

    #[test]
    fn corrupt_files_are_moved_aside() {
        let t = Tmp::new("corrupt");
        let s = StateStore::new(&t.0);
        save(&s, &sample());
        let full = fs::read(s.path()).unwrap();
        for bad in [
            &full[..full.len() / 2],
            b"\x00\xffgarbage",
            b"{\"version\": 99, \"next_id\": 1, \"defaults\": {}, \"throttles\": []}",
        ] {
            fs::write(s.path(), bad).unwrap();
            s.open_journal(1).unwrap().append(1, 8, Change::Delete(3)).unwrap();
            let e = s.load().unwrap_err();
            assert!(matches!(e, StateError::Corrupt { .. }), "{e}");
            assert!(e.to_string().contains("throttles.json.corrupt"), "{e}");
            assert!(!s.path().exists() && t.0.join("throttles.json.corrupt").exists());
            assert!(t.0.join("throttles.journal.1.corrupt").exists(), "the journal goes aside with its snapshot");
            assert_eq!(s.load().unwrap(), None);
        }
    }

    #[test]
    fn a_corrupt_journal_line_is_damage() {
        let t = Tmp::new("badline");
        let s = StateStore::new(&t.0);
        save(&s, &sample());
        fs::write(t.0.join("throttles.journal.1"), "{\"seq\":1,\"next_id\":8,\"put\":7}\n").unwrap();
        let e = s.load().unwrap_err();
        assert!(e.to_string().contains("throttles.journal.1"), "{e}");
        assert!(t.0.join("throttles.json.corrupt").exists() && t.0.join("throttles.journal.1.corrupt").exists());
    }

    #[test]
    fn a_failed_save_keeps_the_old_file() {
        let t = Tmp::new("fail");
        let s = StateStore::new(&t.0);
        save(&s, &sample());
        // A directory where the temporary file should go makes the write fail.
        fs::create_dir(t.0.join("throttles.json.tmp")).unwrap();
        let mut changed = sample();
        changed.next_id = 99;
        let e = s.write(&changed).unwrap_err();
        assert!(matches!(e, StateError::Write { .. }) && e.to_string().contains("throttles.json"), "{e}");
        assert_eq!(s.load().unwrap(), Some(sample()), "the old state must survive");
    }

    #[test]
    fn planted_symlinks_are_not_followed() {
        use std::os::unix::fs::symlink;
        let t = Tmp::new("links");
        fs::create_dir_all(&t.0).unwrap();
        let secret = t.0.with_extension("secret");
        fs::write(&secret, "precious").unwrap();
        for name in ["lock", "throttles.json.tmp", "throttles.journal.1"] {
            symlink(&secret, t.0.join(name)).unwrap();
        }
        let e = InstanceLock::acquire(&t.0).err().expect("a symlinked lock is refused");
        assert!(e.to_string().contains("lock: it is a symbolic link"), "{e}");
        let s = StateStore::new(&t.0);
        save(&s, &sample());
        s.open_journal(1).unwrap().append(1, 8, Change::Delete(3)).unwrap();
        let after = State { seq: 1, next_id: 8, throttles: vec![], ..sample() };
        assert_eq!(s.load().unwrap(), Some(after));
        assert_eq!(fs::read_to_string(&secret).unwrap(), "precious");
        let _ = fs::remove_file(secret);
    }

    #[test]
    fn a_state_directory_open_to_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let t = Tmp::new("mode");
        fs::create_dir_all(&t.0).unwrap();
        fs::set_permissions(&t.0, fs::Permissions::from_mode(0o777)).unwrap();
        let e = InstanceLock::acquire(&t.0).err().expect("refused");
        assert!(matches!(e, StateError::UnsafeDir { .. }), "{e}");
        assert!(!t.0.join("lock").exists(), "nothing is made in a refused directory");
    }

    #[test]
    fn a_second_instance_is_refused() {
        let t = Tmp::new("lock");
        let first = InstanceLock::acquire(&t.0).unwrap();
        match InstanceLock::acquire(&t.0) {
            Err(StateError::AlreadyRunning { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected AlreadyRunning, got {:?}", other.err()),
        }
        drop(first);
        InstanceLock::acquire(&t.0).unwrap();
    }
}
