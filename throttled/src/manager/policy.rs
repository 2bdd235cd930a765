//! Who may change which throttle. polkit answers "may this caller use
//! limit-own / limit-any"; this module's rules decide which of the two a
//! request needs (`ThrottleTable::need` applies them to the daemon's own
//! bookkeeping), so the D-Bus layer only asks.
//!
//! - `limit-own` covers the caller's own processes, and it only ever slows
//!   them down: it may add a throttle or a direction, or lower a rate. A
//!   throttle made or last changed with more authority (root, limit-any,
//!   the rules) is *admin-set*: raising one of its rates, dropping its
//!   descendants, moving it to another backend or removing it needs
//!   limit-any. Nor does a caller's own throttle loosen an admin-set one
//!   that also matches the process (see `coverage`).
//! - Under limit-own only `ebpf` or the direction's default backend may be
//!   named: `tc_htb` and `ifb_tc` rebuild an interface's root qdisc.
//! - Every non-root uid may have created at most `limits.per_user`
//!   throttles at a time, so no user can take every kernel slot.
use std::collections::BTreeMap;

use throttle_common::{rate::Rate, Direction};

use super::{LimitSpec, ManagerError, ThrottleId};
use crate::{kernel::procfs, target::Target};

/// What a caller was authorized for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    /// `limit-own`.
    Own,
    /// Root, or `limit-any`.
    Any,
}

/// Who asks for a change, and with which authority.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Actor {
    pub uid: u32,
    pub grant: Grant,
}

impl Actor {
    pub const ROOT: Actor = Actor { uid: 0, grant: Grant::Any };
}

/// Whether a throttle is admin-set, and whose share it counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Made {
    /// Made or last changed by root, limit-any or the daemon: a limit-own
    /// caller may only tighten it.
    pub admin: bool,
    /// The uid whose call created it; `None`: the daemon (rules, --pid).
    pub creator: Option<u32>,
}

impl Made {
    /// As made by `by` (`None`: the daemon itself).
    pub fn by(by: Option<Actor>) -> Made {
        Made { admin: by.is_none_or(|a| a.grant == Grant::Any), creator: by.map(|a| a.uid) }
    }
}

/// The authority a request needs; for `Any`, why (for the error message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Need {
    Own,
    Any(String),
}

/// A change a caller asks for, as the policy judges it.
#[derive(Clone, Debug)]
pub enum Request {
    /// Manager.Limit: a new throttle, or a change of the target's throttle.
    Limit(Target, LimitSpec),
    /// Throttle.SetLimits.
    Change(ThrottleId, LimitSpec),
    Remove(ThrottleId),
}

/// Whose some processes are, for a caller: all the caller's, at least one
/// another user's, or neither (some are unknown, e.g. gone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership {
    Own,
    Other,
    Unknown,
}

impl Ownership {
    /// From each process's owner, as far as known.
    pub fn of(uid: u32, owners: impl IntoIterator<Item = Option<u32>>) -> Ownership {
        let mut all_own = true;
        for owner in owners {
            match owner {
                Some(o) if o != uid => return Ownership::Other,
                Some(_) => {}
                None => all_own = false,
            }
        }
        if all_own {
            Ownership::Own
        } else {
            Ownership::Unknown
        }
    }
}

/// An existing throttle, as far as the policy cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Existing {
    pub id: ThrottleId,
    pub admin: bool,
    pub tree: bool,
    /// Per limited direction: its rate and backend.
    pub limits: BTreeMap<Direction, (Rate, &'static str)>,
}

/// What limit-own may name as a backend: never one that rebuilds an
/// interface's root qdisc, unless it is already the default.
pub fn backend_allowed(name: &str, defaults: &[&str]) -> bool {
    name == "ebpf" || defaults.contains(&name)
}

/// Limiting (or changing) a target. `owns`: the target is one of the
/// caller's processes; `tree`: the request covers descendants.
pub fn for_limit(owns: bool, tree: bool, existing: Option<&Existing>, spec: &LimitSpec, defaults: &[&str]) -> Need {
    if !owns {
        return Need::Any("the target is not a process of yours".into());
    }
    let named = [&spec.backend, &spec.up_backend, &spec.down_backend];
    if let Some(b) = named.into_iter().flatten().find(|b| !backend_allowed(b, defaults)) {
        let b: String = b.chars().take(16).collect();
        return Need::Any(format!("backend {b:?} rebuilds the interface's root qdisc"));
    }
    let Some(e) = existing.filter(|e| e.admin) else { return Need::Own };
    let admin = |what: String| Need::Any(format!("throttle {} was set by an administrator: {what}", e.id));
    if e.tree && !tree {
        return admin("dropping its descendants".into());
    }
    // A schedule or a quota's action can lift or loosen its limits.
    if spec.is_planned() {
        return admin("giving it a schedule or a quota".into());
    }
    if spec.priority.is_some() {
        return admin("changing its priority".into());
    }
    for dir in Direction::BOTH {
        let (Some(rate), Some((now, backend))) = (spec.rate(dir), e.limits.get(&dir)) else { continue };
        if rate.bytes_per_sec() > now.bytes_per_sec() {
            return admin(format!("raising its {dir} limit"));
        }
        // A block lowers every limit, whichever backend held it.
        if !spec.block && spec.backend_for(dir).is_some_and(|b| b != *backend) {
            return admin(format!("moving its {dir} limit to another backend"));
        }
    }
    Need::Own
}

/// Removing a throttle.
pub fn for_remove(owns: bool, existing: &Existing) -> Need {
    match (owns, existing.admin) {
        (false, _) => Need::Any("the target is not a process of yours".into()),
        (true, true) => Need::Any(format!("throttle {} was set by an administrator", existing.id)),
        (true, false) => Need::Own,
    }
}

/// Whether `uid` may create one more throttle, having `made` already.
pub fn quota(uid: u32, made: usize, per_user: u32) -> Result<(), ManagerError> {
    match uid != 0 && made >= per_user as usize {
        true => Err(ManagerError::QuotaExceeded { uid, per_user }),
        false => Ok(()),
    }
}

/// Whether `target` is a live process of `uid`, or `uid`'s own user cap
/// (root owns everything; nobody else owns the `all` cap).
pub fn owns(uid: u32, target: &Target) -> bool {
    if let Target::User { uid: of } = target {
        return uid == 0 || *of == uid;
    }
    uid == 0 || target.root().is_some_and(|r| procfs::uid(r.pid).ok() == Some(uid) && procfs::is_alive(&r))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(s: &str) -> Rate {
        s.parse().unwrap()
    }

    fn down(r: &str) -> LimitSpec {
        LimitSpec { down: Some(rate(r)), ..Default::default() }
    }

    #[test]
    fn ownership_needs_every_process_and_names_another_users_first() {
        assert_eq!(Ownership::of(1000, [Some(1000), Some(1000)]), Ownership::Own);
        assert_eq!(Ownership::of(1000, [Some(1000), None]), Ownership::Unknown);
        assert_eq!(Ownership::of(1000, [None, Some(0)]), Ownership::Other);
        assert_eq!(Ownership::of(1000, []), Ownership::Own);
    }

    fn existing(admin: bool, tree: bool) -> Existing {
        let limits = BTreeMap::from([(Direction::Down, (rate("100K"), "ebpf"))]);
        Existing { id: 7, admin, tree, limits }
    }

    const DEFAULTS: [&str; 2] = ["ebpf", "ebpf"];

    fn needs_any(n: Need, why: &str) {
        match n {
            Need::Any(w) => assert!(w.contains(why), "{w:?} should say {why:?}"),
            Need::Own => panic!("limit-own should not be enough ({why})"),
        }
    }

    #[test]
    fn a_user_owns_their_own_cap_and_only_root_the_all_cap() {
        assert!(owns(1000, &Target::User { uid: 1000 }));
        assert!(!owns(1000, &Target::User { uid: 1001 }));
        assert!(!owns(1000, &Target::All));
        assert!(owns(0, &Target::All) && owns(0, &Target::User { uid: 1000 }));
    }

    #[test]
    fn another_users_target_needs_limit_any() {
        needs_any(for_limit(false, false, None, &down("1M"), &DEFAULTS), "not a process of yours");
        needs_any(for_remove(false, &existing(false, false)), "not a process of yours");
    }

    #[test]
    fn limit_own_only_slows_an_admin_set_throttle_down() {
        let admin = existing(true, false);
        assert_eq!(for_limit(true, false, Some(&admin), &down("50K"), &DEFAULTS), Need::Own, "lowering");
        assert_eq!(for_limit(true, false, Some(&admin), &down("100K"), &DEFAULTS), Need::Own, "the same");
        let up = LimitSpec { up: Some(rate("1024G")), ..Default::default() };
        assert_eq!(for_limit(true, false, Some(&admin), &up, &DEFAULTS), Need::Own, "a new direction");
        assert_eq!(for_limit(true, true, Some(&admin), &down("50K"), &DEFAULTS), Need::Own, "adding descendants");
        needs_any(for_limit(true, false, Some(&admin), &down("1024G"), &DEFAULTS), "raising its download limit");
        needs_any(for_remove(true, &admin), "set by an administrator");
        let tree = existing(true, true);
        needs_any(for_limit(true, false, Some(&tree), &down("50K"), &DEFAULTS), "dropping its descendants");
        // A schedule, a quota or a priority can lift or loosen it.
        let when = LimitSpec { when: Some("* 09:00-17:00".parse().unwrap()), ..down("50K") };
        needs_any(for_limit(true, false, Some(&admin), &when, &DEFAULTS), "a schedule or a quota");
        let prio = LimitSpec { priority: Some(crate::limit::Priority::Critical), ..Default::default() };
        needs_any(for_limit(true, false, Some(&admin), &prio, &DEFAULTS), "changing its priority");
        assert_eq!(for_limit(true, false, None, &prio, &DEFAULTS), Need::Own, "one's own new throttle");
    }

    #[test]
    fn an_admin_set_throttle_stays_on_its_backend() {
        let mut admin = existing(true, false);
        admin.limits.insert(Direction::Down, (rate("100K"), "ifb_tc"));
        let defaults = ["ebpf", "ifb_tc"];
        let to_ebpf = LimitSpec { backend: Some("ebpf".into()), ..down("50K") };
        needs_any(for_limit(true, false, Some(&admin), &to_ebpf, &defaults), "another backend");
        let same = LimitSpec { down_backend: Some("ifb_tc".into()), ..down("50K") };
        assert_eq!(for_limit(true, false, Some(&admin), &same, &defaults), Need::Own);
    }

    #[test]
    fn a_throttle_of_ones_own_is_ones_own() {
        let own = existing(false, true);
        assert_eq!(for_limit(true, false, Some(&own), &down("1024G"), &DEFAULTS), Need::Own);
        assert_eq!(for_remove(true, &own), Need::Own);
        let to_ebpf = LimitSpec { backend: Some("ebpf".into()), ..down("2M") };
        assert_eq!(for_limit(true, false, Some(&own), &to_ebpf, &DEFAULTS), Need::Own);
    }

    #[test]
    fn limit_own_never_picks_a_qdisc_backend() {
        for (key, name) in [("backend", "tc_htb"), ("up_backend", "tc_htb"), ("down_backend", "ifb_tc")] {
            let mut spec = down("1M");
            let slot = match key {
                "backend" => &mut spec.backend,
                "up_backend" => &mut spec.up_backend,
                _ => &mut spec.down_backend,
            };
            *slot = Some(name.into());
            needs_any(for_limit(true, false, None, &spec, &DEFAULTS), "root qdisc");
        }
        let spec = LimitSpec { down_backend: Some("ifb_tc".into()), ..down("1M") };
        assert_eq!(for_limit(true, false, None, &spec, &["ebpf", "ifb_tc"]), Need::Own, "the default is fine");
        let spec = LimitSpec { backend: Some("x".repeat(1000)), ..down("1M") };
        let Need::Any(why) = for_limit(true, false, None, &spec, &DEFAULTS) else { panic!() };
        assert!(why.len() < 100, "a long name is quoted briefly: {why}");
    }

    #[test]
    fn each_user_has_a_share_of_the_slots() {
        assert!(quota(1000, 2, 3).is_ok());
        let e = quota(1000, 3, 3).unwrap_err();
        assert!(matches!(e, ManagerError::QuotaExceeded { uid: 1000, per_user: 3 }), "{e}");
        assert!(e.to_string().contains("3 throttles"), "{e}");
        assert!(quota(0, 10_000, 3).is_ok(), "root is never capped");
        assert!(quota(1000, 0, 0).is_err(), "0: only root may limit");
    }
}
