//! hookbridge receives Stripe webhooks, verifies their signatures, and republishes each raw event
//! to Kafka, RabbitMQ or a file, routed by event type. It answers Stripe 200 only after every
//! target confirmed the message durable.
//!
//! # Layout
//! - [`fields`]: what every config is made of: problems named by key path, secret sources,
//!   duration and scalar fields.
//! - [`config`]: the YAML/env config of the whole file in three shapes (raw, validated, runtime).
//! - [`verify`]: Stripe's signature scheme, with an injected clock; also signs for `hookbridge sign`.
//! - [`event`]: event metadata (id, type, account, object id…) read from the raw bytes.
//! - [`route`]: globs, filters (livemode, account, endpoint), destination templates, the
//!   first-match route table and the dead-letter targets.
//! - [`sink`]: the `Sink` trait, its error classes, the one enum of sink kinds with the
//!   `SinkConfig` trait each kind's config implements, the kafka, rabbitmq, nats, file, discard
//!   and in-memory sinks (each module owning its config, validation and construction), the TLS
//!   client config they share, and the optional CloudEvents headers.
//! - [`dedup`]: the bounded window of event ids already published.
//! - [`http`]: the accept loop, the webhook handler, the admin port and the error→response mapping.
//! - [`logging`]: log lines capped by bytes.
//! - [`metrics`]: Prometheus metrics.
//! - [`state`]: the running bridge's state shared by every request (live endpoints, routes and
//!   sinks, reloads and credential rotation) and the dead-letter step of the publish path.
//! - [`budget`]: the memory budget of request bodies held at once.
//! - [`tls`]: the webhook port's TLS certificate, loaded and reloaded from PEM files.
//! - [`app`]: wiring, serving and graceful shutdown.
//! - [`client`]: the HTTP client behind `hookbridge send`.
//! - [`bench`]: the load generator behind `hookbridge bench`.
//! - [`replay`]: `hookbridge replay`, events from Stripe's Events API through the same publish path.

pub mod app;
pub mod bench;
pub mod budget;
pub mod client;
pub mod config;
pub mod dedup;
pub mod event;
pub mod fields;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod replay;
pub mod route;
pub mod sink;
pub mod state;
pub mod tls;
pub mod verify;
