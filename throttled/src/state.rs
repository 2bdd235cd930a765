//! Runtime throttles saved under the state directory, written atomically
//! (temporary file, fsync, rename, fsync of the directory), and the lock
//! that keeps a second daemon off the same state.
use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read, Seek, Write},
    os::{fd::AsRawFd, unix::fs::DirBuilderExt},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{config::Defaults, target::Target, Rate};

pub const VERSION: u32 = 1;
const FILE: &str = "throttles.json";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PersistedThrottle {
    pub id: u32,
    pub target: Target,
    pub down: Option<Rate>,
    pub up: Option<Rate>,
    pub down_backend: Option<String>,
    pub up_backend: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub version: u32,
    pub next_id: u32,
    /// Default backends chosen at runtime (they override the config's).
    pub defaults: Defaults,
    pub throttles: Vec<PersistedThrottle>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("saved state {path} is unreadable ({reason}); it was moved to {moved}")]
    Corrupt { path: PathBuf, reason: String, moved: String },
    #[error("cannot save state to {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("another chadthrottled ({}) is using {path}", pid.map_or("pid unknown".into(), |p| format!("pid {p}")))]
    AlreadyRunning { path: PathBuf, pid: Option<u32> },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

#[derive(Clone, Debug)]
pub struct StateStore {
    path: PathBuf,
}

impl StateStore {
    pub fn new(state_dir: &Path) -> Self {
        StateStore { path: state_dir.join(FILE) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `None` when nothing was saved. A file that cannot be used is moved
    /// aside (so the next save does not destroy the evidence).
    pub fn load(&self) -> Result<Option<State>, StateError> {
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.corrupt(e.to_string())),
        };
        match serde_json::from_slice::<State>(&bytes) {
            Ok(s) if s.version == VERSION => Ok(Some(s)),
            Ok(s) => Err(self.corrupt(format!("unknown version {}", s.version))),
            Err(e) => Err(self.corrupt(e.to_string())),
        }
    }

    fn corrupt(&self, reason: String) -> StateError {
        let aside = self.path.with_extension("json.corrupt");
        let moved = match fs::rename(&self.path, &aside) {
            Ok(()) => aside.display().to_string(),
            Err(e) => format!("nowhere ({e})"),
        };
        StateError::Corrupt { path: self.path.clone(), reason, moved }
    }

    /// `write`, then `sync`.
    pub fn save(&self, s: &State) -> Result<(), StateError> {
        self.write(s)?;
        self.sync()
    }

    /// All or nothing: the old file stays intact if anything fails. The new
    /// one replaces it by a rename, so it survives a crash of the daemon
    /// whole; `sync` makes it survive a power loss too.
    pub fn write(&self, s: &State) -> Result<(), StateError> {
        let dir = self.path.parent().unwrap_or(Path::new("/"));
        let tmp = self.path.with_extension("json.tmp");
        let res = (|| {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
            let mut f = File::create(&tmp)?;
            f.write_all(&serde_json::to_vec(s).map_err(io::Error::other)?)?;
            fs::rename(&tmp, &self.path)
        })();
        res.map_err(|source| {
            let _ = fs::remove_file(&tmp);
            self.write_error(source)
        })
    }

    /// Flushes the file and its directory entry to the disk.
    pub fn sync(&self) -> Result<(), StateError> {
        let dir = self.path.parent().unwrap_or(Path::new("/"));
        File::open(&self.path)
            .and_then(|f| f.sync_all())
            .and_then(|_| File::open(dir)?.sync_all())
            .map_err(|e| self.write_error(e))
    }

    fn write_error(&self, source: io::Error) -> StateError {
        StateError::Write { path: self.path.clone(), source }
    }
}

/// An exclusive lock on `state_dir/lock`, held while the value lives.
pub struct InstanceLock {
    _file: File,
}

impl InstanceLock {
    pub fn acquire(state_dir: &Path) -> Result<InstanceLock, StateError> {
        let path = state_dir.join("lock");
        let io_err = |source| StateError::Io { path: path.clone(), source };
        fs::DirBuilder::new().recursive(true).mode(0o700).create(state_dir).map_err(io_err)?;
        let mut f =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io_err)?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut text = String::new();
            let _ = f.read_to_string(&mut text);
            return Err(StateError::AlreadyRunning { path, pid: text.trim().parse().ok() });
        }
        let write = f.set_len(0).and_then(|_| f.rewind()).and_then(|_| writeln!(f, "{}", std::process::id()));
        write.map_err(io_err)?;
        Ok(InstanceLock { _file: f })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn sample() -> State {
        State {
            version: VERSION,
            next_id: 7,
            defaults: Defaults { up: Some("tc_htb".into()), down: None },
            throttles: vec![PersistedThrottle {
                id: 3,
                target: Target::name("firefox").unwrap(),
                down: Some("1M".parse().unwrap()),
                up: None,
                down_backend: Some("ebpf".into()),
                up_backend: None,
            }],
        }
    }

    #[test]
    fn round_trip() {
        let t = Tmp::new("rt");
        let s = StateStore::new(&t.0);
        assert_eq!(s.load().unwrap(), None);
        s.save(&sample()).unwrap();
        assert_eq!(s.load().unwrap(), Some(sample()));
        assert!(!t.0.join("throttles.json.tmp").exists());
    }

    #[test]
    fn corrupt_files_are_moved_aside() {
        let t = Tmp::new("corrupt");
        let s = StateStore::new(&t.0);
        s.save(&sample()).unwrap();
        let full = fs::read(s.path()).unwrap();
        for bad in [
            &full[..full.len() / 2],
            b"\x00\xffgarbage",
            b"{\"version\": 99, \"next_id\": 1, \"defaults\": {}, \"throttles\": []}",
        ] {
            fs::write(s.path(), bad).unwrap();
            let e = s.load().unwrap_err();
            assert!(matches!(e, StateError::Corrupt { .. }), "{e}");
            assert!(e.to_string().contains("throttles.json.corrupt"), "{e}");
            assert!(!s.path().exists() && t.0.join("throttles.json.corrupt").exists());
            assert_eq!(s.load().unwrap(), None);
        }
    }

    #[test]
    fn a_failed_save_keeps_the_old_file() {
        let t = Tmp::new("fail");
        let s = StateStore::new(&t.0);
        s.save(&sample()).unwrap();
        // A directory where the temporary file should go makes the write fail.
        fs::create_dir(t.0.join("throttles.json.tmp")).unwrap();
        let mut changed = sample();
        changed.next_id = 99;
        let e = s.save(&changed).unwrap_err();
        assert!(matches!(e, StateError::Write { .. }) && e.to_string().contains("throttles.json"), "{e}");
        assert_eq!(s.load().unwrap(), Some(sample()), "the old state must survive");
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
