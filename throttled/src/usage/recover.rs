//! Opening the database file safely, and moving a bad one aside.
//!
//! The file is made (or checked) with the state directory's rules first: a
//! plain file with one link, mode 0600, never through a symlink; SQLite then
//! opens it with `SQLITE_OPEN_NOFOLLOW` (and uses `O_NOFOLLOW` for its `-wal`
//! and `-shm` files itself). A file that is not SQLite, that fails
//! `PRAGMA quick_check`, or that a newer build wrote is renamed
//! `<name>.corrupt-<unix time>` (`.newer-` for the last), with its `-wal`,
//! and a new database is started in its place.
use std::{
    fs, io,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use rusqlite::{Connection, ErrorCode, OpenFlags};
use tracing::warn;

use super::{
    schema::{self, Outcome},
    UsageError,
};

/// Why an existing file cannot be used as it is.
#[derive(Debug)]
pub(super) enum Bad {
    Corrupt(String),
    Newer(i64),
}

/// SQLite's word for a damaged or foreign file.
pub(super) fn is_corrupt(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase))
}

fn file_err(path: &Path) -> impl FnOnce(io::Error) -> UsageError + '_ {
    move |source| UsageError::File { path: path.to_owned(), source }
}

/// Opens the database at `path`, moving a bad one aside first; a new file
/// that is bad as well is an error.
pub(super) fn open(path: &Path) -> Result<Connection, UsageError> {
    match try_open(path)? {
        Ok(conn) => Ok(conn),
        Err(bad) => {
            move_aside(path, &bad)?;
            try_open(path)?.map_err(|bad| UsageError::Unusable(format!("{bad:?}")))
        }
    }
}

/// `Err` for a real failure (the directory, the disk); `Ok(Err)` for a file
/// that is there but bad.
fn try_open(path: &Path) -> Result<Result<Connection, Bad>, UsageError> {
    prepare_file(path)?;
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NOFOLLOW | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = match Connection::open_with_flags(path, flags) {
        Ok(c) => c,
        Err(e) if is_corrupt(&e) => return Ok(Err(Bad::Corrupt(e.to_string()))),
        Err(e) => return Err(e.into()),
    };
    match check(&mut conn) {
        Ok(Ok(())) => Ok(Ok(conn)),
        Ok(Err(bad)) => Ok(Err(bad)),
        Err(e) if is_corrupt(&e) => Ok(Err(Bad::Corrupt(e.to_string()))),
        Err(e) => Err(e.into()),
    }
}

/// Settings, integrity and schema; `Ok(Err)` for a file to move aside.
fn check(conn: &mut Connection) -> rusqlite::Result<Result<(), Bad>> {
    // A foreign file fails here with SQLITE_NOTADB.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // In WAL mode NORMAL survives a kill -9 (only a power cut can lose the
    // last commits), and a commit needs no fsync.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.busy_timeout(std::time::Duration::from_secs(2))?;
    let verdict: String = conn.query_row("PRAGMA quick_check(1)", [], |r| r.get(0))?;
    if verdict != "ok" {
        return Ok(Err(Bad::Corrupt(verdict)));
    }
    match schema::migrate(conn)? {
        Outcome::Newer(v) => Ok(Err(Bad::Newer(v))),
        Outcome::Migrated { from } => {
            if from != schema::VERSION && from != 0 {
                tracing::info!(from, to = schema::VERSION, "usage database migrated");
            }
            Ok(Ok(()))
        }
    }
}

/// Creates the file (0600) or checks the existing one: a plain file with
/// one link, owned by us, not a symlink; sidecar symlinks are removed.
fn prepare_file(path: &Path) -> Result<(), UsageError> {
    let f = crate::persist::statefs::open_lock(path).map_err(file_err(path))?;
    let meta = f.metadata().map_err(file_err(path))?;
    // SAFETY: geteuid has no preconditions.
    if meta.uid() != unsafe { libc::geteuid() } {
        return Err(UsageError::File {
            path: path.to_owned(),
            source: io::Error::other("it is not owned by this daemon"),
        });
    }
    if meta.mode() & 0o777 != 0o600 {
        f.set_permissions(fs::Permissions::from_mode(0o600)).map_err(file_err(path))?;
    }
    for side in ["-wal", "-shm", "-journal"] {
        let p = sibling(path, side);
        if fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
            warn!(path = %p.display(), "removing a symbolic link planted beside the usage database");
            fs::remove_file(&p).map_err(file_err(&p))?;
        }
    }
    Ok(())
}

pub(super) fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Renames the bad file (and its `-wal`) out of the way, keeping it for a
/// post-mortem; the `-shm` index is only a cache and goes.
pub(super) fn move_aside(path: &Path, bad: &Bad) -> Result<PathBuf, UsageError> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (tag, why) = match bad {
        Bad::Corrupt(why) => ("corrupt", why.clone()),
        Bad::Newer(v) => ("newer", format!("schema version {v} is newer than this build's {}", schema::VERSION)),
    };
    let aside = sibling(path, &format!(".{tag}-{now}"));
    warn!(path = %path.display(), aside = %aside.display(), reason = %why,
        "the usage database cannot be used: moved aside, a new one is started");
    fs::rename(path, &aside).map_err(file_err(path))?;
    let wal = sibling(path, "-wal");
    if wal.exists() {
        fs::rename(&wal, sibling(&aside, "-wal")).map_err(file_err(&wal))?;
    }
    match fs::remove_file(sibling(path, "-shm")) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(file_err(path)(e)),
        _ => {}
    }
    Ok(aside)
}
