// The command line. Completions and the man page are generated from it
// at run time (`throttlectl completions`, `throttlectl manpage`).
use std::str::FromStr as _;

use clap::{CommandFactory as _, Parser, Subcommand};
use clap_complete::engine::{ArgValueCandidates, ArgValueCompleter, CompletionCandidate, PathCompleter};
use throttle_common::rate::Rate;

use crate::{
    complete,
    top::{Scope, Sort},
};

/// The default for `--timeout`: libdbus's default method timeout.
pub const DEFAULT_TIMEOUT_SECS: u64 = 25;

#[derive(Parser)]
#[command(
    name = "throttlectl",
    version,
    about = "Control chadthrottled, the per-process bandwidth limiter",
    long_about = "Control chadthrottled, the per-process bandwidth limiter, over D-Bus. \
                  Without a command, throttlectl shows the daemon's status."
)]
pub struct Cli {
    /// Machine-readable output (JSON), errors included: {"error": {"code", "message", "name"}}.
    #[arg(long, global = true)]
    pub json: bool,
    /// Which bus: system (default), session, or a D-Bus address (e.g. unix:path=/run/x).
    #[arg(long, global = true, default_value = "system", value_name = "BUS", value_parser = parse_bus,
          add = ArgValueCandidates::new(|| words(&["system", "session"])))]
    pub bus: String,
    /// Seconds to wait for each answer of the daemon before giving up.
    #[arg(long, global = true, value_name = "SECS", default_value_t = DEFAULT_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout: u64,
    /// Print tables without their header line (and nothing for an empty list).
    #[arg(long, global = true)]
    pub no_legend: bool,
    /// Suppress informational output (confirmations, hints); errors and warnings still go to stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// What to do (default: status).
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
}

/// The command line as clap sees it (for completions and the man page).
pub fn command() -> clap::Command {
    Cli::command()
}

fn words(list: &[&str]) -> Vec<CompletionCandidate> {
    list.iter().map(CompletionCandidate::new).collect()
}

/// `usage --by`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum UsageBy {
    Name,
    Exe,
    Unit,
    User,
}

impl UsageBy {
    pub fn as_str(self) -> &'static str {
        match self {
            UsageBy::Name => "name",
            UsageBy::Exe => "exe",
            UsageBy::Unit => "unit",
            UsageBy::User => "user",
        }
    }
}

/// `--bus`: system, session, or anything zbus accepts as an address.
fn parse_bus(s: &str) -> Result<String, String> {
    match s {
        "system" | "session" => Ok(s.to_string()),
        _ => match zbus::Address::from_str(s) {
            Ok(_) => Ok(s.to_string()),
            Err(e) => Err(format!("not system, session or a D-Bus address ({e})")),
        },
    }
}

/// A throttle's priority, as the daemon spells it.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Level {
    Low,
    Normal,
    High,
    Critical,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Low => "low",
            Level::Normal => "normal",
            Level::High => "high",
            Level::Critical => "critical",
        }
    }
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Limit a process (a number is a pid) or every process of a name.
    Limit {
        /// pid or process name (optional with --exe, --unit or --cgroup)
        #[arg(add = complete::processes())]
        target: Option<String>,
        /// Download limit, e.g. 1M, 512K, 10mbit.
        #[arg(long, value_name = "RATE")]
        down: Option<Rate>,
        /// Upload limit, e.g. 1M, 512K, 10mbit.
        #[arg(long, value_name = "RATE")]
        up: Option<Rate>,
        /// Backend for both directions (ebpf, tc_htb, ifb_tc).
        #[arg(long, value_name = "BACKEND", conflicts_with_all = ["down_backend", "up_backend"], add = complete::backends())]
        backend: Option<String>,
        /// Backend for the download direction only.
        #[arg(long, value_name = "BACKEND", add = complete::backends())]
        down_backend: Option<String>,
        /// Backend for the upload direction only.
        #[arg(long, value_name = "BACKEND", add = complete::backends())]
        up_backend: Option<String>,
        /// With a pid: also its descendants, present and future.
        #[arg(long)]
        tree: bool,
        /// Every process running this executable (a path).
        #[arg(long, value_name = "PATH", conflicts_with_all = ["unit", "cgroup"], add = ArgValueCompleter::new(PathCompleter::file()))]
        exe: Option<String>,
        /// Every process in this systemd unit, e.g. backup.service.
        #[arg(long, value_name = "NAME", conflicts_with = "cgroup", add = complete::units())]
        unit: Option<String>,
        /// Every process in this cgroup (v2 path).
        #[arg(long, value_name = "PATH", add = complete::cgroups())]
        cgroup: Option<String>,
        /// A cap on every process of this user (a name or a uid), on top of each process's own throttle.
        #[arg(long, value_name = "USER", conflicts_with_all = ["target", "exe", "unit", "cgroup", "tree", "all"])]
        user: Option<String>,
        /// A cap on every process of the machine, on top of user caps and each process's own throttle.
        #[arg(long, conflicts_with_all = ["target", "exe", "unit", "cgroup", "tree"])]
        all: bool,
        /// Keep the throttle only while this command runs: it ends when throttlectl is interrupted (Ctrl-C) or killed, and is never saved.
        #[arg(long)]
        hold: bool,
        /// A data cap, SIZE/PERIOD: 5G/month, 500M/day (hour, day, week, month; resets at local midnight, Monday, the 1st).
        #[arg(long, value_name = "SIZE/PERIOD", requires = "then")]
        quota: Option<String>,
        /// What applies once the quota is used: a rate (256K) or block.
        #[arg(long, value_name = "RATE|block", requires = "quota")]
        then: Option<String>,
        /// Apply the limits only in these windows, local time: "Mon-Fri 09:00-17:00, Sat 10:00-12:00" (* = every day).
        #[arg(long, value_name = "WINDOWS")]
        when: Option<String>,
        /// The rate outside the --when windows (default: no limit there).
        #[arg(long, value_name = "RATE", requires = "when")]
        otherwise: Option<Rate>,
        /// Its share of a contended link (see `throttlectl link`): low, normal, high, critical.
        #[arg(long, value_name = "LEVEL")]
        priority: Option<Level>,
    },
    /// Give a process (a pid) or a name a priority: its share of the link
    /// when it is contended, with no rate of its own if it has no throttle
    /// yet. (`limit --exe/--unit/--cgroup ... --priority LEVEL` for other targets.)
    Priority {
        /// pid or process name
        #[arg(add = complete::processes())]
        target: String,
        /// low, normal, high or critical (weights 1, 2, 4, 8).
        level: Level,
        /// With a pid: also its descendants, present and future.
        #[arg(long)]
        tree: bool,
    },
    /// Show, or set, the link capacity that throttles share by priority
    /// (your line rate, or just below it).
    Link {
        /// Download capacity, e.g. 50M or 400mbit; "none" unsets it.
        #[arg(long, value_name = "RATE|none")]
        down: Option<String>,
        /// Upload capacity; "none" unsets it.
        #[arg(long, value_name = "RATE|none")]
        up: Option<String>,
    },
    /// Block a process's (or every process of a name's) traffic outright:
    /// new connections fail with EPERM, running ones stop. Loopback is exempt.
    Block {
        /// pid or process name (optional with --exe, --unit or --cgroup)
        target: Option<String>,
        /// With a pid: also its descendants, present and future.
        #[arg(long)]
        tree: bool,
        /// Every process running this executable (a path).
        #[arg(long, value_name = "PATH", conflicts_with_all = ["unit", "cgroup"])]
        exe: Option<String>,
        /// Every process in this systemd unit, e.g. backup.service.
        #[arg(long, value_name = "NAME", conflicts_with = "cgroup")]
        unit: Option<String>,
        /// Every process in this cgroup (v2 path).
        #[arg(long, value_name = "PATH")]
        cgroup: Option<String>,
        /// A cap on every process of this user (a name or a uid), on top of each process's own throttle.
        #[arg(long, value_name = "USER", conflicts_with_all = ["target", "exe", "unit", "cgroup", "tree", "all"])]
        user: Option<String>,
        /// A cap on every process of the machine, on top of user caps and each process's own throttle.
        #[arg(long, conflicts_with_all = ["target", "exe", "unit", "cgroup", "tree"])]
        all: bool,
        /// Keep the block only while this command runs (as limit --hold).
        #[arg(long)]
        hold: bool,
        /// Block only in these windows, local time: "Mon-Fri 09:00-17:00" (* = every day).
        #[arg(long, value_name = "WINDOWS")]
        when: Option<String>,
    },
    /// Lift a block: by throttle id, by the pid it blocks, or by name.
    Unblock {
        /// Throttle id, the pid a pid block covers, or the target of a block (name, path, unit).
        target: String,
    },
    /// Remove a throttle: by throttle id, by the pid it limits, or by name.
    Unlimit {
        /// Throttle id, the pid a pid throttle limits, or the target of a throttle (name, path, unit).
        #[arg(add = complete::throttle_targets())]
        target: String,
    },
    /// List throttles.
    List,
    /// List backends: ⭐ default, ✅/❌ availability, priority, active count.
    Backends,
    /// Set the default backend for new throttles.
    Default {
        /// Backend for new upload limits.
        #[arg(long, value_name = "BACKEND", add = complete::backends())]
        up: Option<String>,
        /// Backend for new download limits.
        #[arg(long, value_name = "BACKEND", add = complete::backends())]
        down: Option<String>,
    },
    /// Move a throttle (or, with --from, every throttle of a backend) to a backend.
    Migrate {
        /// Throttle id (omit with --from).
        #[arg(add = complete::throttles())]
        id: Option<u32>,
        /// The backend to move to.
        #[arg(long, value_name = "BACKEND", add = complete::backends())]
        to: String,
        /// Move every throttle of this backend instead of one.
        #[arg(long, value_name = "BACKEND", add = complete::backends())]
        from: Option<String>,
        /// up or down (default: both).
        #[arg(long, value_name = "DIR", add = ArgValueCandidates::new(|| words(&["up", "down"])))]
        direction: Option<String>,
    },
    /// Daemon-wide numbers.
    Stats,
    /// Print the daemon's signals as lines, until interrupted.
    Monitor,
    /// Whether the daemon runs, its version and defaults (the default command).
    Status,
    /// Re-read the config and rules.
    Reload,
    /// Full-screen view of processes by bandwidth; throttle, graph, pick backends (? for keys).
    Top {
        /// Print one sample and exit: a table, or JSON with --json.
        #[arg(long)]
        once: bool,
        /// How many processes --once prints.
        #[arg(long, default_value_t = 20)]
        count: u32,
        /// Order by down, up or total rate (largest first).
        #[arg(long, value_enum, default_value_t)]
        sort: Sort,
        /// Which traffic counts: all, internet or local.
        #[arg(long, value_enum, default_value_t)]
        scope: Scope,
    },
    /// Bytes used per process name, executable, unit or user, with a bar per day.
    Usage {
        /// What to add up by.
        #[arg(long, value_enum, default_value_t = UsageBy::Name)]
        by: UsageBy,
        /// From when: a span back from now (1h, 24h, 7d, 30d) or a local date (2026-11-01).
        #[arg(long, value_name = "WHEN", default_value = "24h",
              add = ArgValueCandidates::new(|| words(&["1h", "24h", "7d", "30d"])))]
        since: String,
    },
    /// Parse a rate the way the daemon does and print it in bytes per second.
    Rate {
        /// A rate, e.g. 1M, 512K, 10mbit.
        rate: String,
    },
    /// Print a shell completion script (bash, zsh or fish). It asks throttlectl for
    /// candidates as you type: backends, throttle ids, processes, units.
    Completions {
        /// The shell to print the script for.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    #[command(hide = true)]
    Manpage,
}
