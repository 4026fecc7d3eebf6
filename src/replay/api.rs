//! A small client for Stripe's `GET /v1/events`: HTTP/1.1 over hyper, TLS with rustls and the
//! system's root certificates, one keep-alive connection, every wait bounded, retries with backoff
//! where Stripe says a retry may succeed. The API key is sent and never shown: any text from the
//! API is redacted of it before it reaches a message.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::filter::ApiTypes;
use super::window::Window;

/// Stripe's API.
pub const DEFAULT_API_BASE: &str = "https://api.stripe.com";
/// Events per page: the API's maximum.
pub const PAGE_LIMIT: u32 = 100;
/// Longest wait to connect (TCP and TLS).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for one page, from sending the request to the end of the body.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Retries of one page before giving up.
pub const MAX_RETRIES: u32 = 8;
/// First backoff; doubled on each retry up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
pub const MAX_BACKOFF: Duration = Duration::from_secs(16);
/// The longest `Retry-After` honoured as given.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Why listing events failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("`{0}` is not an http:// or https:// URL")]
    BadBase(String),
    #[error("Stripe refused the API key (401): {0}")]
    Unauthorized(String),
    #[error("the API key may not list events (403): {0}; a restricted key needs read access to Events")]
    Forbidden(String),
    #[error("Stripe refused the request ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("gave up after {attempts} attempts: {last}")]
    GaveUp { attempts: u32, last: String },
    #[error("the API answered something that is not a list of events: {0}")]
    BadPage(String),
    #[error("TLS: {0}")]
    Tls(String),
}

/// One page: each event's JSON exactly as the API sent it, newest first.
#[derive(Debug, Clone)]
pub struct Page {
    pub events: Vec<Bytes>,
    pub has_more: bool,
}

/// What to list.
#[derive(Debug, Clone)]
pub struct Query {
    pub window: Window,
    pub undelivered: bool,
    pub types: ApiTypes,
}

impl Query {
    /// The query string for one page (keys and values percent-encoded as Stripe's SDKs do).
    pub fn to_query_string(&self, starting_after: Option<&str>) -> String {
        let mut q = vec![
            ("created[gte]".to_string(), self.window.gte.to_string()),
            ("created[lte]".to_string(), self.window.lte.to_string()),
            ("limit".to_string(), PAGE_LIMIT.to_string()),
        ];
        if self.undelivered {
            q.push(("delivery_success".into(), "false".into()));
        }
        match &self.types {
            ApiTypes::All => {}
            ApiTypes::Group(g) => q.push(("type".into(), g.clone())),
            ApiTypes::Exact(names) => q.extend(names.iter().map(|n| ("types[]".to_string(), n.clone()))),
        }
        if let Some(id) = starting_after {
            q.push(("starting_after".into(), id.to_string()));
        }
        q.iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect::<Vec<_>>()
            .join("&")
    }
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Splits a list page into its events, each the exact bytes of one element of `data`.
pub fn parse_page(body: &Bytes) -> Result<Page, ApiError> {
    #[derive(Deserialize)]
    struct RawPage<'a> {
        #[serde(borrow)]
        data: Vec<&'a RawValue>,
        has_more: bool,
    }
    let page: RawPage = serde_json::from_slice(body).map_err(|e| ApiError::BadPage(e.to_string()))?;
    let base = body.as_ptr() as usize;
    let events = page
        .data
        .iter()
        .map(|raw| {
            let text = raw.get();
            let start = text.as_ptr() as usize - base;
            body.slice(start..start + text.len())
        })
        .collect();
    Ok(Page {
        events,
        has_more: page.has_more,
    })
}

/// Where the API is.
#[derive(Debug, Clone)]
struct Base {
    https: bool,
    host: String,
    port: u16,
    /// The `Host` header.
    authority: String,
    /// Path before `/v1/events`, without a trailing slash.
    prefix: String,
}

impl Base {
    fn parse(url: &str) -> Result<Base, ApiError> {
        let bad = || ApiError::BadBase(url.to_string());
        let uri: Uri = url.trim_end_matches('/').parse().map_err(|_| bad())?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad()),
        };
        let authority = uri.authority().ok_or_else(bad)?;
        if uri.query().is_some() {
            return Err(bad());
        }
        Ok(Base {
            https,
            host: authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
            authority: authority.to_string(),
            prefix: uri.path().trim_end_matches('/').to_string(),
        })
    }
}

/// Why a connection could not be made.
enum ConnectError {
    /// Worth another try (refused, reset, timed out).
    Retry(String),
    /// The server's certificate (or name) is not acceptable: no retry helps.
    Certificate(String),
}

/// How one attempt went.
enum Attempt {
    Done(Bytes),
    /// Worth retrying, after `after` when the API said so.
    Retry {
        after: Option<Duration>,
        why: String,
    },
    Fail(ApiError),
}

/// A client for the Events API.
pub struct Api {
    base: Base,
    key: String,
    tls: Option<tokio_rustls::TlsConnector>,
    conn: Option<SendRequest<Empty<Bytes>>>,
    /// Retries made so far (429s, 5xx, lost connections), for the summary.
    pub retries: u32,
    /// Pages fetched so far.
    pub pages: u32,
}

impl Api {
    pub fn new(base: &str, key: &str) -> Result<Api, ApiError> {
        let base = Base::parse(base)?;
        let tls = if base.https { Some(tls_connector()?) } else { None };
        Ok(Api {
            base,
            key: key.to_string(),
            tls,
            conn: None,
            retries: 0,
            pages: 0,
        })
    }

    /// Fetches one page, retrying what may succeed later.
    pub async fn list(&mut self, query: &Query, starting_after: Option<&str>) -> Result<Page, ApiError> {
        let path = format!(
            "{}/v1/events?{}",
            self.base.prefix,
            query.to_query_string(starting_after)
        );
        let mut attempt = 0;
        loop {
            let outcome = match tokio::time::timeout(REQUEST_TIMEOUT, self.get(&path)).await {
                Ok(o) => o,
                Err(_) => {
                    self.conn = None;
                    Attempt::Retry {
                        after: None,
                        why: format!("no answer within {}", humantime::format_duration(REQUEST_TIMEOUT)),
                    }
                }
            };
            match outcome {
                Attempt::Done(body) => {
                    self.pages += 1;
                    return parse_page(&body);
                }
                Attempt::Fail(e) => return Err(e),
                Attempt::Retry { after, why } => {
                    if attempt >= MAX_RETRIES {
                        return Err(ApiError::GaveUp {
                            attempts: attempt + 1,
                            last: why,
                        });
                    }
                    let wait = after
                        .map(|a| a.min(MAX_RETRY_AFTER))
                        .unwrap_or_else(|| backoff(attempt));
                    attempt += 1;
                    self.retries += 1;
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn get(&mut self, path: &str) -> Attempt {
        let conn = match self.conn.take().filter(|c| !c.is_closed()) {
            Some(c) => c,
            None => match tokio::time::timeout(CONNECT_TIMEOUT, self.connect()).await {
                Ok(Ok(c)) => c,
                Ok(Err(ConnectError::Retry(why))) => return Attempt::Retry { after: None, why },
                Ok(Err(ConnectError::Certificate(why))) => return Attempt::Fail(ApiError::Tls(why)),
                Err(_) => {
                    return Attempt::Retry {
                        after: None,
                        why: format!("cannot connect to {} within 10s", self.base.authority),
                    }
                }
            },
        };
        let mut conn = conn;
        let req = Request::get(path)
            .header(http::header::HOST, &self.base.authority)
            .header(http::header::AUTHORIZATION, format!("Bearer {}", self.key))
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("hookbridge/", env!("CARGO_PKG_VERSION"), " (replay)"),
            )
            .body(Empty::<Bytes>::new());
        let req = match req {
            Ok(r) => r,
            Err(e) => return Attempt::Fail(ApiError::BadBase(e.to_string())),
        };
        if conn.ready().await.is_err() {
            return Attempt::Retry {
                after: None,
                why: "the connection closed".into(),
            };
        }
        let resp = match conn.send_request(req).await {
            Ok(r) => r,
            Err(e) => {
                return Attempt::Retry {
                    after: None,
                    why: format!("request failed: {e}"),
                }
            }
        };
        let (parts, body) = resp.into_parts();
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return Attempt::Retry {
                    after: None,
                    why: format!("reading the answer failed: {e}"),
                }
            }
        };
        self.conn = Some(conn);
        classify(parts.status, &parts.headers, &body, &self.key)
    }

    async fn connect(&self) -> Result<SendRequest<Empty<Bytes>>, ConnectError> {
        let addr = (self.base.host.as_str(), self.base.port);
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| ConnectError::Retry(format!("cannot connect to {}: {e}", self.base.authority)))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => handshake(tcp).await.map_err(ConnectError::Retry),
            Some(tls) => {
                let name = rustls_pki_types::ServerName::try_from(self.base.host.clone()).map_err(|_| {
                    ConnectError::Certificate(format!("`{}` is not a valid TLS server name", self.base.host))
                })?;
                let stream = tls.connect(name, tcp).await.map_err(|e| {
                    let why = format!("TLS with {}: {e}", self.base.authority);
                    // rustls reports a refused certificate as invalid data: no retry will change it.
                    if e.kind() == std::io::ErrorKind::InvalidData {
                        ConnectError::Certificate(why)
                    } else {
                        ConnectError::Retry(why)
                    }
                })?;
                handshake(stream).await.map_err(ConnectError::Retry)
            }
        }
    }
}

async fn handshake<T>(io: T) -> Result<SendRequest<Empty<Bytes>>, String>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

fn tls_connector() -> Result<tokio_rustls::TlsConnector, ApiError> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = rustls_native_certs::load_native_certs()
        .map_err(|e| ApiError::Tls(format!("cannot read the system's root certificates: {e}")))?;
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(ApiError::Tls(
            "no root certificates found (install ca-certificates, or set SSL_CERT_FILE)".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ApiError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Exponential backoff with some jitter: 0.5 s, 1 s, 2 s … up to 16 s, each 75–100 % of that.
fn backoff(attempt: u32) -> Duration {
    let full = FIRST_BACKOFF.saturating_mul(1 << attempt.min(10)).min(MAX_BACKOFF);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    full.mul_f64(0.75 + f64::from(nanos % 1000) / 4000.0)
}

/// Sorts an answer into done, retry (and after how long) or fail, as Stripe's SDKs do:
/// `Stripe-Should-Retry` wins when present; else 409, 429 and 5xx are retried (a GET is safe to
/// repeat).
fn classify(status: StatusCode, headers: &http::HeaderMap, body: &Bytes, key: &str) -> Attempt {
    if status.is_success() {
        return Attempt::Done(body.clone());
    }
    let message = error_message(body, key);
    let should_retry = headers
        .get("stripe-should-retry")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.eq_ignore_ascii_case("true"));
    let retry_after = headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let retryable = should_retry.unwrap_or(matches!(status.as_u16(), 409 | 429 | 500..=599));
    if retryable {
        return Attempt::Retry {
            after: retry_after,
            why: format!("{} {}", status.as_u16(), message),
        };
    }
    Attempt::Fail(match status {
        StatusCode::UNAUTHORIZED => ApiError::Unauthorized(message),
        StatusCode::FORBIDDEN => ApiError::Forbidden(message),
        _ => ApiError::Refused {
            status: status.as_u16(),
            message,
        },
    })
}

/// The `error.message` of a Stripe error body (else a short note), on one line, with the key
/// replaced wherever it appears.
fn error_message(body: &Bytes, key: &str) -> String {
    #[derive(Deserialize)]
    struct Wrapper {
        error: Inner,
    }
    #[derive(Deserialize)]
    struct Inner {
        message: Option<String>,
        #[serde(rename = "type")]
        kind: Option<String>,
    }
    let text = match serde_json::from_slice::<Wrapper>(body) {
        Ok(w) => match (w.error.kind, w.error.message) {
            (Some(k), Some(m)) => format!("{k}: {m}"),
            (None, Some(m)) => m,
            (Some(k), None) => k,
            (None, None) => "no message".into(),
        },
        Err(_) => format!("a {}-byte answer that is not a Stripe error", body.len()),
    };
    redact(&text.split_whitespace().collect::<Vec<_>>().join(" "), key)
}

/// Replaces the key wherever it appears (stripe-mock, for one, echoes the `Authorization` header).
pub fn redact(text: &str, key: &str) -> String {
    if key.is_empty() {
        return text.to_string();
    }
    text.replace(key, "[redacted]")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_are_as_the_api_defines_them() {
        let q = Query {
            window: Window { gte: 100, lte: 200 },
            undelivered: true,
            types: ApiTypes::Exact(vec!["invoice.paid".into(), "charge.succeeded".into()]),
        };
        assert_eq!(
            q.to_query_string(Some("evt_1")),
            "created%5Bgte%5D=100&created%5Blte%5D=200&limit=100&delivery_success=false\
             &types%5B%5D=invoice.paid&types%5B%5D=charge.succeeded&starting_after=evt_1"
        );
        let q = Query {
            types: ApiTypes::Group("invoice.*".into()),
            undelivered: false,
            ..q
        };
        assert_eq!(
            q.to_query_string(None),
            "created%5Bgte%5D=100&created%5Blte%5D=200&limit=100&type=invoice.%2A"
        );
    }

    #[test]
    fn pages_split_into_the_exact_bytes_of_each_event() {
        let body = Bytes::from_static(
            b"{\"object\":\"list\",\"data\":[ {\"id\":\"evt_2\",\"x\":\"\\u00e9 \\\"]\"} ,\n{\"id\":\"evt_1\",\"n\":[1, 2]}],\"has_more\":true,\"url\":\"/v1/events\"}",
        );
        let page = parse_page(&body).unwrap();
        assert!(page.has_more);
        assert_eq!(page.events[0], &b"{\"id\":\"evt_2\",\"x\":\"\\u00e9 \\\"]\"}"[..]);
        assert_eq!(page.events[1], &b"{\"id\":\"evt_1\",\"n\":[1, 2]}"[..]);
        assert!(parse_page(&Bytes::from_static(b"{\"error\":{}}")).is_err());
    }

    #[test]
    fn answers_are_sorted_as_stripe_sdks_do() {
        let key = "sk_test_abcdefghijkl";
        let h = |pairs: &[(&str, &str)]| {
            let mut m = http::HeaderMap::new();
            for (k, v) in pairs {
                m.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
            }
            m
        };
        let err = Bytes::from(format!(
            r#"{{"error":{{"type":"invalid_request_error","message":"Invalid API Key provided: {key}\n"}}}}"#
        ));
        match classify(StatusCode::UNAUTHORIZED, &h(&[]), &err, key) {
            Attempt::Fail(e @ ApiError::Unauthorized(_)) => {
                let s = e.to_string();
                assert!(!s.contains(key) && s.contains("[redacted]") && !s.contains('\n'), "{s}");
            }
            _ => panic!("401 is a failure"),
        }
        assert!(matches!(
            classify(StatusCode::TOO_MANY_REQUESTS, &h(&[("retry-after", "3")]), &err, key),
            Attempt::Retry { after: Some(d), .. } if d == Duration::from_secs(3)
        ));
        assert!(matches!(
            classify(
                StatusCode::SERVICE_UNAVAILABLE,
                &h(&[("stripe-should-retry", "false")]),
                &err,
                key
            ),
            Attempt::Fail(ApiError::Refused { status: 503, .. })
        ));
        assert!(matches!(
            classify(
                StatusCode::BAD_REQUEST,
                &h(&[("stripe-should-retry", "true")]),
                &err,
                key
            ),
            Attempt::Retry { after: None, .. }
        ));
        assert!(matches!(
            classify(StatusCode::FORBIDDEN, &h(&[]), &err, key),
            Attempt::Fail(ApiError::Forbidden(_))
        ));
        assert!(matches!(
            classify(StatusCode::BAD_GATEWAY, &h(&[]), &Bytes::from_static(b"<html>"), key),
            Attempt::Retry { .. }
        ));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(0) <= FIRST_BACKOFF && backoff(0) >= FIRST_BACKOFF.mul_f64(0.75));
        assert!(backoff(3) >= Duration::from_secs(3));
        assert!(backoff(30) <= MAX_BACKOFF);
    }

    #[test]
    fn bases_parse() {
        let b = Base::parse("https://api.stripe.com").unwrap();
        assert!(b.https && b.port == 443 && b.prefix.is_empty() && b.host == "api.stripe.com");
        let b = Base::parse("http://127.0.0.1:12111/mock/").unwrap();
        assert!(!b.https && b.port == 12111 && b.prefix == "/mock" && b.authority == "127.0.0.1:12111");
        assert!(Base::parse("ftp://x").is_err() && Base::parse("api.stripe.com").is_err());
    }
}
