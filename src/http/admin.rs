//! The admin port: `/healthz`, `/readyz`, `/metrics`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde::Serialize;

use super::response::{json, text};
use crate::metrics::SinkLabel;
use crate::state::State;

/// How long `/readyz` waits for each sink's health check.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Serialize)]
struct Ready {
    ready: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    sinks: Vec<SinkHealth>,
}

#[derive(Serialize)]
struct SinkHealth {
    name: String,
    kind: &'static str,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

pub async fn handle(state: Arc<State>, req: Request<Incoming>, _peer: std::net::SocketAddr) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = json(
            StatusCode::METHOD_NOT_ALLOWED,
            &serde_json::json!({"error": "method_not_allowed", "message": "admin endpoints accept GET only"}),
        );
        resp.headers_mut()
            .insert(http::header::ALLOW, http::HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match req.uri().path() {
        "/healthz" => json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        "/readyz" => readyz(&state).await,
        "/metrics" => text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            {
                state.metrics.buffered_bytes.set(state.budget.held() as i64);
                state.metrics.encode()
            },
        ),
        _ => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": "not_found", "message": "admin paths are /healthz, /readyz and /metrics"}),
        ),
    }
}

async fn readyz(state: &State) -> Response<Full<Bytes>> {
    let live = state.live();
    let checks = futures::future::join_all(live.sinks.iter().map(|sink| async move {
        let result = match tokio::time::timeout(HEALTH_TIMEOUT, sink.health()).await {
            Ok(r) => r.map_err(|e| e.message),
            Err(_) => Err("health check timed out".to_string()),
        };
        (sink, result)
    }))
    .await;
    let mut sinks = Vec::with_capacity(checks.len());
    let mut all_ok = true;
    for (sink, result) in checks {
        let ok = result.is_ok();
        all_ok &= ok;
        state
            .metrics
            .sink_up
            .get_or_create(&SinkLabel {
                sink: sink.name().to_string(),
            })
            .set(i64::from(ok));
        sinks.push(SinkHealth {
            name: sink.name().to_string(),
            kind: sink.kind(),
            ok,
            error: result.err(),
        });
    }
    let draining = state.draining.load(Ordering::Relaxed);
    let ready = all_ok && !draining;
    let body = Ready {
        ready,
        reason: if draining {
            Some("shutting down")
        } else if !all_ok {
            Some("a sink is not connected")
        } else {
            None
        },
        sinks,
    };
    json(
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        &body,
    )
}
