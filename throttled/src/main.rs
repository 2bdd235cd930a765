//! chadthrottled: reads the config and rules, cleans up after a crashed run,
//! restores the saved throttles, and runs until SIGTERM/SIGINT, then removes
//! every kernel object it made. SIGHUP reloads the config and rules.
//! The API is served on the system bus as `org.chadthrottle`.
use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use throttled::{
    config, dbus,
    manager::{LimitSpec, Manager, ManagerOptions, Overrides},
    notify::Notifier,
    target::Target,
    Rate,
};
use tokio::signal::unix::{signal, SignalKind};

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
    /// Do not serve the D-Bus API (rules and config still apply).
    #[arg(long)]
    no_dbus: bool,
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
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(run(args, opts))
}

async fn run(args: Args, opts: ManagerOptions) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let notify = Notifier::from_env();
    let manager = Arc::new(tokio::task::spawn_blocking(move || Manager::start(&opts)).await?.context("starting")?);
    let no_dbus = args.no_dbus;
    if let Some(pid) = args.pid {
        // Backends talk netlink synchronously: never on the async threads.
        let m = manager.clone();
        tokio::task::spawn_blocking(move || limit_from_args(&m, &args, pid)).await??;
    }
    let bus = if no_dbus { None } else { serve_bus(&manager).await };
    // Ready only now: the name is owned and the saved throttles are back.
    let mut status = manager.status();
    notify.ready(&status);
    println!("ready");
    let period = Notifier::watchdog_period().unwrap_or(Duration::from_secs(3600));
    let mut watchdog = tokio::time::interval(period);
    let mut refresh = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = watchdog.tick() => {
                // Pinged only when the core answers: a hung core gets restarted.
                if core_answers(&manager, period).await {
                    notify.watchdog();
                }
            }
            _ = refresh.tick() => {
                let now = manager.status();
                if now != status {
                    notify.status(&now);
                    status = now;
                }
            }
            _ = hup.recv() => {
                notify.reloading();
                let m = manager.clone();
                match tokio::task::spawn_blocking(move || m.reload().map(|_| m.status())).await? {
                    Ok(s) => tracing::info!(status = s, "reloaded"),
                    Err(e) => tracing::error!(error = %e, "reload failed; the running configuration is kept"),
                }
                notify.ready(&manager.status());
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("shutting down");
    notify.stopping();
    drop(bus);
    tokio::task::spawn_blocking(move || manager.teardown()).await?.context("removing throttles")?;
    Ok(())
}

async fn core_answers(manager: &Arc<Manager>, within: Duration) -> bool {
    let m = manager.clone();
    matches!(tokio::time::timeout(within, tokio::task::spawn_blocking(move || m.status())).await, Ok(Ok(_)))
}

/// Without a system bus the daemon still enforces its rules; the API is
/// simply absent (and said so).
async fn serve_bus(manager: &Arc<Manager>) -> Option<zbus::Connection> {
    match dbus::serve(manager.clone()).await {
        Ok(c) => {
            tracing::info!(name = dbus::BUS_NAME, "serving the D-Bus API");
            Some(c)
        }
        Err(e) => {
            tracing::warn!(error = %e, "no D-Bus API: cannot serve on the system bus");
            None
        }
    }
}
