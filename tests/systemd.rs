//! The unit file: verified by systemd itself and scored by its security
//! analysis (the bound is 3.5).
mod common;

use std::process::Command;

use common::*;

/// A copy of the unit whose ExecStart points at the binary just built, so
/// `verify` can check it.
fn unit_copy(dir: &ScratchDir) -> std::path::PathBuf {
    let unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../systemd/chadthrottled.service")).unwrap();
    let p = dir.path.join("chadthrottled.service");
    std::fs::write(&p, unit.replace("/usr/sbin/chadthrottled", env!("CARGO_BIN_EXE_chadthrottled"))).unwrap();
    p
}

fn analyze() -> Option<std::path::PathBuf> {
    let a = which("systemd-analyze");
    if a.is_none() {
        throttled::testing::missing("systemd-analyze is not installed (run scripts/bootstrap.sh)");
    }
    a
}

#[test]
fn unit_verifies_without_warnings() {
    let Some(a) = analyze() else { return };
    let dir = ScratchDir::new("unit-verify");
    let out = Command::new(a).args(["verify", "--man=no"]).arg(unit_copy(&dir)).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "systemd-analyze verify: {stderr}");
}

#[test]
fn unit_security_exposure_is_at_most_3_5() {
    let Some(a) = analyze() else { return };
    let dir = ScratchDir::new("unit-security");
    let out =
        Command::new(a).args(["security", "--offline=yes", "--threshold=35"]).arg(unit_copy(&dir)).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let overall = text.lines().find(|l| l.contains("Overall exposure")).unwrap_or_default().to_string();
    assert!(out.status.success(), "exposure above 3.5: {overall}");
    eprintln!("{overall}");
}

#[test]
fn unit_has_what_the_bus_and_manager_expect() {
    let unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../systemd/chadthrottled.service")).unwrap();
    for want in [
        "Type=notify",
        "BusName=org.chadthrottle",
        "WatchdogSec=",
        "ExecReload=",
        "Restart=on-failure",
        "StateDirectory=chadthrottle",
        "ConfigurationDirectory=chadthrottle",
        "Alias=dbus-org.chadthrottle.service",
    ] {
        assert!(unit.contains(want), "the unit lacks {want}");
    }
    let svc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../dbus/org.chadthrottle.service")).unwrap();
    assert!(svc.contains("SystemdService=chadthrottled.service"));
}
