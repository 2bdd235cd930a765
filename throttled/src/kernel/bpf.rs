//! Loads the embedded eBPF object, attaches it once at the cgroup v2 root,
//! and gives typed access to its maps. Nothing is pinned: every program is
//! held by a link fd, so the kernel detaches everything when the daemon
//! exits, including on `kill -9`.
use std::{fs::File, os::fd::AsRawFd};

use aya::{
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuHashMap, SkStorage},
    programs::{
        cgroup_skb::CgroupSkbLinkId, cgroup_sock::CgroupSockLinkId, cgroup_sock_addr::CgroupSockAddrLinkId,
        cgroup_sockopt::CgroupSockoptLinkId, sock_ops::SockOpsLinkId, tc::SchedClassifierLinkId, CgroupAttachMode,
        CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, CgroupSockopt, ProgramError, SchedClassifier,
        SockOps, TcAttachType,
    },
    Ebpf, EbpfError, EbpfLoader,
};
use throttle_common::{
    Counters, ProcSlots, ProcTraffic, Slot, SockOwner, GEN_ALL_DOWN, GEN_ALL_UP, GEN_PROCS, GEN_THROTTLING,
};

use super::cgroup;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/throttle-ebpf"));

// Names of our programs and maps as the kernel reports them (tests and
// leftover detection look them up by these).

/// The programs attached at the cgroup v2 root for the daemon's lifetime
/// (the `GUARD_PROGRAMS` among them where the kernel takes them).
pub const CGROUP_PROGRAMS: [&str; 9] = [
    "ct_sock_create",
    "ct_egress",
    "ct_ingress",
    "ct_sockops",
    "ct_setsockopt",
    "ct_connect4",
    "ct_connect6",
    "ct_sendmsg4",
    "ct_sendmsg6",
];
/// Every program: those at the cgroup root, and the IFB classifier.
pub const PROGRAM_NAMES: [&str; 10] = {
    let mut all = [CLASSIFIER; 10];
    let mut i = 0;
    while i < CGROUP_PROGRAMS.len() {
        all[i] = CGROUP_PROGRAMS[i];
        i += 1;
    }
    all
};
/// Refuse a blocked process's `connect()` and UDP `sendmsg()` (EPERM).
/// Optional: without them a block still drops every packet, and
/// `Programs::connect_guard` says why they are missing.
pub const GUARD_PROGRAMS: [&str; 4] = ["ct_connect4", "ct_connect6", "ct_sendmsg4", "ct_sendmsg6"];
pub const MAP_NAMES: [&str; 7] =
    ["CT_SK_OWNER", "CT_PROCS", "CT_SLOTS", "CT_COUNTERS", "CT_GEN", "CT_IFB", "CT_PROC_TRAFFIC"];
const CLASSIFIER: &str = "ct_ifb_cls";

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("cgroup v2 is not available: {0}")]
    NoCgroup2(#[source] std::io::Error),
    #[error("loading the eBPF object failed: {0}")]
    Load(#[from] EbpfError),
    #[error("eBPF program {name}: {source}")]
    Program { name: &'static str, source: ProgramError },
    #[error("eBPF map {name}: {source}")]
    Map { name: &'static str, source: MapError },
}

#[derive(Clone, Debug)]
pub struct ProgramsOptions {
    /// Never police traffic on the loopback device.
    pub exempt_loopback: bool,
    /// Count every process's traffic (the monitor).
    pub monitor: bool,
}

impl Default for ProgramsOptions {
    fn default() -> Self {
        Self { exempt_loopback: true, monitor: true }
    }
}

/// The attached attribution programs and their maps.
pub struct Programs {
    procs: HashMap<MapData, u32, ProcSlots>,
    slots: Array<MapData, Slot>,
    counters: PerCpuArray<MapData, Counters>,
    owners: SkStorage<MapData, SockOwner>,
    gen_map: Array<MapData, u32>,
    ifbs: HashMap<MapData, u32, u32>,
    traffic: PerCpuHashMap<MapData, u32, ProcTraffic>,
    monitor: bool,
    gen: u32,
    nprocs: u32,
    /// The `all` cap's slots, `[up, down]` (0: none).
    all_caps: [u32; 2],
    exempt_loopback: bool,
    /// Why the `GUARD_PROGRAMS` are not attached, if they are not.
    guard_error: Option<String>,
    cgroup: File,
    /// The link of each program in `CGROUP_PROGRAMS`, to detach on repair.
    links: Vec<(&'static str, CgroupLink)>,
    // Dropped last: dropping it closes the link fds, which detaches the programs.
    ebpf: Ebpf,
}

fn prog_err(name: &'static str) -> impl FnOnce(ProgramError) -> BpfError {
    move |source| BpfError::Program { name, source }
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> BpfError {
    move |source| BpfError::Map { name, source }
}

fn take_map<T: TryFrom<aya::maps::Map, Error = MapError>>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, BpfError> {
    let map = ebpf.take_map(name).ok_or(BpfError::Map { name, source: MapError::InvalidName { name: name.into() } })?;
    T::try_from(map).map_err(map_err(name))
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, BpfError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let p = ebpf.program_mut(name).ok_or(BpfError::Program { name, source: ProgramError::NotLoaded })?;
    p.try_into().map_err(prog_err(name))
}

impl Programs {
    pub fn load(opts: &ProgramsOptions) -> Result<Self, BpfError> {
        let cgroup_root = cgroup::cgroup2_mount().map_err(BpfError::NoCgroup2)?;
        let cg = File::open(&cgroup_root).map_err(BpfError::NoCgroup2)?;
        let exempt = u32::from(opts.exempt_loopback);
        let monitor = u32::from(opts.monitor);
        let mut ebpf = EbpfLoader::new()
            .override_global("CT_EXEMPT_LOOPBACK", &exempt, true)
            .override_global("CT_MONITOR", &monitor, true)
            .load(OBJECT)?;

        let mut links = Vec::new();
        for name in CGROUP_PROGRAMS.into_iter().filter(|n| !GUARD_PROGRAMS.contains(n)) {
            load_program(&mut ebpf, name)?;
            links.push((name, attach(&mut ebpf, &cg, name)?));
        }
        let guard_error = attach_guards(&mut ebpf, &cg, &mut links).err().map(|e| e.to_string());
        if let Some(why) = &guard_error {
            tracing::warn!(error = %why, "blocked processes' connect() cannot be refused; blocks only drop packets");
        }
        // Attached per interface by the ifb_tc backend.
        let p: &mut SchedClassifier = program(&mut ebpf, CLASSIFIER)?;
        p.load().map_err(prog_err(CLASSIFIER))?;

        let mut dp = Programs {
            procs: take_map(&mut ebpf, "CT_PROCS")?,
            slots: take_map(&mut ebpf, "CT_SLOTS")?,
            counters: take_map(&mut ebpf, "CT_COUNTERS")?,
            owners: take_map(&mut ebpf, "CT_SK_OWNER")?,
            gen_map: take_map(&mut ebpf, "CT_GEN")?,
            ifbs: take_map(&mut ebpf, "CT_IFB")?,
            traffic: take_map(&mut ebpf, "CT_PROC_TRAFFIC")?,
            monitor: opts.monitor,
            gen: 0,
            nprocs: 0,
            all_caps: [0, 0],
            exempt_loopback: opts.exempt_loopback,
            guard_error,
            cgroup: cg,
            links,
            ebpf,
        };
        dp.bump_generation()?;
        Ok(dp)
    }

    /// Invalidates the per-socket caches of CT_PROCS. Starts at 1, so a
    /// fresh socket record (generation 0) always looks its process up.
    fn bump_generation(&mut self) -> Result<(), BpfError> {
        self.gen = self.gen.wrapping_add(1).max(1);
        let caps = self.all_caps.iter().filter(|s| **s != 0).count() as u32;
        let mut set = |i, v| self.gen_map.set(i, v, 0).map_err(map_err("CT_GEN"));
        set(GEN_ALL_UP, self.all_caps[0])?;
        set(GEN_ALL_DOWN, self.all_caps[1])?;
        set(GEN_PROCS, self.gen)?;
        set(GEN_THROTTLING, self.nprocs + caps)
    }

    /// The `all` cap's slots, `[up, down]` (0: none): every process's
    /// packets pass them after their own throttle's and their user's cap's.
    pub fn set_all_caps(&mut self, slots: [u32; 2]) -> Result<(), BpfError> {
        if slots == self.all_caps {
            return Ok(());
        }
        self.all_caps = slots;
        self.bump_generation()
    }

    /// Every cgroup program is still attached at the root (an admin may
    /// have detached a link with `bpftool link detach`).
    pub fn check(&self) -> Result<(), String> {
        match self.missing_programs() {
            Ok(m) if m.is_empty() => Ok(()),
            Ok(m) => Err(format!("{} detached from the cgroup root", m.join(", "))),
            Err(e) => Err(format!("cannot query the cgroup root: {e}")),
        }
    }

    /// `Ok` when a blocked process's `connect()` and UDP `sendmsg()` are
    /// refused at once; else why not (its packets are still dropped).
    pub fn connect_guard(&self) -> Result<(), &str> {
        self.guard_error.as_deref().map_or(Ok(()), Err)
    }

    fn missing_programs(&self) -> std::io::Result<Vec<&'static str>> {
        let mut missing = Vec::new();
        let guards = self.guard_error.is_none();
        for name in CGROUP_PROGRAMS.into_iter().filter(|n| guards || !GUARD_PROGRAMS.contains(n)) {
            let id = self.program_id(name).map_err(std::io::Error::other)?;
            if !query_cgroup(&self.cgroup, attach_type(name))?.contains(&id) {
                missing.push(name);
            }
        }
        Ok(missing)
    }

    fn program_id(&self, name: &'static str) -> Result<u32, BpfError> {
        let p = self.ebpf.program(name).ok_or(BpfError::Program { name, source: ProgramError::NotLoaded })?;
        Ok(p.info().map_err(prog_err(name))?.id())
    }

    /// Re-attaches whatever was detached; the maps, and so every throttle,
    /// are untouched.
    pub fn repair(&mut self) -> Result<(), BpfError> {
        let missing = self.missing_programs().map_err(BpfError::NoCgroup2)?;
        for name in missing {
            if let Some(pos) = self.links.iter().position(|(n, _)| *n == name) {
                let (_, old) = self.links.remove(pos);
                detach(&mut self.ebpf, name, old);
            }
            let link = attach(&mut self.ebpf, &self.cgroup, name)?;
            self.links.push((name, link));
            tracing::info!(program = name, "re-attached");
        }
        Ok(())
    }

    /// Whether the IFB classifier is on `ifname`'s TCX ingress. Kernels
    /// without TCX cannot be asked this way: assumed attached.
    pub fn classifier_attached(&self, ifname: &str) -> bool {
        let Ok(id) = self.program_id(CLASSIFIER) else { return false };
        match SchedClassifier::query_tcx(ifname, TcAttachType::Ingress) {
            Ok((_, progs)) => progs.iter().any(|p| p.id() == id),
            Err(_) => true,
        }
    }

    pub fn exempt_loopback(&self) -> bool {
        self.exempt_loopback
    }

    pub fn set_proc(&mut self, tgid: u32, slots: ProcSlots) -> Result<(), BpfError> {
        let new = self.proc(tgid).is_none();
        self.procs.insert(tgid, slots, 0).map_err(map_err("CT_PROCS"))?;
        self.nprocs += u32::from(new);
        self.bump_generation()
    }

    pub fn proc(&self, tgid: u32) -> Option<ProcSlots> {
        self.procs.get(&tgid, 0).ok()
    }

    /// Removes a process; a missing entry is not an error.
    pub fn remove_proc(&mut self, tgid: u32) -> Result<(), BpfError> {
        match self.procs.remove(&tgid) {
            Ok(()) => {
                self.nprocs = self.nprocs.saturating_sub(1);
                self.bump_generation()
            }
            Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(map_err("CT_PROCS")(e)),
        }
    }

    /// Entries this daemon put in CT_PROCS (no syscall).
    pub fn tracked_procs(&self) -> usize {
        self.nprocs as usize
    }

    /// Entries in CT_PROCS as the kernel lists them.
    pub fn proc_count(&self) -> usize {
        self.procs.keys().filter(Result::is_ok).count()
    }

    pub fn set_slot(&mut self, id: u32, slot: &Slot) -> Result<(), BpfError> {
        self.slots.set(id, slot, 0).map_err(map_err("CT_SLOTS"))
    }

    /// Updates a slot's parameters without resetting its bucket state or
    /// its count of active sockets.
    pub fn update_slot(&mut self, id: u32, mut slot: Slot) -> Result<(), BpfError> {
        if let Ok(cur) = self.slots.get(&id, 0) {
            slot.tat_ns = cur.tat_ns;
            slot.epoch = cur.epoch;
            slot.active_cur = cur.active_cur;
            slot.active_prev = cur.active_prev;
        }
        self.set_slot(id, &slot)
    }

    pub fn slot(&self, id: u32) -> Result<Slot, BpfError> {
        self.slots.get(&id, 0).map_err(map_err("CT_SLOTS"))
    }

    /// Frees a slot: mode off and counters zeroed, ready for reuse.
    pub fn clear_slot(&mut self, id: u32) -> Result<(), BpfError> {
        self.set_slot(id, &Slot::default())?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| map_err("CT_COUNTERS")(MapError::IoError(e)))?;
        let zero = aya::maps::PerCpuValues::try_from(vec![Counters::default(); cpus])
            .map_err(|e| map_err("CT_COUNTERS")(MapError::IoError(e)))?;
        self.counters.set(id, zero, 0).map_err(map_err("CT_COUNTERS"))
    }

    pub fn counters(&self, id: u32) -> Result<Counters, BpfError> {
        let per_cpu = self.counters.get(&id, 0).map_err(map_err("CT_COUNTERS"))?;
        let mut sum = Counters::default();
        per_cpu.iter().for_each(|c| sum.add(c));
        Ok(sum)
    }

    pub fn monitoring(&self) -> bool {
        self.monitor
    }

    /// Every monitored process's traffic, summed over CPUs.
    pub fn proc_traffic(&self) -> Vec<(u32, ProcTraffic)> {
        self.traffic.iter().filter_map(Result::ok).map(|(tgid, v)| (tgid, sum_cpus(v))).collect()
    }

    /// One process's counters, if the kernel has any.
    pub fn proc_traffic_of(&self, tgid: u32) -> Option<ProcTraffic> {
        self.traffic.get(&tgid, 0).ok().map(sum_cpus)
    }

    /// Drops an exited process's counters; a missing entry is not an error.
    pub fn forget_traffic(&mut self, tgid: u32) {
        let _ = self.traffic.remove(&tgid);
    }

    /// Records `tgid` as the owner of a socket created before our programs
    /// were attached. An existing owner record is kept.
    pub fn seed_owner(&mut self, sock: &impl AsRawFd, tgid: u32) -> Result<bool, BpfError> {
        const BPF_NOEXIST: u64 = 1;
        match self.owners.insert(sock, SockOwner { tgid, ..Default::default() }, BPF_NOEXIST) {
            Ok(()) => Ok(true),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(map_err("CT_SK_OWNER")(e)),
        }
    }

    /// Attaches the IFB classifier to `ifname`'s ingress (TCX where the
    /// kernel has it) and routes its throttled packets to `ifb`.
    pub fn attach_classifier(
        &mut self,
        ifname: &str,
        ifindex: u32,
        ifb: u32,
    ) -> Result<SchedClassifierLinkId, BpfError> {
        self.ifbs.insert(ifindex, ifb, 0).map_err(map_err("CT_IFB"))?;
        let p: &mut SchedClassifier = program(&mut self.ebpf, CLASSIFIER)?;
        p.attach(ifname, TcAttachType::Ingress).map_err(prog_err(CLASSIFIER))
    }

    pub fn detach_classifier(&mut self, ifindex: u32, link: SchedClassifierLinkId) -> Result<(), BpfError> {
        let _ = self.ifbs.remove(&ifindex);
        let p: &mut SchedClassifier = program(&mut self.ebpf, CLASSIFIER)?;
        p.detach(link).map_err(prog_err(CLASSIFIER))
    }
}

/// Loads and attaches the `GUARD_PROGRAMS`, all or none.
fn attach_guards(ebpf: &mut Ebpf, cg: &File, links: &mut Vec<(&'static str, CgroupLink)>) -> Result<(), BpfError> {
    let mut attached = Vec::new();
    let res = GUARD_PROGRAMS.into_iter().try_for_each(|name| {
        load_program(ebpf, name)?;
        attached.push((name, attach(ebpf, cg, name)?));
        Ok(())
    });
    match res {
        Ok(()) => links.extend(attached),
        Err(_) => attached.into_iter().for_each(|(name, link)| detach(ebpf, name, link)),
    }
    res
}

/// A cgroup program's link, by program kind.
enum CgroupLink {
    Sock(CgroupSockLinkId),
    SockAddr(CgroupSockAddrLinkId),
    Skb(CgroupSkbLinkId),
    Ops(SockOpsLinkId),
    Sockopt(CgroupSockoptLinkId),
}

fn load_program(ebpf: &mut Ebpf, name: &'static str) -> Result<(), BpfError> {
    match name {
        "ct_sock_create" => program::<CgroupSock>(ebpf, name)?.load(),
        "ct_sockops" => program::<SockOps>(ebpf, name)?.load(),
        "ct_setsockopt" => program::<CgroupSockopt>(ebpf, name)?.load(),
        n if GUARD_PROGRAMS.contains(&n) => program::<CgroupSockAddr>(ebpf, name)?.load(),
        _ => program::<CgroupSkb>(ebpf, name)?.load(),
    }
    .map_err(prog_err(name))
}

fn attach(ebpf: &mut Ebpf, cg: &File, name: &'static str) -> Result<CgroupLink, BpfError> {
    let mode = CgroupAttachMode::Single;
    let skb = |ebpf: &mut Ebpf, kind| program::<CgroupSkb>(ebpf, name).map(|p| p.attach(cg, kind, mode));
    let link = match name {
        "ct_sock_create" => program::<CgroupSock>(ebpf, name)?.attach(cg, mode).map(CgroupLink::Sock),
        "ct_sockops" => program::<SockOps>(ebpf, name)?.attach(cg, mode).map(CgroupLink::Ops),
        "ct_setsockopt" => program::<CgroupSockopt>(ebpf, name)?.attach(cg, mode).map(CgroupLink::Sockopt),
        "ct_egress" => skb(ebpf, CgroupSkbAttachType::Egress)?.map(CgroupLink::Skb),
        n if GUARD_PROGRAMS.contains(&n) => {
            program::<CgroupSockAddr>(ebpf, name)?.attach(cg, mode).map(CgroupLink::SockAddr)
        }
        _ => skb(ebpf, CgroupSkbAttachType::Ingress)?.map(CgroupLink::Skb),
    };
    link.map_err(prog_err(name))
}

/// Best effort: a link detached from outside may refuse a second detach.
fn detach(ebpf: &mut Ebpf, name: &'static str, link: CgroupLink) {
    let res = match link {
        CgroupLink::Sock(l) => program::<CgroupSock>(ebpf, name).map(|p| p.detach(l).map_err(prog_err(name))),
        CgroupLink::SockAddr(l) => program::<CgroupSockAddr>(ebpf, name).map(|p| p.detach(l).map_err(prog_err(name))),
        CgroupLink::Skb(l) => program::<CgroupSkb>(ebpf, name).map(|p| p.detach(l).map_err(prog_err(name))),
        CgroupLink::Ops(l) => program::<SockOps>(ebpf, name).map(|p| p.detach(l).map_err(prog_err(name))),
        CgroupLink::Sockopt(l) => program::<CgroupSockopt>(ebpf, name).map(|p| p.detach(l).map_err(prog_err(name))),
    };
    if let Err(e) = res.and_then(|r| r) {
        tracing::debug!(program = name, error = %e, "stale link");
    }
}

/// The kernel's BPF_CGROUP_* attach type of each cgroup program.
fn attach_type(name: &str) -> u32 {
    match name {
        "ct_ingress" => 0,
        "ct_egress" => 1,
        "ct_sock_create" => 2,
        "ct_setsockopt" => 22,
        "ct_connect4" => 10, // BPF_CGROUP_INET4_CONNECT
        "ct_connect6" => 11,
        "ct_sendmsg4" => 14, // BPF_CGROUP_UDP4_SENDMSG
        "ct_sendmsg6" => 15,
        _ => 3, // sock_ops
    }
}

/// Program ids attached to `cg` for one attach type (BPF_PROG_QUERY).
fn query_cgroup(cg: &File, attach_type: u32) -> std::io::Result<Vec<u32>> {
    #[repr(C)]
    #[derive(Default)]
    struct QueryAttr {
        target_fd: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
        _pad: u32,
        prog_attach_flags: u64,
        link_ids: u64,
        link_attach_flags: u64,
        revision: u64,
    }
    const BPF_PROG_QUERY: libc::c_long = 16;
    let mut ids = [0u32; 64];
    let mut attr = QueryAttr {
        target_fd: cg.as_raw_fd() as u32,
        attach_type,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    // SAFETY: `attr` and `ids` outlive the call, and sizes match the kernel ABI.
    let r = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_PROG_QUERY, &mut attr as *mut QueryAttr, std::mem::size_of::<QueryAttr>())
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ids[..attr.prog_cnt.min(64) as usize].to_vec())
}

/// A process's counters summed over the CPUs.
fn sum_cpus(per_cpu: aya::maps::PerCpuValues<ProcTraffic>) -> ProcTraffic {
    let mut t = ProcTraffic::default();
    for c in per_cpu.iter() {
        t.internet.add(&c.internet);
        t.local.add(&c.local);
    }
    t
}
