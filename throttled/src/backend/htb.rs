//! An HTB tree that a backend owns on one device: the root qdisc it replaced
//! (saved to the state directory first, so a crashed run can still restore
//! it), our root `c7:` with an unlimited default class, and one class per
//! throttle slot. Shared by `tc_htb` (on each interface) and `ifb_tc` (on
//! each IFB).
use std::path::{Path, PathBuf};

use throttle_common::rate::Rate;

use super::SlotId;
use crate::kernel::netlink::{tc_handle, ClassStats, Netlink, NetlinkError, QdiscInfo};

/// Our HTB root handle major: marks qdiscs we created (leftover detection).
pub const HTB_MAJOR: u16 = 0xc7;
const DEFAULT_MINOR: u16 = 0xffff;
/// The default class must never slow unthrottled traffic.
const UNLIMITED: u64 = 1 << 40;

pub fn classid(slot: SlotId) -> u32 {
    tc_handle(HTB_MAJOR, slot as u16)
}

/// HTB burst: at least one 64 KiB GSO packet plus an MTU, and 10 ms at the
/// rate, so the 4 ms timer granularity (HZ=250) never starves a class.
fn burst(rate: u64) -> u32 {
    (rate / 100).max(66 * 1024).min(u32::MAX as u64) as u32
}

pub struct HtbDevice {
    pub ifindex: u32,
    pub name: String,
    saved: Option<QdiscInfo>,
    state_file: PathBuf,
}

fn is_ours(q: &QdiscInfo) -> bool {
    q.kind == "htb" && q.handle >> 16 == HTB_MAJOR as u32
}

impl HtbDevice {
    /// Replaces the root qdisc of `ifindex` with our HTB tree. A tree left by
    /// a crashed run is recognised by its handle and replaced, and the
    /// original root it had saved is the one restored later.
    pub fn install(nl: &Netlink, ifindex: u32, name: &str, state_dir: &Path) -> Result<Self, NetlinkError> {
        let state_file = state_dir.join(format!("qdisc-{name}.json"));
        let root = nl.root_qdisc(ifindex)?;
        let saved = match root {
            Some(q) if is_ours(&q) => {
                // HTB cannot be "changed" into an identical HTB: start afresh.
                nl.delete_root_qdisc(ifindex)?;
                read_saved(&state_file)
            }
            other => other,
        };
        write_saved(&state_file, saved.as_ref());
        nl.add_htb_root(ifindex, HTB_MAJOR, DEFAULT_MINOR)?;
        let parent = tc_handle(HTB_MAJOR, 0);
        nl.add_htb_class(ifindex, tc_handle(HTB_MAJOR, DEFAULT_MINOR), parent, UNLIMITED, UNLIMITED, burst(UNLIMITED))?;
        Ok(HtbDevice { ifindex, name: name.to_string(), saved, state_file })
    }

    pub fn add_class(&self, nl: &Netlink, slot: SlotId, rate: Rate) -> Result<(), NetlinkError> {
        let r = rate.bytes_per_sec();
        nl.add_htb_class(self.ifindex, classid(slot), tc_handle(HTB_MAJOR, 0), r, r, burst(r))
    }

    /// In place: the class keeps its queue and counters.
    pub fn change_class(&self, nl: &Netlink, slot: SlotId, rate: Rate) -> Result<(), NetlinkError> {
        let r = rate.bytes_per_sec();
        nl.change_htb_class(self.ifindex, classid(slot), tc_handle(HTB_MAJOR, 0), r, r, burst(r))
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
        match slots.map(classid).find(|c| !classes.iter().any(|k| k.classid == *c)) {
            Some(missing) => {
                Err(format!("HTB class {:x}:{:x} on {} is gone", missing >> 16, missing & 0xffff, self.name))
            }
            None => Ok(()),
        }
    }

    /// Puts back the root qdisc we replaced. A device that vanished is fine.
    pub fn restore(self, nl: &Netlink) -> Result<(), NetlinkError> {
        let res = match &self.saved {
            Some(q) if !q.is_default_root() => nl.restore_qdisc(q),
            _ => nl.delete_root_qdisc(self.ifindex),
        };
        let _ = std::fs::remove_file(&self.state_file);
        match res {
            Err(e) if e.errno() == Some(libc::ENODEV) || e.errno() == Some(libc::ENOENT) => Ok(()),
            other => other,
        }
    }
}

fn read_saved(path: &Path) -> Option<QdiscInfo> {
    std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

/// Best effort: without a state directory a crash loses only the original
/// qdisc's options; the device still gets its default root back.
fn write_saved(path: &Path, q: Option<&QdiscInfo>) {
    let Some(q) = q else {
        let _ = std::fs::remove_file(path);
        return;
    };
    let tmp = path.with_extension("tmp");
    let ok = std::fs::create_dir_all(path.parent().unwrap_or(Path::new("/")))
        .and_then(|_| std::fs::write(&tmp, serde_json::to_vec(q).unwrap_or_default()))
        .and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = ok {
        tracing::warn!(path = %path.display(), error = %e, "could not save the original root qdisc");
    }
}
