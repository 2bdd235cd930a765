//! What the benchmark programs share with each other.
use throttle_testkit::ScratchDir;
use throttled::manager::ManagerOptions;

/// Manager options with a private state directory and, for the interface
/// backends, only the given interfaces (never the host's).
pub fn options(state: &ScratchDir, interfaces: &[&str]) -> ManagerOptions {
    let mut o = ManagerOptions::default();
    o.loaded.config.state_dir = state.path.clone();
    o.loaded.config.interfaces = Some(interfaces.iter().map(|s| s.to_string()).collect());
    o
}

pub mod tc_script;
