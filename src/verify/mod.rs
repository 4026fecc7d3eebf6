//! Stripe webhook signature verification.
//!
//! Stripe signs each delivery with `Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>][,v0=…]`
//! where `v1 = hex(HMAC-SHA256(key = endpoint secret as given, msg = t + "." + raw body))`.
//! The [`Verifier`] accepts a request when any `v1` matches any configured secret (this is how
//! secrets are rotated) and the timestamp is at most `tolerance` in the past and at most
//! `future_tolerance` in the future (see [`DEFAULT_FUTURE_TOLERANCE`] for why the two differ).
//! The header is read to the same verdict as Stripe's own SDKs (see [`header`]).
//! It is synchronous and pure: the current time is passed in, so tests can fix it.

pub mod header;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

pub use header::{parse_header, SignatureHeader};

type HmacSha256 = Hmac<Sha256>;

/// How far in the future a signed timestamp may be, by default.
///
/// The past bound (`tolerance`) is the replay protection: a captured request replays only while
/// it is younger than the tolerance. A timestamp *ahead* of this host's clock cannot come from a
/// replay (a replay is always older) nor from an attacker (only Stripe can sign); it means this
/// host's clock is behind Stripe's. Stripe's SDKs do not check it at all. Refusing it would turn a
/// clock a few minutes slow into a total outage, every delivery refused until the clock is fixed.
/// So hookbridge accepts it up to this bound: a clock behind by D lengthens the replay window by
/// D, accepted up to 15 minutes; beyond that the clock is broken and the replay window would be
/// as long, so the request is refused (400) and the operator must fix the clock.
pub const DEFAULT_FUTURE_TOLERANCE: Duration = Duration::from_secs(15 * 60);

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
    /// `age_secs` is negative for a timestamp in the future; `tolerance_secs` is the bound of
    /// that side (`tolerance` for the past, `future_tolerance` for the future).
    #[error("{}", outside_tolerance(*age_secs, *tolerance_secs))]
    OutsideTolerance { age_secs: i64, tolerance_secs: u64 },
}

fn outside_tolerance(age_secs: i64, tolerance_secs: u64) -> String {
    if age_secs >= 0 {
        format!("the signature timestamp is {age_secs}s old, more than the {tolerance_secs}s tolerance")
    } else {
        format!(
            "the signature timestamp is {}s in the future, more than the {tolerance_secs}s future_tolerance (is this host's clock slow?)",
            age_secs.unsigned_abs()
        )
    }
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

/// A request body whose `Stripe-Signature` checked out, with that header. Only
/// [`Verifier::verify_body`] makes one, so whatever is built from it (event metadata, the
/// [`crate::sink::Envelope`] published) comes from bytes that were verified.
#[derive(Debug, Clone)]
pub struct SignedBody {
    body: bytes::Bytes,
    header: String,
    verified: Verified,
}

impl SignedBody {
    /// The body, byte for byte as it was verified.
    pub fn body(&self) -> &bytes::Bytes {
        &self.body
    }

    /// The `Stripe-Signature` header as sent (verified headers are ASCII).
    pub fn header(&self) -> &str {
        &self.header
    }

    /// The proof of verification.
    pub fn verified(&self) -> Verified {
        self.verified
    }

    /// The body and the header, given up once their use is settled.
    pub fn into_parts(self) -> (bytes::Bytes, String) {
        (self.body, self.header)
    }
}

/// Verifies Stripe signatures against a set of secrets.
#[derive(Clone)]
pub struct Verifier {
    /// One keyed HMAC state per secret, so a request only clones it instead of re-keying.
    keys: Vec<HmacSha256>,
    tolerance: Duration,
    future_tolerance: Duration,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("secrets", &format_args!("[{} redacted]", self.keys.len()))
            .field("tolerance", &self.tolerance)
            .field("future_tolerance", &self.future_tolerance)
            .finish()
    }
}

impl Verifier {
    /// Builds a verifier; each secret is used as given (`whsec_` prefix included), as Stripe does.
    /// Timestamps may be `tolerance` in the past and [`DEFAULT_FUTURE_TOLERANCE`] in the future.
    pub fn new<S: AsRef<[u8]>>(secrets: &[S], tolerance: Duration) -> Self {
        let keys = secrets
            .iter()
            .map(|s| HmacSha256::new_from_slice(s.as_ref()).expect("HMAC accepts keys of any length"))
            .collect();
        Verifier {
            keys,
            tolerance,
            future_tolerance: DEFAULT_FUTURE_TOLERANCE,
        }
    }

    /// The same verifier with another bound for timestamps ahead of this host's clock.
    pub fn with_future_tolerance(mut self, future_tolerance: Duration) -> Self {
        self.future_tolerance = future_tolerance;
        self
    }

    /// The same tolerances with other secrets (a rotated secret file).
    pub fn with_secrets<S: AsRef<[u8]>>(&self, secrets: &[S]) -> Self {
        Verifier::new(secrets, self.tolerance).with_future_tolerance(self.future_tolerance)
    }

    /// How far in the past the timestamp may be.
    pub fn tolerance(&self) -> Duration {
        self.tolerance
    }

    /// How far in the future the timestamp may be.
    pub fn future_tolerance(&self) -> Duration {
        self.future_tolerance
    }

    /// [`Self::verify`], keeping the body and the header together with the proof.
    pub fn verify_body(&self, header: Option<&[u8]>, body: bytes::Bytes, now: i64) -> Result<SignedBody, VerifyError> {
        let verified = self.verify(header, &body, now)?;
        // The parser accepts only ASCII headers, so this is the header as sent.
        let header = String::from_utf8_lossy(header.unwrap_or_default()).into_owned();
        Ok(SignedBody { body, header, verified })
    }

    /// Checks `header` (the raw `Stripe-Signature` value, `None` when absent) for `body` at `now`.
    pub fn verify(&self, header: Option<&[u8]>, body: &[u8], now: i64) -> Result<Verified, VerifyError> {
        let header = match header {
            None => return Err(VerifyError::MissingHeader),
            Some(h) if h.iter().all(u8::is_ascii_whitespace) => return Err(VerifyError::MissingHeader),
            Some(h) => h,
        };
        let parsed = parse_header(header)?;
        // Usually one timestamp; two when stripe-python and stripe-node would read different ones
        // (several `t` elements), and then both must be signed, as both SDKs would require.
        for timestamp in parsed.timestamps() {
            let mut matched = false;
            for key in &self.keys {
                let expected = signature_with(key.clone(), timestamp, body);
                for candidate in &parsed.v1 {
                    // Constant time per comparison; `|` keeps going after a match.
                    matched |= bool::from(expected.ct_eq(candidate));
                }
            }
            if !matched {
                return Err(VerifyError::NoMatchingSignature);
            }
        }
        // The timestamp is checked after the signature, so an attacker learns nothing about the
        // tolerance from unsigned requests.
        for timestamp in parsed.timestamps() {
            let age = now.saturating_sub(timestamp);
            let bound = if age >= 0 {
                self.tolerance
            } else {
                self.future_tolerance
            };
            if age.unsigned_abs() > bound.as_secs() {
                return Err(VerifyError::OutsideTolerance {
                    age_secs: age,
                    tolerance_secs: bound.as_secs(),
                });
            }
        }
        Ok(Verified {
            timestamp: parsed.timestamp,
        })
    }
}

/// `mac` (keyed with a secret) after the start of the signed payload: the timestamp and a dot.
fn with_timestamp(mut mac: HmacSha256, timestamp: i64) -> HmacSha256 {
    mac.update(itoa_buf(timestamp).as_bytes());
    mac.update(b".");
    mac
}

fn signature_with(mac: HmacSha256, timestamp: i64, body: &[u8]) -> [u8; 32] {
    let mut mac = with_timestamp(mac, timestamp);
    mac.update(body);
    mac.finalize().into_bytes().into()
}

fn keyed(secret: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length")
}

/// The `Stripe-Signature` value for a v1 signature made at `timestamp`.
fn header_value(timestamp: i64, signature: &[u8]) -> String {
    format!("t={timestamp},v1={}", hex::encode(signature))
}

/// The raw v1 signature of `body` at `timestamp` with `secret`.
pub fn compute_signature(secret: &[u8], timestamp: i64, body: &[u8]) -> [u8; 32] {
    signature_with(keyed(secret), timestamp, body)
}

/// A `Stripe-Signature` header value for `body`, exactly as Stripe computes it: `t=…,v1=…`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    header_value(timestamp, &compute_signature(secret, timestamp, body))
}

/// The signing of bodies that share their first bytes (the load generator's, made from a few
/// templates): the HMAC state after `t.` and those bytes, kept for one timestamp, finished for
/// each body with the rest of it. The header is the one [`sign`] gives for the whole body.
#[derive(Clone)]
pub struct SigningPrefix {
    timestamp: i64,
    mac: HmacSha256,
}

impl SigningPrefix {
    pub fn new(secret: &[u8], timestamp: i64, prefix: &[u8]) -> SigningPrefix {
        let mut mac = with_timestamp(keyed(secret), timestamp);
        mac.update(prefix);
        SigningPrefix { timestamp, mac }
    }

    pub fn timestamp(&self) -> i64 {
        self.timestamp
    }

    /// The `Stripe-Signature` value of the body made of the prefix and then `rest`.
    pub fn sign(&self, rest: &[u8]) -> String {
        let mut mac = self.mac.clone();
        mac.update(rest);
        header_value(self.timestamp, &mac.finalize().into_bytes())
    }
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
