//! The rules (`rules.d`) as the manager takes them: resolved all or
//! nothing, validated against the backends before any change, and compared
//! with the throttles they made, so a reload applies only the difference.
use super::{
    pool::Pool,
    table::{Origin, Throttle},
    ManagerError,
};
use crate::{
    config::{Defaults, Rule},
    target::Target,
};
use throttle_common::Direction;

/// A rule with its target resolved for the table (a cgroup path given
/// with the mount point in front loses it).
pub(super) struct Resolved<'a> {
    pub rule: &'a Rule,
    pub target: Target,
}

/// Every rule's target resolved, all or nothing; two rules that resolve to
/// the same target are refused, as the same target written twice is.
pub(super) fn resolve_rules(rules: &[Rule]) -> Result<Vec<Resolved<'_>>, ManagerError> {
    let mut out: Vec<Resolved<'_>> = Vec::with_capacity(rules.len());
    for rule in rules {
        let target = rule.target.clone().resolve().map_err(|e| invalid(rule, e))?;
        if let Some(first) = out.iter().find(|r| r.target == target) {
            let e = format!("{target} is already limited by a rule in {}", first.rule.source.display());
            return Err(invalid(rule, e));
        }
        out.push(Resolved { rule, target });
    }
    Ok(out)
}

/// What is wrong with `rule`, naming its file and target.
fn invalid(rule: &Rule, e: impl std::fmt::Display) -> ManagerError {
    ManagerError::InvalidArgument(format!("{}: rule for {}: {e}", rule.source.display(), rule.target))
}

/// Every backend a rule names must be usable, checked before any change.
pub(super) fn validate_rules(pool: &Pool, rules: &[Resolved<'_>]) -> Result<(), ManagerError> {
    for Resolved { rule: r, .. } in rules {
        let spec = &r.spec;
        spec.check().map_err(|e| invalid(r, e))?;
        for dir in Direction::BOTH.into_iter().filter(|d| spec.rate(*d).is_some()) {
            pool.resolve(spec.backend_for(dir), dir).map_err(|e| invalid(r, e))?;
        }
    }
    Ok(())
}

/// Whether `t` (`None`: pending) is what `rule` makes it already.
pub(super) fn rule_unchanged(t: Option<&Throttle>, rule: &Rule, pool: &Pool) -> bool {
    let Some(t) = t else { return false };
    let spec = &rule.spec;
    let same_origin = t.origin == Origin::Rule(rule.source.clone());
    same_origin
        && Direction::BOTH.into_iter().all(|d| {
            let l = t.limits.get(&d);
            l.map(|l| l.rate) == spec.rate(d)
                && spec.backend_for(d).is_none_or(|b| l.is_some_and(|l| pool.name(l.backend) == b))
        })
}

/// A limit the rule no longer has (changes cannot remove a direction).
pub(super) fn drops_direction(t: Option<&Throttle>, rule: &Rule) -> bool {
    t.is_some_and(|t| t.limits.keys().any(|d| rule.spec.rate(*d).is_none()))
}

/// Runtime choices override the config, per direction.
pub(super) fn effective_defaults(config: &Defaults, runtime: &Defaults) -> Defaults {
    Defaults { up: runtime.up.clone().or(config.up.clone()), down: runtime.down.clone().or(config.down.clone()) }
}
