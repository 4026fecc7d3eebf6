//! Sinks: where verified events are published. Each sink confirms durability before `publish`
//! resolves, and sorts its own errors into retryable (503) and permanent (500).

pub mod cloudevents;
pub mod discard;
pub mod file;
pub mod memory;
pub mod nats;
pub mod tls;

// kafka and amqp modules: being written
#[cfg(feature = "amqp")]
pub mod amqp;
#[cfg(feature = "kafka")]
pub mod kafka;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::config::{RawSink, SinkSettings};
use crate::event::EventMeta;

/// What a sink's credential files held when it was built: a SHA-256 of each file, `None` for one
/// that could not be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CredentialStamp(Vec<(std::path::PathBuf, Option<[u8; 32]>)>);

impl CredentialStamp {
    /// Reads the credential files of `settings` now.
    pub fn read(settings: &SinkSettings) -> Self {
        let files = match &settings.config {
            RawSink::Kafka(k) => k.credential_files(),
            RawSink::Rabbitmq(r) => r.credential_files(),
            RawSink::Nats(n) => n.credential_files(),
            RawSink::File(_) | RawSink::Discard(_) => Vec::new(),
        };
        CredentialStamp(files.into_iter().map(|f| (f.clone(), digest(&f))).collect())
    }

    /// Whether a file now holds something else. A file that cannot be read now is not a change:
    /// a file being replaced may be missing for a moment.
    pub fn changed(&self) -> bool {
        self.0
            .iter()
            .any(|(file, was)| digest(file).is_some_and(|now| Some(now) != *was))
    }
}

fn digest(file: &std::path::Path) -> Option<[u8; 32]> {
    use sha2::Digest;
    std::fs::read(file).ok().map(|bytes| sha2::Sha256::digest(bytes).into())
}

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

/// Why a sink could not be built at start-up (a broker being down is not one of them).
#[derive(Debug, thiserror::Error)]
#[error("sink {name}: {message}")]
pub struct BuildError {
    pub name: String,
    pub message: String,
}

/// Builds every sink of the config, in the order of `Settings::sinks`.
pub async fn build_all(
    sinks: &[SinkSettings],
    ack_timeout: std::time::Duration,
) -> Result<Vec<Arc<dyn Sink>>, BuildError> {
    let mut out: Vec<Arc<dyn Sink>> = Vec::with_capacity(sinks.len());
    for s in sinks {
        out.push(build(s, ack_timeout).await?);
    }
    Ok(out)
}

/// Builds one sink. Brokers that are down do not fail this: the sink reconnects by itself.
pub async fn build(s: &SinkSettings, ack_timeout: std::time::Duration) -> Result<Arc<dyn Sink>, BuildError> {
    let err = |message: String| BuildError {
        name: s.name.clone(),
        message,
    };
    Ok(match &s.config {
        RawSink::File(c) => Arc::new(file::FileSink::open(&s.name, c).map_err(err)?),
        RawSink::Discard(c) => Arc::new(discard::DiscardSink::new(&s.name, c.delay)),
        #[cfg(feature = "kafka")]
        RawSink::Kafka(c) => Arc::new(kafka::KafkaSink::new(&s.name, c, ack_timeout).map_err(err)?),
        #[cfg(feature = "amqp")]
        RawSink::Rabbitmq(c) => Arc::new(amqp::AmqpSink::new(&s.name, c, ack_timeout).await.map_err(err)?),
        #[cfg(feature = "nats")]
        RawSink::Nats(c) => Arc::new(nats::NatsSink::new(&s.name, c, ack_timeout).await.map_err(err)?),
        #[allow(unreachable_patterns)]
        other => return Err(err(format!("this build has no {} support", other.kind()))),
    })
}
