//! The `ifb_tc` backend (download): per managed interface, an IFB device we
//! create (`cti-<name>`), an HTB tree on it, and the `ct_ifb_cls` program on
//! the interface's ingress, which redirects throttled packets to the IFB
//! with `skb->priority` set to their class.
use std::{collections::BTreeMap, path::PathBuf};

use aya::programs::tc::SchedClassifierLinkId;
use throttle_common::{rate::Rate, Counters, Slot};

use super::{
    htb::{classid, HtbDevice},
    interfaces::{ifb_name, InterfacePolicy},
    probe,
    tc_htb::{add_stats, nl_err},
    Availability, Backend, BackendError, Capabilities, Context, Direction, Health, Priority, SlotId,
};
use crate::kernel::netlink::Netlink;

const NAME: &str = "ifb_tc";

struct IfbDevice {
    iface: String,
    htb: HtbDevice,
    link: SchedClassifierLinkId,
}

pub struct IfbTcBackend {
    policy: InterfacePolicy,
    state_dir: PathBuf,
    nl: Option<Netlink>,
    /// Keyed by the managed interface's ifindex.
    devices: BTreeMap<u32, IfbDevice>,
    slots: BTreeMap<SlotId, Rate>,
}

impl IfbTcBackend {
    pub fn new(policy: InterfacePolicy, state_dir: PathBuf) -> Self {
        IfbTcBackend { policy, state_dir, nl: None, devices: BTreeMap::new(), slots: BTreeMap::new() }
    }

    fn nl(&self) -> Result<&Netlink, BackendError> {
        self.nl.as_ref().ok_or(BackendError::Failed { name: NAME, reason: "not initialized".into() })
    }

    fn install(&mut self, ctx: &mut Context<'_>, ifindex: u32, iface: &str) -> Result<(), BackendError> {
        let nl = self.nl()?.clone();
        let name = ifb_name(iface, ifindex);
        // A device of ours left by a crashed run: replace it, never duplicate it.
        if let Some(old) = nl.link_index(&name).map_err(nl_err(NAME))? {
            tracing::info!(backend = NAME, ifb = name, "removing a leftover IFB");
            nl.delete_link(old).map_err(nl_err(NAME))?;
        }
        let ifb = nl.create_ifb(&name).map_err(nl_err(NAME))?;
        let built = (|| {
            let htb = HtbDevice::install(&nl, ifb, &name, &self.state_dir).map_err(nl_err(NAME))?;
            for (&slot, &rate) in &self.slots {
                htb.add_class(&nl, slot, rate).map_err(nl_err(NAME))?;
            }
            let link = ctx.datapath.attach_classifier(iface, ifindex, ifb)?;
            Ok::<_, BackendError>(IfbDevice { iface: iface.to_string(), htb, link })
        })();
        match built {
            Ok(dev) => {
                tracing::info!(backend = NAME, interface = iface, ifb = name, "shaping interface");
                self.devices.insert(ifindex, dev);
                Ok(())
            }
            Err(e) => {
                let _ = nl.delete_link(ifb);
                Err(e)
            }
        }
    }

    fn uninstall(&self, ctx: &mut Context<'_>, ifindex: u32, dev: IfbDevice) {
        if let Err(e) = ctx.datapath.detach_classifier(ifindex, dev.link) {
            tracing::debug!(backend = NAME, interface = dev.iface, error = %e, "classifier already detached");
        }
        let Some(nl) = &self.nl else { return };
        let ifb = dev.htb.ifindex;
        let _ = dev.htb.restore(nl);
        if let Err(e) = nl.delete_link(ifb) {
            tracing::debug!(backend = NAME, interface = dev.iface, error = %e, "IFB already gone");
        }
    }
}

impl Backend for IfbTcBackend {
    fn name(&self) -> &'static str {
        NAME
    }
    fn priority(&self) -> Priority {
        Priority::Good
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities { directions: vec![Direction::Down], change_in_place: true, all_interfaces: false, shaping: true }
    }
    fn availability(&self) -> Availability {
        let f = probe::tc_features();
        match f.htb.clone().and(f.ifb.clone()).and(f.clsact.clone()) {
            Ok(()) => Availability::Available,
            Err(e) => Availability::Unavailable(e),
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
            dev.htb.add_class(nl, slot, rate).map_err(nl_err(NAME))?;
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
            dev.htb.change_class(nl, slot, rate).map_err(nl_err(NAME))?;
        }
        self.slots.insert(slot, rate);
        Ok(())
    }

    fn remove(&mut self, ctx: &mut Context<'_>, slot: SlotId, _dir: Direction) -> Result<(), BackendError> {
        self.slots.remove(&slot).ok_or(BackendError::NoSuchSlot { name: NAME, slot })?;
        ctx.datapath.clear_slot(slot)?;
        let nl = self.nl()?;
        for dev in self.devices.values() {
            if let Err(e) = dev.htb.remove_class(nl, slot) {
                tracing::warn!(backend = NAME, interface = dev.iface, error = %e, "could not delete class");
            }
        }
        Ok(())
    }

    fn stats(&self, _ctx: &Context<'_>, slot: SlotId, _dir: Direction) -> Result<Counters, BackendError> {
        let mut c = Counters::default();
        for dev in self.devices.values() {
            add_stats(&mut c, dev.htb.stats(self.nl()?, slot).map_err(nl_err(NAME))?);
        }
        Ok(c)
    }

    fn active(&self) -> usize {
        self.slots.len()
    }

    fn health(&self, _ctx: &Context<'_>) -> Health {
        let Some(nl) = &self.nl else { return Health::Idle };
        for dev in self.devices.values() {
            match nl.link(dev.htb.ifindex) {
                Ok(Some(l)) if l.up => {}
                Ok(Some(_)) => return Health::Broken(format!("{} is down", dev.htb.name)),
                _ => return Health::Broken(format!("{} is gone", dev.htb.name)),
            }
            if let Err(why) = dev.htb.check(nl, self.slots.keys().copied()) {
                return Health::Broken(why);
            }
        }
        Health::Healthy
    }

    fn refresh_interfaces(&mut self, ctx: &mut Context<'_>) -> Result<(), BackendError> {
        let wanted = self.policy.resolve(self.nl()?).map_err(nl_err(NAME))?;
        let gone: Vec<u32> = self.devices.keys().copied().filter(|i| !wanted.iter().any(|l| l.index == *i)).collect();
        for idx in gone {
            if let Some(dev) = self.devices.remove(&idx) {
                tracing::info!(backend = NAME, interface = dev.iface, "interface gone");
                self.uninstall(ctx, idx, dev);
            }
        }
        let new: Vec<_> = wanted.into_iter().filter(|l| !self.devices.contains_key(&l.index)).collect();
        for link in new {
            self.install(ctx, link.index, &link.name)?;
        }
        Ok(())
    }

    fn cleanup(&mut self, ctx: &mut Context<'_>) -> Result<(), BackendError> {
        let slots: Vec<SlotId> = self.slots.keys().copied().collect();
        for slot in slots {
            self.remove(ctx, slot, Direction::Down)?;
        }
        for (idx, dev) in std::mem::take(&mut self.devices) {
            self.uninstall(ctx, idx, dev);
        }
        self.nl = None;
        Ok(())
    }
}
