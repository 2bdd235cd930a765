//! The `tc_htb` backend (upload): an HTB tree on each managed interface. No
//! tc filter: the cgroup egress program writes `skb->priority = classid`,
//! and HTB classifies on it directly.
use std::path::PathBuf;

use throttle_common::{rate::Rate, Counters};

use super::{
    htb::{HtbDevice, HtbFleet},
    interfaces::InterfacePolicy,
    probe, Availability, Backend, BackendError, Capabilities, Context, Direction, Health, Priority, SlotId,
};
use crate::kernel::netlink::Netlink;

const NAME: &str = "tc_htb";

pub struct TcHtbBackend {
    policy: InterfacePolicy,
    state_dir: PathBuf,
    fleet: HtbFleet<HtbDevice>,
}

impl TcHtbBackend {
    pub fn new(policy: InterfacePolicy, state_dir: PathBuf) -> Self {
        TcHtbBackend { policy, state_dir, fleet: HtbFleet::new(NAME) }
    }

    fn install(&mut self, ifindex: u32, name: &str) -> Result<(), BackendError> {
        let dev = HtbDevice::install(self.fleet.nl()?, ifindex, name, &self.state_dir).map_err(self.fleet.err())?;
        self.fleet.populate(&dev)?;
        tracing::info!(backend = NAME, interface = name, "shaping interface");
        self.fleet.devices.insert(ifindex, dev);
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
        self.fleet.nl = Some(Netlink::new().map_err(self.fleet.err())?);
        self.refresh_interfaces(ctx)
    }
    fn is_initialized(&self) -> bool {
        self.fleet.nl.is_some()
    }
    fn apply(&mut self, ctx: &mut Context<'_>, slot: SlotId, _dir: Direction, rate: Rate) -> Result<(), BackendError> {
        self.fleet.apply(ctx, slot, rate)
    }
    fn change(
        &mut self,
        _ctx: &mut Context<'_>,
        slot: SlotId,
        _dir: Direction,
        rate: Rate,
    ) -> Result<(), BackendError> {
        self.fleet.change(slot, rate)
    }
    fn remove(&mut self, ctx: &mut Context<'_>, slot: SlotId, _dir: Direction) -> Result<(), BackendError> {
        self.fleet.remove(ctx, slot)
    }
    fn stats(&self, _ctx: &Context<'_>, slot: SlotId, _dir: Direction) -> Result<Counters, BackendError> {
        self.fleet.stats(slot)
    }
    fn active(&self) -> usize {
        self.fleet.slots.len()
    }
    fn health(&self, _ctx: &Context<'_>) -> Health {
        self.fleet.health(&self.policy, |_, _| Ok(()))
    }

    fn refresh_interfaces(&mut self, _ctx: &mut Context<'_>) -> Result<(), BackendError> {
        let nl = self.fleet.nl()?.clone();
        let wanted = self.policy.resolve(&nl).map_err(self.fleet.err())?;
        let gone = self.fleet.gone(&wanted);
        for dev in gone.iter().filter_map(|i| self.fleet.devices.remove(i)) {
            tracing::info!(backend = NAME, interface = dev.name, "interface gone");
            // Vanished, or no longer managed: either way, put its root back.
            if let Err(e) = dev.restore(&nl) {
                tracing::warn!(backend = NAME, error = %e, "could not restore the root qdisc");
            }
        }
        let new: Vec<_> = wanted.into_iter().filter(|l| !self.fleet.devices.contains_key(&l.index)).collect();
        for link in new {
            self.install(link.index, &link.name)?;
        }
        Ok(())
    }

    fn repair(&mut self, ctx: &mut Context<'_>) -> Result<(), BackendError> {
        if !self.is_initialized() {
            return Ok(());
        }
        self.refresh_interfaces(ctx)?;
        self.fleet.repair_trees()
    }

    fn set_interface_policy(&mut self, policy: InterfacePolicy) {
        self.policy = policy;
    }

    fn cleanup(&mut self, ctx: &mut Context<'_>) -> Result<(), BackendError> {
        self.fleet.remove_all(ctx)?;
        let Some(nl) = self.fleet.nl.take() else { return Ok(()) };
        for (_, dev) in std::mem::take(&mut self.fleet.devices) {
            dev.restore(&nl).map_err(self.fleet.err())?;
        }
        Ok(())
    }
}
