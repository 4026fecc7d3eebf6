//! The `file` sink: JSON Lines, one object per published message, written to a file or stdout.
//!
//! A dedicated writer thread takes every record queued at that moment, writes them, flushes (and
//! `fsync`s when asked), and only then confirms each of them: one flush serves many requests.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::FutureExt;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::{BoxError, Destination, Envelope, Sink, SinkConfig, SinkError};
use crate::fields::Problems;

/// JSON Lines, one object per published message, flushed before the publish is confirmed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// File to append to, or `-` for stdout.
    pub path: String,
    /// `fsync` each record before confirming (durable across power loss, slower). Default false:
    /// records are written to the OS before the answer.
    #[serde(default)]
    pub fsync: bool,
    /// `cloudevents` adds the CloudEvents attributes to each record's `headers`, named as in
    /// Kafka (`ce_id`, `ce_source`, …), to the usual `stripe-*` ones. Default `stripe`.
    #[serde(default)]
    pub headers: super::cloudevents::HeaderMode,
}

impl SinkConfig for FileSinkConfig {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn destination(&self) -> Destination {
        Destination::Topic
    }

    fn validate(&self, path: &str, _ack_timeout: Duration, problems: &mut Problems) {
        if self.path.trim().is_empty() {
            problems.push(format!("{path}.path"), "must be a file path or `-` for stdout");
        }
    }

    fn describe(&self, _ack_timeout: Duration) -> String {
        format!("path {}", self.path)
    }

    fn build<'a>(&'a self, name: &'a str, _ack_timeout: Duration) -> BoxFuture<'a, Result<Arc<dyn Sink>, BoxError>> {
        let built = FileSink::open(name, self)
            .map(|sink| Arc::new(sink) as Arc<dyn Sink>)
            .map_err(BoxError::from);
        futures::future::ready(built).boxed()
    }
}

/// Why the file sink could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open {path}: {}", crate::fields::io_reason(.source))]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start writer thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// How many records may wait for the writer before `publish` itself waits.
const QUEUE: usize = 4096;

enum Command {
    Write(Vec<u8>, oneshot::Sender<Result<(), String>>),
    Close(oneshot::Sender<()>),
}

pub struct FileSink {
    name: String,
    tx: mpsc::Sender<Command>,
    alive: Arc<AtomicBool>,
    /// Whether records also carry the CloudEvents `ce_*` headers.
    header_mode: super::cloudevents::HeaderMode,
}

/// One line of the file.
#[derive(Serialize)]
pub struct Line<'a> {
    pub sink: &'a str,
    pub destination: &'a str,
    pub key: &'a str,
    pub headers: Headers<'a>,
    pub payload: &'a str,
}

/// Headers as a JSON object, in the order given.
pub struct Headers<'a>(pub &'a [(&'static str, &'a str)]);

impl Serialize for Headers<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl FileSink {
    /// Opens (creates, appends to) the file, or uses stdout for `-`.
    pub fn open(name: &str, config: &FileSinkConfig) -> Result<Self, OpenError> {
        let out: Box<dyn Output> = if config.path == "-" {
            Box::new(Stdout)
        } else {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&config.path)
                .map_err(|source| OpenError::Open {
                    path: config.path.clone(),
                    source,
                })?;
            Box::new(AppendFile {
                file,
                fsync: config.fsync,
            })
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let alive = Arc::new(AtomicBool::new(true));
        let alive2 = alive.clone();
        std::thread::Builder::new()
            .name(format!("file-sink-{name}"))
            .spawn(move || {
                // Returns when closed, or when a failed write could not be undone: a file with a
                // partial record must not get confirmed records after it.
                writer(out, rx);
                alive2.store(false, Ordering::SeqCst);
            })
            .map_err(OpenError::Thread)?;
        Ok(FileSink {
            name: name.to_string(),
            tx,
            alive,
            header_mode: config.headers,
        })
    }

    fn line(&self, destination: &str, envelope: &Envelope) -> Result<Vec<u8>, SinkError> {
        let payload = std::str::from_utf8(envelope.payload())
            .map_err(|_| SinkError::permanent("the payload is not UTF-8 and cannot be written as a JSON string"))?;
        let ce = match self.header_mode {
            super::cloudevents::HeaderMode::Stripe => Vec::new(),
            super::cloudevents::HeaderMode::Cloudevents => {
                super::cloudevents::headers(envelope, super::cloudevents::Binding::Kafka)
            }
        };
        let mut headers = envelope.headers();
        headers.extend(ce.iter().map(|(k, v)| (*k, v.as_str())));
        let line = Line {
            sink: &self.name,
            destination,
            key: envelope.key(),
            headers: Headers(&headers),
            payload,
        };
        let mut buf = Vec::with_capacity(envelope.payload().len() + 512);
        serde_json::to_writer(&mut buf, &line)
            .map_err(|e| SinkError::permanent(format!("cannot encode record: {e}")))?;
        buf.push(b'\n');
        Ok(buf)
    }
}

/// Where the writer thread puts batches of lines.
trait Output: Send {
    /// Writes a batch of whole lines. On error nothing of the batch may stay behind, or, when it
    /// cannot be undone, `Err(Fatal)` stops the sink.
    fn write_batch(&mut self, batch: &[u8]) -> Result<(), WriteError>;
}

enum WriteError {
    /// The batch was not written (or was removed again): later batches may be tried.
    Failed(String),
    /// Part of the batch may be in the output for good: the sink must stop.
    Fatal(String),
}

/// An append-only file. A batch that fails half-way is cut off again, so a later confirmed record
/// never ends up glued to a partial one.
struct AppendFile {
    file: std::fs::File,
    /// `fsync` (data) each batch before confirming.
    fsync: bool,
}

impl Output for AppendFile {
    fn write_batch(&mut self, batch: &[u8]) -> Result<(), WriteError> {
        let start = self
            .file
            .metadata()
            .map_err(|e| WriteError::Failed(e.to_string()))?
            .len();
        let written = self
            .file
            .write_all(batch)
            .and_then(|()| if self.fsync { self.file.sync_data() } else { Ok(()) });
        match written {
            Ok(()) => Ok(()),
            Err(e) => match self.file.set_len(start) {
                Ok(()) => Err(WriteError::Failed(e.to_string())),
                Err(undo) => Err(WriteError::Fatal(format!(
                    "{e}; and the partial record could not be removed ({undo}), so the sink stopped"
                ))),
            },
        }
    }
}

/// Standard output: a partial write cannot be taken back, so a failed one stops the sink.
struct Stdout;

impl Output for Stdout {
    fn write_batch(&mut self, batch: &[u8]) -> Result<(), WriteError> {
        let mut out = std::io::stdout().lock();
        out.write_all(batch)
            .and_then(|()| out.flush())
            .map_err(|e| WriteError::Fatal(format!("{e}; stdout cannot be rewound, so the sink stopped")))
    }
}

fn writer(mut out: Box<dyn Output>, mut rx: mpsc::Receiver<Command>) {
    let mut batch = Vec::new();
    let mut waiting = Vec::new();
    while let Some(cmd) = rx.blocking_recv() {
        let mut close = None;
        let mut next = Some(cmd);
        while let Some(cmd) = next.take() {
            match cmd {
                Command::Write(line, ack) => {
                    batch.extend_from_slice(&line);
                    waiting.push(ack);
                }
                Command::Close(done) => {
                    close = Some(done);
                    break;
                }
            }
            if waiting.len() < 256 {
                next = rx.try_recv().ok();
            }
        }
        if !waiting.is_empty() {
            let (result, fatal) = match out.write_batch(&batch) {
                Ok(()) => (Ok(()), false),
                Err(WriteError::Failed(e)) => (Err(e), false),
                Err(WriteError::Fatal(e)) => (Err(e), true),
            };
            if let Err(e) = &result {
                tracing::error!(error = %e, "file sink write failed");
            }
            for ack in waiting.drain(..) {
                let _ = ack.send(result.clone());
            }
            batch.clear();
            if fatal {
                return;
            }
        }
        if let Some(done) = close {
            let _ = done.send(());
            return;
        }
    }
}

impl Sink for FileSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "file"
    }

    fn publish<'a>(&'a self, destination: &'a str, envelope: &'a Envelope) -> BoxFuture<'a, Result<(), SinkError>> {
        async move {
            let line = self.line(destination, envelope)?;
            let (ack_tx, ack_rx) = oneshot::channel();
            self.tx
                .send(Command::Write(line, ack_tx))
                .await
                .map_err(|_| SinkError::retryable("the file sink is closed"))?;
            match ack_rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(SinkError::retryable(format!("write failed: {e}"))),
                Err(_) => Err(SinkError::retryable("the file writer stopped")),
            }
        }
        .boxed()
    }

    fn health(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        let ok = self.alive.load(Ordering::SeqCst) && !self.tx.is_closed();
        futures::future::ready(if ok {
            Ok(())
        } else {
            Err(SinkError::retryable("the file writer stopped"))
        })
        .boxed()
    }

    fn close(&self, deadline: Instant) -> BoxFuture<'_, Result<(), SinkError>> {
        async move {
            let (done_tx, done_rx) = oneshot::channel();
            let wait = async {
                self.tx
                    .send(Command::Close(done_tx))
                    .await
                    .map_err(|_| SinkError::retryable("already closed"))?;
                done_rx
                    .await
                    .map_err(|_| SinkError::retryable("the file writer stopped"))
            };
            match tokio::time::timeout_at(deadline.into(), wait).await {
                Ok(r) => r,
                Err(_) => Err(SinkError::retryable("timed out flushing the file")),
            }
        }
        .boxed()
    }
}
