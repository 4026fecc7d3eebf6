//! The kafka sink against a real Apache Kafka broker (`deploy/local/kafka.sh start`): what a
//! consumer reads is exactly what Stripe sent, on the routed topic, with the key and headers of
//! SPEC.md, and a Stripe SDK verifies it. Fault tests (broker stopped or killed) are in
//! tests/faults/kafka_faults.rs. These tests fail, never skip, when the broker is missing.
#![allow(clippy::unwrap_used)]

use crate::common;
use crate::kafka_support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::StatusCode;
use kafka_support::*;

const READ_TIMEOUT: Duration = Duration::from_secs(20);
const SETTLE: Duration = Duration::from_millis(700);

/// Posts `body` signed now; returns the answer and the signature header sent.
async fn post(addr: std::net::SocketAddr, body: &Bytes) -> (Answer, String) {
    let sig = sign(SECRET, body);
    let answer = post_with_signature(addr, &sig, body.clone()).await;
    (answer, sig)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_routed_event_lands_once_byte_for_byte_with_key_and_headers() {
    require_broker(Duration::from_secs(10));
    let topic = unique_topic("exact");
    let config = one_topic_config("", &topic);
    let bridge = spawn(&config).await;
    assert_eq!(get(bridge.admin_addr, "/readyz").await.status, StatusCode::OK);

    // Real-shaped fixtures (pretty-printed, Connect, thin) and compact events, with fresh ids.
    let mut bodies = Vec::new();
    for name in [
        "payment_intent.succeeded.json",
        "account.updated.connect.json",
        "invoice.paid.json",
        "v1.billing.meter.error_report_triggered.thin.json",
    ] {
        bodies.push(fixture_with_id(name, &unique_id("fx")));
    }
    for i in 0..4 {
        let id = unique_id("compact");
        bodies.push(stripe_event(
            &id,
            "charge.succeeded",
            &format!("ch_{i}"),
            None,
            i % 2 == 0,
        ));
    }
    let mut sent = Vec::new();
    for body in &bodies {
        let (answer, sig) = post(bridge.webhook_addr, body).await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
        sent.push((body.clone(), sig));
    }
    // The same delivery again (Stripe retries): answered 200, not published twice.
    let (again, _) = post(bridge.webhook_addr, &bodies[0]).await;
    assert_eq!(again.status, StatusCode::OK);

    let records = read_topic(&topic, sent.len(), READ_TIMEOUT, SETTLE);
    assert_eq!(records.len(), sent.len(), "exactly one record per accepted event");
    for (r, (body, sig)) in records.iter().zip(&sent) {
        // One partition, so the order is the order of the answers.
        assert_eq!(r.payload, body.to_vec(), "payload is the request body, byte for byte");
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        // data.object.id; a thin (v2) event has no data.object, so its related_object.id.
        let expected_key = v["data"]["object"]["id"]
            .as_str()
            .or(v["related_object"]["id"].as_str())
            .unwrap_or_else(|| v["id"].as_str().unwrap());
        assert_eq!(r.key_str(), expected_key);
        let mut expected: Vec<(String, String)> = vec![
            ("stripe-event-id".into(), v["id"].as_str().unwrap().into()),
            ("stripe-event-type".into(), v["type"].as_str().unwrap().into()),
        ];
        if let Some(api) = v["api_version"].as_str() {
            expected.push(("stripe-api-version".into(), api.into()));
        }
        expected.push(("stripe-livemode".into(), v["livemode"].as_bool().unwrap().to_string()));
        if let Some(acct) = v["account"].as_str() {
            expected.push(("stripe-account".into(), acct.into()));
        }
        expected.push(("stripe-signature".into(), sig.clone()));
        expected.push(("content-type".into(), "application/json".into()));
        let got: Vec<(String, String)> = r
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), String::from_utf8(v.clone()).unwrap()))
            .collect();
        assert_eq!(got, expected, "record headers");
    }

    // Metrics: published per sink and destination, and the time to the broker's confirmation.
    let metrics = get(bridge.admin_addr, "/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body).to_string();
    let published = metric(
        &text,
        &format!("hookbridge_published_total{{sink=\"events\",destination=\"{topic}\"}}"),
    );
    assert_eq!(published, Some(sent.len() as f64), "{text}");
    let confirmations = metric(&text, "hookbridge_publish_seconds_count{sink=\"events\"}");
    assert_eq!(confirmations, Some(sent.len() as f64), "{text}");
    assert_eq!(
        metric(
            &text,
            "hookbridge_requests_total{endpoint=\"/webhooks/stripe\",status=\"200\"}"
        ),
        Some(sent.len() as f64 + 1.0)
    );
    bridge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_templates_and_fan_out_to_two_topics_and_two_sinks() {
    require_broker(Duration::from_secs(10));
    let base = unique_topic("tpl");
    let audit = unique_topic("audit");
    let config = yaml(&format!(
        r#"sinks:
{}
{}
routes:
  - match: "invoice.*"
    to:
      - {{ sink: events, topic: "{base}.{{object}}.{{livemode}}" }}
  - match: "customer.subscription.*"
    to:
      - {{ sink: events, topic: "{base}.subs" }}
      - {{ sink: events, topic: "{base}.{{type}}" }}
      - {{ sink: audit, topic: "{audit}" }}
  - match: "*"
    to:
      - {{ sink: events, topic: "{base}.{{account}}" }}
"#,
        kafka_sink("events", ""),
        kafka_sink("audit", "    client_id: hookbridge-audit\n    linger: 1ms\n")
    ));
    let bridge = spawn(&config).await;
    let invoice = stripe_event(&unique_id("inv"), "invoice.paid", "in_1", None, true);
    let sub = stripe_event(&unique_id("sub"), "customer.subscription.updated", "sub_1", None, false);
    let connect = stripe_event(&unique_id("acct"), "account.updated", "acct_9", Some("acct_9"), false);
    let platform = stripe_event(&unique_id("plat"), "charge.refunded", "ch_1", None, false);
    for body in [&invoice, &sub, &connect, &platform] {
        let (answer, _) = post(bridge.webhook_addr, body).await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    }
    let expect = [
        (format!("{base}.invoice.live"), &invoice),
        (format!("{base}.subs"), &sub),
        (format!("{base}.customer.subscription.updated"), &sub),
        (audit.clone(), &sub),
        (format!("{base}.acct_9"), &connect),
        (format!("{base}.platform"), &platform),
    ];
    for (topic, body) in expect {
        let records = read_topic(&topic, 1, READ_TIMEOUT, SETTLE);
        assert_eq!(records.len(), 1, "topic {topic}");
        assert_eq!(records[0].payload, body.to_vec(), "topic {topic}");
    }
    bridge.shutdown().await;
}

/// Runs the official Python SDK's verifier (tolerance off); returns its exit code and stderr.
fn stripe_verify(header: &str, body: &[u8]) -> (i32, String) {
    let python = stripe_python();
    assert!(
        python.exists(),
        "{} is missing: install Stripe's SDKs with deploy/local/stripe-sdk.sh",
        python.display()
    );
    let script = format!("{}/tests/interop/stripe_verify.py", env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new(&python)
        .args([script.as_str(), "--secret", SECRET, "--header", header])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !stderr.contains("ModuleNotFoundError"),
        "Stripe SDK missing; run deploy/local/stripe-sdk.sh: {stderr}"
    );
    (out.status.code().unwrap_or(-1), stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_verifies_a_record_with_stripes_official_sdk() {
    require_broker(Duration::from_secs(10));
    let topic = unique_topic("verify");
    let config = one_topic_config("", &topic);
    let bridge = spawn(&config).await;
    let body = fixture_with_id("checkout.session.completed.json", &unique_id("co"));
    let (answer, _) = post(bridge.webhook_addr, &body).await;
    assert_eq!(answer.status, StatusCode::OK);
    bridge.shutdown().await;

    // The consumer has only the record: its value and its stripe-signature header.
    let records = read_topic(&topic, 1, READ_TIMEOUT, Duration::ZERO);
    let record = &records[0];
    let header = record.header("stripe-signature").expect("stripe-signature header");
    let (code, err) = stripe_verify(header, &record.payload);
    assert_eq!(code, 0, "Stripe's SDK rejected the record: {err}");
    // And the check is real: one changed byte fails it.
    let mut tampered = record.payload.clone();
    let at = tampered.iter().position(|b| *b == b'1').expect("a digit");
    tampered[at] = b'2';
    let (code, _) = stripe_verify(header, &tampered);
    assert_eq!(code, 1, "a tampered record must not verify");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_larger_than_kafka_accepts_is_500_promptly_and_the_sink_stays_usable() {
    require_broker(Duration::from_secs(10));
    let topic = unique_topic("large");
    let small_topic = unique_topic("large-client");
    // The bridge accepts 3 MB bodies. Sink `events` lets librdkafka send up to 3 MB, so the
    // broker (message.max.bytes ~1 MB) refuses; sink `strict` keeps librdkafka's 1 MB limit, so
    // the client refuses before sending.
    let config = yaml(&format!(
        r#"max_body_bytes: 3000000
sinks:
{}
{}
routes:
  - match: "file.*"
    to:
      - {{ sink: events, topic: "{topic}" }}
  - match: "*"
    to:
      - {{ sink: strict, topic: "{small_topic}" }}
"#,
        kafka_sink("events", "    options:\n      message.max.bytes: 3000000\n"),
        kafka_sink("strict", "")
    ));
    let bridge = spawn(&config).await;

    let body = big_event(&unique_id("big"), 1_500_000);
    let start = Instant::now();
    let (answer, _) = post(bridge.webhook_addr, &body).await;
    let took = start.elapsed();
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR, "{:?}", answer.body);
    assert!(
        took < Duration::from_millis(1500),
        "answered in {took:?}, expected promptly"
    );
    let json = answer.json();
    assert!(
        !answer.body.windows(100).any(|w| w == &body[..100]),
        "no payload echoed"
    );
    assert!(json["message"].is_string(), "{json}");

    let mut client_side = big_event(&unique_id("big2"), 1_100_000).to_vec();
    let at = client_side.windows(12).position(|w| w == b"file.created").unwrap();
    client_side.splice(at..at + 12, b"other.thing!".iter().copied());
    let client_side = Bytes::from(client_side);
    let start = Instant::now();
    let (answer, _) = post(bridge.webhook_addr, &client_side).await;
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR, "{:?}", answer.body);
    assert!(start.elapsed() < Duration::from_millis(1500));

    // The producers still work after a refused record.
    let ok = big_event(&unique_id("fine"), 1000);
    let (answer, _) = post(bridge.webhook_addr, &ok).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    let records = read_topic(&topic, 1, READ_TIMEOUT, SETTLE);
    assert_eq!(records.len(), 1, "only the small event is in {topic}");
    assert_eq!(records[0].payload, ok.to_vec());

    let text = String::from_utf8_lossy(&get(bridge.admin_addr, "/metrics").await.body).to_string();
    assert_eq!(
        metric(
            &text,
            &format!("hookbridge_publish_errors_total{{sink=\"events\",destination=\"{topic}\",class=\"permanent\"}}")
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            &format!(
                "hookbridge_publish_errors_total{{sink=\"strict\",destination=\"{small_topic}\",class=\"permanent\"}}"
            )
        ),
        Some(1.0),
        "{text}"
    );
    bridge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_the_cluster_will_not_create_is_500_promptly_and_used_once_created() {
    require_broker(Duration::from_secs(10));
    let topic = unique_topic("missing");
    // The producer asks the broker not to create topics, as a cluster with auto-creation off does.
    // The default ack_timeout (5 s), so the default propagation wait (2 s) is what is tested.
    let config = one_topic_config("    options:\n      allow.auto.create.topics: \"false\"\n", &topic)
        .replace("ack_timeout: \"2s\"", "ack_timeout: \"5s\"");
    assert!(config.contains("ack_timeout: \"5s\""), "{config}");
    let bridge = spawn(&config).await;

    let body = stripe_event(&unique_id("missing"), "invoice.paid", "in_missing", None, false);
    let start = Instant::now();
    let (answer, _) = post(bridge.webhook_addr, &body).await;
    let took = start.elapsed();
    assert_eq!(
        answer.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "after {took:?}: {:?}",
        answer.body
    );
    // Before the sink's own deadline (queue + message timeout, 4.5 s), which would be a 503.
    assert!(took < Duration::from_millis(4500), "answered in {took:?}");
    let message = answer.json()["message"].as_str().unwrap().to_string();
    assert!(message.contains(&topic), "{message}");
    let text = String::from_utf8_lossy(&get(bridge.admin_addr, "/metrics").await.body).to_string();
    let errors =
        format!("hookbridge_publish_errors_total{{sink=\"events\",destination=\"{topic}\",class=\"permanent\"}}");
    assert_eq!(metric(&text, &errors), Some(1.0), "{text}");

    // An operator creates the topic: the same event goes through without a restart.
    tokio::task::spawn_blocking({
        let topic = topic.clone();
        move || kafka_sh(&["create-topic", &topic])
    })
    .await
    .unwrap();
    // librdkafka looks for it again within about a second; until then it is still unknown (500),
    // or has no leader yet (503).
    let allowed = [StatusCode::INTERNAL_SERVER_ERROR, StatusCode::SERVICE_UNAVAILABLE];
    retry_until_accepted(bridge.webhook_addr, &body, &allowed).await;
    assert_only_record(&topic, &body);
    bridge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_the_cluster_is_still_creating_is_never_500() {
    require_broker(Duration::from_secs(10));
    let base = unique_topic("creating");
    // With no time allowed for metadata to propagate, librdkafka calls a new topic unknown as
    // soon as a broker answers that it is still auto-creating it: the situation of a topic first
    // used during a broker outage. The cluster creates topics, so that must be a retry (503),
    // never a 500. Whether the broker's first answer says "unknown" or "no leader yet" varies
    // from run to run, so three new topics are tried, and each must end in a 200.
    let config = one_topic_config(
        "    options:\n      topic.metadata.propagation.max.ms: 0\n",
        &format!("{base}.{{type}}"),
    );
    let bridge = spawn(&config).await;
    let mut retried = 0;
    for event_type in ["invoice.paid", "invoice.created", "invoice.voided"] {
        let body = stripe_event(&unique_id("creating"), event_type, "in_creating", None, false);
        let (answer, _) = post(bridge.webhook_addr, &body).await;
        match answer.status {
            StatusCode::OK => {}
            StatusCode::SERVICE_UNAVAILABLE => {
                let message = answer.json()["message"].as_str().unwrap().to_string();
                assert!(message.contains("creates it on first use"), "{message}");
                retried += 1;
                retry_until_accepted(bridge.webhook_addr, &body, &[StatusCode::SERVICE_UNAVAILABLE]).await;
            }
            other => panic!("{event_type}: {other}: {:?}", answer.body),
        }
        assert_only_record(&format!("{base}.{event_type}"), &body);
    }
    println!("new topics answered 503 while being created: {retried} of 3");
    bridge.shutdown().await;
}

/// Posts `body` again, as Stripe retries, until it is answered 200 (within 15 s); every other
/// answer must have a status in `allowed`.
async fn retry_until_accepted(addr: std::net::SocketAddr, body: &Bytes, allowed: &[StatusCode]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (answer, _) = post(addr, body).await;
        if answer.status == StatusCode::OK {
            return;
        }
        assert!(allowed.contains(&answer.status), "{:?}", answer.body);
        assert!(Instant::now() < deadline, "still {:?}", answer.body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `topic` holds exactly one record, and its value is `body`.
fn assert_only_record(topic: &str, body: &Bytes) {
    let records = read_topic(topic, 1, READ_TIMEOUT, SETTLE);
    assert_eq!(records.len(), 1, "exactly the one accepted event is in {topic}");
    assert_eq!(records[0].payload, body.to_vec());
}

#[test]
fn check_config_accepts_the_kafka_example_and_redacts_secrets() {
    let out = Command::new(bin())
        .args(["check-config", "--config"])
        .arg(format!("{}/config/kafka.example.yaml", env!("CARGO_MANIFEST_DIR")))
        .env("STRIPE_WEBHOOK_SECRET", "whsec_from_env_for_the_test")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "check-config failed: {stdout}{stderr}");
    assert!(stdout.contains("(kafka) brokers"), "{stdout}");
    assert!(stdout.contains("enable.idempotence=true"), "{stdout}");
    assert!(!stdout.contains("whsec_"), "{stdout}");

    // A SASL password in options never reaches the output.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sasl.yaml");
    std::fs::write(
        &path,
        one_topic_config(
            "    options:\n      security.protocol: sasl_plaintext\n      sasl.mechanisms: PLAIN\n      \
                 sasl.username: alice\n      sasl.password: hunter2-very-secret\n",
            "t",
        ),
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("sasl.username=alice"), "{stdout}");
    assert!(stdout.contains("sasl.password=***"), "{stdout}");
    assert!(!stdout.contains("hunter2"), "{stdout}");

    // secret_options: read from the environment, never printed; a missing variable is an error.
    std::fs::write(
        &path,
        one_topic_config(
            "    options:\n      sasl.username: alice\n    secret_options:\n      \
                 sasl.password: { env: HOOKBRIDGE_TEST_KAFKA_PASSWORD }\n",
            "t",
        ),
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["check-config", "--config"])
        .arg(&path)
        .env("HOOKBRIDGE_TEST_KAFKA_PASSWORD", "from-env-very-secret")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("sasl.password=*** (env:HOOKBRIDGE_TEST_KAFKA_PASSWORD)"),
        "{stdout}"
    );
    assert!(!stdout.contains("from-env-very-secret"), "{stdout}");
    let out = Command::new(bin())
        .args(["check-config", "--config"])
        .arg(&path)
        .env_remove("HOOKBRIDGE_TEST_KAFKA_PASSWORD")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("sinks.events.secret_options.sasl.password: environment variable"),
        "{stderr}"
    );

    // Weakening durability is refused with the key path, exit 2.
    std::fs::write(&path, one_topic_config("    options:\n      acks: 1\n", "t")).unwrap();
    let out = Command::new(bin())
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("sinks.events.options.acks"), "{stderr}");
}
