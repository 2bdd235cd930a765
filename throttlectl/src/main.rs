//! throttlectl: a thin client of chadthrottled's D-Bus API. No kernel
//! access of its own; every decision is the daemon's.
mod api;
mod cli;
mod output;
mod top;

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser};
use throttle_api::LimitOptions;
use throttle_common::rate::Rate;

use crate::{
    api::{Client, Failure},
    cli::{Cli, Cmd},
};

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

/// Commands that need no daemon.
fn offline(cmd: &Cmd) -> Option<Result<(), Failure>> {
    Some(match cmd {
        Cmd::Rate { rate } => match rate.parse::<Rate>() {
            Ok(r) => {
                println!("{} B/s ({r})", r.bytes_per_sec());
                Ok(())
            }
            Err(e) => Err(Failure::usage(format!("invalid rate '{rate}': {e}"))),
        },
        Cmd::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "throttlectl", &mut std::io::stdout());
            Ok(())
        }
        Cmd::Manpage => clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()).map_err(Failure::other),
        _ => return None,
    })
}

async fn run(cli: Cli) -> Result<(), Failure> {
    if let Some(done) = offline(&cli.cmd) {
        return done;
    }
    // top connects (and reconnects) by itself.
    if let Cmd::Top { once, count, sort, scope } = cli.cmd {
        return top::run(&cli.bus, top::Options { once, count, sort, scope, json: cli.json }).await;
    }
    let c = Client::connect(&cli.bus).await?;
    let json = cli.json;
    match cli.cmd {
        Cmd::Limit { target, down, up, backend, down_backend, up_backend, tree, exe, unit, cgroup } => {
            let (kind, value) = target_of(target, tree, exe, unit, cgroup)?;
            if down.is_none() && up.is_none() {
                return Err(Failure::usage("give --down and/or --up"));
            }
            let opts = LimitOptions {
                down: down.map(|r| r.bytes_per_sec()),
                up: up.map(|r| r.bytes_per_sec()),
                backend,
                down_backend,
                up_backend,
                hold: None,
            };
            let path = c.manager.limit(kind, &value, &opts).await.map_err(Failure::from)?;
            output::throttle(&c.throttle(&path).await?, json);
            warn_if_unsaved(&c).await;
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
        Cmd::Rate { .. } | Cmd::Completions { .. } | Cmd::Manpage => unreachable!("handled offline"),
        Cmd::Top { .. } => unreachable!("handled before connecting"),
    }
    Ok(())
}

/// The limit applies either way; say so when the daemon could not save it.
async fn warn_if_unsaved(c: &Client) {
    if let Some(w) = c.manager.get_stats().await.ok().as_ref().and_then(output::state_warning) {
        eprintln!("throttlectl: warning: {w}");
    }
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

#[cfg(test)]
mod tests {
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
        let Cmd::Top { once, count, sort, scope } = cli.cmd else { panic!("not top") };
        assert!(once && cli.json);
        assert_eq!((count, sort, scope), (5, top::Sort::Up, top::Scope::All));
        assert!(Cli::try_parse_from(["throttlectl", "top", "--scope", "lan"]).is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
