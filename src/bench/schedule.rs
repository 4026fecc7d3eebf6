//! Open-loop scheduling: when the `i`-th request is meant to be sent at a fixed rate.
//!
//! Latency in `--rate` mode is measured from this intended time, not from when a connection was
//! free to send it, so a stalled server shows up as the wait it caused every request queued
//! behind it (the correction for coordinated omission).

use std::time::Duration;

/// A fixed request rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Requests per second, > 0.
    rate: f64,
}

impl Schedule {
    /// `None` unless `rate` is a positive finite number.
    pub fn new(rate: f64) -> Option<Schedule> {
        (rate.is_finite() && rate > 0.0).then_some(Schedule { rate })
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The intended send time of request `i` (0-based) after the start: `i / rate`.
    pub fn offset(&self, i: u64) -> Duration {
        // Nanoseconds computed in f64 from the integer index do not accumulate error the way
        // adding an interval to a running sum would.
        Duration::from_nanos((i as f64 * 1e9 / self.rate).round() as u64)
    }

    /// How many requests fall in `[0, window)`.
    pub fn count_within(&self, window: Duration) -> u64 {
        let exact = window.as_secs_f64() * self.rate;
        let n = exact.ceil() as u64;
        // `offset(n - 1)` must be strictly inside the window.
        if n > 0 && self.offset(n - 1) >= window {
            n - 1
        } else {
            n
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_evenly_spaced_without_drift() {
        let s = Schedule::new(1000.0).expect("valid");
        assert_eq!(s.offset(0), Duration::ZERO);
        assert_eq!(s.offset(1), Duration::from_millis(1));
        assert_eq!(s.offset(1000), Duration::from_secs(1));
        assert_eq!(s.offset(3_600_000), Duration::from_secs(3600));
        let s = Schedule::new(3.0).expect("valid");
        assert_eq!(s.offset(1), Duration::from_nanos(333_333_333));
        assert_eq!(s.offset(2), Duration::from_nanos(666_666_667));
        assert_eq!(s.offset(3), Duration::from_secs(1));
        let s = Schedule::new(0.5).expect("valid");
        assert_eq!(s.offset(1), Duration::from_secs(2));
    }

    #[test]
    fn counts_within_a_window() {
        let s = Schedule::new(1000.0).expect("valid");
        assert_eq!(s.count_within(Duration::from_secs(10)), 10_000);
        assert_eq!(s.count_within(Duration::from_micros(1500)), 2); // at 0 and 1 ms
        assert_eq!(s.count_within(Duration::ZERO), 0);
        let s = Schedule::new(3.0).expect("valid");
        assert_eq!(s.count_within(Duration::from_secs(1)), 3);
        for n in 0..50u64 {
            let w = Duration::from_millis(n * 37);
            let c = s.count_within(w);
            assert!(c == 0 || s.offset(c - 1) < w);
            assert!(s.offset(c) >= w);
        }
    }

    #[test]
    fn rejects_bad_rates() {
        assert!(Schedule::new(0.0).is_none());
        assert!(Schedule::new(-1.0).is_none());
        assert!(Schedule::new(f64::NAN).is_none());
        assert!(Schedule::new(f64::INFINITY).is_none());
    }
}
