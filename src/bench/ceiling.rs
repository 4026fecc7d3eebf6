//! What the broker ceiling programs (`examples/kafka_ceiling`, `examples/amqp_ceiling`) share:
//! their options, the bodies they send, the loop that keeps N messages in flight and measures
//! them, and the summary they print.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::body::{self, Bodies};
use super::report::{self, Latency};
use super::schedule::Schedule;

/// The command-line options the ceiling programs (`examples/`) share.
#[derive(clap::Args, Debug)]
pub struct CeilingArgs {
    /// The bridge config whose sink settings to use.
    #[arg(long)]
    pub config: std::path::PathBuf,
    /// The sink's name in that config (default: its only sink of the program's kind).
    #[arg(long)]
    pub sink: Option<String>,
    /// Messages in flight, each awaiting its own confirmation.
    #[arg(long, default_value_t = 64)]
    pub in_flight: usize,
    /// Open loop: this many messages per second in all, spread over the in-flight slots; latency
    /// is then measured from each message's intended send time, as `hookbridge bench --rate` does.
    #[arg(long)]
    pub rate: Option<f64>,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    #[arg(long, default_value = "tests/fixtures")]
    pub fixtures: std::path::PathBuf,
    #[arg(long, value_parser = super::parse_size)]
    pub size: Option<usize>,
    #[arg(long)]
    pub json: bool,
}

impl CeilingArgs {
    /// The bodies to send (`--fixtures` padded to `--size`, event ids tagged from `seed`) and, per
    /// fixture, the envelope the bridge would build from it: metadata and a signature header made
    /// once, so that a ceiling program does broker work only.
    pub fn bodies(&self, seed: u64) -> Result<(Bodies, Vec<crate::sink::Envelope>), String> {
        let bodies = Bodies::load(&self.fixtures, self.size, body::run_tag(seed)).map_err(|e| e.to_string())?;
        let envelopes = (0..bodies.templates().len() as u64)
            .map(|i| {
                let (_, body) = bodies.make(i);
                const SECRET: &[u8] = b"whsec_ceiling";
                let now = crate::verify::unix_now();
                let header = crate::verify::sign(SECRET, now, &body);
                let signed = crate::verify::Verifier::new(&[SECRET], std::time::Duration::from_secs(300))
                    .verify_body(Some(header.as_bytes()), body, now)
                    .map_err(|e| e.to_string())?;
                crate::sink::Envelope::verified(signed).map_err(|e| e.to_string())
            })
            .collect::<Result<_, String>>()?;
        Ok((bodies, envelopes))
    }

    /// Keeps `--in-flight` messages going for the warm-up and `--duration`, each sent by
    /// `send(slot, i, due)` and awaited, and tallies what was measured after the warm-up.
    /// Closed loop: a slot sends its next message as soon as the last one settled. Open loop
    /// (`--rate`): message `i` is due at its time in one schedule shared by all slots, and its
    /// latency counts from then.
    pub async fn drive<F, Fut>(&self, send: F) -> Measured
    where
        F: Fn(u64, u64, Instant) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Sent> + Send + 'static,
    {
        let send = Arc::new(send);
        let cpu_at_start = report::process_cpu_seconds();
        let start = Instant::now();
        let measure_from = start + self.warmup;
        let end = measure_from + self.duration;
        let schedule = self.rate.and_then(Schedule::new);
        let slots = self.in_flight as u64;
        let seq = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for slot in 0..slots {
            let send = send.clone();
            let seq = seq.clone();
            tasks.push(tokio::spawn(async move {
                let mut t = Tally::new();
                let mut round = 0u64;
                loop {
                    let due = match schedule {
                        None => Instant::now(),
                        Some(s) => {
                            let due = start + s.offset(slot + round * slots);
                            round += 1;
                            tokio::time::sleep_until(due.into()).await;
                            due
                        }
                    };
                    if due >= end {
                        break;
                    }
                    let i = seq.fetch_add(1, Ordering::Relaxed);
                    let sent = send(slot, i, due).await;
                    let done = Instant::now();
                    if due >= measure_from {
                        t.add(sent, done - due);
                        t.last = Some(done);
                    }
                }
                t
            }));
        }
        let mut all = Tally::new();
        for task in tasks {
            all.merge(task.await.expect("a ceiling slot panicked"));
        }
        Measured {
            window: all.last.map_or(self.duration, |l| l - measure_from),
            started: seq.load(Ordering::Relaxed),
            cpu_s: report::process_cpu_seconds().zip(cpu_at_start).map(|(e, s)| e - s),
            tally: all,
        }
    }
}

/// How one message of a ceiling run ended.
pub enum Sent {
    /// The broker confirmed it durable.
    Confirmed,
    /// Confirmed, but returned as unroutable (RabbitMQ's mandatory flag).
    Returned,
    /// Refused, failed, or not confirmed.
    Failed,
}

/// The messages one slot (or all of them) measured.
pub struct Tally {
    hist: Histogram<u64>,
    ok: u64,
    errors: u64,
    returned: u64,
    last: Option<Instant>,
}

impl Tally {
    fn new() -> Self {
        Tally {
            hist: report::new_histogram(),
            ok: 0,
            errors: 0,
            returned: 0,
            last: None,
        }
    }

    fn add(&mut self, sent: Sent, latency: Duration) {
        match sent {
            Sent::Confirmed => {
                report::record(&mut self.hist, latency);
                self.ok += 1;
            }
            Sent::Returned => self.returned += 1,
            Sent::Failed => self.errors += 1,
        }
    }

    fn merge(&mut self, other: Tally) {
        self.hist.add(&other.hist).expect("histograms with the same bounds");
        self.ok += other.ok;
        self.errors += other.errors;
        self.returned += other.returned;
        self.last = self.last.max(other.last);
    }
}

/// What a ceiling run measured.
pub struct Measured {
    tally: Tally,
    /// From the end of the warm-up to the last measured confirmation.
    window: Duration,
    /// Messages sent over the whole run, warm-up included.
    started: u64,
    cpu_s: Option<f64>,
}

impl Measured {
    /// Messages returned as unroutable after the warm-up.
    pub fn returned(&self) -> u64 {
        self.tally.returned
    }

    /// The figures both ceiling programs print, for the program `tool` run with `args`.
    pub fn report(&self, tool: &'static str, args: &CeilingArgs, body_bytes: f64) -> CeilingReport {
        let ok = self.tally.ok;
        CeilingReport {
            tool,
            in_flight: args.in_flight,
            target_rate: args.rate,
            duration_s: self.window.as_secs_f64(),
            messages: ok,
            messages_per_sec: ok as f64 / self.window.as_secs_f64(),
            body_bytes,
            latency_ms: Latency::from_histogram(&self.tally.hist),
            cpu_s: self.cpu_s,
            total_messages: self.started,
            errors: self.tally.errors,
        }
    }
}

/// The JSON summary fields both ceiling programs share (each adds its own with `serde(flatten)`).
#[derive(Debug, Serialize)]
pub struct CeilingReport {
    pub tool: &'static str,
    pub in_flight: usize,
    pub target_rate: Option<f64>,
    pub duration_s: f64,
    pub messages: u64,
    pub messages_per_sec: f64,
    pub body_bytes: f64,
    pub latency_ms: Latency,
    /// CPU seconds of this program over the whole run, warm-up included.
    pub cpu_s: Option<f64>,
    /// Messages sent over the whole run, warm-up included (for CPU per message).
    pub total_messages: u64,
    pub errors: u64,
}

/// For the ceiling programs (`examples/`): loads the bridge config at `path` and picks the first
/// sink (the one named `name`, when given) that `pick` accepts, so a ceiling runs with exactly the
/// bridge's settings.
pub fn sink_from_config<T>(
    path: &std::path::Path,
    name: Option<&str>,
    pick: impl Fn(&crate::sink::SinkKind) -> Option<T>,
) -> Result<(crate::config::Settings, T), String> {
    let settings = crate::config::load(path).map_err(|e| e.to_string())?;
    let sink = settings
        .sinks
        .iter()
        .filter(|s| name.is_none_or(|n| n == s.name))
        .find_map(|s| pick(&s.config))
        .ok_or_else(|| format!("no matching sink in {}", path.display()))?;
    Ok((settings, sink))
}

impl CeilingArgs {
    /// The settings of `--config` and the sink in it that `pick` accepts (see
    /// [`sink_from_config`]); a config without one ends `program` with exit status 2.
    pub fn sink_or_exit<T>(
        &self,
        program: &str,
        pick: impl Fn(&crate::sink::SinkKind) -> Option<T>,
    ) -> (crate::config::Settings, T) {
        sink_from_config(&self.config, self.sink.as_deref(), pick).unwrap_or_else(|e| {
            eprintln!("{program}: {e}");
            std::process::exit(2)
        })
    }
}

/// What `connect` returns once it succeeds, retried once a second for up to a minute (other work
/// on this machine may be restarting the broker); after that, `program` ends with exit status 1.
pub async fn connect_patiently<T, E, F>(program: &str, mut connect: impl FnMut() -> F) -> T
where
    E: std::fmt::Display,
    F: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match connect().await {
            Ok(c) => return c,
            Err(e) if Instant::now() < deadline => {
                eprintln!("{program}: cannot connect yet ({e}); retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                eprintln!("{program}: cannot connect: {e}");
                std::process::exit(1)
            }
        }
    }
}
