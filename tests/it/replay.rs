//! `hookbridge replay`: against Stripe's own API mock (`deploy/local/stripe-mock.sh start`) for
//! the request shape, authentication and errors; against a small Events API of our own (below,
//! on port 0) for pagination over many pages, resume from a checkpoint and rate limiting; and
//! into the real Kafka and RabbitMQ, read back byte for byte. Nothing is skipped: a missing
//! stripe-mock or broker fails the test with how to start it.
#![allow(clippy::unwrap_used)]

use crate::amqp_support;
use crate::common;
use crate::kafka_support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use hookbridge::replay::{self, checkpoint, Plan, ReplayArgs, Report, Ui};
use hookbridge::sink::memory::{Behaviour, MemorySink};
use hookbridge::sink::{Sink, SinkError};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

const KEY: &str = "sk_test_fake_replay_key_0123456789";
const NO_PERMISSION_KEY: &str = "rk_test_no_events_permission_42";

// ---------------------------------------------------------------------------------------------
// A small Events API: pages exactly as Stripe's (newest first, `starting_after`, `limit`,
// `created[gte]`/`created[lte]`, `types[]`, `type` groups), and answers scripted per request.

/// A status and headers to answer with.
type Scripted = (u16, Vec<(&'static str, String)>);

#[derive(Default)]
struct Api {
    /// Oldest first.
    events: Vec<Bytes>,
    /// The path and query of every request, in order.
    requests: Vec<String>,
    /// Answers given instead of a page: request number (0-based) → status and headers.
    scripted: HashMap<usize, Scripted>,
}

#[derive(Clone, Default)]
struct FakeStripe {
    inner: Arc<Mutex<Api>>,
    addr: Option<SocketAddr>,
}

impl FakeStripe {
    async fn start(events: Vec<Bytes>) -> FakeStripe {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut fake = FakeStripe::default();
        fake.inner.lock().unwrap().events = events;
        fake.addr = Some(listener.local_addr().unwrap());
        let served = fake.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let served = served.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let served = served.clone();
                        async move { Ok::<_, std::convert::Infallible>(served.answer(req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        fake
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr.unwrap())
    }

    fn requests(&self) -> Vec<String> {
        self.inner.lock().unwrap().requests.clone()
    }

    fn script(&self, request: usize, status: u16, headers: &[(&'static str, &str)]) {
        self.inner.lock().unwrap().scripted.insert(
            request,
            (status, headers.iter().map(|(k, v)| (*k, v.to_string())).collect()),
        );
    }

    fn add(&self, events: Vec<Bytes>) {
        self.inner.lock().unwrap().events.extend(events);
    }

    fn answer(&self, req: hyper::Request<hyper::body::Incoming>) -> hyper::Response<Full<Bytes>> {
        let mut api = self.inner.lock().unwrap();
        let n = api.requests.len();
        api.requests.push(req.uri().to_string());
        let reply = |status: u16, headers: Vec<(&'static str, String)>, body: String| {
            let mut r = hyper::Response::builder()
                .status(status)
                .header("content-type", "application/json");
            for (k, v) in headers {
                r = r.header(k, v);
            }
            r.body(Full::new(Bytes::from(body))).unwrap()
        };
        let error =
            |kind: &str, message: &str| serde_json::json!({"error": {"type": kind, "message": message}}).to_string();
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if auth == format!("Bearer {NO_PERMISSION_KEY}") {
            let m = format!(
                "The provided key '{NO_PERMISSION_KEY}' does not have the required permissions for this endpoint.\nHaving the 'rak_event_read' permission would allow this request to continue."
            );
            return reply(403, vec![], error("invalid_request_error", &m));
        }
        if auth != format!("Bearer {KEY}") {
            // As stripe-mock does, the answer echoes what was sent.
            let m = format!("Invalid API Key provided. Authorization was '{auth}'.");
            return reply(401, vec![], error("invalid_request_error", &m));
        }
        if let Some((status, headers)) = api.scripted.get(&n).cloned() {
            return reply(
                status,
                headers,
                error("rate_limit_error", "Too many requests, slow down"),
            );
        }
        if req.uri().path() != "/v1/events" {
            return reply(404, vec![], error("invalid_request_error", "Unrecognized request URL"));
        }
        let q = query_pairs(req.uri().query().unwrap_or(""));
        let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let gte: i64 = get("created[gte]").map_or(i64::MIN, |v| v.parse().unwrap());
        let lte: i64 = get("created[lte]").map_or(i64::MAX, |v| v.parse().unwrap());
        let limit: usize = get("limit").map_or(10, |v| v.parse().unwrap());
        let types: Vec<String> = q
            .iter()
            .filter(|(n, _)| n == "types[]")
            .map(|(_, v)| v.clone())
            .collect();
        let group = get("type");
        let mut listed: Vec<(usize, serde_json::Value)> = api
            .events
            .iter()
            .enumerate()
            .map(|(i, e)| (i, serde_json::from_slice::<serde_json::Value>(e).unwrap()))
            .filter(|(_, v)| {
                let created = v["created"].as_i64().unwrap();
                let t = v["type"].as_str().unwrap();
                created >= gte
                    && created <= lte
                    && (types.is_empty() || types.iter().any(|x| x == t))
                    && group.as_deref().is_none_or(|g| t.starts_with(g.trim_end_matches('*')))
            })
            .collect();
        // Newest first; the order within one second is the API's own (here: later added first).
        listed.sort_by_key(|(i, v)| std::cmp::Reverse((v["created"].as_i64().unwrap(), *i)));
        let start = match get("starting_after") {
            Some(id) => listed
                .iter()
                .position(|(_, v)| v["id"] == id.as_str())
                .map_or(listed.len(), |p| p + 1),
            None => 0,
        };
        let page: Vec<&[u8]> = listed[start..]
            .iter()
            .take(limit)
            .map(|(i, _)| api.events[*i].as_ref())
            .collect();
        let has_more = listed.len() > start + page.len();
        // Indented as Stripe's pretty-printed pages are: the indent is the page's, not the event's.
        let data: Vec<String> = page
            .iter()
            .map(|b| format!("    {}", String::from_utf8(b.to_vec()).unwrap()))
            .collect();
        let body = format!(
            "{{\n  \"object\": \"list\",\n  \"data\": [\n{}\n  ],\n  \"has_more\": {has_more},\n  \"url\": \"/v1/events\"\n}}",
            data.join(",\n")
        );
        reply(200, vec![("request-id", format!("req_{n}"))], body)
    }
}

fn query_pairs(q: &str) -> Vec<(String, String)> {
    let decode = |s: &str| {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' && i + 2 < b.len() {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// An event as the Events API lists it: indented, with escapes, so that any re-serialisation
/// would show.
fn api_event(id: &str, created: i64, event_type: &str, object_id: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{
      "id": "{id}",
      "object": "event",
      "api_version": "2024-06-20",
      "created": {created},
      "data": {{
        "object": {{
          "id": "{object_id}",
          "object": "invoice",
          "amount_due": 1000,
          "description": "caf\u00e9 \"{id}\" \/ 10 \u20ac",
          "lines": [ 1, 2.50, 3e2 ]
        }}
      }},
      "livemode": false,
      "pending_webhooks": 1,
      "request": {{ "id": null, "idempotency_key": null }},
      "type": "{event_type}"
    }}"#
    ))
}

fn now() -> i64 {
    hookbridge::verify::unix_now()
}

/// `n` events of the last hour, three per second, oldest first, with unique ids.
fn events(tag: &str, n: usize, event_type: &str, object_id: Option<&str>) -> Vec<Bytes> {
    let tag = common::unique(tag).replace(['.', '-'], "_");
    let base = now() - 3000;
    (0..n)
        .map(|i| {
            let id = format!("evt_{tag}_{i:04}");
            let object = object_id.map_or_else(|| format!("in_{tag}_{i}"), str::to_string);
            api_event(&id, base + (i / 3) as i64, event_type, &object)
        })
        .collect()
}

fn id_of(event: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(event).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: ReplayArgs,
}

/// A plan from command-line words (as `hookbridge replay` parses them).
fn plan(words: &[&str]) -> Plan {
    let mut argv = vec!["replay", "--api-key", KEY];
    argv.extend_from_slice(words);
    let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{e}"));
    Plan::from_args(&cli.args, now()).unwrap_or_else(|e| panic!("{e}"))
}

/// Every event to the one sink `events`, topic by type.
fn memory_config() -> hookbridge::config::Settings {
    common::settings(&common::yaml(
        "sinks:\n  events:\n    kind: discard\nroutes:\n  - match: \"invoice.*\"\n    to:\n      - { sink: events, topic: \"stripe.{type}\" }\n",
    ))
}

async fn run_into(plan: &Plan, sink: &MemorySink, stop: watch::Receiver<bool>) -> Report {
    let sinks: Vec<Arc<dyn Sink>> = vec![Arc::new(sink.clone())];
    replay::run(plan, &memory_config(), Some(sinks), stop, Ui::default()).await
}

fn never() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    std::mem::forget(tx);
    rx
}

fn query_of(request: &str) -> HashMap<String, Vec<String>> {
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in query_pairs(request.split_once('?').map_or("", |(_, q)| q)) {
        map.entry(k).or_default().push(v);
    }
    map
}

// ---------------------------------------------------------------------------------------------
// Pagination, order, bytes, headers.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_through_the_window_and_publishes_oldest_first_byte_for_byte() {
    let all = events("pages", 250, "invoice.paid", None);
    let api = FakeStripe::start(all.clone()).await;
    let sink = MemorySink::new("events");
    let base = api.base();
    let p = plan(&[
        "--api-base",
        &base,
        "--since",
        "2h",
        "--undelivered",
        "--types",
        "invoice.paid",
    ]);
    let report = run_into(&p, &sink, never()).await;
    assert!(report.complete, "{report:?}");
    assert_eq!((report.fetched, report.published, report.pages), (250, 250, 3));

    // Three requests, each as the API defines them; the cursor is the last id of the page before.
    let requests = api.requests();
    assert_eq!(requests.len(), 3, "{requests:?}");
    let newest_first: Vec<String> = all.iter().rev().map(|e| id_of(e)).collect();
    for (i, r) in requests.iter().enumerate() {
        let q = query_of(r);
        assert!(r.starts_with("/v1/events?"), "{r}");
        assert_eq!(q["limit"], ["100"]);
        assert_eq!(q["delivery_success"], ["false"]);
        assert_eq!(q["types[]"], ["invoice.paid"]);
        let (gte, lte): (i64, i64) = (
            q["created[gte]"][0].parse().unwrap(),
            q["created[lte]"][0].parse().unwrap(),
        );
        assert!((lte - gte - 7200).abs() <= 1 && (now() - lte).abs() < 60, "{r}");
        match i {
            0 => assert!(!q.contains_key("starting_after")),
            _ => assert_eq!(q["starting_after"], [newest_first[i * 100 - 1].clone()]),
        }
    }

    // Oldest first, each exactly the bytes listed, with the usual headers minus the signature.
    let records = sink.records();
    assert_eq!(records.len(), 250);
    for (r, sent) in records.iter().zip(&all) {
        assert_eq!(r.payload, sent, "payload differs from what the API listed");
        assert_eq!(r.destination, "stripe.invoice.paid");
        let h: HashMap<&str, &str> = r.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(h["stripe-event-id"], id_of(sent));
        assert_eq!(h["stripe-replayed"], "true");
        assert_eq!(h["stripe-event-type"], "invoice.paid");
        assert_eq!(h["content-type"], "application/json");
        assert!(!h.contains_key("stripe-signature"), "{h:?}");
        assert!(r.key.starts_with("in_"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn types_the_api_cannot_express_are_filtered_here_and_duplicates_dropped() {
    let mut all = events("filter", 30, "invoice.paid", None);
    all.extend(events("filter", 20, "charge.succeeded", None));
    all.extend(events("filter", 10, "invoice.created", None));
    let api = FakeStripe::start(all.clone()).await;
    let base = api.base();
    let sink = MemorySink::new("events");
    // Two globs: the API gets no type filter, the globs run here.
    let p = plan(&["--api-base", &base, "--since", "1h", "--types", "*.paid", "invoice.cr*"]);
    let report = run_into(&p, &sink, never()).await;
    assert!(report.complete, "{report:?}");
    assert_eq!((report.fetched, report.filtered, report.published), (60, 20, 40));
    let q = query_of(&api.requests()[0]);
    assert!(!q.contains_key("types[]") && !q.contains_key("type"), "{q:?}");
    assert!(!q.contains_key("delivery_success"));

    // One group: sent as `type`.
    let api2 = FakeStripe::start(all.clone()).await;
    let base2 = api2.base();
    let p = plan(&["--api-base", &base2, "--since", "1h", "--types", "invoice.*"]);
    let report = run_into(&p, &MemorySink::new("events"), never()).await;
    assert_eq!((report.fetched, report.published), (40, 40), "{report:?}");
    assert_eq!(query_of(&api2.requests()[0])["type"], ["invoice.*"]);

    // An event the API lists twice (it was added twice) is published once.
    let api3 = FakeStripe::start(vec![all[0].clone(), all[1].clone(), all[0].clone()]).await;
    let base3 = api3.base();
    let sink3 = MemorySink::new("events");
    let report = run_into(&plan(&["--api-base", &base3, "--since", "1h"]), &sink3, never()).await;
    assert_eq!(
        (report.fetched, report.duplicates, report.published),
        (3, 1, 2),
        "{report:?}"
    );
    assert_eq!(sink3.records().len(), 2);
}

// ---------------------------------------------------------------------------------------------
// Checkpoint and resume.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_or_failed_runs_resume_after_the_last_event_confirmed() {
    let all = events("resume", 240, "invoice.paid", None);
    let api = FakeStripe::start(all.clone()).await;
    let base = api.base();
    let dir = tempfile::tempdir().unwrap();
    let cp_path = dir.path().join("replay.checkpoint");
    let cp = cp_path.to_str().unwrap();

    // Run 1: stopped (as by Ctrl-C) once 70 events are confirmed.
    let first = MemorySink::new("events");
    first.set_behaviour(Behaviour::Delay(Duration::from_millis(3)));
    let (stop, stopped) = watch::channel(false);
    let p = plan(&["--api-base", &base, "--since", "2h", "--checkpoint", cp]);
    let run = tokio::spawn({
        let first = first.clone();
        async move { run_into(&p, &first, stopped).await }
    });
    while first.records().len() < 70 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stop.send(true).unwrap();
    let report = run.await.unwrap();
    let got1 = first.records();
    assert!(
        !report.complete && report.error.as_deref().unwrap().starts_with("interrupted"),
        "{report:?}"
    );
    assert_eq!(report.published as usize, got1.len());
    assert_eq!(report.remaining as usize, 240 - got1.len());
    let saved = checkpoint::load(&cp_path).unwrap().unwrap();
    assert_eq!(
        saved.last_event_id,
        id_of(&got1.last().unwrap().payload),
        "checkpoint = last confirmed"
    );

    // Run 2: the broker starts refusing part way; the checkpoint again names the last confirmed.
    let second = MemorySink::new("events");
    second.set_behaviour(Behaviour::Delay(Duration::from_millis(3)));
    let requests_before = api.requests().len();
    let p = plan(&["--api-base", &base, "--since", "2h", "--checkpoint", cp]);
    let run = tokio::spawn({
        let second = second.clone();
        async move { run_into(&p, &second, never()).await }
    });
    while second.records().len() < 50 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    second.set_behaviour(Behaviour::Fail(SinkError::permanent("message too large")));
    let report = run.await.unwrap();
    let got2 = second.records();
    let err = report.error.clone().unwrap();
    assert!(
        err.contains("was not published: message too large") && err.contains("continues after"),
        "{err}"
    );
    let saved2 = checkpoint::load(&cp_path).unwrap().unwrap();
    assert_eq!(saved2.last_event_id, id_of(&got2.last().unwrap().payload));
    // The rerun listed only from the checkpoint's second on.
    let q = query_of(&api.requests()[requests_before]);
    assert_eq!(q["created[gte]"], [saved.created.to_string()]);
    assert!(
        report.skipped >= 1,
        "events of the checkpoint's second already confirmed are skipped"
    );

    // Run 3: everything left; together the three runs published each event once, oldest first.
    let third = MemorySink::new("events");
    let p = plan(&["--api-base", &base, "--since", "2h", "--checkpoint", cp]);
    let report = run_into(&p, &third, never()).await;
    assert!(report.complete, "{report:?}");
    let published: Vec<Bytes> = [got1, got2, third.records()]
        .concat()
        .into_iter()
        .map(|r| r.payload)
        .collect();
    assert_eq!(published.len(), 240, "no event lost and none twice");
    assert_eq!(published, all);

    // New events later: a rerun with the same checkpoint publishes only them.
    let later = events("resume_later", 5, "invoice.paid", None);
    let later: Vec<Bytes> = later
        .iter()
        .map(|e| {
            let text = String::from_utf8(e.to_vec()).unwrap();
            let old = serde_json::from_slice::<serde_json::Value>(e).unwrap()["created"]
                .as_i64()
                .unwrap();
            Bytes::from(text.replace(&format!("\"created\": {old}"), &format!("\"created\": {}", now() - 1)))
        })
        .collect();
    api.add(later.clone());
    let fourth = MemorySink::new("events");
    let report = run_into(
        &plan(&["--api-base", &base, "--since", "2h", "--checkpoint", cp]),
        &fourth,
        never(),
    )
    .await;
    assert!(report.complete, "{report:?}");
    let got: Vec<Bytes> = fourth.records().into_iter().map(|r| r.payload).collect();
    assert_eq!(got, later);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_comes_back_is_waited_for() {
    let all = events("comeback", 5, "invoice.paid", None);
    let api = FakeStripe::start(all.clone()).await;
    let base = api.base();
    let sink = MemorySink::new("events");
    sink.set_behaviour(Behaviour::Fail(SinkError::retryable("broker unreachable")));
    let run = tokio::spawn({
        let sink = sink.clone();
        async move { run_into(&plan(&["--api-base", &base, "--since", "1h"]), &sink, never()).await }
    });
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(sink.records().is_empty());
    sink.set_behaviour(Behaviour::Confirm);
    let report = run.await.unwrap();
    assert!(report.complete, "{report:?}");
    let got: Vec<Bytes> = sink.records().into_iter().map(|r| r.payload).collect();
    assert_eq!(got, all);
}

// ---------------------------------------------------------------------------------------------
// Rate limits and errors of the API.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_waited_out_and_should_retry_false_is_final() {
    let all = events("ratelimit", 150, "invoice.paid", None);
    let api = FakeStripe::start(all.clone()).await;
    let base = api.base();
    // The second page is throttled twice (Retry-After: 1), then fails once with a retryable 503.
    api.script(1, 429, &[("retry-after", "1")]);
    api.script(2, 429, &[("retry-after", "1"), ("stripe-should-retry", "true")]);
    api.script(3, 503, &[]);
    let sink = MemorySink::new("events");
    let started = Instant::now();
    let report = run_into(&plan(&["--api-base", &base, "--since", "1h"]), &sink, never()).await;
    assert!(report.complete, "{report:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "Retry-After was not honoured"
    );
    assert_eq!((report.retries, report.pages, report.published), (3, 2, 150));
    let requests = api.requests();
    assert_eq!(requests.len(), 5);
    assert_eq!(requests[1], requests[4], "the same page is asked again");

    // A 429 that Stripe says not to retry ends the run at once, having published nothing.
    let api = FakeStripe::start(all).await;
    let base = api.base();
    api.script(1, 429, &[("stripe-should-retry", "false")]);
    let sink = MemorySink::new("events");
    let report = run_into(&plan(&["--api-base", &base, "--since", "1h"]), &sink, never()).await;
    assert_eq!(api.requests().len(), 2);
    let err = report.error.unwrap();
    assert!(err.contains("429"), "{err}");
    assert!(
        sink.records().is_empty(),
        "nothing is published before the whole window is listed"
    );
}

/// Runs the binary with `args`, the API key in the environment.
fn replay_cmd(args: &[&str], key: Option<&str>) -> Output {
    let mut cmd = Command::new(common::bin());
    cmd.arg("replay")
        .args(args)
        .env_remove("STRIPE_API_KEY")
        .env_remove("HOOKBRIDGE_CONFIG");
    if let Some(k) = key {
        cmd.env("STRIPE_API_KEY", k);
    }
    cmd.output().unwrap()
}

/// A config with one file sink writing to `dir/events.jsonl`, everything routed to it.
fn file_config(dir: &Path) -> String {
    let path = dir.join("c.yaml");
    let out = dir.join("events.jsonl");
    std::fs::write(
        &path,
        common::yaml(&format!(
            "sinks:\n  local:\n    kind: file\n    path: \"{}\"\nroutes:\n  - match: \"*\"\n    to:\n      - {{ sink: local, topic: \"stripe.{{type}}\" }}\n",
            out.display()
        )),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

fn stderr_line(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(err.trim_end().lines().count(), 1, "one error line expected: {err:?}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_without_permission_is_one_clear_line_without_the_key() {
    let api = FakeStripe::start(events("perm", 3, "invoice.paid", None)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = file_config(dir.path());
    let base = api.base();
    let out = tokio::task::spawn_blocking(move || {
        replay_cmd(
            &["--config", &config, "--api-base", &base, "--since", "1h"],
            Some(NO_PERMISSION_KEY),
        )
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_line(&out);
    assert!(
        err.contains("may not list events (403)") && err.contains("read access to Events"),
        "{err}"
    );
    assert!(!err.contains(NO_PERMISSION_KEY) && !String::from_utf8_lossy(&out.stdout).contains(NO_PERMISSION_KEY));
}

// ---------------------------------------------------------------------------------------------
// Against stripe-mock: request shape, authentication, parameters, errors.

fn stripe_mock() -> String {
    let port = std::env::var("HOOKBRIDGE_STRIPE_MOCK_PORT").unwrap_or_else(|_| "12111".into());
    let addr = format!("127.0.0.1:{port}");
    if std::net::TcpStream::connect(&addr).is_err() {
        panic!(
            "stripe-mock is not running on {addr}. These tests need Stripe's API mock: run \
             `deploy/local/stripe-mock.sh start` first (scripts/test.sh and CI do)."
        );
    }
    format!("http://{addr}")
}

/// The first event of stripe-mock's list, as raw page text and as JSON.
fn stripe_mock_page(base: &str) -> String {
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    use std::io::{Read, Write};
    write!(
        s,
        "GET /v1/events HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer sk_test_123\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.split_once("\r\n\r\n").unwrap().1.to_string()
}

#[test]
fn stripe_mock_accepts_every_request_shape_and_the_event_is_published_as_listed() {
    let base = stripe_mock();
    let dir = tempfile::tempdir().unwrap();
    let config = file_config(dir.path());
    let cp = dir.path().join("cp.json");
    let cp = cp.to_str().unwrap();
    // stripe-mock validates every parameter against Stripe's OpenAPI spec: an unknown name or a
    // wrong type is a 400, which would make these exit 1.
    let many: Vec<String> = (0..21).map(|i| format!("type{i}.happened")).collect();
    let many = many.join(",");
    let from = hookbridge::replay::window::format_time(now() - 2 * 86400);
    let to = (now() - 86400).to_string();
    let shapes: Vec<Vec<&str>> = vec![
        vec![
            "--since",
            "2h",
            "--undelivered",
            "--types",
            "plan.created",
            "invoice.paid",
            "--checkpoint",
            cp,
        ],
        vec!["--since", "30d", "--types", "plan.*", "--dry-run"],
        vec!["--from", &from, "--to", &to, "--types", &many, "--dry-run"],
    ];
    for shape in &shapes {
        let mut args = vec!["--config", &config, "--api-base", &base, "--json"];
        args.extend(shape.iter().copied());
        let out = replay_cmd(&args, Some("sk_test_123"));
        assert_eq!(
            out.status.code(),
            Some(0),
            "{shape:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["fetched"], 1, "{report}");
        assert_eq!(report["complete"], true);
    }

    // The first shape published stripe-mock's event: its bytes exactly as listed.
    let line = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
    let lines: Vec<&str> = line.lines().collect();
    assert_eq!(lines.len(), 1, "only the run without --dry-run publishes");
    let record: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    let payload = record["payload"].as_str().unwrap();
    let page = stripe_mock_page(&base);
    assert!(
        page.contains(payload),
        "the payload is not a verbatim slice of the page"
    );
    let listed: serde_json::Value = serde_json::from_str(&page).unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(payload).unwrap(),
        listed["data"][0]
    );
    assert_eq!(record["headers"]["stripe-replayed"], "true");
    assert!(record["headers"].get("stripe-signature").is_none());
    assert_eq!(record["destination"], "stripe.plan.created");
    let saved = checkpoint::load(Path::new(cp)).unwrap().unwrap();
    assert_eq!(saved.last_event_id, listed["data"][0]["id"].as_str().unwrap());
}

#[test]
fn stripe_mock_refuses_a_bad_key_and_the_error_never_shows_it() {
    let base = stripe_mock();
    let dir = tempfile::tempdir().unwrap();
    let config = file_config(dir.path());
    // stripe-mock accepts test-mode keys only, and its 401 echoes the Authorization header.
    let key = "sk_live_not_accepted_by_the_mock_123";
    let out = replay_cmd(&["--config", &config, "--api-base", &base, "--since", "1h"], Some(key));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_line(&out);
    assert!(err.contains("refused the API key (401)"), "{err}");
    assert!(err.contains("[redacted]") && !err.contains(key), "{err}");
    assert!(
        !std::fs::exists(dir.path().join("events.jsonl")).unwrap()
            || std::fs::read(dir.path().join("events.jsonl")).unwrap().is_empty()
    );
}

#[test]
fn bad_input_is_refused_up_front_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let config = file_config(dir.path());
    // A closed port: none of these may get as far as a request.
    let closed = format!("http://127.0.0.1:{}", common::free_port());
    let cases: Vec<(Vec<&str>, Option<&str>, &str)> = vec![
        (vec!["--since", "1h"], None, "no API key"),
        (vec!["--since", "31d"], Some(KEY), "30 days"),
        (
            vec!["--from", "2020-01-01T00:00:00Z"],
            Some(KEY),
            "more than 30 days ago",
        ),
        (vec!["--since", "1h"], Some("whsec_abc"), "webhook signing secret"),
        (vec!["--since", "1h"], Some("pk_test_abc"), "publishable key"),
        (
            vec!["--since", "1h", "--api-base", "api.stripe.com"],
            Some(KEY),
            "--api-base",
        ),
        (vec!["--since", "yesterday"], Some(KEY), "not a duration"),
        (
            vec!["--since", "1h", "--from", "1700000000"],
            Some(KEY),
            "cannot be used with",
        ),
        (vec!["--to", "1700000000"], Some(KEY), "required"),
    ];
    for (args, key, expect) in cases {
        let mut all = vec!["--config", &config, "--api-base", &closed];
        all.extend(args.iter().copied());
        let out = replay_cmd(&all, key);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(expect), "{args:?}: {err}");
    }
    // A checkpoint file that is not one: exit 2, naming it.
    let bad = dir.path().join("bad.checkpoint");
    std::fs::write(&bad, "hello").unwrap();
    let out = replay_cmd(
        &[
            "--config",
            &config,
            "--since",
            "1h",
            "--checkpoint",
            bad.to_str().unwrap(),
        ],
        Some(KEY),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_line(&out).contains("bad.checkpoint"));
    // A bad config: exit 2 naming the key.
    let cfg = dir.path().join("bad.yaml");
    std::fs::write(&cfg, "sinks: {}\nroutes: []\nbogus: 1\n").unwrap();
    let out = replay_cmd(&["--config", cfg.to_str().unwrap(), "--since", "1h"], Some(KEY));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bogus"));
}

// ---------------------------------------------------------------------------------------------
// Into the real brokers.

/// Runs the binary with `yaml` as its config against `api`, for the last hour, with `--json`;
/// checks that it exits 0 having published `expected` events, and returns its report.
async fn replay_json(yaml: String, api: &FakeStripe, expected: u64) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.yaml");
    std::fs::write(&config, yaml).unwrap();
    let (config, base) = (config.to_str().unwrap().to_string(), api.base());
    let out = tokio::task::spawn_blocking(move || {
        let args = ["--config", &config, "--api-base", &base, "--since", "1h", "--json"];
        replay_cmd(&args, Some(KEY))
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["published"], expected, "{report}");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_events_land_in_kafka_in_order_byte_for_byte() {
    kafka_support::require_broker(Duration::from_secs(10));
    let topic = kafka_support::unique_topic("replay");
    // The topic exists, as a production topic would: how the sink treats a topic the cluster
    // is still auto-creating is tests/it/kafka.rs's business, and a replay stops at a permanent
    // failure.
    let admin: rdkafka::admin::AdminClient<_> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka_support::brokers())
        .create()
        .unwrap();
    let new_topic = rdkafka::admin::NewTopic::new(&topic, 1, rdkafka::admin::TopicReplication::Fixed(1));
    let created = admin
        .create_topics(&[new_topic], &rdkafka::admin::AdminOptions::new())
        .await
        .unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    // One object: one partition, so the order on the topic is the order of publishing.
    let all = events("kafka", 130, "invoice.paid", Some("in_one_object"));
    let api = FakeStripe::start(all.clone()).await;
    let report = replay_json(kafka_support::one_topic_config("", &topic), &api, 130).await;
    eprintln!("kafka: {} events/s", report["rate"]);

    let records = tokio::task::spawn_blocking(move || {
        kafka_support::read_topic(&topic, 130, Duration::from_secs(20), Duration::from_millis(500))
    })
    .await
    .unwrap();
    assert_eq!(records.len(), 130);
    for (r, sent) in records.iter().zip(&all) {
        assert_eq!(&r.payload[..], &sent[..]);
        assert_eq!(r.key_str(), "in_one_object");
        assert_eq!(r.header("stripe-replayed"), Some("true"));
        assert_eq!(r.header("stripe-event-id"), Some(id_of(sent).as_str()));
        assert_eq!(r.header("stripe-signature"), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_events_land_in_rabbitmq_in_order_byte_for_byte() {
    let exchange = amqp_support::unique("replay-x");
    let queue = amqp_support::unique("replay-q");
    let (_conn, ch) = amqp_support::channel().await;
    let all = events("amqp", 60, "invoice.paid", None);
    let api = FakeStripe::start(all.clone()).await;
    let yaml = common::yaml(&amqp_support::sink_yaml(
        &exchange,
        &amqp_support::one_queue(&queue, &["#"]),
        amqp_support::ROUTE_BY_TYPE,
    ));
    let report = replay_json(yaml, &api, 60).await;
    eprintln!("rabbitmq: {} events/s", report["rate"]);

    let messages = amqp_support::drain(&ch, &queue).await;
    assert_eq!(messages.len(), 60);
    for (m, sent) in messages.iter().zip(&all) {
        assert_eq!(&m.delivery.data[..], &sent[..]);
        assert_eq!(amqp_support::message_id(m), id_of(sent));
        let h = amqp_support::headers(m);
        assert_eq!(h.get("stripe-replayed").map(String::as_str), Some("true"));
        assert!(!h.contains_key("stripe-signature"));
        assert_eq!(m.delivery.routing_key.as_str(), "invoice.paid");
    }
}
