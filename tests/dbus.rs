//! The D-Bus API against a real dbus-daemon (system-like policy, our bus
//! policy file) and the real daemon, driven with busctl and gdbus as
//! independent clients. Root callers are authorized without polkit.
mod common;

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use common::*;
use throttle_testkit::bus::{dbus_dir, test_user, Polkit, PrivateBus};
use throttled::dbus::polkit::ACTIONS;

const MGR: &str = "org.chadthrottle.Manager";

/// A private bus with the daemon on it; interface backends get an
/// interface that does not exist, so no host interface is ever shaped.
struct Api {
    daemon: Daemon,
    _polkit: Option<Polkit>,
    bus: PrivateBus,
    _dir: ScratchDir,
}

impl Api {
    fn start(tag: &str) -> Option<Api> {
        Self::start_with(tag, None, &[])
    }

    /// With `rules`, a real polkitd with those JS rules decides for non-root
    /// callers; `env` goes to the daemon.
    fn start_with(tag: &str, rules: Option<&str>, env: &[(&str, &str)]) -> Option<Api> {
        if which("gdbus").is_none() || which("busctl").is_none() {
            throttle_testkit::missing("gdbus and busctl are needed (run scripts/bootstrap.sh)");
            return None;
        }
        let bus = PrivateBus::start(tag)?;
        let polkit = match rules {
            Some(r) => Some(Polkit::start(&bus, r)?),
            None => None,
        };
        let dir = ScratchDir::new(&format!("api-{tag}"));
        let daemon = daemon_on(&bus, &dir, env);
        Some(Api { daemon, _polkit: polkit, bus, _dir: dir })
    }

    /// `gdbus call` on the daemon: Ok(stdout) or Err(the error text, with its name).
    fn call(&self, path: &str, method: &str, args: &[&str]) -> Result<String, String> {
        output(
            Command::new("gdbus")
                .args(["call", "--address", self.bus.address(), "--dest", "org.chadthrottle", "--object-path", path])
                .args(["--method", method])
                .args(args),
        )
    }

    fn manager(&self, method: &str, args: &[&str]) -> Result<String, String> {
        self.call("/org/chadthrottle", &format!("{MGR}.{method}"), args)
    }

    fn limit(&self, kind: &str, target: &str, opts: &str) -> Result<String, String> {
        self.manager("Limit", &[kind, target, opts])
    }

    /// `gdbus monitor` of the daemon's signals, its output piped.
    fn monitor(&self) -> std::process::Child {
        Command::new("gdbus")
            .args(["monitor", "--address", self.bus.address(), "--dest", "org.chadthrottle"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn prop(&self, path: &str, iface: &str, name: &str) -> String {
        self.bus.busctl(&["get-property", "org.chadthrottle", path, iface, name]).unwrap().trim().to_string()
    }
}

/// The daemon on `bus`, with its state in `dir`; interface backends get an
/// interface that does not exist, so no host interface is ever shaped.
fn daemon_on(bus: &PrivateBus, dir: &ScratchDir, env: &[(&str, &str)]) -> Daemon {
    bus.daemon(daemon_bin(), dir, "ct-none0", env)
}

/// The object path in gdbus's `(objectpath '/x',)`.
fn object_path(reply: &str) -> String {
    reply.split('\'').nth(1).unwrap_or_default().to_string()
}

type Sleeper = Reaped;

impl Reaped {
    fn new() -> Sleeper {
        Reaped(Command::new("sleep").arg("60").spawn().unwrap())
    }
    fn pid(&self) -> String {
        self.0.id().to_string()
    }
}

#[test]
fn every_manager_method_over_the_bus() {
    let Some(_g) = begin() else { return };
    let Some(api) = Api::start("methods") else { return };
    let s = Sleeper::new();
    let path = object_path(&api.limit("pid", &s.pid(), "{'down': <'1M'>}").unwrap());
    assert_eq!(path, "/org/chadthrottle/throttles/1");
    let t = "org.chadthrottle.Throttle";
    assert_eq!(api.prop(&path, t, "DownLimit"), "t 1048576");
    assert_eq!(api.prop(&path, t, "DownBackend"), "s \"ebpf\"");
    assert_eq!(api.prop(&path, t, "Kind"), "s \"pid\"");
    assert_eq!(api.prop(&path, t, "DownRate"), "t 0", "an idle process passes nothing");
    assert_eq!(api.prop(&path, t, "Pids"), format!("au 1 {}", s.pid()));
    // Limiting again changes in place: same path.
    assert_eq!(object_path(&api.limit("pid", &s.pid(), "{'down': <uint64 2097152>}").unwrap()), path);
    assert_eq!(api.prop(&path, t, "DownLimit"), "t 2097152");
    api.call(&path, &format!("{t}.SetLimits"), &["{'up': <'512K'>}"]).unwrap();
    assert_eq!(api.prop(&path, t, "UpLimit"), "t 524288");
    assert!(api.manager("ListThrottles", &[]).unwrap().contains(&path));
    let backends = api.manager("ListBackends", &[]).unwrap();
    for name in ["ebpf", "tc_htb", "ifb_tc"] {
        assert!(backends.contains(&format!("'name': <'{name}'>")), "{backends}");
    }
    assert_eq!(api.prop("/org/chadthrottle", MGR, "DefaultUploadBackend"), "s \"ebpf\"");
    api.manager("SetDefaultBackend", &["up", "tc_htb"]).unwrap();
    assert_eq!(api.prop("/org/chadthrottle", MGR, "DefaultUploadBackend"), "s \"tc_htb\"");
    assert_eq!(api.prop(&path, t, "UpBackend"), "s \"ebpf\"", "an existing throttle moved with the default");
    api.manager("Migrate", &[&path, "down", "ebpf"]).unwrap();
    assert_eq!(api.manager("MigrateBackend", &["ifb_tc", "ebpf"]).unwrap(), "(uint32 0,)");
    let stats = api.manager("GetStats", &[]).unwrap();
    assert!(stats.contains("'throttles': <uint32 1>") && stats.contains("'processes': <uint32 1>"), "{stats}");
    api.manager("Reload", &[]).unwrap();
    let managed = api
        .bus
        .busctl(&[
            "call",
            "org.chadthrottle",
            "/org/chadthrottle",
            "org.freedesktop.DBus.ObjectManager",
            "GetManagedObjects",
        ])
        .unwrap();
    assert!(managed.contains(&path), "{managed}");
    let backends = api.bus.busctl(&["get-property", "org.chadthrottle", "/org/chadthrottle", MGR, "Backends"]).unwrap();
    assert!(backends.starts_with("aa{sv} 3 ") && backends.contains("\"ebpf\""), "{backends}");
    // Only objects with an interface: no empty entry for the path between.
    assert!(
        managed.starts_with("a{oa{sa{sv}}} 1 ") && !managed.contains("\"/org/chadthrottle/throttles\""),
        "{managed}"
    );
    api.manager("Remove", &[&path]).unwrap();
    assert_eq!(api.manager("ListThrottles", &[]).unwrap(), "(@ao [],)");
    assert!(api.bus.busctl(&["introspect", "org.chadthrottle", &path]).is_err(), "the object outlived its throttle");
}

#[test]
fn bad_input_gets_named_errors_and_changes_nothing() {
    let Some(_g) = begin() else { return };
    let Some(mut api) = Api::start("errors") else { return };
    let s = Sleeper::new();
    let kthread = "2";
    let long = "x".repeat(10_000);
    let e = "org.chadthrottle.Error.";
    let cases: Vec<(&str, &str, String, String)> = vec![
        ("rate 0", "name", "ct-e".into(), "{'down': <'0'>}".into()),
        ("rate -1", "name", "ct-e".into(), "{'down': <'-1'>}".into()),
        ("rate 1Q", "name", "ct-e".into(), "{'down': <'1Q'>}".into()),
        ("rate overflow", "name", "ct-e".into(), "{'down': <'99999999999G'>}".into()),
        ("rate empty", "name", "ct-e".into(), "{'down': <''>}".into()),
        ("rate zero bytes", "name", "ct-e".into(), "{'down': <uint64 0>}".into()),
        ("no limit", "name", "ct-e".into(), "@a{sv} {}".into()),
        ("unknown option", "name", "ct-e".into(), "{'speed': <'1M'>}".into()),
        ("pid 0", "pid", "0".into(), "{'down': <'1M'>}".into()),
        ("pid 1", "pid", "1".into(), "{'down': <'1M'>}".into()),
        ("kernel thread", "pid", kthread.into(), "{'down': <'1M'>}".into()),
        ("pid not a number", "pid", "abc".into(), "{'down': <'1M'>}".into()),
        ("empty name", "name", "".into(), "{'down': <'1M'>}".into()),
        ("10 KB name", "name", long, "{'down': <'1M'>}".into()),
        ("name with /", "name", "a/b".into(), "{'down': <'1M'>}".into()),
        ("unknown kind", "planet", "x".into(), "{'down': <'1M'>}".into()),
    ];
    for (what, kind, target, opts) in &cases {
        let err = api.limit(kind, target, opts).unwrap_err();
        assert!(err.contains(&format!("{e}InvalidArgument")), "{what}: {err}");
    }
    let named = |kind: &str, target: &str, opts: &str, name: &str| {
        let err = api.limit(kind, target, opts).unwrap_err();
        assert!(err.contains(&format!("{e}{name}")), "{kind} {target} {opts}: {err}");
    };
    named("pid", "4194304", "{'down': <'1M'>}", "NoSuchProcess");
    named("pid", &s.pid(), "{'down': <'1M'>, 'backend': <'nope'>}", "UnknownBackend");
    named("pid", &s.pid(), "{'down': <'1M'>, 'backend': <'tc_htb'>}", "BackendUnavailable");
    let err = api.manager("Remove", &["/org/chadthrottle/throttles/999"]).unwrap_err();
    assert!(err.contains(&format!("{e}NoSuchThrottle")), "{err}");
    let err = api.manager("SetDefaultBackend", &["sideways", "ebpf"]).unwrap_err();
    assert!(err.contains(&format!("{e}InvalidArgument")), "{err}");
    let err = api.bus.busctl(&["call", "org.chadthrottle", "/org/chadthrottle", MGR, "Limit", "s", "pid"]).unwrap_err();
    assert!(err.contains("Signature") || err.contains("InvalidArgs"), "{err}");
    assert!(api.daemon.alive(), "the daemon died on bad input");
    assert_eq!(api.manager("ListThrottles", &[]).unwrap(), "(@ao [],)", "bad input changed state");
}

#[test]
fn signals_reach_clients() {
    let Some(_g) = begin() else { return };
    let Some(api) = Api::start("signals") else { return };
    let mut mon = api.monitor();
    std::thread::sleep(Duration::from_millis(300));
    let mut s = Sleeper::new();
    let path = object_path(&api.limit("pid", &s.pid(), "{'down': <'1M'>}").unwrap());
    api.limit("pid", &s.pid(), "{'down': <'2M'>}").unwrap(); // in place
    api.manager("SetDefaultBackend", &["down", "ifb_tc"]).unwrap();
    api.manager("Migrate", &[&path, "down", "ifb_tc"]).unwrap();
    // The next health check (every 5 s) reports ifb_tc running, but with
    // nothing to shape: its only interface, ct-none0, does not exist.
    std::thread::sleep(Duration::from_millis(5500));
    api.manager("Migrate", &[&path, "", "ebpf"]).unwrap();
    let _ = s.0.kill();
    let _ = s.0.wait();
    std::thread::sleep(Duration::from_millis(800));
    let _ = mon.kill();
    let out = String::from_utf8_lossy(&mon.wait_with_output().unwrap().stdout).into_owned();
    for want in [
        format!("{MGR}.ThrottleAdded (objectpath '{path}',)"),
        format!("{MGR}.DefaultBackendChanged ('down', 'ifb_tc')"),
        format!("{MGR}.ThrottleRemoved (objectpath '{path}', 'process-exited')"),
        "DefaultDownloadBackend".to_string(),
        format!("{MGR}.ThrottleMigrated (objectpath '{path}', 'down', 'ebpf', 'ifb_tc')"),
        format!("{MGR}.ThrottleMigrated (objectpath '{path}', 'down', 'ifb_tc', 'ebpf')"),
        format!("{MGR}.BackendHealthChanged ('ifb_tc', 'degraded', 'no managed interface is present (ct-none0)')"),
        "org.freedesktop.DBus.ObjectManager.InterfacesAdded".to_string(),
        // One PropertiesChanged per change, with every moved property.
        "'DownLimit': <uint64 2097152>".to_string(),
        // Backends, a property applets bind, follows the throttles.
        "PropertiesChanged ('org.chadthrottle.Manager', {'Backends':".to_string(),
    ] {
        assert!(out.contains(&want), "missing {want} in:\n{out}");
    }
    // PropertiesChanged carries only what changed: the new rate alone, then
    // the backend alone.
    let changes: Vec<&str> =
        out.lines().filter(|l| l.contains("PropertiesChanged ('org.chadthrottle.Throttle'")).collect();
    let rate = changes.iter().find(|l| l.contains("'DownLimit': <uint64 2097152>")).expect("no rate change");
    assert!(!rate.contains("UpLimit") && !rate.contains("Backend") && !rate.contains("Status"), "{rate}");
    let moved = changes.iter().find(|l| l.contains("'DownBackend': <'ifb_tc'>")).expect("no backend change");
    assert!(!moved.contains("DownLimit") && !moved.contains("UpBackend"), "{moved}");
}

/// The shipped interface XML is what the running daemon says it serves.
#[test]
fn interface_xml_matches_the_running_daemon() {
    let Some(_g) = begin() else { return };
    let Some(api) = Api::start("xml") else { return };
    let s = Sleeper::new();
    let path = object_path(&api.limit("pid", &s.pid(), "{'down': <'1M'>}").unwrap());
    for (obj, iface) in
        [("/org/chadthrottle", "org.chadthrottle.Manager"), (path.as_str(), "org.chadthrottle.Throttle")]
    {
        let live = api.bus.busctl(&["introspect", "--xml-interface", "org.chadthrottle", obj]).unwrap();
        let live = interface_block(&live, iface).expect("live interface");
        let file = dbus_dir().join(format!("{iface}.xml"));
        if std::env::var("CT_WRITE_XML").is_ok() {
            std::fs::write(&file, format!("{DOCTYPE}<node>\n  {live}\n</node>\n")).unwrap();
        }
        let shipped = std::fs::read_to_string(&file).unwrap();
        let shipped = interface_block(&shipped, iface).expect("shipped interface");
        assert_eq!(
            norm(&shipped),
            norm(&live),
            "{} drifted from the daemon (CT_WRITE_XML=1 rewrites it)",
            file.display()
        );
    }
}

const DOCTYPE: &str = "<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\"\n \"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd\">\n<!-- Generated from the running daemon (CT_WRITE_XML=1 and the dbus test);\n     tests/dbus.rs fails when it drifts. The comments are the documentation. -->\n";

fn interface_block(xml: &str, iface: &str) -> Option<String> {
    let start = xml.find(&format!("<interface name=\"{iface}\">"))?;
    let end = start + xml[start..].find("</interface>")? + "</interface>".len();
    Some(xml[start..end].to_string())
}

fn norm(s: &str) -> String {
    s.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("\n")
}

#[test]
fn shipped_bus_files_are_valid() {
    let Some(xmllint) = which("xmllint") else {
        throttle_testkit::missing("xmllint is not installed (run scripts/bootstrap.sh)");
        return;
    };
    for f in ["org.chadthrottle.conf", "org.chadthrottle.Manager.xml", "org.chadthrottle.Throttle.xml"] {
        let st = Command::new(&xmllint).arg("--noout").arg(dbus_dir().join(f)).status().unwrap();
        assert!(st.success(), "{f} is not well-formed XML");
    }
    let svc = std::fs::read_to_string(dbus_dir().join("org.chadthrottle.service")).unwrap();
    assert!(svc.contains("Name=org.chadthrottle") && svc.contains("SystemdService=dbus-org.chadthrottle.service"));
}

/// test users: one polkit allows to limit its own processes, one it denies.
const RULES: &str = r#"polkit.addRule(function(action, subject) {
  if (action.id == "org.chadthrottle.limit-own" && subject.user == "ct-test-allow") return polkit.Result.YES;
  if (action.id.indexOf("org.chadthrottle.") == 0 && action.id != "org.chadthrottle.observe"
      && subject.user == "ct-test-deny") return polkit.Result.NO;
});"#;

/// Runs a command as `uid` (setpriv, no supplementary groups); returns
/// (exit code, stdout + stderr).
fn as_user<S: AsRef<str>>(uid: (u32, u32), bus: &PrivateBus, prog: &std::path::Path, args: &[S]) -> (i32, String) {
    let out = user_cmd(uid, prog.to_str().unwrap())
        .args(args.iter().map(AsRef::as_ref))
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus.address())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

fn sleeper_as(uid: (u32, u32)) -> Sleeper {
    Reaped(user_cmd(uid, "sleep").arg("60").spawn().unwrap())
}

/// A real polkitd decides: a user may limit their own process but not
/// root's; a denied user gets NotAuthorized; nothing changes on denial;
/// busctl as the same users gets the same answers.
#[test]
fn polkit_decides_for_unprivileged_callers() {
    let Some(_g) = begin() else { return };
    let (allow, deny) = (test_user("ct-test-allow"), test_user("ct-test-deny"));
    let Some(api) = Api::start_with("polkit", Some(RULES), &[]) else { return };
    let (own, theirs, roots) = (sleeper_as(allow), sleeper_as(deny), Sleeper::new());
    let ctl = throttlectl();
    let (code, out) = as_user(allow, &api.bus, &ctl, &["limit", &own.pid(), "--down", "1M"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = as_user(allow, &api.bus, &ctl, &["limit", &roots.pid(), "--down", "1M"]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("limit-any"), "{out}");
    let (code, out) = as_user(deny, &api.bus, &ctl, &["limit", &theirs.pid(), "--down", "1M"]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("not authorized for org.chadthrottle.limit-own"), "{out}");
    let busctl = which("busctl").unwrap();
    let addr = format!("--address={}", api.bus.address());
    let run = |uid, pid: &str| {
        let call = [&addr, "call", "org.chadthrottle", "/org/chadthrottle", MGR, "Limit", "ssa{sv}", "pid", pid];
        let args: Vec<&str> = call.into_iter().chain(["1", "down", "s", "2M"]).collect();
        as_user(uid, &api.bus, &busctl, &args)
    };
    let (code, out) = run(allow, &own.pid());
    assert_eq!(code, 0, "busctl as the allowed user on its own process: {out}");
    let (code, out) = run(allow, &roots.pid());
    assert_ne!(code, 0, "busctl as the allowed user on root's process: {out}");
    assert!(out.contains("limit-any"), "{out}");
    let (code, out) = run(deny, &theirs.pid());
    assert_ne!(code, 0, "{out}");
    let list = api.manager("ListThrottles", &[]).unwrap();
    assert_eq!(list.matches("/org/chadthrottle/throttles/").count(), 1, "a denied call changed state: {list}");
    let (code, out) = as_user(deny, &api.bus, &ctl, &["list"]);
    assert_eq!(code, 0, "observe is open to everyone: {out}");
    let (code, out) = as_user(deny, &api.bus, &ctl, &["reload"]);
    assert_eq!(code, 3, "{out}");
    // A name can catch anyone's processes: limit-any, so root only here.
    let name = ["limit", "ct-polkit-name", "--down", "1M", "--backend", "ebpf"];
    let (code, out) = as_user(allow, &api.bus, &ctl, &name);
    assert_eq!(code, 3, "{out}");
    let (code, out) = as_user((0, 0), &api.bus, &ctl, &name);
    assert_eq!(code, 0, "root with polkit running: {out}");
    assert!(out.contains("name ct-polkit-name"), "{out}");
    let _ = theirs;
}

/// Without polkit on the bus only root may change anything, and the error
/// says why; reads (list, stats, backends, top of one's own processes) work
/// for everyone, as the shipped `observe` default says.
#[test]
fn without_polkit_only_root_is_allowed() {
    let Some(_g) = begin() else { return };
    let allow = test_user("ct-test-allow");
    let Some(api) = Api::start("nopolkit") else { return };
    let own = sleeper_as(allow);
    let (code, out) = as_user(allow, &api.bus, &throttlectl(), &["limit", &own.pid(), "--down", "1M"]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("polkit is unavailable"), "{out}");
    assert!(api.limit("pid", &own.pid(), "{'down': <'1M'>}").is_ok(), "root is always allowed");
    for read in [&["list"][..], &["stats"], &["backends"], &["top", "--once"]] {
        let (code, out) = as_user(allow, &api.bus, &throttlectl(), read);
        assert_eq!(code, 0, "{read:?} without polkit: {out}");
    }
    let (_, listed) = as_user(allow, &api.bus, &throttlectl(), &["list"]);
    assert!(listed.contains(&own.pid()), "{listed}");
}

/// The bus policy lets only root own org.chadthrottle.
#[test]
fn only_root_may_own_the_name() {
    let Some(_g) = begin() else { return };
    let deny = test_user("ct-test-deny");
    let Some(bus) = PrivateBus::start("own") else { return };
    let gdbus = which("gdbus").unwrap();
    let req = [
        "call",
        "--address",
        bus.address(),
        "--dest",
        "org.freedesktop.DBus",
        "--object-path",
        "/org/freedesktop/DBus",
    ];
    let method = ["--method", "org.freedesktop.DBus.RequestName", "org.chadthrottle", "0"];
    let args: Vec<&str> = req.iter().chain(method.iter()).copied().collect();
    let (code, out) = as_user(deny, &bus, &gdbus, &args);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("AccessDenied"), "{out}");
    let (code, out) = as_user((0, 0), &bus, &gdbus, &args);
    assert_eq!(code, 0, "root may own it: {out}");
}

/// Every action the daemon asks polkit about is declared in the policy,
/// and the policy is valid against polkit's DTD.
#[test]
fn polkit_actions_are_declared_and_valid() {
    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../throttled"));
    let policy = std::fs::read_to_string(dir.join("../polkit/org.chadthrottle.policy")).unwrap();
    let mut used: Vec<String> = Vec::new();
    for f in ["src/dbus/polkit.rs", "src/dbus/service.rs", "src/dbus/throttle.rs"] {
        let src = std::fs::read_to_string(dir.join(f)).unwrap();
        for (i, _) in src.match_indices("\"org.chadthrottle.") {
            let id: String = src[i + 1..].chars().take_while(|c| *c != '"').collect();
            if !id.contains("Error") && id.chars().nth(17).is_some_and(|c| c.is_ascii_lowercase()) {
                used.push(id);
            }
        }
    }
    used.extend(ACTIONS.iter().map(|s| s.to_string()));
    assert!(used.len() >= 4, "{used:?}");
    for id in used {
        assert!(policy.contains(&format!("<action id=\"{id}\">")), "{id} is used but not in the .policy file");
    }
    let Some(xmllint) = which("xmllint") else {
        throttle_testkit::missing("xmllint is not installed (run scripts/bootstrap.sh)");
        return;
    };
    let dtd = "/usr/share/polkit-1/policyconfig-1.dtd";
    let mut cmd = Command::new(xmllint);
    cmd.arg("--noout");
    if std::path::Path::new(dtd).exists() {
        cmd.args(["--dtdvalid", dtd]);
    }
    assert!(cmd.arg(dir.join("../polkit/org.chadthrottle.policy")).status().unwrap().success());
}

/// Every throttlectl command as root, human and JSON, with exit codes.
#[test]
fn throttlectl_commands_end_to_end() {
    let Some(_g) = begin() else { return };
    let Some(api) = Api::start("ctl") else { return };
    let dir = ScratchDir::new("ctl-bin");
    let bin = dir.path.join("ct-ctl-app");
    std::fs::copy(which("sleep").unwrap(), &bin).unwrap();
    let mut app = Command::new(&bin).arg("60").spawn().unwrap();
    let ctl = throttlectl();
    let run = |args: &[&str]| as_user((0, 0), &api.bus, &ctl, args);
    let ok = |args: &[&str]| {
        let (code, out) = run(args);
        assert_eq!(code, 0, "throttlectl {args:?}: {out}");
        out
    };
    assert!(ok(&["limit", "ct-ctl-app", "--down", "1M", "--backend", "ebpf"]).contains("throttle 1: name ct-ctl-app"));
    let list: serde_json::Value = serde_json::from_str(&ok(&["--json", "list"])).unwrap();
    assert_eq!(list[0]["down"], 1048576);
    assert_eq!(list[0]["pids"][0], app.id());
    let backends: serde_json::Value = serde_json::from_str(&ok(&["--json", "backends"])).unwrap();
    assert_eq!(backends.as_array().unwrap().len(), 3);
    // stdout is a pipe: ASCII stand-ins for the symbols (tests/cli.rs).
    assert!(ok(&["backends"]).contains("*  ebpf"));
    assert!(ok(&["default", "--down", "ifb_tc"]).contains("New throttles will use 'ifb_tc' for download"));
    assert!(ok(&["migrate", "1", "--to", "ifb_tc"]).contains("now on 'ifb_tc'"));
    assert!(ok(&["migrate", "--from", "ifb_tc", "--to", "ebpf"]).contains("moved 1 throttle"));
    assert!(ok(&["stats"]).contains("throttles: 1"));
    assert!(ok(&["status"]).contains("is running: 1 throttle on ebpf"));
    ok(&["reload"]);
    assert_eq!(run(&["limit", "ct-ctl-app", "--down", "1Q"]).0, 2, "bad rate");
    assert_eq!(run(&["limit", "ct-ctl-app", "--down", "1M", "--backend", "nope"]).0, 2, "unknown backend");
    assert_eq!(run(&["limit", "4194304", "--down", "1M"]).0, 4, "no such process");
    assert_eq!(run(&["unlimit", "nothing"]).0, 4, "no such throttle");
    assert_eq!(run(&["--bus", "unix:path=/nonexistent", "status"]).0, 5, "unreachable");
    assert!(ok(&["unlimit", "ct-ctl-app"]).contains("removed throttle 1"));
    assert_eq!(ok(&["list"]).trim(), "no throttles");
    let _ = app.kill();
    let _ = app.wait();
}

/// The sd_notify protocol: READY=1 (only once the name is owned) with a
/// STATUS=, WATCHDOG=1 at half the requested interval, STOPPING=1 on SIGTERM.
#[test]
fn notifies_the_service_manager() {
    let Some(_g) = begin() else { return };
    let Some(bus) = PrivateBus::start("notify") else { return };
    let dir = ScratchDir::new("notify");
    let sock = dir.path.join("notify.sock");
    let rx = std::os::unix::net::UnixDatagram::bind(&sock).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let addr = format!("--address={}", bus.address());
    // Records every message; at READY=1 asks the bus whether the name is owned.
    let reader = std::thread::spawn(move || {
        let (mut msgs, mut owned_at_ready) = (Vec::new(), None);
        let mut buf = [0u8; 4096];
        while let Ok(n) = rx.recv(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            if m.starts_with("READY=1") && owned_at_ready.is_none() {
                let st = Command::new("busctl").args([addr.as_str(), "status", "org.chadthrottle"]).output().unwrap();
                owned_at_ready = Some(st.status.success());
            }
            let stop = m == "STOPPING=1";
            msgs.push(m);
            if stop {
                break;
            }
        }
        (msgs, owned_at_ready)
    });
    let sock_s = sock.to_str().unwrap().to_string();
    let mut d = daemon_on(&bus, &dir, &[("NOTIFY_SOCKET", sock_s.as_str()), ("WATCHDOG_USEC", "1000000")]);
    std::thread::sleep(Duration::from_millis(2600));
    d.stop();
    let (msgs, owned_at_ready) = reader.join().unwrap();
    assert!(msgs[0].starts_with("READY=1\nSTATUS=no throttles"), "{msgs:?}");
    assert_eq!(owned_at_ready, Some(true), "READY=1 came before the bus name was owned");
    let pings = msgs.iter().filter(|m| *m == "WATCHDOG=1").count();
    assert!(pings >= 4, "{pings} watchdog pings in 2.6 s at a 0.5 s period: {msgs:?}");
    assert_eq!(msgs.last().map(String::as_str), Some("STOPPING=1"), "{msgs:?}");
}

/// GetTopProcesses and GetHistory through busctl, for an iperf3 client the
/// daemon has never been told about, before and after it is limited.
#[test]
fn monitor_over_the_bus() {
    let Some(_g) = begin() else { return };
    let Some(api) = Api::start("monitor") else { return };
    let mut lab = Lab::new(64);
    lab.server(5201);
    let c = lab.client("ct-bus-top", 5201, 8, false);
    let pid = c.pid();
    let find = |api: &Api| -> Option<serde_json::Value> {
        let call = ["call", "org.chadthrottle", "/org/chadthrottle", MGR, "GetTopProcesses"];
        let args = ["--json=short"].into_iter().chain(call).chain(["uss", "100", "up", "all"]);
        let out = api.bus.busctl(&args.collect::<Vec<_>>()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["data"][0].as_array()?.iter().find(|r| r["pid"]["data"] == pid).cloned()
    };
    let top = |api: &Api| find(api).unwrap_or_else(|| panic!("pid {pid} is not in GetTopProcesses"));
    let busy = || find(&api).is_some_and(|r| r["up_rate"]["data"].as_u64() > Some(0));
    assert!(wait_until(Duration::from_secs(4), busy), "the client's upload never showed");
    let row = top(&api);
    assert_eq!(row["name"]["data"], "ct-bus-top");
    assert_eq!(row["throttled"]["data"], false);
    let path = object_path(&api.limit("pid", &pid.to_string(), "{'up': <'4M'>}").unwrap());
    let row = top(&api);
    assert_eq!(row["throttled"]["data"], true);
    assert_eq!(row["backends"]["data"], serde_json::json!(["ebpf"]));
    assert_eq!(row["up_limit"]["data"], 4 << 20);
    std::thread::sleep(Duration::from_secs(3));
    let hist = api.manager("GetHistory", &["process", &pid.to_string()]).unwrap();
    assert!(hist.starts_with("([(uint64 "), "{hist}");
    let id = path.rsplit('/').next().unwrap();
    assert!(api.manager("GetHistory", &["throttle", id]).unwrap().starts_with("([(uint64 "));
    let bad = api.manager("GetTopProcesses", &["10", "sideways", "all"]).unwrap_err();
    assert!(bad.contains("org.chadthrottle.Error.InvalidArgument") && bad.contains("sideways"), "{bad}");
    let bad = api.manager("GetHistory", &["planet", "1"]).unwrap_err();
    assert!(bad.contains("InvalidArgument"), "{bad}");
    let gone = api.manager("GetHistory", &["throttle", "999"]).unwrap_err();
    assert!(gone.contains("NoSuchThrottle"), "{gone}");
    assert_eq!(api.prop("/org/chadthrottle", MGR, "MonitorEnabled"), "b true");
    let accuracy = api.prop(&path, "org.chadthrottle.Throttle", "UpAccuracy");
    let a: f64 = accuracy.trim_start_matches("d ").parse().unwrap();
    assert!((0.9..=1.1).contains(&a), "UpAccuracy {accuracy} for a saturated 4M upload");
    drop(c);
}

/// `systemctl restart dbus`: the daemon connects again, re-claims its name
/// and serves every throttle again; the throttle was enforced throughout.
#[test]
fn survives_a_bus_restart() {
    let Some(_g) = begin() else { return };
    let Some(mut api) = Api::start("restart") else { return };
    let s = Sleeper::new();
    let path = object_path(&api.limit("pid", &s.pid(), "{'down': <'1M'>}").unwrap());
    api.bus.restart();
    let back =
        wait_until(Duration::from_secs(10), || api.manager("ListThrottles", &[]).is_ok_and(|l| l.contains(&path)));
    assert!(back, "the daemon did not come back on the restarted bus");
    assert!(api.daemon.alive());
    assert_eq!(api.prop(&path, "org.chadthrottle.Throttle", "DownLimit"), "t 1048576");
    // Still usable: a new limit and its signal path work on the new connection.
    let s2 = Sleeper::new();
    assert!(api.limit("pid", &s2.pid(), "{'up': <'2M'>}").is_ok());
}

/// One user may see everyone's traffic by rule; others only their own.
const OBSERVE_RULES: &str = r#"polkit.addRule(function(action, subject) {
  if (action.id == "org.chadthrottle.observe-all" && subject.user == "ct-test-watch") return polkit.Result.YES;
});"#;

/// Sends a small UDP datagram to loopback every 50 ms, as `uid`.
fn chatter_as(uid: (u32, u32)) -> Sleeper {
    let script = "import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
                  while True:\n s.sendto(b'x'*200,('127.0.0.1',9)); time.sleep(0.05)";
    Reaped(user_cmd(uid, "/usr/bin/python3").args(["-c", script]).spawn().unwrap())
}

/// GetTopProcesses as `uid` through busctl: (pid, uid) of every entry.
fn top_as(api: &Api, uid: (u32, u32)) -> Vec<(u64, u64)> {
    let addr = format!("--address={}", api.bus.address());
    let call = [&addr, "--json=short", "call", "org.chadthrottle", "/org/chadthrottle", MGR, "GetTopProcesses"];
    let args: Vec<&str> = call.into_iter().chain(["uss", "1000", "total", "all"]).collect();
    let (code, out) = as_user(uid, &api.bus, &which("busctl").unwrap(), &args);
    assert_eq!(code, 0, "GetTopProcesses as {uid:?}: {out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = v["data"][0].as_array().cloned().unwrap_or_default();
    rows.iter().map(|r| (r["pid"]["data"].as_u64().unwrap(), r["uid"]["data"].as_u64().unwrap())).collect()
}

/// Other users' traffic is theirs, as their /proc/PID/io is: without
/// org.chadthrottle.observe-all the monitor lists only the caller's own
/// processes and refuses another user's history; a user granted it by
/// rule, and root, see everyone. Throttles stay visible to all (observe).
#[test]
fn other_users_traffic_needs_observe_all() {
    let Some(_g) = begin() else { return };
    let (user, watcher) = (test_user("ct-test-allow"), test_user("ct-test-watch"));
    let Some(api) = Api::start_with("observe", Some(OBSERVE_RULES), &[]) else { return };
    let (mine, roots) = (chatter_as(user), chatter_as((0, 0)));
    let (mine_pid, root_pid): (u64, u64) = (mine.pid().parse().unwrap(), roots.pid().parse().unwrap());
    let both = |rows: &[(u64, u64)]| [mine_pid, root_pid].iter().all(|p| rows.iter().any(|(q, _)| q == p));
    assert!(wait_until(Duration::from_secs(5), || both(&top_as(&api, (0, 0)))), "the senders never showed");
    let own = top_as(&api, user);
    assert!(own.iter().any(|(p, _)| *p == mine_pid), "the user does not see their own process: {own:?}");
    assert!(own.iter().all(|(_, u)| *u == u64::from(user.0)), "the user sees other users' processes: {own:?}");
    assert!(both(&top_as(&api, watcher)), "observe-all by rule did not show everyone");
    let history = |uid, pid: u64| {
        let addr = format!("--address={}", api.bus.address());
        let pid = pid.to_string();
        let args = [&addr, "call", "org.chadthrottle", "/org/chadthrottle", MGR, "GetHistory", "su", "process", &pid];
        as_user(uid, &api.bus, &which("busctl").unwrap(), &args)
    };
    let (code, out) = history(user, root_pid);
    assert_ne!(code, 0, "another user's history was readable: {out}");
    assert!(out.contains("observe-all"), "{out}");
    assert_eq!(history(user, mine_pid).0, 0, "the user's own history");
    assert_eq!(history(watcher, root_pid).0, 0, "observe-all reads anyone's history");
    let (code, out) = as_user(user, &api.bus, &throttlectl(), &["top", "--once", "--json"]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains(&format!("\"pid\":{root_pid}")), "throttlectl top showed root's process: {out}");
}

/// Crafted names never reach the filesystem: path-like names are refused
/// or matched as patterns, nothing is written outside the state directory,
/// and the state directory holds only the daemon's own fixed files.
#[test]
fn crafted_names_write_nothing_outside_the_state_directory() {
    let Some(_g) = begin() else { return };
    let Some(api) = Api::start("crafted") else { return };
    let bait = std::env::temp_dir().join(format!("ct-crafted-{}", std::process::id()));
    let b = bait.display().to_string();
    let up = format!("/../../../..{b}");
    let cases = [
        ("name", format!("../../../..{b}")),
        ("exe", format!("../../../..{b}")),
        ("name", "..".to_string()),
        ("name", format!("x\n{b}")),
        ("exe", up.clone()),
        ("cgroup", up.clone()),
        ("cgroup", format!("{up}/../..")),
        ("unit", format!("..{b}.service")),
        ("unit", "../../x.service".to_string()),
    ];
    for (kind, target) in &cases {
        let r = api.limit(kind, target, "{'down': <'1M'>}");
        eprintln!("{kind} {target:?}: {r:?}");
        if let Err(e) = &r {
            assert!(e.contains("org.chadthrottle.Error.InvalidArgument"), "{kind} {target:?}: {e}");
        }
    }
    assert!(!bait.exists(), "a crafted name created {b}");
    let state = api._dir.path.join("state");
    let files: Vec<String> =
        std::fs::read_dir(&state).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    let ours = |f: &str| {
        ["throttles.json", "lock", "usage.sqlite", "usage.sqlite-wal", "usage.sqlite-shm"].contains(&f)
            || f.strip_prefix("throttles.journal.").is_some_and(|n| n.parse::<u64>().is_ok())
    };
    assert!(files.iter().all(|f| ours(f)), "unexpected files: {files:?}");
    let saved = std::fs::read_to_string(state.join("throttles.json")).unwrap();
    assert!(serde_json::from_str::<serde_json::Value>(&saved).is_ok(), "the saved state is not valid JSON");
}

/// Bus activation asks systemd for the unit's alias, so a disabled unit (no
/// `dbus-org.chadthrottle.service` link) is never started by the bus. A real
/// dbus-daemon with systemd activation sends its request to the test, which
/// stands in for systemd: it checks the unit name, starts the daemon, and
/// the call that triggered the activation is answered by it.
#[test]
fn bus_activation_asks_systemd_for_the_alias() {
    use futures_util::StreamExt as _;
    let Some(_g) = begin() else { return };
    if which("busctl").is_none() {
        throttle_testkit::missing("busctl is needed (run scripts/bootstrap.sh)");
        return;
    }
    let Some(bus) = PrivateBus::start_activating("activation") else { return };
    let dir = ScratchDir::new("api-activation");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (unit, daemon, reply) = rt.block_on(async {
        let conn = zbus::connection::Builder::address(bus.address()).unwrap().build().await.unwrap();
        let rule = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .interface("org.freedesktop.systemd1.Activator")
            .unwrap()
            .member("ActivationRequest")
            .unwrap()
            .build();
        let mut requests = zbus::MessageStream::for_match_rule(rule, &conn, None).await.unwrap();
        conn.request_name("org.freedesktop.systemd1").await.unwrap();
        // An auto-starting call, as any client's first call is.
        let addr = format!("--address={}", bus.address());
        let client = tokio::task::spawn_blocking(move || {
            output(Command::new("busctl").args([&addr, "--auto-start=yes", "--timeout=20", "get-property"]).args([
                "org.chadthrottle",
                "/org/chadthrottle",
                MGR,
                "Version",
            ]))
        });
        let msg = tokio::time::timeout(Duration::from_secs(10), requests.next())
            .await
            .expect("no ActivationRequest within 10 s")
            .unwrap()
            .unwrap();
        let unit: String = msg.body().deserialize().unwrap();
        let daemon = daemon_on(&bus, &dir, &[]);
        (unit, daemon, client.await.unwrap())
    });
    assert_eq!(unit, "dbus-org.chadthrottle.service", "the bus asked systemd for {unit}");
    let version = reply.expect("the activating call was not answered");
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
    drop(daemon);
}

/// `hold`: a throttle that lasts while the caller's bus connection does,
/// like power-profiles-daemon's HoldProfile. It ends (ThrottleRemoved with
/// "released") when the client goes, is never saved, and never takes over
/// an existing throttle.
#[test]
fn a_held_throttle_ends_with_its_client() {
    let Some(_g) = begin() else { return };
    let Some(mut api) = Api::start("hold") else { return };
    let (held, kept) = (Sleeper::new(), Sleeper::new());
    let kept_path = object_path(&api.limit("pid", &kept.pid(), "{'down': <'1M'>}").unwrap());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = rt.block_on(zbus::connection::Builder::address(api.bus.address()).unwrap().build()).unwrap();
    let limit = |target: &str, opts: std::collections::HashMap<&str, zbus::zvariant::Value<'_>>| {
        rt.block_on(client.call_method(
            Some("org.chadthrottle"),
            "/org/chadthrottle",
            Some(MGR),
            "Limit",
            &("pid", target, opts),
        ))
    };
    let hold = |extra: (&'static str, zbus::zvariant::Value<'static>)| {
        std::collections::HashMap::from([("hold", zbus::zvariant::Value::from(true)), extra])
    };
    let reply = limit(&held.pid(), hold(("down", "2M".into()))).expect("a held Limit");
    let path: zbus::zvariant::OwnedObjectPath = reply.body().deserialize().unwrap();
    let path = path.to_string();
    assert_eq!(api.prop(&path, "org.chadthrottle.Throttle", "Origin"), "s \"held\"");
    // Never over an existing throttle, and never on SetLimits.
    let taken = limit(&kept.pid(), hold(("down", "2M".into()))).expect_err("a hold over a saved throttle");
    assert!(taken.to_string().contains("InvalidArgument"), "{taken}");
    let set = api.call(&kept_path, "org.chadthrottle.Throttle.SetLimits", &["{'down': <'2M'>, 'hold': <true>}"]);
    assert!(set.is_err_and(|e| e.contains("InvalidArgument")), "SetLimits took hold");
    // Not saved: a restart brings back only the other throttle.
    let state = std::fs::read_dir(api._dir.path.join("state")).unwrap().flatten();
    let saved: String = state.filter_map(|e| std::fs::read_to_string(e.path()).ok()).collect();
    let saved_id = |p: &str| {
        let id = p.rsplit('/').next().unwrap().to_string();
        saved.contains(&format!("\"id\":{id},")) || saved.contains(&format!("\"id\": {id},"))
    };
    assert!(saved_id(&kept_path) && !saved_id(&path), "a held throttle was saved: {saved}");
    let mut mon = api.monitor();
    std::thread::sleep(Duration::from_millis(300));
    drop(client);
    drop(rt);
    let gone = wait_until(Duration::from_secs(2), || !api.manager("ListThrottles", &[]).unwrap().contains(&path));
    let _ = mon.kill();
    let out = String::from_utf8_lossy(&mon.wait_with_output().unwrap().stdout).into_owned();
    assert!(gone, "the held throttle outlived its client");
    assert!(out.contains(&format!("{MGR}.ThrottleRemoved (objectpath '{path}', 'released')")), "{out}");
    assert!(api.manager("ListThrottles", &[]).unwrap().contains(&kept_path), "the other throttle went too");
    api.daemon.stop();
    let _ = &mut api;
}
