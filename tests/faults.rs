//! Faults in the daemon's own storage: a full state directory and a
//! corrupted state file. Limits must keep working and the failure must be
//! said clearly.
mod common;

use std::{path::Path, process::Command};

use common::*;
use throttled::{
    config,
    manager::{Event, LimitSpec, Manager, ManagerOptions},
    target::Target,
};

/// A tiny tmpfs, unmounted on drop even if the test fails.
struct TinyFs<'a>(&'a Path);

impl<'a> TinyFs<'a> {
    fn mount(at: &'a Path) -> TinyFs<'a> {
        std::fs::create_dir_all(at).unwrap();
        sh(&["mount", "-t", "tmpfs", "-o", "size=16k,mode=0700", "ct-fault", at.to_str().unwrap()]);
        TinyFs(at)
    }

    /// Fills it to the last byte.
    fn fill(&self) {
        let _ = Command::new("dd")
            .args(["if=/dev/zero", &format!("of={}/filler", self.0.display()), "bs=1k", "count=64"])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

impl Drop for TinyFs<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

fn options(dir: &ScratchDir, state: &Path) -> ManagerOptions {
    let conf = dir.path.join("chadthrottled.toml");
    std::fs::write(&conf, format!("state_dir = {:?}\ninterfaces = []\n", state.display().to_string())).unwrap();
    ManagerOptions { loaded: config::load(&conf).unwrap(), config_path: Some(conf), overrides: Default::default() }
}

/// ENOSPC on the state directory: the limit is applied all the same, and
/// the failure to save it is reported as an event with the OS's reason.
#[test]
fn a_full_state_directory_keeps_the_limit() {
    let Some(_g) = begin() else { return };
    let dir = ScratchDir::new("fault-enospc");
    let state = dir.path.join("state");
    let fs = TinyFs::mount(&state);
    let m = Manager::start(&options(&dir, &state)).unwrap();
    fs.fill();
    let events = m.subscribe();
    let mut target = Command::new("sleep").arg("30").spawn().unwrap();
    let spec = LimitSpec { down: Some("1M".parse().unwrap()), ..Default::default() };
    let id = m.limit_pid(target.id(), &spec).expect("the limit must apply even when it cannot be saved");
    assert!(m.kernel_proc(target.id()).is_some_and(|s| s.down != 0), "not in the kernel's map");
    let failed: Vec<String> = events
        .try_iter()
        .filter_map(|e| match e {
            Event::PersistFailed { reason } => Some(reason),
            _ => None,
        })
        .collect();
    assert!(failed.iter().any(|r| r.contains("No space left on device")), "no clear persistence error: {failed:?}");
    m.remove(id).unwrap();
    let _ = target.kill();
    let _ = target.wait();
    drop(m);
}

/// A corrupted state file: the daemon starts, moves the file aside with a
/// warning, and the rules from rules.d still apply.
#[test]
fn a_corrupt_state_file_is_moved_aside_and_rules_still_apply() {
    let Some(_g) = begin() else { return };
    let dir = ScratchDir::new("fault-corrupt");
    let state = dir.path.join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("throttles.json"), b"{\"version\": 1, \"throttles\": [tru").unwrap();
    std::fs::create_dir_all(dir.path.join("rules.d")).unwrap();
    std::fs::write(dir.path.join("rules.d/keep.toml"), "[[rule]]\nname = \"ct-fault-rule\"\ndown = \"1M\"\n").unwrap();
    let m = Manager::start(&options(&dir, &state)).expect("a corrupt state file must not stop the daemon");
    assert!(m.find(&Target::name("ct-fault-rule").unwrap()).is_some(), "the rule was not applied");
    assert!(state.join("throttles.json.corrupt").exists(), "the corrupt file was not kept for inspection");
    let saved = std::fs::read_to_string(state.join("throttles.json")).unwrap();
    assert!(serde_json::from_str::<serde_json::Value>(&saved).is_ok(), "a fresh, valid state was not written");
    drop(m);
}
