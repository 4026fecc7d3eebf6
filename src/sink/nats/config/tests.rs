use super::{check_subject, subject_matches, StreamMode};
use crate::config::{parse_str, read_secrets, validate};
use crate::sink::SinkKind;

fn config(sink: &str, target: &str) -> String {
    format!(
        r#"
endpoints:
  - path: /w
    secrets: [{{ value: whsec_x }}]
sinks:
  js:
{sink}
routes:
  - match: "*"
    to: [{{ sink: js, {target} }}]
"#
    )
}

fn problems_for(sink: &str, target: &str) -> Vec<String> {
    let raw = parse_str(&config(sink, target)).unwrap_or_else(|e| panic!("parses: {e}"));
    // Validation reads no file; what a valid config names is read when the runtime is built.
    match validate(raw) {
        Ok(settings) => match read_secrets(&settings) {
            Ok(_) => vec![],
            Err(p) => p.iter().map(ToString::to_string).collect(),
        },
        Err(p) => p.iter().map(ToString::to_string).collect(),
    }
}

fn problems(sink: &str) -> Vec<String> {
    problems_for(sink, r#"subject: "stripe.{type}""#)
}

#[test]
fn defaults_and_subject_target() {
    let raw = parse_str(&config(
        "    kind: nats\n    servers: nats://127.0.0.1:4222",
        r#"subject: "stripe.{type}""#,
    ))
    .unwrap_or_else(|e| panic!("parses: {e}"));
    let Some(SinkKind::Nats(c)) = raw.sinks.get("js") else {
        panic!("a nats sink")
    };
    assert_eq!(c.servers, ["nats://127.0.0.1:4222"]);
    assert_eq!(c.max_in_flight, 1024);
    assert_eq!(c.connect_timeout, std::time::Duration::from_secs(5));
    assert!(c.stream.is_none());
    assert!(validate(raw).is_ok());
    // One string with commas (an environment override) is a list too.
    let raw = parse_str(&config(
        "    kind: nats\n    servers: \"nats://a:4222, tls://b:4222\"",
        r#"subject: "stripe.{type}""#,
    ))
    .unwrap_or_else(|e| panic!("parses: {e}"));
    let Some(SinkKind::Nats(c)) = raw.sinks.get("js") else {
        panic!("a nats sink")
    };
    assert_eq!(c.servers, ["nats://a:4222", "tls://b:4222"]);
}

#[test]
fn a_nats_target_takes_subject_only() {
    let sink = "    kind: nats\n    servers: [\"127.0.0.1:4222\"]";
    let topic = problems_for(sink, r#"topic: "stripe""#);
    assert!(
        topic
            .iter()
            .any(|p| p.contains("routes[0].to[0].topic: a nats sink takes `subject`")),
        "{topic:?}"
    );
    let none = problems_for(sink, "");
    assert!(none.iter().any(|p| p.contains("needs a `subject`")), "{none:?}");
}

#[test]
fn every_bad_key_is_named() {
    let p = problems(
        r#"    kind: nats
    servers: ["nats://user:pw@h:4222", "http://h:80", "nats://h:notaport"]
    user: u
    token: { value: "t0ken-secret" }
    max_in_flight: 0
    connect_timeout: 0s
    reconnect_max_delay: 10ms
    stream:
      name: "bad.name"
      subjects: ["a..b", "a.>.b"]
      replicas: 2
      duplicate_window: 0s"#,
    );
    let joined = p.join("\n");
    for key in [
        "sinks.js.servers[0]",
        "sinks.js.servers[1]",
        "sinks.js.servers[2]",
        "sinks.js.token: set one way to log in",
        "sinks.js.password: is needed with user",
        "sinks.js.max_in_flight",
        "sinks.js.connect_timeout",
        "sinks.js.reconnect_max_delay",
        "sinks.js.stream.name",
        "sinks.js.stream.subjects[0]",
        "sinks.js.stream.subjects[1]",
        "sinks.js.stream.replicas",
        "sinks.js.stream.duplicate_window",
    ] {
        assert!(joined.contains(key), "{key} missing in:\n{joined}");
    }
    assert!(
        !joined.contains("t0ken-secret") && !joined.contains(":pw@"),
        "a secret is echoed:\n{joined}"
    );
}

#[test]
fn secrets_seed_and_credentials_are_read_when_the_runtime_is_built() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let junk = dir.path().join("junk.creds");
    std::fs::write(&junk, "SUAML2-not-a-creds-file").unwrap_or_else(|e| panic!("{e}"));
    let p = problems(&format!(
        "    kind: nats\n    servers: h:4222\n    credentials_file: {}",
        junk.display()
    ));
    assert!(
        p.iter()
            .any(|p| p.contains("sinks.js.credentials_file") && p.contains("not a NATS credentials file")),
        "{p:?}"
    );
    assert!(!p.join(" ").contains("SUAML2"), "the file's content is echoed: {p:?}");
    let bad_seed = problems("    kind: nats\n    servers: h:4222\n    nkey_seed: { value: SUnotaseed }");
    assert!(
        bad_seed
            .iter()
            .any(|p| p.contains("sinks.js.nkey_seed") && !p.contains("SUnotaseed")),
        "{bad_seed:?}"
    );
    let good_seed = problems(
        "    kind: nats\n    servers: h:4222\n    nkey_seed: { value: SUAML2SIGHPLEM6WOKU6IUPTPTYVXR2LO6PGBWP753U6VHZEREDF5NQZXY }",
    );
    assert!(good_seed.is_empty(), "{good_seed:?}");
    let unset = problems(
        "    kind: nats\n    servers: h:4222\n    user: u\n    password: { env: HOOKBRIDGE_TEST_UNSET_NATS_PW }",
    );
    assert!(
        unset.iter().any(|p| p.contains("HOOKBRIDGE_TEST_UNSET_NATS_PW")),
        "{unset:?}"
    );
    let tls = problems("    kind: nats\n    servers: tls://h:4222\n    tls: { cert_file: /nonexistent/c.pem }");
    assert!(tls.iter().any(|p| p.contains("sinks.js.tls.key_file")), "{tls:?}");
}

#[test]
fn stream_mode_and_credential_files() {
    let raw = parse_str(&config(
        "    kind: nats\n    servers: h:4222\n    user: u\n    password: { file: /run/pw }\n    tls: { ca_file: /run/ca.pem }\n    stream: { name: STRIPE, subjects: [\"stripe.>\"], mode: check }",
        r#"subject: "stripe.{type}""#,
    ))
    .unwrap_or_else(|e| panic!("parses: {e}"));
    let Some(SinkKind::Nats(c)) = raw.sinks.get("js") else {
        panic!("a nats sink")
    };
    let stream = c.stream.as_ref().unwrap_or_else(|| panic!("a stream"));
    assert_eq!(stream.mode, StreamMode::Check);
    assert_eq!(stream.duplicate_window, std::time::Duration::from_secs(120));
    let files: Vec<String> = c.credential_files().iter().map(|f| f.display().to_string()).collect();
    assert_eq!(files, ["/run/pw", "/run/ca.pem"]);
    assert!(c.summary().contains("password file:/run/pw"), "{}", c.summary());
}

#[test]
fn subjects() {
    assert!(check_subject("stripe.invoice.paid", false).is_ok());
    for bad in [
        "", ".", "a..b", ".a", "a.", "a b", "a\tb", "a\u{7f}", "é.b", "a.*", "a.>", "a*b", "a>", ">",
    ] {
        assert!(check_subject(bad, false).is_err(), "{bad:?} accepted");
    }
    assert!(check_subject("a.*.c", true).is_ok() && check_subject("a.>", true).is_ok());
    assert!(check_subject("a.>.c", true).is_err() && check_subject("a.b*", true).is_err());
    assert!(subject_matches("stripe.>", "stripe.invoice.paid"));
    assert!(subject_matches("stripe.*", "stripe.charge") && !subject_matches("stripe.*", "stripe.a.b"));
    assert!(subject_matches("stripe.>", "stripe.>") && !subject_matches("stripe.>", "stripe"));
    assert!(!subject_matches("a.b", "a.b.c") && subject_matches("a.b", "a.b"));
}

#[test]
fn example_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/nats.example.yaml");
    let settings = crate::config::load(std::path::Path::new(path)).unwrap_or_else(|e| panic!("{e}"));
    let nats: Vec<_> = settings
        .sinks
        .iter()
        .filter_map(|s| match &s.config {
            SinkKind::Nats(c) => Some(c),
            _ => None,
        })
        .collect();
    assert!(!nats.is_empty(), "the example defines a nats sink");
    assert!(nats.iter().any(|c| c.stream.is_some()), "the example shows a stream");
}
