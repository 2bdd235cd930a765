//! The monitor against the real kernel: every process's traffic is counted
//! in the kernel and the daemon's per-process rates agree with what iperf3
//! measured (throttled and unthrottled, upload and download, loopback), and
//! short connections lose no bytes.
mod common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use throttled::manager::{
    traffic::{ProcessTraffic, Scope, SortBy},
    LimitSpec, Manager,
};

/// The daemon's bytes over a span, between two samples it takes now.
struct Span {
    start: Instant,
    end: Instant,
    up: u64,
    down: u64,
}

fn traffic(m: &Manager, pid: u32, scope: Scope) -> Option<ProcessTraffic> {
    m.top(10_000, SortBy::Total, scope, None).into_iter().find(|p| p.traffic.pid == pid).map(|p| p.traffic)
}

fn measure(m: &Manager, pid: u32, scope: Scope, secs: u64) -> Span {
    m.sample_rates();
    let (start, a) = (Instant::now(), traffic(m, pid, scope).expect("process not in the monitor"));
    std::thread::sleep(Duration::from_secs(secs));
    m.sample_rates();
    let (end, b) = (Instant::now(), traffic(m, pid, scope).expect("process left the monitor"));
    Span { start, end, up: b.up_total - a.up_total, down: b.down_total - a.down_total }
}

/// iperf3's bytes/s over `[from, to]` (seconds since its start), weighting
/// the intervals that straddle the edges by their overlap.
fn iperf_rate(intervals: &[f64], from: f64, to: f64) -> f64 {
    let bytes: f64 =
        intervals.iter().enumerate().map(|(i, r)| r * ((i as f64 + 1.0).min(to) - (i as f64).max(from)).max(0.0)).sum();
    bytes / (to - from)
}

/// The daemon counts IP-layer bytes, iperf3 application bytes: with full
/// 1500-byte segments that is 1500/1448 more, on loopback (64 KiB MTU)
/// almost nothing. Totals over the same span must agree within 4% of that;
/// the rolling rate within 8%, since its window ends at the daemon's last
/// once-a-second sample and an unthrottled flow swings ±15% per second here.
fn check(what: &str, daemon: f64, iperf: f64, expected: f64, tolerance: f64) {
    let ratio = daemon / iperf;
    eprintln!("{what}: daemon {daemon:.0} B/s, iperf3 {iperf:.0} B/s, ratio {ratio:.4} (expected {expected:.4})");
    assert!((ratio / expected - 1.0).abs() <= tolerance, "{what}: daemon/iperf3 = {ratio:.4}, expected {expected:.4}");
}

fn compare(m: &Manager, c: Iperf, t0: Instant, reverse: bool, scope: Scope, what: &str) {
    let headers = if scope == Scope::Local { 1.0 } else { 1500.0 / 1448.0 };
    std::thread::sleep(Duration::from_secs(2));
    let s = measure(m, c.pid(), scope, 6);
    // The rolling rate the API reports, read while the flow still runs.
    let rolling = traffic(m, c.pid(), scope).unwrap();
    let r = c.wait();
    let (from, to) = (s.start.duration_since(t0).as_secs_f64(), s.end.duration_since(t0).as_secs_f64());
    let daemon = if reverse { s.down } else { s.up } as f64 / (to - from);
    let iperf = iperf_rate(&r.intervals, from, to);
    check(what, daemon, iperf, headers, 0.04);
    let roll = if reverse { rolling.down_rate } else { rolling.up_rate } as f64;
    check(&format!("{what} (rolling rate)"), roll, iperf_rate(&r.intervals, to - 5.0, to), headers, 0.08);
}

fn manager(state: &ScratchDir, ifaces: &[&str]) -> Manager {
    let m = Manager::start(&common::options(state, ifaces)).unwrap();
    assert!(m.monitoring(), "the monitor is on by default");
    m
}

#[test]
fn rates_match_iperf3_unthrottled_and_throttled() {
    let Some(_g) = begin() else { return };
    let mut lab = Lab::new(60);
    lab.server(5201);
    let state = ScratchDir::new("monitor-rates");
    let m = manager(&state, &[&lab.veth]);
    for reverse in [false, true] {
        let t0 = Instant::now();
        let c = lab.client("ct-mon-free", 5201, 10, reverse);
        compare(&m, c, t0, reverse, Scope::Internet, &format!("unthrottled {}", dir(reverse)));
    }
    for (reverse, backend) in [(false, "ebpf"), (true, "ifb_tc")] {
        let t0 = Instant::now();
        let c = lab.client("ct-mon-lim", 5201, 10, reverse);
        let rate = Some("2M".parse().unwrap());
        let spec = if reverse {
            LimitSpec { down: rate, ..Default::default() }
        } else {
            LimitSpec { up: rate, ..Default::default() }
        };
        let spec = LimitSpec { backend: Some(backend.into()), ..spec };
        let id = m.limit_pid(c.pid(), &spec).unwrap();
        compare(&m, c, t0, reverse, Scope::All, &format!("throttled {} on {backend}", dir(reverse)));
        let _ = m.remove(id);
    }
}

fn dir(reverse: bool) -> &'static str {
    if reverse {
        "download"
    } else {
        "upload"
    }
}

/// Loopback traffic counts, as local: a client and server on the lab
/// namespace's own loopback.
#[test]
fn loopback_is_counted_as_local() {
    let Some(_g) = begin() else { return };
    let mut lab = Lab::new(61);
    lab.server(5201);
    let state = ScratchDir::new("monitor-lo");
    let m = manager(&state, &[]);
    let t0 = Instant::now();
    let c = lab.client_in_ns("ct-mon-lo", "127.0.0.1", 5201, 13);
    let pid = c.pid();
    std::thread::sleep(Duration::from_secs(3));
    m.sample_rates();
    let internet = traffic(&m, pid, Scope::Internet).unwrap();
    assert_eq!(internet.up_total, 0, "loopback traffic counted as internet");
    compare(&m, c, t0, false, Scope::Local, &format!("loopback upload (pid {pid})"));
}

const SINK: &str = r#"
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(64)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    while c.recv(1 << 16): pass
    c.close()
"#;

const SHORT_CLIENT: &str = r#"
import socket, sys, time
sent = 0
for _ in range(200):
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
    end = time.monotonic() + 0.05
    while time.monotonic() < end:
        sent += s.send(b"x" * 16384)
    s.close()
print(sent, flush=True)
time.sleep(30)
"#;

/// 200 connections of 50 ms each: every byte the client sent is counted
/// (plus headers and handshakes, which the payload alone does not have).
#[test]
fn short_connections_lose_no_bytes() {
    use std::io::BufRead;
    let Some(_g) = begin() else { return };
    let lab = Lab::new(62);
    let mut sink = Command::new("ip")
        .args(["netns", "exec", &lab.ns, "python3", "-c", SINK, &lab.server_ip, "5301"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(sink.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let state = ScratchDir::new("monitor-short");
    let m = manager(&state, &[]);
    let mut client = Command::new("python3")
        .args(["-c", SHORT_CLIENT, &lab.server_ip, "5301"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    line.clear();
    std::io::BufReader::new(client.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    let sent: u64 = line.trim().parse().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    m.sample_rates();
    let t = traffic(&m, client.id(), Scope::All).expect("client not in the monitor");
    let _ = client.kill();
    let _ = client.wait();
    let _ = sink.kill();
    let _ = sink.wait();
    let ratio = t.up_total as f64 / sent as f64;
    eprintln!("sent {sent} B of payload in 200 connections; counted {} B up ({ratio:.4})", t.up_total);
    // Headers: at most 52 B per 1448 B segment, plus 200 × 3 control packets.
    assert!(t.up_total >= sent, "bytes were lost: counted {} < sent {sent}", t.up_total);
    assert!(ratio <= 1.06, "counted more than payload plus headers: {ratio:.4}");
    assert!(t.down_total > 0, "ACKs of the download side were not counted");
}

/// An exited process leaves the monitor and the kernel map.
#[test]
fn exited_processes_are_forgotten() {
    let Some(_g) = begin() else { return };
    let mut lab = Lab::new(63);
    lab.server(5201);
    let state = ScratchDir::new("monitor-exit");
    let m = manager(&state, &[]);
    let c = lab.client("ct-mon-exit", 5201, 2, false);
    let pid = c.pid();
    std::thread::sleep(Duration::from_millis(1000));
    m.sample_rates();
    std::thread::sleep(Duration::from_millis(200));
    m.sample_rates();
    assert!(traffic(&m, pid, Scope::All).is_some());
    assert!(!m.process_history(pid).unwrap().is_empty(), "no history after two samples");
    c.wait();
    assert!(
        wait_until(Duration::from_secs(5), || {
            m.sample_rates();
            traffic(&m, pid, Scope::All).is_none()
        }),
        "pid {pid} still in the monitor after it exited"
    );
    assert!(m.process_history(pid).is_err());
}
