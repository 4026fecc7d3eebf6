//! The `discard` sink: confirms every message without storing it (benchmarks, dry runs).

use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::FutureExt;

use super::{Envelope, Sink, SinkError};

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
