//! Dynamic shell completions. The installed script (`throttlectl
//! completions SHELL`) calls back into throttlectl (`COMPLETE=SHELL
//! throttlectl -- WORDS`), which answers from what is running now: the
//! daemon's backends and throttles, /proc's processes, the cgroup tree's
//! units. Each source fails quietly to no candidates, and the daemon is
//! asked under a short timeout, so a stuck bus never stalls a shell.
use std::{ffi::OsStr, path::Path, time::Duration};

use clap_complete::{
    engine::{ArgValueCandidates, ArgValueCompleter, CompletionCandidate},
    env::{Bash, EnvCompleter, Fish, Zsh},
    Shell,
};
use throttle_common::mountinfo::cgroup2_mount;

use crate::api::Client;

/// The environment variable the scripts set to ask for candidates.
pub const VAR: &str = "COMPLETE";
/// How long a completion waits for the daemon.
const DAEMON_TIMEOUT: Duration = Duration::from_millis(1500);
/// How deep the cgroup tree is walked for units and cgroup paths.
const CGROUP_DEPTH: u32 = 6;

/// Answers a completion request and exits, when the shell made one.
pub fn answer_if_asked() {
    clap_complete::CompleteEnv::with_factory(crate::cli::command).var(VAR).complete();
}

/// The script that registers the completions with `shell`.
pub fn registration(shell: Shell, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    let env: &dyn EnvCompleter = match shell {
        Shell::Bash => &Bash,
        Shell::Zsh => &Zsh,
        Shell::Fish => &Fish,
        Shell::Elvish => &clap_complete::env::Elvish,
        Shell::PowerShell => &clap_complete::env::Powershell,
        _ => return Err(std::io::Error::other(format!("no completions for {shell}"))),
    };
    // The installed script calls whichever throttlectl is on PATH.
    env.write_registration(VAR, "throttlectl", "throttlectl", "throttlectl", out)?;
    if shell == Shell::Zsh {
        // Installed as site-functions/_throttlectl, the file is autoloaded as
        // the function _throttlectl on the first Tab: complete right away.
        writeln!(
            out,
            "if [ \"$funcstack[1]\" = \"_throttlectl\" ]; then\n    _clap_dynamic_completer_throttlectl \"$@\"\nfi"
        )?;
    }
    Ok(())
}

pub fn backends() -> ArgValueCandidates {
    ArgValueCandidates::new(backend_candidates)
}

/// Throttle ids (and the targets they limit, as help).
pub fn throttles() -> ArgValueCandidates {
    ArgValueCandidates::new(|| throttle_candidates(false))
}

/// Throttle ids, their pids and their targets: what `unlimit` accepts.
pub fn throttle_targets() -> ArgValueCandidates {
    ArgValueCandidates::new(|| throttle_candidates(true))
}

/// Running pids (with their names as help) and process names.
pub fn processes() -> ArgValueCompleter {
    ArgValueCompleter::new(|current: &OsStr| {
        let current = current.to_string_lossy();
        // A digit means a pid: listing every name as well would only bury it.
        let numeric = current.chars().next().is_some_and(|c| c.is_ascii_digit());
        let procs = processes_now();
        let mut out: Vec<_> = match numeric {
            true => procs
                .iter()
                .map(|(pid, comm)| CompletionCandidate::new(pid.to_string()).help(Some(comm.into())))
                .collect(),
            false => {
                let mut names: Vec<&String> = procs.iter().map(|(_, comm)| comm).collect();
                names.sort();
                names.dedup();
                names.into_iter().map(CompletionCandidate::new).collect()
            }
        };
        out.retain(|c| c.get_value().to_string_lossy().starts_with(current.as_ref()));
        out
    })
}

/// systemd units that have a cgroup now.
pub fn units() -> ArgValueCandidates {
    ArgValueCandidates::new(|| {
        let mut names: Vec<String> = cgroup_dirs().into_iter().filter_map(|p| unit_name(&p)).collect();
        names.sort();
        names.dedup();
        names.into_iter().map(CompletionCandidate::new).collect()
    })
}

/// cgroup v2 paths, as the daemon takes them (from the hierarchy's root).
pub fn cgroups() -> ArgValueCandidates {
    ArgValueCandidates::new(|| cgroup_dirs().into_iter().map(CompletionCandidate::new).collect())
}

fn backend_candidates() -> Vec<CompletionCandidate> {
    let listed = ask_daemon(|c| async move { c.manager.list_backends().await.ok() }).flatten();
    let names = match listed {
        Some(list) => list.into_iter().filter_map(|b| b.name).collect(),
        // No daemon: the backends every build has.
        None => vec!["ebpf".to_string(), "tc_htb".to_string(), "ifb_tc".to_string()],
    };
    names.into_iter().map(CompletionCandidate::new).collect()
}

fn throttle_candidates(with_targets: bool) -> Vec<CompletionCandidate> {
    let Some(Ok(list)) = ask_daemon(|c| async move { c.throttles().await }) else { return Vec::new() };
    let mut out = Vec::new();
    for t in list {
        let about = format!("{} {}", t.kind, t.target);
        out.push(CompletionCandidate::new(t.id.to_string()).help(Some(about.clone().into())));
        if with_targets {
            out.push(CompletionCandidate::new(t.target.clone()).help(Some(format!("throttle {}", t.id).into())));
        }
    }
    out
}

/// Runs `ask` on a fresh connection to the system bus, under the
/// completion timeout; `None` when the daemon cannot be asked.
fn ask_daemon<T, F, Fut>(ask: F) -> Option<T>
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
    rt.block_on(async {
        let client = Client::connect("system", DAEMON_TIMEOUT).await.ok()?;
        tokio::time::timeout(DAEMON_TIMEOUT, ask(client)).await.ok()
    })
}

/// (pid, name) of every process whose /proc entry is readable now.
fn processes_now() -> Vec<(u32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut out: Vec<(u32, String)> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            Some((pid, comm.trim_end_matches('\n').to_string()))
        })
        .filter(|(_, comm)| !comm.is_empty())
        .collect();
    out.sort();
    out
}

/// Every cgroup directory under the v2 root, as "/a/b" paths.
fn cgroup_dirs() -> Vec<String> {
    let Some(root) = std::fs::read_to_string("/proc/self/mountinfo").ok().and_then(|m| cgroup2_mount(&m)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    walk(&root, &root, CGROUP_DEPTH, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, depth: u32, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = e.path();
        if let Ok(rel) = path.strip_prefix(root) {
            out.push(format!("/{}", rel.display()));
        }
        if depth > 0 {
            walk(root, &path, depth - 1, out);
        }
    }
}

/// The unit a cgroup path ends in, if it is one (services, scopes, slices).
fn unit_name(cgroup: &str) -> Option<String> {
    let last = cgroup.rsplit('/').next()?;
    [".service", ".scope", ".slice", ".socket", ".mount", ".swap"]
        .iter()
        .any(|s| last.ends_with(s))
        .then(|| last.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_come_from_the_last_component() {
        assert_eq!(unit_name("/system.slice/backup.service").as_deref(), Some("backup.service"));
        assert_eq!(unit_name("/user.slice").as_deref(), Some("user.slice"));
        assert_eq!(unit_name("/ct-lab/leaf"), None);
    }

    #[test]
    fn this_process_is_among_the_processes() {
        let me = std::process::id();
        assert!(processes_now().iter().any(|(pid, _)| *pid == me));
    }

    #[test]
    fn every_shell_gets_a_script_that_calls_back() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut buf = Vec::new();
            registration(shell, &mut buf).unwrap();
            let script = String::from_utf8(buf).unwrap();
            assert!(script.contains("COMPLETE") && script.contains("throttlectl"), "{shell}: {script}");
        }
    }
}
