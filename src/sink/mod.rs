//! Sinks: where verified events are published. Each sink confirms durability before `publish`
//! resolves, and sorts its own errors into retryable (503) and permanent (500).

pub mod cloudevents;
pub mod discard;
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

pub use kinds::{
    build, build_all, BoxError, BuildError, CredentialStamp, Destination, SinkConfig, SinkKind, SinkSettings,
};

use std::time::Instant;

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::event::EventMeta;

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

/// A verified event on its way to the brokers: the raw body and what is known about it.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The request body, byte for byte.
    pub payload: Bytes,
    pub meta: EventMeta,
    /// The original `Stripe-Signature` header, so consumers can verify the bytes themselves.
    /// Empty for a replayed event (the Events API signs nothing): no header is sent then.
    pub signature: String,
    /// Fetched from Stripe's Events API by `hookbridge replay`, not delivered as a webhook:
    /// the message carries `stripe-replayed: true` and no `stripe-signature`.
    pub replayed: bool,
    /// Headers added after the standard ones, e.g. why a dead-lettered message failed.
    pub extra_headers: Vec<(&'static str, String)>,
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

impl Envelope {
    /// The message key: `data.object.id` when present, else the event id.
    pub fn key(&self) -> &str {
        self.meta.key()
    }

    /// The headers of SPEC.md, in a fixed order; optional ones only when present. A replayed
    /// event has `stripe-replayed: true` instead of `stripe-signature`.
    pub fn headers(&self) -> Vec<(&'static str, &str)> {
        let mut h = Vec::with_capacity(7 + self.extra_headers.len());
        h.push((header::EVENT_ID, self.meta.id.as_str()));
        h.push((header::EVENT_TYPE, self.meta.event_type.as_str()));
        if let Some(v) = &self.meta.api_version {
            h.push((header::API_VERSION, v.as_str()));
        }
        h.push((header::LIVEMODE, if self.meta.livemode { "true" } else { "false" }));
        if let Some(a) = &self.meta.account {
            h.push((header::ACCOUNT, a.as_str()));
        }
        if !self.signature.is_empty() {
            h.push((header::SIGNATURE, self.signature.as_str()));
        }
        if self.replayed {
            h.push((header::REPLAYED, "true"));
        }
        h.push((header::CONTENT_TYPE, "application/json"));
        h.extend(self.extra_headers.iter().map(|(k, v)| (*k, v.as_str())));
        h
    }
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
