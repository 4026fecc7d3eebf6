//! Error paths a real single-node broker cannot easily produce, on librdkafka's mock cluster.
//! The real-broker tests are in tests/it/kafka.rs and tests/faults/kafka_faults.rs.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

use super::config::KafkaSinkConfig;
use super::KafkaSink;
use crate::event::EventMeta;
use crate::sink::{Envelope, ErrorClass, Sink};

const ACK: Duration = Duration::from_secs(2);

fn sink(brokers: String) -> KafkaSink {
    let config = KafkaSinkConfig {
        brokers,
        client_id: None,
        compression: None,
        linger: None,
        message_timeout: None,
        queue_timeout: None,
        options: BTreeMap::new(),
        secret_options: BTreeMap::new(),
        headers: Default::default(),
    };
    KafkaSink::new("mock", &config, ACK).unwrap()
}

fn envelope() -> Envelope {
    let body = Bytes::from_static(
        br#"{"id":"evt_mock","object":"event","data":{"object":{"id":"pi_1"}},"livemode":false,"type":"payment_intent.succeeded"}"#,
    );
    Envelope::for_tests(body.clone(), EventMeta::parse(&body).unwrap(), "t=1,v1=00")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_errors_from_the_broker_are_classified() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("t", 1, 1).unwrap();
    cluster.create_topic("u", 1, 1).unwrap();
    let sink = sink(cluster.bootstrap_servers());
    let env = envelope();
    sink.publish("t", &env).await.unwrap();
    sink.health().await.unwrap();

    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
    );
    let e = sink.publish("t", &env).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Permanent, "{e}");

    // Not enough replicas, again and again: librdkafka retries until the message times out.
    // (Another topic: librdkafka remembers the authorisation failure of `t` for a while.)
    sink.publish("u", &env).await.unwrap();
    let start = std::time::Instant::now();
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 200],
    );
    let e = sink.publish("u", &env).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Retryable, "{e}");
    assert!(start.elapsed() < ACK, "gave up after {:?}", start.elapsed());
    cluster.clear_request_errors(RDKafkaApiKey::Produce);

    // A transient error that clears within the message timeout is retried to success.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 2],
    );
    sink.publish("u", &env).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_going_down_fails_health_and_publishes_as_retryable() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("t", 1, 1).unwrap();
    let sink = sink(cluster.bootstrap_servers());
    sink.publish("t", &envelope()).await.unwrap();
    cluster.broker_down(1).unwrap();
    tokio::time::sleep(super::HEALTH_CACHE).await;
    let e = sink.health().await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Retryable, "{e}");
    let e = sink.publish("t", &envelope()).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Retryable, "{e}");
    cluster.broker_up(1).unwrap();
    tokio::time::sleep(super::HEALTH_CACHE).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sink.health().await.is_err() {
        assert!(std::time::Instant::now() < deadline, "health did not recover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sink.publish("t", &envelope()).await.unwrap();
}

#[test]
fn the_producer_asks_for_auto_creation_unless_told_not_to() {
    use super::asks_auto_create;
    for yes in [None, Some("true"), Some("TRUE"), Some("t"), Some("1"), Some(" true ")] {
        assert!(asks_auto_create(yes), "{yes:?}");
    }
    for no in [Some("false"), Some("0"), Some("f"), Some("no")] {
        assert!(!asks_auto_create(no), "{no:?}");
    }
}
