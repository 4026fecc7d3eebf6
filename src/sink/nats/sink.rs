//! The NATS JetStream sink (see the module docs of `sink::nats`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::jetstream::{self, context::GetStreamErrorKind, publish::PublishAck, ErrorCode};
use async_nats::{ClientError, ConnectOptions, Event, HeaderMap, HeaderName, ServerError};
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::{Notify, Semaphore};

use super::batch::{dispatch, Batcher};
use super::config::{check_subject, read_credentials, subject_matches, NatsSinkConfig, StreamConfig, StreamMode};
use super::errors::classify;
use super::MSG_ID_HEADER;
use crate::sink::cloudevents::{self, Binding, HeaderMode};
use crate::sink::{Envelope, Sink, SinkError};

/// How long `health()` waits for JetStream to answer an account query (`/readyz` allows 2s).
const HEALTH_QUERY_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long creating or checking the stream may take.
const STREAM_SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// While fewer than this many other publishes are in flight, a publish goes straight to the
/// client; otherwise through the batch queue (see `batch`). As the Kafka sink's immediate lane.
const IMMEDIATE_BELOW: usize = 4;

/// State shared by the sink, the client's event callback and the stream task.
struct Shared {
    name: String,
    /// The configured servers, for messages (they hold no credentials: validation refuses those).
    servers: String,
    /// Why the client is not connected, from its last event.
    last_error: Mutex<Option<String>>,
    /// Why the stream could not be created or checked; `None` once it was.
    stream_error: Mutex<Option<String>>,
    /// Set once the stream was created or checked for the first time (or when none is managed).
    stream_checked: AtomicBool,
    /// Signalled on each (re)connection: the stream task checks the stream again.
    connected: Notify,
    closing: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn not_connected(&self) -> SinkError {
        SinkError::retryable(match lock(&self.last_error).clone() {
            Some(why) => format!("NATS is not connected ({}): {why}", self.servers),
            None => format!("NATS is not connected yet ({})", self.servers),
        })
    }

    /// The client's events: connection state for `health()`, and the reason of the last failure.
    fn on_event(&self, event: Event) {
        match event {
            Event::Connected => {
                *lock(&self.last_error) = None;
                tracing::info!(sink = %self.name, "connected to NATS");
                self.connected.notify_one();
            }
            Event::Disconnected => {
                lock(&self.last_error).get_or_insert_with(|| "the connection was lost".into());
                tracing::warn!(sink = %self.name, "lost the NATS connection; reconnecting");
            }
            Event::ClientError(ClientError::Other(why)) => {
                tracing::warn!(sink = %self.name, error = %why, "cannot connect to NATS");
                *lock(&self.last_error) = Some(format!("last attempt: {why}"));
            }
            Event::ClientError(other) => {
                tracing::warn!(sink = %self.name, error = %other, "NATS client error");
            }
            Event::ServerError(ServerError::AuthorizationViolation) => {
                tracing::warn!(sink = %self.name, "the NATS server refused the sink's credentials");
                *lock(&self.last_error) = Some("authorization violation: the server refused the credentials".into());
            }
            Event::ServerError(e) => tracing::warn!(sink = %self.name, error = %e, "NATS server error"),
            Event::LameDuckMode => {
                tracing::info!(sink = %self.name, "the NATS server is shutting down (lame duck mode)")
            }
            other => tracing::debug!(sink = %self.name, event = %other, "NATS client event"),
        }
    }
}

/// The NATS JetStream sink.
pub struct NatsSink {
    shared: Arc<Shared>,
    client: async_nats::Client,
    js: jetstream::Context,
    ack_timeout: Duration,
    permits: Arc<Semaphore>,
    headers: HeaderMode,
    stream_task: Option<tokio::task::JoinHandle<()>>,
    max_in_flight: usize,
    /// Where publishes go while many are in flight (see `batch`).
    batcher: Arc<Batcher>,
    dispatch_task: tokio::task::JoinHandle<()>,
}

impl Drop for NatsSink {
    fn drop(&mut self) {
        if let Some(task) = &self.stream_task {
            task.abort();
        }
        self.dispatch_task.abort();
    }
}

/// The client options of `config`: credentials, TLS, timeouts, backoff, and `shared` informed of
/// every connection event.
fn connect_options(config: &NatsSinkConfig, shared: Arc<Shared>) -> Result<ConnectOptions, String> {
    let max_delay = config.reconnect_max_delay;
    let mut options = ConnectOptions::new()
        .name("hookbridge")
        .retry_on_initial_connect()
        .connection_timeout(config.connect_timeout)
        .reconnect_delay_callback(move |attempts| {
            if attempts <= 1 {
                return Duration::ZERO;
            }
            let exp = u32::try_from(attempts - 2).unwrap_or(u32::MAX).min(16);
            Duration::from_millis(100u64 << exp).min(max_delay)
        })
        .event_callback(move |event| {
            let shared = shared.clone();
            async move { shared.on_event(event) }
        });
    let text = |key: &str, source: &crate::fields::SecretSource| -> Result<String, String> {
        let secret = source.load().map_err(|e| format!("{key}: {e}"))?;
        String::from_utf8(secret.expose().to_vec()).map_err(|_| format!("{key}: not valid UTF-8"))
    };
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        options = options.user_and_password(user.clone(), text("password", password)?);
    }
    if let Some(token) = &config.token {
        options = options.token(text("token", token)?);
    }
    if let Some(seed) = &config.nkey_seed {
        options = options.nkey(text("nkey_seed", seed)?);
    }
    if let Some(file) = &config.credentials_file {
        let creds = read_credentials(file).map_err(|e| format!("credentials_file: {e}"))?;
        options = options
            .credentials(&creds)
            .map_err(|_| format!("credentials_file: {} is not a NATS credentials file", file.display()))?;
    }
    if let Some(tls) = &config.tls {
        let tls_config = crate::sink::tls::client_config(
            tls.ca_file.as_deref(),
            tls.cert_file.as_deref(),
            tls.key_file.as_deref(),
        )
        .map_err(|(key, e)| format!("tls.{key}: {e}"))?;
        options = options.require_tls(true).tls_client_config(tls_config);
    }
    Ok(options)
}

/// The sink's JetStream context. The client's own bound on publishes awaiting an acknowledgement
/// is set well above `max_in_flight` (which bounds the sink), and when it is reached a publish
/// fails at once (retryable) instead of waiting: the batch dispatcher sends many publishes in a
/// row, and one waiting for a permit would hold up every publish queued behind it. Abandoned
/// acknowledgements are awaited no longer than `ack_timeout` either.
pub fn context(client: &async_nats::Client, ack_timeout: Duration, max_in_flight: usize) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(ack_timeout)
        .ack_timeout(ack_timeout)
        .max_ack_inflight(max_in_flight.saturating_mul(2).max(5_000))
        .backpressure_on_inflight(false)
        .build(client.clone())
}

impl NatsSink {
    /// Starts the client and, when the config manages a stream, the task that creates or checks
    /// it after each connection. Does not wait for a server: one that is down is not an error
    /// here, the client connects when it can.
    pub async fn new(name: &str, config: &NatsSinkConfig, ack_timeout: Duration) -> Result<NatsSink, String> {
        let shared = Arc::new(Shared {
            name: name.to_string(),
            servers: config.servers.join(","),
            last_error: Mutex::new(None),
            stream_error: Mutex::new(
                config
                    .stream
                    .as_ref()
                    .map(|s| format!("stream {} not checked yet", s.name)),
            ),
            stream_checked: AtomicBool::new(config.stream.is_none()),
            connected: Notify::new(),
            closing: AtomicBool::new(false),
        });
        let options = connect_options(config, shared.clone())?;
        let client = options
            .connect(&config.servers)
            .await
            .map_err(|e| format!("cannot start the NATS client: {e}"))?;
        let js = context(&client, ack_timeout, config.max_in_flight);
        tracing::debug!(sink = name, servers = %shared.servers, auth = %config.auth_label(), "starting the NATS sink");
        let stream_task = config.stream.clone().map(|stream| {
            tokio::spawn(manage_stream(
                shared.clone(),
                js.clone(),
                stream,
                config.reconnect_max_delay,
            ))
        });
        let batcher = Batcher::new();
        let dispatch_task = tokio::spawn(dispatch(batcher.clone(), js.clone()));
        Ok(NatsSink {
            shared,
            client,
            js,
            ack_timeout,
            permits: Arc::new(Semaphore::new(config.max_in_flight)),
            headers: config.headers,
            stream_task,
            max_in_flight: config.max_in_flight,
            batcher,
            dispatch_task,
        })
    }

    /// The message headers: `Nats-Msg-Id`, the `stripe-*` ones, and the CloudEvents ones when
    /// configured. A value with a line break cannot be a NATS header: permanent.
    fn message_headers(&self, envelope: &Envelope) -> Result<HeaderMap, SinkError> {
        let mut headers = HeaderMap::new();
        let mut add = |name: &'static str, value: &str| {
            if value.bytes().any(|b| b == b'\r' || b == b'\n') {
                return Err(SinkError::permanent(format!(
                    "header {name} holds a line break, which NATS headers cannot carry"
                )));
            }
            // Every name here is one of hookbridge's own constants, valid by construction: no
            // copy of it, and no check of it per message.
            headers.insert(HeaderName::from_static(name), value);
            Ok(())
        };
        add(MSG_ID_HEADER, &envelope.meta().id)?;
        for (name, value) in envelope.headers() {
            add(name, value)?;
        }
        if self.headers == HeaderMode::Cloudevents {
            for (name, value) in cloudevents::headers(envelope, Binding::Nats) {
                add(name, &value)?;
            }
        }
        Ok(headers)
    }

    fn ready(&self) -> Result<(), SinkError> {
        if self.shared.closing.load(Ordering::SeqCst) {
            return Err(SinkError::retryable("the NATS sink is shutting down"));
        }
        if self.client.connection_state() != State::Connected {
            return Err(self.shared.not_connected());
        }
        if !self.shared.stream_checked.load(Ordering::SeqCst) {
            let why = lock(&self.shared.stream_error).clone().unwrap_or_default();
            return Err(SinkError::retryable(format!("the NATS sink is not ready: {why}")));
        }
        Ok(())
    }

    async fn publish_inner(&self, subject: &str, envelope: &Envelope) -> Result<(), SinkError> {
        let deadline = tokio::time::Instant::now() + self.ack_timeout;
        check_subject(subject, false).map_err(|e| SinkError::permanent(format!("invalid NATS subject: {e}")))?;
        let headers = self.message_headers(envelope)?;
        self.ready()?;
        let _permit = match tokio::time::timeout_at(deadline, self.permits.acquire()).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(SinkError::retryable("the NATS sink is shutting down")),
            Err(_) => {
                return Err(SinkError::retryable(
                    "too many publishes awaiting JetStream acknowledgements (max_in_flight)",
                ))
            }
        };
        // The permit held, this publish counts among those in flight.
        if self.max_in_flight - self.permits.available_permits() > IMMEDIATE_BELOW {
            let answer = self
                .batcher
                .push(subject.to_string(), headers, envelope.payload().clone());
            let acknowledged = async {
                match answer.await {
                    Ok(Ok(ack)) => ack.await.map_err(|e| classify(subject, &e)),
                    Ok(Err(e)) => Err(classify(subject, &e)),
                    Err(_) => Err(SinkError::retryable("the NATS sink is shutting down")),
                }
            };
            return match tokio::time::timeout_at(deadline, acknowledged).await {
                Ok(Ok(ack)) => self.stored(subject, &ack),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(self.not_acknowledged(subject)),
            };
        }
        let publish = async {
            let ack = self
                .js
                .publish_with_headers(subject.to_string(), headers, envelope.payload().clone())
                .await
                .map_err(|e| classify(subject, &e))?;
            ack.await.map_err(|e| classify(subject, &e))
        };
        match tokio::time::timeout_at(deadline, publish).await {
            Ok(Ok(ack)) => self.stored(subject, &ack),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(self.not_acknowledged(subject)),
        }
    }

    /// A publish the stream acknowledged: stored (or already held, which is as good).
    fn stored(&self, subject: &str, ack: &PublishAck) -> Result<(), SinkError> {
        if ack.duplicate {
            tracing::debug!(
                sink = %self.shared.name,
                subject,
                stream = %ack.stream,
                "JetStream already held this event id: stored once"
            );
        }
        Ok(())
    }

    fn not_acknowledged(&self, subject: &str) -> SinkError {
        SinkError::retryable(format!(
            "JetStream did not acknowledge the message to {subject} within ack_timeout"
        ))
    }

    /// How many publishes went through the batch queue (many in flight) rather than straight to
    /// the client; for tests and diagnostics.
    #[doc(hidden)]
    pub fn batched_publishes(&self) -> u64 {
        self.batcher.queued()
    }

    async fn health_inner(&self) -> Result<(), SinkError> {
        if self.shared.closing.load(Ordering::SeqCst) {
            return Err(SinkError::retryable("the NATS sink is shutting down"));
        }
        if self.client.connection_state() != State::Connected {
            return Err(self.shared.not_connected());
        }
        if let Some(why) = lock(&self.shared.stream_error).clone() {
            return Err(SinkError::retryable(why));
        }
        match tokio::time::timeout(HEALTH_QUERY_TIMEOUT, self.js.query_account()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(SinkError::retryable(format!("JetStream does not answer: {e}"))),
            Err(_) => Err(SinkError::retryable(
                "JetStream did not answer an account query in time",
            )),
        }
    }
}

/// Creates or checks the stream after every (re)connection, retrying until it succeeds; the
/// outcome is what `health()` reports.
async fn manage_stream(shared: Arc<Shared>, js: jetstream::Context, stream: StreamConfig, retry: Duration) {
    loop {
        shared.connected.notified().await;
        loop {
            let outcome = match tokio::time::timeout(STREAM_SETUP_TIMEOUT, ensure_stream(&js, &stream)).await {
                Ok(r) => r,
                Err(_) => Err(format!("stream {}: JetStream did not answer in time", stream.name)),
            };
            match outcome {
                Ok(()) => {
                    *lock(&shared.stream_error) = None;
                    shared.stream_checked.store(true, Ordering::SeqCst);
                    break;
                }
                Err(e) => {
                    tracing::warn!(sink = %shared.name, error = %e, "NATS stream setup failed; retrying");
                    *lock(&shared.stream_error) = Some(e);
                    // Publishes go ahead: the server says whether the subject is stored.
                    shared.stream_checked.store(true, Ordering::SeqCst);
                    tokio::select! {
                        () = tokio::time::sleep(retry) => {}
                        () = shared.connected.notified() => {}
                    }
                }
            }
        }
    }
}

impl StreamConfig {
    /// The stream as JetStream creates it: these subjects, replicas, duplicate window and limits,
    /// stored in files.
    pub fn jetstream_config(&self) -> jetstream::stream::Config {
        jetstream::stream::Config {
            name: self.name.clone(),
            subjects: self.subjects.clone(),
            num_replicas: self.replicas,
            duplicate_window: self.duplicate_window,
            max_message_size: i32::try_from(self.max_msg_size).unwrap_or(i32::MAX),
            max_age: self.max_age,
            max_bytes: i64::try_from(self.max_bytes).unwrap_or(i64::MAX),
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        }
    }
}

/// Creates the stream when it is missing (mode `create`), and checks that it stores every
/// configured subject.
async fn ensure_stream(js: &jetstream::Context, want: &StreamConfig) -> Result<(), String> {
    match js.get_stream(&want.name).await {
        Ok(stream) => {
            let have = &stream.cached_info().config.subjects;
            let missing: Vec<&str> = want
                .subjects
                .iter()
                .filter(|s| !have.iter().any(|h| subject_matches(h, s)))
                .map(String::as_str)
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "stream {} stores [{}], not {}",
                    want.name,
                    have.join(", "),
                    missing.join(", ")
                ))
            }
        }
        Err(e) => match e.kind() {
            GetStreamErrorKind::JetStream(api) if api.error_code() == ErrorCode::STREAM_NOT_FOUND => {
                if want.mode == StreamMode::Check {
                    return Err(format!("stream {} does not exist (stream.mode is check)", want.name));
                }
                js.create_stream(want.jetstream_config())
                    .await
                    .map(|_| tracing::info!(stream = %want.name, "created the JetStream stream"))
                    .map_err(|e| format!("cannot create stream {}: {e}", want.name))
            }
            _ => Err(format!("cannot look up stream {}: {e}", want.name)),
        },
    }
}

impl Sink for NatsSink {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn kind(&self) -> &'static str {
        "nats"
    }

    fn publish<'a>(&'a self, destination: &'a str, envelope: &'a Envelope) -> BoxFuture<'a, Result<(), SinkError>> {
        self.publish_inner(destination, envelope).boxed()
    }

    fn health(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        self.health_inner().boxed()
    }

    fn close(&self, deadline: Instant) -> BoxFuture<'_, Result<(), SinkError>> {
        async move {
            self.shared.closing.store(true, Ordering::SeqCst);
            if let Some(task) = &self.stream_task {
                task.abort();
            }
            if self.client.connection_state() != State::Connected {
                return Ok(());
            }
            let deadline = tokio::time::Instant::from_std(deadline);
            match tokio::time::timeout_at(deadline, self.client.flush()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(SinkError::retryable(format!(
                    "flushing the NATS connection failed: {e}"
                ))),
                Err(_) => Err(SinkError::retryable("flushing the NATS connection timed out")),
            }
        }
        .boxed()
    }
}
