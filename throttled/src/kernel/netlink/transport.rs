//! One NETLINK_ROUTE socket, used synchronously: send a request, read the
//! datagrams that answer it (matched by sequence number) until the reply is
//! complete. No runtime and no background task: a request is a `send` and
//! one `recv` per reply datagram, under a lock so that threads sharing the
//! connection never read each other's replies.
use std::{
    fs::File,
    io,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use netlink_packet_core::{
    ErrorMessage, NetlinkBuffer, NetlinkMessage, NetlinkPayload, NlasIterator, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP,
    NLMSG_OVERRUN, NLM_F_ACK, NLM_F_DUMP, NLM_F_MULTIPART, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::{NetlinkError, Result};

/// A reply that never completes (the kernel lost it, or it was undecodable
/// in a way that hides its end) fails instead of blocking forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const NLMSGERR_ATTR_MSG: u16 = 1;

struct Conn {
    socket: Socket,
    seq: u32,
}

struct Inner {
    conn: Mutex<Conn>,
    netns: Option<PathBuf>,
    /// Error replies carry the kernel's text (capped ack + extended ack).
    extack: bool,
}

/// An rtnetlink connection; cheap to clone, usable from several threads
/// (their requests take turns).
#[derive(Clone)]
pub struct Netlink {
    inner: Arc<Inner>,
}

impl Netlink {
    /// Connects in the caller's network namespace.
    pub fn new() -> Result<Self> {
        Self::open(None)
    }

    /// Connects in the network namespace of `netns` (e.g. `/run/netns/NAME`
    /// or `/proc/PID/ns/net`). Event subscriptions follow it there.
    pub fn new_in_netns(netns: impl AsRef<Path>) -> Result<Self> {
        Self::open(Some(netns.as_ref().to_path_buf()))
    }

    fn open(netns: Option<PathBuf>) -> Result<Self> {
        let socket = route_socket(netns.as_deref())?;
        let extack = socket.set_cap_ack(true).is_ok() && socket.set_ext_ack(true).is_ok();
        socket.connect(&SocketAddr::new(0, 0))?;
        // Non-blocking, so the wait for a reply can have a deadline.
        socket.set_non_blocking(true)?;
        let conn = Mutex::new(Conn { socket, seq: 0 });
        Ok(Self { inner: Arc::new(Inner { conn, netns, extack }) })
    }

    /// The namespace this connection was opened in (`None`: the caller's).
    pub(super) fn netns(&self) -> Option<&Path> {
        self.inner.netns.as_deref()
    }

    /// Sends one request and collects the replies; any NACK is an error.
    pub(super) fn request(
        &self,
        op: &'static str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        // A panic elsewhere cannot leave the socket inconsistent: stale
        // replies are told apart by their sequence number.
        let mut conn = self.inner.conn.lock().unwrap_or_else(|e| e.into_inner());
        conn.seq = conn.seq.wrapping_add(1);
        let seq = conn.seq;
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | flags;
        req.header.sequence_number = seq;
        req.finalize();
        let mut buf = vec![0; req.buffer_len()];
        req.serialize(&mut buf);
        conn.socket.send(&buf, 0)?;
        let mut reply =
            Reply { op, seq, expect_ack: flags & NLM_F_ACK != 0, extack: self.inner.extack, out: Vec::new() };
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            let datagram = match conn.socket.recv_from_full() {
                Ok((d, _)) => d,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !wait_readable(&conn.socket, deadline)? {
                        return Err(io::Error::from_raw_os_error(libc::ETIMEDOUT).into());
                    }
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if reply.take(&datagram)? {
                return Ok(reply.out);
            }
        }
    }

    pub(super) fn ack(&self, op: &'static str, msg: RouteNetlinkMessage, flags: u16) -> Result<()> {
        self.request(op, msg, NLM_F_ACK | flags).map(drop)
    }

    pub(super) fn dump(&self, op: &'static str, msg: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>> {
        self.request(op, msg, NLM_F_DUMP)
    }
}

/// The replies to one request, gathered datagram by datagram.
struct Reply {
    op: &'static str,
    seq: u32,
    expect_ack: bool,
    extack: bool,
    out: Vec<RouteNetlinkMessage>,
}

impl Reply {
    /// Takes this request's messages from `datagram`; true once complete:
    /// on the ACK, NLMSG_DONE, or a lone (not multipart) answer when no ACK
    /// was asked for. Anything else (an earlier request's late replies) is
    /// skipped.
    fn take(&mut self, mut datagram: &[u8]) -> Result<bool> {
        while let Ok(buf) = NetlinkBuffer::new_checked(datagram) {
            let len = buf.length() as usize;
            if buf.sequence_number() == self.seq && self.message(buf.message_type(), buf.flags(), &datagram[..len])? {
                return Ok(true);
            }
            let next = (len + 3) & !3;
            if next == 0 || next >= datagram.len() {
                break;
            }
            datagram = &datagram[next..];
        }
        Ok(false)
    }

    fn message(&mut self, kind: u16, flags: u16, bytes: &[u8]) -> Result<bool> {
        match kind {
            NLMSG_NOOP => Ok(false),
            NLMSG_DONE | NLMSG_OVERRUN => Ok(true),
            NLMSG_ERROR => match NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes).map(|m| m.payload) {
                Ok(NetlinkPayload::Error(e)) if e.code.is_some() => Err(kernel_error(self.op, &e, self.extack)),
                Ok(_) => Ok(true),
                Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", self.op)).into()),
            },
            _ => {
                match NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes).map(|m| m.payload) {
                    Ok(NetlinkPayload::InnerMessage(m)) => self.out.push(m),
                    Ok(_) => {}
                    // One attribute the crate cannot decode must not cost
                    // the rest of the reply.
                    Err(e) => tracing::debug!(op = self.op, error = %e, "undecodable netlink reply skipped"),
                }
                Ok(flags & NLM_F_MULTIPART == 0 && !self.expect_ack)
            }
        }
    }
}

/// A NETLINK_ROUTE socket in `netns`, or in ours. A socket stays in the
/// namespace it was opened in, so a short-lived thread enters the namespace
/// just to open it.
pub(super) fn route_socket(netns: Option<&Path>) -> Result<Socket> {
    let Some(path) = netns else { return Ok(Socket::new(NETLINK_ROUTE)?) };
    let file = File::open(path)?;
    let opened = std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: plain syscall on a descriptor that outlives the call.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Socket::new(NETLINK_ROUTE)
        })
        .join()
    });
    Ok(opened.map_err(|_| io::Error::other("netns thread panicked"))??)
}

/// False once `deadline` passes with nothing to read.
pub(super) fn wait_readable(socket: &Socket, deadline: Instant) -> Result<bool> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = i32::try_from(left.as_nanos().div_ceil(1_000_000)).unwrap_or(i32::MAX);
        let mut pfd = libc::pollfd { fd: socket.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call.
        match unsafe { libc::poll(&mut pfd, 1, ms) } {
            n if n > 0 => return Ok(true),
            0 => return Ok(false),
            _ => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err.into());
                }
            }
        }
    }
}

fn kernel_error(op: &'static str, err: &ErrorMessage, extack: bool) -> NetlinkError {
    let errno = -err.raw_code();
    let strerror = io::Error::from_raw_os_error(errno).to_string();
    let mut msg = strerror.split(" (os error").next().unwrap_or_default().to_string();
    if let Some(text) = extack.then(|| extack_text(&err.header)).flatten() {
        msg = format!("{msg}: {text}");
    }
    NetlinkError::Kernel { op, errno, msg }
}

/// With a capped ack the echoed request is only its 16-byte header; the
/// extended-ack TLVs follow it.
fn extack_text(echoed: &[u8]) -> Option<String> {
    let nla = NlasIterator::new(echoed.get(16..)?).flatten().find(|n| n.kind() == NLMSGERR_ATTR_MSG)?;
    Some(String::from_utf8_lossy(nla.value()).trim_end_matches('\0').to_string())
}
