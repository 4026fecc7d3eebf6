//! A small HTTP/1.1 client for `hookbridge send` and `hookbridge bench`: plain `http://` only.

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why a request could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("`{0}` is not an http:// URL (https is not supported by this client; send through a local port)")]
    BadUrl(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("HTTP error: {0}")]
    Http(#[from] hyper::Error),
    #[error("bad request: {0}")]
    Request(#[from] http::Error),
}

/// Where requests go: the parsed URL.
#[derive(Debug, Clone)]
pub struct Target {
    pub uri: Uri,
    pub authority: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, ClientError> {
        let uri: Uri = url.parse().map_err(|_| ClientError::BadUrl(url.to_string()))?;
        if uri.scheme_str() != Some("http") {
            return Err(ClientError::BadUrl(url.to_string()));
        }
        let authority = uri.authority().ok_or_else(|| ClientError::BadUrl(url.to_string()))?;
        let authority = if authority.port().is_some() {
            authority.to_string()
        } else {
            format!("{}:80", authority.host())
        };
        Ok(Target { uri, authority })
    }

    /// The `Host` header: the URL's authority as written.
    pub fn host(&self) -> &str {
        self.uri.authority().map_or("localhost", |a| a.as_str())
    }

    /// The request target: the URL's path and query.
    pub fn path(&self) -> &str {
        self.uri.path_and_query().map_or("/", |p| p.as_str())
    }
}

/// One keep-alive HTTP/1.1 connection.
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    target: Target,
}

impl Connection {
    pub async fn open(target: &Target) -> Result<Connection, ClientError> {
        let stream = TcpStream::connect(&target.authority)
            .await
            .map_err(|source| ClientError::Connect {
                addr: target.authority.clone(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Connection {
            sender,
            target: target.clone(),
        })
    }

    /// POSTs `body` with a `Stripe-Signature` header; returns the status and the response body.
    pub async fn post_signed(&mut self, signature: &str, body: Bytes) -> Result<(StatusCode, Bytes), ClientError> {
        self.sender.ready().await?;
        let (host, path) = (self.target.host(), self.target.path());
        let req = Request::post(path)
            .header(http::header::HOST, host)
            .header(http::header::CONTENT_TYPE, "application/json; charset=utf-8")
            .header(
                http::header::USER_AGENT,
                concat!("hookbridge/", env!("CARGO_PKG_VERSION")),
            )
            .header("stripe-signature", signature)
            .body(Full::new(body))?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// Whether the connection can take another request.
    pub fn is_open(&self) -> bool {
        !self.sender.is_closed()
    }
}
