// STUB (replaced by h2)
use crate::kernel::netlink::{Netlink, NetlinkError};
use std::path::Path;
pub struct Swept {
    pub ifbs: Vec<String>,
    pub qdiscs: Vec<String>,
}
pub fn sweep(_nl: &Netlink, _state_dir: &Path) -> Result<Swept, NetlinkError> {
    Ok(Swept { ifbs: vec![], qdiscs: vec![] })
}
