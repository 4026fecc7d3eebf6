use super::*;

const GOOD: &str = r#"
listen: "127.0.0.1:8080"
admin_listen: "127.0.0.1:9090"
endpoints:
  - path: /webhooks/stripe
    secrets:
      - value: whsec_test
sinks:
  local:
    kind: file
    path: "-"
  amqp:
    kind: rabbitmq
    url: "amqp://guest:guest@127.0.0.1:5672/%2f"
    exchange: stripe
  events:
    kind: kafka
    brokers: "127.0.0.1:9092"
routes:
  - match: ["payment_intent.*", "charge.*"]
    to:
      - { sink: events, topic: "stripe.payments" }
  - match: "customer.subscription.*"
    to:
      - { sink: amqp, routing_key: "{type}" }
      - { sink: local, topic: "subs" }
  - match: "*"
    to:
      - { sink: local, topic: "stripe.{object}" }
"#;

/// Validation's problems, or, as when the runtime is built, those of reading the secrets.
fn problems(yaml: &str) -> Vec<String> {
    match parse_str(yaml) {
        Err(e) => e.problems().iter().map(ToString::to_string).collect(),
        Ok(raw) => match validate(raw).map(|s| read_secrets(&s)) {
            Ok(Ok(_)) => vec![],
            Err(p) | Ok(Err(p)) => p.iter().map(ToString::to_string).collect(),
        },
    }
}

fn has(problems: &[String], needle: &str) -> bool {
    problems.iter().any(|p| p.contains(needle))
}

#[test]
fn good_config_validates_with_defaults() {
    let s = validate(parse_str(GOOD).unwrap()).unwrap();
    assert_eq!(s.max_body_bytes, 1_048_576);
    assert_eq!(s.ack_timeout, Duration::from_secs(5));
    assert_eq!(s.endpoints[0].tolerance, Duration::from_secs(300));
    assert_eq!(s.endpoints[0].future_tolerance, Duration::from_secs(15 * 60));
    assert_eq!(read_secrets(&s).unwrap().0[0][0].expose(), b"whsec_test");
    // Sinks are sorted by name and targets point at them.
    let names: Vec<_> = s.sinks.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["amqp", "events", "local"]);
    let route_of = |t| {
        s.router.route(&crate::route::Incoming {
            event_type: t,
            livemode: false,
            account: None,
            endpoint: Some("/webhooks/stripe"),
        })
    };
    let (i, route) = route_of("customer.subscription.updated").unwrap();
    assert_eq!(i, 1);
    assert_eq!(route.targets.len(), 2);
    assert_eq!(s.sinks[route.targets[0].sink].name, "amqp");
    assert_eq!(route_of("payment_intent.succeeded").unwrap().0, 0);
    assert_eq!(route_of("invoice.paid").unwrap().0, 2);
}

#[test]
fn unknown_keys_are_errors_with_their_path() {
    let p = problems(
        &GOOD
            .replace("max_body_bytes", "x")
            .replace("listen: \"127", "lisen: \"127"),
    );
    assert!(has(&p, "lisen"), "{p:?}");
    let p = problems(&GOOD.replace("brokers:", "brokerz:"));
    assert!(has(&p, "sinks.events") && has(&p, "brokerz"), "{p:?}");
    let p = problems(&GOOD.replace(
        "{ sink: events, topic: \"stripe.payments\" }",
        "{ sink: events, topik: x }",
    ));
    assert!(has(&p, "topik"), "{p:?}");
}

#[test]
fn unknown_sink_kind() {
    let p = problems(&GOOD.replace("kind: file", "kind: redis"));
    assert!(has(&p, "sinks.local") && has(&p, "redis"), "{p:?}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let yaml = r#"
listen: "nope"
admin_listen: "0.0.0.0:8080"
max_body_bytes: 0
ack_timeout: "0s"
endpoints:
  - path: webhooks
    tolerance: "0s"
    future_tolerance: "25h"
    secrets: []
  - path: /a
    secrets:
      - env: HOOKBRIDGE_TEST_UNSET_SECRET_VAR
      - {}
      - { env: A, value: b }
  - path: /a
    secrets: [{ value: whsec_x }]
sinks:
  "bad name":
    kind: discard
  k:
    kind: kafka
    brokers: ""
  r:
    kind: rabbitmq
    url: "http://x"
    exchange: e
routes:
  - match: []
    to: []
  - match: "x"
    to:
      - { sink: missing, topic: t }
      - { sink: k, routing_key: t }
      - { sink: r, topic: t }
      - { sink: k }
      - { sink: r }
      - { sink: k, topic: "a.{nope}" }
log:
  format: xml
dedup:
  ttl: "0s"
  max_bytes: 100
"#;
    let p = problems(yaml);
    for needle in [
        "listen: `nope`",
        "max_body_bytes: must be greater than 0",
        "ack_timeout: must be greater than 0",
        "endpoints[0].path",
        "endpoints[0].tolerance",
        "endpoints[0].future_tolerance: must be at most 1day",
        "endpoints[0].secrets: list at least one",
        "endpoints[1].secrets[1]: set one of",
        "endpoints[1].secrets[2]: set only one",
        "endpoints[2].path: `/a` is used by another endpoint",
        "sinks.bad name",
        "sinks.k.brokers",
        "sinks.r.url",
        "routes[0].match",
        "routes[0].to",
        "routes[1].to[0].sink: no sink named `missing`",
        "routes[1].to[1].routing_key",
        "routes[1].to[2].topic",
        "routes[1].to[3].topic: a kafka sink needs a `topic`",
        "routes[1].to[4].routing_key",
        "routes[1].to[5].topic: template `a.{nope}` has an unknown placeholder",
        "log.format",
        "dedup.ttl",
        "dedup.max_bytes: must be at least 4096",
    ] {
        assert!(has(&p, needle), "missing {needle:?} in {p:#?}");
    }
    // Secrets are read once the config is valid, when the runtime is built: each unreadable one
    // is named, all at once.
    let p = problems(&GOOD.replace(
        "      - value: whsec_test",
        "      - env: HOOKBRIDGE_TEST_UNSET_SECRET_VAR\n      - file: /definitely/not/a/secret",
    ));
    for needle in [
        "endpoints[0].secrets[0]: environment variable HOOKBRIDGE_TEST_UNSET_SECRET_VAR is not set",
        "endpoints[0].secrets[1]: cannot read secret file /definitely/not/a/secret: no such file",
    ] {
        assert!(has(&p, needle), "missing {needle:?} in {p:#?}");
    }
    // Validation itself reads nothing.
    let unset = GOOD.replace(
        "      - value: whsec_test",
        "      - env: HOOKBRIDGE_TEST_UNSET_SECRET_VAR",
    );
    assert!(validate(parse_str(&unset).unwrap()).is_ok());
    // The admin port may not be the webhook port, even through 0.0.0.0.
    let p = problems(&GOOD.replace("127.0.0.1:9090", "0.0.0.0:8080"));
    assert!(has(&p, "admin_listen: must not be the webhook port"), "{p:?}");
}

#[test]
fn durations_are_readable() {
    assert_eq!(
        crate::fields::parse_duration("250ms").unwrap(),
        Duration::from_millis(250)
    );
    assert_eq!(crate::fields::parse_duration("300s").unwrap(), Duration::from_secs(300));
    assert_eq!(crate::fields::parse_duration("1m30s").unwrap(), Duration::from_secs(90));
    let p = problems(&GOOD.replace(
        "listen: \"127.0.0.1:8080\"",
        "ack_timeout: soon\nlisten: \"127.0.0.1:8080\"",
    ));
    assert!(has(&p, "ack_timeout: `soon` is not a duration"), "{p:?}");
}

#[test]
fn the_error_is_one_line_and_names_the_file() {
    let err = ConfigError::Invalid {
        file: "x.yaml".into(),
        problems: vec![
            Problem {
                path: "a".into(),
                message: "one".into(),
            },
            Problem {
                path: "b".into(),
                message: "two".into(),
            },
        ],
    };
    assert_eq!(err.to_string(), "invalid config x.yaml: a: one; b: two");
}

#[test]
fn secret_values_never_reach_error_messages() {
    let p = problems(&GOOD.replace("kind: file", "kind: file\n    bogus: whsec_test"));
    assert!(!p.iter().any(|m| m.contains("whsec_test")), "{p:?}");
    let s = validate(parse_str(GOOD).unwrap()).unwrap();
    assert!(!format!("{s:?}").contains("whsec_test"));
    assert!(!format!("{s:?}").contains("guest:guest"));
}

#[test]
fn missing_file_is_an_error() {
    let err = load(Path::new("/definitely/not/here.yaml")).unwrap_err();
    assert_eq!(err, ConfigError::NotFound("/definitely/not/here.yaml".into()));
}

#[test]
#[allow(clippy::result_large_err)]
fn env_overrides_and_kubernetes_service_variables() {
    figment::Jail::expect_with(|jail| {
        jail.create_file("c.yaml", GOOD)?;
        // A Service named `hookbridge` makes Kubernetes inject HOOKBRIDGE_PORT=tcp://…; the
        // `HOOKBRIDGE__` prefix must not pick it up.
        jail.set_env("HOOKBRIDGE_PORT", "tcp://10.0.0.1:8080");
        jail.set_env("HOOKBRIDGE__LISTEN", "127.0.0.1:7070");
        jail.set_env("HOOKBRIDGE__SINKS__EVENTS__BROKERS", "kafka:9092");
        jail.set_env("HOOKBRIDGE__ACK_TIMEOUT", "2s");
        let s = load(Path::new("c.yaml")).map_err(|e| e.to_string())?;
        assert_eq!(s.listen.to_string(), "127.0.0.1:7070");
        assert_eq!(s.ack_timeout, Duration::from_secs(2));
        let crate::sink::SinkKind::Kafka(k) = &s.sinks[1].config else {
            panic!("events is kafka")
        };
        assert_eq!(k.brokers, "kafka:9092");
        jail.set_env("HOOKBRIDGE__LISTN", "x");
        let err = load(Path::new("c.yaml")).unwrap_err().to_string();
        assert!(err.contains("listn"), "{err}");
        Ok(())
    });
}

#[test]
fn resolve_path_prefers_cli() {
    assert_eq!(resolve_path(Some("a.yaml".into())), PathBuf::from("a.yaml"));
}

#[test]
fn the_reference_config_documents_every_key() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/hookbridge.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    validate(parse_str(&text).unwrap()).unwrap();
    for key in [
        "listen:",
        "admin_listen:",
        "max_body_bytes:",
        "ack_timeout:",
        "endpoints:",
        "tolerance:",
        "future_tolerance:",
        "secrets:",
        "env:",
        "file:",
        "value:",
        "sinks:",
        "kind: kafka",
        "kind: rabbitmq",
        "kind: file",
        "kind: discard",
        "kind: nats",
        "subject",
        "fsync:",
        "delay:",
        "routes:",
        "match:",
        "topic:",
        "dedup:",
        "capacity:",
        "ttl:",
        "log:",
        "format:",
        "level:",
        "http:",
        "header_read_timeout:",
        "body_read_timeout:",
        "max_concurrent_requests:",
        "max_header_bytes:",
        "max_buffered_bytes:",
        "max_connections:",
        "tls:",
        "cert_file:",
        "key_file:",
        "allow_networks:",
        "client_ip_header:",
        "trusted_proxies:",
        "livemode:",
        "account:",
        "endpoint:",
        "dead_letter:",
        "headers:",
    ] {
        assert!(text.contains(key), "config/hookbridge.yaml does not mention `{key}`");
    }
}

/// The sinks that config/hookbridge.yaml shows commented out are real config too.
#[test]
#[allow(clippy::result_large_err)]
fn the_commented_sinks_of_the_reference_config_are_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/hookbridge.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    // Only the `sinks:` section is uncommented (the TLS example further down names files that do
    // not exist here).
    let mut in_sinks = false;
    let uncommented: Vec<String> = text
        .lines()
        .map(|l| {
            if !l.is_empty() && !l.starts_with(' ') && !l.starts_with('#') {
                in_sinks = l.starts_with("sinks:");
            }
            let starts_block = ["  # events:", "  # amqp:", "  # js:", "  # dryrun:"]
                .iter()
                .any(|b| l.starts_with(b));
            if in_sinks && (starts_block || l.starts_with("  #   ")) {
                format!("  {}", &l[4..])
            } else if in_sinks && l == "  #" {
                String::new()
            } else {
                l.to_string()
            }
        })
        .collect();
    let uncommented = uncommented.join("\n");
    assert!(uncommented.contains("\n  events:\n    kind: kafka"), "{uncommented}");
    figment::Jail::expect_with(|jail| {
        jail.set_env("KAFKA_SASL_PASSWORD", "x");
        jail.set_env("RABBITMQ_PASSWORD", "y");
        jail.set_env("NATS_PASSWORD", "z");
        let s = validate(parse_str(&uncommented).map_err(|e| e.to_string())?).map_err(|p| format!("{p:?}"))?;
        let kinds: Vec<_> = s.sinks.iter().map(|s| s.config.kind()).collect();
        assert_eq!(kinds, ["rabbitmq", "discard", "kafka", "nats", "file"]);
        Ok(())
    });
}

#[test]
fn absurd_durations_are_refused_instead_of_overflowing_later() {
    let huge = GOOD.replace(
        "listen: \"127.0.0.1:8080\"",
        "listen: \"127.0.0.1:8080\"\nack_timeout: 18446744073709551615",
    );
    let p = problems(&huge);
    assert!(has(&p, "ack_timeout: must be at most 10m"), "{p:?}");
    let p = problems(&format!(
        "{GOOD}\ndedup:\n  ttl: 1000d\nhttp:\n  body_read_timeout: 2h\n"
    ));
    assert!(
        has(&p, "dedup.ttl: must be at most") && has(&p, "http.body_read_timeout: must be at most"),
        "{p:?}"
    );
}

const FILTERED: &str = r#"
endpoints:
  - path: /webhooks/live
    secrets: [{ value: whsec_live }]
  - path: /webhooks/test
    secrets: [{ value: whsec_test }]
sinks:
  events:
    kind: file
    path: "-"
  amqp:
    kind: rabbitmq
    url: "amqp://guest:guest@127.0.0.1:5672/%2f"
    exchange: stripe
dead_letter: { sink: events, topic: "stripe.dead-letter" }
routes:
  - match: "*"
    livemode: true
    account: platform
    endpoint: /webhooks/live
    to: [{ sink: events, topic: "stripe.live.{object}" }]
    dead_letter: { sink: amqp, routing_key: "dead.{type}" }
  - match: "*"
    livemode: true
    account: ["acct_1*", "acct_2"]
    endpoint: [/webhooks/live]
    to: [{ sink: events, topic: "stripe.connect.{account}" }]
  - match: "*"
    livemode: false
    to: [{ sink: events, topic: "stripe.test.{object}" }]
"#;

#[test]
fn route_filters_and_dead_letters_validate() {
    let s = validate(parse_str(FILTERED).unwrap()).unwrap_or_else(|p| panic!("{p:?}"));
    let routes = s.router.routes();
    assert_eq!(routes[0].filters.livemode, Some(true));
    assert_eq!(routes[0].filters.accounts[0].as_str(), "platform");
    assert_eq!(routes[0].filters.endpoints, ["/webhooks/live"]);
    assert_eq!(routes[1].filters.accounts.len(), 2);
    assert!(routes[2].filters.accounts.is_empty() && routes[2].filters.endpoints.is_empty());
    let own = s.router.dead_letter_for(&routes[0]).unwrap();
    assert_eq!(
        (own.sink_name.as_str(), own.destination.as_str()),
        ("amqp", "dead.{type}")
    );
    let global = s.router.dead_letter_for(&routes[2]).unwrap();
    assert_eq!(global.destination.as_str(), "stripe.dead-letter");
    let event = |livemode, account, endpoint| crate::route::Incoming {
        event_type: "invoice.paid",
        livemode,
        account,
        endpoint: Some(endpoint),
    };
    let index = |e| s.router.route(&e).map(|(i, _)| i);
    assert_eq!(index(event(true, None, "/webhooks/live")), Some(0));
    assert_eq!(index(event(true, Some("acct_123"), "/webhooks/live")), Some(1));
    assert_eq!(index(event(true, Some("acct_3"), "/webhooks/live")), None);
    assert_eq!(
        index(event(true, None, "/webhooks/test")),
        None,
        "a live event on the test endpoint"
    );
    assert_eq!(index(event(false, None, "/webhooks/live")), Some(2));
    // Off by default.
    let s = validate(parse_str(GOOD).unwrap()).unwrap();
    assert!(s.router.dead_letter().is_none());
    assert!(s.router.routes().iter().all(|r| s.router.dead_letter_for(r).is_none()));
}

#[test]
fn bad_route_filters_and_dead_letters_name_their_key() {
    let p = problems(&FILTERED.replace("endpoint: [/webhooks/live]", "endpoint: [/webhooks/nope]"));
    assert!(
        has(
            &p,
            "routes[1].endpoint[0]: no endpoint has path `/webhooks/nope` (known: /webhooks/live, /webhooks/test)"
        ),
        "{p:?}"
    );
    let p = problems(&FILTERED.replace("account: platform", "account: []"));
    assert!(has(&p, "routes[0].account: list at least one account glob"), "{p:?}");
    let p = problems(&FILTERED.replace("account: platform", "account: \"\""));
    assert!(
        has(&p, "routes[0].account[0]: an account glob must not be empty"),
        "{p:?}"
    );
    let p = problems(&FILTERED.replace("livemode: false", "livemode: test"));
    assert!(
        has(
            &p,
            "routes.2.livemode: invalid type: found string \"test\", expected a boolean"
        ),
        "{p:?}"
    );
    let p = problems(&FILTERED.replace("account: platform", "account: {a: 1}"));
    assert!(
        has(&p, "routes.0.account: expected a string or a list of strings"),
        "{p:?}"
    );
    let p = problems(&FILTERED.replace(
        "dead_letter: { sink: events, topic: \"stripe.dead-letter\" }",
        "dead_letter: { sink: nowhere, topic: x }",
    ));
    assert!(has(&p, "dead_letter.sink: no sink named `nowhere`"), "{p:?}");
    let p = problems(&FILTERED.replace("routing_key: \"dead.{type}\"", "topic: dead"));
    assert!(
        has(
            &p,
            "routes[0].dead_letter.topic: a rabbitmq sink takes `routing_key`, not `topic`"
        ),
        "{p:?}"
    );
    let p = problems(&FILTERED.replace("stripe.dead-letter", "dead.{nope}"));
    assert!(
        has(
            &p,
            "dead_letter.topic: template `dead.{nope}` has an unknown placeholder"
        ),
        "{p:?}"
    );
    let p = problems(&FILTERED.replace("dead_letter: { sink: amqp", "dead_letters: { sink: amqp"));
    assert!(has(&p, "dead_letters"), "{p:?}");
}

/// The benchmark's configs (`bench/configs/`, one per scenario) are real configs too.
#[test]
fn every_bench_config_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/configs");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            load(&path).unwrap_or_else(|e| panic!("{e}"));
            seen.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    seen.sort();
    assert!(seen.iter().any(|f| f == "nats.yaml"), "{seen:?}");
    assert!(seen.len() >= 6, "{seen:?}");
}
