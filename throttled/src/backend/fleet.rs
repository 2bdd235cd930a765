//! The two HTB backends as one: [`HtbFleet`] keeps the netlink handle, the
//! live slots and one HTB tree per managed interface (each slot a class on
//! every tree), and implements [`Backend`] for both. What differs, which
//! device carries the tree and how it is built, checked and torn down, is
//! the [`HtbKind`]: `tc_htb` shapes each interface's egress, `ifb_tc` an IFB
//! per interface fed from its ingress.
use std::{collections::BTreeMap, marker::PhantomData, path::PathBuf};

use throttle_common::{rate::Rate, Counters, Slot};

use super::{
    htb::{classid, top, HasHtb, HtbDevice, Shape, Top},
    interfaces::InterfacePolicy,
    probe::{self, TcFeatures},
    Availability, Backend, BackendError, Capabilities, Context, Direction, Health, Priority, SlotId,
};
use crate::kernel::netlink::{LinkInfo, Netlink, NetlinkError};

/// What one HTB backend adds to the shared fleet.
pub trait HtbKind: Send + Sized + 'static {
    /// What the fleet keeps per managed interface.
    type Device: HasHtb + Send;
    const NAME: &'static str;
    const DIRECTION: Direction;
    /// Whether the kernel has what the backend needs.
    fn features(f: &TcFeatures) -> Result<(), String>;
    /// Shapes interface `ifindex`: builds its device, with every live slot's
    /// class, into `fleet.devices`.
    fn install(
        fleet: &mut HtbFleet<Self>,
        ctx: &mut Context<'_>,
        ifindex: u32,
        iface: &str,
    ) -> Result<(), BackendError>;
    /// Undoes `install` (the interface went, or the backend stops).
    fn uninstall(
        fleet: &HtbFleet<Self>,
        ctx: &mut Context<'_>,
        ifindex: u32,
        dev: Self::Device,
    ) -> Result<(), BackendError>;
    /// What is wrong with the device, its tree included, if anything.
    fn problem(fleet: &HtbFleet<Self>, ctx: &Context<'_>, dev: &Self::Device) -> Option<String>;
    /// Mends the device of `ifindex`, which `problem` found broken.
    fn rebuild(fleet: &mut HtbFleet<Self>, ctx: &mut Context<'_>, ifindex: u32) -> Result<(), BackendError>;
}

pub struct HtbFleet<K: HtbKind> {
    pub policy: InterfacePolicy,
    pub state_dir: PathBuf,
    pub nl: Option<Netlink>,
    /// Keyed by the managed interface's ifindex.
    pub devices: BTreeMap<u32, K::Device>,
    /// Each slot's own limit.
    pub slots: BTreeMap<SlotId, Rate>,
    /// The `all` cap's slot and rate when it runs here: the top class of
    /// every tree, over the default class and every throttle's.
    cap: Option<(SlotId, Rate)>,
    /// The capacity the classes share (priorities), and each slot's
    /// guaranteed part of it and HTB prio (see `share_capacity`).
    capacity: Option<u64>,
    /// Under the cap, unthrottled traffic's guaranteed part (see [`Top`]).
    unthrottled: u64,
    shares: BTreeMap<SlotId, (u64, u32)>,
    kind: PhantomData<K>,
}

impl<K: HtbKind> HtbFleet<K> {
    pub fn new(policy: InterfacePolicy, state_dir: PathBuf) -> Self {
        let (devices, slots, shares) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
        HtbFleet {
            policy,
            state_dir,
            nl: None,
            devices,
            slots,
            cap: None,
            capacity: None,
            unthrottled: 0,
            shares,
            kind: PhantomData,
        }
    }

    /// Slot `slot`'s class: its own limit, and with a shared capacity its
    /// guaranteed part of it and prio.
    fn shape(&self, slot: SlotId) -> Option<Shape> {
        let own = Shape::fixed(*self.slots.get(&slot)?);
        Some(match self.shares.get(&slot) {
            Some(&(rate, prio)) => Shape { rate, prio, ..own },
            None => own,
        })
    }

    /// Applies slot `slot`'s shape on every device (in place).
    fn reshape(&self, slot: SlotId) -> Result<(), BackendError> {
        let (nl, Some(shape)) = (self.nl()?, self.shape(slot)) else { return Ok(()) };
        self.devices.values().try_for_each(|d| d.htb().change_class(nl, slot, shape).map_err(self.err()))
    }

    pub fn nl(&self) -> Result<&Netlink, BackendError> {
        self.nl.as_ref().ok_or(BackendError::Failed { name: K::NAME, reason: "not initialized".into() })
    }

    pub fn err(&self) -> impl Fn(NetlinkError) -> BackendError {
        |e| BackendError::Failed { name: K::NAME, reason: e.to_string() }
    }

    /// Managed interfaces (by ifindex) that are no longer `wanted`.
    fn gone(&self, wanted: &[LinkInfo]) -> Vec<u32> {
        self.devices.keys().copied().filter(|i| !wanted.iter().any(|l| l.index == *i)).collect()
    }

    /// Adds the cap, the shared capacity and every live slot's class to a
    /// freshly installed tree.
    pub fn populate(&self, dev: &HtbDevice) -> Result<(), BackendError> {
        let nl = self.nl()?;
        dev.set_top(nl, self.top()).map_err(self.err())?;
        let shapes = self.slots.keys().filter_map(|s| Some((*s, self.shape(*s)?)));
        shapes.into_iter().try_for_each(|(slot, shape)| dev.add_class(nl, slot, shape).map_err(self.err()))
    }

    /// What is wrong with a tree, if anything (for `HtbKind::problem`).
    pub fn tree_problem(&self, dev: &HtbDevice) -> Option<String> {
        dev.check(self.nl.as_ref()?, self.slots.keys().copied()).err()
    }

    /// Removes every slot (before the trees go away).
    fn remove_all(&mut self, ctx: &mut Context<'_>) -> Result<(), BackendError> {
        let slots: Vec<SlotId> = self.slots.keys().copied().chain(self.cap.map(|c| c.0)).collect();
        slots.into_iter().try_for_each(|s| self.remove(ctx, s, K::DIRECTION))
    }

    fn top(&self) -> Top {
        let cap = self.cap.map(|(_, r)| r.bytes_per_sec());
        Top { cap, capacity: self.capacity, unthrottled: self.unthrottled }
    }

    fn is_cap(&self, slot: SlotId) -> bool {
        self.cap.is_some_and(|(s, _)| s == slot)
    }

    /// Writes the classes over the throttles' on every tree.
    fn write_top(&self) -> Result<(), BackendError> {
        let nl = self.nl()?;
        self.devices.values().try_for_each(|d| d.htb().set_top(nl, self.top()).map_err(self.err()))
    }
}

impl<K: HtbKind> Backend for HtbFleet<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }
    fn priority(&self) -> Priority {
        Priority::Good
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities { directions: vec![K::DIRECTION], change_in_place: true, all_interfaces: false, shaping: true }
    }
    fn availability(&self) -> Availability {
        match K::features(probe::tc_features()) {
            Ok(()) => Availability::Available,
            Err(e) => Availability::Unavailable(e),
        }
    }
    fn init(&mut self, ctx: &mut Context<'_>) -> Result<(), BackendError> {
        if let Availability::Unavailable(reason) = self.availability() {
            return Err(BackendError::Unavailable { name: K::NAME, reason });
        }
        self.nl = Some(Netlink::new().map_err(self.err())?);
        self.refresh_interfaces(ctx)
    }
    fn is_initialized(&self) -> bool {
        self.nl.is_some()
    }

    fn apply(&mut self, ctx: &mut Context<'_>, slot: SlotId, _dir: Direction, rate: Rate) -> Result<(), BackendError> {
        self.shares.remove(&slot);
        let nl = self.nl()?;
        for d in self.devices.values() {
            d.htb().add_class(nl, slot, Shape::fixed(rate)).map_err(self.err())?;
        }
        ctx.programs.set_slot(slot, &Slot::htb_class(classid(slot)))?;
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
        if self.is_cap(slot) {
            let old = self.cap.replace((slot, rate));
            let res = self.write_top();
            if res.is_err() {
                self.cap = old;
            }
            return res;
        }
        let old = self.slots.insert(slot, rate);
        let res = self.reshape(slot);
        if res.is_err() {
            // Nothing changed: the next call starts from the same limit.
            match old {
                Some(r) => self.slots.insert(slot, r),
                None => self.slots.remove(&slot),
            };
        }
        res
    }

    /// A parent class at `capacity`, each class guaranteed its weighted
    /// part of it (up to its own limit) and borrowing what the others
    /// leave, by prio: HTB's own rate, ceil and prio. Written only when
    /// something moved.
    fn share_capacity(
        &mut self,
        _ctx: &mut Context<'_>,
        capacity: Option<Rate>,
        weights: &[(SlotId, u64, u32)],
    ) -> Result<(), BackendError> {
        let capacity = capacity.map(|c| c.bytes_per_sec());
        // Under the cap, unthrottled traffic weighs as a normal throttle.
        let unthrottled_weight = if self.cap.is_some() { crate::limit::Priority::Normal.weight() } else { 0 };
        let total: u64 = weights.iter().map(|w| w.1).sum::<u64>() + unthrottled_weight;
        let part = |cap: u64, w: u64| (cap as u128 * w as u128 / total.max(1) as u128).max(1) as u64;
        let shares: BTreeMap<SlotId, (u64, u32)> = match capacity {
            Some(cap) => weights.iter().map(|&(s, w, prio)| (s, (part(cap, w), prio))).collect(),
            None => BTreeMap::new(),
        };
        let unthrottled = match capacity {
            Some(cap) if unthrottled_weight > 0 => part(cap, unthrottled_weight),
            _ => 0,
        };
        let top_moved = capacity != self.capacity || unthrottled != self.unthrottled;
        if !top_moved && shares == self.shares {
            return Ok(());
        }
        if top_moved {
            (self.capacity, self.unthrottled) = (capacity, unthrottled);
            self.write_top()?;
        }
        let moved: Vec<SlotId> = self.slots.keys().copied().filter(|s| shares.get(s) != self.shares.get(s)).collect();
        (self.capacity, self.shares) = (capacity, shares);
        moved.into_iter().try_for_each(|s| self.reshape(s))
    }

    /// The `all` cap (the only cap HTB runs): its slot becomes the top
    /// class of every tree instead of a class of its own, so each
    /// throttle's class and the unthrottled traffic's are beneath it. On
    /// failure the caller removes the slot, which undoes this.
    fn widen(&mut self, ctx: &mut Context<'_>, slot: SlotId, _dir: Direction) -> Result<(), BackendError> {
        if self.cap.is_some_and(|(s, _)| s != slot) {
            return Err(BackendError::Failed { name: K::NAME, reason: "it already runs the all cap".into() });
        }
        let rate = self.slots.remove(&slot).ok_or(BackendError::NoSuchSlot { name: K::NAME, slot })?;
        self.shares.remove(&slot);
        self.cap = Some((slot, rate));
        let nl = self.nl()?;
        for d in self.devices.values() {
            if let Err(e) = d.htb().remove_class(nl, slot) {
                tracing::warn!(backend = K::NAME, device = d.htb().name, error = %e, "could not delete class");
            }
        }
        ctx.programs.set_slot(slot, &Slot::htb_class(top()))?;
        self.write_top()
    }

    fn remove(&mut self, ctx: &mut Context<'_>, slot: SlotId, _dir: Direction) -> Result<(), BackendError> {
        if self.is_cap(slot) {
            (self.cap, self.unthrottled) = (None, 0);
            ctx.programs.clear_slot(slot)?;
            return self.write_top();
        }
        self.slots.remove(&slot).ok_or(BackendError::NoSuchSlot { name: K::NAME, slot })?;
        self.shares.remove(&slot);
        ctx.programs.clear_slot(slot)?;
        let nl = self.nl()?;
        for d in self.devices.values() {
            if let Err(e) = d.htb().remove_class(nl, slot) {
                tracing::warn!(backend = K::NAME, device = d.htb().name, error = %e, "could not delete class");
            }
        }
        Ok(())
    }

    /// Class counters summed over every device: the kernel's own numbers.
    fn stats(&self, _ctx: &Context<'_>, slot: SlotId, _dir: Direction) -> Result<Counters, BackendError> {
        let mut c = Counters::default();
        for d in self.devices.values() {
            let s = match self.is_cap(slot) {
                true => d.htb().cap_stats(self.nl()?),
                false => d.htb().stats(self.nl()?, slot),
            };
            let s = s.map_err(self.err())?;
            c.pass_bytes += s.bytes;
            c.pass_pkts += s.packets;
            c.drop_pkts += s.drops;
        }
        Ok(c)
    }

    fn active(&self) -> usize {
        self.slots.len() + usize::from(self.cap.is_some())
    }

    /// The first broken device; with no interface to manage, throttles hold
    /// nothing: degraded.
    fn health(&self, ctx: &Context<'_>) -> Health {
        let Some(nl) = &self.nl else { return Health::Idle };
        if self.devices.is_empty() {
            return Health::Degraded(self.policy.none_present());
        }
        if let Some(why) = self.devices.values().find_map(|d| K::problem(self, ctx, d)) {
            return Health::Broken(why);
        }
        // Keyed by the managed interface's index.
        match self.devices.iter().find(|(idx, _)| nl.link(**idx).is_ok_and(|l| l.is_some_and(|l| !l.up))) {
            Some((_, d)) => Health::Degraded(format!("{} is down", d.iface())),
            None => Health::Healthy,
        }
    }

    fn refresh_interfaces(&mut self, ctx: &mut Context<'_>) -> Result<(), BackendError> {
        let wanted = self.policy.resolve(self.nl()?).map_err(self.err())?;
        for idx in self.gone(&wanted) {
            let Some(dev) = self.devices.remove(&idx) else { continue };
            tracing::info!(backend = K::NAME, interface = dev.iface(), "interface gone");
            // Vanished, or no longer managed: either way, undo our part.
            if let Err(e) = K::uninstall(self, ctx, idx, dev) {
                tracing::warn!(backend = K::NAME, error = %e, "could not restore the root qdisc");
            }
        }
        let new: Vec<_> = wanted.into_iter().filter(|l| !self.devices.contains_key(&l.index)).collect();
        for link in new {
            K::install(self, ctx, link.index, &link.name)?;
        }
        Ok(())
    }

    fn repair(&mut self, ctx: &mut Context<'_>) -> Result<(), BackendError> {
        if !self.is_initialized() {
            return Ok(());
        }
        self.refresh_interfaces(ctx)?;
        let broken: Vec<u32> =
            self.devices.iter().filter(|(_, d)| K::problem(self, ctx, d).is_some()).map(|(i, _)| *i).collect();
        broken.into_iter().try_for_each(|idx| K::rebuild(self, ctx, idx))
    }

    fn set_interface_policy(&mut self, policy: InterfacePolicy) {
        self.policy = policy;
    }

    /// Every device is undone even if one fails; the first error is
    /// returned.
    fn cleanup(&mut self, ctx: &mut Context<'_>) -> Result<(), BackendError> {
        self.remove_all(ctx)?;
        let mut first = Ok(());
        for (idx, dev) in std::mem::take(&mut self.devices) {
            let res = K::uninstall(self, ctx, idx, dev);
            first = first.and(res);
        }
        self.nl = None;
        (self.capacity, self.cap, self.unthrottled) = (None, None, 0);
        first
    }
}
