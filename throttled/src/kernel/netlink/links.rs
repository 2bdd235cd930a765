//! Links (find, create an IFB, delete, set up) and the default routes that
//! decide which interfaces are managed.
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::{
    link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage},
    route::{RouteAttribute, RouteHeader, RouteMessage, RouteType},
    AddressFamily, RouteNetlinkMessage,
};

use super::{Netlink, NetlinkError, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// IFLA_INFO_KIND ("veth", "ifb", ...); `None` for physical devices.
    pub kind: Option<String>,
}

impl Netlink {
    pub fn link_index(&self, name: &str) -> Result<Option<u32>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        Ok(self.get_link(msg)?.map(|l| l.index))
    }

    pub fn link(&self, ifindex: u32) -> Result<Option<LinkInfo>> {
        let mut msg = LinkMessage::default();
        msg.header.index = ifindex;
        self.get_link(msg)
    }

    fn get_link(&self, msg: LinkMessage) -> Result<Option<LinkInfo>> {
        match self.request("RTM_GETLINK", RouteNetlinkMessage::GetLink(msg), 0) {
            Ok(replies) => Ok(replies.iter().find_map(as_link).map(link_info)),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn links(&self) -> Result<Vec<LinkInfo>> {
        let replies = self.dump("RTM_GETLINK", RouteNetlinkMessage::GetLink(LinkMessage::default()))?;
        Ok(replies.iter().filter_map(as_link).map(link_info).collect())
    }

    /// Creates IFB device `name`, up, and returns its ifindex. Fails with
    /// EEXIST if any link already has that name: an existing device may be
    /// someone else's, so it is never reused.
    pub fn create_ifb(&self, name: &str) -> Result<u32> {
        let mut msg = up(LinkMessage::default());
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![NlLinkInfo::Kind(InfoKind::Ifb)]));
        self.ack("RTM_NEWLINK", RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)?;
        self.link_index(name)?.ok_or_else(|| NetlinkError::NotFound(format!("link {name} vanished after creation")))
    }

    pub fn delete_link(&self, ifindex: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = ifindex;
        self.ack("RTM_DELLINK", RouteNetlinkMessage::DelLink(msg), 0)
    }

    pub fn set_link_up(&self, ifindex: u32) -> Result<()> {
        let mut msg = up(LinkMessage::default());
        msg.header.index = ifindex;
        self.ack("RTM_SETLINK", RouteNetlinkMessage::SetLink(msg), 0)
    }

    /// Sorted ifindexes that carry a unicast default route, IPv4 or IPv6, in
    /// the main table (every leg of a multipath route counts). Routes through
    /// nexthop objects (`nhid`) name no device and are not resolved.
    pub fn default_route_interfaces(&self) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut msg = RouteMessage::default();
            msg.header.address_family = family;
            for reply in self.dump("RTM_GETROUTE", RouteNetlinkMessage::GetRoute(msg))? {
                match reply {
                    RouteNetlinkMessage::NewRoute(r) if is_main_default(&r) => out.extend(route_devices(&r)),
                    _ => {}
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }
}

/// Sets IFF_UP, and only that flag (`change_mask`).
fn up(mut msg: LinkMessage) -> LinkMessage {
    msg.header.flags |= LinkFlags::Up;
    msg.header.change_mask |= LinkFlags::Up;
    msg
}

fn as_link(m: &RouteNetlinkMessage) -> Option<&LinkMessage> {
    match m {
        RouteNetlinkMessage::NewLink(l) => Some(l),
        _ => None,
    }
}

fn link_info(m: &LinkMessage) -> LinkInfo {
    let mut info =
        LinkInfo { index: m.header.index, name: String::new(), up: m.header.flags.contains(LinkFlags::Up), kind: None };
    for attr in &m.attributes {
        match attr {
            LinkAttribute::IfName(n) => info.name = n.clone(),
            LinkAttribute::LinkInfo(infos) => {
                info.kind = infos.iter().find_map(|i| match i {
                    NlLinkInfo::Kind(k) => Some(k.to_string()),
                    _ => None,
                })
            }
            _ => {}
        }
    }
    info
}

fn is_main_default(r: &RouteMessage) -> bool {
    let table = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Table(t) => Some(*t),
        _ => None,
    });
    let table = table.unwrap_or(r.header.table.into());
    r.header.destination_prefix_length == 0
        && table == u32::from(RouteHeader::RT_TABLE_MAIN)
        && r.header.kind == RouteType::Unicast
}

fn route_devices(r: &RouteMessage) -> Vec<u32> {
    r.attributes
        .iter()
        .flat_map(|a| match a {
            RouteAttribute::Oif(i) => vec![*i],
            RouteAttribute::MultiPath(hops) => hops.iter().map(|h| h.interface_index).collect(),
            _ => vec![],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same request the rtnetlink crate's `LinkIfb` builder made.
    #[test]
    fn ifb_request_is_up_with_its_kind() {
        let mut msg = up(LinkMessage::default());
        msg.attributes.push(LinkAttribute::LinkInfo(vec![NlLinkInfo::Kind(InfoKind::Ifb)]));
        assert!(msg.header.flags.contains(LinkFlags::Up) && msg.header.change_mask == LinkFlags::Up);
        assert_eq!(link_info(&msg).kind.as_deref(), Some("ifb"));
    }
}
