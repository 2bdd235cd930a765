//! The daemon under the unit's capability set (`setpriv --bounding-set`, as
//! systemd's CapabilityBoundingSet does): every backend still works. And a
//! missing capability is named, not mistaken for a missing kernel feature.
mod common;

use std::process::{Command, Stdio};

use common::*;

/// The unit's CapabilityBoundingSet, in setpriv's spelling.
const UNIT_CAPS: &str = "bpf,perfmon,net_admin,sys_admin,sys_ptrace";

fn bounded(caps: &str) -> String {
    format!("-all,{}", caps.split(',').map(|c| format!("+{c}")).collect::<Vec<_>>().join(","))
}

/// setpriv's arguments for the daemon under `bounding`, with scratch config
/// and state, no bus, and `extra`.
fn under<'a>(bounding: &'a str, state: &'a ScratchDir, extra: &[&'a str]) -> Vec<&'a str> {
    let daemon = daemon_bin();
    let dirs = ["--config", "/nonexistent/chadthrottled.toml", "--state-dir", state.path.to_str().unwrap()];
    [&["--bounding-set", bounding, daemon][..], &dirs[..], &["--no-dbus"][..], extra].concat()
}

fn setpriv() -> Option<std::path::PathBuf> {
    let p = which("setpriv");
    if p.is_none() {
        throttle_testkit::missing("setpriv is not installed (util-linux; run scripts/bootstrap.sh)");
    }
    p
}

/// tc_htb up and ifb_tc down on the lab's veth, under exactly the unit's
/// capabilities: the kernel objects appear and an upload is held to its limit.
#[test]
fn every_backend_works_with_the_units_capabilities() {
    let Some(_g) = begin() else { return };
    let Some(setpriv) = setpriv() else { return };
    let mut lab = Lab::new(70);
    lab.server(5201);
    let state = ScratchDir::new("caps-unit");
    let client = lab.client("ct-caps", 5201, 10, false);
    let pid = client.pid().to_string();
    let limit = [
        "--pid",
        &pid,
        "--up",
        "2M",
        "--down",
        "2M",
        "--up-backend",
        "tc_htb",
        "--down-backend",
        "ifb_tc",
        "--interface",
        &lab.veth,
    ];
    let mut d = spawn_daemon(setpriv.to_str().unwrap(), &under(&bounded(UNIT_CAPS), &state, &limit));
    let qdisc = sh(&["tc", "qdisc", "show", "dev", &lab.veth]);
    assert!(qdisc.contains("htb c7:"), "no HTB root under the unit's capabilities: {qdisc}");
    let links = sh(&["ip", "-o", "link", "show"]);
    assert!(links.contains(&format!("cti-{}", lab.veth)), "no IFB under the unit's capabilities");
    let r = client.wait();
    let mean = r.mean(2, 10);
    eprintln!("upload under the unit's capabilities: {:.0} B/s for a 2M limit", mean);
    assert!((0.85..=1.02).contains(&(mean / (2 << 20) as f64)), "not held to its limit: {mean:.0} B/s");
    unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
    assert!(d.wait().unwrap().success());
}

/// Without CAP_SYS_ADMIN the feature probe cannot make its namespace: the
/// interface backends say which capability is missing, and ebpf still works.
#[test]
fn a_missing_capability_is_named() {
    let Some(_g) = begin() else { return };
    let Some(setpriv) = setpriv() else { return };
    let state = ScratchDir::new("caps-missing");
    let mut target = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = target.id().to_string();
    let caps = bounded("bpf,perfmon,net_admin,sys_ptrace");
    let args = under(&caps, &state, &["--pid", &pid, "--up", "1M", "--up-backend", "tc_htb"]);
    let out = Command::new(&setpriv).args(&args).stdin(Stdio::null()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "tc_htb worked without CAP_SYS_ADMIN?");
    assert!(err.contains("needs CAP_SYS_ADMIN"), "the missing capability is not named: {err}");
    // The ebpf backend needs no namespace: the same limit on it works.
    let ebpf = ["--up-backend", "ebpf"];
    let mut d = spawn_daemon(setpriv.to_str().unwrap(), &[&args[..args.len() - 2], &ebpf[..]].concat());
    unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
    assert!(d.wait().unwrap().success());
    let _ = target.kill();
    let _ = target.wait();
}
