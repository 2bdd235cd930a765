//! Quotas and schedules (issue 19) against the real daemon, kernel, bus and
//! SQLite: a quota that ends in a slower rate and one that ends in a block,
//! both surviving `kill -9`, and a schedule window a few seconds long that
//! opens and closes during a transfer. Limits are set with `throttlectl`;
//! properties are read and signals watched with `busctl`, an independent
//! client; rates are iperf3's receiver-side seconds.
mod common;

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use common::{monitor::Monitor, *};
use throttle_testkit::bus::PrivateBus;

const K: f64 = 1024.0;
const M: f64 = 1024.0 * 1024.0;
/// Application bytes per IP-layer byte of full-size IPv4 segments.
const GOODPUT: f64 = 1448.0 / 1500.0;

/// The usage history flushed every second.
fn config(dir: &ScratchDir) -> std::path::PathBuf {
    config_with(dir, "\n[usage]\nflush_secs = 1\n")
}

fn daemon(bus: &PrivateBus, conf: &Path) -> Daemon {
    daemon_on(bus, conf)
}

/// `throttlectl ARGS` as root; its stdout, or its stderr as the error.
fn ctl(bus: &PrivateBus, args: &[&str]) -> Result<String, String> {
    let out = Command::new(throttlectl()).args(args).env("DBUS_SYSTEM_BUS_ADDRESS", bus.address()).output().unwrap();
    match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}

/// `throttlectl --json limit ARGS`: the new throttle's id.
fn limit(bus: &PrivateBus, args: &[&str]) -> u64 {
    let out = ctl(bus, &[&["--json", "limit"], args].concat()).expect("limit");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["id"].as_u64().unwrap()
}

/// A Throttle property through busctl, as its text ("t 6291456" → "6291456").
fn prop(bus: &PrivateBus, id: u64, name: &str) -> String {
    let path = format!("/org/chadthrottle/throttles/{id}");
    let out = bus.busctl(&["get-property", "org.chadthrottle", &path, "org.chadthrottle.Throttle", name]);
    let out = out.unwrap_or_else(|e| panic!("{name}: {e}"));
    out.trim().split_once(' ').map(|(_, v)| v.trim_matches('"').to_string()).unwrap_or_default()
}

fn num(bus: &PrivateBus, id: u64, name: &str) -> f64 {
    prop(bus, id, name).parse().unwrap()
}

fn yes(bus: &PrivateBus, id: u64, name: &str) -> bool {
    prop(bus, id, name) == "true"
}

/// Polls until QuotaExceeded; the quota's usage then, and when.
fn await_exceeded(bus: &PrivateBus, id: u64, within: Duration) -> Option<(f64, Instant)> {
    let t0 = Instant::now();
    while t0.elapsed() < within {
        if yes(bus, id, "QuotaExceeded") {
            return Some((num(bus, id, "QuotaUsed"), Instant::now()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn saw(monitor: &Monitor, t: Instant, member: &str, id: u64, arg: Option<&str>) -> bool {
    let path = format!("/org/chadthrottle/throttles/{id}");
    monitor.wait_for(t, Duration::from_secs(3), |s| {
        s.member == member
            && s.args.first() == Some(&path)
            && arg.is_none_or(|a| s.args.get(1).map(String::as_str) == Some(a))
    })
}

#[test]
fn a_quota_ends_in_a_slower_rate_and_survives_kill9() {
    let Some(_g) = begin() else { return };
    let Some(bus) = PrivateBus::start("plans-slow") else { return };
    let mut lab = Lab::new(233);
    lab.server(5201);
    let dir = ScratchDir::new("plans-slow");
    let conf = config(&dir);
    let mut d = daemon(&bus, &conf);
    let monitor = Monitor::watch_also(bus.address(), &["type='signal',member='PropertiesChanged'"]);
    let name = "ct-quota-slow";
    let (rate, quota, then) = (2.0 * M, 6.0 * M, 256.0 * K);
    let id = limit(&bus, &[name, "--up", "2M", "--quota", "6M/day", "--then", "256K"]);
    assert_eq!(num(&bus, id, "QuotaBytes"), quota);
    assert!(num(&bus, id, "QuotaResetsAt") > 0.0);

    let t0 = Instant::now();
    let client = lab.client_with(name, &lab.server_ip, 5201, 10, false, &[]);
    let (used, at) = await_exceeded(&bus, id, Duration::from_secs(8)).expect("the quota was never used up");
    let r = client.wait();
    eprintln!("used up after {:.2} s with {used} B; seconds {:?}", (at - t0).as_secs_f64(), r.intervals);
    // The action starts within a second of the quota: at most a second of traffic at the rate passes over it.
    assert!((quota..=quota + rate).contains(&used), "{used} B used when the action started");
    assert!(saw(&monitor, t0, "QuotaExceeded", id, None), "no QuotaExceeded signal");
    let told = |s: &common::monitor::Signal| {
        s.member == "PropertiesChanged" && s.args.get(1).is_some_and(|a| a.contains("QuotaExceeded"))
    };
    assert!(monitor.wait_for(t0, Duration::from_secs(3), told), "no PropertiesChanged with QuotaExceeded");
    assert_eq!(num(&bus, id, "UpLimit"), then, "the then-rate applies");
    assert!(!yes(&bus, id, "Blocked"));
    // Second 0 holds the start-up burst (slow start into an empty path).
    let before = r.mean(1, 3) / (rate * GOODPUT);
    let after = r.mean(6, 10) / (then * GOODPUT);
    eprintln!("goodput/limit: {before:.3} before, {after:.3} after");
    assert!((0.85..=1.05).contains(&before) && (0.85..=1.1).contains(&after), "before {before:.3}, after {after:.3}");
    // What the quota counted in all (both directions, at the IP layer):
    // the receiver's own count would also hold what a new process of a name
    // throttle sends before the daemon has seen its exec (README: a busy
    // machine delays that by milliseconds; seen once: 4.9 MB in second 0).
    let total = num(&bus, id, "QuotaUsed");
    assert!(total <= quota + rate + 10.0 * then, "{total} B passed in all");
    let list = ctl(&bus, &["list"]).unwrap();
    assert!(list.contains("6M/day USED UP then 256K"), "{list}");

    // kill -9 after a flush: the quota stays used up, with its usage.
    std::thread::sleep(Duration::from_millis(1500));
    d.kill9();
    let _d = daemon(&bus, &conf);
    assert!(
        wait_until(Duration::from_secs(5), || ctl(&bus, &["list"]).is_ok_and(|l| l.contains("USED UP"))),
        "quota reset by kill -9"
    );
    assert!(num(&bus, id, "QuotaUsed") >= quota);
    assert_eq!(num(&bus, id, "UpLimit"), then);
}

#[test]
fn a_quota_ends_in_a_block() {
    let Some(_g) = begin() else { return };
    let Some(bus) = PrivateBus::start("plans-block") else { return };
    let mut lab = Lab::new(234);
    lab.server(5201);
    // The blocked client's server never hears it leave: the last check uses another.
    lab.server(5202);
    let dir = ScratchDir::new("plans-block");
    let _d = daemon(&bus, &config(&dir));
    let monitor = Monitor::watch(bus.address());
    let name = "ct-quota-blk";
    // No rate of its own: the quota counts what passes, unlimited.
    let id = limit(&bus, &[name, "--quota", "3M/hour", "--then", "block"]);
    assert_eq!((num(&bus, id, "UpLimit"), num(&bus, id, "DownLimit")), (0.0, 0.0));
    let t0 = Instant::now();
    // The sender's own pace (16 Mbit/s, 2 MB/s) stands in for the rate the quota's bound is stated in.
    let client = lab.client_with(name, &lab.server_ip, 5201, 8, false, &["-b", "16M"]);
    let (used, at) = await_exceeded(&bus, id, Duration::from_secs(6)).expect("the quota was never used up");
    eprintln!("used up after {:.2} s with {used} B", (at - t0).as_secs_f64());
    assert!((3.0 * M..=5.0 * M).contains(&used), "{used} B used when the block started");
    assert!(yes(&bus, id, "Blocked"), "the block applies");
    assert!(saw(&monitor, t0, "QuotaExceeded", id, None), "no QuotaExceeded signal");
    // Running flows stop: nothing more passes.
    std::thread::sleep(Duration::from_secs(1));
    let settled = num(&bus, id, "QuotaUsed");
    std::thread::sleep(Duration::from_secs(2));
    assert!(num(&bus, id, "QuotaUsed") - settled < 64.0 * K, "traffic still passes under the block");
    drop(client);
    // New connections fail at once.
    let t = Instant::now();
    let out = Command::new(lab.client_binary(name)).args(["-c", &lab.server_ip, "-t", "1"]).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("not permitted"), "connect was not refused: {text}");
    assert!(t.elapsed() < Duration::from_secs(1), "connect took {:?}", t.elapsed());
    // Removing the throttle lifts the block.
    ctl(&bus, &["unlimit", &id.to_string()]).unwrap();
    let r = lab.client_with(name, &lab.server_ip, 5202, 2, false, &["-b", "80M"]).wait();
    assert!(r.mean(0, 2) > 4.0 * M, "traffic did not come back: {:?}", r.intervals);
}

/// Local time `secs` from now, as HH:MM:SS.
fn local_in(secs: i64) -> String {
    let t = (throttle_common::clock::now() + throttle_common::clock::local_utc_offset() + secs).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60)
}

#[test]
fn a_schedule_window_opens_and_closes_during_a_transfer() {
    let Some(_g) = begin() else { return };
    let Some(bus) = PrivateBus::start("plans-sched") else { return };
    let mut lab = Lab::new(235);
    lab.server(5201);
    let dir = ScratchDir::new("plans-sched");
    let _d = daemon(&bus, &config(&dir));
    let monitor = Monitor::watch(bus.address());
    let name = "ct-sched";
    let window = format!("* {}-{}", local_in(4), local_in(10));
    let id = limit(&bus, &[name, "--up", "1M", "--when", &window]);
    assert!(!yes(&bus, id, "ScheduleActive"));
    assert_eq!(num(&bus, id, "UpLimit"), 0.0, "nothing applies outside the window");
    assert_eq!(prop(&bus, id, "Schedule"), window);

    let t0 = Instant::now();
    let r = lab.client_with(name, &lab.server_ip, 5201, 14, false, &["-b", "40M"]).wait();
    let opened = monitor
        .since(t0)
        .into_iter()
        .find(|s| s.member == "ScheduleChanged" && s.args.get(1).is_some_and(|a| a == "true"));
    let closed = monitor
        .since(t0)
        .into_iter()
        .find(|s| s.member == "ScheduleChanged" && s.args.get(1).is_some_and(|a| a == "false"));
    let (opened, closed) =
        (opened.expect("no ScheduleChanged(true)").at - t0, closed.expect("no ScheduleChanged(false)").at - t0);
    eprintln!("window {:.2}-{:.2} s; seconds {:?}", opened.as_secs_f64(), closed.as_secs_f64(), r.intervals);
    // Whole seconds inside the window, and after it.
    let (from, to) = (opened.as_secs_f64().ceil() as usize + 1, closed.as_secs_f64().floor() as usize);
    let inside = r.mean(from, to) / (M * GOODPUT);
    let outside = r.mean(0, opened.as_secs_f64().floor() as usize);
    let after = r.mean(closed.as_secs_f64().ceil() as usize + 1, 14);
    eprintln!("inside {inside:.3} of the limit; outside {:.2} and after {:.2} MiB/s", outside / M, after / M);
    assert!((0.85..=1.1).contains(&inside), "inside the window: {inside:.3}");
    assert!(outside > 3.0 * M && after > 3.0 * M, "outside the window: {outside}, after: {after}");
    assert!(!yes(&bus, id, "ScheduleActive"));
}
