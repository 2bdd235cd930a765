//! ChadThrottle's data path, attached once at the cgroup v2 root.
//!
//! - `sock_create` records the creating process in SK_STORAGE (cloned to
//!   accepted sockets), because packet hooks run in softirq where the
//!   current task is not the socket's owner.
//! - `cgroup_skb` egress/ingress find the owner's slot and either police it
//!   with a GCRA bucket (`ebpf` backend) or tag `skb->priority` for HTB.
//! - `ct_ifb_cls` (tc ingress, `ifb_tc` backend) finds the local socket of an
//!   arriving packet, which has none yet, and redirects throttled traffic to
//!   the interface's IFB, whose HTB shapes it.
//! - `sock_ops` paces new TCP connections of throttled processes, so egress
//!   shaping happens in TCP itself and the bucket rarely has to drop, and
//!   keeps the receive window of their downloads at rate × RTT through a
//!   per-ACK callback that only throttled download sockets get.
//! - `ct_setsockopt` (cgroup setsockopt) lets the daemon turn that callback
//!   on for a socket that was already running when its owner got a limit.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(target_arch = "bpf")]
mod classify;
#[cfg(target_arch = "bpf")]
mod datapath;

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
