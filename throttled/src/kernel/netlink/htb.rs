//! HTB classes: adding, changing and deleting them, their options as the
//! kernel's structs, and their counters.
use netlink_packet_core::{parse_u64, DefaultNla, Nla, NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::{
    tc::{TcAttribute, TcMessage, TcStats2},
    RouteNetlinkMessage,
};

use super::{
    qdiscs::{nest, qdisc_message, tc_kind, tc_message, HTB_RATE2QUANTUM},
    Netlink, NetlinkError, Result,
};

const TCA_STATS_PKT64: u16 = 8;
const TCA_HTB_PARMS: u16 = 1;
const TCA_HTB_RATE64: u16 = 6;
const TCA_HTB_CEIL64: u16 = 7;
const TC_LINKLAYER_ETHERNET: u8 = 1;

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

impl Netlink {
    /// Adds HTB class `classid` under `parent` (a class id, or the HTB qdisc
    /// handle `major:0` for a top-level class). `rate` is guaranteed and
    /// `ceil` the most it may borrow up to, both bytes/s with
    /// `0 < rate <= ceil`; `burst` is bytes sent at full speed (used for both
    /// rate and ceil buckets). EEXIST if it exists.
    pub fn add_htb_class(&self, ifindex: u32, classid: u32, parent: u32, class: &HtbClass) -> Result<()> {
        let options = htb_class_options(class)?;
        self.send_class(ifindex, classid, parent, options, NLM_F_CREATE | NLM_F_EXCL)
    }

    /// Changes an existing class in place, without resetting its counters or
    /// dropping its queue. Same units as [`Netlink::add_htb_class`]; ENOENT if
    /// the class does not exist.
    pub fn change_htb_class(&self, ifindex: u32, classid: u32, parent: u32, class: &HtbClass) -> Result<()> {
        let options = htb_class_options(class)?;
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
}

/// One HTB class: `rate` guaranteed and `ceil` at most (bytes/s),
/// `burst` bytes at line rate, and `prio` (0 first) when it borrows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HtbClass {
    pub rate: u64,
    pub ceil: u64,
    pub burst: u32,
    pub prio: u32,
}

impl HtbClass {
    /// A class held at exactly `rate`.
    pub fn fixed(rate: u64, burst: u32) -> HtbClass {
        HtbClass { rate, ceil: rate, burst, prio: 0 }
    }
}

/// TCA_OPTIONS of an HTB class: `struct tc_htb_opt`, plus 64-bit rates
/// when they do not fit its u32 fields (the kernel takes the larger).
fn htb_class_options(c: &HtbClass) -> Result<Vec<u8>> {
    let HtbClass { rate, ceil, burst, prio } = *c;
    if rate == 0 || ceil < rate || burst == 0 || prio > 7 {
        return Err(NetlinkError::Invalid(format!("HTB rate {rate} ceil {ceil} burst {burst} prio {prio}")));
    }
    let mut parms = Vec::with_capacity(44);
    parms.extend(ratespec(rate));
    parms.extend(ratespec(ceil));
    let level = 0u32;
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

#[cfg(test)]
mod tests {
    use netlink_packet_core::{parse_u32, NlaBuffer, NlasIterator};

    use super::*;

    #[test]
    fn htb_parms_layout() {
        let opts = htb_class_options(&HtbClass { rate: 1_000_000, ceil: 2_000_000, burst: 16_000, prio: 3 }).unwrap();
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
        assert_eq!(parse_u32(&p[40..44]).unwrap(), 3, "prio");
        assert_eq!(opts.len(), 48);
    }

    #[test]
    fn htb_64bit_rates() {
        let opts =
            htb_class_options(&HtbClass { rate: 5_000_000_000, ceil: 6_000_000_000, burst: 100_000, prio: 0 }).unwrap();
        let attrs: Vec<_> = NlasIterator::new(&opts[..]).map(|n| n.unwrap()).collect();
        assert_eq!(attrs.iter().map(|n| n.kind()).collect::<Vec<_>>(), [TCA_HTB_PARMS, TCA_HTB_RATE64, TCA_HTB_CEIL64]);
        assert_eq!(parse_u32(&attrs[0].value()[8..12]).unwrap(), u32::MAX);
        assert_eq!(parse_u64(attrs[1].value()).unwrap(), 5_000_000_000);
    }

    #[test]
    fn bad_htb_arguments() {
        let c = |rate, ceil, burst, prio| htb_class_options(&HtbClass { rate, ceil, burst, prio });
        assert!(c(0, 1, 1, 0).is_err());
        assert!(c(2, 1, 1, 0).is_err());
        assert!(c(1, 1, 0, 0).is_err());
        assert!(c(1, 1, 1, 8).is_err());
    }
}
