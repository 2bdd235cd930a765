//! throttlectl against a real dbus-daemon and the real daemon: JSON from
//! every command (errors too), the exit codes, the output options
//! (--no-legend, -q, the ASCII stand-ins), --timeout against a name owner
//! that never answers, and the warnings for targets not to be seen.
mod common;

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::*;
use serde_json::{json, Value};
use throttle_testkit::bus::PrivateBus;

/// A private bus with the daemon on it (interface backends on an interface
/// that does not exist, so no host interface is shaped).
struct Rig {
    _daemon: Daemon,
    bus: PrivateBus,
    _dir: ScratchDir,
}

impl Rig {
    fn start(tag: &str) -> Option<Rig> {
        let bus = PrivateBus::start(tag)?;
        let dir = ScratchDir::new(&format!("cli-{tag}"));
        let daemon = bus.daemon(daemon_bin(), &dir, "ct-none0", &[]);
        Some(Rig { _daemon: daemon, bus, _dir: dir })
    }

    fn run(&self, args: &[&str]) -> Output {
        ctl(self.bus.address(), args)
    }

    /// Exit code 0; stdout parsed as one JSON document.
    fn json(&self, args: &[&str]) -> Value {
        let out = self.run(args);
        assert_eq!(out.status.code(), Some(0), "throttlectl {args:?}: {}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {}", text(&out)))
    }

    /// Exit code 0; stdout as text.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(out.status.code(), Some(0), "throttlectl {args:?}: {}", text(&out));
        String::from_utf8(out.stdout).unwrap()
    }
}

/// throttlectl on the bus at `address` (as the system bus), with a UTF-8
/// locale: stdout is a pipe, so symbols must still be ASCII.
fn ctl(address: &str, args: &[&str]) -> Output {
    Command::new(throttlectl())
        .args(args)
        .env("DBUS_SYSTEM_BUS_ADDRESS", address)
        .env("LANG", "C.UTF-8")
        .env_remove("LC_ALL")
        .env_remove("LC_CTYPE")
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A failure: its exit code, and the JSON error on stdout that matches it.
fn json_error(out: &Output, code: i32) -> Value {
    assert_eq!(out.status.code(), Some(code), "{}", text(out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(out)));
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(v["error"].get("name").is_some(), "{v}");
    assert!(!out.stderr.is_empty(), "the text still goes to stderr");
    v
}

/// A copy of sleep under a name of our own, killed on drop.
fn app(dir: &ScratchDir, name: &str) -> Reaped {
    let bin = dir.path.join(name);
    std::fs::copy(which("sleep").unwrap(), &bin).unwrap();
    Reaped(Command::new(&bin).arg("60").spawn().unwrap())
}

#[test]
fn every_command_speaks_json() {
    let Some(_g) = begin() else { return };
    let Some(rig) = Rig::start("json") else { return };
    let dir = ScratchDir::new("cli-json-bin");
    let app = app(&dir, "ct-cli-app");
    assert_eq!(rig.json(&["--json", "rate", "1M"]), json!({ "bytes_per_sec": 1048576, "rate": "1M" }));
    let t = rig.json(&["--json", "limit", "ct-cli-app", "--down", "1M", "--backend", "ebpf"]);
    assert_eq!((t["id"].clone(), t["kind"].clone(), t["down"].clone()), (json!(1), json!("name"), json!(1048576)));
    assert_eq!(t["pids"], json!([app.id()]));
    assert_eq!(rig.json(&["--json", "default", "--down", "ifb_tc"]), json!({ "default_down": "ifb_tc" }));
    assert_eq!(
        rig.json(&["--json", "migrate", "1", "--to", "ifb_tc"]),
        json!({ "id": 1, "to": "ifb_tc", "direction": "both" })
    );
    assert_eq!(
        rig.json(&["--json", "migrate", "--from", "ifb_tc", "--to", "ebpf"]),
        json!({ "from": "ifb_tc", "to": "ebpf", "moved": 1 })
    );
    assert_eq!(rig.json(&["--json", "reload"]), json!({ "reloaded": true }));
    let status = rig.json(&["--json", "status"]);
    assert_eq!(status["running"], true, "{status}");
    assert_eq!(status["default_down"], "ifb_tc", "{status}");
    assert_eq!(rig.json(&["--json", "stats"])["throttles"], 1);
    let removed = rig.json(&["--json", "unlimit", "ct-cli-app"]);
    assert_eq!(
        (removed["removed"]["id"].clone(), removed["removed"]["target"].clone()),
        (json!(1), json!("ct-cli-app"))
    );
    assert_eq!(rig.json(&["--json", "list"]), json!([]));

    // Errors: a JSON object on stdout, the exit code kept.
    let e = json_error(&rig.run(&["--json", "unlimit", "nothing"]), 4);
    assert_eq!(e["error"]["name"], Value::Null, "found missing by throttlectl, not the daemon: {e}");
    let e = json_error(&rig.run(&["--json", "limit", "4194304", "--down", "1M"]), 4);
    assert_eq!(e["error"]["name"], "org.chadthrottle.Error.NoSuchProcess");
    let e = json_error(&rig.run(&["--json", "default", "--up", "nope"]), 2);
    assert_eq!(e["error"]["name"], "org.chadthrottle.Error.UnknownBackend");
    json_error(&rig.run(&["--json", "limit", "ct-cli-app", "--down", "1Q"]), 2);
    json_error(&rig.run(&["--json", "rate", "fast"]), 2);
    json_error(&rig.run(&["--json", "frobnicate"]), 2);
    json_error(&rig.run(&["--json", "migrate", "--to", "ebpf"]), 2);
}

#[test]
fn monitor_json_has_plain_values() {
    let Some(_g) = begin() else { return };
    let Some(rig) = Rig::start("monjson") else { return };
    let dir = ScratchDir::new("cli-mon-bin");
    let _app = app(&dir, "ct-cli-mon");
    let mut mon = Reaped(
        Command::new(throttlectl())
            .args(["--bus", rig.bus.address(), "--json", "monitor"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    let stdout = mon.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {e}: {line}")));
        }
    });
    // Until the monitor listens (its match rule is in place), a change of
    // default may go unseen: toggle it until one is seen.
    let mut seen = None;
    for backend in ["tc_htb", "ebpf"].iter().cycle().take(20) {
        rig.ok(&["default", "--up", backend]);
        if let Ok(v) = rx.recv_timeout(Duration::from_millis(500)) {
            seen = Some((v, backend));
            break;
        }
    }
    let (changed, backend) = seen.expect("monitor printed nothing");
    assert_eq!(changed, json!({ "signal": "DefaultBackendChanged", "args": ["up", backend] }));
    while rx.recv_timeout(Duration::from_millis(300)).is_ok() {}
    rig.ok(&["limit", "ct-cli-mon", "--down", "1M", "--backend", "ebpf"]);
    let added = rx.recv_timeout(Duration::from_secs(10)).expect("no ThrottleAdded");
    assert_eq!(added, json!({ "signal": "ThrottleAdded", "args": ["/org/chadthrottle/throttles/1"] }));
}

#[test]
fn output_options_and_the_default_command() {
    let Some(_g) = begin() else { return };
    let Some(rig) = Rig::start("opts") else { return };
    let dir = ScratchDir::new("cli-opts-bin");
    let app = app(&dir, "ct-cli-opt");
    // A bare throttlectl is status.
    let status = rig.ok(&["status"]);
    assert!(status.contains("is running"), "{status}");
    assert_eq!(rig.ok(&[]), status);
    assert_eq!(rig.json(&["--json"])["running"], true);
    // An empty list: a line saying so, or nothing at all without the legend.
    assert_eq!(rig.ok(&["list"]).trim(), "no throttles");
    assert_eq!(rig.ok(&["--no-legend", "list"]), "");
    // -q: no confirmation; the data asked for still comes.
    assert_eq!(rig.ok(&["-q", "limit", "ct-cli-opt", "--down", "1M", "--backend", "ebpf"]), "");
    let list = rig.ok(&["list"]);
    assert!(list.lines().next().unwrap().starts_with("  ID"), "{list}");
    assert_eq!(list.lines().count(), 2, "{list}");
    let bare = rig.ok(&["--no-legend", "list"]);
    assert_eq!(bare.lines().count(), 1, "{bare}");
    assert!(bare.trim_start().starts_with("1 ") && bare.contains(&app.id().to_string()), "{bare}");
    // Symbols: stdout is a pipe, so ASCII even in a UTF-8 locale.
    let backends = rig.ok(&["backends"]);
    assert!(backends.is_ascii(), "{backends}");
    assert!(backends.lines().next().unwrap().contains("BACKEND"), "{backends}");
    let ebpf = backends.lines().find(|l| l.contains("ebpf")).unwrap();
    assert!(ebpf.starts_with("*  ebpf") && ebpf.contains(" yes"), "{backends}");
    let tc = backends.lines().find(|l| l.contains("tc_htb")).unwrap();
    assert!(tc.starts_with("   tc_htb"), "{backends}");
    assert_eq!(rig.ok(&["--no-legend", "backends"]).lines().count(), 3);
    assert!(!rig.ok(&["--no-legend", "backends"]).contains("BACKEND "));
    // The top table too, with -q changing nothing in it.
    let top = rig.ok(&["top", "--once"]);
    assert!(top.is_ascii() && top.starts_with("       PID"), "{top}");
    assert!(!rig.ok(&["--no-legend", "top", "--once"]).contains("PID"));
    assert_eq!(rig.ok(&["-q", "unlimit", "ct-cli-opt"]), "");
    // Errors are never quiet.
    let out = rig.run(&["-q", "unlimit", "ct-cli-opt"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no throttle matches"), "{}", text(&out));
}

#[test]
fn status_json_with_the_daemon_down() {
    // No bus at all: no root needed.
    let out = ctl("unix:path=/nonexistent/ct-cli-bus", &["--json", "status"]);
    let v = json_error(&out, 5);
    assert_eq!(v["running"], false, "{v}");
    let out = ctl("unix:path=/nonexistent/ct-cli-bus", &["status"]);
    assert_eq!(out.status.code(), Some(5));
    assert!(out.stdout.is_empty(), "{}", text(&out));
    // A bus without the daemon on it.
    let Some(_g) = begin() else { return };
    let Some(bus) = PrivateBus::start("down") else { return };
    let out = ctl(bus.address(), &["--json", "status"]);
    let v = json_error(&out, 5);
    assert_eq!(v["running"], false, "{v}");
    assert_eq!(v["error"]["name"], "org.freedesktop.DBus.Error.ServiceUnknown", "{v}");
    // Other commands say only what failed.
    let v = json_error(&ctl(bus.address(), &["--json", "list"]), 5);
    assert_eq!(v.get("running"), None, "{v}");
    assert_eq!(ctl(bus.address(), &[]).status.code(), Some(5), "bare throttlectl is status");
}

#[test]
fn a_bad_bus_is_a_usage_error() {
    for bus in ["nonsense", "", "system,"] {
        let out = ctl("unix:path=/nonexistent", &["--bus", bus, "status"]);
        assert_eq!(out.status.code(), Some(2), "--bus {bus:?}: {}", text(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains("--bus"), "{}", text(&out));
    }
    json_error(&ctl("unix:path=/nonexistent", &["--json", "--bus", "nonsense", "list"]), 2);
    // A valid address where nothing listens: unreachable, not usage.
    assert_eq!(ctl("unix:path=/nonexistent", &["--bus", "unix:path=/nonexistent/x", "list"]).status.code(), Some(5));
}

/// Something owns org.chadthrottle but never answers: every command gives
/// up after --timeout with a message of its own, top --once included.
#[test]
fn timeout_when_the_owner_never_answers() {
    let Some(_g) = begin() else { return };
    let Some(bus) = PrivateBus::start("silent") else { return };
    let rt = tokio::runtime::Runtime::new().unwrap();
    // No object server: method calls to this connection are never answered.
    let _silent = rt.block_on(async {
        let conn = zbus::connection::Builder::address(bus.address()).unwrap().build().await.unwrap();
        conn.request_name("org.chadthrottle").await.unwrap();
        conn
    });
    for args in [&["list"][..], &["status"], &["top", "--once"], &["limit", "1234", "--down", "1M"]] {
        let all: Vec<&str> = ["--timeout", "2", "--bus", bus.address()].iter().chain(args).copied().collect();
        let t = Instant::now();
        let out = ctl("unix:path=/nonexistent", &all);
        let took = t.elapsed();
        assert_eq!(out.status.code(), Some(5), "{args:?}: {}", text(&out));
        assert!(took >= Duration::from_millis(1900) && took < Duration::from_secs(5), "{args:?} took {took:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("timed out: no answer from chadthrottled within 2 s"), "{args:?}: {err}");
    }
    // With --json: the error, and not "running": false (it may be running).
    let args = ["--json", "--timeout", "2", "--bus", bus.address(), "status"];
    let v = json_error(&ctl("unix:path=/nonexistent", &args), 5);
    assert_eq!(v.get("running"), None, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().starts_with("timed out"), "{v}");
}

/// A target not to be seen now is kept, with a warning; a throttle with no
/// process says so.
#[test]
fn warns_about_targets_not_running() {
    let Some(_g) = begin() else { return };
    let Some(rig) = Rig::start("absent") else { return };
    let out = rig.run(&["limit", "--exe", "/nonexistent/ct-cli-ghost", "--down", "1M", "--backend", "ebpf"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        stderr
            .contains("warning: /nonexistent/ct-cli-ghost does not exist; the throttle applies when a process runs it"),
        "{stderr}"
    );
    assert!(stdout.contains("exe /nonexistent/ct-cli-ghost") && stdout.contains("no process matches now"), "{stdout}");
    assert!(!stdout.contains("0 process"), "{stdout}");
    let out = rig.run(&["limit", "--unit", "ct-cli-ghost.service", "--up", "1M", "--backend", "ebpf"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: no unit ct-cli-ghost.service is running; the throttle applies when it starts"),
        "{stderr}"
    );
    // Both throttles exist; an existing executable gets no warning.
    assert_eq!(rig.json(&["--json", "list"]).as_array().unwrap().len(), 2);
    let out = rig.run(&["limit", "--exe", which("sleep").unwrap().to_str().unwrap(), "--down", "1M"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"), "{}", text(&out));
}

/// Where a throttle came from: `list` shows a rule's file, `unlimit` of a
/// rule's throttle says the next reload brings it back, and `limit --hold`
/// makes a throttle that ends with the command.
#[test]
fn origins_rules_and_holds() {
    let Some(_g) = begin() else { return };
    let Some(bus) = PrivateBus::start("cli-origin") else { return };
    let dir = ScratchDir::new("cli-origin");
    let rules = dir.path.join("rules.d");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(rules.join("50-app.toml"), "[[rule]]\nname = \"ct-rule-app\"\ndown = \"1M\"\n").unwrap();
    let _daemon = bus.daemon(daemon_bin(), &dir, "ct-none0", &[]);
    let rig = Rig { _daemon, bus, _dir: dir };
    let listed = rig.ok(&["list"]);
    assert!(listed.contains("ORIGIN") && listed.contains("rule:50-app.toml"), "{listed}");
    let out = rig.run(&["unlimit", "ct-rule-app"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("50-app.toml") && err.contains("next reload brings it back"), "{err}");

    let target = Reaped(Command::new("sleep").arg("60").spawn().unwrap());
    let pid = target.id().to_string();
    let mut holder = Command::new(throttlectl())
        .args(["limit", &pid, "--down", "1M", "--hold"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", rig.bus.address())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let held = |want: bool| {
        let list = rig.json(&["--json", "list"]);
        let found = list.as_array().unwrap().iter().any(|t| t["origin"] == "held" && t["target"] == pid.as_str());
        found == want
    };
    assert!(wait_until(Duration::from_secs(5), || held(true)), "no held throttle while throttlectl runs");
    unsafe { libc::kill(holder.id() as i32, libc::SIGINT) };
    assert!(holder.wait().unwrap().success(), "limit --hold did not exit cleanly on Ctrl-C");
    assert!(wait_until(Duration::from_secs(2), || held(false)), "the held throttle outlived throttlectl");
}

/// The completion scripts, run by the real shells, offer what is running
/// now: the daemon's throttle ids and backends, processes, and units.
#[test]
fn completions_offer_live_candidates() {
    let Some(_g) = begin() else { return };
    let shells: Vec<&str> = ["bash", "zsh", "fish"].into_iter().filter(|s| which(s).is_some()).collect();
    if shells.len() < 3 {
        throttle_testkit::missing("bash, zsh and fish (for the completion scripts)");
        return;
    }
    let Some(rig) = Rig::start("complete") else { return };
    let sleeper = app(&rig._dir, "ct-compl-app");
    let pid = sleeper.id().to_string();
    let added = rig.json(&["--json", "limit", &pid, "--down", "1M"]);
    let id = added["id"].to_string();
    // A unit's cgroup, made for the test and removed with it.
    let unit = CgroupDir::new("ct-compl-test.service");

    let bash = |words: &str| complete_in(&rig, "bash", words);
    let got = bash("throttlectl unlimit ''");
    assert!(got.contains(&id) && got.contains(&pid), "unlimit offers the throttle id and its pid: {got:?}");
    let got = bash("throttlectl migrate --to ''");
    for b in ["ebpf", "tc_htb", "ifb_tc"] {
        assert!(got.contains(&b.to_string()), "backends from the daemon: {got:?}");
    }
    let got = bash("throttlectl limit ct-compl-");
    assert_eq!(got, ["ct-compl-app"], "process names");
    let got = bash(&format!("throttlectl limit {pid}"));
    assert!(got.contains(&pid), "pids: {got:?}");
    if let Some(unit) = &unit {
        let got = bash("throttlectl limit --unit ct-compl-");
        assert_eq!(got, std::slice::from_ref(&unit.name), "units from the cgroup tree");
    }

    let fish = complete_in(&rig, "fish", "throttlectl unlimit ''");
    assert!(fish.iter().any(|c| c.starts_with(&format!("{id}\t"))), "fish, with help: {fish:?}");
    let zsh = complete_in(&rig, "zsh", "throttlectl migrate --to ''");
    assert!(zsh.iter().any(|c| c == "ebpf"), "zsh: {zsh:?}");
}

/// The candidates `shell` gets for the command line `words` (the cursor at
/// its end), from the script `throttlectl completions SHELL` installs.
fn complete_in(rig: &Rig, shell: &str, words: &str) -> Vec<String> {
    let script = match shell {
        // As bash-completion would: the script, then the function it registered.
        "bash" => format!(
            "source <(throttlectl completions bash)\nCOMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}}-1)); \
             COMP_TYPE=9\n_clap_complete_throttlectl throttlectl \"${{COMP_WORDS[COMP_CWORD]}}\"\n\
             printf '%s\\n' \"${{COMPREPLY[@]}}\""
        ),
        "fish" => format!("throttlectl completions fish | source\ncomplete -C \"{}\"", words.replace("''", "")),
        // zsh completes only inside its line editor; this runs the script's
        // own call-back with the words zsh would pass, after loading the
        // script under compinit as an installed site-function is.
        _ => format!(
            "autoload -U compinit; compinit -u -D\nsource <(throttlectl completions zsh)\n\
             words=({words}); CURRENT=${{#words}}\n\
             COMPLETE=zsh _CLAP_IFS=$'\\n' _CLAP_COMPLETE_INDEX=$((CURRENT - 1)) throttlectl -- \"${{words[@]}}\""
        ),
    };
    let bin_dir = throttlectl().parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new(shell)
        .args(["-c", &script])
        .env("PATH", path)
        .env("DBUS_SYSTEM_BUS_ADDRESS", rig.bus.address())
        .output()
        .unwrap();
    assert!(out.status.success(), "{shell}: {}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.trim().is_empty(), "{shell} printed errors: {stderr}");
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.is_empty()).map(str::to_string).collect()
}

/// A cgroup directory directly under the v2 root, removed on drop; `None`
/// where there is no writable cgroup v2 tree.
struct CgroupDir {
    name: String,
    path: std::path::PathBuf,
}

impl CgroupDir {
    fn new(name: &str) -> Option<CgroupDir> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let path = throttle_common::mountinfo::cgroup2_mount(&mountinfo)?.join(name);
        std::fs::create_dir(&path).ok()?;
        Some(CgroupDir { name: name.to_string(), path })
    }
}

impl Drop for CgroupDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.path);
    }
}
