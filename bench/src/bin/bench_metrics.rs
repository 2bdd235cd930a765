//! The metrics exporter's cost with 1,000 throttles, against the release
//! daemon on a private bus with `[metrics] listen` on:
//! - one scrape: time, size, series, and the daemon's CPU per scrape;
//! - D-Bus latency under load, without scrapes and with a scrape every
//!   second, alternated twice in one run (the VM is noisy);
//! - the daemon's CPU over 10 s with a scrape every second, against idle.
//!
//! Prints markdown tables: `scripts/bench.sh --only metrics`.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use throttle_testkit::{
    bus::{write_config, PrivateBus},
    cpu_secs,
    lab::Daemon,
    load::{connect, limit, ms, percentile, round, Mix, Sleepers},
    rss_kib, ScratchDir,
};

const THROTTLES: usize = 1000;
const CLIENTS: usize = 20;
const CALLS: usize = 100;
const PACE: Duration = Duration::from_millis(50);

/// One GET of /metrics: (time, body bytes, series lines).
fn scrape(addr: SocketAddr) -> (Duration, usize, usize) {
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).expect("connect to the exporter");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: bench\r\nAccept: text/plain\r\nConnection: close\r\n\r\n").unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).expect("read the scrape");
    let took = t.elapsed();
    let text = String::from_utf8_lossy(&reply);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    assert!(text.starts_with("HTTP/1.1 200"), "scrape failed: {}", &text[..text.len().min(200)]);
    let series = body.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).count();
    (took, body.len(), series)
}

/// A free TCP port on loopback.
fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Scrapes every second until `stop` is set; returns the scrape times.
fn scrape_every_second(addr: SocketAddr, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Vec<Duration> {
    let mut times = Vec::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let t = Instant::now();
        times.push(scrape(addr).0);
        std::thread::sleep(Duration::from_secs(1).saturating_sub(t.elapsed()));
    }
    times
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let bin = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/chadthrottled");
    let bus = PrivateBus::start("bench-metrics").expect("dbus-daemon");
    let dir = ScratchDir::new("bench-metrics");
    let addr = free_addr();
    let conf = write_config(&dir, "ct-none0");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str(&format!("\n[metrics]\nlisten = \"{addr}\"\n"));
    std::fs::write(&conf, text).unwrap();
    let env = [("DBUS_SYSTEM_BUS_ADDRESS", bus.address()), ("RUST_LOG", "warn")];
    let d = Daemon::start(bin, &["--config", conf.to_str().unwrap()], &env);

    let sleepers = Sleepers::spawn(THROTTLES + CLIENTS * 20);
    let pids = sleepers.pids();
    let c = connect(bus.address()).await.unwrap();
    for &pid in &pids[..THROTTLES] {
        limit(&c, pid, 1 << 20).await.expect("limit");
    }
    // Let a sample pass, so that every throttle has its numbers.
    tokio::time::sleep(Duration::from_secs(2)).await;

    one_scrape(&d, addr);
    let own: Vec<Vec<u32>> = pids[THROTTLES..].chunks(20).take(CLIENTS).map(<[u32]>::to_vec).collect();
    latency_with_and_without(bus.address(), &own, addr).await;
    cpu_with_and_without(&d, addr).await;
    println!("\nDaemon RSS with {THROTTLES} throttles after the run: {:.1} MiB.", rss_kib(d.pid()) as f64 / 1024.0);
}

/// Twenty scrapes back to back: the cost of one.
fn one_scrape(d: &Daemon, addr: SocketAddr) {
    let cpu = cpu_secs(d.pid());
    let mut runs: Vec<(Duration, usize, usize)> = (0..20).map(|_| scrape(addr)).collect();
    let cpu_per = (cpu_secs(d.pid()) - cpu) / runs.len() as f64 * 1000.0;
    runs.sort();
    let (p50, size, series) = runs[runs.len() / 2];
    println!("| one scrape, {THROTTLES} throttles | p50 | max | body | series | daemon CPU per scrape |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| text format, 20 back to back | {:.1} ms | {:.1} ms | {:.0} KiB | {series} | {cpu_per:.1} ms |",
        ms(p50),
        ms(runs.last().unwrap().0),
        size as f64 / 1024.0
    );
}

/// The same paced D-Bus load without and with a scrape every second,
/// alternated twice.
async fn latency_with_and_without(address: &str, own: &[Vec<u32>], addr: SocketAddr) {
    println!("\n| {CLIENTS} clients × {CALLS} mixed calls, each every {} ms, {THROTTLES} throttles | p50 | p99 | max | scrape p50 / max |", PACE.as_millis());
    println!("|---|---|---|---|---|");
    for scraping in [false, true, false, true] {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let scraper = scraping.then(|| {
            let stop = stop.clone();
            std::thread::spawn(move || scrape_every_second(addr, stop))
        });
        let r = round(address, own, CALLS, Mix::Mixed, Some(PACE)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let scrapes = scraper.map(|h| {
            let mut t = h.join().unwrap();
            t.sort();
            format!("{:.1} / {:.1} ms ({} scrapes)", ms(t[t.len() / 2]), ms(*t.last().unwrap()), t.len())
        });
        let lat = &r.latencies;
        println!(
            "| {} | {:.2} ms | {:.2} ms | {:.2} ms | {} |",
            if scraping { "a scrape every second" } else { "no scrapes" },
            ms(percentile(lat, 0.5)),
            ms(percentile(lat, 0.99)),
            ms(*lat.last().unwrap()),
            scrapes.unwrap_or_else(|| "–".into())
        );
    }
}

/// The daemon's CPU over 10 s: idle, then with a scrape every second.
async fn cpu_with_and_without(d: &Daemon, addr: SocketAddr) {
    let window = Duration::from_secs(10);
    let cpu0 = cpu_secs(d.pid());
    tokio::time::sleep(window).await;
    let idle = (cpu_secs(d.pid()) - cpu0) / window.as_secs_f64() * 100.0;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stop.clone();
    let cpu1 = cpu_secs(d.pid());
    let h = std::thread::spawn(move || scrape_every_second(addr, s));
    tokio::time::sleep(window).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let scraped = (cpu_secs(d.pid()) - cpu1) / window.as_secs_f64() * 100.0;
    let n = h.join().unwrap().len();
    println!("\n| daemon CPU, {THROTTLES} throttles, 10 s | % of one core |");
    println!("|---|---|");
    println!("| idle | {idle:.2}% |");
    println!("| a scrape every second ({n} scrapes) | {scraped:.2}% |");
}
