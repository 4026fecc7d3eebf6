//! Property tests: the signature header parser, event metadata extraction, globs and destination
//! templates never panic on any input, and give the verdicts of a simple reference model written
//! here. The case counts are bounded so that the whole file runs in a few seconds.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use hookbridge::event::{EventError, EventMeta};
use hookbridge::route::{Glob, Template, TemplateError};
use hookbridge::verify::{compute_signature, parse_header, Verifier};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // No shrinking marathons on a shared two-core machine.
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// The Stripe-Signature header: hookbridge accepts exactly when both SDKs would (and the timestamp
// is not beyond its future tolerance). The models follow the SDKs' code literally.

const SECRET: &str = "whsec_prop";
const BODY: &str = r#"{"id":"evt_p","type":"invoice.paid"}"#;
const NOW: i64 = 1_700_000_000;
const TOLERANCE: i64 = 300;
const FUTURE: i64 = 900;

fn sig(t: i64) -> String {
    hex::encode(compute_signature(SECRET.as_bytes(), t, BODY.as_bytes()))
}

/// Python's `int(s)` for the characters these tests generate; `None` where it raises.
fn python_int(s: &str) -> Option<i128> {
    let s = s.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c));
    let (sign, digits) = match s.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, s.strip_prefix('+').unwrap_or(s)),
    };
    let groups: Vec<&str> = digits.split('_').collect();
    if groups
        .iter()
        .any(|g| g.is_empty() || !g.chars().all(|c| c.is_ascii_digit()))
    {
        return None;
    }
    let joined: String = groups.concat();
    if joined.len() > 30 {
        return None; // far beyond any signed timestamp in these tests
    }
    joined.parse::<i128>().ok().map(|n| sign * n)
}

/// JavaScript's `parseInt(s, 10)`; `None` for NaN or beyond 2^53 (where a JS number is inexact).
fn js_parse_int(s: Option<&str>) -> Option<i128> {
    let s = s?.trim_start_matches(|c: char| (c.is_whitespace() && c != '\u{85}') || c == '\u{feff}');
    let (sign, rest) = match s.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, s.strip_prefix('+').unwrap_or(s)),
    };
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    if digits.is_empty() || digits.len() > 15 {
        return None;
    }
    Some(sign * digits.parse::<i128>().unwrap())
}

/// stripe-python's `verify_header`: its verdict and the timestamp it read.
fn python_model(header: &str) -> (bool, Option<i128>) {
    if header.is_empty() {
        return (false, None);
    }
    let items: Vec<Vec<&str>> = header.split(',').map(|i| i.splitn(3, '=').collect()).collect();
    let t_items: Vec<&Vec<&str>> = items.iter().filter(|i| i[0] == "t").collect();
    let v1_items: Vec<&Vec<&str>> = items.iter().filter(|i| i[0] == "v1").collect();
    if t_items.is_empty() || t_items.iter().chain(&v1_items).any(|i| i.len() < 2) {
        return (false, None); // IndexError
    }
    let Some(t) = python_int(t_items[0][1]) else {
        return (false, None); // ValueError
    };
    if v1_items.is_empty() {
        return (false, Some(t));
    }
    let expected = i64::try_from(t).ok().map(sig);
    let matched = v1_items.iter().any(|i| Some(i[1].to_string()) == expected);
    (matched && t >= i128::from(NOW - TOLERANCE), Some(t))
}

/// stripe-node's `verifyHeader`: its verdict and the timestamp it read.
fn node_model(header: &str) -> (bool, Option<i128>) {
    if header.is_empty() {
        return (false, None);
    }
    let mut timestamp: Option<Option<i128>> = None; // None = never set (-1 in the SDK)
    let mut signatures: Vec<Option<&str>> = Vec::new();
    for item in header.split(',') {
        let kv: Vec<&str> = item.split('=').collect();
        if kv[0] == "t" {
            timestamp = Some(js_parse_int(kv.get(1).copied()));
        }
        if kv[0] == "v1" {
            signatures.push(kv.get(1).copied());
        }
    }
    let Some(t) = timestamp else {
        return (false, None);
    };
    if t == Some(-1) || signatures.is_empty() {
        return (false, t);
    }
    // secureCompare throws on an undefined or empty signature.
    if signatures.iter().any(|s| s.is_none_or(str::is_empty)) {
        return (false, t);
    }
    let expected = t.and_then(|t| i64::try_from(t).ok()).map(sig);
    let matched = signatures.iter().any(|s| s.map(str::to_string) == expected);
    (
        matched && t.is_some_and(|t| i128::from(NOW) - t <= i128::from(TOLERANCE)),
        t,
    )
}

fn hookbridge_model(header: &str) -> bool {
    let (py, py_t) = python_model(header);
    let (node, node_t) = node_model(header);
    let not_too_far_ahead = |t: Option<i128>| t.is_some_and(|t| t <= i128::from(NOW + FUTURE));
    py && node && not_too_far_ahead(py_t) && not_too_far_ahead(node_t)
}

fn verifier() -> Verifier {
    Verifier::new(&[SECRET], Duration::from_secs(TOLERANCE as u64))
        .with_future_tolerance(Duration::from_secs(FUTURE as u64))
}

fn verdict(header: &str) -> bool {
    verifier().verify(Some(header.as_bytes()), BODY.as_bytes(), NOW).is_ok()
}

/// A timestamp text: one of the interesting times, dressed as the SDKs may read it.
fn timestamp_text() -> impl Strategy<Value = String> {
    let time = prop_oneof![
        Just(NOW),
        Just(NOW + 1),
        Just(NOW - 1000),
        Just(NOW + 5000),
        Just(-1),
        Just(0)
    ];
    let dress = prop_oneof![
        4 => Just(("", "")),
        1 => Just(("+", "")),
        1 => Just(("00", "")),
        1 => Just((" ", " ")),
        1 => Just(("\t", "")),
        1 => Just(("", "x")),
        1 => Just(("", ".0")),
        1 => Just(("", "=9")),
        1 => Just(("-", "")),
        1 => Just(("\u{a0}", "")),
    ];
    let underscore = prop::bool::weighted(0.1);
    (time, dress, underscore).prop_map(|(t, (before, after), underscore)| {
        let mut digits = t.to_string();
        if underscore && digits.len() > 2 {
            digits.insert(1, '_');
        }
        format!("{before}{digits}{after}")
    })
}

/// One element of a header, mostly the interesting ones.
fn element() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => timestamp_text().prop_map(|t| format!("t={t}")),
        5 => prop_oneof![Just(NOW), Just(NOW + 1), Just(NOW - 1000), Just(NOW + 5000)]
            .prop_map(|t| format!("v1={}", sig(t))),
        1 => Just("v1=".to_string()),
        1 => Just("v1".to_string()),
        1 => Just("t".to_string()),
        1 => Just("t=".to_string()),
        1 => Just(format!("v1={}", sig(NOW).to_uppercase())),
        1 => Just(format!("v1={}=x", sig(NOW))),
        1 => Just(format!("v0={}", sig(NOW))),
        1 => Just(format!(" v1={}", sig(NOW))),
        1 => Just(format!("V1={}", sig(NOW))),
        1 => Just(format!("T={NOW}")),
        1 => Just(String::new()),
        1 => "[a-z0-9=_ ]{0,6}",
    ]
}

fn header() -> impl Strategy<Value = String> {
    prop::collection::vec(element(), 0..6).prop_map(|elements| elements.join(","))
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn signature_verdicts_agree_with_both_sdk_models(header in header()) {
        prop_assert_eq!(verdict(&header), hookbridge_model(&header), "header {:?}", header);
    }

    #[test]
    fn the_header_parser_never_panics_and_random_text_agrees_with_the_models(
        header in "[tv01=, +_\\-a-f\u{a0}]{0,40}"
    ) {
        let _ = parse_header(header.as_bytes());
        prop_assert_eq!(verdict(&header), hookbridge_model(&header), "header {:?}", header);
    }

    #[test]
    fn the_header_parser_never_panics_on_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..80)) {
        let _ = parse_header(&bytes);
        let _ = verifier().verify(Some(&bytes), BODY.as_bytes(), NOW);
    }
}

// ---------------------------------------------------------------------------------------------
// Globs: `*` is any run of characters, everything else literal. The model is the textbook
// backtracking matcher.

fn glob_model(pattern: &[char], text: &[char]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some(('*', rest)) => (0..=text.len()).any(|skip| glob_model(rest, &text[skip..])),
        Some((c, rest)) => text.first() == Some(c) && glob_model(rest, &text[1..]),
    }
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn globs_agree_with_a_backtracking_matcher(pattern in "[ab.*]{0,8}", text in "[ab.]{0,10}") {
        let p: Vec<char> = pattern.chars().collect();
        let t: Vec<char> = text.chars().collect();
        prop_assert_eq!(Glob::new(&pattern).matches(&text), glob_model(&p, &t), "{:?} ~ {:?}", pattern, text);
    }

    #[test]
    fn globs_never_panic_on_any_text(pattern in "\\PC{0,12}", text in "\\PC{0,16}") {
        let p: Vec<char> = pattern.chars().collect();
        let t: Vec<char> = text.chars().collect();
        prop_assert_eq!(Glob::new(&pattern).matches(&text), glob_model(&p, &t));
    }
}

// ---------------------------------------------------------------------------------------------
// Destination templates. The model parses with a character loop and renders by substitution.

const PLACEHOLDERS: [&str; 4] = ["type", "object", "livemode", "account"];

fn template_model(source: &str) -> Result<(), TemplateError> {
    if source.is_empty() {
        return Err(TemplateError::Empty);
    }
    let chars: Vec<char> = source.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '}' => return Err(TemplateError::StrayClose),
            '{' => {
                let Some(len) = chars[i + 1..].iter().position(|&c| c == '}') else {
                    return Err(TemplateError::Unclosed);
                };
                let name: String = chars[i + 1..i + 1 + len].iter().collect();
                if !PLACEHOLDERS.contains(&name.as_str()) {
                    return Err(TemplateError::UnknownPlaceholder(name));
                }
                i += len + 2;
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// The source with each placeholder replaced by its value: type, object, livemode, account.
fn substitute(source: &str, values: [&str; 4]) -> String {
    let mut out = source.to_string();
    for (i, name) in PLACEHOLDERS.iter().enumerate() {
        out = out.replace(&format!("{{{name}}}"), &char::from(1 + i as u8).to_string());
    }
    for (i, value) in values.iter().enumerate() {
        out = out.replace(char::from(1 + i as u8), value);
    }
    out
}

fn object_of(event_type: &str) -> &str {
    event_type.rsplit_once('.').map_or(event_type, |(o, _)| o)
}

fn template_source() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("{type}"),
        Just("{object}"),
        Just("{livemode}"),
        Just("{account}"),
        Just("{"),
        Just("}"),
        Just("{}"),
        Just("{nope}"),
        Just("stripe"),
        Just("."),
        Just("-"),
    ];
    prop::collection::vec(token, 0..7).prop_map(|t| t.concat())
}

fn meta(event_type: &str, livemode: bool, account: Option<&str>) -> EventMeta {
    EventMeta {
        id: "evt_1".into(),
        event_type: event_type.into(),
        api_version: None,
        livemode,
        account: account.map(str::to_string),
        object_id: None,
        created: None,
        thin: false,
    }
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn templates_parse_and_render_like_the_model(
        source in template_source(),
        event_type in "[a-z_]{1,8}(\\.[a-z_]{1,8}){0,3}",
        livemode in any::<bool>(),
        account in prop::option::of("acct_[A-Za-z0-9]{1,8}"),
    ) {
        let parsed = Template::parse(&source);
        prop_assert_eq!(parsed.as_ref().map(|_| ()).map_err(Clone::clone), template_model(&source), "{:?}", source);
        if let Ok(t) = parsed {
            let m = meta(&event_type, livemode, account.as_deref());
            let live = if livemode { "live" } else { "test" };
            let values = [event_type.as_str(), object_of(&event_type), live, account.as_deref().unwrap_or("platform")];
            prop_assert_eq!(t.render(&m), substitute(&source, values));
            prop_assert_eq!(t.is_constant(), !PLACEHOLDERS.iter().any(|p| source.contains(&format!("{{{p}}}"))));
            let for_type = [event_type.as_str(), object_of(&event_type), "{livemode}", "{account}"];
            prop_assert_eq!(t.render_for_type(&event_type), substitute(&source, for_type));
        }
    }

    #[test]
    fn templates_never_panic_on_any_text(source in "\\PC{0,24}", event_type in "\\PC{0,12}") {
        if let Ok(t) = Template::parse(&source) {
            let _ = t.render(&meta(&event_type, true, Some("acct_1")));
            let _ = t.render_for_type(&event_type);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Event metadata. Bodies are generated as JSON objects whose fields may be missing or of any JSON
// type; the model reads the same fields from the generated value.

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => "[a-zA-Z0-9_.é]{0,12}".prop_map(Value::from),
        1 => Just(Value::from("")),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        1 => any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        1 => any::<bool>().prop_map(Value::from),
        1 => Just(Value::Null),
        1 => Just(json!([1, "a", {"b": null}])),
        1 => Just(json!({"x": [true]})),
    ]
}

/// `{"id": …}` or something else.
fn with_id() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => prop::option::of(scalar()).prop_map(|id| {
            let mut m = Map::new();
            if let Some(id) = id {
                m.insert("id".into(), id);
            }
            m.insert("object".into(), Value::from("thing"));
            Value::Object(m)
        }),
        1 => scalar(),
    ]
}

fn event_value() -> impl Strategy<Value = Value> {
    let field = |name: &'static str, value: BoxedStrategy<Value>| prop::option::of(value).prop_map(move |v| (name, v));
    (
        field("id", scalar().boxed()),
        field("type", scalar().boxed()),
        field(
            "object",
            prop_oneof![Just(Value::from("event")), Just(Value::from("v2.core.event")), scalar()].boxed(),
        ),
        field("api_version", scalar().boxed()),
        field("livemode", scalar().boxed()),
        field("account", scalar().boxed()),
        field("context", scalar().boxed()),
        field("created", scalar().boxed()),
        field(
            "data",
            prop_oneof![3 => with_id().prop_map(|o| json!({"object": o})), 1 => scalar()].boxed(),
        ),
        field("related_object", with_id().boxed()),
        field("extra", scalar().boxed()),
    )
        .prop_map(|fields| {
            let (a, b, c, d, e, f, g, h, i, j, k) = fields;
            let mut m = Map::new();
            for (name, value) in [a, b, c, d, e, f, g, h, i, j, k] {
                if let Some(value) = value {
                    m.insert(name.to_string(), value);
                }
            }
            Value::Object(m)
        })
}

fn nonempty_str(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string)
}

/// `{"id": …}` where an object is expected: absent and null are fine, another object is read,
/// anything else is not the shape of an event (invalid_json).
fn object_field(v: Option<&Value>) -> Result<Option<&Map<String, Value>>, ()> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(()),
    }
}

/// What EventMeta::parse should make of a generated object: `Err(code)` or the metadata.
fn event_model(v: &Map<String, Value>) -> Result<EventMeta, &'static str> {
    let data = object_field(v.get("data")).map_err(|_| "invalid_json")?;
    let data_object = object_field(data.and_then(|d| d.get("object"))).map_err(|_| "invalid_json")?;
    let related = object_field(v.get("related_object")).map_err(|_| "invalid_json")?;
    let event_type = nonempty_str(v.get("type")).ok_or("invalid_event")?;
    let id = nonempty_str(v.get("id")).ok_or("invalid_event")?;
    let thin = v.get("object").and_then(Value::as_str) == Some("v2.core.event");
    let (account, object_id) = if thin {
        (v.get("context"), related.and_then(|r| r.get("id")))
    } else {
        (v.get("account"), data_object.and_then(|o| o.get("id")))
    };
    Ok(EventMeta {
        id,
        event_type,
        api_version: v.get("api_version").and_then(Value::as_str).map(str::to_string),
        livemode: v.get("livemode") == Some(&Value::Bool(true)),
        account: nonempty_str(account),
        object_id: nonempty_str(object_id),
        created: v.get("created").and_then(Value::as_i64),
        thin,
    })
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn event_metadata_agrees_with_the_model(value in event_value()) {
        let body = serde_json::to_vec(&value).unwrap();
        let got = EventMeta::parse(&body).map_err(|e| e.code());
        prop_assert_eq!(got, event_model(value.as_object().unwrap()), "{}", value);
    }

    #[test]
    fn a_body_that_is_not_an_object_is_invalid_json(value in scalar()) {
        if !value.is_object() {
            let body = serde_json::to_vec(&value).unwrap();
            prop_assert_eq!(EventMeta::parse(&body).map_err(|e| e.code()), Err("invalid_json"));
        }
    }

    #[test]
    fn event_metadata_never_panics_on_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = EventMeta::parse(&bytes);
    }

    #[test]
    fn event_metadata_never_panics_on_mangled_events(value in event_value(), cut in any::<prop::sample::Index>()) {
        let body = serde_json::to_vec(&value).unwrap();
        let _ = EventMeta::parse(&body[..cut.index(body.len() + 1)]);
    }
}

#[test]
fn an_array_is_not_an_event() {
    // serde reads a struct from an array by position; an event is an object.
    let body = br#"["evt_1","invoice.paid",null,null,null,null,null,null,null,null]"#;
    assert!(
        matches!(EventMeta::parse(body), Err(EventError::NotJson(_))),
        "{:?}",
        EventMeta::parse(body)
    );
}
