//! Link, default-route and root-qdisc events from the kernel's multicast
//! groups, on a socket of their own.
use std::{
    collections::{HashMap, VecDeque},
    io,
    time::{Duration, Instant},
};

use netlink_packet_core::{parse_u32, NetlinkBuffer, NlasIterator};
use netlink_sys::Socket;

use super::{
    transport::{route_socket, wait_readable},
    Netlink, Result, TC_H_ROOT,
};

const EVENT_RCVBUF: i32 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    Added {
        index: u32,
        name: String,
    },
    Removed {
        index: u32,
        name: String,
    },
    /// IFF_UP was set (also sent right after `Added` for a link born up).
    Up {
        index: u32,
    },
    Down {
        index: u32,
    },
    /// A default route of the main table appeared, changed or went away.
    DefaultRouteChanged,
    /// A device's root qdisc was deleted or replaced (by anyone, us too).
    RootQdiscRemoved {
        index: u32,
    },
}

impl Netlink {
    /// Subscribes to link changes, IPv4/IPv6 route changes and root qdisc
    /// removals in this connection's namespace. Links present now are not
    /// reported as added.
    pub fn subscribe_links(&self) -> Result<LinkEvents> {
        let mut socket = route_socket(self.netns())?;
        socket.set_rx_buf_sz(EVENT_RCVBUF)?;
        socket.set_non_blocking(true)?;
        socket.bind_auto()?;
        for group in [libc::RTNLGRP_LINK, libc::RTNLGRP_IPV4_ROUTE, libc::RTNLGRP_IPV6_ROUTE, libc::RTNLGRP_TC] {
            socket.add_membership(group)?;
        }
        // Joined before the dump, so no change can fall between the two.
        let known = self.links()?.into_iter().map(|l| (l.index, (l.name, l.up))).collect();
        Ok(LinkEvents { socket, netlink: self.clone(), known, pending: VecDeque::new() })
    }
}

/// Blocking reader of link and default-route events; see
/// [`Netlink::subscribe_links`]. If the kernel drops notifications
/// (ENOBUFS), the link state is re-read and the difference reported, plus
/// `DefaultRouteChanged`.
pub struct LinkEvents {
    socket: Socket,
    netlink: Netlink,
    known: HashMap<u32, (String, bool)>,
    pending: VecDeque<LinkEvent>,
}

impl LinkEvents {
    /// The next event, or `None` if none came within `timeout`.
    pub fn next(&mut self, timeout: Duration) -> Result<Option<LinkEvent>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(Some(event));
            }
            if !wait_readable(&self.socket, deadline)? {
                return Ok(None);
            }
            match self.socket.recv_from_full() {
                Ok((buf, _)) => self.parse_datagram(&buf),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => self.resync()?,
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Walks the raw messages: a decode failure in some attribute the crate
    /// does not expect must not cost an event.
    fn parse_datagram(&mut self, mut buf: &[u8]) {
        while let Ok(msg) = NetlinkBuffer::new_checked(buf) {
            self.on_message(msg.message_type(), msg.payload());
            let next = (msg.length() as usize + 3) & !3;
            if next == 0 || next >= buf.len() {
                break;
            }
            buf = &buf[next..];
        }
    }

    fn on_message(&mut self, kind: u16, payload: &[u8]) {
        match kind {
            libc::RTM_NEWLINK | libc::RTM_DELLINK => self.on_link(kind == libc::RTM_DELLINK, payload),
            libc::RTM_NEWROUTE | libc::RTM_DELROUTE if is_default_route(payload) => {
                self.push(LinkEvent::DefaultRouteChanged)
            }
            libc::RTM_DELQDISC => {
                if let Some(index) = deleted_root_qdisc(payload) {
                    self.push(LinkEvent::RootQdiscRemoved { index });
                }
            }
            _ => {}
        }
    }

    /// `struct ifinfomsg` (16 bytes) then attributes. AF_BRIDGE messages
    /// describe bridge ports, not devices coming or going.
    fn on_link(&mut self, removed: bool, payload: &[u8]) {
        let Some(hdr) = payload.get(..16) else { return };
        if hdr[0] != libc::AF_UNSPEC as u8 {
            return;
        }
        let index = parse_u32(&hdr[4..8]).unwrap_or(0);
        let up = parse_u32(&hdr[8..12]).unwrap_or(0) & libc::IFF_UP as u32 != 0;
        let name = NlasIterator::new(&payload[16..])
            .flatten()
            .find(|n| n.kind() == libc::IFLA_IFNAME)
            .map(|n| String::from_utf8_lossy(n.value()).trim_end_matches('\0').to_string());
        if removed {
            let old = self.known.remove(&index).map(|(n, _)| n);
            let name = name.or(old).unwrap_or_default();
            return self.push(LinkEvent::Removed { index, name });
        }
        match self.known.get_mut(&index) {
            None => {
                let name = name.unwrap_or_default();
                self.known.insert(index, (name.clone(), up));
                self.push(LinkEvent::Added { index, name });
                if up {
                    self.push(LinkEvent::Up { index });
                }
            }
            Some(entry) => {
                if let Some(name) = name {
                    entry.0 = name;
                }
                if entry.1 != up {
                    entry.1 = up;
                    self.push(if up { LinkEvent::Up { index } } else { LinkEvent::Down { index } });
                }
            }
        }
    }

    /// Lost notifications: report the difference to a fresh dump.
    fn resync(&mut self) -> Result<()> {
        let now: HashMap<u32, (String, bool)> =
            self.netlink.links()?.into_iter().map(|l| (l.index, (l.name, l.up))).collect();
        let gone: Vec<_> =
            self.known.iter().filter(|(i, _)| !now.contains_key(i)).map(|(i, (n, _))| (*i, n.clone())).collect();
        for (index, name) in gone {
            self.push(LinkEvent::Removed { index, name });
        }
        for (&index, (name, up)) in &now {
            let was = self.known.get(&index).map(|(_, up)| *up);
            if was.is_none() {
                self.pending.push_back(LinkEvent::Added { index, name: name.clone() });
            }
            if was.unwrap_or(false) != *up {
                self.pending.push_back(if *up { LinkEvent::Up { index } } else { LinkEvent::Down { index } });
            }
        }
        self.known = now;
        self.push(LinkEvent::DefaultRouteChanged);
        Ok(())
    }

    /// Queues `event`; repeated route changes collapse into one.
    fn push(&mut self, event: LinkEvent) {
        if event == LinkEvent::DefaultRouteChanged && self.pending.contains(&event) {
            return;
        }
        self.pending.push_back(event);
    }
}

/// `struct tcmsg`: family, pads, ifindex at 4, handle at 8, parent at 12.
fn deleted_root_qdisc(payload: &[u8]) -> Option<u32> {
    let hdr = payload.get(..20)?;
    (parse_u32(&hdr[12..16]).ok()? == TC_H_ROOT).then(|| parse_u32(&hdr[4..8]).ok()).flatten()
}

/// `struct rtmsg` (12 bytes) then attributes; RTA_TABLE overrides the u8
/// table id.
fn is_default_route(payload: &[u8]) -> bool {
    let Some(hdr) = payload.get(..12) else { return false };
    let table = NlasIterator::new(&payload[12..])
        .flatten()
        .find(|n| n.kind() == libc::RTA_TABLE)
        .and_then(|n| parse_u32(n.value()).ok())
        .unwrap_or(hdr[4].into());
    hdr[1] == 0 && table == u32::from(libc::RT_TABLE_MAIN) && hdr[7] == libc::RTN_UNICAST
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_qdisc_removals_are_told_apart() {
        let tcmsg = |ifindex: u32, parent: u32| {
            let mut b = vec![0u8; 20];
            b[4..8].copy_from_slice(&ifindex.to_ne_bytes());
            b[12..16].copy_from_slice(&parent.to_ne_bytes());
            b
        };
        assert_eq!(deleted_root_qdisc(&tcmsg(7, TC_H_ROOT)), Some(7));
        assert_eq!(deleted_root_qdisc(&tcmsg(7, 0xc7_0001)), None);
        assert_eq!(deleted_root_qdisc(&[0; 8]), None);
    }
}
