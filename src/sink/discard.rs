//! The `discard` sink: confirms every message without storing it (benchmarks, dry runs).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::FutureExt;
use serde::Deserialize;

use super::{BoxError, Destination, Envelope, Sink, SinkConfig, SinkError};
use crate::fields::{duration, Problems};

/// Confirms every message without storing it: for benchmarks and dry runs.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscardSinkConfig {
    /// Wait this long before confirming, to simulate a broker's latency.
    #[serde(default, deserialize_with = "duration")]
    pub delay: Duration,
}

impl SinkConfig for DiscardSinkConfig {
    fn kind(&self) -> &'static str {
        "discard"
    }

    fn destination(&self) -> Destination {
        Destination::Topic
    }

    fn validate(&self, path: &str, _ack_timeout: Duration, problems: &mut Problems) {
        problems.at_most(&format!("{path}.delay"), self.delay, Duration::from_secs(3600));
    }

    fn describe(&self, _ack_timeout: Duration) -> String {
        format!("delay {}", humantime::format_duration(self.delay))
    }

    fn build<'a>(&'a self, name: &'a str, _ack_timeout: Duration) -> BoxFuture<'a, Result<Arc<dyn Sink>, BoxError>> {
        futures::future::ready(Ok(Arc::new(DiscardSink::new(name, self.delay)) as Arc<dyn Sink>)).boxed()
    }
}

pub struct DiscardSink {
    name: String,
    delay: Duration,
}

impl DiscardSink {
    pub fn new(name: &str, delay: Duration) -> Self {
        DiscardSink {
            name: name.to_string(),
            delay,
        }
    }
}

impl Sink for DiscardSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "discard"
    }

    fn publish<'a>(&'a self, _destination: &'a str, _envelope: &'a Envelope) -> BoxFuture<'a, Result<(), SinkError>> {
        async move {
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            Ok(())
        }
        .boxed()
    }

    fn health(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        futures::future::ready(Ok(())).boxed()
    }

    fn close(&self, _deadline: Instant) -> BoxFuture<'_, Result<(), SinkError>> {
        futures::future::ready(Ok(())).boxed()
    }
}
