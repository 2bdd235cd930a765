//! The daemon core against the real kernel: targets and precedence, the
//! process lifecycle, defaults and non-retroactive switching, migration,
//! health, persistence, reload and crash recovery. Kernel state is checked
//! with the kernel's own tools (bpftool, tc, ip), not with our bookkeeping.
mod common;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
    time::Duration,
};

use common::*;
use throttle_common::Direction;
use throttle_testkit::rss_kib;
use throttled::{
    backend::Health,
    config::FailurePolicy,
    manager::{Event, LimitSpec, Manager, ManagerError, ManagerOptions, RemovalReason},
    target::Target,
    Rate,
};

const MIB: f64 = 1048576.0;

fn rate(s: &str) -> Rate {
    s.parse().unwrap()
}

fn spec(down: Option<&str>, up: Option<&str>, backend: Option<&str>) -> LimitSpec {
    LimitSpec { down: down.map(rate), up: up.map(rate), backend: backend.map(String::from), ..Default::default() }
}

/// A process with a name of our choosing: a copy of `sleep`, killed on drop.
struct Named {
    child: Child,
}

impl Named {
    fn spawn(dir: &Path, name: &str) -> Named {
        let bin = named_binary(dir, name, "sleep");
        Named { child: Command::new(bin).arg("60").spawn().unwrap() }
    }
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Named {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn named_binary(dir: &Path, name: &str, tool: &str) -> PathBuf {
    let p = dir.join(name);
    if !p.exists() {
        std::fs::copy(which(tool).unwrap(), &p).unwrap();
    }
    p
}

fn start(state: &ScratchDir, ifaces: &[&str]) -> Manager {
    Manager::start(&common::options(state, ifaces)).unwrap()
}

/// `limit ct-nm-a` covers the running process and one started later, and
/// lets both go when they exit.
#[test]
fn name_target_covers_current_and_future_processes() {
    let Some(_g) = begin() else { return };
    let dir = ScratchDir::new("name");
    let m = start(&dir, &[]);
    let a = Named::spawn(&dir.path, "ct-nm-a");
    let other = Named::spawn(&dir.path, "ct-nm-other");
    let id = m.limit(Target::name("ct-nm-a").unwrap(), &spec(Some("1M"), None, Some("ebpf"))).unwrap();
    assert!(m.kernel_proc(a.pid()).is_some(), "the running process is not covered");
    let b = Named::spawn(&dir.path, "ct-nm-a");
    assert!(wait_until(Duration::from_secs(2), || m.kernel_proc(b.pid()).is_some()), "a new process is not covered");
    assert!(m.kernel_proc(other.pid()).is_none(), "a process of another name was caught");
    assert_eq!(m.info(id).unwrap().covered.len(), 2);
    drop((a, b));
    assert!(wait_until(Duration::from_secs(2), || m.kernel_proc_entries() == 0), "exited processes stay in the map");
    assert!(m.info(id).is_ok(), "a name throttle outlives its processes");
}

/// A client started after its name throttle is limited from its first packet.
#[test]
fn name_target_limits_a_new_client_from_the_start() {
    let Some(_g) = begin() else { return };
    let mut lab = Lab::new(120);
    lab.server(5201);
    let dir = ScratchDir::new("name-traffic");
    let m = start(&dir, &[]);
    let id = m.limit(Target::name("ct-client-120").unwrap(), &spec(None, Some("2M"), Some("ebpf"))).unwrap();
    let c = lab.client("ct-client-120", 5201, 6, false);
    std::thread::sleep(Duration::from_secs(5));
    let current = m.info(id).unwrap().directions[&Direction::Up].current as f64 / (2.0 * MIB);
    let r = c.wait();
    eprintln!("rolling rate / limit: {current:.3}");
    assert!((0.9..=1.1).contains(&current), "the rolling rate says {current:.3} of the limit");
    eprintln!("per second: {:?}", r.intervals.iter().map(|b| b / MIB).collect::<Vec<_>>());
    assert!(r.intervals[0] <= 2.0 * MIB * 1.10, "the first second ran at {:.2} MiB/s", r.intervals[0] / MIB);
    assert_accurate("name throttle, new client", r.mean(1, 6), 2.0 * MIB);
}

/// pid beats exe beats name, per direction; removing the winner hands the
/// process back to the next throttle without a gap.
#[test]
fn precedence_is_per_direction_and_most_specific_first() {
    let Some(_g) = begin() else { return };
    let dir = ScratchDir::new("prec");
    let m = start(&dir, &[]);
    let p = Named::spawn(&dir.path, "ct-prec");
    let name = m.limit(Target::name("ct-prec").unwrap(), &spec(Some("1M"), Some("1M"), Some("ebpf"))).unwrap();
    let by_name = m.kernel_proc(p.pid()).unwrap();
    let exe_path = dir.path.join("ct-prec").to_string_lossy().into_owned();
    let exe = m.limit(Target::exe(&exe_path).unwrap(), &spec(Some("3M"), None, Some("ebpf"))).unwrap();
    let with_exe = m.kernel_proc(p.pid()).unwrap();
    assert_eq!(with_exe.up, by_name.up, "exe has no upload limit: name keeps upload");
    assert_ne!(with_exe.down, by_name.down, "exe beats name for download");
    let pid = m.limit_pid(p.pid(), &spec(None, Some("2M"), Some("ebpf"))).unwrap();
    let with_pid = m.kernel_proc(p.pid()).unwrap();
    assert_ne!(with_pid.up, by_name.up, "pid beats name for upload");
    assert_eq!(with_pid.down, with_exe.down, "pid has no download limit: exe keeps download");
    assert_eq!(m.info(name).unwrap().covered, Vec::<u32>::new(), "name limits nothing of this process");
    m.remove(pid).unwrap();
    m.remove(exe).unwrap();
    assert_eq!(m.kernel_proc(p.pid()).unwrap(), by_name, "back to the name throttle");
    assert_eq!(m.info(name).unwrap().covered, vec![p.pid()]);
}

/// Limiting a target again changes the same throttle: same id, new rate.
#[test]
fn limiting_again_changes_in_place() {
    let Some(_g) = begin() else { return };
    let dir = ScratchDir::new("again");
    let m = start(&dir, &[]);
    let p = Named::spawn(&dir.path, "ct-again");
    let t = Target::name("ct-again").unwrap();
    let id = m.limit(t.clone(), &spec(Some("1M"), None, None)).unwrap();
    let slots = m.kernel_proc(p.pid()).unwrap();
    assert_eq!(m.limit(t, &spec(Some("2M"), Some("1M"), None)).unwrap(), id);
    let info = m.info(id).unwrap();
    assert_eq!(info.directions[&Direction::Down].rate, rate("2M"));
    assert_eq!(m.list().len(), 1, "no duplicate");
    assert_eq!(m.kernel_proc(p.pid()).unwrap().down, slots.down, "the download slot kept (no gap)");
    assert_eq!(m.limit_pid(p.pid(), &spec(Some("1M"), None, None)).unwrap(), id + 1);
    assert_eq!(m.limit(Target::pid(p.pid(), true).unwrap(), &spec(Some("1M"), None, None)).unwrap(), id + 1);
}

/// A cgroup / unit target covers processes in it, including one moved in
/// after the throttle (found by the periodic rescan: moves have no event).
#[test]
fn unit_and_cgroup_targets() {
    let Some(_g) = begin() else { return };
    let root = throttled::kernel::cgroup::cgroup2_mount().unwrap();
    let cg = TestCgroup::new(&root, "ct-test.slice/ct-unit-1.scope");
    let dir = ScratchDir::new("unit");
    let mut opts = common::options(&dir, &[]);
    opts.loaded.config.health.interval = Duration::from_secs(1);
    let m = Manager::start(&opts).unwrap();
    let inside = Named::spawn(&dir.path, "ct-unit-a");
    cg.add(inside.pid());
    let outside = Named::spawn(&dir.path, "ct-unit-b");
    let id = m.limit(Target::unit("ct-unit-1.scope").unwrap(), &spec(Some("1M"), None, None)).unwrap();
    assert_eq!(m.info(id).unwrap().covered, vec![inside.pid()]);
    let by_path = m.limit(Target::cgroup("/ct-test.slice").unwrap(), &spec(None, Some("1M"), None)).unwrap();
    assert_eq!(m.info(by_path).unwrap().covered, vec![inside.pid()]);
    cg.add(outside.pid());
    let moved = wait_until(Duration::from_secs(4), || m.info(id).unwrap().covered.len() == 2);
    assert!(moved, "a process moved into the unit was not picked up: {:?}", m.info(id).unwrap().covered);
    drop((inside, outside));
    assert!(wait_until(Duration::from_secs(2), || m.kernel_proc_entries() == 0));
}

/// A cgroup made for a test, removed (with its parents) on drop.
struct TestCgroup {
    root: PathBuf,
    rel: PathBuf,
}

impl TestCgroup {
    fn new(root: &Path, rel: &str) -> TestCgroup {
        std::fs::create_dir_all(root.join(rel)).unwrap();
        TestCgroup { root: root.to_path_buf(), rel: rel.into() }
    }
    fn add(&self, pid: u32) {
        std::fs::write(self.root.join(&self.rel).join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let mut p = Some(self.rel.as_path());
        while let Some(rel) = p.filter(|r| !r.as_os_str().is_empty()) {
            let dir = self.root.join(rel);
            // Processes still inside go back to the root first.
            if let Ok(pids) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                pids.lines().for_each(|pid| drop(std::fs::write(self.root.join("cgroup.procs"), pid)));
            }
            let _ = std::fs::remove_dir(&dir);
            p = rel.parent();
        }
    }
}

/// Bad backends are refused with the reason, and nothing changes.
#[test]
fn unusable_backends_are_refused_and_nothing_changes() {
    let Some(_g) = begin() else { return };
    let dir = ScratchDir::new("refuse");
    let m = start(&dir, &[]);
    let p = Named::spawn(&dir.path, "ct-refuse");
    let before = m.backends();
    let err = m.limit_pid(p.pid(), &spec(Some("1M"), None, Some("nope"))).unwrap_err();
    assert!(matches!(err, ManagerError::UnknownBackend(_)), "{err}");
    let err = m.limit_pid(p.pid(), &spec(Some("1M"), Some("1M"), Some("tc_htb"))).unwrap_err();
    assert!(err.to_string().contains("does not support download"), "{err}");
    assert!(m.set_default(Direction::Up, "ifb_tc").is_err());
    assert!(m.set_default(Direction::Up, "bogus").is_err());
    assert!(m.list().is_empty() && m.kernel_proc(p.pid()).is_none(), "something was applied");
    assert_eq!(m.backends(), before, "backend state changed");
    assert_eq!(m.default_backend(Direction::Up).unwrap(), "ebpf");
}

/// Setting a default changes only new throttles: A stays on ebpf, B goes to
/// tc_htb, both enforce their limits at the same time, and removing A
/// routes to ebpf.
#[test]
fn default_switch_is_not_retroactive() {
    let Some(_g) = begin() else { return };
    let mut lab = Lab::new(121);
    lab.server(5201);
    lab.server(5202);
    let dir = ScratchDir::new("switch");
    let m = start(&dir, &[&lab.veth]);
    let a = lab.client("ct-client-121a", 5201, 12, false);
    let ida = m.limit_pid(a.pid(), &spec(None, Some("2M"), None)).unwrap();
    m.set_default(Direction::Up, "tc_htb").unwrap();
    assert!(m.take_events().contains(&Event::DefaultChanged { direction: Direction::Up, backend: "tc_htb" }));
    let b = lab.client("ct-client-121b", 5202, 12, false);
    let idb = m.limit_pid(b.pid(), &spec(None, Some("3M"), None)).unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let active = |name: &str| m.backends().into_iter().find(|b| b.name == name).unwrap();
    assert_eq!((active("ebpf").active, active("tc_htb").active), (1, 1));
    assert_eq!(active("ebpf").pids, vec![a.pid()]);
    assert_eq!(active("tc_htb").pids, vec![b.pid()]);
    assert_eq!(active("tc_htb").default_for, vec![Direction::Up]);
    assert_eq!(m.info(ida).unwrap().directions[&Direction::Up].backend, "ebpf");
    assert_eq!(m.info(idb).unwrap().directions[&Direction::Up].backend, "tc_htb");
    let (ra, rb) = (a.wait(), b.wait());
    assert_accurate("A on ebpf", ra.mean(2, 12), 2.0 * MIB);
    assert_accurate("B on tc_htb", rb.mean(2, 12), 3.0 * MIB);
    // Both clients exited: each removal went to the backend holding it.
    let idle = || (active("ebpf").active, active("tc_htb").active) == (0, 0);
    assert!(wait_until(Duration::from_secs(3), idle), "{:?}", m.backends());
    assert_eq!(active("tc_htb").health, Health::Idle);
}

/// Make-before-break: while a throttle moves ebpf → tc_htb → ebpf under
/// load, no second exceeds the limit by more than 10%.
#[test]
fn migration_under_load_stays_within_the_limit() {
    let Some(_g) = begin() else { return };
    let mut lab = Lab::new(122);
    lab.server(5201);
    let dir = ScratchDir::new("migrate");
    let m = start(&dir, &[&lab.veth]);
    let c = lab.client("ct-client-122", 5201, 14, false);
    let id = m.limit_pid(c.pid(), &spec(None, Some("2M"), Some("ebpf"))).unwrap();
    std::thread::sleep(Duration::from_secs(4));
    m.migrate(id, Some(Direction::Up), "tc_htb").unwrap();
    assert_eq!(m.info(id).unwrap().directions[&Direction::Up].backend, "tc_htb");
    std::thread::sleep(Duration::from_secs(5));
    m.migrate(id, None, "ebpf").unwrap();
    let r = c.wait();
    let per_sec: Vec<f64> = r.intervals.iter().map(|b| b / (2.0 * MIB)).collect();
    eprintln!("per second / limit: {per_sec:.3?}");
    assert!(per_sec.iter().skip(1).all(|x| *x <= 1.10), "a second exceeded the limit by more than 10%");
    assert_accurate("across two migrations", r.mean(2, 14), 2.0 * MIB);
    let moved = m.take_events().into_iter().filter(|e| matches!(e, Event::ThrottleMigrated { .. })).count();
    assert_eq!(moved, 2);
    let idle = |n: &str| m.backends().into_iter().find(|b| b.name == n).unwrap().health;
    assert_eq!(idle("tc_htb"), Health::Idle, "tc_htb kept its objects after its last throttle left");
}

/// A migration to a backend that cannot take it leaves the throttle where it was.
#[test]
fn failed_migration_changes_nothing() {
    let Some(_g) = begin() else { return };
    let dir = ScratchDir::new("migfail");
    let m = start(&dir, &["ct-no-such-if"]);
    let p = Named::spawn(&dir.path, "ct-migfail");
    let id = m.limit_pid(p.pid(), &spec(Some("1M"), None, Some("ebpf"))).unwrap();
    let before = m.kernel_proc(p.pid());
    let err = m.migrate(id, None, "tc_htb").unwrap_err();
    assert!(err.to_string().contains("does not support download"), "{err}");
    assert!(matches!(m.migrate(id, None, "nope"), Err(ManagerError::UnknownBackend(_))));
    assert_eq!(m.kernel_proc(p.pid()), before);
    assert_eq!(m.info(id).unwrap().directions[&Direction::Down].backend, "ebpf");
}

/// 5,000 short-lived processes matching a name rule: the daemon's kernel
/// map and its memory return to baseline.
#[test]
fn five_thousand_short_processes_leave_nothing() {
    let Some(_g) = begin() else { return };
    let dir = ScratchDir::new("5000");
    let conf = write_config(&dir, "", &[("short.toml", "[[rule]]\nname = \"ct-short\"\ndown = \"1M\"\n")]);
    let mut d = daemon(&conf);
    let short = named_binary(&dir.path, "ct-short", "true");
    let run = |n: usize| {
        for _ in 0..n {
            Command::new(&short).status().unwrap();
        }
    };
    run(500); // the allocator's steady state
    assert!(wait_until(Duration::from_secs(5), || kernel_procs_entries() == 0));
    let base = rss_kib(d.pid());
    run(5000);
    let drained = wait_until(Duration::from_secs(10), || kernel_procs_entries() == 0);
    let after = rss_kib(d.pid());
    eprintln!("daemon RSS {base} KiB before, {after} KiB after 5000 processes");
    assert!(drained, "{} entries left in CT_PROCS", kernel_procs_entries());
    assert!(after <= base + 256, "daemon memory grew from {base} to {after} KiB");
    d.stop();
}

fn daemon(conf: &Path) -> Daemon {
    Daemon::start(daemon_bin(), &["--config", conf.to_str().unwrap(), "--no-dbus"], &[])
}

fn write_config(dir: &ScratchDir, config: &str, rules: &[(&str, &str)]) -> PathBuf {
    let conf = dir.path.join("chadthrottled.toml");
    let state = dir.path.join("state");
    std::fs::write(&conf, format!("state_dir = {:?}\n{config}", state.display().to_string())).unwrap();
    write_rules(dir, rules);
    conf
}

fn write_rules(dir: &ScratchDir, rules: &[(&str, &str)]) {
    let rd = dir.path.join("rules.d");
    let _ = std::fs::remove_dir_all(&rd);
    std::fs::create_dir_all(&rd).unwrap();
    for (name, text) in rules {
        std::fs::write(rd.join(name), text).unwrap();
    }
}

/// Runtime throttles come back after a restart with their ids and backends;
/// a pid throttle only while the same process lives.
#[test]
fn persisted_throttles_survive_a_restart() {
    let Some(_g) = begin() else { return };
    let dir = ScratchDir::new("persist");
    let p = Named::spawn(&dir.path, "ct-persist");
    let mut gone = Named::spawn(&dir.path, "ct-persist-gone");
    let (by_name, by_pid, dead) = {
        let m = start(&dir, &[]);
        m.set_default(Direction::Down, "ebpf").unwrap();
        let n = m.limit(Target::name("ct-persist").unwrap(), &spec(Some("1M"), Some("2M"), None)).unwrap();
        let pd = m.limit_pid(p.pid(), &spec(Some("3M"), None, None)).unwrap();
        let d = m.limit_pid(gone.pid(), &spec(Some("3M"), None, None)).unwrap();
        m.shutdown().unwrap();
        (n, pd, d)
    };
    let _ = gone.child.kill();
    let _ = gone.child.wait();
    let m = start(&dir, &[]);
    let ids: Vec<_> = m.list().into_iter().map(|t| t.id).collect();
    assert_eq!(ids, vec![by_name, by_pid], "restored {ids:?}; {dead} belonged to a dead process");
    let t = m.info(by_name).unwrap();
    assert_eq!(t.target, Target::name("ct-persist").unwrap());
    assert_eq!(t.directions[&Direction::Up].rate, rate("2M"));
    assert_eq!(m.info(by_pid).unwrap().covered, vec![p.pid()]);
    assert!(m.kernel_proc(p.pid()).is_some());
    assert_eq!(m.default_backend(Direction::Down).unwrap(), "ebpf");
    let next = m.limit(Target::name("ct-persist-2").unwrap(), &spec(Some("1M"), None, None)).unwrap();
    assert!(next > dead, "ids are never reused");
}

/// SIGHUP-style reload: unchanged rules are not touched, changed ones change
/// in place, removed ones go (reason Reload); a bad file changes nothing.
#[test]
fn reload_applies_only_the_difference() {
    let Some(_g) = begin() else { return };
    let dir = ScratchDir::new("reload");
    let rule = |name: &str, lim: &str| format!("[[rule]]\nname = \"{name}\"\n{lim}\n");
    let a = rule("ct-rl-a", "down = \"1M\"");
    let conf = write_config(&dir, "", &[("a.toml", &a), ("b.toml", &rule("ct-rl-b", "up = \"1M\""))]);
    let opts = ManagerOptions {
        loaded: throttled::config::load(&conf).unwrap(),
        config_path: Some(conf.clone()),
        ..Default::default()
    };
    let m = Manager::start(&opts).unwrap();
    let find = |n: &str| m.find(&Target::name(n).unwrap());
    let (ida, idb) = (find("ct-rl-a").unwrap(), find("ct-rl-b").unwrap());
    m.take_events();
    let c = rule("ct-rl-c", "down = \"5M\"");
    write_rules(&dir, &[("a.toml", &a), ("b.toml", &rule("ct-rl-b", "up = \"2M\"")), ("c.toml", &c)]);
    m.reload().unwrap();
    let ev = m.take_events();
    assert!(!ev.iter().any(|e| matches!(e, Event::ThrottleChanged { id } if *id == ida)), "a was disturbed: {ev:?}");
    assert!(ev.contains(&Event::ThrottleChanged { id: idb }), "{ev:?}");
    assert_eq!(m.info(idb).unwrap().directions[&Direction::Up].rate, rate("2M"));
    let idc = find("ct-rl-c").expect("new rule applied");
    write_rules(&dir, &[("a.toml", &a), ("c.toml", &c), ("bad.toml", "[[rule]]\nname = \"x\"\ndown = \"1Q\"\n")]);
    let err = m.reload().unwrap_err().to_string();
    assert!(err.contains("bad.toml") && err.contains("down"), "{err}");
    assert!(find("ct-rl-b").is_some(), "a failed reload changed something");
    write_rules(&dir, &[("a.toml", &a), ("c.toml", &c)]);
    m.reload().unwrap();
    assert!(m.take_events().contains(&Event::ThrottleRemoved { id: idb, reason: RemovalReason::Reload }));
    let ids: Vec<_> = m.list().into_iter().map(|t| t.id).collect();
    assert_eq!(ids, vec![ida, idc]);
}

/// External damage is repaired within 10 s and recorded: the HTB root
/// qdisc deleted with tc, and a cgroup program detached with bpftool.
#[test]
fn health_repairs_external_damage() {
    let Some(_g) = begin() else { return };
    let mut lab = Lab::new(123);
    lab.server(5201);
    let dir = ScratchDir::new("repair");
    let m = start(&dir, &[&lab.veth]);
    let p = Named::spawn(&dir.path, "ct-repair");
    m.limit_pid(p.pid(), &spec(None, Some("2M"), Some("tc_htb"))).unwrap();
    m.take_events();
    sh(&["tc", "qdisc", "del", "dev", &lab.veth, "root"]);
    let ours = || sh(&["tc", "qdisc", "show", "dev", &lab.veth, "root"]).contains("htb c7:");
    assert!(wait_until(Duration::from_secs(10), || ours() && class_count(&lab.veth) == 4), "not repaired");
    let ev = m.take_events();
    let broke = ev.iter().any(|e| matches!(e, Event::HealthChanged { component: "tc_htb", health: Health::Broken(_) }));
    assert!(broke, "{ev:?}");
    assert!(ev.contains(&Event::HealthChanged { component: "tc_htb", health: Health::Healthy }), "{ev:?}");
    let link = egress_link_id();
    sh(&["bpftool", "link", "detach", "id", &link.to_string()]);
    assert!(!attached("ct_egress"), "bpftool did not detach ct_egress (test is void)");
    assert!(wait_until(Duration::from_secs(10), || attached("ct_egress")), "ct_egress was not re-attached");
    // Both repairs hold: HTB classifies what the re-attached program marks.
    let c = lab.client("ct-client-123", 5201, 8, false);
    m.limit_pid(c.pid(), &spec(None, Some("2M"), Some("tc_htb"))).unwrap();
    let r = c.wait();
    assert_accurate("after repairs", r.mean(2, 8), 2.0 * MIB);
    let ev = m.take_events();
    let dp = ev.iter().any(|e| matches!(e, Event::HealthChanged { component: "datapath", health: Health::Broken(_) }));
    assert!(dp, "{ev:?}");
}

fn class_count(dev: &str) -> usize {
    sh(&["tc", "class", "show", "dev", dev]).lines().filter(|l| l.contains("class htb c7:")).count()
}

fn attached(prog: &str) -> bool {
    let root = throttled::kernel::cgroup::cgroup2_mount().unwrap();
    sh(&["bpftool", "cgroup", "show", root.to_str().unwrap()]).lines().any(|l| l.contains(prog))
}

fn egress_link_id() -> u64 {
    let v: serde_json::Value = serde_json::from_str(&sh(&["bpftool", "-j", "link", "show"])).unwrap();
    let progs: serde_json::Value = serde_json::from_str(&sh(&["bpftool", "-j", "prog", "show"])).unwrap();
    let prog = progs.as_array().unwrap().iter().find(|p| p["name"] == "ct_egress").expect("ct_egress loaded")["id"]
        .as_u64()
        .unwrap();
    v.as_array().unwrap().iter().find(|l| l["prog_id"].as_u64() == Some(prog)).expect("ct_egress has a link")["id"]
        .as_u64()
        .unwrap()
}

/// With `failover`, a broken ifb_tc hands its throttle to ebpf.
#[test]
fn failover_moves_throttles_to_the_next_backend() {
    let Some(_g) = begin() else { return };
    let lab = Lab::new(124);
    let dir = ScratchDir::new("failover");
    let mut opts = common::options(&dir, &[&lab.veth]);
    opts.loaded.config.health.policy = FailurePolicy::Failover;
    let m = Manager::start(&opts).unwrap();
    let p = Named::spawn(&dir.path, "ct-failover");
    let id = m.limit_pid(p.pid(), &spec(Some("2M"), None, Some("ifb_tc"))).unwrap();
    sh(&["ip", "link", "del", &format!("cti-{}", lab.veth)]);
    let moved = || m.info(id).unwrap().directions[&Direction::Down].backend == "ebpf";
    assert!(wait_until(Duration::from_secs(10), moved), "not failed over");
    let ev = m.take_events();
    let migrated = Event::ThrottleMigrated { id, direction: Direction::Down, from: "ifb_tc", to: "ebpf" };
    assert!(ev.contains(&migrated), "{ev:?}");
    assert!(ev.iter().any(|e| matches!(e, Event::HealthChanged { component: "ifb_tc", .. })), "{ev:?}");
    assert!(!sh(&["ip", "link", "show"]).contains("cti-"), "ifb_tc kept objects after failing over");
}

/// `kill -9`, then a restart: the new daemon cleans what the old one left,
/// restores the rules, and ends with exactly one set of kernel objects;
/// SIGTERM then removes everything and restores the original root qdisc.
#[test]
fn kill_9_then_restart_leaves_exactly_one_set() {
    let Some(_g) = begin() else { return };
    let lab = Lab::new(125);
    sh(&["tc", "qdisc", "replace", "dev", &lab.veth, "root", "pfifo", "limit", "77"]);
    let dir = ScratchDir::new("k9");
    let rules = [(
        "k9.toml",
        "[[rule]]\nname = \"ct-k9\"\nup = \"1M\"\ndown = \"1M\"\nup_backend = \"tc_htb\"\ndown_backend = \"ifb_tc\"\n",
    )];
    let conf = write_config(&dir, &format!("interfaces = [{:?}]\n", lab.veth), &rules);
    let mut d = daemon(&conf);
    d.kill9();
    let ifb = format!("cti-{}", lab.veth);
    assert!(sh(&["ip", "link", "show"]).contains(&ifb), "nothing was left to clean up (test is void)");
    let mut d = daemon(&conf);
    let root = throttled::kernel::cgroup::cgroup2_mount().unwrap();
    let cg = sh(&["bpftool", "cgroup", "show", root.to_str().unwrap()]);
    for prog in throttled::kernel::bpf::CGROUP_PROGRAMS {
        assert_eq!(cg.lines().filter(|l| l.contains(prog)).count(), 1, "{prog}: {cg}");
    }
    let links = sh(&["ip", "-o", "link", "show"]);
    assert_eq!(links.lines().filter(|l| l.contains(&ifb)).count(), 1, "{links}");
    let qd = sh(&["tc", "qdisc", "show", "dev", &lab.veth]);
    assert_eq!(qd.lines().filter(|l| l.contains("htb c7:")).count(), 1, "{qd}");
    assert_eq!(class_count(&lab.veth), 4, "top, default and shared classes, one throttle");
    assert_eq!(class_count(&ifb), 4);
    d.stop();
    assert!(!sh(&["ip", "link", "show"]).contains(&ifb));
    let qd = sh(&["tc", "qdisc", "show", "dev", &lab.veth, "root"]);
    assert!(qd.contains("pfifo") && qd.contains("limit 77"), "original root not restored: {qd}");
    assert!(wait_until(Duration::from_secs(5), || !attached("ct_")), "programs left attached");
}
