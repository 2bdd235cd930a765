//! Authorization under attack (issue 15), against the real daemon, a real
//! dbus-daemon and a real polkitd, with busctl and gdbus as independent
//! clients run as unprivileged test users, and dbus-monitor (as root) to
//! see what actually crossed the bus (senders, error names):
//! - a unique name recycled by a restarted bus inherits nothing;
//! - one user flooding polkit checks cannot make polkit fail for others;
//! - a throttle's traffic is its processes' owner's (or observe-all's);
//! - read-only properties and wrong signatures get the standard errors.
mod common;

use std::{
    io::Read,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use common::*;
use throttle_testkit::bus::{test_user, Polkit, PrivateBus};

const MGR: &str = "org.chadthrottle.Manager";
const THROTTLE: &str = "org.chadthrottle.Throttle";
const ROOT: (u32, u32) = (0, 0);

/// The daemon on a private bus, with a real polkitd and these rules.
/// Fields drop in order: the daemon, polkitd, then the bus.
struct Api {
    daemon: Daemon,
    polkit: Option<Polkit>,
    bus: PrivateBus,
    _dir: ScratchDir,
}

impl Api {
    fn start(tag: &str, rules: &str) -> Option<Api> {
        for tool in ["gdbus", "busctl", "dbus-monitor", "setpriv"] {
            if which(tool).is_none() {
                throttle_testkit::missing(&format!("{tool} is needed (run scripts/bootstrap.sh)"));
                return None;
            }
        }
        let bus = PrivateBus::start(tag)?;
        let polkit = Some(Polkit::start(&bus, rules)?);
        let dir = ScratchDir::new(&format!("api-{tag}"));
        let daemon = bus.daemon(daemon_bin(), &dir, "ct-none0", &[]);
        Some(Api { daemon, polkit, bus, _dir: dir })
    }

    /// `gdbus call` as `uid`: Ok(reply) or Err(error text, with its D-Bus
    /// error name).
    fn gdbus(&self, uid: (u32, u32), path: &str, method: &str, args: &[&str]) -> Result<String, String> {
        let call = ["call", "--address", self.bus.address(), "--dest", "org.chadthrottle", "--object-path", path];
        let all: Vec<&str> = call.into_iter().chain(["--method", method]).chain(args.iter().copied()).collect();
        run_as(uid, "gdbus", &all)
    }

    /// `busctl` on this bus as `uid`: Ok(stdout) or Err(stderr).
    fn busctl(&self, uid: (u32, u32), args: &[&str]) -> Result<String, String> {
        let addr = format!("--address={}", self.bus.address());
        let all: Vec<&str> = [addr.as_str()].into_iter().chain(args.iter().copied()).collect();
        run_as(uid, "busctl", &all)
    }

    fn manager(&self, uid: (u32, u32), method: &str, args: &[&str]) -> Result<String, String> {
        self.gdbus(uid, "/org/chadthrottle", &format!("{MGR}.{method}"), args)
    }

    /// A throttle made by root; its object path.
    fn limit(&self, kind: &str, target: &str) -> String {
        let reply = self.manager(ROOT, "Limit", &[kind, target, "{'down': <'1M'>, 'backend': <'ebpf'>}"]).unwrap();
        reply.split('\'').nth(1).unwrap_or_default().to_string()
    }
}

/// `prog args` as `uid` (setpriv, no supplementary groups).
fn run_as(uid: (u32, u32), prog: &str, args: &[&str]) -> Result<String, String> {
    output(user_cmd(uid, prog).args(args))
}

/// A process of `uid` that lives until dropped.
type Sleeper = Reaped;

impl Reaped {
    fn of(uid: (u32, u32)) -> Sleeper {
        Reaped(user_cmd(uid, "sleep").arg("120").spawn().unwrap())
    }
    fn pid(&self) -> String {
        self.0.id().to_string()
    }
}

/// dbus-monitor on the bus (as root, as the bus policy allows), for what
/// the clients cannot tell: their own unique names, and error names.
struct Monitor(Option<Child>);

impl Monitor {
    fn start(bus: &PrivateBus, rule: &str) -> Monitor {
        let child = Command::new("dbus-monitor")
            .args(["--address", bus.address(), rule])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(400)); // until it is a monitor
        Monitor(Some(child))
    }

    /// Stops it; everything it printed.
    fn finish(mut self) -> String {
        std::thread::sleep(Duration::from_millis(300));
        let mut c = self.0.take().unwrap();
        // SAFETY: kill(2) on our own child; SIGINT lets it flush its output.
        unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
        let mut out = String::new();
        let _ = c.stdout.take().unwrap().read_to_string(&mut out);
        let _ = c.wait();
        out
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The value of `key=` in a dbus-monitor line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key)).map(|v| v.trim_end_matches(';'))
}

// ---------------------------------------------------------------------------
// 1. A recycled unique name inherits nothing.

const NO_RULES: &str = "polkit.addRule(function(action, subject) { return polkit.Result.NOT_HANDLED; });";

/// Connects (as root) and disconnects until the bus has handed out
/// `:1.(next - 1)`, so that the next connection gets `:1.next`.
fn spend_names_until(bus: &PrivateBus, next: u32) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let number = || async {
        let c = zbus::connection::Builder::address(bus.address()).unwrap().build().await.unwrap();
        let name = c.unique_name().map(|n| n.to_string()).unwrap_or_default();
        name.strip_prefix(":1.").and_then(|n| n.parse::<u32>().ok()).expect("a unique name :1.N")
    };
    let mut n = rt.block_on(number());
    while n + 1 < next {
        n = rt.block_on(number());
    }
    assert_eq!(n + 1, next, "more connections than expected before the client");
}

/// The first unique name a client gets on each bus in the test.
const RECYCLED: u32 = 500;

/// Restarts the bus, lets the daemon reconnect first, starts polkitd and a
/// monitor, then spends unique names until the next one is `:1.RECYCLED`,
/// and calls Reload as `uid` from it. Returns (the daemon's unique name,
/// the caller's as the bus saw it, the reply).
fn reload_from_recycled_name(api: &mut Api, uid: (u32, u32)) -> (String, String, Result<String, String>) {
    api.polkit = None; // polkitd does not survive its bus
    api.bus.restart();
    // The daemon notices at once and reconnects after 250 ms: before any
    // client of this test, so it gets the same name on every new bus.
    std::thread::sleep(Duration::from_secs(2));
    let status = api.busctl(ROOT, &["status", "org.chadthrottle"]).expect("the daemon is not back on the bus");
    let daemon = status.lines().find_map(|l| l.strip_prefix("UniqueName=")).unwrap_or_default().to_string();
    api.polkit = Polkit::start(&api.bus, NO_RULES);
    let monitor = Monitor::start(&api.bus, "type='method_call',interface='org.chadthrottle.Manager'");
    spend_names_until(&api.bus, RECYCLED);
    let reply = api.manager(uid, "Reload", &[]);
    let seen = monitor.finish();
    let sender = seen.lines().filter(|l| l.contains("member=Reload")).find_map(|l| field(l, "sender=")).unwrap_or("");
    (daemon, sender.to_string(), reply)
}

/// A new bus hands out `:1.N` again, and the daemon's own name too: a
/// user who gets the name root had on the previous bus must not be taken
/// for root (the daemon used to cache uids by unique names and kept them
/// across reconnections).
#[test]
fn a_recycled_unique_name_inherits_nothing() {
    let Some(_g) = begin() else { return };
    let user = test_user("ct-sa-user");
    let Some(mut api) = Api::start("sa-recycle", NO_RULES) else { return };
    let (daemon_a, root_name, root_reply) = reload_from_recycled_name(&mut api, ROOT);
    assert!(root_reply.is_ok(), "root's Reload: {root_reply:?}");
    let (daemon_b, user_name, user_reply) = reload_from_recycled_name(&mut api, user);
    eprintln!("daemon {daemon_a} then {daemon_b}; root {root_name}, then the user {user_name}: {user_reply:?}");
    assert_eq!(daemon_a, daemon_b, "the daemon's name changed between buses: the test cannot recycle");
    assert_eq!(root_name, format!(":1.{RECYCLED}"));
    assert_eq!(user_name, root_name, "the user did not get root's old name");
    let err = user_reply.expect_err("a user with root's recycled name was allowed to Reload");
    assert!(err.contains("org.chadthrottle.Error.NotAuthorized") && err.contains("configure"), "{err}");
    // The same name on the same bus: root's calls still work, the user's
    // own (new names) are still refused.
    assert!(api.manager(ROOT, "Reload", &[]).is_ok());
    let err = api.manager(user, "SetDefaultBackend", &["up", "ebpf"]).unwrap_err();
    assert!(err.contains("NotAuthorized"), "{err}");
    assert!(api.daemon.alive());
}

// ---------------------------------------------------------------------------
// 2. One user cannot make polkit fail for everyone.

const FLOOD_RULES: &str = r#"polkit.addRule(function(action, subject) {
  if (action.id == "org.chadthrottle.limit-own" && subject.user == "ct-sa-victim") return polkit.Result.YES;
});"#;

/// Outcomes of the flooder's calls: (ok, Busy, anything else).
#[derive(Default, Debug)]
struct Flood {
    ok: usize,
    busy: usize,
    other: Vec<String>,
    /// Connections the bus refused (its per-user connection limit).
    unconnected: usize,
}

/// Makes the calling thread, and only it, `uid`: the raw syscalls change
/// one thread's credentials (libc's wrappers would change the whole test
/// process's). The bus takes a connection's user from its socket, so
/// connections this thread opens are the user's.
fn become_user(uid: (u32, u32)) {
    // SAFETY: plain syscalls on this thread's own credentials.
    let rc = unsafe {
        [
            libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()),
            libc::syscall(libc::SYS_setresgid, uid.1, uid.1, uid.1),
            libc::syscall(libc::SYS_setresuid, uid.0, uid.0, uid.0),
        ]
    };
    assert_eq!(rc, [0, 0, 0], "could not become {uid:?}");
}

/// As `uid`, waves of `n` connections that each call GetStats at once
/// (new connections every wave, as an attacker would, so no answer
/// learned for one connection helps the next), until `stop`.
fn flood(addr: String, uid: (u32, u32), n: usize, stop: Arc<AtomicBool>, out: Arc<Mutex<Flood>>) {
    use futures_util::future::join_all;
    become_user(uid);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        while !stop.load(Ordering::Relaxed) {
            let connect = |_| async { zbus::connection::Builder::address(addr.as_str())?.build().await };
            let (conns, refused): (Vec<_>, Vec<_>) = join_all((0..n).map(connect)).await.into_iter().partition(Result::is_ok);
            out.lock().unwrap().unconnected += refused.len();
            let conns: Vec<zbus::Connection> = conns.into_iter().flatten().collect();
            let call = |c: &zbus::Connection| {
                let c = c.clone();
                async move { c.call_method(Some("org.chadthrottle"), "/org/chadthrottle", Some(MGR), "GetStats", &()).await }
            };
            let replies = join_all(conns.iter().map(call)).await;
            let mut f = out.lock().unwrap();
            for r in replies {
                match r {
                    Ok(_) => f.ok += 1,
                    Err(zbus::Error::MethodError(name, _, _)) if name.as_str() == "org.chadthrottle.Error.Busy" => f.busy += 1,
                    Err(e) => f.other.push(e.to_string()),
                }
            }
        }
    });
}

/// As `uid`, `n` Limit calls on `pid`, one after the other, each on a new
/// connection (so that each is a new question for polkit): how long each
/// took, connecting included, and how it ended.
fn limit_calls(addr: String, uid: (u32, u32), pid: u32, n: u32) -> Vec<(Instant, Duration, Result<(), String>)> {
    become_user(uid);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let one = |i: u32| {
        let addr = addr.clone();
        async move {
            let c = zbus::connection::Builder::address(addr.as_str())?.build().await?;
            let opts =
                std::collections::HashMap::from([("down", zbus::zvariant::Value::from(format!("{}K", 512 + i)))]);
            let body = ("pid", pid.to_string(), opts);
            c.call_method(Some("org.chadthrottle"), "/org/chadthrottle", Some(MGR), "Limit", &body).await.map(|_| ())
        }
    };
    let mut out = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        let r = rt.block_on(one(i)).map_err(|e: zbus::Error| e.to_string());
        out.push((t, t.elapsed(), r));
    }
    out
}

/// polkitd's own stalls: Debian's polkitd (122, duktape) now and then
/// sleeps out its 15 s runaway-script timeout after a rules evaluation that
/// already finished (a lost wake-up; reproduced with polkitd alone, about
/// once in 3,000 checks), and answers nobody meanwhile. A property read of
/// its Authority object is served by the same blocked main loop, so reading
/// one every 100 ms records each stall: (start, how long), for reads over 5 s.
fn watch_polkitd(addr: String, stop: Arc<AtomicBool>) -> Vec<(Instant, Duration)> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let c = zbus::connection::Builder::address(addr.as_str()).unwrap().build().await.unwrap();
        let (path, props) = ("/org/freedesktop/PolicyKit1/Authority", Some("org.freedesktop.DBus.Properties"));
        let mut stalls = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            let args = ("org.freedesktop.PolicyKit1.Authority", "BackendName");
            let _ = c.call_method(Some("org.freedesktop.PolicyKit1"), path, props, "Get", &args).await;
            if t.elapsed() > Duration::from_secs(5) {
                stalls.push((t, t.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stalls
    })
}

/// 200 connections of one user calling GetStats at once used to fill the
/// daemon's pending replies towards polkitd, so that polkit failed
/// ("LimitsExceeded") for everyone: another user's Limit on their own
/// process was NotAuthorized. Now each uid has a few checks in flight and
/// a short queue: the victim gets through quickly, the flooder gets its
/// answers or Busy, never NotAuthorized.
#[test]
fn one_user_cannot_make_polkit_fail_for_others() {
    let Some(_g) = begin() else { return };
    let (flooder, victim) = (test_user("ct-sa-flood"), test_user("ct-sa-victim"));
    let Some(api) = Api::start("sa-flood", FLOOD_RULES) else { return };
    let own = Sleeper::of(victim);
    let (stop, seen) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Flood::default())));
    let flooding = {
        let (addr, stop, seen) = (api.bus.address().to_string(), stop.clone(), seen.clone());
        std::thread::spawn(move || flood(addr, flooder, 200, stop, seen))
    };
    let watching = {
        let (addr, stop) = (api.bus.address().to_string(), stop.clone());
        std::thread::spawn(move || watch_polkitd(addr, stop))
    };
    std::thread::sleep(Duration::from_millis(500)); // the first wave is in
    let (addr, pid) = (api.bus.address().to_string(), own.pid().parse::<u32>().unwrap());
    let timed = std::thread::spawn(move || limit_calls(addr, victim, pid, 20)).join().unwrap();
    // And busctl, as the victim, from outside the test process.
    let pid = own.pid();
    let call = ["call", "org.chadthrottle", "/org/chadthrottle", MGR, "Limit", "ssa{sv}", "pid", pid.as_str()];
    let busctl: Vec<_> = (0..5)
        .filter_map(|_| api.busctl(victim, &call.into_iter().chain(["1", "down", "s", "3M"]).collect::<Vec<_>>()).err())
        .collect();
    stop.store(true, Ordering::Relaxed);
    flooding.join().unwrap();
    let stalls = watching.join().unwrap();
    let f = seen.lock().unwrap();
    // A call that overlapped a stall of polkitd itself waited for polkitd,
    // not for us: reported, and left out of the latency bound.
    let in_stall = |start: Instant, took: Duration| {
        stalls.iter().any(|&(s, d)| s < start + took && start < s + d && took > Duration::from_secs(1))
    };
    let (stalled, timed): (Vec<_>, Vec<_>) = timed.into_iter().partition(|(start, took, _)| in_stall(*start, *took));
    if !stalled.is_empty() {
        eprintln!("polkitd itself stalled {stalls:?}: {} victim call(s) waited for it, left out", stalled.len());
    }
    assert!(timed.len() >= 15, "too many calls fell into polkitd's stalls to judge: {}", timed.len());
    let failed: Vec<&String> = stalled.iter().chain(&timed).filter_map(|(_, _, r)| r.as_ref().err()).collect();
    let mut took: Vec<Duration> = timed.iter().map(|(_, t, _)| *t).collect();
    took.sort();
    let p99 = took[(took.len() * 99).div_ceil(100) - 1];
    eprintln!(
        "victim: {} of 20 failed, p50 {:?}, p99 {:?}; busctl: {} of 5 failed; flooder: {} ok, {} busy, {} other, {} connections refused",
        failed.len(),
        took[took.len() / 2],
        p99,
        busctl.len(),
        f.ok,
        f.busy,
        f.other.len(),
        f.unconnected
    );
    assert!(failed.is_empty() && busctl.is_empty(), "the victim's Limit calls failed: {failed:?} {busctl:?}");
    assert!(p99 < Duration::from_secs(1), "the victim's p99 was {p99:?}");
    assert!(f.ok + f.busy + f.other.len() >= 200, "the flood did not happen: {f:?}");
    let not_busy: Vec<_> = f.other.iter().take(3).collect();
    assert!(f.other.is_empty(), "the flooder got other errors than Busy ({}): {not_busy:?}", f.other.len());
    assert!(api.manager(ROOT, "ListThrottles", &[]).unwrap().contains("/org/chadthrottle/throttles/1"));
}

// ---------------------------------------------------------------------------
// 5. A throttle's traffic is its processes' owner's.

const TRAFFIC_RULES: &str = r#"polkit.addRule(function(action, subject) {
  if (action.id == "org.chadthrottle.observe-all" && subject.user == "ct-sa-watch") return polkit.Result.YES;
});"#;

/// Without org.chadthrottle.observe-all a user sees the traffic (history,
/// rates, accuracy, counters) only of pid or tree throttles on their own
/// processes; name throttles and other users' need observe-all. The
/// limits themselves stay visible to all.
#[test]
fn a_throttles_traffic_is_its_owners() {
    let Some(_g) = begin() else { return };
    let (owner, other, watcher) = (test_user("ct-sa-owner"), test_user("ct-sa-other"), test_user("ct-sa-watch"));
    let Some(api) = Api::start("sa-traffic", TRAFFIC_RULES) else { return };
    let (owners, roots) = (Sleeper::of(owner), Sleeper::of(ROOT));
    let theirs = api.limit("pid", &owners.pid());
    let root_one = api.limit("pid", &roots.pid());
    let by_name = api.limit("name", "ct-sa-nothing");
    let id = |p: &str| p.rsplit('/').next().unwrap().to_string();
    let history = |uid, path: &str| api.manager(uid, "GetHistory", &["throttle", &id(path)]);
    let prop =
        |uid, path: &str, name: &str| api.gdbus(uid, path, "org.freedesktop.DBus.Properties.Get", &[THROTTLE, name]);
    let all = |uid, path: &str| api.gdbus(uid, path, "org.freedesktop.DBus.Properties.GetAll", &[THROTTLE]).unwrap();
    // Another user, without observe-all: nothing of root's or the owner's.
    for path in [&root_one, &theirs, &by_name] {
        let err = history(other, path).unwrap_err();
        assert!(err.contains("NotAuthorized") && err.contains("observe-all"), "{path}: {err}");
        for name in ["DownRate", "UpRate", "Counters", "DownAccuracy", "UpAccuracy"] {
            let err = prop(other, path, name).unwrap_err();
            assert!(err.contains("org.freedesktop.DBus.Error.AccessDenied"), "{path} {name}: {err}");
        }
        let got = all(other, path);
        assert!(got.contains("'DownLimit': <uint64 1048576>"), "the limits stay visible: {got}");
        assert!(!got.contains("DownRate") && !got.contains("Counters"), "GetAll showed the traffic: {got}");
    }
    // The owner: their own pid throttle only.
    assert!(history(owner, &theirs).is_ok());
    for name in ["DownRate", "UpRate", "Counters", "DownAccuracy"] {
        assert!(prop(owner, &theirs, name).is_ok(), "the owner's own {name}");
    }
    assert!(all(owner, &theirs).contains("'Counters'"));
    assert!(history(owner, &root_one).unwrap_err().contains("NotAuthorized"));
    assert!(history(owner, &by_name).unwrap_err().contains("NotAuthorized"), "a name throttle needs observe-all");
    // observe-all by rule, and root: everything.
    for uid in [watcher, ROOT] {
        for path in [&root_one, &theirs, &by_name] {
            assert!(history(uid, path).is_ok(), "{uid:?} {path}");
            assert!(prop(uid, path, "Counters").is_ok(), "{uid:?} {path}");
        }
    }
    // Broadcasts have no caller to ask about: they carry no traffic.
    let managed =
        api.gdbus(ROOT, "/org/chadthrottle", "org.freedesktop.DBus.ObjectManager.GetManagedObjects", &[]).unwrap();
    assert!(managed.contains("DownLimit") && !managed.contains("DownRate"), "{managed}");
}

// ---------------------------------------------------------------------------
// Standard errors for read-only properties and wrong signatures.

/// busctl as the client; dbus-monitor reads the error names off the bus
/// (busctl prints only the message).
#[test]
fn read_only_properties_and_wrong_signatures_get_standard_errors() {
    let Some(_g) = begin() else { return };
    let Some(api) = Api::start("sa-strict", NO_RULES) else { return };
    let roots = Sleeper::of(ROOT);
    let path = api.limit("pid", &roots.pid());
    let status = api.busctl(ROOT, &["status", "org.chadthrottle"]).unwrap();
    let daemon = status.lines().find_map(|l| l.strip_prefix("UniqueName=")).unwrap().to_string();
    let monitor = Monitor::start(&api.bus, &format!("type='error',sender='{daemon}'"));
    let set = |obj: &str, iface: &str, name: &str, sig: &str, v: &str| {
        api.busctl(ROOT, &["set-property", "org.chadthrottle", obj, iface, name, sig, v])
    };
    let e1 = set("/org/chadthrottle", MGR, "Version", "s", "9.9").unwrap_err();
    let e2 = set(&path, THROTTLE, "DownLimit", "t", "1").unwrap_err();
    let e3 = set(&path, THROTTLE, "NoSuchThing", "t", "1").unwrap_err();
    let call = |args: &[&str]| {
        let all: Vec<&str> =
            ["call", "org.chadthrottle", "/org/chadthrottle", MGR].iter().chain(args).copied().collect();
        api.busctl(ROOT, &all)
    };
    let pid = roots.pid();
    let e4 = call(&["Limit", "sss", "pid", pid.as_str(), "1M"]).unwrap_err();
    let e5 = call(&["Limit", "s", "pid"]).unwrap_err();
    let e6 = call(&["Reload", "s", "now"]).unwrap_err();
    let e7 = api.busctl(ROOT, &["call", "org.chadthrottle", &path, THROTTLE, "Remove", "u", "1"]).unwrap_err();
    let seen = monitor.finish();
    let names: Vec<&str> = seen.lines().filter_map(|l| field(l, "error_name=")).collect();
    eprintln!("busctl said: {e1} | {e2} | {e3} | {e4} | {e5} | {e6} | {e7}\nerror names: {names:?}");
    let ro = "org.freedesktop.DBus.Error.PropertyReadOnly";
    let bad = "org.freedesktop.DBus.Error.InvalidArgs";
    assert_eq!(names, [ro, ro, "org.freedesktop.DBus.Error.UnknownProperty", bad, bad, bad, bad], "{seen}");
    assert!(e1.contains("read-only") && e4.contains("ssa{sv}"), "{e1} / {e4}");
    // Nothing changed, and the daemon is fine.
    assert_eq!(api.manager(ROOT, "ListThrottles", &[]).unwrap().matches("/throttles/").count(), 1);
    let limit = api.busctl(ROOT, &["get-property", "org.chadthrottle", &path, THROTTLE, "DownLimit"]).unwrap();
    assert_eq!(limit, "t 1048576");
}
