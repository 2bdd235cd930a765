//! What a killed run (`kill -9`) leaves behind: its IFB devices and its HTB
//! roots (the programs are link-held and die with the process). Swept once
//! at start, before anything is built, so a restart ends with exactly one
//! set of kernel objects. Only what this state directory recorded is swept
//! (see [`records`]): another instance's objects, with another state
//! directory, are not ours to touch, even if they look alike.
use std::path::Path;

use super::{htb::is_ours, records};
use crate::kernel::netlink::{Netlink, NetlinkError, QdiscInfo};

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// IFB devices deleted.
    pub ifbs: Vec<String>,
    /// Devices whose root qdisc was restored (or reset).
    pub qdiscs: Vec<String>,
}

/// Each record goes once its object is gone (or was never made); one that
/// cannot be swept stays for the next start, and the first such error is
/// returned after the rest were swept.
pub fn sweep(nl: &Netlink, state_dir: &Path) -> Result<Swept, NetlinkError> {
    let mut swept = Swept::default();
    let mut first_err = None;
    let (roots, ifbs) = records::list(state_dir);
    // IFBs first: the roots recorded on them then go with them.
    for name in ifbs {
        match sweep_ifb(nl, state_dir, &name) {
            Ok(true) => swept.ifbs.push(name),
            Ok(false) => {}
            Err(e) => first_err = first_err.or(Some(e)),
        }
    }
    for dev in roots {
        match sweep_root(nl, state_dir, &dev) {
            Ok(true) => swept.qdiscs.push(dev),
            Ok(false) => {}
            Err(e) => first_err = first_err.or(Some(e)),
        }
    }
    first_err.map_or(Ok(swept), Err)
}

/// Puts back the root we replaced, if our tree is still there on the device
/// we recorded.
fn sweep_root(nl: &Netlink, state_dir: &Path, dev: &str) -> Result<bool, NetlinkError> {
    let path = records::root_path(state_dir, dev);
    let record = records::read_root(state_dir, dev);
    let link = nl.link_index(dev)?;
    let here = match (&record, link) {
        (Some(r), Some(idx)) if r.ifindex == idx => Some(idx),
        _ => None, // unreadable, or the device went (or is another by that name now)
    };
    let Some(idx) = here.filter(|&i| nl.root_qdisc(i).is_ok_and(|q| q.is_some_and(|q| is_ours(&q)))) else {
        records::remove(&path);
        return Ok(false);
    };
    match record.and_then(|r| r.saved).filter(|q| !q.is_default_root()) {
        Some(q) => nl.restore_qdisc(&QdiscInfo { ifindex: idx, ..q })?,
        None => nl.delete_root_qdisc(idx)?,
    }
    records::remove(&path);
    Ok(true)
}

/// Deletes our IFB, if it still exists: the device of that name and index
/// (or of that name, if the crash came before its index was recorded).
fn sweep_ifb(nl: &Netlink, state_dir: &Path, name: &str) -> Result<bool, NetlinkError> {
    let path = records::ifb_path(state_dir, name);
    let record = records::read_ifb(state_dir, name);
    let link = match nl.link_index(name)? {
        Some(idx) => nl.link(idx)?,
        None => None,
    };
    let ours = link.filter(|l| {
        l.kind.as_deref() == Some("ifb") && record.as_ref().is_some_and(|r| r.ifindex.is_none_or(|i| i == l.index))
    });
    if let Some(l) = &ours {
        nl.delete_link(l.index)?;
    }
    records::remove(&path);
    Ok(ours.is_some())
}
