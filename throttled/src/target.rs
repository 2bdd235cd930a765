//! What a throttle covers: a process (optionally with its descendants), every
//! process of a name or executable, or a cgroup / systemd unit. Parsing and
//! validation of user input (`TargetSpec`, without I/O) and resolving it
//! into the model (`Target`), matching against a process's facts, and the
//! precedence rule between overlapping targets.
use std::{fmt, path::Path};

use serde::{Deserialize, Serialize};
use throttle_common::text::{escape, quote, QUOTE_MAX};

use crate::kernel::procfs::{self, ProcIdent};

/// Names are matched against comm and the executable's basename, so they are
/// bounded by NAME_MAX and cannot contain a path separator.
const NAME_MAX: usize = 255;
const PATH_MAX: usize = 4096;
const UNIT_SUFFIXES: [&str; 3] = [".service", ".scope", ".slice"];

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Target {
    /// One process, identified across pid reuse, and with `tree` its
    /// descendants, present and future.
    Pid { ident: ProcIdent, tree: bool },
    /// Every process whose comm or executable basename is `name`.
    Name { name: String },
    /// Every process running this executable.
    Exe { path: String },
    /// Every process in this cgroup (relative to the cgroup v2 root) or below.
    Cgroup { path: String },
    /// Every process in this systemd unit's cgroup, wherever it sits.
    Unit { unit: String },
    /// A cap on every process of one user (by real uid), on top of each
    /// process's own throttle.
    User { uid: u32 },
    /// A cap on every process of the machine, on top of the user caps and
    /// each process's own throttle.
    All,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("invalid target: {0}")]
    Invalid(String),
    #[error("no such process: {0}")]
    NoSuchProcess(u32),
}

fn invalid(msg: impl Into<String>) -> TargetError {
    TargetError::Invalid(msg.into())
}

/// What matching needs to know about a process, read from /proc once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcFacts {
    pub comm: String,
    pub exe: Option<String>,
    /// The cgroup v2 path, e.g. `/system.slice/backup.service`.
    pub cgroup: Option<String>,
    /// The real uid.
    pub uid: Option<u32>,
}

impl ProcFacts {
    /// `None` when the process is gone.
    pub fn read(pid: u32) -> Option<ProcFacts> {
        Some(ProcFacts {
            comm: procfs::comm(pid).ok()?,
            exe: procfs::exe(pid),
            cgroup: procfs::cgroup(pid),
            uid: procfs::uid(pid).ok(),
        })
    }
}

/// Why a target that would catch every process is refused.
const WHOLE_SYSTEM: &str = "limiting it would limit the system (use a name, exe or unit)";

/// A pid as the API spells it: decimal digits only, no sign, no leading
/// zero, at most 10 digits.
pub fn parse_pid(value: &str) -> Result<u32, TargetError> {
    let digits = !value.is_empty() && value.len() <= 10 && value.bytes().all(|b| b.is_ascii_digit());
    match value.parse::<u32>() {
        Ok(p) if digits && (value == "0" || !value.starts_with('0')) => Ok(p),
        _ => Err(invalid(format!("pid {} is not a decimal number", quote(value)))),
    }
}

/// A target as a caller or a rule gives it, its form checked without any
/// I/O. `resolve` is the separate step that reads what the model needs: a
/// pid's process and start time, or the cgroup v2 mount point (so parsing
/// rules never reads /proc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetSpec {
    /// A process by pid (a thread id resolves to its process).
    Pid { pid: u32, tree: bool },
    /// A normalized cgroup path, maybe with the mount point in front.
    Cgroup { path: String },
    /// A user by name, looked up in the local user database.
    UserName { name: String },
    /// A target that needs nothing from the system.
    Ready(Target),
}

impl TargetSpec {
    /// The one validation of a target's form, for API calls, rules and
    /// saved state alike: `kind` is pid, tree, name, exe, cgroup, unit,
    /// user (a uid or a user name) or all (with an empty value).
    pub fn parse(kind: &str, value: &str) -> Result<TargetSpec, TargetError> {
        match kind {
            "pid" => Ok(TargetSpec::Pid { pid: parse_pid(value)?, tree: false }),
            "tree" => Ok(TargetSpec::Pid { pid: parse_pid(value)?, tree: true }),
            "name" => Target::name(value).map(TargetSpec::Ready),
            "exe" => Target::exe(value).map(TargetSpec::Ready),
            "cgroup" => TargetSpec::cgroup(value),
            "unit" => Target::unit(value).map(TargetSpec::Ready),
            "user" => TargetSpec::user(value),
            "all" if value.is_empty() => Ok(TargetSpec::Ready(Target::All)),
            "all" => Err(invalid(format!("target all takes no value, not {}", quote(value)))),
            other => Err(invalid(format!(
                "unknown target kind {} (pid, tree, name, exe, cgroup, unit, user, all)",
                quote(other)
            ))),
        }
    }

    /// A uid (decimal, as a pid is), or a user name of the portable form
    /// (`[a-z_][a-z0-9_.-]*`, at most 32 bytes, maybe ending in `$`).
    pub fn user(value: &str) -> Result<TargetSpec, TargetError> {
        if value.bytes().next().is_some_and(|b| b.is_ascii_digit()) {
            return match parse_pid(value) {
                Ok(uid) if uid != u32::MAX => Ok(TargetSpec::Ready(Target::User { uid })),
                _ => Err(invalid(format!("uid {} is not a user id", quote(value)))),
            };
        }
        let body = value.strip_suffix('$').unwrap_or(value);
        let first = body.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
        let rest = body.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
        if !first || !rest || value.len() > 32 {
            return Err(invalid(format!("user {} is neither a uid nor a user name", quote(value))));
        }
        Ok(TargetSpec::UserName { name: value.to_string() })
    }

    pub fn cgroup(path: &str) -> Result<TargetSpec, TargetError> {
        let p = clean_path(path, "cgroup path")?;
        if p == "/" {
            return Err(invalid(format!("cgroup {} is the root cgroup: {WHOLE_SYSTEM}", quote(path))));
        }
        Ok(TargetSpec::Cgroup { path: p })
    }

    /// The model's target: a pid becomes a live, non-kernel process with
    /// its start time (`NoSuchProcess` when there is none); a cgroup path
    /// given with the cgroup v2 mount point in front loses it.
    pub fn resolve(self) -> Result<Target, TargetError> {
        match self {
            TargetSpec::Pid { pid, tree } => resolve_pid(pid, tree),
            TargetSpec::Cgroup { path } => resolve_cgroup(&path),
            TargetSpec::UserName { name } => match passwd_uid(&name) {
                Some(uid) => Ok(Target::User { uid }),
                None => Err(invalid(format!("no user {} in /etc/passwd (give a uid)", quote(&name)))),
            },
            TargetSpec::Ready(t) => Ok(t),
        }
    }
}

impl fmt::Display for TargetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetSpec::Pid { pid, tree: false } => write!(f, "pid {pid}"),
            TargetSpec::Pid { pid, tree: true } => write!(f, "pid {pid} and descendants"),
            TargetSpec::Cgroup { path } => write!(f, "cgroup {}", escape(path, QUOTE_MAX)),
            TargetSpec::UserName { name } => write!(f, "user {}", escape(name, QUOTE_MAX)),
            TargetSpec::Ready(t) => t.fmt(f),
        }
    }
}

fn resolve_pid(pid: u32, tree: bool) -> Result<Target, TargetError> {
    if pid == 0 {
        return Err(invalid("pid 0 is not a process"));
    }
    let tgid = procfs::tgid(pid).map_err(|_| TargetError::NoSuchProcess(pid))?;
    if procfs::is_kernel_thread(tgid).unwrap_or(false) {
        return Err(invalid(format!("pid {pid} is a kernel thread")));
    }
    if tgid == 1 {
        return Err(invalid(format!("pid 1 is init: {WHOLE_SYSTEM}")));
    }
    let ident = procfs::ident(tgid).map_err(|_| TargetError::NoSuchProcess(pid))?;
    Ok(Target::Pid { ident, tree })
}

fn resolve_cgroup(path: &str) -> Result<Target, TargetError> {
    let mut p = path.to_string();
    if let Ok(root) = crate::kernel::cgroup::cgroup2_mount() {
        if let Ok(rel) = Path::new(&p).strip_prefix(&root) {
            p = format!("/{}", rel.display());
        }
    }
    if p == "/" {
        return Err(invalid(format!("cgroup {} is the root cgroup: {WHOLE_SYSTEM}", quote(path))));
    }
    Ok(Target::Cgroup { path: p })
}

impl Target {
    /// A saved target, validated exactly as an API call's: the same target
    /// comes back, or why not (a pid target also when its process, pid and
    /// start time, is gone).
    pub fn revalidate(&self) -> Result<Target, TargetError> {
        let (kind, value) = self.parts();
        let fresh = TargetSpec::parse(kind, &value)?.resolve()?;
        match (self, &fresh) {
            (Target::Pid { ident: saved, .. }, Target::Pid { ident: now, .. }) if saved != now => {
                Err(TargetError::NoSuchProcess(saved.pid))
            }
            _ if fresh != *self => Err(invalid(format!("{kind} {} is not in its normal form", quote(&value)))),
            _ => Ok(fresh),
        }
    }

    /// A live, non-kernel process (a thread id resolves to its process):
    /// parses and resolves, so it reads /proc.
    pub fn pid(pid: u32, tree: bool) -> Result<Target, TargetError> {
        resolve_pid(pid, tree)
    }

    pub fn name(name: &str) -> Result<Target, TargetError> {
        if name.is_empty() || name.len() > NAME_MAX || name.contains(['/', '\0']) {
            return Err(invalid(format!(
                "process name {:?} must be 1–{NAME_MAX} bytes without '/' (use an exe target for paths)",
                shorten(name)
            )));
        }
        Ok(Target::Name { name: name.to_string() })
    }

    pub fn exe(path: &str) -> Result<Target, TargetError> {
        Ok(Target::Exe { path: clean_path(path, "executable path")? })
    }

    /// A path under the cgroup v2 root (`/system.slice/x.service`), or the
    /// same path with the mount point in front: parses and resolves, so it
    /// reads the mount table.
    pub fn cgroup(path: &str) -> Result<Target, TargetError> {
        TargetSpec::cgroup(path)?.resolve()
    }

    pub fn unit(unit: &str) -> Result<Target, TargetError> {
        let ok_chars = unit.chars().all(|c| c.is_ascii_alphanumeric() || ":-_.\\@".contains(c));
        let suffix = UNIT_SUFFIXES.iter().any(|s| unit.len() > s.len() && unit.ends_with(s));
        if unit == "-.slice" {
            return Err(invalid(format!("unit -.slice is the root slice: {WHOLE_SYSTEM}")));
        }
        if unit.len() > NAME_MAX || !ok_chars || !suffix {
            return Err(invalid(format!(
                "unit {:?} must be a systemd unit name ending in {}",
                shorten(unit),
                UNIT_SUFFIXES.join(", ")
            )));
        }
        Ok(Target::Unit { unit: unit.to_string() })
    }

    /// The kind and value as the API spells them: ("name", "firefox").
    pub fn parts(&self) -> (&'static str, String) {
        match self {
            Target::Pid { ident, tree: false } => ("pid", ident.pid.to_string()),
            Target::Pid { ident, tree: true } => ("tree", ident.pid.to_string()),
            Target::Name { name } => ("name", name.clone()),
            Target::Exe { path } => ("exe", path.clone()),
            Target::Cgroup { path } => ("cgroup", path.clone()),
            Target::Unit { unit } => ("unit", unit.clone()),
            Target::User { uid } => ("user", uid.to_string()),
            Target::All => ("all", String::new()),
        }
    }

    /// A cap (`user`, `all`): it stacks on the throttles of the processes
    /// it covers instead of competing with them.
    pub fn is_cap(&self) -> bool {
        matches!(self, Target::User { .. } | Target::All)
    }

    pub fn is_pid(&self) -> bool {
        matches!(self, Target::Pid { .. })
    }

    pub fn is_tree(&self) -> bool {
        matches!(self, Target::Pid { tree: true, .. })
    }

    /// Pid targets die with their process; the others outlive every process.
    pub fn root(&self) -> Option<ProcIdent> {
        match self {
            Target::Pid { ident, .. } => Some(*ident),
            _ => None,
        }
    }

    /// Whether a process with these facts matches (pid targets match by
    /// identity and ancestry, which the manager tracks).
    pub fn matches(&self, f: &ProcFacts) -> bool {
        match self {
            Target::Pid { .. } => false,
            Target::Name { name } => {
                f.comm == *name
                    || comm_prefix(name) == Some(f.comm.as_str())
                    || f.exe.as_deref().is_some_and(|e| basename(e) == name)
            }
            Target::Exe { path } => f.exe.as_deref() == Some(path.as_str()),
            Target::Cgroup { path } => f.cgroup.as_deref().is_some_and(|c| under(c, path)),
            Target::Unit { unit } => f.cgroup.as_deref().is_some_and(|c| c.split('/').any(|part| part == unit)),
            Target::User { uid } => f.uid == Some(*uid),
            // Enforced for every process at once, in the kernel: no members.
            Target::All => false,
        }
    }

    /// Precedence between overlapping throttles: the most specific target
    /// wins, per direction; among equals, the older throttle (lower id).
    /// pid > descendant of a pid tree > exe > cgroup/unit > name.
    pub fn rank(&self, tgid: u32) -> u8 {
        match self {
            Target::Pid { ident, .. } if ident.pid == tgid => 50,
            Target::Pid { .. } => 40,
            Target::Exe { .. } => 30,
            Target::Cgroup { .. } | Target::Unit { .. } => 20,
            Target::Name { .. } => 10,
            // Caps never compete with throttles (see `coverage`).
            Target::User { .. } | Target::All => 0,
        }
    }
}

/// For logs and messages: user-supplied text has its control characters
/// escaped and is cut short, so it can never forge a log line.
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = |s: &str| escape(s, QUOTE_MAX);
        match self {
            Target::Pid { ident, tree: false } => write!(f, "pid {}", ident.pid),
            Target::Pid { ident, tree: true } => write!(f, "pid {} and descendants", ident.pid),
            Target::Name { name } => write!(f, "name {}", e(name)),
            Target::Exe { path } => write!(f, "exe {}", e(path)),
            Target::Cgroup { path } => write!(f, "cgroup {}", e(path)),
            Target::Unit { unit } => write!(f, "unit {}", e(unit)),
            Target::User { uid } => write!(f, "user {uid}"),
            Target::All => f.write_str("all processes"),
        }
    }
}

/// A local user's uid from `/etc/passwd` (read directly: a root daemon
/// runs no NSS modules on a caller's input; clients resolve other users).
fn passwd_uid(name: &str) -> Option<u32> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open("/etc/passwd").ok()?.take(16 << 20).read_to_string(&mut text).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next() == Some(name)).then(|| f.nth(1)?.parse().ok()).flatten()
    })
}

/// The kernel keeps 15 bytes of comm: a longer name matches its prefix.
fn comm_prefix(name: &str) -> Option<&str> {
    (name.len() > 15).then(|| name.get(..15)).flatten()
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn under(path: &str, prefix: &str) -> bool {
    prefix == "/" || path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
}

/// An absolute, normalized path: no `.`/`..` components, no trailing slash.
fn clean_path(path: &str, what: &str) -> Result<String, TargetError> {
    if !path.starts_with('/') || path.len() > PATH_MAX || path.contains('\0') {
        return Err(invalid(format!("{what} {:?} must be absolute, at most {PATH_MAX} bytes", shorten(path))));
    }
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Err(invalid(format!("{what} {:?} must not contain . or ..", shorten(path))));
    }
    Ok(format!("/{}", parts.join("/")))
}

/// Error messages quote at most 64 characters of hostile input.
fn shorten(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(comm: &str, exe: &str, cgroup: &str) -> ProcFacts {
        ProcFacts { comm: comm.into(), exe: Some(exe.into()), cgroup: Some(cgroup.into()), uid: Some(1000) }
    }

    #[test]
    fn name_matches_comm_or_exe_basename() {
        let t = Target::name("firefox").unwrap();
        assert!(t.matches(&facts("firefox", "/usr/lib/firefox/firefox", "/")));
        assert!(t.matches(&facts("Web Content", "/usr/lib/firefox/firefox", "/")));
        assert!(t.matches(&facts("firefox", "/usr/bin/python3", "/")));
        assert!(!t.matches(&facts("firefox-bin", "/usr/bin/firefox-bin", "/")));
        let long = Target::name("a-very-long-process-name").unwrap();
        assert!(long.matches(&facts("a-very-long-pro", "/x", "/")));
    }

    #[test]
    fn exe_cgroup_and_unit_match() {
        let f = facts("x", "/usr/bin/rsync", "/system.slice/backup.service/sub");
        assert!(Target::exe("/usr/bin//rsync/").unwrap().matches(&f));
        assert!(!Target::exe("/usr/bin/rsyn").unwrap().matches(&f));
        assert!(Target::Cgroup { path: "/system.slice".into() }.matches(&f));
        assert!(!Target::Cgroup { path: "/system.sl".into() }.matches(&f));
        assert!(Target::unit("backup.service").unwrap().matches(&f));
        assert!(!Target::unit("backup2.service").unwrap().matches(&f));
    }

    #[test]
    fn bad_input_is_refused() {
        for n in ["", "a/b", &"x".repeat(10_000)] {
            assert!(matches!(Target::name(n), Err(TargetError::Invalid(_))), "{n:.20}");
        }
        assert!(Target::exe("relative").is_err());
        assert!(Target::exe("/a/../etc/shadow").is_err());
        assert!(Target::unit("firefox").is_err());
        assert!(Target::unit("a b.service").is_err());
        assert!(Target::pid(0, false).is_err());
        assert!(matches!(Target::pid(1, true), Err(TargetError::Invalid(_))));
        assert_eq!(Target::pid(u32::MAX, false), Err(TargetError::NoSuchProcess(u32::MAX)));
        if let Ok(true) = procfs::comm(2).map(|c| c == "kthreadd") {
            assert!(matches!(Target::pid(2, false), Err(TargetError::Invalid(_))));
        }
        let msg = Target::name(&"y".repeat(10_000)).unwrap_err().to_string();
        assert!(msg.len() < 200, "{msg}");
    }

    #[test]
    fn saved_targets_are_validated_like_api_calls() {
        let me = procfs::ident(std::process::id()).unwrap();
        for ok in [Target::name("firefox").unwrap(), Target::Pid { ident: me, tree: true }] {
            assert_eq!(ok.revalidate(), Ok(ok.clone()));
        }
        let gone = Target::Pid { ident: ProcIdent { start_time: me.start_time + 1, ..me }, tree: false };
        assert_eq!(gone.revalidate(), Err(TargetError::NoSuchProcess(me.pid)));
        let init = Target::Pid { ident: procfs::ident(1).unwrap(), tree: false };
        let bad = [
            init,
            Target::Name { name: "a/b".into() },
            Target::Name { name: "n".repeat(100_000) },
            Target::Exe { path: "usr/bin/x".into() },
            Target::Exe { path: "/usr//bin/x".into() },
            Target::Cgroup { path: "/a/../b".into() },
            Target::Cgroup { path: "/".into() },
            Target::Unit { unit: "x\n.service".into() },
        ];
        for t in bad {
            let e = t.revalidate().unwrap_err();
            assert!(matches!(e, TargetError::Invalid(_)) && e.to_string().len() < 300, "{t}: {e}");
        }
    }

    #[test]
    fn display_escapes_control_characters() {
        let t = Target::name("a\nFAKE \u{1b}[2J").unwrap();
        let shown = t.to_string();
        assert!(!shown.chars().any(char::is_control), "{shown}");
        assert!(shown.contains("a\\nFAKE"), "{shown}");
    }

    #[test]
    fn pids_are_strict_decimal() {
        assert_eq!(parse_pid("1234"), Ok(1234));
        for bad in ["+1234", "01234", " 1234", "1234 ", "-1", "", "12a", "99999999999", "٣"] {
            assert!(parse_pid(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn precedence_is_most_specific_first() {
        let me = procfs::ident(std::process::id()).unwrap();
        let pid = Target::Pid { ident: me, tree: true };
        let ranks = [
            pid.rank(me.pid),
            pid.rank(me.pid + 1),
            Target::exe("/x").unwrap().rank(1),
            Target::unit("a.scope").unwrap().rank(1),
            Target::name("x").unwrap().rank(1),
        ];
        assert!(ranks.windows(2).all(|w| w[0] > w[1]), "{ranks:?}");
    }

    #[test]
    fn parsing_reads_nothing_resolving_does() {
        let spec = TargetSpec::parse("pid", &u32::MAX.to_string()).unwrap();
        assert_eq!(spec, TargetSpec::Pid { pid: u32::MAX, tree: false });
        assert_eq!(spec.resolve(), Err(TargetError::NoSuchProcess(u32::MAX)));
        let cg = TargetSpec::parse("cgroup", "/a//b/").unwrap();
        assert_eq!(cg, TargetSpec::Cgroup { path: "/a/b".into() });
        assert_eq!(cg.resolve(), Ok(Target::Cgroup { path: "/a/b".into() }));
        assert!(TargetSpec::parse("cgroup", "/").is_err());
        assert_eq!(TargetSpec::parse("name", "x").unwrap().to_string(), "name x");
    }

    #[test]
    fn caps_parse_and_match() {
        assert_eq!(TargetSpec::parse("all", "").unwrap().resolve(), Ok(Target::All));
        assert!(TargetSpec::parse("all", "x").is_err());
        let alice = TargetSpec::parse("user", "1000").unwrap().resolve().unwrap();
        assert_eq!(alice, Target::User { uid: 1000 });
        assert!(alice.matches(&facts("x", "/x", "/")) && alice.is_cap() && Target::All.is_cap());
        assert!(!Target::User { uid: 1001 }.matches(&facts("x", "/x", "/")));
        assert!(!Target::All.matches(&facts("x", "/x", "/")));
        assert_eq!(TargetSpec::parse("user", "root").unwrap().resolve(), Ok(Target::User { uid: 0 }));
        for bad in ["", "01", "4294967295", "99999999999", "Alice", "a b", "-x", &"a".repeat(40), "a\n"] {
            assert!(TargetSpec::parse("user", bad).is_err(), "{bad:?}");
        }
        let e = TargetSpec::parse("user", "no-such-user-xyz").unwrap().resolve().unwrap_err();
        assert!(matches!(e, TargetError::Invalid(_)), "{e}");
        for t in [Target::All, Target::User { uid: 7 }] {
            assert_eq!(t.revalidate(), Ok(t.clone()));
            let s = serde_json::to_string(&t).unwrap();
            assert_eq!(serde_json::from_str::<Target>(&s).unwrap(), t);
        }
    }

    #[test]
    fn serde_round_trip() {
        let t = Target::unit("backup.service").unwrap();
        let s = serde_json::to_string(&t).unwrap();
        assert_eq!(s, r#"{"kind":"unit","unit":"backup.service"}"#);
        assert_eq!(serde_json::from_str::<Target>(&s).unwrap(), t);
    }
}
