//! The RabbitMQ ceiling for `bench/run.sh`: what a publisher alone achieves with the bridge's
//! delivery guarantees, keeping N publisher confirms in flight — what the bridge does per request,
//! minus HTTP and verification.
//!
//! URL, exchange and queues come from the same config file the bridge is run with; the topology
//! is declared the same way (durable exchange, durable queues bound to it). Every message is
//! persistent (`delivery_mode` 2), mandatory, with the bridge's properties and headers, and counts
//! only when acked without being returned. By default each in-flight publish has its own channel,
//! as in the sink; `--channels K` spreads them over K channels instead (pipelined confirms).
//!
//! ```text
//! cargo run --release --example amqp_ceiling -- --config bench/configs/rabbitmq.yaml \
//!     --in-flight 64 --duration 10s --size 4096 --json
//! ```

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use clap::Parser;
use hookbridge::bench::ceiling::{connect_patiently, CeilingReport, Sent};
use hookbridge::bench::CeilingArgs;
use hookbridge::sink::SinkKind;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

/// The bridge's allocator, so that the ceiling is measured like for like.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    common: CeilingArgs,
    /// Channels to spread them over (default: one per publish in flight, as the sink does).
    #[arg(long)]
    channels: Option<usize>,
}

#[derive(serde::Serialize)]
struct Summary {
    #[serde(flatten)]
    common: CeilingReport,
    channels: usize,
    returned: u64,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let (_, rabbit) = args.common.sink_or_exit("amqp_ceiling", |c| match c {
        SinkKind::Rabbitmq(x) => Some(x.clone()),
        _ => None,
    });

    let conn = connect_patiently("amqp_ceiling", || {
        Connection::connect(&rabbit.url, ConnectionProperties::default())
    })
    .await;
    // The sink's topology: a durable exchange, durable queues bound to it.
    let setup = conn.create_channel().await.unwrap();
    if !rabbit.exchange.is_empty() {
        let kind = match rabbit.exchange_type.as_str() {
            "direct" => ExchangeKind::Direct,
            "fanout" => ExchangeKind::Fanout,
            "headers" => ExchangeKind::Headers,
            _ => ExchangeKind::Topic,
        };
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        setup
            .exchange_declare(&rabbit.exchange, kind, durable, FieldTable::default())
            .await
            .unwrap();
    }
    for q in &rabbit.queues {
        let mut qargs = FieldTable::default();
        qargs.insert(
            ShortString::from("x-queue-type"),
            AMQPValue::LongString(LongString::from(q.queue_type.as_str())),
        );
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        setup.queue_declare(&q.name, durable, qargs).await.unwrap();
        for key in &q.bindings {
            setup
                .queue_bind(
                    &q.name,
                    &rabbit.exchange,
                    key,
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
        }
    }
    let n_channels = args
        .channels
        .unwrap_or(args.common.in_flight)
        .clamp(1, args.common.in_flight.max(1));
    let mut channels = Vec::with_capacity(n_channels);
    for _ in 0..n_channels {
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        channels.push(ch);
    }

    let (bodies, envelopes) = args.common.bodies(std::process::id() as u64 ^ 0x616d).unwrap();
    let body_bytes = bodies.mean_len();
    let shared = Arc::new((bodies, envelopes, rabbit.exchange.clone(), channels));

    let measured = args
        .common
        .drive(move |slot, i, _sent| {
            let shared = shared.clone();
            async move {
                let (bodies, envelopes, exchange, channels) = &*shared;
                let ch = &channels[slot as usize % channels.len()];
                let (_, body) = bodies.make(i);
                let template = &envelopes[(i % envelopes.len() as u64) as usize];
                let id = bodies.event_id(i);
                let id = id.as_str();
                let mut headers = FieldTable::default();
                for (name, value) in template.headers() {
                    let value = if name == "stripe-event-id" { id } else { value };
                    headers.insert(ShortString::from(name), AMQPValue::LongString(LongString::from(value)));
                }
                let properties = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type(ShortString::from("application/json"))
                    .with_message_id(ShortString::from(id))
                    .with_type(ShortString::from(template.meta().event_type.as_str()))
                    .with_headers(headers);
                let options = BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                };
                let confirm = ch
                    .basic_publish(exchange, &template.meta().event_type, options, &body, properties)
                    .await;
                let outcome = match confirm {
                    Ok(c) => c.await,
                    Err(e) => Err(e),
                };
                match outcome {
                    Ok(Confirmation::Ack(None)) => Sent::Confirmed,
                    Ok(Confirmation::Ack(Some(_))) => Sent::Returned,
                    _ => Sent::Failed,
                }
            }
        })
        .await;
    let r = Summary {
        common: measured.report("amqp_ceiling", &args.common, body_bytes),
        channels: n_channels,
        returned: measured.returned(),
    };
    let _ = conn.close(200, "bye").await;
    if args.common.json {
        println!("{}", serde_json::to_string_pretty(&r).unwrap());
    } else {
        println!(
            "rabbitmq ceiling, {} in flight on {} channel(s): {} messages in {:.2} s = {:.1} msg/s, errors {}, returned {}\nlatency {}",
            r.common.in_flight,
            r.channels,
            r.common.messages,
            r.common.duration_s,
            r.common.messages_per_sec,
            r.common.errors,
            r.returned,
            r.common.latency_ms.line()
        );
    }
}
