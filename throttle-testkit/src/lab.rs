//! A traffic lab: a server network namespace joined to the root namespace by a
//! veth pair, iperf3 servers inside it, and iperf3 clients in the root
//! namespace under distinct names. Everything is removed on drop, including
//! when the test panics.
use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use super::delay::DelayLine;
pub use super::delay::DelayStats;

pub const MIB: f64 = 1048576.0;

/// Held while a kernel-state test runs.
pub struct Serial {
    _guard: MutexGuard<'static, ()>,
    _flock: Option<std::fs::File>,
}

/// Kernel-state tests must not overlap: not within one test program, and
/// not across programs either (two checkouts tested at once on one host
/// would see each other's programs at the cgroup root), so a lock file
/// serializes them host-wide.
pub fn serial() -> Serial {
    static LOCK: Mutex<()> = Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let flock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/tmp/chadthrottle-kernel-tests.lock")
        .ok()
        .filter(|f| {
            use std::os::fd::AsRawFd as _;
            // SAFETY: flock on an fd this function owns; blocks until free.
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) == 0 }
        });
    Serial { _guard: guard, _flock: flock }
}

/// Returns false (test skipped locally, failed under CI=true) without root or tools.
pub fn prerequisites() -> bool {
    if unsafe { libc::geteuid() } != 0 {
        super::require_root("traffic tests");
        return false;
    }
    for tool in ["ip", "iperf3"] {
        if which(tool).is_none() {
            super::missing(&format!("{tool} is not installed (run scripts/bootstrap.sh)"));
            return false;
        }
    }
    true
}

pub fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| PathBuf::from(d).join(tool))
        .find(|p| p.is_file())
}

pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sh_quiet(args: &[&str]) {
    let _ = Command::new(args[0]).args(&args[1..]).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

pub struct Lab {
    /// The server's namespace (iperf3 servers run here).
    pub ns: String,
    /// The host side: the only interface the daemon's interface backends touch.
    pub veth: String,
    pub server_ip: String,
    pub server_ip6: String,
    /// The namespace between host and server, with `with_delay`.
    router: Option<String>,
    delay: Option<DelayLine>,
    servers: Vec<Child>,
    dir: PathBuf,
}

/// The router's policy-routing table that leads into the delay line.
const DELAY_TABLE: &str = "100";

impl Lab {
    /// `tag` (1..=250) keeps concurrent labs apart: ct-srv-<tag>, 10.201.<tag>.0/30
    /// and fd20:201:<tag>::/64, the host at .1, the server at .2.
    pub fn new(tag: u8) -> Lab {
        let ns = format!("ct-srv-{tag}");
        let peer = format!("ct-peer{tag}");
        let lab = Self::empty(tag, format!("10.201.{tag}.2"), format!("fd20:201:{tag}::2"));
        lab.host_link(tag, &ns, &peer);
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        lab
    }

    /// A lab with a real round trip: host veth → router namespace
    /// (ct-rtr-<tag>, where a delay line holds every forwarded packet for
    /// `one_way`, each way) → server namespace. The host side keeps the
    /// name and addresses of `new`; the server is 10.205.<tag>.2 and
    /// fd20:205:<tag>::2, routed through the router.
    pub fn with_delay(tag: u8, one_way: Duration) -> Lab {
        let router = format!("ct-rtr-{tag}");
        let mut lab = Self::empty(tag, format!("10.205.{tag}.2"), format!("fd20:205:{tag}::2"));
        lab.router = Some(router.clone());
        sh(&["ip", "netns", "add", &router]);
        lab.host_link(tag, &router, &format!("ct-peer{tag}"));
        sh(&["ip", "route", "add", &format!("10.205.{tag}.0/30"), "via", &format!("10.201.{tag}.2")]);
        sh(&["ip", "-6", "route", "add", &format!("fd20:205:{tag}::/64"), "via", &format!("fd20:201:{tag}::2")]);
        lab.server_link(tag, &router);
        let tun = format!("ct-tun{tag}");
        let path = PathBuf::from("/run/netns").join(&router);
        lab.delay = Some(DelayLine::start(&path, &tun, one_way).unwrap_or_else(|e| panic!("delay line: {e}")));
        route_through(&router, &tun, &[&format!("ct-peer{tag}"), &format!("ct-rs{tag}")]);
        lab
    }

    /// The lab's record, made before any kernel object so that Drop removes
    /// whatever part of the setup happened, also on a panic midway.
    fn empty(tag: u8, server_ip: String, server_ip6: String) -> Lab {
        let (ns, veth) = (format!("ct-srv-{tag}"), format!("ct-veth{tag}"));
        let dir = std::env::temp_dir().join(format!("ct-lab-{tag}-{}", std::process::id()));
        // Leftovers of a crashed earlier run.
        for n in [&ns, &format!("ct-rtr-{tag}")] {
            sh_quiet(&["ip", "netns", "del", n]);
        }
        sh_quiet(&["ip", "link", "del", &veth]);
        // A killed daemon's IFB: with records in its own state directory,
        // another daemon leaves it alone.
        sh_quiet(&["ip", "link", "del", &format!("cti-{veth}")]);
        std::fs::create_dir_all(&dir).unwrap();
        let lab = Lab { ns, veth, server_ip, server_ip6, router: None, delay: None, servers: vec![], dir };
        sh(&["ip", "netns", "add", &lab.ns]);
        lab
    }

    /// The host's veth, its peer `peer` in namespace `ns`, and both addresses.
    fn host_link(&self, tag: u8, ns: &str, peer: &str) {
        sh(&["ip", "link", "add", &self.veth, "type", "veth", "peer", "name", peer, "netns", ns]);
        address(None, &self.veth, &format!("10.201.{tag}.1/30"), &format!("fd20:201:{tag}::1/64"));
        address(Some(ns), peer, &format!("10.201.{tag}.2/30"), &format!("fd20:201:{tag}::2/64"));
    }

    /// The router–server veth pair, and the server's default routes.
    fn server_link(&self, tag: u8, router: &str) {
        let (rs, sv) = (format!("ct-rs{tag}"), format!("ct-sv{tag}"));
        sh(&["ip", "-n", router, "link", "add", &rs, "type", "veth", "peer", "name", &sv, "netns", &self.ns]);
        address(Some(router), &rs, &format!("10.205.{tag}.1/30"), &format!("fd20:205:{tag}::1/64"));
        address(Some(&self.ns), &sv, &format!("10.205.{tag}.2/30"), &format!("fd20:205:{tag}::2/64"));
        for n in [router, &self.ns] {
            sh(&["ip", "-n", n, "link", "set", "lo", "up"]);
        }
        sh(&["ip", "-n", &self.ns, "route", "add", "default", "via", &format!("10.205.{tag}.1")]);
        sh(&["ip", "-n", &self.ns, "-6", "route", "add", "default", "via", &format!("fd20:205:{tag}::1")]);
    }

    /// The one-way delay of a `with_delay` lab (zero for `new`).
    pub fn one_way(&self) -> Duration {
        self.delay.as_ref().map_or(Duration::ZERO, |d| d.one_way)
    }

    /// What the delay line forwarded and dropped so far (`None` for `new`).
    pub fn delay_stats(&self) -> Option<DelayStats> {
        self.delay.as_ref().map(DelayLine::stats)
    }

    /// Starts an iperf3 server on `port` inside the namespace.
    pub fn server(&mut self, port: u16) {
        let c = Command::new("ip")
            // -J: the server's own (receiver-side) report reaches the client as JSON.
            .args(["netns", "exec", &self.ns, "iperf3", "-s", "-J", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.servers.push(c);
        wait_until(Duration::from_secs(5), || {
            Command::new("ip")
                .args(["netns", "exec", &self.ns, "ss", "-Hltn", &format!("sport = :{port}")])
                .output()
                .is_ok_and(|o| !o.stdout.is_empty())
        });
    }

    /// Waits (up to 10 s) until the iperf3 server on `port` has no
    /// connection left: after a run through a long queue the server may
    /// still be ending it, and it refuses a new client meanwhile.
    pub fn wait_idle(&self, port: u16) -> bool {
        let filter = format!("sport = :{port}");
        wait_until(Duration::from_secs(10), || {
            Command::new("ip")
                .args(["netns", "exec", &self.ns, "ss", "-Htn", "state", "connected", "exclude", "time-wait", &filter])
                .output()
                .is_ok_and(|o| o.stdout.is_empty())
        })
    }

    /// A copy of iperf3 named `name`, so name targets can never catch the server.
    pub fn client_binary(&self, name: &str) -> PathBuf {
        let p = self.dir.join(name);
        if !p.exists() {
            std::fs::copy(which("iperf3").unwrap(), &p).unwrap();
        }
        p
    }

    /// Starts an iperf3 client: upload, or download with `reverse`.
    pub fn client(&self, name: &str, port: u16, secs: u32, reverse: bool) -> Iperf {
        self.client_to(name, &self.server_ip, port, secs, reverse)
    }

    /// As `client`, to another of the server's addresses (e.g. `server_ip6`).
    pub fn client_to(&self, name: &str, ip: &str, port: u16, secs: u32, reverse: bool) -> Iperf {
        self.client_with(name, ip, port, secs, reverse, &[])
    }

    /// As `client_to`, with more iperf3 arguments (e.g. `-b 80M` to pace).
    pub fn client_with(&self, name: &str, ip: &str, port: u16, secs: u32, reverse: bool, extra: &[&str]) -> Iperf {
        let bin = self.client_binary(name);
        let mut cmd = Command::new(bin);
        cmd.args(iperf_args(ip, port, secs, reverse)).args(extra);
        Iperf { child: Some(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()) }
    }

    /// As `client_to`, run as `uid` (real and effective uid and gid, no
    /// groups, through setpriv): a process of another user, for user caps.
    /// It starts half a second after taking the uid, as a process of that
    /// user that was already running: the daemon learns of a uid change
    /// from the proc connector, a few milliseconds later.
    pub fn client_as(&self, uid: u32, name: &str, ip: &str, port: u16, secs: u32, reverse: bool) -> Iperf {
        let bin = self.client_binary(name);
        let id = uid.to_string();
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid", &id, "--regid", &id, "--clear-groups", "sh", "-c", "sleep 0.5; exec \"$0\" \"$@\""])
            .arg(bin)
            .args(iperf_args(ip, port, secs, reverse));
        Iperf { child: Some(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()) }
    }

    /// A client inside the lab namespace, e.g. to its own loopback.
    pub fn client_in_ns(&self, name: &str, ip: &str, port: u16, secs: u32) -> Iperf {
        let bin = self.client_binary(name);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns]).arg(bin).args(iperf_args(ip, port, secs, false));
        Iperf { child: Some(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()) }
    }

    /// The client binary run through `sh`, so the client is a forked child.
    pub fn client_via_shell(&self, name: &str, port: u16, secs: u32, reverse: bool, delay: f32) -> Iperf {
        let bin = self.client_binary(name);
        let args = iperf_args(&self.server_ip, port, secs, reverse).join(" ");
        let script = format!("sleep {delay}; {} {args}; true", bin.display());
        let child =
            Command::new("sh").args(["-c", &script]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        Iperf { child: Some(child) }
    }
}

/// Client arguments: JSON with the server's own report, 1 s intervals, and
/// 16 KiB blocks (with the default 128 KiB, the receiver's per-second counts
/// are quantized to half a second's worth at 256 KiB/s).
fn iperf_args(ip: &str, port: u16, secs: u32, reverse: bool) -> Vec<String> {
    let mut a: Vec<String> = ["-c", ip, "-p", &port.to_string(), "-t", &secs.to_string(), "-J", "-i", "1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.extend(["--get-server-output", "-l", "16K"].map(String::from));
    // A flow whose packets stop getting through fails within 30 s, instead
    // of waiting out TCP's 15 minutes of retransmissions (iperf3 takes
    // each timeout only on the side it applies to).
    a.extend(["--connect-timeout", "10000"].map(String::from));
    let timeout = if reverse { "--rcv-timeout" } else { "--snd-timeout" };
    a.extend([timeout.to_string(), "30000".to_string()]);
    if reverse {
        a.push("-R".into());
    }
    a
}

/// Puts `v4` and `v6` on `dev` (in `ns`, or here) and sets it up. No
/// duplicate address detection, for the link-local address either: while it
/// is tentative, neighbour discovery fails and the first packets are lost.
fn address(ns: Option<&str>, dev: &str, v4: &str, v6: &str) {
    let in_ns = |args: &[&str]| {
        let mut all = vec![];
        if let Some(n) = ns {
            all.extend(["ip", "netns", "exec", n]);
        }
        all.extend(args);
        sh(&all);
    };
    in_ns(&["sysctl", "-qw", &format!("net.ipv6.conf.{dev}.accept_dad=0")]);
    let ip = |args: &[&str]| in_ns(&[&["ip"][..], args].concat());
    ip(&["addr", "add", v4, "dev", dev]);
    ip(&["-6", "addr", "add", v6, "dev", dev, "nodad"]);
    ip(&["link", "set", dev, "up"]);
}

/// In `router`, sends every packet forwarded from `ifaces` into the delay
/// line's `tun` (policy routing); what the line writes back arrives on the
/// TUN, misses the rules, and the main table forwards it.
fn route_through(router: &str, tun: &str, ifaces: &[&str]) {
    let ip = |args: &[&str]| sh(&[&["ip", "-n", router][..], args].concat());
    // A queue for bursts while the forwarder is descheduled (the default is 500).
    ip(&["link", "set", tun, "mtu", "1500", "txqueuelen", "10000", "up"]);
    for fam in ["-4", "-6"] {
        ip(&[fam, "route", "add", "default", "dev", tun, "table", DELAY_TABLE]);
        for i in ifaces {
            ip(&[fam, "rule", "add", "iif", i, "lookup", DELAY_TABLE, "pref", "100"]);
        }
    }
    // Packets come back on the TUN, not where their source lives.
    let mut sysctl = vec!["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"];
    sysctl.extend(["net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"]);
    let tun_rp = format!("net.ipv4.conf.{tun}.rp_filter=0");
    sysctl.push(&tun_rp);
    sh(&[&["ip", "netns", "exec", router, "sysctl", "-qw"][..], &sysctl].concat());
}

impl Drop for Lab {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        // The forwarder stops, and its TUN device goes with its descriptor.
        drop(self.delay.take());
        sh_quiet(&["ip", "netns", "del", &self.ns]);
        if let Some(r) = &self.router {
            sh_quiet(&["ip", "netns", "del", r]);
        }
        sh_quiet(&["ip", "link", "del", &self.veth]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts a `chadthrottled` binary and waits until it prints `ready`.
pub fn spawn_daemon(bin: &str, args: &[&str]) -> Child {
    use std::io::{BufRead, BufReader};
    let mut c = Command::new(bin).args(args).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
    let mut lines = BufReader::new(c.stdout.take().unwrap()).lines();
    assert!(lines.any(|l| l.is_ok_and(|l| l == "ready")), "daemon did not become ready");
    c
}

pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

pub struct Iperf {
    child: Option<Child>,
}

#[derive(Debug)]
pub struct IperfResult {
    /// Bytes per second of application data, one entry per second.
    pub intervals: Vec<f64>,
    pub retransmits: Option<u64>,
    pub sent_bytes: f64,
    /// The sending side's mean smoothed RTT, in µs (queueing shows up here).
    pub mean_rtt_us: Option<f64>,
    /// The sending side's smoothed RTT at the end of each interval, in µs.
    pub rtts_us: Vec<f64>,
}

impl IperfResult {
    /// Mean of intervals `[from, to)`, in bytes/s.
    pub fn mean(&self, from: usize, to: usize) -> f64 {
        let s = &self.intervals[from.min(self.intervals.len())..to.min(self.intervals.len())];
        assert!(!s.is_empty(), "no intervals in [{from}, {to}): {:?}", self.intervals);
        s.iter().sum::<f64>() / s.len() as f64
    }
}

impl Iperf {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn wait(self) -> IperfResult {
        self.outcome().unwrap_or_else(|e| panic!("{e}"))
    }

    /// The run's result, or why iperf3 failed (e.g. a refused connect).
    pub fn outcome(mut self) -> Result<IperfResult, String> {
        let out = self.child.take().unwrap().wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("iperf3 output is not JSON ({e}): {text} {}", String::from_utf8_lossy(&out.stderr)))?;
        if let Some(err) = v.get("error") {
            return Err(format!("iperf3 failed: {err}"));
        }
        // Goodput is what the receiver got: the server's intervals on upload.
        let upload = v["start"]["test_start"]["reverse"].as_i64() == Some(0);
        let server = &v["server_output_json"]["intervals"];
        assert!(!upload || server.is_array(), "no receiver-side report from the iperf3 server");
        let source = if upload { server } else { &v["intervals"] };
        let intervals =
            source.as_array().unwrap().iter().map(|i| i["sum"]["bits_per_second"].as_f64().unwrap() / 8.0).collect();
        let sender = if upload {
            &v["end"]["streams"][0]["sender"]
        } else {
            &v["server_output_json"]["end"]["streams"][0]["sender"]
        };
        let sender_intervals = if upload { &v["intervals"] } else { server };
        let rtts_us = sender_intervals
            .as_array()
            .map_or(vec![], |a| a.iter().filter_map(|i| i["streams"][0]["rtt"].as_f64()).collect());
        Ok(IperfResult {
            mean_rtt_us: sender["mean_rtt"].as_f64(),
            rtts_us,
            intervals,
            retransmits: v["end"]["sum_sent"]["retransmits"].as_u64(),
            sent_bytes: v["end"]["sum_sent"]["bytes"].as_f64().unwrap_or(0.0),
        })
    }
}

impl Drop for Iperf {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Asserts the accuracy criterion: goodput within 0.93–1.02 of the limit.
#[track_caller]
pub fn assert_accurate(what: &str, goodput: f64, limit: f64) {
    let ratio = goodput / limit;
    eprintln!("{what}: goodput {:.3} MiB/s for a {:.3} MiB/s limit = {ratio:.3}", goodput / MIB, limit / MIB);
    assert!((0.93..=1.02).contains(&ratio), "{what}: goodput/limit = {ratio:.3}, outside 0.93–1.02");
}

/// A running `chadthrottled`, stopped on drop (SIGTERM, then SIGKILL).
pub struct Daemon {
    child: Option<Child>,
}

impl Daemon {
    /// Starts `bin` with `args` and extra environment, and waits for `ready`.
    pub fn start(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        Self::start_to(bin, args, env, Stdio::inherit())
    }

    /// As `start`, with the daemon's log appended to `log`.
    pub fn start_logged(bin: &str, args: &[&str], env: &[(&str, &str)], log: &std::path::Path) -> Daemon {
        let f = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        Self::start_to(bin, args, env, Stdio::from(f))
    }

    fn start_to(bin: &str, args: &[&str], env: &[(&str, &str)], stderr: Stdio) -> Daemon {
        use std::io::{BufRead, BufReader};
        let mut cmd = Command::new(bin);
        cmd.args(args).envs(env.iter().copied()).stdout(Stdio::piped()).stderr(stderr);
        let mut c = cmd.spawn().unwrap();
        let mut lines = BufReader::new(c.stdout.take().unwrap()).lines();
        assert!(lines.any(|l| l.is_ok_and(|l| l == "ready")), "daemon did not become ready");
        Daemon { child: Some(c) }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    /// SIGTERM; the daemon must exit cleanly.
    pub fn stop(&mut self) {
        self.signal(libc::SIGTERM);
        let st = self.child.take().unwrap().wait().unwrap();
        assert!(st.success(), "daemon exited with {st}");
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Still running?
    pub fn alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().is_ok_and(|s| s.is_none()))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            if !wait_until(Duration::from_secs(5), || c.try_wait().is_ok_and(|s| s.is_some())) {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}
