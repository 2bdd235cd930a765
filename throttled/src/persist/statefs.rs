//! Files in the state directory, handled so that nothing planted there is
//! ever followed: every open is `O_NOFOLLOW`, a new file is created with
//! `O_EXCL` (a stale one is unlinked first, which removes a symlink and
//! never its target), and the directory itself must be the daemon's alone.
use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

/// Why a state directory is refused: someone else could plant files in it.
pub fn check_dir(dir: &Path) -> Result<(), String> {
    let meta = fs::metadata(dir).map_err(|e| e.to_string())?;
    if !meta.is_dir() {
        return Err("it is not a directory".into());
    }
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if meta.uid() != uid {
        return Err(format!("it is owned by uid {}, not by this daemon's uid {uid}", meta.uid()));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(format!("it is writable by its group or by others (mode {mode:04o}); chmod 0700 it"));
    }
    Ok(())
}

/// Creates `dir` (0700) if it is missing, then checks it.
pub fn prepare_dir(dir: &Path) -> Result<(), String> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| e.to_string())?;
    check_dir(dir)
}

/// ELOOP is what `O_NOFOLLOW` answers for a symlink: say so plainly.
fn named(e: io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(libc::ELOOP) => io::Error::other("it is a symbolic link, which is never followed"),
        _ => e,
    }
}

/// Opens an existing file for reading, never through a symlink.
pub fn open_read(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path).map_err(named)
}

pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut open_read(path)?, &mut bytes)?;
    Ok(bytes)
}

/// A new, empty file (0600) at `path`: whatever had that name goes first.
/// With `append`, every write goes to its end.
pub fn create_new(path: &Path, append: bool) -> io::Result<File> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut o = OpenOptions::new();
    o.write(true).append(append).create_new(true).mode(0o600).custom_flags(libc::O_NOFOLLOW);
    o.open(path).map_err(named)
}

/// Opens (or creates) the lock file read-write: a plain file with one link,
/// never a symlink or a hard link to a file elsewhere.
pub fn open_lock(path: &Path) -> io::Result<File> {
    plain(OpenOptions::new().read(true).write(true).create(true).truncate(false), path)
}

/// Opens (or creates) a file to append to, under the same rules as the lock.
pub fn open_append(path: &Path) -> io::Result<File> {
    plain(OpenOptions::new().append(true).create(true), path)
}

fn plain(o: &mut OpenOptions, path: &Path) -> io::Result<File> {
    let f = o.mode(0o600).custom_flags(libc::O_NOFOLLOW).open(path).map_err(named)?;
    let meta = f.metadata()?;
    if !meta.is_file() || meta.nlink() != 1 {
        return Err(io::Error::other("it is not a plain file with a single link"));
    }
    Ok(f)
}

/// `path`'s temporary sibling, for writes that end in a rename.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Replaces `path` by a rename; with `durable`, the file and the entry are
/// on the disk when this returns.
pub fn replace(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    let tmp = tmp_path(path);
    let res = (|| {
        let mut f = create_new(&tmp, false)?;
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        if durable {
            sync_dir(path.parent().unwrap_or(Path::new("/")))?;
        }
        Ok(())
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Flushes a directory's entries (a rename or an unlink) to the disk.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY)
        .open(dir)
        .map_err(named)?
        .sync_all()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{symlink, PermissionsExt};

    use super::*;

    struct Tmp(PathBuf);

    impl Tmp {
        fn new(tag: &str) -> Tmp {
            let p = std::env::temp_dir().join(format!("ct-statefs-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            Tmp(p)
        }
    }

    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn symlinks_are_never_followed() {
        let t = Tmp::new("links");
        let target = t.0.join("target");
        fs::write(&target, "precious").unwrap();
        for name in ["a", "b", "lock"] {
            symlink(&target, t.0.join(name)).unwrap();
        }
        replace(&t.0.join("x"), b"new", true).unwrap();
        // A stale temporary file that is a symlink is removed, not followed.
        symlink(&target, t.0.join("y.tmp")).unwrap();
        replace(&t.0.join("y"), b"new", false).unwrap();
        create_new(&t.0.join("a"), true).unwrap().write_all(b"journal").unwrap();
        let e = read(&t.0.join("b")).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        let e = open_lock(&t.0.join("lock")).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        fs::hard_link(&target, t.0.join("hard")).unwrap();
        assert!(open_lock(&t.0.join("hard")).is_err(), "a hard link is refused too");
        assert_eq!(fs::read_to_string(&target).unwrap(), "precious");
        assert_eq!(fs::read_to_string(t.0.join("y")).unwrap(), "new");
    }

    #[test]
    fn a_directory_open_to_others_is_refused() {
        let t = Tmp::new("mode");
        let d = t.0.join("state");
        prepare_dir(&d).unwrap();
        assert_eq!(fs::metadata(&d).unwrap().mode() & 0o777, 0o700, "created 0700");
        fs::set_permissions(&d, fs::Permissions::from_mode(0o777)).unwrap();
        let e = prepare_dir(&d).unwrap_err();
        assert!(e.contains("writable by its group or by others (mode 0777)"), "{e}");
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        prepare_dir(&d).unwrap();
    }
}
