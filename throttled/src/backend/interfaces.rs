//! Which interfaces the interface backends manage: the configured names, or
//! every interface carrying a default route (IPv4 or IPv6).
use crate::kernel::netlink::{LinkInfo, Netlink, NetlinkError};

#[derive(Clone, Debug, Default)]
pub struct InterfacePolicy {
    /// `None`: follow the default routes.
    pub names: Option<Vec<String>>,
}

/// Our own IFB devices are never managed interfaces.
pub const IFB_PREFIX: &str = "cti-";

impl InterfacePolicy {
    pub fn resolve(&self, nl: &Netlink) -> Result<Vec<LinkInfo>, NetlinkError> {
        let links = nl.links()?;
        let wanted: Vec<LinkInfo> = match &self.names {
            Some(names) => links.into_iter().filter(|l| names.contains(&l.name)).collect(),
            None => {
                let defaults = nl.default_route_interfaces()?;
                links.into_iter().filter(|l| defaults.contains(&l.index)).collect()
            }
        };
        Ok(wanted.into_iter().filter(|l| l.name != "lo" && !l.name.starts_with(IFB_PREFIX)).collect())
    }

    /// Why a backend with no interface to manage enforces nothing.
    pub fn none_present(&self) -> String {
        match &self.names {
            Some(names) => format!("no managed interface is present ({})", names.join(", ")),
            None => "no interface has a default route".into(),
        }
    }
}

/// The IFB name for an interface: `cti-<name>`, cut to IFNAMSIZ-1 with the
/// ifindex appended when the name is too long to stay unique.
pub fn ifb_name(ifname: &str, ifindex: u32) -> String {
    let full = format!("{IFB_PREFIX}{ifname}");
    if full.len() <= 15 {
        return full;
    }
    let suffix = format!("{ifindex:x}");
    let keep = 15 - suffix.len() - 1;
    format!("{}.{suffix}", &full[..keep])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifb_names_fit_and_stay_unique() {
        assert_eq!(ifb_name("eth0", 2), "cti-eth0");
        let a = ifb_name("enp0s31f6verylong", 3);
        let b = ifb_name("enp0s31f6verylong2", 4);
        assert!(a.len() <= 15 && b.len() <= 15 && a != b, "{a} {b}");
    }
}
