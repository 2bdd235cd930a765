//! throttlectl: a thin client of chadthrottled's D-Bus API. No kernel
//! access of its own; every decision is the daemon's.
mod api;
mod output;

use std::{collections::HashMap, process::ExitCode};

use clap::{Parser, Subcommand};
use throttle_common::rate::Rate;
use zbus::zvariant::Value;

use crate::api::{Client, Failure};

#[derive(Parser)]
#[command(name = "throttlectl", version, about = "Control chadthrottled, the per-process bandwidth limiter")]
struct Cli {
    /// Machine-readable output (JSON).
    #[arg(long, global = true)]
    json: bool,
    /// Which bus: system (default), session, or a D-Bus address.
    #[arg(long, global = true, default_value = "system")]
    bus: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
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
    /// Parse a rate the way the daemon does and print it in bytes per second.
    Rate { rate: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return Failure::other(e).report(),
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => f.report(),
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    if let Cmd::Rate { rate } = &cli.cmd {
        let r: Rate = rate.parse().map_err(|e| Failure::usage(format!("invalid rate '{rate}': {e}")))?;
        println!("{} B/s ({r})", r.bytes_per_sec());
        return Ok(());
    }
    let c = Client::connect(&cli.bus).await?;
    let json = cli.json;
    match cli.cmd {
        Cmd::Limit { target, down, up, backend, down_backend, up_backend, tree, exe, unit, cgroup } => {
            let (kind, value) = target_of(target, tree, exe, unit, cgroup)?;
            let mut opts: HashMap<&str, Value<'_>> = HashMap::new();
            down.map(|r| opts.insert("down", Value::U64(r.bytes_per_sec())));
            up.map(|r| opts.insert("up", Value::U64(r.bytes_per_sec())));
            for (k, v) in [("backend", backend), ("down_backend", down_backend), ("up_backend", up_backend)] {
                v.map(|v| opts.insert(k, Value::from(v)));
            }
            if down.is_none() && up.is_none() {
                return Err(Failure::usage("give --down and/or --up"));
            }
            let path = c.manager.limit(kind, &value, opts).await.map_err(Failure::from)?;
            output::throttle(&c.throttle(&path).await?, json);
        }
        Cmd::Unlimit { target } => {
            let t = c.find(&target).await?;
            c.manager.remove(&t.path.as_ref()).await.map_err(Failure::from)?;
            if !json {
                println!("removed throttle {} ({} {})", t.id, t.kind, t.target);
            }
        }
        Cmd::List => output::list(&c.throttles().await?, json),
        Cmd::Backends => output::backends(&c.manager.list_backends().await.map_err(Failure::from)?, json),
        Cmd::Default { up, down } => {
            if up.is_none() && down.is_none() {
                return Err(Failure::usage("give --up and/or --down"));
            }
            for (dir, name) in [("up", up), ("down", down)] {
                if let Some(n) = name {
                    c.manager.set_default_backend(dir, &n).await.map_err(Failure::from)?;
                    println!("New throttles will use '{n}' for {}", if dir == "up" { "upload" } else { "download" });
                }
            }
        }
        Cmd::Migrate { id, to, from, direction } => match (id, from) {
            (Some(id), None) => {
                let t = c.find(&id.to_string()).await?;
                let dir = direction.unwrap_or_default();
                c.manager.migrate(&t.path.as_ref(), &dir, &to).await.map_err(Failure::from)?;
                println!("throttle {id} now on '{to}'");
            }
            (None, Some(from)) => {
                let n = c.manager.migrate_backend(&from, &to).await.map_err(Failure::from)?;
                println!("moved {n} throttle(s) from '{from}' to '{to}'");
            }
            _ => return Err(Failure::usage("give a throttle id, or --from BACKEND")),
        },
        Cmd::Stats => output::stats(&c.manager.get_stats().await.map_err(Failure::from)?, json),
        Cmd::Monitor => c.monitor(json).await?,
        Cmd::Status => {
            let stats = c.manager.get_stats().await.map_err(Failure::from)?;
            let version = c.manager.version().await.map_err(Failure::from)?;
            let (up, down) = (c.manager.default_upload_backend().await, c.manager.default_download_backend().await);
            output::status(&version, &stats, up.unwrap_or_default(), down.unwrap_or_default(), json);
        }
        Cmd::Reload => {
            c.manager.reload().await.map_err(Failure::from)?;
            println!("reloaded");
        }
        Cmd::Rate { .. } => unreachable!("handled above"),
    }
    Ok(())
}

/// A numeric argument is a pid, anything else a name; --exe/--unit/--cgroup win.
fn target_of(
    target: Option<String>,
    tree: bool,
    exe: Option<String>,
    unit: Option<String>,
    cgroup: Option<String>,
) -> Result<(&'static str, String), Failure> {
    let explicit = [("exe", exe), ("unit", unit), ("cgroup", cgroup)].into_iter().find_map(|(k, v)| v.map(|v| (k, v)));
    match (explicit, target) {
        (Some(_), Some(_)) => Err(Failure::usage("give a pid/name or --exe/--unit/--cgroup, not both")),
        (Some(kv), None) => Ok(kv),
        (None, Some(t)) if t.parse::<u32>().is_ok() => Ok((if tree { "tree" } else { "pid" }, t)),
        (None, Some(_)) if tree => Err(Failure::usage("--tree needs a pid")),
        (None, Some(t)) => Ok(("name", t)),
        (None, None) => Err(Failure::usage("give a pid or a process name (or --exe/--unit/--cgroup)")),
    }
}
