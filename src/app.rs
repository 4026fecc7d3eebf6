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

use crate::config::{HttpSettings, Secret, SecretSource, Settings, SinkSettings};
use crate::dedup::Dedup;
use crate::http;
use crate::metrics::Metrics;
use crate::route::Router;
use crate::sink::Sink;
use crate::verify::{Clock, SystemClock, Verifier};

/// The extra time past `ack_timeout` that shutdown may take in all.
pub const SHUTDOWN_SLACK: Duration = Duration::from_secs(1);

/// How long a reload waits for a new or changed sink to report healthy.
pub const RELOAD_SINK_WAIT: Duration = Duration::from_secs(10);

/// Polls `sink.health()` until it passes or [`RELOAD_SINK_WAIT`] is over; gives up at once when
/// shutdown begins.
async fn wait_healthy(sink: &dyn Sink, draining: &AtomicBool) -> Result<(), String> {
    let deadline = Instant::now() + RELOAD_SINK_WAIT;
    loop {
        if draining.load(Ordering::SeqCst) {
            return Err("shutting down".into());
        }
        match sink.health().await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!(
                    "not healthy within {}: {e}",
                    humantime::format_duration(RELOAD_SINK_WAIT)
                ))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Closes sinks concurrently, logging those that do not close cleanly by `deadline`.
async fn close_all(sinks: &[Arc<dyn Sink>], deadline: Instant) {
    let closes = futures::future::join_all(
        sinks
            .iter()
            .map(|s| async move { (s.name().to_string(), s.close(deadline).await) }),
    )
    .await;
    for (name, result) in closes {
        if let Err(e) = result {
            tracing::warn!(sink = %name, error = %e, "sink did not close cleanly");
        }
    }
}

/// How often mounted secret files and TLS files are checked for changes.
pub const FILE_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// A webhook endpoint at run time.
pub struct Endpoint {
    pub path: String,
    pub tolerance: Duration,
    pub sources: Vec<SecretSource>,
    /// Swapped in place when a secret file changes.
    pub verifier: ArcSwap<Verifier>,
    /// The secrets the verifier was built from, to notice changes.
    secrets: std::sync::Mutex<Vec<Secret>>,
}

impl Endpoint {
    /// Re-reads the secret sources; swaps the verifier when they changed. A source that cannot be
    /// read keeps the current secrets (a file being replaced may be missing for a moment).
    pub fn reload_secrets(&self) -> Result<bool, String> {
        let fresh = self
            .sources
            .iter()
            .map(SecretSource::load)
            .collect::<Result<Vec<_>, _>>()?;
        let mut current = self.secrets.lock().unwrap_or_else(|p| p.into_inner());
        if *current == fresh {
            return Ok(false);
        }
        self.verifier.store(Arc::new(Verifier::new(&fresh, self.tolerance)));
        *current = fresh;
        Ok(true)
    }
}

/// What a request needs that a config reload may replace.
pub struct Live {
    pub endpoints: HashMap<String, Endpoint>,
    pub router: Router,
    pub sinks: Vec<Arc<dyn Sink>>,
    /// The settings each sink was built from (same order as `sinks`).
    pub sink_settings: Vec<SinkSettings>,
    pub max_body_bytes: u64,
    pub ack_timeout: Duration,
    pub http: HttpSettings,
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
                        secrets: std::sync::Mutex::new(e.secrets.clone()),
                    },
                )
            })
            .collect();
        Live {
            endpoints,
            router: settings.router.clone(),
            sinks,
            sink_settings: settings.sinks.clone(),
            max_body_bytes: settings.max_body_bytes,
            ack_timeout: settings.ack_timeout,
            http: settings.http.clone(),
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
    /// Turns true when shutdown begins: body reads still in progress are cut off soon after.
    drain_signal: watch::Sender<bool>,
    /// Held by a reload while it swaps sinks in, and by shutdown from the moment it begins, so
    /// that a reload either completes before shutdown (its sinks are then closed by shutdown) or
    /// sees `draining` and closes what it built.
    lifecycle: tokio::sync::Mutex<()>,
    /// Caps requests in flight (`http.max_concurrent_requests`).
    pub limiter: tokio::sync::Semaphore,
    /// `http.max_header_bytes` as the listeners were built with it (a reload does not change it).
    pub max_header_bytes: usize,
    /// `http.max_buffered_bytes`: the memory request bodies may hold at once (fixed at start).
    pub budget: http::budget::BodyBudget,
    /// Sinks a reload removed: closed at shutdown with the others.
    retired: std::sync::Mutex<Vec<Arc<dyn Sink>>>,
    /// The TLS certificate being served, if any.
    tls: Option<Arc<crate::http::tls::ReloadingCert>>,
}

impl State {
    pub fn new(settings: &Settings, sinks: Vec<Arc<dyn Sink>>, clock: Arc<dyn Clock>) -> Self {
        State {
            live: ArcSwap::from_pointee(Live::new(settings, sinks)),
            dedup: Dedup::new(settings.dedup.capacity, settings.dedup.ttl),
            metrics: Metrics::new(),
            clock,
            draining: AtomicBool::new(false),
            drain_signal: watch::channel(false).0,
            lifecycle: tokio::sync::Mutex::new(()),
            limiter: tokio::sync::Semaphore::new(settings.http.max_concurrent_requests),
            max_header_bytes: settings.http.max_header_bytes,
            budget: http::budget::BodyBudget::new(settings.http.max_buffered_bytes),
            retired: std::sync::Mutex::new(Vec::new()),
            tls: None,
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

    /// Applies a new validated config (SIGHUP or a changed file) to requests that start from now
    /// on: endpoints, secrets, routes, limits and sinks. A sink whose settings did not change keeps
    /// its connection; a new or changed sink is built and must report healthy within
    /// [`RELOAD_SINK_WAIT`] before anything is swapped, else the reload is refused and the running
    /// config kept. Replaced sinks are closed once the requests that may still use them are done.
    /// Listener settings (addresses, TLS paths, header limits, the concurrency cap) need a restart.
    pub async fn reload(self: &Arc<Self>, settings: Settings) -> Result<(), String> {
        if self.draining.load(Ordering::SeqCst) {
            return Err("shutting down".into());
        }
        let old = self.live();
        let mut sinks = Vec::with_capacity(settings.sinks.len());
        let mut built: Vec<Arc<dyn Sink>> = Vec::new();
        // Built and checked with no lock held: this may take up to RELOAD_SINK_WAIT per sink.
        for s in &settings.sinks {
            if let Some(i) = old
                .sink_settings
                .iter()
                .position(|o| o.name == s.name && o.config == s.config)
            {
                sinks.push(old.sinks[i].clone());
                continue;
            }
            let ready = match crate::sink::build(s, settings.ack_timeout).await {
                Ok(sink) => {
                    built.push(sink.clone());
                    wait_healthy(sink.as_ref(), &self.draining).await.map(|()| sink)
                }
                Err(e) => Err(e.message),
            };
            match ready {
                Ok(sink) => sinks.push(sink),
                Err(e) => {
                    close_all(&built, Instant::now() + settings.ack_timeout).await;
                    return Err(format!("sink {}: {e}", s.name));
                }
            }
        }
        let replaced: Vec<Arc<dyn Sink>> = old
            .sinks
            .iter()
            .filter(|o| !sinks.iter().any(|n| Arc::ptr_eq(n, o)))
            .cloned()
            .collect();
        {
            let _swap = self.lifecycle.lock().await;
            let refusal = if self.draining.load(Ordering::SeqCst) {
                Some("shutting down")
            } else if !Arc::ptr_eq(&old, &self.live()) {
                Some("another reload was applied meanwhile; not applied")
            } else {
                None
            };
            if let Some(why) = refusal {
                drop(_swap);
                close_all(&built, Instant::now() + settings.ack_timeout).await;
                return Err(why.into());
            }
            self.replace_live(Live::new(&settings, sinks));
            if !replaced.is_empty() {
                self.retired
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(replaced.iter().cloned());
            }
        }
        if !replaced.is_empty() {
            // Requests that started before the swap hold `old` (and its sinks) until they are
            // answered, however long their bodies take: close the replaced sinks once the last
            // of them is done, and at the latest when such a request must have ended.
            let grace = old.http.body_read_timeout + old.ack_timeout + SHUTDOWN_SLACK;
            let users = Arc::downgrade(&old);
            drop(old);
            let state = self.clone();
            tokio::spawn(async move {
                let latest = Instant::now() + grace;
                while users.strong_count() > 0 && Instant::now() < latest {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let to_close: Vec<_> = {
                    let mut retired = state.retired.lock().unwrap_or_else(|p| p.into_inner());
                    let (close, keep): (Vec<_>, Vec<_>) = retired
                        .drain(..)
                        .partition(|r| replaced.iter().any(|x| Arc::ptr_eq(x, r)));
                    *retired = keep;
                    close
                };
                close_all(&to_close, Instant::now() + state.live().ack_timeout).await;
            });
        }
        Ok(())
    }

    /// Resolves a short moment ([`SHUTDOWN_SLACK`] / 4) after shutdown began: a body read still
    /// in progress then is answered 503, so that every request whose body was read can still
    /// wait `ack_timeout` for its brokers and be answered before the drain deadline.
    pub async fn body_cut_off(&self) {
        let mut rx = self.drain_signal.subscribe();
        let _ = rx.wait_for(|d| *d).await;
        tokio::time::sleep(SHUTDOWN_SLACK / 4).await;
    }

    /// One pass of the file watcher: re-reads secret files and TLS files, swapping what changed.
    pub fn poll_files(&self) {
        let live = self.live();
        for endpoint in live.endpoints.values() {
            match endpoint.reload_secrets() {
                Ok(true) => tracing::info!(endpoint = %endpoint.path, "signing secrets changed; now in use"),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(endpoint = %endpoint.path, error = %e, "cannot re-read signing secrets; keeping the current ones")
                }
            }
        }
        if let Some(tls) = &self.tls {
            match tls.reload_if_changed() {
                Ok(true) => tracing::info!("TLS certificate changed; now in use"),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "cannot reload the TLS certificate; keeping the current one"),
            }
        }
    }
}

/// The webhook port's accept-time checks: `http.allow_networks` as currently configured (a
/// reload applies to new connections), counted in the metrics.
impl http::Gate for State {
    fn admit(&self, peer: SocketAddr) -> bool {
        http::client_ip::admitted(peer.ip(), &self.live().http)
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
    Tls(String),
}

/// Binds the ports (unless given), builds the sinks, and serves until [`Running::shutdown`].
pub async fn start(settings: Settings, options: Options) -> Result<Running, StartError> {
    let (webhook, admin) = match options.listeners {
        Some(l) => l,
        None => (bind(settings.listen).await?, bind(settings.admin_listen).await?),
    };
    let sinks = crate::sink::build_all(&settings.sinks, settings.ack_timeout).await?;
    start_with(settings, sinks, webhook, admin, options.clock)
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
) -> Result<Running, StartError> {
    let webhook_addr = webhook.local_addr().expect("a bound listener has an address");
    let admin_addr = admin.local_addr().expect("a bound listener has an address");
    let mut state = State::new(&settings, sinks, clock);
    let mut webhook_options = http::ServeOptions {
        header_read_timeout: settings.http.header_read_timeout,
        max_header_bytes: settings.http.max_header_bytes,
        max_connections: settings.http.max_connections,
        tls: None,
        gate: None,
    };
    if let Some(tls) = &settings.http.tls {
        let cert = Arc::new(http::tls::ReloadingCert::new(&tls.cert_file, &tls.key_file).map_err(StartError::Tls)?);
        webhook_options.tls = Some(http::tls::acceptor(cert.clone()).map_err(StartError::Tls)?);
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
        let state = state.clone();
        // File reads block; keep them off the request threads.
        let _ = tokio::task::spawn_blocking(move || state.poll_files()).await;
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
