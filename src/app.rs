//! Wiring: builds the runtime state from validated settings, serves both ports, and shuts down
//! in order (stop accepting, finish requests in flight, flush sinks) within `ack_timeout` + 1 s.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{self, Settings};
use crate::http;
use crate::sink::Sink;
use crate::state::close_all;
pub use crate::state::{State, RELOAD_SINK_WAIT, SHUTDOWN_SLACK};
use crate::verify::{Clock, SystemClock};

/// How often mounted secret files and TLS files are checked for changes.
pub const FILE_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Options that tests and `main` inject.
pub struct Options {
    pub clock: Arc<dyn Clock>,
    /// Listeners to use instead of binding `listen` and `admin_listen`.
    pub listeners: Option<(TcpListener, TcpListener)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            clock: Arc::new(SystemClock),
            listeners: None,
        }
    }
}

/// A running bridge.
pub struct Running {
    pub webhook_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub state: Arc<State>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Running {
    /// Starts shutdown (as SIGTERM does) and waits until it is complete.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    /// Starts shutdown without waiting.
    pub fn trigger_shutdown(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits for the bridge to finish (after a shutdown was triggered).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Why the bridge could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("{0}")]
    Sink(#[from] crate::sink::BuildError),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// A secret or credential file the config names cannot be read: a config error.
    #[error("{}", crate::config::ConfigError::join(.0))]
    Unreadable(Vec<crate::config::Problem>),
}

/// Reads the config's secrets and credential files, binds the ports (unless given), builds the
/// sinks, and serves until [`Running::shutdown`].
pub async fn start(settings: Settings, options: Options) -> Result<Running, StartError> {
    let secrets = config::read_secrets(&settings).map_err(StartError::Unreadable)?;
    let (webhook, admin) = match options.listeners {
        Some(l) => l,
        None => (bind(settings.listen).await?, bind(settings.admin_listen).await?),
    };
    let sinks = crate::sink::build_all(&settings.sinks, settings.ack_timeout).await?;
    serve_with(settings, &secrets, sinks, webhook, admin, options.clock)
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

/// Serves with sinks built by the caller (tests use in-memory sinks); reads the config's secrets
/// first.
pub fn start_with(
    settings: Settings,
    sinks: Vec<Arc<dyn Sink>>,
    webhook: TcpListener,
    admin: TcpListener,
    clock: Arc<dyn Clock>,
) -> Result<Running, StartError> {
    let secrets = config::read_secrets(&settings).map_err(StartError::Unreadable)?;
    serve_with(settings, &secrets, sinks, webhook, admin, clock)
}

fn serve_with(
    settings: Settings,
    secrets: &config::Secrets,
    sinks: Vec<Arc<dyn Sink>>,
    webhook: TcpListener,
    admin: TcpListener,
    clock: Arc<dyn Clock>,
) -> Result<Running, StartError> {
    let webhook_addr = webhook.local_addr().expect("a bound listener has an address");
    let admin_addr = admin.local_addr().expect("a bound listener has an address");
    let mut state = State::new(&settings, secrets, sinks, clock);
    let mut webhook_options = http::ServeOptions {
        header_read_timeout: settings.http.header_read_timeout,
        max_header_bytes: settings.http.max_header_bytes,
        max_connections: settings.http.max_connections,
        tls: None,
        gate: None,
    };
    if let Some(tls) = &settings.http.tls {
        let cert = Arc::new(crate::tls::ReloadingCert::new(&tls.cert_file, &tls.key_file)?);
        webhook_options.tls = Some(crate::tls::acceptor(cert.clone())?);
        state.tls = Some(cert);
    }
    let state = Arc::new(state);
    webhook_options.gate = Some(state.clone() as Arc<dyn http::Gate>);
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(serve(
        state.clone(),
        webhook,
        admin,
        webhook_options,
        settings.ack_timeout,
        wait_for(stop_rx.clone()),
    ));
    tokio::spawn(watch_files(state.clone(), stop_rx));
    tracing::info!(%webhook_addr, %admin_addr, tls = settings.http.tls.is_some(), "hookbridge is listening");
    Ok(Running {
        webhook_addr,
        admin_addr,
        state,
        stop,
        task,
    })
}

async fn watch_files(state: Arc<State>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(FILE_POLL_INTERVAL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let polled = state.clone();
        // File reads block; keep them off the request threads.
        let _ = tokio::task::spawn_blocking(move || polled.poll_files()).await;
        tokio::select! {
            _ = state.rotate_credentials() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

async fn wait_for(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn serve(
    state: Arc<State>,
    webhook: TcpListener,
    admin: TcpListener,
    webhook_options: http::ServeOptions,
    ack_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_webhook, stop_webhook_rx) = watch::channel(false);
    let (stop_admin, stop_admin_rx) = watch::channel(false);
    let webhook_task = tokio::spawn(http::serve(
        webhook,
        http::handler(state.clone(), http::webhook::handle),
        webhook_options,
        wait_for(stop_webhook_rx),
    ));
    let admin_task = tokio::spawn(http::serve(
        admin,
        http::handler(state.clone(), http::admin::handle),
        http::ServeOptions::default(),
        wait_for(stop_admin_rx),
    ));

    shutdown.await;
    let began = Instant::now();
    // A reload may have changed ack_timeout since start: requests in flight use the current one.
    let ack_timeout = state.live().ack_timeout.max(ack_timeout);
    let deadline = began + ack_timeout + SHUTDOWN_SLACK;
    // From here on no reload swaps sinks in (the lock is held until the process ends).
    let _no_reload = state.lifecycle.lock().await;
    state.draining.store(true, Ordering::SeqCst);
    state.drain_signal.send_replace(true);
    tracing::info!("shutting down: finishing requests in flight");
    let _ = stop_webhook.send(true);
    // Requests in flight wait at most ack_timeout for their brokers; keep a little for the flush.
    let drain_deadline = deadline - SHUTDOWN_SLACK / 2;
    if tokio::time::timeout_at(drain_deadline.into(), webhook_task)
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight at the shutdown deadline were cut off");
    }
    let mut sinks = state.live().sinks.clone();
    sinks.extend(state.retired.lock().unwrap_or_else(|p| p.into_inner()).drain(..));
    close_all(&sinks, deadline - Duration::from_millis(200)).await;
    let _ = stop_admin.send(true);
    let _ = tokio::time::timeout(Duration::from_millis(50), admin_task).await;
    tracing::info!(took_ms = began.elapsed().as_millis() as u64, "shutdown complete");
}
