//! Faults: the daemon's own storage (a full state directory, a corrupted
//! state file), and kernel objects broken under running traffic (the IFB
//! deleted, the interface down and up). Limits must come back within 10 s,
//! the health change must be reported, nothing may be left twice, and a
//! storage failure must be said clearly.
mod common;

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use common::*;
use throttled::{
    backend::Health,
    config,
    manager::{Event, LimitSpec, Manager, ManagerOptions},
    target::Target,
};

/// A tiny tmpfs, unmounted on drop even if the test fails.
struct TinyFs<'a>(&'a Path);

impl<'a> TinyFs<'a> {
    fn mount(at: &'a Path) -> TinyFs<'a> {
        std::fs::create_dir_all(at).unwrap();
        sh(&["mount", "-t", "tmpfs", "-o", "size=16k,mode=0700", "ct-fault", at.to_str().unwrap()]);
        TinyFs(at)
    }

    /// Fills it to the last byte.
    fn fill(&self) {
        let _ = Command::new("dd")
            .args(["if=/dev/zero", &format!("of={}/filler", self.0.display()), "bs=1k", "count=64"])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

impl Drop for TinyFs<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

fn options(dir: &ScratchDir, state: &Path) -> ManagerOptions {
    let conf = dir.path.join("chadthrottled.toml");
    std::fs::write(&conf, format!("state_dir = {:?}\ninterfaces = []\n", state.display().to_string())).unwrap();
    ManagerOptions { loaded: config::load(&conf).unwrap(), config_path: Some(conf), overrides: Default::default() }
}

/// ENOSPC on the state directory: the limit is applied all the same, and
/// the failure to save it is reported as an event with the OS's reason.
#[test]
fn a_full_state_directory_keeps_the_limit() {
    let Some(_g) = begin() else { return };
    let dir = ScratchDir::new("fault-enospc");
    let state = dir.path.join("state");
    let fs = TinyFs::mount(&state);
    let m = Manager::start(&options(&dir, &state)).unwrap();
    fs.fill();
    let events = m.subscribe();
    let mut target = Command::new("sleep").arg("30").spawn().unwrap();
    let spec = LimitSpec { down: Some("1M".parse().unwrap()), ..Default::default() };
    let id = m.limit_pid(target.id(), &spec).expect("the limit must apply even when it cannot be saved");
    assert!(m.kernel_proc(target.id()).is_some_and(|s| s.down != 0), "not in the kernel's map");
    let failed: Vec<String> = events
        .try_iter()
        .filter_map(|e| match e {
            Event::PersistFailed { reason } => Some(reason),
            _ => None,
        })
        .collect();
    assert!(failed.iter().any(|r| r.contains("No space left on device")), "no clear persistence error: {failed:?}");
    m.remove(id).unwrap();
    let _ = target.kill();
    let _ = target.wait();
    drop(m);
}

/// A corrupted state file: the daemon starts, moves the file aside with a
/// warning, and the rules from rules.d still apply.
#[test]
fn a_corrupt_state_file_is_moved_aside_and_rules_still_apply() {
    let Some(_g) = begin() else { return };
    let dir = ScratchDir::new("fault-corrupt");
    let state = dir.path.join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("throttles.json"), b"{\"version\": 1, \"throttles\": [tru").unwrap();
    std::fs::create_dir_all(dir.path.join("rules.d")).unwrap();
    std::fs::write(dir.path.join("rules.d/keep.toml"), "[[rule]]\nname = \"ct-fault-rule\"\ndown = \"1M\"\n").unwrap();
    let m = Manager::start(&options(&dir, &state)).expect("a corrupt state file must not stop the daemon");
    assert!(m.find(&Target::name("ct-fault-rule").unwrap()).is_some(), "the rule was not applied");
    assert!(state.join("throttles.json.corrupt").exists(), "the corrupt file was not kept for inspection");
    let saved = std::fs::read_to_string(state.join("throttles.json")).unwrap();
    assert!(serde_json::from_str::<serde_json::Value>(&saved).is_ok(), "a fresh, valid state was not written");
    drop(m);
}

const LIMIT: f64 = 2.0 * 1048576.0;

/// Runs a throttled iperf3 flow for 20 s on `backend`, breaks something
/// at second 4, and checks: the backend's health went broken (or degraded,
/// for an interface that is only down) and back, the
/// limit holds again within 10 s of the fault, and `count()` of our objects
/// ends at exactly one.
fn fault_under_traffic(tag: u8, backend: &str, fault: impl FnOnce(&Lab), count: impl Fn(&Lab) -> usize) {
    let mut lab = Lab::new(tag);
    lab.server(5201);
    let state = ScratchDir::new(&format!("fault-{tag}"));
    let m = Manager::start(&throttled::testing::options(&state, &[&lab.veth])).unwrap();
    let events = m.subscribe();
    let t0 = Instant::now();
    // ifb_tc shapes downloads, tc_htb uploads.
    let reverse = backend == "ifb_tc";
    let c = lab.client(&format!("ct-fault-{tag}"), 5201, 20, reverse);
    let two = Some("2M".parse().unwrap());
    let spec = if reverse {
        LimitSpec { down: two, ..Default::default() }
    } else {
        LimitSpec { up: two, ..Default::default() }
    };
    let spec = LimitSpec { backend: Some(backend.into()), ..spec };
    m.limit_pid(c.pid(), &spec).unwrap();
    std::thread::sleep(Duration::from_secs(4));
    fault(&lab);
    let broke = t0.elapsed().as_secs_f64();
    let healthy = || m.backends().into_iter().find(|b| b.name == backend).is_some_and(|b| b.health == Health::Healthy);
    assert!(wait_until(Duration::from_secs(10), || count(&lab) == 1 && healthy()), "{backend} not repaired in 10 s");
    let repaired = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    // While the flow still runs (its throttle, and our objects, end with it).
    assert_eq!(count(&lab), 1, "{backend}: objects duplicated or lost");
    let r = c.wait();
    eprintln!("{backend}: broken at {broke:.1} s, repaired at {repaired:.1} s, per second: {:?}", r.intervals);
    assert_held_from(backend, &r, broke + 10.0);
    let changes: Vec<(String, Health)> = events
        .try_iter()
        .filter_map(|e| match e {
            Event::HealthChanged { component, health } => Some((component.to_string(), health)),
            _ => None,
        })
        .collect();
    assert!(
        changes.iter().any(|(c, h)| c == backend && matches!(h, Health::Broken(_) | Health::Degraded(_))),
        "no health event for the fault: {changes:?}"
    );
}

/// From second `from` of a 20 s run on, the flow is held to its limit and
/// not stalled.
#[track_caller]
fn assert_held_from(what: &str, r: &IperfResult, from: f64) {
    let after = r.mean((from.ceil() as usize).min(18), 20);
    assert!(after <= LIMIT * 1.1, "{what}: {after:.0} B/s from second {from:.0}, over the limit");
    assert!(after >= LIMIT * 0.5, "{what}: {after:.0} B/s from second {from:.0}: the flow stalled");
}

fn ifbs(lab: &Lab) -> usize {
    let links = sh(&["ip", "-o", "link", "show"]);
    links.lines().filter(|l| l.contains(&format!("cti-{}", lab.veth))).count()
}

fn htb_roots(lab: &Lab) -> usize {
    sh(&["tc", "qdisc", "show", "dev", &lab.veth]).lines().filter(|l| l.contains("htb c7:")).count()
}

#[test]
fn the_ifb_deleted_under_traffic_is_rebuilt() {
    let Some(_g) = begin() else { return };
    fault_under_traffic(
        71,
        "ifb_tc",
        |lab| {
            sh(&["ip", "link", "del", &format!("cti-{}", lab.veth)]);
        },
        ifbs,
    );
}

#[test]
fn the_interface_down_and_up_under_traffic() {
    let Some(_g) = begin() else { return };
    fault_under_traffic(
        72,
        "tc_htb",
        |lab| {
            sh(&["ip", "link", "set", &lab.veth, "down"]);
            std::thread::sleep(Duration::from_millis(500));
            sh(&["ip", "link", "set", &lab.veth, "up"]);
        },
        htb_roots,
    );
}

/// `kill -9` of the daemon under a throttled upload, then a restart: the
/// next run removes what the killed one left, restores the saved throttle
/// on its backend, and the flow is held to its limit again, with exactly one
/// HTB root on the interface.
#[test]
fn kill_9_under_traffic_then_restart() {
    let Some(_g) = begin() else { return };
    let mut lab = Lab::new(75);
    lab.server(5201);
    let state = ScratchDir::new("fault-kill9");
    let t0 = Instant::now();
    let c = lab.client("ct-fault-kill9", 5201, 20, false);
    let pid = c.pid().to_string();
    let args = ["--no-dbus", "--interface", &lab.veth];
    let limit = ["--pid", &pid, "--up", "2M", "--up-backend", "tc_htb"];
    let mut first = isolated_daemon(&state, &[&args[..], &limit[..]].concat());
    std::thread::sleep(Duration::from_secs(4));
    first.kill().unwrap(); // SIGKILL: no cleanup at all
    first.wait().unwrap();
    let killed = t0.elapsed().as_secs_f64();
    let mut second = isolated_daemon(&state, &args);
    let restarted = t0.elapsed().as_secs_f64();
    assert_eq!(htb_roots(&lab), 1, "the restart left two HTB roots or none");
    let r = c.wait();
    eprintln!("killed at {killed:.1} s, restarted at {restarted:.1} s, per second: {:?}", r.intervals);
    assert_held_from("the restored throttle", &r, restarted + 3.0);
    unsafe { libc::kill(second.id() as i32, libc::SIGTERM) };
    assert!(second.wait().unwrap().success());
    assert_eq!(htb_roots(&lab), 0, "the clean stop left our HTB behind");
}
