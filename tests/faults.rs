//! Faults injected while throttled traffic runs, against the real daemon on
//! a private system bus. For each fault: the throttle holds the flow again
//! within 10 s (per-second rates from iperf3), clients were told (a
//! BackendHealthChanged signal, seen by `busctl monitor`, or the name
//! coming back for faults that take the daemon or the bus away), and the
//! daemon's kernel objects are exactly those it had before the fault: none
//! leaked, none twice. A clean stop then leaves none at all.
mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{
    monitor::{Monitor, Signal},
    *,
};
use throttle_testkit::bus::{write_config, PrivateBus};

/// The IP-layer limit of every case, in bytes/s.
const LIMIT: f64 = 2.0 * MIB;
const RUN_SECS: u32 = 20;
const FAULT_AT: Duration = Duration::from_secs(4);
/// The bound: enforced again within 10 s of the fault.
const RECOVERY: f64 = 10.0;

fn is_health(s: &Signal, component: &str, health: &str) -> bool {
    s.member == "BackendHealthChanged" && s.args.first().is_some_and(|c| c == component) && s.args[1] == health
}

fn name_owned(s: &Signal) -> bool {
    s.member == "NameOwnerChanged" && s.args.get(2).is_some_and(|new| !new.is_empty())
}

/// Every kernel object the daemon makes for the lab's interface, counted
/// with the kernel's own tools.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Objects {
    htb_roots: usize,
    htb_classes: usize,
    ifbs: usize,
    cgroup_programs: usize,
    ingress_programs: usize,
}

/// stdout of a command, or "" when it fails (an interface may be gone).
fn try_sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output();
    out.ok().filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
}

fn count(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

fn objects(veth: &str) -> Objects {
    let ifb = format!("cti-{veth}");
    let cgroot = throttled::kernel::cgroup::cgroup2_mount().unwrap();
    Objects {
        htb_roots: count(&try_sh(&["tc", "qdisc", "show", "dev", veth]), "htb c7:")
            + count(&try_sh(&["tc", "qdisc", "show", "dev", &ifb]), "htb c7:"),
        htb_classes: count(&try_sh(&["tc", "class", "show", "dev", veth]), "class htb c7:")
            + count(&try_sh(&["tc", "class", "show", "dev", &ifb]), "class htb c7:"),
        ifbs: count(&try_sh(&["ip", "-o", "link", "show"]), "cti-"),
        cgroup_programs: count(&try_sh(&["bpftool", "cgroup", "show", cgroot.to_str().unwrap()]), " ct_"),
        ingress_programs: tcx_links(),
    }
}

/// TCX links of our programs (one per managed interface here). bpftool 7.1
/// predates TCX: it names the link type only by number (11) and shows no
/// device, and `net show` lists none.
fn tcx_links() -> usize {
    let ours = our_programs();
    let links: serde_json::Value = serde_json::from_str(&sh(&["bpftool", "-j", "link", "show"])).unwrap();
    let tcx = |l: &&serde_json::Value| {
        (l["type"] == "tcx" || l["type"] == 11) && l["prog_id"].as_u64().is_some_and(|p| ours.contains(&p))
    };
    links.as_array().map_or(0, |a| a.iter().filter(tcx).count())
}

/// Ids of the loaded programs named ct_*.
fn our_programs() -> Vec<u64> {
    let progs: serde_json::Value = serde_json::from_str(&sh(&["bpftool", "-j", "prog", "show"])).unwrap();
    let ours = |p: &&serde_json::Value| p["name"].as_str().is_some_and(|n| n.starts_with("ct_"));
    progs.as_array().unwrap().iter().filter(ours).filter_map(|p| p["id"].as_u64()).collect()
}

const NONE: Objects = Objects { htb_roots: 0, htb_classes: 0, ifbs: 0, cgroup_programs: 0, ingress_programs: 0 };

/// A traffic lab, a private bus with a monitor on it, and the daemon with
/// its config, rules and state in a scratch directory.
struct Rig {
    daemon: Option<Daemon>,
    monitor: Monitor,
    bus: PrivateBus,
    lab: Lab,
    dir: ScratchDir,
    conf: PathBuf,
    log: PathBuf,
    backend: &'static str,
    /// Download (ifb_tc, or ebpf's policer) rather than upload.
    reverse: bool,
}

impl Rig {
    fn new(tag: u8, backend: &'static str, reverse: bool) -> Option<Rig> {
        if which("busctl").is_none() || which("bpftool").is_none() {
            throttle_testkit::missing("busctl and bpftool are needed (run scripts/bootstrap.sh)");
            return None;
        }
        let mut lab = Lab::new(tag);
        lab.server(5201);
        let bus = PrivateBus::start(&format!("fault-{tag}"))?;
        let monitor = Monitor::watch(bus.address());
        let dir = ScratchDir::new(&format!("fault-{tag}"));
        let conf = write_config(&dir, &lab.veth);
        let log = dir.path.join("daemon.log");
        Some(Rig { daemon: None, monitor, bus, lab, dir, conf, log, backend, reverse })
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path.join("state")
    }

    fn start_daemon(&mut self) {
        let env = [("DBUS_SYSTEM_BUS_ADDRESS", self.bus.address())];
        let args = ["--config", self.conf.to_str().unwrap()];
        self.daemon = Some(Daemon::start_logged(daemon_bin(), &args, &env, &self.log));
    }

    fn daemon(&mut self) -> &mut Daemon {
        self.daemon.as_mut().expect("the daemon runs")
    }

    /// The client, under a name of its own (rules can match it).
    fn client_name(&self) -> String {
        format!("ct-fault-{}", self.lab.veth.trim_start_matches("ct-veth"))
    }

    fn client(&self) -> Iperf {
        self.lab.client(&self.client_name(), 5201, RUN_SECS, self.reverse)
    }

    fn direction(&self) -> &'static str {
        if self.reverse {
            "down"
        } else {
            "up"
        }
    }

    /// Limits `pid` through the API, as any client would.
    fn limit(&self, pid: u32) -> Result<String, String> {
        let mgr = ["org.chadthrottle", "/org/chadthrottle", "org.chadthrottle.Manager"];
        let args = ["pid", &pid.to_string(), "2", self.direction(), "s", "2M", "backend", "s", self.backend];
        self.bus.busctl(&[&["call"][..], &mgr, &["Limit", "ssa{sv}"], &args].concat())
    }

    /// The backend's health as ListBackends reports it.
    fn health(&self) -> String {
        let out = self.bus.busctl(&[
            "--json=short",
            "call",
            "org.chadthrottle",
            "/org/chadthrottle",
            "org.chadthrottle.Manager",
            "ListBackends",
        ]);
        let Ok(out) = out else { return "unreachable".into() };
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let backends = v["data"][0].as_array().cloned().unwrap_or_default();
        let b = backends.iter().find(|b| b["name"]["data"] == self.backend).expect("backend listed");
        b["health"]["data"].as_str().unwrap_or_default().to_string()
    }

    fn objects(&self) -> Objects {
        objects(&self.lab.veth)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        drop(self.daemon.take());
    }
}

/// What the traffic did around a fault.
struct Outcome {
    per_second: Vec<f64>,
    fault_secs: f64,
    /// First second from which every second is within the limit.
    held_from: Option<usize>,
}

/// A policer lets single seconds swing more than a shaper does.
fn per_second_bound(backend: &str, reverse: bool) -> f64 {
    if backend == "ebpf" && reverse {
        1.3
    } else {
        1.1
    }
}

fn outcome(r: &IperfResult, fault_secs: f64, bound: f64) -> Outcome {
    // The last interval may be a fraction of a second.
    let full = &r.intervals[..r.intervals.len().saturating_sub(1)];
    let per_second: Vec<f64> = full.iter().map(|b| b / LIMIT).collect();
    let over = per_second.iter().rposition(|&x| x > bound);
    let held_from = match over {
        Some(i) if i + 1 >= per_second.len() => None,
        Some(i) => Some(i + 1),
        None => Some(0),
    };
    Outcome { per_second, fault_secs, held_from }
}

impl Outcome {
    /// Held again within `RECOVERY` of the fault, and not stalled after.
    #[track_caller]
    fn assert_recovered(&self, what: &str) {
        let held = self.held_from.unwrap_or_else(|| panic!("{what}: never held again: {:?}", self.per_second));
        let after = (held as f64 - self.fault_secs).max(0.0);
        assert!(after <= RECOVERY, "{what}: held again {after:.1} s after the fault: {:?}", self.per_second);
        let tail = &self.per_second[held.max(self.fault_secs.ceil() as usize + RECOVERY as usize).min(16)..];
        let mean = tail.iter().sum::<f64>() / tail.len() as f64;
        assert!(mean >= 0.5, "{what}: the flow stalled after recovery ({mean:.2} of the limit)");
    }

    /// The limit never let go: held from the first full second.
    #[track_caller]
    fn assert_held_throughout(&self, what: &str) {
        assert!(self.held_from.is_some_and(|h| h <= 1), "{what}: the limit let go: {:?}", self.per_second);
    }

    fn report(&self, what: &str, objects: (Objects, Objects)) {
        let rates: Vec<String> = self.per_second.iter().map(|x| format!("{x:.2}")).collect();
        let held = self.held_from.map_or("never".into(), |h| format!("{:.1} s", (h as f64 - self.fault_secs).max(0.0)));
        eprintln!(
            "FAULT {what}: injected at {:.1} s; held again {held} after; objects {:?} -> {:?}; per second / limit: [{}]",
            self.fault_secs,
            objects.0,
            objects.1,
            rates.join(" ")
        );
    }
}

/// Runs a limited flow, injects `fault` at second 4, waits until `told`
/// (what clients must have heard) and `recovered`, then checks the flow and
/// that the kernel objects are as before. `limit_at_start`: the throttle is
/// made through the API once the flow runs (false when the fault's setup
/// makes it otherwise, e.g. from a rule).
struct Case<'a> {
    what: &'a str,
    fault: &'a dyn Fn(&mut Rig),
    /// Must hold after the fault (checked until 10 s after it).
    told: &'a dyn Fn(&Rig, Instant) -> bool,
    /// The flow is held throughout rather than only again after.
    throughout: bool,
}

fn run_case(rig: &mut Rig, case: &Case<'_>, limit: impl FnOnce(&Rig, u32)) {
    let t0 = Instant::now();
    let c = rig.client();
    limit(rig, c.pid());
    let backend = rig.backend;
    assert!(wait_until(Duration::from_secs(3), || rig.health() == "healthy"), "{backend} not healthy before the fault");
    std::thread::sleep(FAULT_AT.saturating_sub(t0.elapsed()));
    let before = rig.objects();
    let fault_at = Instant::now();
    (case.fault)(rig);
    let fault_secs = fault_at.duration_since(t0).as_secs_f64();
    let told = wait_until(Duration::from_secs(10), || (case.told)(rig, fault_at));
    let told_after = fault_at.elapsed();
    let healthy = wait_until(Duration::from_secs(10), || rig.health() == "healthy" && rig.objects() == before);
    let after = rig.objects();
    let r = c.wait();
    let o = outcome(&r, fault_secs, per_second_bound(rig.backend, rig.reverse));
    o.report(case.what, (before, after));
    eprintln!(
        "FAULT {}: clients told of the recovery {:.0} ms after the fault",
        case.what,
        told_after.as_secs_f64() * 1e3
    );
    let signals: Vec<String> =
        rig.monitor.since(fault_at).iter().map(|s| format!("{} {:?}", s.member, s.args)).collect();
    eprintln!("FAULT {}: signals after the fault: {signals:?}", case.what);
    assert!(told, "{}: clients were not told: {signals:?}", case.what);
    assert!(healthy, "{}: not healthy with the same objects in 10 s: {before:?} -> {after:?}", case.what);
    if case.throughout {
        o.assert_held_throughout(case.what);
    } else {
        o.assert_recovered(case.what);
    }
}

/// A clean stop leaves nothing of ours in the kernel.
fn finish(rig: &mut Rig, what: &str) {
    rig.daemon().stop();
    assert_eq!(rig.objects(), NONE, "{what}: a clean stop left objects behind");
}

/// The usual case: the limit made through the API as the flow starts.
fn fault_case(tag: u8, backend: &'static str, reverse: bool, case: Case<'_>) {
    let Some(_g) = begin() else { return };
    let Some(mut rig) = Rig::new(tag, backend, reverse) else { return };
    rig.start_daemon();
    run_case(&mut rig, &case, |rig, pid| {
        rig.limit(pid).unwrap();
    });
    finish(&mut rig, case.what);
}

/// The backend reported `health` after the fault, then `healthy` again.
fn health_went(component: &'static str, health: &'static str) -> impl Fn(&Rig, Instant) -> bool {
    move |rig, t| {
        let s = rig.monitor.since(t);
        let bad = s.iter().position(|s| is_health(s, component, health));
        bad.is_some_and(|i| s[i..].iter().any(|s| is_health(s, component, "healthy")))
    }
}

#[test]
fn kill_9_then_restart() {
    fault_case(
        75,
        "tc_htb",
        false,
        Case {
            what: "kill -9 of the daemon, restarted 0.1 s later",
            fault: &|rig| {
                rig.daemon().kill9();
                std::thread::sleep(Duration::from_millis(100));
                rig.start_daemon();
            },
            // The name went and came back; the restored backend is healthy.
            told: &|rig, t| rig.monitor.since(t).iter().any(name_owned),
            throughout: false,
        },
    );
}

#[test]
fn root_qdisc_deleted_with_tc() {
    fault_case(
        76,
        "tc_htb",
        false,
        Case {
            what: "tc qdisc del of our HTB root",
            fault: &|rig| {
                sh(&["tc", "qdisc", "del", "dev", &rig.lab.veth, "root"]);
            },
            told: &health_went("tc_htb", "broken"),
            throughout: false,
        },
    );
}

#[test]
fn ifb_deleted() {
    fault_case(
        71,
        "ifb_tc",
        true,
        Case {
            what: "the IFB deleted",
            fault: &|rig| {
                sh(&["ip", "link", "del", &format!("cti-{}", rig.lab.veth)]);
            },
            told: &health_went("ifb_tc", "broken"),
            throughout: false,
        },
    );
}

/// Every link of ours at the cgroup root, detached with bpftool.
fn detach_cgroup_programs() -> usize {
    let ours = our_programs();
    let links: serde_json::Value = serde_json::from_str(&sh(&["bpftool", "-j", "link", "show"])).unwrap();
    let cgroup_links: Vec<u64> = links
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["type"] == "cgroup" && l["prog_id"].as_u64().is_some_and(|p| ours.contains(&p)))
        .filter_map(|l| l["id"].as_u64())
        .collect();
    for id in &cgroup_links {
        sh(&["bpftool", "link", "detach", "id", &id.to_string()]);
    }
    cgroup_links.len()
}

#[test]
fn cgroup_programs_detached_with_bpftool() {
    fault_case(
        77,
        "ebpf",
        true,
        Case {
            what: "every cgroup program detached with bpftool",
            fault: &|_| {
                let n = detach_cgroup_programs();
                assert!(n >= 3, "only {n} links detached (test is void)");
            },
            told: &health_went("datapath", "broken"),
            throughout: false,
        },
    );
}

#[test]
fn interface_down_and_up() {
    fault_case(
        72,
        "tc_htb",
        false,
        Case {
            what: "the interface down for 0.5 s, then up",
            fault: &|rig| {
                sh(&["ip", "link", "set", &rig.lab.veth, "down"]);
                std::thread::sleep(Duration::from_millis(500));
                sh(&["ip", "link", "set", &rig.lab.veth, "up"]);
            },
            told: &health_went("tc_htb", "degraded"),
            throughout: false,
        },
    );
}

/// The lab's veth pair deleted and made again with the same names and
/// addresses, as a USB adapter unplugged and plugged in would be. The TCP
/// connection survives (its retransmissions resume on the new link).
fn recreate_veth(lab: &Lab) {
    let tag = lab.veth.trim_start_matches("ct-veth");
    let peer = format!("ct-peer{tag}");
    sh(&["ip", "link", "del", &lab.veth]);
    std::thread::sleep(Duration::from_millis(500));
    sh(&["ip", "link", "add", &lab.veth, "type", "veth", "peer", "name", &peer, "netns", &lab.ns]);
    sh(&["ip", "addr", "add", &format!("10.201.{tag}.1/30"), "dev", &lab.veth]);
    sh(&["ip", "link", "set", &lab.veth, "up"]);
    sh(&["ip", "-n", &lab.ns, "addr", "add", &format!("{}/30", lab.server_ip), "dev", &peer]);
    sh(&["ip", "-n", &lab.ns, "link", "set", &peer, "up"]);
}

#[test]
fn interface_deleted_and_recreated() {
    for (tag, backend, reverse) in [(78, "tc_htb", false), (79, "ifb_tc", true)] {
        fault_case(
            tag,
            backend,
            reverse,
            Case {
                what: &format!("the interface deleted and re-created ({backend})"),
                fault: &|rig| recreate_veth(&rig.lab),
                told: &health_went(backend, "degraded"),
                throughout: false,
            },
        );
    }
}

#[test]
fn bus_restart() {
    fault_case(
        80,
        "tc_htb",
        false,
        Case {
            what: "dbus-daemon restarted",
            fault: &|rig| rig.bus.restart(),
            // Back on the new bus, with the throttle still served.
            told: &|rig, _| {
                rig.bus.busctl(&["status", "org.chadthrottle"]).is_ok()
                    && rig
                        .bus
                        .busctl(&[
                            "call",
                            "org.chadthrottle",
                            "/org/chadthrottle",
                            "org.chadthrottle.Manager",
                            "ListThrottles",
                        ])
                        .is_ok_and(|l| l.contains("/org/chadthrottle/throttles/1"))
            },
            throughout: true,
        },
    );
}

/// A corrupted state file (external damage: our own writes are atomic)
/// found at a restart: the daemon starts with a clear warning, keeps the
/// file for inspection, and the rules from rules.d hold the flow again.
#[test]
fn state_file_corrupted() {
    let Some(_g) = begin() else { return };
    let Some(mut rig) = Rig::new(81, "tc_htb", false) else { return };
    let rules = rig.dir.path.join("rules.d");
    std::fs::create_dir_all(&rules).unwrap();
    let rule = format!("[[rule]]\nname = {:?}\nup = \"2M\"\nbackend = \"tc_htb\"\n", rig.client_name());
    std::fs::write(rules.join("fault.toml"), rule).unwrap();
    rig.start_daemon();
    let state = rig.state_dir().join("throttles.json");
    let case = Case {
        what: "the state file corrupted, then a restart",
        fault: &|rig| {
            rig.daemon().kill9();
            let saved = std::fs::read(&state).unwrap();
            std::fs::write(&state, &saved[..saved.len() / 2]).unwrap();
            rig.start_daemon();
        },
        told: &|rig, t| rig.monitor.since(t).iter().any(name_owned),
        throughout: false,
    };
    // The rule, not the API, limits the flow.
    run_case(&mut rig, &case, |_, _| {});
    let log = std::fs::read_to_string(&rig.log).unwrap();
    let warned = log.lines().find(|l| l.contains("WARN") && l.contains("throttles.json") && l.contains("corrupt"));
    assert!(warned.is_some(), "no clear warning about the corrupt state file in the log:\n{log}");
    eprintln!("the warning: {}", warned.unwrap());
    assert!(rig.state_dir().join("throttles.json.corrupt").exists(), "the corrupt file was not kept for inspection");
    finish(&mut rig, case.what);
}

/// A tiny tmpfs, unmounted on drop even if the test fails.
struct TinyFs(PathBuf);

impl TinyFs {
    fn mount(at: &Path) -> TinyFs {
        std::fs::create_dir_all(at).unwrap();
        let at = at.to_str().unwrap();
        sh(&["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "ct-fault", at]);
        // Private: no copy of it propagates to a namespace the lab makes.
        sh(&["mount", "--make-private", at]);
        TinyFs(PathBuf::from(at))
    }

    /// Fills it to the last byte.
    fn fill(&self) {
        let of = format!("of={}/filler", self.0.display());
        let _ = Command::new("dd").args(["if=/dev/zero", &of, "bs=1k", "count=256"]).stderr(Stdio::null()).status();
    }

    fn empty(&self) {
        let _ = std::fs::remove_file(self.0.join("filler"));
    }

    /// Filesystems still mounted at its path.
    fn mounted(&self) -> Vec<String> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let here = throttled::kernel::cgroup::mounts(&info).filter(|(point, _)| *point == self.0);
        here.map(|(_, fstype)| fstype.to_string()).collect()
    }
}

impl Drop for TinyFs {
    /// Until nothing is mounted there: lazily if it is busy (a failing
    /// test drops it before the daemon).
    fn drop(&mut self) {
        let path = std::ffi::CString::new(self.0.to_str().unwrap()).unwrap();
        for _ in 0..4 {
            if self.mounted().is_empty() {
                return;
            }
            // SAFETY: umount2(2) with a valid C string.
            if unsafe { libc::umount2(path.as_ptr(), 0) } != 0 {
                eprintln!("{} is busy ({}): unmounting it lazily", self.0.display(), std::io::Error::last_os_error());
                // SAFETY: as above.
                unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
            }
        }
        let left = self.mounted();
        assert!(left.is_empty() || std::thread::panicking(), "{} is still mounted: {left:?}", self.0.display());
    }
}

/// ENOSPC on the state directory: the limit made through the API applies
/// all the same; the saved state's health goes broken with the OS's reason
/// (a signal, GetStats, and a warning from throttlectl), and healthy once
/// a save works again.
#[test]
fn state_directory_full() {
    let Some(_g) = begin() else { return };
    let Some(mut rig) = Rig::new(82, "ebpf", false) else { return };
    let fs = TinyFs::mount(&rig.state_dir());
    rig.start_daemon();
    fs.fill();
    let full_at = Instant::now();
    let case = Case {
        what: "the state directory full (ENOSPC) when the limit is made",
        fault: &|_| {},
        told: &|rig, _| rig.monitor.since(full_at).iter().any(|s| is_health(s, "state", "broken")),
        throughout: true,
    };
    let throttlectl = Path::new(daemon_bin()).with_file_name("throttlectl");
    let warning = Arc::new(Mutex::new(String::new()));
    let w = warning.clone();
    run_case(&mut rig, &case, |rig, pid| {
        let out = Command::new(&throttlectl)
            .args(["--bus", rig.bus.address(), "limit", &pid.to_string(), "--up", "2M", "--backend", "ebpf"])
            .output()
            .unwrap();
        assert!(out.status.success(), "the limit must apply when it cannot be saved: {out:?}");
        *w.lock().unwrap() = String::from_utf8_lossy(&out.stderr).into_owned();
    });
    let warning = warning.lock().unwrap().clone();
    eprintln!("throttlectl said: {warning}");
    assert!(warning.contains("warning") && warning.contains("No space left on device"), "no clear warning: {warning}");
    let broken = rig.monitor.since(full_at).into_iter().find(|s| is_health(s, "state", "broken")).unwrap();
    assert!(broken.args[2].contains("No space left on device"), "unclear detail: {:?}", broken.args);
    // Its process has gone: the removal is not saved either, so the state
    // stays broken until there is room again.
    let gone = rig.monitor.wait_for(full_at, Duration::from_secs(5), |s| s.member == "ThrottleRemoved");
    assert!(gone, "the first limit was not removed when its process exited");
    // Room again: the next change is saved, and the state is healthy again.
    let room = Instant::now();
    fs.empty();
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    rig.limit(sleeper.id()).unwrap();
    let healthy = rig.monitor.wait_for(room, Duration::from_secs(5), |s| is_health(s, "state", "healthy"));
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let seen: Vec<String> = rig.monitor.since(full_at).iter().map(|s| format!("{} {:?}", s.member, s.args)).collect();
    assert!(healthy, "no healthy state signal once saving worked again: {seen:?}");
    finish(&mut rig, case.what);
    drop(fs); // before the scratch directory it is mounted in
}
