//! The running bridge's state, shared by every request: the live endpoints, routes and sinks
//! (replaced as a whole by a config reload or a credential rotation), the dedup window, metrics,
//! the limits of the webhook port, and the dead-letter step of the publish path. Built by `app`,
//! read by the HTTP handlers and `replay`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::budget::BodyBudget;
use crate::config::{HttpSettings, LogSettings, Secret, SecretSource, Secrets, Settings, SinkSettings};
use crate::dedup::{Dedup, Limits};
use crate::fields::SecretError;
use crate::metrics::{EndpointStatus, Metrics, SinkDestination, SinkLabel};
use crate::route::{Router, Target};
use crate::sink::{Envelope, Sink, SinkError};
use crate::verify::{Clock, Verifier};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

/// The extra time past `ack_timeout` that shutdown may take in all.
pub const SHUTDOWN_SLACK: Duration = Duration::from_secs(1);

/// How long a reload waits for a new or changed sink to report healthy.
pub const RELOAD_SINK_WAIT: Duration = Duration::from_secs(10);

/// Why a new sink was not taken into use.
#[derive(Debug, thiserror::Error)]
pub enum NotReady {
    #[error("shutting down")]
    ShuttingDown,
    #[error("not healthy within {}: {source}", humantime::format_duration(*.within))]
    NotHealthy {
        within: Duration,
        #[source]
        source: SinkError,
    },
    #[error(transparent)]
    Build(crate::sink::BoxError),
}

/// Why a reload (of the config, or of sinks whose credential files changed) was not applied. The
/// running config is kept.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("shutting down")]
    ShuttingDown,
    #[error("another reload was applied meanwhile; not applied")]
    Superseded,
    /// A secret or credential file of the new config cannot be read.
    #[error("{}", crate::config::ConfigError::join(.0))]
    Unreadable(Vec<crate::config::Problem>),
    #[error("sink {name}: {source}")]
    Sink {
        name: String,
        #[source]
        source: NotReady,
    },
}

/// Polls `sink.health()` until it passes or [`RELOAD_SINK_WAIT`] is over; gives up at once when
/// shutdown begins.
pub async fn wait_healthy(sink: &dyn Sink, draining: &AtomicBool) -> Result<(), NotReady> {
    let deadline = Instant::now() + RELOAD_SINK_WAIT;
    loop {
        if draining.load(Ordering::SeqCst) {
            return Err(NotReady::ShuttingDown);
        }
        match sink.health().await {
            Ok(()) => return Ok(()),
            Err(source) if Instant::now() >= deadline => {
                return Err(NotReady::NotHealthy {
                    within: RELOAD_SINK_WAIT,
                    source,
                })
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Closes sinks concurrently, logging those that do not close cleanly by `deadline`.
pub(crate) async fn close_all(sinks: &[Arc<dyn Sink>], deadline: Instant) {
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

/// Drops sinks on a blocking thread: a Kafka producer's drop waits for librdkafka's threads to
/// end, which must not stall the request threads.
pub(crate) fn drop_off_runtime(sinks: Vec<Arc<dyn Sink>>) {
    if !sinks.is_empty() {
        drop(tokio::task::spawn_blocking(move || drop(sinks)));
    }
}

/// A webhook endpoint at run time.
pub struct Endpoint {
    pub path: String,
    /// `hookbridge_requests_total` for this endpoint and status 200, looked up once.
    pub answered_ok: Counter,
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
    pub fn reload_secrets(&self) -> Result<bool, SecretError> {
        let fresh = self
            .sources
            .iter()
            .map(SecretSource::load)
            .collect::<Result<Vec<_>, _>>()?;
        let mut current = self.secrets.lock().unwrap_or_else(|p| p.into_inner());
        if *current == fresh {
            return Ok(false);
        }
        self.verifier.store(Arc::new(self.verifier.load().with_secrets(&fresh)));
        *current = fresh;
        Ok(true)
    }
}

/// What a request needs that a config reload may replace.
pub struct Live {
    pub endpoints: HashMap<String, Endpoint>,
    pub router: Router,
    /// The publish metrics of each route's targets (by route, then target), looked up once here
    /// rather than per event: a lookup hashes the label set and allocates its strings.
    pub target_metrics: Vec<Vec<TargetMetrics>>,
    pub sinks: Vec<Arc<dyn Sink>>,
    /// The settings each sink was built from (same order as `sinks`).
    pub sink_settings: Vec<SinkSettings>,
    pub max_body_bytes: u64,
    pub ack_timeout: Duration,
    pub http: HttpSettings,
    /// The settings all of this was built from, for rebuilding a sink whose credential files
    /// changed.
    settings: Settings,
    /// The endpoints' secret sources in the order of `settings.endpoints`.
    endpoint_order: Vec<String>,
    /// What each sink's credential files held when it was built (same order as `sinks`).
    sink_credentials: Vec<crate::sink::CredentialStamp>,
}

/// The metrics a successful publish to one route target updates.
pub struct TargetMetrics {
    /// `hookbridge_published_total` for the target's sink and destination template.
    pub published: Counter,
    /// `hookbridge_publish_seconds` for the target's sink.
    pub seconds: Histogram,
}

impl TargetMetrics {
    fn new(metrics: &Metrics, target: &Target) -> Self {
        let published = SinkDestination {
            sink: target.sink_name.clone(),
            destination: target.destination.as_str().to_string(),
        };
        let sink = SinkLabel {
            sink: target.sink_name.clone(),
        };
        TargetMetrics {
            published: metrics.published.get_or_create(&published).clone(),
            seconds: metrics.publish_seconds.get_or_create(&sink).clone(),
        }
    }
}

impl Live {
    /// The live state of `settings`, with the endpoints' `secrets` as read by
    /// [`crate::config::read_secrets`] and the sinks built from `settings.sinks`; `metrics` are
    /// the series its requests update.
    pub fn new(settings: &Settings, secrets: &Secrets, sinks: Vec<Arc<dyn Sink>>, metrics: &Metrics) -> Self {
        let endpoints = settings
            .endpoints
            .iter()
            .zip(secrets.0.iter().chain(std::iter::repeat(&Vec::new())))
            .map(|(e, secrets)| {
                (
                    e.path.clone(),
                    Endpoint {
                        path: e.path.clone(),
                        answered_ok: metrics
                            .requests
                            .get_or_create(&EndpointStatus {
                                endpoint: e.path.clone(),
                                status: 200,
                            })
                            .clone(),
                        tolerance: e.tolerance,
                        sources: e.sources.clone(),
                        verifier: ArcSwap::from_pointee(
                            Verifier::new(secrets, e.tolerance).with_future_tolerance(e.future_tolerance),
                        ),
                        secrets: std::sync::Mutex::new(secrets.clone()),
                    },
                )
            })
            .collect();
        let target_metrics = settings
            .router
            .routes()
            .iter()
            .map(|r| r.targets.iter().map(|t| TargetMetrics::new(metrics, t)).collect())
            .collect();
        Live {
            endpoints,
            target_metrics,
            router: settings.router.clone(),
            sinks,
            sink_settings: settings.sinks.clone(),
            max_body_bytes: settings.max_body_bytes,
            ack_timeout: settings.ack_timeout,
            http: settings.http.clone(),
            settings: settings.clone(),
            endpoint_order: settings.endpoints.iter().map(|e| e.path.clone()).collect(),
            sink_credentials: settings.sinks.iter().map(crate::sink::CredentialStamp::read).collect(),
        }
    }

    /// The running settings, and each endpoint's secrets as they are now (a secret file may
    /// have changed since they were read).
    fn current_settings(&self) -> (Settings, Secrets) {
        let secrets = self
            .endpoint_order
            .iter()
            .map(|path| {
                self.endpoints
                    .get(path)
                    .map(|live| live.secrets.lock().unwrap_or_else(|p| p.into_inner()).clone())
                    .unwrap_or_default()
            })
            .collect();
        (self.settings.clone(), Secrets(secrets))
    }

    /// Names of the sinks whose credential files changed since they were built.
    fn changed_credentials(&self) -> Vec<String> {
        self.sink_settings
            .iter()
            .zip(&self.sink_credentials)
            .filter(|(_, stamp)| stamp.changed())
            .map(|(s, _)| s.name.clone())
            .collect()
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
    pub(crate) drain_signal: watch::Sender<bool>,
    /// Held by a reload while it swaps sinks in, and by shutdown from the moment it begins, so
    /// that a reload either completes before shutdown (its sinks are then closed by shutdown) or
    /// sees `draining` and closes what it built.
    pub(crate) lifecycle: tokio::sync::Mutex<()>,
    /// Caps requests in flight (`http.max_concurrent_requests`).
    pub limiter: tokio::sync::Semaphore,
    /// `http.max_header_bytes` as the listeners were built with it (a reload does not change it).
    pub max_header_bytes: usize,
    /// `http.max_buffered_bytes`: the memory request bodies may hold at once (fixed at start).
    pub budget: BodyBudget,
    /// Sinks a reload removed: closed at shutdown with the others.
    pub(crate) retired: std::sync::Mutex<Vec<Arc<dyn Sink>>>,
    /// The TLS certificate being served, if any.
    pub(crate) tls: Option<Arc<crate::tls::ReloadingCert>>,
    /// Held while sinks are rebuilt and swapped, so that a config reload and a credential
    /// rotation never build from the same old state at once.
    reloading: tokio::sync::Mutex<()>,
    /// The log settings the process started with: logging is set up once.
    log: LogSettings,
}

/// The dedup window's limits from the config.
fn dedup_limits(settings: &Settings) -> Limits {
    Limits {
        capacity: settings.dedup.capacity,
        max_bytes: settings.dedup.max_bytes,
        ttl: settings.dedup.ttl,
    }
}

impl State {
    pub fn new(settings: &Settings, secrets: &Secrets, sinks: Vec<Arc<dyn Sink>>, clock: Arc<dyn Clock>) -> Self {
        let metrics = Metrics::new();
        State {
            live: ArcSwap::from_pointee(Live::new(settings, secrets, sinks, &metrics)),
            dedup: Dedup::new(dedup_limits(settings)),
            metrics,
            clock,
            draining: AtomicBool::new(false),
            drain_signal: watch::channel(false).0,
            lifecycle: tokio::sync::Mutex::new(()),
            limiter: tokio::sync::Semaphore::new(settings.http.max_concurrent_requests),
            max_header_bytes: settings.http.max_header_bytes,
            budget: BodyBudget::new(settings.http.max_buffered_bytes),
            retired: std::sync::Mutex::new(Vec::new()),
            tls: None,
            reloading: tokio::sync::Mutex::new(()),
            log: settings.log.clone(),
        }
    }

    /// The parts of a reload outside routes and sinks: the dedup window takes its new limits at
    /// once; log settings cannot change in a running process, which is said loudly.
    fn reload_process_settings(&self, settings: &Settings) {
        let limits = dedup_limits(settings);
        let old = self.dedup.limits();
        if limits != old {
            self.dedup.set_limits(limits, Instant::now());
            tracing::info!(
                capacity = limits.capacity,
                max_bytes = limits.max_bytes,
                ttl = %humantime::format_duration(limits.ttl),
                "dedup settings changed; now in use"
            );
        }
        if settings.log != self.log {
            tracing::warn!(
                running_format = if self.log.json { "json" } else { "text" },
                running_level = %self.log.level,
                new_format = if settings.log.json { "json" } else { "text" },
                new_level = %settings.log.level,
                "log settings changed in the config but need a restart to apply; still logging as before"
            );
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
    /// The dedup window takes its new limits at once. Listener settings (addresses, TLS paths, header
    /// limits, the concurrency cap) and log settings need a restart (a changed `log` is logged).
    /// The new config's secrets and credential files are read first; one that cannot be read
    /// refuses the reload ([`ReloadError::Unreadable`]).
    pub async fn reload(self: &Arc<Self>, settings: Settings) -> Result<(), ReloadError> {
        if self.draining.load(Ordering::SeqCst) {
            return Err(ReloadError::ShuttingDown);
        }
        let (settings, read) = tokio::task::spawn_blocking(move || {
            let read = crate::config::read_secrets(&settings);
            (settings, read)
        })
        .await
        .map_err(|e| {
            ReloadError::Unreadable(vec![crate::config::Problem {
                path: String::new(),
                message: format!("reading the secrets stopped: {e}"),
            }])
        })?;
        let secrets = read.map_err(ReloadError::Unreadable)?;
        self.reload_rebuilding(settings, secrets, &[]).await
    }

    /// [`Self::reload`], also rebuilding the sinks named in `rebuild` even where their settings
    /// did not change (their credential files did).
    async fn reload_rebuilding(
        self: &Arc<Self>,
        settings: Settings,
        secrets: Secrets,
        rebuild: &[String],
    ) -> Result<(), ReloadError> {
        if self.draining.load(Ordering::SeqCst) {
            return Err(ReloadError::ShuttingDown);
        }
        let _one_at_a_time = self.reloading.lock().await;
        let old = self.live();
        let mut sinks = Vec::with_capacity(settings.sinks.len());
        let mut stamps = Vec::with_capacity(settings.sinks.len());
        let mut built: Vec<Arc<dyn Sink>> = Vec::new();
        // Built and checked with no lock held: this may take up to RELOAD_SINK_WAIT per sink.
        for s in &settings.sinks {
            if let Some(i) = old
                .sink_settings
                .iter()
                .position(|o| o.name == s.name && o.config == s.config && !rebuild.contains(&s.name))
            {
                if let (Some(kept), Some(stamp)) = (old.sinks.get(i), old.sink_credentials.get(i)) {
                    sinks.push(kept.clone());
                    stamps.push(stamp.clone());
                    continue;
                }
            }
            // Read before building: a file that changes while the sink is built is noticed.
            stamps.push(crate::sink::CredentialStamp::read(s));
            let ready = match crate::sink::build(s, settings.ack_timeout).await {
                Ok(sink) => {
                    built.push(sink.clone());
                    wait_healthy(sink.as_ref(), &self.draining).await.map(|()| sink)
                }
                Err(e) => Err(NotReady::Build(e.source)),
            };
            match ready {
                Ok(sink) => sinks.push(sink),
                Err(e) => {
                    close_all(&built, Instant::now() + settings.ack_timeout).await;
                    // `sinks` holds some of `built` too: both go, so the last reference is off the runtime.
                    drop_off_runtime(std::mem::take(&mut sinks).into_iter().chain(built).collect());
                    return Err(ReloadError::Sink {
                        name: s.name.clone(),
                        source: e,
                    });
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
                Some(ReloadError::ShuttingDown)
            } else if !Arc::ptr_eq(&old, &self.live()) {
                Some(ReloadError::Superseded)
            } else {
                None
            };
            if let Some(why) = refusal {
                drop(_swap);
                close_all(&built, Instant::now() + settings.ack_timeout).await;
                return Err(why);
            }
            let mut live = Live::new(&settings, &secrets, sinks, &self.metrics);
            live.sink_credentials = stamps;
            self.replace_live(live);
            if !replaced.is_empty() {
                self.retired
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(replaced.iter().cloned());
            }
        }
        self.reload_process_settings(&settings);
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
                drop_off_runtime(to_close.into_iter().chain(replaced).collect());
            });
        }
        Ok(())
    }

    /// Rebuilds the sinks whose credential files (passwords, client certificates and keys, CA
    /// bundles) changed, through the reload path: a new sink must be healthy before it is swapped
    /// in, requests that started on the old one finish on it, and it is closed after them. A sink
    /// that is not healthy with the new files is not swapped; the next poll tries again.
    pub async fn rotate_credentials(self: &Arc<Self>) {
        let live = self.live();
        let changed = match tokio::task::spawn_blocking(move || live.changed_credentials()).await {
            Ok(c) if !c.is_empty() => c,
            _ => return,
        };
        let (settings, secrets) = self.live().current_settings();
        for name in &changed {
            tracing::info!(sink = %name, "credential files changed; building a new connection with them");
        }
        match self.reload_rebuilding(settings, secrets, &changed).await {
            Ok(()) => {
                for name in &changed {
                    tracing::info!(sink = %name, "credential files changed; the new connection is in use");
                }
            }
            Err(e) => tracing::warn!(
                error = %e,
                "credential files changed, but the sink built with them is not usable; keeping the running one and retrying"
            ),
        }
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

/// The dead-letter step of the publish path. A target (`failed_sink`, `failed_destination`)
/// refused the message for good with `failed`; it is published instead to `dead_letter`, with
/// headers saying which target failed and why, waiting at most until `deadline`. `Ok` only when
/// the dead-letter sink confirmed it; otherwise an error of the dead-letter publish's class that
/// names both failures. A retryable `failed` is returned as it is: only permanent failures are
/// parked, a retry may still deliver the others. `on_publish` records the dead-letter publish in
/// the usual publish metrics.
#[allow(clippy::too_many_arguments)]
pub async fn dead_letter(
    state: &State,
    live: &Live,
    dead_letter: &Target,
    failed_sink: &str,
    failed_destination: &str,
    envelope: &Envelope,
    failed: SinkError,
    deadline: Instant,
    on_publish: impl FnOnce(&str, &str, &Result<(), SinkError>),
) -> Result<(), SinkError> {
    use crate::sink::header::{FAILED_DESTINATION, FAILED_REASON, FAILED_SINK};
    if failed.is_retryable() {
        return Err(failed);
    }
    let Some(sink) = live.sinks.get(dead_letter.sink) else {
        // Routes and sinks are validated together; this would be a wiring bug, not input.
        return Err(SinkError::permanent(format!(
            "{} (refused for good), and the dead-letter sink #{} is not running",
            failed.message, dead_letter.sink
        )));
    };
    let destination = dead_letter.destination.render(envelope.meta());
    let letter = envelope.with_headers([
        (FAILED_SINK, failed_sink.to_string()),
        (FAILED_DESTINATION, failed_destination.to_string()),
        (FAILED_REASON, failed.message.clone()),
    ]);
    let result = match tokio::time::timeout_at(deadline.into(), sink.publish(&destination, &letter)).await {
        Ok(r) => r,
        Err(_) => Err(SinkError::retryable(format!(
            "sink {} did not confirm the dead letter in time",
            sink.name()
        ))),
    };
    on_publish(sink.name(), &destination, &result);
    match result {
        Ok(()) => {
            state
                .metrics
                .dead_lettered
                .get_or_create(&crate::metrics::DeadLettered {
                    sink: failed_sink.to_string(),
                    dead_letter_sink: sink.name().to_string(),
                })
                .inc();
            tracing::warn!(
                event_id = %envelope.meta().id,
                event_type = %envelope.meta().event_type,
                sink = failed_sink,
                destination = failed_destination,
                dead_letter_sink = sink.name(),
                dead_letter_destination = %destination,
                error = %failed.message,
                "refused for good; published to the dead letter instead"
            );
            Ok(())
        }
        Err(e) => Err(SinkError {
            class: e.class,
            message: format!(
                "{} (refused for good), and the dead letter to sink {} failed too: {}",
                failed.message,
                sink.name(),
                e.message
            ),
        }),
    }
}
