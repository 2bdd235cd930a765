//! The lock that keeps a second daemon off the same state directory.
use std::{
    fs::File,
    io::{Read, Seek, Write},
    os::fd::AsRawFd,
    path::Path,
};

use super::{statefs, StateError};

/// An exclusive lock on `state_dir/lock`, held while the value lives.
pub struct InstanceLock {
    _file: File,
}

impl InstanceLock {
    /// Refuses a state directory that anyone but this daemon's user could
    /// plant files in (and creates it 0700 when missing), before any file
    /// in it is opened.
    pub fn acquire(state_dir: &Path) -> Result<InstanceLock, StateError> {
        statefs::prepare_dir(state_dir)
            .map_err(|reason| StateError::UnsafeDir { path: state_dir.to_path_buf(), reason })?;
        let path = state_dir.join("lock");
        let io_err = |source| StateError::Io { path: path.clone(), source };
        let mut f = statefs::open_lock(&path).map_err(io_err)?;
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
