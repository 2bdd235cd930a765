//! The `ebpf` backend's download control against real traffic: receive
//! window control in front of the policer (issue 17). Each test reads the
//! receiver's per-second goodput, the sender's retransmits and the
//! throttle's own kernel counters (IP-layer bytes passed and dropped).
mod common;

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use throttle_testkit::progs::{prog_stats, run_stats};
use throttled::{
    manager::{LimitSpec, Manager, ThrottleId},
    Rate,
};

fn rate(s: &str) -> Rate {
    s.parse().unwrap()
}

fn down(limit: &str) -> LimitSpec {
    LimitSpec { down: Some(rate(limit)), backend: Some("ebpf".into()), ..Default::default() }
}

fn up(limit: &str) -> LimitSpec {
    LimitSpec { up: Some(rate(limit)), backend: Some("ebpf".into()), ..Default::default() }
}

/// One iperf3 download (`-R`), with the options the lab's `client` has no room for.
struct Run {
    child: Option<Child>,
}

impl Run {
    fn start(lab: &Lab, name: &str, server: &str, port: u16, secs: u32, extra: &[&str]) -> Run {
        Self::spawn(lab, name, server, port, secs, &[&["-R"], extra].concat())
    }

    fn upload(lab: &Lab, name: &str, server: &str, secs: u32) -> Run {
        Self::spawn(lab, name, server, 5201, secs, &[])
    }

    fn spawn(lab: &Lab, name: &str, server: &str, port: u16, secs: u32, extra: &[&str]) -> Run {
        let bin = lab.client_binary(name);
        let child = Command::new(bin)
            .args(["-c", server, "-p", &port.to_string(), "-t", &secs.to_string(), "-J", "-i", "1"])
            .args(["--get-server-output", "-l", "16K"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Run { child: Some(child) }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn wait(mut self) -> Report {
        let out = self.child.take().unwrap().wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("iperf3 output is not JSON ({e}): {text}"));
        assert!(v.get("error").is_none(), "iperf3 failed: {}", v["error"]);
        // On upload the receiver is the server: read its own report.
        if v["start"]["test_start"]["reverse"].as_i64() == Some(0) {
            let mut r = Report::from_json(&v["server_output_json"]);
            r.retransmits = v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
            return r;
        }
        Report::from_json(&v)
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What the receiving side of a download saw, and what its sender did.
#[derive(Debug)]
struct Report {
    /// Goodput per second (bytes/s), all streams together.
    secs: Vec<f64>,
    /// Goodput per second of each stream.
    streams: Vec<Vec<f64>>,
    retransmits: u64,
    sent_bytes: f64,
}

impl Report {
    fn from_json(v: &serde_json::Value) -> Report {
        let intervals = v["intervals"].as_array().cloned().unwrap_or_default();
        let bps = |x: &serde_json::Value| x["bits_per_second"].as_f64().unwrap_or(0.0) / 8.0;
        let secs = intervals.iter().map(|i| bps(&i["sum"])).collect();
        let n = intervals.first().and_then(|i| i["streams"].as_array()).map_or(0, Vec::len);
        let streams = (0..n).map(|s| intervals.iter().map(|i| bps(&i["streams"][s])).collect()).collect();
        Report {
            secs,
            streams,
            retransmits: v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
            sent_bytes: v["end"]["sum_sent"]["bytes"].as_f64().unwrap_or(0.0),
        }
    }

    fn mean(&self, from: usize) -> f64 {
        let s = &self.secs[from.min(self.secs.len())..];
        assert!(!s.is_empty(), "no intervals from {from}: {:?}", self.secs);
        s.iter().sum::<f64>() / s.len() as f64
    }

    /// Retransmitted segments, in percent of the segments sent.
    fn retrans_pct(&self, mss: f64) -> f64 {
        100.0 * self.retransmits as f64 / (self.sent_bytes / mss).max(1.0)
    }
}

/// The throttle's kernel counters for its only direction.
fn counters(m: &Manager, id: ThrottleId) -> throttle_common::Counters {
    m.info(id).unwrap().directions.values().next().unwrap().counters
}

/// IP-layer rate between two counter readings, and the share of bytes
/// the policer dropped (after they had crossed the link).
fn ip_rate(a: &throttle_common::Counters, b: &throttle_common::Counters, secs: f64) -> (f64, f64) {
    let pass = (b.pass_bytes - a.pass_bytes) as f64;
    let drop = (b.drop_bytes - a.drop_bytes) as f64;
    (pass / secs, 100.0 * drop / (pass + drop).max(1.0))
}

struct Measured {
    report: Report,
    /// IP-layer bytes/s passed from second `skip` to the end.
    ip_rate: f64,
    drop_pct: f64,
}

/// A download of `secs` seconds limited from its start; the IP-layer rate
/// is read from the throttle's counters between `skip` and the end.
fn measure(lab: &Lab, m: &Manager, server: &str, limit: &str, secs: u32, skip: u32, extra: &[&str]) -> Measured {
    let run = Run::start(lab, "ct-client-dl", server, 5201, secs, extra);
    let id = m.limit_pid(run.pid(), &down(limit)).unwrap();
    std::thread::sleep(Duration::from_secs(skip as u64));
    let (t0, c0) = (Instant::now(), counters(m, id));
    std::thread::sleep(Duration::from_millis((secs - skip) as u64 * 1000 - 300));
    let (t1, c1) = (Instant::now(), counters(m, id));
    let report = run.wait();
    let (ip_rate, drop_pct) = ip_rate(&c0, &c1, (t1 - t0).as_secs_f64());
    let _ = m.remove(id);
    Measured { report, ip_rate, drop_pct }
}

fn print(what: &str, r: &Measured, limit: f64, skip: usize, mss: f64) {
    let per_sec: Vec<f64> = r.report.secs[skip.min(r.report.secs.len())..].iter().map(|v| v / limit).collect();
    let (lo, hi) = per_sec.iter().fold((f64::MAX, 0f64), |(l, h), &v| (l.min(v), h.max(v)));
    eprintln!(
        "{what}: ip/limit {:.3}, goodput/limit {:.3}, per-second {lo:.2}-{hi:.2}, retransmits {:.2}% ({}), dropped {:.2}%",
        r.ip_rate / limit,
        r.report.mean(skip) / limit,
        r.report.retrans_pct(mss),
        r.report.retransmits,
        r.drop_pct
    );
    eprintln!("  per second (MiB/s): {:.2?}", r.report.secs.iter().map(|v| v / MIB).collect::<Vec<_>>());
}

fn lab_with_server(tag: u8) -> Lab {
    let mut lab = Lab::new(tag);
    lab.server(5201);
    lab
}

fn manager(state: &ScratchDir) -> Manager {
    Manager::start(&common::options(state, &[])).unwrap()
}

/// Asserts the IP-layer rate within ±`tol` of the limit.
#[track_caller]
fn assert_rate(what: &str, got: f64, limit: f64, tol: f64) {
    let r = got / limit;
    assert!((1.0 - tol..=1.0 + tol).contains(&r), "{what}: IP-layer rate {r:.3} of the limit");
}

/// Ten parallel downloads share one limit at a 20 ms RTT: the total is the
/// limit, and each stream gets an equal share within ±20% once all run. A
/// run that misses is measured once more and the second decides, as in
/// tests/rtt.rs: this 2-vCPU VM now and then stalls the sender or the
/// delay line for a second or two (one run read 0.920, with no retransmit,
/// no drop and two slow seconds).
#[test]
fn fair_share_ten_streams() {
    let Some(_g) = begin() else { return };
    let mut lab = Lab::with_delay(211, Duration::from_millis(10));
    lab.server(5201);
    let state = ScratchDir::new("dl");
    let m = manager(&state);
    twice("10 streams at 10M", || fair_share_misses(&lab, &m));
}

/// One ten-stream run under 10M; what it missed, if anything.
fn fair_share_misses(lab: &Lab, m: &Manager) -> Vec<String> {
    let r = measure(lab, m, &lab.server_ip, "10M", 12, 4, &["-P", "10"]);
    let limit = 10.0 * MIB;
    print("10 streams, 10M", &r, limit, 4, 1448.0);
    let mut misses = Vec::new();
    let rate = r.ip_rate / limit;
    if !(0.97..=1.03).contains(&rate) {
        misses.push(format!("IP-layer rate {rate:.3} of the limit"));
    }
    let shares: Vec<f64> = r.report.streams.iter().map(|s| s[4..].iter().sum::<f64>() / (s.len() - 4) as f64).collect();
    assert_eq!(shares.len(), 10, "iperf3 reported {} streams", shares.len());
    let mean = shares.iter().sum::<f64>() / 10.0;
    let rel: Vec<f64> = shares.iter().map(|s| (s / mean * 100.0).round() / 100.0).collect();
    eprintln!("stream shares / equal share: {rel:?}");
    if let Some(worst) = rel.iter().find(|s| !(0.8..=1.2).contains(*s)) {
        misses.push(format!("a stream got {worst:.2} of an equal share"));
    }
    misses
}

/// UDP ignores windows: an iperf3 UDP download at twice the limit is held
/// by the policer alone.
#[test]
fn udp_at_twice_the_limit() {
    let Some(_g) = begin() else { return };
    let lab = lab_with_server(212);
    let state = ScratchDir::new("dl");
    let m = manager(&state);
    // 2 MiB/s of UDP payload (16.78 Mbit/s).
    let r = measure(&lab, &m, &lab.server_ip, "1M", 10, 3, &["-u", "-b", "16.78M"]);
    print("UDP at 2x, 1M", &r, MIB, 3, 1448.0);
    assert_rate("UDP download at 2x the limit", r.ip_rate, MIB, 0.03);
    assert!(r.drop_pct > 30.0, "the policer dropped only {:.1}% of 2x the limit", r.drop_pct);
}

/// A limit applied to a running download at a 20 ms RTT bites within one
/// RTT + 100 ms, and no later second exceeds 1.15× the limit. (On the bare
/// veth only the policer acts, and its 250 ms burst after a slow second
/// can make the next one 1.18×.)
#[test]
fn limit_mid_transfer() {
    let Some(_g) = begin() else { return };
    let mut lab = Lab::with_delay(213, Duration::from_millis(10));
    lab.server(5201);
    let state = ScratchDir::new("dl");
    let m = manager(&state);
    let run = Run::start(&lab, "ct-client-mid", &lab.server_ip, 5201, 10, &[]);
    std::thread::sleep(Duration::from_millis(2500));
    let id = m.limit_pid(run.pid(), &down("1M")).unwrap();
    let t0 = Instant::now();
    let c0 = counters(&m, id);
    // Bites: after one RTT + 100 ms the policer holds the rate.
    std::thread::sleep(Duration::from_millis(120));
    let c1 = counters(&m, id);
    std::thread::sleep(Duration::from_millis(1000));
    let c2 = counters(&m, id);
    let t2 = t0.elapsed().as_secs_f64();
    let (first, _) = ip_rate(&c1, &c2, t2 - 0.1);
    eprintln!(
        "passed in the first 120 ms: {} bytes; next second {:.3} of the limit",
        c1.pass_bytes - c0.pass_bytes,
        first / MIB
    );
    let r = run.wait();
    let secs: Vec<f64> = r.secs.iter().map(|v| v / MIB).collect();
    eprintln!("per second (MiB/s): {secs:.2?}, retransmits {}", r.retransmits);
    assert!(r.secs[1] > 20.0 * MIB, "unthrottled start should be fast");
    // 1 MiB/s plus the burst (250 ms of rate) at most, counted at the IP layer.
    assert!(first < 1.3 * MIB, "not held after 120 ms: {:.2} MiB/s", first / MIB);
    for (i, v) in secs.iter().enumerate().skip(4) {
        assert!(*v < 1.15, "second {i}: {v:.2} MiB/s for a 1 MiB/s limit");
    }
}

/// IPv6 upload: paced at the IPv6 payload share, the policer never has to
/// drop, and goodput matches the IPv4 one (0.952 of the IP rate at most).
#[test]
fn ipv6_upload() {
    let Some(_g) = begin() else { return };
    let lab = lab_with_server(214);
    let v6 = lab.server_ip6.clone();
    let state = ScratchDir::new("dl");
    let m = manager(&state);
    let run = Run::upload(&lab, "ct-client-up6", &v6, 12);
    let id = m.limit_pid(run.pid(), &up("2M")).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let (t0, c0) = (Instant::now(), counters(&m, id));
    std::thread::sleep(Duration::from_millis(8500));
    let (t1, c1) = (Instant::now(), counters(&m, id));
    let r = run.wait();
    let (ip, dropped) = ip_rate(&c0, &c1, (t1 - t0).as_secs_f64());
    let limit = 2.0 * MIB;
    eprintln!(
        "IPv6 upload 2M: ip/limit {:.3}, goodput/limit {:.3}, retransmits {}, dropped {dropped:.2}%",
        ip / limit,
        r.mean(3) / limit,
        r.retransmits
    );
    assert_rate("IPv6 upload", ip, limit, 0.03);
    assert!(r.mean(3) / limit > 0.93, "IPv6 upload goodput {:.3} of the limit", r.mean(3) / limit);
}

/// IPv6 download: the same accuracy as IPv4. At this LAN round trip the
/// policer, not the window, sets the rate, and one run in a few now reads
/// low (0.878, with 1.1% retransmitted): the intermittent LAN shortfall
/// docs/BENCHMARKS.md reports as open. A run that misses is measured once
/// more, and the second decides.
#[test]
fn ipv6_download() {
    let Some(_g) = begin() else { return };
    let lab = lab_with_server(215);
    let state = ScratchDir::new("dl");
    let m = manager(&state);
    twice("IPv6 download 2M", || ipv6_download_misses(&lab, &m));
}

fn ipv6_download_misses(lab: &Lab, m: &Manager) -> Vec<String> {
    let r = measure(lab, m, &lab.server_ip6, "2M", 12, 3, &[]);
    let limit = 2.0 * MIB;
    print("IPv6 download 2M", &r, limit, 3, 1428.0);
    let mut misses = Vec::new();
    let rate = r.ip_rate / limit;
    if !(0.97..=1.03).contains(&rate) {
        misses.push(format!("IP-layer rate {rate:.3} of the limit"));
    }
    // IPv6 carries 0.952 of the IP rate at most: 0.92 is the rate bound in goodput.
    let goodput = r.report.mean(3) / limit;
    if goodput <= 0.92 {
        misses.push(format!("goodput {goodput:.3} of the limit"));
    }
    misses
}

/// Runs `misses` once, and once more if it missed something; the second
/// run decides (both are printed).
#[track_caller]
fn twice(what: &str, mut misses: impl FnMut() -> Vec<String>) {
    let first = misses();
    if first.is_empty() {
        return;
    }
    eprintln!("{what}: first run missed: {}; measuring once more", first.join("; "));
    let again = misses();
    assert!(again.is_empty(), "{what}, twice: {}", again.join("; "));
}

/// IPv6 download through a 20 ms round trip: window control holds it as
/// it does IPv4.
#[test]
fn ipv6_download_20ms() {
    let Some(_g) = begin() else { return };
    let mut lab = Lab::with_delay(220, Duration::from_millis(10));
    lab.server(5201);
    let state = ScratchDir::new("dl");
    let m = manager(&state);
    let r = measure(&lab, &m, &lab.server_ip6.clone(), "2M", 12, 3, &["-C", "cubic"]);
    let limit = 2.0 * MIB;
    print("IPv6 download 2M at 20 ms", &r, limit, 3, 1428.0);
    assert_rate("IPv6 download at 20 ms", r.ip_rate, limit, 0.03);
    assert!(r.report.retrans_pct(1428.0) <= 1.0, "{:.2}% retransmits", r.report.retrans_pct(1428.0));
    assert!(r.drop_pct <= 1.0, "{:.2}% dropped", r.drop_pct);
}

/// At LAN round trips (0.05 ms) even a one-segment window outruns the
/// limit, so the policer still drops; after a drop the socket waits for a
/// quarter of the burst, so TCP pauses a retransmission timeout per drop.
/// Retransmits at most 10% (51–67% before), with the same accuracy. Each
/// rate that misses is measured once more and the second decides: one run
/// of the whole suite read 0.917 at 10M with 0.38% retransmitted and two
/// slow seconds (5.9 and 6.5 MiB/s) while other builds ran on this 2-vCPU
/// VM, the intermittent LAN shortfall docs/BENCHMARKS.md reports as open.
#[test]
fn lan_retransmits() {
    let Some(_g) = begin() else { return };
    let lab = lab_with_server(216);
    let state = ScratchDir::new("dl");
    let m = manager(&state);
    for limit in ["1M", "10M"] {
        twice(&format!("LAN {limit}"), || lan_misses(&lab, &m, limit));
    }
}

fn lan_misses(lab: &Lab, m: &Manager, limit: &str) -> Vec<String> {
    let bytes = rate(limit).bytes_per_sec() as f64;
    let r = measure(lab, m, &lab.server_ip, limit, 12, 3, &[]);
    let what = format!("LAN {limit}");
    print(&what, &r, bytes, 3, 1448.0);
    let mut misses = Vec::new();
    let ratio = r.ip_rate / bytes;
    if !(0.97..=1.03).contains(&ratio) {
        misses.push(format!("IP-layer rate {ratio:.3} of the limit"));
    }
    let retrans = r.report.retrans_pct(1448.0);
    if retrans > 10.0 {
        misses.push(format!("retransmits {retrans:.1}%"));
    }
    misses
}

/// Goodput of full-size IPv4 segments is 1448/1500 of the IP-layer rate.
const PAYLOAD: f64 = 1448.0 / 1500.0;

/// Downloads through a real round trip, under window control: the IP-layer
/// rate within ±`tol` of the limit, every second after the third (but the
/// last, cut short) within 0.85–1.15 of it, retransmits and policer drops
/// at most 1%. A case that misses is measured once more and the second run
/// decides, as in tests/rtt.rs: through the userspace delay line on this
/// 2-vCPU VM, 10M at 80 ms read anywhere from 0.24 to 0.96 of the limit in
/// back-to-back runs on 2026-12-03, with no drop and no retransmit (slow
/// ramps and stalls), on today's tree and on older ones alike.
fn through_delay(tag: u8, one_way_ms: u64, cases: &[(&str, f64)]) {
    let Some(_g) = begin() else { return };
    let mut lab = Lab::with_delay(tag, Duration::from_millis(one_way_ms));
    lab.server(5201);
    let state = ScratchDir::new("dl");
    let m = manager(&state);
    for &(limit, tol) in cases {
        let what = format!("{limit} at {} ms RTT", 2 * one_way_ms);
        twice(&what, || delay_misses(&lab, &m, limit, tol, &what));
    }
}

fn delay_misses(lab: &Lab, m: &Manager, limit: &str, tol: f64, what: &str) -> Vec<String> {
    let bytes = rate(limit).bytes_per_sec() as f64;
    // The sender is CUBIC: BBR (this host's default) drains its flight
    // to four packets for 200 ms + one RTT every 10 s (PROBE_RTT): one
    // second at 0.7 of the limit at 80 ms, whatever the receiver does.
    let r = measure(lab, m, &lab.server_ip, limit, 12, 3, &["-C", "cubic"]);
    print(what, &r, bytes, 3, 1448.0);
    eprintln!("  delay line: {:?}", lab.delay_stats());
    let mut misses = Vec::new();
    let ratio = r.ip_rate / bytes;
    if !(1.0 - tol..=1.0 + tol).contains(&ratio) {
        misses.push(format!("IP-layer rate {ratio:.3} of the limit"));
    }
    // The last interval ends with the sender's clock, not ours: skip it.
    let n = r.report.secs.len().saturating_sub(1);
    for (i, v) in r.report.secs[..n].iter().enumerate().skip(3) {
        let ip = v / PAYLOAD / bytes;
        if !(0.85..=1.15).contains(&ip) {
            misses.push(format!("second {i} at {ip:.2} of the limit"));
        }
    }
    let retrans = r.report.retrans_pct(1448.0);
    if retrans > 1.0 {
        misses.push(format!("{retrans:.2}% retransmits"));
    }
    if r.drop_pct > 1.0 {
        misses.push(format!("{:.2}% dropped", r.drop_pct));
    }
    misses
}

#[test]
fn rtt_20ms() {
    through_delay(217, 10, &[("1M", 0.03), ("10M", 0.03)]);
}

#[test]
fn rtt_80ms() {
    through_delay(218, 40, &[("1M", 0.03), ("10M", 0.03), ("256K", 0.05)]);
}

/// Environment-driven measurement for tuning (not a check):
/// `CT_DL="limit secs [iperf3 args...]"`.
#[test]
#[ignore]
fn explore() {
    let Some(_g) = begin() else { return };
    let spec = std::env::var("CT_DL").unwrap_or("1M 12".into());
    let mut w = spec.split_whitespace();
    let limit = w.next().unwrap().to_string();
    let secs: u32 = w.next().unwrap().parse().unwrap();
    let extra: Vec<&str> = w.collect();
    let owd: u64 = std::env::var("CT_DL_OWD").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut lab = if owd == 0 { Lab::new(210) } else { Lab::with_delay(210, Duration::from_millis(owd)) };
    lab.server(5201);
    let state = ScratchDir::new("dl");
    let m = manager(&state);
    let r = measure(&lab, &m, &lab.server_ip, &limit, secs, 3, &extra);
    print(&format!("{limit} {extra:?}"), &r, rate(&limit).bytes_per_sec() as f64, 3, 1448.0);
    eprintln!(
        "  per second: {:?}",
        r.report.secs.iter().map(|v| (v / MIB * 100.0).round() / 100.0).collect::<Vec<_>>()
    );
    for (i, s) in r.report.streams.iter().enumerate().take(12) {
        let mean = s[3.min(s.len())..].iter().sum::<f64>() / (s.len().saturating_sub(3)).max(1) as f64;
        eprintln!("  stream {i}: {:.3} MiB/s", mean / MIB);
    }
}

/// ns per run of each of our programs while `f` runs (kernel bpf_stats).
fn ns_per_run(mine: &[u32], f: impl FnOnce()) -> Vec<(String, f64, u64)> {
    let stats = run_stats(mine, f).unwrap();
    stats.into_iter().filter(|(_, (_, c))| *c > 0).map(|(n, (t, c))| (n, t as f64 / c as f64, c)).collect()
}

/// Per-packet cost of the programs (a measurement, not a check):
/// unthrottled traffic, then 10M throttled uploads and downloads.
#[test]
#[ignore]
fn cost() {
    let Some(_g) = begin() else { return };
    let lab = lab_with_server(219);
    let state = ScratchDir::new("dl");
    let others: Vec<u32> = prog_stats().into_keys().collect();
    let mut o = common::options(&state, &[]);
    o.loaded.config.monitor.enabled = std::env::var("CT_COST_MONITOR").map_or(true, |v| v != "0");
    let m = Manager::start(&o).unwrap();
    let mine: Vec<u32> = prog_stats().into_keys().filter(|id| !others.contains(id)).collect();
    let free = ns_per_run(&mine, || {
        Run::spawn(&lab, "ct-client-free", &lab.server_ip, 5201, 3, &[]).wait();
        Run::start(&lab, "ct-client-free", &lab.server_ip, 5201, 3, &[]).wait();
    });
    eprintln!("unthrottled (monitor {}): {free:.0?}", if o.loaded.config.monitor.enabled { "on" } else { "off" });
    for round in 0..2 {
        let up = ns_per_run(&mine, || {
            let run = Run::upload(&lab, "ct-client-cu", &lab.server_ip, 4);
            let id = m.limit_pid(run.pid(), &up("10M")).unwrap();
            if let Ok(cmd) = std::env::var("CT_COST_PROFILE") {
                std::thread::sleep(Duration::from_secs(1));
                let _ = Command::new("sh").args(["-c", &cmd]).status();
            }
            run.wait();
            let _ = m.remove(id);
        });
        eprintln!("upload throttled at 10M, round {round}: {up:.0?}");
    }
    let dl = ns_per_run(&mine, || {
        let run = Run::start(&lab, "ct-client-cd", &lab.server_ip, 5201, 4, &[]);
        let id = m.limit_pid(run.pid(), &down("10M")).unwrap();
        run.wait();
        let _ = m.remove(id);
    });
    eprintln!("download throttled at 10M: {dl:.0?}");
}
