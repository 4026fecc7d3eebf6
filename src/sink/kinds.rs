//! How the rest of hookbridge knows sinks: one enum, [`SinkKind`], with a variant per kind of
//! sink (selected by `kind:` in the config), each holding that sink's own config type, which
//! implements [`SinkConfig`]. Everything the core asks of a sink's config (its validation, the
//! field its route targets name, its credential files, its `check-config` line, building the sink)
//! goes through that trait, so a new sink is one module plus one variant here, and the compiler
//! points at the one `match` that must learn it ([`SinkKind::config`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Deserialize;

use super::{amqp, discard, file, kafka, nats, Sink};
use crate::fields::Problems;

/// Any error, boxed: each sink builds with errors of its own type.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A sink, selected by `kind`: the config of `sinks.<name>`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SinkKind {
    Kafka(kafka::config::KafkaSinkConfig),
    Rabbitmq(amqp::config::RabbitMqSinkConfig),
    File(file::FileSinkConfig),
    Discard(discard::DiscardSinkConfig),
    /// Boxed: by far the largest config, and sinks are few.
    Nats(Box<nats::config::NatsSinkConfig>),
}

impl SinkKind {
    /// The sink's own config, behind the trait every kind implements.
    pub fn config(&self) -> &dyn SinkConfig {
        match self {
            SinkKind::Kafka(c) => c,
            SinkKind::Rabbitmq(c) => c,
            SinkKind::File(c) => c,
            SinkKind::Discard(c) => c,
            SinkKind::Nats(c) => c.as_ref(),
        }
    }

    /// `kafka`, `rabbitmq`, `nats`, `file`, `discard`: the `kind:` of the config.
    pub fn kind(&self) -> &'static str {
        self.config().kind()
    }
}

/// Which field of a route's target names the destination in this kind of sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// `topic` (Kafka, file, discard).
    Topic,
    /// `routing_key` (RabbitMQ).
    RoutingKey,
    /// `subject` (NATS).
    Subject,
}

impl Destination {
    /// The config key of this field.
    pub fn key(self) -> &'static str {
        match self {
            Destination::Topic => "topic",
            Destination::RoutingKey => "routing_key",
            Destination::Subject => "subject",
        }
    }
}

/// One kind of sink's config, as read from `sinks.<name>` (after `kind:`): what the core needs to
/// validate it, describe it, watch its credentials and build the [`Sink`] from it.
pub trait SinkConfig: std::fmt::Debug + Send + Sync {
    /// The `kind:` that selects this config, e.g. `kafka`.
    fn kind(&self) -> &'static str;

    /// The field of a route's target that names where a message goes.
    fn destination(&self) -> Destination;

    /// Pushes every problem of this config; `path` is its key path, e.g. `sinks.events`, and
    /// `ack_timeout` the longest a request waits for the sink.
    fn validate(&self, path: &str, ack_timeout: Duration, problems: &mut Problems);

    /// Reads the secrets and credential files this config names, now, pushing a problem (at its
    /// key under `path`) for each that cannot be used. Runs when the runtime is built (`serve`,
    /// `check-config`, a reload), never during validation, which reads nothing. Default: nothing
    /// to read.
    fn read_files(&self, path: &str, ack_timeout: Duration, problems: &mut Problems) {
        let _ = (path, ack_timeout, problems);
    }

    /// Files the sink reads its credentials from (passwords, client certificates and keys, CA
    /// bundles). When one changes, the sink is rebuilt (see `state::State::rotate_credentials`).
    fn credential_files(&self) -> Vec<PathBuf> {
        Vec::new()
    }

    /// One line for `check-config`, secrets redacted.
    fn describe(&self, ack_timeout: Duration) -> String;

    /// Builds the sink named `name`. A broker that is down does not fail this: the sink
    /// reconnects by itself.
    fn build<'a>(&'a self, name: &'a str, ack_timeout: Duration) -> BoxFuture<'a, Result<Arc<dyn Sink>, BoxError>>;
}

/// A validated sink: its name and config.
#[derive(Debug, Clone)]
pub struct SinkSettings {
    pub name: String,
    pub config: SinkKind,
}

/// What a sink's credential files held when it was built: a SHA-256 of each file, `None` for one
/// that could not be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CredentialStamp(Vec<(PathBuf, Option<[u8; 32]>)>);

impl CredentialStamp {
    /// Reads the credential files of `settings` now.
    pub fn read(settings: &SinkSettings) -> Self {
        let files = settings.config.config().credential_files();
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

/// Why a sink could not be built at start-up (a broker being down is not one of them).
#[derive(Debug, thiserror::Error)]
#[error("sink {name}: {source}")]
pub struct BuildError {
    pub name: String,
    #[source]
    pub source: BoxError,
}

/// Builds every sink of the config, in the order of `Settings::sinks`.
pub async fn build_all(sinks: &[SinkSettings], ack_timeout: Duration) -> Result<Vec<Arc<dyn Sink>>, BuildError> {
    let mut out: Vec<Arc<dyn Sink>> = Vec::with_capacity(sinks.len());
    for s in sinks {
        out.push(build(s, ack_timeout).await?);
    }
    Ok(out)
}

/// Builds one sink. Brokers that are down do not fail this: the sink reconnects by itself.
pub async fn build(s: &SinkSettings, ack_timeout: Duration) -> Result<Arc<dyn Sink>, BuildError> {
    s.config
        .config()
        .build(&s.name, ack_timeout)
        .await
        .map_err(|source| BuildError {
            name: s.name.clone(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_names_itself_as_its_config_tag() {
        for (yaml, kind) in [
            ("kind: kafka\nbrokers: b:9092", "kafka"),
            ("kind: rabbitmq\nurl: amqp://h/\nexchange: e", "rabbitmq"),
            ("kind: file\npath: out.jsonl", "file"),
            ("kind: discard", "discard"),
            ("kind: nats\nservers: h:4222", "nats"),
        ] {
            let sink: SinkKind = figment::Figment::new()
                .merge(<figment::providers::Yaml as figment::providers::Format>::string(yaml))
                .extract()
                .unwrap_or_else(|e| panic!("{yaml}: {e}"));
            assert_eq!(sink.kind(), kind);
        }
    }
}
