//! The journal: the changes made since the snapshot, one JSON line each
//! (`{"seq":8,"next_id":5,"put":{...}}`), appended in one write per change.
//! A change costs one small append instead of a rewrite of every throttle.
use std::{
    fs::File,
    io::{self, Write},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{Change, State, StateError};

/// A journal line.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    seq: u64,
    next_id: u32,
    #[serde(flatten)]
    change: Change,
}

/// Where a load stopped trusting the files.
pub(super) struct Damage {
    pub path: PathBuf,
    pub reason: String,
}

impl State {
    fn apply(&mut self, e: Entry) {
        (self.seq, self.next_id) = (e.seq, e.next_id);
        match e.change {
            Change::Put(p) => match self.throttles.iter_mut().find(|t| t.id == p.id) {
                Some(t) => *t = p,
                None => self.throttles.push(p),
            },
            Change::Delete(id) => self.throttles.retain(|t| t.id != id),
            Change::Defaults(d) => self.defaults = d,
            Change::Link(l) => self.link = Some(l),
        }
    }
}

/// Applies one journal's entries that `state` does not include yet.
pub(super) fn replay(state: &mut State, path: &Path, text: &[u8]) -> Result<(), Damage> {
    for line in text.split_inclusive(|b| *b == b'\n') {
        if !line.ends_with(b"\n") {
            tracing::warn!(journal = %path.display(), bytes = line.len(), "skipping a change cut short by a crash or a full disk");
            break;
        }
        let entry: Entry =
            serde_json::from_slice(line).map_err(|e| Damage { path: path.into(), reason: e.to_string() })?;
        if entry.seq > state.seq {
            state.apply(entry);
        }
    }
    Ok(())
}

/// The journal being appended to.
pub struct Journal {
    file: File,
    path: PathBuf,
}

impl Journal {
    pub(super) fn new(file: File, path: PathBuf) -> Journal {
        Journal { file, path }
    }

    /// One line, in one write: it survives a crash of the daemon as soon
    /// as this returns, and a power loss once synced.
    pub fn append(&mut self, seq: u64, next_id: u32, change: Change) -> Result<(), StateError> {
        let mut line = serde_json::to_vec(&Entry { seq, next_id, change }).map_err(io::Error::other);
        if let Ok(l) = &mut line {
            l.push(b'\n');
        }
        line.and_then(|l| self.file.write_all(&l))
            .map_err(|source| StateError::Write { path: self.path.clone(), source })
    }

    /// A handle for syncing from another thread.
    pub fn handle(&self) -> io::Result<File> {
        self.file.try_clone()
    }
}
