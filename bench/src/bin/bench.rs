//! Data-path benchmark: accuracy, overhead and per-packet cost of the
//! backends, measured with iperf3 in a test namespace. Prints Markdown.
//!
//! `cargo run --release -p throttle-bench --bin bench -- [--rates 256K,1M,10M,100M] [--dirs up,down]
//!  [--backends ebpf,tc_htb,ifb_tc,tc-script] [--secs 10] [--warmup 2] [--rtts 0.05,20,80]
//!  [--skip-overhead] [--skip-control] [--plot-csv PATH [--plot-at RTT]]`
//!
//! `--rtts` (ms): 0.05 is the plain veth lab; larger round trips go through
//! the test kit's delay line (`Lab::with_delay`), half of it each way.
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use throttle_bench::{options, tc_script};
use throttle_common::Direction;
use throttle_testkit::{
    lab::{Lab, MIB},
    progs::{prog_stats, run_stats},
};
use throttled::{
    manager::{LimitSpec, Manager, ManagerOptions},
    Rate,
};

struct Opts {
    rates: Vec<String>,
    dirs: Vec<String>,
    backends: Vec<String>,
    secs: u32,
    overhead: bool,
    /// Only the per-packet cost table.
    cost_only: bool,
    /// Where to write the per-second series of the 10M runs (for the plot).
    plot_csv: Option<String>,
    /// The round trip (ms) whose 10M runs go to `plot_csv`.
    plot_at: f64,
    /// Round trips to measure accuracy at, in ms.
    rtts: Vec<f64>,
    /// Seconds at the start of a run left out of the rates.
    warmup: u32,
    /// Skip the time-to-apply table.
    skip_control: bool,
    /// Measure over IPv6 (the lab's fd20:: addresses) instead of IPv4.
    v6: bool,
}

fn parse_args() -> anyhow::Result<Opts> {
    let mut o = Opts {
        rates: ["256K", "1M", "10M", "100M"].map(String::from).to_vec(),
        dirs: vec!["up".into(), "down".into()],
        backends: ["ebpf", "tc_htb", "ifb_tc", "tc-script"].map(String::from).to_vec(),
        secs: 10,
        overhead: true,
        cost_only: false,
        plot_csv: None,
        plot_at: BASE_RTT_MS,
        rtts: vec![BASE_RTT_MS],
        warmup: 2,
        skip_control: false,
        v6: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().context("missing value");
        match a.as_str() {
            "--rates" => o.rates = val()?.split(',').map(String::from).collect(),
            "--dirs" => o.dirs = val()?.split(',').map(String::from).collect(),
            "--backends" => o.backends = val()?.split(',').map(String::from).collect(),
            "--secs" => o.secs = val()?.parse()?,
            "--skip-overhead" => o.overhead = false,
            "--cost-only" => o.cost_only = true,
            "--plot-csv" => o.plot_csv = Some(val()?),
            "--plot-at" => o.plot_at = val()?.parse()?,
            "--rtts" => o.rtts = val()?.split(',').map(str::parse).collect::<Result<_, _>>()?,
            "--warmup" => o.warmup = val()?.parse()?,
            "--skip-control" => o.skip_control = true,
            "--family" => {
                o.v6 = match val()?.as_str() {
                    "4" => false,
                    "6" => true,
                    f => bail!("--family is 4 or 6, not {f}"),
                }
            }
            _ => bail!("unknown argument {a}"),
        }
    }
    if o.warmup < 1 || o.secs < o.warmup + 3 {
        bail!("--warmup must be at least 1 and --secs at least 3 more: the first seconds are skipped");
    }
    Ok(o)
}

/// The plain veth lab's round trip, in ms.
const BASE_RTT_MS: f64 = 0.05;

/// The lab for a round trip: the plain veth pair, or the delay line.
fn lab_for(rtt_ms: f64) -> Lab {
    if rtt_ms <= BASE_RTT_MS {
        Lab::new(240)
    } else {
        Lab::with_delay(241, Duration::from_secs_f64(rtt_ms / 2000.0))
    }
}

struct Accuracy {
    goodput: f64,
    ip_rate: f64,
    ip_min: f64,
    ip_max: f64,
    retrans: Option<u64>,
    segments: f64,
    rtt_ms: Option<f64>,
    /// Packets the limit dropped, as a share of those that reached it: on
    /// download they had crossed the link already.
    dropped: f64,
    /// IP-layer bytes per second, every second of the run.
    per_sec: Vec<f64>,
}

/// How a limit is put in place: one of our backends, or the hand-written
/// `tc` commands a user would otherwise run (the TrafficToll/wondershaper
/// way: HTB classes and a u32 filter on the flow's port).
enum Limiter<'a> {
    Backend(&'a Manager, &'a str),
    /// The lab, and whether the flow is IPv6 (the script's filters name a family).
    TcScript(&'a Lab, bool),
}

/// What the limit did so far, as the kernel counts.
#[derive(Clone, Copy, Default)]
struct Passed {
    /// IP-layer bytes let through.
    bytes: u64,
    /// Packets let through and dropped (GSO/GRO aggregates count once).
    packets: u64,
    drops: u64,
}

trait Applied {
    fn passed(&self) -> anyhow::Result<Passed>;
}

struct BackendLimit<'a>(&'a Manager, u32);
impl Applied for BackendLimit<'_> {
    fn passed(&self) -> anyhow::Result<Passed> {
        let info = self.0.info(self.1)?;
        let c = info.directions.values().next().map(|d| d.counters).unwrap_or_default();
        Ok(Passed { bytes: c.pass_bytes, packets: c.pass_pkts, drops: c.drop_pkts })
    }
}

impl Applied for tc_script::Script {
    fn passed(&self) -> anyhow::Result<Passed> {
        let s = self.class_stats()?;
        Ok(Passed { bytes: s.bytes, packets: s.packets, drops: s.drops })
    }
}

fn spec_for(backend: &str, limit: Rate, down: bool) -> LimitSpec {
    let mut spec = LimitSpec { backend: Some(backend.to_string()), ..Default::default() };
    if down {
        spec.down = Some(limit)
    } else {
        spec.up = Some(limit)
    }
    spec
}

fn apply<'a>(l: &Limiter<'a>, pid: u32, limit: Rate, down: bool) -> anyhow::Result<Box<dyn Applied + 'a>> {
    Ok(match *l {
        Limiter::Backend(m, name) => Box::new(BackendLimit(m, m.limit_pid(pid, &spec_for(name, limit, down))?)),
        Limiter::TcScript(lab, v6) => Box::new(tc_script::Script::apply(lab, limit, down, v6)?),
    })
}

/// One limited run; IP-layer bytes are sampled from the kernel once a second,
/// and the first `warmup` seconds are left out of the rates.
/// `ip` is one of the server's addresses: the family measured.
fn accuracy(
    lab: &Lab,
    l: &Limiter<'_>,
    limit: Rate,
    down: bool,
    ip: &str,
    secs: u32,
    warmup: u32,
) -> anyhow::Result<Accuracy> {
    let c = lab.client_to("ct-bench", ip, 5201, secs, down);
    let applied = apply(l, c.pid(), limit, down)?;
    let start = Instant::now();
    let mut samples = Vec::new();
    for s in 1..secs {
        std::thread::sleep((start + Duration::from_secs(s as u64)).saturating_duration_since(Instant::now()));
        // The throttle ends with its process: a client that finished a
        // moment early ends the sampling, not the benchmark.
        match applied.passed() {
            Ok(p) => samples.push(p),
            Err(_) => break,
        }
    }
    let last = samples.last().copied().unwrap_or_default();
    let dropped = last.drops as f64 / (last.packets + last.drops).max(1) as f64;
    let r = c.wait();
    drop(applied);
    // A slow shaper's queue may still be draining into the server, which
    // refuses the next client until its test ends.
    std::thread::sleep(Duration::from_secs(2));
    lab.wait_idle(5201);
    // Another daemon starting on this machine sweeps our objects, and the
    // Manager rebuilds them with fresh counters: that run measures nothing.
    if samples.windows(2).any(|w| w[1].bytes < w[0].bytes) {
        bail!("the limit's counters went back: its objects were rebuilt");
    }
    let per_sec: Vec<f64> = samples.windows(2).map(|w| (w[1].bytes - w[0].bytes) as f64).collect();
    let k = |v: &[f64]| v.iter().map(|x| (x / 1024.0).round() as i64).collect::<Vec<_>>();
    eprintln!("{limit} down={down}: goodput KiB/s {:?}; IP-layer KiB/s {:?}", k(&r.intervals), k(&per_sec));
    // per_sec[0] is second 1 to 2.
    let steady = &per_sec[(warmup as usize - 1).min(per_sec.len())..];
    let l = limit.bytes_per_sec() as f64;
    Ok(Accuracy {
        goodput: r.mean(warmup as usize, secs as usize) / l,
        ip_rate: steady.iter().sum::<f64>() / steady.len().max(1) as f64 / l,
        ip_min: steady.iter().copied().fold(f64::MAX, f64::min) / l,
        ip_max: steady.iter().copied().fold(0.0, f64::max) / l,
        retrans: r.retransmits,
        segments: r.sent_bytes / 1448.0,
        rtt_ms: r.mean_rtt_us.map(|u| u / 1000.0),
        dropped,
        per_sec,
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

/// Throughput with our objects in place (another process throttled with
/// `backends`, so unthrottled packets take the full lookup path, and for
/// the shapers go through HTB and the ingress classifier) over without:
/// the median of per-round ratios, alternating, because a 2-CPU VM is noisy.
fn overhead(lab: &Lab, opts: &ManagerOptions, backends: (&str, &str), down: bool) -> anyhow::Result<(f64, f64, f64)> {
    let (mut without, mut with, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        let a = unthrottled(lab, down);
        let m = Manager::start(opts)?;
        let mut other = std::process::Command::new("sleep").arg("60").spawn()?;
        let one = Some(Rate::from_bytes(1 << 20)?);
        let spec = LimitSpec {
            down: one,
            up: one,
            up_backend: Some(backends.0.into()),
            down_backend: Some(backends.1.into()),
            ..Default::default()
        };
        m.limit_pid(other.id(), &spec)?;
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

/// Median time to put one more limit in place once the backend is set up.
fn apply_time(l: &Limiter<'_>, down: bool) -> anyhow::Result<Duration> {
    let mut procs: Vec<_> =
        (0..21).map(|_| std::process::Command::new("sleep").arg("60").spawn()).collect::<Result<_, _>>()?;
    let mut times = Vec::new();
    let one = Rate::from_bytes(1 << 20)?;
    match *l {
        Limiter::Backend(m, name) => {
            let mut ids = Vec::new();
            for (i, p) in procs.iter().enumerate() {
                let t = Instant::now();
                ids.push(m.limit_pid(p.id(), &spec_for(name, one, down))?);
                if i > 0 {
                    times.push(t.elapsed()); // the first one also sets the backend up
                }
            }
            ids.into_iter().try_for_each(|id| m.remove(id))?;
        }
        Limiter::TcScript(lab, v6) => {
            let dev = &lab.veth;
            tc_script::run(&["tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "99"])?;
            for i in 0..20u16 {
                let cls = format!("1:{:x}", 0x100 + i);
                let t = Instant::now();
                tc_script::class(dev, &cls, one)?;
                tc_script::filter(dev, "dport", 6000 + i, &cls, v6)?;
                times.push(t.elapsed());
            }
            tc_script::run(&["tc", "qdisc", "del", "dev", dev, "root"])?;
        }
    }
    for p in &mut procs {
        let _ = p.kill();
        let _ = p.wait();
    }
    times.sort();
    Ok(times[times.len() / 2])
}

/// Starts a manager and finds its programs: the `ct_` ids that appeared.
fn start_measured(opts: &ManagerOptions) -> anyhow::Result<(Manager, Vec<u32>)> {
    let others: Vec<u32> = prog_stats().into_keys().collect();
    let m = Manager::start(opts)?;
    let mine = prog_stats().into_keys().filter(|id| !others.contains(id)).collect();
    Ok((m, mine))
}

/// ns/packet of the packet programs while `f` runs; `ct_sockops` is its
/// run time per egress packet (its per-ACK callback runs as TCP builds
/// each segment it sends).
fn ns_per_packet(mine: &[u32], f: impl FnOnce()) -> anyhow::Result<BTreeMap<String, f64>> {
    let s = run_stats(mine, f)?;
    let per = |t: u64, c: u64| t as f64 / c.max(1) as f64;
    let mut ns: BTreeMap<String, f64> = s
        .iter()
        .filter(|(n, _)| *n == "ct_egress" || *n == "ct_ingress")
        .map(|(n, &(t, c))| (n.clone(), per(t, c)))
        .collect();
    let egress = s.get("ct_egress").map_or(0, |e| e.1);
    if let Some(&(t, _)) = s.get("ct_sockops") {
        ns.insert("ct_sockops".into(), per(t, egress));
    }
    eprintln!("program: (run time ns, runs) {s:?}");
    Ok(ns)
}

fn main() -> anyhow::Result<()> {
    let o = parse_args()?;
    // Repairs (e.g. after another daemon's start-up sweep) show on stderr.
    tracing_subscriber::fmt().with_max_level(tracing::Level::WARN).with_writer(std::io::stderr).init();
    println!(
        "Kernel {}, {} CPUs, CT_TUNE={:?}\n",
        uname(),
        std::thread::available_parallelism()?,
        std::env::var("CT_TUNE").ok()
    );
    let state = throttle_testkit::ScratchDir::new("bench");
    if o.cost_only {
        let mut lab = lab_for(BASE_RTT_MS);
        lab.server(5201);
        return print_cost(&lab, &options(&state, &[&lab.veth]));
    }
    println!(
        "| backend | direction | limit | round trip | goodput / limit | IP-layer rate / limit | per-second min–max \
         | retransmits | dropped after crossing the link | sender's mean RTT |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut control = Vec::new();
    let mut series = Vec::new();
    for (i, &rtt) in o.rtts.iter().enumerate() {
        let mut lab = lab_for(rtt);
        lab.server(5201);
        let m = Manager::start(&options(&state, &[&lab.veth]))?;
        for backend in &o.backends {
            for dir in &o.dirs {
                let Some(l) = limiter(&m, &lab, backend, dir == "down", o.v6) else { continue };
                for rate in &o.rates {
                    let ip = if o.v6 { &lab.server_ip6 } else { &lab.server_ip };
                    let run = || accuracy(&lab, &l, rate.parse()?, dir == "down", ip, o.secs, o.warmup);
                    let a = (1..8).fold(run(), |a, n| {
                        a.or_else(|e| {
                            eprintln!("{backend} {dir} {rate} at {rtt} ms: {e}; retry {n}");
                            run()
                        })
                    })?;
                    print_row(backend, dir, rate, rtt, &a);
                    if rate == "10M" && rtt == o.plot_at {
                        series.push((format!("{backend} {dir}"), a.per_sec.clone()));
                    }
                }
                if i == 0 && !o.skip_control {
                    control.push((backend.clone(), dir.clone(), apply_time(&l, dir == "down")?));
                }
            }
        }
    }
    if let Some(path) = &o.plot_csv {
        write_series(path, &series)?;
    }
    if !o.skip_control {
        println!("\n| backend | direction | time to apply one more limit (median of 20) |");
        println!("|---|---|---|");
        for (b, d, t) in &control {
            println!("| {b} | {d} | {:.2} ms |", t.as_secs_f64() * 1000.0);
        }
    }
    if !o.overhead {
        return Ok(());
    }
    let mut lab = lab_for(BASE_RTT_MS);
    lab.server(5201);
    let opts = options(&state, &[&lab.veth]);
    print_cost(&lab, &opts)?;
    println!("\n| another process throttled with | direction | without our objects | with them | ratio (median of 5 rounds) |");
    println!("|---|---|---|---|---|");
    for backends in [("ebpf", "ebpf"), ("tc_htb", "ifb_tc")] {
        for (name, down) in [("up", false), ("down", true)] {
            let (a, b, r) = overhead(&lab, &opts, backends, down)?;
            let which = if down { backends.1 } else { backends.0 };
            println!("| {which} | {name} | {:.0} MiB/s | {:.0} MiB/s | {r:.3} |", a / MIB, b / MIB);
        }
    }
    Ok(())
}

/// How `backend` limits `down`/up here, if it can.
fn limiter<'a>(m: &'a Manager, lab: &'a Lab, backend: &'a str, down: bool, v6: bool) -> Option<Limiter<'a>> {
    let want = if down { Direction::Down } else { Direction::Up };
    match backend {
        "tc-script" => Some(Limiter::TcScript(lab, v6)),
        name if m.backends().iter().any(|b| b.name == name && b.directions.contains(&want)) => {
            Some(Limiter::Backend(m, name))
        }
        _ => None,
    }
}

fn print_row(backend: &str, dir: &str, rate: &str, rtt: f64, a: &Accuracy) {
    let rt = a.retrans.map_or("n/a".into(), |r| format!("{r} ({:.2}%)", 100.0 * r as f64 / a.segments.max(1.0)));
    let srtt = a.rtt_ms.map_or("n/a".into(), |r| format!("{r:.2} ms"));
    println!(
        "| {backend} | {dir} | {rate} | {rtt} ms | {:.3} | {:.3} | {:.2}–{:.2} | {rt} | {:.2}% | {srtt} |",
        a.goodput,
        a.ip_rate,
        a.ip_min,
        a.ip_max,
        100.0 * a.dropped
    );
}

/// One row per second, one column per run, in MiB/s (ragged runs leave gaps).
fn write_series(path: &str, series: &[(String, Vec<f64>)]) -> anyhow::Result<()> {
    let mut out = String::from("second");
    for (name, _) in series {
        out.push_str(&format!(",{name}"));
    }
    let n = series.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
    for i in 0..n {
        out.push_str(&format!("\n{}", i + 1));
        for (_, v) in series {
            out.push(',');
            if let Some(x) = v.get(i) {
                out.push_str(&format!("{:.4}", x / MIB));
            }
        }
    }
    std::fs::write(path, out + "\n")?;
    Ok(())
}

/// The per-packet cost table: nine kinds of traffic, with the monitor off
/// and then on.
fn print_cost(lab: &Lab, opts: &ManagerOptions) -> anyhow::Result<()> {
    let mut cost = Vec::new();
    for monitor in [false, true] {
        let mut o = opts.clone();
        o.loaded.config.monitor.enabled = monitor;
        let (m, mine) = start_measured(&o)?;
        cost.push(cost_rows(lab, &m, &mine)?);
    }
    println!(
        "\n| traffic | ct_egress ns/packet, monitor off | on | ct_ingress ns/packet, monitor off | on \
         | ct_sockops ns per egress packet, monitor off | on |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (what, off) in &cost[0] {
        let on = &cost[1][what];
        let v = |m: &BTreeMap<String, f64>, p: &str| m.get(p).copied().unwrap_or(0.0);
        println!(
            "| {what} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            v(off, "ct_egress"),
            v(on, "ct_egress"),
            v(off, "ct_ingress"),
            v(on, "ct_ingress"),
            v(off, "ct_sockops"),
            v(on, "ct_sockops")
        );
    }
    Ok(())
}

/// ns/packet of nine kinds of traffic under one daemon configuration.
fn cost_rows(lab: &Lab, m: &Manager, mine: &[u32]) -> anyhow::Result<BTreeMap<&'static str, BTreeMap<String, f64>>> {
    let mut ns = BTreeMap::new();
    let lo = ns_per_packet(mine, || {
        lab.client_in_ns("ct-bench-lo", "127.0.0.1", 5201, 3).wait();
    })?;
    ns.insert("1. loopback (exempt from limits; the floor when the monitor is off)", lo);
    let idle = ns_per_packet(mine, || {
        unthrottled(lab, false);
        unthrottled(lab, true);
    })?;
    ns.insert("2. unthrottled, no throttle active", idle);
    let mut other = std::process::Command::new("sleep").arg("60").spawn()?;
    let id = m.limit_pid(
        other.id(),
        &LimitSpec { down: Some("1M".parse()?), up: Some("1M".parse()?), ..Default::default() },
    )?;
    let busy = ns_per_packet(mine, || {
        unthrottled(lab, false);
        unthrottled(lab, true);
    })?;
    m.remove(id)?;
    let _ = other.kill();
    let _ = other.wait();
    ns.insert("3. unthrottled, another process throttled", busy);
    let l = Limiter::Backend(m, "ebpf");
    let up = ns_per_packet(mine, || {
        let _ = accuracy(lab, &l, "10M".parse().unwrap(), false, &lab.server_ip, 5, 2);
    })?;
    ns.insert("4. throttled upload at 10M (ebpf bucket: data out, ACKs in)", up);
    let down = ns_per_packet(mine, || {
        let _ = accuracy(lab, &l, "10M".parse().unwrap(), true, &lab.server_ip, 5, 2);
    })?;
    ns.insert("5. throttled download at 10M (ebpf bucket: data in, ACKs out)", down);
    // The same programs and the same work per packet, but back to back: at
    // 10M a packet comes every few hundred µs, and each finds its code and
    // maps cold in the caches. The difference between the rows is that.
    let up = ns_per_packet(mine, || {
        let _ = accuracy(lab, &l, "1G".parse().unwrap(), false, &lab.server_ip, 5, 2);
    })?;
    ns.insert("6. throttled upload at 1G (back to back: the same work, warm caches)", up);
    let down = ns_per_packet(mine, || {
        let _ = accuracy(lab, &l, "1G".parse().unwrap(), true, &lab.server_ip, 5, 2);
    })?;
    ns.insert("7. throttled download at 1G (back to back)", down);
    // Rows 6 and 7 inside a user cap and the all cap that never bind: the
    // cost of a packet's three buckets instead of one.
    let big = LimitSpec { down: Some("100G".parse()?), up: Some("100G".parse()?), ..Default::default() };
    let caps = [
        m.limit(throttled::target::Target::User { uid: unsafe { libc::getuid() } }, &big)?,
        m.limit(throttled::target::Target::All, &big)?,
    ];
    let up = ns_per_packet(mine, || {
        let _ = accuracy(lab, &l, "1G".parse().unwrap(), false, &lab.server_ip, 5, 2);
    })?;
    ns.insert("8. as 6, inside a user cap and the all cap (three buckets; the server's packets pass the caps too)", up);
    let down = ns_per_packet(mine, || {
        let _ = accuracy(lab, &l, "1G".parse().unwrap(), true, &lab.server_ip, 5, 2);
    })?;
    ns.insert("9. as 7, inside a user cap and the all cap", down);
    caps.into_iter().try_for_each(|id| m.remove(id))?;
    Ok(ns)
}

fn uname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}
