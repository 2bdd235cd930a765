//! Real round-trip times: the test kit's delay line (`Lab::with_delay`), and
//! download accuracy of every download backend through it at 20 and 80 ms.
mod common;

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use common::*;

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
        let paced = ["-b", "84M"]; // 10 MiB/s
        assert!(lab.wait_idle(5201), "the iperf3 server is still busy");
        let r = lab.client_with(&format!("ct-rtt-{tag}"), &lab.server_ip6, 5201, 4, reverse, &paced).wait();
        let mean = r.mean_rtt_us.unwrap() / 1000.0;
        let per_sec: Vec<f64> = r.rtts_us.iter().map(|u| u / 1000.0).collect();
        eprintln!("reverse={reverse} over IPv6 at 10 MiB/s: sender RTT mean {mean:.2} ms, per second {per_sec:.1?}");
        // Slow start's bursts queue in the first second.
        let mid = median(&per_sec[1..]);
        assert!((rtt - 0.5..=rtt + 3.0).contains(&mid), "sender RTT {mid:.2} ms from second 1, want {rtt} ms");
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
