//! Parsing of the `Stripe-Signature` header.

use super::VerifyError;

/// The parts of a `Stripe-Signature` header that matter: the timestamp and every `v1` signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeader {
    pub timestamp: i64,
    pub v1: Vec<[u8; 32]>,
}

/// Parses `t=…,v1=…[,v1=…][,v0=…]`. Elements may come in any order; unknown schemes are ignored;
/// a `v1` that is not 64 lowercase hex digits can never match and is skipped, as Stripe's own
/// libraries compare the hex strings. A header without a timestamp, with two timestamps, or
/// without any `v1` is malformed.
pub fn parse_header(raw: &[u8]) -> Result<SignatureHeader, VerifyError> {
    let text = std::str::from_utf8(raw).map_err(|_| VerifyError::MalformedHeader("not ASCII"))?;
    let mut timestamp = None;
    let mut v1 = Vec::with_capacity(2);
    let mut saw_v1 = false;
    for element in text.split(',') {
        let Some((key, value)) = element.split_once('=') else {
            return Err(VerifyError::MalformedHeader("an element is not key=value"));
        };
        match key {
            "t" => {
                if timestamp.is_some() {
                    return Err(VerifyError::MalformedHeader("more than one timestamp"));
                }
                timestamp = Some(parse_timestamp(value)?);
            }
            "v1" => {
                saw_v1 = true;
                if let Some(sig) = decode_lower_hex_32(value) {
                    v1.push(sig);
                }
            }
            _ => {} // v0 and future schemes
        }
    }
    let timestamp = timestamp.ok_or(VerifyError::MalformedHeader("no timestamp"))?;
    if !saw_v1 {
        return Err(VerifyError::MalformedHeader("no v1 signature"));
    }
    Ok(SignatureHeader { timestamp, v1 })
}

fn parse_timestamp(value: &str) -> Result<i64, VerifyError> {
    let bad = VerifyError::MalformedHeader("the timestamp is not a number");
    if value.is_empty() || value.len() > 18 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad);
    }
    value.parse().map_err(|_| bad)
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
