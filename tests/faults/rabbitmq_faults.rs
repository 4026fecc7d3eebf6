//! The rabbitmq sink while the real RabbitMQ server stops, crashes and comes back. These tests
//! stop the shared server, so they live in their own test binary (cargo runs test binaries one
//! after another) and take a lock so that they run one at a time; each leaves the server running,
//! even when it fails.

use crate::amqp_support;
use crate::common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use amqp_support::{
    channel, connect_within, drain, message_id, one_queue, rabbitmq_sh, sink_yaml, spawn_bound, unique, wait_status,
    ROUTE_BY_TYPE,
};
use common::{event, get, post_signed, spawn, yaml};

/// One fault test at a time, across both brokers: they stop and kill them.
use crate::ONE_AT_A_TIME as SERVER;

/// Starts the server again when dropped, so a failing test does not leave it down.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        let out = std::process::Command::new("bash")
            .arg(amqp_support::script())
            .arg("start")
            .output();
        if !matches!(&out, Ok(o) if o.status.success()) {
            eprintln!("could not restart RabbitMQ after the test: {out:?}");
        }
    }
}

#[tokio::test]
async fn server_down_gives_503_then_200_once_it_is_back_without_restarting_the_bridge() {
    let _serial = SERVER.lock().await;
    let _restore = Restore;
    rabbitmq_sh(&["start"]);
    let exchange = unique("ex");
    let queue = unique("down");
    let config = yaml(&sink_yaml(&exchange, &one_queue(&queue, &["#"]), ROUTE_BY_TYPE));

    // Bridge A connects while the server is up; then the server stops.
    let a = spawn(&config).await;
    wait_status(a.admin_addr, "/readyz", 200, Duration::from_secs(10)).await;
    rabbitmq_sh(&["stop"]);
    let noticed = wait_status(a.admin_addr, "/readyz", 503, Duration::from_secs(5)).await;
    eprintln!("lost connection noticed after {noticed:?}");

    // Bridge B starts while the server is down: it starts at once and is not ready.
    let started = Instant::now();
    let b = spawn(&config).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "start does not wait for the broker"
    );
    assert_eq!(get(b.admin_addr, "/readyz").await.status, 503);
    assert_eq!(get(b.admin_addr, "/healthz").await.status, 200);

    let id_a = unique("evt_a");
    let id_b = unique("evt_b");
    for (bridge, id) in [(&a, &id_a), (&b, &id_b)] {
        let answer = post_signed(bridge.webhook_addr, event(id, "invoice.paid")).await;
        assert_eq!(answer.status, 503, "{:?}", answer.body);
        let retry_after = answer
            .headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        assert!(retry_after.is_some_and(|s| s >= 1), "Retry-After: {:?}", answer.headers);
        assert_eq!(answer.error_code(), "publish_unavailable");
    }

    let up = Instant::now();
    rabbitmq_sh(&["start"]);
    let start_took = up.elapsed();
    for bridge in [&a, &b] {
        let ready = wait_status(bridge.admin_addr, "/readyz", 200, Duration::from_secs(10)).await;
        eprintln!("ready {ready:?} after the server accepted connections (start took {start_took:?})");
    }
    // Stripe's retries now succeed, on the same bridges.
    for (bridge, id) in [(&a, &id_a), (&b, &id_b)] {
        let answer = post_signed(bridge.webhook_addr, event(id, "invoice.paid")).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
    }
    let (_conn, ch) = channel().await;
    let got: Vec<String> = drain(&ch, &queue).await.iter().map(message_id).collect();
    assert_eq!(got, vec![id_a, id_b]);
    a.shutdown().await;
    b.shutdown().await;
}

/// What one request got, and when.
struct Answered {
    id: String,
    status: u16,
    at: Instant,
}

/// Sends signed events, at most `concurrency` at a time and one every `pace`, while `fault`
/// runs and for `after` once it is over (at most `max` events). Returns every answer and when
/// the fault was over.
async fn load_during(
    addr: std::net::SocketAddr,
    concurrency: usize,
    pace: Duration,
    after: Duration,
    max: usize,
    fault: impl std::future::Future<Output = ()> + Send + 'static,
) -> (Vec<Answered>, Instant) {
    let over = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let over_in = over.clone();
    let fault = tokio::spawn(async move {
        fault.await;
        *over_in.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..max {
        let done = *over.lock().unwrap_or_else(|p| p.into_inner());
        if done.is_some_and(|t| t.elapsed() >= after) {
            break;
        }
        let permit = slots.clone().acquire_owned().await.expect("semaphore");
        let id = unique("evt_l");
        tasks.spawn(async move {
            let status = post_signed(addr, event(&id, "invoice.paid")).await.status.as_u16();
            drop(permit);
            Answered {
                id,
                status,
                at: Instant::now(),
            }
        });
        tokio::time::sleep(pace).await;
    }
    let mut answers = Vec::new();
    while let Some(a) = tasks.join_next().await {
        answers.push(a.expect("request task"));
    }
    fault.await.expect("the fault task");
    let over = over
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .expect("the fault is over");
    (answers, over)
}

async fn nothing_answered_200_is_lost(fault: &'static str) {
    let _serial = SERVER.lock().await;
    let _restore = Restore;
    rabbitmq_sh(&["start"]);
    let exchange = unique("ex");
    let queue = unique(fault);
    let bridge = spawn_bound(&exchange, &queue).await;

    let restarted = Arc::new(std::sync::Mutex::new(None::<Duration>));
    let restarted_in = restarted.clone();
    let fault_task = async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let t = Instant::now();
        tokio::task::spawn_blocking(move || {
            if fault == "kill" {
                rabbitmq_sh(&["kill"]);
                rabbitmq_sh(&["start"]);
            } else {
                rabbitmq_sh(&["restart"]);
            }
        })
        .await
        .expect("restart");
        *restarted_in.lock().unwrap_or_else(|p| p.into_inner()) = Some(t.elapsed());
    };
    // Up to 8 requests at a time, ~40 a second: before the fault, during the outage (5-10 s)
    // and for 2 s after the server is back.
    let started = Instant::now();
    let (answers, over) = load_during(
        bridge.webhook_addr,
        8,
        Duration::from_millis(25),
        Duration::from_secs(2),
        1000,
        fault_task,
    )
    .await;
    let took = started.elapsed();
    let outage = restarted.lock().unwrap_or_else(|p| p.into_inner()).unwrap_or_default();
    let mut counts = std::collections::BTreeMap::new();
    for a in &answers {
        *counts.entry(a.status).or_insert(0usize) += 1;
    }
    let ok: HashSet<String> = answers
        .iter()
        .filter(|a| a.status == 200)
        .map(|a| a.id.clone())
        .collect();
    let ids: Vec<String> = answers.iter().map(|a| a.id.clone()).collect();
    let ok_after = answers.iter().filter(|a| a.status == 200 && a.at > over).count();
    eprintln!(
        "{fault}: {} events in {took:?}, answers {counts:?}, {ok_after} answered 200 after the server was back \
         ({outage:?} after the fault began)",
        answers.len()
    );
    assert!(
        counts.keys().all(|s| *s == 200 || *s == 503),
        "only 200 and 503 while the server restarts: {counts:?}"
    );
    assert!(counts.contains_key(&503), "the fault hit some requests: {counts:?}");
    assert!(
        ok_after > 0,
        "the bridge publishes again once the server is back, without a restart"
    );

    // Stripe's retries of the 503s, now that it is back: the bridge recovered by itself.
    wait_status(bridge.admin_addr, "/readyz", 200, Duration::from_secs(10)).await;
    let mut retried = 0;
    for id in ids.iter().filter(|id| !ok.contains(*id)) {
        let a = post_signed(bridge.webhook_addr, event(id, "invoice.paid")).await;
        assert_eq!(a.status, 200, "retry of {id}: {:?}", a.body);
        retried += 1;
    }

    let _ = connect_within(Duration::from_secs(10)).await;
    let (_conn, ch) = channel().await;
    let got: Vec<String> = drain(&ch, &queue).await.iter().map(message_id).collect();
    let stored: HashSet<&String> = got.iter().collect();
    let lost: Vec<&String> = ok.iter().filter(|id| !stored.contains(id)).collect();
    assert!(
        lost.is_empty(),
        "{} events answered 200 are not in the queue: {lost:?}",
        lost.len()
    );
    let all: HashSet<&String> = ids.iter().collect();
    assert_eq!(stored, all, "after the retries every event is in the queue");
    eprintln!(
        "{fault}: {} answered 200 during the load, {retried} retried after, {} messages stored ({} duplicates)",
        ok.len(),
        got.len(),
        got.len() - stored.len()
    );
    bridge.shutdown().await;
}

#[tokio::test]
async fn server_restarted_under_load_loses_nothing_answered_200() {
    nothing_answered_200_is_lost("restart").await;
}

#[tokio::test]
async fn server_killed_under_load_loses_nothing_answered_200() {
    nothing_answered_200_is_lost("kill").await;
}
