//! The NATS JetStream ceiling for `bench/run.sh`: what a publisher alone achieves with the
//! bridge's guarantees, keeping N JetStream publishes in flight, each awaiting its own ack (the
//! stream stored it) — what the bridge does per request, minus HTTP and verification.
//!
//! Servers and stream come from the same config file the bridge is run with; the stream is
//! created the way the sink creates it when it is missing. Every message carries the bridge's
//! headers and a unique `Nats-Msg-Id`, on the subject `--subject` + `.` + event type (the bench
//! config's route renders the same), and counts only when acknowledged and not a duplicate.
//!
//! ```text
//! cargo run --release --example nats_ceiling -- --config bench/configs/nats.yaml \
//!     --in-flight 64 --duration 10s --size 4096 --json
//! ```

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use async_nats::HeaderName;
use clap::Parser;
use hookbridge::bench::ceiling::{connect_patiently, CeilingReport, Sent};
use hookbridge::bench::CeilingArgs;
use hookbridge::sink::nats::MSG_ID_HEADER;
use hookbridge::sink::SinkKind;

/// The bridge's allocator, so that the ceiling is measured like for like.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    common: CeilingArgs,
    /// Subject prefix; each message goes to PREFIX.<event type>.
    #[arg(long, default_value = "hookbridge.bench")]
    subject: String,
}

#[derive(serde::Serialize)]
struct Summary {
    #[serde(flatten)]
    common: CeilingReport,
    stream: Option<String>,
    duplicates: u64,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let (settings, nats) = args.common.sink_or_exit("nats_ceiling", |c| match c {
        SinkKind::Nats(x) => Some(x.clone()),
        _ => None,
    });
    let client = connect_patiently("nats_ceiling", || async_nats::connect(&nats.servers)).await;
    let js = hookbridge::sink::nats::context(&client, settings.ack_timeout, nats.max_in_flight);
    if let Some(s) = &nats.stream {
        js.get_or_create_stream(s.jetstream_config()).await.unwrap_or_else(|e| {
            eprintln!("nats_ceiling: stream {}: {e}", s.name);
            std::process::exit(1)
        });
    }

    let (bodies, envelopes) = args.common.bodies(std::process::id() as u64 ^ 0x6e61).unwrap();
    let body_bytes = bodies.mean_len();
    let duplicates = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let shared = Arc::new((bodies, envelopes, js, args.subject.clone(), duplicates.clone()));
    let measured = args
        .common
        .drive(move |_slot, i, _sent| {
            let shared = shared.clone();
            async move {
                let (bodies, envelopes, js, prefix, duplicates) = &*shared;
                let (_, body) = bodies.make(i);
                let template = &envelopes[(i % envelopes.len() as u64) as usize];
                let id = bodies.event_id(i);
                // Built as the sink builds them (static names, not parsed per message).
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(HeaderName::from_static(MSG_ID_HEADER), id.as_str());
                for (name, value) in template.headers() {
                    let value = if name == "stripe-event-id" { id.as_str() } else { value };
                    headers.insert(HeaderName::from_static(name), value);
                }
                let subject = format!("{prefix}.{}", template.meta().event_type);
                let ack = match js.publish_with_headers(subject, headers, body).await {
                    Ok(ack) => ack.await,
                    Err(e) => Err(e),
                };
                match ack {
                    Ok(a) if a.duplicate => {
                        duplicates.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        Sent::Failed
                    }
                    Ok(_) => Sent::Confirmed,
                    Err(_) => Sent::Failed,
                }
            }
        })
        .await;
    let r = Summary {
        common: measured.report("nats_ceiling", &args.common, body_bytes),
        stream: nats.stream.as_ref().map(|s| s.name.clone()),
        duplicates: duplicates.load(std::sync::atomic::Ordering::Relaxed),
    };
    let _ = client.flush().await;
    if args.common.json {
        println!("{}", serde_json::to_string_pretty(&r).unwrap());
    } else {
        println!(
            "nats ceiling, {} in flight: {} messages in {:.2} s = {:.1} msg/s, errors {}, duplicates {}\nlatency {}",
            r.common.in_flight,
            r.common.messages,
            r.common.duration_s,
            r.common.messages_per_sec,
            r.common.errors,
            r.duplicates,
            r.common.latency_ms.line()
        );
    }
}
