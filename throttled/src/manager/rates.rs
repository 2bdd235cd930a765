//! Current rates over a rolling window, from byte counters sampled about
//! once a second.
use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

/// The rolling window for a throttle's current rate.
pub const WINDOW: Duration = Duration::from_secs(5);

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

#[cfg(test)]
mod tests {
    use super::*;

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
