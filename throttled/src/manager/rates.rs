//! Current rates over a rolling window, from byte counters sampled about
//! once a second, and the short per-second history kept for graphs.
use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

#[derive(Debug, Default)]
pub struct RateWindow {
    samples: VecDeque<(Instant, u64)>,
}

impl RateWindow {
    /// Adds a counter reading; readings older than `window` fall out. A
    /// counter that went backwards (a slot reset) starts the window afresh.
    pub fn push(&mut self, at: Instant, bytes: u64, window: Duration) {
        if self.samples.back().is_some_and(|&(_, b)| bytes < b) {
            self.samples.clear();
        }
        self.samples.push_back((at, bytes));
        while self.samples.front().is_some_and(|&(t, _)| at.duration_since(t) > window) {
            self.samples.pop_front();
        }
    }

    /// Bytes per second across the window; 0 until two readings exist.
    pub fn rate(&self) -> u64 {
        match (self.samples.front(), self.samples.back()) {
            (Some(&(t0, b0)), Some(&(t1, b1))) if t1 > t0 => {
                ((b1 - b0) as f64 / t1.duration_since(t0).as_secs_f64()).round() as u64
            }
            _ => 0,
        }
    }
}

/// A ring of the last `cap` values, oldest first.
#[derive(Debug)]
pub struct History<T> {
    values: VecDeque<T>,
}

impl<T> Default for History<T> {
    fn default() -> Self {
        History { values: VecDeque::new() }
    }
}

impl<T: Copy> History<T> {
    pub fn push(&mut self, v: T, cap: usize) {
        if self.values.len() >= cap {
            self.values.pop_front();
        }
        self.values.push_back(v);
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &T> + ExactSizeIterator {
        self.values.iter()
    }
}

/// One second of a throttle direction: what passed, and whether the limit
/// was binding (something was dropped, or it ran at 90% of the limit or more).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Second {
    pub rate: u64,
    pub saturated: bool,
}

/// A throttle direction's rolling rate, history, and accuracy.
#[derive(Debug, Default)]
pub struct LimitSeries {
    /// The last counters read.
    pub counters: throttle_common::Counters,
    window: RateWindow,
    last: Option<(Instant, u64, u64)>,
    pub history: History<Second>,
}

impl LimitSeries {
    /// A counter reading (passed bytes, dropped packets) against `limit`.
    pub fn push(&mut self, at: Instant, pass_bytes: u64, drop_pkts: u64, limit: u64, span: (Duration, usize)) {
        self.window.push(at, pass_bytes, span.0);
        if let Some((t0, b0, d0)) = self.last {
            let secs = at.duration_since(t0).as_secs_f64();
            if secs > 0.0 && pass_bytes >= b0 {
                let rate = ((pass_bytes - b0) as f64 / secs).round() as u64;
                let saturated = drop_pkts > d0 || rate * 10 >= limit * 9;
                self.history.push(Second { rate, saturated }, span.1);
            }
        }
        self.last = Some((at, pass_bytes, drop_pkts));
    }

    pub fn rate(&self) -> u64 {
        self.window.rate()
    }

    /// Achieved rate over the limit across the saturated seconds kept, or
    /// `None` if the limit never bound.
    pub fn accuracy(&self, limit: u64) -> Option<f64> {
        let sat: Vec<u64> = self.history.iter().filter(|s| s.saturated).map(|s| s.rate).collect();
        (!sat.is_empty() && limit > 0).then(|| sat.iter().sum::<u64>() as f64 / sat.len() as f64 / limit as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(5);

    #[test]
    fn rate_over_the_window() {
        let t = Instant::now();
        let mut w = RateWindow::default();
        assert_eq!(w.rate(), 0);
        for s in 0..=10u64 {
            w.push(t + Duration::from_secs(s), s * 1000, WINDOW);
        }
        assert_eq!(w.rate(), 1000);
        // A burst in the last second counts across the window only.
        w.push(t + Duration::from_secs(11), 10_000 + 6000, WINDOW);
        assert_eq!(w.rate(), 2000);
        assert_eq!(w.samples.len(), 6);
    }

    #[test]
    fn history_is_capped_and_accuracy_uses_saturated_seconds() {
        let t = Instant::now();
        let mut s = LimitSeries::default();
        let span = (WINDOW, 60);
        let mut bytes = 0;
        for sec in 0..=100u64 {
            // 10 s idle at 100 B/s, then at the limit of 1000 with drops.
            let (rate, drops) = if sec < 10 { (100, 0) } else { (980, sec) };
            bytes += rate;
            s.push(t + Duration::from_secs(sec), bytes, drops, 1000, span);
        }
        assert_eq!(s.history.iter().len(), 60);
        assert!(s.history.iter().all(|x| x.saturated && x.rate == 980));
        assert_eq!(s.accuracy(1000), Some(0.98));
        let mut idle = LimitSeries::default();
        idle.push(t, 0, 0, 1000, span);
        idle.push(t + Duration::from_secs(1), 100, 0, 1000, span);
        assert_eq!(idle.accuracy(1000), None);
    }

    #[test]
    fn a_reset_counter_restarts_the_window() {
        let t = Instant::now();
        let mut w = RateWindow::default();
        w.push(t, 5000, WINDOW);
        w.push(t + Duration::from_secs(1), 100, WINDOW);
        assert_eq!(w.rate(), 0);
        w.push(t + Duration::from_secs(2), 600, WINDOW);
        assert_eq!(w.rate(), 500);
    }
}
