//! chadthrottled: reads the config and rules, cleans up after a crashed run,
//! restores the saved throttles, and runs until SIGTERM/SIGINT, then removes
//! every kernel object it made. SIGHUP reloads the config and rules.
//! (The D-Bus service arrives with the D-Bus API issue.)
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use throttled::{
    config,
    manager::{LimitSpec, Manager, ManagerOptions, Overrides},
    target::Target,
    Rate,
};

#[derive(Parser, Debug)]
#[command(name = "chadthrottled", version, about = "Per-process bandwidth limiting daemon")]
struct Args {
    /// Config file; rules are read from rules.d/ next to it.
    #[arg(long, default_value = config::DEFAULT_CONFIG)]
    config: PathBuf,
    /// Limit this process right away (not saved).
    #[arg(long)]
    pid: Option<u32>,
    /// Download limit (e.g. 1M, 512K, 10mbit).
    #[arg(long)]
    down: Option<Rate>,
    /// Upload limit.
    #[arg(long)]
    up: Option<Rate>,
    /// Also cover the process's descendants, present and future.
    #[arg(long)]
    tree: bool,
    /// Backend for both directions (ebpf, tc_htb, ifb_tc); default: the configured or best available.
    #[arg(long)]
    backend: Option<String>,
    #[arg(long)]
    up_backend: Option<String>,
    #[arg(long)]
    down_backend: Option<String>,
    /// Interface for tc_htb/ifb_tc to manage (repeatable); overrides the config.
    #[arg(long = "interface")]
    interfaces: Vec<String>,
    /// Where state is kept; overrides the config.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Police loopback traffic too (it is exempt by default).
    #[arg(long)]
    throttle_loopback: bool,
}

/// Signals are blocked in every thread and taken synchronously here.
fn signal_set() -> libc::sigset_t {
    // SAFETY: plain libc calls on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

fn block_signals() {
    let set = signal_set();
    // SAFETY: `set` is a valid, initialised signal set.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

fn next_signal() -> anyhow::Result<i32> {
    let set = signal_set();
    let mut sig = 0;
    // SAFETY: `set` and `sig` outlive the call.
    if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
        anyhow::bail!("sigwait failed");
    }
    Ok(sig)
}

fn init_logging(config_filter: Option<&str>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(config_filter.unwrap_or("info")))
        .unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn options(args: &Args) -> anyhow::Result<ManagerOptions> {
    let loaded = config::load(&args.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let overrides = Overrides {
        state_dir: args.state_dir.clone(),
        interfaces: (!args.interfaces.is_empty()).then(|| args.interfaces.clone()),
        exempt_loopback: args.throttle_loopback.then_some(false),
    };
    Ok(ManagerOptions { loaded, config_path: Some(args.config.clone()), overrides })
}

fn limit_from_args(manager: &Manager, args: &Args, pid: u32) -> anyhow::Result<()> {
    let spec = LimitSpec {
        down: args.down,
        up: args.up,
        backend: args.backend.clone(),
        up_backend: args.up_backend.clone(),
        down_backend: args.down_backend.clone(),
    };
    let target = Target::pid(pid, args.tree).with_context(|| format!("pid {pid}"))?;
    let id = manager.limit(target, &spec).with_context(|| format!("limiting pid {pid}"))?;
    println!("throttle {id} on pid {pid}");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let opts = match options(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("chadthrottled: {e}");
            std::process::exit(78); // EX_CONFIG
        }
    };
    init_logging(opts.loaded.config.log.as_deref());
    block_signals(); // before any thread starts, so they inherit the mask
    let manager = Manager::start(&opts).context("starting")?;
    if let Some(pid) = args.pid {
        limit_from_args(&manager, &args, pid)?;
    }
    println!("ready");
    loop {
        match next_signal()? {
            libc::SIGHUP => match manager.reload() {
                Ok(()) => tracing::info!(status = manager.status(), "reloaded"),
                Err(e) => tracing::error!(error = %e, "reload failed; the running configuration is kept"),
            },
            sig => {
                tracing::info!(signal = sig, "shutting down");
                break;
            }
        }
    }
    manager.shutdown().context("removing throttles")?;
    Ok(())
}
