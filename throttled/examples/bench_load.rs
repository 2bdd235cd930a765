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
    collections::HashMap,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use throttled::testing::{bus::PrivateBus, cpu_secs, lab::Daemon, rss_kib, ScratchDir};
use zbus::zvariant::{OwnedObjectPath, Value};

const MGR: &str = "org.chadthrottle.Manager";
const CLIENTS: usize = 50;
fn clients() -> usize {
    std::env::var("CT_CLIENTS").ok().and_then(|c| c.parse().ok()).unwrap_or(CLIENTS)
}
const CALLS: usize = 200;

struct Sleepers(Vec<Child>);

impl Sleepers {
    fn spawn(n: usize) -> Sleepers {
        Sleepers((0..n).map(|_| Command::new("sleep").arg("3600").stdout(Stdio::null()).spawn().unwrap()).collect())
    }
    fn pids(&self) -> Vec<u32> {
        self.0.iter().map(Child::id).collect()
    }
}

impl Drop for Sleepers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn limit(c: &zbus::Connection, pid: u32, down: u64) -> zbus::Result<OwnedObjectPath> {
    let opts: HashMap<&str, Value<'_>> = HashMap::from([("down", Value::U64(down))]);
    let reply = c
        .call_method(Some("org.chadthrottle"), "/org/chadthrottle", Some(MGR), "Limit", &("pid", pid.to_string(), opts))
        .await?;
    reply.body().deserialize()
}

async fn call0(c: &zbus::Connection, method: &str) -> zbus::Result<()> {
    c.call_method(Some("org.chadthrottle"), "/org/chadthrottle", Some(MGR), method, &()).await.map(drop)
}

async fn remove(c: &zbus::Connection, path: &OwnedObjectPath) -> zbus::Result<()> {
    c.call_method(Some("org.chadthrottle"), "/org/chadthrottle", Some(MGR), "Remove", &(path,)).await.map(drop)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// One client: 200 calls, cycling limit / change / remove / list / stats on
/// pids of its own, so that every error is unexpected. With `pace`, one call
/// starts every `pace` (or right after the previous one, if that took
/// longer); without, back to back.
async fn client(address: String, pids: Vec<u32>, pace: Option<Duration>, phase: f64) -> (Vec<Duration>, usize) {
    let c = zbus::connection::Builder::address(address.as_str()).unwrap().build().await.unwrap();
    // Independent clients: their calls spread over the period, not in step.
    if let Some(p) = pace {
        tokio::time::sleep(p.mul_f64(phase)).await;
    }
    let (mut lat, mut errors) = (Vec::with_capacity(CALLS), 0);
    let mut mine: Vec<(u32, OwnedObjectPath)> = Vec::new();
    let mut next = pids.into_iter().cycle();
    let mut by_kind = [Duration::ZERO; 5];
    let mut ticks = pace.map(|p| {
        let mut t = tokio::time::interval(p);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    for i in 0..CALLS {
        if let Some(t) = &mut ticks {
            t.tick().await;
        }
        let t = Instant::now();
        let ok = match i % 5 {
            0 => {
                let pid = next.next().unwrap();
                limit(&c, pid, 1 << 20).await.map(|p| mine.push((pid, p))).is_ok()
            }
            1 => match mine.last() {
                Some((pid, _)) => limit(&c, *pid, 2 << 20).await.is_ok(),
                None => true,
            },
            2 => match mine.pop() {
                Some((_, p)) => remove(&c, &p).await.is_ok(),
                None => true,
            },
            3 => call0(&c, "ListThrottles").await.is_ok(),
            _ => call0(&c, "GetStats").await.is_ok(),
        };
        lat.push(t.elapsed());
        by_kind[i % 5] += t.elapsed();
        errors += usize::from(!ok);
    }
    if std::env::var("CT_BY_KIND").is_ok() {
        let n = (CALLS / 5) as u32;
        eprintln!(
            "mean ms: limit {:?} change {:?} remove {:?} list {:?} stats {:?}",
            by_kind[0] / n,
            by_kind[1] / n,
            by_kind[2] / n,
            by_kind[3] / n,
            by_kind[4] / n
        );
    }
    (lat, errors)
}

/// Every client at once; returns sorted latencies, unexpected errors and
/// the wall time.
async fn round(address: &str, own: &[Vec<u32>], pace: Option<Duration>) -> (Vec<Duration>, usize, Duration) {
    let t = Instant::now();
    let n = own.len() as f64;
    let spawn = |(i, p): (usize, &Vec<u32>)| tokio::spawn(client(address.to_string(), p.clone(), pace, i as f64 / n));
    let tasks: Vec<_> = own.iter().enumerate().map(spawn).collect();
    let (mut lat, mut errors) = (Vec::new(), 0);
    for task in tasks {
        let (l, e) = task.await.unwrap();
        lat.extend(l);
        errors += e;
    }
    let wall = t.elapsed();
    lat.sort();
    (lat, errors, wall)
}

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
    let conf = dir.path.join("chadthrottled.toml");
    std::fs::write(&conf, format!("state_dir = {:?}\ninterfaces = [\"ct-none0\"]\n", dir.path.display().to_string()))
        .unwrap();
    let env = [("DBUS_SYSTEM_BUS_ADDRESS", bus.address()), ("RUST_LOG", "warn")];
    let d = Daemon::start(bin, &["--config", conf.to_str().unwrap()], &env);
    let rss0 = rss_kib(d.pid());

    // 1,000 throttles, one after another, then 1,000 hand-run tc commands.
    let sleepers = Sleepers::spawn(1000 + CLIENTS * 20);
    let pids = sleepers.pids();
    let c = zbus::connection::Builder::address(bus.address()).unwrap().build().await.unwrap();
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
    println!("\n| load: {CLIENTS} clients × {CALLS} mixed calls, 500 throttles active | calls | unexpected errors | calls/s | p50 | p99 | max | daemon CPU per call | daemon RSS after |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let rss_before = rss_kib(d.pid());
    // Paced rounds first, then back to back (the daemon's saturation).
    // A second back-to-back round shows whether memory keeps growing.
    for pace in [Some(100), Some(50), Some(25), Some(15), None, None] {
        let pace = pace.map(Duration::from_millis);
        let cpu = cpu_secs(d.pid());
        let (lat, errors, wall) = round(bus.address(), &own, pace).await;
        let cpu_us = (cpu_secs(d.pid()) - cpu) / lat.len() as f64 * 1e6;
        let offered = match pace {
            Some(p) => format!(
                "each client every {} ms ({:.0} calls/s offered)",
                p.as_millis(),
                own.len() as f64 / p.as_secs_f64()
            ),
            None => "back to back".into(),
        };
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "| {offered} | {} | {errors} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {cpu_us:.0} µs | {:.1} MiB |",
            lat.len(),
            lat.len() as f64 / wall.as_secs_f64(),
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99)),
            ms(*lat.last().unwrap()),
            rss_kib(d.pid()) as f64 / 1024.0
        );
    }
    println!("\nDaemon RSS before the load rounds: {:.1} MiB.", rss_before as f64 / 1024.0);
    println!("\n| daemon | value |");
    println!("|---|---|");
    println!("| RSS at start | {:.1} MiB |", rss0 as f64 / 1024.0);
    println!("| RSS with 1,000 throttles | {:.1} MiB |", rss1000 as f64 / 1024.0);
    println!("| idle CPU with 500 throttles (10 s) | {idle:.2}% of one core |");
    drop(d);
}
