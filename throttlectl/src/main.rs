//! throttlectl: a thin client of chadthrottled's D-Bus API. No kernel
//! access of its own (it only reads the cgroup tree, for a warning);
//! every decision is the daemon's.
mod api;
mod cli;
mod complete;
mod manpage;
mod output;
mod target;
mod top;
mod usage;

use std::{process::ExitCode, time::Duration};

use clap::Parser;
use throttle_api::LimitOptions;
use throttle_common::rate::Rate;

use crate::{
    api::{Client, Failure},
    cli::{Cli, Cmd},
    output::Style,
};

fn main() -> ExitCode {
    // A shell asking for candidates: answer and exit before anything else.
    complete::answer_if_asked();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => usage_error(e),
    };
    let style = Style { json: cli.json, legend: !cli.no_legend, quiet: cli.quiet, unicode: output::unicode_stdout() };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return Failure::other(e).report(style.json, style.quiet),
    };
    match rt.block_on(run(cli, style)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => f.report(style.json, style.quiet),
    }
}

/// A command line clap refuses: with --json, the JSON error on stdout
/// first; then clap's own text and exit code (2), or its help or version.
fn usage_error(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    let shows = matches!(
        e.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if !shows && std::env::args_os().skip(1).take_while(|a| a.to_str() != Some("--")).any(|a| a == "--json") {
        let text = e.render().to_string();
        let first = text.lines().next().unwrap_or_default();
        let msg = first.strip_prefix("error: ").unwrap_or(first);
        println!("{}", serde_json::json!({ "error": { "code": 2, "message": msg, "name": null } }));
    }
    e.exit()
}

/// Commands that need no daemon.
fn offline(cmd: &Cmd, st: &Style) -> Option<Result<(), Failure>> {
    Some(match cmd {
        Cmd::Rate { rate } => match rate.parse::<Rate>() {
            Ok(r) if st.json => {
                output::json(&serde_json::json!({ "bytes_per_sec": r.bytes_per_sec(), "rate": r.to_string() }));
                Ok(())
            }
            Ok(r) => {
                println!("{} B/s ({r})", r.bytes_per_sec());
                Ok(())
            }
            Err(e) => Err(Failure::usage(format!("invalid rate '{rate}': {e}"))),
        },
        Cmd::Completions { shell } => complete::registration(*shell, &mut std::io::stdout()).map_err(Failure::other),
        Cmd::Manpage => manpage::render(&mut std::io::stdout()).map_err(Failure::other),
        _ => return None,
    })
}

async fn run(cli: Cli, st: Style) -> Result<(), Failure> {
    // A bare `throttlectl` is `throttlectl status`, as with systemctl.
    let cmd = cli.cmd.unwrap_or(Cmd::Status);
    if let Some(done) = offline(&cmd, &st) {
        return done;
    }
    let timeout = Duration::from_secs(cli.timeout);
    // top connects (and reconnects) by itself.
    if let Cmd::Top { once, count, sort, scope } = cmd {
        return top::run(&cli.bus, top::Options { once, count, sort, scope, style: st, timeout }).await;
    }
    if let Cmd::Status = cmd {
        return status(&cli.bus, timeout, &st).await.map_err(|f| match f.code() == 5 && !f.timed_out() {
            // Not an error to report: the answer to "is it running?".
            true => f.with_json("running", false.into()),
            false => f,
        });
    }
    let c = Client::connect(&cli.bus, timeout).await?;
    match cmd {
        Cmd::Limit {
            target,
            down,
            up,
            backend,
            down_backend,
            up_backend,
            tree,
            exe,
            unit,
            cgroup,
            user,
            all,
            hold,
            quota,
            then,
            when,
            otherwise,
            priority,
        } => {
            let (kind, value) = cap_or(user, all, || target_of(target, tree, exe, unit, cgroup))?;
            if down.is_none() && up.is_none() && quota.is_none() && priority.is_none() {
                return Err(Failure::usage("give --down and/or --up, a --quota or a --priority"));
            }
            let opts = LimitOptions {
                down: down.map(|r| r.bytes_per_sec()),
                up: up.map(|r| r.bytes_per_sec()),
                backend,
                down_backend,
                up_backend,
                hold: hold.then_some(true),
                block: None,
                quota,
                then,
                when,
                otherwise: otherwise.map(|r| r.bytes_per_sec()),
                priority: priority.map(|p| p.as_str().to_string()),
            };
            limit(&c, kind, &value, &opts, &st).await?;
        }
        Cmd::Block { target, tree, exe, unit, cgroup, user, all, hold, when } => {
            let (kind, value) = cap_or(user, all, || target_of(target, tree, exe, unit, cgroup))?;
            let opts = LimitOptions { block: Some(true), hold: hold.then_some(true), when, ..Default::default() };
            limit(&c, kind, &value, &opts, &st).await?;
        }
        Cmd::Priority { target, level, tree } => {
            let (kind, value) = target_of(Some(target), tree, None, None, None)?;
            let opts = LimitOptions { priority: Some(level.as_str().into()), ..Default::default() };
            limit(&c, kind, &value, &opts, &st).await?;
        }
        Cmd::Link { down, up } => link(&c, down, up, &st).await?,
        Cmd::Unblock { target } => {
            let t = c.find(&target).await?;
            if !t.blocked {
                return Err(Failure::usage(format!(
                    "throttle {} limits, it does not block (see: throttlectl unlimit)",
                    t.id
                )));
            }
            unlimit(&c, t, &st).await?;
        }
        Cmd::Unlimit { target } => unlimit(&c, c.find(&target).await?, &st).await?,
        Cmd::List => output::list(&c.throttles().await?, &st),
        Cmd::Backends => output::backends(&c.manager.list_backends().await.map_err(Failure::from)?, &st),
        Cmd::Default { up, down } => {
            if up.is_none() && down.is_none() {
                return Err(Failure::usage("give --up and/or --down"));
            }
            let mut set = serde_json::Map::new();
            for (dir, name) in [("up", up), ("down", down)] {
                if let Some(n) = name {
                    c.bounded(c.manager.set_default_backend(dir, &n)).await?;
                    st.info(format_args!(
                        "New throttles will use '{n}' for {}",
                        if dir == "up" { "upload" } else { "download" }
                    ));
                    set.insert(format!("default_{dir}"), n.into());
                }
            }
            if st.json {
                output::json(&set);
            }
        }
        Cmd::Migrate { id, to, from, direction } => match (id, from) {
            (Some(id), None) => {
                let t = c.find(&id.to_string()).await?;
                let dir = direction.unwrap_or_default();
                c.bounded(c.manager.migrate(&t.path.as_ref(), &dir, &to)).await?;
                if st.json {
                    let dir = if dir.is_empty() { "both" } else { dir.as_str() };
                    output::json(&serde_json::json!({ "id": id, "to": to, "direction": dir }));
                } else {
                    st.info(format_args!("throttle {id} now on '{to}'"));
                }
            }
            (None, Some(from)) => {
                let n = c.bounded(c.manager.migrate_backend(&from, &to)).await?;
                if st.json {
                    output::json(&serde_json::json!({ "from": from, "to": to, "moved": n }));
                } else {
                    st.info(format_args!("moved {n} throttle(s) from '{from}' to '{to}'"));
                }
            }
            _ => return Err(Failure::usage("give a throttle id, or --from BACKEND")),
        },
        Cmd::Stats => output::stats(&c.manager.get_stats().await.map_err(Failure::from)?, &st),
        Cmd::Usage { by, since } => {
            let (now, offset) = (usage::now(), usage::local_utc_offset());
            let from = usage::since(&since, now, offset).map_err(Failure::usage)?;
            let entries = c.bounded(c.manager.get_usage(by.as_str(), from, 0)).await?;
            usage::print(by.as_str(), &entries, offset, &st);
        }
        Cmd::Monitor => c.monitor(st.json).await?,
        Cmd::Reload => {
            c.bounded(c.manager.reload()).await?;
            if st.json {
                output::json(&serde_json::json!({ "reloaded": true }));
            } else {
                st.info("reloaded");
            }
        }
        Cmd::Status => unreachable!("handled before connecting"),
        Cmd::Rate { .. } | Cmd::Completions { .. } | Cmd::Manpage => unreachable!("handled offline"),
        Cmd::Top { .. } => unreachable!("handled before connecting"),
    }
    Ok(())
}

async fn status(bus: &str, timeout: Duration, st: &Style) -> Result<(), Failure> {
    let c = Client::connect(bus, timeout).await?;
    let stats = c.manager.get_stats().await.map_err(Failure::from)?;
    let version = c.manager.version().await.map_err(Failure::from)?;
    let (up, down) = (c.manager.default_upload_backend().await, c.manager.default_download_backend().await);
    output::status(&version, &stats, up.unwrap_or_default(), down.unwrap_or_default(), st);
    Ok(())
}

/// `limit --hold`: the throttle lasts while this process keeps its bus
/// connection; the daemon ends it when the connection goes.
struct Interrupts {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Interrupts {
    fn listen() -> Result<Self, Failure> {
        use tokio::signal::unix::{signal, SignalKind};
        let int = signal(SignalKind::interrupt()).map_err(Failure::other)?;
        let term = signal(SignalKind::terminate()).map_err(Failure::other)?;
        Ok(Self { int, term })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

/// The limit applies either way; say so when the daemon could not save it.
async fn warn_if_unsaved(c: &Client) {
    if let Some(w) = c.manager.get_stats().await.ok().as_ref().and_then(output::state_warning) {
        eprintln!("throttlectl: warning: {w}");
    }
}

/// A numeric argument is a pid, anything else a name; --exe/--unit/--cgroup win.
/// Limits or blocks a target (`Manager.Limit`), then prints the throttle;
/// with `hold`, keeps it until interrupted.
async fn limit(c: &Client, kind: &str, value: &str, opts: &LimitOptions, st: &Style) -> Result<(), Failure> {
    let hold = opts.hold == Some(true);
    // Listen before the throttle exists: a Ctrl-C that comes right
    // after the reply must end the hold, not kill the process.
    let signals = hold.then(Interrupts::listen).transpose()?;
    let path = c.bounded(c.manager.limit(kind, value, opts)).await?;
    let t = c.throttle(&path).await?;
    // Legal and kept, but maybe a typo: say so, on stderr.
    if let Some(w) = target::absent(kind, value) {
        eprintln!("throttlectl: warning: {w}");
    }
    output::throttle(&t, st);
    if let Some(signals) = signals {
        st.info(format_args!("holding the throttle; it ends when throttlectl does (Ctrl-C)"));
        signals.wait().await;
        return Ok(());
    }
    warn_if_unsaved(c).await;
    Ok(())
}

/// `link`: sets what is given (keeping the other direction), then shows it.
async fn link(c: &Client, down: Option<String>, up: Option<String>, st: &Style) -> Result<(), Failure> {
    let parse = |s: &str| -> Result<u64, Failure> {
        match s {
            "none" | "0" => Ok(0),
            s => s.parse::<Rate>().map(|r| r.bytes_per_sec()).map_err(|e| Failure::usage(e.to_string())),
        }
    };
    if down.is_some() || up.is_some() {
        let (d0, u0) = c.bounded(c.manager.link_capacity()).await?;
        let d = down.as_deref().map(parse).transpose()?.unwrap_or(d0);
        let u = up.as_deref().map(parse).transpose()?.unwrap_or(u0);
        c.bounded(c.manager.set_link_capacity((d, u))).await?;
    }
    let (d, u) = c.bounded(c.manager.link_capacity()).await?;
    if st.json {
        output::json(&serde_json::json!({ "down": d, "up": u }));
    } else {
        let show = |b: u64| if b == 0 { "not set".to_string() } else { output::rate(b) };
        println!("link capacity: down {}, up {}", show(d), show(u));
    }
    Ok(())
}

/// Removes a throttle (`unlimit`, `unblock`).
async fn unlimit(c: &Client, t: api::ThrottleView, st: &Style) -> Result<(), Failure> {
    c.bounded(c.manager.remove(&t.path.as_ref())).await?;
    if st.json {
        output::json(&serde_json::json!({ "removed": t }));
    } else {
        st.info(format_args!(
            "removed throttle {} ({} {})",
            t.id,
            t.kind,
            throttle_common::text::escape(&t.target, usize::MAX)
        ));
    }
    if let Some(file) = output::rule_file(&t.origin) {
        // Said even with -q or --json: the removal does not last.
        eprintln!(
            "throttlectl: note: throttle {} comes from the rules file {file}; the next reload brings it back (edit or remove the rule to end it)",
            t.id
        );
    }
    Ok(())
}

/// A cap's target (`--user`, `--all`), or else the process target.
fn cap_or(
    user: Option<String>,
    all: bool,
    process: impl FnOnce() -> Result<(&'static str, String), Failure>,
) -> Result<(&'static str, String), Failure> {
    match (user, all) {
        (Some(u), _) => Ok(("user", u)),
        (None, true) => Ok(("all", String::new())),
        (None, false) => process(),
    }
}

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
        (None, None) => Err(Failure::usage("give a pid or a process name (or --exe/--unit/--cgroup, --user, --all)")),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn numbers_are_pids_and_words_are_names() {
        let t = |s: &str, tree| target_of(Some(s.into()), tree, None, None, None).map_err(|_| ());
        assert_eq!(t("1234", false), Ok(("pid", "1234".into())));
        assert_eq!(t("1234", true), Ok(("tree", "1234".into())));
        assert_eq!(t("firefox", false), Ok(("name", "firefox".into())));
        assert!(t("firefox", true).is_err());
        let unit = target_of(None, false, None, Some("backup.service".into()), None).map_err(|_| ());
        assert_eq!(unit, Ok(("unit", "backup.service".into())));
        assert!(target_of(Some("x".into()), false, Some("/bin/x".into()), None, None).is_err());
        assert!(target_of(None, false, None, None, None).is_err());
    }

    #[test]
    fn top_options_parse() {
        let cli =
            Cli::try_parse_from(["throttlectl", "--json", "top", "--once", "--count", "5", "--sort", "up"]).unwrap();
        let Some(Cmd::Top { once, count, sort, scope }) = cli.cmd else { panic!("not top") };
        assert!(once && cli.json);
        assert_eq!((count, sort, scope), (5, top::Sort::Up, top::Scope::All));
        assert!(Cli::try_parse_from(["throttlectl", "top", "--scope", "lan"]).is_err());
    }

    #[test]
    fn global_options_parse() {
        let cli = Cli::try_parse_from(["throttlectl"]).unwrap();
        assert!(cli.cmd.is_none(), "a bare throttlectl is status");
        assert_eq!((cli.bus.as_str(), cli.timeout, cli.quiet, cli.no_legend), ("system", 25, false, false));
        let cli = Cli::try_parse_from(["throttlectl", "list", "-q", "--no-legend", "--timeout", "3"]).unwrap();
        assert!(matches!(cli.cmd, Some(Cmd::List)) && cli.quiet && cli.no_legend && cli.timeout == 3);
        for bus in ["system", "session", "unix:path=/run/x", "tcp:host=localhost,port=1234"] {
            assert!(Cli::try_parse_from(["throttlectl", "--bus", bus, "status"]).is_ok(), "{bus}");
        }
        for bad in [&["--bus", "nonsense"][..], &["--bus", ""], &["--timeout", "0"], &["--timeout", "x"]] {
            let args = ["throttlectl"].iter().chain(bad.iter()).chain(["status"].iter());
            let e = Cli::try_parse_from(args).err().unwrap_or_else(|| panic!("{bad:?} parsed"));
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every option and argument says what it is for (help and version
    /// are clap's own).
    #[test]
    fn every_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if id != "help" && id != "version" && a.get_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        let mut cmd = Cli::command();
        cmd.build();
        walk(&cmd, "throttlectl", &mut missing);
        assert!(missing.is_empty(), "arguments without help: {missing:?}");
    }
}
