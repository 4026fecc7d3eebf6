//! What serde reads from the YAML file and the `HOOKBRIDGE__` environment. Unknown keys are errors.
//! [`super::validate`] turns this into [`super::Settings`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::fields::{duration, SecretSource};
use crate::sink::SinkKind;

/// The whole config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Webhook listener, `IP:PORT`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Admin listener (`/healthz`, `/readyz`, `/metrics`), `IP:PORT`; never the webhook port.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: String,
    /// Bodies larger than this get 413 without being read to the end.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// The longest a request waits for broker confirmations before answering 503.
    #[serde(default = "default_ack_timeout", deserialize_with = "duration")]
    pub ack_timeout: Duration,
    /// Webhook endpoints, each with its own path and secrets.
    #[serde(default)]
    pub endpoints: Vec<RawEndpoint>,
    /// Named sinks; routes refer to them by name.
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkKind>,
    /// Ordered routes; the first whose `match` fits the event type wins.
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// Where a message goes that a target refused for good (too large, no such topic), for routes
    /// without a `dead_letter` of their own. Off when absent.
    #[serde(default)]
    pub dead_letter: Option<RawTarget>,
    /// Duplicate suppression of event ids already published.
    #[serde(default)]
    pub dedup: RawDedup,
    /// Logging.
    #[serde(default)]
    pub log: RawLog,
    /// Hardening of the webhook port: timeouts, limits, TLS, allowed networks.
    #[serde(default)]
    pub http: RawHttp,
}

/// Hardening of the webhook port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    /// How long a client may take to send the request line and headers (also the keep-alive idle
    /// limit between requests). Slow clients are cut off.
    #[serde(default = "default_header_read_timeout", deserialize_with = "duration")]
    pub header_read_timeout: Duration,
    /// How long a client may take to send the body once the headers arrived (answered 408).
    #[serde(default = "default_body_read_timeout", deserialize_with = "duration")]
    pub body_read_timeout: Duration,
    /// Requests handled at once; more are answered 503 at once, so memory stays bounded
    /// (at most this many bodies of `max_body_bytes`).
    #[serde(default = "default_max_concurrent_requests")]
    pub max_concurrent_requests: usize,
    /// Largest request head (request line and headers) accepted; larger is answered 431.
    /// At least 8192.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// The most request-body bytes held at once across all requests (the memory budget for
    /// bodies); beyond it a request waits briefly, the slowest upload is cut off, or it gets 503.
    /// At least `max_body_bytes`.
    #[serde(default = "default_max_buffered_bytes")]
    pub max_buffered_bytes: usize,
    /// Open connections on the webhook port; more are closed at accept, before a byte is read.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Serve HTTPS on the webhook port with these PEM files (reloaded when they change).
    #[serde(default)]
    pub tls: Option<RawTls>,
    /// CIDRs allowed to call the webhook port (for example Stripe's published webhook IPs);
    /// empty allows every address. Others get 403.
    #[serde(default)]
    pub allow_networks: Vec<String>,
    /// Header carrying the client address when behind a proxy, e.g. `x-forwarded-for`; read only
    /// on connections from `trusted_proxies`. Empty: the TCP peer address is the client.
    #[serde(default)]
    pub client_ip_header: String,
    /// CIDRs of proxies whose `client_ip_header` is believed.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

impl Default for RawHttp {
    fn default() -> Self {
        RawHttp {
            header_read_timeout: default_header_read_timeout(),
            body_read_timeout: default_body_read_timeout(),
            max_concurrent_requests: default_max_concurrent_requests(),
            max_header_bytes: default_max_header_bytes(),
            max_buffered_bytes: default_max_buffered_bytes(),
            max_connections: default_max_connections(),
            tls: None,
            allow_networks: Vec::new(),
            client_ip_header: String::new(),
            trusted_proxies: Vec::new(),
        }
    }
}

fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_body_read_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_concurrent_requests() -> usize {
    512
}
fn default_max_header_bytes() -> usize {
    16 * 1024
}
fn default_max_buffered_bytes() -> usize {
    32 * 1024 * 1024
}
fn default_max_connections() -> usize {
    1024
}

/// TLS certificate and key for the webhook port.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM certificate chain, leaf first.
    pub cert_file: std::path::PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: std::path::PathBuf,
}

fn default_listen() -> String {
    "0.0.0.0:8080".into()
}
fn default_admin_listen() -> String {
    "127.0.0.1:9090".into()
}
fn default_max_body_bytes() -> u64 {
    1024 * 1024
}
fn default_ack_timeout() -> Duration {
    Duration::from_secs(5)
}

/// One webhook endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEndpoint {
    /// URL path Stripe posts to, e.g. `/webhooks/stripe`.
    pub path: String,
    /// How far in the past the signed timestamp may be (the replay window).
    #[serde(default = "default_tolerance", deserialize_with = "duration")]
    pub tolerance: Duration,
    /// How far in the future the signed timestamp may be (a host clock behind Stripe's).
    #[serde(default = "default_future_tolerance", deserialize_with = "duration")]
    pub future_tolerance: Duration,
    /// Signing secrets; any one may match (rotation).
    #[serde(default)]
    pub secrets: Vec<SecretSource>,
}

fn default_tolerance() -> Duration {
    Duration::from_secs(300)
}

fn default_future_tolerance() -> Duration {
    crate::verify::DEFAULT_FUTURE_TOLERANCE
}

/// A route: which event types, and where they go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// One glob or a list; `*` matches any run of characters.
    #[serde(rename = "match", deserialize_with = "one_or_many")]
    pub patterns: Vec<String>,
    /// Only live-mode (`true`) or only test-mode (`false`) events; absent: both.
    #[serde(default)]
    pub livemode: Option<bool>,
    /// One glob or a list over the Connect account id; `platform` matches events without an
    /// account. Absent: any account.
    #[serde(default, deserialize_with = "opt_one_or_many")]
    pub account: Option<Vec<String>>,
    /// One endpoint path or a list: only events that arrived there. Absent: any endpoint.
    #[serde(default, deserialize_with = "opt_one_or_many")]
    pub endpoint: Option<Vec<String>>,
    /// Targets; several mean fan-out, every one must confirm.
    pub to: Vec<RawTarget>,
    /// Where a message goes that a target of this route refused for good; overrides the global
    /// `dead_letter`.
    #[serde(default)]
    pub dead_letter: Option<RawTarget>,
}

/// One destination of a route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    /// Name of a sink under `sinks`.
    pub sink: String,
    /// Topic template, for kafka and file sinks.
    pub topic: Option<String>,
    /// Routing key template, for rabbitmq sinks.
    pub routing_key: Option<String>,
    /// Subject template, for nats sinks.
    pub subject: Option<String>,
}

/// Duplicate suppression: an event id published within the window is answered 200 and not
/// published again. Bounded by count, by bytes and by age.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDedup {
    /// How many event ids to remember; 0 turns dedup off.
    #[serde(default = "default_dedup_capacity")]
    pub capacity: usize,
    /// How long an event id is remembered.
    #[serde(default = "default_dedup_ttl", deserialize_with = "duration")]
    pub ttl: Duration,
    /// Memory the remembered ids (and, for a fan-out that partly failed, the names of the targets
    /// that confirmed) may take, estimated; the oldest are forgotten beyond it.
    #[serde(default = "default_dedup_max_bytes")]
    pub max_bytes: usize,
}

impl Default for RawDedup {
    fn default() -> Self {
        RawDedup {
            capacity: default_dedup_capacity(),
            ttl: default_dedup_ttl(),
            max_bytes: default_dedup_max_bytes(),
        }
    }
}

fn default_dedup_max_bytes() -> usize {
    16 * 1024 * 1024
}

fn default_dedup_capacity() -> usize {
    50_000
}
fn default_dedup_ttl() -> Duration {
    Duration::from_secs(3600)
}

/// Log output.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// `text` (human) or `json`.
    #[serde(default = "default_log_format")]
    pub format: String,
    /// A tracing filter such as `info` or `hookbridge=debug`; `RUST_LOG` wins when set.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            format: default_log_format(),
            level: default_log_level(),
        }
    }
}

fn default_log_format() -> String {
    "text".into()
}
fn default_log_level() -> String {
    "info".into()
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    crate::fields::strings(d, "expected a glob string or a list of glob strings")
}

fn opt_one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    crate::fields::strings(d, "expected a string or a list of strings").map(Some)
}
