//! The `rabbitmq` sink: publishes each event to one exchange with publisher confirms, and
//! answers only after the broker confirmed it.
//!
//! - A supervisor task owns the connection: it connects within `connect_timeout`, declares the
//!   exchange (only when a passive check says it is missing) and the configured queues and
//!   bindings, and reconnects with backoff after the connection dies. The sink is built even when
//!   the broker is down; until it connects, publishes fail as retryable and `health()` says why.
//! - Every publish is `mandatory` and persistent on a channel in confirm mode. Success is an
//!   `Ack` that carries no returned message; an `Ack` carrying one means the message was
//!   unroutable (permanent), a `Nack`, a closed channel or a lost connection is retryable.
//! - Concurrency comes from a pool of channels, each carrying **one** publish at a time, up to
//!   `max_in_flight` at once. Pipelining many publishes on one channel would be cheaper, but lapin
//!   hands a returned message to whichever pending confirm its `multiple` ack completes first
//!   (an unordered walk), so under pipelining an unroutable message could be confirmed as
//!   delivered while a routable one is reported returned. One publish per channel makes the
//!   return that precedes an ack unambiguously that publish's.
//! - Each publish runs in its own task, so a request that gives up at `ack_timeout` never leaves a
//!   confirm half-awaited on a channel that is then reused; `close()` waits for those tasks.

pub mod config;
mod connection;
mod message;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use futures::future::BoxFuture;
use futures::FutureExt;
use lapin::options::BasicPublishOptions;
use tokio::sync::{watch, Notify, Semaphore};

use self::config::{redact_url, RabbitMqSinkConfig};
use self::connection::Conn;
pub use self::connection::{tls_connector, ConnectError, InvalidUrl, TlsFileError};
use super::{Envelope, Sink, SinkError};

/// Why the sink could not be built (a broker being down is not one of them).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Url(#[from] connection::InvalidUrl),
    #[error("password: {0}")]
    Password(#[source] crate::fields::SecretError),
    #[error("password: not valid UTF-8")]
    PasswordNotUtf8,
    #[error("tls.{}: {}", .0.key, .0)]
    Tls(#[source] connection::TlsFileError),
}

/// A confirm still missing this long after its publish is given up on and its channel dropped,
/// even though the request stopped waiting at `ack_timeout` long before.
const CONFIRM_GIVE_UP: Duration = Duration::from_secs(30);

/// State shared by the sink, its supervisor and its publish tasks.
struct Shared {
    name: String,
    /// `host:port/vhost`, for logs and errors (never the credentials).
    endpoint: String,
    /// The live connection, when there is one.
    current: ArcSwapOption<Conn>,
    /// TLS settings of `amqps://` connections, when the config has a `tls` block.
    tls: Option<lapin::tcp::RustlsConnector>,
    /// Why there is no usable connection, for `health()` and 503 messages.
    last_error: Mutex<Option<String>>,
    /// Asks the supervisor to look at the connection now.
    wake: Arc<Notify>,
    /// Tells the supervisor to stop.
    stop: watch::Sender<bool>,
    /// Publish tasks not yet settled (including those whose request stopped waiting).
    in_flight: AtomicUsize,
    settled: Notify,
    closing: AtomicBool,
    /// A publish found the exchange missing (deleted while connected): the supervisor declares
    /// the topology again on the live connection.
    topology_lost: AtomicBool,
    /// Why the last attempt to declare a missing exchange again failed; cleared by a success or
    /// a new connection. While set, a missing exchange is a permanent failure.
    topology_error: Mutex<Option<String>>,
}

impl Shared {
    fn set_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }

    fn set_topology_error(&self, e: Option<String>) {
        *self.topology_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }

    fn topology_error(&self) -> Option<String> {
        self.topology_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn not_connected(&self) -> SinkError {
        let why = self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
        SinkError::retryable(match why {
            Some(why) => format!("RabbitMQ is not connected: {why}"),
            None => format!("RabbitMQ is not connected yet ({})", self.endpoint),
        })
    }
}

/// Counts a publish task as outstanding until dropped.
struct InFlight(Arc<Shared>);

impl InFlight {
    fn enter(shared: &Arc<Shared>) -> Self {
        shared.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(shared.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.settled.notify_waiters();
        }
    }
}

/// The RabbitMQ sink. See the module docs.
pub struct AmqpSink {
    shared: Arc<Shared>,
    exchange: Arc<str>,
    ack_timeout: Duration,
    permits: Arc<Semaphore>,
    /// Whether messages also carry the CloudEvents `cloudEvents:*` headers.
    headers: crate::sink::cloudevents::HeaderMode,
}

impl AmqpSink {
    /// Starts the sink and its supervisor. Does not wait for the broker: a broker that is down
    /// is not an error here, the sink connects when it can.
    pub async fn new(name: &str, config: &RabbitMqSinkConfig, ack_timeout: Duration) -> Result<AmqpSink, BuildError> {
        let mut uri = connection::parse_uri(&config.url, config.connect_timeout)?;
        if let Some(source) = &config.password {
            let secret = source.load().map_err(BuildError::Password)?;
            uri.authority.userinfo.password =
                String::from_utf8(secret.expose().to_vec()).map_err(|_| BuildError::PasswordNotUtf8)?;
        }
        let endpoint = format!("{}:{}/{}", uri.authority.host, uri.authority.port, uri.vhost);
        let tls = match &config.tls {
            Some(tls) => Some(tls_connector(tls).map_err(BuildError::Tls)?),
            None => None,
        };
        let (stop, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            name: name.to_string(),
            endpoint,
            tls,
            current: ArcSwapOption::empty(),
            last_error: Mutex::new(None),
            wake: Arc::new(Notify::new()),
            stop,
            in_flight: AtomicUsize::new(0),
            settled: Notify::new(),
            closing: AtomicBool::new(false),
            topology_lost: AtomicBool::new(false),
            topology_error: Mutex::new(None),
        });
        tracing::debug!(sink = name, url = %redact_url(&config.url), "starting the RabbitMQ sink");
        tokio::spawn(connection::supervise(shared.clone(), uri, config.clone()));
        Ok(AmqpSink {
            shared,
            exchange: Arc::from(config.exchange.as_str()),
            ack_timeout,
            permits: Arc::new(Semaphore::new(config.max_in_flight)),
            headers: config.headers,
        })
    }

    /// The connection to publish on, or why there is none.
    fn connection(&self) -> Result<Arc<Conn>, SinkError> {
        if self.shared.closing.load(Ordering::SeqCst) {
            return Err(SinkError::retryable("the RabbitMQ sink is shutting down"));
        }
        let Some(conn) = self.shared.current.load_full() else {
            return Err(self.shared.not_connected());
        };
        if !conn.usable() {
            self.shared.wake.notify_one();
            return Err(self.shared.not_connected());
        }
        if conn.blocked() {
            return Err(SinkError::retryable(
                "RabbitMQ is blocking publishers (memory or disk alarm)",
            ));
        }
        Ok(conn)
    }

    async fn publish_inner(&self, destination: &str, envelope: &Envelope) -> Result<(), SinkError> {
        let deadline = tokio::time::Instant::now() + self.ack_timeout;
        message::short("routing key", destination)?;
        let properties = message::properties(envelope, self.headers)?;
        let conn = self.connection()?;
        let permit = match tokio::time::timeout_at(deadline, self.permits.clone().acquire_owned()).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(SinkError::retryable("the RabbitMQ sink is shutting down")),
            Err(_) => {
                return Err(SinkError::retryable(
                    "too many publishes awaiting RabbitMQ confirms (max_in_flight)",
                ))
            }
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let guard = InFlight::enter(&self.shared);
        let exchange = self.exchange.clone();
        let routing_key = destination.to_string();
        let payload = envelope.payload().clone();
        let message_id = envelope.meta().id.clone();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let result = match publish_one(&conn, &exchange, &routing_key, &payload, properties, &message_id).await {
                Ok(()) => Ok(()),
                Err(failed) if failed.no_exchange && !exchange.is_empty() => {
                    // The sink owns the exchange's declaration: declare it again and let Stripe's
                    // retry through, instead of refusing every event until the next reconnect.
                    // Unless declaring it again already failed: then it is missing for good.
                    shared.topology_lost.store(true, Ordering::SeqCst);
                    Err(match shared.topology_error() {
                        None => SinkError::retryable(format!(
                            "exchange `{exchange}` does not exist any more; declaring it again"
                        )),
                        Some(why) => SinkError::permanent(format!(
                            "exchange `{exchange}` does not exist and cannot be declared again: {why}"
                        )),
                    })
                }
                Err(failed) => Err(failed.error),
            };
            if result.as_ref().is_err_and(|e| e.is_retryable()) {
                shared.wake.notify_one();
            }
            drop(permit);
            drop(guard);
            let _ = tx.send(result);
        });
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(SinkError::retryable("the publish task ended without an answer")),
            Err(_) => Err(SinkError::retryable(format!(
                "RabbitMQ did not confirm within {}",
                humantime::format_duration(self.ack_timeout)
            ))),
        }
    }
}

/// Publishes on a channel of its own and waits for the confirm (bounded by [`CONFIRM_GIVE_UP`]).
async fn publish_one(
    conn: &Conn,
    exchange: &str,
    routing_key: &str,
    payload: &[u8],
    properties: lapin::BasicProperties,
    message_id: &str,
) -> Result<(), message::Failure> {
    let channel = conn.checkout().await.map_err(|e| message::publish_failure(&e))?;
    let options = BasicPublishOptions {
        mandatory: true,
        immediate: false,
    };
    let confirm = match channel
        .basic_publish(exchange, routing_key, options, payload, properties)
        .await
    {
        Ok(c) => c,
        Err(e) => return Err(message::publish_failure(&e)),
    };
    match tokio::time::timeout(CONFIRM_GIVE_UP, confirm).await {
        Ok(answer) => {
            let settled = answer.is_ok();
            let result = message::confirmation(answer, message_id);
            if settled {
                conn.checkin(channel);
            }
            result
        }
        Err(_) => {
            // Never reuse a channel with a confirm outstanding; closing it settles the confirm.
            tokio::spawn(async move {
                let _ = channel.close(200, "confirm overdue").await;
            });
            Err(SinkError::retryable("RabbitMQ did not confirm the message").into())
        }
    }
}

impl Sink for AmqpSink {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn kind(&self) -> &'static str {
        "rabbitmq"
    }

    fn publish<'a>(&'a self, destination: &'a str, envelope: &'a Envelope) -> BoxFuture<'a, Result<(), SinkError>> {
        self.publish_inner(destination, envelope).boxed()
    }

    fn health(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        futures::future::ready(self.connection().map(|_| ())).boxed()
    }

    fn close(&self, deadline: Instant) -> BoxFuture<'_, Result<(), SinkError>> {
        async move {
            self.shared.closing.store(true, Ordering::SeqCst);
            // Wait for outstanding confirms.
            let waited = tokio::time::timeout_at(deadline.into(), async {
                loop {
                    let settled = self.shared.settled.notified();
                    if self.shared.in_flight.load(Ordering::SeqCst) == 0 {
                        break;
                    }
                    settled.await;
                }
            })
            .await;
            let _ = self.shared.stop.send(true);
            self.permits.close();
            let conn = self.shared.current.swap(None);
            let closed = match conn {
                Some(conn) => conn.close(deadline).await,
                None => Ok(()),
            };
            if waited.is_err() {
                let n = self.shared.in_flight.load(Ordering::SeqCst);
                return Err(SinkError::retryable(format!(
                    "{n} publishes were still awaiting a RabbitMQ confirm at the deadline"
                )));
            }
            closed
        }
        .boxed()
    }
}

impl Drop for AmqpSink {
    fn drop(&mut self) {
        let _ = self.shared.stop.send(true);
    }
}
