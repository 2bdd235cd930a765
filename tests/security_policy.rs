//! Who may change what, against the real daemon, a real dbus-daemon and a
//! real polkitd deciding by JS rules: limit-own only ever slows one's own
//! processes down (an admin's limit cannot be lifted with it, and it cannot
//! pick a backend that rebuilds a root qdisc), and every user but root has
//! a share of the throttle slots. Callers are gdbus run as test users.
mod common;

use common::*;
use throttle_testkit::bus::{test_user, Polkit, PrivateBus};

const MGR: &str = "org.chadthrottle.Manager";
const THR: &str = "org.chadthrottle.Throttle";
const USER: &str = "ct-test-allow";
const ADMIN: &str = "ct-sp-admin";

/// USER has limit-own only; ADMIN has limit-any too.
const RULES: &str = r#"polkit.addRule(function(action, subject) {
  if (action.id == "org.chadthrottle.limit-own" && (subject.user == "ct-test-allow" || subject.user == "ct-sp-admin"))
    return polkit.Result.YES;
  if (action.id == "org.chadthrottle.limit-any" && subject.user == "ct-sp-admin") return polkit.Result.YES;
  if (action.id == "org.chadthrottle.limit-any" && subject.user == "ct-test-allow") return polkit.Result.NO;
});"#;

type Uid = (u32, u32);

/// A private bus with polkitd and the daemon on it; `limits` is the
/// config's `[limits]` table, if any. Interface backends get an interface
/// that does not exist, so no host interface is ever shaped.
struct Api {
    daemon: Option<Daemon>,
    conf: std::path::PathBuf,
    _polkit: Polkit,
    bus: PrivateBus,
    dir: ScratchDir,
}

impl Api {
    fn start(tag: &str, limits: &str) -> Option<Api> {
        if which("gdbus").is_none() {
            throttle_testkit::missing("gdbus is needed (run scripts/bootstrap.sh)");
            return None;
        }
        let bus = PrivateBus::start(tag)?;
        let polkit = Polkit::start(&bus, RULES)?;
        let dir = ScratchDir::new(&format!("api-{tag}"));
        let conf = dir.path.join("chadthrottled.toml");
        let state = dir.path.join("state");
        std::fs::write(&conf, format!("state_dir = {state:?}\ninterfaces = [\"ct-none0\"]\n{limits}")).unwrap();
        let mut api = Api { daemon: None, conf, _polkit: polkit, bus, dir };
        api.restart();
        Some(api)
    }

    /// Stops the daemon (its throttles are saved) and starts it again.
    fn restart(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.stop();
        }
        let env = [("DBUS_SYSTEM_BUS_ADDRESS", self.bus.address())];
        let args = ["--config", self.conf.to_str().unwrap()];
        self.daemon = Some(Daemon::start(daemon_bin(), &args, &env));
    }

    /// `gdbus call` as `uid` (setpriv, no supplementary groups): Ok(stdout)
    /// or Err(the error, with its name).
    fn call(&self, uid: Uid, path: &str, method: &str, args: &[&str]) -> Result<String, String> {
        output(
            user_cmd(uid, "gdbus")
                .args(["call", "--address", self.bus.address(), "--dest", "org.chadthrottle", "--object-path", path])
                .args(["--method", method])
                .args(args),
        )
    }

    /// Manager.Limit on a pid with a{sv} `opts` (GVariant text).
    fn limit(&self, uid: Uid, pid: u32, opts: &str) -> Result<String, String> {
        self.call(uid, "/org/chadthrottle", &format!("{MGR}.Limit"), &["pid", &pid.to_string(), opts])
    }

    fn set_limits(&self, uid: Uid, path: &str, opts: &str) -> Result<String, String> {
        self.call(uid, path, &format!("{THR}.SetLimits"), &[opts])
    }

    fn remove(&self, uid: Uid, path: &str) -> Result<String, String> {
        self.call(uid, "/org/chadthrottle", &format!("{MGR}.Remove"), &[path])
    }

    fn remove_object(&self, uid: Uid, path: &str) -> Result<String, String> {
        self.call(uid, path, &format!("{THR}.Remove"), &[])
    }

    /// A throttle's property, as busctl (root) reads it: "t 102400".
    fn prop(&self, path: &str, name: &str) -> String {
        self.bus.busctl(&["get-property", "org.chadthrottle", path, THR, name]).unwrap().trim().to_string()
    }

    fn throttles(&self) -> usize {
        let list = self.call(ROOT, "/org/chadthrottle", &format!("{MGR}.ListThrottles"), &[]).unwrap();
        list.matches("/org/chadthrottle/throttles/").count()
    }

    /// One number from GetStats.
    fn stat(&self, key: &str) -> u64 {
        let out = self.bus.busctl(&["--json=short", "call", "org.chadthrottle", "/org/chadthrottle", MGR, "GetStats"]);
        let v: serde_json::Value = serde_json::from_str(&out.unwrap()).unwrap();
        v["data"][0][key]["data"].as_u64().unwrap_or_else(|| panic!("GetStats has no {key}: {v}"))
    }
}

const ROOT: Uid = (0, 0);

/// The object path in gdbus's `(objectpath '/x',)`.
fn object_path(reply: &str) -> String {
    reply.split('\'').nth(1).unwrap_or_default().to_string()
}

/// `sleep` running as `uid`, killed on drop.
type Sleeper = Reaped;

impl Reaped {
    fn new(uid: Uid) -> Sleeper {
        Self::run(uid, "sleep")
    }

    /// `prog` (a sleep) as `uid`.
    fn run(uid: Uid, prog: &str) -> Sleeper {
        let name = format!("Name:\t{}", prog.rsplit('/').next().unwrap_or(prog));
        let s = Reaped(user_cmd(uid, prog).arg("300").spawn().unwrap());
        // Limit it only once it runs as the user (setpriv switches, then execs).
        let status = format!("/proc/{}/status", s.pid());
        let is_user = || {
            let text = std::fs::read_to_string(&status).unwrap_or_default();
            let real = text.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().next());
            text.contains(&name) && real == Some(uid.0.to_string().as_str())
        };
        assert!(wait_until(std::time::Duration::from_secs(5), is_user), "sleep did not start as {}", uid.0);
        s
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

#[track_caller]
fn denied(r: Result<String, String>, why: &str) {
    let e = r.expect_err("limit-own must not be enough");
    assert!(e.contains("org.chadthrottle.Error.NotAuthorized") && e.contains("limit-any"), "{e}");
    assert!(e.contains(why), "{e} should say {why:?}");
}

/// Root limits a user's process to 100K. With limit-own the user may lower
/// it, or add a direction, but not raise it, remove it, move it to another
/// backend, nor pick a root-qdisc backend; after a restart it is still
/// admin-set. A throttle the user made is theirs to raise and remove, and
/// one made by a limit-any caller is admin-set.
#[test]
fn limit_own_cannot_lift_an_admins_limit() {
    let Some(_g) = begin() else { return };
    let (user, admin) = (test_user(USER), test_user(ADMIN));
    let Some(mut api) = Api::start("sp-admin-set", "") else { return };
    let proc = Sleeper::new(user);
    let path = object_path(&api.limit(ROOT, proc.pid(), "{'down': <uint64 102400>}").unwrap());
    let down = |api: &Api| api.prop(&path, "DownLimit");
    for opts in ["{'down': <'1024G'>}", "{'down': <uint64 102401>}"] {
        denied(api.limit(user, proc.pid(), opts), "raising its download limit");
        denied(api.set_limits(user, &path, opts), "raising its download limit");
    }
    denied(api.remove(user, &path), "set by an administrator");
    denied(api.remove_object(user, &path), "set by an administrator");
    assert_eq!(down(&api), "t 102400", "a denied call changed the limit");
    api.limit(user, proc.pid(), "{'down': <'50K'>, 'up': <'1M'>}").expect("lowering and adding a direction");
    assert_eq!((down(&api).as_str(), api.prop(&path, "UpLimit").as_str()), ("t 51200", "t 1048576"));
    denied(api.limit(user, proc.pid(), "{'down': <'100K'>}"), "raising its download limit");
    for opts in ["{'down': <'40K'>, 'backend': <'ifb_tc'>}", "{'up': <'1M'>, 'up_backend': <'tc_htb'>}"] {
        denied(api.limit(user, proc.pid(), opts), "root qdisc");
    }
    // Persisted: still admin-set after a restart.
    api.restart();
    assert_eq!(down(&api), "t 51200", "restored");
    denied(api.limit(user, proc.pid(), "{'down': <'1M'>}"), "raising its download limit");
    denied(api.remove(user, &path), "set by an administrator");
    // limit-any may; and what it sets is admin-set too.
    let theirs = Sleeper::new(user);
    api.limit(admin, proc.pid(), "{'down': <'1M'>}").expect("limit-any raises");
    assert_eq!(down(&api), "t 1048576");
    let by_admin = object_path(&api.limit(admin, theirs.pid(), "{'down': <'1M'>}").unwrap());
    denied(api.set_limits(user, &by_admin, "{'down': <'2M'>}"), "set by an administrator");
    // The user's own throttle is theirs: raise, move to ebpf, remove.
    let mine = Sleeper::new(user);
    let own = object_path(&api.limit(user, mine.pid(), "{'down': <'100K'>}").unwrap());
    api.limit(user, mine.pid(), "{'down': <'1024G'>, 'backend': <'ebpf'>}").expect("raising one's own");
    api.set_limits(user, &own, "{'down': <'2M'>}").expect("raising one's own, on the object");
    denied(api.limit(user, mine.pid(), "{'down': <'1M'>, 'down_backend': <'ifb_tc'>}"), "root qdisc");
    let before = api.throttles();
    let other = Sleeper::new(user);
    denied(api.limit(user, other.pid(), "{'up': <'1M'>, 'backend': <'tc_htb'>}"), "root qdisc");
    assert_eq!(api.throttles(), before, "a denied limit created a throttle");
    api.remove(user, &own).expect("removing one's own");
    assert_eq!(api.throttles(), before - 1);
}

/// Root limits a program by name; the user's own pid throttle on one of
/// its processes (more specific, so it would win) limits that process only
/// while it is at least as strict as the administrator's.
#[test]
fn a_users_pid_throttle_never_loosens_an_admins_name_throttle() {
    let Some(_g) = begin() else { return };
    let user = test_user(USER);
    let Some(api) = Api::start("sp-cover", "") else { return };
    let nap = api.dir.path.join("ct-sp-nap");
    std::fs::copy(which("sleep").unwrap(), &nap).unwrap();
    let proc = Sleeper::run(user, nap.to_str().unwrap());
    let args = ["name", "ct-sp-nap", "{'down': <'100K'>}"];
    let admins = object_path(&api.call(ROOT, "/org/chadthrottle", &format!("{MGR}.Limit"), &args).unwrap());
    let own = object_path(&api.limit(user, proc.pid(), "{'down': <'1024G'>}").expect("a throttle of one's own"));
    // Which of the two limits the process (Pids; objects cache it 0.2 s).
    let wins = |path: &str, other: &str| {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let pid = format!(" {}", proc.pid());
        let only = || api.prop(path, "Pids").ends_with(&pid) && !api.prop(other, "Pids").ends_with(&pid);
        wait_until(std::time::Duration::from_secs(2), only)
    };
    let pids = || format!("admin's {}, own {}", api.prop(&admins, "Pids"), api.prop(&own, "Pids"));
    assert!(wins(&admins, &own), "the looser own throttle took the process: {}", pids());
    api.set_limits(user, &own, "{'down': <'50K'>}").expect("lowering one's own");
    assert!(wins(&own, &admins), "the stricter own throttle should win: {}", pids());
    api.set_limits(user, &own, "{'down': <'1M'>}").expect("raising one's own");
    assert!(wins(&admins, &own), "raised above the admin's, it lets go: {}", pids());
}

/// A user with limit-own may have made `per_user` throttles at a time;
/// beyond that, QuotaExceeded and nothing made, while root still limits.
/// The share is counted across a restart; GetStats reports the slots.
#[test]
fn each_user_has_a_share_of_the_slots() {
    let Some(_g) = begin() else { return };
    let user = test_user(USER);
    let Some(mut api) = Api::start("sp-share", "[limits]\nper_user = 3\n") else { return };
    let procs: Vec<Sleeper> = (0..5).map(|_| Sleeper::new(user)).collect();
    let paths: Vec<String> =
        procs[..3].iter().map(|p| object_path(&api.limit(user, p.pid(), "{'down': <'1M'>}").unwrap())).collect();
    let over = |api: &Api, throttles: usize| {
        let e = api.limit(user, procs[3].pid(), "{'down': <'1M'>}").expect_err("over the share");
        assert!(e.contains("org.chadthrottle.Error.QuotaExceeded") && e.contains("3 throttles"), "{e}");
        assert_eq!(api.throttles(), throttles, "a refused limit created a throttle");
    };
    over(&api, 3);
    api.limit(user, procs[0].pid(), "{'down': <'2M'>}").expect("a change in place is no new throttle");
    let by_root = api.limit(ROOT, procs[4].pid(), "{'down': <'1M'>, 'up': <'1M'>}");
    by_root.expect("root still limits");
    assert_eq!((api.stat("slots"), api.stat("slots_used"), api.stat("per_user_throttles")), (4095, 5, 3));
    api.restart();
    assert_eq!(api.throttles(), 4, "restored");
    over(&api, 4);
    api.remove(user, &paths[1]).unwrap();
    api.limit(user, procs[3].pid(), "{'down': <'1M'>}").expect("a freed share is usable again");
}

/// Without `[limits]` the share is 64.
#[test]
fn the_default_share_is_64() {
    let Some(_g) = begin() else { return };
    let user = test_user(USER);
    let Some(api) = Api::start("sp-default", "") else { return };
    assert_eq!(api.stat("per_user_throttles"), 64);
    let procs: Vec<Sleeper> = (0..65).map(|_| Sleeper::new(user)).collect();
    for p in &procs[..64] {
        api.limit(user, p.pid(), "{'down': <'1M'>}").unwrap();
    }
    let e = api.limit(user, procs[64].pid(), "{'down': <'1M'>}").unwrap_err();
    assert!(e.contains("QuotaExceeded") && e.contains("64 throttles"), "{e}");
    assert_eq!((api.throttles(), api.stat("slots_used")), (64, 64));
}

/// The manager itself, without a bus, enforces what the D-Bus layer asked
/// polkit about: a caller authorized only for limit-own who races an
/// administrator (authorized before root's change, acting after it) is
/// refused under the lock, and the share is counted there too.
#[test]
fn the_manager_checks_again_under_its_lock() {
    use throttled::manager::{Actor, Grant, LimitSpec, Manager, ManagerError};
    let Some(_g) = begin() else { return };
    let user = test_user(USER);
    let dir = ScratchDir::new("sp-core");
    let mut opts = common::options(&dir, &[]);
    opts.loaded.config.limits.per_user = 1;
    let m = Manager::start(&opts).unwrap();
    let own = Actor { uid: user.0, grant: Grant::Own };
    let spec = |r: &str| LimitSpec { down: Some(r.parse().unwrap()), ..Default::default() };
    let (a, b) = (Sleeper::new(user), Sleeper::new(user));
    let target = |p: &Sleeper| throttled::target::Target::pid(p.pid(), false).unwrap();
    let id = m.limit_as(own, target(&a), &spec("1M")).unwrap();
    m.limit_as(own, target(&a), &spec("2M")).expect("one's own throttle");
    let e = m.limit_as(own, target(&b), &spec("1M")).unwrap_err();
    assert!(matches!(e, ManagerError::QuotaExceeded { per_user: 1, .. }), "{e}");
    m.limit(target(&a), &spec("100K")).unwrap(); // root: now admin-set
    for e in [
        m.limit_as(own, target(&a), &spec("2M")).map(|_| ()).unwrap_err(),
        m.change_as(own, id, &spec("2M")).unwrap_err(),
        m.remove_as(own, id).unwrap_err(),
    ] {
        assert!(matches!(e, ManagerError::NotPermitted(_)) && e.to_string().contains("limit-any"), "{e}");
    }
    assert_eq!(m.info(id).unwrap().directions.values().next().unwrap().rate.bytes_per_sec(), 100 << 10);
    m.change_as(own, id, &spec("50K")).expect("lowering");
    m.remove_as(Actor { uid: user.0, grant: Grant::Any }, id).expect("limit-any removes");
    m.limit_as(own, target(&b), &spec("1M")).expect("the share is free again");
}

/// Blocking (issue 18): with limit-own a user may block their own process
/// (a block lowers every limit, even an admin's) and lift their own block;
/// blocking someone else's process needs limit-any, and so does lifting a
/// block an administrator set.
#[test]
fn blocking_others_needs_limit_any() {
    let Some(_g) = begin() else { return };
    let (user, admin) = (test_user(USER), test_user(ADMIN));
    let Some(api) = Api::start("sp-block", "") else { return };
    let block = "{'block': <true>}";
    let mine = Sleeper::new(user);
    let own = object_path(&api.limit(user, mine.pid(), block).expect("blocking one's own process"));
    assert_eq!(api.prop(&own, "Blocked"), "b true");
    api.remove(user, &own).expect("lifting one's own block");
    let roots = Sleeper::new(ROOT);
    denied(api.limit(user, roots.pid(), block), "not a process of yours");
    // An admin's limit on the user's process: the user may block it (lower),
    // never lift the admin's block.
    let path = object_path(&api.limit(ROOT, mine.pid(), "{'down': <'100K'>}").unwrap());
    api.limit(user, mine.pid(), block).expect("a block lowers an admin's limit");
    assert_eq!(api.prop(&path, "Blocked"), "b true");
    let theirs = Sleeper::new(user);
    let by_admin = object_path(&api.limit(admin, theirs.pid(), block).expect("limit-any blocks"));
    denied(api.remove(user, &by_admin), "set by an administrator");
    assert_eq!(api.prop(&by_admin, "Blocked"), "b true");
}
