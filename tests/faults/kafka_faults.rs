//! Fault tests against the real Kafka broker: the broker is stopped or killed while the bridge
//! runs. They share one broker, so they run one at a time (a static lock), and each puts the
//! broker back up when it ends, also when it fails. What they show: nothing answered 200 is
//! lost, the bridge starts and recovers without a restart, and /readyz tells the truth.
//! Run with `--nocapture` to see the measured recovery times. They break whichever broker
//! `HOOKBRIDGE_KAFKA_PORT` names (default 9092): on a shared machine, point them at a private one
//! (`HOOKBRIDGE_KAFKA_PORT=29092 HOOKBRIDGE_KAFKA_DIR=… deploy/local/kafka.sh start`).
//! `HOOKBRIDGE_PAUSES=N` sets how often the pause test pauses the broker (default 4).
#![allow(clippy::unwrap_used)]

use crate::common;
use crate::kafka_support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use http::StatusCode;
use kafka_support::*;

/// One fault test at a time, across both brokers: they stop and kill them.
use crate::ONE_AT_A_TIME as SERIAL;

/// Starts the broker again when dropped, so a failed test does not leave it down.
struct BrokerBackOnDrop;

impl Drop for BrokerBackOnDrop {
    fn drop(&mut self) {
        if let Err(e) = std::panic::catch_unwind(|| kafka_sh(&["start"])) {
            eprintln!("could not restart the broker after a fault test: {e:?}");
        }
    }
}

async fn kafka(args: &'static [&'static str]) -> Duration {
    tokio::task::spawn_blocking(move || kafka_sh(args)).await.unwrap()
}

fn config(topic: &str) -> String {
    one_topic_config("", topic)
}

/// Posts each pending event (by index) again, as Stripe retries, until every one is answered 200;
/// fails after 60 s.
async fn retry_until_accepted(
    addr: std::net::SocketAddr,
    mut pending: Vec<usize>,
    body: impl Fn(usize) -> bytes::Bytes,
) {
    let retry_deadline = Instant::now() + Duration::from_secs(60);
    while !pending.is_empty() {
        assert!(
            Instant::now() < retry_deadline,
            "{} events still refused after 60s of retries",
            pending.len()
        );
        let mut still = Vec::new();
        for i in pending {
            if common::post_signed(addr, body(i)).await.status != StatusCode::OK {
                still.push(i);
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_at_start_503_then_200_once_it_is_back_without_restarting_the_bridge() {
    let _serial = SERIAL.lock().await;
    require_broker(Duration::from_secs(30));
    let _back = BrokerBackOnDrop;
    let topic = unique_topic("down");

    kafka(&["stop"]).await;
    // The bridge starts although its broker is down.
    let bridge = common::spawn(&config(&topic)).await;
    assert_eq!(common::get(bridge.admin_addr, "/healthz").await.status, StatusCode::OK);
    let ready = common::get(bridge.admin_addr, "/readyz").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", ready.body);
    assert_eq!(ready.json()["sinks"][0]["ok"], false, "{}", ready.json());

    let id = unique_id("down");
    let body = stripe_event(&id, "invoice.paid", "in_down", None, false);
    let start = Instant::now();
    let answer = common::post_signed(bridge.webhook_addr, body.clone()).await;
    let took = start.elapsed();
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", answer.body);
    assert!(answer.headers.contains_key("retry-after"), "{:?}", answer.headers);
    assert!(
        took <= Duration::from_millis(2300),
        "answered after {took:?}, ack_timeout is 2s"
    );
    println!("broker down: 503 after {took:?}");

    let start_took = kafka(&["start"]).await;
    let back = Instant::now();
    // Stripe retries the delivery; the bridge, never restarted, accepts it once Kafka is back.
    let mut attempts = 0;
    let recovered = loop {
        attempts += 1;
        let a = common::post_signed(bridge.webhook_addr, body.clone()).await;
        if a.status == StatusCode::OK {
            break back.elapsed();
        }
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", a.body);
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "no 200 within 30s of the broker's return"
        );
        assert_eq!(common::get(bridge.admin_addr, "/healthz").await.status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("broker started in {start_took:?}; first 200 {recovered:?} after it answered ({attempts} attempts)");
    let ready_deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = common::get(bridge.admin_addr, "/readyz").await;
        if r.status == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < ready_deadline, "/readyz still {:?}", r.body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(common::get(bridge.admin_addr, "/healthz").await.status, StatusCode::OK);

    let records = read_topic(&topic, 1, Duration::from_secs(20), Duration::from_millis(700));
    assert!(!records.is_empty(), "the accepted event is in Kafka");
    assert!(records.iter().all(|r| r.event_id() == id && r.payload == body.to_vec()));
    println!("records for the one event: {} (duplicates are allowed)", records.len());
    bridge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_and_restarted_during_a_burst_loses_nothing_that_was_answered_200() {
    const EVENTS: usize = 300;
    const CONCURRENCY: usize = 16;
    let _serial = SERIAL.lock().await;
    require_broker(Duration::from_secs(30));
    let _back = BrokerBackOnDrop;
    let topic = unique_topic("kill");
    let bridge = common::spawn(&config(&topic)).await;
    let addr = bridge.webhook_addr;

    let ids: Vec<String> = (0..EVENTS).map(|i| format!("{}_{i}", unique_id("kill"))).collect();
    let bodies: Vec<bytes::Bytes> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| stripe_event(id, "charge.succeeded", &format!("ch_{}", i % 37), None, false))
        .collect();

    // Kill the broker once a third of the events are answered, and start it again at once.
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let fault = {
        let answered = answered.clone();
        tokio::spawn(async move {
            while answered.load(std::sync::atomic::Ordering::SeqCst) < EVENTS / 3 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            kafka(&["kill"]).await;
            let killed_at = Instant::now();
            let took = kafka(&["start"]).await;
            (killed_at, Instant::now(), took)
        })
    };
    let results: Vec<(usize, StatusCode, Instant)> = futures::stream::iter(bodies.iter().cloned().enumerate())
        .map(|(i, body)| {
            let answered = answered.clone();
            async move {
                let a = common::post_signed(addr, body).await;
                answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                (i, a.status, Instant::now())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let (killed_at, back_at, start_took) = fault.await.unwrap();

    let ok: HashSet<usize> = results.iter().filter(|r| r.1 == StatusCode::OK).map(|r| r.0).collect();
    let refused: Vec<Instant> = results
        .iter()
        .filter(|r| r.1 == StatusCode::SERVICE_UNAVAILABLE)
        .map(|r| r.2)
        .collect();
    let other: Vec<_> = results
        .iter()
        .filter(|r| r.1 != StatusCode::OK && r.1 != StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert!(other.is_empty(), "only 200 and 503 are expected: {other:?}");
    let (Some(first_503), Some(last_503)) = (refused.iter().min(), refused.iter().max()) else {
        panic!("the kill did not disturb any request: is the fault real?");
    };
    // Usually the bridge recovers within the burst; on a loaded machine the broker's restart may
    // outlast it, and the retries below show the recovery instead.
    let first_ok_after_outage = results
        .iter()
        .filter(|r| r.1 == StatusCode::OK && r.2 > *first_503)
        .map(|r| r.2.saturating_duration_since(killed_at))
        .min();
    println!(
        "burst of {EVENTS}: {} x 200, {} x 503; kill to broker answering kafka.sh: {:?} (start took \
         {start_took:?}); 503s answered from {:?} to {:?} after the kill; first 200 after the \
         outage {:?} after the kill",
        ok.len(),
        refused.len(),
        back_at - killed_at,
        first_503.saturating_duration_since(killed_at),
        last_503.saturating_duration_since(killed_at),
        first_ok_after_outage,
    );

    // Stripe retries whatever was not answered 200.
    let pending: Vec<usize> = (0..EVENTS).filter(|i| !ok.contains(i)).collect();
    retry_until_accepted(addr, pending, |i| bodies[i].clone()).await;

    let records = read_topic(&topic, EVENTS, Duration::from_secs(30), Duration::from_secs(1));
    let by_id = by_event_id(&records);
    let lost_acknowledged: Vec<&String> = ok
        .iter()
        .map(|i| &ids[*i])
        .filter(|id| !by_id.contains_key(*id))
        .collect();
    assert!(
        lost_acknowledged.is_empty(),
        "{} events answered 200 are not in Kafka: {:?}",
        lost_acknowledged.len(),
        &lost_acknowledged[..lost_acknowledged.len().min(10)]
    );
    let missing: Vec<&String> = ids.iter().filter(|id| !by_id.contains_key(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} events never reached Kafka after retries",
        missing.len()
    );
    for (id, rs) in &by_id {
        let i = ids
            .iter()
            .position(|x| x == id)
            .expect("only our events are in the topic");
        assert!(rs.iter().all(|r| r.payload == bodies[i].to_vec()), "payload of {id}");
    }
    let duplicates = records.len() - by_id.len();
    println!(
        "kafka holds {} records for {} events ({duplicates} duplicates, allowed)",
        records.len(),
        by_id.len()
    );
    bridge.shutdown().await;
}

/// The pid of the broker `deploy/local/kafka.sh` runs (its run dir, as the script computes it).
fn broker_pid() -> u32 {
    let dir = std::env::var_os("HOOKBRIDGE_KAFKA_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("HOOKBRIDGE_CACHE")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| std::path::PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/hookbridge"))
                .join("kafka/run")
        });
    let file = dir.join("kafka.pid");
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// Resumes a paused broker when dropped, so a failed test does not leave it stopped.
struct ResumeOnDrop(u32);

impl Drop for ResumeOnDrop {
    fn drop(&mut self) {
        signal(self.0, "CONT");
    }
}

/// Waits until the broker takes writes again, as a fresh idempotent producer sees it (so a
/// broker slow to unfence itself is not counted against the bridge); returns when it did.
async fn broker_takes_writes(topic: &str, within: Duration) -> Instant {
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < within,
            "the broker took no write within {within:?} of SIGCONT"
        );
        let producer: rdkafka::producer::FutureProducer = rdkafka::config::ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", "1000")
            .set("log_level", "3")
            .create()
            .expect("a probe producer");
        let record = rdkafka::producer::FutureRecord::to(topic).key("probe").payload("{}");
        let sent = tokio::time::timeout(
            Duration::from_secs(2),
            producer.send(record, Duration::from_millis(500)),
        )
        .await;
        // Dropping a producer blocks (purge, flush, join): not on the runtime's threads.
        tokio::task::spawn_blocking(move || drop(producer));
        if matches!(sent, Ok(Ok(_))) {
            return Instant::now();
        }
    }
}

/// One answer of the load below: when its request started and ended, its status and event.
#[derive(Debug, Clone)]
struct Sent {
    started: Instant,
    ended: Instant,
    status: StatusCode,
    index: usize,
}

/// When the answers show the sink recovered after `resumed`: the start of the first full
/// `STEADY` of requests (at least `MIN_STEADY` of them) answered 200 with no other answer since.
fn recovered_at(sent: &[Sent], resumed: Instant, now: Instant) -> Option<Instant> {
    const STEADY: Duration = Duration::from_secs(1);
    const MIN_STEADY: usize = 10;
    let after: Vec<&Sent> = sent.iter().filter(|s| s.started >= resumed).collect();
    let since = after
        .iter()
        .filter(|s| s.status != StatusCode::OK)
        .map(|s| s.started)
        .max()
        .unwrap_or(resumed);
    let steady = after.iter().filter(|s| s.started > since && s.ended <= now).count();
    (now.saturating_duration_since(since) >= STEADY && steady >= MIN_STEADY).then_some(since)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_paused_under_load_again_and_again_recovers_within_seconds_every_time() {
    // A paused broker (SIGSTOP) keeps its sockets open and answers nothing; after SIGCONT it
    // fences and unfences itself. The sink must publish again within seconds each time.
    let pauses: usize = std::env::var("HOOKBRIDGE_PAUSES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(4);
    const PAUSE: Duration = Duration::from_secs(3);
    const RECOVERY: Duration = Duration::from_secs(10);
    const CONCURRENCY: usize = 8;
    let _serial = SERIAL.lock().await;
    require_broker(Duration::from_secs(30));
    let topic = unique_topic("pause");
    let probe_topic = format!("{topic}.probe");
    // RUST_LOG=librdkafka=debug HOOKBRIDGE_KAFKA_DEBUG=eos,msg,broker shows what librdkafka does.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let extra = std::env::var("HOOKBRIDGE_KAFKA_DEBUG")
        .map(|d| format!("    options:\n      debug: \"{d}\"\n"))
        .unwrap_or_default();
    let bridge = common::spawn(&one_topic_config(&extra, &topic)).await;
    let addr = bridge.webhook_addr;
    let run = unique_id("pause");
    let id_of = move |i: usize| format!("{run}_{i}");
    let body_of = {
        let id_of = id_of.clone();
        move |i: usize| stripe_event(&id_of(i), "charge.succeeded", &format!("ch_{}", i % 13), None, false)
    };

    let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Sent>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (sent, stop, next, body_of) = (sent.clone(), stop.clone(), next.clone(), body_of.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let index = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let started = Instant::now();
                    let status = common::post_signed(addr, body_of(index)).await.status;
                    let ended = Instant::now();
                    sent.lock().unwrap().push(Sent {
                        started,
                        ended,
                        status,
                        index,
                    });
                }
            })
        })
        .collect();

    let snapshot = || sent.lock().unwrap().clone();
    let mut recoveries = Vec::new();
    // The first publish creates the topic; start when the bridge publishes steadily.
    let warm = Instant::now();
    while recovered_at(&snapshot(), warm, Instant::now()).is_none() {
        assert!(
            warm.elapsed() < Duration::from_secs(30),
            "no steady 200s before the first pause"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for round in 1..=pauses {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let pid = broker_pid();
        let resume = ResumeOnDrop(pid);
        signal(pid, "STOP");
        tokio::time::sleep(PAUSE).await;
        drop(resume);
        let continued = Instant::now();
        let resumed = broker_takes_writes(&probe_topic, Duration::from_secs(60)).await;
        let mut ready_during = Vec::new();
        let recovered = loop {
            let now = Instant::now();
            if let Some(at) = recovered_at(&snapshot(), resumed, now) {
                break at;
            }
            if now - resumed > RECOVERY + Duration::from_secs(1) {
                let after: Vec<Sent> = snapshot().into_iter().filter(|s| s.started >= resumed).collect();
                let ok = after.iter().filter(|s| s.status == StatusCode::OK).count();
                let readyz = common::get(bridge.admin_addr, "/readyz").await;
                panic!(
                    "round {round}: no steady 200s within {RECOVERY:?} of the broker taking writes again: {ok} x \
                     200 of {} answers since; /readyz {} {}",
                    after.len(),
                    readyz.status,
                    String::from_utf8_lossy(&readyz.body)
                );
            }
            ready_during.push(common::get(bridge.admin_addr, "/readyz").await.status);
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let took = recovered.saturating_duration_since(resumed);
        println!(
            "round {round}: the broker took writes {:?} after SIGCONT; the bridge's steady 200s {took:?} after \
             that; /readyz meanwhile {ready_during:?}",
            resumed - continued
        );
        recoveries.push(took);
        // Once publishing works again, /readyz says so.
        let ready_deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let r = common::get(bridge.admin_addr, "/readyz").await;
            if r.status == StatusCode::OK {
                break;
            }
            assert!(
                Instant::now() < ready_deadline,
                "round {round}: publishing works but /readyz says {:?}",
                r.body
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let all = snapshot();
    let other: Vec<&Sent> = all
        .iter()
        .filter(|s| s.status != StatusCode::OK && s.status != StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert!(other.is_empty(), "only 200 and 503 are expected: {other:?}");
    let ok: HashSet<usize> = all
        .iter()
        .filter(|s| s.status == StatusCode::OK)
        .map(|s| s.index)
        .collect();
    println!(
        "{pauses} pauses of {PAUSE:?}: {} answers, {} x 200; recovery {recoveries:?}",
        all.len(),
        ok.len()
    );

    // Stripe retries whatever was not answered 200; then every event is in Kafka.
    let total = all.len();
    let pending: Vec<usize> = (0..total).filter(|i| !ok.contains(i)).collect();
    retry_until_accepted(addr, pending, body_of).await;
    let records = read_topic(&topic, total, Duration::from_secs(30), Duration::from_secs(1));
    let by_id = by_event_id(&records);
    let missing: Vec<usize> = (0..total).filter(|i| !by_id.contains_key(&id_of(*i))).collect();
    assert!(
        missing.is_empty(),
        "{} events are not in Kafka: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    bridge.shutdown().await;
}
