//! One daemon binary under the load bench's clients, as rows of a markdown
//! table: a Peer.Ping round (the floor), mixed calls paced at 500 and 1,000
//! calls/s, and back to back. `scripts/ab-load.sh REV` runs it alternately
//! against REV's daemon and this tree's, for a before/after comparison.
//!
//! `bench_ab DAEMON LABEL`
use std::time::Duration;

use throttle_testkit::{
    bus::PrivateBus,
    cpu_secs,
    load::{connect, limit, ms, percentile, round, Mix, Sleepers},
    ScratchDir,
};

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (bin, label) = match &args[..] {
        [_, bin, label] => (bin, label),
        _ => panic!("usage: bench_ab DAEMON LABEL"),
    };
    let bus = PrivateBus::start("ab").expect("dbus-daemon");
    let dir = ScratchDir::new("ab");
    let d = bus.daemon(bin, &dir, "ct-none0", &[("RUST_LOG", "warn")]);
    let sleepers = Sleepers::spawn(500 + 50 * 20);
    let pids = sleepers.pids();
    let c = connect(bus.address()).await.unwrap();
    for &p in &pids[..500] {
        limit(&c, p, 1 << 20).await.expect("limit");
    }
    let own: Vec<Vec<u32>> = pids[500..].chunks(20).map(<[u32]>::to_vec).collect();
    let rounds = [(Mix::Ping, Some(100)), (Mix::Mixed, Some(100)), (Mix::Mixed, Some(50)), (Mix::Mixed, None)];
    for (mix, pace) in rounds {
        let cpu = cpu_secs(d.pid());
        let r = round(bus.address(), &own, 200, mix, pace.map(Duration::from_millis)).await;
        let cpu_us = (cpu_secs(d.pid()) - cpu) / r.latencies.len() as f64 * 1e6;
        let what = match (mix, pace) {
            (Mix::Ping, _) => "Peer.Ping, 500/s (the floor)".to_string(),
            (_, Some(p)) => format!("mixed, {}/s", 50_000 / p),
            (_, None) => "mixed, back to back".to_string(),
        };
        let limit_p99 = match mix {
            Mix::Ping => "–".to_string(),
            Mix::Mixed => format!("{:.2} ms", ms(percentile(&r.by_call[0], 0.99))),
        };
        println!(
            "| {label} | {what} | {:.2} ms | {:.2} ms | {limit_p99} | {cpu_us:.0} µs | {:.0} | {:.1}% |",
            ms(percentile(&r.latencies, 0.5)),
            ms(percentile(&r.latencies, 0.99)),
            r.latencies.len() as f64 / r.wall.as_secs_f64(),
            r.stolen,
        );
    }
    drop(d);
}
