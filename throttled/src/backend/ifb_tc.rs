//! The `ifb_tc` backend (download): per managed interface, an IFB device we
//! create (`cti-<name>`), an HTB tree on it, and the `ct_ifb_cls` program on
//! the interface's ingress, which redirects throttled packets to the IFB
//! with `skb->priority` set to their class.
use std::path::PathBuf;

use aya::programs::tc::SchedClassifierLinkId;
use throttle_common::{rate::Rate, Counters};

use super::{
    htb::{HasHtb, HtbDevice, HtbFleet},
    interfaces::{ifb_name, InterfacePolicy},
    probe,
    records::{self, IfbRecord},
    Availability, Backend, BackendError, Capabilities, Context, Direction, Health, Priority, SlotId,
};
use crate::kernel::netlink::Netlink;

const NAME: &str = "ifb_tc";

struct IfbDevice {
    iface: String,
    htb: HtbDevice,
    link: SchedClassifierLinkId,
}

impl HasHtb for IfbDevice {
    fn htb(&self) -> &HtbDevice {
        &self.htb
    }
    fn iface(&self) -> &str {
        &self.iface
    }
}

pub struct IfbTcBackend {
    policy: InterfacePolicy,
    state_dir: PathBuf,
    fleet: HtbFleet<IfbDevice>,
}

impl IfbTcBackend {
    pub fn new(policy: InterfacePolicy, state_dir: PathBuf) -> Self {
        IfbTcBackend { policy, state_dir, fleet: HtbFleet::new(NAME) }
    }

    fn install(&mut self, ctx: &mut Context<'_>, ifindex: u32, iface: &str) -> Result<(), BackendError> {
        let nl = self.fleet.nl()?.clone();
        let name = ifb_name(iface, ifindex);
        self.remove_leftover(&nl, &name)?;
        // On the disk before the device exists: a crash at any point
        // leaves a record for the next start's sweep.
        self.record(&IfbRecord { name: name.clone(), ifindex: None })?;
        let ifb = match nl.create_ifb(&name) {
            Ok(i) => i,
            Err(e) => {
                records::remove(&records::ifb_path(&self.state_dir, &name));
                return Err(self.fleet.err()(e));
            }
        };
        let built = (|| {
            self.record(&IfbRecord { name: name.clone(), ifindex: Some(ifb) })?;
            let htb = HtbDevice::install(&nl, ifb, &name, &self.state_dir).map_err(self.fleet.err())?;
            self.fleet.populate(&htb)?;
            let link = ctx.datapath.attach_classifier(iface, ifindex, ifb)?;
            Ok::<_, BackendError>(IfbDevice { iface: iface.to_string(), htb, link })
        })();
        match built {
            Ok(dev) => {
                tracing::info!(backend = NAME, interface = iface, ifb = name, "shaping interface");
                self.fleet.devices.insert(ifindex, dev);
                Ok(())
            }
            Err(e) => {
                if nl.delete_link(ifb).is_ok() {
                    records::remove(&records::ifb_path(&self.state_dir, &name));
                }
                Err(e)
            }
        }
    }

    /// A device of ours (recorded by this state directory) left by a
    /// crashed run is replaced, never duplicated; an unrecorded one of that
    /// name is another instance's, and is left alone.
    fn remove_leftover(&self, nl: &Netlink, name: &str) -> Result<(), BackendError> {
        let Some(old) = nl.link_index(name).map_err(self.fleet.err())? else { return Ok(()) };
        let recorded = records::read_ifb(&self.state_dir, name).is_some_and(|r| r.ifindex.is_none_or(|i| i == old));
        if !recorded {
            let reason = format!("{name} exists and is not ours (another chadthrottled's?): leaving it alone");
            return Err(BackendError::Failed { name: NAME, reason });
        }
        tracing::info!(backend = NAME, ifb = name, "removing a leftover IFB");
        nl.delete_link(old).map_err(self.fleet.err())?;
        records::remove(&records::ifb_path(&self.state_dir, name));
        Ok(())
    }

    fn record(&self, r: &IfbRecord) -> Result<(), BackendError> {
        records::write_ifb(&self.state_dir, r).map_err(|e| BackendError::Failed {
            name: NAME,
            reason: format!("cannot record {} in {}: {e}", r.name, self.state_dir.display()),
        })
    }

    /// What is wrong with a device's IFB or classifier (the tree is checked
    /// by the fleet).
    fn device_problem(&self, ctx: &Context<'_>, d: &IfbDevice) -> Option<String> {
        let nl = self.fleet.nl.as_ref()?;
        let htb = &d.htb;
        match nl.link(htb.ifindex) {
            Ok(Some(l)) if l.up => {}
            Ok(Some(_)) => return Some(format!("{} is down", htb.name)),
            _ => return Some(format!("{} is gone", htb.name)),
        }
        if !ctx.datapath.classifier_attached(&d.iface) {
            return Some(format!("the classifier on {} was detached", d.iface));
        }
        htb.check(nl, self.fleet.slots.keys().copied()).err()
    }

    fn uninstall(&self, ctx: &mut Context<'_>, ifindex: u32, dev: IfbDevice) {
        if let Err(e) = ctx.datapath.detach_classifier(ifindex, dev.link) {
            tracing::debug!(backend = NAME, interface = dev.iface, error = %e, "classifier already detached");
        }
        let Some(nl) = &self.fleet.nl else { return };
        let (ifb, name) = (dev.htb.ifindex, dev.htb.name.clone());
        let _ = dev.htb.restore(nl);
        match nl.delete_link(ifb) {
            Ok(()) => {}
            Err(e) if e.errno() == Some(libc::ENODEV) || e.errno() == Some(libc::ENOENT) => {
                tracing::debug!(backend = NAME, interface = dev.iface, error = %e, "IFB already gone");
            }
            Err(e) => {
                tracing::warn!(backend = NAME, interface = dev.iface, error = %e, "could not delete the IFB");
                return; // its record stays, for the next start's sweep
            }
        }
        records::remove(&records::ifb_path(&self.state_dir, &name));
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
    fn health(&self, ctx: &Context<'_>) -> Health {
        match self.fleet.devices.values().find_map(|d| self.device_problem(ctx, d)) {
            Some(why) => Health::Broken(why),
            None => self.fleet.health(&self.policy, |_, _| Ok(())),
        }
    }

    fn refresh_interfaces(&mut self, ctx: &mut Context<'_>) -> Result<(), BackendError> {
        let wanted = self.policy.resolve(self.fleet.nl()?).map_err(self.fleet.err())?;
        let gone = self.fleet.gone(&wanted);
        for idx in gone {
            if let Some(dev) = self.fleet.devices.remove(&idx) {
                tracing::info!(backend = NAME, interface = dev.iface, "interface gone");
                self.uninstall(ctx, idx, dev);
            }
        }
        let new: Vec<_> = wanted.into_iter().filter(|l| !self.fleet.devices.contains_key(&l.index)).collect();
        for link in new {
            self.install(ctx, link.index, &link.name)?;
        }
        Ok(())
    }

    /// A device whose IFB, tree or classifier broke is rebuilt whole: the
    /// IFB is ours, so nothing of the host's is lost.
    fn repair(&mut self, ctx: &mut Context<'_>) -> Result<(), BackendError> {
        if !self.is_initialized() {
            return Ok(());
        }
        self.refresh_interfaces(ctx)?;
        let broken: Vec<u32> =
            self.fleet.devices.iter().filter(|(_, d)| self.device_problem(ctx, d).is_some()).map(|(i, _)| *i).collect();
        for idx in broken {
            if let Some(dev) = self.fleet.devices.remove(&idx) {
                let iface = dev.iface.clone();
                tracing::info!(backend = NAME, interface = iface, "rebuilding the IFB");
                self.uninstall(ctx, idx, dev);
                self.install(ctx, idx, &iface)?;
            }
        }
        Ok(())
    }

    fn set_interface_policy(&mut self, policy: InterfacePolicy) {
        self.policy = policy;
    }

    fn cleanup(&mut self, ctx: &mut Context<'_>) -> Result<(), BackendError> {
        self.fleet.remove_all(ctx)?;
        for (idx, dev) in std::mem::take(&mut self.fleet.devices) {
            self.uninstall(ctx, idx, dev);
        }
        self.fleet.nl = None;
        Ok(())
    }
}
