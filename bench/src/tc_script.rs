//! The hand-written baseline: what a user of `tc` would type (the
//! TrafficToll/wondershaper way), run with the `tc` and `ip` commands. An
//! HTB tree on the lab's veth (uploads) or on an IFB that the veth's
//! ingress redirects to (downloads), classes matched by the flows' ports
//! with u32 filters.
use std::process::Command;

use anyhow::{bail, Context as _};
use throttle_testkit::lab::Lab;
use throttled::{
    kernel::netlink::{ClassStats, Netlink},
    Rate,
};

pub const IFB: &str = "ctb-ifb";

pub fn run(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0]).args(&args[1..]).output().with_context(|| args[0].to_string())?;
    if !out.status.success() {
        bail!("{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn quiet(args: &[&str]) {
    let _ = Command::new(args[0]).args(&args[1..]).output();
}

fn bps(r: Rate) -> String {
    format!("{}bps", r.bytes_per_sec())
}

pub fn class(dev: &str, classid: &str, limit: Rate) -> anyhow::Result<()> {
    let r = bps(limit);
    run(&["tc", "class", "add", "dev", dev, "parent", "1:", "classid", classid, "htb", "rate", &r, "ceil", &r])
}

/// `tc filter`'s protocol and u32 match keyword for a family.
fn family(v6: bool) -> (&'static str, &'static str) {
    if v6 {
        ("ipv6", "ip6")
    } else {
        ("ip", "ip")
    }
}

pub fn filter(dev: &str, port_match: &str, port: u16, classid: &str, v6: bool) -> anyhow::Result<()> {
    let (proto, sel) = family(v6);
    let p = port.to_string();
    let m = ["match", sel, port_match, &p, "0xffff", "flowid", classid];
    run(&[&["tc", "filter", "add", "dev", dev, "parent", "1:", "protocol", proto, "prio", "1", "u32"][..], &m].concat())
}

/// One HTB class of a hand-written tree: guaranteed `rate`, borrowing up
/// to `ceil` from `parent`, served by `prio` (0 first) when borrowing, and
/// the flow on `port` in it (none for an inner class).
pub struct Class<'a> {
    pub id: &'a str,
    pub parent: &'a str,
    pub rate: Rate,
    pub ceil: Rate,
    pub prio: u8,
    pub port: Option<u16>,
}

impl Class<'_> {
    fn add(&self, dev: &str, port_match: &str, v6: bool) -> anyhow::Result<()> {
        let (rate, ceil, prio) = (bps(self.rate), bps(self.ceil), self.prio.to_string());
        let c = ["tc", "class", "add", "dev", dev, "parent", self.parent, "classid", self.id, "htb"];
        run(&[&c[..], &["rate", &rate, "ceil", &ceil, "prio", &prio]].concat())?;
        match self.port {
            Some(port) => filter(dev, port_match, port, self.id, v6),
            None => Ok(()),
        }
    }
}

/// HTB with an unlimited default class and one limited class for `port`.
pub fn htb(dev: &str, limit: Rate, port_match: &str, port: u16, v6: bool) -> anyhow::Result<()> {
    let one = Class { id: "1:10", parent: "1:", rate: limit, ceil: limit, prio: 0, port: Some(port) };
    tree(dev, &[one], port_match, v6)
}

/// An HTB root with an unlimited default class, and `classes` in order
/// (parents first).
pub fn tree(dev: &str, classes: &[Class<'_>], port_match: &str, v6: bool) -> anyhow::Result<()> {
    run(&["tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "99"])?;
    run(&["tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:99", "htb", "rate", "100gbit"])?;
    classes.iter().try_for_each(|c| c.add(dev, port_match, v6))
}

/// A hand-written setup on the lab, removed on drop.
pub struct Script {
    dev: String,
    shaped: String,
    down: bool,
    nl: Netlink,
}

impl Script {
    /// One class at `limit` for the flow on port 5201.
    pub fn apply(lab: &Lab, limit: Rate, down: bool, v6: bool) -> anyhow::Result<Script> {
        let one = Class { id: "1:10", parent: "1:", rate: limit, ceil: limit, prio: 0, port: Some(5201) };
        Script::tree(lab, &[one], down, v6)
    }

    /// `classes` on the veth (uploads, matched by destination port) or on
    /// an IFB fed by the veth's ingress (downloads, by source port).
    pub fn tree(lab: &Lab, classes: &[Class<'_>], down: bool, v6: bool) -> anyhow::Result<Script> {
        let dev = lab.veth.clone();
        let s = Script { shaped: if down { IFB.into() } else { dev.clone() }, dev, down, nl: Netlink::new()? };
        if down {
            run(&["ip", "link", "add", IFB, "type", "ifb"])?;
            run(&["ip", "link", "set", IFB, "up"])?;
            run(&["tc", "qdisc", "add", "dev", &s.dev, "handle", "ffff:", "ingress"])?;
            let redirect = ["action", "mirred", "egress", "redirect", "dev", IFB];
            let (proto, _) = family(v6);
            let f = ["tc", "filter", "add", "dev", &s.dev, "parent", "ffff:", "protocol", proto, "u32"];
            run(&[&f[..], &["match", "u32", "0", "0"], &redirect].concat())?;
            tree(IFB, classes, "sport", v6)?;
        } else {
            tree(&s.dev, classes, "dport", v6)?;
        }
        Ok(s)
    }

    /// The counters of class 1:10.
    pub fn class_stats(&self) -> anyhow::Result<ClassStats> {
        self.stats_of(0x1_0010)
    }

    pub fn stats_of(&self, classid: u32) -> anyhow::Result<ClassStats> {
        let idx = self.nl.link_index(&self.shaped)?.context("shaped device vanished")?;
        Ok(self.nl.class_stats(idx, classid)?)
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        quiet(&["tc", "qdisc", "del", "dev", &self.dev, "root"]);
        if self.down {
            quiet(&["tc", "qdisc", "del", "dev", &self.dev, "ingress"]);
            quiet(&["ip", "link", "del", IFB]);
        }
    }
}
