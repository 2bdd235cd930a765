//! Bad files: garbage, a truncated database, a newer schema, symlinks and
//! modes. The store must move them aside and keep working, never panic.
use std::{
    fs,
    os::unix::fs::{symlink, PermissionsExt},
    path::Path,
};

use super::{
    tests::{delta, down, key, Dir, T0},
    *,
};

/// The files beside `db` whose names start with `usage.db.<tag>-`.
fn asides(db: &Path, tag: &str) -> Vec<std::path::PathBuf> {
    let prefix = format!("usage.db.{tag}-");
    let mut v: Vec<_> = fs::read_dir(db.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(&prefix))
        .collect();
    v.sort();
    v
}

/// The store answers and keeps what it is given.
fn works(s: &mut UsageStore) {
    let k = key("after", "/bin/after", "", 1);
    s.record(T0, &[delta(&k, down(42))]);
    s.flush().expect("a flush into the new database");
    let r =
        s.query(&UsageQuery { by: By::Name, since: T0, until: T0 + 60, uids: None, utc_offset: 0 }, T0 + 60).unwrap();
    assert_eq!(r.total, down(42));
}

#[test]
fn a_file_that_is_not_sqlite_is_moved_aside() {
    let d = Dir::new();
    let garbage: Vec<u8> = (0..10_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    fs::write(d.db(), &garbage).unwrap();
    let mut s = UsageStore::open(&d.db(), DEFAULT_RETENTION).expect("a new database replaces the garbage");
    let aside = asides(&d.db(), "corrupt");
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(fs::read(&aside[0]).unwrap(), garbage, "kept as it was, for a post-mortem");
    works(&mut s);
}

#[test]
fn a_truncated_database_is_moved_aside() {
    let d = Dir::new();
    {
        let mut s = UsageStore::open(&d.db(), DEFAULT_RETENTION).unwrap();
        for m in 0..200 {
            let deltas: Vec<_> = (0..20).map(|i| delta(&key(&format!("p{i}"), "/x", "", 0), down(m + 1))).collect();
            s.record(T0 + m as i64 * 60, &deltas);
        }
        s.flush().unwrap();
    }
    // Closing checkpointed the WAL: everything is in the main file.
    assert!(!d.db().with_file_name("usage.db-wal").exists());
    let len = fs::metadata(d.db()).unwrap().len();
    assert!(len > 8 * 4096, "several pages ({len} bytes)");
    fs::OpenOptions::new().write(true).open(d.db()).unwrap().set_len(len / 2).unwrap();
    let mut s = UsageStore::open(&d.db(), DEFAULT_RETENTION).expect("a new database replaces the truncated one");
    assert_eq!(asides(&d.db(), "corrupt").len(), 1);
    works(&mut s);
}

#[test]
fn a_database_damaged_while_open_is_replaced_at_the_next_flush() {
    let d = Dir::new();
    let mut s = UsageStore::open(&d.db(), DEFAULT_RETENTION).unwrap();
    s.record(T0, &[delta(&key("a", "/a", "", 0), down(1))]);
    s.flush().unwrap();
    // Another connection writes and checkpoints, so this one's page cache
    // is stale and its next transaction reads the file; then the file is
    // scribbled over, as a failing disk would.
    let other = rusqlite::Connection::open(d.db()).unwrap();
    other.execute("DELETE FROM quota", []).unwrap();
    other.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    let len = fs::metadata(d.db()).unwrap().len() as usize;
    fs::write(d.db(), vec![0xA5u8; len]).unwrap();
    drop(other);
    works(&mut s);
    assert_eq!(asides(&d.db(), "corrupt").len(), 1, "moved aside at the flush");
}

#[test]
fn a_newer_schema_is_kept_aside_not_overwritten() {
    let d = Dir::new();
    {
        let c = rusqlite::Connection::open(d.db()).unwrap();
        c.execute_batch("CREATE TABLE future (x); PRAGMA user_version = 99;").unwrap();
    }
    let mut s = UsageStore::open(&d.db(), DEFAULT_RETENTION).unwrap();
    assert_eq!(asides(&d.db(), "newer").len(), 1);
    works(&mut s);
}

#[test]
fn an_empty_file_is_a_new_database() {
    let d = Dir::new();
    fs::write(d.db(), b"").unwrap();
    let mut s = UsageStore::open(&d.db(), DEFAULT_RETENTION).unwrap();
    assert!(asides(&d.db(), "corrupt").is_empty());
    works(&mut s);
}

#[test]
fn the_file_is_private_and_never_a_symlink() {
    let d = Dir::new();
    let s = UsageStore::open(&d.db(), DEFAULT_RETENTION).unwrap();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&d.db()), 0o600);
    drop(s);
    fs::set_permissions(d.db(), fs::Permissions::from_mode(0o644)).unwrap();
    drop(UsageStore::open(&d.db(), DEFAULT_RETENTION).unwrap());
    assert_eq!(mode(&d.db()), 0o600, "a readable file is made private again");

    let target = d.dir.path().join("precious");
    fs::write(&target, "precious").unwrap();
    let link = d.dir.path().join("link.db");
    symlink(&target, &link).unwrap();
    let e = UsageStore::open(&link, DEFAULT_RETENTION).err().expect("a symlink is refused");
    assert!(e.to_string().contains("symbolic link"), "{e}");
    // A symlink planted as the WAL is removed, not followed.
    symlink(&target, d.dir.path().join("usage.db-wal")).unwrap();
    let mut s = UsageStore::open(&d.db(), DEFAULT_RETENTION).unwrap();
    works(&mut s);
    assert_eq!(fs::read_to_string(&target).unwrap(), "precious");
}
