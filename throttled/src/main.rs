//! chadthrottled: loads the data path, optionally limits one process, and
//! runs until SIGTERM/SIGINT, then removes every kernel object it made.
//! (The D-Bus service arrives with the D-Bus API issue.)
use anyhow::Context as _;
use clap::Parser;
use throttled::{
    backend::interfaces::InterfacePolicy,
    kernel::bpf::DatapathOptions,
    manager::{LimitSpec, Manager, ManagerOptions},
    Rate,
};

#[derive(Parser, Debug)]
#[command(name = "chadthrottled", version, about = "Per-process bandwidth limiting daemon")]
struct Args {
    /// Limit this process right away.
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
    /// Backend for both directions (ebpf, tc_htb, ifb_tc); default: the best available.
    #[arg(long)]
    backend: Option<String>,
    #[arg(long)]
    up_backend: Option<String>,
    #[arg(long)]
    down_backend: Option<String>,
    /// Interface for tc_htb/ifb_tc to manage (repeatable); default: those with a default route.
    #[arg(long = "interface")]
    interfaces: Vec<String>,
    /// Where state is kept (the root qdiscs the backends replaced).
    #[arg(long, default_value = "/var/lib/chadthrottle")]
    state_dir: std::path::PathBuf,
    /// Police loopback traffic too (it is exempt by default).
    #[arg(long)]
    throttle_loopback: bool,
}

fn wait_for_termination() -> anyhow::Result<i32> {
    // Block the signals in every thread, then wait for one synchronously.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let mut sig = 0;
        if libc::sigwait(&set, &mut sig) != 0 {
            anyhow::bail!("sigwait failed");
        }
        Ok(sig)
    }
}

fn block_signals() {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    block_signals(); // before any thread starts, so they inherit the mask
    let opts = ManagerOptions {
        datapath: DatapathOptions { exempt_loopback: !args.throttle_loopback },
        interfaces: InterfacePolicy { names: (!args.interfaces.is_empty()).then(|| args.interfaces.clone()) },
        state_dir: args.state_dir.clone(),
    };
    let manager = Manager::start(&opts).context("starting the data path")?;
    if let Some(pid) = args.pid {
        let spec = LimitSpec {
            down: args.down,
            up: args.up,
            tree: args.tree,
            backend: args.backend.clone(),
            up_backend: args.up_backend.clone(),
            down_backend: args.down_backend.clone(),
        };
        let id = manager.limit_pid(pid, &spec).with_context(|| format!("limiting pid {pid}"))?;
        println!("throttle {id} on pid {pid}");
    }
    println!("ready");
    let sig = wait_for_termination()?;
    tracing::info!(signal = sig, "shutting down");
    manager.shutdown().context("removing throttles")?;
    Ok(())
}
