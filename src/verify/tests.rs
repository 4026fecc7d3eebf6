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
fn a_signing_prefix_gives_the_whole_bodys_signature_at_every_split() {
    let body: Vec<u8> = (0..300u32).map(|i| b"{}\",:abcxyz"[(i % 11) as usize]).collect();
    for split in [0, 1, 55, 63, 64, 65, 119, 128, 200, 299, 300] {
        let prefix = SigningPrefix::new(SECRET.as_bytes(), NOW, &body[..split]);
        assert_eq!(prefix.timestamp(), NOW);
        assert_eq!(
            prefix.sign(&body[split..]),
            sign(SECRET.as_bytes(), NOW, &body),
            "split at {split}"
        );
        // Reused for another body with the same prefix.
        let mut other = body.clone();
        other.push(b'!');
        assert_eq!(prefix.sign(&other[split..]), sign(SECRET.as_bytes(), NOW, &other));
    }
    let prefix = SigningPrefix::new(SECRET.as_bytes(), NOW + 1, &BODY[..7]);
    assert_ne!(prefix.sign(&BODY[7..]), sign(SECRET.as_bytes(), NOW, BODY));
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
fn the_past_is_bounded_by_tolerance_and_the_future_by_future_tolerance() {
    let future = DEFAULT_FUTURE_TOLERANCE.as_secs() as i64;
    for (v, future) in [
        (verifier(), future),
        (verifier().with_future_tolerance(Duration::from_secs(30)), 30),
        (verifier().with_future_tolerance(Duration::ZERO), 0),
    ] {
        for (t, ok) in [
            (NOW - 300, true),
            (NOW - 301, false),
            (NOW + future, true),
            (NOW + future + 1, false),
            (NOW + 299, future >= 299),
        ] {
            let header = sign(SECRET.as_bytes(), t, BODY);
            let result = v.verify(Some(header.as_bytes()), BODY, NOW);
            assert_eq!(result.is_ok(), ok, "t offset {}, future tolerance {future}", t - NOW);
            if !ok {
                assert!(matches!(result, Err(VerifyError::OutsideTolerance { .. })));
            }
        }
    }
}

#[test]
fn a_future_timestamp_says_the_clock_may_be_slow() {
    let header = sign(SECRET.as_bytes(), NOW + 3600, BODY);
    let err = check(&header).unwrap_err();
    assert_eq!(
        err,
        VerifyError::OutsideTolerance {
            age_secs: -3600,
            tolerance_secs: DEFAULT_FUTURE_TOLERANCE.as_secs()
        }
    );
    assert!(err.to_string().contains("3600s in the future"), "{err}");
    assert!(err.to_string().contains("clock"), "{err}");
    let old = check(&sign(SECRET.as_bytes(), NOW - 3600, BODY)).unwrap_err();
    assert!(old.to_string().contains("3600s old"), "{old}");
}

#[test]
fn rotated_secrets_keep_both_tolerances() {
    let v = verifier().with_future_tolerance(Duration::from_secs(7));
    let rotated = v.with_secrets(&["whsec_new"]);
    assert_eq!(rotated.tolerance(), Duration::from_secs(300));
    assert_eq!(rotated.future_tolerance(), Duration::from_secs(7));
    let header = sign(b"whsec_new", NOW, BODY);
    assert!(rotated.verify(Some(header.as_bytes()), BODY, NOW).is_ok());
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
        format!("v1={sig}"),             // no timestamp
        format!("t={NOW}"),              // no v1
        format!("t={NOW},v0={sig}"),     // only v0
        format!("t=abc,v1={sig}"),       // timestamp not a number
        format!("t=,v1={sig}"),          // empty timestamp
        format!("t=+,v1={sig}"),         // a sign without digits
        format!("t=1__0,v1={sig}"),      // Python's int() refuses a doubled underscore
        format!("t={NOW}x,v1={sig}"),    // Python's int() refuses a trailing letter
        format!("t={NOW},t=x,v1={sig}"), // the last t is not a number for parseInt
        format!("t={NOW};v1={sig}"),     // wrong separator
        format!("t={NOW},v1"),           // v1 element without '='
        format!("t,t={NOW},v1={sig}"),   // t element without '='
        format!("t={NOW},v1=,v1={sig}"), // empty v1: stripe-node throws
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
fn forms_both_sdks_accept_are_accepted() {
    let sig = hex::encode(compute_signature(SECRET.as_bytes(), NOW, BODY));
    for header in [
        format!("t={NOW},v1={sig},"),
        format!(",t={NOW},v1={sig}"),
        format!("t={NOW},,v1={sig}"),
        format!("t={NOW},junk,v1={sig}"),
        format!("t=+{NOW},v1={sig}"),
        format!("t=000{NOW},v1={sig}"),
        format!("t= {NOW} ,v1={sig}"),
        format!("t={NOW}=x,v1={sig}=y"),
        format!("t={NOW},t={NOW},v1={sig}"),
        format!("t={NOW},t=junk,t={NOW},v1={sig}"),
    ] {
        assert_eq!(check(&header).map(|v| v.timestamp()), Ok(NOW), "{header}");
    }
}

#[test]
fn two_different_timestamps_need_a_signature_for_each() {
    let sig = hex::encode(compute_signature(SECRET.as_bytes(), NOW, BODY));
    let sig_later = hex::encode(compute_signature(SECRET.as_bytes(), NOW + 1, BODY));
    let t2 = NOW + 1;
    // stripe-python reads the first t, stripe-node the last: each alone would accept one of these.
    assert_eq!(
        check(&format!("t={NOW},t={t2},v1={sig}")),
        Err(VerifyError::NoMatchingSignature)
    );
    assert_eq!(
        check(&format!("t={NOW},t={t2},v1={sig_later}")),
        Err(VerifyError::NoMatchingSignature)
    );
    assert!(check(&format!("t={NOW},t={t2},v1={sig},v1={sig_later}")).is_ok());
    // Python's int() reads 1_7 as 17 and parseInt reads 1: two timestamps again.
    let h = parse_header(format!("t=1_7,v1={sig}").as_bytes()).unwrap();
    assert_eq!((h.timestamp, h.last_timestamp), (17, 1));
    let h = parse_header(format!("t=-0042,v1={sig}").as_bytes()).unwrap();
    assert_eq!((h.timestamp, h.last_timestamp), (-42, -42));
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
