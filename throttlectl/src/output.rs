//! Human tables and JSON (a stable schema: field names are the API's).
use std::collections::HashMap;

use throttle_common::rate::Rate;
use zbus::zvariant::OwnedValue;

use crate::api::ThrottleView;

fn rate(b: u64) -> String {
    Rate::from_bytes(b).map_or("-".into(), |r| r.to_string())
}

fn get<T: TryFrom<OwnedValue>>(d: &HashMap<String, OwnedValue>, k: &str) -> Option<T> {
    d.get(k).and_then(|v| v.try_clone().ok()).and_then(|v| T::try_from(v).ok())
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

pub fn backends(bs: &[HashMap<String, OwnedValue>], json: bool) {
    let rows: Vec<serde_json::Value> = bs
        .iter()
        .map(|b| {
            serde_json::json!({
                "name": get::<String>(b, "name"),
                "directions": get::<Vec<String>>(b, "directions"),
                "priority": get::<String>(b, "priority"),
                "available": get::<bool>(b, "available"),
                "reason": get::<String>(b, "reason"),
                "default_for": get::<Vec<String>>(b, "default_for"),
                "active": get::<u32>(b, "active"),
                "pids": get::<Vec<u32>>(b, "pids"),
                "health": get::<String>(b, "health"),
                "health_detail": get::<String>(b, "health_detail"),
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

pub fn stats(d: &HashMap<String, OwnedValue>, json: bool) {
    let (n, p, s) = (get::<u32>(d, "throttles"), get::<u32>(d, "processes"), get::<String>(d, "status"));
    let (state, detail) = (get::<String>(d, "state"), get::<String>(d, "state_detail"));
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
pub fn state_warning(d: &HashMap<String, OwnedValue>) -> Option<String> {
    (get::<String>(d, "state").as_deref() == Some("broken"))
        .then(|| get::<String>(d, "state_detail").unwrap_or_default())
}

pub fn status(version: &str, d: &HashMap<String, OwnedValue>, up: String, down: String, json: bool) {
    let s = get::<String>(d, "status").unwrap_or_default();
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
