//! The nats sink against a real nats-server with JetStream (`deploy/local/nats.sh start`; CI's
//! scripts/test.sh starts it). Every test uses its own stream and subjects, reads back with
//! async-nats, and fails, never skips, when the server is missing. The kill-and-restart test
//! runs a private server on its own port and directory.

use crate::common;
use crate::secure_support;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream::Stream};
use bytes::Bytes;
use common::{event, get, post_signed, spawn, yaml, SECRET};
use secure_support::{
    assert_unavailable, b64url, certs, check_config_shows_no_secret, replace, text, wait_ready, NATS_NKEY_SEED,
    NATS_PASSWORD, NATS_TOKEN, NATS_USER,
};

/// The plain listener of `deploy/local/nats.sh`, and its TLS listener.
const SERVER: &str = "nats://127.0.0.1:4222";
const TLS_SERVER: &str = "tls://127.0.0.1:4223";

/// A JetStream context on `server` (anonymous login); panics saying how to start the server.
async fn js_at(server: &str) -> jetstream::Context {
    let start = Instant::now();
    loop {
        match async_nats::connect(server).await {
            Ok(c) => return jetstream::new(c),
            Err(e) if start.elapsed() < Duration::from_secs(5) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!(
                "NATS is not reachable at {server} ({e}). These tests need a real nats-server: run \
                 `deploy/local/nats.sh start` first (scripts/test.sh does)."
            ),
        }
    }
}

async fn js() -> jetstream::Context {
    js_at(SERVER).await
}

/// A stream name and a subject prefix no other test or run uses.
fn names(what: &str) -> (String, String) {
    let prefix = common::unique(what);
    (prefix.replace(['.', '-'], "_").to_uppercase(), prefix)
}

/// Sinks and routes: one nats sink `js` with `extra` keys, every event to `{prefix}.{type}`.
fn sink_yaml(server: &str, extra: &str, prefix: &str) -> String {
    format!(
        r#"sinks:
  js:
    kind: nats
    servers: ["{server}"]
    reconnect_max_delay: 500ms
{extra}
routes:
  - match: "*"
    to:
      - {{ sink: js, subject: "{prefix}.{{type}}" }}
"#
    )
}

/// The `stream:` block of a sink that creates its stream.
fn stream_block(name: &str, prefix: &str, more: &str) -> String {
    format!("    stream:\n      name: {name}\n      subjects: [\"{prefix}.>\"]\n{more}")
}

async fn stream(js: &jetstream::Context, name: &str) -> Stream {
    js.get_stream(name)
        .await
        .unwrap_or_else(|e| panic!("stream {name}: {e}"))
}

async fn messages(js: &jetstream::Context, name: &str) -> u64 {
    stream(js, name)
        .await
        .info()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .state
        .messages
}

/// Every message of the stream, in order: (subject, headers, payload).
async fn all_messages(js: &jetstream::Context, name: &str) -> Vec<jetstream::message::StreamMessage> {
    let mut s = stream(js, name).await;
    let last = s.info().await.unwrap_or_else(|e| panic!("{e}")).state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        if let Ok(m) = s.get_raw_message(seq).await {
            out.push(m);
        }
    }
    out
}

/// Posts one event to a ready bridge, expects 200, shuts the bridge down, checks that stream
/// `name` holds exactly that message, and deletes the stream.
async fn one_event_is_stored_once(bridge: hookbridge::app::Running, name: &str) {
    let a = post_signed(bridge.webhook_addr, event(&common::unique("evt"), "invoice.paid")).await;
    assert_eq!(a.status, 200, "{}", text(&a));
    bridge.shutdown().await;
    let js = js().await;
    assert_eq!(messages(&js, name).await, 1);
    delete(&js, name).await;
}

async fn delete(js: &jetstream::Context, name: &str) {
    let _ = js.delete_stream(name).await;
}

fn header<'a>(m: &'a jetstream::message::StreamMessage, name: &str) -> Option<&'a str> {
    m.headers.get(name).map(|v| v.as_str())
}

#[tokio::test]
async fn events_land_byte_for_byte_with_headers_and_msg_id() {
    let (name, prefix) = names("rt");
    let extra = format!(
        "    headers: cloudevents\n{}",
        stream_block(&name, &prefix, "      mode: create\n")
    );
    let bridge = spawn(&yaml(&sink_yaml(SERVER, &extra, &prefix))).await;
    wait_ready(bridge.admin_addr, Duration::from_secs(15)).await;

    let id = common::unique("evt");
    // Odd spacing and non-ASCII text: what arrives must be these bytes, not a re-serialisation.
    let body = Bytes::from(format!(
        "{{\n  \"id\": \"{id}\", \"object\": \"event\", \"account\": \"acct_1Nv0\",\n  \"api_version\": \
         \"2024-06-20\", \"created\": 1712345678,\n  \"data\": {{\"object\": {{\"id\": \"in_1\", \"memo\": \
         \"Zürich ☕ — 10 €\", \"amount\": 1.50e3}}}},\n  \"livemode\": true, \"type\": \"invoice.paid\"\n}}\n"
    ));
    let sig = common::sign(SECRET, &body);
    let a = common::request(
        bridge.webhook_addr,
        http::Method::POST,
        common::PATH,
        &[("stripe-signature", &sig)],
        body.clone(),
    )
    .await;
    assert_eq!(a.status, 200, "{}", text(&a));

    let js = js().await;
    let subject = format!("{prefix}.invoice.paid");
    let m = stream(&js, &name)
        .await
        .get_last_raw_message_by_subject(&subject)
        .await
        .unwrap_or_else(|e| panic!("no message on {subject}: {e}"));
    assert_eq!(m.payload, body, "the payload is the request body, byte for byte");
    assert_eq!(header(&m, "Nats-Msg-Id"), Some(id.as_str()));
    assert_eq!(header(&m, "stripe-event-id"), Some(id.as_str()));
    assert_eq!(header(&m, "stripe-event-type"), Some("invoice.paid"));
    assert_eq!(header(&m, "stripe-api-version"), Some("2024-06-20"));
    assert_eq!(header(&m, "stripe-livemode"), Some("true"));
    assert_eq!(header(&m, "stripe-account"), Some("acct_1Nv0"));
    assert_eq!(header(&m, "stripe-signature"), Some(sig.as_str()));
    assert_eq!(header(&m, "content-type"), Some("application/json"));
    assert_eq!(header(&m, "ce-id"), Some(id.as_str()));
    assert_eq!(header(&m, "ce-type"), Some("invoice.paid"));
    assert_eq!(header(&m, "ce-specversion"), Some("1.0"));
    assert_eq!(
        header(&m, "ce-source"),
        Some("https://api.stripe.com/v1/accounts/acct_1Nv0")
    );
    assert_eq!(header(&m, "ce-subject"), Some("in_1"));

    // A second event type goes to its own subject; the metrics count both under the route's
    // subject template (bounded label values, as for topics).
    let other = event(&common::unique("evt"), "charge.refunded");
    assert_eq!(post_signed(bridge.webhook_addr, other.clone()).await.status, 200);
    assert_eq!(messages(&js, &name).await, 2);
    let on_subject = stream(&js, &name)
        .await
        .get_last_raw_message_by_subject(&format!("{prefix}.charge.refunded"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(on_subject.payload, other);
    let metrics = text(&get(bridge.admin_addr, "/metrics").await);
    let published = format!("hookbridge_published_total{{sink=\"js\",destination=\"{prefix}.{{type}}\"}}");
    assert_eq!(common::metric(&metrics, &published), Some(2.0), "{metrics}");
    assert_eq!(secure_support::sink_up(bridge.admin_addr, "js").await, Some(1.0));
    bridge.shutdown().await;
    delete(&js, &name).await;
}

/// With many publishes in flight the sink sends them in batches (`sink/nats/batch.rs`); each one
/// is still answered only with its own acknowledgement, and stored once, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_in_flight_together_are_batched_and_each_stored_byte_for_byte() {
    use figment::providers::{Format, Yaml};
    use hookbridge::sink::nats::{config::NatsSinkConfig, NatsSink};
    use hookbridge::sink::{Envelope, Sink};

    let (name, prefix) = names("batch");
    let config: NatsSinkConfig = figment::Figment::from(Yaml::string(&format!(
        "servers: [\"{SERVER}\"]\nmax_in_flight: 64\nstream:\n  name: {name}\n  subjects: [\"{prefix}.>\"]\n"
    )))
    .extract()
    .unwrap_or_else(|e| panic!("{e}"));
    let sink = NatsSink::new("js", &config, Duration::from_secs(10)).await.unwrap();
    let ready_by = Instant::now() + Duration::from_secs(15);
    while let Err(e) = sink.health().await {
        assert!(Instant::now() < ready_by, "the sink did not get ready: {e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let envelopes: Vec<Envelope> = (0..300)
        .map(|i| {
            let body = event(
                &common::unique("evt"),
                if i % 2 == 0 { "invoice.paid" } else { "charge.refunded" },
            );
            Envelope::replayed(body).unwrap()
        })
        .collect();
    let subject = |e: &Envelope| format!("{prefix}.{}", e.meta().event_type);
    let subjects: Vec<String> = envelopes.iter().map(subject).collect();
    let results = futures::future::join_all(envelopes.iter().zip(&subjects).map(|(e, s)| sink.publish(s, e))).await;
    for r in &results {
        assert!(r.is_ok(), "{r:?}");
    }
    // 300 publishes at once, at most 64 in flight: all but the first few wait in the queue.
    let batched = sink.batched_publishes();
    assert!(
        batched >= 200,
        "only {batched} of 300 publishes went through the batch queue"
    );

    let js = js().await;
    let stored = all_messages(&js, &name).await;
    assert_eq!(stored.len(), 300, "each publish is stored once");
    let by_id: std::collections::HashMap<&str, &jetstream::message::StreamMessage> = stored
        .iter()
        .map(|m| (header(m, "Nats-Msg-Id").expect("Nats-Msg-Id"), m))
        .collect();
    for (e, s) in envelopes.iter().zip(&subjects) {
        let m = by_id
            .get(e.meta().id.as_str())
            .unwrap_or_else(|| panic!("{} is not in the stream", e.meta().id));
        assert_eq!(&m.payload, e.payload(), "the payload is the body, byte for byte");
        assert_eq!(m.subject.as_str(), s.as_str());
        assert_eq!(header(m, "stripe-event-id"), Some(e.meta().id.as_str()));
        assert_eq!(header(m, "stripe-event-type"), Some(e.meta().event_type.as_str()));
    }
    delete(&js, &name).await;
}

#[tokio::test]
async fn the_same_event_through_two_bridge_processes_is_stored_once() {
    let (name, prefix) = names("dedup");
    let config = yaml(&sink_yaml(SERVER, &stream_block(&name, &prefix, ""), &prefix));
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = common::serve_binary(dir_a.path(), &config);
    let b = common::serve_binary(dir_b.path(), &config);
    for served in [&a, &b] {
        wait_ready(
            std::net::SocketAddr::from(([127, 0, 0, 1], served.admin)),
            Duration::from_secs(15),
        )
        .await;
    }
    let js = js().await;
    let id = common::unique("evt");
    let body = event(&id, "invoice.paid");
    // Stripe redelivering: once to each replica, then again to the first.
    for served in [&a, &b, &a] {
        let answer = post_signed(served.webhook_addr(), body.clone()).await;
        assert_eq!(answer.status, 200, "{}", text(&answer));
    }
    let other = event(&common::unique("evt"), "invoice.paid");
    assert_eq!(post_signed(b.webhook_addr(), other).await.status, 200);
    let stored = all_messages(&js, &name).await;
    let ids: Vec<_> = stored.iter().filter_map(|m| header(m, "Nats-Msg-Id")).collect();
    assert_eq!(ids.iter().filter(|i| **i == id).count(), 1, "stored once: {ids:?}");
    assert_eq!(stored.len(), 2, "{ids:?}");
    drop((a, b));
    delete(&js, &name).await;
}

#[tokio::test]
async fn a_subject_no_stream_stores_is_500_and_an_oversized_message_too() {
    let (name, prefix) = names("nostream");
    // No stream block: nothing stores these subjects.
    let bridge = spawn(&yaml(&sink_yaml(SERVER, "", &prefix))).await;
    wait_ready(bridge.admin_addr, Duration::from_secs(15)).await;
    let a = post_signed(bridge.webhook_addr, event(&common::unique("evt"), "invoice.paid")).await;
    assert_eq!(a.status, 500, "{}", text(&a));
    assert_eq!(a.error_code(), "publish_rejected");
    assert!(text(&a).contains("no JetStream stream"), "{}", text(&a));
    bridge.shutdown().await;

    // A stream that takes at most 2000 bytes per message.
    let extra = stream_block(&name, &prefix, "      max_msg_size: 2000\n");
    let bridge = spawn(&yaml(&sink_yaml(SERVER, &extra, &prefix))).await;
    wait_ready(bridge.admin_addr, Duration::from_secs(15)).await;
    let small = event(&common::unique("evt"), "invoice.paid");
    assert!(small.len() < 1000, "{} bytes", small.len());
    assert_eq!(post_signed(bridge.webhook_addr, small).await.status, 200);
    let id = common::unique("evt");
    let big = Bytes::from(format!(
        "{{\"id\":\"{id}\",\"object\":\"event\",\"type\":\"invoice.paid\",\"livemode\":false,\"pad\":\"{}\"}}",
        "x".repeat(4000)
    ));
    let a = post_signed(bridge.webhook_addr, big).await;
    assert_eq!(a.status, 500, "{}", text(&a));
    assert!(text(&a).contains("maximum"), "{}", text(&a));
    bridge.shutdown().await;
    delete(&js().await, &name).await;
}

#[tokio::test]
async fn no_server_is_503_at_once_and_not_ready() {
    let port = common::free_port();
    let (_, prefix) = names("down");
    let bridge = spawn(&yaml(&sink_yaml(&format!("nats://127.0.0.1:{port}"), "", &prefix))).await;
    let body = assert_unavailable(
        &bridge,
        "js",
        event(&common::unique("evt"), "invoice.paid"),
        "NATS is not connected",
    )
    .await;
    assert!(body.contains(&format!("127.0.0.1:{port}")), "{body}");
    bridge.shutdown().await;
}

#[tokio::test]
async fn a_refused_login_is_503_with_the_reason_and_a_fixed_password_file_is_picked_up() {
    let (name, prefix) = names("auth");
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("password");
    replace(&password, b"wrong-password\n");
    let extra = format!(
        "    user: {NATS_USER}\n    password: {{ file: {} }}\n{}",
        password.display(),
        stream_block(&name, &prefix, "")
    );
    let config = yaml(&sink_yaml(SERVER, &extra, &prefix));
    check_config_shows_no_secret(dir.path(), &config, &["wrong-password"]);
    let bridge = spawn(&config).await;
    assert_unavailable(
        &bridge,
        "js",
        event(&common::unique("evt"), "invoice.paid"),
        "authorization violation",
    )
    .await;

    // The secret is rotated into the file: the sink is rebuilt with it and publishes.
    replace(&password, format!("{NATS_PASSWORD}\n").as_bytes());
    wait_ready(bridge.admin_addr, Duration::from_secs(20)).await;
    one_event_is_stored_once(bridge, &name).await;
}

#[tokio::test]
async fn nkey_seed_from_a_file_logs_in() {
    let (name, prefix) = names("nkey");
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("seed");
    replace(&seed, format!("{NATS_NKEY_SEED}\n").as_bytes());
    let extra = format!(
        "    nkey_seed: {{ file: {} }}\n{}",
        seed.display(),
        stream_block(&name, &prefix, "")
    );
    let config = yaml(&sink_yaml(SERVER, &extra, &prefix));
    check_config_shows_no_secret(dir.path(), &config, &[NATS_NKEY_SEED]);
    let bridge = spawn(&config).await;
    wait_ready(bridge.admin_addr, Duration::from_secs(15)).await;
    one_event_is_stored_once(bridge, &name).await;
}

#[tokio::test]
async fn tls_with_a_client_certificate_and_a_token_round_trip() {
    let (name, prefix) = names("tls");
    let dir = tempfile::tempdir().unwrap();
    let certs = certs();
    let token = dir.path().join("token");
    replace(&token, NATS_TOKEN.as_bytes());
    let tls = |cert: &str| {
        format!(
            "    token: {{ file: {} }}\n    tls:\n      ca_file: {}\n      cert_file: {}\n      key_file: {}\n",
            token.display(),
            certs.join("ca.pem").display(),
            certs.join(format!("{cert}.pem")).display(),
            certs.join(format!("{cert}.key")).display(),
        )
    };
    let extra = format!("{}{}", tls("client"), stream_block(&name, &prefix, ""));
    let config = yaml(&sink_yaml(TLS_SERVER, &extra, &prefix));
    check_config_shows_no_secret(dir.path(), &config, &[NATS_TOKEN]);
    let bridge = spawn(&config).await;
    wait_ready(bridge.admin_addr, Duration::from_secs(15)).await;
    let body = event(&common::unique("evt"), "invoice.paid");
    let a = post_signed(bridge.webhook_addr, body.clone()).await;
    assert_eq!(a.status, 200, "{}", text(&a));
    bridge.shutdown().await;

    // Read back over TLS too (the TLS server has its own JetStream).
    let client = async_nats::ConnectOptions::with_token(NATS_TOKEN.into())
        .require_tls(true)
        .add_root_certificates(certs.join("ca.pem"))
        .add_client_certificate(certs.join("client.pem"), certs.join("client.key"))
        .connect(TLS_SERVER)
        .await
        .unwrap_or_else(|e| panic!("the TLS listener of deploy/local/nats.sh ({TLS_SERVER}): {e}"));
    let js = jetstream::new(client);
    let m = stream(&js, &name)
        .await
        .get_last_raw_message_by_subject(&format!("{prefix}.invoice.paid"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.payload, body);

    // A certificate from another CA: the server refuses the handshake; 503, not ready.
    let extra = format!("{}{}", tls("client-other-ca"), stream_block(&name, &prefix, ""));
    let bridge = spawn(&yaml(&sink_yaml(TLS_SERVER, &extra, &prefix))).await;
    assert_unavailable(
        &bridge,
        "js",
        event(&common::unique("evt"), "invoice.paid"),
        "NATS is not connected",
    )
    .await;
    bridge.shutdown().await;
    delete(&js, &name).await;
}

/// Runs `deploy/local/nats.sh ARG` for a private server on `port` with its data in `dir`.
fn private_nats(arg: &str, port: u16, dir: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/local/nats.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg(arg)
        .env("HOOKBRIDGE_NATS_PORT", port.to_string())
        .env("HOOKBRIDGE_NATS_TLS_PORT", common::free_port().to_string())
        .env("HOOKBRIDGE_NATS_DIR", dir)
        .env("HOOKBRIDGE_NATS_MAX_STORE", "256M")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "nats.sh {arg} (port {port}) failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Stops the private server when the test ends, even when it fails.
struct PrivateServer(u16, tempfile::TempDir);

impl Drop for PrivateServer {
    fn drop(&mut self) {
        private_nats("kill", self.0, self.1.path());
    }
}

/// A private server on a port of its own, and a ready bridge publishing to a fresh stream on it;
/// also the server's URL and the stream's name.
async fn bridge_on_private_server(what: &str) -> (PrivateServer, String, String, hookbridge::app::Running) {
    let port = common::free_port();
    let server = PrivateServer(port, tempfile::tempdir().expect("a temporary directory"));
    private_nats("start", port, server.1.path());
    let url = format!("nats://127.0.0.1:{port}");
    let (name, prefix) = names(what);
    let bridge = spawn(&yaml(&sink_yaml(&url, &stream_block(&name, &prefix, ""), &prefix))).await;
    wait_ready(bridge.admin_addr, Duration::from_secs(15)).await;
    (server, url, name, bridge)
}

/// The `Nats-Msg-Id` of every message stream `name` holds on the server at `url`.
async fn stored_msg_ids(url: &str, name: &str) -> HashSet<String> {
    all_messages(&js_at(url).await, name)
        .await
        .iter()
        .filter_map(|m| header(m, "Nats-Msg-Id").map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_killed_under_load_and_restarted_loses_no_answered_event() {
    let (server, url, name, bridge) = bridge_on_private_server("kill").await;
    let port = server.0;

    // 16 posters for 6 s; the server is killed (SIGKILL) at 2 s and started again at 3.5 s.
    let stop_at = Instant::now() + Duration::from_secs(6);
    let addr = bridge.webhook_addr;
    let posters: Vec<_> = (0..16)
        .map(|_| {
            tokio::spawn(async move {
                let (mut ok, mut failed) = (Vec::new(), 0usize);
                while Instant::now() < stop_at {
                    let id = common::unique("evt");
                    let a = post_signed(addr, event(&id, "invoice.paid")).await;
                    match a.status.as_u16() {
                        200 => ok.push(id),
                        503 => {
                            failed += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        other => panic!("unexpected answer {other}: {}", text(&a)),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let dir = server.1.path().to_path_buf();
    tokio::task::spawn_blocking(move || private_nats("kill", port, &dir))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let dir = server.1.path().to_path_buf();
    tokio::task::spawn_blocking(move || private_nats("start", port, &dir))
        .await
        .unwrap();
    let mut answered = Vec::new();
    let mut refused = 0;
    for p in posters {
        let (ok, failed) = p.await.unwrap();
        answered.extend(ok);
        refused += failed;
    }
    bridge.shutdown().await;
    assert!(refused > 0, "no request failed while the server was down");
    assert!(answered.len() > 50, "too few answered events: {}", answered.len());

    let stored = stored_msg_ids(&url, &name).await;
    let lost: Vec<_> = answered.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} answered events are not in the stream after the restart: {:?}",
        lost.len(),
        answered.len(),
        &lost[..lost.len().min(5)]
    );
    eprintln!(
        "kill test: {} answered and all stored, {refused} answered 503 while the server was down",
        answered.len()
    );
}

/// Sends `signal` to the private server in `dir`.
fn signal_private(dir: &Path, signal: &str) {
    let pid = std::fs::read_to_string(dir.join("plain.pid")).unwrap_or_else(|e| panic!("no pid file in {dir:?}: {e}"));
    let ok = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.trim())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{signal} {pid}");
}

/// Posts `n` events at once; their ids and answers (status, seconds taken).
async fn post_many(addr: std::net::SocketAddr, n: usize) -> Vec<(String, u16, f64)> {
    let posts: Vec<_> = (0..n)
        .map(|_| {
            tokio::spawn(async move {
                let id = common::unique("evt");
                let started = Instant::now();
                let a = post_signed(addr, event(&id, "invoice.paid")).await;
                (id, a.status.as_u16(), started.elapsed().as_secs_f64())
            })
        })
        .collect();
    let mut out = Vec::new();
    for p in posts {
        out.push(p.await.expect("a poster panicked"));
    }
    out
}

/// A server that stops answering (SIGSTOP) with many publishes in flight: every request is
/// answered 503 within `ack_timeout` (2 s) plus a margin, whether its publish waited in the batch
/// queue or on the wire; once the server answers again (SIGCONT), new events are stored: the
/// batch dispatcher did not stay stuck.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_that_stops_answering_is_503_within_ack_timeout_and_events_flow_again_after() {
    let (server, url, name, bridge) = bridge_on_private_server("stop").await;
    for (id, status, _) in post_many(bridge.webhook_addr, 16).await {
        assert_eq!(status, 200, "{id} before the stop");
    }

    signal_private(server.1.path(), "STOP");
    let stalled = post_many(bridge.webhook_addr, 32).await;
    signal_private(server.1.path(), "CONT");
    for (id, status, took) in &stalled {
        assert_eq!(*status, 503, "{id} while the server was stopped");
        assert!(*took < 4.0, "{id} was answered after {took:.1} s (ack_timeout 2 s)");
    }

    // Answers again: 32 new events at once are stored (a retry loop for the first seconds,
    // while the server works through what it was sent while stopped).
    let deadline = Instant::now() + Duration::from_secs(15);
    let stored_ids = loop {
        let answers = post_many(bridge.webhook_addr, 32).await;
        if answers.iter().all(|(_, status, _)| *status == 200) {
            break answers.into_iter().map(|(id, _, _)| id).collect::<Vec<_>>();
        }
        assert!(Instant::now() < deadline, "not every event is 200 again: {answers:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    bridge.shutdown().await;
    let stored = stored_msg_ids(&url, &name).await;
    for id in &stored_ids {
        assert!(stored.contains(id), "{id} was answered 200 but is not in the stream");
    }
}

/// A NATS JWT (v2) for `claims`, issued and signed by `issuer`.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    let header = b64url(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let iat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs();
    let claims = serde_json::json!({
        "jti": common::unique("jti").replace(['.', '-'], ""),
        "iat": iat,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let body = format!("{header}.{}", b64url(claims.to_string().as_bytes()));
    let sig = issuer.sign(body.as_bytes()).expect("an NKey signs");
    format!("{body}.{}", b64url(&sig))
}

/// A private nats-server in operator mode (decentralised JWT auth): an operator, an account with
/// JetStream, and a user of that account whose `.creds` file (JWT + seed) the sink logs in with.
#[tokio::test]
async fn a_credentials_file_logs_in_to_a_server_in_operator_mode() {
    let dir = tempfile::tempdir().unwrap();
    let (operator, account, user) = (
        nkeys::KeyPair::new_operator(),
        nkeys::KeyPair::new_account(),
        nkeys::KeyPair::new_user(),
    );
    let operator_jwt = jwt(
        &operator,
        &operator.public_key(),
        "hookbridge-test-operator",
        serde_json::json!({"type": "operator", "version": 2}),
    );
    let account_jwt = jwt(
        &operator,
        &account.public_key(),
        "HB",
        serde_json::json!({
            "limits": {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                       "wildcards": true, "conn": -1, "leaf": -1,
                       "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1},
            "type": "account", "version": 2
        }),
    );
    // JetStream needs a system account in operator mode.
    let system = nkeys::KeyPair::new_account();
    let system_jwt = jwt(
        &operator,
        &system.public_key(),
        "SYS",
        serde_json::json!({"limits": {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                                      "wildcards": true, "conn": -1, "leaf": -1},
                           "type": "account", "version": 2}),
    );
    let user_jwt = jwt(
        &account,
        &user.public_key(),
        "hookbridge",
        serde_json::json!({"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
                           "type": "user", "version": 2}),
    );
    let creds = dir.path().join("hookbridge.creds");
    std::fs::write(
        &creds,
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().unwrap()
        ),
    )
    .unwrap();
    let port = common::free_port();
    let conf = dir.path().join("operator.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:{port}\noperator: {operator_jwt}\nsystem_account: {sys}\nresolver: MEMORY\n\
             resolver_preload: {{ {acc}: {account_jwt}, {sys}: {system_jwt} }}\n\
             jetstream {{ store_dir: \"{store}\", max_file_store: 64MB, max_memory_store: 16MB }}\n",
            sys = system.public_key(),
            acc = account.public_key(),
            store = dir.path().join("js").display()
        ),
    )
    .unwrap();
    let install = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/tools/install.sh");
    let out = std::process::Command::new("bash")
        .arg(&install)
        .arg("nats-server")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bin = String::from_utf8(out.stdout).unwrap().trim().to_string();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let log = dir.path().join("server.log");
    let _server = Kill(
        std::process::Command::new(&bin)
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let (name, prefix) = names("creds");
    let extra = format!(
        "    credentials_file: {}\n{}",
        creds.display(),
        stream_block(&name, &prefix, "")
    );
    let config = yaml(&sink_yaml(&format!("nats://127.0.0.1:{port}"), &extra, &prefix));
    check_config_shows_no_secret(dir.path(), &config, &[&user.seed().unwrap()]);
    let bridge = spawn(&config).await;
    let ready = Instant::now();
    loop {
        let r = get(bridge.admin_addr, "/readyz").await;
        if r.status == 200 {
            break;
        }
        assert!(
            ready.elapsed() < Duration::from_secs(15),
            "not ready: {}\nserver log:\n{}",
            text(&r),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let body = event(&common::unique("evt"), "invoice.paid");
    let a = post_signed(bridge.webhook_addr, body.clone()).await;
    assert_eq!(a.status, 200, "{}", text(&a));
    bridge.shutdown().await;

    // An unsigned look at the stream needs the same login.
    let client = async_nats::ConnectOptions::with_credentials_file(&creds)
        .await
        .unwrap()
        .connect(format!("nats://127.0.0.1:{port}"))
        .await
        .unwrap();
    let m = stream(&jetstream::new(client), &name)
        .await
        .get_last_raw_message_by_subject(&format!("{prefix}.invoice.paid"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.payload, body);

    // Without the creds file the server refuses the login: 503 and the reason.
    let anonymous = spawn(&yaml(&sink_yaml(&format!("nats://127.0.0.1:{port}"), "", &prefix))).await;
    assert_unavailable(
        &anonymous,
        "js",
        event(&common::unique("evt"), "invoice.paid"),
        "authorization violation",
    )
    .await;
    anonymous.shutdown().await;
}
