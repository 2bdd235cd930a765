//! Control-plane load against the release daemon on a private bus:
//! - 1,000 pid throttles applied through the API, one after another, against
//!   1,000 hand-run `tc class add` commands (the baseline a script would use);
//! - 50 concurrent clients making 200 mixed calls each (limit, change,
//!   remove, list, stats) against 500 active throttles: latency p50/p99,
//!   calls per second, unexpected errors, and the daemon's memory;
//! - the daemon's idle CPU with 500 throttles.
//!
//! Prints markdown tables: `scripts/bench.sh --only load`.
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use throttle_testkit::{
    bus::PrivateBus,
    cpu_secs,
    load::{connect, limit, ms, percentile, remove, round, Mix, Sleepers, CALLS as KINDS},
    rss_kib, ScratchDir,
};

const CLIENTS: usize = 50;
fn clients() -> usize {
    std::env::var("CT_CLIENTS").ok().and_then(|c| c.parse().ok()).unwrap_or(CLIENTS)
}
const CALLS: usize = 200;

fn tc_baseline(n: usize) -> Duration {
    let ns = "ct-bench-tc";
    let sh =
        |args: &[&str]| Command::new(args[0]).args(&args[1..]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    let _ = sh(&["ip", "netns", "add", ns]);
    let _ = sh(&["ip", "-n", ns, "link", "add", "ct-dummy0", "type", "dummy"]);
    let _ = sh(&["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "ct-dummy0", "root", "handle", "1:", "htb"]);
    let t = Instant::now();
    for i in 1..=n {
        let classid = format!("1:{:x}", i + 1);
        let _ = sh(&[
            "ip",
            "netns",
            "exec",
            ns,
            "tc",
            "class",
            "add",
            "dev",
            "ct-dummy0",
            "parent",
            "1:",
            "classid",
            &classid,
            "htb",
            "rate",
            "8mbit",
        ]);
    }
    let took = t.elapsed();
    let _ = sh(&["ip", "netns", "del", ns]);
    took
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let bin = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/chadthrottled");
    let bus = PrivateBus::start("bench-load").expect("dbus-daemon");
    let dir = ScratchDir::new("bench-load");
    let d = bus.daemon(bin, &dir, "ct-none0", &[("RUST_LOG", "warn")]);
    let rss0 = rss_kib(d.pid());

    // 1,000 throttles, one after another, then 1,000 hand-run tc commands.
    let sleepers = Sleepers::spawn(1000 + CLIENTS * 20);
    let pids = sleepers.pids();
    let c = connect(bus.address()).await.unwrap();
    let t = Instant::now();
    let mut paths = Vec::new();
    for &pid in &pids[..1000] {
        paths.push(limit(&c, pid, 1 << 20).await.expect("limit"));
    }
    let apply = t.elapsed();
    let rss1000 = rss_kib(d.pid());
    let tc = tc_baseline(1000);
    println!("| 1,000 limits | time | per limit |");
    println!("|---|---|---|");
    let per = |d: Duration| d.as_secs_f64() * 1000.0 / 1000.0;
    println!("| through the API (pid throttles, ebpf) | {:.2} s | {:.2} ms |", apply.as_secs_f64(), per(apply));
    println!(
        "| hand-run `tc class add` (HTB classes only, no filters) | {:.2} s | {:.2} ms |",
        tc.as_secs_f64(),
        per(tc)
    );

    // Down to 500, then 50 concurrent clients on pids of their own.
    for p in paths.drain(500..) {
        remove(&c, &p).await.expect("remove");
    }
    let cpu0 = cpu_secs(d.pid());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle = (cpu_secs(d.pid()) - cpu0) / 10.0 * 100.0;
    let own: Vec<Vec<u32>> = pids[1000..].chunks(20).take(clients()).map(<[u32]>::to_vec).collect();
    println!("\n| load: {CLIENTS} clients × {CALLS} mixed calls, 500 throttles active | calls | unexpected errors | calls/s | p50 | p99 | max | daemon CPU per call | daemon RSS after | CPU stolen by the hypervisor |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let rss_before = rss_kib(d.pid());
    // Paced rounds first (each pace twice), then back to back (the
    // daemon's saturation). More back-to-back rounds (CT_ROUNDS, default 2)
    // show whether memory keeps growing.
    let rounds = std::env::var("CT_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(2);
    let paced = [100, 100, 50, 50, 25, 15].map(Some);
    let mut by_call = Vec::new();
    for (n, pace) in paced.into_iter().chain(std::iter::repeat_n(None, rounds)).enumerate() {
        let pace = pace.map(Duration::from_millis);
        // The floor first: the same clients and pace, calls our code never sees.
        let floor = if n < 4 { Some(round(bus.address(), &own, CALLS, Mix::Ping, pace).await) } else { None };
        let cpu = cpu_secs(d.pid());
        let r = round(bus.address(), &own, CALLS, Mix::Mixed, pace).await;
        let stolen = r.stolen;
        let (lat, errors) = (&r.latencies, r.errors.len());
        let cpu_us = (cpu_secs(d.pid()) - cpu) / lat.len() as f64 * 1e6;
        if let Some(e) = r.errors.first() {
            eprintln!("{errors} unexpected errors, the first: {e}");
        }
        let offered = match pace {
            Some(p) => format!(
                "each client every {} ms ({:.0} calls/s offered)",
                p.as_millis(),
                own.len() as f64 / p.as_secs_f64()
            ),
            None => "back to back".into(),
        };
        println!(
            "| {offered} | {} | {errors} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {cpu_us:.0} µs | {:.1} MiB | {stolen:.1}% |",
            lat.len(),
            lat.len() as f64 / r.wall.as_secs_f64(),
            ms(percentile(lat, 0.5)),
            ms(percentile(lat, 0.99)),
            ms(*lat.last().unwrap()),
            rss_kib(d.pid()) as f64 / 1024.0
        );
        if let Some(floor) = floor {
            by_call.push((offered, stolen, r.by_call, floor));
        }
    }
    let cell = |l: &[Duration]| format!("{:.2} / {:.2} ms", ms(percentile(l, 0.5)), ms(percentile(l, 0.99)));
    println!("\n| p50 / p99 by call | {} | {} just before: the floor | CPU stolen |", KINDS[..5].join(" | "), KINDS[5]);
    println!("|---|{}---|---|", "---|".repeat(5));
    for (offered, stolen, calls, floor) in &by_call {
        let cells: Vec<String> = calls[..5].iter().map(|l| cell(l)).collect();
        println!("| {offered} | {} | {} | {stolen:.1}% |", cells.join(" | "), cell(&floor.by_call[5]));
    }
    println!("\nDaemon RSS before the load rounds: {:.1} MiB.", rss_before as f64 / 1024.0);
    println!("\n| daemon | value |");
    println!("|---|---|");
    println!("| RSS at start | {:.1} MiB |", rss0 as f64 / 1024.0);
    println!("| RSS with 1,000 throttles | {:.1} MiB |", rss1000 as f64 / 1024.0);
    println!("| idle CPU with 500 throttles (10 s) | {idle:.2}% of one core |");
    drop(d);
}
