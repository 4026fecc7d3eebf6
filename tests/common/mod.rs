//! Shared helpers for the integration tests: spawning a bridge on port 0, signing, posting.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use hookbridge::app::{self, Running};
use hookbridge::config::{self, Settings};
use hookbridge::sink::Sink;
use hookbridge::verify::{self, SystemClock};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

pub const SECRET: &str = "whsec_test_hookbridge";
pub const PATH: &str = "/webhooks/stripe";

/// Validated settings from YAML text (no environment overrides).
pub fn settings(yaml: &str) -> Settings {
    let raw = config::parse_str(yaml).unwrap_or_else(|e| panic!("test config does not parse: {e}"));
    config::validate(raw).unwrap_or_else(|p| panic!("test config is invalid: {p:?}"))
}

async fn listeners() -> (TcpListener, TcpListener) {
    (
        TcpListener::bind("127.0.0.1:0").await.expect("bind webhook"),
        TcpListener::bind("127.0.0.1:0").await.expect("bind admin"),
    )
}

/// Starts a bridge from YAML, building its sinks from the config, on ephemeral ports.
pub async fn spawn(yaml: &str) -> Running {
    let options = app::Options {
        listeners: Some(listeners().await),
        ..Default::default()
    };
    app::start(settings(yaml), options).await.expect("bridge starts")
}

/// Starts a bridge from YAML with the given sinks (in the order of the config's sorted sink names).
pub async fn spawn_with(yaml: &str, sinks: Vec<Arc<dyn Sink>>) -> Running {
    let (w, a) = listeners().await;
    app::start_with(settings(yaml), sinks, w, a, Arc::new(SystemClock)).expect("bridge starts")
}

/// A `Stripe-Signature` for `body` signed now with `secret`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    verify::sign(secret.as_bytes(), verify::unix_now(), body)
}

/// The path of a fixture file.
pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A fixture's bytes, exactly as on disk.
pub fn fixture(name: &str) -> Bytes {
    Bytes::from(std::fs::read(fixture_path(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}")))
}

/// A fixture with its event id replaced (the first `"id": "evt_…"` occurrence), for unique events.
pub fn fixture_with_id(name: &str, id: &str) -> Bytes {
    let text = String::from_utf8(fixture(name).to_vec()).expect("fixtures are UTF-8");
    let start = text.find("\"evt_").expect("fixture has an evt_ id") + 1;
    let end = start + text[start..].find('"').expect("closing quote");
    Bytes::from(format!("{}{}{}", &text[..start], id, &text[end..]))
}

/// A small compact event.
pub fn event(id: &str, event_type: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"id":"{id}","object":"event","api_version":"2024-06-20","created":1700000000,"data":{{"object":{{"id":"obj_{id}","object":"thing"}}}},"livemode":false,"pending_webhooks":1,"request":{{"id":null,"idempotency_key":null}},"type":"{event_type}"}}"#
    ))
}

/// An answer: status, headers and body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// The `error` code of a JSON error body.
    pub fn error_code(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_string()
    }
}

/// Sends one request on a fresh connection.
pub async fn request(addr: SocketAddr, method: Method, path: &str, headers: &[(&str, &str)], body: Bytes) -> Answer {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Full::new(body)).expect("request"))
        .await
        .expect("response");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    Answer { status, headers, body }
}

/// POSTs `body` to the webhook path with the given `Stripe-Signature` value.
pub async fn post_with_signature(addr: SocketAddr, signature: &str, body: Bytes) -> Answer {
    request(addr, Method::POST, PATH, &[("stripe-signature", signature)], body).await
}

/// POSTs `body` to the webhook path signed with [`SECRET`].
pub async fn post_signed(addr: SocketAddr, body: Bytes) -> Answer {
    let sig = sign(SECRET, &body);
    post_with_signature(addr, &sig, body).await
}

/// GETs an admin path.
pub async fn get(addr: SocketAddr, path: &str) -> Answer {
    request(addr, Method::GET, path, &[], Bytes::new()).await
}

/// Config YAML with one endpoint using [`SECRET`] plus the given `sinks:` and `routes:` sections.
pub fn yaml(sinks_and_routes: &str) -> String {
    format!(
        r#"
listen: "127.0.0.1:0"
admin_listen: "127.0.0.1:0"
ack_timeout: "2s"
endpoints:
  - path: {PATH}
    secrets:
      - value: {SECRET}
{sinks_and_routes}
"#
    )
}

/// The value of a metric line (first line starting with `prefix`), e.g.
/// `hookbridge_requests_total{endpoint="/webhooks/stripe",status="200"}`.
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Path of the built `hookbridge` binary.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_hookbridge")
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `hookbridge serve` child process on free ports; killed on drop if still running.
pub struct Served {
    pub child: std::process::Child,
    pub webhook: u16,
    pub admin: u16,
    pub config: PathBuf,
}

impl Served {
    pub fn webhook_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.webhook))
    }

    /// Puts this process's ports into YAML written with `127.0.0.1:0` addresses.
    pub fn with_ports(&self, yaml_text: &str) -> String {
        with_ports(yaml_text, self.webhook, self.admin)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn with_ports(yaml_text: &str, webhook: u16, admin: u16) -> String {
    yaml_text
        .replace(
            "admin_listen: \"127.0.0.1:0\"",
            &format!("admin_listen: \"127.0.0.1:{admin}\""),
        )
        .replacen(
            "listen: \"127.0.0.1:0\"",
            &format!("listen: \"127.0.0.1:{webhook}\""),
            1,
        )
}

/// Writes `yaml_text` (with `127.0.0.1:0` addresses) to `dir` with free ports filled in, starts
/// `hookbridge serve` on it, and waits until the admin port accepts connections.
pub fn serve_binary(dir: &std::path::Path, yaml_text: &str) -> Served {
    let (webhook, admin) = (free_port(), free_port());
    let config = dir.join("c.yaml");
    std::fs::write(&config, with_ports(yaml_text, webhook, admin)).unwrap();
    let child = std::process::Command::new(bin())
        .args(["serve", "--config", config.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let served = Served {
        child,
        webhook,
        admin,
        config,
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", admin)).is_err() {
        assert!(std::time::Instant::now() < deadline, "the bridge did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    served
}

/// A name (topic, queue, exchange, event id) no other test or earlier run uses.
pub fn unique(what: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "hookbridge-test.{what}.{}.{}.{}",
        nanos % 1_000_000_000_000,
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
