//! The `nats` sink: publishes each event to a NATS JetStream subject and answers only after the
//! stream acknowledged it (stored it, on as many replicas as the stream demands).
//!
//! - One client (the official `async-nats`) connects in the background and reconnects by itself
//!   with a backoff capped at `reconnect_max_delay`; the sink is built even when no server is up.
//!   While it is not connected, publishes fail at once as retryable and `health()` says why
//!   (the last connection error: refused, TLS, authorization violation).
//! - Every message carries `Nats-Msg-Id` = the Stripe event id, so the stream drops a redelivery
//!   that arrives within its duplicate window, even through another hookbridge replica. An ack
//!   that says `duplicate` is a success: the event is stored.
//! - Errors: no stream for the subject, a message over the stream's `max_msg_size` or the server's
//!   `max_payload`, or a subject that is not valid are permanent (500); no server, a lost
//!   connection, no ack within `ack_timeout`, too many acks pending are retryable (503).
//! - While several publishes are in flight, new ones are sent in batches by one task (see
//!   [`batch`]): fewer, larger socket writes, so the server stores and acknowledges them in fewer
//!   rounds. Each request still waits for its own acknowledgement.
//! - `stream` in the config creates or checks the stream after each (re)connection; a failure
//!   there shows in `/readyz`.
//!
//! The config lives in [`config`], which a build without the `nats` feature keeps alone (see
//! `sink/mod.rs`).

mod batch;
pub mod config;
mod errors;
mod sink;

pub use self::sink::{context, NatsSink};

/// The header that JetStream deduplicates on.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";
