//! The time window of a replay: `--since DURATION`, or `--from TIME [--to TIME]`, checked against
//! the 30 days that Stripe's Events API keeps events, before any request is made.

use std::time::Duration;

/// How far back Stripe's Events API lists events.
pub const MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

/// Unix seconds, both ends included (`created[gte]`, `created[lte]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub gte: i64,
    pub lte: i64,
}

/// `--since`: `6h`, `3d`, `90m` (humantime).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|_| format!("`{s}` is not a duration; write it like 6h, 3d or 90m"))
}

/// `--from` / `--to`: RFC 3339 (`2026-11-30T08:00:00Z`, `2026-11-30 08:00:00`) or Unix seconds.
pub fn parse_time(s: &str) -> Result<i64, String> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse().map_err(|_| format!("`{s}` is too large for Unix seconds"));
    }
    let t = t.strip_suffix('Z').or_else(|| t.strip_suffix("+00:00")).unwrap_or(t);
    humantime::parse_rfc3339_weak(t)
        .map_err(|_| format!("`{s}` is not a time; write it in UTC like 2026-11-30T08:00:00Z, or as Unix seconds"))
        .and_then(|at| {
            at.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .map_err(|_| format!("`{s}` is before 1970"))
        })
}

/// Formats Unix seconds as RFC 3339 UTC.
pub fn format_time(t: i64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// The window for the given flags at `now` (Unix seconds). Refuses what the API cannot answer.
pub fn window(since: Option<Duration>, from: Option<i64>, to: Option<i64>, now: i64) -> Result<Window, String> {
    let oldest = now - MAX_AGE.as_secs() as i64;
    let w = match (since, from) {
        (Some(since), None) => {
            if since.is_zero() {
                return Err("--since must be greater than 0".into());
            }
            if since > MAX_AGE {
                return Err(format!(
                    "--since {} reaches further back than the 30 days for which Stripe's Events API keeps events",
                    humantime::format_duration(since)
                ));
            }
            Window {
                gte: now - since.as_secs() as i64,
                lte: now,
            }
        }
        (None, Some(from)) => {
            let lte = to.unwrap_or(now);
            if from < oldest {
                return Err(format!(
                    "--from {} is more than 30 days ago; Stripe's Events API keeps events for 30 days (the oldest possible now is {})",
                    format_time(from),
                    format_time(oldest)
                ));
            }
            if from > now {
                return Err(format!("--from {} is in the future", format_time(from)));
            }
            if lte < from {
                return Err(format!(
                    "--to {} is before --from {}",
                    format_time(lte),
                    format_time(from)
                ));
            }
            Window { gte: from, lte }
        }
        (Some(_), Some(_)) => return Err("give either --since or --from, not both".into()),
        (None, None) => return Err("give the window to replay: --since DURATION, or --from TIME [--to TIME]".into()),
    };
    Ok(w)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const NOW: i64 = 1_780_000_000;
    const DAY: i64 = 24 * 3600;

    #[test]
    fn since_ends_now_and_may_reach_exactly_thirty_days() {
        let w = window(Some(Duration::from_secs(6 * 3600)), None, None, NOW).unwrap();
        assert_eq!(
            w,
            Window {
                gte: NOW - 6 * 3600,
                lte: NOW
            }
        );
        assert_eq!(window(Some(MAX_AGE), None, None, NOW).unwrap().gte, NOW - 30 * DAY);
    }

    #[test]
    fn older_than_thirty_days_is_refused_up_front() {
        let e = window(Some(parse_duration("31d").unwrap()), None, None, NOW).unwrap_err();
        assert!(e.contains("30 days"), "{e}");
        let e = window(None, Some(NOW - 30 * DAY - 1), None, NOW).unwrap_err();
        assert!(e.contains("more than 30 days ago"), "{e}");
        assert!(window(None, Some(NOW - 30 * DAY), None, NOW).is_ok());
    }

    #[test]
    fn from_to_are_checked() {
        assert_eq!(
            window(None, Some(NOW - DAY), Some(NOW - 3600), NOW).unwrap(),
            Window {
                gte: NOW - DAY,
                lte: NOW - 3600
            }
        );
        assert_eq!(window(None, Some(NOW - DAY), None, NOW).unwrap().lte, NOW);
        assert!(window(None, Some(NOW - 3600), Some(NOW - DAY), NOW)
            .unwrap_err()
            .contains("before"));
        assert!(window(None, Some(NOW + 60), None, NOW).unwrap_err().contains("future"));
        assert!(window(Some(Duration::ZERO), None, None, NOW).is_err());
        assert!(window(None, None, None, NOW).is_err());
    }

    #[test]
    fn times_parse_as_rfc3339_or_unix_seconds() {
        assert_eq!(parse_time("2026-11-30T08:00:00Z").unwrap(), 1_796_025_600);
        assert_eq!(parse_time("2026-11-30 08:00:00").unwrap(), 1_796_025_600);
        assert_eq!(parse_time("1796025600").unwrap(), 1_796_025_600);
        assert_eq!(format_time(1_796_025_600), "2026-11-30T08:00:00Z");
        assert!(parse_time("yesterday").is_err());
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_duration("3d").unwrap(), Duration::from_secs(3 * 24 * 3600));
    }
}
