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

pub const MIB: f64 = 1048576.0;

/// Kernel-state tests must not overlap.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
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
    pub ns: String,
    pub veth: String,
    pub server_ip: String,
    servers: Vec<Child>,
    dir: PathBuf,
}

impl Lab {
    /// `tag` (1..=250) keeps concurrent labs apart: ct-srv-<tag>, 10.201.<tag>.0/30.
    pub fn new(tag: u8) -> Lab {
        let ns = format!("ct-srv-{tag}");
        let veth = format!("ct-veth{tag}");
        let peer = format!("ct-peer{tag}");
        // Leftovers of a crashed earlier run.
        sh_quiet(&["ip", "netns", "del", &ns]);
        sh_quiet(&["ip", "link", "del", &veth]);
        // A killed daemon's IFB: with records in its own state directory,
        // another daemon leaves it alone.
        sh_quiet(&["ip", "link", "del", &format!("cti-{veth}")]);
        let dir = std::env::temp_dir().join(format!("ct-lab-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let lab =
            Lab { ns: ns.clone(), veth: veth.clone(), server_ip: format!("10.201.{tag}.2"), servers: vec![], dir };
        sh(&["ip", "netns", "add", &ns]);
        sh(&["ip", "link", "add", &veth, "type", "veth", "peer", "name", &peer, "netns", &ns]);
        sh(&["ip", "addr", "add", &format!("10.201.{tag}.1/30"), "dev", &veth]);
        sh(&["ip", "link", "set", &veth, "up"]);
        sh(&["ip", "-n", &ns, "addr", "add", &format!("10.201.{tag}.2/30"), "dev", &peer]);
        sh(&["ip", "-n", &ns, "link", "set", &peer, "up"]);
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        lab
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
        let bin = self.client_binary(name);
        let mut cmd = Command::new(bin);
        cmd.args(iperf_args(&self.server_ip, port, secs, reverse));
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
    if reverse {
        a.push("-R".into());
    }
    a
}

impl Drop for Lab {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        sh_quiet(&["ip", "netns", "del", &self.ns]);
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

    pub fn wait(mut self) -> IperfResult {
        let out = self.child.take().unwrap().wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("iperf3 output is not JSON ({e}): {text} {}", String::from_utf8_lossy(&out.stderr))
        });
        if let Some(err) = v.get("error") {
            panic!("iperf3 failed: {err}");
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
        IperfResult {
            mean_rtt_us: sender["mean_rtt"].as_f64(),
            intervals,
            retransmits: v["end"]["sum_sent"]["retransmits"].as_u64(),
            sent_bytes: v["end"]["sum_sent"]["bytes"].as_f64().unwrap_or(0.0),
        }
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
