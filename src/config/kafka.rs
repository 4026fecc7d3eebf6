//! Config of the `kafka` sink.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::raw::Scalar;
use super::Problems;

/// A Kafka producer (librdkafka), idempotent with `acks=all`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Bootstrap servers, comma separated (`bootstrap.servers`).
    pub brokers: String,
    /// librdkafka properties passed through as given (SASL/SSL settings go here).
    #[serde(default)]
    pub options: BTreeMap<String, Scalar>,
}

impl KafkaSinkConfig {
    /// Pure checks; `path` is the key path of this sink, e.g. `sinks.events`.
    pub fn validate(&self, path: &str, _ack_timeout: std::time::Duration, problems: &mut Problems) {
        if self.brokers.trim().is_empty() {
            problems.push(format!("{path}.brokers"), "must list at least one broker (host:port)");
        }
    }
}
