//! Security and multi-instance (issue 15, items 6 and 9), against the real
//! daemon, a real dbus-daemon and the kernel's own tools: a second daemon
//! (another state directory, another interface) neither sweeps the first
//! one's kernel objects nor takes its bus name; a killed daemon's recorded
//! objects are still swept when it restarts; no state file is ever opened
//! through a symlink planted in the state directory; and a state directory
//! that others could write to is refused before anything is built.
mod common;

use std::{
    os::unix::fs::{symlink, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    time::Duration,
};

use common::*;
use throttle_testkit::bus::{write_config, PrivateBus};
use throttled::kernel::netlink::Netlink;

/// The download limit of every flow here, in bytes/s (the API's "2M").
const LIMIT: f64 = 2.0 * MIB;

fn ifindex(name: &str) -> Option<u32> {
    Netlink::new().unwrap().link_index(name).unwrap()
}

fn ifb_of(lab: &Lab) -> String {
    format!("cti-{}", lab.veth)
}

/// Our HTB roots on `dev`, as tc lists them.
fn htb_roots(dev: &str) -> usize {
    let out = Command::new("tc").args(["qdisc", "show", "dev", dev, "root"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains("htb c7:")).count()
}

/// The unique name owning org.chadthrottle on `bus`, as busctl sees it.
fn name_owner(bus: &PrivateBus) -> Option<String> {
    let dbus = ["org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus"];
    let out = bus.busctl(&[&["call"][..], &dbus, &["GetNameOwner", "s", "org.chadthrottle"]].concat()).ok()?;
    out.trim().strip_prefix("s ").map(|s| s.trim_matches('"').to_string())
}

/// A download limit on `pid` through the API, on ifb_tc.
fn limit_down(bus: &PrivateBus, pid: u32) {
    let mgr = ["org.chadthrottle", "/org/chadthrottle", "org.chadthrottle.Manager"];
    let args = ["pid", &pid.to_string(), "2", "down", "s", "2M", "backend", "s", "ifb_tc"];
    bus.busctl(&[&["call"][..], &mgr, &["Limit", "ssa{sv}"], &args].concat()).unwrap();
}

/// Runs the daemon when it must refuse to start: its exit status and what
/// it said. One still running after 15 s failed the test (it is stopped
/// first, so that it cleans up).
fn refused(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String) {
    let mut c = Command::new(daemon_bin())
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let exited = wait_until(Duration::from_secs(15), || c.try_wait().is_ok_and(|s| s.is_some()));
    if !exited {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        if !wait_until(Duration::from_secs(5), || c.try_wait().is_ok_and(|s| s.is_some())) {
            let _ = c.kill();
        }
    }
    let out = c.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(exited, "the daemon started instead of refusing:\n{said}");
    eprintln!("refused with {}: {}", out.status, said.trim());
    (out.status, said)
}

/// Per-second download rates over the limit, from the first full second
/// (the limit is made once the flow runs) to the last full one.
#[track_caller]
fn assert_held(what: &str, r: &IperfResult) {
    // The limit is applied over the bus once the flow runs: on a busy VM
    // that may take the first second, so judge from the third.
    let full = &r.intervals[2..r.intervals.len().saturating_sub(1)];
    let per_second: Vec<String> = full.iter().map(|b| format!("{:.2}", b / LIMIT)).collect();
    eprintln!("{what}: per second / limit: [{}]", per_second.join(" "));
    assert!(full.iter().all(|b| b / LIMIT <= 1.1), "{what}: the limit let go: {per_second:?}");
    assert_accurate(what, r.mean(2, r.intervals.len() - 1), LIMIT);
}

/// What the first daemon has, at one point of the test.
#[derive(Debug)]
struct Seen {
    at: &'static str,
    ifb: Option<u32>,
    owner: Option<String>,
}

/// Item 6. Two daemons, two labs, two state directories. On the first one's
/// bus the second is refused before it builds anything; on a bus of its own
/// it runs with its own ifb_tc download limit, then stops. Throughout, the
/// first one keeps its IFB (same ifindex), its name and its limit.
#[test]
fn a_second_daemon_leaves_the_first_alone() {
    let Some(_g) = begin() else { return };
    if which("busctl").is_none() {
        throttle_testkit::missing("busctl is needed (run scripts/bootstrap.sh)");
        return;
    }
    let (mut lab1, mut lab2) = (Lab::new(170), Lab::new(171));
    lab1.server(5201);
    lab2.server(5201);
    let Some(bus_a) = PrivateBus::start("si-a") else { return };
    let Some(bus_b) = PrivateBus::start("si-b") else { return };
    let (dir1, dir2) = (ScratchDir::new("si-first"), ScratchDir::new("si-second"));
    let mut first = bus_a.daemon(daemon_bin(), &dir1, &lab1.veth, &[]);
    let owner = name_owner(&bus_a).expect("the first daemon owns the name");
    let c1 = lab1.client("ct-si-first", 5201, 18, true);
    limit_down(&bus_a, c1.pid());
    let ifb1 = ifb_of(&lab1);
    assert!(wait_until(Duration::from_secs(3), || ifindex(&ifb1).is_some()), "no IFB for the first daemon");
    let idx = ifindex(&ifb1);
    let seen = |at| Seen { at, ifb: ifindex(&ifb1), owner: name_owner(&bus_a) };
    let mut checks = vec![seen("with the first limit")];
    std::thread::sleep(Duration::from_secs(2));

    // On the first one's bus: refused, before any kernel change.
    let conf2 = write_config(&dir2, &lab2.veth);
    let args2 = ["--config", conf2.to_str().unwrap()];
    let (status, said) = refused(&args2, &[("DBUS_SYSTEM_BUS_ADDRESS", bus_a.address())]);
    assert!(!status.success(), "refused, yet exited 0");
    assert!(
        said.contains("org.chadthrottle is already owned on the system bus by pid")
            && said.contains(&first.pid().to_string())
            && said.contains("another chadthrottled is running"),
        "unclear refusal: {said}"
    );
    assert_eq!(ifindex(&ifb_of(&lab2)), None, "the refused daemon made an IFB");
    assert_eq!(htb_roots(&lab2.veth), 0, "the refused daemon made an HTB root");
    assert!(!dir2.path.join("state").exists(), "the refused daemon touched its state directory");
    checks.push(seen("after a second daemon was refused"));

    // On its own bus: it runs, with its own download limit, then stops.
    let mut second = bus_b.daemon(daemon_bin(), &dir2, &lab2.veth, &[]);
    checks.push(seen("after the second daemon started"));
    let c2 = lab2.client("ct-si-second", 5201, 8, true);
    limit_down(&bus_b, c2.pid());
    assert!(wait_until(Duration::from_secs(3), || ifindex(&ifb_of(&lab2)).is_some()), "no IFB for the second");
    checks.push(seen("with both limits"));
    let r2 = c2.wait();
    second.stop();
    assert_eq!(ifindex(&ifb_of(&lab2)), None, "the second daemon left its IFB");
    checks.push(seen("after the second daemon stopped"));
    // Still reachable, with its throttle, while its flow runs.
    let list = ["org.chadthrottle", "/org/chadthrottle", "org.chadthrottle.Manager", "ListThrottles"];
    let listed = bus_a.busctl(&[&["call"][..], &list].concat());
    assert!(
        listed.as_ref().is_ok_and(|l| l.contains("/org/chadthrottle/throttles/1")),
        "first unreachable: {listed:?}"
    );

    let r1 = c1.wait();
    eprintln!("first daemon's IFB {ifb1} index {idx:?}, name owner {owner}: {checks:?}");
    for c in &checks {
        assert_eq!(c.ifb, idx, "{}: the first daemon's IFB was deleted or replaced", c.at);
        assert_eq!(c.owner.as_deref(), Some(owner.as_str()), "{}: the first daemon lost its name", c.at);
    }
    assert_held("the first daemon's download, throughout", &r1);
    assert_held("the second daemon's download", &r2);
    first.stop();
    assert_eq!(ifindex(&ifb1), None, "the first daemon left its IFB");
}

/// The records the daemon keeps of its kernel objects.
fn records(state: &Path) -> Vec<String> {
    let mut r: Vec<String> = std::fs::read_dir(state)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    r.retain(|n| (n.starts_with("ifb-") || n.starts_with("qdisc-")) && n.ends_with(".json"));
    r.sort();
    r
}

/// A daemon without a bus, limiting `pid` both ways on the interface
/// backends of `lab`'s veth, its state in `dir/state`.
fn shaping_daemon(dir: &ScratchDir, lab: &Lab, pid: u32) -> Daemon {
    let conf = write_config(dir, &lab.veth);
    let pid = pid.to_string();
    let args = [
        "--config",
        conf.to_str().unwrap(),
        "--no-dbus",
        "--pid",
        &pid,
        "--up",
        "1M",
        "--down",
        "1M",
        "--up-backend",
        "tc_htb",
        "--down-backend",
        "ifb_tc",
    ];
    Daemon::start(daemon_bin(), &args, &[])
}

/// A sleeping process, killed on drop.
type Sleeper = Reaped;

impl Reaped {
    fn new() -> Sleeper {
        Reaped(Command::new("sleep").arg("120").spawn().unwrap())
    }
}

/// Item 6, after a crash: a killed daemon's IFB and HTB root survive a
/// second daemon's start and stop (they are not its own), and its own
/// restart sweeps them from its records, ending with exactly one set; a
/// clean stop then restores the original root and leaves no record.
#[test]
fn kill_9_recovery_sweeps_only_the_recorded_objects() {
    let Some(_g) = begin() else { return };
    let (lab1, lab2) = (Lab::new(172), Lab::new(173));
    sh(&["tc", "qdisc", "replace", "dev", &lab1.veth, "root", "pfifo", "limit", "77"]);
    let (dir1, dir2) = (ScratchDir::new("si-crashed"), ScratchDir::new("si-bystander"));
    let (state1, ifb1) = (dir1.path.join("state"), ifb_of(&lab1));
    let target = Sleeper::new();
    let mut crashed = shaping_daemon(&dir1, &lab1, target.0.id());
    let mode = std::fs::metadata(&state1).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o700, "a missing state directory is created 0700, not {mode:o}");
    crashed.kill9();
    let old = ifindex(&ifb1).expect("the crash left its IFB (else the test is void)");
    assert_eq!(htb_roots(&lab1.veth), 1, "the crash left its HTB root");

    let other = Sleeper::new();
    let mut bystander = shaping_daemon(&dir2, &lab2, other.0.id());
    assert_eq!(ifindex(&ifb1), Some(old), "another daemon's start deleted the crashed one's IFB");
    assert_eq!(htb_roots(&lab1.veth), 1, "another daemon's start removed the crashed one's HTB root");
    bystander.stop();
    assert_eq!(ifindex(&ifb1), Some(old), "another daemon's stop deleted the crashed one's IFB");
    assert_eq!(htb_roots(&lab1.veth), 1, "another daemon's stop removed the crashed one's HTB root");
    assert_eq!(ifindex(&ifb_of(&lab2)), None, "the other daemon left its IFB");
    assert!(records(&dir2.path.join("state")).is_empty(), "the other daemon left records");

    let mut want = [format!("ifb-{ifb1}.json"), format!("qdisc-{ifb1}.json"), format!("qdisc-{}.json", lab1.veth)];
    want.sort();
    assert_eq!(records(&state1), want, "the crash left a record of its IFB and of both roots it replaced");
    let mut restarted = shaping_daemon(&dir1, &lab1, target.0.id());
    let links = sh(&["ip", "-o", "link", "show"]);
    assert_eq!(links.lines().filter(|l| l.contains(&format!(" {ifb1}:"))).count(), 1, "{links}");
    assert_ne!(ifindex(&ifb1), Some(old), "the crashed run's IFB was not swept");
    assert_eq!(htb_roots(&lab1.veth), 1, "exactly one HTB root after the restart");
    restarted.stop();
    assert_eq!(ifindex(&ifb1), None, "a clean stop left the IFB");
    let root = sh(&["tc", "qdisc", "show", "dev", &lab1.veth, "root"]);
    assert!(root.contains("pfifo") && root.contains("limit 77"), "original root not restored: {root}");
    assert!(records(&state1).is_empty(), "records left after a clean stop: {:?}", records(&state1));
}

/// A root-owned 0600 file outside the state directory.
struct Secret {
    path: PathBuf,
    _dir: ScratchDir,
}

/// No trailing newline: a journal read through a symlink to it would
/// take it for a line cut short, skip it, and then reuse the file.
const SECRET: &str = "root-only secret, not for the daemon to write";

impl Secret {
    fn new(tag: &str) -> Secret {
        let dir = ScratchDir::new(&format!("si-secret-{tag}"));
        let path = dir.path.join("secret");
        std::fs::write(&path, SECRET).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        Secret { path, _dir: dir }
    }

    #[track_caller]
    fn assert_unchanged(&self, what: &str) {
        let now = std::fs::read_to_string(&self.path).unwrap();
        assert_eq!(now, SECRET, "{what}: the file behind the symlink was written");
        assert_eq!(std::fs::metadata(&self.path).unwrap().mode() & 0o777, 0o600, "{what}");
    }
}

/// A state directory (0700, root's) with symlinks to `secret` at `names`.
fn planted(tag: &str, secret: &Secret, names: &[String]) -> (ScratchDir, PathBuf) {
    let dir = ScratchDir::new(tag);
    let state = dir.path.join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    for n in names {
        symlink(&secret.path, state.join(n)).unwrap();
    }
    (dir, state)
}

/// Item 9: symlinks planted for the lock, the snapshot's temporary file,
/// the journal and the records' temporary files: the file they point to is
/// never written. The lock is refused; the others are replaced.
#[test]
fn planted_symlinks_are_never_followed() {
    let Some(_g) = begin() else { return };
    let target = Sleeper::new();
    let pid = target.0.id().to_string();

    let secret = Secret::new("lock");
    let (dir, _) = planted("si-link-lock", &secret, &["lock".into()]);
    let conf = write_config(&dir, "ct-si-none");
    let (status, said) = refused(&["--config", conf.to_str().unwrap(), "--no-dbus"], &[]);
    assert!(!status.success() && said.contains("lock") && said.contains("symbolic link"), "unclear: {said}");
    secret.assert_unchanged("the lock");

    for (tag, name) in [("tmp", "throttles.json.tmp"), ("journal", "throttles.journal.1")] {
        let secret = Secret::new(tag);
        let (dir, state) = planted(&format!("si-link-{tag}"), &secret, &[name.into()]);
        let conf = write_config(&dir, "ct-si-none");
        let args = ["--config", conf.to_str().unwrap(), "--no-dbus", "--pid", &pid, "--up", "1M", "--backend", "ebpf"];
        let mut d = Daemon::start(daemon_bin(), &args, &[]);
        d.stop();
        secret.assert_unchanged(name);
        let saved = std::fs::read_to_string(state.join("throttles.json")).unwrap();
        assert!(saved.contains("\"throttles\""), "{name}: the state was not saved: {saved}");
    }

    let lab = Lab::new(174);
    sh(&["tc", "qdisc", "replace", "dev", &lab.veth, "root", "pfifo", "limit", "77"]);
    let secret = Secret::new("records");
    let ifb = ifb_of(&lab);
    let names: Vec<String> = [
        format!("qdisc-{}.tmp", lab.veth), // where a saved root went before records
        format!("qdisc-{}.json.tmp", lab.veth),
        format!("qdisc-{ifb}.json.tmp"),
        format!("ifb-{ifb}.json.tmp"),
    ]
    .into();
    let (dir, state) = planted("si-link-records", &secret, &names);
    let mut d = shaping_daemon(&dir, &lab, target.0.id());
    secret.assert_unchanged("the records' temporary files");
    assert_eq!(records(&state).len(), 3, "records: {:?}", records(&state));
    d.stop();
    secret.assert_unchanged("the records' temporary files");
    let root = sh(&["tc", "qdisc", "show", "dev", &lab.veth, "root"]);
    assert!(root.contains("pfifo") && root.contains("limit 77"), "original root not restored: {root}");
}

/// Item 9: a state directory that others can write to (0777), or that
/// another user owns, is refused with the reason, before anything is built
/// and before any file in it is touched.
#[test]
fn an_unsafe_state_directory_is_refused() {
    let Some(_g) = begin() else { return };
    let lab = Lab::new(175);
    let target = Sleeper::new();
    let pid = target.0.id().to_string();
    let cases: [(&str, u32, u32, &str); 2] = [
        ("si-dir-0777", 0o777, 0, "writable by its group or by others (mode 0777)"),
        ("si-dir-nobody", 0o700, 65534, "owned by uid 65534, not by this daemon's uid 0"),
    ];
    for (tag, mode, uid, reason) in cases {
        let dir = ScratchDir::new(tag);
        let state = dir.path.join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(mode)).unwrap();
        std::os::unix::fs::chown(&state, Some(uid), Some(uid)).unwrap();
        let conf = write_config(&dir, &lab.veth);
        let args = [
            "--config",
            conf.to_str().unwrap(),
            "--no-dbus",
            "--pid",
            &pid,
            "--down",
            "1M",
            "--down-backend",
            "ifb_tc",
            "--up",
            "1M",
            "--up-backend",
            "tc_htb",
        ];
        let (status, said) = refused(&args, &[]);
        assert!(!status.success(), "{tag}: exited 0");
        let want = format!("refusing the state directory {}: it is {reason}", state.display());
        assert!(said.contains(&want), "{tag}: unclear refusal, wanted {want:?} in: {said}");
        assert_eq!(ifindex(&ifb_of(&lab)), None, "{tag}: an IFB was made");
        assert_eq!(htb_roots(&lab.veth), 0, "{tag}: an HTB root was made");
        let left: Vec<_> = std::fs::read_dir(&state).unwrap().flatten().map(|e| e.file_name()).collect();
        assert!(left.is_empty(), "{tag}: files were made in the refused directory: {left:?}");
        let meta = std::fs::metadata(&state).unwrap();
        assert_eq!((meta.mode() & 0o777, meta.uid()), (mode, uid), "{tag}: the directory was changed");
    }
}
