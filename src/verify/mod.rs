//! Stripe webhook signature verification.
//!
//! Stripe signs each delivery with `Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>][,v0=…]`
//! where `v1 = hex(HMAC-SHA256(key = endpoint secret as given, msg = t + "." + raw body))`.
//! The [`Verifier`] accepts a request when any `v1` matches any configured secret (this is how
//! secrets are rotated) and the timestamp is within the tolerance, in the past or the future.
//! It is synchronous and pure: the current time is passed in, so tests can fix it.

mod header;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

pub use header::{parse_header, SignatureHeader};

type HmacSha256 = Hmac<Sha256>;

/// Where the verifier reads the current time from; injected so tests can fix the clock.
pub trait Clock: Send + Sync + 'static {
    /// Seconds since the Unix epoch.
    fn now(&self) -> i64;
}

/// The real wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        unix_now()
    }
}

/// A clock that always reads the same instant (for tests).
#[derive(Debug, Clone, Copy)]
pub struct FixedClock(pub i64);

impl Clock for FixedClock {
    fn now(&self) -> i64 {
        self.0
    }
}

/// Seconds since the Unix epoch from the system clock (0 if the clock is before 1970).
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Why a request's signature was rejected. Every variant maps to a 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the Stripe-Signature header is missing")]
    MissingHeader,
    #[error("the Stripe-Signature header is malformed: {0}")]
    MalformedHeader(&'static str),
    #[error("no v1 signature matches any configured secret")]
    NoMatchingSignature,
    #[error("the signature timestamp is {age_secs}s away from now, more than the {tolerance_secs}s tolerance")]
    OutsideTolerance { age_secs: i64, tolerance_secs: u64 },
}

impl VerifyError {
    /// Short machine-readable code used in JSON errors and metric labels.
    pub fn code(&self) -> &'static str {
        match self {
            VerifyError::MissingHeader => "missing_signature",
            VerifyError::MalformedHeader(_) => "malformed_signature",
            VerifyError::NoMatchingSignature => "signature_mismatch",
            VerifyError::OutsideTolerance { .. } => "timestamp_out_of_tolerance",
        }
    }
}

/// Proof that a body was signed by one of the configured secrets at `timestamp`.
/// Only [`Verifier::verify`] constructs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    timestamp: i64,
}

impl Verified {
    /// The signed `t` of the header: Stripe's delivery time.
    pub fn timestamp(&self) -> i64 {
        self.timestamp
    }
}

/// Verifies Stripe signatures against a set of secrets.
#[derive(Clone)]
pub struct Verifier {
    /// One keyed HMAC state per secret, so a request only clones it instead of re-keying.
    keys: Vec<HmacSha256>,
    tolerance: Duration,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("secrets", &format_args!("[{} redacted]", self.keys.len()))
            .field("tolerance", &self.tolerance)
            .finish()
    }
}

impl Verifier {
    /// Builds a verifier; each secret is used as given (`whsec_` prefix included), as Stripe does.
    pub fn new<S: AsRef<[u8]>>(secrets: &[S], tolerance: Duration) -> Self {
        let keys = secrets
            .iter()
            .map(|s| HmacSha256::new_from_slice(s.as_ref()).expect("HMAC accepts keys of any length"))
            .collect();
        Verifier { keys, tolerance }
    }

    /// How far the timestamp may be from now.
    pub fn tolerance(&self) -> Duration {
        self.tolerance
    }

    /// Checks `header` (the raw `Stripe-Signature` value, `None` when absent) for `body` at `now`.
    pub fn verify(&self, header: Option<&[u8]>, body: &[u8], now: i64) -> Result<Verified, VerifyError> {
        let header = match header {
            None => return Err(VerifyError::MissingHeader),
            Some(h) if h.iter().all(u8::is_ascii_whitespace) => return Err(VerifyError::MissingHeader),
            Some(h) => h,
        };
        let parsed = parse_header(header)?;
        let mut matched = false;
        for key in &self.keys {
            let expected = signature_with(key.clone(), parsed.timestamp, body);
            for candidate in &parsed.v1 {
                // Constant time per comparison; `|` keeps going after a match.
                matched |= bool::from(expected.ct_eq(candidate));
            }
        }
        if !matched {
            return Err(VerifyError::NoMatchingSignature);
        }
        // The timestamp is checked after the signature, so an attacker learns nothing about the
        // tolerance from unsigned requests.
        let age = now.saturating_sub(parsed.timestamp);
        if age.unsigned_abs() > self.tolerance.as_secs() {
            return Err(VerifyError::OutsideTolerance {
                age_secs: age,
                tolerance_secs: self.tolerance.as_secs(),
            });
        }
        Ok(Verified {
            timestamp: parsed.timestamp,
        })
    }
}

fn signature_with(mut mac: HmacSha256, timestamp: i64, body: &[u8]) -> [u8; 32] {
    let digits = itoa_buf(timestamp);
    mac.update(digits.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// The raw v1 signature of `body` at `timestamp` with `secret`.
pub fn compute_signature(secret: &[u8], timestamp: i64, body: &[u8]) -> [u8; 32] {
    let mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
    signature_with(mac, timestamp, body)
}

/// A `Stripe-Signature` header value for `body`, exactly as Stripe computes it: `t=…,v1=…`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!(
        "t={timestamp},v1={}",
        hex::encode(compute_signature(secret, timestamp, body))
    )
}

/// A small stack buffer holding the decimal form of a timestamp (avoids a heap allocation per request).
struct Digits {
    buf: [u8; 24],
    start: usize,
}

impl Digits {
    fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

fn itoa_buf(n: i64) -> Digits {
    let mut buf = [0u8; 24];
    let mut i = buf.len();
    let negative = n < 0;
    let mut v = n.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if negative {
        i -= 1;
        buf[i] = b'-';
    }
    Digits { buf, start: i }
}

#[cfg(test)]
mod tests;
