//! Priorities (issue 18) against the real daemon and kernel, through the
//! delay line at a 20 ms round trip: two saturating downloads, one high and
//! one low, under a 6 MiB/s link capacity share it 4:1; when the high one
//! stops, the low one takes the whole link within 2 s. The throttles are
//! made by `throttlectl priority`; the link capacity is read and set through
//! the D-Bus property by `busctl`, an independent client.
mod common;

use std::{process::Command, time::Duration};

use common::*;
use throttle_testkit::bus::PrivateBus;

const M: f64 = 1024.0 * 1024.0;
/// Application bytes per IP-layer byte of full-size IPv4 segments.
const GOODPUT: f64 = 1448.0 / 1500.0;

/// The daemon with a 6M link capacity each way, managing `iface` (for HTB).
fn daemon(bus: &PrivateBus, dir: &ScratchDir, iface: &str) -> Daemon {
    let conf = throttle_testkit::bus::write_config(dir, iface);
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str("\n[link]\ndown = \"6M\"\nup = \"6M\"\n");
    std::fs::write(&conf, text).unwrap();
    daemon_on(bus, &conf)
}

fn ctl(bus: &PrivateBus, args: &[&str]) -> String {
    let out = Command::new(throttlectl()).args(args).env("DBUS_SYSTEM_BUS_ADDRESS", bus.address()).output().unwrap();
    assert!(out.status.success(), "throttlectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn high_and_low_share_the_link_four_to_one() {
    share_four_to_one(true, None);
}

#[test]
fn high_and_low_share_the_uplink_four_to_one() {
    share_four_to_one(false, None);
}

/// On HTB the same shares come from the classes' own rate, ceil and prio:
/// each throttle at its own 6M limit, under a shared class at the link.
#[test]
fn htb_classes_share_the_link_four_to_one() {
    share_four_to_one(true, Some("ifb_tc"));
}

#[test]
fn htb_classes_share_the_uplink_four_to_one() {
    share_four_to_one(false, Some("tc_htb"));
}

/// Downloads with `reverse`, uploads without; priority-only `ebpf`
/// throttles, or 6M limits with a priority on `backend`.
fn share_four_to_one(reverse: bool, backend: Option<&str>) {
    let Some(_g) = begin() else { return };
    let Some(bus) = PrivateBus::start("prio") else { return };
    let mut lab = Lab::with_delay(236, Duration::from_millis(10));
    lab.server(5201);
    lab.server(5202);
    let dir = ScratchDir::new("prio");
    let mut d = daemon(&bus, &dir, &lab.veth);
    let link = bus.busctl(&[
        "get-property",
        "org.chadthrottle",
        "/org/chadthrottle",
        "org.chadthrottle.Manager",
        "LinkCapacity",
    ]);
    assert_eq!(link.unwrap().trim(), "(tt) 6291456 6291456", "the config's [link]");
    let way = if reverse { "--down" } else { "--up" };
    for (name, level) in [("ct-prio-hi", "high"), ("ct-prio-lo", "low")] {
        match backend {
            None => ctl(&bus, &["priority", name, level]),
            Some(b) => ctl(&bus, &["limit", name, way, "6M", "--backend", b, "--priority", level]),
        };
    }
    let list = ctl(&bus, &["list"]);
    assert!(list.contains("high") && list.contains("low"), "{list}");

    let lo = lab.client_with("ct-prio-lo", &lab.server_ip, 5202, 14, reverse, &[]);
    let hi = lab.client_with("ct-prio-hi", &lab.server_ip, 5201, 7, reverse, &[]);
    let (hi, lo) = (hi.wait(), lo.wait());
    eprintln!("high {:?}\nlow {:?}", hi.intervals, lo.intervals);
    // Both saturating: seconds 3-6.
    let (h, l) = (hi.mean(3, 7) / GOODPUT, lo.mean(3, 7) / GOODPUT);
    eprintln!("high {:.2} MiB/s, low {:.2} MiB/s, together {:.3} of the link", h / M, l / M, (h + l) / (6.0 * M));
    assert!((0.85..=1.15).contains(&(h / (4.8 * M))), "high: {:.2} MiB/s", h / M);
    assert!((0.85..=1.15).contains(&(l / (1.2 * M))), "low: {:.2} MiB/s", l / M);
    assert!((0.97..=1.03).contains(&((h + l) / (6.0 * M))), "together: {:.2} MiB/s", (h + l) / M);
    // The high flow ends at 7 s: within 2 s the low one has 0.9 of the link.
    let after = lo.intervals[9] / GOODPUT;
    eprintln!("low alone, 2 s after: {:.3} of the link, then {:.2?}", after / (6.0 * M), &lo.intervals[9..]);
    assert!(after >= 0.9 * 6.0 * M, "low alone, 2 s after: {:.2} MiB/s", after / M);

    // kill -9 and a restart: the priorities come back and share again.
    d.kill9();
    lab.wait_idle(5201);
    lab.wait_idle(5202);
    let _d = daemon(&bus, &dir, &lab.veth);
    let list = ctl(&bus, &["list"]);
    assert!(list.contains("high") && list.contains("low"), "not restored: {list}");
    let lo = lab.client_with("ct-prio-lo", &lab.server_ip, 5202, 7, reverse, &[]);
    let hi = lab.client_with("ct-prio-hi", &lab.server_ip, 5201, 7, reverse, &[]);
    let (h, l) = (hi.wait().mean(3, 7), lo.wait().mean(3, 7));
    eprintln!("after restart: high {:.2}, low {:.2} MiB/s", h / GOODPUT / M, l / GOODPUT / M);
    assert!(h > 2.5 * l, "the restored priorities do not share 4:1: {:.2} and {:.2} MiB/s", h / M, l / M);

    // The capacity is set at runtime through the property (root may configure).
    bus.busctl(&[
        "set-property",
        "org.chadthrottle",
        "/org/chadthrottle",
        "org.chadthrottle.Manager",
        "LinkCapacity",
        "(tt)",
        "0",
        "1048576",
    ])
    .expect("set LinkCapacity");
    assert!(ctl(&bus, &["link"]).contains("down not set, up 1M"));
}
