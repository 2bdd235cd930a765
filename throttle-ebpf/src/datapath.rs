use core::{arch::asm, ffi::c_void, ptr};

use aya_ebpf::{
    bindings::{bpf_map_type::BPF_MAP_TYPE_SK_STORAGE, bpf_sock, BPF_F_NO_PREALLOC, BPF_SK_STORAGE_GET_F_CREATE},
    helpers::generated::{
        bpf_get_current_pid_tgid, bpf_getsockopt, bpf_ktime_get_ns, bpf_setsockopt, bpf_sk_storage_get, bpf_tcp_sock,
    },
    macros::{cgroup_skb, cgroup_sock, cgroup_sock_addr, cgroup_sockopt, map, sock_ops},
    maps::{Array, HashMap, LruPerCpuHashMap, PerCpuArray},
    programs::{SkBuffContext, SockAddrContext, SockContext, SockOpsContext, SockoptContext},
};
use throttle_common::{
    cap_pace, is_link_local, is_local_connection, is_loopback_dest, pace_adjust, pacing_rate, rwnd, share_adjust,
    window_clamp, Counters, ProcSlots, ProcTraffic, Slot, SlotMode, SockOwner, EPOCH_SHIFT, GEN_ALL_DOWN, GEN_ALL_UP,
    GEN_LEN, GEN_PROCS, GEN_THROTTLING, MAX_MONITORED, MAX_PROCS, MAX_SLOTS, OWNER_BLOCKED, OWNER_SEQ_VALID,
};

/// `BPF_F_CLONE`: accepted sockets inherit the listener's owner.
const BPF_F_CLONE: usize = 1 << 9;

/// SK_STORAGE declared by hand: aya-ebpf's `SkStorage` cannot set `BPF_F_CLONE`.
#[repr(C)]
pub struct OwnerStorage {
    r#type: *const [i32; BPF_MAP_TYPE_SK_STORAGE as usize],
    key: *const i32,
    value: *const SockOwner,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize | BPF_F_CLONE],
}
unsafe impl Sync for OwnerStorage {}

#[unsafe(link_section = ".maps")]
#[unsafe(export_name = "CT_SK_OWNER")]
static SK_OWNER: OwnerStorage = OwnerStorage {
    r#type: ptr::null(),
    key: ptr::null(),
    value: ptr::null(),
    max_entries: ptr::null(),
    map_flags: ptr::null(),
};

#[map(name = "CT_PROCS")]
static PROCS: HashMap<u32, ProcSlots> = HashMap::with_max_entries(MAX_PROCS, 0);
#[map(name = "CT_SLOTS")]
static SLOTS: Array<Slot> = Array::with_max_entries(MAX_SLOTS, 0);
/// `GEN_PROCS`: generation of CT_PROCS. `GEN_THROTTLING`: nonzero while
/// anything is throttled (0 lets every packet out before any helper
/// call). `GEN_ALL_UP/DOWN`: the `all` cap's slots. Array lookups are
/// inlined by the verifier: each costs a load, not a helper call.
#[map(name = "CT_GEN")]
pub(crate) static GEN: Array<u32> = Array::with_max_entries(GEN_LEN, 0);
#[map(name = "CT_COUNTERS")]
static COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_SLOTS, 0);

/// Every process's traffic, for the monitor.
#[map(name = "CT_PROC_TRAFFIC")]
static PROC_TRAFFIC: LruPerCpuHashMap<u32, ProcTraffic> = LruPerCpuHashMap::with_max_entries(MAX_MONITORED, 0);

/// Set at load time by the daemon (config `exempt_loopback`).
#[unsafe(no_mangle)]
static CT_EXEMPT_LOOPBACK: u32 = 1;
/// Set at load time by the daemon (config `monitor.enabled`).
#[unsafe(no_mangle)]
static CT_MONITOR: u32 = 1;

const LOOPBACK_IFINDEX: u32 = 1;
const PASS: i32 = 1;
const DROP: i32 = 0;
/// Egress only: drop and tell TCP it met congestion, so it keeps the segment
/// queued and shrinks cwnd instead of retransmitting later.
const DROP_CN: i32 = 2;

const SOL_SOCKET: i32 = 1;
const SO_MAX_PACING_RATE: i32 = 47;
const BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: u32 = 4;
const BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB: u32 = 5;
/// Called as TCP sizes the options of each outgoing segment (every ACK of
/// a download), before it picks the window the segment advertises. Only
/// for sockets with the WRITE_HDR_OPT flag; we reserve no option space.
/// (PARSE_HDR_OPT would follow received segments, but TCP's fast path
/// skips it: measured, the window never moved after the handshake.)
const BPF_SOCK_OPS_HDR_OPT_LEN_CB: u32 = 14;
/// `args[0]` of that callback when `tcp_current_mss()` asks, with no
/// segment: once per send call and per ACK received on a sending socket.
const BPF_WRITE_HDR_TCP_CURRENT_MSS: u32 = 1;
const BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG: i32 = 1 << 6;
/// `bpf_{get,set}sockopt` option of a TCP socket's sock_ops callback flags
/// (Linux 6.11); userspace `setsockopt` does not know it (ENOPROTOOPT), so
/// `ct_setsockopt` claims it for the daemon.
const TCP_BPF_SOCK_OPS_CB_FLAGS: i32 = 1008;
pub(crate) const IPPROTO_TCP: u8 = 6;
const SOL_TCP: i32 = 6;
const AF_INET6: u32 = 10;
const TCP_WINDOW_CLAMP: i32 = 10;

#[inline(always)]
pub(crate) fn owner_of(sk: *mut bpf_sock) -> Option<&'static mut SockOwner> {
    if sk.is_null() {
        return None;
    }
    let p = unsafe { bpf_sk_storage_get(ptr::from_ref(&SK_OWNER).cast_mut().cast(), sk.cast(), ptr::null_mut(), 0) };
    unsafe { p.cast::<SockOwner>().as_mut() }
}

#[inline(always)]
fn monitoring() -> bool {
    (unsafe { ptr::read_volatile(&CT_MONITOR) }) != 0
}

#[inline(always)]
fn exempt_loopback() -> bool {
    (unsafe { ptr::read_volatile(&CT_EXEMPT_LOOPBACK) }) != 0
}

#[inline(always)]
pub(crate) fn throttling() -> bool {
    gen(GEN_THROTTLING) != 0
}

#[inline(always)]
pub(crate) fn gen(i: u32) -> u32 {
    GEN.get(i).copied().unwrap_or(0)
}

/// The packet's owner and whether it is on the loopback device; `None` when
/// neither the monitor nor a throttle could want the packet.
#[inline(always)]
fn skb_owner(ctx: &SkBuffContext) -> Option<(&'static mut SockOwner, bool)> {
    let monitor = monitoring();
    if !monitor && !throttling() {
        return None;
    }
    let lo = unsafe { (*ctx.skb.skb).ifindex } == LOOPBACK_IFINDEX;
    if !monitor && lo && exempt_loopback() {
        return None;
    }
    // sk_storage_get accepts a sock_common and checks for a full socket itself.
    owner_of(skb_sock(ctx)).map(|o| (o, lo))
}

/// Whether the peer is this host or its link: the loopback device, or a
/// link-local peer address (`dst` on egress, source on ingress).
#[inline(always)]
fn is_local(ctx: &SkBuffContext, lo: bool, egress: bool) -> bool {
    if lo {
        return true;
    }
    let Some(head) = peek::<[u8; 4]>(ctx, 0) else { return false };
    let (v6, off) = match (head[0] >> 4, egress) {
        (4, true) => (false, 16),
        (4, false) => (false, 12),
        (6, true) => (true, 24),
        (6, false) => (true, 8),
        _ => return false,
    };
    peek::<u32>(ctx, off).is_some_and(|w| is_link_local(v6, w))
}

/// Counts one packet for its owner in the monitor's per-CPU map.
#[inline(always)]
fn account(tgid: u32, egress: bool, local: bool, len: u64) {
    let mut p = PROC_TRAFFIC.get_ptr_mut(&tgid);
    if p.is_none() {
        let _ = PROC_TRAFFIC.insert(&tgid, &ProcTraffic::default(), 0);
        p = PROC_TRAFFIC.get_ptr_mut(&tgid);
    }
    let Some(t) = p.and_then(|p| unsafe { p.as_mut() }) else { return };
    let t = if local { &mut t.local } else { &mut t.internet };
    if egress {
        t.up_bytes += len;
        t.up_pkts += 1;
    } else {
        t.down_bytes += len;
        t.down_pkts += 1;
    }
}

/// Monitor accounting; true when throttling should look at the packet too.
#[inline(always)]
fn monitor_then_throttle(ctx: &SkBuffContext, tgid: u32, lo: bool, egress: bool, len: u64) -> bool {
    if monitoring() {
        account(tgid, egress, is_local(ctx, lo, egress), len);
    }
    throttling() && !(lo && exempt_loopback())
}

#[inline(always)]
fn skb_sock(ctx: &SkBuffContext) -> *mut bpf_sock {
    unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk }
}

/// True when every byte of `[seq, end)` was already delivered to the socket.
#[inline(always)]
fn already_received(ctx: &SkBuffContext, end: u32) -> bool {
    let sk = skb_sock(ctx);
    if sk.is_null() {
        return false;
    }
    let tp = unsafe { bpf_tcp_sock(sk) };
    !tp.is_null() && (end.wrapping_sub(unsafe { (*tp).rcv_nxt }) as i32) <= 0
}

/// The owner's slots, from the per-socket cache when it is current.
#[inline(always)]
pub(crate) fn owner_slots(owner: &mut SockOwner) -> ProcSlots {
    let g = gen(GEN_PROCS);
    if owner.gen != g {
        let p = unsafe { PROCS.get(&owner.tgid) }.copied().unwrap_or_default();
        owner.up = p.up;
        owner.down = p.down;
        owner.up_cap = p.up_cap;
        owner.down_cap = p.down_cap;
        owner.gen = g;
    }
    ProcSlots { up: owner.up, down: owner.down, up_cap: owner.up_cap, down_cap: owner.down_cap }
}

/// The slots a packet must pass in one direction, innermost first: the
/// owner's own throttle, its user's cap, the `all` cap (0: none).
#[inline(always)]
fn chain(p: &ProcSlots, egress: bool) -> [u32; 3] {
    if egress {
        [p.up, p.up_cap, gen(GEN_ALL_UP)]
    } else {
        [p.down, p.down_cap, gen(GEN_ALL_DOWN)]
    }
}

#[inline(always)]
fn bucket_of(id: u32) -> Option<&'static mut Slot> {
    slot_of(id).filter(|s| s.mode == SlotMode::Bucket as u32)
}

/// Packets of at most this many bytes are control traffic: pure ACKs,
/// SYNs, FINs, probes.
const SMALL_PACKET: u64 = 128;

/// Extra credit for a control packet: a second burst. It is charged like
/// any packet, but a dropped ACK stalls the flow in the other direction
/// (under an `all` cap, a download's ACKs go through the upload cap), so
/// control packets pass where data waits, up to a bounded debt.
#[inline(always)]
fn small_credit(slot: &Slot, len: u64) -> u64 {
    if len <= SMALL_PACKET {
        slot.burst_ns
    } else {
        0
    }
}

/// Gives back what the buckets before a refusal charged, so a packet one
/// cap drops costs the others nothing.
#[inline(always)]
fn refund(ids: &[u32; 3], charged: &[u64; 3]) {
    for i in 0..3 {
        if charged[i] != 0 {
            if let Some(s) = slot_of(ids[i]) {
                atomic_add(ptr::from_mut(&mut s.tat_ns), charged[i].wrapping_neg());
            }
        }
    }
}

/// Counts a packet that passed in every slot of its chain that counts:
/// buckets and counting slots, and on egress HTB classes.
#[inline(always)]
fn count_passed(ids: &[u32; 3], len: u64, egress: bool) {
    for id in ids {
        if let Some(s) = slot_of(*id) {
            let counts = s.mode == SlotMode::Bucket as u32
                || s.mode == SlotMode::Count as u32
                || (egress && s.mode == SlotMode::HtbClass as u32);
            if counts {
                count(*id, len, true);
            }
        }
    }
}

/// The first blocking slot of a chain, if any.
#[inline(always)]
fn blocked_in(ids: &[u32; 3]) -> u32 {
    for id in ids {
        if blocks(*id) {
            return *id;
        }
    }
    0
}

#[inline(always)]
pub(crate) fn slot_of(id: u32) -> Option<&'static mut Slot> {
    if id == 0 {
        return None;
    }
    SLOTS.get_ptr_mut(id).and_then(|p| unsafe { p.as_mut() })
}

#[inline(always)]
fn count(id: u32, len: u64, passed: bool) {
    if let Some(c) = COUNTERS.get_ptr_mut(id).and_then(|p| unsafe { p.as_mut() }) {
        if passed {
            c.pass_bytes += len;
            c.pass_pkts += 1;
        } else {
            c.drop_bytes += len;
            c.drop_pkts += 1;
        }
    }
}

/// BPF `cmpxchg_64`: the target spec is single-threaded, so `core` atomics
/// may be lowered to plain memory operations; the instruction is emitted by hand.
#[inline(always)]
fn cmpxchg(p: *mut u64, old: u64, new: u64) -> u64 {
    let prev: u64;
    unsafe { asm!("r0 = cmpxchg_64({p} + 0, r0, {new})", p = in(reg) p, new = in(reg) new, inout("r0") old => prev) };
    prev
}

#[inline(always)]
fn atomic_add(p: *mut u64, v: u64) {
    unsafe { asm!("lock *(u64 *)({p} + 0) += {v}", p = in(reg) p, v = in(reg) v) };
}

/// GCRA: conforming when the theoretical arrival time is at most
/// `tolerance_ns` ahead of now (the burst, plus the debt a retransmission
/// may run up).
#[inline(always)]
fn admit(slot: &mut Slot, cost: u64, tolerance_ns: u64, now: u64) -> bool {
    let tat = ptr::from_mut(&mut slot.tat_ns);
    let mut old = unsafe { ptr::read_volatile(tat) };
    // Bounded retries keep the verifier happy; a lost race falls back to a plain add.
    for _ in 0..4 {
        let base = if old < now { now } else { old };
        if base - now > tolerance_ns {
            return false;
        }
        let prev = cmpxchg(tat, old, base + cost);
        if prev == old {
            return true;
        }
        old = prev;
    }
    atomic_add(tat, cost);
    true
}

/// Counts a socket once per activity epoch `e` in a slot, so that window
/// control can share the rate among the sockets that are receiving (the
/// caller checks that this socket was not counted in `e` yet). A count
/// lost to a racing epoch change costs one epoch of a slightly larger
/// share, which the bucket feedback absorbs.
#[inline(always)]
fn mark_active(slot: &mut Slot, e: u64) {
    let se = unsafe { ptr::read_volatile(&slot.epoch) };
    if se != e && cmpxchg(ptr::from_mut(&mut slot.epoch), se, e) == se {
        let cur = unsafe { ptr::read_volatile(&slot.active_cur) };
        slot.active_prev = if se + 1 == e { cur } else { 0 };
        slot.active_cur = 0;
    }
    atomic_add(ptr::from_mut(&mut slot.active_cur), 1);
}

#[cgroup_sock(sock_create)]
pub fn ct_sock_create(ctx: SockContext) -> i32 {
    let mut owner = SockOwner { tgid: (unsafe { bpf_get_current_pid_tgid() } >> 32) as u32, ..Default::default() };
    unsafe {
        bpf_sk_storage_get(
            ptr::from_ref(&SK_OWNER).cast_mut().cast(),
            ctx.sock.cast(),
            ptr::from_mut(&mut owner).cast(),
            BPF_SK_STORAGE_GET_F_CREATE as u64,
        );
    }
    1
}

/// What both packet hooks do first: the packet's owner, its length on the
/// wire and its chain, or the verdict when no slot wants the packet (pass)
/// or one blocks it (drop, counted).
#[inline(always)]
fn chain_of(ctx: &SkBuffContext, egress: bool) -> Result<(&'static mut SockOwner, u64, [u32; 3]), i32> {
    let Some((owner, lo)) = skb_owner(ctx) else { return Err(PASS) };
    let len = wire_len(ctx);
    if !monitor_then_throttle(ctx, owner.tgid, lo, egress, len) {
        return Err(PASS);
    }
    let ids = chain(&owner_slots(owner), egress);
    if ids == [0; 3] {
        return Err(PASS);
    }
    let blocked = blocked_in(&ids);
    if blocked != 0 {
        count(blocked, len, false);
        return Err(DROP);
    }
    Ok((owner, len, ids))
}

#[cgroup_skb(egress)]
pub fn ct_egress(ctx: SkBuffContext) -> i32 {
    let (_, len, ids) = match chain_of(&ctx, true) {
        Ok(c) => c,
        Err(verdict) => return verdict,
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let mut charged = [0u64; 3];
    let mut class = 0;
    for i in 0..3 {
        let Some(slot) = slot_of(ids[i]) else { continue };
        if slot.mode == SlotMode::HtbClass as u32 && class == 0 {
            class = slot.classid;
        }
        if slot.mode != SlotMode::Bucket as u32 {
            continue;
        }
        let cost = slot.cost_ns(len);
        if !admit(slot, cost, slot.burst_ns + small_credit(slot, len), now) {
            refund(&ids, &charged);
            count(ids[i], len, false);
            return DROP_CN;
        }
        charged[i] = cost;
    }
    // The innermost HTB class: a throttle's own, inside its caps' buckets.
    if class != 0 {
        unsafe { (*ctx.skb.skb).priority = class };
    }
    count_passed(&ids, len, true);
    PASS
}

/// Reads a `T` at `off` of the linear packet data `[start, end)` (direct
/// packet access: no helper call), or `None` past its end.
#[inline(always)]
pub(crate) fn peek_at<T: Copy>(start: usize, end: usize, off: usize) -> Option<T> {
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some(unsafe { ptr::read_unaligned((start + off) as *const T) })
}

#[inline(always)]
fn peek<T: Copy>(ctx: &SkBuffContext, off: usize) -> Option<T> {
    let skb = ctx.skb.skb;
    unsafe { peek_at((*skb).data as usize, (*skb).data_end as usize, off) }
}

/// Offsets of a TCP segment: `(l4 offset, header length, seq)`. Headers are
/// read in fixed-size chunks: with a 1-byte read LLVM folds the bounds check
/// into a form the verifier cannot use.
#[inline(always)]
fn tcp_header(ctx: &SkBuffContext) -> Option<(u32, u32, u32)> {
    let ip: [u8; 20] = peek(ctx, 0)?;
    let (l4, proto) = match ip[0] >> 4 {
        4 => (((ip[0] & 0xf) as usize) * 4, ip[9]),
        6 => (40, ip[6]),
        _ => return None,
    };
    if proto != IPPROTO_TCP || !(20..=60).contains(&l4) {
        return None;
    }
    let tcp: [u8; 16] = peek(ctx, l4)?;
    let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    let doff = ((tcp[12] >> 4) as u32) * 4;
    Some((l4 as u32, l4 as u32 + doff, seq))
}

/// Bytes on the wire, as HTB counts them: a GSO super-packet carries its
/// headers once but leaves as `gso_segs` packets.
#[inline(always)]
fn wire_len(ctx: &SkBuffContext) -> u64 {
    let len = ctx.len() as u64;
    let segs = unsafe { (*ctx.skb.skb).gso_segs } as u64;
    if segs <= 1 {
        return len;
    }
    // A plain integer, not the Option: LLVM may leave the None arm's tuple
    // registers undefined, which the verifier refuses to read.
    let h = tcp_header(ctx).map_or(0, |(_, h, _)| h) as u64;
    len + (segs - 1) * h
}

#[cgroup_skb(ingress)]
pub fn ct_ingress(ctx: SkBuffContext) -> i32 {
    let (owner, len, ids) = match chain_of(&ctx, false) {
        Ok(c) => c,
        Err(verdict) => return verdict,
    };
    if bucket_of(ids[0]).is_none() && bucket_of(ids[1]).is_none() && bucket_of(ids[2]).is_none() {
        count_passed(&ids, len, false);
        return PASS;
    }
    let hdr = tcp_header(&ctx);
    let now = unsafe { bpf_ktime_get_ns() };
    // A retransmission of a segment we dropped passes on credit: dropping it
    // again is what sends TCP into back-to-back RTOs on a policed path.
    let mut retrans = false;
    if let Some((_, h, seq)) = hdr {
        let payload = ctx.len().saturating_sub(h);
        if payload > 0 {
            let end = seq.wrapping_add(payload);
            let e = now >> EPOCH_SHIFT;
            if owner.epoch != e as u32 {
                owner.epoch = e as u32;
                for id in &ids {
                    if let Some(s) = bucket_of(*id) {
                        mark_active(s, e);
                    }
                }
            }
            // A pure duplicate costs the application nothing, and TCP needs
            // it to (D)SACK the sender out of recovery: pass it uncharged.
            if already_received(&ctx, end) {
                count_passed(&ids, len, false);
                return PASS;
            }
            let valid = owner.flags & OWNER_SEQ_VALID != 0;
            retrans = valid && (seq.wrapping_sub(owner.rcv_end_seq) as i32) < 0;
            if !valid || (end.wrapping_sub(owner.rcv_end_seq) as i32) > 0 {
                owner.rcv_end_seq = end;
                owner.flags |= OWNER_SEQ_VALID;
            }
        }
    }
    // Except under a window of under two segments (a LAN round trip, where
    // even one segment per RTT outruns the limit): there a retransmission
    // passed on credit let the sender go straight back to a drop (31% of
    // segments retransmitted); dropped, it waits out a retransmission
    // timeout that the bucket's burst covers.
    // After a drop such a socket waits until a quarter of the burst is
    // back: the loss probe that TCP sends a few ms later is dropped too,
    // so it pauses a whole retransmission timeout (200 ms) per drop instead
    // of a probe timeout (4-8 ms), and retransmits about twice per 200 ms
    // instead of once per few segments.
    let lan = owner.clamp != 0 && owner.clamp < 2 * 1448;
    let waiting = lan && owner.flags & OWNER_BLOCKED != 0;
    let mut charged = [0u64; 3];
    for i in 0..3 {
        let Some(slot) = bucket_of(ids[i]) else { continue };
        let tolerance = if retrans && !lan {
            slot.burst_ns + slot.debt_ns
        } else if waiting {
            slot.burst_ns - slot.burst_ns / 4
        } else {
            slot.burst_ns
        };
        let cost = slot.cost_ns(len);
        if !admit(slot, cost, tolerance + small_credit(slot, len), now) {
            refund(&ids, &charged);
            if lan {
                owner.flags |= OWNER_BLOCKED;
            }
            count(ids[i], len, false);
            return DROP;
        }
        charged[i] = cost;
    }
    if lan {
        owner.flags &= !OWNER_BLOCKED;
    }
    count_passed(&ids, len, false);
    PASS
}

#[inline(always)]
fn setsockopt_u32(ctx: &SockOpsContext, level: i32, name: i32, mut v: u32) {
    unsafe { bpf_setsockopt(ctx.ops.cast::<c_void>(), level, name, ptr::from_mut(&mut v).cast(), 4) };
}

/// New TCP connections of throttled processes: pace uploads, and put
/// downloads under window control (a callback per ACK sent).
/// Existing connections get a fixed clamp from the daemon instead.
#[sock_ops]
pub fn ct_sockops(ctx: SockOpsContext) -> u32 {
    let op = ctx.op();
    if op == BPF_SOCK_OPS_HDR_OPT_LEN_CB {
        per_segment(&ctx);
        return 1;
    }
    if (op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB) || !throttling() {
        return 1;
    }
    let v6 = ctx.family() == AF_INET6;
    let (local, remote) = if v6 {
        (ctx.local_ip6(), ctx.remote_ip6())
    } else {
        ([ctx.local_ip4(), 0, 0, 0], [ctx.remote_ip4(), 0, 0, 0])
    };
    // Loopback traffic is never policed, so its connections are not tuned either.
    if exempt_loopback() && is_local_connection(v6, local, remote) {
        return 1;
    }
    // A v4-mapped peer is IPv4 on the wire.
    let wire_v6 = v6 && !(remote[0] == 0 && remote[1] == 0 && u32::from_be(remote[2]) == 0xffff);
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    let Some(owner) = owner_of(sk) else { return 1 };
    let procs = owner_slots(owner);
    let up = chain(&procs, true);
    // The tightest bucket of the chain: a flow never outruns any of them.
    let mut pace = u64::MAX;
    for id in &up {
        if let Some(s) = bucket_of(*id) {
            pace = if s.rate < pace { s.rate } else { pace };
        }
    }
    if pace != u64::MAX {
        setsockopt_u32(
            &ctx,
            SOL_SOCKET,
            SO_MAX_PACING_RATE,
            pacing_rate(pace, wire_v6).min(u32::MAX as u64 - 1) as u32,
        );
    }
    // Under a cap, the per-segment callback paces the upload at its share.
    if bucket_of(up[1]).is_some() || bucket_of(up[2]).is_some() {
        let _ = ctx.set_cb_flags(ctx.cb_flags() as i32 | BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG);
    }
    if let Some(slot) = window_slot(&chain(&procs, false)) {
        if slot.rwnd_gain != 0 {
            // The per-ACK callback only for throttled downloads: it costs
            // every segment sent ~85 ns. A socket whose owner is throttled
            // later gets it from the daemon (`ct_setsockopt`).
            let _ = ctx.set_cb_flags(ctx.cb_flags() as i32 | BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG);
            control_window(&ctx, owner, &procs);
        } else {
            let rtt_us = (unsafe { (*ctx.ops).srtt_us } >> 3) as u64;
            setsockopt_u32(&ctx, SOL_TCP, TCP_WINDOW_CLAMP, window_clamp(slot.rate, rtt_us));
        }
    }
    1
}

/// The per-segment callback. Only a segment being built matters (an MSS
/// query has nothing to tune), and only one with payload has anything to
/// pace: skipping the rest halves the calls on a sending socket and
/// spares a download's ACKs the pacing work.
#[inline(always)]
fn per_segment(ctx: &SockOpsContext) {
    if ctx.arg(0) == BPF_WRITE_HDR_TCP_CURRENT_MSS {
        return;
    }
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    let Some(owner) = owner_of(sk) else { return };
    let p = owner_slots(owner);
    control_window(ctx, owner, &p);
    if unsafe { (*ctx.ops).skb_len } != 0 {
        control_pacing(ctx, owner, &p);
    }
}

/// Paces an upload under a cap at its share (see `cap_pace`): the cap's
/// policer then rarely drops, and an egress drop is a lost segment that
/// TCP finds only by its timers. Runs for every segment with payload, so
/// it calls into TCP only when the rate should move by more than 1/64, or
/// once an epoch. Never faster than the socket's own throttle.
#[inline(always)]
fn control_pacing(ctx: &SockOpsContext, owner: &mut SockOwner, p: &ProcSlots) {
    let caps = binding_caps(&[p.up, p.up_cap, gen(GEN_ALL_UP)]);
    if bucket_of(caps[0]).is_none() && bucket_of(caps[1]).is_none() {
        // The cap went: back to the own throttle's pacing, or none (~0).
        if owner.pace != 0 {
            owner.pace = 0;
            let own = bucket_of(p.up).map_or(u32::MAX as u64, |s| pacing_rate(s.rate, ctx.family() == AF_INET6));
            setsockopt_u32(ctx, SOL_SOCKET, SO_MAX_PACING_RATE, own.min(u32::MAX as u64) as u32);
        }
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let e = now >> EPOCH_SHIFT;
    let fresh = owner.pace_epoch != e as u32;
    let mut share = u64::MAX;
    let mut fill = 0;
    for id in &caps {
        if let Some(s) = bucket_of(*id) {
            if fresh {
                mark_active(s, e);
            }
            let tat = unsafe { ptr::read_volatile(&s.tat_ns) };
            let debt = if tat > now { tat - now } else { 0 };
            let burst = if s.burst_ns == 0 { 1 } else { s.burst_ns };
            let f = if debt >= burst { 65536 } else { (debt << 16) / burst };
            let active = core::cmp::max(s.active_cur, s.active_prev);
            let adj = if owner.pace_adj == 0 { 1024 } else { owner.pace_adj as u64 };
            let r = cap_pace(s.rate, active, adj, f);
            share = if r < share { r } else { share };
            fill = if f > fill { f } else { fill };
        }
    }
    if fresh {
        let tx = unsafe { (*ctx.ops).bytes_acked } as u32;
        if owner.pace_epoch.wrapping_add(1) == e as u32 && owner.pace != 0 {
            let budget = owner.pace as u64 * (1 << EPOCH_SHIFT) / 1_000_000_000;
            owner.pace_adj = pace_adjust(owner.pace_adj, tx.wrapping_sub(owner.tx_mark) as u64, budget, fill);
        }
        owner.tx_mark = tx;
        owner.pace_epoch = e as u32;
    }
    let own = bucket_of(p.up).map_or(u64::MAX, |s| s.rate);
    let pace = if own < share { own } else { share };
    let pace = if pace > (u32::MAX - 1) as u64 { (u32::MAX - 1) as u64 } else { pace } as u32;
    let cur = owner.pace;
    let diff = if pace > cur { pace - cur } else { cur - pace };
    if diff > cur / 64 || fresh {
        owner.pace = pace;
        let v6 = ctx.family() == AF_INET6;
        setsockopt_u32(ctx, SOL_SOCKET, SO_MAX_PACING_RATE, pacing_rate(pace as u64, v6) as u32);
    }
}

/// The caps of a chain that can bind a socket: all of them, or with an
/// own bucket only those slower than it (0 for the others). A throttle's
/// own rate already is its share of a cap where priorities divide one,
/// and a per-socket share of a cap it sits well inside would only slow it.
#[inline(always)]
fn binding_caps(ids: &[u32; 3]) -> [u32; 2] {
    let own = bucket_of(ids[0]).map_or(u64::MAX, |s| s.rate);
    let binds = |id: u32| if bucket_of(id).is_some_and(|s| s.rate < own) { id } else { 0 };
    [binds(ids[1]), binds(ids[2])]
}

/// The download bucket that bounds a socket's share most: the smallest
/// rate per receiving socket along its chain (the own bucket, and the caps
/// that bind it). Window control sizes the window from it, so the tightest
/// level is met without drops.
#[inline(always)]
fn window_slot(ids: &[u32; 3]) -> Option<&'static mut Slot> {
    let caps = binding_caps(ids);
    let ids = [ids[0], caps[0], caps[1]];
    let mut best = 0;
    let mut least = u64::MAX;
    for id in &ids {
        if let Some(s) = bucket_of(*id) {
            let active = core::cmp::max(core::cmp::max(s.active_cur, s.active_prev), 1);
            if s.rate / active < least {
                least = s.rate / active;
                best = *id;
            }
        }
    }
    bucket_of(best)
}

/// Keeps a download socket's receive window at its share of the rate times
/// its smoothed RTT (see `rwnd`). Runs for every segment sent, so it
/// calls into TCP only when the window should move by more than 1/64, or
/// once an epoch (autotuning raises the clamp when it grows the buffer).
#[inline(always)]
fn control_window(ctx: &SockOpsContext, owner: &mut SockOwner, p: &ProcSlots) {
    let down = chain(p, false);
    let Some(slot) = window_slot(&down).filter(|s| s.rwnd_gain != 0) else {
        // No longer throttled: lift the clamp once (autotuning takes over).
        if owner.clamp != 0 {
            owner.clamp = 0;
            setsockopt_u32(ctx, SOL_TCP, TCP_WINDOW_CLAMP, i32::MAX as u32);
        }
        // Released: the callback goes too. (Another slot, say while a
        // limit migrates between backends, keeps it for the next one; an
        // upload cap, or a cap's pacing not yet undone, keeps it for
        // `control_pacing`.)
        if down == [0; 3] && p.up_cap == 0 && gen(GEN_ALL_UP) == 0 && owner.pace == 0 {
            let _ = ctx.set_cb_flags(ctx.cb_flags() as i32 & !BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG);
        }
        return;
    };
    // The minimum RTT, not the smoothed one: a receiver's RTT samples come
    // from the handshake and the ACKs of what little it sent, and a delayed
    // ACK (up to 40 ms) in the smoothed value made equal sockets' windows
    // differ by half (shares 0.84-1.24 of ten streams).
    let min = unsafe { (*ctx.ops).rtt_min } as u64;
    let srtt_us = if min != 0 { min } else { (unsafe { (*ctx.ops).srtt_us } >> 3) as u64 };
    let now = unsafe { bpf_ktime_get_ns() };
    let tat = unsafe { ptr::read_volatile(&slot.tat_ns) };
    let debt = if tat > now { tat - now } else { 0 };
    let burst = if slot.burst_ns == 0 { 1 } else { slot.burst_ns };
    let fill = if debt >= burst { 65536 } else { (debt << 16) / burst };
    let active = core::cmp::max(slot.active_cur, slot.active_prev);
    let e = (now >> EPOCH_SHIFT) as u32;
    let new_epoch = owner.clamp_epoch != e;
    if new_epoch {
        let rx = unsafe { (*ctx.ops).bytes_received } as u32;
        if owner.clamp_epoch.wrapping_add(1) == e && owner.clamp != 0 {
            // Payload of an equal share in one epoch (1448 of 1500 bytes).
            let a = if active == 0 { 1 } else { active };
            let share = slot.rate * 1448 / 1500 * (1 << EPOCH_SHIFT) / 1_000_000_000 / a;
            owner.share_adj = share_adjust(owner.share_adj, rx.wrapping_sub(owner.rx_mark) as u64, share);
        }
        owner.rx_mark = rx;
    }
    let adj = if owner.share_adj == 0 { 1024 } else { owner.share_adj as u64 };
    let w = rwnd((slot.rate * adj) >> 10, srtt_us, active, slot.rwnd_gain as u64, fill, slot.rwnd_floor as u64);
    let cur = owner.clamp;
    let diff = if w > cur { w - cur } else { cur - w };
    if diff > cur / 64 || new_epoch {
        owner.clamp = w;
        owner.clamp_epoch = e;
        setsockopt_u32(ctx, SOL_TCP, TCP_WINDOW_CLAMP, w);
    }
}

/// `setsockopt(SOL_TCP, TCP_BPF_SOCK_OPS_CB_FLAGS, &on)` from userspace
/// turns the window-control callback of that TCP socket on (1) or off (0):
/// the daemon's way to put a download that was already running under
/// window control (only `sock_ops` can set the flags otherwise). Anyone
/// may do it to their own socket; it only tunes how the socket's own limit
/// is enforced. Every other option passes untouched.
#[cgroup_sockopt(setsockopt)]
pub fn ct_setsockopt(ctx: SockoptContext) -> i32 {
    let so = ctx.sockopt;
    if unsafe { (*so).level != SOL_TCP || (*so).optname != TCP_BPF_SOCK_OPS_CB_FLAGS } {
        return 1;
    }
    let (start, end) = unsafe { ((*so).__bindgen_anon_2.optval as usize, (*so).__bindgen_anon_3.optval_end as usize) };
    let Some(on) = peek_at::<i32>(start, end, 0) else { return 1 };
    let sk = unsafe { (*so).__bindgen_anon_1.sk };
    if sk.is_null() {
        return 1;
    }
    let mut cur: i32 = 0;
    if unsafe { bpf_getsockopt(sk.cast(), SOL_TCP, TCP_BPF_SOCK_OPS_CB_FLAGS, ptr::from_mut(&mut cur).cast(), 4) } != 0
    {
        return 0;
    }
    let mut flags =
        if on != 0 { cur | BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG } else { cur & !BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG };
    let opt = ptr::from_mut(&mut flags).cast();
    if unsafe { bpf_setsockopt(sk.cast(), SOL_TCP, TCP_BPF_SOCK_OPS_CB_FLAGS, opt, 4) } != 0 {
        return 0;
    }
    // Done here: the kernel's own setsockopt is skipped.
    unsafe { (*so).optlen = -1 };
    1
}

#[inline(always)]
fn blocks(id: u32) -> bool {
    slot_of(id).is_some_and(|s| s.mode == SlotMode::Block as u32)
}

/// Whether the caller of `connect()`/`sendmsg()` is blocked, by the
/// socket's owner (as the packet hooks see it), or by the calling process
/// for a socket with no owner record (created before the daemon, and not
/// seeded). Process context: here the current task is the caller.
#[inline(always)]
fn caller_blocked(ctx: &SockAddrContext) -> bool {
    let sk = unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk };
    let procs = match owner_of(sk) {
        Some(owner) => owner_slots(owner),
        None => {
            let tgid = (unsafe { bpf_get_current_pid_tgid() } >> 32) as u32;
            unsafe { PROCS.get(&tgid) }.copied().unwrap_or_default()
        }
    };
    blocked_in(&chain(&procs, true)) != 0 || blocked_in(&chain(&procs, false)) != 0
}

/// 0 (the caller gets EPERM) for a blocked process's non-loopback
/// destination; 1 (go on) otherwise.
#[inline(always)]
fn refuse_blocked(ctx: &SockAddrContext, v6: bool) -> i32 {
    if !throttling() {
        return PASS;
    }
    let sa = ctx.sock_addr;
    // One 4-byte context load per word: the verifier's rule for user_ip6.
    let words = unsafe {
        if v6 {
            [
                ptr::read_volatile(&(*sa).user_ip6[0]),
                ptr::read_volatile(&(*sa).user_ip6[1]),
                ptr::read_volatile(&(*sa).user_ip6[2]),
                ptr::read_volatile(&(*sa).user_ip6[3]),
            ]
        } else {
            [ptr::read_volatile(&(*sa).user_ip4), 0, 0, 0]
        }
    };
    if exempt_loopback() && is_loopback_dest(v6, words) {
        return PASS;
    }
    if caller_blocked(ctx) {
        DROP
    } else {
        PASS
    }
}

#[cgroup_sock_addr(connect4)]
pub fn ct_connect4(ctx: SockAddrContext) -> i32 {
    refuse_blocked(&ctx, false)
}

#[cgroup_sock_addr(connect6)]
pub fn ct_connect6(ctx: SockAddrContext) -> i32 {
    refuse_blocked(&ctx, true)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn ct_sendmsg4(ctx: SockAddrContext) -> i32 {
    refuse_blocked(&ctx, false)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn ct_sendmsg6(ctx: SockAddrContext) -> i32 {
    refuse_blocked(&ctx, true)
}
