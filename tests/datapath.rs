//! The kernel data path and the `ebpf` backend against real traffic in
//! network namespaces (see DESIGN.md, "Testing with real traffic").
mod common;

use common::*;
use throttled::{
    manager::{Event, LimitSpec, Manager, RemovalReason},
    Rate,
};

fn rate(s: &str) -> Rate {
    s.parse().unwrap()
}

fn spec(down: Option<&str>, up: Option<&str>) -> LimitSpec {
    LimitSpec { down: down.map(rate), up: up.map(rate), ..Default::default() }
}

fn accuracy(tag: u8, limit: &str, reverse: bool) {
    let Some(_g) = begin() else { return };
    let mut lab = Lab::new(tag);
    lab.server(5201);
    let state = ScratchDir::new("m");
    let m = Manager::start(&common::options(&state, &[])).unwrap();
    let s = if reverse { spec(Some(limit), None) } else { spec(None, Some(limit)) };
    check_accuracy(&lab, &m, tag, &s, rate(limit), reverse);
}

#[test]
fn upload_1m() {
    accuracy(11, "1M", false);
}

#[test]
fn upload_10m() {
    accuracy(12, "10M", false);
}

#[test]
fn download_1m() {
    accuracy(13, "1M", true);
}

#[test]
fn download_10m() {
    accuracy(14, "10M", true);
}

/// Two throttles at different limits run concurrently, each with its own
/// bucket. A download that misses is measured once more, as the rtt tests
/// do (seen once in ~10 suite runs: 0.77 for the 6M flow, then 0.94-0.96
/// in four runs alone); every run is printed.
fn two_processes(tag: u8, reverse: bool) {
    for attempt in 1..=2 {
        let missed = two_processes_once(tag, reverse);
        if missed.is_empty() {
            return;
        }
        assert!(attempt < 2, "{attempt} runs: {}", missed.join("; "));
        eprintln!("run {attempt} missed: {}; measuring again", missed.join("; "));
    }
}

/// One run: what it missed (empty: nothing, or skipped).
fn two_processes_once(tag: u8, reverse: bool) -> Vec<String> {
    let Some(_g) = begin() else { return vec![] };
    let mut lab = Lab::new(tag);
    lab.server(5201);
    lab.server(5202);
    let state = ScratchDir::new("m");
    let m = Manager::start(&common::options(&state, &[])).unwrap();
    let secs = if reverse { 16 } else { 8 };
    let a = lab.client("ct-client-a", 5201, secs, reverse);
    let b = lab.client("ct-client-b", 5202, secs, reverse);
    let (sa, sb) = if reverse {
        (spec(Some("2M"), None), spec(Some("6M"), None))
    } else {
        (spec(None, Some("2M")), spec(None, Some("6M")))
    };
    m.limit_pid(a.pid(), &sa).unwrap();
    m.limit_pid(b.pid(), &sb).unwrap();
    let (ra, rb) = (a.wait(), b.wait());
    let (ga, gb) = (ra.mean(2, secs as usize), rb.mean(2, secs as usize));
    if !reverse {
        assert_accurate("client a at 2M", ga, 2.0 * MIB);
        assert_accurate("client b at 6M", gb, 6.0 * MIB);
        return vec![];
    }
    // Two policed downloads share two vCPUs: an RTO chain in one of them
    // costs it a few percent in some runs (0.905–0.98 seen). What this test
    // proves is separate buckets, so each is held near its own limit; the
    // 0.93–1.02 accuracy bound is the single-flow tests' job.
    let mut missed = vec![];
    for (what, got, limit) in [("client a at 2M", ga, 2.0 * MIB), ("client b at 6M", gb, 6.0 * MIB)] {
        eprintln!("{what}: goodput {:.3} MiB/s = {:.3} of the limit", got / MIB, got / limit);
        if !(0.85..=1.05).contains(&(got / limit)) {
            missed.push(format!("{what}: {:.3} of the limit", got / limit));
        }
    }
    missed
}

#[test]
fn two_processes_upload() {
    two_processes(15, false);
}

#[test]
fn two_processes_download() {
    two_processes(16, true);
}

/// A download that started before the daemon (its socket predates the
/// programs) slows down within a second of the limit. Afterwards the
/// policer works off a multi-megabyte window that TCP will not shrink at
/// once, so the following mean is only held to ±15% (see BENCHMARKS.md).
#[test]
fn limit_running_transfer_started_before_daemon() {
    let Some(_g) = begin() else { return };
    let mut lab = Lab::new(17);
    lab.server(5201);
    let c = lab.client("ct-client-run", 5201, 12, true);
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let state = ScratchDir::new("m");
    let m = Manager::start(&common::options(&state, &[])).unwrap();
    m.limit_pid(c.pid(), &spec(Some("1M"), None)).unwrap();
    let r = c.wait();
    eprintln!("intervals (MiB/s): {:?}", r.intervals.iter().map(|v| v / MIB).collect::<Vec<_>>());
    assert!(r.intervals[1] > 20.0 * MIB, "unthrottled start should be fast");
    // The limit landed at ~2.5 s (plus load time); second 4 is fully limited.
    assert!(r.intervals[4] < 1.5 * MIB, "not slowed within a second: {:.2} MiB/s", r.intervals[4] / MIB);
    let after = r.mean(5, 12) / MIB;
    eprintln!("download limited mid-transfer: {after:.3} MiB/s for 1 MiB/s");
    assert!((0.85..=1.15).contains(&after), "mean after the limit landed: {after:.3} MiB/s");
}

/// Removing the limit restores full speed.
#[test]
fn unlimit_restores_speed() {
    let Some(_g) = begin() else { return };
    let mut lab = Lab::new(18);
    lab.server(5201);
    let state = ScratchDir::new("m");
    let m = Manager::start(&common::options(&state, &[])).unwrap();
    let c = lab.client("ct-client-unl", 5201, 8, false);
    let id = m.limit_pid(c.pid(), &spec(None, Some("1M"))).unwrap();
    std::thread::sleep(std::time::Duration::from_secs(4));
    m.remove(id).unwrap();
    let r = c.wait();
    assert_accurate("upload before removal", r.mean(1, 4), MIB);
    let after = r.mean(5, 8);
    assert!(after > 20.0 * MIB, "after removal only {:.1} MiB/s", after / MIB);
    assert_eq!(m.kernel_proc_entries(), 0, "process entry left in the kernel map");
}

/// A child forked after the limit counts for its parent's tree throttle.
#[test]
fn tree_covers_forked_child() {
    let Some(_g) = begin() else { return };
    let mut lab = Lab::new(19);
    lab.server(5201);
    let state = ScratchDir::new("m");
    let m = Manager::start(&common::options(&state, &[])).unwrap();
    // Upload: this checks coverage of a forked child, so it uses the
    // direction whose accuracy does not vary run to run (download is policed).
    let parent = lab.client_via_shell("ct-client-tree", 5201, 12, false, 0.5);
    let tree = throttled::target::Target::pid(parent.pid(), true).unwrap();
    let id = m.limit(tree, &spec(None, Some("2M"))).unwrap();
    let r = parent.wait();
    assert_accurate("forked child of a tree throttle", r.mean(2, 12), 2.0 * MIB);
    // The child exited, the parent too: the throttle is gone with them.
    wait_until(std::time::Duration::from_secs(3), || m.info(id).is_err());
    assert!(m.info(id).is_err(), "throttle of an exited process was not removed");
    let exited = Event::ThrottleRemoved { id, reason: RemovalReason::ProcessExited };
    assert!(m.take_events().contains(&exited), "the removal was not recorded as an exit");
    assert_eq!(m.kernel_proc_entries(), 0);
}
