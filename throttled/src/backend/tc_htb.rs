//! The `tc_htb` backend (upload): an HTB tree on each managed interface. No
//! tc filter: the cgroup egress program writes `skb->priority = classid`,
//! and HTB classifies on it directly.
use std::{collections::BTreeMap, path::PathBuf};

use throttle_common::{rate::Rate, Counters, Slot};

use super::{
    htb::{classid, HtbDevice},
    interfaces::InterfacePolicy,
    probe, Availability, Backend, BackendError, Capabilities, Context, Direction, Health, Priority, SlotId,
};
use crate::kernel::netlink::{ClassStats, Netlink, NetlinkError};

const NAME: &str = "tc_htb";

pub(crate) fn nl_err(name: &'static str) -> impl Fn(NetlinkError) -> BackendError {
    move |e| BackendError::Failed { name, reason: e.to_string() }
}

pub(crate) fn add_stats(c: &mut Counters, s: ClassStats) {
    c.pass_bytes += s.bytes;
    c.pass_pkts += s.packets;
    c.drop_pkts += s.drops;
}

pub struct TcHtbBackend {
    policy: InterfacePolicy,
    state_dir: PathBuf,
    nl: Option<Netlink>,
    devices: BTreeMap<u32, HtbDevice>,
    slots: BTreeMap<SlotId, Rate>,
}

impl TcHtbBackend {
    pub fn new(policy: InterfacePolicy, state_dir: PathBuf) -> Self {
        TcHtbBackend { policy, state_dir, nl: None, devices: BTreeMap::new(), slots: BTreeMap::new() }
    }

    fn nl(&self) -> Result<&Netlink, BackendError> {
        self.nl.as_ref().ok_or(BackendError::Failed { name: NAME, reason: "not initialized".into() })
    }

    fn install(&mut self, ifindex: u32, name: &str) -> Result<(), BackendError> {
        let nl = self.nl()?.clone();
        let dev = HtbDevice::install(&nl, ifindex, name, &self.state_dir).map_err(nl_err(NAME))?;
        for (&slot, &rate) in &self.slots {
            dev.add_class(&nl, slot, rate).map_err(nl_err(NAME))?;
        }
        tracing::info!(backend = NAME, interface = name, "shaping interface");
        self.devices.insert(ifindex, dev);
        Ok(())
    }
}

impl Backend for TcHtbBackend {
    fn name(&self) -> &'static str {
        NAME
    }
    fn priority(&self) -> Priority {
        Priority::Good
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities { directions: vec![Direction::Up], change_in_place: true, all_interfaces: false, shaping: true }
    }
    fn availability(&self) -> Availability {
        match &probe::tc_features().htb {
            Ok(()) => Availability::Available,
            Err(e) => Availability::Unavailable(e.clone()),
        }
    }
    fn init(&mut self, ctx: &mut Context<'_>) -> Result<(), BackendError> {
        if let Availability::Unavailable(reason) = self.availability() {
            return Err(BackendError::Unavailable { name: NAME, reason });
        }
        self.nl = Some(Netlink::new().map_err(nl_err(NAME))?);
        self.refresh_interfaces(ctx)
    }
    fn is_initialized(&self) -> bool {
        self.nl.is_some()
    }

    fn apply(&mut self, ctx: &mut Context<'_>, slot: SlotId, _dir: Direction, rate: Rate) -> Result<(), BackendError> {
        let nl = self.nl()?;
        for dev in self.devices.values() {
            dev.add_class(nl, slot, rate).map_err(nl_err(NAME))?;
        }
        ctx.datapath.set_slot(slot, &Slot::classify(classid(slot)))?;
        self.slots.insert(slot, rate);
        Ok(())
    }

    fn change(
        &mut self,
        _ctx: &mut Context<'_>,
        slot: SlotId,
        _dir: Direction,
        rate: Rate,
    ) -> Result<(), BackendError> {
        let nl = self.nl()?;
        for dev in self.devices.values() {
            dev.change_class(nl, slot, rate).map_err(nl_err(NAME))?;
        }
        self.slots.insert(slot, rate);
        Ok(())
    }

    fn remove(&mut self, ctx: &mut Context<'_>, slot: SlotId, _dir: Direction) -> Result<(), BackendError> {
        self.slots.remove(&slot).ok_or(BackendError::NoSuchSlot { name: NAME, slot })?;
        ctx.datapath.clear_slot(slot)?;
        let nl = self.nl()?;
        for dev in self.devices.values() {
            if let Err(e) = dev.remove_class(nl, slot) {
                tracing::warn!(backend = NAME, interface = dev.name, error = %e, "could not delete class");
            }
        }
        Ok(())
    }

    fn stats(&self, _ctx: &Context<'_>, slot: SlotId, _dir: Direction) -> Result<Counters, BackendError> {
        let mut c = Counters::default();
        for dev in self.devices.values() {
            add_stats(&mut c, dev.stats(self.nl()?, slot).map_err(nl_err(NAME))?);
        }
        Ok(c)
    }

    fn active(&self) -> usize {
        self.slots.len()
    }

    fn health(&self, _ctx: &Context<'_>) -> Health {
        let Some(nl) = &self.nl else { return Health::Idle };
        for dev in self.devices.values() {
            if let Err(why) = dev.check(nl, self.slots.keys().copied()) {
                return Health::Broken(why);
            }
        }
        Health::Healthy
    }

    fn refresh_interfaces(&mut self, _ctx: &mut Context<'_>) -> Result<(), BackendError> {
        let wanted = self.policy.resolve(self.nl()?).map_err(nl_err(NAME))?;
        self.devices.retain(|idx, dev| {
            let keep = wanted.iter().any(|l| l.index == *idx);
            if !keep {
                tracing::info!(backend = NAME, interface = dev.name, "interface gone");
            }
            keep
        });
        let new: Vec<_> = wanted.into_iter().filter(|l| !self.devices.contains_key(&l.index)).collect();
        for link in new {
            self.install(link.index, &link.name)?;
        }
        Ok(())
    }

    fn cleanup(&mut self, ctx: &mut Context<'_>) -> Result<(), BackendError> {
        let slots: Vec<SlotId> = self.slots.keys().copied().collect();
        for slot in slots {
            self.remove(ctx, slot, Direction::Up)?;
        }
        let Some(nl) = self.nl.take() else { return Ok(()) };
        for (_, dev) in std::mem::take(&mut self.devices) {
            dev.restore(&nl).map_err(nl_err(NAME))?;
        }
        Ok(())
    }
}
