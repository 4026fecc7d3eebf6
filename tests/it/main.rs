//! The integration tests, as one test binary: one module per area, sharing the support modules
//! (tests/common, tests/kafka_support, tests/amqp_support, tests/secure_support). One binary links
//! hookbridge, librdkafka and lapin once instead of a dozen times. Run one area with its module
//! path as the filter, e.g. `cargo test --test it kafka::` or `cargo test --test it http::`.
//!
//! Tests that must have a process to themselves are in other binaries: the broker fault tests
//! (tests/faults: they stop the shared brokers), tests/request_path.rs (it installs the global log
//! subscriber) and tests/managed_configs.rs (it sets environment variables).

#[path = "../amqp_support/mod.rs"]
mod amqp_support;
#[path = "../common/mod.rs"]
mod common;
#[path = "../kafka_support/mod.rs"]
mod kafka_support;
#[path = "../secure_support/mod.rs"]
mod secure_support;

mod cli;
mod deploy;
mod hardening;
mod http;
mod interop;
mod kafka;
mod kafka_secure;
mod nats;
mod properties;
mod rabbitmq;
mod rabbitmq_secure;
mod replay;
mod routes;
