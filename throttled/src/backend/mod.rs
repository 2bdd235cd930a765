//! The backend abstraction. A backend enforces limits on throttle slots in
//! one or both directions; the shared attribution programs map processes to
//! slots, so a backend never deals with processes, only with slots.
pub mod ebpf;
pub mod fleet;
pub mod htb;
pub mod ifb_tc;
pub mod interfaces;
pub mod leftovers;
pub mod mark;
pub mod probe;
pub mod records;
pub mod tc_htb;

use throttle_common::{rate::Rate, Counters, Direction};

use crate::kernel::bpf::{BpfError, Programs};

/// Every backend the daemon knows, by name (config validation uses this).
pub const NAMES: [&str; 3] = ["ebpf", "tc_htb", "ifb_tc"];

/// Ranks the automatic choice of backend: higher is preferred.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub enum Priority {
    Fallback = 0,
    Good = 1,
    Better = 2,
    Best = 3,
}

/// Whether a backend can run here, and if not, why (for the user).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Availability {
    Available,
    Unavailable(String),
}

impl Availability {
    pub fn is_available(&self) -> bool {
        matches!(self, Availability::Available)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub directions: Vec<Direction>,
    /// Limits can change without a gap or a reset of the bucket/class.
    pub change_in_place: bool,
    /// Applies to traffic on every interface, not only managed ones.
    pub all_interfaces: bool,
    /// Shapes (queues) instead of policing (dropping).
    pub shaping: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    Healthy,
    /// Not set up (no throttles yet).
    Idle,
    /// Intact, but unable to act for now (a managed interface is down):
    /// reported, never repaired or failed over.
    Degraded(String),
    Broken(String),
}

/// As logs and users read it: "healthy", "broken: why".
impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Health::Healthy => f.write_str("healthy"),
            Health::Idle => f.write_str("idle"),
            Health::Degraded(why) => write!(f, "degraded: {why}"),
            Health::Broken(why) => write!(f, "broken: {why}"),
        }
    }
}

/// A throttle slot id: one per throttle and direction, shared with the BPF maps.
pub type SlotId = u32;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("backend '{name}' is unavailable: {reason}")]
    Unavailable { name: &'static str, reason: String },
    #[error("backend '{name}' does not support {direction}")]
    WrongDirection { name: &'static str, direction: Direction },
    #[error("backend '{name}' has no slot {slot}")]
    NoSuchSlot { name: &'static str, slot: SlotId },
    #[error("kernel: {0}")]
    Bpf(#[from] BpfError),
    #[error("backend '{name}' failed: {reason}")]
    Failed { name: &'static str, reason: String },
}

/// What backends get from the daemon: the shared data path.
pub struct Context<'a> {
    pub programs: &'a mut Programs,
}

pub trait Backend: Send {
    fn name(&self) -> &'static str;
    fn priority(&self) -> Priority;
    fn capabilities(&self) -> Capabilities;
    /// May be chosen as a default, a migration or a failover target
    /// (`block` may not: it holds blocks only).
    fn automatic(&self) -> bool {
        true
    }
    /// Probed once and cached; never creates or deletes kernel objects.
    fn availability(&self) -> Availability;
    fn supports(&self, d: Direction) -> bool {
        self.capabilities().directions.contains(&d)
    }
    /// Sets up shared kernel objects; called before the first `apply`.
    fn init(&mut self, ctx: &mut Context<'_>) -> Result<(), BackendError>;
    fn is_initialized(&self) -> bool;
    fn apply(&mut self, ctx: &mut Context<'_>, slot: SlotId, dir: Direction, rate: Rate) -> Result<(), BackendError>;
    fn change(&mut self, ctx: &mut Context<'_>, slot: SlotId, dir: Direction, rate: Rate) -> Result<(), BackendError>;
    fn remove(&mut self, ctx: &mut Context<'_>, slot: SlotId, dir: Direction) -> Result<(), BackendError>;
    /// Runs a slot at `share` of a link (priorities) below its own limit,
    /// or back at its own limit (`None`). Backends that cannot: nothing.
    fn share(
        &mut self,
        _ctx: &mut Context<'_>,
        _slot: SlotId,
        _dir: Direction,
        _share: Option<Rate>,
    ) -> Result<(), BackendError> {
        Ok(())
    }
    /// Shares `capacity` among its slots natively, by `(slot, weight,
    /// prio)` (prio 0 first), or stops (`None`). Backends that cannot:
    /// nothing (the manager divides their capacity itself, see `share`).
    fn share_capacity(
        &mut self,
        _ctx: &mut Context<'_>,
        _capacity: Option<Rate>,
        _weights: &[(SlotId, u64, u32)],
    ) -> Result<(), BackendError> {
        Ok(())
    }
    /// The slot polices many flows at once (a cap): shape its bucket for
    /// that. Backends without buckets: nothing.
    fn widen(&mut self, _ctx: &mut Context<'_>, _slot: SlotId, _dir: Direction) -> Result<(), BackendError> {
        Ok(())
    }
    /// A process joined (`Some(rate)`) or left (`None`) a slot: per-socket
    /// work such as pacing happens here.
    fn cover(&mut self, _ctx: &mut Context<'_>, _slot: SlotId, _dir: Direction, _tgid: u32, _rate: Option<Rate>) {}
    fn stats(&self, ctx: &Context<'_>, slot: SlotId, dir: Direction) -> Result<Counters, BackendError>;
    fn active(&self) -> usize;
    fn health(&self, ctx: &Context<'_>) -> Health;
    /// Interfaces appeared or vanished (rtnetlink events): follow them.
    fn refresh_interfaces(&mut self, _ctx: &mut Context<'_>) -> Result<(), BackendError> {
        Ok(())
    }
    /// Re-creates whatever `health` finds missing or broken, keeping every
    /// live slot's limit and the original qdiscs saved at install time.
    fn repair(&mut self, ctx: &mut Context<'_>) -> Result<(), BackendError>;
    /// A slot is taking over a limit from another backend (migration): start
    /// it without burst credit, since the old backend already spent it.
    fn prime(&mut self, _ctx: &mut Context<'_>, _slot: SlotId, _dir: Direction) -> Result<(), BackendError> {
        Ok(())
    }
    /// The managed interfaces changed (reload); `refresh_interfaces` follows.
    fn set_interface_policy(&mut self, _policy: interfaces::InterfacePolicy) {}
    /// Releases every kernel object the backend created.
    fn cleanup(&mut self, ctx: &mut Context<'_>) -> Result<(), BackendError>;
}
