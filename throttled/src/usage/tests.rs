//! The store against real SQLite files in a temporary directory.
use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::*;

pub(super) struct Dir {
    pub dir: tempfile::TempDir,
}

impl Dir {
    pub fn new() -> Dir {
        Dir { dir: tempfile::tempdir().expect("a temporary directory") }
    }

    pub fn db(&self) -> PathBuf {
        self.dir.path().join("usage.db")
    }
}

pub(super) fn key(name: &str, exe: &str, unit: &str, uid: u32) -> Key {
    Key { name: name.into(), exe: exe.into(), unit: unit.into(), uid }
}

pub(super) fn down(bytes: u64) -> Counts {
    Counts { down_inet: bytes, ..Counts::default() }
}

pub(super) fn delta(k: &Key, counts: Counts) -> Delta {
    Delta { key: k.clone(), counts }
}

/// 00:00 UTC on 2026-06-01, far from any range edge.
pub(super) const T0: i64 = 1_780_272_000;

fn open(p: &Path) -> UsageStore {
    UsageStore::open(p, DEFAULT_RETENTION).expect("the store opens")
}

fn q(by: By, since: i64, until: i64) -> UsageQuery {
    UsageQuery { by, since, until, uids: None, utc_offset: 0 }
}

fn count(conn: &Connection, sql_text: &str) -> i64 {
    conn.query_row(sql_text, [], |r| r.get(0)).unwrap()
}

/// Commits in the WAL since its last reset: frames whose header carries a
/// database size, with the WAL header's salts (stale frames have others).
fn wal_commits(db: &Path) -> usize {
    let wal = std::fs::read(super::recover::sibling(db, "-wal")).unwrap_or_default();
    if wal.len() < 32 {
        return 0;
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let page = be(&wal[8..12]) as usize;
    let salts = &wal[16..24];
    wal[32..].chunks(24 + page).filter(|f| f.len() == 24 + page && &f[8..16] == salts && be(&f[4..8]) != 0).count()
}

#[test]
fn a_flush_is_one_transaction_and_record_writes_nothing() {
    let d = Dir::new();
    let mut s = open(&d.db());
    let before = wal_commits(&d.db());
    assert!(before >= 1, "the schema's creation is in the WAL");
    let keys: Vec<Key> = (0..50).map(|i| key(&format!("p{i}"), &format!("/bin/p{i}"), "", 1000)).collect();
    for m in 0..3 {
        for sec in 0..60 {
            let deltas: Vec<Delta> = keys.iter().map(|k| delta(k, down(10))).collect();
            s.record(T0 + m * 60 + sec, &deltas);
        }
    }
    assert_eq!(wal_commits(&d.db()), before, "record only buffers");
    s.flush().unwrap();
    assert_eq!(wal_commits(&d.db()), before + 1, "150 minute rows, 50 hour rows: one commit");
    s.flush().unwrap();
    assert_eq!(wal_commits(&d.db()), before + 1, "nothing pending, nothing written");
    assert_eq!(count(&s.conn, "SELECT COUNT(*) FROM minute"), 150);
    assert_eq!(count(&s.conn, "SELECT COUNT(*) FROM hour"), 50);
    let r = s.query(&q(By::Name, T0, T0 + 3600), T0 + 3600).unwrap();
    assert_eq!(r.rows.len(), 50);
    assert!(r.rows.iter().all(|row| row.counts == down(3 * 60 * 10)), "{:?}", r.rows[0]);
}

#[test]
fn minutes_add_up_to_their_hour_and_both_answer_alike() {
    let d = Dir::new();
    let mut s = open(&d.db());
    let k = key("curl", "/usr/bin/curl", "", 1000);
    let c = Counts { down_inet: 7, up_inet: 3, down_local: 2, up_local: 1 };
    // Two hours, a flush every ten minutes.
    for m in 0..120 {
        s.record(T0 + m * 60 + 5, &[delta(&k, c)]);
        if m % 10 == 9 {
            s.flush().unwrap();
        }
    }
    assert_eq!(count(&s.conn, "SELECT COUNT(*) FROM minute"), 120);
    assert_eq!(count(&s.conn, "SELECT COUNT(*) FROM hour"), 2);
    assert_eq!(count(&s.conn, "SELECT SUM(down_inet) FROM hour"), 7 * 120);
    let hour1: (i64, i64, i64, i64) = s
        .conn
        .query_row("SELECT down_inet, up_inet, down_local, up_local FROM hour WHERE hour = ?1", [T0 / 3600 + 1], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .unwrap();
    assert_eq!(hour1, (7 * 60, 3 * 60, 2 * 60, 60));
    // Asked the same day (minute rows) and three days later (hour rows).
    let recent = s.query(&q(By::Name, T0, T0 + 7200), T0 + 7200).unwrap();
    let later = s.query(&q(By::Name, T0, T0 + 7200), T0 + 3 * 86400).unwrap();
    assert_eq!(recent.total, Counts { down_inet: 840, up_inet: 360, down_local: 240, up_local: 120 });
    assert_eq!(recent, later);
    // To the minute, inside the last 24 hours.
    let half = s.query(&q(By::Name, T0 + 1800, T0 + 3600), T0 + 7200).unwrap();
    assert_eq!(half.total.down_inet, 7 * 30);
}

#[test]
fn retention_drops_old_minutes_hours_and_unused_names() {
    let d = Dir::new();
    let mut s = UsageStore::open(&d.db(), Duration::from_secs(7 * 86400)).unwrap();
    let old = key("old", "/bin/old", "", 1);
    let mid = key("mid", "/bin/mid", "mid.service", 1);
    let new = key("new", "/bin/new", "", 1);
    let now = T0 + 30 * 86400;
    s.record(now - 10 * 86400, &[delta(&old, down(1))]);
    s.record(now - 2 * 86400, &[delta(&mid, down(2))]);
    s.record(now - 3600, &[delta(&new, down(3))]);
    s.flush().unwrap();
    s.prune(now).unwrap();
    assert_eq!(count(&s.conn, "SELECT COUNT(*) FROM minute"), 1, "only the last 24 hours by minute");
    assert_eq!(count(&s.conn, "SELECT COUNT(*) FROM hour"), 2, "7 days by hour");
    let names: Vec<String> = s
        .conn
        .prepare("SELECT text FROM strings ORDER BY text")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(names, ["", "/bin/mid", "/bin/new", "mid", "mid.service", "new"], "the old key's names are gone");
    let r = s.query(&q(By::Name, 0, now), now).unwrap();
    assert_eq!(r.rows.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(), ["new", "mid"]);
    // A pruned key comes back as a new one (no stale cached id).
    s.record(now, &[delta(&old, down(5)), delta(&new, down(1))]);
    s.flush().unwrap();
    let r = s.query(&q(By::Name, now - 60, now + 60), now + 60).unwrap();
    assert_eq!(r.rows[0].key, "old");
    assert_eq!(r.rows[0].counts, down(5));
}

#[test]
fn the_default_retention_keeps_ninety_days() {
    let d = Dir::new();
    let mut s = open(&d.db());
    let k = key("a", "/a", "", 0);
    let now = T0 + 200 * 86400;
    for days in [91, 89] {
        s.record(now - days * 86400, &[delta(&k, down(days as u64))]);
    }
    s.flush().unwrap();
    s.prune(now).unwrap();
    assert_eq!(s.query(&q(By::Name, 0, now), now).unwrap().total, down(89));
}

fn sample(s: &mut UsageStore) {
    let rows = [
        (key("firefox", "/usr/lib/firefox/firefox", "app-firefox.scope", 1000), 500, T0 + 3600),
        (key("firefox", "/opt/firefox/firefox", "", 1001), 300, T0 + 86400 + 60),
        (key("apt", "/usr/bin/apt", "apt-daily.service", 0), 700, T0 + 120),
        (key("curl", "/usr/bin/curl", "app-firefox.scope", 1000), 50, T0 + 86400 + 7200),
    ];
    for (k, bytes, t) in rows {
        s.record(t, &[delta(&k, Counts { down_inet: bytes, up_local: 1, ..Counts::default() })]);
    }
    s.flush().unwrap();
}

fn keys_and_totals(r: &UsageReport) -> Vec<(String, u64)> {
    r.rows.iter().map(|r| (r.key.clone(), r.counts.total())).collect()
}

#[test]
fn queries_group_by_each_key_sorted_with_days() {
    let d = Dir::new();
    let mut s = open(&d.db());
    sample(&mut s);
    let now = T0 + 2 * 86400;
    let by = |b| keys_and_totals(&s.query(&q(b, T0, now), now).unwrap());
    let kv = |v: &[(&str, u64)]| v.iter().map(|(k, n)| (k.to_string(), *n)).collect::<Vec<_>>();
    assert_eq!(by(By::Name), kv(&[("firefox", 802), ("apt", 701), ("curl", 51)]));
    assert_eq!(
        by(By::Exe),
        kv(&[
            ("/usr/bin/apt", 701),
            ("/usr/lib/firefox/firefox", 501),
            ("/opt/firefox/firefox", 301),
            ("/usr/bin/curl", 51)
        ])
    );
    assert_eq!(by(By::Unit), kv(&[("apt-daily.service", 701), ("app-firefox.scope", 552), ("", 301)]));
    assert_eq!(by(By::User), kv(&[("0", 701), ("1000", 552), ("1001", 301)]));
    let r = s.query(&q(By::Name, T0, now), now).unwrap();
    assert_eq!(r.total.total(), 802 + 701 + 51);
    let ff = &r.rows[0];
    assert_eq!(ff.days.iter().map(|d| (d.day, d.counts.total())).collect::<Vec<_>>(), [(T0, 501), (T0 + 86400, 301)]);
    assert_eq!(r.days.iter().map(|d| (d.day, d.counts.total())).collect::<Vec<_>>(), [(T0, 1202), (T0 + 86400, 352)]);
    // Days in UTC+2 start at 22:00 UTC: apt's minute 2 and firefox's 01:00 stay on day one.
    let local = UsageQuery { utc_offset: 2 * 3600, ..q(By::Name, T0, now) };
    let r = s.query(&local, now).unwrap();
    assert_eq!(r.days.first().map(|d| d.day), Some(T0 - 2 * 3600));
    // A range that misses everything.
    assert!(s.query(&q(By::Name, T0 + 86400 * 5, T0 + 86400 * 6), now).unwrap().rows.is_empty());
}

#[test]
fn uid_filter_keeps_only_those_users() {
    let d = Dir::new();
    let mut s = open(&d.db());
    sample(&mut s);
    let now = T0 + 2 * 86400;
    let only = |uids: Option<Vec<u32>>| {
        let r = s.query(&UsageQuery { uids, ..q(By::Name, T0, now) }, now).unwrap();
        keys_and_totals(&r)
    };
    assert_eq!(only(Some(vec![1000])), [("firefox".to_string(), 501), ("curl".to_string(), 51)]);
    assert_eq!(only(Some(vec![1001, 0])), [("apt".to_string(), 701), ("firefox".to_string(), 301)]);
    assert!(only(Some(vec![])).is_empty(), "an empty list is nobody");
    assert_eq!(only(None).len(), 3);
}

#[test]
fn counts_and_quotas_survive_a_reopen() {
    let d = Dir::new();
    let k = key("steam", "/usr/bin/steam", "", 1000);
    {
        let mut s = open(&d.db());
        s.record(T0, &[delta(&k, down(1 << 40))]);
        s.set_quota(7, QuotaUsage { period: "month".into(), period_start: T0, used: 5 << 30 });
        s.set_quota(8, QuotaUsage { period: "day".into(), period_start: T0, used: 1 });
        assert_eq!(s.quota(7).unwrap().map(|q| q.used), Some(5 << 30), "pending usage is seen before a flush");
        s.flush().unwrap();
        s.remove_quota(8);
        s.set_quota(7, QuotaUsage { period: "month".into(), period_start: T0, used: 6 << 30 });
        s.flush().unwrap();
        // Buffered, never flushed: a kill -9 loses this (at most a minute).
        s.record(T0 + 60, &[delta(&k, down(1))]);
        s.set_quota(7, QuotaUsage { period: "month".into(), period_start: T0, used: 7 << 30 });
    }
    let s = open(&d.db());
    let q7 = s.quota(7).unwrap().expect("quota 7 kept");
    assert_eq!(q7, QuotaUsage { period: "month".into(), period_start: T0, used: 6 << 30 });
    assert_eq!(s.quota(8).unwrap(), None, "removed");
    assert_eq!(s.quota(9).unwrap(), None, "never set");
    assert_eq!(s.query(&q(By::Exe, T0, T0 + 3600), T0 + 3600).unwrap().total, down(1 << 40));
}

#[test]
fn an_older_schema_is_migrated_and_keeps_its_rows() {
    let d = Dir::new();
    {
        let mut c = Connection::open(d.db()).unwrap();
        schema::migrate_to(&mut c, 1).unwrap();
        assert_eq!(schema::version(&c).unwrap(), 1);
        c.execute_batch(&format!(
            "INSERT INTO strings (id, text) VALUES (1, 'wget'), (2, '/usr/bin/wget'), (3, '');
             INSERT INTO keys (id, name, exe, unit, uid) VALUES (1, 1, 2, 3, 1000);
             INSERT INTO hour VALUES ({h}, 1, 100, 10, 0, 0);",
            h = T0 / 3600
        ))
        .unwrap();
    }
    let mut s = open(&d.db());
    assert_eq!(schema::version(&s.conn).unwrap(), SCHEMA_VERSION);
    assert_eq!(SCHEMA_VERSION, 2);
    let now = T0 + 5 * 86400;
    let r = s.query(&q(By::Name, T0, now), now).unwrap();
    assert_eq!(keys_and_totals(&r), [("wget".to_string(), 110)]);
    s.set_quota(1, QuotaUsage { period: "week".into(), period_start: T0, used: 3 });
    s.record(T0 + 10, &[delta(&key("wget", "/usr/bin/wget", "", 1000), down(5))]);
    s.flush().unwrap();
    assert_eq!(count(&s.conn, "SELECT COUNT(*) FROM keys"), 1, "the old key is found again");
    assert_eq!(s.query(&q(By::Name, T0, now), now).unwrap().total.down_inet, 105);
}
