//! An HTB tree that a backend owns on one device: the root qdisc it replaced
//! (recorded in the state directory first, so a crashed run can still
//! restore it) and our root `c7:`. Its top class `c7:fffd` is the `all`
//! cap when one runs on this backend (else unlimited); under it are the
//! default class (unthrottled traffic) and the shared class `c7:fffe` (the
//! link capacity that priorities share, or unlimited) with one class per
//! throttle slot under it. Shared by `tc_htb` (on each interface) and
//! `ifb_tc` (on each IFB) through [`super::fleet::HtbFleet`].
use std::path::{Path, PathBuf};

use throttle_common::rate::Rate;

use super::{
    records::{self, RootRecord},
    SlotId,
};
use crate::kernel::netlink::{tc_handle, ClassStats, HtbClass, Netlink, NetlinkError, QdiscInfo};

/// Our HTB root handle major: marks qdiscs we created (leftover detection).
pub const HTB_MAJOR: u16 = 0xc7;
const DEFAULT_MINOR: u16 = 0xffff;
/// The parent of everything: the `all` cap on this backend, or unlimited.
const TOP_MINOR: u16 = 0xfffd;
/// The parent of every throttle's class: the capacity they share.
const SHARED_MINOR: u16 = 0xfffe;
/// Leaf qdisc of slot N: handle (LEAF_MAJOR_BASE + N):. Slot 0 is never a
/// throttle's, so the default class's leaf takes that handle.
const LEAF_MAJOR_BASE: u16 = 0x1000;
/// Unlimited: the default class (without an `all` cap here) must never
/// slow unthrottled traffic, nor the shared class (without a capacity)
/// any throttle.
const UNLIMITED: u64 = 1 << 40;

pub fn classid(slot: SlotId) -> u32 {
    tc_handle(HTB_MAJOR, slot as u16)
}

fn shared() -> u32 {
    tc_handle(HTB_MAJOR, SHARED_MINOR)
}

fn default_class() -> u32 {
    tc_handle(HTB_MAJOR, DEFAULT_MINOR)
}

/// The top class: what the `all` cap's slot classifies into. An inner
/// class, so HTB sends a packet classified there to the default class
/// (unthrottled traffic) beneath it.
pub fn top() -> u32 {
    tc_handle(HTB_MAJOR, TOP_MINOR)
}

/// A throttle's class: guaranteed `rate`, at most `ceil` (its own limit),
/// and its `prio` (0 first) when it borrows what others leave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub rate: u64,
    pub ceil: u64,
    pub prio: u32,
}

impl Shape {
    /// Exactly `rate`, borrowing nothing (no capacity is shared).
    pub fn fixed(rate: Rate) -> Shape {
        let r = rate.bytes_per_sec();
        Shape { rate: r, ceil: r, prio: 0 }
    }

    fn class(self) -> HtbClass {
        HtbClass { rate: self.rate.min(self.ceil).max(1), ceil: self.ceil, burst: burst(self.ceil), prio: self.prio }
    }
}

/// The shared class at `capacity` bytes/s, or unlimited.
fn shared_class(capacity: Option<u64>) -> HtbClass {
    let r = capacity.unwrap_or(UNLIMITED);
    HtbClass::fixed(r, burst(r))
}

/// The classes over the throttles': the top class (the `all` cap, or
/// unlimited) and beneath it the default class (unthrottled traffic) and
/// the shared class (the capacity the throttles share).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Top {
    pub cap: Option<u64>,
    pub capacity: Option<u64>,
    /// Under a cap, unthrottled traffic's guaranteed part of it. HTB lets
    /// a class send at its rate whatever its parent's ceil, so the rates
    /// beneath the cap must add up to no more than the cap; above its
    /// rate each class borrows from the cap.
    pub unthrottled: u64,
}

impl Top {
    /// The default class and the shared class.
    fn classes(self) -> (HtbClass, HtbClass) {
        let Some(cap) = self.cap else { return (shared_class(None), shared_class(self.capacity)) };
        let capacity = self.capacity.unwrap_or(cap).min(cap);
        let floor = self.unthrottled.clamp(1, capacity);
        let default = HtbClass { rate: floor, ceil: cap, burst: burst(cap), prio: 0 };
        let rest = (capacity - floor).max(1);
        (default, HtbClass { rate: rest, ceil: capacity, burst: burst(capacity), prio: 0 })
    }
}

/// A full-size Ethernet frame.
const MTU_FRAME: u64 = 1514;

/// HTB burst: 2 ms at the rate, at least two full-size packets. The burst
/// passes at line rate, hiding the queue from the sender's slow start
/// (hystart watches the RTT): the former 66 KiB minimum was 64 ms at
/// 1 MiB/s, and slow start overshot into the queue. HTB's watchdog is an
/// hrtimer, and a GSO packet larger than the burst only runs the class
/// into debt, so a small burst neither starves the class nor loses rate.
fn burst(rate: u64) -> u32 {
    (rate / 500).max(2 * MTU_FRAME).min(u32::MAX as u64) as u32
}

/// The leaf queue's target, as time at the rate. A tail-drop queue loses
/// a burst each time the window outgrows path + queue: the larger the
/// queue, the fewer retransmits, the longer the delay. Measured through
/// the test kit's delay line (tests/rtt.rs), 80, 100 and 120 ms retransmit
/// ~1.6, ~1.3 and ~0.9% at 80 ms/1 MiB/s; 120 ms holds ≤ 1% at 20 and
/// 80 ms, at 1 and 10 MiB/s. The daemon does not know the path's RTT.
const QUEUE_MS: u64 = 120;
/// Room for one 64 KiB GSO/GRO aggregate as the qdisc counts it (with the
/// headers of its 45 segments, ~67 KiB) and a few packets: a smaller byte
/// FIFO never accepts a full aggregate. At 256 KiB/s this floor is the
/// queue (280 ms of MTU-sized packets).
const QUEUE_FLOOR: u64 = 72 << 10;
/// A single flow's window rarely exceeds the receiver's 6 MiB default
/// `tcp_rmem` maximum: a longer queue only adds delay.
const QUEUE_CAP: u64 = 16 << 20;

/// The leaf byte FIFO's limit for a class at `rate` bytes/s.
fn queue_limit(rate: u64) -> u32 {
    (rate.saturating_mul(QUEUE_MS) / 1000).clamp(QUEUE_FLOOR, QUEUE_CAP) as u32
}

pub struct HtbDevice {
    pub ifindex: u32,
    pub name: String,
    saved: Option<QdiscInfo>,
    record: PathBuf,
}

pub fn is_ours(q: &QdiscInfo) -> bool {
    q.kind == "htb" && q.handle >> 16 == HTB_MAJOR as u32
}

impl HtbDevice {
    /// Replaces the root qdisc of `ifindex` with our HTB tree, recording
    /// the replaced root on the disk first. A tree that this state
    /// directory recorded (a crashed run's) is replaced, and the original
    /// root it recorded is the one restored later; an unrecorded tree of
    /// ours belongs to another instance and is left alone.
    pub fn install(nl: &Netlink, ifindex: u32, name: &str, state_dir: &Path) -> Result<Self, NetlinkError> {
        let ours = records::read_root(state_dir, name);
        let (saved, leftover) = match nl.root_qdisc(ifindex)? {
            Some(q) if is_ours(&q) => match ours {
                Some(r) => (r.saved.map(|q| QdiscInfo { ifindex, ..q }), true),
                None => {
                    return Err(NetlinkError::Foreign(format!("{name} already has another chadthrottled's HTB root")))
                }
            },
            other => (other, false),
        };
        let record = RootRecord { device: name.to_string(), ifindex, saved: saved.clone() };
        records::write_root(state_dir, &record).map_err(|e| {
            NetlinkError::Foreign(format!(
                "not shaping {name}: cannot record its root qdisc in {}: {e}",
                state_dir.display()
            ))
        })?;
        if leftover {
            // HTB cannot be "changed" into an identical HTB: start afresh.
            nl.delete_root_qdisc(ifindex)?;
        }
        add_root(nl, ifindex)?;
        Ok(HtbDevice { ifindex, name: name.to_string(), saved, record: records::root_path(state_dir, name) })
    }

    /// Puts our root back after someone removed it, keeping the original
    /// root saved at install time. A foreign root is left alone: it is not
    /// ours to replace.
    pub fn reinstall(&self, nl: &Netlink) -> Result<(), NetlinkError> {
        match nl.root_qdisc(self.ifindex)? {
            Some(q) if is_ours(&q) => nl.delete_root_qdisc(self.ifindex)?,
            Some(q) if !q.is_default_root() => {
                return Err(NetlinkError::Foreign(format!("{} now has a foreign root qdisc ({})", self.name, q.kind)))
            }
            _ => {}
        }
        add_root(nl, self.ifindex)
    }

    pub fn add_class(&self, nl: &Netlink, slot: SlotId, shape: Shape) -> Result<(), NetlinkError> {
        nl.add_htb_class(self.ifindex, classid(slot), shared(), &shape.class())?;
        self.bound_queue(nl, slot, shape.ceil)
    }

    /// In place: the class keeps its queue and counters.
    pub fn change_class(&self, nl: &Netlink, slot: SlotId, shape: Shape) -> Result<(), NetlinkError> {
        nl.change_htb_class(self.ifindex, classid(slot), shared(), &shape.class())?;
        self.bound_queue(nl, slot, shape.ceil)
    }

    /// The classes over the throttles' (see [`Top`]).
    pub fn set_top(&self, nl: &Netlink, t: Top) -> Result<(), NetlinkError> {
        let (default, shared_part) = t.classes();
        nl.change_htb_class(self.ifindex, top(), tc_handle(HTB_MAJOR, 0), &shared_class(t.cap))?;
        nl.change_htb_class(self.ifindex, default_class(), top(), &default)?;
        nl.change_htb_class(self.ifindex, shared(), top(), &shared_part)?;
        bound_default(nl, self.ifindex, t.cap)
    }

    pub fn cap_stats(&self, nl: &Netlink) -> Result<ClassStats, NetlinkError> {
        nl.class_stats(self.ifindex, top())
    }

    /// HTB's default leaf FIFO counts packets, and GRO/GSO packets reach
    /// 64 KiB: at 1 MiB/s it held over a second of queue. A byte FIFO of
    /// [`queue_limit`] bounds the delay.
    fn bound_queue(&self, nl: &Netlink, slot: SlotId, rate: u64) -> Result<(), NetlinkError> {
        bound_leaf(nl, self.ifindex, classid(slot), slot as u16, rate)
    }

    pub fn remove_class(&self, nl: &Netlink, slot: SlotId) -> Result<(), NetlinkError> {
        nl.delete_class(self.ifindex, classid(slot))
    }

    pub fn stats(&self, nl: &Netlink, slot: SlotId) -> Result<ClassStats, NetlinkError> {
        nl.class_stats(self.ifindex, classid(slot))
    }

    /// What is wrong with the tree, if anything.
    pub fn check(&self, nl: &Netlink, slots: impl Iterator<Item = SlotId>) -> Result<(), String> {
        match nl.root_qdisc(self.ifindex) {
            Ok(Some(q)) if is_ours(&q) => {}
            Ok(_) => return Err(format!("our HTB qdisc on {} is gone", self.name)),
            Err(e) => return Err(format!("{}: {e}", self.name)),
        }
        let classes = nl.classes(self.ifindex).map_err(|e| e.to_string())?;
        let mut wanted = [top(), shared()].into_iter().chain(slots.map(classid));
        match wanted.find(|c| !classes.iter().any(|k| k.classid == *c)) {
            Some(missing) => {
                Err(format!("HTB class {:x}:{:x} on {} is gone", missing >> 16, missing & 0xffff, self.name))
            }
            None => Ok(()),
        }
    }

    /// Puts back the root qdisc we replaced. A device that vanished is fine.
    /// The record goes once our root is gone; otherwise the next start
    /// tries again.
    pub fn restore(self, nl: &Netlink) -> Result<(), NetlinkError> {
        let res = match &self.saved {
            Some(q) if !q.is_default_root() => nl.restore_qdisc(q),
            _ => nl.delete_root_qdisc(self.ifindex),
        };
        let res = match res {
            Err(e) if e.errno() == Some(libc::ENODEV) || e.errno() == Some(libc::ENOENT) => Ok(()),
            other => other,
        };
        if res.is_ok() {
            records::remove(&self.record);
        }
        res
    }
}

/// Our root on `ifindex`: the HTB qdisc and its top class, under it the
/// default class and the shared class (all unlimited until a cap or a
/// capacity is set).
fn add_root(nl: &Netlink, ifindex: u32) -> Result<(), NetlinkError> {
    nl.add_htb_root(ifindex, HTB_MAJOR, DEFAULT_MINOR)?;
    nl.add_htb_class(ifindex, top(), tc_handle(HTB_MAJOR, 0), &shared_class(None))?;
    nl.add_htb_class(ifindex, default_class(), top(), &shared_class(None))?;
    nl.add_htb_class(ifindex, shared(), top(), &shared_class(None))?;
    bound_default(nl, ifindex, None)
}

/// The default class's leaf: a byte FIFO sized for `cap` (as a throttle's).
fn bound_default(nl: &Netlink, ifindex: u32, cap: Option<u64>) -> Result<(), NetlinkError> {
    bound_leaf(nl, ifindex, default_class(), 0, cap.unwrap_or(UNLIMITED))
}

/// Class `class`'s leaf `LEAF_MAJOR_BASE + n`: a byte FIFO of
/// [`queue_limit`] at `rate`.
fn bound_leaf(nl: &Netlink, ifindex: u32, class: u32, n: u16, rate: u64) -> Result<(), NetlinkError> {
    nl.set_bfifo_leaf(ifindex, class, tc_handle(LEAF_MAJOR_BASE + n, 0), queue_limit(rate))
}

/// A device record that carries an HTB tree.
pub trait HasHtb {
    fn htb(&self) -> &HtbDevice;
    /// The managed interface's name.
    fn iface(&self) -> &str {
        &self.htb().name
    }
}

impl HasHtb for HtbDevice {
    fn htb(&self) -> &HtbDevice {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_is_time_at_the_rate_within_floor_and_cap() {
        assert_eq!(queue_limit(256 << 10), 72 << 10, "the floor: one GSO aggregate and a few packets");
        assert_eq!(queue_limit(1 << 20), (1 << 20) * 120 / 1000);
        assert_eq!(queue_limit(10 << 20), (10 << 20) * 120 / 1000);
        assert_eq!(queue_limit(1 << 40), 16 << 20);
        assert_eq!(queue_limit(u64::MAX), 16 << 20);
    }

    #[test]
    fn burst_is_two_ms_at_the_rate_or_two_packets() {
        assert_eq!(burst(10 << 20), (10 << 20) / 500);
        assert_eq!(burst(256 << 10), 3028);
        assert_eq!(burst(u64::MAX), u32::MAX);
    }

    #[test]
    fn under_a_cap_the_guarantees_add_up_to_no_more_than_it() {
        let four = 4 << 20;
        for (capacity, unthrottled) in [(None, 0), (Some(four), four / 2), (Some(3 << 20), 1 << 20), (Some(four), 0)] {
            let (default, shared) = Top { cap: Some(four), capacity, unthrottled }.classes();
            assert!(default.rate + shared.rate <= four, "{capacity:?} {unthrottled}: {default:?} {shared:?}");
            assert_eq!(default.ceil, four, "unthrottled traffic borrows up to the cap");
            assert_eq!(shared.ceil, capacity.unwrap_or(four));
        }
        let (default, shared) = Top { cap: None, capacity: Some(four), unthrottled: 0 }.classes();
        assert_eq!((default.rate, shared.rate, shared.ceil), (UNLIMITED, four, four), "without a cap, as before");
    }
}
