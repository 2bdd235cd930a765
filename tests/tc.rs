//! The netlink backends `tc_htb` (upload) and `ifb_tc` (download) against
//! real traffic, with the managed interfaces restricted to the lab veth.
mod common;

use std::{process::Command, time::Duration};

use common::*;
use throttled::{
    backend::Health,
    kernel::netlink::{Netlink, QdiscInfo},
    manager::{LimitSpec, Manager, ManagerOptions},
    Rate,
};

fn rate(s: &str) -> Rate {
    s.parse().unwrap()
}

fn options(lab: &Lab, state: &ScratchDir) -> ManagerOptions {
    common::options(state, &[&lab.veth])
}

fn up(r: &str) -> LimitSpec {
    LimitSpec { up: Some(rate(r)), backend: Some("tc_htb".into()), ..Default::default() }
}

fn down(r: &str) -> LimitSpec {
    LimitSpec { down: Some(rate(r)), backend: Some("ifb_tc".into()), ..Default::default() }
}

fn ifb_of(lab: &Lab) -> String {
    format!("cti-{}", lab.veth)
}

fn link_exists(name: &str) -> bool {
    Command::new("ip").args(["link", "show", name]).output().is_ok_and(|o| o.status.success())
}

fn root_qdisc(dev: &str) -> Option<QdiscInfo> {
    let nl = Netlink::new().unwrap();
    let idx = nl.link_index(dev).unwrap()?;
    nl.root_qdisc(idx).unwrap()
}

fn accuracy(tag: u8, spec: LimitSpec, limit: &str, reverse: bool) {
    let Some(_g) = begin() else { return };
    let mut lab = Lab::new(tag);
    lab.server(5201);
    let state = ScratchDir::new(&tag.to_string());
    let m = Manager::start(&options(&lab, &state)).unwrap();
    check_accuracy(&lab, &m, tag, &spec, rate(limit), reverse);
}

#[test]
fn tc_htb_upload_1m() {
    accuracy(31, up("1M"), "1M", false);
}

#[test]
fn tc_htb_upload_10m() {
    accuracy(32, up("10M"), "10M", false);
}

#[test]
fn ifb_tc_download_1m() {
    accuracy(33, down("1M"), "1M", true);
}

#[test]
fn ifb_tc_download_10m() {
    accuracy(34, down("10M"), "10M", true);
}

fn two_processes(tag: u8, reverse: bool) {
    let Some(_g) = begin() else { return };
    let mut lab = Lab::new(tag);
    lab.server(5201);
    lab.server(5202);
    let state = ScratchDir::new(&tag.to_string());
    let m = Manager::start(&options(&lab, &state)).unwrap();
    let a = lab.client("ct-client-a", 5201, 8, reverse);
    let b = lab.client("ct-client-b", 5202, 8, reverse);
    let spec = if reverse { down } else { up };
    m.limit_pid(a.pid(), &spec("2M")).unwrap();
    m.limit_pid(b.pid(), &spec("6M")).unwrap();
    let (ra, rb) = (a.wait(), b.wait());
    assert_accurate("client a at 2M", ra.mean(2, 8), 2.0 * MIB);
    assert_accurate("client b at 6M", rb.mean(2, 8), 6.0 * MIB);
}

#[test]
fn tc_htb_two_processes() {
    two_processes(35, false);
}

#[test]
fn ifb_tc_two_processes() {
    two_processes(36, true);
}

/// 2 → 8 MiB/s in place: effective within a second, the connection intact.
/// Six seconds measured before the change: a download through a drop-tail queue
/// may lose a quarter of a second to a retransmission timeout now and then,
/// which a shorter window would read as inaccuracy.
fn live_change(tag: u8, reverse: bool) {
    let Some(_g) = begin() else { return };
    let mut lab = Lab::new(tag);
    lab.server(5201);
    let state = ScratchDir::new(&tag.to_string());
    let m = Manager::start(&options(&lab, &state)).unwrap();
    let c = lab.client("ct-client-chg", 5201, 13, reverse);
    let spec = if reverse { down } else { up };
    let id = m.limit_pid(c.pid(), &spec("2M")).unwrap();
    std::thread::sleep(Duration::from_secs(8));
    let before = m.info(id).unwrap().directions.values().next().unwrap().counters;
    m.change(id, &spec("8M")).unwrap();
    let after = m.info(id).unwrap().directions.values().next().unwrap().counters;
    assert!(after.pass_bytes >= before.pass_bytes, "the class was reset by the change");
    let r = c.wait(); // panics if iperf3 reports an error: the connection survived
    eprintln!("intervals MiB/s: {:?}", r.intervals.iter().map(|v| v / MIB).collect::<Vec<_>>());
    assert_accurate("before the change", r.mean(2, 8), 2.0 * MIB);
    assert_accurate("from a second after the change", r.mean(9, 13), 8.0 * MIB);
}

#[test]
fn tc_htb_live_change() {
    live_change(37, false);
}

#[test]
fn ifb_tc_live_change() {
    live_change(38, true);
}

/// The root qdisc that was there (a TBF here) is back, exactly, after the
/// last throttle goes; the IFB is gone; a pre-existing ifb0 is untouched.
#[test]
fn host_state_is_restored_exactly() {
    let Some(_g) = begin() else { return };
    let mut lab = Lab::new(39);
    lab.server(5201);
    sh(&[
        "tc", "qdisc", "add", "dev", &lab.veth, "root", "handle", "5:", "tbf", "rate", "50mbit", "burst", "64kb",
        "latency", "50ms",
    ]);
    let made_ifb0 = !link_exists("ifb0");
    if made_ifb0 {
        sh(&["ip", "link", "add", "ifb0", "type", "ifb"]);
    }
    let ifb0_before = sh(&["ip", "-j", "link", "show", "ifb0"]);
    let before = root_qdisc(&lab.veth).unwrap();
    assert_eq!(before.kind, "tbf");
    let state = ScratchDir::new("39");
    let m = Manager::start(&options(&lab, &state)).unwrap();
    let c = lab.client("ct-client-rest", 5201, 3, false);
    let id_up = m
        .limit_pid(
            c.pid(),
            &LimitSpec {
                up: Some(rate("1M")),
                down: Some(rate("1M")),
                up_backend: Some("tc_htb".into()),
                down_backend: Some("ifb_tc".into()),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(root_qdisc(&lab.veth).unwrap().kind, "htb");
    assert!(link_exists(&ifb_of(&lab)));
    m.remove(id_up).unwrap();
    let after = root_qdisc(&lab.veth).unwrap();
    assert_eq!((after.kind.as_str(), after.handle, &after.options), ("tbf", before.handle, &before.options));
    assert!(!link_exists(&ifb_of(&lab)), "our IFB is still there");
    assert_eq!(sh(&["ip", "-j", "link", "show", "ifb0"]), ifb0_before, "ifb0 was touched");
    drop(c);
    drop(m);
    if made_ifb0 {
        sh(&["ip", "link", "del", "ifb0"]);
    }
}

/// Deleting our HTB qdisc from outside is reported by the health check.
#[test]
fn health_reports_deleted_qdisc() {
    let Some(_g) = begin() else { return };
    let mut lab = Lab::new(40);
    lab.server(5201);
    let state = ScratchDir::new("40");
    let mut opts = options(&lab, &state);
    opts.loaded.config.health.policy = throttled::config::FailurePolicy::None; // report, never repair
    let m = Manager::start(&opts).unwrap();
    let mut target = Command::new("sleep").arg("30").spawn().unwrap();
    m.limit_pid(target.id(), &up("1M")).unwrap();
    m.limit_pid(
        target.id(),
        &LimitSpec { down: Some(rate("1M")), backend: Some("ifb_tc".into()), ..Default::default() },
    )
    .unwrap();
    let health = |name: &str| m.backends().into_iter().find(|b| b.name == name).unwrap().health;
    assert_eq!(health("tc_htb"), Health::Healthy);
    assert_eq!(health("ifb_tc"), Health::Healthy);
    sh(&["tc", "qdisc", "del", "dev", &lab.veth, "root"]);
    assert!(matches!(health("tc_htb"), Health::Broken(_)), "{:?}", health("tc_htb"));
    sh(&["ip", "link", "del", &ifb_of(&lab)]);
    assert!(matches!(health("ifb_tc"), Health::Broken(_)), "{:?}", health("ifb_tc"));
    let _ = target.kill();
    let _ = target.wait();
}

/// A crashed run's HTB and IFB are recognised and replaced, not duplicated,
/// and the original root qdisc saved by the crashed run is what comes back.
#[test]
fn leftovers_of_a_crash_are_adopted() {
    let Some(_g) = begin() else { return };
    let mut lab = Lab::new(41);
    lab.server(5201);
    sh(&[
        "tc", "qdisc", "add", "dev", &lab.veth, "root", "handle", "7:", "tbf", "rate", "80mbit", "burst", "64kb",
        "latency", "50ms",
    ]);
    let original = root_qdisc(&lab.veth).unwrap();
    let state = ScratchDir::new("41");
    let mut target = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = target.id().to_string();
    let args = [
        "--pid",
        &pid,
        "--up",
        "1M",
        "--down",
        "1M",
        "--up-backend",
        "tc_htb",
        "--down-backend",
        "ifb_tc",
        "--interface",
        &lab.veth,
    ];
    let mut crashed = isolated_daemon(&state, &args);
    crashed.kill().unwrap(); // SIGKILL: no cleanup at all
    crashed.wait().unwrap();
    assert_eq!(root_qdisc(&lab.veth).unwrap().kind, "htb", "the crash should leave our HTB behind");
    let mut second = isolated_daemon(&state, &args);
    let nl = Netlink::new().unwrap();
    let veth = nl.link_index(&lab.veth).unwrap().unwrap();
    assert_eq!(nl.qdiscs(veth).unwrap().iter().filter(|q| q.kind == "htb").count(), 1);
    assert_eq!(nl.links().unwrap().iter().filter(|l| l.name == ifb_of(&lab)).count(), 1);
    unsafe { libc::kill(second.id() as i32, libc::SIGTERM) };
    assert!(second.wait().unwrap().success());
    let _ = target.kill();
    let _ = target.wait();
    let back = root_qdisc(&lab.veth).unwrap();
    assert_eq!((back.kind.as_str(), &back.options), (original.kind.as_str(), &original.options));
    assert!(!link_exists(&ifb_of(&lab)));
}

/// An interface that appears gets the live throttles; one that vanishes is
/// dropped without errors (rtnetlink link events), and with none left the
/// backend says it holds nothing until the interface is back.
#[test]
fn interfaces_are_followed() {
    let Some(_g) = begin() else { return };
    let state = ScratchDir::new("42");
    let opts = common::options(&state, &["ct-veth42"]);
    let m = Manager::start(&opts).unwrap();
    let mut target = Command::new("sleep").arg("30").spawn().unwrap();
    m.limit_pid(target.id(), &up("3M")).unwrap();
    let class_on = |dev: &str| {
        let nl = Netlink::new().unwrap();
        let Some(idx) = nl.link_index(dev).unwrap() else { return false };
        nl.classes(idx).unwrap().iter().any(|c| c.kind == "htb" && c.classid & 0xffff != 0xffff)
    };
    {
        let _lab = Lab::new(42); // the interface appears
        assert!(wait_until(Duration::from_secs(3), || class_on("ct-veth42")), "the new interface was not shaped");
    } // and vanishes
    let health = || m.backends().into_iter().find(|b| b.name == "tc_htb").unwrap().health;
    let none = Health::Degraded("no managed interface is present (ct-veth42)".into());
    assert!(wait_until(Duration::from_secs(2), || health() == none), "{:?}", health());
    {
        let _lab = Lab::new(42); // and comes back
        assert!(wait_until(Duration::from_secs(3), || class_on("ct-veth42")), "the returning interface was not shaped");
        assert!(wait_until(Duration::from_secs(2), || health() == Health::Healthy), "{:?}", health());
    }
    let _ = target.kill();
    let _ = target.wait();
}

/// Availability is true on this kernel, and probing leaves nothing on the host.
#[test]
fn availability_probe_is_truthful_and_private() {
    let Some(_g) = begin() else { return };
    let before = sh(&["ip", "-o", "link", "show"]);
    let state = ScratchDir::new("m");
    let m = Manager::start(&common::options(&state, &[])).unwrap();
    for b in m.backends() {
        assert!(b.availability.is_available(), "{} unavailable here: {:?}", b.name, b.availability);
        assert_eq!(b.health, Health::Idle, "{} is set up before its first throttle", b.name);
    }
    let after = sh(&["ip", "-o", "link", "show"]);
    let names = |s: &str| s.lines().filter_map(|l| l.split(": ").nth(1).map(String::from)).collect::<Vec<_>>();
    assert_eq!(names(&before), names(&after), "the probe left links behind");
}

/// With both shapers active for another process, unthrottled traffic on the
/// same interface keeps full speed (HTB's unlimited default class; the
/// classifier passes packets of unthrottled sockets).
#[test]
fn unthrottled_traffic_is_not_slowed() {
    let Some(_g) = begin() else { return };
    let mut lab = Lab::new(43);
    lab.server(5201);
    let state = ScratchDir::new("43");
    let m = Manager::start(&options(&lab, &state)).unwrap();
    let mut target = Command::new("sleep").arg("30").spawn().unwrap();
    let spec = LimitSpec {
        up: Some(rate("1M")),
        down: Some(rate("1M")),
        up_backend: Some("tc_htb".into()),
        down_backend: Some("ifb_tc".into()),
        ..Default::default()
    };
    m.limit_pid(target.id(), &spec).unwrap();
    for reverse in [false, true] {
        let r = lab.client("ct-client-free", 5201, 3, reverse).wait();
        let got = r.mean(1, 3) / MIB;
        assert!(got > 200.0, "unthrottled {} only {got:.0} MiB/s", if reverse { "download" } else { "upload" });
    }
    let _ = target.kill();
    let _ = target.wait();
}
