//! The Kafka ceiling for `bench/run.sh`: what a producer alone achieves with the bridge's exact
//! settings, keeping N messages in flight, each awaiting its own delivery report — what the
//! bridge does per request, minus HTTP and verification.
//!
//! The producer properties come from the same config file the bridge is run with
//! (`KafkaSinkConfig::properties`: idempotent, `acks=all`, the same linger, timeouts and
//! options), and each record carries the same key, headers and bodies (the fixtures, padded like
//! `hookbridge bench --size`).
//!
//! ```text
//! cargo run --release --example kafka_ceiling -- --config bench/configs/kafka.yaml \
//!     --topic hookbridge.bench --in-flight 64 --duration 10s --size 4096 --json
//! ```

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use hookbridge::bench::report::{self, Latency};
use hookbridge::bench::schedule::Schedule;
use hookbridge::bench::CeilingArgs;
use hookbridge::config::RawSink;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    common: CeilingArgs,
    #[arg(long, default_value = "hookbridge.bench")]
    topic: String,
}

#[derive(serde::Serialize)]
struct Result_ {
    tool: &'static str,
    in_flight: usize,
    target_rate: Option<f64>,
    duration_s: f64,
    messages: u64,
    messages_per_sec: f64,
    body_bytes: f64,
    latency_ms: Latency,
    /// CPU seconds of this program over the whole run, warm-up included.
    cpu_s: Option<f64>,
    /// Messages confirmed over the whole run, warm-up included (for CPU per message).
    total_messages: u64,
    errors: u64,
    properties: std::collections::BTreeMap<String, String>,
}

struct Tally {
    hist: hdrhistogram::Histogram<u64>,
    ok: u64,
    errors: u64,
    last: Option<Instant>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let (settings, kafka) =
        hookbridge::bench::sink_from_config(&args.common.config, args.common.sink.as_deref(), |c| match c {
            RawSink::Kafka(x) => Some(x.clone()),
            _ => None,
        })
        .unwrap_or_else(|e| {
            eprintln!("kafka_ceiling: {e}");
            std::process::exit(2)
        });
    let properties = kafka.properties(settings.ack_timeout);
    let mut cc = ClientConfig::new();
    for (k, v) in &properties {
        cc.set(k, v);
    }
    let producer: FutureProducer = cc.create().unwrap();
    let queue_timeout = kafka.timings(settings.ack_timeout).queue_timeout;

    // Metadata and a signature header per fixture, computed once: the ceiling does producer work only.
    let (bodies, envelopes) = args.common.bodies(std::process::id() as u64 ^ 0x6b61).unwrap();
    let shared = Arc::new((producer, bodies, envelopes, args.topic.clone()));

    let cpu_at_start = report::process_cpu_seconds();
    let start = Instant::now();
    let measure_from = start + args.common.warmup;
    let end = measure_from + args.common.duration;
    let schedule = args.common.rate.and_then(Schedule::new);
    let slots = args.common.in_flight as u64;
    let seq = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for slot in 0..slots {
        let shared = shared.clone();
        let seq = seq.clone();
        tasks.push(tokio::spawn(async move {
            let mut round = 0u64;
            let (producer, bodies, envelopes, topic) = &*shared;
            let mut t = Tally {
                hist: report::new_histogram(),
                ok: 0,
                errors: 0,
                last: None,
            };
            loop {
                // Closed loop: send now. Open loop: this slot's next turn in the global schedule.
                let sent = match schedule {
                    None => Instant::now(),
                    Some(s) => {
                        let due = start + s.offset(slot + round * slots);
                        round += 1;
                        tokio::time::sleep_until(due.into()).await;
                        due
                    }
                };
                if sent >= end {
                    break;
                }
                let i = seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (_, body) = bodies.make(i);
                let template = &envelopes[(i % envelopes.len() as u64) as usize];
                let id = bodies.event_id(i);
                let id = id.as_str();
                let headers =
                    template
                        .headers()
                        .into_iter()
                        .fold(OwnedHeaders::new_with_capacity(7), |h, (key, value)| {
                            let value = if key == "stripe-event-id" { id } else { value };
                            h.insert(Header {
                                key,
                                value: Some(value),
                            })
                        });
                let mut record = FutureRecord::to(topic)
                    .key(template.key())
                    .payload(&body[..])
                    .headers(headers);
                let queue_deadline = sent + queue_timeout;
                let delivery = loop {
                    match producer.send_result(record) {
                        Ok(d) => break Some(d),
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r))
                            if Instant::now() < queue_deadline =>
                        {
                            record = r;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        Err(_) => break None,
                    }
                };
                let ok = match delivery {
                    Some(d) => matches!(d.await, Ok(Ok(_))),
                    None => false,
                };
                let done = Instant::now();
                if sent >= measure_from {
                    if ok {
                        report::record(&mut t.hist, done - sent);
                        t.ok += 1;
                    } else {
                        t.errors += 1;
                    }
                    t.last = Some(done);
                }
            }
            t
        }));
    }
    let mut hist = report::new_histogram();
    let (mut ok, mut errors, mut last) = (0, 0, None);
    for task in tasks {
        let t = task.await.unwrap();
        hist.add(&t.hist).unwrap();
        ok += t.ok;
        errors += t.errors;
        last = last.max(t.last);
    }
    let window = last.map(|l: Instant| l - measure_from).unwrap_or(args.common.duration);
    let r = Result_ {
        tool: "kafka_ceiling",
        in_flight: args.common.in_flight,
        target_rate: args.common.rate,
        duration_s: window.as_secs_f64(),
        messages: ok,
        messages_per_sec: ok as f64 / window.as_secs_f64(),
        body_bytes: shared.1.mean_len(),
        latency_ms: Latency::from_histogram(&hist),
        cpu_s: report::process_cpu_seconds().zip(cpu_at_start).map(|(e, s)| e - s),
        total_messages: seq.load(std::sync::atomic::Ordering::Relaxed),
        errors,
        properties,
    };
    if args.common.json {
        println!("{}", serde_json::to_string_pretty(&r).unwrap());
    } else {
        println!(
            "kafka ceiling, {} in flight: {} messages in {:.2} s = {:.1} msg/s, errors {}\nlatency {}",
            r.in_flight,
            r.messages,
            r.duration_s,
            r.messages_per_sec,
            r.errors,
            r.latency_ms.line()
        );
    }
}
