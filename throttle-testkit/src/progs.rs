//! Our eBPF programs' own run time, from the kernel's bpf_stats: what the
//! cost measurements of the benchmark and the tests read.
use std::collections::BTreeMap;

/// `ct_` programs by id: (name, run time ns, runs). Other daemons on the
/// host (tests, other benchmarks) load programs of the same names: compare
/// ids before and after a start to find one manager's.
pub fn prog_stats() -> BTreeMap<u32, (String, u64, u64)> {
    aya::programs::loaded_programs()
        .flatten()
        .filter_map(|p| {
            let name = p.name_as_str()?.to_string();
            name.starts_with("ct_").then(|| (p.id(), (name, p.run_time().as_nanos() as u64, p.run_count())))
        })
        .collect()
}

/// Per program of `mine` while `f` runs: run time (ns) and runs. Turns the
/// kernel's statistics on for the while, and back as they were.
pub fn run_stats(mine: &[u32], f: impl FnOnce()) -> std::io::Result<BTreeMap<String, (u64, u64)>> {
    const KNOB: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let old = std::fs::read_to_string(KNOB)?;
    std::fs::write(KNOB, "1")?;
    let before = prog_stats();
    f();
    let after = prog_stats();
    std::fs::write(KNOB, old.trim())?;
    Ok(after
        .into_iter()
        .filter(|(id, _)| mine.contains(id))
        .map(|(id, (n, t, c))| {
            let (_, t0, c0) = before.get(&id).cloned().unwrap_or_default();
            (n, (t.saturating_sub(t0), c.saturating_sub(c0)))
        })
        .collect())
}
