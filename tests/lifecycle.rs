//! Kernel objects appear and disappear with the daemon, checked with the
//! kernel's own queries (and bpftool), never with our bookkeeping. Also bad
//! input and the loopback exemption.
mod common;

use std::{process::Command, time::Duration};

use common::*;
use throttled::{
    kernel::bpf::{CGROUP_PROGRAMS, MAP_NAMES, PROGRAM_NAMES},
    manager::{LimitSpec, Manager, ManagerError},
};

fn ct_programs() -> Vec<String> {
    aya::programs::loaded_programs()
        .flatten()
        .filter_map(|p| p.name_as_str().map(String::from))
        .filter(|n| PROGRAM_NAMES.contains(&n.as_str()))
        .collect()
}

fn ct_maps() -> Vec<String> {
    aya::maps::loaded_maps()
        .flatten()
        .filter_map(|m| m.name_as_str().map(String::from))
        .filter(|n| MAP_NAMES.contains(&n.as_str()))
        .collect()
}

/// Programs bpftool sees attached to the cgroup v2 root.
fn bpftool_attached() -> Vec<String> {
    let root = throttled::kernel::cgroup::cgroup2_mount().unwrap();
    let Some(bpftool) = which("bpftool") else {
        throttle_testkit::missing("bpftool is not installed (run scripts/bootstrap.sh)");
        return vec![];
    };
    let out = sh(&[bpftool.to_str().unwrap(), "-j", "cgroup", "show", root.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out }).unwrap();
    v.as_array().unwrap().iter().filter_map(|p| p["name"].as_str().map(String::from)).collect()
}

fn pinned() -> Vec<String> {
    std::fs::read_dir("/sys/fs/bpf")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains("ct_") || n.contains("CT_"))
                .collect()
        })
        .unwrap_or_default()
}

#[track_caller]
fn assert_nothing_left() {
    // Program and map release is deferred (RCU): allow a moment.
    let clean = wait_until(Duration::from_secs(5), || ct_programs().is_empty() && ct_maps().is_empty());
    assert!(clean, "left in the kernel: programs {:?}, maps {:?}", ct_programs(), ct_maps());
    let attached: Vec<_> = bpftool_attached().into_iter().filter(|n| n.starts_with("ct_")).collect();
    assert!(attached.is_empty(), "bpftool still sees {attached:?} on the cgroup root");
    assert!(pinned().is_empty(), "pinned: {:?}", pinned());
}

#[track_caller]
fn assert_loaded() {
    let mut progs = ct_programs();
    progs.sort();
    let mut want: Vec<String> = PROGRAM_NAMES.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(progs, want, "exactly one copy of each program");
    let mut attached: Vec<_> = bpftool_attached().into_iter().filter(|n| n.starts_with("ct_")).collect();
    attached.sort();
    let mut want: Vec<String> = CGROUP_PROGRAMS.iter().map(|s| s.to_string()).collect();
    want.sort();
    if which("bpftool").is_some() {
        assert_eq!(attached, want, "bpftool view of the cgroup root");
    }
}

#[test]
fn sigterm_leaves_nothing_attached() {
    let Some(_g) = begin() else { return };
    assert_nothing_left();
    let mut target = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = target.id().to_string();
    let state = ScratchDir::new("sigterm");
    let mut d = isolated_daemon(&state, &["--pid", &pid, "--down", "1M", "--up", "1M"]);
    assert_loaded();
    unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
    let status = d.wait().unwrap();
    assert!(status.success(), "daemon exited with {status}");
    let _ = target.kill();
    let _ = target.wait();
    assert_nothing_left();
}

#[test]
fn kill_9_leaves_nothing_attached() {
    let Some(_g) = begin() else { return };
    let state = ScratchDir::new("kill9");
    let mut d = isolated_daemon(&state, &[]);
    assert_loaded();
    d.kill().unwrap(); // SIGKILL
    d.wait().unwrap();
    assert_nothing_left();
}

#[test]
fn dropping_the_loader_leaves_nothing_attached() {
    let Some(_g) = begin() else { return };
    let mut target = Command::new("sleep").arg("30").spawn().unwrap();
    let state = ScratchDir::new("m");
    let m = Manager::start(&common::options(&state, &[])).unwrap();
    assert_loaded();
    let spec = LimitSpec { down: Some("2M".parse().unwrap()), ..Default::default() };
    m.limit_pid(target.id(), &spec).unwrap();
    assert_eq!(m.kernel_proc_entries(), 1);
    drop(m);
    let _ = target.kill();
    let _ = target.wait();
    assert_nothing_left();
}

#[test]
fn bad_input_is_rejected_and_changes_nothing() {
    let Some(_g) = begin() else { return };
    let state = ScratchDir::new("m");
    let m = Manager::start(&common::options(&state, &[])).unwrap();
    let one = LimitSpec { down: Some("1M".parse().unwrap()), ..Default::default() };
    assert!(matches!(m.limit_pid(0, &one), Err(ManagerError::InvalidArgument(_))));
    assert!(matches!(m.limit_pid(2, &one), Err(ManagerError::InvalidArgument(_))), "kernel thread");
    assert!(matches!(m.limit_pid(u32::MAX - 1, &one), Err(ManagerError::NoSuchProcess(_))));
    // A process that has exited (and been reaped) by the time of the call.
    let mut gone = Command::new("true").spawn().unwrap();
    let gone_pid = gone.id();
    gone.wait().unwrap();
    assert!(matches!(m.limit_pid(gone_pid, &one), Err(ManagerError::NoSuchProcess(_))));
    let me = std::process::id();
    assert!(matches!(m.limit_pid(me, &LimitSpec::default()), Err(ManagerError::InvalidArgument(_))));
    let bad_backend = LimitSpec { backend: Some("nope".into()), ..one.clone() };
    assert!(matches!(m.limit_pid(me, &bad_backend), Err(ManagerError::UnknownBackend(_))));
    assert!(matches!(m.remove(12345), Err(ManagerError::NoSuchThrottle(12345))));
    assert!(m.list().is_empty(), "a failed call left a throttle behind");
    assert_eq!(m.kernel_proc_entries(), 0, "a failed call left a kernel map entry");
}

#[test]
fn loopback_is_exempt_by_default() {
    let Some(_g) = begin() else { return };
    let mut lab = Lab::new(20);
    lab.server(5201);
    let state = ScratchDir::new("m");
    let m = Manager::start(&common::options(&state, &[])).unwrap();
    let c = lab.client_in_ns("ct-client-lo", "127.0.0.1", 5201, 4);
    let spec = LimitSpec { up: Some("1M".parse().unwrap()), down: Some("1M".parse().unwrap()), ..Default::default() };
    let id = m.limit_pid(c.pid(), &spec).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let info = m.info(id).unwrap();
    let r = c.wait();
    let rate = r.mean(1, 4);
    assert!(rate > 50.0 * MIB, "loopback was throttled: {:.1} MiB/s", rate / MIB);
    let seen: u64 = info.directions.values().map(|d| d.counters.pass_pkts + d.counters.drop_pkts).sum();
    assert_eq!(seen, 0, "loopback packets reached the bucket");
}
