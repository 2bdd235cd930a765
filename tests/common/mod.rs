//! Shared by the integration tests (`mod common;` in each). The lab itself
//! lives in throttle-testkit so that the benchmarks use the same code.
#![allow(dead_code, unused_imports)]

pub mod monitor;

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

pub use throttle_testkit::{lab::*, ScratchDir};
use throttled::{
    manager::{LimitSpec, Manager, ManagerOptions},
    Rate,
};

/// Manager options with a private state directory and, for the interface
/// backends, only the given interfaces (never the host's).
pub fn options(state: &ScratchDir, interfaces: &[&str]) -> ManagerOptions {
    let mut o = ManagerOptions::default();
    o.loaded.config.state_dir = state.path.clone();
    o.loaded.config.interfaces = Some(interfaces.iter().map(|s| s.to_string()).collect());
    o
}

/// The daemon's binary; throttlectl is next to it. Cargo gives a package's
/// tests only its own binaries (CARGO_BIN_EXE_*), and the daemon is another
/// package's: the first call builds both, with this test's profile, so a
/// test never runs a stale daemon (a no-op when they are current).
pub fn daemon_bin() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| build_bins().join("chadthrottled").to_str().unwrap().to_string())
}

/// throttlectl, built next to the daemon by `daemon_bin`.
pub fn throttlectl() -> PathBuf {
    let p = Path::new(daemon_bin()).with_file_name("throttlectl");
    assert!(p.exists(), "{} is not built (scripts/test.sh builds the workspace first)", p.display());
    p
}

/// Runs `cargo build` for the daemon and throttlectl; returns their directory.
fn build_bins() -> PathBuf {
    // This test runs as <target>/<profile>/deps/<name>-<hash>.
    let exe = std::env::current_exe().unwrap();
    let profile = match exe.parent().and_then(Path::parent).and_then(Path::file_name).and_then(|p| p.to_str()) {
        Some("debug") | None => "dev".to_string(),
        Some(p) => p.to_string(),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let out = Command::new(cargo)
        .args(["build", "--quiet", "--message-format=json", "--profile", &profile])
        .args(["-p", "throttled", "-p", "throttlectl", "--bins"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo to build the daemon");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "building the daemon failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let daemon = stdout.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).find_map(|m| {
        let bin = m["target"]["name"] == "chadthrottled" && m["executable"].is_string();
        bin.then(|| PathBuf::from(m["executable"].as_str().unwrap()))
    });
    daemon.expect("cargo reported no chadthrottled binary").parent().unwrap().to_path_buf()
}

/// Serializes kernel tests. `None`: prerequisites are missing, and the test
/// returns (reported as skipped locally; `prerequisites` fails under CI).
pub fn begin() -> Option<Serial> {
    let guard = serial();
    prerequisites().then_some(guard)
}

/// Limits a fresh iperf3 client from its start, then checks that the
/// throttle's kernel counters moved and that goodput from second 2 is within
/// the 0.93–1.02 of the limit. Downloads and rates up to 2 MiB/s are
/// measured over 12 s: policed downloads have RTO gaps to even out, and at
/// low rates data arrives in ~160 KiB bursts that quantize per-second counts.
pub fn check_accuracy(lab: &Lab, m: &Manager, tag: u8, spec: &LimitSpec, limit: Rate, reverse: bool) {
    let secs = if reverse || limit.bytes_per_sec() <= 2 << 20 { 12 } else { 8 };
    let c = lab.client(&format!("ct-client-{tag}"), 5201, secs, reverse);
    let id = m.limit_pid(c.pid(), spec).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(secs as u64 * 1000 - 500));
    let info = m.info(id).unwrap();
    let r = c.wait();
    let d = info.directions.values().next().unwrap();
    eprintln!("{} counters {:?}, retransmits {:?}", d.backend, d.counters, r.retransmits);
    assert!(d.counters.pass_pkts > 0, "the throttle saw no packets");
    let what = format!("{} {} {limit}", d.backend, if reverse { "download" } else { "upload" });
    assert_accurate(&what, r.mean(2, secs as usize), limit.bytes_per_sec() as f64);
}

/// The daemon with a scratch config path (absent, so the defaults) and
/// state directory: no host config is read and no host state is written.
pub fn isolated_daemon(state: &ScratchDir, args: &[&str]) -> Reaped {
    let conf = state.path.join("chadthrottled.toml");
    let dirs = ["--config", conf.to_str().unwrap(), "--state-dir", state.path.to_str().unwrap()];
    let all: Vec<&str> = dirs.into_iter().chain(args.iter().copied()).collect();
    Reaped(spawn_daemon(daemon_bin(), &all))
}

/// A child that is killed and reaped when dropped, so a failed assertion
/// never leaves it running.
pub struct Reaped(pub std::process::Child);

impl std::ops::Deref for Reaped {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Entries of the daemon's kernel process map, as bpftool reads them.
pub fn kernel_procs_entries() -> usize {
    let out = sh(&["bpftool", "-j", "map", "dump", "name", "CT_PROCS"]);
    let v: serde_json::Value = serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out }).unwrap();
    v.as_array().map_or(0, Vec::len)
}

/// `prog` run as `uid` (real and effective uid and gid, no supplementary
/// groups), through setpriv.
pub fn user_cmd(uid: (u32, u32), prog: &str) -> std::process::Command {
    let mut c = std::process::Command::new("setpriv");
    c.args(["--reuid", &uid.0.to_string(), "--regid", &uid.1.to_string(), "--clear-groups", prog]);
    c
}

/// Runs `cmd` to its end: Ok(stdout) on success, else Err(stderr), trimmed.
pub fn output(cmd: &mut std::process::Command) -> Result<String, String> {
    let out = cmd.output().unwrap();
    match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()),
        false => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
    }
}

/// A config in `dir` (see `throttle_testkit::bus::write_config`) with
/// `extra` TOML appended.
pub fn config_with(dir: &ScratchDir, extra: &str) -> PathBuf {
    let conf = throttle_testkit::bus::write_config(dir, "ct-none0");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str(extra);
    std::fs::write(&conf, text).unwrap();
    conf
}

/// `chadthrottled --config CONF` on a private system bus.
pub fn daemon_on(bus: &throttle_testkit::bus::PrivateBus, conf: &Path) -> Daemon {
    Daemon::start(daemon_bin(), &["--config", conf.to_str().unwrap()], &[("DBUS_SYSTEM_BUS_ADDRESS", bus.address())])
}
