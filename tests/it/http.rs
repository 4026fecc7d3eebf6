//! The HTTP contract of SPEC.md, row by row, through a bridge spawned on port 0 with in-memory sinks.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use hookbridge::sink::memory::{Behaviour, MemorySink};
use hookbridge::sink::{Sink, SinkError};
use hookbridge::verify;
use http::{Method, StatusCode};

const ONE_SINK: &str = r#"
sinks:
  mem:
    kind: discard
routes:
  - match: ["payment_intent.*", "charge.*"]
    to:
      - { sink: mem, topic: "stripe.payments" }
  - match: "invoice.*"
    to:
      - { sink: mem, topic: "stripe.{livemode}.{account}.{object}.{type}" }
"#;

async fn one_sink() -> (hookbridge::app::Running, MemorySink) {
    let mem = MemorySink::new("mem");
    let running = spawn_with(&yaml(ONE_SINK), vec![Arc::new(mem.clone()) as Arc<dyn Sink>]).await;
    (running, mem)
}

fn assert_error(answer: &Answer, status: StatusCode, code: &str) {
    assert_eq!(answer.status, status, "body: {:?}", answer.body);
    assert_eq!(answer.headers["content-type"], "application/json");
    let json = answer.json();
    assert_eq!(json["error"], code, "{json}");
    assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()), "{json}");
}

#[tokio::test]
async fn valid_event_is_published_byte_for_byte_then_acknowledged() {
    let (bridge, mem) = one_sink().await;
    // Pretty-printed with odd spacing and a unicode escape: must reach the sink untouched.
    let body = Bytes::from_static(
        b"{\n  \"id\": \"evt_byte\",\n  \"object\": \"event\",\n  \"api_version\": \"2024-06-20\",\n  \"data\": {\"object\": {\"id\": \"pi_1\", \"note\": \"caf\\u00e9 \xc3\xa9\"}},\n  \"livemode\": false,\n  \"type\": \"payment_intent.succeeded\"\n}\n",
    );
    let sig = sign(SECRET, &body);
    let answer = post_with_signature(bridge.webhook_addr, &sig, body.clone()).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(&answer.body[..], br#"{"received":true}"#);
    let records = mem.records();
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r.payload, body, "payload must be byte for byte");
    assert_eq!(r.destination, "stripe.payments");
    assert_eq!(r.key, "pi_1");
    let headers: Vec<(&str, &str)> = r.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        headers,
        vec![
            ("stripe-event-id", "evt_byte"),
            ("stripe-event-type", "payment_intent.succeeded"),
            ("stripe-api-version", "2024-06-20"),
            ("stripe-livemode", "false"),
            ("stripe-signature", sig.as_str()),
            ("content-type", "application/json"),
        ]
    );
    bridge.shutdown().await;
}

#[tokio::test]
async fn templates_use_livemode_account_object_and_type() {
    let (bridge, mem) = one_sink().await;
    let body = Bytes::from_static(
        br#"{"id":"evt_c1","object":"event","account":"acct_42","livemode":true,"data":{"object":{"id":"in_1"}},"type":"invoice.paid"}"#,
    );
    assert_eq!(post_signed(bridge.webhook_addr, body).await.status, StatusCode::OK);
    let body = Bytes::from_static(br#"{"id":"evt_c2","livemode":false,"type":"invoice.payment_failed"}"#);
    assert_eq!(post_signed(bridge.webhook_addr, body).await.status, StatusCode::OK);
    let records = mem.records();
    assert_eq!(records[0].destination, "stripe.live.acct_42.invoice.invoice.paid");
    assert!(records[0]
        .headers
        .contains(&("stripe-account".into(), "acct_42".into())));
    assert_eq!(
        records[1].destination,
        "stripe.test.platform.invoice.invoice.payment_failed"
    );
    assert_eq!(records[1].key, "evt_c2", "no data.object.id: the key is the event id");
    assert!(!records[1]
        .headers
        .iter()
        .any(|(k, _)| k == "stripe-account" || k == "stripe-api-version"));
    bridge.shutdown().await;
}

#[tokio::test]
async fn duplicate_event_id_is_acknowledged_but_not_published_again() {
    let (bridge, mem) = one_sink().await;
    let body = event("evt_dup", "charge.succeeded");
    assert_eq!(
        post_signed(bridge.webhook_addr, body.clone()).await.status,
        StatusCode::OK
    );
    let again = post_signed(bridge.webhook_addr, body).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(&again.body[..], br#"{"received":true}"#);
    assert_eq!(mem.records().len(), 1);
    let metrics = get(bridge.admin_addr, "/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert_eq!(
        metric(&text, "hookbridge_duplicates_total{endpoint=\"/webhooks/stripe\"}"),
        Some(1.0),
        "{text}"
    );
    bridge.shutdown().await;
}

#[tokio::test]
async fn two_copies_of_one_event_at_once_are_published_once() {
    let (bridge, mem) = one_sink().await;
    // Each publish takes 1.5 s (the test ack_timeout is 2 s): the copies overlap.
    mem.set_behaviour(Behaviour::Delay(Duration::from_millis(1500)));
    let body = event("evt_twice", "charge.succeeded");
    let first = tokio::spawn(post_signed(bridge.webhook_addr, body.clone()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = tokio::spawn(post_signed(bridge.webhook_addr, body.clone()));
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    // Whichever claimed the event first publishes it; the other is told to retry.
    let (ok, busy) = if first.status == StatusCode::OK {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.body);
    assert_eq!(busy.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", busy.body);
    assert!(busy.headers.contains_key("retry-after"));
    assert_eq!(busy.json()["error"], "unavailable", "{:?}", busy.body);
    // Stripe's retry of that copy is a duplicate of what is now published.
    mem.set_behaviour(Behaviour::Confirm);
    let retry = post_signed(bridge.webhook_addr, body).await;
    assert_eq!(retry.status, StatusCode::OK);
    assert_eq!(mem.records().len(), 1, "published once");
    bridge.shutdown().await;
}

#[tokio::test]
async fn signature_header_missing_empty_or_malformed_is_400() {
    let (bridge, mem) = one_sink().await;
    let body = event("evt_h", "charge.succeeded");
    let a = request(bridge.webhook_addr, Method::POST, PATH, &[], body.clone()).await;
    assert_error(&a, StatusCode::BAD_REQUEST, "missing_signature");
    let a = request(
        bridge.webhook_addr,
        Method::POST,
        PATH,
        &[("stripe-signature", "")],
        body.clone(),
    )
    .await;
    assert_error(&a, StatusCode::BAD_REQUEST, "missing_signature");
    for bad in ["t=abc,v1=00", "v1=00", "t=1700000000", "garbage"] {
        let a = post_with_signature(bridge.webhook_addr, bad, body.clone()).await;
        assert_error(&a, StatusCode::BAD_REQUEST, "malformed_signature");
    }
    // Several `t` elements parse, as in Stripe's SDKs (tests/interop/signature_corpus.txt); a `v1`
    // signed for none of them is then a mismatch.
    let a = post_with_signature(bridge.webhook_addr, "t=1,t=2,v1=00", body.clone()).await;
    assert_error(&a, StatusCode::BAD_REQUEST, "signature_mismatch");
    assert!(mem.records().is_empty());
    bridge.shutdown().await;
}

#[tokio::test]
async fn no_matching_signature_is_400_without_echoing_anything() {
    let (bridge, mem) = one_sink().await;
    let body = event("evt_sig", "charge.succeeded");
    let wrong = verify::sign(b"whsec_wrong", verify::unix_now(), &body);
    let a = post_with_signature(bridge.webhook_addr, &wrong, body.clone()).await;
    assert_error(&a, StatusCode::BAD_REQUEST, "signature_mismatch");
    let text = String::from_utf8_lossy(&a.body);
    assert!(
        !text.contains("evt_sig") && !text.contains(SECRET) && !text.contains("whsec_wrong"),
        "{text}"
    );
    // Tampered body with the right secret's signature.
    let sig = sign(SECRET, &body);
    let mut tampered = body.to_vec();
    tampered[10] ^= 1;
    let a = post_with_signature(bridge.webhook_addr, &sig, tampered.into()).await;
    assert_error(&a, StatusCode::BAD_REQUEST, "signature_mismatch");
    assert!(mem.records().is_empty());
    bridge.shutdown().await;
}

#[tokio::test]
async fn timestamp_outside_tolerance_is_400_past_and_future() {
    let (bridge, mem) = one_sink().await;
    let body = event("evt_t", "charge.succeeded");
    // 300 s in the past (tolerance), 15 min in the future (future_tolerance) by default.
    for offset in [-301, 901, -3600, 86_400] {
        let sig = verify::sign(SECRET.as_bytes(), verify::unix_now() + offset, &body);
        let a = post_with_signature(bridge.webhook_addr, &sig, body.clone()).await;
        assert_error(&a, StatusCode::BAD_REQUEST, "timestamp_out_of_tolerance");
    }
    let sig = verify::sign(SECRET.as_bytes(), verify::unix_now() - 240, &body);
    let a = post_with_signature(bridge.webhook_addr, &sig, body).await;
    assert_eq!(a.status, StatusCode::OK);
    // A host clock 10 minutes slow still takes Stripe's deliveries.
    let body = event("evt_t_slow_clock", "charge.succeeded");
    let sig = verify::sign(SECRET.as_bytes(), verify::unix_now() + 600, &body);
    let a = post_with_signature(bridge.webhook_addr, &sig, body).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(mem.records().len(), 2);
    bridge.shutdown().await;
}

#[tokio::test]
async fn future_tolerance_is_configurable_per_endpoint() {
    let mem = MemorySink::new("mem");
    let config = yaml(ONE_SINK).replace("    secrets:\n", "    future_tolerance: 30s\n    secrets:\n");
    assert!(config.contains("future_tolerance: 30s"), "{config}");
    let bridge = spawn_with(&config, vec![Arc::new(mem.clone()) as Arc<dyn Sink>]).await;
    let body = event("evt_future_30", "charge.succeeded");
    let sig = verify::sign(SECRET.as_bytes(), verify::unix_now() + 120, &body);
    let a = post_with_signature(bridge.webhook_addr, &sig, body.clone()).await;
    assert_error(&a, StatusCode::BAD_REQUEST, "timestamp_out_of_tolerance");
    assert!(
        a.json()["message"].as_str().unwrap().contains("in the future"),
        "{:?}",
        a.body
    );
    let sig = verify::sign(SECRET.as_bytes(), verify::unix_now() + 10, &body);
    let a = post_with_signature(bridge.webhook_addr, &sig, body).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(mem.records().len(), 1);
    bridge.shutdown().await;
}

#[tokio::test]
async fn signed_body_that_is_not_an_event_is_400() {
    let (bridge, mem) = one_sink().await;
    for (body, code) in [
        (&b"not json at all"[..], "invalid_json"),
        (b"[1,2,3]", "invalid_json"),
        (br#"{"id":"evt_1"}"#, "invalid_event"),
        (br#"{"id":"evt_1","type":42}"#, "invalid_event"),
    ] {
        let a = post_signed(bridge.webhook_addr, Bytes::from_static(body)).await;
        assert_error(&a, StatusCode::BAD_REQUEST, code);
        assert!(!String::from_utf8_lossy(&a.body).contains("not json at all"));
    }
    assert!(mem.records().is_empty());
    bridge.shutdown().await;
}

#[tokio::test]
async fn body_over_the_limit_is_413_with_or_without_content_length() {
    let yaml = yaml(ONE_SINK).replace("ack_timeout: \"2s\"", "ack_timeout: \"2s\"\nmax_body_bytes: 1000");
    let mem = MemorySink::new("mem");
    let bridge = spawn_with(&yaml, vec![Arc::new(mem.clone()) as Arc<dyn Sink>]).await;
    let big = Bytes::from(format!(
        r#"{{"id":"evt_big","type":"charge.succeeded","pad":"{}"}}"#,
        "x".repeat(2000)
    ));
    let a = post_signed(bridge.webhook_addr, big.clone()).await;
    assert_error(&a, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");

    // Chunked: no Content-Length, so the limit must be enforced while reading.
    let (status, body) = raw_chunked_post(bridge.webhook_addr, &big).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("payload_too_large"), "{body}");

    let small = event("evt_small", "charge.succeeded");
    assert!(small.len() < 1000);
    assert_eq!(post_signed(bridge.webhook_addr, small).await.status, StatusCode::OK);
    assert_eq!(mem.records().len(), 1);
    bridge.shutdown().await;
}

/// Sends a chunked POST by hand and returns the status code and the raw response text.
async fn raw_chunked_post(addr: std::net::SocketAddr, body: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sig = sign(SECRET, body);
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {PATH} HTTP/1.1\r\nhost: x\r\nstripe-signature: {sig}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.chunks(300) {
        s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await.unwrap();
        s.write_all(chunk).await.unwrap();
        s.write_all(b"\r\n").await.unwrap();
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text)
}

#[tokio::test]
async fn retryable_sink_failure_is_503_with_retry_after_and_nothing_is_remembered() {
    let (bridge, mem) = one_sink().await;
    mem.set_behaviour(Behaviour::Fail(SinkError::retryable("broker unreachable")));
    let body = event("evt_503", "charge.succeeded");
    let a = post_signed(bridge.webhook_addr, body.clone()).await;
    assert_error(&a, StatusCode::SERVICE_UNAVAILABLE, "publish_unavailable");
    assert!(a.headers.contains_key("retry-after"));
    // Stripe retries: now the sink works, and the same event must be published (not deduplicated).
    mem.set_behaviour(Behaviour::Confirm);
    assert_eq!(post_signed(bridge.webhook_addr, body).await.status, StatusCode::OK);
    assert_eq!(mem.records().len(), 1);
    bridge.shutdown().await;
}

#[tokio::test]
async fn permanent_sink_failure_is_500() {
    let (bridge, mem) = one_sink().await;
    mem.set_behaviour(Behaviour::Fail(SinkError::permanent("message too large")));
    let a = post_signed(bridge.webhook_addr, event("evt_500", "charge.succeeded")).await;
    assert_error(&a, StatusCode::INTERNAL_SERVER_ERROR, "publish_rejected");
    let text = String::from_utf8_lossy(&get(bridge.admin_addr, "/metrics").await.body).to_string();
    assert_eq!(
        metric(
            &text,
            "hookbridge_publish_errors_total{sink=\"mem\",destination=\"stripe.payments\",class=\"permanent\"}"
        ),
        Some(1.0),
        "{text}"
    );
    bridge.shutdown().await;
}

#[tokio::test]
async fn stalled_sink_is_answered_503_within_ack_timeout() {
    let yaml = yaml(ONE_SINK).replace("ack_timeout: \"2s\"", "ack_timeout: \"300ms\"");
    let mem = MemorySink::new("mem");
    mem.set_behaviour(Behaviour::Stall);
    let bridge = spawn_with(&yaml, vec![Arc::new(mem.clone()) as Arc<dyn Sink>]).await;
    let started = Instant::now();
    let a = post_signed(bridge.webhook_addr, event("evt_stall", "charge.succeeded")).await;
    assert_error(&a, StatusCode::SERVICE_UNAVAILABLE, "publish_unavailable");
    // A bound, not a speed goal: the wait must end near ack_timeout, never hang.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    bridge.shutdown().await;
}

const FAN_OUT: &str = r#"
sinks:
  a:
    kind: discard
  b:
    kind: discard
routes:
  - match: "customer.subscription.*"
    to:
      - { sink: a, topic: "subs.{type}" }
      - { sink: b, topic: "stripe.subscriptions" }
  - match: "*"
    to:
      - { sink: a, topic: "other" }
"#;

#[tokio::test]
async fn fan_out_needs_every_target_and_the_worst_outcome_wins() {
    let a = MemorySink::new("a");
    let b = MemorySink::new("b");
    let bridge = spawn_with(
        &yaml(FAN_OUT),
        vec![Arc::new(a.clone()) as Arc<dyn Sink>, Arc::new(b.clone())],
    )
    .await;
    let body = event("evt_fan", "customer.subscription.updated");
    assert_eq!(
        post_signed(bridge.webhook_addr, body.clone()).await.status,
        StatusCode::OK
    );
    assert_eq!(a.records()[0].destination, "subs.customer.subscription.updated");
    assert_eq!(b.records()[0].destination, "stripe.subscriptions");
    assert_eq!(a.records()[0].payload, body);
    assert_eq!(b.records()[0].payload, body);

    // One target retryable, the other permanent: 500 (a person must act); either alone decides.
    b.set_behaviour(Behaviour::Fail(SinkError::retryable("down")));
    let x = post_signed(bridge.webhook_addr, event("evt_fan2", "customer.subscription.created")).await;
    assert_eq!(x.status, StatusCode::SERVICE_UNAVAILABLE);
    a.set_behaviour(Behaviour::Fail(SinkError::permanent("unroutable")));
    let x = post_signed(bridge.webhook_addr, event("evt_fan3", "customer.subscription.created")).await;
    assert_eq!(x.status, StatusCode::INTERNAL_SERVER_ERROR);
    // The non-fan-out route only needs `a`.
    a.set_behaviour(Behaviour::Confirm);
    assert_eq!(
        post_signed(bridge.webhook_addr, event("evt_o", "invoice.paid"))
            .await
            .status,
        StatusCode::OK
    );
    bridge.shutdown().await;
}

#[tokio::test]
async fn unrouted_event_is_200_and_counted() {
    let (bridge, mem) = one_sink().await;
    let a = post_signed(bridge.webhook_addr, event("evt_none", "customer.created")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(mem.records().is_empty());
    let text = String::from_utf8_lossy(&get(bridge.admin_addr, "/metrics").await.body).to_string();
    assert_eq!(
        metric(&text, "hookbridge_unrouted_total{endpoint=\"/webhooks/stripe\"}"),
        Some(1.0),
        "{text}"
    );
    bridge.shutdown().await;
}

#[tokio::test]
async fn other_methods_are_405_and_other_paths_404() {
    let (bridge, _mem) = one_sink().await;
    for method in [Method::GET, Method::PUT, Method::DELETE] {
        let a = request(bridge.webhook_addr, method, PATH, &[], Bytes::new()).await;
        assert_error(&a, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
        assert_eq!(a.headers["allow"], "POST");
    }
    for path in ["/", "/webhooks", "/webhooks/stripe/", "/healthz", "/metrics"] {
        let body = event("evt_404", "charge.succeeded");
        let sig = sign(SECRET, &body);
        let a = request(
            bridge.webhook_addr,
            Method::POST,
            path,
            &[("stripe-signature", &sig)],
            body,
        )
        .await;
        assert_error(&a, StatusCode::NOT_FOUND, "not_found");
    }
    bridge.shutdown().await;
}

#[tokio::test]
async fn rotated_secrets_any_one_matches() {
    let yaml = yaml(ONE_SINK).replace(
        &format!("      - value: {SECRET}"),
        "      - value: whsec_old\n      - value: whsec_new",
    );
    let mem = MemorySink::new("mem");
    let bridge = spawn_with(&yaml, vec![Arc::new(mem.clone()) as Arc<dyn Sink>]).await;
    for (i, secret) in ["whsec_old", "whsec_new"].iter().enumerate() {
        let body = event(&format!("evt_rot{i}"), "charge.succeeded");
        let sig = sign(secret, &body);
        let a = post_with_signature(bridge.webhook_addr, &sig, body).await;
        assert_eq!(a.status, StatusCode::OK);
    }
    // Stripe sends both signatures during its own rotation window.
    let body = event("evt_both", "charge.succeeded");
    let t = verify::unix_now();
    let both = format!(
        "t={t},v1={},v1={}",
        hex::encode(verify::compute_signature(b"whsec_other", t, &body)),
        hex::encode(verify::compute_signature(b"whsec_new", t, &body))
    );
    let a = post_with_signature(bridge.webhook_addr, &both, body).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(mem.records().len(), 3);
    bridge.shutdown().await;
}

#[tokio::test]
async fn keep_alive_serves_several_requests_on_one_connection() {
    let (bridge, mem) = one_sink().await;
    let target = hookbridge::client::Target::parse(&format!("http://{}{PATH}", bridge.webhook_addr)).unwrap();
    let mut conn = hookbridge::client::Connection::open(&target).await.unwrap();
    for i in 0..5 {
        let body = event(&format!("evt_ka{i}"), "charge.succeeded");
        let (status, _) = conn.post_signed(&sign(SECRET, &body), body).await.unwrap();
        assert_eq!(status, StatusCode::OK);
    }
    assert!(conn.is_open());
    assert_eq!(mem.records().len(), 5);
    bridge.shutdown().await;
}

#[tokio::test]
async fn admin_health_readiness_and_metrics() {
    let (bridge, mem) = one_sink().await;
    assert_eq!(get(bridge.admin_addr, "/healthz").await.status, StatusCode::OK);
    let ready = get(bridge.admin_addr, "/readyz").await;
    assert_eq!(ready.status, StatusCode::OK, "{:?}", ready.body);
    mem.set_healthy(false);
    let ready = get(bridge.admin_addr, "/readyz").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.json()["sinks"][0]["ok"], false);
    assert_eq!(get(bridge.admin_addr, "/healthz").await.status, StatusCode::OK);
    mem.set_healthy(true);

    assert_eq!(
        post_signed(bridge.webhook_addr, event("evt_m", "charge.succeeded"))
            .await
            .status,
        StatusCode::OK
    );
    let _ = request(
        bridge.webhook_addr,
        Method::POST,
        PATH,
        &[],
        event("evt_m2", "charge.succeeded"),
    )
    .await;
    let text = String::from_utf8_lossy(&get(bridge.admin_addr, "/metrics").await.body).to_string();
    for (line, value) in [
        (
            "hookbridge_requests_total{endpoint=\"/webhooks/stripe\",status=\"200\"}",
            1.0,
        ),
        (
            "hookbridge_requests_total{endpoint=\"/webhooks/stripe\",status=\"400\"}",
            1.0,
        ),
        (
            "hookbridge_rejected_total{endpoint=\"/webhooks/stripe\",reason=\"missing_signature\"}",
            1.0,
        ),
        (
            "hookbridge_published_total{sink=\"mem\",destination=\"stripe.payments\"}",
            1.0,
        ),
        ("hookbridge_ack_seconds_count", 2.0),
    ] {
        assert_eq!(metric(&text, line), Some(value), "{line} in\n{text}");
    }
    assert!(
        text.contains("# TYPE hookbridge_publish_errors_total counter") || text.contains("hookbridge_publish_errors")
    );
    assert_eq!(get(bridge.admin_addr, "/nope").await.status, StatusCode::NOT_FOUND);
    // The admin port is not the webhook port: webhooks are not served there.
    let a = post_signed(bridge.admin_addr, event("evt_adm", "charge.succeeded")).await;
    assert_ne!(a.status, StatusCode::OK);
    bridge.shutdown().await;
}

#[tokio::test]
async fn shutdown_lets_requests_in_flight_finish_and_flushes_sinks() {
    let (bridge, mem) = one_sink().await;
    mem.set_behaviour(Behaviour::Delay(Duration::from_millis(600)));
    let addr = bridge.webhook_addr;
    let admin = bridge.admin_addr;
    let in_flight = tokio::spawn(async move { post_signed(addr, event("evt_flight", "charge.succeeded")).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    bridge.trigger_shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Draining: not ready any more, and no new connections are accepted.
    let ready = tokio::time::timeout(Duration::from_secs(1), async { get(admin, "/readyz").await.status }).await;
    assert_eq!(ready.ok(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the webhook port must stop accepting"
    );
    let answer = in_flight.await.unwrap();
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "the request in flight finishes with its confirmation"
    );
    let started = Instant::now();
    bridge.wait().await;
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(mem.records().len(), 1);
    assert!(mem.is_closed(), "sinks are closed (flushed) at shutdown");
}

/// Reads a raw answer until the bridge closes the connection.
async fn read_until_closed(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("the connection is closed after the answer")
        .unwrap();
    String::from_utf8_lossy(&out).to_string()
}

#[tokio::test]
async fn a_client_that_half_closes_after_its_request_gets_the_answer() {
    use tokio::io::AsyncWriteExt;
    let (bridge, mem) = one_sink().await;
    // The broker confirms after the client's EOF arrived (the case that lost most answers).
    mem.set_behaviour(Behaviour::Delay(Duration::from_millis(100)));
    for i in 0..10 {
        let body = event(&format!("evt_half{i}"), "charge.succeeded");
        let sig = sign(SECRET, &body);
        let mut s = tokio::net::TcpStream::connect(bridge.webhook_addr).await.unwrap();
        let head = format!(
            "POST {PATH} HTTP/1.1\r\nhost: x\r\nstripe-signature: {sig}\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&body).await.unwrap();
        s.shutdown().await.unwrap();
        let text = read_until_closed(&mut s).await;
        assert!(text.starts_with("HTTP/1.1 200"), "try {i}: {text:?}");
    }
    assert_eq!(mem.records().len(), 10);
    bridge.shutdown().await;
}

#[tokio::test]
async fn an_http2_preface_gets_a_bare_400() {
    use tokio::io::AsyncWriteExt;
    let (bridge, _mem) = one_sink().await;
    // Prior-knowledge HTTP/2 (h2c): the preface, then an empty SETTINGS frame.
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    for split in [hello.len(), 3] {
        let mut s = tokio::net::TcpStream::connect(bridge.webhook_addr).await.unwrap();
        // Also in two pieces: the preface may arrive a few bytes at a time.
        s.write_all(&hello[..split]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.write_all(&hello[split..]).await.unwrap();
        let text = read_until_closed(&mut s).await;
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text:?}");
        assert!(text.ends_with("\r\n\r\n"), "a bare 400, no body: {text:?}");
    }
    // A request line that merely starts like the preface is HTTP/1.1 as usual.
    let pri = Method::from_bytes(b"PRI").unwrap();
    let a = request(bridge.webhook_addr, pri, PATH, &[], Bytes::new()).await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    bridge.shutdown().await;
}
