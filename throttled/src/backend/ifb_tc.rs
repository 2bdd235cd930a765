//! The `ifb_tc` backend (download): per managed interface, an IFB device we
//! create (`cti-<name>`), an HTB tree on it, and the `ct_ifb_cls` program on
//! the interface's ingress, which redirects throttled packets to the IFB
//! with `skb->priority` set to their class. The rest is the shared
//! [`HtbFleet`].
use aya::programs::tc::SchedClassifierLinkId;

use super::{
    fleet::{HtbFleet, HtbKind},
    htb::{HasHtb, HtbDevice},
    interfaces::ifb_name,
    probe::TcFeatures,
    records::{self, IfbRecord},
    BackendError, Context, Direction,
};
use crate::kernel::netlink::Netlink;

const NAME: &str = "ifb_tc";

pub type IfbTcBackend = HtbFleet<IfbTc>;

/// The tree sits on an IFB of ours, fed from the interface's ingress.
pub struct IfbTc;

pub struct IfbDevice {
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

impl HtbKind for IfbTc {
    type Device = IfbDevice;
    const NAME: &'static str = NAME;
    const DIRECTION: Direction = Direction::Down;

    fn features(f: &TcFeatures) -> Result<(), String> {
        f.htb.clone().and(f.ifb.clone()).and(f.clsact.clone())
    }

    fn install(
        fleet: &mut HtbFleet<Self>,
        ctx: &mut Context<'_>,
        ifindex: u32,
        iface: &str,
    ) -> Result<(), BackendError> {
        let nl = fleet.nl()?.clone();
        let name = ifb_name(iface, ifindex);
        remove_leftover(fleet, &nl, &name)?;
        // On the disk before the device exists: a crash at any point
        // leaves a record for the next start's sweep.
        record(fleet, &IfbRecord { name: name.clone(), ifindex: None })?;
        let ifb = match nl.create_ifb(&name) {
            Ok(i) => i,
            Err(e) => {
                records::remove(&records::ifb_path(&fleet.state_dir, &name));
                return Err(fleet.err()(e));
            }
        };
        let built = (|| {
            record(fleet, &IfbRecord { name: name.clone(), ifindex: Some(ifb) })?;
            let htb = HtbDevice::install(&nl, ifb, &name, &fleet.state_dir).map_err(fleet.err())?;
            fleet.populate(&htb)?;
            let link = ctx.programs.attach_classifier(iface, ifindex, ifb)?;
            Ok::<_, BackendError>(IfbDevice { iface: iface.to_string(), htb, link })
        })();
        match built {
            Ok(dev) => {
                tracing::info!(backend = NAME, interface = iface, ifb = name, "shaping interface");
                fleet.devices.insert(ifindex, dev);
                Ok(())
            }
            Err(e) => {
                if nl.delete_link(ifb).is_ok() {
                    records::remove(&records::ifb_path(&fleet.state_dir, &name));
                }
                Err(e)
            }
        }
    }

    /// Detaches the classifier, puts the IFB's root back and deletes the
    /// IFB. Never fails: what cannot be undone is logged, and its record
    /// stays for the next start's sweep.
    fn uninstall(
        fleet: &HtbFleet<Self>,
        ctx: &mut Context<'_>,
        ifindex: u32,
        dev: IfbDevice,
    ) -> Result<(), BackendError> {
        if let Err(e) = ctx.programs.detach_classifier(ifindex, dev.link) {
            tracing::debug!(backend = NAME, interface = dev.iface, error = %e, "classifier already detached");
        }
        let Some(nl) = &fleet.nl else { return Ok(()) };
        let (ifb, name) = (dev.htb.ifindex, dev.htb.name.clone());
        let _ = dev.htb.restore(nl);
        match nl.delete_link(ifb) {
            Ok(()) => {}
            Err(e) if e.errno() == Some(libc::ENODEV) || e.errno() == Some(libc::ENOENT) => {
                tracing::debug!(backend = NAME, interface = dev.iface, error = %e, "IFB already gone");
            }
            Err(e) => {
                tracing::warn!(backend = NAME, interface = dev.iface, error = %e, "could not delete the IFB");
                return Ok(());
            }
        }
        records::remove(&records::ifb_path(&fleet.state_dir, &name));
        Ok(())
    }

    /// What is wrong with the IFB, the classifier or the tree.
    fn problem(fleet: &HtbFleet<Self>, ctx: &Context<'_>, d: &IfbDevice) -> Option<String> {
        let nl = fleet.nl.as_ref()?;
        let htb = &d.htb;
        match nl.link(htb.ifindex) {
            Ok(Some(l)) if l.up => {}
            Ok(Some(_)) => return Some(format!("{} is down", htb.name)),
            _ => return Some(format!("{} is gone", htb.name)),
        }
        if !ctx.programs.classifier_attached(&d.iface) {
            return Some(format!("the classifier on {} was detached", d.iface));
        }
        fleet.tree_problem(htb)
    }

    /// Rebuilt whole: the IFB is ours, so nothing of the host's is lost.
    fn rebuild(fleet: &mut HtbFleet<Self>, ctx: &mut Context<'_>, ifindex: u32) -> Result<(), BackendError> {
        let Some(dev) = fleet.devices.remove(&ifindex) else { return Ok(()) };
        let iface = dev.iface.clone();
        tracing::info!(backend = NAME, interface = iface, "rebuilding the IFB");
        Self::uninstall(fleet, ctx, ifindex, dev)?;
        Self::install(fleet, ctx, ifindex, &iface)
    }
}

/// A device of ours (recorded by this state directory) left by a crashed
/// run is replaced, never duplicated; an unrecorded one of that name is
/// another instance's, and is left alone.
fn remove_leftover(fleet: &HtbFleet<IfbTc>, nl: &Netlink, name: &str) -> Result<(), BackendError> {
    let Some(old) = nl.link_index(name).map_err(fleet.err())? else { return Ok(()) };
    let recorded = records::read_ifb(&fleet.state_dir, name).is_some_and(|r| r.ifindex.is_none_or(|i| i == old));
    if !recorded {
        let reason = format!("{name} exists and is not ours (another chadthrottled's?): leaving it alone");
        return Err(BackendError::Failed { name: NAME, reason });
    }
    tracing::info!(backend = NAME, ifb = name, "removing a leftover IFB");
    nl.delete_link(old).map_err(fleet.err())?;
    records::remove(&records::ifb_path(&fleet.state_dir, name));
    Ok(())
}

fn record(fleet: &HtbFleet<IfbTc>, r: &IfbRecord) -> Result<(), BackendError> {
    records::write_ifb(&fleet.state_dir, r).map_err(|e| BackendError::Failed {
        name: NAME,
        reason: format!("cannot record {} in {}: {e}", r.name, fleet.state_dir.display()),
    })
}
