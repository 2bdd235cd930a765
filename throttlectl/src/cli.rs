// The command line. Completions and the man page are generated from it
// at run time (`throttlectl completions`, `throttlectl manpage`).
use clap::{Parser, Subcommand};
use throttle_common::rate::Rate;

use crate::top::{Scope, Sort};

#[derive(Parser)]
#[command(name = "throttlectl", version, about = "Control chadthrottled, the per-process bandwidth limiter")]
pub struct Cli {
    /// Machine-readable output (JSON).
    #[arg(long, global = true)]
    pub json: bool,
    /// Which bus: system (default), session, or a D-Bus address.
    #[arg(long, global = true, default_value = "system")]
    pub bus: String,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Limit a process (a number is a pid) or every process of a name.
    Limit {
        /// pid or process name (optional with --exe, --unit or --cgroup)
        target: Option<String>,
        /// Download limit, e.g. 1M, 512K, 10mbit.
        #[arg(long)]
        down: Option<Rate>,
        /// Upload limit.
        #[arg(long)]
        up: Option<Rate>,
        /// Backend for both directions (ebpf, tc_htb, ifb_tc).
        #[arg(long, conflicts_with_all = ["down_backend", "up_backend"])]
        backend: Option<String>,
        #[arg(long)]
        down_backend: Option<String>,
        #[arg(long)]
        up_backend: Option<String>,
        /// With a pid: also its descendants, present and future.
        #[arg(long)]
        tree: bool,
        /// Every process running this executable.
        #[arg(long, conflicts_with_all = ["unit", "cgroup"])]
        exe: Option<String>,
        /// Every process in this systemd unit.
        #[arg(long, conflicts_with = "cgroup")]
        unit: Option<String>,
        /// Every process in this cgroup (v2 path).
        #[arg(long)]
        cgroup: Option<String>,
    },
    /// Remove a throttle: by throttle id, by the pid it limits, or by name.
    Unlimit { target: String },
    /// List throttles.
    List,
    /// List backends: ⭐ default, ✅/❌ availability, priority, active count.
    Backends,
    /// Set the default backend for new throttles.
    Default {
        #[arg(long)]
        up: Option<String>,
        #[arg(long)]
        down: Option<String>,
    },
    /// Move a throttle (or, with --from, every throttle of a backend) to a backend.
    Migrate {
        /// Throttle id (omit with --from).
        id: Option<u32>,
        #[arg(long)]
        to: String,
        #[arg(long)]
        from: Option<String>,
        /// up or down (default: both).
        #[arg(long)]
        direction: Option<String>,
    },
    /// Daemon-wide numbers.
    Stats,
    /// Print the daemon's signals as lines, until interrupted.
    Monitor,
    /// Whether the daemon runs, its version and defaults.
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
    /// Parse a rate the way the daemon does and print it in bytes per second.
    Rate { rate: String },
    /// Print a shell completion script (bash, zsh or fish).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff).
    #[command(hide = true)]
    Manpage,
}
