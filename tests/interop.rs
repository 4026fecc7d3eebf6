//! Interop with Stripe's own code, not assumed: the official `stripe` SDKs (npm and PyPI,
//! installed by deploy/local/stripe-sdk.sh) sign and verify against hookbridge.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::*;
use hookbridge::sink::memory::MemorySink;
use hookbridge::sink::Sink;
use http::StatusCode;

const FIXTURES: &[&str] = &[
    "payment_intent.succeeded.json",
    "invoice.paid.json",
    "customer.subscription.updated.json",
    "checkout.session.completed.json",
    "charge.dispute.created.json",
    "account.updated.connect.json",
    "v1.billing.meter.error_report_triggered.thin.json",
];

fn sdk_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HOOKBRIDGE_STRIPE_SDK") {
        return dir.into();
    }
    let cache = std::env::var_os("HOOKBRIDGE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/hookbridge"));
    cache.join("stripe-sdk")
}

fn script(name: &str) -> String {
    format!("{}/tests/interop/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Runs a program with `stdin`; returns (exit code, stdout, stderr). Panics, loudly, when the
/// SDKs are not installed: this test is never skipped.
fn run(program: &str, args: &[&str], stdin: &[u8]) -> (i32, String, String) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program} (install the SDKs with deploy/local/stripe-sdk.sh): {e}"));
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !stderr.contains("cannot load") && !stderr.contains("ModuleNotFoundError"),
        "Stripe SDK missing; run deploy/local/stripe-sdk.sh: {stderr}"
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        stderr,
    )
}

fn python() -> String {
    let p = sdk_dir().join("venv/bin/python");
    assert!(p.exists(), "{} is missing: run deploy/local/stripe-sdk.sh", p.display());
    p.to_string_lossy().to_string()
}

/// Signs with the official npm package's `generateTestHeaderString`.
fn stripe_sign(secret: &str, body: &[u8]) -> String {
    let (code, out, err) = run("node", &[&script("stripe_sign.js"), "--secret", secret], body);
    assert_eq!(code, 0, "stripe_sign.js failed: {err}");
    out.trim_end().to_string()
}

/// Verifies with both official SDKs (tolerance off); returns whether each accepted.
fn stripe_verify(secret: &str, header: &str, body: &[u8]) -> (bool, bool) {
    let args = ["--secret", secret, "--header", header];
    let py_script = script("stripe_verify.py");
    let mut py_args = vec![py_script.as_str()];
    py_args.extend_from_slice(&args);
    let (py, _, py_err) = run(&python(), &py_args, body);
    assert!(py == 0 || py == 1, "python verifier crashed: {py_err}");
    let js_script = script("stripe_verify.js");
    let mut js_args = vec![js_script.as_str()];
    js_args.extend_from_slice(&args);
    let (js, _, js_err) = run("node", &js_args, body);
    assert!(js == 0 || js == 1, "node verifier crashed: {js_err}");
    (py == 0, js == 0)
}

const ROUTE_ALL: &str = "sinks:\n  mem:\n    kind: discard\nroutes:\n  - match: \"*\"\n    to:\n      - { sink: mem, topic: \"stripe.{object}\" }\n";

#[tokio::test]
async fn headers_made_by_stripes_sdk_are_accepted() {
    let mem = MemorySink::new("mem");
    let bridge = spawn_with(&yaml(ROUTE_ALL), vec![Arc::new(mem.clone()) as Arc<dyn Sink>]).await;
    for name in FIXTURES {
        let body = fixture(name);
        let header = stripe_sign(SECRET, &body);
        let a = post_with_signature(bridge.webhook_addr, &header, body.clone()).await;
        assert_eq!(a.status, StatusCode::OK, "{name}: {:?}", a.body);
        // And a header the SDK made with another secret is refused.
        let other = stripe_sign("whsec_not_ours", &body);
        let a = post_with_signature(bridge.webhook_addr, &other, body).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{name}");
    }
    assert_eq!(mem.records().len(), FIXTURES.len());
    bridge.shutdown().await;
}

#[test]
fn headers_made_by_hookbridge_sign_are_accepted_by_stripes_verifiers() {
    for name in FIXTURES {
        let path = fixture_path(name);
        let out = Command::new(bin())
            .args(["sign", "--secret", SECRET, path.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success());
        let header = String::from_utf8(out.stdout).unwrap().trim_end().to_string();
        let body = fixture(name);
        assert_eq!(stripe_verify(SECRET, &header, &body), (true, true), "{name}: {header}");
        // The SDKs do check: a wrong secret and a changed byte are refused.
        assert_eq!(stripe_verify("whsec_other", &header, &body), (false, false), "{name}");
        let mut changed = body.to_vec();
        changed[body.len() / 2] ^= 0x01;
        assert_eq!(stripe_verify(SECRET, &header, &changed), (false, false), "{name}");
    }
}

#[tokio::test]
async fn what_the_file_sink_recorded_verifies_with_stripes_verifiers() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("events.jsonl");
    let yaml = yaml(&format!(
        "sinks:\n  local:\n    kind: file\n    path: {}\nroutes:\n  - match: \"*\"\n    to:\n      - {{ sink: local, topic: \"stripe.{{type}}\" }}\n",
        out.display()
    ));
    let bridge = spawn(&yaml).await;
    for name in FIXTURES {
        assert_eq!(
            post_signed(bridge.webhook_addr, fixture(name)).await.status,
            StatusCode::OK,
            "{name}"
        );
    }
    bridge.shutdown().await;

    let text = std::fs::read_to_string(&out).unwrap();
    let records: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), FIXTURES.len());
    for (record, name) in records.iter().zip(FIXTURES) {
        let payload = record["payload"].as_str().unwrap().as_bytes();
        assert_eq!(
            payload,
            &fixture(name)[..],
            "{name}: the payload is the body, byte for byte"
        );
        let header = record["headers"]["stripe-signature"].as_str().unwrap();
        assert_eq!(stripe_verify(SECRET, header, payload), (true, true), "{name}");
    }
}
