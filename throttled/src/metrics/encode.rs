//! The exposition: Prometheus text format 0.0.4, or OpenMetrics 1.0 when
//! the scraper asks for it. Names follow the Prometheus rules: one prefix,
//! base units (bytes, seconds), `_total` on counters; labels never carry a
//! pid.
use std::fmt::{Display, Write as _};

use super::snapshot::{BackendHealth, DirectionMetrics, MetricsSnapshot, ThrottleMetrics};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Prometheus,
    OpenMetrics,
}

const PROMETHEUS_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPENMETRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => PROMETHEUS_TYPE,
            Format::OpenMetrics => OPENMETRICS_TYPE,
        }
    }

    /// OpenMetrics when the Accept header prefers it (by q) over the
    /// text format; the text format otherwise, as Prometheus does.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let (mut om, mut text) = (0.0f32, 0.0f32);
        for range in accept.unwrap_or("").split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let q = parts.filter_map(|p| p.strip_prefix("q=")).find_map(|v| v.parse::<f32>().ok()).unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => om = om.max(q),
                "text/plain" | "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if om > 0.0 && om >= text {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
    Info,
}

/// One metric family. `name` is the family's name as OpenMetrics spells
/// it: without `_total` (counters) or `_info` (info).
struct Family {
    name: &'static str,
    kind: Kind,
    unit: Option<&'static str>,
    help: &'static str,
}

const fn family(name: &'static str, kind: Kind, unit: Option<&'static str>, help: &'static str) -> Family {
    Family { name, kind, unit, help }
}

const BUILD: Family = family("chadthrottle_build", Kind::Info, None, "The daemon's version.");
const RSS: Family =
    family("chadthrottle_resident_memory_bytes", Kind::Gauge, Some("bytes"), "The daemon's resident memory.");
const CALLS: Family = family("chadthrottle_dbus_calls", Kind::Counter, None, "D-Bus calls by method and result.");
const LATENCY: Family = family(
    "chadthrottle_dbus_call_duration_seconds",
    Kind::Histogram,
    Some("seconds"),
    "D-Bus call durations, authorization included.",
);
const HEALTH: Family =
    family("chadthrottle_backend_health", Kind::Gauge, None, "1 for the backend's current health state, else 0.");
const ACTIVE: Family =
    family("chadthrottle_backend_active_throttles", Kind::Gauge, None, "Throttle directions the backend enforces.");
const LIMIT: Family = family(
    "chadthrottle_throttle_limit_bytes_per_second",
    Kind::Gauge,
    Some("bytes_per_second"),
    "The throttle's limit.",
);
const BYTES: Family =
    family("chadthrottle_throttle_bytes", Kind::Counter, Some("bytes"), "Bytes the throttle let through.");
const DROPPED: Family =
    family("chadthrottle_throttle_dropped_packets", Kind::Counter, None, "Packets the throttle dropped.");
const RATE: Family = family(
    "chadthrottle_throttle_rate_bytes_per_second",
    Kind::Gauge,
    Some("bytes_per_second"),
    "The throttle's rate over the last few seconds.",
);
const ACCURACY: Family = family(
    "chadthrottle_throttle_accuracy_ratio",
    Kind::Gauge,
    Some("ratio"),
    "Achieved rate over the limit while the limit was binding.",
);
const QUOTA: Family =
    family("chadthrottle_throttle_quota_used_bytes", Kind::Gauge, Some("bytes"), "Bytes of the throttle's quota used.");
const NAME_BYTES: Family = family(
    "chadthrottle_process_name_bytes",
    Kind::Counter,
    Some("bytes"),
    "Bytes of the live processes with this name (the busiest names only).",
);

/// The whole exposition of one snapshot.
pub fn encode(s: &MetricsSnapshot, format: Format) -> String {
    let mut w = Writer { out: String::with_capacity(256 + s.throttles.len() * 2048), format };
    daemon(&mut w, s);
    backends(&mut w, s);
    throttles(&mut w, &s.throttles);
    names(&mut w, s);
    if format == Format::OpenMetrics {
        w.out.push_str("# EOF\n");
    }
    w.out
}

fn daemon(w: &mut Writer, s: &MetricsSnapshot) {
    let d = &s.daemon;
    w.head(&BUILD);
    w.sample(&BUILD, "", &[("version", &d.version)], 1);
    w.head(&RSS);
    w.sample(&RSS, "", &[], d.resident_memory_bytes);
    w.head(&CALLS);
    for c in &d.calls {
        w.sample(&CALLS, "", &[("method", &c.method), ("result", &c.result)], c.count);
    }
    w.head(&LATENCY);
    for h in &d.latency {
        let method = [("method", h.method.as_str())];
        for (le, n) in &h.buckets {
            w.sample(&LATENCY, "_bucket", &[method[0], ("le", &format!("{le:?}"))], n);
        }
        w.sample(&LATENCY, "_bucket", &[method[0], ("le", "+Inf")], h.count);
        w.sample(&LATENCY, "_sum", &method, Float(h.sum_seconds));
        w.sample(&LATENCY, "_count", &method, h.count);
    }
}

fn backends(w: &mut Writer, s: &MetricsSnapshot) {
    w.head(&HEALTH);
    for b in &s.backends {
        for state in BackendHealth::ALL {
            w.sample(&HEALTH, "", &[("backend", &b.name), ("state", state.label())], u8::from(b.health == state));
        }
    }
    w.head(&ACTIVE);
    for b in &s.backends {
        w.sample(&ACTIVE, "", &[("backend", &b.name)], b.active);
    }
}

type Value = fn(&DirectionMetrics) -> Option<Float>;

fn throttles(w: &mut Writer, throttles: &[ThrottleMetrics]) {
    let families: [(&Family, Value); 5] = [
        (&LIMIT, |d| Some(Float(d.limit_bytes_per_second as f64))),
        (&BYTES, |d| Some(Float(d.bytes as f64))),
        (&DROPPED, |d| Some(Float(d.dropped_packets as f64))),
        (&RATE, |d| Some(Float(d.rate_bytes_per_second as f64))),
        (&ACCURACY, |d| d.accuracy.map(Float)),
    ];
    for (f, value) in families {
        w.head(f);
        for t in throttles {
            let id = t.id.to_string();
            for d in &t.directions {
                let Some(v) = value(d) else { continue };
                let labels = [
                    ("id", id.as_str()),
                    ("kind", &t.kind),
                    ("target", &t.target),
                    ("direction", d.direction),
                    ("backend", &d.backend),
                ];
                w.sample(f, "", &labels, v);
            }
        }
    }
    // A quota counts both directions: one series per throttle.
    w.head(&QUOTA);
    for t in throttles {
        let Some(used) = t.quota_used_bytes else { continue };
        let id = t.id.to_string();
        w.sample(&QUOTA, "", &[("id", id.as_str()), ("kind", &t.kind), ("target", &t.target)], Float(used as f64));
    }
}

fn names(w: &mut Writer, s: &MetricsSnapshot) {
    w.head(&NAME_BYTES);
    for n in &s.names {
        w.sample(&NAME_BYTES, "", &[("name", &n.name), ("direction", "down")], n.bytes_down);
        w.sample(&NAME_BYTES, "", &[("name", &n.name), ("direction", "up")], n.bytes_up);
    }
}

/// A sample value: integers print exactly, floats as Prometheus reads them.
struct Float(f64);

impl Display for Float {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            v if v.is_nan() => f.write_str("NaN"),
            v if v == f64::INFINITY => f.write_str("+Inf"),
            v if v == f64::NEG_INFINITY => f.write_str("-Inf"),
            // Exact below 2^53; counters beyond that lose precision anyway.
            v if v.fract() == 0.0 && v.abs() < 9.007_199_254_740_992e15 => write!(f, "{}", v as i64),
            v => write!(f, "{v}"),
        }
    }
}

struct Writer {
    out: String,
    format: Format,
}

impl Writer {
    /// The name a sample carries, before its suffix (`_bucket`, …).
    fn sample_name(f: &Family) -> (&'static str, &'static str) {
        match f.kind {
            Kind::Counter => (f.name, "_total"),
            Kind::Info => (f.name, "_info"),
            Kind::Gauge | Kind::Histogram => (f.name, ""),
        }
    }

    fn head(&mut self, f: &Family) {
        let (base, tail) = Self::sample_name(f);
        let (kind, name_tail) = match (self.format, f.kind) {
            (Format::OpenMetrics, Kind::Info) => ("info", ""),
            (Format::OpenMetrics, Kind::Counter) => ("counter", ""),
            (Format::Prometheus, Kind::Info) => ("gauge", tail),
            (Format::Prometheus, Kind::Counter) => ("counter", tail),
            (_, Kind::Gauge) => ("gauge", ""),
            (_, Kind::Histogram) => ("histogram", ""),
        };
        let help = escape_help(f.help, self.format);
        let o = &mut self.out;
        let _ = writeln!(o, "# HELP {base}{name_tail} {help}");
        let _ = writeln!(o, "# TYPE {base}{name_tail} {kind}");
        if let (Format::OpenMetrics, Some(unit)) = (self.format, f.unit) {
            let _ = writeln!(o, "# UNIT {base}{name_tail} {unit}");
        }
    }

    fn sample(&mut self, f: &Family, suffix: &str, labels: &[(&str, &str)], value: impl Display) {
        let (base, tail) = Self::sample_name(f);
        let o = &mut self.out;
        o.push_str(base);
        o.push_str(tail);
        o.push_str(suffix);
        if !labels.is_empty() {
            o.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    o.push(',');
                }
                o.push_str(k);
                o.push_str("=\"");
                escape_value(o, v);
                o.push('"');
            }
            o.push('}');
        }
        let _ = writeln!(o, " {value}");
    }
}

/// Label values: backslash, double quote and newline are escaped (both formats).
fn escape_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// HELP text: the text format escapes backslash and newline; OpenMetrics
/// also the double quote.
fn escape_help(h: &str, format: Format) -> String {
    let mut out = String::with_capacity(h.len());
    for c in h.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if format == Format::OpenMetrics => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
#[path = "encode_tests.rs"]
mod tests;
