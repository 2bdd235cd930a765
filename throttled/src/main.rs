//! chadthrottled: reads the config and rules, cleans up after a crashed run,
//! restores the saved throttles, and runs until SIGTERM/SIGINT, then removes
//! every kernel object it made. SIGHUP reloads the config and rules.
//! The API is served on the system bus as `org.chadthrottle`.
use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser};
use throttled::{
    config, dbus,
    logging::{self, LogTarget},
    manager::{LimitSpec, Manager, ManagerOptions, Overrides},
    metrics::{self, adapter::ManagerSource, CallStats},
    notify::Notifier,
    target::Target,
    usage, Rate,
};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser, Debug)]
#[command(
    name = "chadthrottled",
    version,
    about = "Per-process bandwidth limiting daemon",
    long_about = "Per-process bandwidth limiting daemon.\n\n\
        chadthrottled limits the download and upload rate of processes, chosen by pid, name, \
        executable, cgroup or systemd unit, with eBPF programs and HTB/IFB qdiscs it manages \
        over netlink. It serves org.chadthrottle.Manager on the system bus, where throttlectl \
        and desktop applets reach it; polkit decides who may do what. It normally runs under \
        systemd (chadthrottled.service, Type=notify) and logs to journald; by hand it runs in \
        the foreground and logs to stderr."
)]
struct Args {
    /// Config file; rules are read from rules.d/ next to it.
    #[arg(long, default_value = config::DEFAULT_CONFIG)]
    config: PathBuf,
    /// Limit this process right away (saved like any runtime limit; it comes back only while that process lives).
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
    /// Backend for the upload limit.
    #[arg(long)]
    up_backend: Option<String>,
    /// Backend for the download limit.
    #[arg(long)]
    down_backend: Option<String>,
    /// Block the process's traffic instead of limiting it.
    #[arg(long, requires = "pid", conflicts_with_all = ["down", "up", "backend", "up_backend", "down_backend"])]
    block: bool,
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
    /// Where logs go.
    #[arg(long, value_enum, default_value = "auto")]
    log_target: LogTarget,
    /// Check the config (this file, or --config) and its rules.d, print what was found, and exit: 0 when valid, 78 when not. Nothing else is read or touched.
    #[arg(long, value_name = "PATH", num_args = 0..=1)]
    check_config: Option<Option<PathBuf>>,
    /// Print the man page (roff) and exit.
    #[arg(long, hide = true)]
    manpage: bool,
}

/// Sections clap cannot derive: what a packager and an admin need to know.
const MAN_EXTRA: &str = r#".SH LIMITS, CAPS AND PRIORITIES
A throttle limits a target: a process (and its descendants), a name, an executable, a unit or a cgroup. A process is limited by at most one throttle per direction, the most specific target's. Caps stack on top: a \fIuser\fR cap covers every process of one uid, the \fIall\fR cap every process, and a packet must pass its own throttle, then its user's cap, then the all cap (in the cgroup programs, on the ebpf backend; the all cap may instead be the top class of the tc_htb or ifb_tc tree, and a user cap runs on ebpf only). Under the configured link capacity (\fI[link]\fR, or the LinkCapacity property), or the all cap where lower, saturated throttles share by priority: low 1, normal 2, high 4, critical 8; ebpf throttles by the daemon's division every 100 ms, tc_htb and ifb_tc throttles by HTB's own rate, ceil and prio under a shared class. A block drops a target's traffic and refuses its connections with EPERM.
.SH SIGNALS
.TP
\fBSIGTERM\fR, \fBSIGINT\fR
Remove every throttle's kernel objects and exit. Throttles are saved and come back at the next start.
.TP
\fBSIGHUP\fR
Reload the config and rules.d; a bad file keeps the running configuration.
.SH FILES
.TP
\fI/etc/chadthrottle/chadthrottled.toml\fR
The config: defaults per direction, interfaces, health policy, log filter.
.TP
\fI/etc/chadthrottle/rules.d/*.toml\fR
Standing limits by name, executable, unit or cgroup, and caps by user or on everything.
.TP
\fI/var/lib/chadthrottle/\fR
Saved throttles, records of the IFB devices it creates and the root qdiscs it replaces (a restart after a crash sweeps exactly these), and the instance lock. It is created 0700; the daemon refuses to start if it is writable by group or others or owned by another user, and never follows a symlink in it.
.SH ENVIRONMENT
.TP
\fBRUST_LOG\fR
Log filter; it wins over the config's \fIlog\fR.
.TP
\fBNOTIFY_SOCKET\fR, \fBWATCHDOG_USEC\fR, \fBJOURNAL_STREAM\fR
Set by systemd: readiness and watchdog pings, and structured logs to journald.
.SH EXIT STATUS
0 after a clean shutdown, 78 for a bad config, 1 for any other failure to start, such as another process owning org.chadthrottle on the system bus (checked before anything is built; the name is never taken from its owner).
.SH SEE ALSO
\fBthrottlectl\fR(1), \fBsystemd.exec\fR(5), \fBtc-htb\fR(8)
"#;

fn print_man_page() -> anyhow::Result<()> {
    let mut page = Vec::new();
    clap_mangen::Man::new(Args::command()).section("8").render(&mut page)?;
    page.extend_from_slice(MAN_EXTRA.as_bytes());
    std::io::Write::write_all(&mut std::io::stdout(), &page)?;
    Ok(())
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
        block: args.block,
        ..Default::default()
    };
    let target = Target::pid(pid, args.tree).with_context(|| format!("pid {pid}"))?;
    let id = manager.limit(target, &spec).with_context(|| format!("limiting pid {pid}"))?;
    println!("throttle {id} on pid {pid}");
    Ok(())
}

/// `--check-config`: parse the config and every rule exactly as a start or
/// a reload does, without a state directory, a log sink or the kernel.
/// Whether a named backend is available depends on the host and is only
/// known to a running daemon.
fn check_config(path: &std::path::Path) -> std::process::ExitCode {
    let checked = config::load(path).map_err(|e| e.to_string()).and_then(|loaded| {
        for r in &loaded.rules {
            r.spec.check().map_err(|e| format!("{}: rule for {}: {e}", r.source.display(), r.target))?;
        }
        Ok(loaded)
    });
    match checked {
        Ok(loaded) => {
            let files: std::collections::BTreeSet<_> = loaded.rules.iter().map(|r| r.source.clone()).collect();
            println!("{}: valid; {} rule(s) in {} file(s)", path.display(), loaded.rules.len(), files.len());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chadthrottled: {e}");
            std::process::ExitCode::from(78) // EX_CONFIG
        }
    }
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    let args = Args::parse();
    if args.manpage {
        return print_man_page().map(|()| std::process::ExitCode::SUCCESS);
    }
    if let Some(path) = &args.check_config {
        return Ok(check_config(path.as_deref().unwrap_or(&args.config)));
    }
    let opts = match options(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("chadthrottled: {e}");
            std::process::exit(78); // EX_CONFIG
        }
    };
    let sink = logging::init(args.log_target, opts.loaded.config.log.as_deref());
    tracing::debug!(sink, "logging");
    // Manager calls serialize on one lock: more blocking threads only cost memory.
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).max_blocking_threads(4).enable_all().build()?;
    rt.block_on(run(args, opts)).map(|()| std::process::ExitCode::SUCCESS)
}

async fn run(args: Args, opts: ManagerOptions) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let notify = Notifier::from_env();
    if !args.no_dbus {
        refuse_if_name_owned().await?;
    }
    let metrics_cfg = opts.loaded.config.metrics.clone();
    let usage_cfg = opts.loaded.config.usage.clone();
    let manager = Arc::new(tokio::task::spawn_blocking(move || Manager::start(&opts)).await?.context("starting")?);
    let no_dbus = args.no_dbus;
    if let Some(pid) = args.pid {
        // Backends talk netlink synchronously: never on the async threads.
        let m = manager.clone();
        tokio::task::spawn_blocking(move || limit_from_args(&m, &args, pid)).await??;
    }
    // The D-Bus layer records each call into `calls`; the exporter reads them.
    let calls = CallStats::default();
    let _metrics = start_metrics(&metrics_cfg, &manager, calls.clone()).await;
    let usage = start_usage(&usage_cfg, &manager);
    let cx = dbus::Context { calls, usage: usage.clone() };
    let first = match no_dbus {
        true => None,
        false => match serve_bus(&manager, &cx).await {
            Ok(s) => s,
            Err(e) => {
                // Lost a race for the name: undo everything, then fail.
                let m = manager.clone();
                tokio::task::spawn_blocking(move || m.shutdown()).await?.context("removing throttles")?;
                return Err(e);
            }
        },
    };
    let bus = (!no_dbus).then(|| tokio::spawn(dbus::keep_serving(manager.clone(), cx, first)));
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
    if let Some(task) = bus {
        // The connection goes (and the name with it) before the throttles do.
        task.abort();
        let _ = task.await;
    }
    // The last flush, while the processes are still counted.
    if let Some(u) = usage {
        tokio::task::spawn_blocking(move || u.stop()).await?;
    }
    tokio::task::spawn_blocking(move || manager.shutdown()).await?.context("removing throttles")?;
    Ok(())
}

/// The usage history is optional: without the monitor there is nothing
/// to keep, and a database that cannot be opened is logged, not fatal.
fn start_usage(cfg: &config::UsageConfig, manager: &Arc<Manager>) -> Option<Arc<usage::Recorder>> {
    if !cfg.enabled {
        return None;
    }
    if !manager.monitoring() {
        tracing::info!("no usage history: the monitor is off");
        return None;
    }
    match usage::Recorder::start(&manager.state_dir(), cfg, manager.clone()) {
        Ok(r) => Some(Arc::new(r)),
        Err(e) => {
            tracing::error!(error = %e, "no usage history");
            None
        }
    }
}

/// The exporter is optional: a port it cannot bind is logged, and the
/// throttles are enforced all the same.
async fn start_metrics(cfg: &config::MetricsConfig, manager: &Arc<Manager>, calls: CallStats) -> metrics::Running {
    let source = Arc::new(ManagerSource::new(manager.clone(), calls, cfg.top_names));
    metrics::start(cfg, source).await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "no metrics");
        metrics::Running::default()
    })
}

async fn core_answers(manager: &Arc<Manager>, within: Duration) -> bool {
    let m = manager.clone();
    matches!(tokio::time::timeout(within, tokio::task::spawn_blocking(move || m.status())).await, Ok(Ok(_)))
}

/// The error a second daemon exits with: it must not build anything, or
/// it would fight the first over the same kernel and the same name.
fn name_owned(owner: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{} is already owned on the system bus by {owner}: another chadthrottled is running; not starting",
        dbus::BUS_NAME
    )
}

/// Before any kernel change: a name owned by someone else means another
/// daemon runs. No bus to ask is fine: the API comes when the bus does.
async fn refuse_if_name_owned() -> anyhow::Result<()> {
    match dbus::name_owner().await {
        Ok(Some(owner)) => Err(name_owned(&owner)),
        Ok(None) => Ok(()),
        Err(e) => {
            tracing::debug!(error = %e, "no system bus to ask who owns the name");
            Ok(())
        }
    }
}

/// Without a system bus the daemon still enforces its rules; the API is
/// absent (and said so) until the bus appears. A name taken in the
/// meantime is an error.
async fn serve_bus(manager: &Arc<Manager>, cx: &dbus::Context) -> anyhow::Result<Option<dbus::Served>> {
    match dbus::serve(manager.clone(), cx.clone()).await {
        Ok(s) => {
            tracing::info!(name = dbus::BUS_NAME, "serving the D-Bus API");
            Ok(Some(s))
        }
        Err(zbus::Error::NameTaken) => Err(name_owned("another process")),
        Err(e) => {
            tracing::warn!(error = %e, "no D-Bus API yet: cannot serve on the system bus; retrying in the background");
            Ok(None)
        }
    }
}
