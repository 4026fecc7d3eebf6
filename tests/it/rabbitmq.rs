//! The rabbitmq sink against a real RabbitMQ server (`deploy/local/rabbitmq.sh start`; CI's
//! .ci/run starts it). Every test uses its own exchange and queues, reads back with lapin, and
//! fails, never skips, when the broker is missing. Fault tests are in rabbitmq_faults.rs.

use crate::amqp_support;
use crate::common;
use crate::kafka_support;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use amqp_support::{
    channel, count, drain, headers, message_id, one_queue, sink_yaml, spawn_bound, unique, wait_status, ROUTE_BY_TYPE,
};
use bytes::Bytes;
use common::{event, get, post_signed, spawn, yaml, SECRET};
use futures::StreamExt;
use lapin::options::{ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::ExchangeKind;

/// Metric lines of the admin port that contain every one of `parts`.
async fn metric_lines(admin: std::net::SocketAddr, parts: &[&str]) -> Vec<String> {
    let text = String::from_utf8_lossy(&get(admin, "/metrics").await.body).into_owned();
    text.lines()
        .filter(|l| !l.starts_with('#') && parts.iter().all(|p| l.contains(p)))
        .map(str::to_string)
        .collect()
}

/// A pretty-printed Connect event with non-ASCII text and odd spacing: what arrives must be
/// these bytes, not a re-serialisation.
fn connect_event(id: &str) -> Bytes {
    Bytes::from(format!(
        "{{\n  \"id\": \"{id}\",\n  \"object\": \"event\",\n  \"account\": \"acct_1Nv0FGQ9RKHgCVdK\",\n  \
         \"api_version\": \"2024-06-20\",\n  \"created\": 1712345678,\n  \"data\": {{ \"object\": {{ \"id\": \
         \"sub_1\", \"object\": \"subscription\", \"description\": \"Zürich caf\\u00e9 ☕ — 10 €\", \
         \"amount\": 1.50e3 }} }},\n  \"livemode\": true,\n  \"pending_webhooks\": 2,\n  \"request\": {{ \"id\": \
         null, \"idempotency_key\": null }},\n  \"type\": \"customer.subscription.updated\"\n}}\n"
    ))
}

#[tokio::test]
async fn routed_events_land_once_byte_for_byte_with_properties_and_headers() {
    let exchange = unique("ex");
    let billing = unique("billing");
    let subs = unique("subs");
    let mut queues = one_queue(&billing, &["invoice.*"]);
    queues.push_str(&format!(
        "      - name: \"{subs}\"\n        type: quorum\n        bindings: [\"customer.subscription.*\"]\n"
    ));
    let bridge = spawn(&yaml(&sink_yaml(&exchange, &queues, ROUTE_BY_TYPE))).await;
    wait_status(bridge.admin_addr, "/readyz", 200, Duration::from_secs(10)).await;

    let invoice_a = event(&unique("evt_a"), "invoice.paid");
    let invoice_b = event(&unique("evt_b"), "invoice.finalized");
    let sub_id = unique("evt_sub");
    let sub = connect_event(&sub_id);
    let mut signatures = HashMap::new();
    for body in [&invoice_a, &invoice_b, &sub] {
        let sig = common::sign(SECRET, body);
        let a = common::request(
            bridge.webhook_addr,
            http::Method::POST,
            common::PATH,
            &[("stripe-signature", &sig)],
            body.clone(),
        )
        .await;
        assert_eq!(a.status, 200, "{:?}", a.body);
        signatures.insert(body.clone(), sig);
    }
    // Stripe delivering the same event again: answered 200, not published twice.
    assert_eq!(post_signed(bridge.webhook_addr, invoice_a.clone()).await.status, 200);

    let (_conn, ch) = channel().await;
    let got = drain(&ch, &billing).await;
    assert_eq!(got.len(), 2, "each invoice event exactly once in {billing}");
    for (m, (body, event_type)) in got
        .iter()
        .zip([(&invoice_a, "invoice.paid"), (&invoice_b, "invoice.finalized")])
    {
        assert_eq!(m.delivery.data, body.to_vec(), "payload byte for byte");
        assert_eq!(m.delivery.routing_key.as_str(), event_type);
        assert_eq!(m.delivery.exchange.as_str(), exchange);
        let p = &m.delivery.properties;
        assert_eq!(*p.delivery_mode(), Some(2), "persistent");
        assert_eq!(p.content_type().as_ref().map(|s| s.as_str()), Some("application/json"));
        assert_eq!(
            p.kind().as_ref().map(|s| s.as_str()),
            Some(event_type),
            "type = event type"
        );
        assert_eq!(*p.timestamp(), Some(1_700_000_000), "timestamp = event created");
        let h = headers(m);
        assert_eq!(h["stripe-event-id"], message_id(m));
        assert_eq!(h["stripe-event-type"], event_type);
        assert_eq!(h["stripe-api-version"], "2024-06-20");
        assert_eq!(h["stripe-livemode"], "false");
        assert_eq!(h["stripe-signature"], signatures[body]);
        assert_eq!(h["content-type"], "application/json");
        assert!(
            !h.contains_key("stripe-account"),
            "platform events carry no stripe-account"
        );
    }
    assert!(message_id(&got[0]).starts_with("hookbridge-test.evt_a"));

    let got = drain(&ch, &subs).await;
    assert_eq!(got.len(), 1, "the subscription event once, in the quorum queue");
    let m = &got[0];
    assert_eq!(m.delivery.data, sub.to_vec(), "payload byte for byte");
    assert_eq!(m.delivery.routing_key.as_str(), "customer.subscription.updated");
    assert_eq!(message_id(m), sub_id);
    assert_eq!(*m.delivery.properties.timestamp(), Some(1_712_345_678));
    let h = headers(m);
    assert_eq!(h["stripe-account"], "acct_1Nv0FGQ9RKHgCVdK");
    assert_eq!(h["stripe-livemode"], "true");

    // The exchange the sink declared is a durable topic exchange, the quorum queue a quorum queue:
    // re-declaring them with those arguments is accepted only if they match.
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(&exchange, ExchangeKind::Topic, durable, FieldTable::default())
        .await
        .expect("the exchange is durable and of type topic");
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    let qopts = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(&subs, qopts, args)
        .await
        .expect("a durable quorum queue");

    let published = metric_lines(bridge.admin_addr, &["hookbridge_published_total", "sink=\"amqp\""]).await;
    let total: f64 = published
        .iter()
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(total, 3.0, "{published:?}");
    bridge.shutdown().await;
}

fn stripe_sdk_python() -> String {
    let dir = std::env::var_os("HOOKBRIDGE_STRIPE_SDK")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("HOOKBRIDGE_CACHE")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| {
                    std::path::PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                        .join(".cache/hookbridge")
                });
            cache.join("stripe-sdk")
        });
    let p = dir.join("venv/bin/python");
    assert!(p.exists(), "{} is missing: run deploy/local/stripe-sdk.sh", p.display());
    p.to_string_lossy().into_owned()
}

/// Runs the official Stripe SDK's verifier (tolerance off) on a body and header.
fn stripe_verifies(secret: &str, header: &str, body: &[u8]) -> bool {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/stripe_verify.py");
    let mut child = Command::new(stripe_sdk_python())
        .args([script, "--secret", secret, "--header", header])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run the Stripe SDK verifier (deploy/local/stripe-sdk.sh): {e}"));
    child.stdin.take().expect("stdin").write_all(body).expect("write body");
    let out = child.wait_with_output().expect("verifier output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("ModuleNotFoundError"),
        "Stripe SDK missing; run deploy/local/stripe-sdk.sh: {stderr}"
    );
    match out.status.code() {
        Some(0) => true,
        Some(1) => false,
        other => panic!("stripe_verify.py failed ({other:?}): {stderr}"),
    }
}

#[tokio::test]
async fn a_consumer_verifies_the_message_with_stripes_sdk() {
    let exchange = unique("ex");
    let queue = unique("verify");
    let routes = r#"
routes:
  - match: "*"
    to: [{ sink: amqp, routing_key: "{livemode}.{type}" }]
"#;
    let bridge = spawn(&yaml(&sink_yaml(&exchange, &one_queue(&queue, &["#"]), routes))).await;
    wait_status(bridge.admin_addr, "/readyz", 200, Duration::from_secs(10)).await;
    let body = connect_event(&unique("evt_v"));
    assert_eq!(post_signed(bridge.webhook_addr, body.clone()).await.status, 200);

    let (_conn, ch) = channel().await;
    let got = drain(&ch, &queue).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].delivery.routing_key.as_str(),
        "live.customer.subscription.updated"
    );
    let h = headers(&got[0]);
    // What a consumer does: the message body and its stripe-signature header, checked with the
    // endpoint secret by Stripe's own library, tolerance off (t is Stripe's delivery time).
    assert!(stripe_verifies(SECRET, &h["stripe-signature"], &got[0].delivery.data));
    let mut tampered = got[0].delivery.data.clone();
    tampered[10] ^= 1;
    assert!(
        !stripe_verifies(SECRET, &h["stripe-signature"], &tampered),
        "the verifier is not a rubber stamp"
    );
    bridge.shutdown().await;
}

#[tokio::test]
async fn unroutable_is_500_and_not_reported_published() {
    let exchange = unique("ex");
    let queue = unique("routed");
    let routes = r#"
routes:
  - match: "invoice.*"
    to: [{ sink: amqp, routing_key: "{type}" }]
  - match: "*"
    to: [{ sink: amqp, routing_key: "nobody.listens.{type}" }]
"#;
    let bridge = spawn(&yaml(&sink_yaml(&exchange, &one_queue(&queue, &["invoice.*"]), routes))).await;
    wait_status(bridge.admin_addr, "/readyz", 200, Duration::from_secs(10)).await;

    let lost = event(&unique("evt_lost"), "charge.refunded");
    let a = post_signed(bridge.webhook_addr, lost.clone()).await;
    assert_eq!(a.status, 500, "{:?}", a.body);
    let text = String::from_utf8_lossy(&a.body);
    assert!(!text.contains("obj_"), "no payload echoed: {text}");
    // The target's series exists from the start (at 0); the refused message does not count.
    let published = metric_lines(bridge.admin_addr, &["hookbridge_published_total", "nobody.listens"]).await;
    assert!(
        published.iter().all(|l| l.ends_with(" 0")),
        "an unroutable message is not counted as published: {published:?}"
    );
    let errors = metric_lines(
        bridge.admin_addr,
        &["hookbridge_publish_errors_total", "sink=\"amqp\"", "permanent"],
    )
    .await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].ends_with(" 1"), "{errors:?}");
    // Not remembered as published: Stripe's retry is published again (and fails again).
    assert_eq!(post_signed(bridge.webhook_addr, lost).await.status, 500);

    // Routable and unroutable events at once on the same sink: each gets its own answer, and
    // every 200 is in the queue.
    let mut tasks = Vec::new();
    for i in 0..120 {
        let routable = i % 2 == 0;
        let id = unique(if routable { "evt_ok" } else { "evt_no" });
        let body = event(&id, if routable { "invoice.paid" } else { "charge.captured" });
        let addr = bridge.webhook_addr;
        tasks.push(tokio::spawn(async move {
            (id, routable, post_signed(addr, body).await.status.as_u16())
        }));
    }
    let mut expected = HashSet::new();
    for t in tasks {
        let (id, routable, status) = t.await.expect("task");
        assert_eq!(status, if routable { 200 } else { 500 }, "{id}");
        if routable {
            expected.insert(id);
        }
    }
    let (_conn, ch) = channel().await;
    let got: HashSet<String> = drain(&ch, &queue).await.iter().map(message_id).collect();
    assert_eq!(got, expected);
    bridge.shutdown().await;
}

#[tokio::test]
async fn an_exchange_deleted_while_connected_is_declared_again() {
    let exchange = unique("deleted");
    let queue = unique("rebound");
    let bridge = spawn_bound(&exchange, &queue).await;
    let before = unique("evt_before");
    assert_eq!(
        post_signed(bridge.webhook_addr, event(&before, "invoice.paid"))
            .await
            .status,
        200
    );

    // Someone deletes the exchange (and so its bindings) behind the bridge's back.
    let (_conn, ch) = channel().await;
    ch.exchange_delete(&exchange, ExchangeDeleteOptions::default())
        .await
        .expect("delete the exchange");

    // The next event finds the exchange missing: 503, so Stripe retries.
    let after = unique("evt_after");
    let a = post_signed(bridge.webhook_addr, event(&after, "invoice.paid")).await;
    assert_eq!(a.status, 503, "{:?}", a.body);
    let text = String::from_utf8_lossy(&a.body);
    assert!(text.contains("declaring it again"), "{text}");

    // Stripe's retries get through once the sink has declared the exchange and binding again.
    // (A retry landing between the exchange's declaration and the queue's binding would be
    // unroutable, a 500; Stripe retries that too.)
    let start = Instant::now();
    let mut statuses = vec![503];
    loop {
        let a = post_signed(bridge.webhook_addr, event(&after, "invoice.paid")).await;
        statuses.push(a.status.as_u16());
        if a.status == 200 {
            break;
        }
        assert!(a.status == 503 || a.status == 500, "{:?}", a.body);
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not declared again: {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got: Vec<String> = drain(&ch, &queue).await.iter().map(message_id).collect();
    assert_eq!(got, vec![before, after], "{statuses:?}");
    bridge.shutdown().await;
}

#[tokio::test]
async fn a_deleted_exchange_the_bridge_may_not_declare_is_500_until_it_is_back() {
    // A user that may write and read but configure nothing: it cannot declare an exchange.
    let user = "hookbridge-test-writer";
    let password = "wr1ter-only";
    let users = amqp_support::rabbitmq_sh(&["ctl", "list_users"]);
    if !users.lines().any(|l| l.split_whitespace().next() == Some(user)) {
        amqp_support::rabbitmq_sh(&["ctl", "add_user", user, password]);
    }
    amqp_support::rabbitmq_sh(&["ctl", "set_permissions", "-p", "/", user, "^$", ".*", ".*"]);

    // The exchange, queue and binding are an administrator's.
    let exchange = unique("owned");
    let queue = unique("owned-q");
    let (_conn, ch) = channel().await;
    let setup = |ch: lapin::Channel, exchange: String, queue: String| async move {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.exchange_declare(&exchange, ExchangeKind::Topic, durable, FieldTable::default())
            .await
            .expect("declare the exchange");
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare(&queue, durable, FieldTable::default())
            .await
            .expect("declare the queue");
        ch.queue_bind(
            &queue,
            &exchange,
            "#",
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind the queue");
    };
    setup(ch.clone(), exchange.clone(), queue.clone()).await;

    let config = format!(
        r#"
sinks:
  amqp:
    kind: rabbitmq
    url: "amqp://{user}:{password}@127.0.0.1:5672/%2f"
    exchange: "{exchange}"
routes:
  - match: "*"
    to: [{{ sink: amqp, routing_key: "{{type}}" }}]
"#
    );
    let bridge = spawn(&yaml(&config)).await;
    wait_status(bridge.admin_addr, "/readyz", 200, Duration::from_secs(10)).await;
    let id = unique("evt_owned");
    let post = |id: String| {
        let addr = bridge.webhook_addr;
        async move { post_signed(addr, event(&id, "invoice.paid")).await }
    };
    assert_eq!(post(id.clone()).await.status, 200);

    ch.exchange_delete(&exchange, ExchangeDeleteOptions::default())
        .await
        .expect("delete the exchange");
    // First a retry (the sink tries to declare it again), then, once that was refused, a 500
    // that says why.
    let lost = unique("evt_lost");
    let a = post(lost.clone()).await;
    assert_eq!(a.status, 503, "{:?}", a.body);
    let start = Instant::now();
    loop {
        let a = post(lost.clone()).await;
        if a.status == 500 {
            let text = String::from_utf8_lossy(&a.body);
            assert!(text.contains("cannot be declared again"), "{text}");
            assert!(text.contains("403"), "{text}");
            break;
        }
        assert_eq!(a.status, 503, "{:?}", a.body);
        assert!(start.elapsed() < Duration::from_secs(10), "never a 500: {:?}", a.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The administrator puts it back: the same event goes through.
    setup(ch.clone(), exchange.clone(), queue.clone()).await;
    assert_eq!(post(lost.clone()).await.status, 200);
    let got: Vec<String> = drain(&ch, &queue).await.iter().map(message_id).collect();
    assert_eq!(got, vec![id, lost]);
    bridge.shutdown().await;
}

#[tokio::test]
async fn an_existing_exchange_is_used_as_it_is() {
    // An exchange created by someone else as `direct`; the sink (default type topic) must not
    // try to redeclare it, which the broker would refuse.
    let exchange = unique("direct");
    let queue = unique("q");
    let (_conn, ch) = channel().await;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(&exchange, ExchangeKind::Direct, durable, FieldTable::default())
        .await
        .expect("declare direct exchange");
    let routes = r#"
routes:
  - match: "*"
    to: [{ sink: amqp, routing_key: "stripe" }]
"#;
    let bridge = spawn(&yaml(&sink_yaml(&exchange, &one_queue(&queue, &["stripe"]), routes))).await;
    wait_status(bridge.admin_addr, "/readyz", 200, Duration::from_secs(10)).await;
    let id = unique("evt_d");
    assert_eq!(
        post_signed(bridge.webhook_addr, event(&id, "invoice.paid"))
            .await
            .status,
        200
    );
    let got = drain(&ch, &queue).await;
    assert_eq!(got.iter().map(message_id).collect::<Vec<_>>(), vec![id]);
    bridge.shutdown().await;
}

#[tokio::test]
async fn vhost_and_credentials_from_the_url() {
    let vhost = "hookbridge-test-vhost";
    let user = "hookbridge-test-user";
    let password = "s3cr3t-p4ss";
    // Idempotent set-up: a user with a password, allowed on its own vhost only.
    let users = amqp_support::rabbitmq_sh(&["ctl", "list_users"]);
    if !users.lines().any(|l| l.split_whitespace().next() == Some(user)) {
        amqp_support::rabbitmq_sh(&["ctl", "add_user", user, password]);
    }
    let vhosts = amqp_support::rabbitmq_sh(&["ctl", "list_vhosts"]);
    if !vhosts.lines().any(|l| l.trim() == vhost) {
        amqp_support::rabbitmq_sh(&["ctl", "add_vhost", vhost]);
    }
    amqp_support::rabbitmq_sh(&["ctl", "set_permissions", "-p", vhost, user, ".*", ".*", ".*"]);

    let exchange = unique("ex");
    let queue = unique("q");
    let sinks = |url: &str, password: &str| {
        format!(
            r#"
sinks:
  amqp:
    kind: rabbitmq
    url: "{url}"
{password}
    exchange: "{exchange}"
    connect_timeout: "2s"
{}
routes:
  - match: "*"
    to: [{{ sink: amqp, routing_key: "{{type}}" }}]
"#,
            one_queue(&queue, &["#"])
        )
    };
    // The password from a secret source, the user and vhost from the url.
    let url = format!("amqp://{user}@127.0.0.1:5672/{vhost}");
    let bridge = spawn(&yaml(&sinks(
        &url,
        &format!("    password: {{ value: \"{password}\" }}"),
    )))
    .await;
    wait_status(bridge.admin_addr, "/readyz", 200, Duration::from_secs(10)).await;
    let id = unique("evt_vh");
    assert_eq!(
        post_signed(bridge.webhook_addr, event(&id, "invoice.paid"))
            .await
            .status,
        200
    );
    bridge.shutdown().await;
    let conn = lapin::Connection::connect(
        &format!("amqp://{user}:{password}@127.0.0.1:5672/{vhost}"),
        lapin::ConnectionProperties::default(),
    )
    .await
    .expect("connect to the test vhost");
    let ch = conn.create_channel().await.expect("channel");
    let got = drain(&ch, &queue).await;
    assert_eq!(
        got.iter().map(message_id).collect::<Vec<_>>(),
        vec![id],
        "published in the vhost"
    );

    // A wrong password: the bridge starts, is not ready, answers 503, and says so without the
    // password anywhere.
    let wrong = format!("amqp://{user}:wrong-{password}@127.0.0.1:5672/{vhost}");
    let bridge = spawn(&yaml(&sinks(&wrong, ""))).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ready = get(bridge.admin_addr, "/readyz").await;
    assert_eq!(ready.status, 503);
    let a = post_signed(bridge.webhook_addr, event(&unique("evt_pw"), "invoice.paid")).await;
    assert_eq!(a.status, 503);
    assert!(a.headers.contains_key("retry-after"));
    for text in [String::from_utf8_lossy(&ready.body), String::from_utf8_lossy(&a.body)] {
        assert!(!text.contains(password), "{text}");
    }
    bridge.shutdown().await;
}

#[tokio::test]
async fn amqps_to_a_plain_port_fails_cleanly() {
    // TLS with the system roots against a non-TLS listener: the handshake fails, the bridge
    // stays up and answers 503, and nothing panics (e.g. for want of a crypto provider).
    let sinks = format!(
        r#"
sinks:
  amqp:
    kind: rabbitmq
    url: "amqps://guest:guest@127.0.0.1:5672/%2f"
    exchange: "{}"
    connect_timeout: "1s"
{ROUTE_BY_TYPE}"#,
        unique("ex")
    );
    let started = Instant::now();
    let bridge = spawn(&yaml(&sinks)).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "start does not wait for the broker"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(get(bridge.admin_addr, "/readyz").await.status, 503);
    let a = post_signed(bridge.webhook_addr, event(&unique("evt_tls"), "invoice.paid")).await;
    assert_eq!(a.status, 503, "{:?}", a.body);
    assert_eq!(get(bridge.admin_addr, "/healthz").await.status, 200);
    bridge.shutdown().await;
}

#[tokio::test]
async fn many_confirms_in_flight() {
    // Throughput comes from many publishes awaiting confirms at once, not one round trip each.
    let exchange = unique("ex");
    let queue = unique("load");
    let bridge = spawn_bound(&exchange, &queue).await;
    let n = 1000;
    let concurrency = 64;
    let ids: Vec<String> = (0..n).map(|_| unique("evt_t")).collect();
    let started = Instant::now();
    let addr = bridge.webhook_addr;
    let statuses: Vec<(String, u16)> = futures::stream::iter(ids.clone())
        .map(|id| async move {
            let s = post_signed(addr, event(&id, "invoice.paid")).await.status.as_u16();
            (id, s)
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let took = started.elapsed();
    assert!(statuses.iter().all(|(_, s)| *s == 200), "every event confirmed");
    eprintln!(
        "rabbitmq sink: {n} events, {concurrency} concurrent requests, {:.0} events/s",
        n as f64 / took.as_secs_f64()
    );
    let (_conn, ch) = channel().await;
    assert_eq!(count(&ch, &queue).await, n as u32);
    let got: HashSet<String> = drain(&ch, &queue).await.iter().map(message_id).collect();
    assert_eq!(got, ids.into_iter().collect::<HashSet<_>>());
    bridge.shutdown().await;
}

#[tokio::test]
async fn queue_bind_is_idempotent_across_bridges() {
    // Two bridges with the same topology (as in a rolling deploy) both start and publish.
    let exchange = unique("ex");
    let queue = unique("shared");
    let config = yaml(&sink_yaml(
        &exchange,
        &one_queue(&queue, &["invoice.*", "charge.*"]),
        ROUTE_BY_TYPE,
    ));
    let a = spawn(&config).await;
    wait_status(a.admin_addr, "/readyz", 200, Duration::from_secs(10)).await;
    let b = spawn(&config).await;
    wait_status(b.admin_addr, "/readyz", 200, Duration::from_secs(10)).await;
    assert_eq!(
        post_signed(a.webhook_addr, event(&unique("e1"), "invoice.paid"))
            .await
            .status,
        200
    );
    assert_eq!(
        post_signed(b.webhook_addr, event(&unique("e2"), "charge.succeeded"))
            .await
            .status,
        200
    );
    let (_conn, ch) = channel().await;
    ch.queue_bind(
        &queue,
        &exchange,
        "extra",
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
    assert_eq!(count(&ch, &queue).await, 2);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn one_route_fans_out_to_kafka_and_rabbitmq() {
    kafka_support::require_broker(Duration::from_secs(30));
    let exchange = unique("ex");
    let queue = unique("fanout");
    let topic = kafka_support::unique_topic("fanout");
    let config = format!(
        r#"
sinks:
{}
  amqp:
    kind: rabbitmq
    url: "{}"
    exchange: "{exchange}"
{}
routes:
  - match: "customer.subscription.*"
    to:
      - {{ sink: amqp, routing_key: "{{type}}" }}
      - {{ sink: events, topic: "{topic}" }}
  - match: "*"
    to:
      - {{ sink: amqp, routing_key: "unbound.{{type}}" }}
      - {{ sink: events, topic: "{topic}" }}
"#,
        kafka_support::kafka_sink("events", ""),
        amqp_support::URL,
        one_queue(&queue, &["customer.subscription.*"])
    );
    // A first produce to a new topic waits for its auto-creation: allow more than the 2 s the
    // other tests use, as a loaded CI machine may need it.
    let config = yaml(&config).replace("ack_timeout: \"2s\"", "ack_timeout: \"15s\"");
    assert!(config.contains("15s"));
    let bridge = spawn(&config).await;
    wait_status(bridge.admin_addr, "/readyz", 200, Duration::from_secs(30)).await;

    let bodies: Vec<Bytes> = vec![
        connect_event(&unique("evt_f1")),
        event(&unique("evt_f2"), "customer.subscription.created"),
        event(&unique("evt_f3"), "customer.subscription.deleted"),
    ];
    for body in &bodies {
        let a = post_signed(bridge.webhook_addr, body.clone()).await;
        assert_eq!(a.status, 200, "{:?}", a.body);
    }
    // One target refusing for good makes the whole request a 500, whatever the other did.
    let unroutable = event(&unique("evt_f4"), "invoice.paid");
    assert_eq!(post_signed(bridge.webhook_addr, unroutable).await.status, 500);
    bridge.shutdown().await;

    let (_conn, ch) = channel().await;
    let from_rabbit: Vec<Vec<u8>> = drain(&ch, &queue).await.into_iter().map(|m| m.delivery.data).collect();
    let expected: Vec<Vec<u8>> = bodies.iter().map(|b| b.to_vec()).collect();
    assert_eq!(
        from_rabbit, expected,
        "RabbitMQ: each event once, byte for byte, in order"
    );

    let records = tokio::task::spawn_blocking(move || {
        kafka_support::read_topic(&topic, 4, Duration::from_secs(20), Duration::from_millis(500))
    })
    .await
    .expect("read kafka");
    let from_kafka: HashSet<Vec<u8>> = records.iter().map(|r| r.payload.clone()).collect();
    for body in &bodies {
        assert!(
            from_kafka.contains(&body.to_vec()),
            "Kafka has every fanned-out event byte for byte"
        );
    }
    assert_eq!(
        records.len(),
        4,
        "Kafka: once each (the 500 one too: its Kafka target confirmed)"
    );
}

#[tokio::test]
async fn an_event_larger_than_one_frame_arrives_whole() {
    // The sink asks for 16 KiB frames: a 300 KB event is split over many body frames and must
    // arrive byte for byte.
    let exchange = unique("ex_big");
    let queue = unique("big");
    let bridge = spawn_bound(&exchange, &queue).await;
    let pad = "é".repeat(150_000);
    let id = unique("evt_big");
    let body = Bytes::from(format!(r#"{{"id":"{id}","type":"invoice.paid","pad":"{pad}"}}"#));
    assert!(body.len() > 300_000);
    assert_eq!(post_signed(bridge.webhook_addr, body.clone()).await.status, 200);
    let (_conn, ch) = channel().await;
    let got = drain(&ch, &queue).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].delivery.data, body.to_vec());
    bridge.shutdown().await;
}
