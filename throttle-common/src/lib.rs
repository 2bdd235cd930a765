//! Types shared by the eBPF programs and `chadthrottled`: the `#[repr(C)]` map
//! layouts, their limits, and (with the `user` feature) the rate syntax.
#![cfg_attr(not(feature = "user"), no_std)]

#[cfg(feature = "user")]
pub mod clock;
mod direction;
#[cfg(feature = "user")]
pub mod mountinfo;
#[cfg(feature = "user")]
pub mod rate;
#[cfg(feature = "user")]
pub mod text;

pub use direction::Direction;

/// Map capacities. Slots are per throttle and direction; slot 0 means "none".
pub const MAX_SLOTS: u32 = 4096;
pub const MAX_PROCS: u32 = 65536;

/// Per-socket owner record, kept in SK_STORAGE (cloned to accepted sockets).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOwner {
    /// Thread-group id of the process that created (or was seeded to own) the socket.
    pub tgid: u32,
    /// One past the highest TCP sequence number seen on ingress: a segment
    /// that starts below it is a retransmission.
    pub rcv_end_seq: u32,
    /// `OWNER_SEQ_VALID` once `rcv_end_seq` has been set.
    pub flags: u32,
    /// `up`/`down` below are the owner's `ProcSlots` as of this value of the
    /// global generation; the daemon bumps the generation on every change.
    pub gen: u32,
    pub up: u32,
    pub down: u32,
    /// The receive window clamp last set by `sock_ops` (0: none).
    pub clamp: u32,
    /// Low 32 bits of the last activity epoch this socket was counted in.
    pub epoch: u32,
    /// Low 32 bits of the epoch in which `clamp` was last applied.
    pub clamp_epoch: u32,
    /// Low 32 bits of the socket's bytes received at that epoch's start.
    pub rx_mark: u32,
    /// This socket's window correction toward an equal share, in 1/1024
    /// (0 means 1024).
    pub share_adj: u32,
    /// The owner's user cap slots, cached with `up`/`down`.
    pub up_cap: u32,
    pub down_cap: u32,
    /// Upload pacing under a cap (see `pace_adjust`): the epoch it was last
    /// set in, the rate set (bytes/s at the IP layer, 0: none), this
    /// socket's correction in 1/1024 (0 means 1024), and the low 32 bits of
    /// its bytes acked at that epoch's start.
    pub pace_epoch: u32,
    pub pace: u32,
    pub pace_adj: u32,
    pub tx_mark: u32,
}

pub const OWNER_SEQ_VALID: u32 = 1;
/// A download socket under a window of under two segments had a segment
/// dropped, and waits for part of the burst to come back.
pub const OWNER_BLOCKED: u32 = 2;

/// The throttle slots that cover a process, per direction (0 = not throttled):
/// its own throttle's, and its user's cap's. A packet must pass both, and
/// then the `all` cap's (`CT_GEN[GEN_ALL_UP/DOWN]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcSlots {
    pub up: u32,
    pub down: u32,
    pub up_cap: u32,
    pub down_cap: u32,
}

/// `CT_GEN` entries: the generation of `CT_PROCS`, whether anything is
/// throttled (0 lets every packet out early), and the `all` cap's slots.
pub const GEN_PROCS: u32 = 0;
pub const GEN_THROTTLING: u32 = 1;
pub const GEN_ALL_UP: u32 = 2;
pub const GEN_ALL_DOWN: u32 = 3;
pub const GEN_LEN: u32 = 4;

/// What the data path does with a packet whose slot it found.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotMode {
    /// Unused slot: count nothing, pass.
    Off = 0,
    /// Police with the slot's GCRA bucket (the `ebpf` backend).
    Bucket = 1,
    /// Write `classid` into `skb->priority` and pass (HTB classifies on it).
    HtbClass = 2,
    /// Drop every packet that is not exempt (loopback), and refuse new
    /// connections and UDP sends to non-loopback peers (`block`).
    Block = 3,
    /// Count and pass: a quota's direction that has no rate of its own.
    Count = 4,
}

/// One throttle direction. `tat_ns` is the GCRA theoretical arrival time,
/// updated atomically by every CPU; the rest is written by the daemon.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    pub tat_ns: u64,
    /// Cost of one byte in ns: integer part and 16-bit fraction, so that
    /// `len * cost` never overflows for any length or rate.
    pub ns_per_byte: u64,
    pub ns_per_byte_frac: u64,
    /// Burst tolerance in ns of credit (burst bytes × cost per byte).
    pub burst_ns: u64,
    /// Extra credit a TCP retransmission may overdraw on ingress, in ns.
    pub debt_ns: u64,
    /// Limit in bytes/s at the IP layer (used for pacing).
    pub rate: u64,
    pub mode: u32,
    pub classid: u32,
    /// Download window control: the activity epoch (`now >> EPOCH_SHIFT`)
    /// and the TCP sockets that received data in it and in the one before.
    /// Kept by the data path; the daemon preserves them on updates.
    pub epoch: u64,
    pub active_cur: u64,
    pub active_prev: u64,
    /// Smallest receive window to advertise, in bytes (0: the default).
    pub rwnd_floor: u32,
    /// Headroom of the window over rate × RTT, in 1/1024 (0: no window control).
    pub rwnd_gain: u32,
}

/// An activity epoch lasts 2^27 ns (134 ms): longer than the RTTs we
/// control, so every running flow shows up in every epoch.
pub const EPOCH_SHIFT: u32 = 27;

/// Per-CPU counters of one slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub pass_bytes: u64,
    pub pass_pkts: u64,
    pub drop_bytes: u64,
    pub drop_pkts: u64,
}

impl Counters {
    pub fn add(&mut self, o: &Counters) {
        self.pass_bytes += o.pass_bytes;
        self.pass_pkts += o.pass_pkts;
        self.drop_bytes += o.drop_bytes;
        self.drop_pkts += o.drop_pkts;
    }
}

/// One process's traffic in one class (internet or local), per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub up_bytes: u64,
    pub up_pkts: u64,
    pub down_bytes: u64,
    pub down_pkts: u64,
}

impl Traffic {
    pub fn add(&mut self, o: &Traffic) {
        self.up_bytes += o.up_bytes;
        self.up_pkts += o.up_pkts;
        self.down_bytes += o.down_bytes;
        self.down_pkts += o.down_pkts;
    }
}

/// Every process's traffic, throttled or not, kept by the monitor: local
/// is loopback and link-local peers, internet is everything else.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcTraffic {
    pub internet: Traffic,
    pub local: Traffic,
}

/// Processes the monitor keeps counters for at once (least recently used
/// ones fall out first; the daemon removes exited ones).
pub const MAX_MONITORED: u32 = 16384;

/// Whether a peer address is link-local: 169.254/16, or fe80::/10 (the
/// first u32 word of an IPv6 address, in network byte order).
#[inline(always)]
pub fn is_link_local(v6: bool, first_word_be: u32) -> bool {
    let w = u32::from_be(first_word_be);
    if v6 {
        w >> 22 == 0xfe80 >> 6
    } else {
        w >> 16 == 0xa9fe
    }
}

impl Slot {
    /// A bucket policing `rate` bytes/s with `burst` bytes of tolerance and
    /// `debt` bytes of overdraft for retransmissions.
    pub fn bucket(rate: u64, burst: u64, debt: u64) -> Self {
        let rate = rate.max(1);
        let ns_per_byte = 1_000_000_000 / rate;
        let rem = 1_000_000_000 % rate;
        let ns_per_byte_frac = ((rem as u128) << 16) as u64 / rate;
        let mut s = Slot { ns_per_byte, ns_per_byte_frac, rate, mode: SlotMode::Bucket as u32, ..Default::default() };
        s.burst_ns = s.cost_ns(burst);
        s.debt_ns = s.cost_ns(debt);
        s
    }

    /// A slot that only marks packets for an HTB class (`skb->priority`).
    pub fn htb_class(classid: u32) -> Self {
        Slot { mode: SlotMode::HtbClass as u32, classid, ..Default::default() }
    }

    /// A slot that blocks its processes' traffic outright.
    pub fn block() -> Self {
        Slot { mode: SlotMode::Block as u32, ..Default::default() }
    }

    /// A slot that only counts its processes' traffic (for a quota).
    pub fn count() -> Self {
        Slot { mode: SlotMode::Count as u32, ..Default::default() }
    }

    /// Nanoseconds of credit that `len` bytes consume.
    #[inline(always)]
    pub fn cost_ns(&self, len: u64) -> u64 {
        len * self.ns_per_byte + ((len * self.ns_per_byte_frac) >> 16)
    }
}

/// TCP pacing for an IP-layer limit: pacing counts payload only, so pace at
/// MSS/(MSS + headers) of the limit. A full 1500-byte packet carries 1448
/// bytes over IPv4 and 1428 over IPv6 (40-byte header), TCP timestamps in
/// both: pacing IPv6 at the IPv4 share sent 1.4% over the limit, and the
/// policer's congestion drops cost 7% of it (0.873-0.889 of the limit).
#[inline(always)]
pub fn pacing_rate(rate: u64, v6: bool) -> u64 {
    rate * if v6 { 1428 } else { 1448 } / 1500
}

/// Corrects one socket's window toward an equal share: `got` payload bytes
/// in the last epoch against `share`. Outside a ±1/8 dead band the
/// correction moves by 1/16 per epoch, within 1/2..2, so sockets whose
/// RTT samples differ still converge on equal rates.
#[inline(always)]
pub fn share_adjust(adj: u32, got: u64, share: u64) -> u32 {
    let adj = if adj == 0 { 1024 } else { adj };
    let adj = if got > share + share / 8 {
        adj - adj / 16
    } else if got + share / 8 < share {
        adj + adj / 16
    } else {
        adj
    };
    adj.clamp(512, 2048)
}

/// The receive window of one of `active` TCP sockets sharing a download
/// limit of `rate` bytes/s at `srtt_us`: its share of rate × RTT, plus
/// `gain`/1024 headroom and one segment (the sender only sends whole
/// segments), scaled down as the throttle's bucket runs into debt (`fill`,
/// 0..=65536 of its burst). The headroom makes the windows a little faster
/// than the limit, so the bucket's debt settles where the two balance: the
/// rate is the policer's, exactly, and the policer never has to drop.
#[inline(always)]
pub fn rwnd(rate: u64, srtt_us: u64, active: u64, gain: u64, fill: u64, floor: u64) -> u32 {
    let active = if active == 0 { 1 } else { active };
    let bdp = rate * srtt_us / 1_000_000 / active;
    let bdp = if bdp > (1 << 31) { 1 << 31 } else { bdp };
    let fill = if fill > 65536 { 65536 } else { fill };
    // At a full bucket of debt the window falls to 1/8 of its share.
    let scale = 65536 - fill * 7 / 8;
    let w = ((bdp * (1024 + gain)) >> 10) * scale / 65536 + 1448;
    let w = if w < floor { floor } else { w };
    if w > (1 << 30) {
        1 << 30
    } else {
        w as u32
    }
}

/// Headroom of an upload's pacing over its equal share of a cap, in 1/1024.
pub const PACE_GAIN: u64 = 384;

/// Corrects one upload socket's pacing under a cap, once per epoch: `sent`
/// bytes in the last epoch against `budget` (what its pacing allowed),
/// with the cap's bucket `fill` (0..=65536 of its burst in debt). A bucket
/// in debt backs every socket off by 1/8; a socket that used its pacing
/// while the bucket has room grows by 1/8, so capacity that others leave
/// goes to those that can use it (half of it: TCP rarely fills its pacing
/// rate). Within 1/4..8 of the equal share.
#[inline(always)]
pub fn pace_adjust(adj: u32, sent: u64, budget: u64, fill: u64) -> u32 {
    let adj = if adj == 0 { 1024 } else { adj };
    let adj = if fill > 32768 {
        adj - adj / 8
    } else if fill < 16384 && sent * 2 >= budget {
        adj + adj / 8
    } else {
        adj
    };
    adj.clamp(256, 8192)
}

/// An upload socket's pacing under a cap: its equal share of `rate` among
/// `active` sockets, corrected by `adj`/1024, with `PACE_GAIN` headroom,
/// scaled down as the bucket runs into debt (`fill`, as in `rwnd`).
#[inline(always)]
pub fn cap_pace(rate: u64, active: u64, adj: u64, fill: u64) -> u64 {
    let active = if active == 0 { 1 } else { active };
    let fill = if fill > 65536 { 65536 } else { fill };
    let share = (rate / active) * adj / 1024;
    // In 256ths, so that no product overflows at any rate up to 2^40 B/s.
    ((share * (1024 + PACE_GAIN)) >> 18) * ((65536 - fill * 7 / 8) >> 8)
}

/// Receive window for a policed download: four BDPs (never the bottleneck),
/// at least 10 ms of rate and 64 KiB, so that one drop loses a small flight
/// instead of the megabytes that window autotuning would allow. (A 16 KiB
/// floor measured worse: the window closes and TCP waits on its persist timer.)
#[inline(always)]
pub fn window_clamp(rate: u64, rtt_us: u64) -> u32 {
    let t_us = if rtt_us * 4 > 10_000 { rtt_us * 4 } else { 10_000 };
    let w = rate * t_us / 1_000_000;
    if w < 65536 {
        65536
    } else if w > (1 << 30) {
        1 << 30
    } else {
        w as u32
    }
}

/// Whether a connection stays on this host: a loopback peer (127/8, ::1,
/// ::ffff:127/104) or a peer address equal to the local one. Addresses are
/// as the kernel stores them (network byte order in native u32 words).
#[inline(always)]
pub fn is_local_connection(family_v6: bool, local: [u32; 4], remote: [u32; 4]) -> bool {
    let first_octet = |w: u32| u32::from_be(w) >> 24;
    if !family_v6 {
        return first_octet(remote[0]) == 127 || remote[0] == local[0];
    }
    let mapped = remote[0] == 0 && remote[1] == 0 && u32::from_be(remote[2]) == 0xffff;
    let v6_lo = remote[0] == 0 && remote[1] == 0 && remote[2] == 0 && u32::from_be(remote[3]) == 1;
    v6_lo || (mapped && first_octet(remote[3]) == 127) || remote == local
}

/// Whether a `connect()`/`sendmsg()` destination is this host's loopback
/// (127/8, ::1, ::ffff:127/104) or unspecified (0.0.0.0, ::, which the
/// kernel sends to loopback). Words as the kernel stores them (network
/// byte order in native u32 words); for IPv4 only `words[0]` is read.
#[inline(always)]
pub fn is_loopback_dest(v6: bool, words: [u32; 4]) -> bool {
    // No recursion: eBPF cannot inline it, and the verifier limits calls.
    let v4_lo = |w: u32| u32::from_be(w) >> 24 == 127 || w == 0;
    if !v6 {
        return v4_lo(words[0]);
    }
    let head = words[0] == 0 && words[1] == 0;
    let lo = head && words[2] == 0 && (u32::from_be(words[3]) <= 1);
    let mapped = head && u32::from_be(words[2]) == 0xffff && v4_lo(words[3]);
    lo || mapped
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers with no padding.
    unsafe impl aya::Pod for super::SockOwner {}
    unsafe impl aya::Pod for super::ProcSlots {}
    unsafe impl aya::Pod for super::Slot {}
    unsafe impl aya::Pod for super::Counters {}
    unsafe impl aya::Pod for super::ProcTraffic {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: [u8; 4]) -> u32 {
        u32::from_ne_bytes(a)
    }

    #[test]
    fn local_connections() {
        let l = [v4([10, 0, 0, 1]), 0, 0, 0];
        assert!(is_local_connection(false, l, [v4([127, 0, 0, 1]), 0, 0, 0]));
        assert!(is_local_connection(false, l, [v4([127, 9, 9, 9]), 0, 0, 0]));
        assert!(is_local_connection(false, l, l));
        assert!(!is_local_connection(false, l, [v4([10, 0, 0, 2]), 0, 0, 0]));
        let one = u32::from_be(1);
        assert!(is_local_connection(true, [0, 0, 0, 7], [0, 0, 0, one]));
        let mapped = [0, 0, u32::from_be(0xffff), v4([127, 0, 0, 1])];
        assert!(is_local_connection(true, [0; 4], mapped));
        assert!(!is_local_connection(true, [0; 4], [0, 0, u32::from_be(0xffff), v4([8, 8, 8, 8])]));
    }

    #[test]
    fn loopback_destinations() {
        let w = |a: [u8; 4]| u32::from_ne_bytes(a);
        assert!(is_loopback_dest(false, [w([127, 0, 0, 1]), 0, 0, 0]));
        assert!(is_loopback_dest(false, [w([127, 8, 0, 9]), 0, 0, 0]));
        assert!(is_loopback_dest(false, [0, 0, 0, 0]));
        assert!(!is_loopback_dest(false, [w([10, 201, 0, 2]), 0, 0, 0]));
        let be = u32::from_be;
        assert!(is_loopback_dest(true, [0, 0, 0, be(1)]));
        assert!(is_loopback_dest(true, [0; 4]));
        assert!(is_loopback_dest(true, [0, 0, be(0xffff), w([127, 0, 0, 1])]));
        assert!(!is_loopback_dest(true, [0, 0, be(0xffff), w([8, 8, 8, 8])]));
        assert!(!is_loopback_dest(true, [be(0x2001_0db8), 0, 0, be(1)]));
        assert!(!is_loopback_dest(true, [0, 0, 0, be(2)]));
    }

    #[test]
    fn link_local_peers() {
        let w = |a: [u8; 4]| u32::from_ne_bytes(a);
        assert!(is_link_local(false, w([169, 254, 1, 2])));
        assert!(!is_link_local(false, w([169, 253, 1, 2])));
        assert!(!is_link_local(false, w([10, 0, 0, 1])));
        assert!(is_link_local(true, w([0xfe, 0x80, 0, 0])));
        assert!(is_link_local(true, w([0xfe, 0xbf, 0xff, 0xff])));
        assert!(!is_link_local(true, w([0xfe, 0xc0, 0, 0])));
        assert!(!is_link_local(true, w([0x20, 0x01, 0x0d, 0xb8])));
    }

    #[test]
    fn cost_is_exact_for_common_rates() {
        let s = Slot::bucket(1 << 20, 65536, 0);
        // 1 MiB at 1 MiB/s costs one second, within rounding of the fraction.
        let c = s.cost_ns(1 << 20);
        assert!((999_990_000..=1_000_000_000).contains(&c), "{c}");
        assert_eq!(s.burst_ns, s.cost_ns(65536));
    }

    #[test]
    fn rwnd_shares_rate_times_rtt() {
        // 1 MiB/s at 20 ms: 20,971 bytes, +10% and one segment.
        assert_eq!(rwnd(1 << 20, 20_000, 1, 102, 0, 0), 20_971 * 1126 / 1024 + 1448);
        // Ten sockets share it; debt shrinks it; the floor holds.
        assert!(rwnd(1 << 20, 20_000, 10, 102, 0, 0) < 4000);
        assert!(rwnd(1 << 20, 20_000, 1, 102, 65536, 0) < 5000);
        assert_eq!(rwnd(1 << 20, 50, 1, 102, 0, 4096), 4096);
        assert_eq!(rwnd(u64::MAX >> 24, 1 << 20, 0, 102, 0, 0), 1 << 30);
    }

    #[test]
    fn share_adjust_moves_toward_equal_share() {
        assert_eq!(share_adjust(0, 1000, 1000), 1024);
        assert_eq!(share_adjust(0, 1200, 1000), 960);
        assert_eq!(share_adjust(0, 800, 1000), 1088);
        assert_eq!(share_adjust(2048, 0, 1000), 2048);
        assert_eq!(share_adjust(512, 5000, 1000), 512);
    }

    #[test]
    fn cap_pacing_shares_and_backs_off() {
        // Four sockets share 4 MiB/s: 1 MiB/s each with 37.5% headroom.
        assert_eq!(cap_pace(4 << 20, 4, 1024, 0), (1 << 20) * 1408 / 1024);
        assert!(cap_pace(4 << 20, 4, 1024, 65536) < (1 << 20) / 5);
        assert_eq!(cap_pace(4 << 20, 0, 2048, 0), cap_pace(4 << 20, 1, 1024, 0) * 2);
        assert!(cap_pace(1 << 40, 1, 8192, 0) > 1 << 40, "no overflow at 1 TiB/s");
        // In debt: back off. Room and a socket using its pacing: grow.
        assert_eq!(pace_adjust(0, 100, 100, 40000), 896);
        assert_eq!(pace_adjust(1024, 100, 100, 0), 1152);
        assert_eq!(pace_adjust(1024, 40, 100, 0), 1024, "limited elsewhere: stays");
        assert_eq!(pace_adjust(8192, 100, 100, 0), 8192);
        assert_eq!(pace_adjust(256, 100, 100, 65536), 256);
    }

    #[test]
    fn cost_never_overflows() {
        let s = Slot::bucket(1, 1, 0);
        assert_eq!(s.cost_ns(1 << 20), (1u64 << 20) * 1_000_000_000);
        let s = Slot::bucket(u64::MAX / 2, 1, 0);
        assert_eq!(s.cost_ns(1 << 30), 0);
    }
}
