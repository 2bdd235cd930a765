//! Process facts from /proc: identity (pid + start time), names, threads,
//! children and socket descriptors.
use std::{fs, io};

/// A process identity that survives pid reuse: a reused pid has a new start time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct ProcIdent {
    pub pid: u32,
    /// Start time in clock ticks after boot (field 22 of /proc/PID/stat).
    pub start_time: u64,
}

const PF_KTHREAD: u64 = 0x0020_0000;

struct Stat {
    /// R, S, D, ... Z (zombie), X (dead).
    state: char,
    flags: u64,
    start_time: u64,
}

fn stat(pid: u32) -> io::Result<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // comm may contain spaces and parentheses: fields start after the last ')'.
    let rest = text.rsplit_once(')').map(|(_, r)| r).ok_or_else(|| bad(pid))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).ok_or_else(|| bad(pid));
    // After ')': state(0) ppid(1) ... flags(6) ... starttime(19).
    let state = f.first().and_then(|s| s.chars().next()).ok_or_else(|| bad(pid))?;
    Ok(Stat { state, flags: num(6)?, start_time: num(19)? })
}

fn bad(pid: u32) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("unparsable /proc/{pid}/stat"))
}

/// A live process's identity. A zombie (or a dead task) has none: it has
/// exited, its exit event is past, and nothing may be kept for it.
pub fn ident(pid: u32) -> io::Result<ProcIdent> {
    let st = stat(pid)?;
    if matches!(st.state, 'Z' | 'X' | 'x') {
        return Err(io::Error::new(io::ErrorKind::NotFound, format!("process {pid} has exited (zombie)")));
    }
    Ok(ProcIdent { pid, start_time: st.start_time })
}

/// True while the same process (not a reuse of its pid) is alive: not
/// exited, not a zombie.
pub fn is_alive(id: &ProcIdent) -> bool {
    ident(id.pid).is_ok_and(|now| now == *id)
}

pub fn is_kernel_thread(pid: u32) -> io::Result<bool> {
    Ok(stat(pid)?.flags & PF_KTHREAD != 0)
}

/// The thread-group id of `pid` (a thread id resolves to its process).
pub fn tgid(pid: u32) -> io::Result<u32> {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines().find_map(|l| l.strip_prefix("Tgid:")).and_then(|v| v.trim().parse().ok()).ok_or_else(|| bad(pid))
}

/// The real uid owning `pid` (who may limit it with `limit-own`).
pub fn uid(pid: u32) -> io::Result<u32> {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = text.lines().find_map(|l| l.strip_prefix("Uid:")).ok_or_else(|| bad(pid))?;
    line.split_whitespace().next().and_then(|v| v.parse().ok()).ok_or_else(|| bad(pid))
}

pub fn comm(pid: u32) -> io::Result<String> {
    Ok(fs::read_to_string(format!("/proc/{pid}/comm"))?.trim_end().to_string())
}

/// The executable path, without the " (deleted)" mark of a replaced binary.
pub fn exe(pid: u32) -> Option<String> {
    let p = fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let s = p.to_string_lossy();
    Some(s.strip_suffix(" (deleted)").unwrap_or(&s).to_string())
}

/// The cgroup v2 path (the `0::` line), e.g. `/system.slice/x.service`.
pub fn cgroup(pid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines().find_map(|l| l.strip_prefix("0::")).map(str::to_string)
}

/// Every process id (thread-group leaders only).
pub fn all_pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten().filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok())).collect()
}

/// Direct children of every thread of `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for t in tasks.flatten() {
        if let Ok(s) = fs::read_to_string(t.path().join("children")) {
            out.extend(s.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
        }
    }
    out
}

/// `pid` and all its descendants, parents before children.
pub fn tree(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() && out.len() < 100_000 {
        for k in children(out[i]) {
            if !out.contains(&k) {
                out.push(k);
            }
        }
        i += 1;
    }
    out
}

/// Descriptor numbers of `pid` that refer to sockets.
pub fn socket_fds(pid: u32) -> io::Result<Vec<i32>> {
    let mut out = Vec::new();
    for e in fs::read_dir(format!("/proc/{pid}/fd"))?.flatten() {
        let is_socket = fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:["));
        if let Some(fd) = e.file_name().to_str().and_then(|n| n.parse().ok()).filter(|_| is_socket) {
            out.push(fd);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_identity() {
        let me = std::process::id();
        let id = ident(me).unwrap();
        assert!(is_alive(&id));
        assert!(!is_alive(&ProcIdent { start_time: id.start_time + 1, ..id }));
        assert_eq!(tgid(me).unwrap(), me);
        assert!(!is_kernel_thread(me).unwrap());
        assert!(tree(me).contains(&me));
    }

    #[test]
    fn kthreadd_is_a_kernel_thread() {
        if let Ok(true) = comm(2).map(|c| c == "kthreadd") {
            assert!(is_kernel_thread(2).unwrap());
        }
    }

    #[test]
    fn a_zombie_has_no_identity() {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id();
        let live = std::time::Instant::now();
        // Not reaped: once it exits it stays a zombie until the wait below.
        while comm(pid).is_ok() && ident(pid).is_ok() && live.elapsed().as_secs() < 5 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(comm(pid).is_ok(), "the zombie is still in /proc");
        assert!(ident(pid).is_err(), "a zombie must have no identity");
        let _ = c.wait();
    }

    #[test]
    fn child_is_found_in_tree() {
        let mut c = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let t = tree(std::process::id());
        let _ = c.kill();
        let _ = c.wait();
        assert!(t.contains(&c.id()));
    }
}
