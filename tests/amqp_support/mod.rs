//! Helpers for the tests against the real RabbitMQ server started by `deploy/local/rabbitmq.sh`.
//! A test that cannot reach the broker fails with a message saying how to start it; none skips.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use lapin::message::BasicGetMessage;
use lapin::options::{BasicGetOptions, QueueDeclareOptions, QueuePurgeOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties};

/// The broker of `deploy/local/rabbitmq.sh`.
pub const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The control script.
pub fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/local/rabbitmq.sh")
}

/// Runs `deploy/local/rabbitmq.sh ARGS…`, panicking with its output when it fails.
pub fn rabbitmq_sh(args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(script())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run deploy/local/rabbitmq.sh: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "deploy/local/rabbitmq.sh {args:?} failed:\n{text}"
    );
    text
}

pub use crate::common::unique;

/// A connection for reading back, retried for up to `within`; panics with a clear message when
/// RabbitMQ cannot be reached.
pub async fn connect_within(within: Duration) -> Connection {
    let start = Instant::now();
    loop {
        match Connection::connect(URL, ConnectionProperties::default()).await {
            Ok(c) => return c,
            Err(e) if start.elapsed() < within => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!(
                "RabbitMQ is not reachable at 127.0.0.1:5672 ({e}). These tests need a real broker: \
                 run `deploy/local/rabbitmq.sh start` first (CI's .ci/run does)."
            ),
        }
    }
}

/// A connection for reading back; fails the test when the broker is down.
pub async fn connect() -> Connection {
    connect_within(Duration::from_secs(5)).await
}

/// A channel on a fresh connection (the connection lives as long as the channel is used).
pub async fn channel() -> (Connection, Channel) {
    let c = connect().await;
    let ch = c.create_channel().await.expect("a channel");
    (c, ch)
}

/// How many messages are ready in `queue` (which must exist).
pub async fn count(ch: &Channel, queue: &str) -> u32 {
    let q = ch
        .queue_declare(
            queue,
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("queue {queue} does not exist: {e}"));
    q.message_count()
}

/// Takes every message from `queue` (auto-ack).
pub async fn drain(ch: &Channel, queue: &str) -> Vec<BasicGetMessage> {
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(queue, BasicGetOptions { no_ack: true })
        .await
        .unwrap_or_else(|e| panic!("basic_get {queue}: {e}"))
    {
        out.push(m);
    }
    out
}

/// Empties a queue.
pub async fn purge(ch: &Channel, queue: &str) {
    ch.queue_purge(queue, QueuePurgeOptions::default())
        .await
        .unwrap_or_else(|e| panic!("purge {queue}: {e}"));
}

/// The message's headers as strings.
pub fn headers(m: &BasicGetMessage) -> HashMap<String, String> {
    let mut out = HashMap::new();
    if let Some(table) = m.delivery.properties.headers() {
        for (k, v) in table.inner() {
            let v = match v {
                AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                other => format!("{other:?}"),
            };
            out.insert(k.as_str().to_string(), v);
        }
    }
    out
}

/// The event id of a message (its `message_id`).
pub fn message_id(m: &BasicGetMessage) -> String {
    m.delivery
        .properties
        .message_id()
        .as_ref()
        .map(|s| s.as_str().to_string())
        .unwrap_or_default()
}

/// A `sinks:` + `routes:` section with one rabbitmq sink named `amqp` on the local broker.
/// `extra` is indented sink keys (e.g. queues); `routes` is the whole `routes:` block.
pub fn sink_yaml(exchange: &str, extra: &str, routes: &str) -> String {
    format!(
        r#"
sinks:
  amqp:
    kind: rabbitmq
    url: "{URL}"
    exchange: "{exchange}"
    reconnect_max_delay: "500ms"
{extra}
{routes}
"#
    )
}

/// A `routes:` block sending every event to the `amqp` sink, with its type as the routing key.
pub const ROUTE_BY_TYPE: &str = r#"
routes:
  - match: "*"
    to: [{ sink: amqp, routing_key: "{type}" }]
"#;

/// A bridge whose `amqp` sink publishes every event to `exchange` by type, with `queue` bound to
/// all of it; returned once `/readyz` is 200.
pub async fn spawn_bound(exchange: &str, queue: &str) -> hookbridge::app::Running {
    let config = crate::common::yaml(&sink_yaml(exchange, &one_queue(queue, &["#"]), ROUTE_BY_TYPE));
    let bridge = crate::common::spawn(&config).await;
    wait_status(bridge.admin_addr, "/readyz", 200, Duration::from_secs(10)).await;
    bridge
}

/// `queues:` with one classic queue bound with `keys`.
pub fn one_queue(queue: &str, keys: &[&str]) -> String {
    let keys: Vec<String> = keys.iter().map(|k| format!("\"{k}\"")).collect();
    format!(
        "    queues:\n      - name: \"{queue}\"\n        bindings: [{}]\n",
        keys.join(", ")
    )
}

/// Polls `GET path` on the admin port until it answers `status` or `within` passes; returns the
/// time it took.
pub async fn wait_status(admin: std::net::SocketAddr, path: &str, status: u16, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let a = crate::common::get(admin, path).await;
        if a.status.as_u16() == status {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{path} still answers {} after {within:?}: {:?}",
            a.status,
            a.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
