//! Rules files (`rules.d/*.toml`): each rule one target and its limits,
//! checked for form only; nothing is read from the system.
use std::{
    fs, io,
    ops::Range,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use toml::Spanned;

use super::{backend, io_error, ConfigError, Rule, Source};
use crate::{limit::LimitSpec, target::TargetSpec, Rate};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Option<Spanned<String>>,
    exe: Option<Spanned<String>>,
    cgroup: Option<Spanned<String>>,
    unit: Option<Spanned<String>>,
    /// A cap on a user's processes: a name or a uid.
    user: Option<Spanned<String>>,
    /// A cap on every process (`all = true`).
    all: Option<Spanned<bool>>,
    pid: Option<Spanned<toml::Value>>,
    down: Option<Spanned<toml::Value>>,
    up: Option<Spanned<toml::Value>>,
    backend: Option<Spanned<String>>,
    up_backend: Option<Spanned<String>>,
    down_backend: Option<Spanned<String>>,
    block: Option<Spanned<bool>>,
    quota: Option<Spanned<String>>,
    then: Option<Spanned<String>>,
    when: Option<Spanned<String>>,
    otherwise: Option<Spanned<toml::Value>>,
    priority: Option<Spanned<String>>,
}

pub(super) fn load_rules(dir: &Path) -> Result<Vec<Rule>, ConfigError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(dir, &e)),
    };
    let mut files: Vec<PathBuf> =
        entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "toml")).collect();
    files.sort();
    let mut rules: Vec<Rule> = Vec::new();
    for file in files {
        let text = fs::read_to_string(&file).map_err(|e| io_error(&file, &e))?;
        for (rule, span) in parse_rules(&file, &text)? {
            if let Some(first) = rules.iter().find(|r| r.target == rule.target) {
                let msg = format!("{} is already limited by a rule in {}", rule.target, first.source.display());
                return Err(Source { file: &file, text: &text }.error(Some(span), msg));
            }
            rules.push(rule);
        }
    }
    Ok(rules)
}

/// One rules file; each rule with where it starts.
pub(super) fn parse_rules(file: &Path, text: &str) -> Result<Vec<(Rule, Range<usize>)>, ConfigError> {
    let src = Source { file, text };
    let raw: RulesFile = src.parse()?;
    raw.rule.into_iter().map(|r| rule(&src, r)).collect()
}

fn rule(src: &Source<'_>, raw: Spanned<RawRule>) -> Result<(Rule, Range<usize>), ConfigError> {
    let span = raw.span();
    let r = raw.into_inner();
    if let Some(p) = &r.pid {
        let msg = "pid targets cannot be rules: pids do not survive a reboot; use name, exe, cgroup or unit";
        return Err(src.field(p, "pid", msg));
    }
    let target = target(src, &r, span.clone())?;
    let plan = plan(src, &r)?;
    if let Some(b) = r.block.as_ref().filter(|b| *b.get_ref()) {
        let spec = block_rule(src, &r, b)?;
        let spec = plan.with(spec);
        if let Err(e) = spec.check() {
            return Err(src.error(Some(span), format!("rule: {e}")));
        }
        return Ok((Rule { source: src.file.into(), target, spec }, span));
    }
    let down = rate(src, r.down.as_ref(), "down")?;
    let up = rate(src, r.up.as_ref(), "up")?;
    if down.is_none() && up.is_none() && plan.quota.is_none() && plan.priority.is_none() {
        return Err(
            src.error(Some(span), "rule: give a download (down) or an upload (up) limit, a quota or a priority")
        );
    }
    if let (Some(_), Some(b)) = (&r.backend, r.up_backend.as_ref().or(r.down_backend.as_ref())) {
        return Err(src.field(b, "backend", "give either backend or up_backend/down_backend, not both"));
    }
    for (b, has, field) in
        [(&r.up_backend, up.is_some(), "up_backend"), (&r.down_backend, down.is_some(), "down_backend")]
    {
        if let Some(b) = b.as_ref().filter(|_| !has) {
            return Err(src.field(b, field, "names a backend for a direction without a limit"));
        }
    }
    let spec = LimitSpec {
        down,
        up,
        backend: backend(src, r.backend, "backend")?,
        up_backend: backend(src, r.up_backend, "up_backend")?,
        down_backend: backend(src, r.down_backend, "down_backend")?,
        ..Default::default()
    };
    let spec = plan.with(spec);
    if let Err(e) = spec.check() {
        return Err(src.error(Some(span), format!("rule: {e}")));
    }
    let rule = Rule { source: src.file.into(), target, spec };
    Ok((rule, span))
}

/// `block = true`: the rule blocks, and says nothing else about limits.
fn block_rule(src: &Source<'_>, r: &RawRule, block: &Spanned<bool>) -> Result<LimitSpec, ConfigError> {
    let limits = [&r.down, &r.up].into_iter().any(Option::is_some);
    let backends = [&r.backend, &r.up_backend, &r.down_backend].into_iter().any(Option::is_some);
    if limits || backends {
        return Err(src.field(block, "block", "a blocking rule takes no limits (down, up) and no backend"));
    }
    Ok(LimitSpec { block: true, ..Default::default() })
}

/// A rule's quota and schedule (`quota`, `then`, `when`, `otherwise`).
struct Plan {
    quota: Option<crate::quota::Quota>,
    then: Option<crate::quota::Then>,
    when: Option<crate::schedule::Schedule>,
    otherwise: Option<Rate>,
    priority: Option<crate::limit::Priority>,
}

impl Plan {
    fn with(self, spec: LimitSpec) -> LimitSpec {
        let (quota, then, when, otherwise, priority) =
            (self.quota, self.then, self.when, self.otherwise, self.priority);
        LimitSpec { quota, then, when, otherwise, priority, ..spec }
    }
}

fn plan(src: &Source<'_>, r: &RawRule) -> Result<Plan, ConfigError> {
    fn text<T: std::str::FromStr<Err: std::fmt::Display>>(
        src: &Source<'_>,
        v: &Option<Spanned<String>>,
        field: &str,
    ) -> Result<Option<T>, ConfigError> {
        v.as_ref().map(|s| s.get_ref().parse::<T>().map_err(|e| src.field(s, field, e.to_string()))).transpose()
    }
    Ok(Plan {
        quota: text(src, &r.quota, "quota")?,
        then: text(src, &r.then, "then")?,
        when: text(src, &r.when, "when")?,
        otherwise: rate(src, r.otherwise.as_ref(), "otherwise")?,
        priority: text(src, &r.priority, "priority")?,
    })
}

/// The rule's target, its form checked only: nothing is read from the system.
fn target(src: &Source<'_>, r: &RawRule, span: Range<usize>) -> Result<TargetSpec, ConfigError> {
    let all = r.all.as_ref().filter(|a| *a.get_ref()).map(|a| Spanned::new(a.span(), String::new()));
    let keys: [(&str, Option<&Spanned<String>>); 6] = [
        ("name", r.name.as_ref()),
        ("exe", r.exe.as_ref()),
        ("cgroup", r.cgroup.as_ref()),
        ("unit", r.unit.as_ref()),
        ("user", r.user.as_ref()),
        ("all", all.as_ref()),
    ];
    let given: Vec<_> = keys.iter().filter_map(|(k, v)| v.map(|v| (*k, v))).collect();
    match given[..] {
        [(key, value)] => TargetSpec::parse(key, value.get_ref()).map_err(|e| src.field(value, key, e)),
        [] => Err(src.error(Some(span), "rule: give exactly one target: name, exe, cgroup, unit, user or all = true")),
        [_, (key, value), ..] => {
            Err(src.field(value, key, "a rule has exactly one target (name, exe, cgroup, unit, user or all)"))
        }
    }
}

pub(super) fn rate(
    src: &Source<'_>,
    v: Option<&Spanned<toml::Value>>,
    field: &str,
) -> Result<Option<Rate>, ConfigError> {
    let Some(v) = v else { return Ok(None) };
    let parsed = match v.get_ref() {
        toml::Value::String(s) => s.parse::<Rate>().map_err(|e| e.to_string()),
        toml::Value::Integer(i) => u64::try_from(*i)
            .map_err(|_| "rate must be greater than zero".to_string())
            .and_then(|b| Rate::from_bytes(b).map_err(|e| e.to_string())),
        other => Err(format!("expected a rate such as \"1M\", found a {}", other.type_str())),
    };
    parsed.map(Some).map_err(|e| src.field(v, field, e))
}
