//! An in-memory sink for tests: records what it was given, and can be told to fail or stall.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::FutureExt;

use super::{Envelope, Sink, SinkError};

/// One published message as the memory sink saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub destination: String,
    pub key: String,
    pub headers: Vec<(String, String)>,
    pub payload: bytes::Bytes,
}

/// What the memory sink does on `publish`.
#[derive(Debug, Clone, Default)]
pub enum Behaviour {
    /// Record and confirm.
    #[default]
    Confirm,
    /// Wait, then record and confirm.
    Delay(Duration),
    /// Never confirm.
    Stall,
    /// Fail with this error; nothing is recorded.
    Fail(SinkError),
}

/// A sink that keeps messages in memory. Cloning shares the same store.
#[derive(Clone)]
pub struct MemorySink {
    name: String,
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    behaviour: Behaviour,
    records: Vec<Recorded>,
    healthy: bool,
    closed: bool,
}

impl MemorySink {
    pub fn new(name: &str) -> Self {
        MemorySink {
            name: name.to_string(),
            inner: Arc::new(Mutex::new(Inner {
                healthy: true,
                ..Inner::default()
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_behaviour(&self, b: Behaviour) {
        self.lock().behaviour = b;
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.lock().healthy = healthy;
    }

    pub fn records(&self) -> Vec<Recorded> {
        self.lock().records.clone()
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }
}

impl Sink for MemorySink {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "memory"
    }

    fn publish<'a>(&'a self, destination: &'a str, envelope: &'a Envelope) -> BoxFuture<'a, Result<(), SinkError>> {
        async move {
            let behaviour = self.lock().behaviour.clone();
            match behaviour {
                Behaviour::Confirm => {}
                Behaviour::Delay(d) => tokio::time::sleep(d).await,
                Behaviour::Stall => futures::future::pending::<()>().await,
                Behaviour::Fail(e) => return Err(e),
            }
            self.lock().records.push(Recorded {
                destination: destination.to_string(),
                key: envelope.key().to_string(),
                headers: envelope
                    .headers()
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                payload: envelope.payload().clone(),
            });
            Ok(())
        }
        .boxed()
    }

    fn health(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        let healthy = self.lock().healthy;
        futures::future::ready(if healthy {
            Ok(())
        } else {
            Err(SinkError::retryable("memory sink set unhealthy"))
        })
        .boxed()
    }

    fn close(&self, _deadline: Instant) -> BoxFuture<'_, Result<(), SinkError>> {
        self.lock().closed = true;
        futures::future::ready(Ok(())).boxed()
    }
}
