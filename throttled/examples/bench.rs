//! Data-path benchmark: accuracy, overhead and per-packet cost of the
//! backends, measured with iperf3 in a test namespace. Prints Markdown.
//!
//! `cargo run --release -p throttled --example bench -- [--rates 256K,1M,10M,100M] [--dirs up,down] [--secs 10] [--skip-overhead]`
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use throttled::{
    manager::{LimitSpec, Manager, ManagerOptions},
    testing::lab::{Lab, MIB},
    Rate,
};

struct Opts {
    rates: Vec<String>,
    dirs: Vec<String>,
    secs: u32,
    overhead: bool,
}

fn parse_args() -> anyhow::Result<Opts> {
    let mut o = Opts {
        rates: ["256K", "1M", "10M", "100M"].map(String::from).to_vec(),
        dirs: vec!["up".into(), "down".into()],
        secs: 10,
        overhead: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().context("missing value");
        match a.as_str() {
            "--rates" => o.rates = val()?.split(',').map(String::from).collect(),
            "--dirs" => o.dirs = val()?.split(',').map(String::from).collect(),
            "--secs" => o.secs = val()?.parse()?,
            "--skip-overhead" => o.overhead = false,
            _ => bail!("unknown argument {a}"),
        }
    }
    if o.secs < 5 {
        bail!("--secs must be at least 5: the first two seconds are skipped");
    }
    Ok(o)
}

struct Accuracy {
    goodput: f64,
    ip_rate: f64,
    ip_min: f64,
    ip_max: f64,
    retrans: Option<u64>,
    segments: f64,
}

/// One throttled run; IP-layer bytes come from the throttle's kernel counters.
fn accuracy(lab: &Lab, m: &Manager, limit: Rate, down: bool, secs: u32) -> anyhow::Result<Accuracy> {
    let c = lab.client("ct-bench", 5201, secs, down);
    let spec = if down {
        LimitSpec { down: Some(limit), ..Default::default() }
    } else {
        LimitSpec { up: Some(limit), ..Default::default() }
    };
    let id = m.limit_pid(c.pid(), &spec)?;
    let start = Instant::now();
    let mut samples = Vec::new();
    for s in 1..secs {
        std::thread::sleep((start + Duration::from_secs(s as u64)).saturating_duration_since(Instant::now()));
        let info = m.info(id)?;
        samples.push(info.directions.values().next().map_or(0, |d| d.counters.pass_bytes) as f64);
    }
    let r = c.wait();
    let per_sec: Vec<f64> = samples.windows(2).map(|w| w[1] - w[0]).collect();
    let k = |v: &[f64]| v.iter().map(|x| (x / 1024.0).round() as i64).collect::<Vec<_>>();
    eprintln!("{limit} down={down}: goodput KiB/s {:?}; IP-layer KiB/s {:?}", k(&r.intervals), k(&per_sec));
    // Skip the first two seconds, as the tests do.
    let steady = &per_sec[1.min(per_sec.len())..];
    let l = limit.bytes_per_sec() as f64;
    Ok(Accuracy {
        goodput: r.mean(2, secs as usize) / l,
        ip_rate: steady.iter().sum::<f64>() / steady.len().max(1) as f64 / l,
        ip_min: steady.iter().copied().fold(f64::MAX, f64::min) / l,
        ip_max: steady.iter().copied().fold(0.0, f64::max) / l,
        retrans: r.retransmits,
        segments: r.sent_bytes / 1448.0,
    })
}

fn unthrottled(lab: &Lab, down: bool) -> f64 {
    let r = lab.client("ct-bench-free", 5201, 4, down).wait();
    r.mean(1, 4)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Throughput with the programs attached (and another process throttled,
/// so packets take the full lookup path) over without them: the median of
/// per-round ratios, alternating, because a 2-CPU VM is noisy.
fn overhead(lab: &Lab, down: bool) -> anyhow::Result<(f64, f64, f64)> {
    let (mut without, mut with, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        let a = unthrottled(lab, down);
        let m = Manager::start(&ManagerOptions::default())?;
        let mut other = std::process::Command::new("sleep").arg("60").spawn()?;
        m.limit_pid(
            other.id(),
            &LimitSpec { down: Some("1M".parse()?), up: Some("1M".parse()?), ..Default::default() },
        )?;
        let b = unthrottled(lab, down);
        let _ = other.kill();
        let _ = other.wait();
        drop(m);
        without.push(a);
        with.push(b);
        ratios.push(b / a);
    }
    Ok((median(without), median(with), median(ratios)))
}

fn prog_stats() -> BTreeMap<String, (u64, u64)> {
    aya::programs::loaded_programs()
        .flatten()
        .filter_map(|p| {
            let name = p.name_as_str()?.to_string();
            name.starts_with("ct_").then(|| (name, (p.run_time().as_nanos() as u64, p.run_count())))
        })
        .collect()
}

/// ns/packet of the packet programs while `f` runs, from kernel bpf_stats.
fn ns_per_packet(f: impl FnOnce()) -> anyhow::Result<BTreeMap<String, f64>> {
    const KNOB: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let old = std::fs::read_to_string(KNOB)?;
    std::fs::write(KNOB, "1")?;
    let before = prog_stats();
    f();
    let after = prog_stats();
    std::fs::write(KNOB, old.trim())?;
    Ok(after
        .into_iter()
        .filter(|(n, _)| n == "ct_egress" || n == "ct_ingress")
        .map(|(n, (t, c))| {
            let (t0, c0) = before.get(&n).copied().unwrap_or_default();
            (n, (t - t0) as f64 / (c - c0).max(1) as f64)
        })
        .collect())
}

fn main() -> anyhow::Result<()> {
    let o = parse_args()?;
    let mut lab = Lab::new(90);
    lab.server(5201);
    println!(
        "Kernel {}, {} CPUs, CT_TUNE={:?}\n",
        uname(),
        std::thread::available_parallelism()?,
        std::env::var("CT_TUNE").ok()
    );
    println!(
        "| backend | direction | limit | goodput / limit | IP-layer rate / limit | per-second min–max | retransmits |"
    );
    println!("|---|---|---|---|---|---|---|");
    let m = Manager::start(&ManagerOptions::default())?;
    for dir in &o.dirs {
        for rate in &o.rates {
            let limit: Rate = rate.parse()?;
            let a = accuracy(&lab, &m, limit, dir == "down", o.secs)?;
            let rt =
                a.retrans.map_or("n/a".into(), |r| format!("{r} ({:.2}%)", 100.0 * r as f64 / a.segments.max(1.0)));
            println!(
                "| ebpf | {dir} | {rate} | {:.3} | {:.3} | {:.2}–{:.2} | {rt} |",
                a.goodput, a.ip_rate, a.ip_min, a.ip_max
            );
        }
    }
    if !o.overhead {
        return Ok(());
    }
    let mut ns = BTreeMap::new();
    let floor = ns_per_packet(|| {
        lab.client_in_ns("ct-bench-lo", "127.0.0.1", 5201, 3).wait();
    })?;
    ns.insert("1. loopback: returns at the first check (measurement floor)", floor);
    let idle = ns_per_packet(|| {
        unthrottled(&lab, false);
        unthrottled(&lab, true);
    })?;
    ns.insert("2. unthrottled, no throttle active (idle daemon)", idle);
    let mut other = std::process::Command::new("sleep").arg("60").spawn()?;
    let id = m.limit_pid(
        other.id(),
        &LimitSpec { down: Some("1M".parse()?), up: Some("1M".parse()?), ..Default::default() },
    )?;
    let busy = ns_per_packet(|| {
        unthrottled(&lab, false);
        unthrottled(&lab, true);
    })?;
    m.remove(id)?;
    let _ = other.kill();
    let _ = other.wait();
    ns.insert("3. unthrottled, another process throttled", busy);
    let limited = ns_per_packet(|| {
        let _ = accuracy(&lab, &m, "10M".parse().unwrap(), false, 5);
        let _ = accuracy(&lab, &m, "10M".parse().unwrap(), true, 5);
    })?;
    ns.insert("4. throttled at 10M (ebpf bucket)", limited);
    drop(m);
    println!("\n| traffic | ct_egress ns/packet | ct_ingress ns/packet |");
    println!("|---|---|---|");
    for (what, v) in &ns {
        println!("| {what} | {:.0} | {:.0} |", v.get("ct_egress").unwrap_or(&0.0), v.get("ct_ingress").unwrap_or(&0.0));
    }
    println!(
        "\n| direction | without programs | with programs, another process throttled | ratio (median of 5 rounds) |"
    );
    println!("|---|---|---|---|");
    for (name, down) in [("up", false), ("down", true)] {
        let (a, b, r) = overhead(&lab, down)?;
        println!("| {name} | {:.0} MiB/s | {:.0} MiB/s | {r:.3} |", a / MIB, b / MIB);
    }
    Ok(())
}

fn uname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}
