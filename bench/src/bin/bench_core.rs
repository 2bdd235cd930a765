//! Daemon-core benchmark: make-before-break migration under iperf3 load
//! (the worst second against the limit), the time a migration call takes,
//! and process churn against a name throttle. Prints Markdown.
//!
//! `cargo run --release -p throttle-bench --bin bench_core`
use std::{
    process::Command,
    time::{Duration, Instant},
};

use throttle_bench::options;
use throttle_common::Direction;
use throttle_testkit::{
    lab::{which, Lab},
    ScratchDir,
};
use throttled::{
    manager::{LimitSpec, Manager},
    target::Target,
    Rate,
};

const SECS: u32 = 15;

/// A limit moves `path[0]` → `path[1]` → `path[0]` at seconds 5 and 10.
fn migration(lab: &Lab, m: &Manager, path: [&str; 2], down: bool, limit: Rate) -> anyhow::Result<()> {
    let dir = if down { Direction::Down } else { Direction::Up };
    let spec = match dir {
        Direction::Up => LimitSpec { up: Some(limit), backend: Some(path[0].into()), ..Default::default() },
        Direction::Down => LimitSpec { down: Some(limit), backend: Some(path[0].into()), ..Default::default() },
    };
    let c = lab.client("ct-bench-mig", 5201, SECS, down);
    let id = m.limit_pid(c.pid(), &spec)?;
    let start = Instant::now();
    let mut took = Vec::new();
    for (at, to) in [(5, path[1]), (10, path[0])] {
        std::thread::sleep((start + Duration::from_secs(at)).saturating_duration_since(Instant::now()));
        let t = Instant::now();
        m.migrate(id, Some(dir), to)?;
        took.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let r = c.wait();
    let l = limit.bytes_per_sec() as f64;
    let window: Vec<f64> = r.intervals[3..(SECS as usize).min(r.intervals.len())].iter().map(|b| b / l).collect();
    let worst = window.iter().copied().fold(0.0, f64::max);
    let low = window.iter().copied().fold(f64::MAX, f64::min);
    eprintln!("{path:?} {dir} {limit}: per second / limit {window:.3?}");
    println!(
        "| {} → {} → {} | {} | {limit} | {worst:.3} | {low:.3} | {:.3} | {:.2} ms, {:.2} ms |",
        path[0],
        path[1],
        path[0],
        if down { "down" } else { "up" },
        r.mean(3, SECS as usize) / l,
        took[0],
        took[1]
    );
    Ok(())
}

/// Short-lived processes matching a name throttle: how fast the daemon
/// follows them, and whether anything stays behind.
fn churn(m: &Manager, dir: &ScratchDir) -> anyhow::Result<()> {
    let bin = dir.path.join("ct-bench-short");
    std::fs::copy(which("true").expect("true"), &bin)?;
    let id =
        m.limit(Target::name("ct-bench-short")?, &LimitSpec { down: Some("1M".parse()?), ..Default::default() })?;
    let n = 5000;
    let start = Instant::now();
    for _ in 0..n {
        Command::new(&bin).status()?;
    }
    let spawn = start.elapsed();
    let drained = Instant::now();
    while m.kernel_proc_entries() > 0 && drained.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("\n| processes (fork + exec + exit) | wall time | per process | map entries left | drained after the last exit |");
    println!("|---|---|---|---|---|");
    println!(
        "| {n} matching a name throttle | {:.2} s | {:.0} µs | {} | {:.0} ms |",
        spawn.as_secs_f64(),
        spawn.as_secs_f64() * 1e6 / n as f64,
        m.kernel_proc_entries(),
        drained.elapsed().as_secs_f64() * 1000.0
    );
    m.remove(id)?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut lab = Lab::new(91);
    lab.server(5201);
    let state = ScratchDir::new("bench-core");
    let m = Manager::start(&options(&state, &[&lab.veth]))?;
    println!("| migration path | direction | limit | worst second / limit | lowest second / limit | mean / limit | migration calls |");
    println!("|---|---|---|---|---|---|---|");
    for limit in ["2M", "10M"] {
        migration(&lab, &m, ["ebpf", "tc_htb"], false, limit.parse()?)?;
        migration(&lab, &m, ["ebpf", "ifb_tc"], true, limit.parse()?)?;
    }
    churn(&m, &state)?;
    Ok(())
}
