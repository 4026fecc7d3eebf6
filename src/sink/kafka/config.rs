//! Config of the `kafka` sink.
//!
//! The producer is always idempotent with `acks=all`: a 200 means every in-sync replica has the
//! record. First-class settings (`client_id`, `compression`, `linger`, `message_timeout`) and
//! their defaults are turned into librdkafka properties by [`KafkaSinkConfig::properties`];
//! anything else goes through `options` unchanged. Setting the same property both ways is a
//! config error, and so is any option that would weaken durability.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use serde::Deserialize;

use crate::fields::{opt_duration, Problems, Scalar, SecretSource};
use crate::sink::{BoxError, Destination, Sink, SinkConfig};

/// `linger.ms` of the batching producer when the config sets none. It only applies under load:
/// while few publishes are in flight, records take the sink's immediate lane (`linger.ms=0`, see
/// `sink::kafka::IMMEDIATE_BELOW`). 1 ms rather than 3 ms: with an idempotent producer one
/// request per partition is in flight, so a linger longer than the broker's answer time paces
/// every batch; on a quiet machine 3 ms halved the throughput at 64 in flight (bench/FINDINGS.md).
pub const DEFAULT_LINGER: Duration = Duration::from_millis(1);

/// A Kafka producer (librdkafka), idempotent with `acks=all`.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Bootstrap servers, comma separated (`bootstrap.servers`).
    pub brokers: String,
    /// `client.id` shown in broker logs and quotas. Default `hookbridge`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// `compression.type`: none, gzip, snappy, lz4 or zstd. Default librdkafka's (none).
    #[serde(default)]
    pub compression: Option<String>,
    /// `linger.ms` of the batching producer: how long to wait to fill a batch under load. Default
    /// 1ms; a record published while little is in flight leaves at once (the immediate lane).
    #[serde(default, deserialize_with = "opt_duration")]
    pub linger: Option<Duration>,
    /// `message.timeout.ms`: how long librdkafka tries to deliver one record before reporting it
    /// failed. Must be below `ack_timeout`; the default leaves room for `queue_timeout` and a
    /// margin, so the failure is reported before the request's deadline.
    #[serde(default, deserialize_with = "opt_duration")]
    pub message_timeout: Option<Duration>,
    /// How long a publish waits for room in librdkafka's local queue when it is full
    /// (`queue.buffering.max.messages`/`.kbytes`). Default: a tenth of `ack_timeout`, at most
    /// 500ms.
    #[serde(default, deserialize_with = "opt_duration")]
    pub queue_timeout: Option<Duration>,
    /// librdkafka properties passed through as given (SASL/SSL settings go here). Values of
    /// sensitive properties (passwords, secrets, keys) are never printed.
    #[serde(default)]
    pub options: BTreeMap<String, Scalar>,
    /// librdkafka properties whose values are secrets, each read from `env`, `file` or `value`
    /// when the config is loaded, e.g. `sasl.password: { env: KAFKA_SASL_PASSWORD }`. Never
    /// printed; a property set here and in `options` is an error.
    #[serde(default)]
    pub secret_options: BTreeMap<String, SecretSource>,
    /// `cloudevents` adds the CloudEvents attributes as `ce_*` record headers (Kafka protocol
    /// binding, binary content mode) to the usual `stripe-*` ones. Default `stripe`.
    #[serde(default)]
    pub headers: crate::sink::cloudevents::HeaderMode,
}

/// Properties hookbridge sets itself and that `options` must not override.
const FORCED_BY_BRIDGE: &[(&str, &str)] = &[
    ("bootstrap.servers", "set `brokers` instead"),
    ("metadata.broker.list", "set `brokers` instead"),
    (
        "transactional.id",
        "hookbridge publishes with an idempotent, non-transactional producer",
    ),
    (
        "delivery.report.only.error",
        "hookbridge needs every delivery report to confirm a publish",
    ),
    ("dr_cb", "hookbridge installs its own delivery report handling"),
    ("dr_msg_cb", "hookbridge installs its own delivery report handling"),
];

/// SASL mechanisms this build of librdkafka has: GSSAPI (Kerberos) needs libsasl2 and is not
/// built in.
pub const SASL_MECHANISMS: [&str; 4] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"];

/// Option keys whose values are secrets.
pub fn is_sensitive(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "jaas",
        "ssl.key.pem",
        "oauthbearer.config",
        "token",
    ]
    .iter()
    .any(|s| k.contains(s))
}

impl std::fmt::Debug for KafkaSinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSinkConfig")
            .field("brokers", &self.brokers)
            .field("client_id", &self.client_id)
            .field("compression", &self.compression)
            .field("linger", &self.linger)
            .field("message_timeout", &self.message_timeout)
            .field("queue_timeout", &self.queue_timeout)
            .field("options", &RedactedOptions(&self.options))
            .field("secret_options", &self.secret_options)
            .field("headers", &self.headers)
            .finish()
    }
}

struct RedactedOptions<'a>(&'a BTreeMap<String, Scalar>);

impl std::fmt::Debug for RedactedOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| (k, redacted_value(k, &v.0))))
            .finish()
    }
}

fn redacted_value<'a>(key: &str, value: &'a str) -> &'a str {
    if is_sensitive(key) {
        "***"
    } else {
        value
    }
}

/// Resolved timing of one sink, derived from its config and `ack_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KafkaTimings {
    /// librdkafka's `message.timeout.ms`.
    pub message_timeout: Duration,
    /// The longest a publish waits for room in the local queue.
    pub queue_timeout: Duration,
}

impl KafkaSinkConfig {
    /// Message and queue timeouts: what the user set (in first-class fields or `options`), else
    /// defaults that keep `queue_timeout + message_timeout` below `ack_timeout`.
    pub fn timings(&self, ack_timeout: Duration) -> KafkaTimings {
        let slice = (ack_timeout / 10).min(Duration::from_millis(500));
        let queue_timeout = self.queue_timeout.unwrap_or(slice);
        let from_options = self
            .option("message.timeout.ms")
            .or_else(|| self.option("delivery.timeout.ms"))
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_millis);
        let message_timeout = self.message_timeout.or(from_options).unwrap_or_else(|| {
            ack_timeout
                .saturating_sub(queue_timeout)
                .saturating_sub(slice)
                .max(Duration::from_millis(10))
        });
        KafkaTimings {
            message_timeout,
            queue_timeout,
        }
    }

    fn option(&self, key: &str) -> Option<&str> {
        self.options.get(key).map(|v| v.0.trim())
    }

    /// Every librdkafka property of the producer: `options`, then the first-class settings and
    /// the bridge's defaults for what `options` does not set, then the properties the bridge
    /// forces (`bootstrap.servers`, `enable.idempotence`, `acks`). Call after [`Self::validate`].
    pub fn properties(&self, ack_timeout: Duration) -> BTreeMap<String, String> {
        let mut props: BTreeMap<String, String> = self.options.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect();
        let timings = self.timings(ack_timeout);
        let mut default = |key: &str, value: String| {
            props.entry(key.to_string()).or_insert(value);
        };
        default(
            "client.id",
            self.client_id.clone().unwrap_or_else(|| "hookbridge".into()),
        );
        if let Some(c) = &self.compression {
            default("compression.type", c.clone());
        }
        // The batching producer's linger (see DEFAULT_LINGER); records published while little is
        // in flight skip it. `queue.buffering.max.ms` is librdkafka's alias of `linger.ms`.
        let linger = self.linger.unwrap_or(DEFAULT_LINGER);
        if !self.options.contains_key("queue.buffering.max.ms") {
            default("linger.ms", linger.as_millis().to_string());
        }
        if !self.options.contains_key("delivery.timeout.ms") {
            default("message.timeout.ms", timings.message_timeout.as_millis().to_string());
        }
        // librdkafka calls a topic unknown only after `topic.metadata.propagation.max.ms` (30 s by
        // default), longer than any message timeout here: a topic that does not exist and that the
        // cluster will not create would time out as retryable (503) on every retry. Half the
        // message timeout lets it fail as what it is (500) and still leaves a cluster that
        // auto-creates topics time to create a new one.
        default(
            "topic.metadata.propagation.max.ms",
            (timings.message_timeout / 2).as_millis().to_string(),
        );
        // Recover quickly when a broker comes back (librdkafka's default backs off up to 10s).
        default("reconnect.backoff.max.ms", "1000".into());
        props.insert("bootstrap.servers".into(), self.brokers.trim().to_string());
        props.insert("enable.idempotence".into(), "true".into());
        props.insert("acks".into(), "all".into());
        props.remove("request.required.acks");
        props
    }

    /// The properties as `key=value` text for logs and `check-config`, secrets redacted.
    pub fn describe(&self, ack_timeout: Duration) -> String {
        let props = self.properties(ack_timeout);
        let timings = self.timings(ack_timeout);
        let shown: Vec<String> = props
            .iter()
            .filter(|(k, _)| k.as_str() != "bootstrap.servers")
            .map(|(k, v)| format!("{k}={}", redacted_value(k, v)))
            .chain(self.secret_options.iter().map(|(k, src)| format!("{k}=*** ({src})")))
            .collect();
        format!(
            "brokers {} queue_timeout {} properties {{{}}}",
            self.brokers,
            humantime::format_duration(timings.queue_timeout),
            shown.join(", ")
        )
    }

    /// Files the producer reads its credentials from: `secret_options` given as `file`, and the
    /// `options` that name files (`ssl.ca.location`, `ssl.certificate.location`,
    /// `ssl.key.location`, `ssl.keystore.location`, `ssl.crl.location`; a CA *directory* is not
    /// watched). When one changes, the sink is rebuilt (see `state::State::rotate_credentials`).
    pub fn credential_files(&self) -> Vec<std::path::PathBuf> {
        let mut files: Vec<std::path::PathBuf> = self.secret_options.values().filter_map(|s| s.file.clone()).collect();
        for key in [
            "ssl.ca.location",
            "ssl.certificate.location",
            "ssl.key.location",
            "ssl.keystore.location",
            "ssl.crl.location",
        ] {
            if let Some(v) = self.option(key) {
                let path = std::path::PathBuf::from(v);
                if !path.is_dir() && v != "probe" {
                    files.push(path);
                }
            }
        }
        files
    }

    /// The values of `secret_options`, read now.
    pub fn secret_properties(&self) -> Result<Vec<(String, String)>, SecretOptionError> {
        self.secret_options
            .iter()
            .map(|(k, src)| {
                let secret = src
                    .load()
                    .map_err(|source| SecretOptionError::Unreadable { key: k.clone(), source })?;
                let value = String::from_utf8(secret.expose().to_vec())
                    .map_err(|_| SecretOptionError::NotUtf8 { key: k.clone() })?;
                Ok((k.clone(), value))
            })
            .collect()
    }

    /// Reads `secret_options` now; `path` is the key path of this sink. With every secret read,
    /// librdkafka checks the properties again with the secrets among them.
    pub fn read_files(&self, path: &str, ack_timeout: Duration, problems: &mut Problems) {
        let mut secret_values = Vec::new();
        for (key, src) in &self.secret_options {
            match src.load() {
                Ok(s) => match String::from_utf8(s.expose().to_vec()) {
                    Ok(v) => secret_values.push((key.clone(), v)),
                    Err(_) => problems.push(format!("{path}.secret_options.{key}"), "the secret is not valid UTF-8"),
                },
                Err(e) => problems.push(format!("{path}.secret_options.{key}"), e.to_string()),
            }
        }
        if problems.is_empty() && !secret_values.is_empty() {
            self.check_with_librdkafka(path, ack_timeout, secret_values, problems);
        }
    }

    /// librdkafka checks property names and values without connecting anywhere.
    #[cfg(feature = "kafka")]
    fn check_with_librdkafka(
        &self,
        path: &str,
        ack_timeout: Duration,
        secret_values: Vec<(String, String)>,
        problems: &mut Problems,
    ) {
        let mut cc = rdkafka::ClientConfig::new();
        for (k, v) in self.properties(ack_timeout).into_iter().chain(secret_values) {
            cc.set(k, v);
        }
        if let Err(e) = cc.create_native_config() {
            // Never rdkafka's own message: it quotes the refused value, which may be a password.
            let reason = super::config_error(&e);
            problems.push(format!("{path}.options"), format!("librdkafka refuses them: {reason}"));
        }
    }

    #[cfg(not(feature = "kafka"))]
    fn check_with_librdkafka(&self, _: &str, _: Duration, _: Vec<(String, String)>, _: &mut Problems) {}

    /// Checks; `path` is the key path of this sink, e.g. `sinks.events`. Pure: `secret_options`
    /// are read by [`Self::read_files`].
    pub fn validate(&self, path: &str, ack_timeout: Duration, problems: &mut Problems) {
        if !cfg!(feature = "kafka") {
            problems.push(format!("{path}.kind"), "this build of hookbridge has no kafka support");
        }
        if self.brokers.trim().is_empty() {
            problems.push(format!("{path}.brokers"), "must list at least one broker (host:port)");
        }
        for (key, why) in FORCED_BY_BRIDGE {
            if self.options.contains_key(*key) {
                problems.push(format!("{path}.options.{key}"), format!("cannot be set: {why}"));
            }
        }
        for (key, src) in &self.secret_options {
            let at = format!("{path}.secret_options.{key}");
            if self.options.contains_key(key) {
                problems.push(&at, format!("is also set as options.{key}; set it in one place only"));
            } else if FORCED_BY_BRIDGE.iter().any(|(k, _)| k == key)
                || ["acks", "request.required.acks", "enable.idempotence"].contains(&key.as_str())
            {
                problems.push(&at, "is set by hookbridge and cannot be changed");
            } else if let Err(e) = src.check() {
                problems.push(&at, e.to_string());
            }
        }
        for key in ["sasl.mechanism", "sasl.mechanisms"] {
            if let Some(v) = self.option(key) {
                if !SASL_MECHANISMS.iter().any(|m| m.eq_ignore_ascii_case(v)) {
                    let why = if v.eq_ignore_ascii_case("GSSAPI") {
                        "GSSAPI (Kerberos) is not built into hookbridge".to_string()
                    } else {
                        format!("`{v}` is not a SASL mechanism hookbridge supports")
                    };
                    problems.push(
                        format!("{path}.options.{key}"),
                        format!("{why}; use one of {}, or mutual TLS", SASL_MECHANISMS.join(", ")),
                    );
                }
            }
        }
        for key in ["acks", "request.required.acks"] {
            if let Some(v) = self.option(key) {
                if !(v.eq_ignore_ascii_case("all") || v == "-1") {
                    problems.push(
                        format!("{path}.options.{key}"),
                        format!(
                            "`{v}` would let the broker confirm records that are not yet on every \
                             in-sync replica; hookbridge always uses acks=all (remove the option)"
                        ),
                    );
                }
            }
        }
        if let Some(v) = self.option("enable.idempotence") {
            if !v.eq_ignore_ascii_case("true") {
                problems.push(
                    format!("{path}.options.enable.idempotence"),
                    format!(
                        "`{v}` is not allowed: the producer must be idempotent so retries after a \
                         broker failure neither lose nor reorder records (remove the option)"
                    ),
                );
            }
        }
        let clash = |field: &str, key: &str, problems: &mut Problems| {
            problems.push(
                format!("{path}.{field}"),
                format!("is also set as options.{key}; set it in one place only"),
            );
        };
        if self.client_id.is_some() && self.options.contains_key("client.id") {
            clash("client_id", "client.id", problems);
        }
        if self.compression.is_some() {
            for key in ["compression.type", "compression.codec"] {
                if self.options.contains_key(key) {
                    clash("compression", key, problems);
                }
            }
        }
        if self.linger.is_some() {
            for key in ["linger.ms", "queue.buffering.max.ms"] {
                if self.options.contains_key(key) {
                    clash("linger", key, problems);
                }
            }
        }
        if self.message_timeout.is_some() {
            for key in ["message.timeout.ms", "delivery.timeout.ms"] {
                if self.options.contains_key(key) {
                    clash("message_timeout", key, problems);
                }
            }
        }
        for key in ["message.timeout.ms", "delivery.timeout.ms"] {
            if let Some(v) = self.option(key) {
                if v.parse::<u64>().is_err() {
                    problems.push(format!("{path}.options.{key}"), "must be a number of milliseconds");
                }
            }
        }
        if let Some(c) = &self.compression {
            if !["none", "gzip", "snappy", "lz4", "zstd"].contains(&c.as_str()) {
                problems.push(
                    format!("{path}.compression"),
                    format!("`{c}` is not one of none, gzip, snappy, lz4, zstd"),
                );
            }
        }
        let t = self.timings(ack_timeout);
        let set_by = if self.message_timeout.is_some() {
            format!("{path}.message_timeout")
        } else if self.options.contains_key("message.timeout.ms") {
            format!("{path}.options.message.timeout.ms")
        } else {
            format!("{path}.options.delivery.timeout.ms")
        };
        let user_set_message_timeout = self.message_timeout.is_some()
            || self.options.contains_key("message.timeout.ms")
            || self.options.contains_key("delivery.timeout.ms");
        if user_set_message_timeout && t.message_timeout.is_zero() {
            problems.push(
                &set_by,
                "must be greater than 0 (0 means retry forever, which no request can wait for)",
            );
        } else if t.message_timeout + t.queue_timeout >= ack_timeout {
            let key = if user_set_message_timeout {
                set_by
            } else {
                format!("{path}.queue_timeout")
            };
            problems.push(
                key,
                format!(
                    "message timeout ({}) plus queue timeout ({}) must stay below ack_timeout ({}), \
                     so a failed delivery is reported before the request's deadline",
                    humantime::format_duration(t.message_timeout),
                    humantime::format_duration(t.queue_timeout),
                    humantime::format_duration(ack_timeout)
                ),
            );
        }
        if problems.is_empty() {
            self.check_with_librdkafka(path, ack_timeout, Vec::new(), problems);
        }
    }
}

/// Why a `secret_options` value could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretOptionError {
    #[error("secret_options.{key}: {source}")]
    Unreadable {
        key: String,
        #[source]
        source: crate::fields::SecretError,
    },
    #[error("secret_options.{key}: the secret is not valid UTF-8")]
    NotUtf8 { key: String },
}

impl SinkConfig for KafkaSinkConfig {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn destination(&self) -> Destination {
        Destination::Topic
    }

    fn validate(&self, path: &str, ack_timeout: Duration, problems: &mut Problems) {
        KafkaSinkConfig::validate(self, path, ack_timeout, problems);
    }

    fn read_files(&self, path: &str, ack_timeout: Duration, problems: &mut Problems) {
        KafkaSinkConfig::read_files(self, path, ack_timeout, problems);
    }

    fn credential_files(&self) -> Vec<std::path::PathBuf> {
        KafkaSinkConfig::credential_files(self)
    }

    fn describe(&self, ack_timeout: Duration) -> String {
        KafkaSinkConfig::describe(self, ack_timeout)
    }

    fn build<'a>(&'a self, name: &'a str, ack_timeout: Duration) -> BoxFuture<'a, Result<Arc<dyn Sink>, BoxError>> {
        #[cfg(feature = "kafka")]
        let built = super::KafkaSink::new(name, self, ack_timeout)
            .map(|sink| Arc::new(sink) as Arc<dyn Sink>)
            .map_err(BoxError::from);
        #[cfg(not(feature = "kafka"))]
        let built = {
            let _ = (name, ack_timeout);
            Err(BoxError::from("this build has no kafka support"))
        };
        futures::future::ready(built).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests write sink configs as JSON for brevity.
    fn parse(json: &str) -> KafkaSinkConfig {
        serde_json::from_str(json).expect("test config parses")
    }

    /// Validation's problems, then, as when the runtime is built, those of reading the secrets.
    fn problems(c: &KafkaSinkConfig, ack: Duration) -> Vec<String> {
        let mut p = Problems::default();
        c.validate("sinks.k", ack, &mut p);
        c.read_files("sinks.k", ack, &mut p);
        p.into_vec().iter().map(ToString::to_string).collect()
    }

    const FIVE: Duration = Duration::from_secs(5);

    #[test]
    fn defaults_are_idempotent_acks_all_below_ack_timeout() {
        let c = parse(r#"{"brokers":"127.0.0.1:9092"}"#);
        assert!(problems(&c, FIVE).is_empty());
        let p = c.properties(FIVE);
        assert_eq!(p["enable.idempotence"], "true");
        assert_eq!(p["acks"], "all");
        assert_eq!(p["bootstrap.servers"], "127.0.0.1:9092");
        assert_eq!(p["client.id"], "hookbridge");
        assert_eq!(p["message.timeout.ms"], "4000");
        assert_eq!(p["topic.metadata.propagation.max.ms"], "2000");
        assert_eq!(c.timings(FIVE).queue_timeout, Duration::from_millis(500));
        let t = c.timings(Duration::from_secs(2));
        assert_eq!(t.message_timeout, Duration::from_millis(1600));
        assert_eq!(t.queue_timeout, Duration::from_millis(200));
    }

    #[test]
    fn a_refused_property_is_named_without_its_value() {
        let c = parse(r#"{"brokers":"b:9092","options":{"sasl.jaas.config":"user=\"a\" password=\"hunter2\";"}}"#);
        let p = problems(&c, FIVE);
        assert!(p.iter().any(|m| m.contains("sasl.jaas.config")), "{p:?}");
        assert!(!p.iter().any(|m| m.contains("hunter2")), "{p:?}");
    }

    #[test]
    fn linger_defaults_to_one_millisecond_unless_set_either_way() {
        assert_eq!(parse(r#"{"brokers":"b:9092"}"#).properties(FIVE)["linger.ms"], "1");
        let p = parse(r#"{"brokers":"b:9092","options":{"linger.ms":7}}"#).properties(FIVE);
        assert_eq!(p["linger.ms"], "7");
        let p = parse(r#"{"brokers":"b:9092","options":{"queue.buffering.max.ms":9}}"#).properties(FIVE);
        assert_eq!(p["queue.buffering.max.ms"], "9");
        assert!(!p.contains_key("linger.ms"), "the alias must not be set twice: {p:?}");
    }

    #[test]
    fn options_pass_through_and_first_class_fills_gaps() {
        let c = parse(
            r#"{"brokers":"b:9092","client_id":"me","linger":"20ms",
                "options":{"security.protocol":"sasl_ssl","batch.size":65536,"enable.idempotence":true}}"#,
        );
        assert!(problems(&c, FIVE).is_empty(), "{:?}", problems(&c, FIVE));
        let p = c.properties(FIVE);
        assert_eq!(p["security.protocol"], "sasl_ssl");
        assert_eq!(p["batch.size"], "65536");
        assert_eq!(p["client.id"], "me");
        assert_eq!(p["linger.ms"], "20");
        // An option the user set wins over the bridge's default.
        let c = parse(r#"{"brokers":"b:9092","options":{"reconnect.backoff.max.ms":"5000","client.id":"x"}}"#);
        let p = c.properties(FIVE);
        assert_eq!(p["reconnect.backoff.max.ms"], "5000");
        assert_eq!(p["client.id"], "x");
        let c = parse(r#"{"brokers":"b:9092","options":{"topic.metadata.propagation.max.ms":"30000"}}"#);
        assert_eq!(c.properties(FIVE)["topic.metadata.propagation.max.ms"], "30000");
    }

    #[test]
    fn clashes_and_weakened_durability_are_errors_with_key_paths() {
        let c = parse(
            r#"{"brokers":"b:9092","client_id":"me","linger":"1ms","message_timeout":"1s",
                "options":{"client.id":"x","linger.ms":1,"message.timeout.ms":1000,
                           "acks":"1","enable.idempotence":"false","bootstrap.servers":"y",
                           "transactional.id":"t"}}"#,
        );
        let p = problems(&c, FIVE);
        for needle in [
            "sinks.k.client_id: is also set as options.client.id",
            "sinks.k.linger: is also set as options.linger.ms",
            "sinks.k.message_timeout: is also set as options.message.timeout.ms",
            "sinks.k.options.acks: `1` would let the broker confirm",
            "sinks.k.options.enable.idempotence: `false` is not allowed",
            "sinks.k.options.bootstrap.servers: cannot be set: set `brokers` instead",
            "sinks.k.options.transactional.id: cannot be set",
        ] {
            assert!(p.iter().any(|x| x.contains(needle)), "missing {needle:?} in {p:#?}");
        }
        let ok = parse(r#"{"brokers":"b:9092","options":{"acks":"-1"}}"#);
        assert!(problems(&ok, FIVE).is_empty());
        let ok = parse(r#"{"brokers":"b:9092","options":{"acks":"all"}}"#);
        assert!(problems(&ok, FIVE).is_empty());
    }

    #[test]
    fn message_timeout_must_stay_below_ack_timeout() {
        let c = parse(r#"{"brokers":"b:9092","message_timeout":"5s"}"#);
        let p = problems(&c, FIVE);
        assert!(
            p.iter()
                .any(|x| x.starts_with("sinks.k.message_timeout: message timeout (5s)")),
            "{p:?}"
        );
        let c = parse(r#"{"brokers":"b:9092","options":{"message.timeout.ms":"0"}}"#);
        let p = problems(&c, FIVE);
        assert!(
            p.iter()
                .any(|x| x.starts_with("sinks.k.options.message.timeout.ms: must be greater than 0")),
            "{p:?}"
        );
        let c = parse(r#"{"brokers":"b:9092","options":{"message.timeout.ms":"3000"}}"#);
        assert!(problems(&c, FIVE).is_empty());
        assert_eq!(c.properties(FIVE)["message.timeout.ms"], "3000");
    }

    #[cfg(feature = "kafka")]
    #[test]
    fn librdkafka_refuses_unknown_properties() {
        let c = parse(r#"{"brokers":"b:9092","options":{"no.such.property":"1"}}"#);
        let p = problems(&c, FIVE);
        assert!(
            p.iter()
                .any(|x| x.starts_with("sinks.k.options: librdkafka refuses them")),
            "{p:?}"
        );
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure type
    fn the_kafka_example_config_is_valid() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("STRIPE_WEBHOOK_SECRET", "whsec_example_from_env");
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/kafka.example.yaml");
            let s = crate::config::load(&path).map_err(|e| e.to_string())?;
            let kafka: Vec<_> = s
                .sinks
                .iter()
                .filter_map(|sink| match &sink.config {
                    crate::sink::SinkKind::Kafka(k) => Some(k),
                    _ => None,
                })
                .collect();
            assert_eq!(kafka.len(), 1);
            assert_eq!(kafka[0].properties(s.ack_timeout)["acks"], "all");
            let event = crate::route::Incoming {
                event_type: "customer.subscription.created",
                livemode: true,
                account: None,
                endpoint: Some("/webhooks/stripe"),
            };
            let (_, route) = s.router.route(&event).expect("routed");
            assert_eq!(route.targets.len(), 2, "fan-out");
            let secrets = crate::config::read_secrets(&s).map_err(|p| format!("{p:?}"))?;
            assert_eq!(secrets.0[0][0].expose(), b"whsec_example_from_env");
            Ok(())
        });
    }

    #[test]
    fn gssapi_and_unknown_mechanisms_are_refused_with_the_key() {
        for key in ["sasl.mechanism", "sasl.mechanisms"] {
            let c = parse(&format!(r#"{{"brokers":"b:9092","options":{{"{key}":"GSSAPI"}}}}"#));
            let p = problems(&c, FIVE);
            assert_eq!(p.len(), 1, "one line: {p:?}");
            assert!(
                p[0].starts_with(&format!(
                    "sinks.k.options.{key}: GSSAPI (Kerberos) is not built into hookbridge"
                )),
                "{p:?}"
            );
        }
        let c = parse(r#"{"brokers":"b:9092","options":{"sasl.mechanism":"NOPE"}}"#);
        assert!(problems(&c, FIVE)[0].contains("`NOPE` is not a SASL mechanism"));
        for m in ["SCRAM-SHA-512", "scram-sha-256", "PLAIN", "OAUTHBEARER"] {
            let c = parse(&format!(
                r#"{{"brokers":"b:9092","options":{{"security.protocol":"sasl_ssl","sasl.mechanism":"{m}"}}}}"#
            ));
            assert!(problems(&c, FIVE).is_empty(), "{m}: {:?}", problems(&c, FIVE));
        }
    }

    #[test]
    fn credential_files_are_secret_files_and_ssl_locations() {
        let dir = tempfile::tempdir().unwrap();
        let c = parse(
            r#"{"brokers":"b:9092","options":{"ssl.ca.location":"/etc/ca.pem","ssl.key.location":"/k.pem",
                 "ssl.certificate.location":"/c.pem","sasl.username":"u"},
                "secret_options":{"sasl.password":{"file":"/pw"},"ssl.key.password":{"value":"x"}}}"#,
        );
        let mut files: Vec<String> = c.credential_files().iter().map(|p| p.display().to_string()).collect();
        files.sort();
        assert_eq!(files, ["/c.pem", "/etc/ca.pem", "/k.pem", "/pw"]);
        let c = parse(&format!(
            r#"{{"brokers":"b:9092","options":{{"ssl.ca.location":"{}"}}}}"#,
            dir.path().display()
        ));
        assert!(c.credential_files().is_empty(), "a CA directory is not watched");
    }

    #[test]
    fn secrets_are_redacted_in_debug_and_describe() {
        let c = parse(
            r#"{"brokers":"b:9092","options":{"sasl.username":"alice","sasl.password":"hunter2",
                "sasl.oauthbearer.client.secret":"s3cr3t","ssl.key.password":"pw"}}"#,
        );
        let debug = format!("{c:?}");
        let described = c.describe(FIVE);
        for text in [&debug, &described] {
            assert!(
                !text.contains("hunter2") && !text.contains("s3cr3t") && !text.contains("\"pw\""),
                "{text}"
            );
            assert!(text.contains("alice"), "{text}");
        }
        assert!(described.contains("sasl.password=***"), "{described}");
    }

    #[test]
    fn secret_options_are_read_from_their_source_and_never_printed() {
        let c = parse(
            r#"{"brokers":"b:9092","options":{"sasl.username":"alice"},
                "secret_options":{"sasl.password":{"value":"hunter2"}}}"#,
        );
        assert!(problems(&c, FIVE).is_empty(), "{:?}", problems(&c, FIVE));
        assert_eq!(
            c.secret_properties().unwrap(),
            [("sasl.password".to_string(), "hunter2".to_string())]
        );
        assert!(!c.properties(FIVE).contains_key("sasl.password"));
        for text in [format!("{c:?}"), c.describe(FIVE)] {
            assert!(!text.contains("hunter2"), "{text}");
        }
        assert!(c.describe(FIVE).contains("sasl.password=*** (value:redacted)"));
        let c = parse(
            r#"{"brokers":"b:9092","options":{"sasl.password":"x"},
                "secret_options":{"sasl.password":{"env":"HOOKBRIDGE_TEST_SURELY_UNSET_VAR"},
                                  "ssl.key.password":{"env":"HOOKBRIDGE_TEST_SURELY_UNSET_VAR"},
                                  "acks":{"value":"1"}}}"#,
        );
        let p = problems(&c, FIVE);
        for needle in [
            "sinks.k.secret_options.sasl.password: is also set as options.sasl.password",
            "sinks.k.secret_options.ssl.key.password: environment variable HOOKBRIDGE_TEST_SURELY_UNSET_VAR is not set",
            "sinks.k.secret_options.acks: is set by hookbridge",
        ] {
            assert!(p.iter().any(|x| x.contains(needle)), "missing {needle:?} in {p:#?}");
        }
    }
}
