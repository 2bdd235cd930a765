//! The `ebpf` backend: a GCRA bucket per slot, enforced by the cgroup_skb
//! programs, plus TCP pacing of the throttled process's sockets on upload.
use std::collections::{BTreeMap, BTreeSet};

use throttle_common::{pacing_rate, rate::Rate, window_clamp, Counters, Slot, SlotMode};

use super::{Availability, Backend, BackendError, Capabilities, Context, Direction, Health, Priority, SlotId};
use crate::kernel::sockets;

const NAME: &str = "ebpf";

/// Bucket shape for one direction: burst tolerance and retransmission debt,
/// in bytes. GSO/GRO super-packets reach 64 KiB, so the burst is never
/// smaller; ingress needs more, because a policer cannot queue, and at LAN
/// RTTs a socket pauses a retransmission timeout (~210 ms) per drop, which
/// the burst must cover (300 ms: 250 ms left goodput at 0.92-0.95 of the
/// limit when the timer fired late on a busy host).
/// `CT_TUNE="up_ms,down_ms,debt_pct"` overrides the defaults for benchmarks.
/// A `wide` bucket polices many flows at once (a cap): their uploads are
/// paced only near their share and arrive as GSO packets of up to 64 KiB
/// each, so it tolerates `CAP_UP_MS` (5 ms dropped whole GSO packets,
/// 0.5-0.6 of a 4 MiB/s cap; 50 ms passed it exactly, without a drop).
pub fn bucket_shape(rate: Rate, dir: Direction, wide: bool) -> (u64, u64) {
    let (up_ms, down_ms, debt_pct) = tuning();
    let r = rate.bytes_per_sec();
    let (floor, ms) = match dir {
        Direction::Up if wide => (64 << 10, up_ms.max(CAP_UP_MS)),
        Direction::Up => (64 << 10, up_ms),
        Direction::Down => (96 << 10, down_ms),
    };
    let burst = (r * ms / 1000).max(floor);
    // A retransmission may arrive as one 64 KiB GRO aggregate: credit smaller
    // than that drops it again, and TCP backs off exponentially.
    (burst, (burst * debt_pct / 100).max(64 << 10))
}

const CAP_UP_MS: u64 = 50;

fn tuning() -> (u64, u64, u64) {
    const DEFAULT: (u64, u64, u64) = (5, 300, 25);
    let Ok(v) = std::env::var("CT_TUNE") else {
        return DEFAULT;
    };
    let n: Vec<u64> = v.split(',').filter_map(|x| x.trim().parse().ok()).collect();
    match n[..] {
        [a, b, c] => (a, b, c),
        _ => DEFAULT,
    }
}

/// Download window control: headroom over rate × RTT in 1/1024 (0 turns
/// window control off) and the smallest window in bytes (0: one segment).
/// `CT_RWND="gain,floor"` overrides them for benchmarks.
fn rwnd_tuning() -> (u32, u32) {
    const DEFAULT: (u32, u32) = (384, 0);
    let Ok(v) = std::env::var("CT_RWND") else {
        return DEFAULT;
    };
    let n: Vec<u32> = v.split(',').filter_map(|x| x.trim().parse().ok()).collect();
    match n[..] {
        [a, b] => (a, b),
        _ => DEFAULT,
    }
}

#[derive(Default)]
pub struct EbpfBackend {
    /// Each slot's own limit.
    slots: BTreeMap<(SlotId, Direction), Rate>,
    /// The slots running at a share of a link instead (priorities).
    shares: BTreeMap<(SlotId, Direction), Rate>,
    /// The slots that police many flows at once (caps, see `widen`).
    wide: BTreeSet<(SlotId, Direction)>,
    initialized: bool,
}

impl EbpfBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// The bucket of slot `key` at `rate`.
    fn slot(&self, key: (SlotId, Direction), rate: Rate) -> Slot {
        let dir = key.1;
        let (burst, debt) = bucket_shape(rate, dir, self.wide.contains(&key));
        let mut s = Slot::bucket(rate.bytes_per_sec(), burst, debt);
        if dir == Direction::Down {
            (s.rwnd_gain, s.rwnd_floor) = rwnd_tuning();
        }
        s
    }

    /// The rate a slot's bucket runs at: its share, or its own limit.
    fn enforced(&self, key: (SlotId, Direction)) -> Option<Rate> {
        self.shares.get(&key).or(self.slots.get(&key)).copied()
    }
}

impl Backend for EbpfBackend {
    fn name(&self) -> &'static str {
        NAME
    }
    fn priority(&self) -> Priority {
        Priority::Better
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            directions: Direction::BOTH.to_vec(),
            change_in_place: true,
            all_interfaces: true,
            shaping: false,
        }
    }
    /// The data path is loaded before any backend exists, so if we are
    /// asked, the programs verified and attached.
    fn availability(&self) -> Availability {
        Availability::Available
    }
    fn init(&mut self, _ctx: &mut Context<'_>) -> Result<(), BackendError> {
        self.initialized = true;
        Ok(())
    }
    fn is_initialized(&self) -> bool {
        self.initialized
    }

    fn apply(&mut self, ctx: &mut Context<'_>, slot: SlotId, dir: Direction, rate: Rate) -> Result<(), BackendError> {
        ctx.programs.clear_slot(slot)?;
        self.shares.remove(&(slot, dir));
        self.wide.remove(&(slot, dir));
        ctx.programs.set_slot(slot, &self.slot((slot, dir), rate))?;
        self.slots.insert((slot, dir), rate);
        Ok(())
    }

    /// A new own limit; a slot running at a share keeps it (the next
    /// division takes the new limit as its ceiling).
    fn change(&mut self, ctx: &mut Context<'_>, slot: SlotId, dir: Direction, rate: Rate) -> Result<(), BackendError> {
        let cur = self.slots.get_mut(&(slot, dir)).ok_or(BackendError::NoSuchSlot { name: NAME, slot })?;
        *cur = rate;
        let run = self.enforced((slot, dir)).unwrap_or(rate);
        ctx.programs.update_slot(slot, self.slot((slot, dir), run))?;
        Ok(())
    }

    fn share(
        &mut self,
        ctx: &mut Context<'_>,
        slot: SlotId,
        dir: Direction,
        share: Option<Rate>,
    ) -> Result<(), BackendError> {
        let own = *self.slots.get(&(slot, dir)).ok_or(BackendError::NoSuchSlot { name: NAME, slot })?;
        match share {
            Some(r) => self.shares.insert((slot, dir), r),
            None => self.shares.remove(&(slot, dir)),
        };
        ctx.programs.update_slot(slot, self.slot((slot, dir), share.unwrap_or(own)))?;
        Ok(())
    }

    fn widen(&mut self, ctx: &mut Context<'_>, slot: SlotId, dir: Direction) -> Result<(), BackendError> {
        let rate = *self.slots.get(&(slot, dir)).ok_or(BackendError::NoSuchSlot { name: NAME, slot })?;
        self.wide.insert((slot, dir));
        let run = self.enforced((slot, dir)).unwrap_or(rate);
        ctx.programs.update_slot(slot, self.slot((slot, dir), run))?;
        Ok(())
    }

    fn remove(&mut self, ctx: &mut Context<'_>, slot: SlotId, dir: Direction) -> Result<(), BackendError> {
        self.slots.remove(&(slot, dir)).ok_or(BackendError::NoSuchSlot { name: NAME, slot })?;
        self.shares.remove(&(slot, dir));
        self.wide.remove(&(slot, dir));
        ctx.programs.clear_slot(slot)?;
        Ok(())
    }

    fn cover(&mut self, ctx: &mut Context<'_>, _slot: SlotId, dir: Direction, tgid: u32, rate: Option<Rate>) {
        let exempt = ctx.programs.exempt_loopback();
        // New connections are tuned by the sock_ops program; existing ones here.
        let res = sockets::for_each_inet_socket(tgid, |s| {
            if !s.tcp || (s.local && exempt) {
                return;
            }
            let r = match dir {
                Direction::Up => {
                    let v6 = is_v6(s);
                    sockets::set_max_pacing_rate(s, rate.map(|r| pacing_rate(r.bytes_per_sec(), v6)))
                }
                Direction::Down => {
                    let rtt = sockets::rtt_us(s).unwrap_or(0) as u64;
                    // A fixed clamp at once; window control replaces it
                    // from the next ACK on, where the kernel has it.
                    let clamp = sockets::set_window_clamp(s, rate.map(|r| window_clamp(r.bytes_per_sec(), rtt)));
                    let control = rate.is_some() && rwnd_tuning().0 != 0;
                    if let Err(e) = sockets::set_window_control(s, control) {
                        tracing::debug!(pid = tgid, error = %e, "no window control for an existing socket");
                    }
                    clamp
                }
            };
            if let Err(e) = r {
                tracing::debug!(pid = tgid, error = %e, "could not tune an existing socket");
            }
        });
        if let Err(e) = res {
            tracing::debug!(pid = tgid, error = %e, "could not reach existing sockets");
        }
    }

    fn stats(&self, ctx: &Context<'_>, slot: SlotId, dir: Direction) -> Result<Counters, BackendError> {
        if !self.slots.contains_key(&(slot, dir)) {
            return Err(BackendError::NoSuchSlot { name: NAME, slot });
        }
        Ok(ctx.programs.counters(slot)?)
    }

    fn active(&self) -> usize {
        self.slots.len()
    }

    fn health(&self, ctx: &Context<'_>) -> Health {
        if self.slots.is_empty() {
            return Health::Idle;
        }
        for &key @ (slot, _) in self.slots.keys() {
            let rate = self.enforced(key).map_or(0, |r| r.bytes_per_sec());
            match ctx.programs.slot(slot) {
                Ok(s) if s.mode == SlotMode::Bucket as u32 && s.rate == rate => {}
                Ok(_) => return Health::Broken(format!("slot {slot} lost its bucket")),
                Err(e) => return Health::Broken(e.to_string()),
            }
        }
        Health::Healthy
    }

    /// Rewrites lost buckets; a bucket that still has its parameters keeps
    /// its state.
    fn repair(&mut self, ctx: &mut Context<'_>) -> Result<(), BackendError> {
        for &key @ (slot, _) in self.slots.keys() {
            let Some(rate) = self.enforced(key) else { continue };
            let want = self.slot(key, rate);
            match ctx.programs.slot(slot) {
                Ok(s) if s.mode == want.mode && s.rate == want.rate => {}
                _ => ctx.programs.set_slot(slot, &want)?,
            }
        }
        Ok(())
    }

    fn prime(&mut self, ctx: &mut Context<'_>, slot: SlotId, _dir: Direction) -> Result<(), BackendError> {
        let mut s = ctx.programs.slot(slot)?;
        s.tat_ns = monotonic_ns() + s.burst_ns;
        Ok(ctx.programs.set_slot(slot, &s)?)
    }

    fn cleanup(&mut self, ctx: &mut Context<'_>) -> Result<(), BackendError> {
        let slots: Vec<_> = self.slots.keys().copied().collect();
        for (slot, dir) in slots {
            self.remove(ctx, slot, dir)?;
        }
        self.initialized = false;
        Ok(())
    }
}

/// Whether a socket is IPv6 (a v4-mapped peer counts as IPv6 here: its
/// pacing is then 1.4% below the limit, never above).
fn is_v6(s: &sockets::InetSocket) -> bool {
    use std::os::fd::AsRawFd;
    let mut domain: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `domain` and `len` are valid out-pointers of the right size.
    let r = unsafe {
        libc::getsockopt(s.fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_DOMAIN, (&raw mut domain).cast(), &mut len)
    };
    r == 0 && domain == libc::AF_INET6
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
