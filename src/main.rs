//! The `hookbridge` command line: serve, check-config, route, sign, send, bench, replay.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use hookbridge::config::{self, ConfigError, Settings};
use hookbridge::verify;

/// mimalloc rather than glibc's malloc. A request body is allocated on one runtime thread and
/// freed on another, or by a broker client's thread, and glibc then takes the other thread's
/// arena lock: at 64 requests in flight the bridge made 0.6 futex calls per event, and spent 8-11
/// µs less CPU per event to Kafka, 3-7 to NATS and 3-4 to RabbitMQ with mimalloc (no change on
/// the discard path), for about 1 MiB more idle RSS (bench/FINDINGS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "hookbridge",
    version,
    about = "Verify Stripe webhooks and republish them to Kafka, RabbitMQ or a file"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the bridge until SIGTERM/SIGINT, then drain.
    Serve {
        /// Config file (default: $HOOKBRIDGE_CONFIG, then config/hookbridge.yaml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Load and validate the config; print the resolved sinks and routes with secrets redacted.
    CheckConfig {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print where an event of TYPE would go, and why each route before it did not match.
    Route {
        /// An event type such as invoice.paid.
        #[arg(value_name = "TYPE")]
        event_type: String,
        #[arg(long)]
        config: Option<PathBuf>,
        /// The event is a live-mode event (default: test mode).
        #[arg(long)]
        livemode: bool,
        /// The event's Connect account (default: none, the platform's own event).
        #[arg(long, value_name = "ID")]
        account: Option<String>,
        /// The endpoint path the event arrived on (default: none; routes with an `endpoint`
        /// condition then do not match).
        #[arg(long, value_name = "PATH")]
        endpoint: Option<String>,
    },
    /// Print a Stripe-Signature header value for the body in FILE (or stdin).
    Sign {
        #[arg(long, env = "STRIPE_WEBHOOK_SECRET", hide_env_values = true)]
        secret: String,
        /// Unix seconds (default: now).
        #[arg(long)]
        timestamp: Option<i64>,
        file: Option<PathBuf>,
    },
    /// Sign each file and POST it to URL, printing each status.
    Send {
        #[arg(long)]
        url: String,
        #[arg(long, env = "STRIPE_WEBHOOK_SECRET", hide_env_values = true)]
        secret: String,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Load-test a webhook endpoint with signed fixture events; report throughput and latency.
    Bench(hookbridge::bench::BenchArgs),
    /// Publish events from Stripe's Events API (last 30 days) through the routes, oldest first.
    Replay(hookbridge::replay::ReplayArgs),
}

/// An error and the exit code it deserves.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Self {
        Failure {
            code: 2,
            message: message.into(),
        }
    }
    fn other(message: impl Into<String>) -> Self {
        Failure {
            code: 1,
            message: message.into(),
        }
    }
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::usage(e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(f) => {
            eprintln!("hookbridge: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, Failure> {
    match cli.command {
        Command::Serve { config } => serve(config),
        Command::CheckConfig { config } => {
            let path = config::resolve_path(config);
            let (settings, _) = config::load_with_secrets(&path)?;
            print!("{}", describe(&settings));
            println!("config {} is valid", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Route {
            event_type,
            config,
            livemode,
            account,
            endpoint,
        } => {
            let (settings, _) = config::load_with_secrets(&config::resolve_path(config))?;
            print!("{}", explain_route(&settings, &event_type, livemode, account, endpoint));
            Ok(ExitCode::SUCCESS)
        }
        Command::Sign {
            secret,
            timestamp,
            file,
        } => {
            let body = read_input(file.as_ref())?;
            let t = timestamp.unwrap_or_else(verify::unix_now);
            println!("{}", verify::sign(secret.as_bytes(), t, &body));
            Ok(ExitCode::SUCCESS)
        }
        Command::Send { url, secret, files } => send(&url, &secret, &files),
        Command::Bench(args) => hookbridge::bench::run_cli(args)
            .map(ExitCode::from)
            .map_err(|e| Failure {
                code: e.exit_code(),
                message: e.to_string(),
            }),
        Command::Replay(args) => hookbridge::replay::run_cli(args)
            .map(|()| ExitCode::SUCCESS)
            .map_err(|e| Failure {
                code: e.exit_code(),
                message: e.to_string(),
            }),
    }
}

fn read_input(file: Option<&PathBuf>) -> Result<Vec<u8>, Failure> {
    match file {
        Some(p) => std::fs::read(p).map_err(|e| Failure::other(format!("cannot read {}: {e}", p.display()))),
        None => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| Failure::other(format!("cannot read stdin: {e}")))?;
            Ok(buf)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::other(format!("cannot start the async runtime: {e}")))
}

fn send(url: &str, secret: &str, files: &[PathBuf]) -> Result<ExitCode, Failure> {
    let target = hookbridge::client::Target::parse(url).map_err(|e| Failure::usage(e.to_string()))?;
    let bodies = files
        .iter()
        .map(|f| read_input(Some(f)).map(|b| (f, b)))
        .collect::<Result<Vec<_>, _>>()?;
    runtime()?.block_on(async {
        let mut all_ok = true;
        for (file, body) in bodies {
            let header = verify::sign(secret.as_bytes(), verify::unix_now(), &body);
            let mut conn = hookbridge::client::Connection::open(&target)
                .await
                .map_err(|e| Failure::other(e.to_string()))?;
            let (status, resp) = conn
                .post_signed(&header, body.into())
                .await
                .map_err(|e| Failure::other(e.to_string()))?;
            all_ok &= status.is_success();
            println!(
                "{} {} {}",
                file.display(),
                status.as_u16(),
                String::from_utf8_lossy(&resp)
            );
        }
        Ok(if all_ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
    })
}

fn serve(config: Option<PathBuf>) -> Result<ExitCode, Failure> {
    let path = config::resolve_path(config);
    let settings = config::load(&path)?;
    init_tracing(&settings);
    let rt = runtime()?;
    let path = path.clone();
    rt.block_on(async move {
        let endpoints: Vec<&str> = settings.endpoints.iter().map(|e| e.path.as_str()).collect();
        let sinks: Vec<String> = settings
            .sinks
            .iter()
            .map(|s| format!("{} ({})", s.name, s.config.kind()))
            .collect();
        let (endpoints, sinks) = (endpoints.join(", "), sinks.join(", "));
        let running = hookbridge::app::start(settings, hookbridge::app::Options::default())
            .await
            .map_err(|e| match e {
                // An unreadable secret or credential file is a config error, as in check-config.
                hookbridge::app::StartError::Unreadable(problems) => Failure::from(ConfigError::Invalid {
                    file: path.display().to_string(),
                    problems,
                }),
                other => Failure::other(other.to_string()),
            })?;
        let build = hookbridge::metrics::BUILD;
        tracing::info!(version = %build.version, commit = %build.commit, config = %path.display(),
            endpoints = %endpoints, sinks = %sinks, webhook = %running.webhook_addr,
            admin = %running.admin_addr, "hookbridge started");
        tokio::spawn(reload_config(running.state.clone(), path));
        shutdown_signal().await;
        running.shutdown().await;
        Ok::<_, Failure>(())
    })?;
    // Do not wait for blocking threads (stdin readers and the like) beyond the drain.
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return futures_pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

/// Reloads the config file on SIGHUP, and when its content changes (a Kubernetes ConfigMap is
/// updated in place, and a container without a shell cannot be sent SIGHUP). An invalid file
/// keeps the running config and logs why.
async fn reload_config(state: std::sync::Arc<hookbridge::state::State>, path: PathBuf) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reloading on file changes only");
            None
        }
    };
    let read = |path: PathBuf| async move { tokio::fs::read(path).await.ok() };
    let mut seen = read(path.clone()).await;
    loop {
        let trigger = tokio::select! {
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => None } } => "SIGHUP",
            () = tokio::time::sleep(hookbridge::app::FILE_POLL_INTERVAL) => {
                let now = read(path.clone()).await;
                if now.is_none() || now == seen {
                    continue;
                }
                seen = now;
                "file change"
            }
        };
        let loaded = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || config::load(&path)).await
        };
        match loaded {
            Ok(Ok(settings)) => match state.reload(settings).await {
                Ok(()) => tracing::info!(config = %path.display(), trigger, "config reloaded"),
                Err(e @ hookbridge::state::ReloadError::Unreadable(_)) => {
                    tracing::error!(error = %e, trigger, "config reload refused; keeping the running config")
                }
                Err(e) => tracing::error!(error = %e, trigger, "config reload failed; keeping the running config"),
            },
            Ok(Err(e)) => tracing::error!(error = %e, trigger, "config reload refused; keeping the running config"),
            Err(e) => tracing::error!(error = %e, trigger, "config reload failed; keeping the running config"),
        }
    }
}

async fn futures_pending() {
    std::future::pending::<()>().await
}

fn init_tracing(settings: &Settings) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(&settings.log.level));
    // lapin logs a returned (unroutable) message at warn with its payload: payloads are never logged.
    #[cfg(feature = "amqp")]
    let filter = filter.add_directive("lapin::returned_messages=off".parse().expect("a valid directive"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(hookbridge::logging::capped_stderr(settings.log.json));
    if settings.log.json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

/// What `hookbridge route` prints: each route up to the first that matches, with the reasons the
/// others did not, then the matching route's destinations (rendered for this event) and its
/// dead-letter target; or that the event is dropped.
fn explain_route(
    settings: &Settings,
    event_type: &str,
    livemode: bool,
    account: Option<String>,
    endpoint: Option<String>,
) -> String {
    use hookbridge::route::Incoming;
    use std::fmt::Write;
    let meta = hookbridge::event::EventMeta {
        id: "evt_example".into(),
        event_type: event_type.to_string(),
        api_version: None,
        livemode,
        account: account.filter(|a| !a.is_empty() && a != "platform"),
        object_id: None,
        created: None,
        thin: false,
    };
    let event = Incoming::new(&meta, endpoint.as_deref());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "event {event_type}, {} mode, account {}, endpoint {}",
        event.mode_label(),
        event.account_label(),
        endpoint.as_deref().unwrap_or("(none given)")
    );
    if let Some(e) = endpoint
        .as_deref()
        .filter(|e| !settings.endpoints.iter().any(|x| x.path == *e))
    {
        let known: Vec<_> = settings.endpoints.iter().map(|x| x.path.as_str()).collect();
        let _ = writeln!(
            out,
            "  note: no endpoint has path {e}, so no event arrives there (known: {})",
            known.join(", ")
        );
    }
    let target = |t: &hookbridge::route::Target| {
        let config = settings.sinks[t.sink].config.config();
        let (kind, field) = (config.kind(), config.destination().key());
        format!("sink {} ({kind}) {field} {}", t.sink_name, t.destination.render(&meta))
    };
    let mut matched = None;
    for (i, route, why) in settings.router.explain(&event) {
        let globs: Vec<_> = route.patterns.iter().map(|g| g.as_str()).collect();
        let filters = route.describe_filters();
        let filters = if filters.is_empty() {
            String::new()
        } else {
            format!("; {filters}")
        };
        if why.is_empty() {
            let _ = writeln!(out, "  routes[{i}] (match {}{filters}): matches", globs.join(", "));
            matched = Some((i, route, globs));
        } else {
            let reasons: Vec<_> = why.iter().map(|m| m.describe(&event)).collect();
            let _ = writeln!(
                out,
                "  routes[{i}] (match {}{filters}): no: {}",
                globs.join(", "),
                reasons.join("; ")
            );
        }
    }
    match matched {
        None => {
            let _ = writeln!(
                out,
                "{event_type}: no route matches; the event is answered 200 and dropped"
            );
        }
        Some((i, route, globs)) => {
            let _ = writeln!(out, "{event_type}: routes[{i}] (match {})", globs.join(", "));
            for t in &route.targets {
                let _ = writeln!(out, "  -> {}", target(t));
            }
            match settings.router.dead_letter_for(route) {
                Some(dl) => {
                    let _ = writeln!(
                        out,
                        "  a target that refuses it for good: dead letter -> {}",
                        target(dl)
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "  a target that refuses it for good: answered 500 (no dead letter)"
                    );
                }
            }
        }
    }
    out
}

/// The resolved config, secrets redacted.
fn describe(s: &Settings) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "listen: {}", s.listen);
    let _ = writeln!(out, "admin_listen: {}", s.admin_listen);
    let _ = writeln!(out, "max_body_bytes: {}", s.max_body_bytes);
    let _ = writeln!(out, "ack_timeout: {}", humantime::format_duration(s.ack_timeout));
    let _ = writeln!(out, "endpoints:");
    for e in &s.endpoints {
        let sources: Vec<_> = e.sources.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "  {} tolerance {} secrets [{}]",
            e.path,
            humantime::format_duration(e.tolerance),
            sources.join(", ")
        );
    }
    let _ = writeln!(out, "sinks:");
    for sink in &s.sinks {
        let detail = sink.config.config().describe(s.ack_timeout);
        let _ = writeln!(out, "  {} ({}) {detail}", sink.name, sink.config.kind());
    }
    let _ = writeln!(out, "routes:");
    for (i, r) in s.router.routes().iter().enumerate() {
        let globs: Vec<_> = r.patterns.iter().map(|g| g.as_str()).collect();
        let targets: Vec<_> = r
            .targets
            .iter()
            .map(|t| format!("{} -> {}", t.sink_name, t.destination.as_str()))
            .collect();
        let filters = r.describe_filters();
        let filters = if filters.is_empty() {
            String::new()
        } else {
            format!(" ({filters})")
        };
        let _ = writeln!(out, "  [{i}] {}{filters} => {}", globs.join(", "), targets.join("; "));
        if let Some(dl) = &r.dead_letter {
            let _ = writeln!(
                out,
                "      dead letter => {} -> {}",
                dl.sink_name,
                dl.destination.as_str()
            );
        }
    }
    if let Some(dl) = s.router.dead_letter() {
        let _ = writeln!(out, "dead_letter: {} -> {}", dl.sink_name, dl.destination.as_str());
    }
    out
}
