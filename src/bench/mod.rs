//! `hookbridge bench`: a load generator for any hookbridge deployment (or anything that takes
//! Stripe webhooks).
//!
//! - Every request is signed as it is sent (fresh `t`), so a run is not limited by the
//!   endpoint's tolerance; each carries a unique event id, so dedup never short-cuts it; the
//!   fixtures' event types are used in turn ([`body`]).
//! - Closed loop (`--concurrency N`): N keep-alive connections, each sending its next request as
//!   soon as the previous one is answered. Latency is the time to answer.
//! - Open loop (`--rate R`): requests are due at fixed times ([`schedule`]) and go out over up to
//!   `--concurrency` connections (default 64). Latency is measured from the time a request was
//!   due, so a server that stalls is charged for every request that queued behind the stall
//!   (no coordinated omission).
//! - Latencies go into HDR histograms ([`report`]); a progress line goes to stderr each second;
//!   the summary goes to stdout as text, or as JSON with `--json`.

pub mod body;
pub mod ceiling;
pub mod report;
pub mod schedule;
pub mod wire;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::{mpsc, Mutex};

use self::body::Bodies;
pub use self::ceiling::{sink_from_config, CeilingArgs};
use self::report::Summary;
use self::schedule::Schedule;
use self::wire::WireConnection;
use crate::client::Target;
use crate::verify::SigningPrefix;

/// Connections used in `--rate` mode when `--concurrency` is not given.
pub const DEFAULT_OPEN_CONNECTIONS: usize = 64;
/// How long open-loop requests still queued at the end may be sent before they are given up.
const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// Pause after a failed connection, so a server that is down is not hammered.
const ERROR_PAUSE: Duration = Duration::from_millis(20);

/// Arguments of `hookbridge bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Webhook URL (http:// only), e.g. http://127.0.0.1:8080/webhooks/stripe.
    #[arg(long)]
    pub url: String,
    /// The endpoint's signing secret (whsec_…).
    #[arg(long, env = "STRIPE_WEBHOOK_SECRET", hide_env_values = true)]
    pub secret: String,
    /// Directory of Stripe event fixtures (*.json), sent in turn.
    #[arg(long, default_value = "tests/fixtures")]
    pub fixtures: PathBuf,
    /// Closed loop: N connections, each sending back to back. With --rate: at most N connections
    /// (default 64).
    #[arg(long, value_name = "N")]
    pub concurrency: Option<usize>,
    /// Open loop: R requests per second at fixed intervals, latency measured from each request's
    /// intended send time.
    #[arg(long, value_name = "R")]
    pub rate: Option<f64>,
    /// How long to measure, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Load sent before measuring starts (not counted), e.g. 1s.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Pad (compacted) bodies to about this many bytes, inside the JSON, with the id member moved
    /// last: 4096, 4k, 16KiB.
    #[arg(long, value_parser = parse_size, value_name = "BYTES")]
    pub size: Option<usize>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Exit 1 unless every request was answered 2xx.
    #[arg(long)]
    pub expect_ok: bool,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Also hold N stalled uploads open for the whole run (slow clients pressing on the
    /// bridge's body memory budget): each declares a body of --stalled-bytes, sends 90% of it
    /// as fast as the server reads, then stalls; one the server closes is opened again 1 s later.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub stalled: usize,
    /// The body size a stalled upload declares.
    #[arg(long, value_parser = parse_size, value_name = "BYTES", default_value = "1000000")]
    pub stalled_bytes: usize,
}

/// Why a run could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Body(#[from] body::BodyError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

impl BenchError {
    /// 2 for usage errors, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            BenchError::Usage(_) => 2,
            _ => 1,
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|_| format!("`{s}` is not a duration; write it like 10s or 500ms"))
}

/// `4096`, `4k`, `4K`, `4KiB`, `1m`, `1MiB` (binary multiples).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let n: usize = t[..digits]
        .parse()
        .map_err(|_| format!("`{s}` is not a size; write it like 4096 or 4KiB"))?;
    let mult = match t[digits..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        _ => return Err(format!("`{s}` is not a size; write it like 4096 or 4KiB")),
    };
    Ok(n * mult)
}

/// Runs `hookbridge bench`; returns the process exit code (1 when `--expect-ok` saw a failure).
pub fn run_cli(args: BenchArgs) -> Result<u8, BenchError> {
    let plan = Plan::from_args(&args)?;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ u64::from(std::process::id()).rotate_left(32);
    let bodies = Bodies::load(&args.fixtures, args.size, body::run_tag(seed))?;
    if let Some(size) = args.size.filter(|_| !args.quiet) {
        for t in bodies.templates().iter().filter(|t| t.len() > size) {
            eprintln!(
                "bench: note: {} bodies are {} bytes even compacted, more than --size {size}",
                t.event_type,
                t.len()
            );
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(BenchError::Runtime)?;
    let summary = rt.block_on(run(plan, bodies, !args.quiet));
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).expect("a summary always serialises")
        );
    } else {
        print!("{}", summary.text());
    }
    Ok(if args.expect_ok && !summary.all_ok() {
        eprintln!("bench: --expect-ok: not every request was answered 2xx");
        1
    } else {
        0
    })
}

/// A validated run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub target: Target,
    pub url: String,
    pub secret: Vec<u8>,
    pub connections: usize,
    pub schedule: Option<Schedule>,
    pub duration: Duration,
    pub warmup: Duration,
    pub stalled: usize,
    pub stalled_bytes: usize,
}

impl Plan {
    pub fn from_args(a: &BenchArgs) -> Result<Plan, BenchError> {
        let target = Target::parse(&a.url).map_err(|e| BenchError::Usage(e.to_string()))?;
        let schedule = match a.rate {
            None => None,
            Some(r) => Some(
                Schedule::new(r).ok_or_else(|| BenchError::Usage(format!("--rate {r}: must be a positive number")))?,
            ),
        };
        let connections = match (a.concurrency, &schedule) {
            (Some(0), _) => return Err(BenchError::Usage("--concurrency must be at least 1".into())),
            (Some(n), _) => n,
            (None, Some(_)) => DEFAULT_OPEN_CONNECTIONS,
            (None, None) => 1,
        };
        if a.duration.is_zero() {
            return Err(BenchError::Usage("--duration must be greater than 0".into()));
        }
        if a.secret.is_empty() {
            return Err(BenchError::Usage("--secret must not be empty".into()));
        }
        Ok(Plan {
            target,
            url: a.url.clone(),
            secret: a.secret.as_bytes().to_vec(),
            connections,
            schedule,
            duration: a.duration,
            warmup: a.warmup,
            stalled: a.stalled,
            stalled_bytes: a.stalled_bytes,
        })
    }
}

/// State shared by the workers.
struct Shared {
    target: Target,
    secret: Vec<u8>,
    bodies: Bodies,
    seq: AtomicU64,
    measure_from: Instant,
    end: Instant,
    live: Live,
}

/// Counters for the progress line.
#[derive(Default)]
struct Live {
    answered: AtomicU64,
    non_2xx: AtomicU64,
    errors: AtomicU64,
    lat_sum_us: AtomicU64,
    lat_max_us: AtomicU64,
    done: AtomicBool,
}

/// What one worker measured.
struct Tally {
    hist: Histogram<u64>,
    status: BTreeMap<u16, u64>,
    errors: u64,
    unsent: u64,
    last_done: Option<Instant>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            hist: report::new_histogram(),
            status: BTreeMap::new(),
            errors: 0,
            unsent: 0,
            last_done: None,
        }
    }

    fn merge(&mut self, o: Tally) {
        let _ = self.hist.add(&o.hist);
        for (s, n) in o.status {
            *self.status.entry(s).or_default() += n;
        }
        self.errors += o.errors;
        self.unsent += o.unsent;
        self.last_done = self.last_done.max(o.last_done);
    }
}

impl Shared {
    /// Sends the next request on `conn` (opening it if needed); `Err` when nothing was answered.
    /// `signing` is the worker's [`SigningPrefix`] per template (one slot each), renewed each second.
    async fn send(&self, conn: &mut Option<WireConnection>, signing: &mut [Option<SigningPrefix>]) -> Result<u16, ()> {
        if !conn.as_ref().is_some_and(WireConnection::is_open) {
            *conn = Some(WireConnection::open(&self.target).await.map_err(|_| ())?);
        }
        let c = conn.as_mut().ok_or(())?;
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let (_, body) = self.bodies.make(seq);
        // Signed now, with the time now: the bytes before the event id were hashed at most a
        // second ago, for this template and this timestamp.
        let index = self.bodies.template_of(seq);
        let id_at = self.bodies.templates()[index].id_at();
        let now = crate::verify::unix_now();
        let prefix = match &mut signing[index] {
            Some(p) if p.timestamp() == now => p,
            slot => slot.insert(SigningPrefix::new(&self.secret, now, &body[..id_at])),
        };
        let signature = prefix.sign(&body[id_at..]);
        match c.post_signed(&signature, &body).await {
            Ok(status) => Ok(status),
            Err(_) => {
                *conn = None;
                Err(())
            }
        }
    }

    /// Records an outcome whose request was due (or sent) at `from`.
    fn record(&self, tally: &mut Tally, from: Instant, result: Result<u16, ()>) {
        let done = Instant::now();
        let latency = done.saturating_duration_since(from);
        let us = latency.as_micros() as u64;
        match result {
            Ok(status) => {
                self.live.answered.fetch_add(1, Ordering::Relaxed);
                if !(200..300).contains(&status) {
                    self.live.non_2xx.fetch_add(1, Ordering::Relaxed);
                }
                self.live.lat_sum_us.fetch_add(us, Ordering::Relaxed);
                self.live.lat_max_us.fetch_max(us, Ordering::Relaxed);
            }
            Err(()) => {
                self.live.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        if from < self.measure_from {
            return; // warm-up
        }
        match result {
            Ok(status) => {
                report::record(&mut tally.hist, latency);
                *tally.status.entry(status).or_default() += 1;
            }
            Err(()) => tally.errors += 1,
        }
        tally.last_done = Some(done);
    }
}

/// Runs the plan and returns what it measured.
pub async fn run(plan: Plan, bodies: Bodies, progress: bool) -> Summary {
    let cpu_at_start = report::process_cpu_seconds();
    let start = Instant::now();
    let measure_from = start + plan.warmup;
    let end = measure_from + plan.duration;
    let body_bytes = bodies.mean_len();
    let shared = Arc::new(Shared {
        target: plan.target.clone(),
        secret: plan.secret.clone(),
        bodies,
        seq: AtomicU64::new(0),
        measure_from,
        end,
        live: Live::default(),
    });
    let reporter = progress.then(|| tokio::spawn(report_progress(shared.clone(), start)));
    let stalled_opened = Arc::new(AtomicU64::new(0));
    let stallers: Vec<_> = (0..plan.stalled)
        .map(|_| {
            tokio::spawn(stalled_upload(
                plan.target.clone(),
                plan.stalled_bytes,
                end,
                stalled_opened.clone(),
            ))
        })
        .collect();

    let mut workers = Vec::with_capacity(plan.connections);
    match plan.schedule {
        None => {
            for _ in 0..plan.connections {
                workers.push(tokio::spawn(closed_worker(shared.clone())));
            }
        }
        Some(schedule) => {
            let (tx, rx) = mpsc::unbounded_channel();
            let rx = Arc::new(Mutex::new(rx));
            let total = schedule.count_within(plan.warmup + plan.duration);
            // A thread paces more precisely than the runtime's millisecond timer wheel.
            std::thread::Builder::new()
                .name("bench-pacer".into())
                .spawn(move || pace(schedule, start, total, tx))
                .expect("can spawn the pacer thread");
            for _ in 0..plan.connections {
                workers.push(tokio::spawn(open_worker(shared.clone(), rx.clone())));
            }
        }
    }
    let mut total = Tally::new();
    for w in workers {
        if let Ok(t) = w.await {
            total.merge(t);
        }
    }
    shared.live.done.store(true, Ordering::Relaxed);
    if let Some(r) = reporter {
        r.abort();
    }
    for s in stallers {
        s.abort();
    }
    if plan.stalled > 0 && progress {
        eprintln!(
            "bench: {} stalled uploads held open; {} opened in all (the server closed the others)",
            plan.stalled,
            stalled_opened.load(Ordering::Relaxed)
        );
    }

    let window = total
        .last_done
        .map(|d| d.saturating_duration_since(measure_from))
        .unwrap_or(plan.duration)
        .max(Duration::from_millis(1));
    let requests: u64 = total.status.values().sum();
    Summary {
        url: plan.url.clone(),
        mode: if plan.schedule.is_some() { "open" } else { "closed" },
        concurrency: plan.connections,
        target_rate: plan.schedule.map(|s| s.rate()),
        duration_s: window.as_secs_f64(),
        requests,
        requests_per_sec: requests as f64 / window.as_secs_f64(),
        body_bytes,
        latency_ms: report::Latency::from_histogram(&total.hist),
        status: total.status.into_iter().map(|(s, n)| (s.to_string(), n)).collect(),
        errors: total.errors,
        unsent: total.unsent,
        generator_cpu_s: report::process_cpu_seconds()
            .zip(cpu_at_start)
            .map(|(end, start)| end - start),
    }
}

/// Keeps one stalled upload open until `end`: declares `declared` bytes, sends 90% of them as
/// fast as the server reads, then sends nothing more; opens another a second after the server
/// closed it.
async fn stalled_upload(target: Target, declared: usize, end: Instant, opened: Arc<AtomicU64>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let head = format!(
        "POST {} HTTP/1.1\r\nhost: {}\r\nstripe-signature: t=1,v1=00\r\ncontent-length: {declared}\r\n\r\n",
        target.path(),
        target.authority
    );
    let chunk = vec![b'x'; 16 * 1024];
    while Instant::now() < end {
        let Ok(mut s) = tokio::net::TcpStream::connect(&target.authority).await else {
            tokio::time::sleep(ERROR_PAUSE).await;
            continue;
        };
        opened.fetch_add(1, Ordering::Relaxed);
        let (mut read, mut write) = s.split();
        let send = async {
            write.write_all(head.as_bytes()).await?;
            let mut left = declared / 10 * 9;
            while left > 0 {
                let n = left.min(chunk.len());
                write.write_all(&chunk[..n]).await?;
                left -= n;
            }
            std::future::pending::<std::io::Result<()>>().await
        };
        // Until the server answers or closes the connection.
        let mut buf = [0u8; 1024];
        tokio::select! {
            _ = send => {}
            _ = read.read(&mut buf) => {}
        }
        // A slow client, not a flood: it comes back a second later.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn closed_worker(shared: Arc<Shared>) -> Tally {
    let mut tally = Tally::new();
    let mut conn = None;
    let mut signing = vec![None; shared.bodies.templates().len()];
    loop {
        let sent = Instant::now();
        if sent >= shared.end {
            break;
        }
        let result = shared.send(&mut conn, &mut signing).await;
        shared.record(&mut tally, sent, result);
        if result.is_err() {
            tokio::time::sleep(ERROR_PAUSE).await;
        }
    }
    tally
}

async fn open_worker(shared: Arc<Shared>, tickets: Arc<Mutex<mpsc::UnboundedReceiver<Instant>>>) -> Tally {
    let mut tally = Tally::new();
    let mut conn = None;
    let mut signing = vec![None; shared.bodies.templates().len()];
    loop {
        let due = { tickets.lock().await.recv().await };
        let Some(due) = due else { break };
        if Instant::now() > shared.end + DRAIN_GRACE {
            tally.unsent += 1;
            continue;
        }
        let result = shared.send(&mut conn, &mut signing).await;
        shared.record(&mut tally, due, result);
    }
    tally
}

/// Issues `total` tickets, each carrying the instant its request is due; after oversleeping, the
/// late ones go out at once (and are charged their lateness).
fn pace(schedule: Schedule, start: Instant, total: u64, tx: mpsc::UnboundedSender<Instant>) {
    for i in 0..total {
        let due = start + schedule.offset(i);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        if tx.send(due).is_err() {
            return;
        }
    }
}

async fn report_progress(shared: Arc<Shared>, start: Instant) {
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let mut last = (0u64, 0u64, Instant::now());
    loop {
        tick.tick().await;
        if shared.live.done.load(Ordering::Relaxed) {
            return;
        }
        let now = Instant::now();
        let answered = shared.live.answered.load(Ordering::Relaxed);
        let sum = shared.live.lat_sum_us.load(Ordering::Relaxed);
        let max = shared.live.lat_max_us.swap(0, Ordering::Relaxed);
        let n = answered - last.0;
        let secs = now.duration_since(last.2).as_secs_f64().max(1e-3);
        let mean_ms = if n > 0 {
            (sum - last.1) as f64 / n as f64 / 1000.0
        } else {
            0.0
        };
        let phase = if now < shared.measure_from { " (warm-up)" } else { "" };
        eprintln!(
            "bench {:>5.1}s{phase}: {:>8.0} req/s  mean {:.2} ms  max {:.2} ms | answered {answered}  non-2xx {}  errors {}",
            now.duration_since(start).as_secs_f64(),
            n as f64 / secs,
            mean_ms,
            max as f64 / 1000.0,
            shared.live.non_2xx.load(Ordering::Relaxed),
            shared.live.errors.load(Ordering::Relaxed),
        );
        last = (answered, sum, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("16KiB"), Ok(16384));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert!(parse_size("4q").is_err());
        assert!(parse_size("").is_err());
    }

    fn args(extra: &[&str]) -> BenchArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            bench: BenchArgs,
        }
        let mut argv = vec!["bench", "--url", "http://127.0.0.1:1/x", "--secret", "whsec_x"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).expect("arguments parse").bench
    }

    #[test]
    fn plans_pick_the_loop_and_connection_count() {
        let p = Plan::from_args(&args(&["--concurrency", "8"])).expect("plan");
        assert!(p.schedule.is_none());
        assert_eq!(p.connections, 8);
        let p = Plan::from_args(&args(&["--rate", "1000"])).expect("plan");
        assert_eq!(p.schedule.map(|s| s.rate()), Some(1000.0));
        assert_eq!(p.connections, DEFAULT_OPEN_CONNECTIONS);
        let p = Plan::from_args(&args(&["--rate", "10", "--concurrency", "2", "--duration", "3s"])).expect("plan");
        assert_eq!((p.connections, p.duration), (2, Duration::from_secs(3)));
        assert!(Plan::from_args(&args(&["--rate", "0"])).is_err());
        assert!(Plan::from_args(&args(&["--concurrency", "0"])).is_err());
        let mut bad = args(&[]);
        bad.url = "https://example.com/".into();
        assert!(matches!(Plan::from_args(&bad), Err(BenchError::Usage(_))));
    }
}
