//! The daemon's CPU while the monitor follows many active processes, with a
//! client asking for the top list once a second (what `throttlectl top`
//! does). Prints a markdown table for docs/BENCHMARKS.md.
//!
//! Runs the release daemon on a private bus: `scripts/bench.sh --only monitor`.
use std::{
    io::BufRead,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use throttle_testkit::{bus::PrivateBus, cpu_secs, lab::Daemon, rss_kib, ScratchDir};

/// Forks `n` children that each send a 200-byte UDP datagram to a local
/// discard port every 100 ms, and stay alive until killed.
const SENDERS: &str = r#"
import os, socket, sys, time
n = int(sys.argv[1])
for _ in range(n):
    if os.fork() == 0:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        while True:
            s.sendto(b"x" * 200, ("127.0.0.1", 9))
            time.sleep(0.1)
print("ready", flush=True)
os.wait()
"#;

struct Senders(Child);

impl Senders {
    fn start(n: usize) -> Senders {
        let mut c = Command::new("python3")
            .args(["-c", SENDERS, &n.to_string()])
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufReader::new(c.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        Senders(c)
    }
}

impl Drop for Senders {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group we created.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

use std::os::unix::process::CommandExt as _;

fn top(bus: &PrivateBus) -> usize {
    let out = bus
        .busctl(&[
            "call",
            throttle_api::BUS_NAME,
            throttle_api::MANAGER_PATH,
            throttle_api::MANAGER_INTERFACE,
            "GetTopProcesses",
            "uss",
            "1000",
            "total",
            "all",
        ])
        .unwrap();
    out.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// CPU % of one core and RSS of the daemon over `secs`, polling the top
/// list once a second; also how many processes the monitor listed.
fn measure(bus: &PrivateBus, pid: u32, secs: u64) -> (f64, u64, usize) {
    let (t0, c0) = (Instant::now(), cpu_secs(pid));
    let mut seen = 0;
    for _ in 0..secs {
        std::thread::sleep(Duration::from_secs(1));
        seen = seen.max(top(bus));
    }
    let cpu = (cpu_secs(pid) - c0) / t0.elapsed().as_secs_f64() * 100.0;
    (cpu, rss_kib(pid), seen)
}

fn main() {
    let bin = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/chadthrottled");
    let bus = PrivateBus::start("bench-monitor").expect("dbus-daemon");
    println!("| processes sending (10 packets/s each) | daemon CPU (one core), top polled every 1 s | daemon RSS | processes listed |");
    println!("|---|---|---|---|");
    for n in [0usize, 500] {
        let dir = ScratchDir::new("bench-monitor");
        let conf = dir.path.join("chadthrottled.toml");
        std::fs::write(
            &conf,
            format!("state_dir = {:?}\ninterfaces = [\"ct-none0\"]\n", dir.path.display().to_string()),
        )
        .unwrap();
        let senders = (n > 0).then(|| Senders::start(n));
        let d = Daemon::start(
            bin,
            &["--config", conf.to_str().unwrap()],
            &[("DBUS_SYSTEM_BUS_ADDRESS", bus.address()), ("RUST_LOG", "warn")],
        );
        std::thread::sleep(Duration::from_secs(5));
        let (cpu, rss, seen) = measure(&bus, d.pid(), 30);
        println!("| {n} | {cpu:.2}% | {} MiB | {seen} |", rss / 1024);
        drop(d);
        drop(senders);
    }
}
