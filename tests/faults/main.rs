//! Fault tests against the real brokers: they stop, kill and pause the shared Kafka and RabbitMQ,
//! so they are a test binary of their own (cargo runs test binaries one after another, so no
//! other test meets a broker they stopped), and they run one at a time ([`ONE_AT_A_TIME`]), each
//! putting its broker back up when it ends. Run one file's tests with its module path as the
//! filter: `cargo test --test faults kafka_faults::` or `cargo test --test faults rabbitmq_faults::`.

#[path = "../amqp_support/mod.rs"]
mod amqp_support;
#[path = "../common/mod.rs"]
mod common;
#[path = "../kafka_support/mod.rs"]
mod kafka_support;

mod kafka_faults;
mod rabbitmq_faults;

/// Held by each fault test for its whole run: one broker fault at a time, as when the Kafka and
/// the RabbitMQ fault tests were two binaries run one after the other.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
