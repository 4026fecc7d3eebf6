//! The request path under hostile or unlucky input: bodies that are not UTF-8, ids and types
//! longer than Stripe's, bounded metric labels, a fan-out whose targets did not all confirm,
//! one tracing span per event, reloads of dedup and log settings, and retired sinks dropped off
//! the runtime. Kafka tests need `deploy/local/kafka.sh start` and fail loudly without it.
#![allow(clippy::unwrap_used)]

mod common;
mod kafka_support;

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures::future::BoxFuture;
use hookbridge::sink::{Envelope, Sink, SinkError};
use http::StatusCode;
use kafka_support::{brokers, read_topic, require_broker, unique_id, unique_topic};

const READ_TIMEOUT: Duration = Duration::from_secs(20);
const SETTLE: Duration = Duration::from_millis(700);

/// The JSON Lines a file sink wrote, as JSON values.
fn file_records(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A config with one file sink `local` at `path`, every event routed to `topic`, plus `extra`
/// top-level keys.
fn file_config(path: &Path, topic: &str, extra: &str) -> String {
    yaml(&format!(
        "{extra}\nsinks:\n  local:\n    kind: file\n    path: {}\nroutes:\n  - match: \"*\"\n    to:\n      - {{ sink: local, topic: \"{topic}\" }}\n",
        path.display()
    ))
}

/// Creates the topics first, so that a first publish does not meet a topic being auto-created.
async fn create_topics(topics: &[&str]) {
    for topic in topics {
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || kafka_support::kafka_sh(&["create-topic", &topic]))
            .await
            .unwrap();
    }
}

async fn metrics(bridge: &hookbridge::app::Running) -> String {
    String::from_utf8_lossy(&get(bridge.admin_addr, "/metrics").await.body).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_body_that_is_not_utf8_is_400_invalid_json_and_reaches_no_sink() {
    require_broker(Duration::from_secs(10));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("out.jsonl");
    let topic = unique_topic("utf8");
    create_topics(&[&topic]).await;
    // A fan-out to a real Kafka topic and a file: neither may get the body.
    let config = yaml(&format!(
        "sinks:\n  local:\n    kind: file\n    path: {}\n{}\nroutes:\n  - match: \"*\"\n    to:\n      - {{ sink: local, topic: t }}\n      - {{ sink: events, topic: \"{topic}\" }}\n",
        file.display(),
        kafka_support::kafka_sink("events", "")
    ));
    let bridge = spawn(&config).await;
    let id = unique_id("utf8");
    // Latin-1 `é` (0xE9) inside a field hookbridge skips; the rest is a fine event.
    let mut bad = format!(r#"{{"id":"{id}","type":"invoice.paid","data":{{"object":{{"id":"in_1","description":"caf"#)
        .into_bytes();
    bad.push(0xE9);
    bad.extend_from_slice(br#""}}}"#);
    let a = post_signed(bridge.webhook_addr, Bytes::from(bad)).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{:?}", a.body);
    assert_eq!(a.error_code(), "invalid_json");
    assert!(a.json()["message"].as_str().unwrap().contains("UTF-8"), "{:?}", a.body);

    // The same event, valid, goes through to both (so the id was not remembered either).
    let good = Bytes::from(format!(
        r#"{{"id":"{id}","type":"invoice.paid","data":{{"object":{{"id":"in_1","description":"caf\u00e9 é"}}}}}}"#
    ));
    let a = post_signed(bridge.webhook_addr, good.clone()).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    let records = read_topic(&topic, 1, READ_TIMEOUT, SETTLE);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].payload, good.to_vec());
    let lines = file_records(&file);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["payload"].as_str().unwrap().as_bytes(), &good[..]);
    bridge.shutdown().await;
}

#[tokio::test]
async fn ids_types_and_accounts_longer_than_stripes_are_400_invalid_event() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("out.jsonl");
    let bridge = spawn(&file_config(&file, "t", "max_body_bytes: 2097152")).await;
    let long_id = format!("evt_{}", "x".repeat(512 * 1024));
    for body in [
        event(&long_id, "invoice.paid"),
        event("evt_long_type", &format!("invoice.{}", "p".repeat(200))),
        Bytes::from(format!(
            r#"{{"id":"evt_long_acct","type":"invoice.paid","account":"acct_{}"}}"#,
            "a".repeat(300)
        )),
    ] {
        let a = post_signed(bridge.webhook_addr, body).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{:?}", a.body);
        assert_eq!(a.error_code(), "invalid_event");
        assert!(a.body.len() < 200, "the answer echoes nothing: {} bytes", a.body.len());
    }
    // Ids and types of Stripe's own size pass.
    let a = post_signed(
        bridge.webhook_addr,
        event("evt_1OoK2BLkdIwHu7ixEKvHpSUb", "invoice.paid"),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(file_records(&file).len(), 1);
    let text = metrics(&bridge).await;
    assert_eq!(
        metric(
            &text,
            "hookbridge_rejected_total{endpoint=\"/webhooks/stripe\",reason=\"invalid_event\"}"
        ),
        Some(3.0),
        "{text}"
    );
    bridge.shutdown().await;
}

#[tokio::test]
async fn publish_metrics_are_labelled_by_the_destination_template_not_the_rendered_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("out.jsonl");
    let bridge = spawn(&file_config(&file, "stripe.{account}.{type}", "")).await;
    for (i, account) in ["acct_1", "acct_2", "acct_3"].iter().enumerate() {
        let body = Bytes::from(format!(
            r#"{{"id":"evt_m{i}","type":"invoice.paid","account":"{account}"}}"#
        ));
        assert_eq!(post_signed(bridge.webhook_addr, body).await.status, StatusCode::OK);
    }
    let lines = file_records(&file);
    let destinations: Vec<&str> = lines.iter().map(|l| l["destination"].as_str().unwrap()).collect();
    assert_eq!(
        destinations,
        [
            "stripe.acct_1.invoice.paid",
            "stripe.acct_2.invoice.paid",
            "stripe.acct_3.invoice.paid"
        ]
    );
    let text = metrics(&bridge).await;
    assert_eq!(
        metric(
            &text,
            "hookbridge_published_total{sink=\"local\",destination=\"stripe.{account}.{type}\"}"
        ),
        Some(3.0),
        "{text}"
    );
    assert!(
        !text.contains("acct_"),
        "a rendered destination leaked into a label:\n{text}"
    );
    bridge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_retry_goes_only_to_the_targets_that_failed() {
    require_broker(Duration::from_secs(10));
    let confirmed_topic = unique_topic("fan-ok");
    let failed_topic = unique_topic("fan-down");
    create_topics(&[&confirmed_topic, &failed_topic]).await;
    let config = |down_brokers: &str| {
        yaml(&format!(
            "sinks:\n{}\n  down:\n    kind: kafka\n    brokers: \"{down_brokers}\"\nroutes:\n  - match: \"*\"\n    to:\n      - {{ sink: events, topic: \"{confirmed_topic}\" }}\n      - {{ sink: down, topic: \"{failed_topic}\" }}\n",
            kafka_support::kafka_sink("events", "")
        ))
    };
    // `down` points at a closed port: every publish to it fails (503), `events` confirms.
    let bridge = spawn(&config(&format!("127.0.0.1:{}", free_port()))).await;
    let id = unique_id("fan");
    let body = event(&id, "customer.subscription.updated");
    for attempt in 0..2 {
        let a = post_signed(bridge.webhook_addr, body.clone()).await;
        assert_eq!(
            a.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "attempt {attempt}: {:?}",
            a.body
        );
    }
    let text = metrics(&bridge).await;
    assert_eq!(
        metric(
            &text,
            &format!("hookbridge_published_total{{sink=\"events\",destination=\"{confirmed_topic}\"}}")
        ),
        Some(1.0),
        "the retry published to the confirmed target again:\n{text}"
    );

    // The failing target comes back (same sink name, now at the real broker): Stripe's next
    // retry publishes to it alone and is answered 200.
    bridge.state.reload(settings(&config(&brokers()))).await.unwrap();
    let a = post_signed(bridge.webhook_addr, body.clone()).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    // Now the event is complete: another copy is a duplicate.
    assert_eq!(
        post_signed(bridge.webhook_addr, body.clone()).await.status,
        StatusCode::OK
    );

    let confirmed = read_topic(&confirmed_topic, 1, READ_TIMEOUT, SETTLE);
    assert_eq!(confirmed.len(), 1, "one copy on the target that confirmed first");
    let failed = read_topic(&failed_topic, 1, READ_TIMEOUT, SETTLE);
    assert_eq!(failed.len(), 1, "one copy on the target that failed first");
    assert_eq!(confirmed[0].payload, body.to_vec());
    assert_eq!(failed[0].payload, body.to_vec());
    let text = metrics(&bridge).await;
    assert_eq!(
        metric(&text, "hookbridge_duplicates_total{endpoint=\"/webhooks/stripe\"}"),
        Some(1.0),
        "{text}"
    );
    bridge.shutdown().await;
}

/// Log output captured in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

thread_local! {
    /// Where this thread's log lines go while a test captures them.
    static CAPTURE: std::cell::RefCell<Option<Captured>> = const { std::cell::RefCell::new(None) };
}

/// Writes to the [`Captured`] of the current thread, if any; lines of other threads are dropped.
struct ThisThread;

impl Write for ThisThread {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        CAPTURE.with(|c| {
            if let Some(captured) = c.borrow().as_ref() {
                captured.0.lock().unwrap().extend_from_slice(b);
            }
        });
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Stops capturing this thread's lines when dropped.
struct CaptureGuard;

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        CAPTURE.with(|c| *c.borrow_mut() = None);
    }
}

impl Captured {
    /// Sends every log line of this thread here, as `hookbridge serve` writes them (text, capped),
    /// until the guard is dropped. The tests run on a current-thread runtime, so every task of the
    /// bridge logs here. One global subscriber serves every test of this binary: a thread-local
    /// subscriber per test would race with tests on other threads over tracing's per-call-site
    /// cache of whether anyone listens, and a warning could go unseen.
    fn install(&self) -> CaptureGuard {
        static GLOBAL: std::sync::Once = std::sync::Once::new();
        GLOBAL.call_once(|| {
            let writer = hookbridge::logging::Capped::new(|| ThisThread, hookbridge::logging::MAX_LINE_BYTES, false);
            let subscriber = tracing_subscriber::fmt()
                .with_writer(writer)
                .with_ansi(false)
                .with_env_filter("info")
                .finish();
            tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
        });
        CAPTURE.with(|c| *c.borrow_mut() = Some(self.clone()));
        CaptureGuard
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn every_line_logged_while_an_event_is_handled_carries_its_id_and_type() {
    let logs = Captured::default();
    let _guard = logs.install();
    // A real Kafka sink whose broker is not there: the publish fails and the sink warns.
    let config = yaml(&format!(
        "sinks:\n  k:\n    kind: kafka\n    brokers: \"127.0.0.1:{}\"\nroutes:\n  - match: \"*\"\n    to:\n      - {{ sink: k, topic: t }}\n",
        free_port()
    ))
    .replace("ack_timeout: \"2s\"", "ack_timeout: \"1s\"");
    let bridge = spawn(&config).await;
    let a = post_signed(bridge.webhook_addr, event("evt_span_1", "charge.refunded")).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    bridge.shutdown().await;
    let text = logs.text();
    let warning = text
        .lines()
        .find(|l| l.contains("publish failed"))
        .unwrap_or_else(|| panic!("no sink warning in:\n{text}"));
    assert!(
        warning.contains("event_id=evt_span_1") && warning.contains("event_type=charge.refunded"),
        "the sink warning does not say which event:\n{warning}"
    );
}

#[tokio::test]
async fn a_reload_applies_dedup_settings_and_says_log_settings_need_a_restart() {
    let logs = Captured::default();
    let _guard = logs.install();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("out.jsonl");
    let bridge = spawn(&file_config(&file, "t", "dedup:\n  capacity: 100")).await;
    let body = event("evt_reload", "invoice.paid");
    for _ in 0..2 {
        assert_eq!(
            post_signed(bridge.webhook_addr, body.clone()).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(file_records(&file).len(), 1, "dedup is on");

    // Dedup turned off by a reload: the same event is published again at once.
    bridge
        .state
        .reload(settings(&file_config(&file, "t", "dedup:\n  capacity: 0")))
        .await
        .unwrap();
    assert_eq!(
        post_signed(bridge.webhook_addr, body.clone()).await.status,
        StatusCode::OK
    );
    assert_eq!(file_records(&file).len(), 2, "the new dedup settings were not applied");
    assert!(
        logs.text().contains("dedup settings changed; now in use"),
        "{}",
        logs.text()
    );
    assert!(!logs.text().contains("need a restart"), "{}", logs.text());

    // A changed log level cannot apply in a running process: the reload says so.
    bridge
        .state
        .reload(settings(&file_config(
            &file,
            "t",
            "dedup:\n  capacity: 0\nlog:\n  level: debug",
        )))
        .await
        .unwrap();
    let text = logs.text();
    let warning = text
        .lines()
        .find(|l| l.contains("log settings changed"))
        .unwrap_or_else(|| panic!("no word about the log settings in:\n{text}"));
    assert!(
        warning.contains("WARN") && warning.contains("need a restart"),
        "{warning}"
    );
    assert!(warning.contains("new_level=debug"), "{warning}");
    bridge.shutdown().await;
}

/// A sink whose drop blocks its thread, as a Kafka producer's drop does while librdkafka shuts
/// down.
struct SlowDrop {
    dropped: Arc<AtomicBool>,
}

impl Drop for SlowDrop {
    fn drop(&mut self) {
        std::thread::sleep(Duration::from_millis(1500));
        self.dropped.store(true, Ordering::SeqCst);
    }
}

impl Sink for SlowDrop {
    fn name(&self) -> &str {
        "slow"
    }
    fn kind(&self) -> &'static str {
        "discard"
    }
    fn publish<'a>(&'a self, _: &'a str, _: &'a Envelope) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async { Ok(()) })
    }
    fn health(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async { Ok(()) })
    }
    fn close(&self, _: Instant) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test]
async fn a_sink_retired_by_a_reload_is_dropped_off_the_runtime() {
    let routes = "routes:\n  - match: \"*\"\n    to:\n      - { sink: slow, topic: t }\n";
    let config = |delay: &str| {
        yaml(&format!(
            "sinks:\n  slow:\n    kind: discard\n    delay: {delay}\n{routes}"
        ))
        .replace("ack_timeout: \"2s\"", "ack_timeout: \"1s\"")
    };
    let dropped = Arc::new(AtomicBool::new(false));
    let sink = SlowDrop {
        dropped: dropped.clone(),
    };
    let bridge = spawn_with(&config("0ms"), vec![Arc::new(sink) as Arc<dyn Sink>]).await;
    // A changed sink: the old one is closed and dropped after ack_timeout + 1 s.
    bridge.state.reload(settings(&config("1ms"))).await.unwrap();
    // This (single) runtime thread must keep ticking while the old sink is being dropped.
    let began = Instant::now();
    let mut last = Instant::now();
    let mut longest = Duration::ZERO;
    while !dropped.load(Ordering::SeqCst) {
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "the retired sink was never dropped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        longest = longest.max(last.elapsed());
        last = Instant::now();
    }
    assert!(
        longest < Duration::from_millis(700),
        "the runtime stalled for {longest:?} while a retired sink was dropped"
    );
    assert_eq!(
        post_signed(bridge.webhook_addr, event("evt_after_drop", "invoice.paid"))
            .await
            .status,
        StatusCode::OK
    );
    bridge.shutdown().await;
}
