//! One AMQP connection at a time, kept up by a supervisor task: connect with a bound, declare the
//! topology, hand out confirm-mode channels, notice when the connection dies, reconnect with
//! backoff.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::options::{ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::tcp::{HandshakeResult, RustlsConnector, TcpStream};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

use super::config::{AmqpTlsConfig, RabbitMqSinkConfig};
use super::message::{describe, is_not_found};
use super::Shared;
use crate::sink::SinkError;

/// Heartbeat proposed when the URL sets none, so a silently dead peer is noticed within ~20 s.
const DEFAULT_HEARTBEAT_SECS: u16 = 10;
/// Frame size asked of the broker unless the URL sets `frame_max`. lapin keeps 32 frames of
/// buffer each way, so RabbitMQ's 128 KiB default costs about 8 MiB per connection; a Stripe
/// event fits one 16 KiB frame, and larger ones are split, at no measured cost in throughput.
const DEFAULT_FRAME_MAX: u32 = 16 * 1024;
/// First pause between connection attempts; it doubles up to `reconnect_max_delay`.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// How often the supervisor looks at the connection when nothing woke it.
const CHECK_EVERY: Duration = Duration::from_millis(250);
/// The topology is declared again at most this often while publishes find the exchange missing.
const REDECLARE_EVERY: Duration = Duration::from_millis(500);
/// ... and at most this often after declaring it again failed.
const REDECLARE_RETRY: Duration = Duration::from_secs(5);
/// Repeated connection failures are logged at warn at most this often.
const WARN_EVERY: Duration = Duration::from_secs(30);

/// A live connection and its idle confirm-mode channels.
pub struct Conn {
    pub connection: Connection,
    /// Channels with no publish outstanding. A channel carries one publish at a time (see
    /// `super` for why), so this pool holds at most `max_in_flight` channels.
    idle: Mutex<Vec<Channel>>,
}

impl Conn {
    pub fn usable(&self) -> bool {
        self.connection.status().connected()
    }

    pub fn blocked(&self) -> bool {
        self.connection.status().blocked()
    }

    /// An idle channel, or a new one in confirm mode.
    pub async fn checkout(&self) -> Result<Channel, lapin::Error> {
        loop {
            let next = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match next {
                Some(ch) if ch.status().connected() && ch.status().confirm() => return Ok(ch),
                Some(_) => continue,
                None => break,
            }
        }
        let ch = self.connection.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(ch)
    }

    /// Gives back a channel whose publish is settled.
    pub fn checkin(&self, ch: Channel) {
        if ch.status().connected() {
            self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(ch);
        }
    }

    /// Closes the connection politely, giving up at `deadline`.
    pub async fn close(&self, deadline: Instant) -> Result<(), SinkError> {
        if !self.usable() {
            return Ok(());
        }
        match tokio::time::timeout_at(
            deadline.into(),
            self.connection.close(200, "hookbridge is shutting down"),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(SinkError::retryable(format!(
                "closing the connection: {}",
                describe(&e)
            ))),
            Err(_) => Err(SinkError::retryable("the connection did not close before the deadline")),
        }
    }
}

/// Reads the URL and sets the defaults the sink relies on.
///
/// lapin opens the TCP connection in a blocking thread that outlives a connect future dropped at
/// `connect_timeout`; without a TCP timeout of its own, each attempt against an address that drops
/// packets would leave a thread waiting minutes for the kernel to give up. So the URL's
/// `connection_timeout` defaults to `connect_timeout`.
pub fn parse_uri(url: &str, connect_timeout: Duration) -> Result<AMQPUri, InvalidUrl> {
    let mut uri: AMQPUri = url.parse().map_err(|e: String| InvalidUrl(e.replace(url, "<url>")))?;
    if uri.query.heartbeat.is_none() {
        uri.query.heartbeat = Some(DEFAULT_HEARTBEAT_SECS);
    }
    if uri.query.frame_max.is_none() {
        uri.query.frame_max = Some(DEFAULT_FRAME_MAX);
    }
    if uri.query.connection_timeout.is_none() {
        uri.query.connection_timeout = Some(connect_timeout.as_millis().clamp(1, u64::MAX as u128) as u64);
    }
    Ok(uri)
}

/// Why the sink's URL cannot be used; never echoes the URL (it may hold a password).
#[derive(Debug, thiserror::Error)]
#[error("invalid url: {0}")]
pub struct InvalidUrl(String);

/// A `tls` file of the sink that cannot be used, with the key that names it (`ca_file`,
/// `cert_file`, `key_file`).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct TlsFileError {
    pub key: &'static str,
    message: String,
}

/// Why connecting, or declaring the topology, failed; displayed as the one line that health
/// checks and logs show.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect to {endpoint}: {}", connect_failure(&describe(.source)))]
    Connect {
        endpoint: String,
        #[source]
        source: lapin::Error,
    },
    #[error("cannot connect to {endpoint}: no answer within {}", humantime::format_duration(*.within))]
    NoAnswer { endpoint: String, within: Duration },
    #[error("topology not declared within {}", humantime::format_duration(*.within))]
    NotDeclaredInTime { within: Duration },
    /// `step` says what was being done, e.g. "cannot declare queue `q`".
    #[error("{step}: {}", describe(.source))]
    Declare {
        step: String,
        #[source]
        source: lapin::Error,
    },
}

fn declare_error(step: impl Into<String>) -> impl FnOnce(lapin::Error) -> ConnectError {
    let step = step.into();
    move |source| ConnectError::Declare { step, source }
}

/// The TLS connector of an `amqps://` connection from the sink's `tls` settings: only the CAs of
/// `ca_file` are trusted when it is set (else the system's roots), and the client certificate is
/// presented when set. An error names the `tls` key at fault.
pub fn tls_connector(tls: &AmqpTlsConfig) -> Result<RustlsConnector, TlsFileError> {
    crate::sink::tls::client_config(
        tls.ca_file.as_deref(),
        tls.cert_file.as_deref(),
        tls.key_file.as_deref(),
    )
    .map(RustlsConnector::from)
    .map_err(|(key, message)| TlsFileError { key, message })
}

/// Opens the TCP connection and, for `amqps://`, the TLS session with `connector` (lapin's own
/// connect, with our TLS settings). The result type is the one lapin's connector asks for.
#[allow(clippy::result_large_err)]
fn connect_with(uri: &AMQPUri, connector: &RustlsConnector) -> HandshakeResult {
    let addr = format!("{}:{}", uri.authority.host, uri.authority.port);
    let stream = match uri.query.connection_timeout {
        Some(ms) => TcpStream::connect_timeout(addr, Duration::from_millis(ms)),
        None => TcpStream::connect(addr),
    }?;
    let stream = match uri.scheme {
        AMQPScheme::AMQPS => stream.into_rustls(connector, &uri.authority.host)?,
        AMQPScheme::AMQP => stream,
    };
    stream.set_nonblocking(true)?;
    Ok(stream)
}

#[allow(clippy::result_large_err)] // the closure returns lapin's HandshakeResult
async fn open(
    uri: &AMQPUri,
    properties: ConnectionProperties,
    tls: Option<&RustlsConnector>,
) -> lapin::Result<Connection> {
    match tls {
        Some(connector) => {
            let connector = connector.clone();
            Connection::connector(
                uri.clone(),
                Box::new(move |uri| connect_with(uri, &connector)),
                properties,
            )
            .await
        }
        None => Connection::connect_uri(uri.clone(), properties).await,
    }
}

/// Names the usual causes of a failed connection before the client's own words: a broker
/// certificate the client does not trust, a client certificate the broker refused, a refused login.
pub fn connect_failure(detail: &str) -> String {
    let d = detail.to_ascii_lowercase();
    let cause = if d.contains("invalid peer certificate") {
        if d.contains("expired") {
            "broker certificate expired"
        } else {
            "certificate not trusted (the broker's certificate is not signed by a CA in tls.ca_file or the system's roots)"
        }
    } else if d.contains("alert") && (d.contains("certificate") || d.contains("unknownca") || d.contains("unknown ca"))
    {
        "client certificate refused by the broker"
    } else if d.contains("access_refused") || d.contains("authentication") {
        "authentication failed"
    } else {
        return detail.to_string();
    };
    format!("{cause}: {detail}")
}

fn exchange_kind(name: &str) -> ExchangeKind {
    match name {
        "topic" => ExchangeKind::Topic,
        "direct" => ExchangeKind::Direct,
        "fanout" => ExchangeKind::Fanout,
        "headers" => ExchangeKind::Headers,
        other => ExchangeKind::Custom(other.to_string()),
    }
}

/// Connects, declares the topology and opens the first confirm channel, all within `deadline`.
async fn connect(shared: &Shared, uri: &AMQPUri, config: &RabbitMqSinkConfig) -> Result<Conn, ConnectError> {
    let deadline = Instant::now() + config.connect_timeout;
    let properties =
        ConnectionProperties::default().with_connection_name(LongString::from(format!("hookbridge/{}", shared.name)));
    let connection = match tokio::time::timeout_at(deadline.into(), open(uri, properties, shared.tls.as_ref())).await {
        Ok(Ok(c)) => c,
        Ok(Err(source)) => {
            return Err(ConnectError::Connect {
                endpoint: shared.endpoint.clone(),
                source,
            })
        }
        Err(_) => {
            return Err(ConnectError::NoAnswer {
                endpoint: shared.endpoint.clone(),
                within: config.connect_timeout,
            })
        }
    };
    let wake = shared.wake.clone();
    connection.on_error(move |_| wake.notify_one());
    let conn = Conn {
        connection,
        idle: Mutex::new(Vec::new()),
    };
    let declared = tokio::time::timeout_at(deadline.into(), declare(&conn, config)).await;
    let result = match declared {
        Ok(Ok(ch)) => {
            conn.checkin(ch);
            return Ok(conn);
        }
        Ok(Err(e)) => e,
        Err(_) => ConnectError::NotDeclaredInTime {
            within: config.connect_timeout,
        },
    };
    let _ = conn.close(Instant::now() + Duration::from_secs(1)).await;
    Err(result)
}

/// Declares the exchange (unless it exists), the queues and their bindings; returns a channel
/// in confirm mode.
async fn declare(conn: &Conn, config: &RabbitMqSinkConfig) -> Result<Channel, ConnectError> {
    let open = || async {
        conn.connection
            .create_channel()
            .await
            .map_err(declare_error("cannot open a channel"))
    };
    let mut ch = open().await?;
    let exchange = config.exchange.as_str();
    if !exchange.is_empty() {
        let kind = exchange_kind(&config.exchange_type);
        let passive = ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        };
        match ch
            .exchange_declare(exchange, kind.clone(), passive, FieldTable::default())
            .await
        {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {
                // The failed passive declare closed that channel.
                ch = open().await?;
                let durable = ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                };
                ch.exchange_declare(exchange, kind, durable, FieldTable::default())
                    .await
                    .map_err(declare_error(format!("cannot declare exchange `{exchange}`")))?;
                tracing::info!(exchange, exchange_type = %config.exchange_type, "declared the exchange");
            }
            Err(e) => return Err(declare_error(format!("cannot check exchange `{exchange}`"))(e)),
        }
    }
    for q in &config.queues {
        let mut args = FieldTable::default();
        if q.queue_type != "classic" {
            args.insert(
                ShortString::from("x-queue-type"),
                AMQPValue::LongString(LongString::from(q.queue_type.as_str())),
            );
        }
        let options = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare(&q.name, options, args)
            .await
            .map_err(declare_error(format!("cannot declare queue `{}`", q.name)))?;
        for key in &q.bindings {
            ch.queue_bind(
                &q.name,
                exchange,
                key,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(declare_error(format!(
                "cannot bind queue `{}` with key `{key}`",
                q.name
            )))?;
        }
    }
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(declare_error("cannot turn on publisher confirms"))?;
    Ok(ch)
}

/// Declares the exchange, queues and bindings again on a live connection, after a publish found
/// the exchange gone. A failure is logged when it starts; later publishes answer 500 with it.
async fn redeclare(shared: &Shared, conn: &Conn, config: &RabbitMqSinkConfig) {
    let failure = match tokio::time::timeout(config.connect_timeout, declare(conn, config)).await {
        Ok(Ok(ch)) => {
            conn.checkin(ch);
            shared.set_topology_error(None);
            tracing::warn!(sink = %shared.name, exchange = %config.exchange, "the exchange had disappeared; declared the topology again");
            return;
        }
        Ok(Err(error)) => error.to_string(),
        Err(_) => format!(
            "declaring the topology again took longer than {}",
            humantime::format_duration(config.connect_timeout)
        ),
    };
    if shared.topology_error().is_none() {
        tracing::error!(sink = %shared.name, exchange = %config.exchange, error = %failure, "the exchange has disappeared and cannot be declared again; publishes fail until it exists");
    }
    shared.set_topology_error(Some(failure));
}

/// Keeps a connection up until shutdown.
pub async fn supervise(shared: Arc<Shared>, uri: AMQPUri, config: RabbitMqSinkConfig) {
    let mut stop = shared.stop.subscribe();
    let mut backoff = FIRST_BACKOFF;
    let mut failing_since: Option<Instant> = None;
    let mut last_warn: Option<Instant> = None;
    loop {
        if *stop.borrow() {
            break;
        }
        let attempt = tokio::select! {
            r = connect(&shared, &uri, &config) => r,
            _ = stop.changed() => break,
        };
        match attempt {
            Ok(conn) => {
                let conn = Arc::new(conn);
                if let Some(since) = failing_since.take() {
                    tracing::info!(
                        sink = %shared.name,
                        endpoint = %shared.endpoint,
                        down_ms = since.elapsed().as_millis() as u64,
                        "reconnected to RabbitMQ"
                    );
                } else {
                    tracing::info!(sink = %shared.name, endpoint = %shared.endpoint, "connected to RabbitMQ");
                }
                shared.set_error(None);
                // The connection declared the whole topology.
                shared.set_topology_error(None);
                shared.current.store(Some(conn.clone()));
                backoff = FIRST_BACKOFF;
                // Watch it until it dies or shutdown begins.
                let mut last_declare = Instant::now();
                loop {
                    tokio::select! {
                        _ = shared.wake.notified() => {}
                        _ = tokio::time::sleep(CHECK_EVERY) => {}
                        _ = stop.changed() => return,
                    }
                    if !conn.usable() {
                        break;
                    }
                    let every = if shared.topology_error().is_some() {
                        REDECLARE_RETRY
                    } else {
                        REDECLARE_EVERY
                    };
                    if last_declare.elapsed() >= every && shared.topology_lost.swap(false, Ordering::SeqCst) {
                        last_declare = Instant::now();
                        tokio::select! {
                            _ = redeclare(&shared, &conn, &config) => {}
                            _ = stop.changed() => return,
                        }
                    }
                }
                shared.current.store(None);
                let state = format!("{:?}", conn.connection.status().state());
                shared.set_error(Some(format!("connection to {} lost ({state})", shared.endpoint)));
                tracing::warn!(sink = %shared.name, endpoint = %shared.endpoint, state, "lost the RabbitMQ connection; reconnecting");
                failing_since = Some(Instant::now());
                last_warn = Some(Instant::now());
                // Reconnect at once the first time.
                continue;
            }
            Err(message) => {
                let now = Instant::now();
                failing_since.get_or_insert(now);
                let warn_now = match last_warn {
                    None => true,
                    Some(t) => now.duration_since(t) >= WARN_EVERY,
                };
                if warn_now {
                    tracing::warn!(sink = %shared.name, error = %message, retry_in_ms = backoff.as_millis() as u64, "RabbitMQ is unreachable; retrying with backoff");
                    last_warn = Some(now);
                } else {
                    tracing::debug!(sink = %shared.name, error = %message, "RabbitMQ connection attempt failed");
                }
                shared.set_error(Some(message.to_string()));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => break,
        }
        backoff = (backoff * 2).min(config.reconnect_max_delay);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_defaults_heartbeat_frame_size_and_tcp_timeout_unless_given() {
        let five = Duration::from_secs(5);
        let uri = parse_uri("amqp://guest:guest@127.0.0.1:5672/%2f", five).unwrap();
        assert_eq!(uri.query.heartbeat, Some(DEFAULT_HEARTBEAT_SECS));
        assert_eq!(uri.query.frame_max, Some(DEFAULT_FRAME_MAX));
        assert_eq!(uri.query.connection_timeout, Some(5000));
        let uri = parse_uri("amqp://h/v?heartbeat=30&frame_max=131072&connection_timeout=700", five).unwrap();
        assert_eq!(uri.query.heartbeat, Some(30));
        assert_eq!(uri.query.frame_max, Some(131_072));
        assert_eq!(uri.query.connection_timeout, Some(700));
        assert_eq!(uri.vhost, "v");
    }

    #[test]
    fn connect_failures_name_their_cause_first() {
        for (detail, cause) in [
            (
                "IO error: invalid peer certificate: UnknownIssuer",
                "certificate not trusted",
            ),
            (
                "403 ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN",
                "authentication failed",
            ),
            (
                "IO error: received fatal alert: CertificateUnknown",
                "client certificate refused by the broker",
            ),
        ] {
            let text = connect_failure(detail);
            assert!(text.starts_with(cause) && text.ends_with(detail), "{text}");
        }
        let refused = "IO error: Connection refused (os error 111)";
        assert_eq!(connect_failure(refused), refused);
    }

    #[test]
    fn a_bad_url_error_does_not_echo_it() {
        let err = parse_uri("amqp://user:s3cret@host:notaport/", Duration::from_secs(1)).unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }
}
