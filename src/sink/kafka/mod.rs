//! The `kafka` sink: one shared idempotent librdkafka producer (`acks=all`).
//!
//! A publish resolves only with the broker's delivery report, so a 200 means every in-sync
//! replica has the record. Every wait is bounded: at most `queue_timeout` for room in the local
//! queue, then at most `message.timeout.ms` (below `ack_timeout`) for the delivery report.
//! A broker that is down does not stop the sink from being built: librdkafka reconnects by
//! itself, publishes fail as retryable meanwhile, and [`Sink::health`] says so.
//!
//! - record: topic = the route's destination, key = [`Envelope::key`], headers =
//!   [`Envelope::headers`], value = the request body unchanged.
//! - health: a metadata request (all topics) in a blocking thread, bounded by
//!   [`HEALTH_PROBE_TIMEOUT`], its answer shared for [`HEALTH_CACHE`] by concurrent callers.
//! - a producer that librdkafka declares fatally failed (idempotence state lost) is replaced by
//!   a fresh one on the next failed publish; the failed publishes are answered 503.

pub mod errors;

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::FutureExt;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::{Envelope, Sink, SinkError};
use crate::config::kafka::{is_sensitive, KafkaSinkConfig};

/// The longest a health check waits for a broker to answer a metadata request.
pub const HEALTH_PROBE_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long one health answer is reused, so a burst of `/readyz` calls makes one request.
pub const HEALTH_CACHE: Duration = Duration::from_millis(500);

/// Forwards librdkafka's logs and global errors to `tracing`, tagged with the sink's name.
pub struct BridgeContext {
    sink: String,
}

impl ClientContext for BridgeContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let sink = self.sink.as_str();
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", sink, facility = fac, "{message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", sink, facility = fac, "{message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", sink, facility = fac, "{message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", sink, facility = fac, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let sink = self.sink.as_str();
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            tracing::error!(target: "librdkafka", sink, %error, reason, "kafka producer failed fatally");
        } else {
            tracing::warn!(target: "librdkafka", sink, %error, reason, "kafka client error");
        }
    }

    fn stats_raw(&self, _statistics: &[u8]) {}
}

type Producer_ = FutureProducer<BridgeContext>;

/// A Kafka sink. Cheap to share: publishes from many requests use one producer.
pub struct KafkaSink {
    name: String,
    brokers: String,
    client_config: ClientConfig,
    queue_timeout: Duration,
    message_timeout: Duration,
    producer: RwLock<Arc<Producer_>>,
    health: tokio::sync::Mutex<Option<(Instant, Result<(), SinkError>)>>,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("name", &self.name)
            .field("brokers", &self.brokers)
            .field("queue_timeout", &self.queue_timeout)
            .finish_non_exhaustive()
    }
}

impl KafkaSink {
    /// Builds the producer. Fails only on a config librdkafka refuses (e.g. a missing CA file),
    /// never because a broker is down.
    pub fn new(name: &str, config: &KafkaSinkConfig, ack_timeout: Duration) -> Result<KafkaSink, String> {
        let mut client_config = ClientConfig::new();
        let props = config.properties(ack_timeout);
        for (k, v) in &props {
            client_config.set(k, v);
        }
        for (k, v) in config.secret_properties()? {
            client_config.set(k, v);
        }
        client_config.set_log_level(RDKafkaLogLevel::Info);
        let timings = config.timings(ack_timeout);
        let producer = create(name, &client_config)?;
        let shown: Vec<String> = props
            .iter()
            .map(|(k, v)| {
                if is_sensitive(k) {
                    format!("{k}=***")
                } else {
                    format!("{k}={v}")
                }
            })
            .chain(config.secret_options.keys().map(|k| format!("{k}=***")))
            .collect();
        tracing::info!(
            sink = name,
            brokers = %config.brokers,
            queue_timeout_ms = timings.queue_timeout.as_millis() as u64,
            properties = %shown.join(", "),
            "kafka producer created"
        );
        Ok(KafkaSink {
            name: name.to_string(),
            brokers: config.brokers.clone(),
            client_config,
            queue_timeout: timings.queue_timeout,
            message_timeout: timings.message_timeout,
            producer: RwLock::new(Arc::new(producer)),
            health: tokio::sync::Mutex::new(None),
        })
    }

    fn current(&self) -> Arc<Producer_> {
        match self.producer.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces `failed` with a new producer if librdkafka declared it fatally failed.
    fn renew_if_fatal(&self, failed: &Arc<Producer_>) {
        let Some((code, reason)) = failed.client().fatal_error() else {
            return;
        };
        let mut slot = match self.producer.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if !Arc::ptr_eq(&slot, failed) {
            return; // another request already replaced it
        }
        match create(&self.name, &self.client_config) {
            Ok(p) => {
                tracing::error!(sink = %self.name, code = ?code, reason, "kafka producer failed fatally; replaced it");
                let old = std::mem::replace(&mut *slot, Arc::new(p));
                drop(slot);
                // Dropping a producer purges, flushes and joins librdkafka's threads: blocking work.
                tokio::task::spawn_blocking(move || drop(old));
            }
            Err(e) => tracing::error!(sink = %self.name, error = %e, "cannot replace the failed kafka producer"),
        }
    }

    async fn publish_inner(&self, topic: &str, envelope: &Envelope) -> Result<(), SinkError> {
        let producer = self.current();
        let result = self.send(&producer, topic, envelope).await;
        if result.is_err() {
            self.renew_if_fatal(&producer);
        }
        result
    }

    async fn send(&self, producer: &Producer_, topic: &str, envelope: &Envelope) -> Result<(), SinkError> {
        let headers = envelope
            .headers()
            .into_iter()
            .fold(OwnedHeaders::new_with_capacity(7), |h, (key, value)| {
                h.insert(Header {
                    key,
                    value: Some(value),
                })
            });
        let mut record = FutureRecord::to(topic)
            .key(envelope.key())
            .payload(&envelope.payload[..])
            .headers(headers);
        let start = Instant::now();
        let queue_deadline = start + self.queue_timeout;
        let delivery = loop {
            match producer.send_result(record) {
                Ok(delivery) => break delivery,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r))
                    if Instant::now() < queue_deadline =>
                {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err((e, _)) => return Err(errors::publish_error(&self.name, topic, &e)),
            }
        };
        // librdkafka checks message timeouts about once a second, so it may report a timeout up
        // to a second late; this bound keeps the answer within queue + message timeout.
        let confirm_deadline = start + self.queue_timeout + self.message_timeout;
        let Ok(delivery) = tokio::time::timeout_at(confirm_deadline.into(), delivery).await else {
            return Err(SinkError::retryable(format!(
                "kafka sink {}: topic {topic}: the broker did not confirm within {}",
                self.name,
                humantime::format_duration(confirm_deadline - start)
            )));
        };
        match delivery {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(errors::publish_error(&self.name, topic, &e)),
            Err(_) => Err(SinkError::retryable(format!(
                "kafka sink {}: topic {topic}: the producer was closed before the broker confirmed",
                self.name
            ))),
        }
    }

    async fn probe(&self) -> Result<(), SinkError> {
        let producer = self.current();
        if let Some((code, reason)) = producer.client().fatal_error() {
            // Replace it here too: an unready pod gets no traffic, so no publish would.
            self.renew_if_fatal(&producer);
            return Err(SinkError::retryable(format!(
                "kafka sink {}: producer failed fatally ({code:?}: {reason}); replaced by a new one",
                self.name
            )));
        }
        let name = self.name.clone();
        let brokers = self.brokers.clone();
        let task = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, HEALTH_PROBE_TIMEOUT)
                .map(|m| m.brokers().len())
        });
        match task.await {
            Ok(Ok(n)) if n > 0 => Ok(()),
            Ok(Ok(_)) => Err(SinkError::retryable(format!(
                "kafka sink {name}: the cluster at {brokers} reports no brokers"
            ))),
            Ok(Err(e)) => Err(SinkError::retryable(format!(
                "kafka sink {name}: no broker at {brokers} answered a metadata request within {}: {e}",
                humantime::format_duration(HEALTH_PROBE_TIMEOUT)
            ))),
            Err(e) => Err(SinkError::retryable(format!(
                "kafka sink {name}: health check failed: {e}"
            ))),
        }
    }
}

fn create(name: &str, client_config: &ClientConfig) -> Result<Producer_, String> {
    client_config
        .create_with_context(BridgeContext { sink: name.to_string() })
        .map_err(|e| format!("cannot create the kafka producer: {}", config_error(&e)))
}

/// A librdkafka error about the client config, without the offending value: rdkafka's own
/// message quotes it, and it may be a password.
pub fn config_error(e: &KafkaError) -> String {
    match e {
        KafkaError::ClientConfig(_, description, key, _value) => format!("property {key}: {description}"),
        other => other.to_string(),
    }
}

impl Sink for KafkaSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn publish<'a>(&'a self, destination: &'a str, envelope: &'a Envelope) -> BoxFuture<'a, Result<(), SinkError>> {
        self.publish_inner(destination, envelope).boxed()
    }

    fn health(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        async move {
            let mut cached = self.health.lock().await;
            if let Some((at, result)) = cached.as_ref() {
                if at.elapsed() < HEALTH_CACHE {
                    return result.clone();
                }
            }
            let result = self.probe().await;
            *cached = Some((Instant::now(), result.clone()));
            result
        }
        .boxed()
    }

    fn close(&self, deadline: Instant) -> BoxFuture<'_, Result<(), SinkError>> {
        let producer = self.current();
        let name = self.name.clone();
        async move {
            let timeout = deadline.saturating_duration_since(Instant::now());
            let task = tokio::task::spawn_blocking(move || {
                let flushed = producer.flush(timeout);
                (flushed, producer.in_flight_count())
            });
            match task.await {
                Ok((Ok(()), _)) => {
                    tracing::info!(sink = %name, "kafka producer flushed");
                    Ok(())
                }
                Ok((Err(e), pending)) => Err(SinkError::retryable(format!(
                    "kafka sink {name}: {pending} message(s) still unconfirmed at the shutdown deadline: {e}"
                ))),
                Err(e) => Err(SinkError::retryable(format!("kafka sink {name}: flush failed: {e}"))),
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests;
