//! Sinks: where verified events are published. Each sink confirms durability before `publish`
//! resolves, and sorts its own errors into retryable (503) and permanent (500).

pub mod cloudevents;
pub mod discard;
mod envelope;
pub mod file;
mod kinds;
pub mod memory;

#[cfg(feature = "amqp")]
pub mod amqp;
/// A build without the `amqp` feature keeps only the `rabbitmq` sink's config, so that a config
/// naming that sink gets a clear error.
#[cfg(not(feature = "amqp"))]
pub mod amqp {
    pub mod config;
}
#[cfg(feature = "kafka")]
pub mod kafka;
/// A build without the `kafka` feature keeps only the `kafka` sink's config, so that a config
/// naming that sink gets a clear error.
#[cfg(not(feature = "kafka"))]
pub mod kafka {
    pub mod config;
}
#[cfg(feature = "nats")]
pub mod nats;
/// A build without the `nats` feature keeps only the `nats` sink's config, so that a config
/// naming that sink gets a clear error.
#[cfg(not(feature = "nats"))]
pub mod nats {
    pub mod config;
}
pub mod tls;

pub use envelope::Envelope;
pub use kinds::{
    build, build_all, BoxError, BuildError, CredentialStamp, Destination, SinkConfig, SinkKind, SinkSettings,
};

use std::time::Instant;

use futures::future::BoxFuture;

/// Whether retrying the same publish later may succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Timeout, unreachable broker, full queue, nack, lost connection: answered 503.
    Retryable,
    /// Message too large, unknown topic, not authorised, unroutable: answered 500.
    Permanent,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Retryable => "retryable",
            ErrorClass::Permanent => "permanent",
        }
    }
}

/// A failed publish, health check or close. The message never contains payload or secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    pub class: ErrorClass,
    pub message: String,
}

impl SinkError {
    pub fn retryable(message: impl Into<String>) -> Self {
        SinkError {
            class: ErrorClass::Retryable,
            message: message.into(),
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        SinkError {
            class: ErrorClass::Permanent,
            message: message.into(),
        }
    }

    pub fn is_retryable(&self) -> bool {
        self.class == ErrorClass::Retryable
    }
}

/// Names of the message headers every sink attaches.
pub mod header {
    pub const EVENT_ID: &str = "stripe-event-id";
    pub const EVENT_TYPE: &str = "stripe-event-type";
    pub const API_VERSION: &str = "stripe-api-version";
    pub const LIVEMODE: &str = "stripe-livemode";
    pub const ACCOUNT: &str = "stripe-account";
    pub const SIGNATURE: &str = "stripe-signature";
    pub const REPLAYED: &str = "stripe-replayed";
    pub const CONTENT_TYPE: &str = "content-type";
    /// On a dead-lettered message: the sink of the target that refused it.
    pub const FAILED_SINK: &str = "hookbridge-failed-sink";
    /// On a dead-lettered message: the topic or routing key that refused it.
    pub const FAILED_DESTINATION: &str = "hookbridge-failed-destination";
    /// On a dead-lettered message: why it was refused (the broker's error, one line).
    pub const FAILED_REASON: &str = "hookbridge-failed-reason";
}

/// A destination for events. Object safe: the bridge holds `Arc<dyn Sink>`.
pub trait Sink: Send + Sync + 'static {
    /// The sink's name from the config.
    fn name(&self) -> &str;

    /// `kafka`, `rabbitmq`, `file`, …
    fn kind(&self) -> &'static str;

    /// Publishes one message to `destination` (topic or routing key) and resolves only when the
    /// destination confirmed it durable. The caller bounds the wait with `ack_timeout`; the sink
    /// should also bound its own internal waits.
    fn publish<'a>(&'a self, destination: &'a str, envelope: &'a Envelope) -> BoxFuture<'a, Result<(), SinkError>>;

    /// Whether the sink can publish right now (connected, broker reachable).
    fn health(&self) -> BoxFuture<'_, Result<(), SinkError>>;

    /// Flushes what is pending and releases connections, giving up at `deadline`.
    fn close(&self, deadline: Instant) -> BoxFuture<'_, Result<(), SinkError>>;
}
