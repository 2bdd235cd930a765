//! What a killed run (`kill -9`) leaves behind: its IFB devices and its HTB
//! roots (the programs are link-held and die with the process). Swept once
//! at start, before anything is built, so a restart ends with exactly one
//! set of kernel objects; replaced roots come back from the state directory.
use std::path::Path;

use super::{
    htb::{is_ours, read_saved, saved_path, SAVED_PREFIX},
    interfaces::IFB_PREFIX,
};
use crate::kernel::netlink::{Netlink, NetlinkError, QdiscInfo};

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// IFB devices deleted.
    pub ifbs: Vec<String>,
    /// Devices whose root qdisc was restored (or reset).
    pub qdiscs: Vec<String>,
}

pub fn sweep(nl: &Netlink, state_dir: &Path) -> Result<Swept, NetlinkError> {
    let mut swept = Swept::default();
    let links = nl.links()?;
    for l in &links {
        if l.name.starts_with(IFB_PREFIX) && l.kind.as_deref() == Some("ifb") {
            nl.delete_link(l.index)?;
            swept.ifbs.push(l.name.clone());
            continue;
        }
        let saved = saved_path(state_dir, &l.name);
        if nl.root_qdisc(l.index)?.is_some_and(|q| is_ours(&q)) {
            match read_saved(&saved).filter(|q| !q.is_default_root()) {
                Some(q) => nl.restore_qdisc(&QdiscInfo { ifindex: l.index, ..q })?,
                None => nl.delete_root_qdisc(l.index)?,
            }
            swept.qdiscs.push(l.name.clone());
        }
        let _ = std::fs::remove_file(saved);
    }
    remove_orphaned_saves(state_dir, &links.iter().map(|l| l.name.as_str()).collect::<Vec<_>>());
    Ok(swept)
}

/// Saved roots of devices that no longer exist have nothing to go back to.
fn remove_orphaned_saves(state_dir: &Path, live: &[&str]) {
    let Ok(dir) = std::fs::read_dir(state_dir) else { return };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let dev = name.strip_prefix(SAVED_PREFIX).and_then(|n| n.strip_suffix(".json"));
        if dev.is_some_and(|d| !live.contains(&d)) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}
