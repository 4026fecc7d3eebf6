//! Latency percentiles from an HDR histogram, and the run summary (text or JSON).
//! Shared with the broker ceiling programs in `examples/`.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Histograms record microseconds, from 1 µs to 10 minutes, with 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Records a duration in microseconds (saturating at the histogram's top).
pub fn record(h: &mut Histogram<u64>, d: std::time::Duration) {
    let us = (d.as_micros() as u64).clamp(1, h.high());
    h.saturating_record(us);
}

/// CPU seconds (user + system, all threads) this process has used so far, from `/proc/self/stat`;
/// `None` where that is not readable. Assumes the usual `USER_HZ` of 100.
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces: the fields we want follow its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 of the man page, utime 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    pub fn from_histogram(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }

    /// `p50 1.23 ms  p90 …` on one line.
    pub fn line(&self) -> String {
        format!(
            "p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms  (mean {:.2} ms)",
            self.p50, self.p90, self.p99, self.p999, self.max, self.mean
        )
    }
}

/// What one `hookbridge bench` run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub url: String,
    /// `closed` (`--concurrency`) or `open` (`--rate`).
    pub mode: &'static str,
    /// Connections (closed loop: requests in flight).
    pub concurrency: usize,
    /// Intended requests per second in open-loop mode.
    pub target_rate: Option<f64>,
    /// The measured window in seconds (after warm-up).
    pub duration_s: f64,
    /// Requests answered (any status) in the window.
    pub requests: u64,
    pub requests_per_sec: f64,
    /// Mean request body length.
    pub body_bytes: f64,
    /// Answer time; in open-loop mode measured from each request's intended send time.
    pub latency_ms: Latency,
    /// Answer counts per HTTP status.
    pub status: BTreeMap<String, u64>,
    /// Requests that got no answer (connection refused, reset, …).
    pub errors: u64,
    /// Open-loop requests still queued when the run ended (the server fell far behind).
    pub unsent: u64,
    /// CPU seconds the load generator itself used over the whole run, warm-up included.
    pub generator_cpu_s: Option<f64>,
}

impl Summary {
    /// Answers with a 2xx status.
    pub fn ok(&self) -> u64 {
        self.status
            .iter()
            .filter(|(s, _)| s.starts_with('2'))
            .map(|(_, n)| n)
            .sum()
    }

    /// True when every request was answered 2xx (and there was at least one).
    pub fn all_ok(&self) -> bool {
        self.requests > 0 && self.ok() == self.requests && self.errors == 0 && self.unsent == 0
    }

    pub fn text(&self) -> String {
        let statuses: Vec<String> = self.status.iter().map(|(s, n)| format!("{s}: {n}")).collect();
        let mode = match self.target_rate {
            Some(r) => format!("open loop at {r} req/s over up to {} connections", self.concurrency),
            None => format!("closed loop, {} connections", self.concurrency),
        };
        format!(
            "{url}: {mode}, bodies {bytes:.0} B\n\
             {requests} requests in {dur:.2} s = {rps:.1} req/s\n\
             latency {lat}\n\
             status {{{statuses}}}  errors {errors}  unsent {unsent}\n",
            url = self.url,
            bytes = self.body_bytes,
            requests = self.requests,
            dur = self.duration_s,
            rps = self.requests_per_sec,
            lat = self.latency_ms.line(),
            statuses = statuses.join(", "),
            errors = self.errors,
            unsent = self.unsent,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn percentiles_in_milliseconds() {
        let mut h = new_histogram();
        for us in 1..=1000u64 {
            record(&mut h, Duration::from_micros(us * 10));
        }
        let l = Latency::from_histogram(&h);
        assert!((l.p50 - 5.0).abs() < 0.01, "{l:?}");
        assert!((l.p99 - 9.9).abs() < 0.01, "{l:?}");
        assert!((l.max - 10.0).abs() < 0.01, "{l:?}");
        assert_eq!(Latency::from_histogram(&new_histogram()), Latency::default());
        // Far beyond the top is clamped, not lost.
        record(&mut h, Duration::from_secs(100_000));
        assert_eq!(h.len(), 1001);
    }

    #[test]
    fn own_cpu_time_is_readable_and_grows() {
        let before = process_cpu_seconds().expect("/proc/self/stat is readable on Linux");
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(process_cpu_seconds().expect("readable") >= before);
    }

    #[test]
    fn all_ok_needs_only_2xx_and_no_errors() {
        let mut s = Summary {
            url: "u".into(),
            mode: "closed",
            concurrency: 1,
            target_rate: None,
            duration_s: 1.0,
            requests: 3,
            requests_per_sec: 3.0,
            body_bytes: 10.0,
            latency_ms: Latency::default(),
            status: BTreeMap::from([("200".to_string(), 3)]),
            errors: 0,
            unsent: 0,
            generator_cpu_s: None,
        };
        assert!(s.all_ok());
        s.status.insert("503".into(), 1);
        s.requests = 4;
        assert!(!s.all_ok());
        s.status.remove("503");
        s.requests = 3;
        s.errors = 1;
        assert!(!s.all_ok());
        s.errors = 0;
        s.requests = 0;
        s.status.clear();
        assert!(!s.all_ok());
    }
}
