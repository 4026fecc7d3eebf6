//! Wiring: builds the runtime state from validated settings, serves both ports, and shuts down
//! in order (stop accepting, finish requests in flight, flush sinks) within `ack_timeout` + 1 s.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{SecretSource, Settings};
use crate::dedup::Dedup;
use crate::http;
use crate::metrics::Metrics;
use crate::route::Router;
use crate::sink::Sink;
use crate::verify::{Clock, SystemClock, Verifier};

/// The extra time past `ack_timeout` that shutdown may take in all.
pub const SHUTDOWN_SLACK: Duration = Duration::from_secs(1);

/// A webhook endpoint at run time.
pub struct Endpoint {
    pub path: String,
    pub tolerance: Duration,
    pub sources: Vec<SecretSource>,
    /// Swapped in place when a secret file changes.
    pub verifier: ArcSwap<Verifier>,
}

/// What a request needs that a config reload may replace.
pub struct Live {
    pub endpoints: HashMap<String, Endpoint>,
    pub router: Router,
    pub sinks: Vec<Arc<dyn Sink>>,
    pub max_body_bytes: u64,
    pub ack_timeout: Duration,
}

impl Live {
    pub fn new(settings: &Settings, sinks: Vec<Arc<dyn Sink>>) -> Self {
        let endpoints = settings
            .endpoints
            .iter()
            .map(|e| {
                (
                    e.path.clone(),
                    Endpoint {
                        path: e.path.clone(),
                        tolerance: e.tolerance,
                        sources: e.sources.clone(),
                        verifier: ArcSwap::from_pointee(Verifier::new(&e.secrets, e.tolerance)),
                    },
                )
            })
            .collect();
        Live {
            endpoints,
            router: settings.router.clone(),
            sinks,
            max_body_bytes: settings.max_body_bytes,
            ack_timeout: settings.ack_timeout,
        }
    }
}

/// Shared by every request.
pub struct State {
    live: ArcSwap<Live>,
    pub dedup: Dedup,
    pub metrics: Metrics,
    pub clock: Arc<dyn Clock>,
    /// Set once shutdown began: `/readyz` answers 503.
    pub draining: AtomicBool,
}

impl State {
    pub fn new(settings: &Settings, sinks: Vec<Arc<dyn Sink>>, clock: Arc<dyn Clock>) -> Self {
        State {
            live: ArcSwap::from_pointee(Live::new(settings, sinks)),
            dedup: Dedup::new(settings.dedup.capacity, settings.dedup.ttl),
            metrics: Metrics::new(),
            clock,
            draining: AtomicBool::new(false),
        }
    }

    /// The current routes, endpoints and sinks.
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// Replaces routes, endpoints and sinks for requests that start from now on.
    pub fn replace_live(&self, live: Live) {
        self.live.store(Arc::new(live));
    }
}

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
}

/// Binds the ports (unless given), builds the sinks, and serves until [`Running::shutdown`].
pub async fn start(settings: Settings, options: Options) -> Result<Running, StartError> {
    let (webhook, admin) = match options.listeners {
        Some(l) => l,
        None => (bind(settings.listen).await?, bind(settings.admin_listen).await?),
    };
    let sinks = crate::sink::build_all(&settings.sinks, settings.ack_timeout).await?;
    Ok(start_with(settings, sinks, webhook, admin, options.clock))
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

/// Serves with sinks built by the caller (tests use in-memory sinks).
pub fn start_with(
    settings: Settings,
    sinks: Vec<Arc<dyn Sink>>,
    webhook: TcpListener,
    admin: TcpListener,
    clock: Arc<dyn Clock>,
) -> Running {
    let webhook_addr = webhook.local_addr().expect("a bound listener has an address");
    let admin_addr = admin.local_addr().expect("a bound listener has an address");
    let state = Arc::new(State::new(&settings, sinks, clock));
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(serve(
        state.clone(),
        webhook,
        admin,
        settings.ack_timeout,
        wait_for(stop_rx),
    ));
    tracing::info!(%webhook_addr, %admin_addr, "hookbridge is listening");
    Running {
        webhook_addr,
        admin_addr,
        state,
        stop,
        task,
    }
}

async fn wait_for(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn serve(
    state: Arc<State>,
    webhook: TcpListener,
    admin: TcpListener,
    ack_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_webhook, stop_webhook_rx) = watch::channel(false);
    let (stop_admin, stop_admin_rx) = watch::channel(false);
    let webhook_task = tokio::spawn(http::serve(
        webhook,
        http::handler(state.clone(), http::webhook::handle),
        wait_for(stop_webhook_rx),
    ));
    let admin_task = tokio::spawn(http::serve(
        admin,
        http::handler(state.clone(), http::admin::handle),
        wait_for(stop_admin_rx),
    ));

    shutdown.await;
    let began = Instant::now();
    let deadline = began + ack_timeout + SHUTDOWN_SLACK;
    state.draining.store(true, Ordering::SeqCst);
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
    let live = state.live();
    let flush_deadline = deadline - Duration::from_millis(100);
    let closes = futures::future::join_all(
        live.sinks
            .iter()
            .map(|s| async move { (s.name().to_string(), s.close(flush_deadline).await) }),
    )
    .await;
    for (name, result) in closes {
        if let Err(e) = result {
            tracing::warn!(sink = %name, error = %e, "sink did not close cleanly");
        }
    }
    let _ = stop_admin.send(true);
    let _ = tokio::time::timeout(Duration::from_millis(50), admin_task).await;
    tracing::info!(took_ms = began.elapsed().as_millis() as u64, "shutdown complete");
}
