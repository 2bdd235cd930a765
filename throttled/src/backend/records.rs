//! What this state directory made in the kernel: one file per IFB device it
//! creates and per root qdisc it replaces, on the disk before the object is
//! made, and removed once the object is gone. The start-up sweep reads
//! these and nothing else, so the objects of another instance (another
//! state directory) are never touched.
use std::{
    io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{kernel::netlink::QdiscInfo, persist::statefs};

/// `qdisc-<device>.json`: a root qdisc we replaced.
pub const ROOT_PREFIX: &str = "qdisc-";
/// `ifb-<device>.json`: an IFB device we create.
pub const IFB_PREFIX: &str = "ifb-";
const SUFFIX: &str = ".json";

/// A root qdisc replaced by our HTB tree, and the one to put back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RootRecord {
    pub device: String,
    pub ifindex: u32,
    /// `None`: the device had the kernel's default root.
    pub saved: Option<QdiscInfo>,
}

/// An IFB device of ours; its index once it exists.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IfbRecord {
    pub name: String,
    pub ifindex: Option<u32>,
}

pub fn root_path(dir: &Path, device: &str) -> PathBuf {
    dir.join(format!("{ROOT_PREFIX}{device}{SUFFIX}"))
}

pub fn ifb_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{IFB_PREFIX}{name}{SUFFIX}"))
}

/// Durable: a crash right after still finds it.
pub fn write_root(dir: &Path, r: &RootRecord) -> io::Result<()> {
    write(&root_path(dir, &r.device), r)
}

pub fn write_ifb(dir: &Path, r: &IfbRecord) -> io::Result<()> {
    write(&ifb_path(dir, &r.name), r)
}

fn write<T: Serialize>(path: &Path, r: &T) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path.parent().unwrap_or(Path::new("/")))
        .and_then(|_| statefs::replace(path, &serde_json::to_vec(r).map_err(io::Error::other)?, true))
}

/// A record of the root replaced on `device`. Before records, the file
/// held the saved qdisc alone: that still reads.
pub fn read_root(dir: &Path, device: &str) -> Option<RootRecord> {
    let bytes = statefs::read(&root_path(dir, device)).ok()?;
    serde_json::from_slice(&bytes).ok().or_else(|| {
        let q: QdiscInfo = serde_json::from_slice(&bytes).ok()?;
        Some(RootRecord { device: device.to_string(), ifindex: q.ifindex, saved: Some(q) })
    })
}

pub fn read_ifb(dir: &Path, name: &str) -> Option<IfbRecord> {
    serde_json::from_slice(&statefs::read(&ifb_path(dir, name)).ok()?).ok()
}

/// Gone with its object. Not being able to delete it only means the next
/// start looks again.
pub fn remove(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "could not remove a record");
        }
    }
}

/// Every record in `dir`: devices with a replaced root, and IFB names.
pub fn list(dir: &Path) -> (Vec<String>, Vec<String>) {
    let (mut roots, mut ifbs) = (Vec::new(), Vec::new());
    let Ok(entries) = std::fs::read_dir(dir) else { return (roots, ifbs) };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(SUFFIX) else { continue };
        if let Some(dev) = stem.strip_prefix(ROOT_PREFIX) {
            roots.push(dev.to_string());
        } else if let Some(ifb) = stem.strip_prefix(IFB_PREFIX) {
            ifbs.push(ifb.to_string());
        }
    }
    roots.sort();
    ifbs.sort();
    (roots, ifbs)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Tmp(PathBuf);

    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn qdisc() -> QdiscInfo {
        QdiscInfo { ifindex: 7, handle: 0x10000, parent: u32::MAX, kind: "pfifo".into(), options: vec![1, 2] }
    }

    #[test]
    fn records_round_trip_and_list() {
        let t = Tmp(std::env::temp_dir().join(format!("ct-records-{}", std::process::id())));
        let _ = std::fs::remove_dir_all(&t.0);
        let root = RootRecord { device: "eth0".into(), ifindex: 7, saved: Some(qdisc()) };
        write_root(&t.0, &root).unwrap();
        write_ifb(&t.0, &IfbRecord { name: "cti-eth0".into(), ifindex: None }).unwrap();
        assert_eq!(read_root(&t.0, "eth0"), Some(root));
        assert_eq!(read_ifb(&t.0, "cti-eth0"), Some(IfbRecord { name: "cti-eth0".into(), ifindex: None }));
        // A saved root from before records still reads.
        std::fs::write(root_path(&t.0, "eth1"), serde_json::to_vec(&qdisc()).unwrap()).unwrap();
        assert_eq!(read_root(&t.0, "eth1").map(|r| (r.ifindex, r.saved)), Some((7, Some(qdisc()))));
        std::fs::write(t.0.join("qdisc-eth2.json.tmp"), "half").unwrap();
        assert_eq!(list(&t.0), (vec!["eth0".into(), "eth1".into()], vec!["cti-eth0".into()]));
        remove(&root_path(&t.0, "eth0"));
        remove(&root_path(&t.0, "eth0")); // already gone: nothing to say
        assert_eq!(list(&t.0).0, vec!["eth1".to_string()]);
    }
}
