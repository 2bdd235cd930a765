//! Priorities and caps benchmark (issue 18): how throttles share a
//! capacity, ours against a hand-written HTB tree, both directions at a
//! 20 ms round trip (the test kit's delay line). Prints Markdown.
//!
//! `cargo run --release -p throttle-bench --bin bench_share -- [--secs 14] [--caps-only]`
//!
//! - Priorities: a high and a low flow saturate a 6 MiB/s capacity (our
//!   `[link]` capacity, or our `all` cap; HTB: rate 4.8M/1.2M, ceil 6M,
//!   prio 0/1 under a 6M parent). The high flow stops halfway: the low one
//!   should take the whole capacity within 2 s.
//! - Caps: A (its own 1M) and B in a 3 MiB/s user cap, C outside it, all
//!   under a 4 MiB/s `all` cap (HTB: A 1M under a 3M class with B, C beside
//!   it, all under 4M; each class must be given a rate up front). Ours once
//!   with every cap on `ebpf`, once with A's throttle and the `all` cap on
//!   our HTB backend (the cap is the top class of its tree).
use std::time::Duration;

use throttle_bench::{
    options,
    tc_script::{Class, Script},
};
use throttle_testkit::{
    lab::{IperfResult, Lab, MIB},
    ScratchDir,
};
use throttled::{
    config::LinkCapacity,
    limit::Priority,
    manager::{LimitSpec, Manager},
    target::Target,
    Rate,
};

/// Application bytes per IP-layer byte of full-size IPv4 segments.
const GOODPUT: f64 = 1448.0 / 1500.0;
const UID: u32 = 64_123;

fn rate(s: &str) -> Rate {
    s.parse().expect("a rate")
}

/// A limit in one direction, on `ebpf` or as a priority alone.
fn spec(down: bool, r: Option<&str>, prio: Option<Priority>) -> LimitSpec {
    let r = r.map(rate);
    let (down, up) = if down { (r, None) } else { (None, r) };
    LimitSpec { down, up, priority: prio, backend: r.map(|_| "ebpf".to_string()), ..Default::default() }
}

/// IP-layer MiB/s of a flow over seconds `[from, to)`.
fn mib(r: &IperfResult, from: usize, to: usize) -> f64 {
    r.mean(from, to) / GOODPUT / MIB
}

fn name(down: bool) -> &'static str {
    if down {
        "down"
    } else {
        "up"
    }
}

enum Setup {
    /// Priority-only `ebpf` throttles under our `[link]` capacity.
    Link,
    /// The same under our `all` cap.
    AllCap,
    /// Our HTB backends (`ifb_tc` down, `tc_htb` up): 6M limits with a
    /// priority under the `[link]` capacity.
    OurHtb,
    /// The hand-written HTB tree.
    Htb,
}

/// The priority run: returns (high, low, together, low alone 2 s after).
fn priorities(lab: &Lab, setup: &Setup, down: bool, secs: u32) -> anyhow::Result<[f64; 4]> {
    let half = secs / 2;
    // A fresh state each time: a saved throttle of the run before would come back.
    let state = ScratchDir::new("bench-share");
    let mut keep: (Option<Manager>, Option<Script>) = (None, None);
    match setup {
        Setup::Htb => {
            let parent = Class { id: "1:1", parent: "1:", rate: rate("6M"), ceil: rate("6M"), prio: 0, port: None };
            let hi =
                Class { id: "1:10", parent: "1:1", rate: rate("4.8M"), ceil: rate("6M"), prio: 0, port: Some(5201) };
            let lo =
                Class { id: "1:20", parent: "1:1", rate: rate("1.2M"), ceil: rate("6M"), prio: 1, port: Some(5202) };
            keep.1 = Some(Script::tree(lab, &[parent, hi, lo], down, false)?);
        }
        _ => {
            let m = Manager::start(&options(&state, &[&lab.veth]))?;
            match setup {
                Setup::AllCap => drop(m.limit(Target::All, &spec(down, Some("6M"), None))?),
                _ => m.set_link_capacity(LinkCapacity { down: Some(rate("6M")), up: Some(rate("6M")) }),
            }
            let shaper = if down { "ifb_tc" } else { "tc_htb" };
            for (n, p) in [("ct-sh-hi", Priority::High), ("ct-sh-lo", Priority::Low)] {
                let s = match setup {
                    Setup::OurHtb => LimitSpec { backend: Some(shaper.into()), ..spec(down, Some("6M"), Some(p)) },
                    _ => spec(down, None, Some(p)),
                };
                m.limit(Target::name(n)?, &s)?;
            }
            keep.0 = Some(m);
        }
    }
    let lo = lab.client_with("ct-sh-lo", &lab.server_ip, 5202, secs, down, &[]);
    let hi = lab.client_with("ct-sh-hi", &lab.server_ip, 5201, half, down, &[]);
    let (hi, lo) = (hi.wait(), lo.wait());
    drop(keep);
    settle(lab);
    let (h, l) = (mib(&hi, 2, half as usize), mib(&lo, 2, half as usize));
    let after = lo.intervals.get(half as usize + 2).copied().unwrap_or(0.0) / GOODPUT / MIB;
    Ok([h, l, (h + l) / 6.0, after / 6.0])
}

/// Who enforces the caps run.
#[derive(Clone, Copy, PartialEq)]
enum Caps {
    /// Our caps on `ebpf` (A's own throttle too).
    Ebpf,
    /// A's own throttle and the `all` cap (the tree's top class) on our HTB
    /// backend, the user cap on `ebpf`.
    OurHtb,
    /// The hand-written HTB tree.
    Script,
}

/// The caps run: returns (A, B, C, A+B of 3M, all of 4M, retransmits).
fn caps(lab: &Lab, setup: Caps, down: bool, secs: u32) -> anyhow::Result<([f64; 5], u64)> {
    let state = ScratchDir::new("bench-share");
    let mut keep: (Option<Manager>, Option<Script>) = (None, None);
    if setup == Caps::Script {
        let c = |id, parent, r: &str, ceil: &str, port| Class {
            id,
            parent,
            rate: rate(r),
            ceil: rate(ceil),
            prio: 0,
            port,
        };
        let classes = [
            c("1:1", "1:", "4M", "4M", None),
            c("1:2", "1:1", "3M", "3M", None),
            c("1:10", "1:2", "1M", "1M", Some(5201)),
            c("1:20", "1:2", "1M", "3M", Some(5202)),
            c("1:30", "1:1", "1M", "4M", Some(5203)),
        ];
        keep.1 = Some(Script::tree(lab, &classes, down, false)?);
    } else {
        let m = Manager::start(&options(&state, &[&lab.veth]))?;
        let on = |s: LimitSpec| match setup {
            Caps::OurHtb => LimitSpec { backend: Some(if down { "ifb_tc" } else { "tc_htb" }.into()), ..s },
            _ => s,
        };
        m.limit(Target::name("ct-sh-a")?, &on(spec(down, Some("1M"), None)))?;
        m.limit(Target::User { uid: UID }, &spec(down, Some("3M"), None))?;
        m.limit(Target::All, &on(spec(down, Some("4M"), None)))?;
        keep.0 = Some(m);
    }
    let a = lab.client_as(UID, "ct-sh-a", &lab.server_ip, 5201, secs, down);
    let b = lab.client_as(UID, "ct-sh-b", &lab.server_ip, 5202, secs, down);
    let c = lab.client_with("ct-sh-c", &lab.server_ip, 5203, secs, down, &[]);
    let (a, b, c) = (a.wait(), b.wait(), c.wait());
    drop(keep);
    settle(lab);
    let n = secs as usize;
    let (fa, fb, fc) = (mib(&a, 2, n), mib(&b, 2, n), mib(&c, 2, n));
    let retrans = [&a, &b, &c].iter().filter_map(|r| r.retransmits).sum();
    Ok(([fa, fb, fc, (fa + fb) / 3.0, (fa + fb + fc) / 4.0], retrans))
}

/// A shaper's queue may still drain into the servers.
fn settle(lab: &Lab) {
    std::thread::sleep(Duration::from_secs(2));
    for port in [5201, 5202, 5203] {
        lab.wait_idle(port);
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let secs = args.iter().position(|a| a == "--secs").and_then(|i| args.get(i + 1)?.parse().ok()).unwrap_or(14);
    let mut lab = Lab::with_delay(242, Duration::from_millis(10));
    for port in [5201, 5202, 5203] {
        lab.server(port);
    }
    if !args.iter().any(|a| a == "--caps-only") {
        priority_table(&lab, secs)?;
    }
    caps_table(&lab, secs)
}

fn priority_table(lab: &Lab, secs: u32) -> anyhow::Result<()> {
    println!("\nPriorities: a high and a low flow under 6 MiB/s, 20 ms RTT, {secs} s (the high one stops at {} s); MiB/s at the IP layer\n", secs / 2);
    println!("| setup | direction | high | low | together / 6M | low alone, 2 s after / 6M |");
    println!("|---|---|---|---|---|---|");
    for down in [true, false] {
        let setups = [
            ("ours, ebpf, `[link]` 6M", Setup::Link),
            ("ours, ebpf, `--all` 6M", Setup::AllCap),
            ("ours, HTB backend, `[link]` 6M", Setup::OurHtb),
            ("tc script (HTB prio)", Setup::Htb),
        ];
        for (label, setup) in setups {
            let [h, l, t, after] = priorities(lab, &setup, down, secs)?;
            println!("| {label} | {} | {h:.2} | {l:.2} | {t:.3} | {after:.3} |", name(down));
        }
    }
    Ok(())
}

fn caps_table(lab: &Lab, secs: u32) -> anyhow::Result<()> {
    println!("\nCaps: A (own 1M) and B under a 3M user cap, C outside it, all under 4M; 20 ms RTT, {secs} s; MiB/s at the IP layer\n");
    println!("| setup | direction | A | B | C | A+B / 3M | all / 4M | retransmits |");
    println!("|---|---|---|---|---|---|---|---|");
    for down in [true, false] {
        let setups = [
            ("ours (ebpf caps)", Caps::Ebpf),
            ("ours (all cap: our HTB tree's top)", Caps::OurHtb),
            ("tc script (HTB tree)", Caps::Script),
        ];
        for (label, setup) in setups {
            let ([a, b, c, ab, all], re) = caps(lab, setup, down, secs)?;
            println!("| {label} | {} | {a:.2} | {b:.2} | {c:.2} | {ab:.3} | {all:.3} | {re} |", name(down));
        }
    }
    Ok(())
}
