//! HTTP: the accept loop with graceful shutdown, the webhook handler, the admin endpoints, and the
//! one place that turns outcomes into responses.

pub mod admin;
mod body_buf;
pub mod client_ip;
pub mod response;
pub mod webhook;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

/// What a listener asks about each connection at accept, before it reads a byte of it.
pub trait Gate: Send + Sync + 'static {
    /// Whether a connection from `peer` may be served.
    fn admit(&self, peer: SocketAddr) -> bool;
    /// A connection was closed at accept, unread, for `reason` (`max_connections`,
    /// `allow_networks`).
    fn refused(&self, peer: SocketAddr, reason: &'static str);
    /// The number of open connections changed by `delta`.
    fn open_connections(&self, delta: i64);
}

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
    /// Connections open at once; one more is closed at accept, unread.
    pub max_connections: usize,
    pub tls: Option<TlsAcceptor>,
    pub gate: Option<Arc<dyn Gate>>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_connections: 1024,
            tls: None,
            gate: None,
        }
    }
}

/// Serves HTTP/1.1 on `listener` with `handler` until `shutdown` resolves; then stops accepting,
/// lets requests in flight finish, and returns once every connection closed.
///
/// Each accepted connection is first judged by the connection cap and the [`Gate`]: one that is
/// refused is closed at once, before a byte of it is read (the client sees the connection closed
/// or reset, and may retry: nothing of a request was read).
pub async fn serve<H, F>(listener: TcpListener, handler: H, options: ServeOptions, shutdown: impl Future<Output = ()>)
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(options.max_connections.min(Semaphore::MAX_PERMITS)));
    // Tells connections that have not reached hyper yet (TLS handshake, HTTP/2 sniffing) to stop.
    let (stopping, stopping_rx) = watch::channel(false);
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
                let Ok(permit) = connections.clone().try_acquire_owned() else {
                    refuse(&options, stream, peer, "max_connections");
                    continue;
                };
                if let Some(gate) = &options.gate {
                    if !gate.admit(peer) {
                        refuse(&options, stream, peer, "allow_networks");
                        continue;
                    }
                    gate.open_connections(1);
                }
                let _ = stream.set_nodelay(true);
                let handler = handler.clone();
                let options = options.clone();
                // Subscribed now, so a shutdown signalled while a TLS handshake is still running
                // reaches this connection too, as soon as it is served.
                let watcher = graceful.watcher();
                let mut stopping = stopping_rx.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match &options.tls {
                        None => serve_stream(stream, peer, handler, &options, watcher, &mut stopping).await,
                        Some(acceptor) => {
                            let handshake = tokio::time::timeout(options.header_read_timeout, acceptor.accept(stream));
                            let done = tokio::select! {
                                done = handshake => done,
                                _ = stopping.wait_for(|s| *s) => return close_gate(&options),
                            };
                            match done {
                                Ok(Ok(tls)) => serve_stream(tls, peer, handler, &options, watcher, &mut stopping).await,
                                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                            }
                        }
                    }
                    close_gate(&options);
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = stopping.send(true);
    graceful.shutdown().await;
}

fn close_gate(options: &ServeOptions) {
    if let Some(gate) = &options.gate {
        gate.open_connections(-1);
    }
}

/// The first bytes an HTTP/2 client sends (RFC 9113, section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The answer to an HTTP/2 preface: this port speaks HTTP/1.1 only.
const H2_REFUSAL: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// Reads the first bytes of a connection, just enough to tell an HTTP/2 preface from an
/// HTTP/1.1 request line (usually one read), then serves it: HTTP/1.1 with hyper, HTTP/2 with
/// a bare 400. A connection that sends nothing is dropped when shutdown begins.
async fn serve_stream<S, H, F>(
    mut stream: S,
    peer: SocketAddr,
    handler: H,
    options: &ServeOptions,
    watcher: Watcher,
    stopping: &mut watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let sniff = tokio::time::timeout(options.header_read_timeout, sniff_h2(&mut stream));
    let first = tokio::select! {
        first = sniff => first,
        _ = stopping.wait_for(|s| *s) => return,
    };
    match first {
        Ok(Ok(Sniffed::Http1(prefix))) => {
            serve_connection(Rewind::new(prefix, stream), peer, handler, options, watcher).await;
        }
        Ok(Ok(Sniffed::Http2)) => {
            tracing::debug!(%peer, "HTTP/2 preface refused with 400");
            let _ = stream.write_all(H2_REFUSAL).await;
            let _ = stream.shutdown().await;
            // Read what the client already sent (its SETTINGS frame) for a moment, so that
            // closing does not reset the connection before the client has read the 400.
            let mut sink = [0u8; 1024];
            let _ = tokio::time::timeout(Duration::from_millis(200), async {
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            })
            .await;
        }
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "connection failed before a request"),
        Err(_) => tracing::debug!(%peer, "no request head within header_read_timeout"),
    }
}

enum Sniffed {
    /// Not HTTP/2: the bytes read so far, to be read again by hyper.
    Http1(Vec<u8>),
    Http2,
}

async fn sniff_h2<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Sniffed> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut filled = 0;
    loop {
        let n = stream.read(&mut buf[filled..]).await?;
        filled += n;
        if n == 0 || buf[..filled] != H2_PREFACE[..filled] {
            return Ok(Sniffed::Http1(buf[..filled].to_vec()));
        }
        if filled == H2_PREFACE.len() {
            return Ok(Sniffed::Http2);
        }
    }
}

/// A stream whose first bytes were already read: they are read again before the rest.
struct Rewind<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Rewind<S> {
    fn new(prefix: Vec<u8>, inner: S) -> Self {
        Rewind { prefix, pos: 0, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.prefix.len() {
            let n = (this.prefix.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Closes a connection at accept without reading from it.
fn refuse(options: &ServeOptions, stream: tokio::net::TcpStream, peer: SocketAddr, reason: &'static str) {
    tracing::debug!(%peer, reason, "connection refused at accept");
    if let Some(gate) = &options.gate {
        gate.refused(peer, reason);
    }
    drop(stream);
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
        // A client that shuts down its write side after a complete request still gets its
        // answer (without this, hyper closes the connection on reading the EOF).
        .half_close(true)
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

/// The webhook port's accept-time checks: `http.allow_networks` as currently configured (a
/// reload applies to new connections), counted in the metrics.
impl Gate for crate::state::State {
    fn admit(&self, peer: SocketAddr) -> bool {
        client_ip::admitted(peer.ip(), &self.live().http)
    }

    fn refused(&self, peer: SocketAddr, reason: &'static str) {
        if reason == "allow_networks" {
            tracing::warn!(%peer, "refused at accept: address outside http.allow_networks");
        }
        self.metrics
            .connections_refused
            .get_or_create(&crate::metrics::ReasonLabel { reason })
            .inc();
    }

    fn open_connections(&self, delta: i64) {
        self.metrics.connections.inc_by(delta);
    }
}
