use super::*;
use crate::metrics::snapshot::*;

/// One of everything: a throttle with both directions, a backend, a name,
/// D-Bus calls.
pub fn sample() -> MetricsSnapshot {
    let dir = |direction, backend: &str, limit, bytes, accuracy| DirectionMetrics {
        direction,
        backend: backend.into(),
        limit_bytes_per_second: limit,
        bytes,
        dropped_packets: 2,
        rate_bytes_per_second: 1000,
        accuracy,
    };
    MetricsSnapshot {
        throttles: vec![
            ThrottleMetrics {
                id: 3,
                kind: "name".into(),
                target: "firefox".into(),
                directions: vec![dir("down", "ifb_tc", 1_048_576, 5000, Some(0.98)), dir("up", "ebpf", 2048, 70, None)],
                quota_used_bytes: Some(5070),
            },
            ThrottleMetrics {
                id: 4,
                kind: "pid".into(),
                target: String::new(),
                directions: vec![],
                quota_used_bytes: None,
            },
        ],
        backends: vec![
            BackendMetrics { name: "ebpf".into(), health: BackendHealth::Healthy, active: 1 },
            BackendMetrics { name: "ifb_tc".into(), health: BackendHealth::Broken, active: 1 },
        ],
        names: vec![NameMetrics { name: "firefox".into(), bytes_down: 5000, bytes_up: 100 }],
        daemon: DaemonMetrics {
            version: "0.1.0".into(),
            resident_memory_bytes: 1234,
            calls: vec![CallCount { method: "Limit".into(), result: "ok".into(), count: 2 }],
            latency: vec![LatencyHistogram {
                method: "Limit".into(),
                buckets: vec![(0.01, 1), (1.0, 2)],
                sum_seconds: 0.5,
                count: 3,
            }],
        },
    }
}

/// Compares with a file in testdata/; `UPDATE_GOLDEN=1` rewrites it.
fn golden(file: &str, got: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/metrics/testdata").join(file);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, got).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap();
    assert_eq!(got, want, "{file} differs (UPDATE_GOLDEN=1 rewrites it after a deliberate change)");
}

#[test]
fn prometheus_text_golden() {
    golden("sample.prom", &encode(&sample(), Format::Prometheus));
}

#[test]
fn openmetrics_golden() {
    golden("sample.om", &encode(&sample(), Format::OpenMetrics));
}

#[test]
fn openmetrics_has_families_units_and_eof() {
    let om = encode(&sample(), Format::OpenMetrics);
    assert!(om.ends_with("\n# EOF\n"));
    assert_eq!(om.matches("# EOF").count(), 1);
    assert!(om.contains("# TYPE chadthrottle_throttle_bytes counter\n# UNIT chadthrottle_throttle_bytes bytes\n"));
    assert!(om.contains("# TYPE chadthrottle_build info\n"));
    assert!(om.contains("chadthrottle_throttle_bytes_total{id=\"3\""));
    let text = encode(&sample(), Format::Prometheus);
    assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
    assert!(text.contains("# TYPE chadthrottle_throttle_bytes_total counter\n"));
}

#[test]
fn every_sample_has_the_prefix_and_no_pid_label() {
    for format in [Format::Prometheus, Format::OpenMetrics] {
        for line in encode(&sample(), format).lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("chadthrottle_"), "{line}");
            assert!(!line.contains("pid=\""), "{line}");
        }
    }
}

#[test]
fn label_values_are_escaped() {
    let mut s = MetricsSnapshot::default();
    let dir = DirectionMetrics { direction: "up", backend: "ebpf".into(), ..Default::default() };
    let target = "/opt/a \"b\"\\c\nd".to_string();
    s.throttles.push(ThrottleMetrics {
        id: 1,
        kind: "exe".into(),
        target,
        directions: vec![dir],
        quota_used_bytes: None,
    });
    let text = encode(&s, Format::Prometheus);
    let want = r#"chadthrottle_throttle_bytes_total{id="1",kind="exe",target="/opt/a \"b\"\\c\nd",direction="up",backend="ebpf"} 0"#;
    assert!(text.lines().any(|l| l == want), "{text}");
}

#[test]
fn negotiation_follows_accept_and_q() {
    let prom_2_42 = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,\
                     text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    assert_eq!(Format::negotiate(Some(prom_2_42)), Format::OpenMetrics);
    assert_eq!(Format::negotiate(Some("text/plain;version=0.0.4")), Format::Prometheus);
    assert_eq!(Format::negotiate(Some("application/openmetrics-text;q=0.2, text/plain")), Format::Prometheus);
    assert_eq!(Format::negotiate(Some("application/openmetrics-text;q=0")), Format::Prometheus);
    assert_eq!(Format::negotiate(Some("Application/OpenMetrics-Text")), Format::OpenMetrics);
    assert_eq!(Format::negotiate(None), Format::Prometheus);
    assert_eq!(Format::negotiate(Some("*/*")), Format::Prometheus);
    assert!(Format::OpenMetrics.content_type().starts_with("application/openmetrics-text; version=1.0.0"));
    assert!(Format::Prometheus.content_type().starts_with("text/plain; version=0.0.4"));
}

#[test]
fn floats_print_as_prometheus_reads_them() {
    assert_eq!(Float(3.0).to_string(), "3");
    assert_eq!(Float(0.25).to_string(), "0.25");
    assert_eq!(Float(f64::NAN).to_string(), "NaN");
    assert_eq!(Float(f64::INFINITY).to_string(), "+Inf");
}

/// The shipped Grafana dashboard names only metrics the exporter writes.
#[test]
fn the_dashboard_uses_only_exported_metrics() {
    let dashboard = include_str!("../../../contrib/grafana-chadthrottle.json");
    let text = encode(&sample(), Format::Prometheus);
    let exported: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ").or(Some(l)).and_then(|l| l.split([' ', '{']).next()))
        .collect();
    let mut used = 0;
    for (i, _) in dashboard.match_indices("chadthrottle_") {
        let name: String = dashboard[i..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
        if name == "chadthrottle_" {
            continue; // the uid and tags, not a metric
        }
        assert!(exported.contains(name.as_str()), "the dashboard uses {name}, which is not exported");
        used += 1;
    }
    assert!(used >= 12, "{used}");
}
