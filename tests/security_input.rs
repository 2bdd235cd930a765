//! Hostile input against the real daemon on a real dbus-daemon (with a real
//! polkitd where it matters), driven by busctl and gdbus as independent
//! clients: the root cgroup and the daemon's own control path are never
//! limited, zombies are no processes, saved state is validated like an API
//! call, throttles over the slot limit stay saved, oversized arguments are
//! refused early and never echoed, and every refusal leaves nothing behind.
mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use common::*;
use throttle_testkit::bus::{test_user, write_config, Polkit, PrivateBus};
use throttled::kernel::procfs;

const MGR: &str = "org.chadthrottle.Manager";
const THR: &str = "org.chadthrottle.Throttle";
const DEST: &str = "org.chadthrottle";

/// A private bus, optionally polkitd, and the daemon with its log in a file.
struct Api {
    daemon: Option<Daemon>,
    _polkit: Option<Polkit>,
    bus: PrivateBus,
    dir: ScratchDir,
    log: PathBuf,
}

impl Api {
    fn start(tag: &str, polkit: bool) -> Option<Api> {
        Self::start_with_state(tag, polkit, |_| {})
    }

    /// `prepare` may write saved state into the state directory first.
    fn start_with_state(tag: &str, polkit: bool, prepare: impl FnOnce(&Path)) -> Option<Api> {
        if which("gdbus").is_none() || which("busctl").is_none() {
            throttle_testkit::missing("gdbus and busctl are needed (run scripts/bootstrap.sh)");
            return None;
        }
        let bus = PrivateBus::start(tag)?;
        let polkit = match polkit {
            true => Some(Polkit::start(&bus, "")?),
            false => None,
        };
        let dir = ScratchDir::new(&format!("api-{tag}"));
        std::fs::create_dir_all(dir.path.join("state")).unwrap();
        prepare(&dir.path.join("state"));
        let log = dir.path.join("daemon.log");
        let mut api = Api { daemon: None, _polkit: polkit, bus, dir, log };
        api.restart();
        Some(api)
    }

    fn state(&self) -> PathBuf {
        self.dir.path.join("state")
    }

    /// (Re)starts the daemon (SIGTERM first), its log appended to `log`.
    fn restart(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.stop();
        }
        let conf = write_config(&self.dir, "ct-none0");
        // Plain text (no colours), so that any escape sequence came from input.
        let env = [("DBUS_SYSTEM_BUS_ADDRESS", self.bus.address()), ("RUST_LOG", "info"), ("NO_COLOR", "1")];
        let bin = daemon_bin();
        self.daemon = Some(Daemon::start_logged(bin, &["--config", conf.to_str().unwrap()], &env, &self.log));
    }

    fn daemon_pid(&self) -> u32 {
        self.daemon.as_ref().unwrap().pid()
    }

    fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// `gdbus call`: Ok(stdout) or Err(stderr, with the error's name).
    fn gdbus(&self, path: &str, method: &str, args: &[&str]) -> Result<String, String> {
        output(
            Command::new("gdbus")
                .args(["call", "--address", self.bus.address(), "--dest", DEST, "--object-path", path])
                .args(["--method", method])
                .args(args),
        )
    }

    fn manager(&self, method: &str, args: &[&str]) -> Result<String, String> {
        self.gdbus("/org/chadthrottle", &format!("{MGR}.{method}"), args)
    }

    fn limit(&self, kind: &str, target: &str, opts: &str) -> Result<String, String> {
        self.manager("Limit", &[kind, target, opts])
    }

    /// `busctl call` on the manager with a raw signature and arguments.
    fn busctl_manager(&self, method: &str, sig: &str, args: &[&str]) -> Result<String, String> {
        let all: Vec<&str> =
            ["call", DEST, "/org/chadthrottle", MGR, method, sig].into_iter().chain(args.iter().copied()).collect();
        self.bus.busctl(&all)
    }

    fn prop(&self, path: &str, name: &str) -> String {
        self.bus.busctl(&["get-property", DEST, path, THR, name]).unwrap().trim().to_string()
    }

    /// The pids of a busctl `au N a b c` reply.
    fn pids(&self, path: &str, name: &str) -> Vec<u32> {
        self.prop(path, name).split_whitespace().skip(2).filter_map(|p| p.parse().ok()).collect()
    }

    fn throttles(&self) -> String {
        self.manager("ListThrottles", &[]).unwrap()
    }

    /// Every saved byte: the snapshot and the journals.
    fn saved(&self) -> String {
        let mut files: Vec<_> = std::fs::read_dir(self.state())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("throttles."))
            .collect();
        files.sort();
        files.iter().map(|f| format!("{}:{}\n", f.display(), std::fs::read_to_string(f).unwrap_or_default())).collect()
    }
}

fn object_path(reply: &str) -> String {
    reply.split('\'').nth(1).unwrap_or_default().to_string()
}

type Kid = Reaped;

impl Reaped {
    fn spawn(prog: &str, args: &[&str]) -> Kid {
        Reaped(Command::new(prog).args(args).stdin(Stdio::null()).spawn().unwrap())
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

fn state_char(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().next()?.chars().next()
}

/// Direct children of this test process with this comm.
fn my_children(comm: &str) -> Vec<u32> {
    procfs::children(std::process::id()).into_iter().filter(|p| procfs::comm(*p).is_ok_and(|c| c == comm)).collect()
}

const INVALID: &str = "org.chadthrottle.Error.InvalidArgument";

/// Item 7: the root cgroup is refused like pid 1; the daemon, the bus and
/// polkitd are never limited through any target, and say so in Excluded.
#[test]
fn the_root_cgroup_and_the_control_path_are_never_limited() {
    let Some(_g) = begin() else { return };
    let Some(api) = Api::start("sn-root", true) else { return };
    let before = api.saved();
    let mut roots = vec!["/".to_string(), "//".into(), "///".into()];
    if let Ok(m) = throttled::kernel::cgroup::cgroup2_mount() {
        roots.push(m.display().to_string());
    }
    let pid1 = api.limit("pid", "1", "{'down': <'1M'>}").unwrap_err();
    assert!(pid1.contains(INVALID) && pid1.contains("would limit the system"), "{pid1}");
    for r in &roots {
        let e = api.limit("cgroup", r, "{'down': <'1M'>}").unwrap_err();
        assert!(e.contains(INVALID) && e.contains("would limit the system"), "cgroup {r:?}: {e}");
    }
    let (bus, polkitd) = (my_children("dbus-daemon"), my_children("polkitd"));
    assert_eq!((bus.len(), polkitd.len()), (1, 1), "this test's bus and polkitd");
    let protected = [api.daemon_pid(), bus[0], polkitd[0]];
    for p in protected {
        let e = api.limit("pid", &p.to_string(), "{'down': <'1M'>}").unwrap_err();
        assert!(e.contains(INVALID) && e.contains("never limited"), "pid {p}: {e}");
    }
    assert_eq!(api.throttles(), "(@ao [],)", "a refusal left a throttle");
    assert_eq!(api.saved(), before, "a refusal was saved");
    // A tree on this test process covers its children, but never the
    // daemon, the bus or polkitd, which it reports as excluded.
    let s = Kid::spawn("sleep", &["60"]);
    let path = object_path(&api.limit("tree", &std::process::id().to_string(), "{'down': <'1M'>}").unwrap());
    let (pids, excluded) = (api.pids(&path, "Pids"), api.pids(&path, "Excluded"));
    assert!(pids.contains(&s.pid()), "{pids:?}");
    for p in protected {
        assert!(!pids.contains(&p), "protected pid {p} is limited: {pids:?}");
        assert!(excluded.contains(&p), "protected pid {p} is not reported: {excluded:?}");
    }
    assert!(api.log_text().contains("never limited"), "the exclusion is not logged");
    // polkitd restarts: the new one is found from the bus and leaves the
    // tree it joined at its fork.
    let mut api = api;
    api._polkit = None;
    api._polkit = Polkit::start(&api.bus, "");
    let again = my_children("polkitd");
    assert_eq!(again.len(), 1);
    let gone = |api: &Api| !api.pids(&path, "Pids").contains(&again[0]);
    assert!(wait_until(Duration::from_secs(5), || gone(&api)), "the new polkitd {} is limited", again[0]);
    let listed = |api: &Api| api.pids(&path, "Excluded").contains(&again[0]);
    let log = |api: &Api| api.log_text().lines().filter(|l| l.contains("never limited")).collect::<Vec<_>>().join("\n");
    assert!(wait_until(Duration::from_secs(5), || listed(&api)), "{} not excluded: {}", again[0], log(&api));
    assert!(!api.pids(&path, "Excluded").contains(&polkitd[0]), "the old polkitd is still listed");
}

/// Item 8: a zombie is no process: refused with NoSuchProcess, never a
/// member of a tree, and nothing is left behind or restored.
#[test]
fn zombies_are_no_processes() {
    let Some(_g) = begin() else { return };
    let Some(mut api) = Api::start("sn-zombie", false) else { return };
    let before = api.saved();
    let mut z = Kid::spawn("true", &[]);
    assert!(wait_until(Duration::from_secs(5), || state_char(z.pid()) == Some('Z')), "no zombie");
    for kind in ["pid", "tree"] {
        let e = api.limit(kind, &z.pid().to_string(), "{'down': <'1M'>}").unwrap_err();
        assert!(e.contains("org.chadthrottle.Error.NoSuchProcess"), "{kind} zombie: {e}");
    }
    assert_eq!(api.throttles(), "(@ao [],)");
    assert_eq!(api.saved(), before, "a zombie's throttle was saved");
    // A parent whose child is a zombie it never reaps (sleep does not wait).
    let parent = Kid::spawn("sh", &["-c", "true & exec sleep 60"]);
    let child = || procfs::children(parent.pid()).into_iter().next();
    assert!(wait_until(Duration::from_secs(5), || child().and_then(state_char) == Some('Z')), "no zombie child");
    let zombie = child().unwrap();
    let path = object_path(&api.limit("tree", &parent.pid().to_string(), "{'down': <'1M'>}").unwrap());
    let pids = api.pids(&path, "Pids");
    assert_eq!(pids, vec![parent.pid()], "the zombie child {zombie} is a member");
    api.restart();
    assert!(api.throttles().contains(&path), "the live tree throttle was not restored");
    let _ = z.0.wait();
}

fn throttle_json(id: u32, target: serde_json::Value) -> serde_json::Value {
    serde_json::json!({ "id": id, "target": target, "down": 1048576, "up": null,
        "down_backend": null, "up_backend": null })
}

/// Item 10: every saved entry is validated exactly as an API call, and an
/// invalid one is set aside with a short, escaped warning, never applied.
#[test]
fn crafted_saved_state_is_set_aside_not_applied() {
    let Some(_g) = begin() else { return };
    let init = procfs::ident(1).unwrap();
    let kthreadd = procfs::ident(2).ok().filter(|_| procfs::is_kernel_thread(2).unwrap_or(false));
    let huge = "n".repeat(100_000);
    let mut bad = vec![
        serde_json::json!({ "kind": "pid", "ident": init, "tree": false }),
        serde_json::json!({ "kind": "name", "name": "a/b" }),
        serde_json::json!({ "kind": "name", "name": huge }),
        serde_json::json!({ "kind": "exe", "path": "usr/bin/rsync" }),
        serde_json::json!({ "kind": "cgroup", "path": "/a/../b" }),
        serde_json::json!({ "kind": "cgroup", "path": "/" }),
        serde_json::json!({ "kind": "unit", "unit": "x\nFAKE-LOG-LINE.service" }),
    ];
    if let Some(k) = kthreadd {
        bad.push(serde_json::json!({ "kind": "pid", "ident": k, "tree": true }));
    }
    let mut throttles: Vec<_> = bad.iter().enumerate().map(|(i, t)| throttle_json(i as u32 + 1, t.clone())).collect();
    let good = serde_json::json!({ "kind": "name", "name": "ct-sn-valid" });
    throttles.push(throttle_json(100, good.clone()));
    throttles.push(throttle_json(100, serde_json::json!({ "kind": "name", "name": "ct-sn-twice" })));
    throttles.push(throttle_json(u32::MAX, serde_json::json!({ "kind": "name", "name": "ct-sn-max" })));
    let snapshot = serde_json::json!({ "version": 1, "seq": 0, "next_id": 200,
        "defaults": { "up": huge, "down": null }, "throttles": throttles });
    // The journal is input too.
    let journal = serde_json::json!({ "seq": 1, "next_id": 200,
        "put": throttle_json(150, serde_json::json!({ "kind": "name", "name": "evil/\u{1b}[2J" })) });
    let Some(api) = Api::start_with_state("sn-saved", false, |state| {
        std::fs::write(state.join("throttles.json"), snapshot.to_string()).unwrap();
        std::fs::write(state.join("throttles.journal.1"), format!("{journal}\n")).unwrap();
    }) else {
        return;
    };
    assert_eq!(api.throttles(), "([objectpath '/org/chadthrottle/throttles/100'],)", "only the valid entry applies");
    let log = api.log_text();
    assert!(log.contains("set aside"), "{log}");
    assert!(!log.lines().any(|l| l.starts_with("FAKE-LOG-LINE")), "a saved name forged a log line");
    assert!(!log.contains('\u{1b}'), "a raw escape sequence reached the log");
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 2000, "a log line of {longest} bytes quotes saved input whole");
    let rejected = std::fs::read_to_string(api.state().join("throttles.rejected.json")).unwrap();
    assert_eq!(rejected.lines().count(), bad.len() + 3, "{rejected:.2000}");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(api.state().join("throttles.json")).unwrap()).unwrap();
    let ids: Vec<u64> = saved["throttles"].as_array().unwrap().iter().map(|t| t["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, [100], "invalid entries stay in the saved state");
    assert_eq!(saved["defaults"]["up"], serde_json::Value::Null, "an unknown default backend was kept");
}

/// Item 11: throttles over the slot limit stay saved, are reported as
/// failed (property and `throttlectl list`), and are applied once slots
/// free up; nothing is logged as removed.
#[test]
fn throttles_over_the_slot_limit_stay_saved_and_are_retried() {
    let Some(_g) = begin() else { return };
    // Two slots each: 2,047 fit in the 4,095 slots, the last 3 do not.
    let n = 2050u32;
    let throttles: Vec<_> = (1..=n)
        .map(|i| {
            let mut t = throttle_json(i, serde_json::json!({ "kind": "name", "name": format!("ct-sn-slot-{i}") }));
            t["up"] = 65536.into();
            t
        })
        .collect();
    let snapshot =
        serde_json::json!({ "version": 1, "seq": 0, "next_id": n + 1, "defaults": {}, "throttles": throttles });
    let Some(mut api) = Api::start_with_state("sn-slots", false, |state| {
        std::fs::write(state.join("throttles.json"), snapshot.to_string()).unwrap();
    }) else {
        return;
    };
    let failed = format!("/org/chadthrottle/throttles/{}", n - 2);
    let check = |api: &Api| {
        assert_eq!(api.prop(&failed, "Status"), "s \"failed\"");
        assert!(api.prop(&failed, "StatusDetail").contains("slots"), "{}", api.prop(&failed, "StatusDetail"));
        assert_eq!(api.prop("/org/chadthrottle/throttles/1", "Status"), "s \"active\"");
        let saved: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(api.state().join("throttles.json")).unwrap()).unwrap();
        assert_eq!(saved["throttles"].as_array().unwrap().len(), n as usize, "failed throttles were dropped");
    };
    check(&api);
    let throttlectl = Path::new(daemon_bin()).with_file_name("throttlectl");
    if throttlectl.exists() {
        let out = Command::new(&throttlectl).args(["--bus", api.bus.address(), "list"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let failed_rows = text.lines().filter(|l| l.contains("FAILED")).count();
        assert_eq!(failed_rows, 3, "{}", text.lines().rev().take(5).collect::<Vec<_>>().join("\n"));
    }
    api.restart();
    check(&api);
    // (A stop removes the applied throttles from the kernel, and says so.)
    let removed = |l: &&str| l.contains("removed") && (n - 2..=n).any(|id| l.contains(&format!("throttle_id={id} ")));
    let log = api.log_text();
    assert!(!log.lines().any(|l| removed(&l)), "a failed throttle was reported as removed");
    // Freeing slots applies the oldest failed throttle.
    api.manager("Remove", &["/org/chadthrottle/throttles/1"]).unwrap();
    assert!(wait_until(Duration::from_secs(5), || api.prop(&failed, "Status") == "s \"active\""));
    assert_eq!(api.prop(&failed, "DownBackend"), "s \"ebpf\"");
    assert_eq!(api.prop(&format!("/org/chadthrottle/throttles/{n}"), "Status"), "s \"failed\"");
    let stats = api.manager("GetStats", &[]).unwrap();
    assert!(stats.contains("not applied"), "{stats}");
}

/// Item 12: oversized strings are refused before any work with a short
/// message, also to unprivileged callers, and the daemon does not keep
/// the memory.
#[test]
fn oversized_arguments_are_refused_early_and_never_echoed() {
    let Some(_g) = begin() else { return };
    let Some(api) = Api::start("sn-big", false) else { return };
    let before = api.saved();
    let user = test_user("ct-sn-user");
    // Unprivileged, with busctl: the longest argument argv allows.
    let long = "9".repeat(100_000);
    for (method, sig, args) in [
        ("Limit", "ssa{sv}", vec!["name", "ct-sn-x", "1", "down", "s", long.as_str()]),
        ("Limit", "ssa{sv}", vec!["pid", long.as_str(), "1", "down", "s", "1M"]),
        ("Limit", "ssa{sv}", vec![long.as_str(), "x", "1", "down", "s", "1M"]),
        ("SetDefaultBackend", "ss", vec!["up", long.as_str()]),
    ] {
        let all: Vec<String> = [format!("--address={}", api.bus.address()), "call".into(), DEST.into()]
            .into_iter()
            .chain(["/org/chadthrottle", MGR, method, sig].map(String::from))
            .chain(args.iter().map(|a| a.to_string()))
            .collect();
        let out = user_cmd(user, "busctl").args(&all).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("too long"), "{method}: {:.300}", err);
        assert!(err.len() < 300, "{method}: a {} byte error echoes the argument", err.len());
    }
    // As root, 30 MB arguments over zbus, ten times.
    let rss0 = throttle_testkit::rss_kib(api.daemon_pid());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let conn = zbus::connection::Builder::address(api.bus.address()).unwrap().build().await.unwrap();
        let huge = "Q".repeat(30 << 20);
        for i in 0..10 {
            let opts: std::collections::HashMap<&str, zbus::zvariant::Value<'_>> =
                [("down", zbus::zvariant::Value::from(huge.as_str()))].into();
            let args = match i % 3 {
                0 => ("name", huge.as_str(), std::collections::HashMap::new()),
                1 => ("name", "ct-sn-x", opts),
                _ => (huge.as_str(), "x", std::collections::HashMap::new()),
            };
            let r = conn.call_method(Some(DEST), "/org/chadthrottle", Some(MGR), "Limit", &args).await;
            match r {
                Err(zbus::Error::MethodError(name, msg, _)) => {
                    assert_eq!(name.as_str(), INVALID);
                    let msg = msg.unwrap_or_default();
                    assert!(msg.len() < 200 && msg.contains("too long"), "{:.300}", msg);
                }
                other => panic!("a 30 MB argument got {:.300}", format!("{other:?}")),
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let rss1 = throttle_testkit::rss_kib(api.daemon_pid());
    eprintln!("daemon RSS {} MiB before ten 30 MB calls, {} MiB after", rss0 >> 10, rss1 >> 10);
    // Before: 25 MiB grew to 85 MiB and stayed (malloc kept the buffers).
    assert!(rss1 < rss0 + (16 << 10), "the daemon kept {} MiB", rss1.saturating_sub(rss0) >> 10);
    assert_eq!(api.throttles(), "(@ao [],)");
    assert_eq!(api.saved(), before);
}

/// The smaller items: nothing ignored, nothing repeated, nothing loose,
/// nothing raw in the log; every refusal leaves no journal line.
#[test]
fn strict_options_and_escaped_logs() {
    let Some(_g) = begin() else { return };
    let Some(api) = Api::start("sn-strict", false) else { return };
    let s = Kid::spawn("sleep", &["60"]);
    let path = object_path(&api.limit("name", "ct-sn-m", "{'down': <'1M'>}").unwrap());
    let before = api.saved();
    let props = |api: &Api| ["DownLimit", "UpLimit", "DownBackend", "UpBackend"].map(|p| api.prop(&path, p));
    let was = props(&api);
    let refused = |r: Result<String, String>, what: &str| {
        let e = r.expect_err(what);
        assert!(e.contains(INVALID), "{what}: {e}");
    };
    refused(api.manager("Migrate", &[&path, "up", "ebpf"]), "migrate a direction without a limit");
    refused(api.manager("MigrateBackend", &["ebpf", "ebpf"]), "migrate a backend to itself");
    let set = |o: &str| api.gdbus(&path, &format!("{THR}.SetLimits"), &[o]);
    refused(set("@a{sv} {}"), "SetLimits {}");
    refused(set("{'backend': <'tc_htb'>}"), "SetLimits with only a backend");
    refused(set("{'up': <'1M'>, 'down_backend': <'ifb_tc'>}"), "SetLimits with an ignored backend");
    refused(api.limit("name", "ct-sn-m", "{'down': <'1M'>, 'backend': <'ebpf'>, 'down_backend': <'ebpf'>}"), "both");
    refused(api.limit("name", "ct-sn-m", "{'down': <' 1M '>}"), "blank rate");
    let me = s.pid().to_string();
    refused(api.limit("pid", &format!("+{me}"), "{'down': <'1M'>}"), "+pid");
    refused(api.limit("pid", &format!("0{me}"), "{'down': <'1M'>}"), "0pid");
    let dup = api.busctl_manager("Limit", "ssa{sv}", &["name", "ct-sn-m", "2", "down", "s", "2M", "down", "s", "3M"]);
    assert!(dup.as_ref().is_err_and(|e| e.contains("given twice")), "{dup:?}");
    assert_eq!(props(&api), was, "a refused call changed the throttle");
    assert_eq!(api.saved(), before, "a refused call was saved");
    assert!(api.throttles().contains(&path) && !api.throttles().contains("throttles/2"));
    // Names may hold control characters; the log never does.
    let evil = "ct-sn\nFAKE-LOG-LINE \u{1b}[2J";
    api.limit("name", evil, "{'down': <'1M'>}").unwrap();
    let log = api.log_text();
    assert!(log.contains("ct-sn\\nFAKE-LOG-LINE"), "the name is not logged escaped");
    assert!(!log.lines().any(|l| l.starts_with("FAKE-LOG-LINE")), "a name forged a log line");
    assert!(!log.contains('\u{1b}'), "a raw escape sequence reached the log");
}
