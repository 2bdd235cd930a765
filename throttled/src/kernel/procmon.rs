//! Fork, exec and exit events from the proc connector (NETLINK_CONNECTOR,
//! CN_IDX_PROC). Only the initial network namespace receives them.
use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

const NETLINK_CONNECTOR: i32 = 11;
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_EVENT_FORK: u32 = 0x1;
const PROC_EVENT_EXEC: u32 = 0x2;
const PROC_EVENT_UID: u32 = 0x4;
const PROC_EVENT_COMM: u32 = 0x200;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;
const NLMSG_HDRLEN: usize = 16;
const CN_MSG_LEN: usize = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcEvent {
    /// A new process (threads are not reported).
    Fork {
        parent_tgid: u32,
        child_tgid: u32,
    },
    Exec {
        tgid: u32,
    },
    Comm {
        tgid: u32,
    },
    /// A process changed its user ids (a `user` cap may now cover it).
    Uid {
        tgid: u32,
    },
    /// A whole process ended (its thread-group leader exited).
    Exit {
        tgid: u32,
    },
    /// The kernel dropped events (ENOBUFS): the caller must rescan /proc.
    Overrun,
}

pub struct ProcMonitor {
    fd: OwnedFd,
}

impl ProcMonitor {
    /// Subscribes; `timeout` bounds each `recv` so a reader thread can stop.
    pub fn open(timeout: Duration) -> io::Result<Self> {
        let raw = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, NETLINK_CONNECTOR) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = CN_IDX_PROC;
        let len = std::mem::size_of::<libc::sockaddr_nl>() as u32;
        if unsafe { libc::bind(raw, (&raw const addr).cast(), len) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let tv = libc::timeval { tv_sec: timeout.as_secs() as i64, tv_usec: timeout.subsec_micros() as i64 };
        let tvlen = std::mem::size_of::<libc::timeval>() as u32;
        unsafe { libc::setsockopt(raw, libc::SOL_SOCKET, libc::SO_RCVTIMEO, (&raw const tv).cast(), tvlen) };
        let bufsz: libc::c_int = 4 << 20;
        unsafe { libc::setsockopt(raw, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, (&raw const bufsz).cast(), 4) };
        let me = ProcMonitor { fd };
        me.send_listen()?;
        Ok(me)
    }

    fn send_listen(&self) -> io::Result<()> {
        let total = NLMSG_HDRLEN + CN_MSG_LEN + 4;
        let mut msg = Vec::with_capacity(total);
        msg.extend_from_slice(&(total as u32).to_ne_bytes()); // nlmsg_len
        msg.extend_from_slice(&(libc::NLMSG_DONE as u16).to_ne_bytes());
        msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
        msg.extend_from_slice(&0u32.to_ne_bytes()); // seq
        msg.extend_from_slice(&std::process::id().to_ne_bytes());
        msg.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
        msg.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes()); // seq
        msg.extend_from_slice(&0u32.to_ne_bytes()); // ack
        msg.extend_from_slice(&4u16.to_ne_bytes()); // len
        msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
        msg.extend_from_slice(&PROC_CN_MCAST_LISTEN.to_ne_bytes());
        let r = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Waits for the next datagram. `Ok(None)` on timeout.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<Vec<ProcEvent>>> {
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
                Some(libc::ENOBUFS) => Ok(Some(vec![ProcEvent::Overrun])),
                _ => Err(e),
            };
        }
        Ok(Some(parse(&buf[..n as usize])))
    }
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    b.get(off..off + 4).map(|s| u32::from_ne_bytes(s.try_into().unwrap_or_default()))
}

/// Parses the netlink messages in one datagram.
pub fn parse(mut b: &[u8]) -> Vec<ProcEvent> {
    let mut out = Vec::new();
    while let Some(len) = u32_at(b, 0).map(|l| l as usize).filter(|l| *l >= NLMSG_HDRLEN && *l <= b.len()) {
        if let Some(ev) = parse_event(&b[NLMSG_HDRLEN + CN_MSG_LEN.min(len - NLMSG_HDRLEN)..len]) {
            out.push(ev);
        }
        let advance = ((len + 3) & !3).min(b.len());
        b = &b[advance..];
        if b.len() < NLMSG_HDRLEN {
            break;
        }
    }
    out
}

/// `struct proc_event`: what, cpu, timestamp (u64), then the union at 16.
fn parse_event(e: &[u8]) -> Option<ProcEvent> {
    let what = u32_at(e, 0)?;
    let d = |i: usize| u32_at(e, 16 + 4 * i);
    match what {
        PROC_EVENT_FORK => {
            let (parent_tgid, child_pid, child_tgid) = (d(1)?, d(2)?, d(3)?);
            (child_pid == child_tgid && child_tgid != parent_tgid)
                .then_some(ProcEvent::Fork { parent_tgid, child_tgid })
        }
        PROC_EVENT_EXEC => Some(ProcEvent::Exec { tgid: d(1)? }),
        PROC_EVENT_COMM => Some(ProcEvent::Comm { tgid: d(1)? }),
        PROC_EVENT_UID => Some(ProcEvent::Uid { tgid: d(1)? }),
        PROC_EVENT_EXIT => {
            let (pid, tgid) = (d(0)?, d(1)?);
            (pid == tgid).then_some(ProcEvent::Exit { tgid })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(what: u32, data: &[u32]) -> Vec<u8> {
        let mut ev = Vec::new();
        ev.extend_from_slice(&what.to_ne_bytes());
        ev.extend_from_slice(&0u32.to_ne_bytes());
        ev.extend_from_slice(&0u64.to_ne_bytes());
        data.iter().for_each(|v| ev.extend_from_slice(&v.to_ne_bytes()));
        let total = NLMSG_HDRLEN + CN_MSG_LEN + ev.len();
        let mut m = (total as u32).to_ne_bytes().to_vec();
        m.resize(NLMSG_HDRLEN + CN_MSG_LEN, 0);
        m.extend(ev);
        m
    }

    #[test]
    fn parses_fork_exit_and_skips_threads() {
        assert_eq!(
            parse(&msg(PROC_EVENT_FORK, &[10, 10, 11, 11])),
            vec![ProcEvent::Fork { parent_tgid: 10, child_tgid: 11 }]
        );
        assert_eq!(parse(&msg(PROC_EVENT_FORK, &[10, 10, 12, 10])), vec![]);
        assert_eq!(parse(&msg(PROC_EVENT_EXIT, &[11, 11, 0, 0])), vec![ProcEvent::Exit { tgid: 11 }]);
        assert_eq!(parse(&msg(PROC_EVENT_EXIT, &[12, 11, 0, 0])), vec![]);
        assert_eq!(parse(&[1, 2, 3]), vec![]);
    }

    #[test]
    fn live_fork_and_exit_are_seen() {
        if unsafe { libc::geteuid() } != 0 {
            return throttle_testkit::require_root("proc connector");
        }
        let mon = ProcMonitor::open(Duration::from_millis(200)).unwrap();
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let child = c.id();
        c.wait().unwrap();
        let mut buf = vec![0u8; 8192];
        let (mut fork, mut exit) = (false, false);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !(fork && exit) && std::time::Instant::now() < deadline {
            for ev in mon.recv(&mut buf).unwrap().unwrap_or_default() {
                fork |= matches!(ev, ProcEvent::Fork { child_tgid, .. } if child_tgid == child);
                exit |= ev == ProcEvent::Exit { tgid: child };
            }
        }
        assert!(fork && exit, "fork={fork} exit={exit}");
    }
}
