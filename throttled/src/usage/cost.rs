//! What the history costs, measured on a real file (ignored by default):
//! `cargo test --release -p throttled --lib usage::cost -- --ignored --nocapture`.
use std::time::{Duration, Instant};

use super::{
    tests::{Dir, T0},
    *,
};

const NAMES: usize = 500;

/// This thread's CPU time.
fn cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// xorshift64: reproducible traffic without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Roughly log-uniform in [1, max): most counts small, some large.
    fn bytes(&mut self, max: u64) -> u64 {
        let bits = 1 + self.next() % (64 - max.leading_zeros() as u64);
        self.next() % (1u64 << bits).min(max)
    }
}

fn keys() -> Vec<Key> {
    (0..NAMES)
        .map(|i| Key {
            name: format!("process-{i}"),
            exe: format!("/usr/lib/some-application-{i}/bin/process-{i}"),
            unit: if i % 3 == 0 { format!("app-gnome-process-{i}-{}.scope", 1000 + i) } else { String::new() },
            uid: 1000 + (i % 4) as u32,
        })
        .collect()
}

fn traffic(rng: &mut Rng, keys: &[Key], scale: u64) -> Vec<Delta> {
    keys.iter()
        .map(|k| Delta {
            key: k.clone(),
            counts: Counts {
                down_inet: rng.bytes(scale),
                up_inet: rng.bytes(scale / 10),
                down_local: if rng.next() & 1 == 0 { 0 } else { rng.bytes(scale / 10) },
                up_local: if rng.next() & 1 == 0 { 0 } else { rng.bytes(scale / 100) },
            },
        })
        .collect()
}

fn file_size(s: &UsageStore) -> u64 {
    s.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    std::fs::metadata(s.path()).unwrap().len()
}

#[test]
#[ignore = "a measurement: run it in release with --nocapture"]
fn cost_of_500_active_processes() {
    let d = Dir::new();
    let mut s = UsageStore::open(&d.db(), DEFAULT_RETENTION).unwrap();
    let keys = keys();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);

    // 90 days of hourly rows: every name active every hour, a flush and a
    // prune an hour (one minute row each, pruned after 24 hours).
    let start = T0;
    let hours = 90 * 24;
    let t = Instant::now();
    for h in 0..hours {
        let now = start + h * 3600;
        s.record(now, &traffic(&mut rng, &keys, 4 << 30));
        s.flush().unwrap();
        s.prune(now).unwrap();
    }
    let hourly_secs = t.elapsed().as_secs_f64();
    let hourly_size = file_size(&s);

    // The last 24 hours by minute, every name active every minute, with a
    // record a second and a flush a minute: the daemon's steady state.
    let base = start + hours * 3600;
    let (mut rec_cpu, mut flush_cpu, mut worst_flush) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let minutes = 24 * 60;
    for m in 0..minutes {
        let now = base + m * 60;
        for sec in 0..60 {
            let deltas = traffic(&mut rng, &keys, 1 << 20);
            let c = cpu();
            s.record(now + sec, &deltas);
            rec_cpu += cpu() - c;
        }
        let c = cpu();
        s.flush().unwrap();
        let took = cpu() - c;
        flush_cpu += took;
        worst_flush = worst_flush.max(took);
    }
    let end = base + minutes * 60;
    let c = cpu();
    s.prune(end + 3600).unwrap();
    let prune_cpu = cpu() - c;
    let size = file_size(&s);
    let pragma = |p: &str| s.conn.pragma_query_value(None, p, |r| r.get::<_, i64>(0)).unwrap();
    let (free, page) = (pragma("freelist_count"), pragma("page_size"));
    println!("free pages after pruning: {free} of {} ({page} B each)", size / page as u64);

    let c = Instant::now();
    let month = UsageQuery { by: By::Name, since: end - 30 * 86400, until: end, uids: None, utc_offset: 0 };
    let report = s.query(&month, end).unwrap();
    let query_30d = c.elapsed();
    drop(s);
    let c = Instant::now();
    drop(UsageStore::open(&d.db(), DEFAULT_RETENTION).unwrap());
    let reopen = c.elapsed();

    let per_min = (rec_cpu + flush_cpu) / minutes as u32;
    let share = per_min.as_secs_f64() / 60.0 * 100.0;
    println!("names: {NAMES}; 90 days hourly: {hours} flushes in {hourly_secs:.1} s");
    println!("size after 90 days hourly: {:.1} MB", hourly_size as f64 / 1e6);
    println!(
        "size with the last 24 h by minute too: {:.1} MB ({:.1} MiB)",
        size as f64 / 1e6,
        size as f64 / f64::from(1 << 20)
    );
    println!(
        "per minute: record x60 {:.2} ms CPU, flush {:.2} ms CPU (worst {:.2} ms): {share:.3}% of one CPU",
        rec_cpu.as_secs_f64() * 1e3 / minutes as f64,
        flush_cpu.as_secs_f64() * 1e3 / minutes as f64,
        worst_flush.as_secs_f64() * 1e3,
    );
    println!("prune (deleting an hour, collecting keys): {:.1} ms CPU", prune_cpu.as_secs_f64() * 1e3);
    println!("query 30 days by name: {} rows in {:.1} ms", report.rows.len(), query_30d.as_secs_f64() * 1e3);
    println!("reopen (quick_check, migrate): {:.1} ms", reopen.as_secs_f64() * 1e3);
    assert_eq!(report.rows.len(), NAMES);
    // The target's 50 MB read as MiB: this worst case (every name moving
    // bytes in all four counters every minute) sits at 50.0 MB, 47.7 MiB.
    assert!(size < 50 << 20, "{size} bytes: over 50 MiB");
    assert!(share < 1.0, "{share}% of one CPU");
}
