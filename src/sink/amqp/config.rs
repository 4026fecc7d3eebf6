//! Config of the `rabbitmq` sink.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use serde::Deserialize;

use crate::fields::{duration, Problems, SecretSource};
use crate::sink::{BoxError, Destination, Sink, SinkConfig};

/// An AMQP 0-9-1 connection with publisher confirms.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitMqSinkConfig {
    /// `amqp://user:pass@host:port/vhost` or `amqps://…` (TLS, verified against the system's
    /// roots unless `tls.ca_file` is set). The vhost is URL-encoded: `/` is `%2f`. Query options
    /// such as `?heartbeat=30` are passed to the client; `?auth_mechanism=external` logs in with
    /// the client certificate of `tls` instead of a password. Printed with the password redacted.
    pub url: String,
    /// The password, from `env`, `file` or `value`, instead of in `url` (which then names only
    /// the user: `amqps://bridge@host/vhost`). Read at start-up; a `file` is watched, and the
    /// sink reconnects with the new password when it changes.
    #[serde(default)]
    pub password: Option<SecretSource>,
    /// TLS settings for an `amqps://` url: a private CA, a client certificate. Files are read
    /// at start-up and watched; when one changes the sink reconnects with the new ones.
    #[serde(default)]
    pub tls: Option<AmqpTlsConfig>,
    /// Exchange to publish to; declared durable with `exchange_type` unless it already exists.
    /// The empty string is RabbitMQ's default exchange (routing key = queue name), never declared.
    pub exchange: String,
    /// Type the exchange is declared with when it does not exist: `topic` (default), `direct`,
    /// `fanout` or `headers`. An existing exchange is used as it is.
    #[serde(default = "default_exchange_type")]
    pub exchange_type: String,
    /// Queues to declare (durable) and bind to the exchange on every connect, so a quick start
    /// needs no admin step. Optional: leave empty when the topology is managed elsewhere.
    #[serde(default)]
    pub queues: Vec<QueueConfig>,
    /// The most publishes awaiting a broker confirmation at once; each uses its own channel.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// The longest a connection attempt (TCP, TLS, AMQP handshake, topology) may take.
    #[serde(default = "default_connect_timeout", deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// Longest pause between reconnection attempts; the backoff starts at 100ms and doubles.
    #[serde(default = "default_reconnect_max_delay", deserialize_with = "duration")]
    pub reconnect_max_delay: Duration,
    /// `cloudevents` adds the CloudEvents attributes as `cloudEvents:*` message headers (AMQP
    /// protocol binding, binary content mode) to the usual `stripe-*` ones. Default `stripe`.
    #[serde(default)]
    pub headers: crate::sink::cloudevents::HeaderMode,
}

/// TLS of the `rabbitmq` sink (PEM files).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpTlsConfig {
    /// The CA certificate(s) that signed the broker's certificate. When set, only these are
    /// trusted, not the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A client certificate (chain) to present: for `auth_mechanism=external`, or a broker that
    /// requires client certificates. Needs `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The private key of `cert_file` (PKCS#8, PKCS#1 or SEC1; not encrypted).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

/// A queue declared and bound by the sink.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Queue name.
    pub name: String,
    /// `classic` (default) or `quorum` (replicated; the usual choice on a cluster).
    #[serde(rename = "type", default = "default_queue_type")]
    pub queue_type: String,
    /// Binding keys to the sink's exchange. On a topic exchange `*` matches one dot-separated
    /// word and `#` zero or more: `customer.subscription.*`, `invoice.#`, `#` (everything).
    #[serde(default)]
    pub bindings: Vec<String>,
}

fn default_exchange_type() -> String {
    "topic".into()
}
fn default_queue_type() -> String {
    "classic".into()
}
fn default_max_in_flight() -> usize {
    64
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_reconnect_max_delay() -> Duration {
    Duration::from_secs(2)
}

/// Exchange types RabbitMQ knows without plugins.
pub const EXCHANGE_TYPES: [&str; 4] = ["topic", "direct", "fanout", "headers"];
/// Queue types the sink can declare.
pub const QUEUE_TYPES: [&str; 2] = ["classic", "quorum"];

impl std::fmt::Debug for RabbitMqSinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMqSinkConfig")
            .field("url", &redact_url(&self.url))
            .field("password", &self.password)
            .field("tls", &self.tls)
            .field("exchange", &self.exchange)
            .field("exchange_type", &self.exchange_type)
            .field("queues", &self.queues)
            .field("max_in_flight", &self.max_in_flight)
            .field("connect_timeout", &self.connect_timeout)
            .field("reconnect_max_delay", &self.reconnect_max_delay)
            .field("headers", &self.headers)
            .finish()
    }
}

impl RabbitMqSinkConfig {
    /// Reads the password and the `tls` files now; `path` is the key path of this sink.
    pub fn read_files(&self, path: &str, problems: &mut Problems) {
        if let Some(source) = &self.password {
            if let Err(e) = source.load() {
                problems.push(format!("{path}.password"), e.to_string());
            }
        }
        #[cfg(feature = "amqp")]
        if let Some(tls) = &self.tls {
            if let Err(e) = super::tls_connector(tls) {
                problems.push(format!("{path}.tls.{}", e.key), e.to_string());
            }
        }
    }

    /// Pure checks; `path` is the key path of this sink, e.g. `sinks.amqp`. The password and TLS
    /// files are read by [`Self::read_files`].
    pub fn validate(&self, path: &str, _ack_timeout: std::time::Duration, problems: &mut Problems) {
        if !cfg!(feature = "amqp") {
            problems.push(
                format!("{path}.kind"),
                "this build of hookbridge has no rabbitmq support",
            );
        }
        if !(self.url.starts_with("amqp://") || self.url.starts_with("amqps://")) {
            problems.push(format!("{path}.url"), "must start with amqp:// or amqps://");
        } else if let Err(e) = parse_url(&self.url) {
            problems.push(format!("{path}.url"), e.to_string());
        }
        if let Some(source) = &self.password {
            if url_has_password(&self.url) {
                problems.push(
                    format!("{path}.password"),
                    "the url holds a password too; set it in one place",
                );
            }
            if let Err(e) = source.check() {
                problems.push(format!("{path}.password"), e.to_string());
            }
        }
        if let Some(tls) = &self.tls {
            if self.url.starts_with("amqp://") {
                problems.push(
                    format!("{path}.tls"),
                    "is set but the url is amqp://; use amqps:// for TLS",
                );
            }
            match (&tls.cert_file, &tls.key_file) {
                (Some(_), None) => problems.push(format!("{path}.tls.key_file"), "is needed with cert_file"),
                (None, Some(_)) => problems.push(format!("{path}.tls.cert_file"), "is needed with key_file"),
                _ => {}
            }
        }
        if self.exchange.len() > 255 {
            problems.push(format!("{path}.exchange"), "must be at most 255 bytes");
        }
        if !EXCHANGE_TYPES.contains(&self.exchange_type.as_str()) {
            problems.push(
                format!("{path}.exchange_type"),
                format!("must be one of {}", EXCHANGE_TYPES.join(", ")),
            );
        }
        if self.max_in_flight == 0 || self.max_in_flight > 1024 {
            problems.push(format!("{path}.max_in_flight"), "must be between 1 and 1024");
        }
        if self.connect_timeout.is_zero() {
            problems.push(format!("{path}.connect_timeout"), "must be greater than 0");
        }
        if self.reconnect_max_delay < Duration::from_millis(100) {
            problems.push(format!("{path}.reconnect_max_delay"), "must be at least 100ms");
        }
        let mut seen = std::collections::HashSet::new();
        for (i, q) in self.queues.iter().enumerate() {
            let qpath = format!("{path}.queues[{i}]");
            if q.name.is_empty() || q.name.len() > 255 {
                problems.push(format!("{qpath}.name"), "must be 1 to 255 bytes");
            } else if q.name.starts_with("amq.") {
                problems.push(
                    format!("{qpath}.name"),
                    "names starting with `amq.` are reserved by RabbitMQ",
                );
            } else if !seen.insert(q.name.as_str()) {
                problems.push(format!("{qpath}.name"), format!("`{}` is declared twice", q.name));
            }
            if !QUEUE_TYPES.contains(&q.queue_type.as_str()) {
                problems.push(
                    format!("{qpath}.type"),
                    format!("must be one of {}", QUEUE_TYPES.join(", ")),
                );
            }
            if self.exchange.is_empty() && !q.bindings.is_empty() {
                problems.push(
                    format!("{qpath}.bindings"),
                    "the default exchange (exchange: \"\") cannot have bindings",
                );
            }
            for (j, b) in q.bindings.iter().enumerate() {
                if b.len() > 255 {
                    problems.push(format!("{qpath}.bindings[{j}]"), "must be at most 255 bytes");
                }
            }
        }
    }
}

impl RabbitMqSinkConfig {
    /// Files the sink reads its credentials from (the password `file`, the `tls` files). When one
    /// changes the sink is rebuilt (see `state::State::rotate_credentials`).
    pub fn credential_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self.password.iter().filter_map(|p| p.file.clone()).collect();
        if let Some(tls) = &self.tls {
            files.extend(
                [&tls.ca_file, &tls.cert_file, &tls.key_file]
                    .into_iter()
                    .flatten()
                    .cloned(),
            );
        }
        files
    }

    /// One line for `check-config`: URL (password redacted), exchange and declared topology.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "url {}{} exchange {} ({}) max_in_flight {}",
            redact_url(&self.url),
            self.password
                .as_ref()
                .map(|p| format!(" password {p}"))
                .unwrap_or_default(),
            if self.exchange.is_empty() {
                "\"\" (default)"
            } else {
                &self.exchange
            },
            self.exchange_type,
            self.max_in_flight
        );
        if let Some(tls) = &self.tls {
            let files: Vec<String> = [
                ("ca_file", &tls.ca_file),
                ("cert_file", &tls.cert_file),
                ("key_file", &tls.key_file),
            ]
            .into_iter()
            .filter_map(|(k, f)| f.as_ref().map(|f| format!("{k} {}", f.display())))
            .collect();
            out.push_str(&format!(" tls {{{}}}", files.join(", ")));
        }
        for q in &self.queues {
            out.push_str(&format!("; queue {} ({})", q.name, q.queue_type));
            if !q.bindings.is_empty() {
                out.push_str(&format!(" <- {}", q.bindings.join(", ")));
            }
        }
        out
    }
}

impl SinkConfig for RabbitMqSinkConfig {
    fn kind(&self) -> &'static str {
        "rabbitmq"
    }

    fn destination(&self) -> Destination {
        Destination::RoutingKey
    }

    fn validate(&self, path: &str, ack_timeout: Duration, problems: &mut Problems) {
        RabbitMqSinkConfig::validate(self, path, ack_timeout, problems);
    }

    fn read_files(&self, path: &str, _ack_timeout: Duration, problems: &mut Problems) {
        RabbitMqSinkConfig::read_files(self, path, problems);
    }

    fn credential_files(&self) -> Vec<PathBuf> {
        RabbitMqSinkConfig::credential_files(self)
    }

    fn describe(&self, _ack_timeout: Duration) -> String {
        self.summary()
    }

    fn build<'a>(&'a self, name: &'a str, ack_timeout: Duration) -> BoxFuture<'a, Result<Arc<dyn Sink>, BoxError>> {
        #[cfg(feature = "amqp")]
        {
            async move {
                super::AmqpSink::new(name, self, ack_timeout)
                    .await
                    .map(|sink| Arc::new(sink) as Arc<dyn Sink>)
                    .map_err(BoxError::from)
            }
            .boxed()
        }
        #[cfg(not(feature = "amqp"))]
        {
            let _ = (name, ack_timeout);
            futures::future::ready(Err(BoxError::from("this build has no rabbitmq support"))).boxed()
        }
    }
}

/// Checks the URL the way the client will read it, without echoing it (it may hold a password).
#[cfg(feature = "amqp")]
fn parse_url(url: &str) -> Result<(), BadUrl> {
    url.parse::<lapin::uri::AMQPUri>()
        .map(|_| ())
        .map_err(|e| BadUrl(e.replace(url, "<url>")))
}

#[cfg(not(feature = "amqp"))]
fn parse_url(_url: &str) -> Result<(), BadUrl> {
    Ok(())
}

/// What the AMQP client says of a URL, with the URL itself replaced by `<url>`.
#[derive(Debug, thiserror::Error)]
#[error("is not a valid AMQP URL ({0})")]
struct BadUrl(String);

/// Whether `url`'s authority holds `user:password@`.
pub fn url_has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    authority.rfind('@').is_some_and(|at| authority[..at].contains(':'))
}

/// `amqp://user:secret@host/vhost` → `amqp://user:***@host/vhost`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            let redacted = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_string()
            };
            format!(
                "{}://{}@{}{}",
                &url[..scheme_end],
                redacted,
                &authority[at + 1..],
                &rest[authority_end..]
            )
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;
    use crate::config::{parse_str, read_secrets, validate};
    use crate::sink::SinkKind;

    #[test]
    fn redacts_password_only() {
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact_url("amqps://u@h/v"), "amqps://u@h/v");
        assert_eq!(redact_url("amqp://h:5672"), "amqp://h:5672");
        assert_eq!(redact_url("amqp://u:p@ss@h/"), "amqp://u:***@h/");
    }

    fn config(sink: &str) -> String {
        format!(
            r#"
endpoints:
  - path: /w
    secrets: [{{ value: whsec_x }}]
sinks:
  amqp:
{sink}
routes:
  - match: "*"
    to: [{{ sink: amqp, routing_key: "{{type}}" }}]
"#
        )
    }

    /// Validation's problems, or, as when the runtime is built, those of reading the secrets.
    fn problems(sink: &str) -> Vec<String> {
        let raw = parse_str(&config(sink)).unwrap_or_else(|e| panic!("parses: {e}"));
        match validate(raw).map(|s| read_secrets(&s)) {
            Ok(Ok(_)) => vec![],
            Err(p) | Ok(Err(p)) => p.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn defaults() {
        let raw = parse_str(&config(
            "    kind: rabbitmq\n    url: amqp://guest:guest@127.0.0.1:5672/%2f\n    exchange: stripe",
        ))
        .unwrap_or_else(|e| panic!("parses: {e}"));
        let Some(SinkKind::Rabbitmq(c)) = raw.sinks.get("amqp") else {
            panic!("a rabbitmq sink")
        };
        assert_eq!(c.exchange_type, "topic");
        assert!(c.queues.is_empty());
        assert_eq!(c.max_in_flight, 64);
        assert_eq!(c.connect_timeout, std::time::Duration::from_secs(5));
        let debug = format!("{c:?}");
        assert!(!debug.contains("guest@") && debug.contains("guest:***@"), "{debug}");
    }

    #[test]
    fn every_bad_key_is_named() {
        let p = problems(
            r#"    kind: rabbitmq
    url: "amqp://guest:secretpw@127.0.0.1:notaport/%2f"
    exchange: stripe
    exchange_type: nope
    max_in_flight: 0
    connect_timeout: 0s
    queues:
      - { name: a, type: stream }
      - { name: a }
      - { name: amq.x }"#,
        );
        let joined = p.join("\n");
        for key in [
            "sinks.amqp.url",
            "sinks.amqp.exchange_type",
            "sinks.amqp.max_in_flight",
            "sinks.amqp.connect_timeout",
            "sinks.amqp.queues[0].type",
            "sinks.amqp.queues[1].name",
            "sinks.amqp.queues[2].name",
        ] {
            assert!(joined.contains(key), "{key} missing in:\n{joined}");
        }
        assert!(!joined.contains("secretpw"), "a problem echoes the password:\n{joined}");
    }

    #[test]
    fn password_from_a_secret_source() {
        let ok =
            problems("    kind: rabbitmq\n    url: amqp://bridge@h/v\n    exchange: e\n    password: { value: pw }");
        assert!(ok.is_empty(), "{ok:?}");
        let both =
            problems("    kind: rabbitmq\n    url: amqp://u:p@h/v\n    exchange: e\n    password: { value: pw }");
        assert!(both.iter().any(|p| p.contains("sinks.amqp.password")), "{both:?}");
        let unset = problems(
            "    kind: rabbitmq\n    url: amqp://u@h/v\n    exchange: e\n    password: { env: HOOKBRIDGE_TEST_UNSET_PW }",
        );
        assert!(
            unset.iter().any(|p| p.contains("HOOKBRIDGE_TEST_UNSET_PW")),
            "{unset:?}"
        );
        assert!(super::url_has_password("amqp://u:p@h/v"));
        assert!(!super::url_has_password("amqp://u@h/v") && !super::url_has_password("amqp://h:5672/v"));
    }

    #[test]
    fn unknown_queue_key_is_an_error() {
        let raw = parse_str(&config(
            "    kind: rabbitmq\n    url: amqp://h/\n    exchange: e\n    queues: [{ name: q, durable: false }]",
        ));
        assert!(raw.is_err());
    }

    #[test]
    fn example_config_is_valid() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/rabbitmq.example.yaml");
        let settings = crate::config::load(std::path::Path::new(path)).unwrap_or_else(|e| panic!("{e}"));
        let rabbit: Vec<_> = settings
            .sinks
            .iter()
            .filter_map(|s| match &s.config {
                SinkKind::Rabbitmq(c) => Some(c),
                _ => None,
            })
            .collect();
        assert!(!rabbit.is_empty(), "the example defines a rabbitmq sink");
        assert!(rabbit.iter().any(|c| !c.queues.is_empty()), "the example shows queues");
        assert!(
            rabbit.iter().flat_map(|c| &c.queues).any(|q| q.queue_type == "quorum"),
            "the example shows a quorum queue"
        );
    }
}
