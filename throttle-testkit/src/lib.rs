//! Support shared by unit tests, integration tests and benchmarks.
pub mod bus;
pub mod delay;
pub mod lab;
pub mod load;
pub mod progs;

/// A prerequisite is missing. Under `CI=true` that fails the test; locally
/// the test is reported as skipped.
#[track_caller]
pub fn require_root(what: &str) {
    missing(&format!("{what} needs root"));
}

#[track_caller]
pub fn missing(why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("prerequisite missing in CI: {why}");
    }
    eprintln!("SKIPPED: {why}");
}

/// A scratch directory (state, config), removed on drop.
/// A process's resident memory in KiB (0 once it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A process's user + system CPU time in seconds (0 once it is gone).
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(end) = stat.rfind(')') else { return 0.0 };
    let f: Vec<u64> = stat[end + 2..].split(' ').skip(11).take(2).filter_map(|x| x.parse().ok()).collect();
    // SAFETY: sysconf has no preconditions.
    f.iter().sum::<u64>() as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// The machine's CPU time so far, from /proc/stat: (stolen by the
/// hypervisor, all), in ticks. Latency on a VM depends on the first.
pub fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let t: Vec<u64> =
        stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    (t.get(7).copied().unwrap_or(0), t.iter().sum())
}

/// The share of CPU time stolen by the hypervisor between two `cpu_ticks`.
pub fn steal_pct(before: (u64, u64), after: (u64, u64)) -> f64 {
    let total = after.1.saturating_sub(before.1).max(1);
    after.0.saturating_sub(before.0) as f64 * 100.0 / total as f64
}

/// Cases per fuzz (proptest) test: `default`, or CT_FUZZ_CASES for long runs.
pub fn fuzz_cases(default: u32) -> u32 {
    std::env::var("CT_FUZZ_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(default)
}

pub struct ScratchDir {
    pub path: std::path::PathBuf,
}

impl ScratchDir {
    pub fn new(tag: &str) -> ScratchDir {
        let path = std::env::temp_dir().join(format!("ct-scratch-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("creating a scratch directory");
        ScratchDir { path }
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
