//! The saved state's format: every runtime throttle with its limits (a
//! `LimitSpec`, flattened: the fields sit beside `id` and `target` as they
//! always did), the runtime default backends, and the changes the journal
//! holds. Saved state is input too: `PersistedThrottle::check` validates an
//! entry exactly as an API call is validated.
use std::{collections::BTreeSet, path::Path};

use serde::{Deserialize, Serialize};
use throttle_common::text::quote;

use super::statefs;
use crate::{
    config::{Defaults, LinkCapacity},
    limit::LimitSpec,
    target::{Target, TargetError},
};

pub const VERSION: u32 = 1;

/// Where invalid saved entries are set aside, in the state directory.
pub const REJECTED: &str = "throttles.rejected.json";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PersistedThrottle {
    pub id: u32,
    pub target: Target,
    /// Each limited direction's rate and backend (never `backend`).
    #[serde(flatten)]
    pub spec: LimitSpec,
    /// Set by root, a limit-any caller or the daemon: lifting it needs
    /// limit-any. A record from before this field is taken as admin-set.
    #[serde(default = "admin_set")]
    pub admin: bool,
    /// The uid whose call created it (its per-user share); `None`: the daemon.
    #[serde(default)]
    pub creator: Option<u32>,
}

fn admin_set() -> bool {
    true
}

/// Why a saved entry is not applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Unusable {
    /// Its process (pid and start time) is gone: nothing to warn about.
    #[error("no such process: {0}")]
    Gone(u32),
    /// As an API call would be refused: `invalid argument: ...`.
    #[error("invalid argument: {0}")]
    Invalid(String),
}

impl PersistedThrottle {
    /// The validation of a saved entry: the API's own (`Target::revalidate`,
    /// `LimitSpec::check`), plus a usable, unique id.
    pub fn check(&self, seen: &mut BTreeSet<u32>) -> Result<(), Unusable> {
        if self.id == 0 || self.id == u32::MAX || !seen.insert(self.id) {
            return Err(Unusable::Invalid(format!("id {} is out of range or saved twice", self.id)));
        }
        match self.target.revalidate() {
            Err(TargetError::NoSuchProcess(p)) => return Err(Unusable::Gone(p)),
            Err(TargetError::Invalid(m)) => return Err(Unusable::Invalid(m)),
            Ok(_) => {}
        }
        self.spec.check().map_err(|e| Unusable::Invalid(e.to_string()))?;
        let s = &self.spec;
        for b in [&s.backend, &s.down_backend, &s.up_backend].into_iter().flatten() {
            if b.len() > 64 {
                return Err(Unusable::Invalid(format!("backend {} is not a backend", quote(b))));
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub version: u32,
    /// The last journal entry this state includes.
    #[serde(default)]
    pub seq: u64,
    pub next_id: u32,
    /// Default backends chosen at runtime (they override the config's).
    pub defaults: Defaults,
    /// The link capacity set at runtime (it overrides the config's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkCapacity>,
    pub throttles: Vec<PersistedThrottle>,
}

/// One saved change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// A runtime throttle as it is now, new or changed.
    Put(PersistedThrottle),
    /// A throttle that is saved no more.
    Delete(u32),
    /// The default backends chosen at runtime.
    Defaults(Defaults),
    /// The link capacity set at runtime.
    Link(LinkCapacity),
}

/// Invalid saved entries go to `throttles.rejected.json` (one JSON line
/// each, with the reason), so the evidence outlives the next snapshot.
pub fn set_aside(state_dir: &Path, rejected: &[serde_json::Value]) {
    if rejected.is_empty() {
        return;
    }
    let path = state_dir.join(REJECTED);
    let res = (|| {
        use std::io::Write;
        let mut f = statefs::open_append(&path)?;
        rejected.iter().try_for_each(|r| writeln!(f, "{r}"))
    })();
    match res {
        Ok(()) => tracing::warn!(entries = rejected.len(), path = %path.display(), "invalid saved throttles set aside"),
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "could not set invalid saved throttles aside"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved(id: u32, target: Target) -> PersistedThrottle {
        let spec = LimitSpec { down: Some("1M".parse().unwrap()), ..Default::default() };
        PersistedThrottle { id, target, spec, admin: true, creator: None }
    }

    #[test]
    fn saved_entries_are_checked_like_api_calls() {
        let mut seen = BTreeSet::new();
        let ok = saved(1, Target::name("firefox").unwrap());
        assert!(ok.check(&mut seen).is_ok());
        assert!(ok.check(&mut seen).is_err(), "an id saved twice");
        for id in [0, u32::MAX] {
            assert!(saved(id, Target::name("x").unwrap()).check(&mut seen).is_err(), "id {id}");
        }
        let mut ignored = saved(5, Target::name("x").unwrap());
        ignored.spec.up_backend = Some("tc_htb".into());
        assert!(ignored.check(&mut seen).is_err(), "a backend for a direction without a limit");
        let mut none = saved(6, Target::name("x").unwrap());
        none.spec.down = None;
        assert!(none.check(&mut seen).is_err(), "no limit at all");
        let mut long = saved(7, Target::name("x").unwrap());
        long.spec.down_backend = Some("b".repeat(100_000));
        let e = long.check(&mut seen).unwrap_err().to_string();
        assert!(e.len() < 200, "{e}");
        let bad = saved(8, Target::Name { name: "a/b".into() });
        assert!(matches!(bad.check(&mut seen), Err(Unusable::Invalid(_))));
    }

    #[test]
    fn the_record_format_is_unchanged() {
        let t = saved(3, Target::name("firefox").unwrap());
        let text = serde_json::to_string(&t).unwrap();
        assert_eq!(
            text,
            r#"{"id":3,"target":{"kind":"name","name":"firefox"},"down":1048576,"up":null,"down_backend":null,"up_backend":null,"admin":true,"creator":null}"#
        );
        assert_eq!(serde_json::from_str::<PersistedThrottle>(&text).unwrap(), t);
    }
}
