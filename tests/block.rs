//! Blocking (issue 18) against the real kernel in namespaces: a blocked
//! process's new connections fail at once with EPERM, its running flows
//! stop within a second, loopback stays exempt, and unblocking restores
//! everything; the daemon keeps a block across kill -9 and a restart, and
//! throttlectl and D-Bus show it as a block.
mod common;

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use throttle_common::Direction;
use throttled::manager::{LimitSpec, Manager};

fn block() -> LimitSpec {
    LimitSpec { block: true, ..Default::default() }
}

/// A process that tries connections on request, so that it can be blocked
/// between tries: one line in (`tcp HOST PORT`, `udp HOST PORT`, `tcp lo
/// 0` to its own loopback listener), one line out (`ok` or the errno
/// name, then the seconds it took).
struct Probe {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

const PROBE: &str = r#"
import errno, socket, sys, time
lo = socket.socket(); lo.bind(("127.0.0.1", 0)); lo.listen(64)
print("ready", flush=True)
for line in sys.stdin:
    kind, host, port = line.split()
    if host == "lo":
        host, port = "127.0.0.1", lo.getsockname()[1]
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    t = time.monotonic()
    try:
        if kind == "tcp":
            s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(3); s.connect((host, int(port))); s.close()
        else:
            s = socket.socket(fam, socket.SOCK_DGRAM); s.sendto(b"x", (host, int(port))); s.close()
        r = "ok"
    except OSError as e:
        r = errno.errorcode.get(e.errno, "timeout") if e.errno else "timeout"
    print(r, round(time.monotonic() - t, 3), flush=True)
"#;

impl Probe {
    /// `None` (a failure under CI) without python3.
    fn start() -> Option<Probe> {
        let Some(py) = which("python3") else {
            throttle_testkit::missing("python3 is not installed (the connection probe)");
            return None;
        };
        Some(Self::spawn(Command::new(py)))
    }

    /// The probe as a process named `name` (a copy of python3 in `dir`),
    /// so that a name target catches it and nothing else.
    fn named(dir: &ScratchDir, name: &str) -> Option<Probe> {
        let Some(py) = which("python3") else {
            throttle_testkit::missing("python3 is not installed (the connection probe)");
            return None;
        };
        // The interpreter itself, not a wrapper script (pyenv's shims are).
        let real = Command::new(py).args(["-c", "import sys; print(sys.executable)"]).output().unwrap();
        let bin = dir.path.join(name);
        std::fs::copy(String::from_utf8_lossy(&real.stdout).trim(), &bin).unwrap();
        Some(Self::spawn(Command::new(bin)))
    }

    fn spawn(mut cmd: Command) -> Probe {
        let mut child = cmd.args(["-c", PROBE]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        let (stdin, stdout) = (child.stdin.take().unwrap(), BufReader::new(child.stdout.take().unwrap()));
        let mut p = Probe { child, stdin, stdout };
        assert_eq!(p.line(), "ready");
        p
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.stdout.read_line(&mut l).unwrap();
        l.trim().to_string()
    }

    /// The outcome of one try, and how long it took.
    fn try_once(&mut self, kind: &str, host: &str, port: u16) -> (String, f64) {
        writeln!(self.stdin, "{kind} {host} {port}").unwrap();
        let l = self.line();
        let (r, secs) = l.split_once(' ').unwrap_or_else(|| panic!("probe said {l:?}"));
        (r.to_string(), secs.parse().unwrap())
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[track_caller]
fn assert_refused(p: &mut Probe, kind: &str, host: &str, port: u16) {
    let (r, secs) = p.try_once(kind, host, port);
    assert_eq!(r, "EPERM", "{kind} to {host}:{port} while blocked");
    assert!(secs < 0.2, "{kind} to {host}:{port} took {secs} s to fail: not at once");
}

#[track_caller]
fn assert_passes(p: &mut Probe, kind: &str, host: &str, port: u16) {
    let (r, _) = p.try_once(kind, host, port);
    assert_eq!(r, "ok", "{kind} to {host}:{port}");
}

/// New connections (TCP over IPv4 and IPv6, UDP sends) fail at once;
/// loopback stays exempt; removing the block lets them through again.
#[test]
fn new_connections_fail_at_once() {
    let Some(_g) = begin() else { return };
    let mut lab = Lab::new(181);
    lab.server(5201);
    let Some(mut p) = Probe::start() else { return };
    let (ip, ip6) = (lab.server_ip.clone(), lab.server_ip6.clone());
    let state = ScratchDir::new("blk");
    let m = Manager::start(&common::options(&state, &[])).unwrap();
    assert_passes(&mut p, "tcp", &ip, 5201);
    let id = m.limit_pid(p.pid(), &block()).unwrap();
    assert_refused(&mut p, "tcp", &ip, 5201);
    assert_refused(&mut p, "tcp", &ip6, 5201);
    assert_refused(&mut p, "udp", &ip, 5201);
    assert_refused(&mut p, "udp", &ip6, 5201);
    assert_passes(&mut p, "tcp", "lo", 0);
    let info = m.info(id).unwrap();
    assert!(throttled::backend::mark::blocks(&info), "not reported as a block: {:?}", info.directions.keys());
    m.remove(id).unwrap();
    assert_passes(&mut p, "tcp", &ip, 5201);
    assert_passes(&mut p, "udp", &ip, 5201);
    assert_eq!(m.kernel_proc_entries(), 0, "process entry left in the kernel map");
}

/// Running transfers (an upload and a download) stop within a second of
/// the block, their packets counted as dropped, and resume after it.
#[test]
fn running_flows_stop_and_resume() {
    let Some(_g) = begin() else { return };
    let mut lab = Lab::new(182);
    lab.server(5201);
    lab.server(5202);
    let state = ScratchDir::new("blk");
    let m = Manager::start(&common::options(&state, &[])).unwrap();
    let up = lab.client("ct-client-bup", 5201, 14, false);
    let down = lab.client("ct-client-bdn", 5202, 14, true);
    std::thread::sleep(Duration::from_millis(2500));
    let t0 = Instant::now();
    let a = m.limit_pid(up.pid(), &block()).unwrap();
    let b = m.limit_pid(down.pid(), &block()).unwrap();
    eprintln!("blocked at 2.5 s (+{:?})", t0.elapsed());
    std::thread::sleep(Duration::from_millis(2500));
    let (ia, ib) = (m.info(a).unwrap(), m.info(b).unwrap());
    let dropped = |i: &throttled::manager::ThrottleInfo, d| i.directions[&d].counters.drop_pkts;
    assert!(dropped(&ia, Direction::Up) > 0, "no upload packet dropped");
    assert!(dropped(&ib, Direction::Down) > 0, "no download packet dropped");
    m.remove(a).unwrap();
    m.remove(b).unwrap();
    let (ru, rd) = (up.wait(), down.wait());
    for (what, r) in [("upload", &ru), ("download", &rd)] {
        let mib: Vec<f64> = r.intervals.iter().map(|v| v / MIB).collect();
        eprintln!("{what} (MiB/s): {mib:.1?}");
        assert!(r.intervals[1] > 5.0 * MIB, "{what} was not running before the block");
        // Blocked from 2.5 s: second 4 (3.x-4.x s) passes nothing.
        assert!(r.intervals[4] < 0.05 * MIB, "{what} still ran a second after the block: {:.2} MiB/s", mib[4]);
        // Unblocked at 5 s; TCP comes back at its next retransmission (< 4 s).
        assert!(r.mean(10, 14) > 5.0 * MIB, "{what} did not resume after the block");
    }
    assert_eq!(m.kernel_proc_entries(), 0);
}

/// throttlectl on the bus at `address`, as the system bus.
fn ctl(address: &str, args: &[&str]) -> std::process::Output {
    Command::new(throttlectl()).args(args).env("DBUS_SYSTEM_BUS_ADDRESS", address).output().unwrap()
}

#[track_caller]
fn ctl_ok(address: &str, args: &[&str]) -> String {
    let out = ctl(address, args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "throttlectl {args:?}: {text}{}", String::from_utf8_lossy(&out.stderr));
    text
}

/// The real daemon on a private bus: `throttlectl block` refuses the
/// probe's connections, `list`, JSON and the Blocked property show a
/// block, kill -9 lets go of it (programs die with the daemon), a restart
/// brings it back, and `unblock` lifts it (but not a plain limit).
#[test]
fn throttlectl_block_survives_kill_9_and_restart() {
    let Some(_g) = begin() else { return };
    let mut lab = Lab::new(183);
    lab.server(5201);
    let Some(mut p) = Probe::start() else { return };
    let Some(bus) = throttle_testkit::bus::PrivateBus::start("block") else { return };
    let dir = ScratchDir::new("block-d");
    let mut d = bus.daemon(daemon_bin(), &dir, &lab.veth, &[]);
    let (addr, ip, pid) = (bus.address().to_string(), lab.server_ip.clone(), p.pid().to_string());
    assert!(ctl_ok(&addr, &["block", &pid]).contains("BLOCKED"));
    assert_refused(&mut p, "tcp", &ip, 5201);
    let list = ctl_ok(&addr, &["list"]);
    assert!(list.lines().nth(1).is_some_and(|l| l.contains("BLOCKED") && l.contains("block")), "{list}");
    let json: serde_json::Value = serde_json::from_str(&ctl_ok(&addr, &["--json", "list"])).unwrap();
    assert_eq!((json[0]["blocked"].clone(), json[0]["down"].clone()), (true.into(), 0.into()), "{json}");
    let path = "/org/chadthrottle/throttles/1";
    let prop = bus.busctl(&["get-property", "org.chadthrottle", path, "org.chadthrottle.Throttle", "Blocked"]);
    assert_eq!(prop.unwrap().trim(), "b true");
    let features =
        bus.busctl(&["get-property", "org.chadthrottle", "/org/chadthrottle", "org.chadthrottle.Manager", "Features"]);
    let features = features.unwrap();
    assert!(features.contains("\"block\"") && features.contains("\"block-connect\""), "{features}");

    d.kill9();
    assert_passes(&mut p, "tcp", &ip, 5201);
    let _d = bus.daemon(daemon_bin(), &dir, &lab.veth, &[]);
    assert_refused(&mut p, "tcp", &ip, 5201);
    assert!(ctl_ok(&addr, &["list"]).contains("BLOCKED"), "the block was not restored");

    // A block is lifted as a block, never loosened into a rate.
    let out = ctl(&addr, &["limit", &pid, "--down", "1M"]);
    assert!(!out.status.success(), "a limit loosened a block");
    assert!(String::from_utf8_lossy(&out.stderr).contains("unblock"), "{out:?}");
    assert!(ctl_ok(&addr, &["unblock", &pid]).contains("removed throttle 1"));
    assert_passes(&mut p, "tcp", &ip, 5201);
    ctl_ok(&addr, &["limit", &pid, "--down", "1M"]);
    assert!(!ctl(&addr, &["unblock", &pid]).status.success(), "unblock removed a limit");
    ctl_ok(&addr, &["unlimit", &pid]);
}

/// A `block = true` rule blocks the processes its target names, from the
/// start, and `list` shows it as a block that came from a rule.
#[test]
fn a_rule_blocks() {
    let Some(_g) = begin() else { return };
    let mut lab = Lab::new(184);
    lab.server(5201);
    let bins = ScratchDir::new("block-bin");
    let Some(mut p) = Probe::named(&bins, "ct-blk-rule") else { return };
    let Some(bus) = throttle_testkit::bus::PrivateBus::start("block-rule") else { return };
    let dir = ScratchDir::new("block-r");
    std::fs::create_dir_all(dir.path.join("rules.d")).unwrap();
    std::fs::write(dir.path.join("rules.d/block.toml"), "[[rule]]\nname = \"ct-blk-rule\"\nblock = true\n").unwrap();
    let _d = bus.daemon(daemon_bin(), &dir, &lab.veth, &[]);
    assert_refused(&mut p, "tcp", &lab.server_ip, 5201);
    assert_passes(&mut p, "tcp", "lo", 0);
    let json: serde_json::Value = serde_json::from_str(&ctl_ok(bus.address(), &["--json", "list"])).unwrap();
    assert_eq!(json[0]["blocked"], true, "{json}");
    assert!(json[0]["origin"].as_str().is_some_and(|o| o.ends_with("block.toml")), "{json}");
    assert_eq!(json[0]["pids"][0], p.pid(), "{json}");
}
