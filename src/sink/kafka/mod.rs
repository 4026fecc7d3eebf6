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
//! - a producer that has failed every publish for [`STUCK_AFTER`] is replaced too, and the sink
//!   reports itself unhealthy meanwhile (see [`Progress`]): after a broker pause librdkafka may
//!   stay unable to publish although the broker is back.
//! - a topic librdkafka calls unknown is a permanent failure when nothing will create it, and
//!   retryable while the cluster is creating it (see [`KafkaSink::unknown_topic`]).
//! - two lanes (see [`Producers`]): while fewer than [`IMMEDIATE_BELOW`] publishes are in flight,
//!   a record goes to a second producer with `linger.ms=0` and leaves at once; under load records
//!   go to the batching producer (the configured `linger`), where they fill batches.

pub mod config;
pub mod errors;

pub use self::errors::{AutoCreateError, BuildError};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::FutureExt;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::ClientContext;
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use self::config::{is_sensitive, KafkaSinkConfig};
use super::cloudevents::{self, HeaderMode};
use super::{Envelope, ErrorClass, Sink, SinkError};

/// The longest a health check waits for a broker to answer a metadata request.
pub const HEALTH_PROBE_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long one health answer is reused, so a burst of `/readyz` calls makes one request.
pub const HEALTH_CACHE: Duration = Duration::from_millis(500);
/// How long the cluster's `auto.create.topics.enable` is reused once read.
const AUTO_CREATE_CACHE: Duration = Duration::from_secs(60);
/// How long a failure to read it is reused before the next attempt.
const AUTO_CREATE_RETRY: Duration = Duration::from_secs(10);
/// A producer whose publishes have all failed (retryably) for this long, none succeeding, is
/// replaced by a new one; the sink is unhealthy from [`UNHEALTHY_AFTER`] of such failures on.
pub const STUCK_AFTER: Duration = Duration::from_secs(5);
/// How long publishes may fail, none succeeding, before [`Sink::health`] says so.
pub const UNHEALTHY_AFTER: Duration = Duration::from_secs(2);

/// Whether the current producer still publishes: the start of the first failed publish since the
/// last success. Every publish that fails retryably (timeout, no leader, transport, full queue)
/// counts; a permanent refusal says nothing about the producer and does not.
///
/// Why: after a broker pause (SIGSTOP, GC, VM freeze) under load, librdkafka can keep one
/// producer unable to publish for tens of seconds after the broker is back (its connection in
/// reconnect backoff, its partition leader unknown, its idempotence state waiting on requests
/// that will never be answered), while a new producer publishes at once. A publish cannot tell
/// this from a broker that is really down, so the rule is blunt: no success for [`STUCK_AFTER`]
/// means a new producer. Replacing one is cheap and safe: the old one's unconfirmed publishes are
/// purged and answered 503 (Stripe retries them; at most a duplicate in Kafka, never a loss).
#[derive(Debug, Default)]
struct Progress {
    failing_since: Option<Instant>,
    /// When the last successful publish started: a failure of a request older than that says
    /// nothing new (it may have waited out the outage that a newer request did not meet).
    last_success: Option<Instant>,
}

/// The immediate lane's own record (see [`Progress`] and [`Producers`]): when its current run of
/// retryable failures began and when the last one ended. The batching lane's successes must not
/// hide an immediate producer that cannot publish: while its last failure is recent, records take
/// the batching lane (one retries the immediate lane each [`IMMEDIATE_RETRY`]), and when it has
/// failed for [`STUCK_AFTER`] the producers are replaced.
#[derive(Debug, Default)]
struct LaneRecord {
    failing_since: Option<Instant>,
    last_failure: Option<Instant>,
}

/// How long after a failure of the immediate lane records avoid it (one retries it after that).
pub const IMMEDIATE_RETRY: Duration = Duration::from_secs(1);

/// How long a credential or TLS failure reported by librdkafka explains a failed health check or
/// publish. librdkafka retries the connection at most every `reconnect.backoff.max.ms` (1 s by
/// default here) and reports each failure, so a failure still going on is always recent.
const SECURITY_FAILURE_FRESH: Duration = Duration::from_secs(10);

/// The last credential or TLS failure librdkafka reported, and when.
type SecurityFailure = Arc<std::sync::Mutex<Option<(Instant, String)>>>;

/// Forwards librdkafka's logs and global errors to `tracing`, tagged with the sink's name, and
/// keeps the last credential or TLS failure for health checks and publish errors.
pub struct BridgeContext {
    sink: String,
    security: SecurityFailure,
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
        if let Some(cause) = errors::security_cause(error.rdkafka_error_code(), reason) {
            *self.security.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), cause));
        }
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            tracing::error!(target: "librdkafka", sink, %error, reason, "kafka producer failed fatally");
        } else {
            tracing::warn!(target: "librdkafka", sink, %error, reason, "kafka client error");
        }
    }

    fn stats_raw(&self, _statistics: &[u8]) {}
}

/// Publishes in flight (in this sink, before this one) below which a record takes the immediate
/// lane. Why a second producer and not just a shorter linger: every publish waits for its own
/// delivery report, so at low rates the linger is pure latency, while under load batching is what
/// makes throughput, and librdkafka cannot change `linger.ms` on a live producer. The bound is
/// below 5 because librdkafka's idempotent producer builds no new request for a partition while 5
/// or more of its messages are unacknowledged (it counts messages against the broker's window of 5
/// requests) and, once their linger has passed, polls its socket without sleeping until one is
/// answered: with `linger.ms=0` that would be at once. With fewer than 4 records on it, the
/// immediate lane never reaches that state; the batching lane does, but only after its linger.
pub const IMMEDIATE_BELOW: usize = 4;

type Client_ = FutureProducer<BridgeContext>;

/// The sink's librdkafka producers, built and replaced together: `batching` with the configured
/// properties, and `immediate`, the same with `linger.ms=0`, for records published while little
/// is in flight (none when the configured linger is already 0).
pub struct Producers {
    batching: Client_,
    immediate: Option<Client_>,
}

impl Producers {
    /// The batching producer's client: metadata requests and health checks.
    fn client(
        &self,
    ) -> &rdkafka::client::Client<rdkafka::producer::future_producer::FutureProducerContext<BridgeContext>> {
        self.batching.client()
    }

    /// librdkafka's fatal error of either producer (idempotence state lost).
    fn fatal_error(&self) -> Option<(RDKafkaErrorCode, String)> {
        self.batching
            .client()
            .fatal_error()
            .or_else(|| self.immediate.as_ref().and_then(|p| p.client().fatal_error()))
    }

    fn lane(&self, immediate: bool) -> &Client_ {
        match &self.immediate {
            Some(p) if immediate => p,
            _ => &self.batching,
        }
    }

    /// Flushes both producers within `timeout` in all.
    fn flush(&self, timeout: Duration) -> rdkafka::error::KafkaResult<()> {
        let deadline = Instant::now() + timeout;
        if let Some(p) = &self.immediate {
            p.flush(timeout)?;
        }
        self.batching.flush(deadline.saturating_duration_since(Instant::now()))
    }

    fn in_flight_count(&self) -> i32 {
        self.batching.in_flight_count() + self.immediate.as_ref().map_or(0, |p| p.in_flight_count())
    }
}

/// Counts a publish in [`KafkaSink::in_flight`] while it lives (also when it is cancelled).
struct Counted<'a>(&'a AtomicUsize);

impl Counted<'_> {
    /// Counts one more publish; also returns how many were in flight before it.
    fn enter(counter: &AtomicUsize) -> (Counted<'_>, usize) {
        (Counted(counter), counter.fetch_add(1, Ordering::Relaxed))
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

type Producer_ = Producers;

/// A Kafka sink. Cheap to share: publishes from many requests use one producer.
pub struct KafkaSink {
    name: String,
    brokers: String,
    client_config: ClientConfig,
    queue_timeout: Duration,
    message_timeout: Duration,
    /// Whether records also carry the CloudEvents `ce_*` headers.
    headers: HeaderMode,
    producer: RwLock<Arc<Producer_>>,
    /// Publishes in flight, which picks the lane (see [`IMMEDIATE_BELOW`]).
    in_flight: AtomicUsize,
    /// Whether the current batching producer publishes; see [`Progress`].
    progress: std::sync::Mutex<Progress>,
    /// Whether the current immediate lane publishes; see [`LaneRecord`].
    immediate: std::sync::Mutex<LaneRecord>,
    health: tokio::sync::Mutex<Option<(Instant, Result<(), SinkError>)>>,
    /// The cluster's `auto.create.topics.enable`, when it was last read.
    cluster_auto_create: tokio::sync::Mutex<Option<(Instant, Option<bool>)>>,
    /// Reads broker configs; made on first need (a missing topic), never on the hot path.
    admin: std::sync::OnceLock<Result<AdminClient<BridgeContext>, String>>,
    /// The last credential or TLS failure of any of this sink's clients.
    security: SecurityFailure,
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
    pub fn new(name: &str, config: &KafkaSinkConfig, ack_timeout: Duration) -> Result<KafkaSink, BuildError> {
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
        let security = SecurityFailure::default();
        let producer = create(name, &client_config, &security)?;
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
            immediate_lane = producer.immediate.is_some(),
            "kafka producer created"
        );
        Ok(KafkaSink {
            name: name.to_string(),
            brokers: config.brokers.clone(),
            client_config,
            queue_timeout: timings.queue_timeout,
            message_timeout: timings.message_timeout,
            headers: config.headers,
            producer: RwLock::new(Arc::new(producer)),
            in_flight: AtomicUsize::new(0),
            progress: std::sync::Mutex::new(Progress::default()),
            immediate: std::sync::Mutex::new(LaneRecord::default()),
            health: tokio::sync::Mutex::new(None),
            cluster_auto_create: tokio::sync::Mutex::new(None),
            admin: std::sync::OnceLock::new(),
            security,
        })
    }

    /// The credential or TLS failure librdkafka reported in the last [`SECURITY_FAILURE_FRESH`].
    fn security_failure(&self) -> Option<String> {
        let last = self.security.lock().unwrap_or_else(|p| p.into_inner());
        last.as_ref()
            .filter(|(at, _)| at.elapsed() < SECURITY_FAILURE_FRESH)
            .map(|(_, cause)| cause.clone())
    }

    /// A retryable failure explained by a current credential or TLS failure, when there is one:
    /// records only time out while the client cannot log in.
    fn explained(&self, mut e: SinkError) -> SinkError {
        if e.is_retryable() {
            if let Some(cause) = self.security_failure() {
                e.message = format!("{} ({cause})", e.message);
            }
        }
        e
    }

    fn current(&self) -> Arc<Producer_> {
        match self.producer.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces `failed` with a new producer if librdkafka declared it fatally failed. The new
    /// producer is built before the lock is taken (building one starts librdkafka's threads), and
    /// whichever producer loses (the failed one, or ours when another request was first) is
    /// dropped on a blocking thread: its drop joins those threads.
    fn renew_if_fatal(&self, failed: &Arc<Producer_>) {
        let Some((code, reason)) = failed.fatal_error() else {
            return;
        };
        self.replace(failed, &format!("it failed fatally ({code:?}: {reason})"));
    }

    /// Replaces `failed` with a new producer, unless another request already did. `why` is logged.
    /// The new producer is built before the slot is locked (building one is not instant, and every
    /// publish reads the slot); the one replaced is dropped off the async runtime.
    fn replace(&self, failed: &Arc<Producer_>, why: &str) -> bool {
        if !Arc::ptr_eq(&self.current(), failed) {
            return false; // another request already replaced it
        }
        let fresh = match create(&self.name, &self.client_config, &self.security) {
            Ok(p) => Arc::new(p),
            Err(e) => {
                tracing::error!(sink = %self.name, error = %e, why, "cannot replace the kafka producer");
                return false;
            }
        };
        let (retired, replaced) = {
            let mut slot = match self.producer.write() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            if Arc::ptr_eq(&slot, failed) {
                (std::mem::replace(&mut *slot, fresh), true)
            } else {
                (fresh, false) // another request replaced it meanwhile
            }
        };
        if replaced {
            tracing::error!(sink = %self.name, why, "kafka producer replaced by a new one");
            // The new producer starts with a clean record.
            *self.progress() = Progress::default();
            *self.immediate_record() = LaneRecord::default();
        }
        // Dropping a producer purges, flushes and joins librdkafka's threads: blocking work.
        tokio::task::spawn_blocking(move || drop(retired));
        replaced
    }

    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn immediate_record(&self) -> std::sync::MutexGuard<'_, LaneRecord> {
        self.immediate.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a record may take the immediate lane: not within [`IMMEDIATE_RETRY`] of its last
    /// failure.
    fn immediate_usable(&self) -> bool {
        self.immediate_record()
            .last_failure
            .is_none_or(|at| at.elapsed() >= IMMEDIATE_RETRY)
    }

    /// Records the outcome of a publish on the immediate lane of `producer` that started at
    /// `started`, and replaces the producers when that lane has failed for [`STUCK_AFTER`].
    fn record_immediate(&self, producer: &Arc<Producer_>, started: Instant, result: &Result<(), SinkError>) {
        if !Arc::ptr_eq(producer, &self.current()) {
            return;
        }
        let failing_for = {
            let mut lane = self.immediate_record();
            match result {
                Ok(()) => {
                    *lane = LaneRecord::default();
                    return;
                }
                Err(e) if e.class == ErrorClass::Permanent => return,
                Err(_) => {
                    // A run of failures ends when the lane has not failed for STUCK_AFTER: an old
                    // failure followed by silence (records on the batching lane) says nothing now.
                    if lane.last_failure.is_none_or(|at| at.elapsed() >= STUCK_AFTER) {
                        lane.failing_since = None;
                    }
                    let since = *lane.failing_since.get_or_insert(started);
                    lane.last_failure = Some(Instant::now());
                    since.elapsed()
                }
            }
        };
        if failing_for >= STUCK_AFTER {
            self.replace(
                producer,
                &format!(
                    "no publish on its immediate lane succeeded for {}",
                    humantime::format_duration(Duration::from_secs(failing_for.as_secs()))
                ),
            );
        }
    }

    /// How long publishes have failed with none succeeding, if they have.
    fn failing_for(&self) -> Option<Duration> {
        self.progress().failing_since.map(|since| since.elapsed())
    }

    /// Records the outcome of a publish that started at `started` on `producer`, and replaces the
    /// producer when it has published nothing for [`STUCK_AFTER`] (see [`Progress`]).
    fn record(&self, producer: &Arc<Producer_>, started: Instant, result: &Result<(), SinkError>) {
        if !Arc::ptr_eq(producer, &self.current()) {
            return; // an outcome of a producer already replaced says nothing about the new one
        }
        let failing_for = {
            let mut progress = self.progress();
            match result {
                Ok(()) => {
                    progress.failing_since = None;
                    progress.last_success = progress.last_success.max(Some(started));
                    return;
                }
                Err(e) if e.class == ErrorClass::Permanent => return,
                Err(_) if progress.last_success.is_some_and(|ok| started <= ok) => return,
                Err(_) => {
                    let since = *progress.failing_since.get_or_insert(started);
                    since.elapsed()
                }
            }
        };
        if failing_for >= STUCK_AFTER {
            self.replace(
                producer,
                &format!(
                    "no publish succeeded for {}",
                    humantime::format_duration(Duration::from_secs(failing_for.as_secs()))
                ),
            );
        }
    }

    async fn publish_inner(&self, topic: &str, envelope: &Envelope) -> Result<(), SinkError> {
        let producer = self.current();
        let started = Instant::now();
        let (result, immediate) = self.send(&producer, topic, envelope).await;
        if result.is_err() {
            self.renew_if_fatal(&producer);
        }
        if immediate {
            self.record_immediate(&producer, started, &result);
        } else {
            // The batching lane's record: the immediate lane's successes must not hide a stuck
            // batching producer either.
            self.record(&producer, started, &result);
        }
        result.map_err(|e| self.explained(e))
    }

    /// Sends one record and waits for its confirmation; also says whether it took the immediate
    /// lane.
    async fn send(&self, producer: &Arc<Producer_>, topic: &str, envelope: &Envelope) -> (Result<(), SinkError>, bool) {
        let ce = match self.headers {
            HeaderMode::Stripe => Vec::new(),
            HeaderMode::Cloudevents => cloudevents::headers(envelope, cloudevents::Binding::Kafka),
        };
        let headers = envelope
            .headers()
            .into_iter()
            .chain(ce.iter().map(|(k, v)| (*k, v.as_str())))
            .fold(OwnedHeaders::new_with_capacity(7 + ce.len()), |h, (key, value)| {
                h.insert(Header {
                    key,
                    value: Some(value),
                })
            });
        let record = FutureRecord::to(topic)
            .key(envelope.key())
            .payload(&envelope.payload()[..])
            .headers(headers);
        let (_counted, before) = Counted::enter(&self.in_flight);
        let immediate = before < IMMEDIATE_BELOW && producer.immediate.is_some() && self.immediate_usable();
        (
            self.deliver(producer, producer.lane(immediate), record, topic).await,
            immediate,
        )
    }

    /// Sends `record` on `lane` of `producer` and waits for the broker's confirmation, within the
    /// queue and message timeouts.
    async fn deliver(
        &self,
        producer: &Arc<Producer_>,
        lane: &Client_,
        mut record: FutureRecord<'_, str, [u8]>,
        topic: &str,
    ) -> Result<(), SinkError> {
        let start = Instant::now();
        let queue_deadline = start + self.queue_timeout;
        // librdkafka checks message timeouts about once a second, so it may report a timeout up
        // to a second late; this bound keeps the answer within queue + message timeout.
        let confirm_deadline = start + self.queue_timeout + self.message_timeout;
        let delivery = loop {
            match lane.send_result(record) {
                Ok(delivery) => break delivery,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r))
                    if Instant::now() < queue_deadline =>
                {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err((e, _)) => return Err(self.failed(producer, topic, &e, confirm_deadline).await),
            }
        };
        let Ok(delivery) = tokio::time::timeout_at(confirm_deadline.into(), delivery).await else {
            return Err(SinkError::retryable(format!(
                "kafka sink {}: topic {topic}: the broker did not confirm within {}",
                self.name,
                humantime::format_duration(confirm_deadline - start)
            )));
        };
        match delivery {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(self.failed(producer, topic, &e, confirm_deadline).await),
            Err(_) => Err(SinkError::retryable(format!(
                "kafka sink {}: topic {topic}: the producer was closed before the broker confirmed",
                self.name
            ))),
        }
    }

    async fn failed(&self, producer: &Arc<Producer_>, topic: &str, error: &KafkaError, deadline: Instant) -> SinkError {
        if errors::is_unknown_topic(error) {
            self.unknown_topic(producer, topic, error, deadline).await
        } else {
            errors::publish_error(&self.name, topic, error)
        }
    }

    /// The answer for a topic librdkafka calls unknown. It is permanent (500) when nothing will
    /// create the topic: this producer does not ask for it, or the cluster does not create topics.
    /// A cluster that creates topics on first use is creating this one, and librdkafka reports it
    /// unknown meanwhile (at once after a broker outage, for instance): retryable (503). When the
    /// cluster cannot be asked before `deadline`, librdkafka's verdict stands.
    async fn unknown_topic(
        &self,
        producer: &Arc<Producer_>,
        topic: &str,
        error: &KafkaError,
        deadline: Instant,
    ) -> SinkError {
        let refused = errors::publish_error(&self.name, topic, error);
        if !asks_auto_create(self.client_config.get("allow.auto.create.topics")) {
            return SinkError::permanent(format!(
                "{} (the producer does not ask for it to be created: allow.auto.create.topics=false)",
                refused.message
            ));
        }
        match tokio::time::timeout_at(deadline.into(), self.cluster_creates_topics(producer, topic)).await {
            Ok(Some(true)) => SinkError::retryable(format!(
                "kafka sink {}: topic {topic} does not exist yet; the cluster creates it on first use",
                self.name
            )),
            Ok(Some(false)) => SinkError::permanent(format!(
                "{} (the cluster does not create topics: auto.create.topics.enable=false)",
                refused.message
            )),
            _ => refused,
        }
    }

    /// The cluster's `auto.create.topics.enable`, as a broker reports it; `None` when it cannot
    /// be read (no broker answers, or this client may not describe broker configs). An answer is
    /// reused for [`AUTO_CREATE_CACHE`], a failure (logged) for [`AUTO_CREATE_RETRY`]; concurrent
    /// callers wait for one lookup.
    async fn cluster_creates_topics(&self, producer: &Arc<Producer_>, topic: &str) -> Option<bool> {
        let mut cached = self.cluster_auto_create.lock().await;
        if let Some((at, value)) = *cached {
            let ttl = if value.is_some() {
                AUTO_CREATE_CACHE
            } else {
                AUTO_CREATE_RETRY
            };
            if at.elapsed() < ttl {
                return value;
            }
        }
        let value = match self.read_cluster_auto_create(producer, topic).await {
            Ok(v) => Some(v),
            Err(why) => {
                tracing::warn!(sink = %self.name, error = %why, "cannot read the cluster's auto.create.topics.enable; a missing topic is answered 500");
                None
            }
        };
        *cached = Some((Instant::now(), value));
        value
    }

    async fn read_cluster_auto_create(&self, producer: &Arc<Producer_>, topic: &str) -> Result<bool, AutoCreateError> {
        let p = producer.clone();
        let topic = topic.to_string();
        let broker = tokio::task::spawn_blocking(move || {
            p.client()
                .fetch_metadata(Some(&topic), HEALTH_PROBE_TIMEOUT)
                .map(|m| m.brokers().first().map(|b| b.id()))
        })
        .await
        .map_err(AutoCreateError::Join)?
        .map_err(AutoCreateError::Metadata)?
        .ok_or(AutoCreateError::NoBrokers)?;
        let admin = self
            .admin
            .get_or_init(|| {
                let mut config = self.client_config.clone();
                // A plain client: no producer id to acquire.
                config.set("enable.idempotence", "false");
                let context = BridgeContext {
                    sink: self.name.clone(),
                    security: self.security.clone(),
                };
                AdminClient::from_config_and_context(&config, context).map_err(|e| config_error(&e))
            })
            .as_ref()
            .map_err(|e| AutoCreateError::Admin(e.clone()))?;
        let options = AdminOptions::new().request_timeout(Some(HEALTH_PROBE_TIMEOUT));
        let resource = admin
            .describe_configs(&[ResourceSpecifier::Broker(broker)], &options)
            .await
            .map_err(AutoCreateError::Describe)?
            .into_iter()
            .next()
            .ok_or(AutoCreateError::Nothing)?
            .map_err(|code| AutoCreateError::Refused { broker, code })?;
        let value = resource
            .get("auto.create.topics.enable")
            .and_then(|entry| entry.value.as_deref())
            .ok_or(AutoCreateError::NoSetting)?;
        Ok(value.eq_ignore_ascii_case("true"))
    }

    async fn probe(&self) -> Result<(), SinkError> {
        let producer = self.current();
        if let Some((code, reason)) = producer.fatal_error() {
            // Replace it here too: an unready pod gets no traffic, so no publish would.
            self.renew_if_fatal(&producer);
            return Err(SinkError::retryable(format!(
                "kafka sink {}: producer failed fatally ({code:?}: {reason}); replaced by a new one",
                self.name
            )));
        }
        if let Some(failing) = self.failing_for().filter(|f| *f >= UNHEALTHY_AFTER) {
            // A broker that answers metadata requests does not make a producer that cannot
            // publish healthy. Replaced here too when stuck: an unready pod gets no traffic.
            let replaced = failing >= STUCK_AFTER
                && self.replace(
                    &producer,
                    &format!(
                        "no publish succeeded for {}",
                        humantime::format_duration(Duration::from_secs(failing.as_secs()))
                    ),
                );
            return Err(SinkError::retryable(format!(
                "kafka sink {}: no publish succeeded for {}{}",
                self.name,
                humantime::format_duration(Duration::from_secs(failing.as_secs())),
                if replaced {
                    "; the producer was replaced by a new one"
                } else {
                    ""
                }
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
        let result = match task.await {
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
        };
        match result {
            Ok(()) => {
                *self.security.lock().unwrap_or_else(|p| p.into_inner()) = None;
                Ok(())
            }
            // The cause first: it is what an operator must fix.
            Err(e) => Err(match self.security_failure() {
                Some(cause) => SinkError::retryable(format!("kafka sink {}: {cause}", self.name)),
                None => e,
            }),
        }
    }
}

/// Whether a producer with this `allow.auto.create.topics` asks the cluster to create topics
/// (librdkafka's default for producers is yes; it reads `true`, `t` and `1` as yes).
fn asks_auto_create(value: Option<&str>) -> bool {
    value.is_none_or(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "t" | "1"))
}

/// Builds the sink's producers (see [`Producers`]).
fn create(name: &str, client_config: &ClientConfig, security: &SecurityFailure) -> Result<Producer_, BuildError> {
    let build = |config: &ClientConfig| -> Result<Client_, BuildError> {
        config
            .create_with_context(BridgeContext {
                sink: name.to_string(),
                security: security.clone(),
            })
            .map_err(|e| BuildError::Producer(config_error(&e)))
    };
    let batching = build(client_config)?;
    let immediate = match immediate_config(client_config) {
        Some(config) => Some(build(&config)?),
        None => None,
    };
    Ok(Producers { batching, immediate })
}

/// The immediate lane's properties: the batching producer's with `linger.ms=0`; `None` when its
/// linger is 0 already (one producer does both).
pub fn immediate_config(batching: &ClientConfig) -> Option<ClientConfig> {
    let linger = batching
        .get("linger.ms")
        .or_else(|| batching.get("queue.buffering.max.ms"))
        .and_then(|v| v.trim().parse::<f64>().ok());
    if linger.is_some_and(|ms| ms <= 0.0) {
        return None;
    }
    let mut config = batching.clone();
    config.remove("queue.buffering.max.ms");
    config.set("linger.ms", "0");
    Some(config)
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
