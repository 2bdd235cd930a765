//! `throttlectl top` driven under tmux against the real daemon on a private
//! bus: the live list shows an iperf3 client, `b` shows the backends with
//! the default marked, the selector changes the default (checked with
//! `throttlectl backends --json`), a resize to 20×5 does not break it, the
//! daemon restarting is survived, and `q` restores the terminal.
mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use common::*;
use throttle_testkit::bus::PrivateBus;

fn throttlectl() -> PathBuf {
    Path::new(daemon_bin()).with_file_name("throttlectl")
}

/// A tmux server of its own, killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(cmd: &str) -> Tmux {
        let t = Tmux { socket: format!("ct-tui-{}", std::process::id()) };
        t.run(&["new-session", "-d", "-s", "top", "-x", "120", "-y", "30", cmd]);
        t
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux").args(["-L", &self.socket]).args(args).output().unwrap();
        assert!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        for k in keys {
            self.run(&["send-keys", "-t", "top", k]);
            // Esc followed too soon by a key reads as Alt+key.
            std::thread::sleep(Duration::from_millis(400));
        }
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "top"])
    }

    /// Waits for `text` on screen; the screen is in the panic message if not.
    #[track_caller]
    fn expect(&self, text: &str) {
        let mut last = String::new();
        let seen = wait_until(Duration::from_secs(10), || {
            last = self.screen();
            last.contains(text)
        });
        assert!(seen, "{text:?} never appeared on screen:\n{last}");
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["-L", &self.socket, "kill-server"]).status();
    }
}

fn start_daemon(bus: &PrivateBus, dir: &ScratchDir, iface: &str) -> Daemon {
    bus.daemon(daemon_bin(), dir, iface, &[])
}

fn default_for(bus: &PrivateBus, backend: &str) -> Vec<String> {
    let out = Command::new(throttlectl()).args(["--bus", bus.address(), "--json", "backends"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let b = v.as_array().unwrap().iter().find(|b| b["name"] == backend).unwrap().clone();
    serde_json::from_value(b["default_for"].clone()).unwrap()
}

#[test]
fn top_under_tmux() {
    let Some(_g) = begin() else { return };
    if which("tmux").is_none() {
        throttle_testkit::missing("tmux is not installed (run scripts/bootstrap.sh)");
        return;
    }
    let Some(bus) = PrivateBus::start("tui") else { return };
    let mut lab = Lab::new(73);
    lab.server(5201);
    let dir = ScratchDir::new("tui");
    let mut daemon = start_daemon(&bus, &dir, &lab.veth);
    let client = lab.client("ct-tui-client", 5201, 40, false);
    let cmd = format!("{} --bus {} top; echo EXITED rc=$?; sleep 600", throttlectl().display(), bus.address());
    let tmux = Tmux::start(&cmd);

    // The live list, with the iperf3 client in it.
    tmux.expect("chadthrottle top");
    tmux.expect("ct-tui-client");
    tmux.expect("iB/s"); // a live rate (KiB/s, MiB/s, GiB/s), not just "0 B/s"
    eprintln!("{}", tmux.screen());

    // The backend window: the default is starred; the selector sets another.
    tmux.keys(&["b"]);
    tmux.expect("Backends");
    tmux.expect("⭐");
    eprintln!("{}", tmux.screen());
    assert_eq!(default_for(&bus, "tc_htb"), Vec::<String>::new());
    tmux.keys(&["Enter"]);
    tmux.expect("Default for upload");
    tmux.keys(&["Down", "Enter"]);
    tmux.expect("New throttles will use 'tc_htb' for upload");
    assert_eq!(default_for(&bus, "tc_htb"), ["up"], "the selector did not change the default");
    tmux.keys(&["Escape", "Escape"]);

    // A tiny terminal, and back.
    tmux.run(&["resize-window", "-t", "top", "-x", "20", "-y", "5"]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(!tmux.screen().contains("EXITED"), "top died at 20x5:\n{}", tmux.screen());
    tmux.run(&["resize-window", "-t", "top", "-x", "120", "-y", "30"]);
    tmux.expect("ct-tui-client");

    // The daemon restarts: top says so, then reconnects on its own.
    daemon.stop();
    tmux.expect("daemon unreachable");
    let _daemon = start_daemon(&bus, &dir, &lab.veth);
    tmux.expect("ct-tui-client");

    tmux.keys(&["q"]);
    tmux.expect("EXITED rc=0");
    drop(client);
}

/// `top --once --json` prints one sample for scripts.
#[test]
fn top_once_json() {
    let Some(_g) = begin() else { return };
    let Some(bus) = PrivateBus::start("tui-once") else { return };
    let mut lab = Lab::new(74);
    lab.server(5201);
    let dir = ScratchDir::new("tui-once");
    let _daemon = start_daemon(&bus, &dir, &lab.veth);
    let client = lab.client("ct-once-client", 5201, 8, false);
    let sample = || {
        let out = Command::new(throttlectl())
            .args(["--bus", bus.address(), "--json", "top", "--once", "--count", "50"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let found = wait_until(Duration::from_secs(5), || {
        sample().as_array().unwrap().iter().any(|p| p["name"] == "ct-once-client" && p["up_rate"].as_u64() > Some(0))
    });
    assert!(found, "the client never showed with a rate: {}", sample());
    drop(client);
}
