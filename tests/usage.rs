//! The usage history against the real daemon, kernel and SQLite: a named
//! iperf3 client's bytes as `throttlectl usage` and `GetUsage` report them
//! agree with iperf3's (plus headers), and survive a restart, a `kill -9`
//! and a corrupt database file.
mod common;

use std::{path::Path, process::Command, time::Duration};

use common::*;
use serde_json::Value;
use throttle_testkit::bus::PrivateBus;

/// IP-layer bytes of full-size IPv4 segments per application byte.
const HEADERS: f64 = 1500.0 / 1448.0;

/// The usage history flushed every second.
fn config(dir: &ScratchDir) -> std::path::PathBuf {
    config_with(dir, "\n[usage]\nflush_secs = 1\n")
}

fn daemon(bus: &PrivateBus, conf: &Path) -> Daemon {
    daemon_on(bus, conf)
}

/// `throttlectl --json usage --by name --since 1h`, as root.
fn usage(bus: &PrivateBus) -> Value {
    let out = Command::new(throttlectl())
        .args(["--json", "usage", "--by", "name", "--since", "1h"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus.address())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The upload bytes the history holds for `name` (0 when it has none).
fn uploaded(bus: &PrivateBus, name: &str) -> f64 {
    let v = usage(bus);
    let row = v.as_array().unwrap().iter().find(|r| r["key"] == name).cloned().unwrap_or_default();
    (row["up_internet"].as_u64().unwrap_or(0) + row["up_local"].as_u64().unwrap_or(0)) as f64
}

/// Uploads for `secs` as a client named `name`; its application bytes.
fn upload(lab: &Lab, name: &str, secs: u32) -> f64 {
    let r = lab.client_with(name, &lab.server_ip, 5201, secs, false, &["-b", "80M"]).wait();
    assert!(r.sent_bytes > 1e6, "iperf3 sent only {} bytes", r.sent_bytes);
    r.sent_bytes
}

/// `got` IP-layer bytes against `sent` application bytes, within ±3%.
#[track_caller]
fn check(what: &str, got: f64, sent: f64) {
    let ratio = got / (sent * HEADERS);
    eprintln!("{what}: history {got:.0} B, iperf3 {sent:.0} B (×{HEADERS:.4} for headers), ratio {ratio:.4}");
    assert!((0.97..=1.03).contains(&ratio), "{what}: history/iperf3 = {ratio:.4}");
}

#[test]
fn counts_survive_restart_and_kill9() {
    let Some(_g) = begin() else { return };
    let Some(bus) = PrivateBus::start("usage") else { return };
    let mut lab = Lab::new(231);
    lab.server(5201);
    let dir = ScratchDir::new("usage");
    let conf = config(&dir);
    let mut d = daemon(&bus, &conf);
    let name = "ct-usage-app";

    let sent1 = upload(&lab, name, 4);
    assert!(wait_until(Duration::from_secs(5), || uploaded(&bus, name) >= sent1), "not flushed within 5 s");
    // The exit's last bytes come with the next flush.
    std::thread::sleep(Duration::from_millis(1500));
    check("one run", uploaded(&bus, name), sent1);

    // A clean restart flushes at shutdown; the history is on disk.
    d.stop();
    let mut d = daemon(&bus, &conf);
    assert!(wait_until(Duration::from_secs(5), || uploaded(&bus, name) > 0.0), "history lost on restart");
    check("after a restart", uploaded(&bus, name), sent1);

    // kill -9 after a flush interval: nothing is lost.
    lab.wait_idle(5201);
    let sent2 = upload(&lab, name, 4);
    std::thread::sleep(Duration::from_millis(2500));
    d.kill9();
    let d = daemon(&bus, &conf);
    assert!(wait_until(Duration::from_secs(5), || uploaded(&bus, name) > sent1), "second run lost");
    check("after kill -9", uploaded(&bus, name), sent1 + sent2);

    // The D-Bus API answers the same, to an independent client.
    let reply = get_usage(&bus, "name").expect("GetUsage");
    assert!(reply.contains(name), "{reply}");
    let bad = get_usage(&bus, "planet");
    assert!(bad.is_err_and(|e| e.contains("unknown grouping")), "a bad grouping is refused, by name");
    drop(d);
}

#[test]
fn a_corrupt_database_is_moved_aside() {
    let Some(_g) = begin() else { return };
    let Some(bus) = PrivateBus::start("usage-bad") else { return };
    let dir = ScratchDir::new("usage-bad");
    let conf = config(&dir);
    let state = dir.path.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let db = state.join("usage.sqlite");
    std::fs::write(&db, b"SQLite format 3\0 but then garbage, not a database at all".repeat(200)).unwrap();
    let _d = daemon(&bus, &conf);
    // The daemon runs and answers with a fresh, empty history.
    assert!(wait_until(Duration::from_secs(5), || usage_answers(&bus)), "no usage report after a corrupt file");
    let aside: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("usage.sqlite.corrupt-"))
        .collect();
    assert!(!aside.is_empty(), "the bad file was not moved aside");
}

/// `GetUsage(by, 0, 0)` through busctl.
fn get_usage(bus: &PrivateBus, by: &str) -> Result<String, String> {
    let call = ["call", "org.chadthrottle", "/org/chadthrottle", "org.chadthrottle.Manager", "GetUsage"];
    bus.busctl(&[&call[..], &["sxx", by, "0", "0"]].concat())
}

fn usage_answers(bus: &PrivateBus) -> bool {
    Command::new(throttlectl())
        .args(["--json", "usage"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus.address())
        .output()
        .is_ok_and(|o| o.status.success())
}
