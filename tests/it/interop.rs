//! Interop with Stripe's own code, not assumed: the official `stripe` SDKs (npm and PyPI,
//! installed by deploy/local/stripe-sdk.sh) sign and verify against hookbridge.
#![allow(clippy::unwrap_used)]

use crate::common;

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

/// One case of `tests/interop/signature_corpus.txt`.
#[derive(Debug)]
struct Case {
    line: usize,
    hookbridge: bool,
    python: bool,
    node: bool,
    template: String,
    why: String,
}

const CORPUS_BODY: &str = r#"{"id":"evt_corpus","object":"event","type":"invoice.paid"}"#;
const CORPUS_TOLERANCE: u64 = 300;

fn verdict(word: &str, line: usize) -> bool {
    match word {
        "accept" => true,
        "reject" => false,
        other => panic!("signature_corpus.txt line {line}: verdict must be accept or reject, not {other:?}"),
    }
}

fn corpus() -> Vec<Case> {
    let text = std::fs::read_to_string(script("signature_corpus.txt")).unwrap();
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|(i, l)| {
            let f: Vec<&str> = l.splitn(5, '|').map(str::trim).collect();
            assert_eq!(
                f.len(),
                5,
                "signature_corpus.txt line {}: five fields separated by |",
                i + 1
            );
            Case {
                line: i + 1,
                hookbridge: verdict(f[0], i + 1),
                python: verdict(f[1], i + 1),
                node: verdict(f[2], i + 1),
                template: f[3].to_string(),
                why: f[4].to_string(),
            }
        })
        .collect()
}

/// `now`, `now+N`, `now-N` or an integer.
fn time_expr(expr: &str, now: i64) -> i64 {
    let parsed = if expr == "now" {
        Some(now)
    } else if let Some(n) = expr.strip_prefix("now+") {
        n.parse::<i64>().ok().map(|n| now + n)
    } else if let Some(n) = expr.strip_prefix("now-") {
        n.parse::<i64>().ok().map(|n| now - n)
    } else {
        expr.parse().ok()
    };
    parsed.unwrap_or_else(|| panic!("signature_corpus.txt: bad time {expr:?}"))
}

/// The header a template stands for at `now`.
fn expand(template: &str, now: i64) -> String {
    let sig = |t: i64| {
        hex::encode(hookbridge::verify::compute_signature(
            SECRET.as_bytes(),
            t,
            CORPUS_BODY.as_bytes(),
        ))
    };
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = open + rest[open..].find('}').expect("a placeholder closes with }");
        let name = &rest[open + 1..close];
        let digits = now.to_string();
        let value = match name {
            "sig" => sig(now),
            "SIG" => sig(now).to_uppercase(),
            "wrong" => hex::encode(hookbridge::verify::compute_signature(
                b"whsec_not_ours",
                now,
                CORPUS_BODY.as_bytes(),
            )),
            "now_" => format!("{}_{}", &digits[..1], &digits[1..]),
            "now_arabic" => digits
                .chars()
                .map(|c| char::from_u32(0x660 + c.to_digit(10).unwrap()).unwrap())
                .collect(),
            "sp" => " ".into(),
            "tab" => "\t".into(),
            "nbsp" => "\u{a0}".into(),
            _ => match name.strip_prefix("sig@") {
                Some(expr) => sig(time_expr(expr, now)),
                None => time_expr(name, now).to_string(),
            },
        };
        out.push_str(&value);
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// Runs one SDK's batch verifier over every header; its verdict for each.
fn sdk_verdicts(program: &str, batch_script: &str, headers: &[String]) -> Vec<(bool, String)> {
    let input: String = headers
        .iter()
        .map(|h| {
            let case =
                serde_json::json!({"header": h, "secret": SECRET, "body": CORPUS_BODY, "tolerance": CORPUS_TOLERANCE});
            format!("{case}\n")
        })
        .collect();
    let (code, out, err) = run(program, &[&script(batch_script)], input.as_bytes());
    assert_eq!(code, 0, "{batch_script} failed: {err}");
    let verdicts: Vec<(bool, String)> = out
        .lines()
        .map(|l| match l.split_once('\t') {
            None if l == "accept" => (true, String::new()),
            Some(("reject", why)) => (false, why.to_string()),
            _ => panic!("{batch_script}: unexpected line {l:?}"),
        })
        .collect();
    assert_eq!(
        verdicts.len(),
        headers.len(),
        "{batch_script}: one verdict per case: {err}"
    );
    verdicts
}

#[test]
fn signature_corpus_gets_the_verdict_of_stripes_sdks() {
    let cases = corpus();
    assert!(cases.len() >= 50, "the corpus has {} cases", cases.len());
    let now = hookbridge::verify::unix_now();
    let headers: Vec<String> = cases.iter().map(|c| expand(&c.template, now)).collect();
    let started = std::time::Instant::now();
    let python_verdicts = sdk_verdicts(&python(), "verify_batch.py", &headers);
    let node_verdicts = sdk_verdicts("node", "verify_batch.js", &headers);
    let verifier = hookbridge::verify::Verifier::new(&[SECRET], std::time::Duration::from_secs(CORPUS_TOLERANCE));
    let mut wrong = Vec::new();
    for ((case, header), (py, node)) in cases
        .iter()
        .zip(&headers)
        .zip(python_verdicts.iter().zip(&node_verdicts))
    {
        let ours = verifier.verify(Some(header.as_bytes()), CORPUS_BODY.as_bytes(), now);
        let ctx = format!(
            "line {} {:?} ({}): hookbridge {:?}, python {} {}, node {} {}",
            case.line, header, case.why, ours, py.0, py.1, node.0, node.1
        );
        if py.0 != case.python || node.0 != case.node {
            wrong.push(format!("{ctx}: the SDKs' verdicts differ from the corpus"));
        }
        if ours.is_ok() != case.hookbridge {
            wrong.push(format!("{ctx}: hookbridge's verdict differs from the corpus"));
        }
        // Where the SDKs agree, the same verdict (or, deliberately and said so, a stricter one);
        // where they disagree, the stricter one.
        let follows_rule = if case.python == case.node {
            case.hookbridge == case.python || (!case.hookbridge && case.why.starts_with("deliberate"))
        } else {
            !case.hookbridge
        };
        if !follows_rule {
            wrong.push(format!(
                "{ctx}: the corpus breaks the rule (both SDKs' verdict, else reject)"
            ));
        }
    }
    println!("{} cases, both SDKs in {:?}", cases.len(), started.elapsed());
    assert!(wrong.is_empty(), "{} case(s) wrong:\n{}", wrong.len(), wrong.join("\n"));
}
