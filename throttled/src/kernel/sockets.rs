//! Reaches the sockets of another process through `pidfd_getfd`, so that
//! sockets created before a throttle (or the daemon) existed can be
//! attributed and paced. Needs CAP_SYS_PTRACE for other users' processes.
use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
};

use super::procfs;

fn cvt(r: libc::c_long) -> io::Result<RawFd> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as RawFd)
    }
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let fd = cvt(unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn pidfd_getfd(pidfd: &OwnedFd, target: RawFd) -> io::Result<OwnedFd> {
    let fd = cvt(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0) })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockopt_int(fd: BorrowedFd<'_>, level: i32, name: i32) -> io::Result<i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    let r = unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, (&raw mut v).cast(), &mut len) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(v)
    }
}

/// An IPv4/IPv6 socket of another process, borrowed through a duplicate fd.
pub struct InetSocket {
    pub fd: OwnedFd,
    pub tcp: bool,
    /// Connected to this host (see `is_local_connection`); false if unconnected.
    pub local: bool,
}

/// Local and peer addresses in the kernel's layout, if connected.
fn endpoints(fd: BorrowedFd<'_>) -> Option<(bool, [u32; 4], [u32; 4])> {
    let get = |peer: bool| {
        let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let p = (&raw mut ss).cast();
        let r = unsafe {
            if peer {
                libc::getpeername(fd.as_raw_fd(), p, &mut len)
            } else {
                libc::getsockname(fd.as_raw_fd(), p, &mut len)
            }
        };
        (r == 0).then_some(ss)
    };
    let (l, r) = (get(false)?, get(true)?);
    let words = |ss: &libc::sockaddr_storage| -> (bool, [u32; 4]) {
        if ss.ss_family as i32 == libc::AF_INET6 {
            let a: &libc::sockaddr_in6 = unsafe { &*std::ptr::from_ref(ss).cast() };
            let b = a.sin6_addr.s6_addr;
            let w = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
            (true, [w(0), w(4), w(8), w(12)])
        } else {
            let a: &libc::sockaddr_in = unsafe { &*std::ptr::from_ref(ss).cast() };
            (false, [a.sin_addr.s_addr, 0, 0, 0])
        }
    };
    let ((v6, local), (_, remote)) = (words(&l), words(&r));
    Some((v6, local, remote))
}

/// Calls `f` for every IPv4/IPv6 socket of process `pid`. Returns how many
/// were visited; sockets closed meanwhile are skipped.
pub fn for_each_inet_socket(pid: u32, mut f: impl FnMut(&InetSocket)) -> io::Result<usize> {
    let pidfd = pidfd_open(pid)?;
    let mut n = 0;
    for target in procfs::socket_fds(pid)? {
        let Ok(fd) = pidfd_getfd(&pidfd, target) else {
            continue;
        };
        let domain = sockopt_int(fd.as_fd(), libc::SOL_SOCKET, libc::SO_DOMAIN).unwrap_or(-1);
        if domain != libc::AF_INET && domain != libc::AF_INET6 {
            continue;
        }
        let proto = sockopt_int(fd.as_fd(), libc::SOL_SOCKET, libc::SO_PROTOCOL).unwrap_or(-1);
        let local = endpoints(fd.as_fd()).is_some_and(|(v6, l, r)| throttle_common::is_local_connection(v6, l, r));
        f(&InetSocket { fd, tcp: proto == libc::IPPROTO_TCP, local });
        n += 1;
    }
    Ok(n)
}

fn setsockopt<T>(sock: &InetSocket, level: i32, name: i32, v: &T) -> io::Result<()> {
    let len = std::mem::size_of::<T>() as libc::socklen_t;
    let r = unsafe { libc::setsockopt(sock.fd.as_raw_fd(), level, name, std::ptr::from_ref(v).cast(), len) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The smoothed RTT of a TCP socket, in microseconds.
pub fn rtt_us(sock: &InetSocket) -> io::Result<u32> {
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let r = unsafe {
        libc::getsockopt(sock.fd.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, (&raw mut info).cast(), &mut len)
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(info.tcpi_rtt)
    }
}

/// Clamps a TCP socket's receive window; `None` lifts the clamp (the
/// kernel cannot reset it to "unset" on a connected socket).
pub fn set_window_clamp(sock: &InetSocket, bytes: Option<u32>) -> io::Result<()> {
    let v: libc::c_int = bytes.map_or(i32::MAX, |b| b.min(i32::MAX as u32) as i32);
    setsockopt(sock, libc::IPPROTO_TCP, libc::TCP_WINDOW_CLAMP, &v)
}

/// Caps a TCP socket's pacing rate (bytes/s of payload); `None` removes the cap.
pub fn set_max_pacing_rate(sock: &InetSocket, rate: Option<u64>) -> io::Result<()> {
    setsockopt(sock, libc::SOL_SOCKET, libc::SO_MAX_PACING_RATE, &rate.unwrap_or(u64::MAX))
}

/// `TCP_BPF_SOCK_OPS_CB_FLAGS`: unknown to the kernel's own setsockopt; our
/// `ct_setsockopt` program takes it (see throttle-ebpf).
const TCP_BPF_SOCK_OPS_CB_FLAGS: i32 = 1008;

/// Turns the data path's per-ACK receive-window control on or off for a
/// TCP socket that already exists (new ones get it from `sock_ops`).
pub fn set_window_control(sock: &InetSocket, on: bool) -> io::Result<()> {
    setsockopt(sock, libc::IPPROTO_TCP, TCP_BPF_SOCK_OPS_CB_FLAGS, &libc::c_int::from(on))
}
