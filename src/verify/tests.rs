use super::*;

const SECRET: &str = "whsec_test_secret";
const BODY: &[u8] = br#"{"id":"evt_1","type":"invoice.paid"}"#;
const NOW: i64 = 1_700_000_000;

fn verifier() -> Verifier {
    Verifier::new(&[SECRET], Duration::from_secs(300))
}

fn check(header: &str) -> Result<Verified, VerifyError> {
    verifier().verify(Some(header.as_bytes()), BODY, NOW)
}

#[test]
fn known_vector_matches_an_independent_hmac() {
    // Computed with: printf '1700000000.{"id":"evt_1","type":"invoice.paid"}' |
    //   openssl dgst -sha256 -hmac whsec_test_secret
    let expected = "t=1700000000,v1=46dc069361a7691082640523fa33fe5d6c8c88d5f5e257cdf8cf11539d166595";
    assert_eq!(sign(SECRET.as_bytes(), NOW, BODY), expected);
}

#[test]
fn accepts_its_own_signature() {
    let header = sign(SECRET.as_bytes(), NOW, BODY);
    assert_eq!(check(&header).unwrap().timestamp(), NOW);
}

#[test]
fn elements_in_any_order_and_unknown_schemes_ignored() {
    let sig = hex::encode(compute_signature(SECRET.as_bytes(), NOW, BODY));
    for header in [
        format!("v1={sig},t={NOW}"),
        format!("v0=abc,t={NOW},v1={sig}"),
        format!("t={NOW},v2=zzz,v1={sig},x=1"),
    ] {
        assert!(check(&header).is_ok(), "{header}");
    }
}

#[test]
fn any_v1_may_match() {
    let sig = hex::encode(compute_signature(SECRET.as_bytes(), NOW, BODY));
    let wrong = "0".repeat(64);
    assert!(check(&format!("t={NOW},v1={wrong},v1={sig}")).is_ok());
    assert!(check(&format!("t={NOW},v1={sig},v1={wrong}")).is_ok());
    assert!(check(&format!("t={NOW},v1=nothex,v1={sig}")).is_ok());
}

#[test]
fn any_secret_may_match_for_rotation() {
    let v = Verifier::new(&["whsec_old", "whsec_new"], Duration::from_secs(300));
    for secret in ["whsec_old", "whsec_new"] {
        let header = sign(secret.as_bytes(), NOW, BODY);
        assert!(v.verify(Some(header.as_bytes()), BODY, NOW).is_ok());
    }
    let header = sign(b"whsec_other", NOW, BODY);
    assert_eq!(
        v.verify(Some(header.as_bytes()), BODY, NOW),
        Err(VerifyError::NoMatchingSignature)
    );
}

#[test]
fn the_whsec_prefix_is_part_of_the_key() {
    let header = sign(b"test_secret", NOW, BODY);
    assert_eq!(check(&header), Err(VerifyError::NoMatchingSignature));
}

#[test]
fn a_changed_body_or_timestamp_fails() {
    let header = sign(SECRET.as_bytes(), NOW, BODY);
    let mut body = BODY.to_vec();
    body[5] ^= 1;
    assert_eq!(
        verifier().verify(Some(header.as_bytes()), &body, NOW),
        Err(VerifyError::NoMatchingSignature)
    );
    let sig = hex::encode(compute_signature(SECRET.as_bytes(), NOW, BODY));
    assert_eq!(
        check(&format!("t={},v1={sig}", NOW + 1)),
        Err(VerifyError::NoMatchingSignature)
    );
}

#[test]
fn uppercase_hex_never_matches_like_stripes_sdks() {
    let sig = hex::encode_upper(compute_signature(SECRET.as_bytes(), NOW, BODY));
    assert_eq!(
        check(&format!("t={NOW},v1={sig}")),
        Err(VerifyError::NoMatchingSignature)
    );
}

#[test]
fn tolerance_applies_to_past_and_future() {
    let v = verifier();
    for (t, ok) in [
        (NOW - 300, true),
        (NOW + 300, true),
        (NOW - 301, false),
        (NOW + 301, false),
    ] {
        let header = sign(SECRET.as_bytes(), t, BODY);
        let result = v.verify(Some(header.as_bytes()), BODY, NOW);
        assert_eq!(result.is_ok(), ok, "t offset {}", t - NOW);
        if !ok {
            assert!(matches!(result, Err(VerifyError::OutsideTolerance { .. })));
        }
    }
}

#[test]
fn missing_or_empty_header() {
    let v = verifier();
    assert_eq!(v.verify(None, BODY, NOW), Err(VerifyError::MissingHeader));
    assert_eq!(v.verify(Some(b""), BODY, NOW), Err(VerifyError::MissingHeader));
    assert_eq!(v.verify(Some(b"  "), BODY, NOW), Err(VerifyError::MissingHeader));
}

#[test]
fn every_malformed_header_is_reported_as_such() {
    let sig = hex::encode(compute_signature(SECRET.as_bytes(), NOW, BODY));
    let cases = [
        format!("v1={sig}"),                 // no timestamp
        format!("t={NOW}"),                  // no v1
        format!("t={NOW},v0={sig}"),         // only v0
        format!("t=abc,v1={sig}"),           // timestamp not a number
        format!("t=,v1={sig}"),              // empty timestamp
        format!("t=-5,v1={sig}"),            // sign is not a digit
        format!("t={NOW},t={NOW},v1={sig}"), // two timestamps
        format!("t={NOW};v1={sig}"),         // wrong separator
        format!("t={NOW},v1"),               // element without '='
        "garbage".to_string(),
        format!("t=99999999999999999999,v1={sig}"), // overflow
    ];
    for header in cases {
        assert!(
            matches!(check(&header), Err(VerifyError::MalformedHeader(_))),
            "{header} -> {:?}",
            check(&header)
        );
    }
    let not_utf8 = [b't', b'=', 0xff];
    assert!(matches!(
        verifier().verify(Some(&not_utf8), BODY, NOW),
        Err(VerifyError::MalformedHeader(_))
    ));
}

#[test]
fn empty_secret_list_matches_nothing() {
    let v = Verifier::new::<&str>(&[], Duration::from_secs(300));
    let header = sign(SECRET.as_bytes(), NOW, BODY);
    assert_eq!(
        v.verify(Some(header.as_bytes()), BODY, NOW),
        Err(VerifyError::NoMatchingSignature)
    );
}

#[test]
fn negative_and_zero_timestamps_sign_like_decimal_text() {
    assert_eq!(itoa_buf(0).as_bytes(), b"0");
    assert_eq!(itoa_buf(-42).as_bytes(), b"-42");
    assert_eq!(itoa_buf(i64::MIN).as_bytes(), i64::MIN.to_string().as_bytes());
}

#[test]
fn debug_output_does_not_show_secrets() {
    let text = format!("{:?}", verifier());
    assert!(!text.contains("test_secret"), "{text}");
}
