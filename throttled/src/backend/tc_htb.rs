//! The `tc_htb` backend (upload): an HTB tree on each managed interface. No
//! tc filter: the cgroup egress program writes `skb->priority = classid`,
//! and HTB classifies on it directly. The rest is the shared
//! [`HtbFleet`].
use super::{
    fleet::{HtbFleet, HtbKind},
    htb::HtbDevice,
    probe::TcFeatures,
    BackendError, Context, Direction,
};

pub type TcHtbBackend = HtbFleet<TcHtb>;

/// The tree sits on the interface itself.
pub struct TcHtb;

impl HtbKind for TcHtb {
    type Device = HtbDevice;
    const NAME: &'static str = "tc_htb";
    const DIRECTION: Direction = Direction::Up;

    fn features(f: &TcFeatures) -> Result<(), String> {
        f.htb.clone()
    }

    fn install(
        fleet: &mut HtbFleet<Self>,
        _ctx: &mut Context<'_>,
        ifindex: u32,
        iface: &str,
    ) -> Result<(), BackendError> {
        let dev = HtbDevice::install(fleet.nl()?, ifindex, iface, &fleet.state_dir).map_err(fleet.err())?;
        fleet.populate(&dev)?;
        tracing::info!(backend = Self::NAME, interface = iface, "shaping interface");
        fleet.devices.insert(ifindex, dev);
        Ok(())
    }

    /// Puts the interface's root qdisc back.
    fn uninstall(
        fleet: &HtbFleet<Self>,
        _ctx: &mut Context<'_>,
        _ifindex: u32,
        dev: HtbDevice,
    ) -> Result<(), BackendError> {
        dev.restore(fleet.nl()?).map_err(fleet.err())
    }

    fn problem(fleet: &HtbFleet<Self>, _ctx: &Context<'_>, dev: &HtbDevice) -> Option<String> {
        fleet.tree_problem(dev)
    }

    /// Rebuilds the tree in place, keeping the root saved at install time.
    fn rebuild(fleet: &mut HtbFleet<Self>, _ctx: &mut Context<'_>, ifindex: u32) -> Result<(), BackendError> {
        let Some(dev) = fleet.devices.get(&ifindex) else { return Ok(()) };
        tracing::info!(backend = Self::NAME, device = dev.name, "rebuilding the HTB tree");
        dev.reinstall(fleet.nl()?).map_err(fleet.err())?;
        fleet.populate(dev)
    }
}
