//! The rtnetlink layer against the real kernel, checked with `ip` and `tc`.
//! Each test owns its veth pair `ct-nlA<N>`/`ct-nlB<N>` (the peer usually in
//! netns `ct-nl<N>`) and IFB `ct-nlifb<N>`, removed on drop even on panic.
use std::{
    collections::BTreeSet,
    net::UdpSocket,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use throttled::kernel::netlink::{
    tc_handle, ClassInfo, HtbClass, LinkEvent, LinkEvents, Netlink, QdiscInfo, TC_H_CLSACT,
};

fn root() -> bool {
    if unsafe { libc::geteuid() } != 0 {
        throttle_testkit::require_root("netlink tests");
        return false;
    }
    true
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sh_quiet(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn json(args: &[&str]) -> Value {
    serde_json::from_str(&sh(args)).unwrap()
}

/// A veth pair; with `ns`, the peer lives in netns `ct-nl<N>` and both ends
/// are up with 10.202.N.1/30 (root side) and 10.202.N.2/30.
struct Veth {
    a: String,
    b: String,
    ns: Option<String>,
}

impl Veth {
    fn new(n: u8, with_ns: bool) -> Veth {
        let v = Veth { a: format!("ct-nlA{n}"), b: format!("ct-nlB{n}"), ns: with_ns.then(|| format!("ct-nl{n}")) };
        v.cleanup(); // leftovers of a crashed earlier run
        sh(&["ip", "link", "add", &v.a, "type", "veth", "peer", "name", &v.b]);
        if let Some(ns) = &v.ns {
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "link", "set", &v.b, "netns", ns]);
            sh(&["ip", "addr", "add", &format!("10.202.{n}.1/30"), "dev", &v.a]);
            sh(&["ip", "link", "set", &v.a, "up"]);
            sh(&["ip", "-n", ns, "addr", "add", &format!("10.202.{n}.2/30"), "dev", &v.b]);
            sh(&["ip", "-n", ns, "link", "set", &v.b, "up"]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        v
    }

    fn cleanup(&self) {
        sh_quiet(&["ip", "link", "del", &self.a]);
        if let Some(ns) = &self.ns {
            sh_quiet(&["ip", "netns", "del", ns]);
        }
    }

    fn ns_path(&self) -> String {
        format!("/run/netns/{}", self.ns.as_ref().unwrap())
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Deletes link `name` on drop.
struct LinkGuard(String);

impl Drop for LinkGuard {
    fn drop(&mut self) {
        sh_quiet(&["ip", "link", "del", &self.0]);
    }
}

fn nl() -> Netlink {
    Netlink::new().unwrap()
}

fn index(nl: &Netlink, name: &str) -> u32 {
    nl.link_index(name).unwrap().unwrap_or_else(|| panic!("no link {name}"))
}

/// UDP datagrams from the root namespace to the test host behind the veth.
fn send_traffic(n: u8, count: usize) {
    let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
    for _ in 0..count {
        sock.send_to(&[0u8; 1000], format!("10.202.{n}.2:9")).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn class(classes: &[ClassInfo], id: u32) -> Option<&ClassInfo> {
    classes.iter().find(|c| c.classid == id)
}

/// The `tc -s class show` paragraph of class `id` (e.g. "1:10").
fn tc_class_text(dev: &str, id: &str) -> Option<String> {
    let out = sh(&["tc", "-s", "class", "show", "dev", dev]);
    let head = format!("class htb {id} ");
    let start = out.find(&head)?;
    let rest = &out[start..];
    let end = rest[1..].find("\nclass ").map_or(rest.len(), |e| e + 1);
    Some(rest[..end].to_string())
}

fn tc_sent_bytes(text: &str) -> u64 {
    let after = text.split("Sent ").nth(1).unwrap();
    after.split_whitespace().next().unwrap().parse().unwrap()
}

/// The root entry of `tc -j qdisc show dev X`.
fn tc_root_qdisc(dev: &str) -> Value {
    let all = json(&["tc", "-j", "qdisc", "show", "dev", dev]);
    all.as_array().unwrap().iter().find(|q| q["root"] == Value::Bool(true)).cloned().unwrap()
}

#[test]
fn ifb_create_and_delete() {
    if !root() {
        return;
    }
    let veth = Veth::new(1, false);
    let name = "ct-nlifb1";
    sh_quiet(&["ip", "link", "del", name]);
    let _guard = LinkGuard(name.into());
    let nl = nl();

    let idx = nl.create_ifb(name).unwrap();
    let info = nl.link(idx).unwrap().unwrap();
    assert_eq!((info.name.as_str(), info.up, info.kind.as_deref()), (name, true, Some("ifb")));
    let shown = json(&["ip", "-j", "-d", "link", "show", name]);
    assert_eq!(shown[0]["ifindex"], idx);
    assert_eq!(shown[0]["linkinfo"]["info_kind"], "ifb");
    assert!(nl.links().unwrap().iter().any(|l| l.index == idx && l.name == name));

    let err = nl.create_ifb(name).unwrap_err();
    assert_eq!(err.errno(), Some(libc::EEXIST), "{err}");
    assert_eq!(nl.link(idx).unwrap().unwrap(), info);

    // A name taken by another kind of device: refused, device untouched.
    let veth_idx = index(&nl, &veth.a);
    let before = nl.link(veth_idx).unwrap().unwrap();
    let err = nl.create_ifb(&veth.a).unwrap_err();
    assert_eq!(err.errno(), Some(libc::EEXIST), "{err}");
    assert_eq!(nl.link(veth_idx).unwrap().unwrap(), before);
    assert_eq!(before.kind.as_deref(), Some("veth"));

    nl.delete_link(idx).unwrap();
    assert_eq!(nl.link(idx).unwrap(), None);
    assert_eq!(nl.link_index(name).unwrap(), None);
    assert!(!sh_quiet(&["ip", "link", "show", name]));
    assert_eq!(nl.delete_link(idx).unwrap_err().errno(), Some(libc::ENODEV));
}

#[test]
fn set_link_up() {
    if !root() {
        return;
    }
    let veth = Veth::new(10, false);
    let nl = nl();
    let idx = index(&nl, &veth.a);
    assert!(!nl.link(idx).unwrap().unwrap().up);
    nl.set_link_up(idx).unwrap();
    assert!(nl.link(idx).unwrap().unwrap().up);
    let shown = json(&["ip", "-j", "link", "show", &veth.a]);
    assert!(shown[0]["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
}

fn htb(rate: u64, ceil: u64, burst: u32) -> HtbClass {
    HtbClass { rate, ceil, burst, prio: 0 }
}

#[test]
fn htb_classes_change_in_place_and_stats() {
    if !root() {
        return;
    }
    let veth = Veth::new(2, true);
    let nl = nl();
    let dev = veth.a.as_str();
    let idx = index(&nl, dev);
    let (top, default, big) = (tc_handle(1, 1), tc_handle(1, 0x10), tc_handle(1, 0x20));

    nl.add_htb_root(idx, 1, 0x10).unwrap();
    let root = nl.root_qdisc(idx).unwrap().unwrap();
    assert_eq!((root.kind.as_str(), root.handle), ("htb", tc_handle(1, 0)));
    let shown = tc_root_qdisc(dev);
    assert_eq!(shown["kind"], "htb");
    assert_eq!(shown["options"]["default"], "0x10");

    // 8/16 Mbit top class, 4/8 Mbit default class under it.
    nl.add_htb_class(idx, top, tc_handle(1, 0), &htb(1_000_000, 2_000_000, 16_000)).unwrap();
    nl.add_htb_class(idx, default, top, &htb(500_000, 1_000_000, 16_000)).unwrap();
    let err = nl.add_htb_class(idx, default, top, &htb(500_000, 1_000_000, 16_000)).unwrap_err();
    assert_eq!(err.errno(), Some(libc::EEXIST), "{err}");
    let text = tc_class_text(dev, "1:10").unwrap();
    assert!(text.contains("parent 1:1 ") && text.contains("rate 4Mbit ceil 8Mbit burst 16000b"), "{text}");

    // Rates past u32 bytes/s need TCA_HTB_RATE64/CEIL64.
    nl.add_htb_class(idx, big, tc_handle(1, 0), &htb(5_000_000_000, 6_000_000_000, 1_000_000)).unwrap();
    let text = tc_class_text(dev, "1:20").unwrap();
    assert!(text.contains("rate 40Gbit ceil 48Gbit"), "{text}");

    send_traffic(2, 50);
    let stats = nl.class_stats(idx, default).unwrap();
    assert!(stats.packets >= 50 && stats.bytes >= 50 * 1000, "{stats:?}");
    let classes = nl.classes(idx).unwrap();
    let c = class(&classes, default).unwrap();
    assert_eq!((c.parent, c.kind.as_str()), (top, "htb"));
    assert!(c.stats.bytes >= stats.bytes);
    assert!(class(&classes, top).unwrap().stats.bytes >= stats.bytes, "parents count their children's bytes");
    let sent_before = tc_sent_bytes(&tc_class_text(dev, "1:10").unwrap());
    assert!(sent_before >= stats.bytes);

    // Change in place: new rates, same counters.
    nl.change_htb_class(idx, default, top, &htb(250_000, 750_000, 16_000)).unwrap();
    let text = tc_class_text(dev, "1:10").unwrap();
    assert!(text.contains("rate 2Mbit ceil 6Mbit"), "{text}");
    assert!(tc_sent_bytes(&text) >= sent_before, "counters reset: {text}");
    let after = nl.class_stats(idx, default).unwrap();
    assert!(after.bytes >= stats.bytes && after.packets >= stats.packets, "{after:?} vs {stats:?}");
    let err = nl.change_htb_class(idx, tc_handle(1, 0x99), top, &htb(1000, 1000, 1600)).unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENOENT), "{err}");
    assert!(nl.add_htb_class(idx, tc_handle(1, 0x30), top, &htb(0, 1000, 1600)).is_err());

    // A parent with children is busy; leaves first.
    let err = nl.delete_class(idx, top).unwrap_err();
    assert_eq!(err.errno(), Some(libc::EBUSY), "{err}");
    assert!(err.to_string().contains("in use"), "the kernel's own text: {err}");
    nl.delete_class(idx, default).unwrap();
    assert!(class(&nl.classes(idx).unwrap(), default).is_none());
    assert!(tc_class_text(dev, "1:10").is_none());
    assert!(nl.class_stats(idx, default).unwrap_err().errno() == Some(libc::ENOENT));
    nl.delete_class(idx, top).unwrap();
    nl.delete_class(idx, big).unwrap();
    assert!(nl.classes(idx).unwrap().is_empty());
    nl.delete_root_qdisc(idx).unwrap();
    assert_eq!(tc_root_qdisc(dev)["kind"], "noqueue");
}

#[test]
fn tbf_root_saved_replaced_and_restored() {
    if !root() {
        return;
    }
    let veth = Veth::new(4, false);
    let nl = nl();
    let dev = veth.a.as_str();
    let idx = index(&nl, dev);
    sh(&["tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", "1mbit", "burst", "32kbit", "latency", "400ms"]);
    let before = tc_root_qdisc(dev);
    let saved = nl.root_qdisc(idx).unwrap().unwrap();
    assert_eq!(saved.kind, "tbf");
    assert!(!saved.is_default_root() && !saved.options.is_empty());

    nl.add_htb_root(idx, 1, 1).unwrap();
    assert_eq!(tc_root_qdisc(dev)["kind"], "htb");

    nl.restore_qdisc(&saved).unwrap();
    let after = tc_root_qdisc(dev);
    assert_eq!(
        (&after["kind"], &after["handle"], &after["options"]),
        (&before["kind"], &before["handle"], &before["options"])
    );
    assert_eq!(nl.root_qdisc(idx).unwrap().unwrap(), saved, "options byte for byte");

    // Restoring over itself (same handle) works too.
    nl.restore_qdisc(&saved).unwrap();
    assert_eq!(nl.root_qdisc(idx).unwrap().unwrap(), saved);
}

#[test]
fn default_roots_come_back_by_deletion() {
    if !root() {
        return;
    }
    let veth = Veth::new(5, true);
    let ifb = "ct-nlifb5";
    sh_quiet(&["ip", "link", "del", ifb]);
    let _guard = LinkGuard(ifb.into());
    let nl = nl();
    let ifb_idx = nl.create_ifb(ifb).unwrap();
    for (dev, idx, kind) in [(veth.a.as_str(), index(&nl, &veth.a), "noqueue"), (ifb, ifb_idx, "pfifo_fast")] {
        let saved = nl.root_qdisc(idx).unwrap().unwrap();
        assert_eq!(saved.kind, kind);
        assert!(saved.is_default_root(), "{saved:?}");
        nl.delete_root_qdisc(idx).unwrap(); // nothing to delete: fine
        nl.add_htb_root(idx, 7, 1).unwrap();
        assert_eq!(tc_root_qdisc(dev)["kind"], "htb");
        nl.restore_qdisc(&saved).unwrap();
        let back = nl.root_qdisc(idx).unwrap().unwrap();
        assert_eq!((back.kind.as_str(), back.handle), (kind, 0));
        assert_eq!(tc_root_qdisc(dev)["kind"], kind);
    }
    // A device never up shows no root: its builtin noop qdisc is not dumped.
    let fresh = Veth::new(11, false);
    let idx = index(&nl, &fresh.a);
    assert_eq!(nl.root_qdisc(idx).unwrap(), None);
    nl.add_htb_root(idx, 1, 1).unwrap();
    nl.delete_root_qdisc(idx).unwrap();
    assert_eq!(nl.root_qdisc(idx).unwrap(), None);
}

#[test]
fn clsact_add_and_delete() {
    if !root() {
        return;
    }
    let veth = Veth::new(6, false);
    let nl = nl();
    let dev = veth.a.as_str();
    let idx = index(&nl, dev);
    let is_clsact = |q: &QdiscInfo| q.kind == "clsact" && q.parent == TC_H_CLSACT && q.handle == 0xFFFF_0000;

    nl.add_clsact(idx).unwrap();
    assert!(nl.qdiscs(idx).unwrap().iter().any(is_clsact));
    assert!(sh(&["tc", "qdisc", "show", "dev", dev]).contains("qdisc clsact ffff: parent ffff:fff1"));
    assert_eq!(nl.add_clsact(idx).unwrap_err().errno(), Some(libc::EEXIST));
    nl.delete_clsact(idx).unwrap();
    assert!(!nl.qdiscs(idx).unwrap().iter().any(is_clsact));
    assert!(!sh(&["tc", "qdisc", "show", "dev", dev]).contains("clsact"));

    // Someone else's ingress qdisc is not ours to delete.
    sh(&["tc", "qdisc", "add", "dev", dev, "ingress"]);
    assert!(nl.delete_clsact(idx).is_err());
    assert!(sh(&["tc", "qdisc", "show", "dev", dev]).contains("qdisc ingress"));
}

#[test]
fn default_route_interfaces_match_ip_route() {
    if !root() {
        return;
    }
    let nl = nl();
    let mut expected = BTreeSet::new();
    for family in ["-4", "-6"] {
        for r in json(&["ip", "-j", family, "route", "show", "default", "table", "main"]).as_array().unwrap() {
            if r.get("type").is_some_and(|t| t != "unicast") {
                continue;
            }
            let devs =
                r.get("dev").into_iter().chain(r["nexthops"].as_array().into_iter().flatten().map(|h| &h["dev"]));
            expected.extend(devs.map(|d| index(&nl, d.as_str().unwrap())));
        }
    }
    let got: BTreeSet<u32> = nl.default_route_interfaces().unwrap().into_iter().collect();
    assert_eq!(got, expected);
}

#[test]
fn default_route_interfaces_in_netns() {
    if !root() {
        return;
    }
    let veth = Veth::new(7, true);
    let ns = veth.ns.clone().unwrap();
    // A second pair inside the namespace: gone with it.
    sh(&["ip", "-n", &ns, "link", "add", "ct-nlC7", "type", "veth", "peer", "name", "ct-nlD7"]);
    sh(&["ip", "-n", &ns, "addr", "add", "10.203.7.1/30", "dev", "ct-nlC7"]);
    for d in ["ct-nlC7", "ct-nlD7"] {
        sh(&["ip", "-n", &ns, "link", "set", d, "up"]);
    }
    let nl = Netlink::new_in_netns(veth.ns_path()).unwrap();
    assert_eq!(nl.default_route_interfaces().unwrap(), Vec::<u32>::new());
    let (b, c, d) = (index(&nl, &veth.b), index(&nl, "ct-nlC7"), index(&nl, "ct-nlD7"));
    assert_eq!(nl.link_index(&veth.a).unwrap(), None, "the root end is not in this namespace");

    sh(&[
        "ip",
        "-n",
        &ns,
        "route",
        "add",
        "default",
        "nexthop",
        "via",
        "10.202.7.1",
        "dev",
        &veth.b,
        "nexthop",
        "via",
        "10.203.7.2",
        "dev",
        "ct-nlC7",
    ]);
    sh(&["ip", "-n", &ns, "-6", "route", "add", "default", "dev", "ct-nlD7"]);
    let mut want = vec![b, c, d];
    want.sort_unstable();
    assert_eq!(nl.default_route_interfaces().unwrap(), want);

    sh(&["ip", "-n", &ns, "route", "del", "default"]);
    assert_eq!(nl.default_route_interfaces().unwrap(), vec![d]);
}

/// Reads events into `seen` until one there is `want`; panics after 5 s.
fn wait_for(events: &mut LinkEvents, seen: &mut Vec<LinkEvent>, want: LinkEvent) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !seen.contains(&want) && Instant::now() < deadline {
        seen.extend(events.next(Duration::from_millis(200)).unwrap());
    }
    assert!(seen.contains(&want), "{want:?} not seen; got {seen:?}");
}

#[test]
fn link_events_added_up_removed() {
    if !root() {
        return;
    }
    let (a, b) = ("ct-nlA8", "ct-nlB8");
    sh_quiet(&["ip", "link", "del", a]);
    let _guard = LinkGuard(a.into());
    let nl = nl();
    let mut events = nl.subscribe_links().unwrap();
    let mut seen = vec![];

    sh(&["ip", "link", "add", a, "type", "veth", "peer", "name", b]);
    let ia = index(&nl, a);
    let ib = index(&nl, b);
    wait_for(&mut events, &mut seen, LinkEvent::Added { index: ia, name: a.into() });
    wait_for(&mut events, &mut seen, LinkEvent::Added { index: ib, name: b.into() });

    sh(&["ip", "link", "set", a, "up"]);
    wait_for(&mut events, &mut seen, LinkEvent::Up { index: ia });
    sh(&["ip", "link", "set", a, "down"]);
    wait_for(&mut events, &mut seen, LinkEvent::Down { index: ia });

    sh(&["ip", "link", "del", a]);
    wait_for(&mut events, &mut seen, LinkEvent::Removed { index: ia, name: a.into() });
    wait_for(&mut events, &mut seen, LinkEvent::Removed { index: ib, name: b.into() });
}

#[test]
fn default_route_events_in_netns() {
    if !root() {
        return;
    }
    let veth = Veth::new(9, true);
    let ns = veth.ns.clone().unwrap();
    let nl = Netlink::new_in_netns(veth.ns_path()).unwrap();
    let mut events = nl.subscribe_links().unwrap();
    let mut seen = vec![];

    sh(&["ip", "-n", &ns, "route", "add", "10.99.0.0/16", "via", "10.202.9.1"]);
    sh(&["ip", "-n", &ns, "route", "add", "default", "via", "10.202.9.1"]);
    wait_for(&mut events, &mut seen, LinkEvent::DefaultRouteChanged);
    assert_eq!(seen, [LinkEvent::DefaultRouteChanged], "a non-default route is no event");

    seen.clear();
    sh(&["ip", "-n", &ns, "route", "del", "default"]);
    wait_for(&mut events, &mut seen, LinkEvent::DefaultRouteChanged);

    // Link events come from the namespace too.
    let ib = index(&nl, &veth.b);
    sh(&["ip", "-n", &ns, "link", "set", &veth.b, "down"]);
    wait_for(&mut events, &mut seen, LinkEvent::Down { index: ib });
}

#[test]
fn link_events_survive_overflow() {
    if !root() {
        return;
    }
    let veth = Veth::new(12, true);
    let ns = veth.ns.clone().unwrap();
    let nl = Netlink::new_in_netns(veth.ns_path()).unwrap();
    let mut events = nl.subscribe_links().unwrap();
    // Far more notifications than the socket buffer holds, unread meanwhile.
    let pairs = 1500;
    let batch: String = (0..pairs).map(|i| format!("link add ct-nlv{i}a type veth peer name ct-nlv{i}b\n")).collect();
    let path = std::env::temp_dir().join(format!("ct-nl12-{}.batch", std::process::id()));
    std::fs::write(&path, batch).unwrap();
    sh(&["ip", "-n", &ns, "-batch", path.to_str().unwrap()]);
    std::fs::remove_file(&path).unwrap();

    let mut added = BTreeSet::new();
    let mut overflowed = false;
    while let Some(e) = events.next(Duration::from_millis(500)).unwrap() {
        match e {
            LinkEvent::Added { name, .. } => assert!(added.insert(name.clone()), "{name} added twice"),
            // No route changes here: this comes from the resync after ENOBUFS.
            LinkEvent::DefaultRouteChanged => overflowed = true,
            _ => {}
        }
    }
    assert_eq!(added.len(), 2 * pairs);
    assert!(overflowed, "the kernel never dropped a notification, so the resync went untested");
}
