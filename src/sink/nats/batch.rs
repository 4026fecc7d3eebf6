//! Publishes in batches when many are in flight.
//!
//! The NATS client writes what its command queue holds each time its connection task runs, and
//! that task runs right after each task that hands it a command. Publishes made by separate HTTP
//! requests therefore left one or two per socket write, and the server read, stored and
//! acknowledged them in as many small rounds: measured at 64 requests in flight, 0.3 client writes
//! and 0.34 server reads per message, against 0.02 and 0.17 with this queue (see
//! `bench/FINDINGS.md`). So when several publishes are already in flight, the sink queues a new
//! one here instead. The dispatcher task, woken by the first publish into an empty queue, yields
//! once (every task already runnable adds its publish meanwhile), hands the whole queue to the
//! client in one go, and gives each request the future of its acknowledgement to await.
//! Nothing waits on a timer: when few publishes are in flight they skip the queue.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_nats::jetstream::context::{PublishAckFuture, PublishError};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::Context;
use async_nats::HeaderMap;
use bytes::Bytes;
use tokio::sync::{oneshot, Notify};

/// The answer to one queued publish: the future of its acknowledgement once it was handed to the
/// client, or why it could not be.
pub(super) type Answer = oneshot::Receiver<Result<PublishAckFuture, PublishError>>;

/// A publish waiting in the queue.
struct Queued {
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
    answer: oneshot::Sender<Result<PublishAckFuture, PublishError>>,
}

/// The queue, filled by the sink and emptied by [`dispatch`].
pub(super) struct Batcher {
    queue: Mutex<Vec<Queued>>,
    wake: Notify,
    /// Publishes that went through the queue, for tests and diagnostics.
    queued: AtomicU64,
}

impl Batcher {
    pub fn new() -> Arc<Batcher> {
        Arc::new(Batcher {
            queue: Mutex::new(Vec::new()),
            wake: Notify::new(),
            queued: AtomicU64::new(0),
        })
    }

    /// Queues a publish; the first one into an empty queue wakes the dispatcher.
    pub fn push(&self, subject: String, headers: HeaderMap, payload: Bytes) -> Answer {
        let (answer, receiver) = oneshot::channel();
        let first = {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.push(Queued {
                subject,
                headers,
                payload,
                answer,
            });
            queue.len() == 1
        };
        self.queued.fetch_add(1, Ordering::Relaxed);
        if first {
            self.wake.notify_one();
        }
        receiver
    }

    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    fn take(&self, into: &mut Vec<Queued>) {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::swap(&mut *queue, into);
    }
}

/// The dispatcher task: hands each batch to the client and gives every publish the future of its
/// acknowledgement, which the request awaits itself (the acknowledgement wakes it directly). Runs
/// until the sink drops it. A publish whose request gave up meanwhile (its `ack_timeout` passed)
/// is still sent: the stream's duplicate window stores the retry once.
pub(super) async fn dispatch(batcher: Arc<Batcher>, js: Context) {
    let mut batch = Vec::new();
    loop {
        batcher.wake.notified().await;
        // Let every task that is ready to publish queue its message first.
        tokio::task::yield_now().await;
        batcher.take(&mut batch);
        for q in batch.drain(..) {
            let message = PublishMessage::build().payload(q.payload).headers(q.headers);
            // The request may have given up (its deadline passed): nobody to tell, and the
            // dropped future leaves the acknowledgement to the client.
            let _ = q.answer.send(js.send_publish(q.subject, message).await);
        }
    }
}
