//! HTTP: the accept loop with graceful shutdown, the webhook handler, the admin endpoints, and the
//! one place that turns outcomes into responses.

pub mod admin;
pub mod client_ip;
pub mod response;
pub mod tls;
pub mod webhook;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// How a listener serves its connections.
#[derive(Clone)]
pub struct ServeOptions {
    /// How long a client may take to send a request head (and to start the next one on a
    /// keep-alive connection); also bounds the TLS handshake.
    pub header_read_timeout: Duration,
    /// Largest request head accepted. The webhook handler answers a larger one with a JSON 431;
    /// hyper itself refuses heads over twice this size, before they are buffered whole, with a
    /// bare 431.
    pub max_header_bytes: usize,
    pub tls: Option<TlsAcceptor>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            tls: None,
        }
    }
}

/// Serves HTTP/1.1 on `listener` with `handler` until `shutdown` resolves; then stops accepting,
/// lets requests in flight finish, and returns once every connection closed.
pub async fn serve<H, F>(listener: TcpListener, handler: H, options: ServeOptions, shutdown: impl Future<Output = ()>)
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let handler = handler.clone();
                let options = options.clone();
                // Subscribed now, so a shutdown signalled while a TLS handshake is still running
                // reaches this connection too, as soon as it is served.
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    match &options.tls {
                        None => serve_connection(stream, peer, handler, &options, watcher).await,
                        Some(acceptor) => {
                            match tokio::time::timeout(options.header_read_timeout, acceptor.accept(stream)).await {
                                Ok(Ok(tls)) => serve_connection(tls, peer, handler, &options, watcher).await,
                                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                            }
                        }
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    graceful.shutdown().await;
}

async fn serve_connection<S, H, F>(stream: S, peer: SocketAddr, handler: H, options: &ServeOptions, watcher: Watcher)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let service = service_fn(move |req| {
        let fut = handler(req, peer);
        async move { Ok::<_, Infallible>(fut.await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .max_buf_size(hard_head_limit(options.max_header_bytes))
        .max_header_size(hard_head_limit(options.max_header_bytes));
    let conn = watcher.watch(builder.serve_connection(TokioIo::new(stream), service));
    if let Err(e) = conn.await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// The head size past which hyper stops reading: room above `max_header_bytes` so that the
/// handler sees, and answers in JSON, any head up to twice the limit.
fn hard_head_limit(max_header_bytes: usize) -> usize {
    max_header_bytes.saturating_mul(2).max(8192)
}

/// Wraps a state and a handler function into the `Clone` closure [`serve`] wants.
pub fn handler<S, F, Fut>(
    state: Arc<S>,
    f: F,
) -> impl Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static
where
    S: Send + Sync + 'static,
    F: Fn(Arc<S>, Request<Incoming>, SocketAddr) -> Fut + Copy + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    move |req, peer| f(state.clone(), req, peer)
}
