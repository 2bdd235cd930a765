//! Human tables and JSON (a stable schema: field names are the API's).
use throttle_api::{BackendStatus, Stats};
use throttle_common::rate::Rate;

use crate::api::ThrottleView;

fn rate(b: u64) -> String {
    Rate::from_bytes(b).map_or("-".into(), |r| r.to_string())
}

pub fn throttle(t: &ThrottleView, json: bool) {
    if json {
        println!("{}", serde_json::to_string(t).unwrap_or_default());
    } else {
        println!(
            "throttle {}: {} {} down {} up {} ({} process(es))",
            t.id,
            t.kind,
            throttle_common::text::escape(&t.target, usize::MAX),
            rate(t.down),
            rate(t.up),
            t.pids.len()
        );
    }
}

pub fn list(ts: &[ThrottleView], json: bool) {
    if json {
        println!("{}", serde_json::to_string(ts).unwrap_or_default());
        return;
    }
    if ts.is_empty() {
        println!("no throttles");
        return;
    }
    println!(
        "{:>4}  {:<6} {:<20} {:>8} {:<8} {:>8} {:<8} PIDS",
        "ID", "KIND", "TARGET", "DOWN", "BACKEND", "UP", "BACKEND"
    );
    for t in ts {
        let pids: Vec<String> = t.pids.iter().map(u32::to_string).collect();
        let pids = match t.status.as_str() {
            "active" => pids.join(","),
            other => format!("{}: {}", other.to_uppercase(), t.status_detail),
        };
        println!(
            "{:>4}  {:<6} {:<20} {:>8} {:<8} {:>8} {:<8} {}",
            t.id,
            t.kind,
            // Names may hold control characters: never write them raw.
            throttle_common::text::escape(&t.target, usize::MAX),
            rate(t.down),
            t.down_backend,
            rate(t.up),
            t.up_backend,
            pids
        );
    }
}

pub fn backends(bs: &[BackendStatus], json: bool) {
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
    if json {
        println!("{}", serde_json::Value::Array(rows));
        return;
    }
    println!(
        "   {:<8} {:<10} {:<9} {:>6}  {:<8} AVAILABILITY",
        "BACKEND", "DIRECTIONS", "PRIORITY", "ACTIVE", "HEALTH"
    );
    for r in rows {
        let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
        let list = |k: &str| {
            r[k].as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join("+"))
                .unwrap_or_default()
        };
        let star = if list("default_for").is_empty() { "  " } else { "⭐" };
        let avail =
            if r["available"].as_bool().unwrap_or(false) { "✅".to_string() } else { format!("❌ {}", s("reason")) };
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

pub fn stats(d: &Stats, json: bool) {
    let (n, p, s) = (d.throttles, d.processes, d.status.clone());
    let (state, detail) = (d.state.clone(), d.state_detail.clone());
    if json {
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

pub fn status(version: &str, d: &Stats, up: String, down: String, json: bool) {
    let s = d.status.clone().unwrap_or_default();
    let warning = state_warning(d);
    if json {
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
