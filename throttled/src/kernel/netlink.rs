//! Synchronous, typed rtnetlink access for the traffic-control backends:
//! links, default routes, qdiscs, HTB classes and link/route events.
//!
//! Everything goes over NETLINK_ROUTE; nothing here runs `tc` or `ip`.
//! [`Netlink`] owns a current-thread tokio runtime and blocks on each request,
//! so do not call it from inside an async runtime (use `spawn_blocking`).
//!
//! Units: rates are bytes per second, bursts are bytes, tc handles and class
//! ids are `major << 16 | minor` as in the kernel (see [`tc_handle`]).
use std::{
    collections::{HashMap, VecDeque},
    fs::File,
    io,
    os::fd::{AsRawFd, FromRawFd, IntoRawFd},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use netlink_packet_core::{
    parse_u32, parse_u64, DefaultNla, Emitable, ErrorMessage, NetlinkBuffer, NetlinkMessage, NetlinkPayload, Nla,
    NlasIterator, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::{
    link::{LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage},
    route::{RouteAttribute, RouteHeader, RouteMessage, RouteType},
    tc::{TcAttribute, TcMessage, TcOption, TcStats2},
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, TokioSocket};
use rtnetlink::{LinkIfb, LinkUnspec, MulticastGroup};

/// Parent of a device's root qdisc.
pub const TC_H_ROOT: u32 = 0xFFFF_FFFF;
/// Parent of the clsact (and ingress) qdisc.
pub const TC_H_CLSACT: u32 = 0xFFFF_FFF1;
/// Handle of the clsact qdisc, `ffff:`.
pub const CLSACT_HANDLE: u32 = 0xFFFF_0000;

const TCA_OPTIONS: u16 = 2;
const TCA_STATS_PKT64: u16 = 8;
const TCA_HTB_PARMS: u16 = 1;
const TCA_HTB_INIT: u16 = 2;
const TCA_HTB_RATE64: u16 = 6;
const TCA_HTB_CEIL64: u16 = 7;
const TC_HTB_PROTOVER: u32 = 3;
const HTB_RATE2QUANTUM: u32 = 10;
const TC_LINKLAYER_ETHERNET: u8 = 1;
const NLMSGERR_ATTR_MSG: u16 = 1;

/// netlink-proto drops a datagram it cannot decode, which would otherwise
/// leave the request waiting forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const EVENT_RCVBUF: i32 = 1 << 20;

/// `major:minor` as one tc handle.
pub const fn tc_handle(major: u16, minor: u16) -> u32 {
    (major as u32) << 16 | minor as u32
}

pub type Result<T> = std::result::Result<T, NetlinkError>;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The kernel refused `op`; `msg` has strerror and the kernel's own text.
    #[error("{op}: {msg}")]
    Kernel { op: &'static str, errno: i32, msg: String },
    #[error("not found: {0}")]
    NotFound(String),
    /// Rejected before reaching the kernel.
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("netlink: {0}")]
    Io(#[from] io::Error),
    /// Something that is not ours is in the way; we leave it alone.
    #[error("{0}")]
    Foreign(String),
}

impl NetlinkError {
    /// The errno behind the error (ENOENT for `NotFound`, EINVAL for `Invalid`).
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Kernel { errno, .. } => Some(*errno),
            Self::NotFound(_) => Some(libc::ENOENT),
            Self::Invalid(_) => Some(libc::EINVAL),
            Self::Io(e) => e.raw_os_error(),
            Self::Foreign(_) => Some(libc::EEXIST),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// IFLA_INFO_KIND ("veth", "ifb", ...); `None` for physical devices.
    pub kind: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QdiscInfo {
    pub ifindex: u32,
    pub handle: u32,
    pub parent: u32,
    pub kind: String,
    /// TCA_OPTIONS payload (nested attributes included) as dumped; for the
    /// kinds the crate models (fq_codel, ingress) it is re-encoded, equal in
    /// meaning.
    pub options: Vec<u8>,
}

impl QdiscInfo {
    /// True for the root qdisc the kernel attaches by itself (noqueue,
    /// pfifo_fast, mq, fq_codel per `net.core.default_qdisc`): those have
    /// handle 0, while any qdisc added by a user gets a non-zero major.
    /// Deleting whatever root replaced it brings such a default back.
    pub fn is_default_root(&self) -> bool {
        self.parent == TC_H_ROOT && self.handle == 0
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// Bytes and packets sent by the class (its children included).
    pub bytes: u64,
    pub packets: u64,
    /// Packets dropped by the class.
    pub drops: u64,
    /// Times the class was over its rate and had to wait or borrow.
    pub overlimits: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassInfo {
    pub classid: u32,
    pub parent: u32,
    pub kind: String,
    pub stats: ClassStats,
}

/// Default HTB burst for `rate` (bytes/s): 1 ms at that rate, at least one
/// full-size frame. Returned in bytes.
pub fn default_burst(rate: u64) -> u32 {
    u32::try_from(rate / 1000).unwrap_or(u32::MAX).max(1600)
}

struct Inner {
    rt: tokio::runtime::Runtime,
    handle: rtnetlink::Handle,
    netns: Option<PathBuf>,
    /// Error replies carry the kernel's text (capped ack + extended ack).
    extack: bool,
}

/// An rtnetlink connection; cheap to clone, usable from several threads.
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
        socket.set_non_blocking(true)?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()?;
        let handle = {
            let _ctx = rt.enter();
            // SAFETY: into_raw_fd hands over the only owner of the descriptor.
            let socket = unsafe { TokioSocket::from_raw_fd(socket.into_raw_fd()) };
            let (conn, handle, _unsolicited) = rtnetlink::from_socket(socket);
            rt.spawn(conn);
            handle
        };
        Ok(Self { inner: Arc::new(Inner { rt, handle, netns, extack }) })
    }

    /// Sends one request and collects the replies; any NACK is an error.
    fn request(&self, op: &'static str, msg: RouteNetlinkMessage, flags: u16) -> Result<Vec<RouteNetlinkMessage>> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | flags;
        let mut handle = self.inner.handle.clone();
        let extack = self.inner.extack;
        let replies = async move {
            let mut stream = handle.request(req).map_err(|e| io::Error::other(format!("{op}: {e}")))?;
            let mut out = Vec::new();
            while let Some(reply) = stream.next().await {
                match reply.payload {
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    NetlinkPayload::Error(e) if e.code.is_some() => return Err(kernel_error(op, &e, extack)),
                    _ => {}
                }
            }
            Ok(out)
        };
        let timed = self.inner.rt.block_on(async { tokio::time::timeout(REQUEST_TIMEOUT, replies).await });
        timed.unwrap_or_else(|_| Err(io::Error::from_raw_os_error(libc::ETIMEDOUT).into()))
    }

    fn ack(&self, op: &'static str, msg: RouteNetlinkMessage, flags: u16) -> Result<()> {
        self.request(op, msg, NLM_F_ACK | flags).map(drop)
    }

    fn dump(&self, op: &'static str, msg: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>> {
        self.request(op, msg, NLM_F_DUMP)
    }

    // ---- links ----

    pub fn link_index(&self, name: &str) -> Result<Option<u32>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        Ok(self.get_link(msg)?.map(|l| l.index))
    }

    pub fn link(&self, ifindex: u32) -> Result<Option<LinkInfo>> {
        let mut msg = LinkMessage::default();
        msg.header.index = ifindex;
        self.get_link(msg)
    }

    fn get_link(&self, msg: LinkMessage) -> Result<Option<LinkInfo>> {
        match self.request("RTM_GETLINK", RouteNetlinkMessage::GetLink(msg), 0) {
            Ok(replies) => Ok(replies.iter().find_map(as_link).map(link_info)),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn links(&self) -> Result<Vec<LinkInfo>> {
        let replies = self.dump("RTM_GETLINK", RouteNetlinkMessage::GetLink(LinkMessage::default()))?;
        Ok(replies.iter().filter_map(as_link).map(link_info).collect())
    }

    /// Creates IFB device `name`, up, and returns its ifindex. Fails with
    /// EEXIST if any link already has that name: an existing device may be
    /// someone else's, so it is never reused.
    pub fn create_ifb(&self, name: &str) -> Result<u32> {
        let msg = LinkIfb::new(name).up().build();
        self.ack("RTM_NEWLINK", RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)?;
        self.link_index(name)?.ok_or_else(|| NetlinkError::NotFound(format!("link {name} vanished after creation")))
    }

    pub fn delete_link(&self, ifindex: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = ifindex;
        self.ack("RTM_DELLINK", RouteNetlinkMessage::DelLink(msg), 0)
    }

    pub fn set_link_up(&self, ifindex: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(ifindex).up().build();
        self.ack("RTM_SETLINK", RouteNetlinkMessage::SetLink(msg), 0)
    }

    // ---- routes ----

    /// Sorted ifindexes that carry a unicast default route, IPv4 or IPv6, in
    /// the main table (every leg of a multipath route counts). Routes through
    /// nexthop objects (`nhid`) name no device and are not resolved.
    pub fn default_route_interfaces(&self) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut msg = RouteMessage::default();
            msg.header.address_family = family;
            for reply in self.dump("RTM_GETROUTE", RouteNetlinkMessage::GetRoute(msg))? {
                match reply {
                    RouteNetlinkMessage::NewRoute(r) if is_main_default(&r) => out.extend(route_devices(&r)),
                    _ => {}
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    // ---- qdiscs ----

    pub fn qdiscs(&self, ifindex: u32) -> Result<Vec<QdiscInfo>> {
        let msg = tc_message(ifindex, 0, 0);
        let replies = self.dump("RTM_GETQDISC", RouteNetlinkMessage::GetQueueDiscipline(msg))?;
        let mine = replies.iter().filter_map(|r| match r {
            RouteNetlinkMessage::NewQueueDiscipline(m) if m.header.index as u32 == ifindex => Some(m),
            _ => None,
        });
        Ok(mine.map(qdisc_info).collect())
    }

    /// `None` for a device that was never up: its builtin noop root is not
    /// dumped, and like a default root it comes back by deleting ours.
    pub fn root_qdisc(&self, ifindex: u32) -> Result<Option<QdiscInfo>> {
        Ok(self.qdiscs(ifindex)?.into_iter().find(|q| q.parent == TC_H_ROOT))
    }

    /// Makes HTB `major:` the root qdisc, replacing the current root (save it
    /// first with [`Netlink::root_qdisc`]). Unclassified traffic goes to class
    /// `major:default_minor`. Fails with EINVAL if the root already has
    /// handle `major:` (the kernel would try to change it in place).
    pub fn add_htb_root(&self, ifindex: u32, major: u16, default_minor: u16) -> Result<()> {
        if major == 0 {
            return Err(NetlinkError::Invalid("HTB root major must be non-zero".into()));
        }
        let glob = [TC_HTB_PROTOVER, HTB_RATE2QUANTUM, default_minor.into(), 0, 0];
        let options = nest(&[DefaultNla::new(TCA_HTB_INIT, glob.iter().flat_map(|v| v.to_ne_bytes()).collect())]);
        let msg = qdisc_message(ifindex, tc_handle(major, 0), TC_H_ROOT, "htb", options);
        self.ack("RTM_NEWQDISC", RouteNetlinkMessage::NewQueueDiscipline(msg), NLM_F_CREATE | NLM_F_REPLACE)
    }

    /// Deletes the root qdisc; the kernel then re-attaches the device's
    /// default. A default root (nothing to delete) is not an error.
    pub fn delete_root_qdisc(&self, ifindex: u32) -> Result<()> {
        let msg = tc_message(ifindex, 0, TC_H_ROOT);
        match self.ack("RTM_DELQDISC", RouteNetlinkMessage::DelQueueDiscipline(msg), 0) {
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(()),
            other => other,
        }
    }

    /// Puts back a root qdisc saved with [`Netlink::root_qdisc`]: same kind,
    /// handle and options. A default root comes back by deleting ours. Only
    /// the root itself is restored, not classes, child qdiscs or filters a
    /// classful root had.
    pub fn restore_qdisc(&self, saved: &QdiscInfo) -> Result<()> {
        if saved.parent != TC_H_ROOT {
            return Err(NetlinkError::Invalid(format!("qdisc {:x} is not a root qdisc", saved.handle)));
        }
        if saved.is_default_root() {
            return self.delete_root_qdisc(saved.ifindex);
        }
        // Same handle: the kernel would change the current qdisc in place
        // (keeping its classes) or refuse a different kind.
        if self.root_qdisc(saved.ifindex)?.is_some_and(|cur| cur.handle == saved.handle) {
            self.delete_root_qdisc(saved.ifindex)?;
        }
        let msg = qdisc_message(saved.ifindex, saved.handle, TC_H_ROOT, &saved.kind, saved.options.clone());
        self.ack("RTM_NEWQDISC", RouteNetlinkMessage::NewQueueDiscipline(msg), NLM_F_CREATE | NLM_F_REPLACE)
    }

    /// Adds a clsact qdisc. EEXIST if one (or an ingress qdisc) is there
    /// already: it is someone else's, so do not delete it later.
    pub fn add_clsact(&self, ifindex: u32) -> Result<()> {
        let msg = qdisc_message(ifindex, CLSACT_HANDLE, TC_H_CLSACT, "clsact", Vec::new());
        self.ack("RTM_NEWQDISC", RouteNetlinkMessage::NewQueueDiscipline(msg), NLM_F_CREATE | NLM_F_EXCL)
    }

    /// Deletes the clsact qdisc with its filters; an ingress qdisc is refused
    /// (EINVAL).
    pub fn delete_clsact(&self, ifindex: u32) -> Result<()> {
        let msg = qdisc_message(ifindex, CLSACT_HANDLE, TC_H_CLSACT, "clsact", Vec::new());
        self.ack("RTM_DELQDISC", RouteNetlinkMessage::DelQueueDiscipline(msg), 0)
    }

    /// Puts a `bfifo` of `limit` bytes under class `parent` (replacing the
    /// default FIFO of txqueuelen packets), with `handle`.
    pub fn set_bfifo_leaf(&self, ifindex: u32, parent: u32, handle: u32, limit: u32) -> Result<()> {
        let msg = qdisc_message(ifindex, handle, parent, "bfifo", limit.to_ne_bytes().to_vec());
        self.ack("RTM_NEWQDISC", RouteNetlinkMessage::NewQueueDiscipline(msg), NLM_F_CREATE | NLM_F_REPLACE)
    }

    // ---- HTB classes ----

    /// Adds HTB class `classid` under `parent` (a class id, or the HTB qdisc
    /// handle `major:0` for a top-level class). `rate` is guaranteed and
    /// `ceil` the most it may borrow up to, both bytes/s with
    /// `0 < rate <= ceil`; `burst` is bytes sent at full speed (used for both
    /// rate and ceil buckets, see [`default_burst`]). EEXIST if it exists.
    pub fn add_htb_class(
        &self,
        ifindex: u32,
        classid: u32,
        parent: u32,
        rate: u64,
        ceil: u64,
        burst: u32,
    ) -> Result<()> {
        let options = htb_class_options(rate, ceil, burst)?;
        self.send_class(ifindex, classid, parent, options, NLM_F_CREATE | NLM_F_EXCL)
    }

    /// Changes an existing class in place, without resetting its counters or
    /// dropping its queue. Same units as [`Netlink::add_htb_class`]; ENOENT if
    /// the class does not exist.
    pub fn change_htb_class(
        &self,
        ifindex: u32,
        classid: u32,
        parent: u32,
        rate: u64,
        ceil: u64,
        burst: u32,
    ) -> Result<()> {
        let options = htb_class_options(rate, ceil, burst)?;
        self.send_class(ifindex, classid, parent, options, 0)
    }

    fn send_class(&self, ifindex: u32, classid: u32, parent: u32, options: Vec<u8>, flags: u16) -> Result<()> {
        let msg = qdisc_message(ifindex, classid, parent, "htb", options);
        self.ack("RTM_NEWTCLASS", RouteNetlinkMessage::NewTrafficClass(msg), flags)
    }

    /// EBUSY while the class has children or filters point at it.
    pub fn delete_class(&self, ifindex: u32, classid: u32) -> Result<()> {
        let msg = tc_message(ifindex, classid, 0);
        self.ack("RTM_DELTCLASS", RouteNetlinkMessage::DelTrafficClass(msg), 0)
    }

    pub fn classes(&self, ifindex: u32) -> Result<Vec<ClassInfo>> {
        let msg = tc_message(ifindex, 0, 0);
        let replies = self.dump("RTM_GETTCLASS", RouteNetlinkMessage::GetTrafficClass(msg))?;
        Ok(replies.iter().filter_map(as_class).filter(|m| m.header.index as u32 == ifindex).map(class_info).collect())
    }

    /// Counters of one class. A dump of the device's classes underneath (a
    /// plain RTM_GETTCLASS answers only as a broadcast), so poll many
    /// classes with [`Netlink::classes`] instead.
    pub fn class_stats(&self, ifindex: u32, classid: u32) -> Result<ClassStats> {
        let found = self.classes(ifindex)?.into_iter().find(|c| c.classid == classid);
        found.map(|c| c.stats).ok_or_else(|| NetlinkError::NotFound(format!("class {classid:x} on ifindex {ifindex}")))
    }

    // ---- events ----

    /// Subscribes to link changes, IPv4/IPv6 route changes and root qdisc
    /// removals in this connection's namespace. Links present now are not
    /// reported as added.
    pub fn subscribe_links(&self) -> Result<LinkEvents> {
        let mut socket = route_socket(self.inner.netns.as_deref())?;
        socket.set_rx_buf_sz(EVENT_RCVBUF)?;
        socket.set_non_blocking(true)?;
        socket.bind_auto()?;
        for group in [MulticastGroup::Link, MulticastGroup::Ipv4Route, MulticastGroup::Ipv6Route, MulticastGroup::Tc] {
            socket.add_membership(group as u32)?;
        }
        // Joined before the dump, so no change can fall between the two.
        let known = self.links()?.into_iter().map(|l| (l.index, (l.name, l.up))).collect();
        Ok(LinkEvents { socket, netlink: self.clone(), known, pending: VecDeque::new() })
    }
}

/// A NETLINK_ROUTE socket in `netns`, or in ours. A socket stays in the
/// namespace it was opened in, so a short-lived thread enters the namespace
/// just to open it.
fn route_socket(netns: Option<&Path>) -> Result<Socket> {
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

fn as_link(m: &RouteNetlinkMessage) -> Option<&LinkMessage> {
    match m {
        RouteNetlinkMessage::NewLink(l) => Some(l),
        _ => None,
    }
}

fn link_info(m: &LinkMessage) -> LinkInfo {
    let mut info =
        LinkInfo { index: m.header.index, name: String::new(), up: m.header.flags.contains(LinkFlags::Up), kind: None };
    for attr in &m.attributes {
        match attr {
            LinkAttribute::IfName(n) => info.name = n.clone(),
            LinkAttribute::LinkInfo(infos) => {
                info.kind = infos.iter().find_map(|i| match i {
                    NlLinkInfo::Kind(k) => Some(k.to_string()),
                    _ => None,
                })
            }
            _ => {}
        }
    }
    info
}

fn is_main_default(r: &RouteMessage) -> bool {
    let table = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Table(t) => Some(*t),
        _ => None,
    });
    let table = table.unwrap_or(r.header.table.into());
    r.header.destination_prefix_length == 0
        && table == u32::from(RouteHeader::RT_TABLE_MAIN)
        && r.header.kind == RouteType::Unicast
}

fn route_devices(r: &RouteMessage) -> Vec<u32> {
    r.attributes
        .iter()
        .flat_map(|a| match a {
            RouteAttribute::Oif(i) => vec![*i],
            RouteAttribute::MultiPath(hops) => hops.iter().map(|h| h.interface_index).collect(),
            _ => vec![],
        })
        .collect()
}

fn tc_message(ifindex: u32, handle: u32, parent: u32) -> TcMessage {
    let mut m = TcMessage::with_index(ifindex as i32);
    m.header.handle = handle.into();
    m.header.parent = parent.into();
    m
}

/// A qdisc or class message with raw TCA_OPTIONS (omitted when empty).
fn qdisc_message(ifindex: u32, handle: u32, parent: u32, kind: &str, options: Vec<u8>) -> TcMessage {
    let mut m = tc_message(ifindex, handle, parent);
    m.attributes.push(TcAttribute::Kind(kind.to_string()));
    if !options.is_empty() {
        m.attributes.push(TcAttribute::Other(DefaultNla::new(TCA_OPTIONS, options)));
    }
    m
}

fn tc_kind(attrs: &[TcAttribute]) -> String {
    attrs
        .iter()
        .find_map(|a| match a {
            TcAttribute::Kind(k) => Some(k.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

fn qdisc_info(m: &TcMessage) -> QdiscInfo {
    let kind = tc_kind(&m.attributes);
    QdiscInfo {
        ifindex: m.header.index as u32,
        handle: m.header.handle.into(),
        parent: m.header.parent.into(),
        options: raw_options(&kind, &m.attributes),
        kind,
    }
}

/// The crate keeps TCA_OPTIONS of kinds it does not model as one opaque
/// attribute (the TCA_OPTIONS itself), so its value is the dumped payload.
fn raw_options(kind: &str, attrs: &[TcAttribute]) -> Vec<u8> {
    let Some(opts) = attrs.iter().find_map(|a| match a {
        TcAttribute::Options(o) => Some(o),
        _ => None,
    }) else {
        return Vec::new();
    };
    let modelled = matches!(kind, "fq_codel" | "ingress");
    match opts.as_slice() {
        [TcOption::Other(nla)] if !modelled => {
            let mut value = vec![0; nla.value_len()];
            nla.emit_value(&mut value);
            value
        }
        _ => {
            let mut value = vec![0; opts.as_slice().buffer_len()];
            opts.as_slice().emit(&mut value);
            value
        }
    }
}

fn nest(attrs: &[DefaultNla]) -> Vec<u8> {
    let mut buf = vec![0; attrs.buffer_len()];
    attrs.emit(&mut buf);
    buf
}

/// TCA_OPTIONS of an HTB class: `struct tc_htb_opt`, plus 64-bit rates
/// when they do not fit its u32 fields (the kernel takes the larger).
fn htb_class_options(rate: u64, ceil: u64, burst: u32) -> Result<Vec<u8>> {
    if rate == 0 || ceil < rate || burst == 0 {
        return Err(NetlinkError::Invalid(format!("HTB rate {rate} ceil {ceil} burst {burst}")));
    }
    let mut parms = Vec::with_capacity(44);
    parms.extend(ratespec(rate));
    parms.extend(ratespec(ceil));
    let (level, prio) = (0u32, 0u32);
    for v in [xmit_ticks(burst, rate), xmit_ticks(burst, ceil), htb_quantum(rate), level, prio] {
        parms.extend(v.to_ne_bytes());
    }
    let mut attrs = vec![DefaultNla::new(TCA_HTB_PARMS, parms)];
    if rate > u64::from(u32::MAX) {
        attrs.push(DefaultNla::new(TCA_HTB_RATE64, rate.to_ne_bytes().to_vec()));
    }
    if ceil > u64::from(u32::MAX) {
        attrs.push(DefaultNla::new(TCA_HTB_CEIL64, ceil.to_ne_bytes().to_vec()));
    }
    Ok(nest(&attrs))
}

/// `struct tc_ratespec` for `rate` bytes/s. An Ethernet link layer makes
/// the kernel compute lengths itself, so no rate table is needed.
fn ratespec(rate: u64) -> [u8; 12] {
    let mut spec = [0u8; 12];
    spec[1] = TC_LINKLAYER_ETHERNET;
    spec[8..].copy_from_slice(&u32::try_from(rate).unwrap_or(u32::MAX).to_ne_bytes());
    spec
}

/// Time to send `bytes` at `rate` bytes/s, in psched ticks (64 ns).
fn xmit_ticks(bytes: u32, rate: u64) -> u32 {
    let ns = u128::from(bytes) * 1_000_000_000 / u128::from(rate);
    u32::try_from(ns >> 6).unwrap_or(u32::MAX)
}

/// What the kernel derives from rate / r2q, set explicitly so it does not
/// log a warning for every class outside 1000..=200000 bytes.
fn htb_quantum(rate: u64) -> u32 {
    (rate / u64::from(HTB_RATE2QUANTUM)).clamp(1000, 200_000) as u32
}

fn as_class(m: &RouteNetlinkMessage) -> Option<&TcMessage> {
    match m {
        RouteNetlinkMessage::NewTrafficClass(c) => Some(c),
        _ => None,
    }
}

fn class_info(m: &TcMessage) -> ClassInfo {
    ClassInfo {
        classid: m.header.handle.into(),
        parent: m.header.parent.into(),
        kind: tc_kind(&m.attributes),
        stats: class_stats_of(&m.attributes),
    }
}

fn class_stats_of(attrs: &[TcAttribute]) -> ClassStats {
    let mut s = ClassStats::default();
    let stats2 = attrs.iter().filter_map(|a| match a {
        TcAttribute::Stats2(v) => Some(v),
        _ => None,
    });
    for st in stats2.flatten() {
        match st {
            TcStats2::Basic(b) => {
                s.bytes = b.bytes;
                s.packets = s.packets.max(b.packets.into());
            }
            TcStats2::Queue(q) => {
                s.drops = q.drops.into();
                s.overlimits = q.overlimits.into();
            }
            // Full packet count once it no longer fits Basic's u32.
            TcStats2::Other(nla) if nla.kind() == TCA_STATS_PKT64 => {
                let mut value = vec![0; nla.value_len()];
                nla.emit_value(&mut value);
                s.packets = s.packets.max(parse_u64(&value).unwrap_or(0));
            }
            _ => {}
        }
    }
    s
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    Added {
        index: u32,
        name: String,
    },
    Removed {
        index: u32,
        name: String,
    },
    /// IFF_UP was set (also sent right after `Added` for a link born up).
    Up {
        index: u32,
    },
    Down {
        index: u32,
    },
    /// A default route of the main table appeared, changed or went away.
    DefaultRouteChanged,
    /// A device's root qdisc was deleted or replaced (by anyone, us too).
    RootQdiscRemoved {
        index: u32,
    },
}

/// Blocking reader of link and default-route events; see
/// [`Netlink::subscribe_links`]. If the kernel drops notifications
/// (ENOBUFS), the link state is re-read and the difference reported, plus
/// `DefaultRouteChanged`.
pub struct LinkEvents {
    socket: Socket,
    netlink: Netlink,
    known: HashMap<u32, (String, bool)>,
    pending: VecDeque<LinkEvent>,
}

impl LinkEvents {
    /// The next event, or `None` if none came within `timeout`.
    pub fn next(&mut self, timeout: Duration) -> Result<Option<LinkEvent>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(Some(event));
            }
            if !self.wait_readable(deadline)? {
                return Ok(None);
            }
            match self.socket.recv_from_full() {
                Ok((buf, _)) => self.parse_datagram(&buf),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => self.resync()?,
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// False once `deadline` passes with nothing to read.
    fn wait_readable(&self, deadline: Instant) -> Result<bool> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = i32::try_from(left.as_nanos().div_ceil(1_000_000)).unwrap_or(i32::MAX);
            let mut pfd = libc::pollfd { fd: self.socket.as_raw_fd(), events: libc::POLLIN, revents: 0 };
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

    /// Walks the raw messages: a decode failure in some attribute the crate
    /// does not expect must not cost an event.
    fn parse_datagram(&mut self, mut buf: &[u8]) {
        while let Ok(msg) = NetlinkBuffer::new_checked(buf) {
            self.on_message(msg.message_type(), msg.payload());
            let next = (msg.length() as usize + 3) & !3;
            if next == 0 || next >= buf.len() {
                break;
            }
            buf = &buf[next..];
        }
    }

    fn on_message(&mut self, kind: u16, payload: &[u8]) {
        match kind {
            libc::RTM_NEWLINK | libc::RTM_DELLINK => self.on_link(kind == libc::RTM_DELLINK, payload),
            libc::RTM_NEWROUTE | libc::RTM_DELROUTE if is_default_route(payload) => {
                self.push(LinkEvent::DefaultRouteChanged)
            }
            libc::RTM_DELQDISC => {
                if let Some(index) = deleted_root_qdisc(payload) {
                    self.push(LinkEvent::RootQdiscRemoved { index });
                }
            }
            _ => {}
        }
    }

    /// `struct ifinfomsg` (16 bytes) then attributes. AF_BRIDGE messages
    /// describe bridge ports, not devices coming or going.
    fn on_link(&mut self, removed: bool, payload: &[u8]) {
        let Some(hdr) = payload.get(..16) else { return };
        if hdr[0] != libc::AF_UNSPEC as u8 {
            return;
        }
        let index = parse_u32(&hdr[4..8]).unwrap_or(0);
        let up = parse_u32(&hdr[8..12]).unwrap_or(0) & libc::IFF_UP as u32 != 0;
        let name = NlasIterator::new(&payload[16..])
            .flatten()
            .find(|n| n.kind() == libc::IFLA_IFNAME)
            .map(|n| String::from_utf8_lossy(n.value()).trim_end_matches('\0').to_string());
        if removed {
            let old = self.known.remove(&index).map(|(n, _)| n);
            let name = name.or(old).unwrap_or_default();
            return self.push(LinkEvent::Removed { index, name });
        }
        match self.known.get_mut(&index) {
            None => {
                let name = name.unwrap_or_default();
                self.known.insert(index, (name.clone(), up));
                self.push(LinkEvent::Added { index, name });
                if up {
                    self.push(LinkEvent::Up { index });
                }
            }
            Some(entry) => {
                if let Some(name) = name {
                    entry.0 = name;
                }
                if entry.1 != up {
                    entry.1 = up;
                    self.push(if up { LinkEvent::Up { index } } else { LinkEvent::Down { index } });
                }
            }
        }
    }

    /// Lost notifications: report the difference to a fresh dump.
    fn resync(&mut self) -> Result<()> {
        let now: HashMap<u32, (String, bool)> =
            self.netlink.links()?.into_iter().map(|l| (l.index, (l.name, l.up))).collect();
        let gone: Vec<_> =
            self.known.iter().filter(|(i, _)| !now.contains_key(i)).map(|(i, (n, _))| (*i, n.clone())).collect();
        for (index, name) in gone {
            self.push(LinkEvent::Removed { index, name });
        }
        for (&index, (name, up)) in &now {
            let was = self.known.get(&index).map(|(_, up)| *up);
            if was.is_none() {
                self.pending.push_back(LinkEvent::Added { index, name: name.clone() });
            }
            if was.unwrap_or(false) != *up {
                self.pending.push_back(if *up { LinkEvent::Up { index } } else { LinkEvent::Down { index } });
            }
        }
        self.known = now;
        self.push(LinkEvent::DefaultRouteChanged);
        Ok(())
    }

    /// Queues `event`; repeated route changes collapse into one.
    fn push(&mut self, event: LinkEvent) {
        if event == LinkEvent::DefaultRouteChanged && self.pending.contains(&event) {
            return;
        }
        self.pending.push_back(event);
    }
}

/// `struct tcmsg`: family, pads, ifindex at 4, handle at 8, parent at 12.
fn deleted_root_qdisc(payload: &[u8]) -> Option<u32> {
    let hdr = payload.get(..20)?;
    (parse_u32(&hdr[12..16]).ok()? == TC_H_ROOT).then(|| parse_u32(&hdr[4..8]).ok()).flatten()
}

/// `struct rtmsg` (12 bytes) then attributes; RTA_TABLE overrides the u8
/// table id.
fn is_default_route(payload: &[u8]) -> bool {
    let Some(hdr) = payload.get(..12) else { return false };
    let table = NlasIterator::new(&payload[12..])
        .flatten()
        .find(|n| n.kind() == libc::RTA_TABLE)
        .and_then(|n| parse_u32(n.value()).ok())
        .unwrap_or(hdr[4].into());
    hdr[1] == 0 && table == u32::from(libc::RT_TABLE_MAIN) && hdr[7] == libc::RTN_UNICAST
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::NlaBuffer;

    use super::*;

    #[test]
    fn htb_parms_layout() {
        let opts = htb_class_options(1_000_000, 2_000_000, 16_000).unwrap();
        let nla = NlaBuffer::new_checked(&opts[..]).unwrap();
        assert_eq!(nla.kind(), TCA_HTB_PARMS);
        let p = nla.value();
        assert_eq!(p.len(), 44);
        assert_eq!(p[1], TC_LINKLAYER_ETHERNET);
        assert_eq!(parse_u32(&p[8..12]).unwrap(), 1_000_000);
        assert_eq!(parse_u32(&p[20..24]).unwrap(), 2_000_000);
        // 16000 B at 1 MB/s = 16 ms = 250000 ticks of 64 ns.
        assert_eq!(parse_u32(&p[24..28]).unwrap(), 250_000);
        assert_eq!(parse_u32(&p[32..36]).unwrap(), 100_000);
        assert_eq!(opts.len(), 48);
    }

    #[test]
    fn htb_64bit_rates() {
        let opts = htb_class_options(5_000_000_000, 6_000_000_000, 100_000).unwrap();
        let attrs: Vec<_> = NlasIterator::new(&opts[..]).map(|n| n.unwrap()).collect();
        assert_eq!(attrs.iter().map(|n| n.kind()).collect::<Vec<_>>(), [TCA_HTB_PARMS, TCA_HTB_RATE64, TCA_HTB_CEIL64]);
        assert_eq!(parse_u32(&attrs[0].value()[8..12]).unwrap(), u32::MAX);
        assert_eq!(parse_u64(attrs[1].value()).unwrap(), 5_000_000_000);
    }

    #[test]
    fn bad_htb_arguments() {
        assert!(htb_class_options(0, 1, 1).is_err());
        assert!(htb_class_options(2, 1, 1).is_err());
        assert!(htb_class_options(1, 1, 0).is_err());
    }

    #[test]
    fn root_qdisc_removals_are_told_apart() {
        let tcmsg = |ifindex: u32, parent: u32| {
            let mut b = vec![0u8; 20];
            b[4..8].copy_from_slice(&ifindex.to_ne_bytes());
            b[12..16].copy_from_slice(&parent.to_ne_bytes());
            b
        };
        assert_eq!(deleted_root_qdisc(&tcmsg(7, TC_H_ROOT)), Some(7));
        assert_eq!(deleted_root_qdisc(&tcmsg(7, 0xc7_0001)), None);
        assert_eq!(deleted_root_qdisc(&[0; 8]), None);
    }

    #[test]
    fn handles() {
        assert_eq!(tc_handle(1, 0x10), 0x0001_0010);
        assert_eq!(default_burst(1_000), 1600);
        assert_eq!(default_burst(125_000_000), 125_000);
    }
}
