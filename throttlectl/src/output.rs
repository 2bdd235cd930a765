//! Human tables and JSON (a stable schema: field names are the API's).
use std::io::IsTerminal as _;

use throttle_api::{BackendStatus, Stats};
use throttle_common::rate::Rate;

use crate::api::ThrottleView;

/// How to print: JSON or text; with the tables' header lines; with the
/// informational lines; with symbols or their ASCII stand-ins.
#[derive(Clone, Copy, Debug, Default)]
pub struct Style {
    pub json: bool,
    pub legend: bool,
    pub quiet: bool,
    pub unicode: bool,
}

impl Style {
    /// The symbol, or its ASCII stand-in when stdout is not a UTF-8 terminal.
    pub fn sym(&self, unicode: &'static str, ascii: &'static str) -> &'static str {
        if self.unicode {
            unicode
        } else {
            ascii
        }
    }

    /// An informational line (a confirmation), unless --quiet or --json
    /// (stdout then holds only the JSON).
    pub fn info(&self, line: impl std::fmt::Display) {
        if !self.quiet && !self.json {
            println!("{line}");
        }
    }
}

/// Symbols only on a terminal whose locale is UTF-8.
pub fn unicode_stdout() -> bool {
    std::io::stdout().is_terminal() && utf8_locale(|k| std::env::var(k).ok())
}

/// The locale as POSIX picks it for LC_CTYPE: the first set of LC_ALL,
/// LC_CTYPE, LANG; UTF-8 if its codeset says so.
pub fn utf8_locale(var: impl Fn(&str) -> Option<String>) -> bool {
    let locale = ["LC_ALL", "LC_CTYPE", "LANG"].into_iter().find_map(|k| var(k).filter(|v| !v.is_empty()));
    locale.is_some_and(|l| {
        let l = l.to_ascii_lowercase();
        l.contains("utf-8") || l.contains("utf8")
    })
}

/// One JSON document on a line of stdout.
pub fn json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string(v).unwrap_or_default());
}

pub fn rate(b: u64) -> String {
    Rate::from_bytes(b).map_or("-".into(), |r| r.to_string())
}

pub fn throttle(t: &ThrottleView, st: &Style) {
    if st.json {
        json(t);
    } else {
        st.info(throttle_line(t));
    }
}

pub fn throttle_line(t: &ThrottleView) -> String {
    let procs = match t.pids.len() {
        0 if t.status != "active" => format!("{}: {}", t.status, t.status_detail),
        0 if t.kind == "all" => "every process".to_string(),
        0 => "no process matches now; it applies to matching processes when they start".to_string(),
        n => format!("{n} process(es)"),
    };
    let target = target_cell(t);
    let plan = match plan_cell(t) {
        p if p.is_empty() => String::new(),
        p => format!(" [{p}]"),
    };
    if t.blocked {
        return format!("throttle {}: {} {target} BLOCKED{plan} ({procs})", t.id, t.kind);
    }
    format!("throttle {}: {} {target} down {} up {}{plan} ({procs})", t.id, t.kind, rate(t.down), rate(t.up))
}

/// A throttle's target as shown: "*" for the `all` cap (it has no
/// value); control characters in names are never written raw.
fn target_cell(t: &ThrottleView) -> String {
    match t.kind.as_str() {
        "all" => "*".to_string(),
        _ => throttle_common::text::escape(&t.target, usize::MAX),
    }
}

/// A throttle's quota and schedule, short: "5G/month 42% then 256K,
/// window closed" ("" with neither).
pub fn plan_cell(t: &ThrottleView) -> String {
    let mut parts = Vec::new();
    if !t.priority.is_empty() && t.priority != "normal" {
        parts.push(t.priority.clone());
    }
    let t = &t.plan;
    if !t.quota.is_empty() {
        let used = match (t.quota_used, t.quota_exceeded) {
            (_, true) => "USED UP".to_string(),
            (Some(u), false) if t.quota_bytes > 0 => format!("{:.0}%", u as f64 * 100.0 / t.quota_bytes as f64),
            _ => "?%".to_string(),
        };
        parts.push(format!("{} {used} then {}", t.quota, t.quota_then));
    }
    if !t.schedule.is_empty() {
        parts.push(format!("window {}", if t.schedule_active { "open" } else { "closed" }));
    }
    parts.join(", ")
}

pub fn list(ts: &[ThrottleView], st: &Style) {
    if st.json {
        json(&ts);
        return;
    }
    if ts.is_empty() {
        if st.legend {
            println!("no throttles");
        }
        return;
    }
    if st.legend {
        println!(
            "{:>4}  {:<6} {:<20} {:>8} {:<8} {:>8} {:<8} {:<14} {:<16} {:<8} PIDS",
            "ID", "KIND", "TARGET", "DOWN", "BACKEND", "UP", "BACKEND", "ORIGIN", "PLAN", "CAPS"
        );
    }
    for t in ts {
        let pids: Vec<String> = t.pids.iter().map(u32::to_string).collect();
        let pids = match t.status.as_str() {
            "active" => pids.join(","),
            other => format!("{}: {}", other.to_uppercase(), t.status_detail),
        };
        let plan = match plan_cell(t) {
            p if p.is_empty() => "-".to_string(),
            p => p,
        };
        let caps: Vec<String> = t.caps.iter().map(u32::to_string).collect();
        let caps = if caps.is_empty() { "-".to_string() } else { caps.join(",") };
        println!(
            "{:>4}  {:<6} {:<20} {:>8} {:<8} {:>8} {:<8} {:<14} {:<16} {:<8} {}",
            t.id,
            t.kind,
            target_cell(t),
            limit_cell(t, t.down),
            t.down_backend,
            limit_cell(t, t.up),
            t.up_backend,
            origin_label(&t.origin),
            plan,
            caps,
            pids
        );
    }
}

/// A direction's limit in `list`: BLOCKED for a block (its limit reads 0).
fn limit_cell(t: &ThrottleView, bytes: u64) -> String {
    if t.blocked {
        "BLOCKED".into()
    } else {
        rate(bytes)
    }
}

/// The rules file a throttle came from, if a rule made it.
pub fn rule_file(origin: &str) -> Option<String> {
    (origin != "runtime" && origin != "held" && !origin.is_empty())
        .then(|| throttle_common::text::escape(origin, usize::MAX))
}

/// `list`'s ORIGIN column: runtime, held, or the rules file's name.
fn origin_label(origin: &str) -> String {
    match rule_file(origin) {
        Some(path) => format!("rule:{}", path.rsplit('/').next().unwrap_or(&path)),
        None => origin.to_string(),
    }
}

pub fn backends(bs: &[BackendStatus], st: &Style) {
    let rows: Vec<serde_json::Value> = bs
        .iter()
        .map(|b| {
            serde_json::json!({
                "name": b.name,
                "directions": b.directions,
                "priority": b.priority,
                "available": b.available,
                "reason": b.reason,
                "default_for": b.default_for,
                "active": b.active,
                "pids": b.pids,
                "health": b.health,
                "health_detail": b.health_detail,
            })
        })
        .collect();
    if st.json {
        println!("{}", serde_json::Value::Array(rows));
        return;
    }
    if st.legend {
        println!(
            "   {:<8} {:<10} {:<9} {:>6}  {:<8} AVAILABILITY",
            "BACKEND", "DIRECTIONS", "PRIORITY", "ACTIVE", "HEALTH"
        );
    }
    for r in rows {
        let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
        let list = |k: &str| {
            r[k].as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join("+"))
                .unwrap_or_default()
        };
        // ⭐ is two columns wide; its stand-in is padded to match.
        let star = if list("default_for").is_empty() { "  " } else { st.sym("⭐", "* ") };
        let avail = if r["available"].as_bool().unwrap_or(false) {
            st.sym("✅", "yes").to_string()
        } else {
            format!("{} {}", st.sym("❌", "no"), s("reason"))
        };
        let default =
            if list("default_for").is_empty() { String::new() } else { format!(" (default: {})", list("default_for")) };
        println!(
            "{star} {:<8} {:<10} {:<9} {:>6}  {:<8} {avail}{default}",
            s("name"),
            list("directions"),
            s("priority"),
            r["active"].as_u64().unwrap_or(0),
            s("health")
        );
    }
}

pub fn stats(d: &Stats, st: &Style) {
    let (n, p, s) = (d.throttles, d.processes, d.status.clone());
    let (state, detail) = (d.state.clone(), d.state_detail.clone());
    if st.json {
        let v =
            serde_json::json!({ "throttles": n, "processes": p, "status": s, "state": state, "state_detail": detail });
        println!("{v}");
    } else {
        println!(
            "throttles: {}\nprocesses limited: {}\nstatus: {}\nsaved state: {}",
            n.unwrap_or(0),
            p.unwrap_or(0),
            s.unwrap_or_default(),
            [state.unwrap_or_default(), detail.unwrap_or_default()].join(" ").trim_end()
        );
    }
}

/// The daemon's warning when the saved state cannot be written, if any.
pub fn state_warning(d: &Stats) -> Option<String> {
    (d.state.as_deref() == Some("broken")).then(|| d.state_detail.clone().unwrap_or_default())
}

pub fn status(version: &str, d: &Stats, up: String, down: String, st: &Style) {
    let s = d.status.clone().unwrap_or_default();
    let warning = state_warning(d);
    if st.json {
        let v = serde_json::json!({ "running": true, "version": version, "status": s, "default_up": up,
            "default_down": down, "warning": warning });
        println!("{v}");
    } else {
        println!("chadthrottled {version} is running: {s}\ndefault backends: upload {up}, download {down}");
        if let Some(w) = warning {
            println!("warning: {w}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_read_as_runtime_held_or_a_rule_file() {
        assert_eq!(origin_label("runtime"), "runtime");
        assert_eq!(origin_label("held"), "held");
        assert_eq!(origin_label("/etc/chadthrottle/rules.d/50-web.toml"), "rule:50-web.toml");
        assert_eq!(rule_file("held"), None);
        assert_eq!(rule_file("/x/r.toml").as_deref(), Some("/x/r.toml"));
    }

    fn view(pids: Vec<u32>, status: &str) -> ThrottleView {
        ThrottleView {
            path: zbus::zvariant::OwnedObjectPath::try_from("/org/chadthrottle/throttles/1").unwrap(),
            id: 1,
            kind: "unit".into(),
            target: "backup.service".into(),
            blocked: false,
            down: 1 << 20,
            up: 0,
            down_backend: "ebpf".into(),
            up_backend: String::new(),
            pids,
            origin: "runtime".into(),
            status: status.into(),
            status_detail: "no slot".into(),
            plan: Default::default(),
            priority: "normal".into(),
            caps: Vec::new(),
        }
    }

    #[test]
    fn a_throttle_without_processes_says_so() {
        let line = throttle_line(&view(vec![], "active"));
        assert!(line.starts_with("throttle 1: unit backup.service down 1M up -"), "{line}");
        assert!(line.contains("no process matches now") && !line.contains("0 process"), "{line}");
        assert!(throttle_line(&view(vec![7, 8], "active")).ends_with("(2 process(es))"));
        assert!(throttle_line(&view(vec![], "failed")).ends_with("(failed: no slot)"));
    }

    #[test]
    fn utf8_is_read_from_the_locale_variables_in_order() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        assert!(utf8_locale(env(&[("LANG", "en_US.UTF-8")])));
        assert!(utf8_locale(env(&[("LC_CTYPE", "de_DE.utf8"), ("LANG", "C")])));
        assert!(!utf8_locale(env(&[("LC_ALL", "C"), ("LANG", "en_US.UTF-8")])), "LC_ALL wins");
        assert!(utf8_locale(env(&[("LC_ALL", ""), ("LANG", "C.UTF-8")])), "an empty one does not count");
        assert!(!utf8_locale(env(&[("LANG", "POSIX")])));
        assert!(!utf8_locale(env(&[])));
    }

    #[test]
    fn ascii_stand_ins() {
        let ascii = Style::default();
        assert_eq!((ascii.sym("⭐", "* "), ascii.sym("✅", "yes"), ascii.sym("❌", "no")), ("* ", "yes", "no"));
        let fancy = Style { unicode: true, ..Style::default() };
        assert_eq!(fancy.sym("⭐", "* "), "⭐");
    }
}
