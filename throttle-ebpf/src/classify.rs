//! `ct_ifb_cls`: tc ingress classifier of the `ifb_tc` backend. An arriving
//! packet has no socket yet, so look the local socket up by its 4-tuple,
//! read the owner's download slot and, for a slot in classify mode (or the
//! `all` cap's, when it runs on `ifb_tc`), set `skb->priority` to the HTB
//! class and redirect to the interface's IFB.
//! IFB re-injects with `tc_skip_classify`, so the packet is not seen twice.
use core::{mem::size_of, ptr};

use aya_ebpf::{
    bindings::{bpf_sock, bpf_sock_tuple},
    helpers::generated::{bpf_redirect, bpf_sk_fullsock, bpf_sk_lookup_udp, bpf_sk_release, bpf_skc_lookup_tcp},
    macros::{classifier, map},
    maps::HashMap,
    programs::TcContext,
};
use throttle_common::{SlotMode, GEN_ALL_DOWN};

use crate::datapath::{gen, owner_of, owner_slots, peek_at, slot_of, throttling, IPPROTO_TCP};

/// Managed interface ifindex → its IFB's ifindex.
#[map(name = "CT_IFB")]
static IFB: HashMap<u32, u32> = HashMap::with_max_entries(256, 0);

/// "Continue with the next program or filter" under both TCX and clsact.
const TC_ACT_UNSPEC: i32 = -1;
const BPF_F_CURRENT_NETNS: u64 = u64::MAX;
const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_UDP: u8 = 17;

#[repr(C)]
struct Tuple6 {
    saddr: [u8; 16],
    daddr: [u8; 16],
    ports: [u8; 4],
}

#[repr(C)]
struct Tuple4 {
    saddr: [u8; 4],
    daddr: [u8; 4],
    ports: [u8; 4],
}

#[inline(always)]
fn peek<T: Copy>(ctx: &TcContext, off: usize) -> Option<T> {
    peek_at(ctx.data(), ctx.data_end(), off)
}

/// Looks up the local socket of an arriving TCP or UDP packet (referenced:
/// the caller must release it).
#[inline(always)]
fn lookup(ctx: &TcContext) -> Option<*mut bpf_sock> {
    let eth: [u8; ETH_HLEN] = peek(ctx, 0)?;
    let skb = ctx.skb.skb.cast();
    let sk = match u16::from_be_bytes([eth[12], eth[13]]) {
        ETH_P_IP => {
            let ip: [u8; 20] = peek(ctx, ETH_HLEN)?;
            let l4 = ETH_HLEN + ((ip[0] & 0xf) as usize) * 4;
            let ports: [u8; 4] = peek(ctx, l4)?;
            let mut t =
                Tuple4 { saddr: [ip[12], ip[13], ip[14], ip[15]], daddr: [ip[16], ip[17], ip[18], ip[19]], ports };
            sock(skb, ip[9], ptr::from_mut(&mut t).cast(), size_of::<Tuple4>())
        }
        ETH_P_IPV6 => {
            let ip: [u8; 40] = peek(ctx, ETH_HLEN)?;
            let ports: [u8; 4] = peek(ctx, ETH_HLEN + 40)?;
            let mut t = Tuple6 { saddr: [0; 16], daddr: [0; 16], ports };
            t.saddr.copy_from_slice(&ip[8..24]);
            t.daddr.copy_from_slice(&ip[24..40]);
            sock(skb, ip[6], ptr::from_mut(&mut t).cast(), size_of::<Tuple6>())
        }
        _ => return None,
    };
    (!sk.is_null()).then_some(sk)
}

#[inline(always)]
fn sock(skb: *mut core::ffi::c_void, proto: u8, tuple: *mut bpf_sock_tuple, len: usize) -> *mut bpf_sock {
    unsafe {
        match proto {
            IPPROTO_TCP => bpf_skc_lookup_tcp(skb, tuple, len as u32, BPF_F_CURRENT_NETNS, 0),
            IPPROTO_UDP => bpf_sk_lookup_udp(skb, tuple, len as u32, BPF_F_CURRENT_NETNS, 0),
            _ => ptr::null_mut(),
        }
    }
}

/// The HTB class of a download slot in classify mode.
#[inline(always)]
fn htb_class(id: u32) -> Option<u32> {
    slot_of(id).filter(|s| s.mode == SlotMode::HtbClass as u32).map(|s| s.classid)
}

/// The HTB class of the socket's owner, if its download is in classify
/// mode; else, with the `all` cap on this backend, its top class (HTB
/// sends such a packet on to the default class beneath the cap).
#[inline(always)]
fn class_of(sk: *mut bpf_sock) -> Option<u32> {
    let own = owner_of(unsafe { bpf_sk_fullsock(sk) }).and_then(|o| htb_class(owner_slots(o).down));
    own.or_else(|| htb_class(gen(GEN_ALL_DOWN)))
}

#[classifier]
pub fn ct_ifb_cls(ctx: TcContext) -> i32 {
    if !throttling() {
        return TC_ACT_UNSPEC;
    }
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some(&ifb) = (unsafe { IFB.get(&ifindex) }) else { return TC_ACT_UNSPEC };
    let Some(sk) = lookup(&ctx) else { return TC_ACT_UNSPEC };
    let class = class_of(sk);
    unsafe { bpf_sk_release(sk.cast()) };
    match class {
        Some(classid) => {
            unsafe { (*ctx.skb.skb).priority = classid };
            unsafe { bpf_redirect(ifb, 0) as i32 }
        }
        None => TC_ACT_UNSPEC,
    }
}
