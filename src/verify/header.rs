//! Parsing of the `Stripe-Signature` header, to the same verdict as Stripe's own SDKs.
//!
//! hookbridge accepts a header exactly when both official SDKs, stripe-python and stripe-node,
//! would accept it (the corpus in `tests/interop/signature_corpus.txt` checks this against the
//! real SDKs). Both split the header on `,` and each element on `=`, and take the text between
//! the first and the second `=` as the value. So, like them:
//! - empty elements (a leading, trailing or doubled comma) and elements of other schemes (`v0`,
//!   `v2`, `T`, ` v1`, anything without `=`) are ignored; keys are compared exactly;
//! - a value ends at the next `=` (`v1=<sig>=junk` carries `<sig>`);
//! - the timestamp may have spaces around it, a `+` or `-` sign and leading zeros: it is signed
//!   as the number it denotes (`t=+0017` is signed as `17`).
//!
//! Where the two SDKs disagree, the stricter verdict wins:
//! - several `t` elements: stripe-python uses the first, stripe-node the last. hookbridge
//!   requires a matching `v1` for each of the two (the same one when they are equal), so a
//!   header passes only if both SDKs would pass it.
//! - the timestamp's number: stripe-python reads the first `t` with `int()` (surrounding spaces,
//!   a sign, digits with single `_` between them), stripe-node the last with `parseInt` (leading
//!   spaces, a sign, the digits up to the first non-digit; the rest is ignored).
//! - a `t` or `v1` element without `=` fails in stripe-python, and a `v1` element with an empty
//!   value makes stripe-node throw: both are malformed here.
//!
//! A `v1` that is not 64 lowercase hex digits can never match (both SDKs compare hex strings)
//! and is skipped.

use super::VerifyError;

/// The parts of a `Stripe-Signature` header that matter: the timestamps and every `v1` signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeader {
    /// The timestamp as stripe-python reads it (the first `t` element).
    pub timestamp: i64,
    /// The timestamp as stripe-node reads it (the last `t` element); usually the same.
    pub last_timestamp: i64,
    pub v1: Vec<[u8; 32]>,
}

impl SignatureHeader {
    /// Every distinct timestamp a `v1` must be found for: one, or two when the SDKs differ.
    pub fn timestamps(&self) -> impl Iterator<Item = i64> {
        let second = (self.last_timestamp != self.timestamp).then_some(self.last_timestamp);
        std::iter::once(self.timestamp).chain(second)
    }
}

/// Parses a `Stripe-Signature` value (see the module documentation for the rules).
pub fn parse_header(raw: &[u8]) -> Result<SignatureHeader, VerifyError> {
    let text = std::str::from_utf8(raw).map_err(|_| VerifyError::MalformedHeader("not UTF-8"))?;
    let mut first_t: Option<&str> = None;
    let mut last_t: Option<&str> = None;
    let mut v1 = Vec::with_capacity(2);
    let mut saw_v1 = false;
    for element in text.split(',') {
        let (key, value) = match element.split_once('=') {
            Some((key, rest)) => (key, Some(rest.split('=').next().unwrap_or(rest))),
            None => (element, None),
        };
        match (key, value) {
            ("t", None) => return Err(VerifyError::MalformedHeader("a t element has no '='")),
            ("v1", None) => return Err(VerifyError::MalformedHeader("a v1 element has no '='")),
            ("v1", Some("")) => return Err(VerifyError::MalformedHeader("a v1 element is empty")),
            ("t", Some(value)) => {
                first_t.get_or_insert(value);
                last_t = Some(value);
            }
            ("v1", Some(value)) => {
                saw_v1 = true;
                if let Some(sig) = decode_lower_hex_32(value) {
                    v1.push(sig);
                }
            }
            _ => {} // v0, future schemes, empty elements
        }
    }
    let (Some(first), Some(last)) = (first_t, last_t) else {
        return Err(VerifyError::MalformedHeader("no timestamp"));
    };
    if !saw_v1 {
        return Err(VerifyError::MalformedHeader("no v1 signature"));
    }
    let timestamp = parse_python_int(first).ok_or(VerifyError::MalformedHeader("the timestamp is not a number"))?;
    let last_timestamp =
        parse_js_int(last).ok_or(VerifyError::MalformedHeader("the last timestamp is not a number"))?;
    Ok(SignatureHeader {
        timestamp,
        last_timestamp,
        v1,
    })
}

/// Whitespace Python's `int()` skips around a number (`str.isspace`).
fn python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Whitespace JavaScript's `parseInt` skips before a number (WhiteSpace and LineTerminator).
fn js_space(c: char) -> bool {
    (c.is_whitespace() && c != '\u{85}') || c == '\u{feff}'
}

/// Python's `int(value)` for ASCII digits: surrounding whitespace, an optional sign, digits with
/// single underscores between them. `None` for anything else, or beyond `i64`.
fn parse_python_int(value: &str) -> Option<i64> {
    let body = value.trim_matches(python_space);
    let (negative, digits) = split_sign(body);
    if digits.is_empty() || digits.starts_with('_') || digits.ends_with('_') || digits.contains("__") {
        return None;
    }
    if !digits.bytes().all(|b| b.is_ascii_digit() || b == b'_') {
        return None;
    }
    accumulate(negative, digits.bytes().filter(u8::is_ascii_digit))
}

/// JavaScript's `parseInt(value, 10)`: leading whitespace, an optional sign, then the ASCII
/// digits up to the first other character (which ends the number). `None` when there is no digit
/// (JavaScript's NaN) or the number is beyond `i64`.
fn parse_js_int(value: &str) -> Option<i64> {
    let (negative, rest) = split_sign(value.trim_start_matches(js_space));
    let end = rest.bytes().position(|b| !b.is_ascii_digit()).unwrap_or(rest.len());
    if end == 0 {
        return None;
    }
    accumulate(negative, rest[..end].bytes())
}

fn split_sign(s: &str) -> (bool, &str) {
    match s.as_bytes().first() {
        Some(b'+') => (false, &s[1..]),
        Some(b'-') => (true, &s[1..]),
        _ => (false, s),
    }
}

/// The number of ASCII `digits`, negated when `negative`; `None` past `i64`.
fn accumulate(negative: bool, digits: impl Iterator<Item = u8>) -> Option<i64> {
    let mut n: i64 = 0;
    for d in digits {
        let d = i64::from(d - b'0');
        n = n.checked_mul(10)?;
        n = if negative { n.checked_sub(d)? } else { n.checked_add(d)? };
    }
    Some(n)
}

fn decode_lower_hex_32(value: &str) -> Option<[u8; 32]> {
    let bytes = value.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}
