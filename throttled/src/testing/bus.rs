//! A private system-like bus for tests: a real `dbus-daemon` with the system
//! bus's default-deny policy and our own `dbus/org.chadthrottle.conf`, so
//! tests exercise the policy that ships.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use super::{lab::which, missing, ScratchDir};

pub struct PrivateBus {
    pid: u32,
    address: String,
    _dir: ScratchDir,
}

const CONFIG: &str = r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <auth>EXTERNAL</auth>
  <listen>unix:path=@DIR@/socket</listen>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Peer"/>
  </policy>
  <includedir>@DIR@/system.d</includedir>
</busconfig>
"#;

/// The repository's `dbus/` directory.
pub fn dbus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dbus")
}

impl PrivateBus {
    /// `None` (or a panic under CI) when dbus-daemon is missing.
    pub fn start(tag: &str) -> Option<PrivateBus> {
        let Some(daemon) = which("dbus-daemon") else {
            missing("dbus-daemon is not installed (run scripts/bootstrap.sh)");
            return None;
        };
        let dir = ScratchDir::new(&format!("bus-{tag}"));
        let d = dir.path.display().to_string();
        std::fs::create_dir_all(dir.path.join("system.d")).unwrap();
        std::fs::copy(dbus_dir().join("org.chadthrottle.conf"), dir.path.join("system.d/org.chadthrottle.conf"))
            .unwrap();
        let polkit = Path::new("/usr/share/dbus-1/system.d/org.freedesktop.PolicyKit1.conf");
        if polkit.exists() {
            let _ = std::fs::copy(polkit, dir.path.join("system.d/org.freedesktop.PolicyKit1.conf"));
        }
        let conf = dir.path.join("bus.conf");
        std::fs::write(&conf, CONFIG.replace("@DIR@", &d)).unwrap();
        let out = Command::new(daemon)
            .arg(format!("--config-file={}", conf.display()))
            .args(["--fork", "--print-address=1", "--print-pid=1"])
            .output()
            .unwrap();
        assert!(out.status.success(), "dbus-daemon: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        let address = lines.next().unwrap_or_default().trim().to_string();
        let pid = lines.next().and_then(|p| p.trim().parse().ok()).expect("dbus-daemon pid");
        Some(PrivateBus { pid, address, _dir: dir })
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// `busctl` on this bus, as root; stdout on success, Err(stderr) otherwise.
    pub fn busctl(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("busctl").arg(format!("--address={}", self.address)).args(args).output().unwrap();
        match out.status.success() {
            true => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
            false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
        }
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) on the daemon we started.
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
    }
}
