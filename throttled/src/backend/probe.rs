//! Kernel feature probes for the interface backends: run once, in a
//! throwaway network namespace (so the host sees nothing), and cached.
use std::sync::OnceLock;

use crate::kernel::netlink::{tc_handle, HtbClass, Netlink};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcFeatures {
    pub htb: Result<(), String>,
    pub clsact: Result<(), String>,
    pub ifb: Result<(), String>,
}

pub fn tc_features() -> &'static TcFeatures {
    static FEATURES: OnceLock<TcFeatures> = OnceLock::new();
    FEATURES.get_or_init(|| {
        std::thread::spawn(probe_in_private_netns).join().unwrap_or_else(|_| {
            let e = Err("the feature probe crashed".to_string());
            TcFeatures { htb: e.clone(), clsact: e.clone(), ifb: e }
        })
    })
}

fn probe_in_private_netns() -> TcFeatures {
    // This thread alone moves to a new, empty namespace, gone when it ends.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        let e =
            Err(format!("cannot create a probe namespace (needs CAP_SYS_ADMIN): {}", std::io::Error::last_os_error()));
        return TcFeatures { htb: e.clone(), clsact: e.clone(), ifb: e };
    }
    let nl = match Netlink::new() {
        Ok(nl) => nl,
        Err(e) => {
            let e = Err(format!("netlink: {e}"));
            return TcFeatures { htb: e.clone(), clsact: e.clone(), ifb: e };
        }
    };
    let lo = nl.link_index("lo").ok().flatten().unwrap_or(1);
    let _ = nl.set_link_up(lo);
    // EPERM says nothing about the kernel: tell the truth about which it is.
    let why = |what: &str, e: crate::kernel::netlink::NetlinkError| match e.errno() {
        Some(libc::EPERM) | Some(libc::EACCES) => format!("not permitted to use {what}: needs CAP_NET_ADMIN ({e})"),
        _ => format!("the kernel has no {what} ({e})"),
    };
    TcFeatures {
        htb: nl.add_htb_root(lo, 1, 1).map_err(|e| why("HTB qdisc (sch_htb)", e)).and_then(|_| {
            nl.add_htb_class(lo, tc_handle(1, 1), tc_handle(1, 0), &HtbClass::fixed(1 << 20, 1 << 16))
                .map_err(|e| why("HTB classes", e))
        }),
        clsact: nl.add_clsact(lo).map_err(|e| why("clsact qdisc (sch_ingress)", e)),
        ifb: nl.create_ifb("ifbprobe").map(|_| ()).map_err(|e| why("IFB devices (ifb)", e)),
    }
}
