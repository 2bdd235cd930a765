//! A delay line: a network emulator for real round-trip times on kernels
//! without `sch_netem`. Policy routing in a router namespace sends every
//! forwarded packet into one TUN device (see `lab::Lab::with_delay`); a
//! thread reads each packet, holds it in a FIFO for the one-way delay and
//! writes it back into the same TUN, where the main table forwards it on.
//! A constant delay keeps FIFO order, so one queue serves both directions.
use std::{
    collections::VecDeque,
    fs::File,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// Packets held at once (at 120 MiB/s, 40 ms one way is ~3,300).
pub const SLOTS: usize = 65_536;
/// Larger than the TUN's MTU: the kernel segments GSO packets before a TUN
/// without a virtio header, so every packet read is MTU-sized.
const BUF: usize = 2048;
/// Packets read per wake-up before the due ones are sent again.
const BATCH: usize = 256;

/// What the delay line did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DelayStats {
    /// Packets and bytes (IP layer) written back after their delay.
    pub packets: u64,
    pub bytes: u64,
    /// Packets dropped: the FIFO was full, or the write back failed.
    pub dropped: u64,
    /// The most packets held at once.
    pub max_held: u64,
    /// Packets written back more than `LATE` after their time (the thread
    /// was not scheduled: the VM stalled the link), and the worst lateness.
    pub late: u64,
    pub max_late_us: u64,
}

/// Later than this, a packet's round trip is no longer the one asked for.
pub const LATE: Duration = Duration::from_millis(2);

#[derive(Default)]
struct Counters {
    packets: AtomicU64,
    bytes: AtomicU64,
    dropped: AtomicU64,
    max_held: AtomicU64,
    late: AtomicU64,
    max_late_us: AtomicU64,
}

/// A running delay line on one TUN device; stopped (thread joined, device
/// gone with its descriptor) on drop.
pub struct DelayLine {
    stop: OwnedFd,
    thread: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
    pub tun: String,
    pub one_way: Duration,
}

impl DelayLine {
    /// Creates TUN device `tun` in the network namespace at `netns` (e.g.
    /// /run/netns/NAME) and starts delaying what is routed into it by
    /// `one_way`. The device is left down: the caller configures it.
    pub fn start(netns: &std::path::Path, tun: &str, one_way: Duration) -> io::Result<DelayLine> {
        let fd = open_tun_in(netns, tun)?;
        // SAFETY: eventfd(2) with valid flags; the result is checked.
        let stop = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if stop < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let stop = unsafe { OwnedFd::from_raw_fd(stop) };
        let counters = Arc::new(Counters::default());
        let fwd = Forwarder { tun: fd, stop: stop.as_raw_fd(), one_way, counters: counters.clone() };
        let thread = std::thread::Builder::new().name(format!("delay-{tun}")).spawn(move || fwd.run())?;
        Ok(DelayLine { stop, thread: Some(thread), counters, tun: tun.to_string(), one_way })
    }

    pub fn stats(&self) -> DelayStats {
        let c = &self.counters;
        DelayStats {
            packets: c.packets.load(Relaxed),
            bytes: c.bytes.load(Relaxed),
            dropped: c.dropped.load(Relaxed),
            max_held: c.max_held.load(Relaxed),
            late: c.late.load(Relaxed),
            max_late_us: c.max_late_us.load(Relaxed),
        }
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        // SAFETY: writes 8 bytes to our own eventfd.
        unsafe { libc::eventfd_write(self.stop.as_raw_fd(), 1) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Opens a TUN device (IFF_TUN | IFF_NO_PI, non-blocking) in another network
/// namespace: a short-lived thread enters it, and the descriptor keeps
/// working from anywhere.
fn open_tun_in(netns: &std::path::Path, name: &str) -> io::Result<OwnedFd> {
    if name.len() >= libc::IFNAMSIZ || name.bytes().any(|b| b == 0 || b == b'/') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad TUN device name"));
    }
    let ns = File::open(netns)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns(2) on this thread only, with an open namespace fd.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            open_tun(name)
        })
        .join()
        .map_err(|_| io::Error::other("netns thread panicked"))?
    })
}

fn open_tun(name: &str) -> io::Result<OwnedFd> {
    // SAFETY: open(2) with a NUL-terminated path; the result is checked.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one ifreq, which outlives the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// One packet waiting for its time.
struct Held {
    due: Instant,
    len: usize,
    buf: Box<[u8]>,
}

struct Forwarder {
    tun: OwnedFd,
    stop: RawFd,
    one_way: Duration,
    counters: Arc<Counters>,
}

impl Forwarder {
    fn run(self) {
        // Wake-ups within 1 µs of the deadline, not the default 50 µs slack.
        // SAFETY: prctl(2) on this thread with a plain integer argument.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
        // A link is not one more task competing for a busy VM's CPUs: run
        // before them when a packet is due (it sleeps in ppoll otherwise,
        // and the kernel's RT throttling keeps 5% for others). Best effort.
        let param = libc::sched_param { sched_priority: 1 };
        // SAFETY: sched_setscheduler(2) on this thread with a valid param.
        unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
        let mut fifo: VecDeque<Held> = VecDeque::new();
        let mut free: Vec<Box<[u8]>> = Vec::new();
        loop {
            self.send_due(&mut fifo, &mut free);
            let (tun_ready, stop) = self.wait(fifo.front().map(|h| h.due));
            if stop {
                return;
            }
            if tun_ready {
                self.read_batch(&mut fifo, &mut free);
            }
        }
    }

    /// Writes back every packet whose time has come, in arrival order.
    fn send_due(&self, fifo: &mut VecDeque<Held>, free: &mut Vec<Box<[u8]>>) {
        let now = Instant::now();
        while fifo.front().is_some_and(|h| h.due <= now) {
            let h = fifo.pop_front().unwrap();
            let late = now.duration_since(h.due);
            if late > LATE {
                self.counters.late.fetch_add(1, Relaxed);
                self.counters.max_late_us.fetch_max(late.as_micros() as u64, Relaxed);
            }
            // SAFETY: writes h.len initialized bytes of a live buffer.
            let n = unsafe { libc::write(self.tun.as_raw_fd(), h.buf.as_ptr().cast(), h.len) };
            if n == h.len as isize {
                self.counters.packets.fetch_add(1, Relaxed);
                self.counters.bytes.fetch_add(h.len as u64, Relaxed);
            } else {
                self.counters.dropped.fetch_add(1, Relaxed);
            }
            free.push(h.buf);
        }
    }

    /// Sleeps until the TUN is readable, `due` passes or stop is signalled.
    fn wait(&self, due: Option<Instant>) -> (bool, bool) {
        let mut fds = [
            libc::pollfd { fd: self.tun.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: self.stop, events: libc::POLLIN, revents: 0 },
        ];
        let ts = due.map(|d| {
            let left = d.saturating_duration_since(Instant::now());
            libc::timespec { tv_sec: left.as_secs() as libc::time_t, tv_nsec: left.subsec_nanos() as libc::c_long }
        });
        let tsp = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: two valid pollfds and an optional timespec, all outliving the call.
        let n = unsafe { libc::ppoll(fds.as_mut_ptr(), 2, tsp, std::ptr::null()) };
        if n <= 0 {
            return (false, false); // timeout or EINTR: send what is due
        }
        (fds[0].revents & libc::POLLIN != 0, fds[1].revents != 0)
    }

    /// Reads what is waiting (up to BATCH packets) into the FIFO.
    fn read_batch(&self, fifo: &mut VecDeque<Held>, free: &mut Vec<Box<[u8]>>) {
        for _ in 0..BATCH {
            let mut buf = free.pop().unwrap_or_else(|| vec![0u8; BUF].into_boxed_slice());
            // SAFETY: reads at most BUF bytes into a live buffer of BUF bytes.
            let n = unsafe { libc::read(self.tun.as_raw_fd(), buf.as_mut_ptr().cast(), BUF) };
            if n <= 0 {
                free.push(buf);
                return; // EAGAIN: nothing more for now
            }
            if fifo.len() >= SLOTS {
                self.counters.dropped.fetch_add(1, Relaxed);
                free.push(buf);
                continue;
            }
            // Stamped after the read: the delay counts from when we got it.
            fifo.push_back(Held { due: Instant::now() + self.one_way, len: n as usize, buf });
            self.counters.max_held.fetch_max(fifo.len() as u64, Relaxed);
        }
    }
}
