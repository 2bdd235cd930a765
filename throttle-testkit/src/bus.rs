//! A private system-like bus for tests: a real `dbus-daemon` with the system
//! bus's default-deny policy and our own `dbus/org.chadthrottle.conf`, so
//! tests exercise the policy that ships.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use super::{
    lab::{which, Daemon},
    missing, ScratchDir,
};

pub struct PrivateBus {
    child: std::process::Child,
    address: String,
    conf: PathBuf,
    /// `--systemd-activation`, or nothing.
    flags: Vec<&'static str>,
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
  <!-- As on the real system bus: root may monitor it (busctl monitor). -->
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>
  <includedir>@DIR@/system.d</includedir>
</busconfig>
"#;

/// Lets root stand in for systemd on an activating bus.
const SYSTEMD1_POLICY: &str = r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <policy user="root">
    <allow own="org.freedesktop.systemd1"/>
  </policy>
</busconfig>
"#;

/// A dbus-daemon in the foreground (so that dropping it also reaps it), and
/// its address without the per-run guid, so that clients can reconnect to
/// a restarted bus.
fn spawn_bus(daemon: &Path, conf: &Path, flags: &[&str]) -> (std::process::Child, String) {
    let mut child = Command::new(daemon)
        .arg(format!("--config-file={}", conf.display()))
        .args(["--nofork", "--print-address=1"])
        .args(flags)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let stdout = child.stdout.take().unwrap();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
    let address = line.trim().split(",guid=").next().unwrap_or_default().to_string();
    assert!(!address.is_empty(), "dbus-daemon printed no address");
    (child, address)
}

/// The repository's `dbus/` directory.
pub fn dbus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dbus")
}

impl PrivateBus {
    /// `None` (or a panic under CI) when dbus-daemon is missing.
    pub fn start(tag: &str) -> Option<PrivateBus> {
        Self::start_with(tag, false)
    }

    /// A bus that activates services as the system bus does under systemd
    /// (`--systemd-activation`): our `dbus/org.chadthrottle.service` is in
    /// its service directory, and activating it sends
    /// `org.freedesktop.systemd1.Activator.ActivationRequest(unit)` to
    /// whoever owns `org.freedesktop.systemd1` (root may own it here).
    pub fn start_activating(tag: &str) -> Option<PrivateBus> {
        Self::start_with(tag, true)
    }

    fn start_with(tag: &str, activating: bool) -> Option<PrivateBus> {
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
        let mut config = CONFIG.replace("@DIR@", &d);
        let mut flags = Vec::new();
        if activating {
            std::fs::create_dir_all(dir.path.join("services")).unwrap();
            let svc = dbus_dir().join("org.chadthrottle.service");
            std::fs::copy(svc, dir.path.join("services/org.chadthrottle.service")).unwrap();
            std::fs::write(dir.path.join("system.d/systemd1.conf"), SYSTEMD1_POLICY).unwrap();
            config = config.replace("</busconfig>", &format!("  <servicedir>{d}/services</servicedir>\n</busconfig>"));
            flags.push("--systemd-activation");
        }
        let conf = dir.path.join("bus.conf");
        std::fs::write(&conf, config).unwrap();
        let (child, address) = spawn_bus(&daemon, &conf, &flags);
        Some(PrivateBus { child, address, conf, flags, _dir: dir })
    }

    /// Kills the bus and starts a new one at the same address, as a
    /// `systemctl restart dbus` would.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, address) = spawn_bus(&which("dbus-daemon").unwrap(), &self.conf, &self.flags);
        assert_eq!(address, self.address, "the restarted bus moved");
        self.child = child;
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// `chadthrottled` (the binary `bin`) on this bus, with `env`; see
    /// [`write_config`].
    pub fn daemon(&self, bin: &str, dir: &ScratchDir, interface: &str, env: &[(&str, &str)]) -> Daemon {
        let conf = write_config(dir, interface);
        let env: Vec<(&str, &str)> =
            [("DBUS_SYSTEM_BUS_ADDRESS", self.address())].into_iter().chain(env.iter().copied()).collect();
        Daemon::start(bin, &["--config", conf.to_str().unwrap()], &env)
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
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A config in `dir` with the state in `dir/state` and the interface
/// backends limited to `interface`: one the test made, or one that does not
/// exist, so no host interface is ever shaped. Returns its path.
pub fn write_config(dir: &ScratchDir, interface: &str) -> PathBuf {
    let conf = dir.path.join("chadthrottled.toml");
    let state = dir.path.join("state").display().to_string();
    std::fs::write(&conf, format!("state_dir = {state:?}\ninterfaces = [{interface:?}]\n")).unwrap();
    conf
}

/// A real polkitd on a private bus, with our actions and the given JS
/// rules. It starts as root and drops to its own user by itself. It runs
/// in its own mount namespace, where a scratch directory is
/// bind-mounted over the actions and rules directories; the host's are
/// never touched.
pub struct Polkit {
    child: std::process::Child,
    _dir: ScratchDir,
}

const POLKITD: &str = "/usr/lib/polkit-1/polkitd";

impl Polkit {
    pub fn start(bus: &PrivateBus, rules_js: &str) -> Option<Polkit> {
        if !Path::new(POLKITD).exists() || which("unshare").is_none() {
            missing("polkitd and unshare are needed (run scripts/bootstrap.sh)");
            return None;
        }
        let dir = ScratchDir::new("polkit");
        let (actions, rules) = (dir.path.join("actions"), dir.path.join("rules"));
        std::fs::create_dir_all(&actions).unwrap();
        std::fs::create_dir_all(&rules).unwrap();
        let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../polkit/org.chadthrottle.policy");
        std::fs::copy(policy, actions.join("org.chadthrottle.policy")).unwrap();
        std::fs::write(rules.join("10-chadthrottle-test.rules"), rules_js).unwrap();
        let script = format!(
            "mount --make-rprivate / && mount --bind {a} /usr/share/polkit-1/actions && \
             mount --bind {r} /etc/polkit-1/rules.d && \
             exec {POLKITD} --no-debug",
            a = actions.display(),
            r = rules.display()
        );
        let child = Command::new("unshare")
            .args(["-m", "sh", "-c", &script])
            .env("DBUS_SYSTEM_BUS_ADDRESS", bus.address())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let p = Polkit { child, _dir: dir };
        let owned = super::lab::wait_until(std::time::Duration::from_secs(10), || {
            bus.busctl(&["status", "org.freedesktop.PolicyKit1"]).is_ok()
        });
        assert!(owned, "polkitd did not appear on the private bus");
        Some(p)
    }
}

impl Drop for Polkit {
    fn drop(&mut self) {
        // polkitd is the exec'd child (same pid); the mounts die with it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A system user for tests (created once; no home, no login).
pub fn test_user(name: &str) -> (u32, u32) {
    let id = |flag: &str| {
        let out = Command::new("id").args([flag, name]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse::<u32>().ok()
    };
    if id("-u").is_none() {
        let st = Command::new("useradd")
            .args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name])
            .status()
            .unwrap();
        assert!(st.success(), "useradd {name} failed");
    }
    (id("-u").unwrap(), id("-g").unwrap())
}
