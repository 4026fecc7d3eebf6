//! `hookbridge replay`: recovers events from Stripe's Events API and publishes them through the
//! config's routes and sinks, exactly as if Stripe had delivered them as webhooks.
//!
//! 1. The window (`--since`, or `--from`/`--to`) is checked against the API's 30 days before any
//!    request; the checkpoint, when one is given and exists, moves its start forward.
//! 2. `GET /v1/events` is paged with `starting_after` ([`api`]), newest first as the API lists
//!    them. Each event's bytes are sliced out of the page as sent, deduplicated by id, filtered
//!    by `--types` ([`filter`]) and kept in a temporary file ([`spool`]), so memory stays small
//!    whatever the backlog.
//! 3. Then they are published oldest first, one at a time, through the same publish function
//!    as the webhook handler ([`crate::http::webhook::publish_all`]), each awaiting its brokers'
//!    confirmation. Headers as usual, without `stripe-signature` and with
//!    `stripe-replayed: true`. After each event the checkpoint file is rewritten ([`checkpoint`]).
//! 4. The first failure (after a few retries when it is retryable) or Ctrl-C stops the run; the
//!    checkpoint then names the last event confirmed, and a rerun continues after it.

pub mod api;
pub mod checkpoint;
pub mod filter;
mod progress;
pub mod spool;
pub mod window;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use self::api::{Api, Query};
use self::checkpoint::Checkpoint;
use self::filter::TypeFilter;
use self::progress::Progress;
use self::spool::Spool;
use crate::config::{self, ConfigError, Settings};
use crate::event::EventMeta;
use crate::sink::{Envelope, Sink};
use crate::state::State;

pub use self::api::DEFAULT_API_BASE;

/// Attempts per event when its publish fails in a way that may succeed later (a broker
/// restarting, a topic being auto-created): 0.5 s, 1 s, 2 s, 4 s and 8 s apart, about 15 s in all
/// beyond the attempts' own `ack_timeout`s.
pub const PUBLISH_ATTEMPTS: u32 = 6;

/// The checkpoint is rewritten after every event, but synced to disk at most this often (and at
/// the end): a sync takes milliseconds, as long as a publish. Between syncs it survives the
/// process dying; only a crash of the machine can take it back to the last sync, and then up to
/// this much is published again.
pub const CHECKPOINT_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// Arguments of `hookbridge replay`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// Config file (default: $HOOKBRIDGE_CONFIG, then config/hookbridge.yaml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Replay the events of this last stretch of time, e.g. 6h or 3d (at most 30d).
    #[arg(long, value_name = "DURATION", value_parser = window::parse_duration,
          required_unless_present = "from", conflicts_with = "from")]
    pub since: Option<Duration>,
    /// Replay events created from this time on: RFC 3339 in UTC (2026-11-30T08:00:00Z) or Unix
    /// seconds; at most 30 days ago.
    #[arg(long, value_name = "TIME", value_parser = window::parse_time)]
    pub from: Option<i64>,
    /// With --from: up to this time (default: now).
    #[arg(long, value_name = "TIME", value_parser = window::parse_time, requires = "from")]
    pub to: Option<i64>,
    /// Only these event types: exact names or globs (`invoice.*`), several allowed.
    #[arg(long, value_name = "GLOB", num_args = 1.., value_delimiter = ',')]
    pub types: Vec<String>,
    /// Only events that Stripe has not delivered successfully to every endpoint
    /// (`delivery_success=false`).
    #[arg(long)]
    pub undelivered: bool,
    /// List what would be published and where, publishing nothing and writing no checkpoint.
    #[arg(long)]
    pub dry_run: bool,
    /// File recording the last event confirmed; a rerun with the same file continues after it.
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
    /// Stripe secret or restricted API key (read access to Events is enough). Prefer the
    /// environment variable: a command line is visible to other users of the machine.
    #[arg(long, env = "STRIPE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Where Stripe's API is (change it to test against stripe-mock or a local server).
    #[arg(long, value_name = "URL", default_value = DEFAULT_API_BASE)]
    pub api_base: String,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress bar on stderr.
    #[arg(long)]
    pub quiet: bool,
}

/// Why a replay could not run, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Bad flags, a bad checkpoint file: exit 2.
    #[error("{0}")]
    Usage(String),
    /// Bad config: exit 2.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The API or a sink failed, or the run was interrupted: exit 1.
    #[error("{0}")]
    Failed(String),
}

impl ReplayError {
    /// 2 for bad input, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            ReplayError::Usage(_) | ReplayError::Config(_) => 2,
            ReplayError::Failed(_) => 1,
        }
    }
}

/// A validated replay.
#[derive(Debug, Clone)]
pub struct Plan {
    pub query: Query,
    pub filter: TypeFilter,
    pub api_base: String,
    pub api_key: String,
    /// The checkpoint file, and what it held at the start.
    pub checkpoint: Option<PathBuf>,
    pub resume: Option<Checkpoint>,
    pub dry_run: bool,
}

impl Plan {
    /// Checks the flags at `now` (Unix seconds) and reads the checkpoint file.
    pub fn from_args(a: &ReplayArgs, now: i64) -> Result<Plan, ReplayError> {
        let usage = ReplayError::Usage;
        let api_key = a.api_key.clone().unwrap_or_default().trim().to_string();
        if api_key.is_empty() {
            return Err(usage(
                "no API key: set STRIPE_API_KEY (or pass --api-key); a restricted key with read access to Events is enough"
                    .into(),
            ));
        }
        if api_key.starts_with("pk_") {
            return Err(usage(
                "the API key is a publishable key (pk_…), which cannot list events; use a secret (sk_…) or restricted (rk_…) key".into(),
            ));
        }
        if api_key.starts_with("whsec_") {
            return Err(usage(
                "the API key is a webhook signing secret (whsec_…); replay needs an API key (sk_… or rk_…)".into(),
            ));
        }
        api::Api::new(&a.api_base, &api_key).map_err(|e| usage(format!("--api-base: {e}")))?;
        let window = window::window(a.since, a.from, a.to, now).map_err(usage)?;
        let filter = TypeFilter::new(&a.types).map_err(usage)?;
        let resume = match &a.checkpoint {
            Some(path) => checkpoint::load(path).map_err(usage)?,
            None => None,
        };
        Ok(Plan {
            query: Query {
                window,
                undelivered: a.undelivered,
                types: filter.api(),
            },
            filter,
            api_base: a.api_base.clone(),
            api_key,
            checkpoint: a.checkpoint.clone(),
            resume,
            dry_run: a.dry_run,
        })
    }
}

/// What a replay did: printed as one line, or as JSON with `--json`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub dry_run: bool,
    /// The window asked for (RFC 3339).
    pub from: String,
    pub to: String,
    /// Pages and events the API returned, and retries it took.
    pub pages: u32,
    pub fetched: u64,
    pub retries: u32,
    /// Not of a `--types` type.
    pub filtered: u64,
    /// Listed twice by the API within the run.
    pub duplicates: u64,
    /// Confirmed by an earlier run (the checkpoint covers them).
    pub skipped: u64,
    /// Published and confirmed (with `--dry-run`: that would be published).
    pub published: u64,
    /// No route matches their type: dropped, as a webhook would be.
    pub unrouted: u64,
    /// Not published because the run stopped.
    pub remaining: u64,
    pub seconds: f64,
    /// Events published per second of publishing.
    pub rate: f64,
    /// The last event confirmed (what the checkpoint holds).
    pub last_event_id: Option<String>,
    pub complete: bool,
    pub error: Option<String>,
}

impl Report {
    /// The one-line summary.
    pub fn text(&self) -> String {
        let verb = if self.dry_run {
            "would be published"
        } else {
            "published"
        };
        let mut s = format!(
            "replay{}: {} {verb}, {} unrouted, {} already replayed (checkpoint), {} not of --types, {} duplicates; \
             {} fetched in {} pages with {} retries, {:.1}s",
            if self.dry_run { " (dry run)" } else { "" },
            self.published,
            self.unrouted,
            self.skipped,
            self.filtered,
            self.duplicates,
            self.fetched,
            self.pages,
            self.retries,
            self.seconds,
        );
        if !self.dry_run && self.published > 0 {
            s.push_str(&format!(" ({:.0} events/s)", self.rate));
        }
        if self.remaining > 0 {
            s.push_str(&format!("; stopped with {} left", self.remaining));
        }
        s
    }
}

/// Runs `hookbridge replay` from the command line. Prints the summary; an error is returned for
/// `main` to print as one line.
pub fn run_cli(args: ReplayArgs) -> Result<(), ReplayError> {
    let plan = Plan::from_args(&args, crate::verify::unix_now())?;
    // The secrets are read as `serve` would, so a config it would refuse is refused here too;
    // a replay itself verifies no signature.
    let (settings, _secrets) = config::load_with_secrets(&config::resolve_path(args.config.clone()))?;
    let progress = !args.quiet && !args.json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| ReplayError::Failed(format!("cannot start the async runtime: {e}")))?;
    let report = rt.block_on(async {
        let sinks = if plan.dry_run {
            None
        } else {
            let sinks = crate::sink::build_all(&settings.sinks, settings.ack_timeout)
                .await
                .map_err(|e| ReplayError::Failed(e.to_string()))?;
            // As a reload does: give each broker a moment to connect (and a RabbitMQ sink to
            // declare its topology) before the first publish. One that stays down is reported
            // and left to fail the publishes routed to it.
            for sink in &sinks {
                if let Err(e) =
                    crate::state::wait_healthy(sink.as_ref(), &std::sync::atomic::AtomicBool::new(false)).await
                {
                    eprintln!("hookbridge: replay: warning: sink {} is {e}", sink.name());
                }
            }
            Some(sinks)
        };
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                let _ = stop.send(true);
            }
        });
        let ui = Ui {
            progress,
            list: plan.dry_run && !args.json,
        };
        Ok::<_, ReplayError>(run(&plan, &settings, sinks, stopped, ui).await)
    })?;
    rt.shutdown_timeout(Duration::from_millis(100));
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("a report always serialises")
        );
    } else {
        println!("{}", report.text());
    }
    match report.error {
        Some(e) => Err(ReplayError::Failed(format!("replay: {e}"))),
        None => Ok(()),
    }
}

/// What the run shows while it works.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ui {
    /// The progress bar on stderr.
    pub progress: bool,
    /// With `--dry-run`: one line per event on stdout, with where it would go.
    pub list: bool,
}

/// Replays `plan` through the routes of `settings` into `sinks` (built from `settings.sinks`, in
/// that order; `None` for a dry run), until done, a failure, or `stop` turning true. Closes the
/// sinks at the end.
pub async fn run(
    plan: &Plan,
    settings: &Settings,
    sinks: Option<Vec<Arc<dyn Sink>>>,
    mut stop: watch::Receiver<bool>,
    ui: Ui,
) -> Report {
    let started = Instant::now();
    let mut report = Report {
        dry_run: plan.dry_run,
        from: window::format_time(plan.query.window.gte),
        to: window::format_time(plan.query.window.lte),
        ..Report::default()
    };
    let mut progress = Progress::new(ui.progress);
    let stop_note = |report: &Report| match (&plan.checkpoint, &report.last_event_id) {
        (Some(path), Some(id)) => format!(
            "; the checkpoint {} names {id}, and a rerun with it continues after that event",
            path.display()
        ),
        (Some(path), None) => format!(
            "; a rerun with --checkpoint {} starts from the beginning",
            path.display()
        ),
        (None, _) => "; without --checkpoint a rerun starts over (consumers deduplicate by event id)".into(),
    };

    // Fetch the window, newest first, into the spool.
    let spool = fetch(plan, &mut report, &mut stop, &mut progress).await;
    report.seconds = started.elapsed().as_secs_f64();
    let spool = match spool {
        Ok(s) => s,
        Err(e) => {
            progress.finish();
            report.error = Some(e);
            return report;
        }
    };

    // Publish oldest first.
    // Replayed events carry no signature: the endpoints need no secrets.
    let no_secrets = config::Secrets::default();
    let state = sinks.map(|sinks| State::new(settings, &no_secrets, sinks, Arc::new(crate::verify::SystemClock)));
    let live = state.as_ref().map(|s| s.live());
    let router = &settings.router;
    let mut cp = plan.resume.clone();
    let total = spool.len() as u64;
    let publishing = Instant::now();
    let (mut synced, mut unsynced) = (Instant::now(), false);
    for i in (0..spool.len()).rev() {
        if *stop.borrow() {
            report.remaining = i as u64 + 1;
            report.error = Some(format!("interrupted{}", stop_note(&report)));
            break;
        }
        let body = match spool.get(i) {
            Ok(b) => b,
            Err(e) => {
                report.remaining = i as u64 + 1;
                report.error = Some(format!("cannot read the spooled events back: {e}"));
                break;
            }
        };
        let envelope = Envelope::replayed(body).expect("spooled events were parsed when fetched");
        let meta = envelope.meta();
        let (id, created) = (meta.id.clone(), meta.created.unwrap_or(0));
        // A replayed event arrived on no endpoint: routes with an `endpoint` condition skip it.
        match router.route(&crate::route::Incoming::new(meta, None)) {
            None => {
                report.unrouted += 1;
                if ui.list {
                    println!("{id} {}: no route matches; dropped", meta.event_type);
                }
            }
            Some((route_index, route)) => match (&state, &live) {
                (Some(state), Some(live)) => {
                    if let Err(e) = publish(state, live, route_index, route, &envelope).await {
                        report.remaining = i as u64 + 1;
                        report.error = Some(format!(
                            "event {id} ({}) was not published: {e}{}",
                            meta.event_type,
                            stop_note(&report)
                        ));
                        break;
                    }
                    report.published += 1;
                }
                _ => {
                    report.published += 1;
                    if ui.list {
                        let to: Vec<String> = crate::route::destinations(route, meta)
                            .iter()
                            .map(|(t, d)| format!("{} {d}", t.sink_name))
                            .collect();
                        println!("{id} {} -> {}", meta.event_type, to.join(", "));
                    }
                }
            },
        }
        if !plan.dry_run {
            Checkpoint::advance(&mut cp, &id, created);
            report.last_event_id = Some(id);
            if let (Some(path), Some(c)) = (&plan.checkpoint, &cp) {
                let sync = synced.elapsed() >= CHECKPOINT_SYNC_INTERVAL;
                if let Err(e) = checkpoint::save(path, c, sync) {
                    report.remaining = i as u64;
                    report.error = Some(e);
                    break;
                }
                if sync {
                    synced = Instant::now();
                }
                unsynced = !sync;
            }
        }
        progress.publishing(report.fetched, total - i as u64, total, i == 0);
    }
    if let (true, Some(path), Some(c)) = (unsynced, &plan.checkpoint, &cp) {
        if let Err(e) = checkpoint::save(path, c, true) {
            report.error.get_or_insert(e);
        }
    }
    let publish_secs = publishing.elapsed().as_secs_f64();
    report.rate = report.published as f64 / publish_secs.max(0.001);
    report.complete = report.error.is_none();
    if let Some(state) = &state {
        let deadline = Instant::now() + settings.ack_timeout;
        for sink in &state.live().sinks {
            let _ = sink.close(deadline).await;
        }
    }
    progress.finish();
    report.seconds = started.elapsed().as_secs_f64();
    report
}

/// Pages through the window, keeping the events to publish.
async fn fetch(
    plan: &Plan,
    report: &mut Report,
    stop: &mut watch::Receiver<bool>,
    progress: &mut Progress,
) -> Result<Spool, String> {
    let mut spool = Spool::new().map_err(|e| format!("cannot create a temporary file for the events: {e}"))?;
    let mut query = plan.query.clone();
    if let Some(cp) = &plan.resume {
        // Nothing older than the checkpoint's event is replayed again: do not even list it.
        query.window.gte = query.window.gte.max(cp.created);
    }
    if query.window.gte > query.window.lte {
        return Ok(spool);
    }
    let mut api = Api::new(&plan.api_base, &plan.api_key).map_err(|e| e.to_string())?;
    let mut seen: HashSet<String> = HashSet::new();
    let mut after: Option<String> = None;
    loop {
        let page = tokio::select! {
            page = api.list(&query, after.as_deref()) => page,
            _ = stop.wait_for(|s| *s) => {
                return Err("interrupted while listing events; nothing was published".into());
            }
        };
        report.retries = api.retries;
        report.pages = api.pages;
        let page = page.map_err(|e| e.to_string())?;
        for body in &page.events {
            report.fetched += 1;
            let meta =
                EventMeta::parse(body).map_err(|e| format!("the API listed something that is not an event: {e}"))?;
            after = Some(meta.id.clone());
            if !seen.insert(meta.id.clone()) {
                report.duplicates += 1;
            } else if !plan.filter.matches(&meta.event_type) {
                report.filtered += 1;
            } else if plan
                .resume
                .as_ref()
                .is_some_and(|c| c.covers(&meta.id, meta.created.unwrap_or(0)))
            {
                report.skipped += 1;
            } else {
                spool
                    .push(body)
                    .map_err(|e| format!("cannot write to the temporary file of events: {e}"))?;
            }
        }
        progress.fetching(report.fetched, report.pages);
        if !page.has_more || page.events.is_empty() {
            return Ok(spool);
        }
    }
}

/// One event through the webhook's publish path; a retryable failure is retried a few times,
/// twice as long apart each time (a webhook would be retried by Stripe).
async fn publish(
    state: &State,
    live: &crate::state::Live,
    route_index: usize,
    route: &crate::route::Route,
    envelope: &Envelope,
) -> Result<(), crate::sink::SinkError> {
    let mut attempt = 1;
    // Targets that confirmed in an earlier attempt are not published to again.
    let mut confirmed = std::collections::HashSet::new();
    loop {
        let already = |key: &str| confirmed.contains(key);
        let (result, now_confirmed) =
            crate::http::webhook::publish_all(state, live, route_index, route, envelope, Instant::now(), &already)
                .await;
        match result {
            Err(e) if e.is_retryable() && attempt < PUBLISH_ATTEMPTS => {
                confirmed.extend(now_confirmed);
                tokio::time::sleep(Duration::from_millis(500) * (1 << (attempt - 1))).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}
