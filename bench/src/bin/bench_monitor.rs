//! The daemon's CPU while the monitor follows many active processes, with a
//! client asking for the top list once a second (what `throttlectl top`
//! does), with the usage history off and on (flushed every 10 s here, six
//! times as often as by default, so its cost is not understated). Prints a
//! markdown table for docs/BENCHMARKS.md.
//!
//! Runs the release daemon on a private bus: `scripts/bench.sh --only monitor`.
use std::{
    io::BufRead,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use throttle_testkit::{bus::PrivateBus, cpu_secs, lab::Daemon, rss_kib, ScratchDir};

/// Forks `n` children, each under a name of its own (so the usage history
/// has `n` names to keep), that each send a 200-byte UDP datagram to a
/// local discard port every 100 ms, and stay alive until killed.
const SENDERS: &str = r#"
import ctypes, os, socket, sys, time
n = int(sys.argv[1])
for i in range(n):
    if os.fork() == 0:
        ctypes.CDLL(None).prctl(15, f"ct-snd-{i}".encode(), 0, 0, 0)
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
    println!("| processes sending (10 packets/s each) | usage history | daemon CPU (one core), top polled every 1 s | daemon RSS | processes listed | usage.sqlite |");
    println!("|---|---|---|---|---|---|");
    for (n, history) in [(0usize, false), (0, true), (500, false), (500, true)] {
        let dir = ScratchDir::new("bench-monitor");
        let conf = dir.path.join("chadthrottled.toml");
        let usage = match history {
            true => "[usage]\nflush_secs = 10\n",
            false => "[usage]\nenabled = false\n",
        };
        std::fs::write(
            &conf,
            format!("state_dir = {:?}\ninterfaces = [\"ct-none0\"]\n{usage}", dir.path.display().to_string()),
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
        let db = std::fs::metadata(dir.path.join("usage.sqlite")).map_or(0, |m| m.len())
            + std::fs::metadata(dir.path.join("usage.sqlite-wal")).map_or(0, |m| m.len());
        let on = if history { "on, flushed every 10 s" } else { "off" };
        let db = if history { format!("{} KiB", db / 1024) } else { "–".into() };
        println!("| {n} | {on} | {cpu:.2}% | {} MiB | {seen} | {db} |", rss / 1024);
        drop(d);
        drop(senders);
    }
}
