//! The webhook handler: the path of one event from request to answer.
//!
//! endpoint lookup → method → body (limit enforced while reading) → verify → metadata →
//! dedup → route → publish to every target concurrently → worst outcome wins → answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};

use super::body_buf::BodyBuf;
use super::client_ip::{allowed, client_ip};
use super::response::{received, Rejection};
use crate::budget::Lease;
use crate::dedup::{target_key, Claim};
use crate::event::EventMeta;
use crate::metrics::{
    EndpointLabel, EndpointReason, EndpointStatus, ReasonLabel, SinkDestination, SinkError as SinkErrorLabels,
    SinkLabel,
};
use crate::route;
use crate::sink::{Envelope, ErrorClass, SinkError};
use crate::state::{Live, State};

/// Counts a request in `hookbridge_in_flight_requests` while it lives.
struct InFlight<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> InFlight<'a> {
    fn enter(gauge: &'a prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        InFlight(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What happened to a request, for the access log.
struct Outcome {
    /// The event, once its body was verified and read.
    event: Option<EventMeta>,
    note: &'static str,
}

/// Handles one request on the webhook port.
pub async fn handle(state: Arc<State>, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
    let start = Instant::now();
    let live = state.live();
    let client = client_ip(peer.ip(), req.headers(), &live.http);
    if !allowed(client, &live.http) {
        tracing::warn!(%client, "refused: address outside http.allow_networks");
        return finish(&state, &live, None, start, Err(Rejection::Forbidden), Outcome::empty());
    }
    let Some(endpoint) = live.endpoints.get(req.uri().path()) else {
        return finish(&state, &live, None, start, Err(Rejection::NotFound), Outcome::empty());
    };
    let limit = state.max_header_bytes;
    if head_size(&req) > limit {
        let too_large = Err(Rejection::HeadersTooLarge { limit });
        return finish(&state, &live, Some(endpoint), start, too_large, Outcome::empty());
    }
    // The cap on requests in flight: beyond it, answer at once rather than queue bodies in memory.
    let Ok(_permit) = state.limiter.try_acquire() else {
        let busy = Rejection::Unavailable("too many requests in flight; retry later".into());
        return finish(&state, &live, Some(endpoint), start, Err(busy), Outcome::empty());
    };
    // A guard, not inc/dec: hyper drops this future when the client goes away.
    let _in_flight = InFlight::enter(&state.metrics.in_flight);
    let mut outcome = Outcome::empty();
    let result = process(&state, &live, endpoint, req, start, &mut outcome).await;
    finish(&state, &live, Some(endpoint), start, result, outcome)
}

/// The size of the request line and headers as sent on the wire (`METHOD SP target SP
/// HTTP/1.1 CRLF`, `name: value CRLF` each, the closing CRLF).
fn head_size<B>(req: &Request<B>) -> usize {
    let target = req.uri().path_and_query().map_or(1, |p| p.as_str().len());
    let line = req.method().as_str().len() + 1 + target + " HTTP/1.1\r\n".len();
    let headers: usize = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + 2 + v.len() + 2)
        .sum();
    line + headers + 2
}

impl Outcome {
    fn empty() -> Self {
        Outcome { event: None, note: "" }
    }

    fn event_id(&self) -> &str {
        self.event.as_ref().map_or("", |e| e.id.as_str())
    }

    fn event_type(&self) -> &str {
        self.event.as_ref().map_or("", |e| e.event_type.as_str())
    }
}

async fn process(
    state: &State,
    live: &Live,
    endpoint: &crate::state::Endpoint,
    req: Request<Incoming>,
    start: Instant,
    outcome: &mut Outcome,
) -> Result<(), Rejection> {
    if req.method() != Method::POST {
        return Err(Rejection::MethodNotAllowed);
    }
    let limit = live.max_body_bytes;
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(Rejection::PayloadTooLarge { limit });
    }
    let signature = req.headers().get("stripe-signature").cloned();
    // Held until the request is answered: the body lives that long.
    let mut lease = state.budget.lease();
    let evicted = lease.eviction();
    let read = read_body(state, req.into_body(), limit as usize, declared, &mut lease);
    let body = tokio::select! {
        body = tokio::time::timeout(live.http.body_read_timeout, read) => match body {
            Ok(body) => body?,
            Err(_) => return Err(Rejection::BodyTimeout),
        },
        () = state.body_cut_off() => {
            return Err(Rejection::Unavailable("shutting down; retry".into()));
        }
        () = evicted.notified() => {
            state.metrics.budget_refused.get_or_create(&ReasonLabel { reason: "evicted" }).inc();
            return Err(Rejection::Unavailable(
                "the body arrived too slowly while memory for bodies was short; retry later".into(),
            ));
        }
    };
    lease.done_reading();

    let verifier = endpoint.verifier.load();
    let now = state.clock.now();
    let signed = verifier
        .verify_body(signature.as_ref().map(|v| v.as_bytes()), body, now)
        .map_err(Rejection::Signature)?;
    let envelope = Envelope::verified(signed).map_err(Rejection::Event)?;
    // The lines logged about this event name it in their own fields (`event_id`, `event_type`),
    // not through a span: a span cost about 1 µs per event (see bench/FINDINGS.md).
    let result = deliver(state, live, endpoint, &envelope, start, outcome).await;
    outcome.event = Some(envelope.into_meta());
    result
}

/// Dedup, route and publish one verified event.
async fn deliver(
    state: &State,
    live: &Live,
    endpoint: &crate::state::Endpoint,
    envelope: &Envelope,
    start: Instant,
    outcome: &mut Outcome,
) -> Result<(), Rejection> {
    let meta = envelope.meta();
    let label = || EndpointLabel {
        endpoint: endpoint.path.clone(),
    };
    let claim = match state.dedup.claim(&meta.id, Instant::now()) {
        Claim::Claimed(claim) => claim,
        Claim::Published => {
            state.metrics.duplicates.get_or_create(&label()).inc();
            outcome.note = "duplicate";
            return Ok(());
        }
        // Stripe retries; by then the first copy is published (200 as a duplicate) or failed.
        Claim::InFlight => {
            outcome.note = "in flight";
            return Err(Rejection::Unavailable(
                "the same event is being published by another request; retry later".into(),
            ));
        }
    };
    let Some((route_index, route)) = live.router.route(&route::Incoming::new(meta, Some(&endpoint.path))) else {
        state.metrics.unrouted.get_or_create(&label()).inc();
        outcome.note = "unrouted";
        tracing::debug!(event_id = %meta.id, event_type = %meta.event_type, "no route matches; dropped");
        return Ok(());
    };

    let already = |key: &str| claim.already_confirmed(key);
    let (result, confirmed) = publish_all(state, live, route_index, route, envelope, start, &already).await;
    match result {
        Ok(()) => claim.published(Instant::now()),
        // The targets that confirmed are remembered: Stripe's retry goes only to the others.
        Err(e) => {
            claim.partly_published(confirmed, Instant::now());
            return Err(e.into());
        }
    }
    Ok(())
}

/// Reads a body into one buffer whose every growth is first taken from the body budget (see
/// [`crate::budget`]), so that what bodies hold stays within `http.max_buffered_bytes`.
async fn read_body(
    state: &State,
    mut body: Incoming,
    limit: usize,
    declared: Option<u64>,
    lease: &mut Lease<'_>,
) -> Result<Bytes, Rejection> {
    // The first allocation: the declared length (one allocation, never copied), else 16 KiB
    // and doubling. A large body gets a memory mapping of its own (see `body_buf`).
    let first = declared.map_or(16 * 1024, |d| (d as usize).clamp(1, limit));
    let mut buf = BodyBuf::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(Rejection::BadBody("the request body could not be read".into()));
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let needed = buf.len() + data.len();
        if needed > limit {
            return Err(Rejection::PayloadTooLarge { limit: limit as u64 });
        }
        if needed > buf.capacity() {
            let grown = needed.max(buf.capacity() * 2).max(first).min(limit);
            if lease.grow_to(grown).await.is_err() {
                state
                    .metrics
                    .budget_refused
                    .get_or_create(&ReasonLabel { reason: "refused" })
                    .inc();
                return Err(Rejection::Unavailable(
                    "no memory for the request body now; retry later".into(),
                ));
            }
            buf.grow_to(grown).map_err(no_memory)?;
        }
        buf.extend_from_slice(&data).map_err(no_memory)?;
    }
    Ok(buf.into_bytes())
}

/// The system had no memory to map for a large body: the client may retry.
fn no_memory(e: std::io::Error) -> Rejection {
    tracing::warn!(error = %e, "cannot map memory for a request body");
    Rejection::Unavailable("no memory for the request body now; retry later".into())
}

/// Publishes to every target of `route` (the route at `route_index` of `live.router`)
/// concurrently, each bounded by `ack_timeout`, except those that `already_confirmed` says an
/// earlier try of this event published to; the worst outcome wins (a permanent failure over a
/// retryable one). Also returns the targets ([`target_key`]) that confirmed in this try. The one
/// publish path: the webhook handler and `hookbridge replay` both call it, so a replayed event is
/// published, counted and logged exactly as a delivered one.
pub async fn publish_all(
    state: &State,
    live: &Live,
    route_index: usize,
    route: &route::Route,
    envelope: &Envelope,
    start: Instant,
    already_confirmed: &(dyn Fn(&str) -> bool + Sync),
) -> (Result<(), SinkError>, Vec<String>) {
    let targets = route::destinations(route, envelope.meta());
    let ack_timeout = live.ack_timeout;
    let deadline = Instant::now() + ack_timeout;
    let results = futures::future::join_all(targets.iter().enumerate().map(|(i, (target, destination))| async move {
        let Some(sink) = live.sinks.get(target.sink) else {
            // Routes and sinks are validated together; this would be a wiring bug, not input.
            let e = SinkError::permanent(format!("route names sink #{} that is not running", target.sink));
            return (None, Err(e));
        };
        let key = target_key(sink.name(), destination);
        if already_confirmed(&key) {
            tracing::debug!(
                event_id = %envelope.meta().id,
                event_type = %envelope.meta().event_type,
                sink = sink.name(),
                destination,
                "confirmed by an earlier try; not published again"
            );
            return (None, Ok(()));
        }
        let result = match tokio::time::timeout(ack_timeout, sink.publish(destination, envelope)).await {
            Ok(r) => r,
            Err(_) => Err(SinkError::retryable(format!(
                "sink {} did not confirm within {}",
                sink.name(),
                humantime::format_duration(ack_timeout)
            ))),
        };
        match (&result, live.target_metrics.get(route_index).and_then(|t| t.get(i))) {
            (Ok(()), Some(metrics)) => {
                metrics.published.inc();
                metrics.seconds.observe(start.elapsed().as_secs_f64());
            }
            _ => record(
                state,
                envelope,
                sink.name(),
                target.destination.as_str(),
                destination,
                start,
                &result,
            ),
        }
        let result = match (result, live.router.dead_letter_for(route)) {
            (Err(e), Some(dl)) if !e.is_retryable() => {
                let template = dl.destination.as_str();
                let on_publish =
                    |s: &str, d: &str, r: &Result<(), SinkError>| record(state, envelope, s, template, d, start, r);
                crate::state::dead_letter(
                    state,
                    live,
                    dl,
                    sink.name(),
                    destination,
                    envelope,
                    e,
                    deadline,
                    on_publish,
                )
                .await
            }
            (result, _) => result,
        };
        (Some(key), result)
    }))
    .await;
    let mut worst: Option<SinkError> = None;
    let mut confirmed = Vec::new();
    for (key, r) in results {
        match r {
            Ok(()) => confirmed.extend(key),
            Err(e) => {
                let replace = match &worst {
                    None => true,
                    Some(w) => w.class == ErrorClass::Retryable && e.class == ErrorClass::Permanent,
                };
                if replace {
                    worst = Some(e);
                }
            }
        }
    }
    match worst {
        None => (Ok(()), confirmed),
        Some(e) => (Err(e), confirmed),
    }
}

/// Counts a publish under the route's destination template (a bounded label: one series per
/// target, not per Connect account or event type) and logs a failure with the rendered one and
/// the event's id and type.
fn record(
    state: &State,
    envelope: &Envelope,
    sink: &str,
    template: &str,
    destination: &str,
    start: Instant,
    result: &Result<(), SinkError>,
) {
    match result {
        Ok(()) => {
            state
                .metrics
                .published
                .get_or_create(&SinkDestination {
                    sink: sink.to_string(),
                    destination: template.to_string(),
                })
                .inc();
            state
                .metrics
                .publish_seconds
                .get_or_create(&SinkLabel { sink: sink.to_string() })
                .observe(start.elapsed().as_secs_f64());
        }
        Err(e) => {
            state
                .metrics
                .publish_errors
                .get_or_create(&SinkErrorLabels {
                    sink: sink.to_string(),
                    destination: template.to_string(),
                    class: e.class.as_str(),
                })
                .inc();
            let meta = envelope.meta();
            tracing::warn!(
                event_id = %meta.id,
                event_type = %meta.event_type,
                sink,
                destination,
                class = e.class.as_str(),
                error = %e.message,
                "publish failed"
            );
        }
    }
}

fn finish(
    state: &State,
    live: &Live,
    endpoint: Option<&crate::state::Endpoint>,
    start: Instant,
    result: Result<(), Rejection>,
    outcome: Outcome,
) -> Response<Full<Bytes>> {
    let (response, status, reason) = match result {
        Ok(()) => (received(), StatusCode::OK, None),
        Err(r) => {
            let status = r.status();
            let code = r.code();
            (r.into_response(retry_after(live.ack_timeout)), status, Some(code))
        }
    };
    let elapsed = start.elapsed();
    if let Some(endpoint) = endpoint {
        if status == StatusCode::OK {
            endpoint.answered_ok.inc();
        } else {
            state
                .metrics
                .requests
                .get_or_create(&EndpointStatus {
                    endpoint: endpoint.path.clone(),
                    status: status.as_u16(),
                })
                .inc();
        }
        if let Some(reason) = reason.filter(|_| status.is_client_error()) {
            state
                .metrics
                .rejected
                .get_or_create(&EndpointReason {
                    endpoint: endpoint.path.clone(),
                    reason,
                })
                .inc();
        }
        state.metrics.ack_seconds.observe(elapsed.as_secs_f64());
    }
    let endpoint = endpoint.map_or("", |e| e.path.as_str());
    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    if status.is_server_error() || (status.is_client_error() && status != StatusCode::NOT_FOUND) {
        tracing::warn!(
            endpoint,
            event_id = outcome.event_id(),
            event_type = outcome.event_type(),
            status = status.as_u16(),
            reason = reason.unwrap_or(""),
            latency_ms,
            "webhook rejected"
        );
    } else {
        tracing::info!(
            endpoint,
            event_id = outcome.event_id(),
            event_type = outcome.event_type(),
            status = status.as_u16(),
            note = outcome.note,
            latency_ms,
            "webhook"
        );
    }
    response
}

fn retry_after(ack_timeout: Duration) -> u64 {
    ack_timeout.as_secs().max(1)
}
