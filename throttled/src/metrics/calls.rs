//! D-Bus call counts and latencies, recorded by the D-Bus layer and read
//! by the exporter. Method and result names are `&'static str` so that
//! no caller-chosen string becomes a label (bounded cardinality).
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use super::snapshot::{CallCount, LatencyHistogram};

/// Upper bounds of the latency buckets, in seconds: from a cached
/// property read to a polkit prompt the user answers.
pub const BUCKETS: [f64; 11] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

#[derive(Clone, Debug, Default)]
struct Latency {
    /// Per bucket, not cumulative (made cumulative when read).
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

#[derive(Debug, Default)]
struct Inner {
    calls: BTreeMap<(&'static str, &'static str), u64>,
    latency: BTreeMap<&'static str, Latency>,
}

/// Cheap to clone; every clone records into the same numbers.
#[derive(Clone, Debug, Default)]
pub struct CallStats(Arc<Mutex<Inner>>);

impl CallStats {
    /// One finished call: `result` is "ok" or the D-Bus error's name.
    pub fn observe(&self, method: &'static str, result: &'static str, took: Duration) {
        let secs = took.as_secs_f64();
        let mut inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *inner.calls.entry((method, result)).or_default() += 1;
        let l = inner.latency.entry(method).or_default();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            l.counts[i] += 1;
        }
        l.sum += secs;
        l.count += 1;
    }

    /// The counts, sorted by method and result.
    pub fn calls(&self) -> Vec<CallCount> {
        let inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let calls = inner.calls.iter();
        calls.map(|((m, r), c)| CallCount { method: m.to_string(), result: r.to_string(), count: *c }).collect()
    }

    /// The histograms, sorted by method, with cumulative buckets.
    pub fn latency(&self) -> Vec<LatencyHistogram> {
        let inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        inner.latency.iter().map(|(m, l)| histogram(m, l)).collect()
    }
}

fn histogram(method: &str, l: &Latency) -> LatencyHistogram {
    let mut total = 0;
    let buckets = BUCKETS
        .iter()
        .zip(l.counts)
        .map(|(b, c)| {
            total += c;
            (*b, total)
        })
        .collect();
    LatencyHistogram { method: method.to_string(), buckets, sum_seconds: l.sum, count: l.count }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_method_and_result_with_cumulative_buckets() {
        let s = CallStats::default();
        s.observe("Limit", "ok", Duration::from_millis(3));
        s.observe("Limit", "ok", Duration::from_millis(30));
        s.observe("Limit", "org.chadthrottle.Error.Denied", Duration::from_secs(9));
        s.observe("List", "ok", Duration::from_micros(100));
        let calls = s.calls();
        assert_eq!(calls.len(), 3);
        assert_eq!((calls[0].method.as_str(), calls[0].result.as_str(), calls[0].count), ("Limit", "ok", 2));
        let h = &s.latency()[0];
        assert_eq!(h.method, "Limit");
        assert_eq!(h.count, 3);
        let at = |le: f64| h.buckets.iter().find(|(b, _)| *b == le).unwrap().1;
        assert_eq!((at(0.001), at(0.005), at(0.05), at(5.0)), (0, 1, 2, 2), "9 s is only in +Inf");
        assert!((h.sum_seconds - 9.033).abs() < 1e-9);
    }
}
