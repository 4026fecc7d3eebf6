//! Helpers for the tests against the real Kafka broker started by `deploy/local/kafka.sh start`.
//! A test that cannot reach the broker fails with a message saying how to start it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};

/// The broker the tests use; `HOOKBRIDGE_KAFKA_PORT` as in `deploy/local/kafka.sh`.
pub fn brokers() -> String {
    let port = std::env::var("HOOKBRIDGE_KAFKA_PORT").unwrap_or_else(|_| "9092".into());
    format!("127.0.0.1:{port}")
}

/// Panics with a clear message unless the broker answers a metadata request within `within`.
pub fn require_broker(within: Duration) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("log_level", "3")
        .create()
        .expect("a metadata client");
    let start = Instant::now();
    loop {
        match producer.client().fetch_metadata(None, Duration::from_secs(2)) {
            Ok(m) if !m.brokers().is_empty() => return,
            Ok(_) | Err(_) if start.elapsed() < within => std::thread::sleep(Duration::from_millis(200)),
            Ok(_) => panic!("Kafka at {} lists no brokers", brokers()),
            Err(e) => panic!(
                "Kafka is not reachable at {} ({e}). These tests need a real broker: \
                 run `deploy/local/kafka.sh start` first (CI's .ci/run does).",
                brokers()
            ),
        }
    }
}

pub use crate::common::unique as unique_topic;

/// A unique event id.
pub fn unique_id(what: &str) -> String {
    let t = unique_topic(what);
    format!("evt_{}", t.replace(['.', '-'], "_"))
}

/// A record read back from Kafka.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| std::str::from_utf8(v).expect("header is UTF-8"))
    }

    pub fn key_str(&self) -> &str {
        std::str::from_utf8(self.key.as_deref().expect("record has a key")).expect("key is UTF-8")
    }

    /// The `id` of the event in the payload.
    pub fn event_id(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.payload).expect("payload is JSON");
        v["id"].as_str().expect("payload has an id").to_string()
    }
}

/// Reads every record of `topic` from the beginning: waits until at least `expected` arrived
/// (or `timeout` passed), then keeps reading for `settle` to catch extra records.
pub fn read_topic(topic: &str, expected: usize, timeout: Duration, settle: Duration) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique_topic("reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("log_level", "3")
        .create()
        .expect("a consumer");
    let start = Instant::now();
    let partitions = loop {
        let found = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .ok()
            .and_then(|m| {
                m.topics()
                    .iter()
                    .find(|t| t.name() == topic && t.error().is_none())
                    .map(|t| t.partitions().len())
            })
            .filter(|n| *n > 0);
        match found {
            Some(n) => break n,
            None if start.elapsed() < timeout => std::thread::sleep(Duration::from_millis(200)),
            None if expected == 0 => return Vec::new(),
            None => panic!("topic {topic} does not exist after {timeout:?}"),
        }
    };
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning).expect("offset");
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let mut settled_at: Option<Instant> = None;
    loop {
        if out.len() >= expected && settled_at.is_none() {
            settled_at = Some(Instant::now());
        }
        if settled_at.is_some_and(|t| t.elapsed() >= settle) || start.elapsed() >= timeout {
            break;
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(e)) => panic!("consuming {topic}: {e}"),
            Some(Ok(m)) => out.push(Record {
                topic: m.topic().to_string(),
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                headers: m
                    .headers()
                    .map(|hs| {
                        hs.iter()
                            .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec).unwrap_or_default()))
                            .collect()
                    })
                    .unwrap_or_default(),
            }),
        }
    }
    out
}

/// Records grouped by event id.
pub fn by_event_id(records: &[Record]) -> HashMap<String, Vec<&Record>> {
    let mut map: HashMap<String, Vec<&Record>> = HashMap::new();
    for r in records {
        map.entry(r.event_id()).or_default().push(r);
    }
    map
}

/// Runs `deploy/local/kafka.sh ARGS`, panicking with its output when it fails.
pub fn kafka_sh(args: &[&str]) -> Duration {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/local/kafka.sh");
    let start = Instant::now();
    let out = std::process::Command::new("bash")
        .arg(&script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    if !out.status.success() {
        panic!(
            "kafka.sh {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    start.elapsed()
}

/// The sinks and routes section for one kafka sink named `events` at the test broker.
pub fn kafka_sink(name: &str, extra: &str) -> String {
    format!(
        r#"  {name}:
    kind: kafka
    brokers: "{}"
{extra}"#,
        brokers()
    )
}

/// A whole test config: one kafka sink `events` (with `extra` sink keys) that every event is
/// routed to, on `topic`.
pub fn one_topic_config(extra: &str, topic: &str) -> String {
    crate::common::yaml(&format!(
        "sinks:\n{}\nroutes:\n  - match: \"*\"\n    to:\n      - {{ sink: events, topic: \"{topic}\" }}\n",
        kafka_sink("events", extra)
    ))
}

/// A compact event with optional Connect account.
pub fn stripe_event(
    id: &str,
    event_type: &str,
    object_id: &str,
    account: Option<&str>,
    livemode: bool,
) -> bytes::Bytes {
    let account = account.map(|a| format!(r#""account":"{a}","#)).unwrap_or_default();
    bytes::Bytes::from(format!(
        r#"{{"id":"{id}","object":"event",{account}"api_version":"2024-06-20","created":1700000000,"data":{{"object":{{"id":"{object_id}","object":"thing","amount":1000}}}},"livemode":{livemode},"pending_webhooks":1,"request":{{"id":null,"idempotency_key":null}},"type":"{event_type}"}}"#
    ))
}

/// An event whose body is about `size` bytes.
pub fn big_event(id: &str, size: usize) -> bytes::Bytes {
    let filler = "x".repeat(size);
    bytes::Bytes::from(format!(
        r#"{{"id":"{id}","object":"event","api_version":"2024-06-20","created":1700000000,"data":{{"object":{{"id":"obj_big","object":"thing","description":"{filler}"}}}},"livemode":false,"type":"file.created"}}"#
    ))
}

/// The Python of the Stripe SDK venv made by `deploy/local/stripe-sdk.sh`.
pub fn stripe_python() -> PathBuf {
    let dir = std::env::var_os("HOOKBRIDGE_STRIPE_SDK")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("HOOKBRIDGE_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/hookbridge"));
            cache.join("stripe-sdk")
        });
    dir.join("venv/bin/python")
}

/// The SASL_SSL listener of the test broker (`deploy/local/kafka.sh`: PORT+2).
pub fn sasl_ssl_brokers() -> String {
    listener_at(2)
}

/// The mutual-TLS (SSL) listener of the test broker (`deploy/local/kafka.sh`: PORT+3).
pub fn ssl_brokers() -> String {
    listener_at(3)
}

fn listener_at(offset: u16) -> String {
    let port: u16 = std::env::var("HOOKBRIDGE_KAFKA_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(9092);
    format!("127.0.0.1:{}", port + offset)
}

/// Creates `topic` (one partition) with topic-level `config` (e.g. a small `max.message.bytes` so
/// that the broker refuses larger records for good) through the admin API, so that a test's first
/// publish does not race the topic's auto-creation. Panics when the broker does not create it.
pub async fn create_topic(topic: &str, config: &[(&str, &str)]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("log_level", "3")
        .create()
        .expect("an admin client");
    let new = config
        .iter()
        .fold(NewTopic::new(topic, 1, TopicReplication::Fixed(1)), |t, (k, v)| {
            t.set(k, v)
        });
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    let results = admin
        .create_topics(&[new], &options)
        .await
        .unwrap_or_else(|e| panic!("creating topic {topic}: {e}"));
    for r in results {
        if let Err((name, code)) = r {
            panic!("the broker did not create topic {name}: {code}");
        }
    }
}
