//! Qdiscs: dumping them, our HTB root, putting back a saved root, clsact,
//! and bounded leaf FIFOs.
use netlink_packet_core::{DefaultNla, Emitable, Nla, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::{
    tc::{TcAttribute, TcMessage, TcOption},
    RouteNetlinkMessage,
};

use super::{tc_handle, Netlink, NetlinkError, Result, CLSACT_HANDLE, TC_H_CLSACT, TC_H_ROOT};

const TCA_OPTIONS: u16 = 2;
const TCA_HTB_INIT: u16 = 2;
const TC_HTB_PROTOVER: u32 = 3;
pub(super) const HTB_RATE2QUANTUM: u32 = 10;

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

impl Netlink {
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
}

pub(super) fn tc_message(ifindex: u32, handle: u32, parent: u32) -> TcMessage {
    let mut m = TcMessage::with_index(ifindex as i32);
    m.header.handle = handle.into();
    m.header.parent = parent.into();
    m
}

/// A qdisc or class message with raw TCA_OPTIONS (omitted when empty).
pub(super) fn qdisc_message(ifindex: u32, handle: u32, parent: u32, kind: &str, options: Vec<u8>) -> TcMessage {
    let mut m = tc_message(ifindex, handle, parent);
    m.attributes.push(TcAttribute::Kind(kind.to_string()));
    if !options.is_empty() {
        m.attributes.push(TcAttribute::Other(DefaultNla::new(TCA_OPTIONS, options)));
    }
    m
}

pub(super) fn tc_kind(attrs: &[TcAttribute]) -> String {
    attrs
        .iter()
        .find_map(|a| match a {
            TcAttribute::Kind(k) => Some(k.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

pub(super) fn nest(attrs: &[DefaultNla]) -> Vec<u8> {
    let mut buf = vec![0; attrs.buffer_len()];
    attrs.emit(&mut buf);
    buf
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
