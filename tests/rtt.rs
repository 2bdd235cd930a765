//! Real round-trip times: the test kit's delay line (`Lab::with_delay`), and
//! download accuracy of every download backend through it at 20 and 80 ms.
//!
//! Measured 2026-12-02 on the shared 2-vCPU VM (two runs each): `ebpf`
//! holds the rate (IP layer 0.993-1.000) but retransmits 10-33% of its
//! segments, its policer dropping what already crossed the link; those
//! cases fail here until fixed: the bounds are the goals'. `ifb_tc` is
//! exact; with its queue sized for the rate only (50 ms, at least 128 KiB,
//! a 66 KiB burst) it retransmitted 0.5% at 20 ms/10M, 1.7% at 20 ms/1M,
//! 4.6-11% at 80 ms/10M and 8% at 80 ms/1M. Sized for the path too (120 ms
//! at the rate, at least 72 KiB, a 2 ms burst): 0% at 20 ms, 0.9% at 80 ms.
mod common;

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use common::*;
use throttled::manager::{LimitSpec, Manager};

const MS: Duration = Duration::from_millis(1);

/// A listener in the lab's server namespace: a short-lived thread enters it,
/// and the socket keeps working from here. The kernel completes handshakes
/// without accept(), so a connect takes exactly one round trip.
fn listener_in(lab: &Lab, addr: &str) -> TcpListener {
    let ns = std::fs::File::open(format!("/run/netns/{}", lab.ns)).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns(2) on this thread only, with an open namespace fd.
            assert_eq!(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
            TcpListener::bind(addr).unwrap()
        })
        .join()
        .unwrap()
    })
}

/// TCP connect times to `addr` over 7 connections, in ms, sorted.
fn connect_ms(addr: SocketAddr) -> Vec<f64> {
    let mut t: Vec<f64> = (0..7)
        .map(|_| {
            let start = Instant::now();
            let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
            let ms = start.elapsed().as_secs_f64() * 1000.0;
            drop(s);
            ms
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The sender's median smoothed RTT over IPv6 at 10 MiB/s, paced below the
/// line's capacity so that no queue forms anywhere: the path's RTT.
fn paced_rtt(lab: &Lab, tag: u8, reverse: bool) -> f64 {
    let paced = ["-b", "84M"]; // 10 MiB/s
    assert!(lab.wait_idle(5201), "the iperf3 server is still busy");
    let r = lab.client_with(&format!("ct-rtt-{tag}"), &lab.server_ip6, 5201, 4, reverse, &paced).wait();
    let mean = r.mean_rtt_us.unwrap() / 1000.0;
    let per_sec: Vec<f64> = r.rtts_us.iter().map(|u| u / 1000.0).collect();
    eprintln!("reverse={reverse} over IPv6 at 10 MiB/s: sender RTT mean {mean:.2} ms, per second {per_sec:.1?}");
    // Slow start's bursts queue in the first second.
    median(&per_sec[1..])
}

/// The round trip a `with_delay` lab adds, by TCP connect (IPv4 and IPv6)
/// and by iperf3's sender RTT, and its unthrottled capacity.
fn delay_line(tag: u8, one_way_ms: u64) {
    let Some(_g) = begin() else { return };
    let mut lab = Lab::with_delay(tag, Duration::from_millis(one_way_ms));
    let rtt = 2.0 * one_way_ms as f64;
    let l4 = listener_in(&lab, &format!("{}:7000", lab.server_ip));
    let l6 = listener_in(&lab, &format!("[{}]:7000", lab.server_ip6));
    for l in [&l4, &l6] {
        let t = connect_ms(l.local_addr().unwrap());
        eprintln!("{}: TCP connect {t:.2?} ms for a {rtt} ms round trip", l.local_addr().unwrap());
        // The fastest is the path's; a busy shared VM only adds to the others.
        assert!((rtt - 0.5..=rtt + 3.0).contains(&t[0]), "connect took {:.2} ms, want {rtt} ms", t[0]);
    }
    lab.server(5201);
    for reverse in [true, false] {
        // Paced below capacity: no queue forms anywhere, so the sender's
        // RTT is the path's.
        // The kernel's smoothed RTT includes the receiver's delayed ACKs and
        // any scheduling delay on a busy 2-vCPU VM (23.5 ms seen at 20 ms).
        // A second that stalled the VM (the line's thread not scheduled:
        // 85.6 ms seen at 80 ms, then 80.3 on the next run) is measured once more.
        let want = rtt - 0.5..=rtt + 5.0;
        let mut mid = paced_rtt(&lab, tag, reverse);
        if !want.contains(&mid) {
            eprintln!("sender RTT {mid:.2} ms, want {rtt} ms: measuring once more");
            mid = paced_rtt(&lab, tag, reverse);
        }
        assert!(want.contains(&mid), "sender RTT {mid:.2} ms from second 1, twice, want {rtt} ms");
        // Unpaced: the line's capacity (the forwarder's queue shows in the RTT).
        assert!(lab.wait_idle(5201), "the iperf3 server is still busy");
        let r = lab.client(&format!("ct-rtt-{tag}"), 5201, 4, reverse).wait();
        let rate = r.mean(1, 4) / MIB;
        let mean = r.mean_rtt_us.unwrap() / 1000.0;
        eprintln!("reverse={reverse} unpaced: {rate:.1} MiB/s, sender RTT mean {mean:.2} ms");
        assert!(rate > 20.0, "unthrottled {rate:.1} MiB/s through the delay line");
    }
    let stats = lab.delay_stats().unwrap();
    eprintln!("delay line: {stats:?}");
    assert_eq!(stats.dropped, 0, "the delay line dropped packets");
}

#[test]
fn delay_line_20ms() {
    delay_line(190, 10);
}

#[test]
fn delay_line_80ms() {
    delay_line(191, 40);
}

fn netns_exists(name: &str) -> bool {
    std::path::Path::new("/run/netns").join(name).exists()
}

fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

fn delay_threads() -> usize {
    let tasks = std::fs::read_dir("/proc/self/task").unwrap();
    tasks
        .filter(|t| std::fs::read_to_string(t.as_ref().unwrap().path().join("comm")).unwrap().starts_with("delay-"))
        .count()
}

/// A panic with a delay lab in scope leaves no namespace, veth or forwarder.
#[test]
fn delay_lab_cleaned_up_on_panic() {
    let Some(_g) = begin() else { return };
    let before = delay_threads();
    let r = std::panic::catch_unwind(|| {
        let lab = Lab::with_delay(192, 5 * MS);
        assert!(netns_exists("ct-rtr-192") && netns_exists("ct-srv-192") && link_exists(&lab.veth));
        assert_eq!(delay_threads(), before + 1, "no forwarder thread");
        panic!("on purpose");
    });
    assert!(r.is_err());
    assert!(!netns_exists("ct-rtr-192") && !netns_exists("ct-srv-192"), "a namespace outlived the lab");
    assert!(!link_exists("ct-veth192"), "the host veth outlived the lab");
    assert_eq!(delay_threads(), before, "the forwarder thread outlived the lab");
}

/// The plain lab (no router) keeps its layout, and has IPv6 too.
#[test]
fn plain_lab_dual_stack() {
    let Some(_g) = begin() else { return };
    let lab = Lab::new(193);
    assert_eq!((lab.server_ip.as_str(), lab.veth.as_str()), ("10.201.193.2", "ct-veth193"));
    for ip in [format!("{}:7000", lab.server_ip), format!("[{}]:7000", lab.server_ip6)] {
        let l = listener_in(&lab, &ip);
        let t = connect_ms(l.local_addr().unwrap());
        eprintln!("{ip}: TCP connect {t:.2?} ms");
        assert!(t[0] < 1.0, "{ip}: {:.2} ms without a delay line", t[0]);
    }
    assert_eq!(lab.one_way(), Duration::ZERO);
    assert!(lab.delay_stats().is_none());
}

/// One limited download through the delay line, as the kernel saw it.
struct Download {
    /// IP-layer bytes/s through the throttle, per second from second 3.
    per_sec: Vec<f64>,
    goodput: f64,
    retransmits: u64,
    segments: f64,
    /// Packets the throttle dropped after they crossed the link, of all it saw.
    dropped: f64,
    /// Drops counted by the end of each second (when they happen matters:
    /// a slow start's overshoot is all in the first second or two).
    drops_by: Vec<u64>,
    rtt_ms: f64,
    /// What the delay line said about itself: packets it released late.
    link: Option<throttle_testkit::delay::DelayStats>,
}

/// Seconds per run, and those left out at the start (slow start, and the
/// limit catching up with it).
const SECS: u32 = 10;
const WARMUP: usize = 3;

/// Which address family a download runs over.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    /// TCP payload of a full-size segment (1500-byte MTU).
    fn mss(self) -> f64 {
        match self {
            Family::V4 => 1448.0,
            Family::V6 => 1428.0,
        }
    }
}

fn download(tag: u8, rtt_ms: u64, backend: &str, limit: &str, family: Family) -> Option<Download> {
    let g = begin()?;
    // 0 ms: the plain lab's veth pair (0.05 ms, GSO aggregates).
    let mut lab = match rtt_ms {
        0 => Lab::new(tag),
        _ => Lab::with_delay(tag, Duration::from_millis(rtt_ms / 2)),
    };
    lab.server(5201);
    let state = ScratchDir::new("rtt");
    let m = Manager::start(&common::options(&state, &[&lab.veth])).unwrap();
    let ip = if family == Family::V6 { lab.server_ip6.clone() } else { lab.server_ip.clone() };
    let c = lab.client_to(&format!("ct-rtt-{tag}"), &ip, 5201, SECS, true);
    let spec = LimitSpec { down: Some(limit.parse().unwrap()), backend: Some(backend.into()), ..Default::default() };
    let id = m.limit_pid(c.pid(), &spec).unwrap();
    let start = Instant::now();
    let mut samples = vec![];
    for s in 1..SECS {
        std::thread::sleep((start + Duration::from_secs(s.into())).saturating_duration_since(Instant::now()));
        let info = m.info(id).unwrap();
        samples.push(info.directions.values().next().unwrap().counters);
    }
    let r = c.wait();
    let last = samples.last().unwrap();
    let passed: Vec<u64> = samples.iter().map(|c| c.pass_bytes).collect();
    // Another daemon starting on this machine sweeps every `cti-` IFB and
    // our HTB roots; ours then rebuilds them, with fresh counters.
    assert!(passed.windows(2).all(|w| w[0] <= w[1]), "counters went back (objects rebuilt?): {passed:?}");
    // samples[i] is at second i + 1.
    let per_sec =
        samples.windows(2).skip(WARMUP - 1).map(|w| w[1].pass_bytes as f64 - w[0].pass_bytes as f64).collect();
    let link = lab.delay_stats();
    drop((m, lab, g));
    Some(Download {
        link,
        per_sec,
        goodput: r.mean(WARMUP, SECS as usize),
        retransmits: r.retransmits.unwrap(),
        segments: r.sent_bytes / family.mss(),
        dropped: last.drop_pkts as f64 / (last.pass_pkts + last.drop_pkts).max(1) as f64,
        drops_by: samples.iter().map(|c| c.drop_pkts).collect(),
        rtt_ms: r.mean_rtt_us.unwrap() / 1000.0,
    })
}

/// The download goals at a real round trip, asserted a little looser
/// (goals: mean ±3%, every second 0.85–1.15, retransmits ≤ 1%). Every
/// bound is checked and reported before the test fails.
fn download_accuracy(tag: u8, rtt_ms: u64, backend: &str, limit: &str) {
    download_within(tag, rtt_ms, backend, limit, 1.5, Family::V4);
}

/// The same goals over IPv6.
fn download_accuracy_v6(tag: u8, rtt_ms: u64, backend: &str, limit: &str) {
    download_within(tag, rtt_ms, backend, limit, 1.5, Family::V6);
}

/// `ifb_tc`'s leaf queue holds 120 ms at the rate, at least 72 KiB
/// (backend/htb.rs): the sender's mean RTT stays within the path plus
/// that, with 15 ms for a busy VM's delay line.
fn ifb_queue_ms(limit: &str) -> f64 {
    let rate = limit.parse::<throttled::Rate>().unwrap().bytes_per_sec() as f64;
    (1000.0 * (72 << 10) as f64 / rate).max(120.0) + 15.0
}

/// A run that misses a bound is measured again (a 2-vCPU VM now and then
/// stalls the delay line or the sender for part of a second; seen: ifb_tc
/// 20 ms/10M at 0.69-0.93, ebpf at 0.84, with the sender's RTT at 35-54 ms
/// on a 20 ms path, then 0.99-1.00 on each re-run). A run in which the
/// delay line itself released packets late did not have the round trip it
/// was asked for: it earns a third try. Every run is printed.
fn download_within(tag: u8, rtt_ms: u64, backend: &str, limit: &str, max_retrans: f64, family: Family) {
    let mut stalls = 0;
    for attempt in 1.. {
        let Some((missed, stalled)) = judge(tag, rtt_ms, backend, limit, max_retrans, family) else { return };
        if missed.is_empty() {
            return;
        }
        stalls += usize::from(stalled);
        let last = attempt >= 2 + stalls.min(1);
        assert!(!last, "{backend} download {limit} at {rtt_ms} ms, {attempt} runs: {}", missed.join("; "));
        eprintln!("run {attempt} missed: {}; measuring again", missed.join("; "));
    }
}

/// One download, every bound checked: what it missed (empty: nothing), and
/// whether the delay line stalled during it.
fn judge(
    tag: u8,
    rtt_ms: u64,
    backend: &str,
    limit: &str,
    max_retrans: f64,
    family: Family,
) -> Option<(Vec<String>, bool)> {
    let d = download(tag, rtt_ms, backend, limit, family)?;
    let l = limit.parse::<throttled::Rate>().unwrap().bytes_per_sec() as f64;
    let ratios: Vec<f64> = d.per_sec.iter().map(|b| b / l).collect();
    let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
    let (lo, hi) = ratios.iter().fold((f64::MAX, 0.0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
    let retrans = 100.0 * d.retransmits as f64 / d.segments.max(1.0);
    let ipv6 = if family == Family::V6 { " over IPv6" } else { "" };
    let what = format!("{backend} download {limit} at {rtt_ms} ms{ipv6}");
    eprintln!(
        "{what}: IP-layer {mean:.3} of the limit, per second {lo:.2}-{hi:.2} {ratios:.2?}, goodput {:.3}, \
         retransmits {} ({retrans:.2}%), dropped after the link {:.2}%, sender RTT {:.1} ms",
        d.goodput / l,
        d.retransmits,
        100.0 * d.dropped,
        d.rtt_ms
    );
    if d.drops_by.last().is_some_and(|&n| n > 0) {
        eprintln!("{what}: drops counted by each second {:?}", d.drops_by);
    }
    let stalled = d.link.as_ref().is_some_and(|s| s.late > 0);
    if let Some(s) = d.link.as_ref().filter(|_| stalled) {
        eprintln!("the delay line released {} packets late, by up to {:.1} ms", s.late, s.max_late_us as f64 / 1000.0);
    }
    let mut failed = vec![];
    if !(0.96..=1.04).contains(&mean) {
        failed.push(format!("mean {mean:.3} outside 0.96-1.04"));
    }
    if lo < 0.80 || hi > 1.20 {
        failed.push(format!("per second {lo:.2}-{hi:.2} outside 0.80-1.20"));
    }
    if retrans > max_retrans {
        failed.push(format!("retransmits {retrans:.2}% over {max_retrans}%"));
    }
    let max_rtt = rtt_ms as f64 + ifb_queue_ms(limit);
    if backend == "ifb_tc" && d.rtt_ms > max_rtt {
        failed.push(format!("sender RTT {:.1} ms over {max_rtt:.0} ms: the queue is longer than sized", d.rtt_ms));
    }
    Some((failed, stalled))
}

#[test]
fn download_ebpf_20ms_10m_ipv6() {
    download_accuracy_v6(188, 20, "ebpf", "10M");
}

#[test]
fn download_ebpf_80ms_1m_ipv6() {
    download_accuracy_v6(189, 80, "ebpf", "1M");
}

#[test]
#[ignore = "open (issue 17): ifb_tc 10M at 80 ms over IPv6 reads 0.71-0.86 of the limit here, 2.3% retransmitted, against 0.999 in scripts/bench.sh --only rtt6"]
fn download_ifb_tc_80ms_10m_ipv6() {
    download_accuracy_v6(190, 80, "ifb_tc", "10M");
}

#[test]
fn download_ebpf_20ms_1m() {
    download_accuracy(194, 20, "ebpf", "1M");
}

#[test]
fn download_ebpf_20ms_10m() {
    download_accuracy(195, 20, "ebpf", "10M");
}

#[test]
fn download_ebpf_80ms_1m() {
    download_accuracy(196, 80, "ebpf", "1M");
}

#[test]
fn download_ebpf_80ms_10m() {
    download_accuracy(197, 80, "ebpf", "10M");
}

#[test]
fn download_ifb_tc_20ms_1m() {
    download_accuracy(198, 20, "ifb_tc", "1M");
}

#[test]
fn download_ifb_tc_20ms_10m() {
    download_accuracy(199, 20, "ifb_tc", "10M");
}

#[test]
fn download_ifb_tc_80ms_1m() {
    download_accuracy(200, 80, "ifb_tc", "1M");
}

#[test]
fn download_ifb_tc_80ms_10m() {
    download_accuracy(201, 80, "ifb_tc", "10M");
}

/// `ifb_tc` at the rates and round trips beside the goals'. The sender's
/// RTT is the point at 256 KiB/s (the hand-written tc script: 77 ms at
/// 20 ms, 156 ms at 80 ms; `ifb_tc` before its queue was sized for the
/// path: 234 and 404 ms). On the plain lab (0.05 ms) the limiter sees the
/// local sender's 64 KiB GSO aggregates, and each one dropped is up to 45
/// segments sent again: measured 3.6-8.4% at 256 KiB/s and 7.5-10.4% at
/// 1 MiB/s (4.9-7.8% with the former queue), so those bounds are looser.
#[test]
fn download_ifb_tc_20ms_256k() {
    download_accuracy(234, 20, "ifb_tc", "256K");
}

#[test]
fn download_ifb_tc_80ms_256k() {
    download_accuracy(235, 80, "ifb_tc", "256K");
}

#[test]
fn download_ifb_tc_lan_256k() {
    download_within(236, 0, "ifb_tc", "256K", 15.0, Family::V4);
}

#[test]
fn download_ifb_tc_lan_1m() {
    download_within(237, 0, "ifb_tc", "1M", 15.0, Family::V4);
}

/// Every drop here is the sender's slow start overshooting the 1.2 MiB
/// queue in the first second (8-30 aggregates, then none: the rate is
/// 1.00 every second); whether the kernel's HyStart stops it in time
/// varies from run to run. Measured 0-2.17% in 13 runs, so 3%.
#[test]
fn download_ifb_tc_lan_10m() {
    download_within(238, 0, "ifb_tc", "10M", 3.0, Family::V4);
}

/// A 2 ms HTB burst (200 KiB here) still keeps the rate.
#[test]
fn download_ifb_tc_lan_100m() {
    download_within(239, 0, "ifb_tc", "100M", 1.5, Family::V4);
}
