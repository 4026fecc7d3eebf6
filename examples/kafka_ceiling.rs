//! The Kafka ceiling for `bench/run.sh`: what a producer alone achieves with the bridge's exact
//! settings, keeping N messages in flight, each awaiting its own delivery report — what the
//! bridge does per request, minus HTTP and verification.
//!
//! The producer properties come from the same config file the bridge is run with
//! (`KafkaSinkConfig::properties`: idempotent, `acks=all`, the same linger, timeouts and
//! options), with the sink's two lanes (a record goes to a second producer with `linger.ms=0`
//! while fewer than `IMMEDIATE_BELOW` are in flight), and each record carries the same key,
//! headers and bodies (the fixtures, padded like `hookbridge bench --size`).
//!
//! ```text
//! cargo run --release --example kafka_ceiling -- --config bench/configs/kafka.yaml \
//!     --topic hookbridge.bench --in-flight 64 --duration 10s --size 4096 --json
//! ```

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use hookbridge::bench::ceiling::{CeilingReport, Sent};
use hookbridge::bench::CeilingArgs;
use hookbridge::sink::kafka::{immediate_config, IMMEDIATE_BELOW};
use hookbridge::sink::SinkKind;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// The bridge's allocator, so that the ceiling is measured like for like.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    common: CeilingArgs,
    #[arg(long, default_value = "hookbridge.bench")]
    topic: String,
}

#[derive(serde::Serialize)]
struct Summary {
    #[serde(flatten)]
    common: CeilingReport,
    properties: std::collections::BTreeMap<String, String>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let (settings, kafka) = args.common.sink_or_exit("kafka_ceiling", |c| match c {
        SinkKind::Kafka(x) => Some(x.clone()),
        _ => None,
    });
    let properties = kafka.properties(settings.ack_timeout);
    let mut cc = ClientConfig::new();
    for (k, v) in &properties {
        cc.set(k, v);
    }
    let producer: FutureProducer = cc.create().unwrap();
    let immediate: Option<FutureProducer> = immediate_config(&cc).map(|c| c.create().unwrap());
    let in_flight = AtomicUsize::new(0);
    let queue_timeout = kafka.timings(settings.ack_timeout).queue_timeout;

    // Metadata and a signature header per fixture, computed once: the ceiling does producer work only.
    let (bodies, envelopes) = args.common.bodies(std::process::id() as u64 ^ 0x6b61).unwrap();
    let body_bytes = bodies.mean_len();
    let shared = Arc::new((producer, immediate, in_flight, bodies, envelopes, args.topic.clone()));

    let measured = args
        .common
        .drive(move |_slot, i, sent| {
            let shared = shared.clone();
            async move {
                let (batching, immediate, in_flight, bodies, envelopes, topic) = &*shared;
                let before = in_flight.fetch_add(1, Ordering::Relaxed);
                let producer = match immediate {
                    Some(p) if before < IMMEDIATE_BELOW => p,
                    _ => batching,
                };
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
                let confirmed = match delivery {
                    Some(d) => matches!(d.await, Ok(Ok(_))),
                    None => false,
                };
                in_flight.fetch_sub(1, Ordering::Relaxed);
                if confirmed {
                    Sent::Confirmed
                } else {
                    Sent::Failed
                }
            }
        })
        .await;
    let r = Summary {
        common: measured.report("kafka_ceiling", &args.common, body_bytes),
        properties,
    };
    if args.common.json {
        println!("{}", serde_json::to_string_pretty(&r).unwrap());
    } else {
        println!(
            "kafka ceiling, {} in flight: {} messages in {:.2} s = {:.1} msg/s, errors {}\nlatency {}",
            r.common.in_flight,
            r.common.messages,
            r.common.duration_s,
            r.common.messages_per_sec,
            r.common.errors,
            r.common.latency_ms.line()
        );
    }
}
