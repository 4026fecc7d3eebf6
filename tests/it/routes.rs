//! Issue 13: route filters (livemode, account, endpoint), dead letters, and CloudEvents headers.
//! The HTTP contract with in-memory sinks; dead letters and CloudEvents against the real Kafka
//! and RabbitMQ (`deploy/local/kafka.sh start`, `deploy/local/rabbitmq.sh start`), read back and
//! parsed with the CNCF CloudEvents SDK (PyPI `cloudevents`, installed by
//! deploy/local/stripe-sdk.sh). Broker tests fail, never skip, when a broker is missing.
#![allow(clippy::unwrap_used)]

use crate::amqp_support;
use crate::common;
use crate::kafka_support;

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use hookbridge::sink::memory::{Behaviour, MemorySink};
use hookbridge::sink::{Sink, SinkError};
use http::{Method, StatusCode};

const LIVE_SECRET: &str = "whsec_live_endpoint";
const TEST_SECRET: &str = "whsec_test_endpoint";

/// A config with two endpoints, `/webhooks/live` and `/webhooks/test`, and the given sections.
fn two_endpoints(rest: &str) -> String {
    format!(
        r#"
listen: "127.0.0.1:0"
admin_listen: "127.0.0.1:0"
ack_timeout: "2s"
endpoints:
  - path: /webhooks/live
    secrets: [{{ value: {LIVE_SECRET} }}]
  - path: /webhooks/test
    secrets: [{{ value: {TEST_SECRET} }}]
{rest}
"#
    )
}

/// A compact event.
fn compact_event(id: &str, event_type: &str, livemode: bool, account: Option<&str>) -> Bytes {
    kafka_support::stripe_event(id, event_type, "in_1", account, livemode)
}

/// POSTs `body` to `path`, signed with `secret`.
async fn post_to(addr: std::net::SocketAddr, path: &str, secret: &str, body: &Bytes) -> Answer {
    let sig = sign(secret, body);
    request(addr, Method::POST, path, &[("stripe-signature", &sig)], body.clone()).await
}

async fn metrics_text(admin: std::net::SocketAddr) -> String {
    String::from_utf8_lossy(&get(admin, "/metrics").await.body).into_owned()
}

/// `destination event-id` of every message a memory sink got, in order.
fn landed(sink: &MemorySink) -> Vec<String> {
    sink.records()
        .iter()
        .map(|r| {
            let id = header(&r.headers, "stripe-event-id").unwrap();
            format!("{} {id}", r.destination)
        })
        .collect()
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

// ---------------------------------------------------------------------------------------------
// Route filters
// ---------------------------------------------------------------------------------------------

const SAFE_ROUTES: &str = r#"
sinks:
  live:
    kind: discard
  test:
    kind: discard
routes:
  - match: "*"
    livemode: false
    to: [{ sink: test, topic: "stripe.test.{object}" }]
  - match: "*"
    livemode: true
    endpoint: /webhooks/live
    account: platform
    to: [{ sink: live, topic: "stripe.{object}" }]
  - match: "*"
    livemode: true
    endpoint: /webhooks/live
    account: ["acct_1*", "acct_2*"]
    to: [{ sink: live, topic: "stripe.connect.{account}" }]
"#;

#[tokio::test]
async fn filters_keep_test_mode_out_of_live_topics_and_first_match_wins() {
    let (live, test) = (MemorySink::new("live"), MemorySink::new("test"));
    let sinks: Vec<Arc<dyn Sink>> = vec![Arc::new(live.clone()), Arc::new(test.clone())];
    let bridge = spawn_with(&two_endpoints(SAFE_ROUTES), sinks).await;
    let addr = bridge.webhook_addr;

    // A live platform event on the live endpoint, and a live Connect event of a listed account.
    let a = post_to(
        addr,
        "/webhooks/live",
        LIVE_SECRET,
        &compact_event("evt_l1", "invoice.paid", true, None),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    let connect = compact_event("evt_l2", "invoice.paid", true, Some("acct_123"));
    assert_eq!(
        post_to(addr, "/webhooks/live", LIVE_SECRET, &connect).await.status,
        StatusCode::OK
    );
    // Test-mode events, on either endpoint, with or without an account: the test sink only.
    for (id, path, secret, account) in [
        ("evt_t1", "/webhooks/live", LIVE_SECRET, None),
        ("evt_t2", "/webhooks/test", TEST_SECRET, None),
        ("evt_t3", "/webhooks/live", LIVE_SECRET, Some("acct_123")),
    ] {
        let body = compact_event(id, "invoice.paid", false, account);
        assert_eq!(post_to(addr, path, secret, &body).await.status, StatusCode::OK);
    }
    // Live, but on the test endpoint, or of an account no route lists: no route, dropped (200).
    let stray = compact_event("evt_s1", "invoice.paid", true, None);
    assert_eq!(
        post_to(addr, "/webhooks/test", TEST_SECRET, &stray).await.status,
        StatusCode::OK
    );
    let other = compact_event("evt_s2", "invoice.paid", true, Some("acct_9"));
    assert_eq!(
        post_to(addr, "/webhooks/live", LIVE_SECRET, &other).await.status,
        StatusCode::OK
    );

    assert_eq!(
        landed(&live),
        ["stripe.invoice evt_l1", "stripe.connect.acct_123 evt_l2"]
    );
    for r in live.records() {
        assert_eq!(
            header(&r.headers, "stripe-livemode"),
            Some("true"),
            "a test event on a live sink"
        );
    }
    assert_eq!(
        landed(&test),
        [
            "stripe.test.invoice evt_t1",
            "stripe.test.invoice evt_t2",
            "stripe.test.invoice evt_t3"
        ]
    );
    let text = metrics_text(bridge.admin_addr).await;
    assert_eq!(
        metric(&text, "hookbridge_unrouted_total{endpoint=\"/webhooks/test\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "hookbridge_unrouted_total{endpoint=\"/webhooks/live\"}"),
        Some(1.0),
        "{text}"
    );
    bridge.shutdown().await;
}

/// Runs the binary; returns (exit code, stdout, stderr).
fn run_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn route_command_explains_the_decision() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    let yaml = two_endpoints(&format!(
        "{SAFE_ROUTES}\ndead_letter: {{ sink: test, topic: \"dead.{{livemode}}\" }}\n"
    ));
    std::fs::write(&cfg, yaml).unwrap();
    let cfg = cfg.to_str().unwrap();

    // A live Connect event on the live endpoint: routes[0] (test only) and routes[1] (platform
    // only) say why not; routes[2] matches and its destination is rendered for this event.
    let (code, out, err) = run_cli(&[
        "route",
        "invoice.paid",
        "--config",
        cfg,
        "--livemode",
        "--account",
        "acct_123",
        "--endpoint",
        "/webhooks/live",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("event invoice.paid, live mode, account acct_123, endpoint /webhooks/live"),
        "{out}"
    );
    assert!(
        out.contains("routes[0] (match *; livemode false): no: livemode: the route takes test events only; this one is live mode"),
        "{out}"
    );
    assert!(out.contains("routes[1] (match *; livemode true; account platform; endpoint /webhooks/live): no: account `acct_123` fits no `account` glob"), "{out}");
    assert!(
        out.contains("routes[2] (match *; livemode true; account acct_1*, acct_2*; endpoint /webhooks/live): matches"),
        "{out}"
    );
    assert!(
        out.contains("-> sink live (discard) topic stripe.connect.acct_123"),
        "{out}"
    );
    assert!(
        out.contains("dead letter -> sink test (discard) topic dead.live"),
        "{out}"
    );

    // Defaults: test mode, platform, no endpoint.
    let (_, out, _) = run_cli(&["route", "charge.failed", "--config", cfg]);
    assert!(
        out.contains("event charge.failed, test mode, account platform, endpoint (none given)"),
        "{out}"
    );
    assert!(out.contains("routes[0] (match *; livemode false): matches"), "{out}");
    assert!(out.contains("-> sink test (discard) topic stripe.test.charge"), "{out}");

    // Nothing matches: every route says why, and the event is dropped.
    let (code, out, _) = run_cli(&[
        "route",
        "charge.failed",
        "--config",
        cfg,
        "--livemode",
        "--endpoint",
        "/webhooks/test",
    ]);
    assert_eq!(code, 0);
    assert!(
        out.contains("no: endpoint `/webhooks/test` is not one of the route's `endpoint` paths"),
        "{out}"
    );
    assert!(
        out.contains("charge.failed: no route matches; the event is answered 200 and dropped"),
        "{out}"
    );
    let (_, out, _) = run_cli(&["route", "charge.failed", "--config", cfg, "--livemode"]);
    assert!(out.contains("no endpoint was given"), "{out}");
    let (_, out, _) = run_cli(&["route", "charge.failed", "--config", cfg, "--endpoint", "/typo"]);
    assert!(
        out.contains(
            "note: no endpoint has path /typo, so no event arrives there (known: /webhooks/live, /webhooks/test)"
        ),
        "{out}"
    );
}

/// Every example config that a team copies into production keeps test-mode events out of live
/// destinations: any route that can take a test-mode event sends it only to destinations that
/// say `test` once rendered for it.
#[test]
fn example_configs_send_test_mode_events_to_test_destinations_only() {
    use hookbridge::event::EventMeta;
    use hookbridge::route::Incoming;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for name in [
        "config/kafka.example.yaml",
        "config/rabbitmq.example.yaml",
        "config/hookbridge.yaml",
    ] {
        let text = std::fs::read_to_string(root.join(name)).unwrap();
        let raw = hookbridge::config::parse_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let endpoints: Vec<String> = raw.endpoints.iter().map(|e| e.path.clone()).collect();
        let settings = hookbridge::config::validate(raw);
        // Secrets from the environment may be missing here; the route table is what matters.
        let settings = match settings {
            Ok(s) => s,
            Err(p) if p.iter().all(|p| p.path.contains("secrets")) => {
                let yaml = text.replace("- env: STRIPE_WEBHOOK_SECRET", "- value: whsec_placeholder");
                settings_of(&yaml, name)
            }
            Err(p) => panic!("{name}: {p:?}"),
        };
        let mut routed_test_events = 0;
        for event_type in [
            "invoice.paid",
            "payment_intent.succeeded",
            "customer.subscription.updated",
            "account.updated",
            "v1.billing.meter.error_report_triggered",
        ] {
            for account in [None, Some("acct_1Nv0FGQ9RKHgCVdK")] {
                for endpoint in endpoints.iter().map(|e| Some(e.as_str())).chain([None]) {
                    let meta = EventMeta {
                        id: "evt_1".into(),
                        event_type: event_type.into(),
                        api_version: None,
                        livemode: false,
                        account: account.map(Into::into),
                        object_id: None,
                        created: None,
                        thin: false,
                    };
                    let Some((i, route)) = settings.router.route(&Incoming::new(&meta, endpoint)) else {
                        continue;
                    };
                    routed_test_events += 1;
                    for (_, destination) in hookbridge::route::destinations(route, &meta) {
                        assert!(
                            destination.contains("test"),
                            "{name}: routes[{i}] sends a test-mode {event_type} (account {account:?}, endpoint {endpoint:?}) to `{destination}`"
                        );
                    }
                }
            }
        }
        assert!(
            routed_test_events > 0,
            "{name}: test-mode events go nowhere; show where they go"
        );
    }
}

fn settings_of(yaml: &str, name: &str) -> hookbridge::config::Settings {
    let raw = hookbridge::config::parse_str(yaml).unwrap_or_else(|e| panic!("{name}: {e}"));
    hookbridge::config::validate(raw).unwrap_or_else(|p| panic!("{name}: {p:?}"))
}

// ---------------------------------------------------------------------------------------------
// Dead letters, in memory
// ---------------------------------------------------------------------------------------------

const DEAD_LETTER: &str = r#"
sinks:
  a:
    kind: discard
  b:
    kind: discard
  dlq:
    kind: discard
dead_letter: { sink: dlq, topic: "dead.{livemode}" }
routes:
  - match: "invoice.*"
    to:
      - { sink: a, topic: "stripe.{object}" }
      - { sink: b, topic: "audit" }
  - match: "charge.*"
    to: [{ sink: a, topic: "charges" }]
    dead_letter: { sink: b, topic: "charges.dead" }
"#;

struct Three {
    bridge: hookbridge::app::Running,
    a: MemorySink,
    b: MemorySink,
    dlq: MemorySink,
}

impl Three {
    /// POSTs a compact event, signed.
    async fn post(&self, id: &str, event_type: &str, livemode: bool) -> Answer {
        post_signed(self.bridge.webhook_addr, compact_event(id, event_type, livemode, None)).await
    }
}

async fn three_sinks(config: &str) -> Three {
    let (a, b, dlq) = (MemorySink::new("a"), MemorySink::new("b"), MemorySink::new("dlq"));
    let sinks: Vec<Arc<dyn Sink>> = vec![Arc::new(a.clone()), Arc::new(b.clone()), Arc::new(dlq.clone())];
    let bridge = spawn_with(&yaml(config), sinks).await;
    Three { bridge, a, b, dlq }
}

#[tokio::test]
async fn a_permanent_failure_is_dead_lettered_with_why_and_answered_200() {
    let t = three_sinks(DEAD_LETTER).await;
    t.a.set_behaviour(Behaviour::Fail(SinkError::permanent(
        "kafka sink a: topic stripe.invoice: Broker: Message size too large",
    )));
    let body = compact_event("evt_dl1", "invoice.paid", false, None);
    let sig = sign(SECRET, &body);
    let answer = post_with_signature(t.bridge.webhook_addr, &sig, body.clone()).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);

    // The other target of the fan-out got it as usual; the refused one went to the dead letter.
    assert_eq!(t.b.records().len(), 1);
    assert!(t.a.records().is_empty());
    let dead = t.dlq.records();
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(d.destination, "dead.test");
    assert_eq!(d.payload, body, "byte for byte");
    assert_eq!(d.key, "in_1");
    assert_eq!(header(&d.headers, "stripe-event-id"), Some("evt_dl1"));
    assert_eq!(header(&d.headers, "stripe-signature"), Some(sig.as_str()));
    assert_eq!(header(&d.headers, "hookbridge-failed-sink"), Some("a"));
    assert_eq!(
        header(&d.headers, "hookbridge-failed-destination"),
        Some("stripe.invoice")
    );
    assert_eq!(
        header(&d.headers, "hookbridge-failed-reason"),
        Some("kafka sink a: topic stripe.invoice: Broker: Message size too large")
    );
    let text = metrics_text(t.bridge.admin_addr).await;
    assert_eq!(
        metric(
            &text,
            "hookbridge_dead_lettered_total{sink=\"a\",dead_letter_sink=\"dlq\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "hookbridge_publish_errors_total{sink=\"a\",destination=\"stripe.{object}\",class=\"permanent\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "hookbridge_published_total{sink=\"dlq\",destination=\"dead.{livemode}\"}"
        ),
        Some(1.0),
        "{text}"
    );
    // Confirmed, so a redelivery of the same event is a duplicate, not a second dead letter.
    let again = post_with_signature(t.bridge.webhook_addr, &sign(SECRET, &body), body.clone()).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(t.dlq.records().len(), 1);
    t.bridge.shutdown().await;
}

#[tokio::test]
async fn retryable_failures_never_go_to_the_dead_letter() {
    let t = three_sinks(DEAD_LETTER).await;
    t.a.set_behaviour(Behaviour::Fail(SinkError::retryable("broker unreachable")));
    let answer = t.post("evt_dl2", "invoice.paid", true).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(t.dlq.records().is_empty());
    // A stall past ack_timeout is retryable too.
    t.a.set_behaviour(Behaviour::Stall);
    let answer = t.post("evt_dl3", "invoice.paid", true).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(t.dlq.records().is_empty());
    let text = metrics_text(t.bridge.admin_addr).await;
    assert!(!text.contains("hookbridge_dead_lettered_total{"), "{text}");
    t.bridge.shutdown().await;
}

#[tokio::test]
async fn a_failed_dead_letter_is_answered_with_its_own_class() {
    let t = three_sinks(DEAD_LETTER).await;
    t.a.set_behaviour(Behaviour::Fail(SinkError::permanent("too large")));
    t.dlq
        .set_behaviour(Behaviour::Fail(SinkError::retryable("dlq broker unreachable")));
    let answer = t.post("evt_dl4", "invoice.paid", false).await;
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "Stripe retries; the dead letter may work then"
    );
    let message = answer.json()["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("too large") && message.contains("dlq broker unreachable"),
        "{message}"
    );
    t.dlq
        .set_behaviour(Behaviour::Fail(SinkError::permanent("dlq refused")));
    let answer = t.post("evt_dl5", "invoice.paid", false).await;
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    let text = metrics_text(t.bridge.admin_addr).await;
    assert!(
        !text.contains("hookbridge_dead_lettered_total{"),
        "nothing was dead-lettered: {text}"
    );
    t.bridge.shutdown().await;
}

#[tokio::test]
async fn a_route_dead_letter_overrides_the_global_one_and_none_means_500() {
    let t = three_sinks(DEAD_LETTER).await;
    t.a.set_behaviour(Behaviour::Fail(SinkError::permanent("no such topic")));
    let answer = t.post("evt_dl6", "charge.failed", false).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(t.dlq.records().is_empty());
    let b = t.b.records();
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].destination, "charges.dead");
    assert_eq!(header(&b[0].headers, "hookbridge-failed-destination"), Some("charges"));
    t.bridge.shutdown().await;

    // Off by default: without any dead_letter a permanent failure is a 500, as before.
    let config = DEAD_LETTER
        .replace("dead_letter: { sink: dlq, topic: \"dead.{livemode}\" }", "")
        .replace("    dead_letter: { sink: b, topic: \"charges.dead\" }\n", "");
    let t = three_sinks(&config).await;
    t.a.set_behaviour(Behaviour::Fail(SinkError::permanent("no such topic")));
    let answer = t.post("evt_dl7", "charge.failed", false).await;
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(t.dlq.records().is_empty() && t.b.records().is_empty());
    t.bridge.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Dead letters against a real Kafka broker that refuses a too-large record
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_refusing_a_too_large_record_sends_it_to_the_dead_letter_topic() {
    use kafka_support::*;
    require_broker(Duration::from_secs(10));
    let small = unique_topic("small");
    let dead = unique_topic("dead");
    // The broker refuses any record batch larger than 2 KiB on this topic, for good.
    create_topic(&small, &[("max.message.bytes", "2048")]).await;
    let config = yaml(&format!(
        "sinks:\n{}\ndead_letter: {{ sink: events, topic: \"{dead}\" }}\nroutes:\n  - match: \"*\"\n    to:\n      - {{ sink: events, topic: \"{small}\" }}\n",
        kafka_sink("events", "")
    ));
    let bridge = spawn(&config).await;

    let fits = compact_event(&unique_id("fits"), "invoice.paid", true, None);
    let answer = post_signed(bridge.webhook_addr, fits.clone()).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    let big = big_event(&unique_id("big"), 8 * 1024);
    let sig = sign(SECRET, &big);
    let began = std::time::Instant::now();
    let answer = post_with_signature(bridge.webhook_addr, &sig, big.clone()).await;
    let took = began.elapsed();
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "dead-lettered and confirmed: {:?}",
        answer.body
    );
    // Refusal and dead letter share the request's ack_timeout (2s in these configs); the rest
    // is HTTP on a loaded machine.
    assert!(took < Duration::from_secs(3), "refused and dead-lettered in {took:?}");
    eprintln!("refused by the broker and dead-lettered in {took:?}");

    let landed = read_topic(&small, 1, Duration::from_secs(20), Duration::from_millis(700));
    assert_eq!(landed.len(), 1, "only the event that fits is on {small}");
    assert_eq!(landed[0].payload, fits.to_vec());
    let parked = read_topic(&dead, 1, Duration::from_secs(20), Duration::from_millis(700));
    assert_eq!(parked.len(), 1);
    let r = &parked[0];
    assert_eq!(r.payload, big.to_vec(), "byte for byte");
    assert_eq!(r.key_str(), "obj_big");
    assert_eq!(r.header("stripe-signature"), Some(sig.as_str()));
    assert_eq!(r.header("hookbridge-failed-sink"), Some("events"));
    assert_eq!(r.header("hookbridge-failed-destination"), Some(small.as_str()));
    let reason = r.header("hookbridge-failed-reason").unwrap();
    assert!(
        reason.contains(&small) && reason.to_lowercase().contains("too large"),
        "{reason}"
    );

    let text = metrics_text(bridge.admin_addr).await;
    assert_eq!(
        metric(
            &text,
            "hookbridge_dead_lettered_total{sink=\"events\",dead_letter_sink=\"events\"}"
        ),
        Some(1.0),
        "{text}"
    );
    bridge.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// CloudEvents headers, read back with the CloudEvents SDK
// ---------------------------------------------------------------------------------------------

/// Parses one message with the CNCF CloudEvents SDK (tests/interop/cloudevents_read.py):
/// `binding` is `kafka` or `amqp`. Returns its attributes and data; panics when the SDK refuses.
fn cloudevent(
    binding: &str,
    headers: &HashMap<String, String>,
    content_type: Option<&str>,
    key: Option<&str>,
    body: &[u8],
) -> serde_json::Value {
    let python = kafka_support::stripe_python();
    assert!(
        python.exists(),
        "{} is missing: run deploy/local/stripe-sdk.sh",
        python.display()
    );
    let script = format!("{}/tests/interop/cloudevents_read.py", env!("CARGO_MANIFEST_DIR"));
    let input = serde_json::json!({
        "binding": binding,
        "headers": headers,
        "content_type": content_type,
        "key": key,
        "body": std::str::from_utf8(body).unwrap(),
    });
    let mut child = Command::new(&python)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("ModuleNotFoundError"),
        "the CloudEvents SDK is missing; run deploy/local/stripe-sdk.sh: {stderr}"
    );
    assert!(
        out.status.success(),
        "the CloudEvents SDK refused the message: {stderr}"
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// What the SDK must read from a message of `body`: the attributes mapped from the event.
fn assert_cloudevent(ce: &serde_json::Value, body: &[u8]) {
    let event: serde_json::Value = serde_json::from_slice(body).unwrap();
    let a = &ce["attributes"];
    assert_eq!(a["specversion"], "1.0", "{ce}");
    assert_eq!(a["id"], event["id"], "{ce}");
    assert_eq!(a["type"], event["type"], "{ce}");
    assert_eq!(a["datacontenttype"], "application/json", "{ce}");
    let source = match event["account"].as_str().or(event["context"].as_str()) {
        Some(acct) => format!("https://api.stripe.com/v1/accounts/{acct}"),
        None => "https://api.stripe.com/v1/account".to_string(),
    };
    assert_eq!(a["source"], source.as_str(), "{ce}");
    match event["data"]["object"]["id"]
        .as_str()
        .or(event["related_object"]["id"].as_str())
    {
        Some(subject) => assert_eq!(a["subject"], subject, "{ce}"),
        None => assert!(a.get("subject").is_none(), "{ce}"),
    }
    // `created`: Unix seconds (snapshot events) or RFC 3339 (thin events). The SDK gives the
    // time back as ISO 8601 with an explicit UTC offset; compare the instants.
    let expected = match &event["created"] {
        serde_json::Value::Number(n) => hookbridge::sink::cloudevents::time(n.as_i64().unwrap()).unwrap(),
        serde_json::Value::String(s) => s.clone(),
        other => panic!("created is {other}"),
    };
    let got = a["time"]
        .as_str()
        .unwrap_or_else(|| panic!("no time: {ce}"))
        .replace("+00:00", "Z");
    assert_eq!(
        humantime::parse_rfc3339(&got).unwrap(),
        humantime::parse_rfc3339(&expected).unwrap(),
        "{ce}"
    );
    assert_eq!(ce["data"], event, "the data is the Stripe event");
}

const CE_FIXTURES: &[&str] = &[
    "invoice.paid.json",
    "account.updated.connect.json",
    "v1.billing.meter.error_report_triggered.thin.json",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_records_carry_cloudevents_headers_the_sdk_reads() {
    use kafka_support::*;
    require_broker(Duration::from_secs(10));
    let topic = unique_topic("ce");
    let bridge = spawn(&one_topic_config("    headers: cloudevents\n", &topic)).await;
    let mut sent = Vec::new();
    for name in CE_FIXTURES {
        let body = fixture_with_id(name, &unique_id("ce"));
        let answer = post_signed(bridge.webhook_addr, body.clone()).await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
        sent.push(body);
    }
    let records = read_topic(&topic, sent.len(), Duration::from_secs(20), Duration::from_millis(700));
    assert_eq!(records.len(), sent.len());
    for (r, body) in records.iter().zip(&sent) {
        assert_eq!(r.payload, body.to_vec(), "byte for byte");
        assert!(
            r.header("stripe-signature").is_some() && r.header("stripe-event-id").is_some(),
            "stripe headers stay"
        );
        let headers: HashMap<String, String> = r
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), String::from_utf8(v.clone()).unwrap()))
            .collect();
        let ce = cloudevent("kafka", &headers, None, Some(r.key_str()), &r.payload);
        assert_cloudevent(&ce, body);
    }
    bridge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_messages_carry_cloudevents_headers_the_sdk_reads() {
    use amqp_support::*;
    let exchange = unique("ce-ex");
    let queue = unique("ce-q");
    let extra = format!("    headers: cloudevents\n{}", one_queue(&queue, &["#"]));
    let bridge = spawn(&yaml(&sink_yaml(&exchange, &extra, ROUTE_BY_TYPE))).await;
    wait_status(bridge.admin_addr, "/readyz", 200, Duration::from_secs(10)).await;
    let mut sent = Vec::new();
    for name in CE_FIXTURES {
        let body = fixture_with_id(name, &kafka_support::unique_id("ce"));
        let answer = post_signed(bridge.webhook_addr, body.clone()).await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
        sent.push(body);
    }
    let (_conn, ch) = channel().await;
    let got = drain(&ch, &queue).await;
    assert_eq!(got.len(), sent.len());
    for (m, body) in got.iter().zip(&sent) {
        assert_eq!(m.delivery.data, body.to_vec(), "byte for byte");
        let h = headers(m);
        assert!(
            h.contains_key("stripe-signature") && h.contains_key("cloudEvents:id"),
            "{h:?}"
        );
        let content_type = m
            .delivery
            .properties
            .content_type()
            .as_ref()
            .map(|c| c.as_str().to_string());
        let ce = cloudevent("amqp", &h, content_type.as_deref(), None, &m.delivery.data);
        assert_cloudevent(&ce, body);
    }
    bridge.shutdown().await;
}

#[tokio::test]
async fn file_records_carry_cloudevents_headers_the_sdk_reads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let config = yaml(&format!(
        "sinks:\n  local:\n    kind: file\n    path: \"{}\"\n    headers: cloudevents\nroutes:\n  - match: \"*\"\n    to: [{{ sink: local, topic: \"stripe.{{object}}\" }}]\n",
        path.display()
    ));
    let bridge = spawn(&config).await;
    let body = fixture_with_id("invoice.paid.json", "evt_ce_file");
    assert_eq!(
        post_signed(bridge.webhook_addr, body.clone()).await.status,
        StatusCode::OK
    );
    bridge.shutdown().await;
    let text = std::fs::read_to_string(&path).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(line["payload"].as_str().unwrap().as_bytes(), &body[..]);
    let headers: HashMap<String, String> = line["headers"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    assert_eq!(headers["ce_id"], "evt_ce_file");
    assert_eq!(headers["stripe-event-id"], "evt_ce_file");
    // The file sink uses the Kafka binding's names.
    let ce = cloudevent("kafka", &headers, None, None, &body);
    assert_cloudevent(&ce, &body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_returning_an_unroutable_message_sends_it_to_the_dead_letter_queue() {
    use amqp_support::*;
    let exchange = unique("dl-ex");
    let dead = unique("dl-q");
    let routes = r#"
dead_letter: { sink: amqp, routing_key: "dead.{type}" }
routes:
  - match: "*"
    to: [{ sink: amqp, routing_key: "nowhere.{type}" }]
"#;
    let config = yaml(&sink_yaml(&exchange, &one_queue(&dead, &["dead.#"]), routes));
    let bridge = spawn(&config).await;
    wait_status(bridge.admin_addr, "/readyz", 200, Duration::from_secs(10)).await;
    let body = fixture_with_id("invoice.paid.json", &kafka_support::unique_id("dl"));
    let answer = post_signed(bridge.webhook_addr, body.clone()).await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "dead-lettered and confirmed: {:?}",
        answer.body
    );

    let (_conn, ch) = channel().await;
    let got = drain(&ch, &dead).await;
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(m.delivery.data, body.to_vec(), "byte for byte");
    assert_eq!(m.delivery.routing_key.as_str(), "dead.invoice.paid");
    let h = headers(m);
    assert_eq!(h["hookbridge-failed-sink"], "amqp");
    assert_eq!(h["hookbridge-failed-destination"], "nowhere.invoice.paid");
    assert!(h["hookbridge-failed-reason"].contains("unroutable"), "{h:?}");
    assert!(h.contains_key("stripe-signature"), "{h:?}");
    let text = metrics_text(bridge.admin_addr).await;
    assert_eq!(
        metric(
            &text,
            "hookbridge_dead_lettered_total{sink=\"amqp\",dead_letter_sink=\"amqp\"}"
        ),
        Some(1.0),
        "{text}"
    );
    bridge.shutdown().await;
}

#[test]
fn check_config_shows_filters_and_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    let yaml = two_endpoints(&format!(
        "{SAFE_ROUTES}\ndead_letter: {{ sink: test, topic: \"dead.{{livemode}}\" }}\n"
    ));
    std::fs::write(&cfg, yaml).unwrap();
    let (code, out, err) = run_cli(&["check-config", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("[0] * (livemode false) => test -> stripe.test.{object}"),
        "{out}"
    );
    assert!(
        out.contains("[2] * (livemode true; account acct_1*, acct_2*; endpoint /webhooks/live) => live -> stripe.connect.{account}"),
        "{out}"
    );
    assert!(out.contains("dead_letter: test -> dead.{livemode}"), "{out}");
}
